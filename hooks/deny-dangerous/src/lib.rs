//! `deny-dangerous`: a pre-hook that refuses command lines that would wreck the machine.
//!
//! It judges the host's parse of the line (`request.commands`, contract 0.2.0): every simple
//! command wherever it sits (lists, pipelines, groups, `$( … )`, backticks, `<( … )`, the
//! strings of `sh -c '…'` and `eval '…'`), quotes removed. Wrappers (`sudo doas env nice ionice
//! timeout nohup stdbuf setsid chroot time command exec builtin xargs busybox …`) are looked
//! through to the real program, and a program is known by the last component of its word or
//! of its resolved path: `/bin/rm`, `./rm` and `sudo rm` are all `rm`.
//!
//! Rules, checked in this order; every reason starts with `rule NAME:`.
//! - `unparsed`: the host could not parse the line, so it could run anything.
//! - `fork-bomb`: a function that pipes itself into itself (`:(){ :|:& };:`, renamings).
//! - `allowed-commands`: with `allowed_commands` set, a program or wrapper not in it.
//! - `deny-pattern`: a configured `deny` pattern matches a command.
//! - `recursive-delete`: recursive `rm` of `/`, `/*`, `~`, `$HOME` or a top-level system
//!   directory (also `/usr/..`, `/u*`), or `rm --no-preserve-root`.
//! - `recursive-permissions`: the same for `chmod -R`, `chown -R`, `chgrp -R`.
//! - `find-delete`: `find` on such a path with `-delete` or `-exec`/`-ok` `rm` (`shred`, …).
//! - `download-to-shell`: a download piped into a shell or interpreter (`curl … | sh`), or
//!   substituted into its code (`bash <(curl …)`, `sh -c "$(curl …)"`, `eval "$(wget …)"`).
//! - `pipe-to-shell`: a shell or interpreter running code piped into it (`… | base64 -d | sh`).
//! - `disk-write`: `dd of=/dev/sda`, `> /dev/nvme0n1`, `tee`/`cp` onto a disk, `mkfs*`,
//!   `mke2fs`, `mkswap`, `wipefs`, `shred`, `blkdiscard`, `sgdisk`, `badblocks -w` of a device.
//! - `dynamic-program`: a command the host marks `dynamic`: `$(echo rm) -rf /`, `$X`,
//!   `/bin/r?`, `eval`, `source`, `xargs`, a shell reading a pipe or a file.
//!
//! Config (`host.config()`, all optional):
//! - `deny`: more patterns, one per line (`#` starts a comment); `*` matches any text and `?`
//!   one character. Each is matched against every command's words joined by single spaces, as
//!   written (`sudo /sbin/reboot`) and as run (`reboot`).
//! - `allowed_commands`: names separated by spaces, commas or newlines; the program of every
//!   command, and every wrapper in front of it, must be one of them.
//! - `defaults = false` turns the built-in rules (`fork-bomb` … `disk-write`) off;
//!   `allow_unparsed = true` and `allow_dynamic = true` turn those two rules off.
//!
//! What a denylist cannot stop is in docs/deny-dangerous.md.
//!
//! Over 500 lines: eleven rules, each with the wrapper and path handling it needs, read best
//! in one file beside the rule table of `docs/deny-dangerous.md`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "pre-hook",
});

use ccx::hooks::host;
use ccx::hooks::types::{Context, SimpleCommand};

struct DenyDangerous;

