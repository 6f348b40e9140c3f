//! Over 500 lines: one table of cases per bash construct and per wrapper rule, beside the
//! module they test.
//!
//! Unit tests of the host parse (`parse.rs`).

use super::*;

fn resolve(n: &str) -> Option<String> {
    (n != "nosuch").then(|| format!("/usr/bin/{n}"))
}
fn ok(line: &str) -> Vec<SimpleCommand> {
    let p = parse(line, &resolve);
    assert_eq!(p.unparsed, None, "{line:?}");
    p.commands
}
/// Each command as `argv [fields that are not the default]`, `!` marking `dynamic`.
fn sums(line: &str) -> Vec<String> {
    let sum = |c: &SimpleCommand| {
        let p = &c.position;
        let mut f = vec![];
        let opt = |on: bool, s: String| on.then_some(s);
        f.extend(opt(c.dynamic, "!".into()));
        f.extend(opt(p.pipeline > 0, format!("p{}", p.pipeline)));
        f.extend(opt(p.stage > 0, format!("s{}", p.stage)));
        f.extend(opt(p.after != Connector::Start, format!("{:?}", p.after)));
        f.extend(
            opt(p.background, "bg".into())
                .into_iter()
                .chain(opt(p.negated, "!!".into())),
        );
        f.extend(opt(p.depth > 0, format!("d{} {:?}", p.depth, p.context)));
        f.extend(p.parent.map(|i| format!("^{i}")));
        format!("{} [{}]", c.argv.join(" "), f.join(" "))
    };
    ok(line).iter().map(sum).collect()
}
fn fails(line: &str) {
    let p = parse(line, &resolve);
    assert!(
        p.unparsed.is_some() && p.commands.is_empty(),
        "{line:?}: {p:?}"
    );
}

#[test]
fn lists_and_pipelines() {
    let c = &ok("ls -la /tmp")[0];
    assert_eq!(
        (c.argv.join(" "), c.program.as_deref()),
        ("ls -la /tmp".into(), Some("/usr/bin/ls"))
    );
    assert_eq!(sums("ls -la /tmp"), ["ls -la /tmp []"]);
    assert_eq!(sums("ls; rm -rf x"), ["ls []", "rm -rf x [p1 Sequence]"]);
    assert_eq!(sums("a && b || c"), ["a []", "b [p1 And]", "c [p2 Or]"]);
    assert_eq!(sums("a | b | c"), ["a []", "b [s1]", "c [s2]"]);
    assert_eq!(sums("sleep 1 & ls"), ["sleep 1 [bg]", "ls [p1 Sequence]"]);
    assert_eq!(
        sums("echo hi\nrm -rf /"),
        ["echo hi []", "rm -rf / [p1 Sequence]"]
    );
    assert_eq!(sums("! a | b"), ["a [!!]", "b [s1 !!]"]);
}

#[test]
fn quoting_and_paths() {
    for line in [
        r#""r""m" -rf /"#,
        "'rm' -rf /",
        r"\rm -rf /",
        r"r\m -rf /",
        r"$'\x72\155' -rf /",
    ] {
        let c = &ok(line)[0];
        let got = (c.argv.join(" "), c.dynamic, c.program.as_deref());
        assert_eq!(
            got,
            ("rm -rf /".into(), false, Some("/usr/bin/rm")),
            "{line}"
        );
    }
    let programs = |line| ok(line).into_iter().map(|c| c.program).collect::<Vec<_>>();
    assert_eq!(
        programs("/bin/rm -rf /; ./rm x"),
        [Some("/bin/rm".into()), Some("./rm".into())]
    );
    assert_eq!(programs("nosuch; cd /; echo; $X"), [None, None, None, None]);
    assert_eq!(
        sums("echo 'a b' \"*\" \"$X\" a\\ b"),
        ["echo a b * \"$X\" a b []"]
    );
}

