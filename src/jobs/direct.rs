//! Running a plain command without its shell: `sleep 1` is exec'd as `sleep 1` rather than
//! as `sh -c 'sleep 1'`, which would start a shell that starts `sleep` (dash forks once more
//! for its last command; bash would not). One process fewer per job, and the shell's start
//! saved: about 1 ms of CPU a job on these machines, which counts when a thousand start at
//! once (`cargo bench --bench connections`).
//!
//! Only where the shell could not make a difference:
//! - the shell is a POSIX `sh` (`sh` or `dash`): non-interactive, it reads no startup file;
//! - the command is one simple command of plain words: only ASCII letters, digits, spaces,
//!   tabs and `_ . / : = , + @ % -`, so there is nothing to quote, expand, glob, redirect or
//!   chain, and no word before the program assigns a variable;
//! - the program is not a shell builtin or keyword (dash's `echo` and `/bin/echo` differ);
//! - it resolves, as the shell would, to an ELF binary or a `#!` script: by an absolute path,
//!   or on the job's `PATH` when it has one whose every entry is absolute (a relative entry
//!   depends on the job's directory; without one, dash searches a default of its own). A
//!   command that does not resolve runs through the shell, which reports it as usual (`not
//!   found`, exit 127).

use super::spawn::{is_executable, search};
use std::ffi::CString;
use std::io::Read;

/// dash's builtins and the shell's reserved words (dash(1), "Builtins"; POSIX.1-2017 XCU
/// 2.4 and 2.14).
const SHELL_WORDS: &[&str] = &[
    "!", ".", ":", "[", "alias", "bg", "break", "case", "cd", "command", "continue", "do", "done",
    "echo", "elif", "else", "esac", "eval", "exec", "exit", "export", "false", "fc", "fg", "fi",
    "for", "getopts", "hash", "if", "in", "jobs", "kill", "local", "printf", "pwd", "read",
    "readonly", "return", "set", "shift", "test", "then", "times", "trap", "true", "type",
    "ulimit", "umask", "unalias", "unset", "until", "wait", "while",
];

/// The program and argv to exec for `command` instead of `<shell> -c <command>`, when that
/// changes nothing (see the module notes); `None` otherwise. `path` is the job's `PATH`, if
/// its environment sets one.
pub(super) fn argv(
    shell: &str,
    command: &str,
    path: Option<&str>,
) -> Option<(CString, Vec<CString>)> {
    let name = shell.rsplit('/').next().unwrap_or(shell);
    if !matches!(name, "sh" | "dash") {
        return None;
    }
    let plain = |b: u8| b.is_ascii_alphanumeric() || b" \t_./:=,+@%-".contains(&b);
    if !command.bytes().all(plain) {
        return None;
    }
    let words: Vec<&str> = command
        .split([' ', '\t'])
        .filter(|w| !w.is_empty())
        .collect();
    let program = *words.first()?;
    if program.contains('=') || SHELL_WORDS.contains(&program) {
        return None;
    }
    let found = if program.contains('/') {
        let p = std::path::PathBuf::from(program);
        (program.starts_with('/') && is_executable(&p)).then_some(p)
    } else {
        // Without a `PATH` the shell searches its own default one: leave it to the shell.
        let dirs: Vec<&str> = path?.split(':').collect();
        if dirs.iter().any(|d| !d.starts_with('/')) {
            return None;
        }
        search(program, dirs)
    }?;
    if !execs(&found) {
        return None;
    }
    let program = CString::new(found.into_os_string().into_encoded_bytes()).ok()?;
    let argv = words
        .iter()
        .map(|w| CString::new(*w))
        .collect::<Result<_, _>>()
        .ok()?;
    Some((program, argv))
}

/// Whether execve(2) runs the file itself: an ELF binary or a `#!` script (a file without
/// either is run by the shell as a script, execve refuses it with ENOEXEC).
fn execs(p: &std::path::Path) -> bool {
    let mut head = [0u8; 4];
    let Ok(mut f) = std::fs::File::open(p) else {
        return false;
    };
    match f.read(&mut head) {
        Ok(n) => head[..n].starts_with(b"#!") || head[..n] == *b"\x7fELF",
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::argv;

    fn words(shell: &str, command: &str) -> Option<Vec<String>> {
        argv(shell, command, Some("/usr/bin:/bin"))
            .map(|(_, a)| a.into_iter().map(|w| w.into_string().unwrap()).collect())
    }

    #[test]
    fn plain_commands_run_without_the_shell() {
        assert_eq!(words("sh", "sleep 1").unwrap(), ["sleep", "1"]);
        assert_eq!(
            words("/bin/sh", "  ls\t-l  /tmp ").unwrap(),
            ["ls", "-l", "/tmp"]
        );
        assert_eq!(
            words("dash", "/bin/sleep 0.1").unwrap(),
            ["/bin/sleep", "0.1"]
        );
        let (program, _) = argv("sh", "sleep 1", Some("/usr/bin:/bin")).unwrap();
        assert!(program.to_str().unwrap().ends_with("/sleep"), "{program:?}");
    }

    #[test]
    fn anything_the_shell_would_touch_runs_through_it() {
        for command in [
            "",
            "   ",
            "echo hi",
            "true",
            "kill 1",
            "exit 3",
            "cd /",
            "if",
            "FOO=1 env",
            "sleep 1; ls",
            "sleep 1 && ls",
            "ls | wc",
            "ls > out",
            "ls *",
            "ls ~",
            "ls $HOME",
            "ls 'a b'",
            "ls \"a\"",
            "ls a\\ b",
            "ls #c",
            "ls\nls",
            "sleep 1 &",
            "(ls)",
            "ls `pwd`",
            "no-such-program-here",
            "./relative",
            "bin/relative",
            "/etc/hostname",
            "ls é",
        ] {
            assert_eq!(words("sh", command), None, "{command:?}");
        }
        // A non-POSIX shell, and a PATH with a relative entry.
        assert_eq!(words("bash", "sleep 1"), None);
        assert_eq!(
            argv("sh", "sleep 1", Some("bin:/usr/bin:/bin")).map(|_| ()),
            None
        );
    }
}