/// Programs that run another program given as their arguments.
const WRAPPERS: &[&str] = &[
    "sudo", "doas", "env", "nice", "ionice", "timeout", "nohup", "stdbuf", "setsid", "chroot",
    "time", "command", "exec", "builtin", "xargs", "busybox", "chrt", "taskset", "unbuffer",
    "strace", "ltrace",
];
/// Wrapper options that take a separate value word, as `wrapper:option`.
const VALUED: &str = "sudo:-u sudo:-g sudo:-C sudo:-D sudo:-h sudo:-p sudo:-r sudo:-t sudo:-U \
    sudo:-T doas:-u doas:-C env:-u env:-C env:-S nice:-n ionice:-c ionice:-n ionice:-p \
    timeout:-s timeout:-k timeout:--signal timeout:--kill-after stdbuf:-i stdbuf:-o stdbuf:-e \
    exec:-a chroot:--userspec chroot:--groups taskset:-p xargs:-a xargs:-d xargs:-E xargs:-I \
    xargs:-L xargs:-n xargs:-P xargs:-s strace:-e strace:-o strace:-p strace:-s ltrace:-e \
    ltrace:-o ltrace:-p ltrace:-s";
/// Shells: they run code from `-c`, a script file, or their stdin.
const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "rbash", "yash", "posh", "oksh", "pdksh",
    "lksh", "csh", "tcsh", "fish",
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

/// The hook's settings, from `host.config()`.
struct Config {
    defaults: bool,
    allow_dynamic: bool,
    allow_unparsed: bool,
    patterns: Vec<String>,
    allowed: Option<Vec<String>>,
}

impl Config {
    fn load() -> Config {
        let pairs = host::config();
        let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.trim());
        let lines = get("deny").unwrap_or_default().lines().map(str::trim);
        let sep = |c: char| c.is_whitespace() || c == ',';
        Config {
            defaults: get("defaults") != Some("false"),
            allow_dynamic: get("allow_dynamic") == Some("true"),
            allow_unparsed: get("allow_unparsed") == Some("true"),
            patterns: lines
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect(),
            allowed: get("allowed_commands").map(|v| {
                v.split(sep)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            }),
        }
    }
}

impl Guest for DenyDangerous {
    fn pre_execute(request: ExecRequest) -> PreDecision {
        match judge(&request, &Config::load()) {
            Some(reason) => PreDecision::Deny(reason),
            None => PreDecision::Allow,
        }
    }
}

/// One simple command with the program it really runs (past its wrappers).
struct Cmd<'a> {
    c: &'a SimpleCommand,
    /// Index in `argv` of the real program (`argv.len()` when there is none).
    at: usize,
}

impl<'a> Cmd<'a> {
    fn new(c: &'a SimpleCommand) -> Self {
        let at = unwrap(&c.argv);
        Cmd { c, at }
    }

    /// The real program's name: the last component of its word.
    fn name(&self) -> &'a str {
        self.c.argv.get(self.at).map_or("", |w| base(w))
    }

    /// Whether the real program is one of `names`, by its word, by its resolved path, or by
    /// a glob in its word that could expand to one (`/bin/r?`).
    fn is(&self, names: &[&str]) -> bool {
        let resolved = self.c.program.as_deref().filter(|_| self.at == 0).map(base);
        let name = self.name();
        let glob = self.c.dynamic && name.contains(['*', '?']);
        let named = |n: &&str| name == *n || resolved == Some(*n) || glob && glob_match(name, n);
        names.iter().any(named)
    }

    /// The real program's arguments.
    fn args(&self) -> &'a [String] {
        self.c.argv.get(self.at + 1..).unwrap_or_default()
    }

    /// The words as written, joined by spaces.
    fn text(&self) -> String {
        self.c.argv.join(" ")
    }
}

/// Index in `argv` of the program a command really runs, looking through wrappers such as
/// `sudo -u root`, `env A=1`, `nice -n 5`, `timeout 10`, `chroot /mnt` and `xargs -n 1`.
fn unwrap(argv: &[String]) -> usize {
    let mut i = 0;
    while let Some(&name) = argv
        .get(i)
        .and_then(|w| WRAPPERS.iter().find(|n| **n == base(w)))
    {
        i += 1;
        let valued = |o: &str| {
            VALUED
                .split_whitespace()
                .any(|v| v.split_once(':') == Some((name, o)))
        };
        // `timeout 10 cmd`, `chroot /mnt cmd`, `chrt 5 cmd`, `taskset 0x1 cmd`.
        let mut positional = matches!(name, "timeout" | "chroot" | "chrt" | "taskset");
        while let Some(w) = argv.get(i) {
            if w == "--" {
                i += 1;
                break;
            } else if w.len() > 1 && w.starts_with('-') {
                i += 1 + usize::from(valued(w));
            } else if name == "env" && w.contains('=') || std::mem::take(&mut positional) {
                i += 1;
            } else {
                break;
            }
        }
    }
    i.min(argv.len())
}