#[test]
fn dynamic_program_words() {
    assert_eq!(
        sums("$(echo rm) -rf /"),
        [
            "$(echo rm) -rf / [!]",
            "echo rm [d1 CommandSubstitution ^0]"
        ]
    );
    assert_eq!(
        sums("`echo rm` -rf /"),
        ["`echo rm` -rf / [!]", "echo rm [d1 CommandSubstitution ^0]"]
    );
    assert_eq!(sums("X=rm; $X -rf /"), [" []", "$X -rf / [! p1 Sequence]"]);
    assert_eq!(ok("X=rm; $X -rf /")[0].assignments, ["X=rm"]);
    for line in [
        "${X} -rf /",
        "\"$X\" x",
        "/bin/r? -rf /",
        "/bin/[r]m",
        "@(rm) x",
        "{rm,-rf,/}",
        "~/bin/rm x",
        "$((1)) x",
        r"$'\u0072m' x",
        "sudo $X",
    ] {
        assert!(ok(line)[0].dynamic, "{line}");
    }
    for line in [
        "find / -delete",
        "sudo rm -rf /",
        "ls *.txt",
        "echo {} x",
        "[ -f x ]",
        "}{ x",
    ] {
        assert!(!ok(line)[0].dynamic, "{line}");
    }
    assert_eq!(
        sums("sudo rm -rf /; find / -delete"),
        ["sudo rm -rf / []", "find / -delete [p1 Sequence]"]
    );
    assert_eq!(
        sums("echo ${X:-$(rm -rf /)}"),
        [
            "echo ${X:-$(rm -rf /)} []",
            "rm -rf / [d1 CommandSubstitution ^0]"
        ]
    );
}

#[test]
fn shells_eval_and_friends() {
    assert_eq!(sums("echo cm0gLXJmIC8K | base64 -d | sh")[2], "sh [! s2]");
    assert_eq!(ok("curl x | sh")[1].program.as_deref(), Some("/usr/bin/sh"));
    for line in [
        "curl x | bash",
        "curl x | sudo bash",
        "bash x.sh",
        "sh -ec \"$X\"",
        "bash --rcfile f -c ls",
        "BASH_ENV=f bash -c ls",
        "source x",
        ". x",
        "xargs rm",
        "fish -c ls",
        "bash -c",
    ] {
        assert!(ok(line).iter().any(|c| c.dynamic), "{line}");
    }
    for line in [
        "bash -c 'rm -rf /'",
        "sudo -u root bash -lc 'rm -rf /'",
        "busybox sh -c 'rm -rf /'",
        "bash -o pipefail -c 'rm -rf /' x",
    ] {
        assert_eq!(sums(line)[1..], ["rm -rf / [d1 ShellC ^0]"], "{line}");
        assert!(!ok(line)[0].dynamic, "{line}");
    }
    assert_eq!(
        sums("eval \"rm -rf /\""),
        ["eval rm -rf / [!]", "rm -rf / [d1 ShellC ^0]"]
    );
    let programs: Vec<_> = ok("sh -c 'f() { :; }; f'; f")
        .into_iter()
        .map(|c| c.program.is_some())
        .collect();
    assert_eq!(programs, [true, false, false, true]);
}

/// `(program of each command, dynamic)`, for the rules on commands that run commands.
fn runs(line: &str) -> Vec<(Option<String>, bool)> {
    ok(line)
        .into_iter()
        .map(|c| (c.program, c.dynamic))
        .collect()
}

