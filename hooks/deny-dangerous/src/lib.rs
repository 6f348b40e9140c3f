//! `deny-dangerous`: a pre-hook that refuses command lines that would wreck the machine.
//!
//! Every part of a command line is judged on its own: commands chained with `;`, `&`, `&&`,
//! `||`, `|` or newlines, commands in `( … )` / `{ …; }` groups, in `$( … )`, backticks and
//! `<( … )`, and the scripts given to `sh -c` / `bash -c` / `eval`. Wrappers such as `sudo`,
//! `env`, `nice`, `timeout` and `xargs` are looked through.
//!
//! Built-in rules (turn them off with `defaults = false`):
//! - recursive `rm`, `chmod`, `chown` or `chgrp` of `/`, `/*`, `~`, `$HOME` or a top-level
//!   system directory, and `--no-preserve-root` anywhere;
//! - fork bombs (`:(){ :|:& };:` and renamings of it);
//! - a download piped into a shell or interpreter (`curl … | sh`, `wget -O- … | sudo bash`,
//!   `bash <(curl …)`, `sh -c "$(curl …)"`, `eval "$(wget …)"`);
//! - writes to raw disks: `dd of=/dev/sda`, `> /dev/nvme0n1`, `mkfs*`, `wipefs`, `shred` or
//!   `blkdiscard` of a device.
//!
//! Config (`host.config()`, all optional):
//! - `deny`: more patterns, one per line; `*` matches any text and `?` one character. Each is
//!   matched against every simple command as its words joined by single spaces, quotes removed
//!   (e.g. `git push *--force*`, `shutdown*`).
//! - `allowed_commands`: if set (names separated by spaces, commas or newlines), every simple
//!   command's program must be one of them: the first-word allowlist, but for every part.
//! - `defaults`: `false` turns the built-in rules off.
//!
//! A denylist stops accidents and careless agents, not a determined attacker: anything the
//! shell decides at run time (`$cmd`, aliases, `eval "$x"`, a script file) is invisible here.

wit_bindgen::generate!({
    path: "../../wit",
    world: "pre-hook",
});

use ccx::hooks::host;
use shell_split::{Simple, basename, glob_match, parse, unwrap};

struct DenyDangerous;

/// Shells that run a script given as `-c SCRIPT`, or read one from stdin.
const SHELLS: &[&str] = &[
    "sh", "bash", "zsh", "dash", "ksh", "mksh", "ash", "fish", "busybox",
];
/// Interpreters that run a program read from stdin when given no script.
const INTERPRETERS: &[&str] = &[
    "python", "python2", "python3", "perl", "ruby", "node", "php", "lua", "Rscript", "pwsh",
];
const DOWNLOADERS: &[&str] = &["curl", "wget", "fetch", "aria2c", "http", "https", "xh"];
/// Top-level directories whose recursive removal (or permission change) breaks the system.
const SYSTEM_DIRS: &[&str] = &[
    "bin", "boot", "dev", "etc", "home", "lib", "lib32", "lib64", "opt", "proc", "root", "run",
    "sbin", "srv", "sys", "usr", "var",
];
/// Device-name prefixes of block devices (under `/dev/`).
const DISKS: &[&str] = &[
    "sd", "hd", "vd", "xvd", "nvme", "mmcblk", "disk", "md", "dm-", "mapper/", "loop", "sr",
];