/// The reason to refuse `request`, if there is one.
fn judge(request: &ExecRequest, cfg: &Config) -> Option<String> {
    if let Some(why) = request.unparsed.as_ref().filter(|_| !cfg.allow_unparsed) {
        let why = format!("the host could not parse the line ({why}), so it could run anything");
        return Some(format!("rule unparsed: {why}"));
    }
    let cmds = &request.commands;
    if cfg.defaults
        && let Some(name) = fork_bomb(cmds)
    {
        let what = format!("`{name}` pipes itself into itself");
        return Some(format!("rule fork-bomb: fork bomb ({what})"));
    }
    let found = cmds.iter().enumerate().find_map(|(i, c)| {
        let cmd = Cmd::new(c);
        let built_in = || {
            recursive(&cmd)
                .or_else(|| find_delete(&cmd))
                .or_else(|| into_shell(cmds, i, &cmd))
                .or_else(|| disk_write(&cmd))
        };
        allowlist(&cmd, cfg)
            .or_else(|| deny_pattern(&cmd, cfg))
            .or_else(|| cfg.defaults.then(built_in).flatten())
    });
    if found.is_some() || cfg.allow_dynamic {
        return found;
    }
    // Dynamic commands last, so that a visible danger is named first (`eval "rm -rf /"`).
    let dynamic_cmd = cmds.iter().find(|c| c.dynamic)?;
    Some(dynamic(&Cmd::new(dynamic_cmd)))
}

fn allowlist(cmd: &Cmd, cfg: &Config) -> Option<String> {
    let allowed = cfg.allowed.as_ref()?;
    // The wrappers in front of the program, then the program.
    for (j, w) in cmd.c.argv.iter().enumerate().take(cmd.at + 1) {
        let name = base(w);
        if (j == cmd.at || WRAPPERS.contains(&name)) && !allowed.iter().any(|a| a == name) {
            let text = cmd.text();
            return Some(format!(
                "rule allowed-commands: `{name}` is not an allowed command (in `{text}`)"
            ));
        }
    }
    None
}

fn deny_pattern(cmd: &Cmd, cfg: &Config) -> Option<String> {
    let text = cmd.text();
    let run = format!("{} {}", cmd.name(), cmd.args().join(" "));
    let matches = |p: &&String| glob_match(p, &text) || glob_match(p, run.trim_end());
    let pattern = cfg
        .patterns
        .iter()
        .find(|p| !text.is_empty() && matches(p))?;
    Some(format!(
        "rule deny-pattern: `{text}` matches the pattern `{pattern}`"
    ))
}

/// Recursive removal or permission change of a path the system cannot live without.
fn recursive(cmd: &Cmd) -> Option<String> {
    let rm = cmd.is(&["rm"]);
    let (rule, what) = if rm {
        ("recursive-delete", "recursive removal")
    } else if cmd.is(&["chmod", "chown", "chgrp"]) {
        ("recursive-permissions", "recursive permission change")
    } else {
        return None;
    };
    let (text, args) = (cmd.text(), cmd.args());
    if args.iter().any(|a| a == "--no-preserve-root") {
        return Some(format!("rule {rule}: `--no-preserve-root`: `{text}`"));
    }
    let (mut options, mut recursive, mut paths) = (true, false, vec![]);
    for a in args {
        if options && a == "--" {
            options = false;
        } else if options && a.len() > 1 && a.starts_with('-') {
            // `chmod -r` removes read permission: only `rm` takes a lowercase `-r`.
            let short = !a.starts_with("--") && (a.contains('R') || rm && a.contains('r'));
            recursive |= short || a == "--recursive";
        } else {
            paths.push(a);
        }
    }
    let path = unquote(paths.into_iter().find(|p| recursive && critical_path(p))?);
    Some(format!("rule {rule}: {what} of `{path}`: `{text}`"))
}