#[test]
fn wrappers_with_a_nested_shell() {
    // Each runs `rm -rf /` through a shell's `-c` string (or a string run by one).
    for line in [
        "taskset 1 sh -c 'rm -rf /'",
        "taskset -c 0-3 sh -c 'rm -rf /'",
        "strace -f -o /tmp/t -e trace=file sh -c 'rm -rf /'",
        "ltrace -o out sh -c 'rm -rf /'",
        "flock /tmp/l sh -c 'rm -rf /'",
        "flock -w 5 /tmp/l -c 'rm -rf /'",
        "runuser -u bob -- sh -c 'rm -rf /'",
        "chroot / sh -c 'rm -rf /'",
        "chroot --userspec=1:1 /srv /bin/sh -c 'rm -rf /'",
        "setsid -f sh -c 'rm -rf /'",
        "unshare -r sh -c 'rm -rf /'",
        "nsenter -t 1 -m sh -c 'rm -rf /'",
        "nsenter -m/proc/1/ns/mnt sh -c 'rm -rf /'",
        "chrt 1 sh -c 'rm -rf /'",
        "chrt -f 99 sh -c 'rm -rf /'",
        "chrt -o sh -c 'rm -rf /'",
        "prlimit --nofile=1024 -- sh -c 'rm -rf /'",
        "prlimit -n1024 sh -c 'rm -rf /'",
        "systemd-run --user -p X=1 --unit u sh -c 'rm -rf /'",
        "firejail --noprofile sh -c 'rm -rf /'",
        "pkexec --user root sh -c 'rm -rf /'",
        "setpriv --reuid 0 sh -c 'rm -rf /'",
        "nice -n 5 ionice -c3 timeout -s KILL 5 sh -c 'rm -rf /'",
        "nice -10 sh -c 'rm -rf /'",
        "nice --=x sh -c 'rm -rf /'",
        "sudo -u root -- env -i A=1 nohup stdbuf -oL sh -c 'rm -rf /'",
        "sudo -iu root sh -c 'rm -rf /'",
        "sudo --us root sh -c 'rm -rf /'",
        "sudo A=1 /bin/bash -c 'rm -rf /'",
        "doas -u root /bin/sh -c 'rm -rf /'",
        "exec -a x sh -c 'rm -rf /'",
        "command -p sh -c 'rm -rf /'",
        // The general rule: a shell and `-c` among the words of any other program.
        "docker exec box sh -c 'rm -rf /'",
        "kubectl exec pod -- /bin/bash -lc 'rm -rf /'",
        "foo --bar x bash -o pipefail -c 'rm -rf /'",
        "sudo foo sh -c 'rm -rf /'",
        // Shell code in an option or in the words.
        "su -c 'rm -rf /'",
        "su - root -c 'rm -rf /'",
        "su root -c 'rm -rf /'",
        "su -lc 'rm -rf /'",
        "su --command='rm -rf /' root",
        "su -c 'rm -rf /' -- \"$U\"",
        "su -s /bin/bash -c 'rm -rf /'",
        "sudo su -c 'rm -rf /'",
        "sudo su - root -c 'rm -rf /'",
        "runuser -l bob -c 'rm -rf /'",
        "script -qc 'rm -rf /' /dev/null",
        "script /dev/null -c 'rm -rf /'",
        "watch rm -rf /",
        "watch -n 1 -d 'rm -rf /'",
    ] {
        assert_eq!(sums(line)[1..], ["rm -rf / [d1 ShellC ^0]"], "{line}");
        let want = [(Some("/usr/bin/rm".to_string()), false)];
        assert_eq!(runs(line)[1..], want, "{line}");
        assert!(!ok(line)[0].dynamic, "{line}");
    }
    assert_eq!(
        sums("watch -n 1 'ls; rm x'")[1..],
        ["ls [d1 ShellC ^0]", "rm x [p1 Sequence d1 ShellC ^0]"]
    );
    // The program word stays in argv only, behind every wrapper (no `-c` string here).
    for line in [
        "taskset 1 rm -rf /",
        "sudo -s rm -rf /",
        "sudo -i rm -rf /",
        "runuser -u bob rm -rf /",
        "watch -x rm -rf /",
        "flock /tmp/l rm -rf /",
        "sudo -u root nice -n 5 rm -rf /",
    ] {
        assert_eq!(runs(line).len(), 1, "{line}");
        assert!(!ok(line)[0].dynamic, "{line}");
    }
}

#[test]
fn wrappers_that_start_a_shell_or_hide_their_command() {
    // A shell reading stdin (like bare `sh`), code the host cannot read, or an expansion
    // where the wrapper's command, an option value or an operand is read.
    for line in [
        "su",
        "su -",
        "su root",
        "su - root",
        "su -l bob x.sh",
        "sudo -s",
        "sudo -i",
        "sudo -iu bob",
        "sudo su",
        "sudo su -",
        "sudo bash",
        "sudo -E bash -l",
        "doas -s",
        "runuser -l bob",
        "runuser -u bob",
        "chroot /srv",
        "unshare -r",
        "nsenter -t 1 -m",
        "firejail",
        "pkexec",
        "systemd-run -S",
        "script log",
        "sudo -u $U rm",
        "sudo -u \"$U\" rm",
        "taskset 1 $X",
        "timeout $T rm",
        "nice -n \"$N\" rm",
        "sudo -s $X",
        "env -S 'rm -rf /'",
        "env --split-string='rm -rf /'",
        "su -c \"$X\"",
        "su -s /usr/bin/python3 -c 'x'",
        "su -s \"$S\" -c 'x'",
        "su \"$U\" -c 'x'",
        "su -c 'x' \"$U\"",
        "docker exec c sh -c \"$X\"",
        "flock /tmp/l $X",
        "env BASH_ENV=x bash -c ls",
        "sudo BASH_ENV=x bash -c ls",
        "watch \"$X\"",
    ] {
        assert!(ok(line)[0].dynamic, "{line}");
        assert_eq!(ok(line).len(), 1, "{line}");
    }
    // Nothing runs, or only the program named.
    for line in [
        "sudo -l",
        "sudo -l sh",
        "sudo -v",
        "command -v sh",
        "taskset -p 1 123",
        "taskset -p 123",
        "chrt -p 123",
        "ionice -p 1",
        "strace -p 1",
        "prlimit --pid 1",
        "env",
        "nice",
        "flock 9",
        "exec > /dev/null",
        "sudo apt install zsh",
        "which bash",
        "ls -l /bin/sh",
        "grep -c sh file",
        "echo sh",
        "timeout 5 rm x",
    ] {
        assert_eq!(runs(line).len(), 1, "{line}");
        assert!(!ok(line)[0].dynamic, "{line}");
    }
    // Over-approximation of the general rule: any `sh -c CODE` among the words is read.
    assert_eq!(sums("echo sh -c 'rm x'")[1], "rm x [d1 ShellC ^0]");
    // Wrappers nest and are cheap: no recursion.
    let many = format!("{}sh -c 'rm x'", "sudo nice ".repeat(5_000));
    assert_eq!(ok(&many).len(), 2);
}