fn cfg(key: &str) -> Option<String> {
    host::config()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

impl Guest for DenyDangerous {
    fn pre_execute(request: ExecRequest) -> PreDecision {
        match judge(&request.command) {
            Some(reason) => PreDecision::Deny(reason),
            None => PreDecision::Allow,
        }
    }
}

/// The reason to refuse `line`, if there is one.
fn judge(line: &str) -> Option<String> {
    let defaults = cfg("defaults").is_none_or(|v| v != "false");
    let patterns: Vec<String> = cfg("deny")
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    let allowed: Option<Vec<String>> = cfg("allowed_commands").map(|v| {
        v.split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    });

    if defaults && let Some(name) = fork_bomb(line) {
        return Some(format!(
            "fork bomb (`{name}` pipes itself into itself in the background)"
        ));
    }
    let mut scripts = vec![line.to_string()];
    let mut seen = 0;
    // Scripts handed to `sh -c` or `eval` are judged like the line itself (a bounded number).
    while let Some(script) = scripts.get(seen).cloned() {
        seen += 1;
        if seen > 32 {
            break;
        }
        let parsed = parse(&script);
        for pipeline in &parsed.pipelines {
            for (i, cmd) in pipeline.iter().enumerate() {
                let words = unwrap(&cmd.words);
                if let Some(allowed) = &allowed
                    && let Some(program) = words.first()
                    && !allowed.iter().any(|a| a == program)
                {
                    return Some(format!(
                        "`{program}` is not an allowed command (in `{}`)",
                        cmd.text()
                    ));
                }
                for pattern in &patterns {
                    if glob_match(pattern, &cmd.text()) || glob_match(pattern, &words.join(" ")) {
                        return Some(format!("`{}` matches the pattern `{pattern}`", cmd.text()));
                    }
                }
                if !defaults {
                    continue;
                }
                if let Some(reason) = destructive(cmd, &words)
                    .or_else(|| disk_write(cmd, &words))
                    .or_else(|| download_into_shell(pipeline, i, cmd, &words))
                {
                    return Some(format!("{reason}: `{}`", cmd.text()));
                }
                if let Some(script) = inline_script(&words) {
                    scripts.push(script);
                }
            }
        }
    }
    None
}

/// `sh -c SCRIPT`, `bash -lc SCRIPT`, `eval WORDS…`, `su -c SCRIPT`: the script they run.
fn inline_script(words: &[String]) -> Option<String> {
    let program = words.first()?.as_str();
    if program == "eval" {
        return Some(words[1..].join(" "));
    }
    if SHELLS.contains(&program) || program == "su" {
        let at = words[1..]
            .iter()
            .position(|w| w.starts_with('-') && !w.starts_with("--") && w.contains('c'))?;
        return words.get(at + 2).cloned();
    }
    None
}

/// Recursive removal or permission change of a path the system cannot live without.
fn destructive(cmd: &Simple, words: &[String]) -> Option<String> {
    let program = words.first()?.as_str();
    if cmd.words.iter().any(|w| w == "--no-preserve-root") {
        return Some("`--no-preserve-root`".into());
    }
    let recursive_flag = |w: &str| {
        w == "--recursive"
            || (w.starts_with('-') && !w.starts_with("--") && (w.contains('r') || w.contains('R')))
    };
    let what = match program {
        "rm" => "recursive removal",
        "chmod" | "chown" | "chgrp" => "recursive permission change",
        _ => return None,
    };
    let args = &words[1..];
    let recursive = match program {
        "rm" => args.iter().any(|w| recursive_flag(w)),
        // `chmod -r` means "remove read permission", only -R is recursive.
        _ => args
            .iter()
            .any(|w| w == "--recursive" || (w.starts_with('-') && w.contains('R'))),
    };
    if !recursive {
        return None;
    }
    args.iter()
        .filter(|w| !w.starts_with('-'))
        .find(|w| critical_path(w))
        .map(|w| format!("{what} of `{w}`"))
}

fn critical_path(path: &str) -> bool {
    let p = path.trim_end_matches(['*', '.']).trim_end_matches('/');
    let home = ["~", "$HOME", "${HOME}"];
    if p.is_empty() || home.contains(&p) {
        return path.starts_with('/') || home.iter().any(|h| path.starts_with(h));
    }
    let p = p.strip_prefix('/').map(|r| r.trim_start_matches('/'));
    p.is_some_and(|dir| SYSTEM_DIRS.contains(&dir))
}

/// `dd of=/dev/sdX`, `> /dev/sdX`, `mkfs.* /dev/…`, `wipefs`, `shred` or `blkdiscard` of a
/// device.
fn disk_write(cmd: &Simple, words: &[String]) -> Option<String> {
    let is_disk = |p: &str| {
        p.strip_prefix("/dev/")
            .is_some_and(|d| DISKS.iter().any(|prefix| d.starts_with(prefix)))
    };
    if let Some(target) = cmd.redirects.iter().find(|t| is_disk(t)) {
        return Some(format!("write to the raw disk `{target}`"));
    }
    let program = words.first()?.as_str();
    let args = &words[1..];
    if program == "dd"
        && let Some(of) = args.iter().find_map(|w| w.strip_prefix("of="))
        && is_disk(of)
    {
        return Some(format!("`dd` onto the raw disk `{of}`"));
    }
    let formats = program.starts_with("mkfs") || matches!(program, "mke2fs" | "mkswap");
    let wipes = matches!(
        program,
        "wipefs" | "shred" | "blkdiscard" | "sgdisk" | "badblocks"
    );
    if (formats || wipes)
        && let Some(dev) = args.iter().find(|w| w.starts_with("/dev/"))
    {
        // `badblocks` is read-only unless it writes (-w) or does non-destructive rewrites (-n).
        if program == "badblocks" && !args.iter().any(|w| w == "-w") {
            return None;
        }
        let verb = if formats { "formats" } else { "wipes" };
        return Some(format!("`{program}` {verb} the device `{dev}`"));
    }
    None
}

/// A downloader piped into a shell or interpreter later in the same pipeline, or a shell
/// running a script that a downloader produces through a substitution.
fn download_into_shell(
    pipeline: &[Simple],
    at: usize,
    cmd: &Simple,
    words: &[String],
) -> Option<String> {
    if !runs_stdin_or_substitution(words) {
        return None;
    }
    let program = &words[0];
    let downloads = |c: &Simple| {
        unwrap(&c.words)
            .first()
            .is_some_and(|p| DOWNLOADERS.contains(&p.as_str()))
    };
    if let Some(src) = pipeline[..at].iter().find(|c| downloads(c)) {
        return Some(format!(
            "download piped into `{program}` (`{}` | … | `{program}`)",
            unwrap(&src.words)[0]
        ));
    }
    // `bash <(curl …)`, `sh -c "$(curl …)"`, `eval "$(wget …)"`, `source <(curl …)`.
    let fetched = cmd
        .substitutions
        .iter()
        .any(|s| shell_split::parse(s).commands().any(&downloads));
    if fetched {
        return Some(format!("`{program}` runs a downloaded script"));
    }
    None
}

/// Whether this command executes code it reads from stdin or from a substitution.
fn runs_stdin_or_substitution(words: &[String]) -> bool {
    let Some(program) = words.first() else {
        return false;
    };
    let program = basename(program);
    if matches!(program, "eval" | "source" | ".") {
        return true;
    }
    let args = &words[1..];
    let is_interpreter = INTERPRETERS.contains(&program)
        || program.starts_with("python")
        || program.starts_with("ruby")
        || program.starts_with("perl");
    if SHELLS.contains(&program) {
        // A shell with a script file reads that, with `-c` its argument; with neither, stdin.
        // `bash <(curl …)` names a substitution as its script file: that counts too.
        return true;
    }
    if is_interpreter {
        // `python3 -m json.tool`, `node script.js`, `perl -e …`: not stdin. Bare or `-`: stdin.
        let runs_other = args.iter().any(|a| {
            matches!(a.as_str(), "-c" | "-m" | "-e" | "-E" | "-r" | "-p" | "-n")
                || (!a.starts_with('-') && !a.starts_with("<("))
        });
        return !runs_other || args.iter().any(|a| a == "-");
    }
    false
}

/// A function that pipes itself into itself in the background: `NAME(){ NAME|NAME& };NAME`.
fn fork_bomb(line: &str) -> Option<String> {
    let compact: String = line.chars().filter(|c| !c.is_whitespace()).collect();
    let mut from = 0;
    while let Some(pos) = compact[from..].find("(){") {
        let at = from + pos;
        let name: String = compact[..at]
            .chars()
            .rev()
            .take_while(|c| !matches!(c, ';' | '&' | '|' | '(' | ')' | '{' | '}'))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let name = name.strip_prefix("function").unwrap_or(&name).to_string();
        let body = &compact[at + 3..];
        if !name.is_empty() && body.starts_with(&format!("{name}|{name}")) {
            return Some(name);
        }
        from = at + 3;
    }
    None
}

export!(DenyDangerous);