/// `find / -delete`, `find /etc -exec rm {} +`: deletion under a path the system needs.
fn find_delete(cmd: &Cmd) -> Option<String> {
    if !cmd.is(&["find"]) {
        return None;
    }
    let args = cmd.args();
    // Options (`-H`, `-L`, `-P`), then the paths, then the expression.
    let start = args
        .iter()
        .position(|a| !matches!(a.as_str(), "-H" | "-L" | "-P"));
    let args = &args[start.unwrap_or(args.len())..];
    let end = args.iter().position(|a| a.starts_with(['-', '(', '!']));
    let (paths, expr) = args.split_at(end.unwrap_or(args.len()));
    // `-exec rm`, `-exec sudo shred`, `-exec sh -c '…'`.
    let deleter = |p: &String| ["rm", "rmdir", "unlink", "shred"].contains(&base(p));
    let deleter = |p: &String| deleter(p) || SHELLS.contains(&base(p));
    let deletes = expr.iter().enumerate().any(|(j, a)| {
        let exec = matches!(a.as_str(), "-exec" | "-execdir" | "-ok" | "-okdir");
        let run = &expr[j + 1..];
        a == "-delete" || exec && run.get(unwrap(run)).is_some_and(deleter)
    });
    let path = paths.iter().find(|p| deletes && critical_path(p))?;
    let (path, text) = (unquote(path), cmd.text());
    Some(format!(
        "rule find-delete: `find` deletes under `{path}`: `{text}`"
    ))
}

/// `/`, `/*`, `~`, `$HOME`, a top-level system directory (or a glob matching one), after
/// removing quotes, `.` and `..`.
fn critical_path(word: &str) -> bool {
    let p = unquote(word);
    let home = ["$HOME", "${HOME}", "~"].iter().find_map(|h| {
        let rest = p.strip_prefix(h)?;
        // `~root` and `~user` are home directories too.
        let user = rest.find('/').unwrap_or(rest.len());
        (*h == "~" || user == 0).then(|| &rest[user..])
    });
    let rest = match home {
        Some(rest) => rest,
        None if p.starts_with('/') => p.as_str(),
        None => return false,
    };
    let mut parts: Vec<&str> = vec![];
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." => _ = parts.pop(),
            _ => parts.push(part),
        }
    }
    while parts.last().is_some_and(|p| p.chars().all(|c| c == '*')) {
        parts.pop();
    }
    match parts[..] {
        [] => true,
        [dir] => home.is_none() && SYSTEM_DIRS.iter().any(|d| glob_match(dir, d)),
        _ => false,
    }
}