#[test]
fn word_lists_use_single_spaces() {
    let tables = WRAPPERS.iter().flat_map(|w| {
        let lists = [
            w.names, w.long, w.inert, w.code, w.interp, w.opaque, w.shell, w.exec,
        ];
        lists.into_iter().filter(|l| !l.is_empty())
    });
    for list in [KEYWORDS, BUILTINS, SHELLS, OPAQUE, FIND_EXEC]
        .into_iter()
        .chain(tables)
    {
        let words: Vec<&str> = list.split_whitespace().collect();
        assert_eq!(list, words.join(" "), "{list:?}");
    }
}

#[test]
fn find_exec_and_xargs() {
    assert_eq!(
        sums("find / -exec rm -rf {} \\;"),
        ["find / -exec rm -rf {} ; []", "rm -rf {} [d1 ShellC ^0]"]
    );
    let line = "find . -name x -execdir rm {} + -ok echo {} ';' -print";
    assert_eq!(
        sums(line)[1..],
        ["rm {} [d1 ShellC ^0]", "echo {} [d1 ShellC ^0]"]
    );
    // Executed as files: `echo` is /usr/bin/echo here, the builtin at top level.
    assert_eq!(
        runs(line),
        [
            (Some("/usr/bin/find".into()), false),
            (Some("/usr/bin/rm".into()), false),
            (Some("/usr/bin/echo".into()), false),
        ]
    );
    assert_eq!(runs("echo x")[0].0, None);
    assert_eq!(
        runs("find . -okdir /bin/rm {} \\; -exec {} \\; -exec $X {} +"),
        [
            (Some("/usr/bin/find".into()), true),
            (Some("/bin/rm".into()), false),
            (None, true),
            (None, true),
        ]
    );
    assert_eq!(
        sums("sudo find / -exec sh -c 'rm -rf \"$1\"' _ {} \\;")[1..],
        [
            "sh -c rm -rf \"$1\" _ {} [d1 ShellC ^0]",
            "rm -rf \"$1\" [d2 ShellC ^1]"
        ]
    );
    // `{}` inside a `-c` string is a found path spliced into code: unreadable.
    assert_eq!(
        sums("find . -exec sh -c 'echo {}' \\;")[1],
        "sh -c echo {} [! d1 ShellC ^0]"
    );
    assert_eq!(
        sums("find $(pwd) -exec rm {} \\; > out")[1..],
        ["pwd [d1 CommandSubstitution ^0]", "rm {} [d1 ShellC ^0]"]
    );
    assert_eq!(
        ok("find . -exec rm {} \\; > out")[1].redirections[0].target,
        "out"
    );
    assert_eq!(sums("find / -delete"), ["find / -delete []"]);
    assert_eq!(sums("find . -exec"), ["find . -exec []"]);

    // xargs: dynamic (arguments from stdin), its command listed.
    assert_eq!(
        sums("xargs rm -rf"),
        ["xargs rm -rf [!]", "rm -rf [d1 ShellC ^0]"]
    );
    assert_eq!(
        runs("find . | xargs -0 -n 1 -P4 rm"),
        [
            (Some("/usr/bin/find".into()), false),
            (Some("/usr/bin/xargs".into()), true),
            (Some("/usr/bin/rm".into()), false),
        ]
    );
    assert_eq!(sums("xargs $X"), ["xargs $X [!]", "$X [! d1 ShellC ^0]"]);
    assert_eq!(sums("xargs -I {} {} x")[1], "{} x [! d1 ShellC ^0]");
    assert_eq!(
        sums("xargs -I% sh -c 'rm %'")[1],
        "sh -c rm % [! d1 ShellC ^0]"
    );
    assert_eq!(
        sums("xargs -i sh -c 'rm {}'")[1],
        "sh -c rm {} [! d1 ShellC ^0]"
    );
    assert_eq!(
        sums("xargs sh -c 'rm \"$@\"' _")[1..],
        [
            "sh -c rm \"$@\" _ [d1 ShellC ^0]",
            "rm \"$@\" [d2 ShellC ^1]"
        ]
    );
    assert_eq!(sums("xargs sh")[1], "sh [! d1 ShellC ^0]");
    assert_eq!(sums("xargs"), ["xargs [!]"]);
    assert_eq!(sums("xargs -d \"$D\" rm"), ["xargs -d \"$D\" rm [!]"]);
    assert_eq!(
        sums("sudo xargs -a list nice rm")[1..],
        ["nice rm [d1 ShellC ^0]"]
    );
    // Commands run from words nest like `-c` strings, up to the depth limit.
    fails(&format!("{}rm", "xargs ".repeat(100)));
    assert_eq!(ok(&format!("{}rm", "xargs ".repeat(10))).len(), 11);
}