/// A download or a pipe feeding a shell or interpreter, or a download substituted into the
/// code of a shell, interpreter, `eval` or `source`.
fn into_shell(cmds: &[SimpleCommand], i: usize, cmd: &Cmd) -> Option<String> {
    let (name, text) = (cmd.name(), cmd.text());
    let downloads = |j: &usize| Cmd::new(&cmds[*j]).is(DOWNLOADERS);
    let (shell, source) = (cmd.is(SHELLS), cmd.is(&["source", "."]));
    let versioned = ["python", "ruby", "perl"]
        .iter()
        .any(|p| name.starts_with(p));
    let interpreter = cmd.is(INTERPRETERS) || versioned;
    let (flags, operand) = invocation(cmd.args(), shell);
    let stdin = |a: &String| a == "-" || a == "/dev/stdin";
    let runs_stdin = if shell {
        !flags.contains('c') && (flags.contains('s') || operand.is_none_or(stdin))
    } else if source {
        operand.is_some_and(stdin)
    } else {
        // `python3 -m json.tool`, `node x.js`, `perl -pe …` do not run their stdin.
        interpreter && !flags.contains(['c', 'm', 'e', 'E', 'r']) && operand.is_none_or(stdin)
    };
    let feed = if runs_stdin { feeders(cmds, i) } else { vec![] };
    if let Some(src) = feed.iter().find(|j| downloads(j)) {
        let src = Cmd::new(&cmds[*src]).name();
        let how = format!("`{src}` | … | `{name}`");
        return Some(format!(
            "rule download-to-shell: download piped into `{name}` ({how}): `{text}`"
        ));
    }
    if !feed.is_empty() {
        let depth = cmds[i].position.depth;
        let stages = feed.iter().filter(|&&j| cmds[j].position.depth == depth);
        let stages = stages
            .map(|&j| cmds[j].argv.join(" "))
            .collect::<Vec<_>>()
            .join(" | ");
        return Some(format!(
            "rule pipe-to-shell: `{name}` runs the output of `{stages}` as code: `{text}`"
        ));
    }
    // `bash <(curl …)`, `sh -c "$(curl …)"`, `eval "$(wget …)"`: a download in the code word.
    let code = match () {
        _ if cmd.is(&["eval"]) => cmd.args().join(" "),
        _ if shell || source || interpreter => operand?.clone(),
        _ => return None,
    };
    let substituted = ["$(", "`", "<("].iter().any(|s| code.contains(s));
    // The commands in this one's substitutions come right after it, deeper, with a parent
    // from this one on.
    let depth = cmds[i].position.depth;
    let mut inside = (i + 1..cmds.len()).take_while(|&j| {
        let p = &cmds[j].position;
        p.depth > depth && p.parent.is_some_and(|p| p as usize >= i)
    });
    let fetched = inside.any(|j| downloads(&j));
    let reason = format!("rule download-to-shell: `{name}` runs a downloaded script: `{text}`");
    (substituted && fetched).then_some(reason)
}

/// A shell's or interpreter's short option letters (`c` too for `--eval`, `--command`,
/// `--print`) and its first operand: the `-c`/`-e` code or the script file. For a shell, the
/// values of `-o`, `-O`, `--rcfile` and `--init-file` are skipped.
fn invocation(args: &[String], shell: bool) -> (String, Option<&String>) {
    let (mut flags, mut i) = (String::new(), 0);
    while let Some(a) = args
        .get(i)
        .filter(|a| a.len() > 1 && a.starts_with(['-', '+']))
    {
        i += 1;
        if a == "--" {
            break;
        } else if let Some(long) = a.strip_prefix("--") {
            if ["eval", "command", "print"]
                .iter()
                .any(|l| long.starts_with(l))
            {
                flags.push('c');
            }
            i += usize::from(shell && matches!(long, "rcfile" | "init-file"));
        } else {
            flags.push_str(&a[1..]);
            i += usize::from(shell && matches!(&a[1..], "o" | "O"));
        }
    }
    (flags, args.get(i))
}

/// The commands feeding command `i` through its pipeline: the earlier stages and what runs
/// inside them, in order.
fn feeders(cmds: &[SimpleCommand], i: usize) -> Vec<usize> {
    let me = &cmds[i].position;
    let mut out = vec![];
    for j in (0..i).rev().take_while(|_| me.stage > 0) {
        let p = &cmds[j].position;
        let same = (p.pipeline, p.context, p.parent) == (me.pipeline, me.context, me.parent);
        if p.depth < me.depth || p.depth == me.depth && !same {
            break;
        }
        out.insert(0, j);
        if p.depth == me.depth && p.stage == 0 {
            break;
        }
    }
    out
}

/// `dd of=/dev/sdX`, `> /dev/sdX`, `tee`/`cp` onto a disk, `mkfs.* /dev/…`, `wipefs`, `shred`
/// or `blkdiscard` of a device.
fn disk_write(cmd: &Cmd) -> Option<String> {
    let disk = |p: &str| DISKS.iter().any(|k| p.starts_with(&format!("/dev/{k}")));
    let (program, args, text) = (cmd.name(), cmd.args(), cmd.text());
    let rule = |what: String, line: &str| Some(format!("rule disk-write: {what}: `{line}`"));
    let written = cmd.c.redirections.iter().filter(|r| r.op.contains('>'));
    if let Some(r) = written.into_iter().find(|r| disk(&r.target)) {
        let (line, to) = (format!("{text} {} {}", r.op, r.target), &r.target);
        return rule(format!("write to the raw disk `{to}`"), line.trim_start());
    }
    let of = args.iter().find_map(|w| w.strip_prefix("of="));
    if let Some(of) = of.filter(|of| cmd.is(&["dd"]) && disk(of)) {
        return rule(format!("`dd` onto the raw disk `{of}`"), &text);
    }
    let onto = match program {
        "tee" => args.iter().find(|a| disk(a)),
        "cp" => args.last().filter(|a| disk(a)),
        _ => None,
    };
    if let Some(dev) = onto {
        return rule(format!("`{program}` onto the raw disk `{dev}`"), &text);
    }
    let formats = program.starts_with("mkfs") || matches!(program, "mke2fs" | "mkswap");
    let wipes = matches!(program, "wipefs" | "shred" | "blkdiscard" | "sgdisk")
        || program == "badblocks" && args.iter().any(|w| w == "-w");
    let device = |w: &&String| (formats || wipes) && w.starts_with("/dev/");
    let dev = args.iter().find(device)?;
    let verb = if formats { "formats" } else { "wipes" };
    rule(format!("`{program}` {verb} the device `{dev}`"), &text)
}

/// The `dynamic-program` reason for a command the host cannot see through.
fn dynamic(cmd: &Cmd) -> String {
    let (word, text) = (cmd.c.argv.get(cmd.at).map_or("", |w| w), cmd.text());
    let mut wrappers = cmd.c.argv.iter().take(cmd.at + 1);
    let what = if word.contains(['$', '`', '*', '?', '[', '{', '~', '<']) {
        "a program"
    } else if wrappers.any(|w| base(w) == "xargs") {
        "a command built from input"
    } else {
        "code"
    };
    format!("rule dynamic-program: `{text}` runs {what} the host cannot see")
}

/// A function that pipes itself into itself (`:(){ :|:& };:`, `f() { f | f & }; f`): two
/// neighbouring stages of a pipeline in a function body, the same one word, not on `PATH`, and
/// that word run outside a function body.
fn fork_bomb(cmds: &[SimpleCommand]) -> Option<&str> {
    let called = |name: &[String]| {
        let outside = |c: &SimpleCommand| c.position.context != Context::Function;
        cmds.iter().any(|c| outside(c) && c.argv == name)
    };
    cmds.windows(2).find_map(|pair| {
        let [a, b] = pair else { return None };
        let (p, q) = (&a.position, &b.position);
        let same = a.argv.len() == 1 && a.argv == b.argv && a.program.is_none();
        let piped = (q.pipeline, q.stage, q.depth) == (p.pipeline, p.stage + 1, p.depth);
        let body = p.context == Context::Function && q.context == p.context;
        let bomb = same && piped && body && called(&a.argv);
        bomb.then(|| a.argv[0].as_str())
    })
}

/// The last path component of a word (`/usr/bin/rm` → `rm`).
fn base(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

/// A word without its quote characters (the host keeps them in words with an expansion).
fn unquote(word: &str) -> String {
    word.chars().filter(|c| !matches!(c, '"' | '\'')).collect()
}

/// Matches `text` against a glob where `*` matches any run of characters and `?` any one.
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star) = (0, 0, None);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            (pi, ti) = (pi + 1, ti + 1);
        } else if pi < p.len() && p[pi] == '*' {
            (star, pi) = (Some((pi, ti)), pi + 1);
        } else if let Some((sp, st)) = star {
            (pi, ti, star) = (sp + 1, st + 1, Some((sp, st + 1)));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

export!(DenyDangerous);