#[test]
fn compound_and_substitutions() {
    let ps = [
        "diff <( ls a ) >( ls b ) []",
        "ls a [d1 ProcessSubstitution ^0]",
        "ls b [d1 ProcessSubstitution ^0]",
    ];
    assert_eq!(sums("diff <(ls a) >(ls b)"), ps);
    assert_eq!(
        sums("(cd /tmp && rm -rf x)"),
        ["cd /tmp [d1 Subshell]", "rm -rf x [p1 And d1 Subshell]"]
    );
    assert_eq!(sums("{ rm -rf x; }"), ["rm -rf x [d1 BraceGroup]"]);
    assert_eq!(
        sums("if true; then rm -rf x; fi"),
        ["true [d1 Compound]", "rm -rf x [d1 Compound]"]
    );
    assert_eq!(
        sums("f() { rm -rf x; }; f"),
        ["rm -rf x [d1 Function]", "f [p1 Sequence]"]
    );
    assert_eq!(ok("f() { rm -rf x; }; f")[1].program, None);
    let got = sums("for f in $(ls); do echo $(cat $f) | sh; done &");
    let want = [
        "ls [bg d2 CommandSubstitution]",
        "echo $(cat $f) [bg d1 Compound]",
        "cat $f [bg d2 CommandSubstitution ^1]",
        "sh [! s1 bg d1 Compound]",
    ];
    assert_eq!(got, want);
    let want = [
        "echo $(a $(b)) `c` []",
        "a $(b) [d1 CommandSubstitution ^0]",
        "b [d2 CommandSubstitution ^1]",
        "c [d1 CommandSubstitution ^0]",
    ];
    assert_eq!(sums("echo $(a $(b)) `c`"), want);
    let want = [
        "[[ []",
        "id [d1 CommandSubstitution ^0]",
        "(( [p1 And]",
        "whoami [d1 CommandSubstitution ^2]",
    ];
    assert_eq!(sums("[[ -f $(id) ]] && (( x + $(whoami) ))"), want);
    assert_eq!(sums("coproc rm x"), ["rm x [bg d1 Subshell]"]);
    // brush alone reads these as arithmetic; bash runs `rm` in nested subshells.
    for line in [
        "( (rm -rf /) )",
        "(( rm -rf /) )",
        "( ( ( ( rm ) ) ) )",
        "x; ( (a) ); ( (b) )",
    ] {
        assert!(
            ok(line)
                .iter()
                .any(|c| c.argv[0] != "((" && c.position.depth >= 2),
            "{line}"
        );
    }
    assert_eq!(sums("((1 + (2)))"), ["(( []"]);
}

#[test]
fn redirections_and_assignments() {
    let r = |line: &str| {
        let rs = ok(line).swap_remove(0).redirections.into_iter();
        rs.map(|r| {
            format!(
                "{:?}{}{}{}",
                r.fd,
                r.op,
                r.target,
                if r.dynamic { "!" } else { "" }
            )
        })
        .collect::<Vec<_>>()
    };
    assert_eq!(r("echo hi > /etc/passwd"), ["None>/etc/passwd"]);
    assert_eq!(r("cat < in 2>&1"), ["None<in", "Some(2)>&1"]);
    assert_eq!(
        r("cat &>> \"$F\" <<< 'a b' <> x >| y"),
        ["None&>>\"$F\"!", "None<<<a b", "None<>x", "None>|y"]
    );
    assert_eq!(r("cat <<'EOF'\nbody $(rm)\nEOF"), ["None<<EOF"]);
    let c = ok("cat <<EOF\nbody\nEOF").swap_remove(0);
    assert_eq!(
        (
            c.redirections[0].op.as_str(),
            c.redirections[0].body.as_deref()
        ),
        ("<<", Some("body\n"))
    );
    assert_eq!(
        sums("sh <<EOF\n$(rm -rf /)\nEOF"),
        ["sh [!]", "rm -rf / [d1 CommandSubstitution ^0]"]
    );
    assert_eq!(r("{ rm x; } > out"), ["None>out"]);
    assert_eq!(r("while read l; do :; done < f"), ["None<f"]);
    assert_eq!(ok("bash -c 'rm x' 2> err")[1].redirections[0].target, "err");
    assert_eq!(
        (sums("> /etc/passwd"), r("> /etc/passwd")),
        (
            vec![" []".to_string()],
            vec!["None>/etc/passwd".to_string()]
        )
    );
    let c = ok("FOO=1 env").swap_remove(0);
    assert_eq!(
        (c.assignments, c.argv),
        (vec!["FOO=1".to_string()], vec!["env".to_string()])
    );
    assert_eq!(
        serde_json::to_value(Context::CommandSubstitution).unwrap(),
        "command-substitution"
    );
    assert_eq!(serde_json::to_value(Connector::Start).unwrap(), "start");
}

#[test]
fn unparsable_and_hostile() {
    for line in [
        "echo \"unterminated",
        "if then fi",
        "(((",
        "echo $(",
        "a && ",
        "echo a\0b",
        "bash -c 'if then'",
    ] {
        fails(line);
    }
    let small = std::thread::Builder::new().stack_size(2 << 20);
    let run = small.spawn(|| {
        for n in [10_000, 100] {
            fails(&"$(".repeat(n));
            fails(&format!("{}x{}", "$(".repeat(n), ")".repeat(n)));
            fails(&format!("{}x{}", "( ".repeat(n), " )".repeat(n)));
            fails(&format!(
                "{}true{}",
                "if ".repeat(n),
                "; then :; fi".repeat(n)
            ));
            fails(&format!("{} rm", "eval ".repeat(n)));
        }
        fails(&format!("{}x{}", "(".repeat(10_000), ")".repeat(10_000)));
        assert_eq!(
            ok(&format!("{}x{}", "( ".repeat(40), " )".repeat(40)))[0]
                .position
                .depth,
            40
        );
        assert_eq!(
            ok(&format!("echo {}", "$(echo ".repeat(30) + &")".repeat(30))).len(),
            31
        );
        assert_eq!(ok(&"a;".repeat(5_000)).len(), 5_000);
        assert_eq!(ok(&format!("{} rm", "eval ".repeat(60))).len(), 61);
    });
    run.unwrap().join().unwrap();
    // Shell-ish noise never panics, and unparsed lines have no commands.
    let alphabet: Vec<char> = "$(){}\"'`;|&<> \n\\ab#*?[]!=~-c".chars().collect();
    let mut seed = 42u64;
    for _ in 0..3000 {
        let mut line = String::new();
        for _ in 0..(seed % 40) {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            line.push(alphabet[(seed >> 33) as usize % alphabet.len()]);
        }
        let p = parse(&line, &resolve);
        assert!(p.unparsed.is_none() || p.commands.is_empty());
        assert!(
            !p.unparsed.unwrap_or_default().contains("panicked"),
            "{line:?}"
        );
    }
}

#[test]
#[ignore = "timing report: cargo test -- --ignored --nocapture"]
fn timing() {
    let typical = "cd /src && cargo build --release 2>&1 | tail -n 20".to_string();
    for line in [
        typical,
        "a;".repeat(5_000),
        format!("echo {}", "x".repeat(10_000)),
    ] {
        let (n, t) = (200, std::time::Instant::now());
        for _ in 0..n {
            std::hint::black_box(parse(&line, &resolve));
        }
        println!("{} bytes: {:?} per parse", line.len(), t.elapsed() / n);
    }
}
