// Over 500 lines (~1,650; tests in `parse_tests.rs`) because every bash
// construct needs its arm in the walker, brush needs guarding (stack budget, work cap, the
// `( (` fix), and the wrappers need their option syntax (a table of ~250 lines).
//! One parse of a command line for the pre-hooks: a flat list of its simple commands.
//!
//! The line is parsed once with `brush-parser` (bash grammar: `[[ ]]`, `(( ))`, `<(…)`,
//! here-strings, `|&`, `coproc` are understood) and every hook gets the same [`Parse`].
//!
//! # Order of `commands`
//! Pre-order, in source order: a simple command comes first, then the commands of the command
//! and process substitutions in its words and redirections (left to right, each recursively),
//! then the commands it runs from its words (`find -exec`, `xargs`) or of its `-c`/`eval`
//! string (see "Commands that run commands"). Compound commands (`{ }`, `( )`, `if`,
//! `while`, `until`, `for`, `case`, `coproc`, function bodies) are not listed themselves: their
//! inner commands are, in source order. `[[ … ]]` and `(( … ))` are listed with argv
//! `["[["]` / `["(("]` (their expressions are not split) so that their redirections and
//! substitutions have a command to belong to. A command of only assignments or redirections
//! (`X=$(id)`, `> f`) is listed with an empty argv. Substitutions in a compound command's
//! header (`for` words, `case` word and patterns, `for ((…))`) come before its body's commands,
//! one level deeper than the body, with the enclosing `parent`.
//!
//! # Positions
//! `pipeline` counts the pipelines of one list (the whole line, or the body of one construct:
//! the condition and the body of an `if` are two lists, each counted from 0); `stage` is the
//! index in its pipeline; `after` is the operator before the pipeline (`&` counts as
//! [`Connector::Sequence`]; the previous pipeline then has `background`). `background` is also
//! true for everything nested in a backgrounded construct; `negated` means the pipeline starts
//! with `!`. `depth` grows by one per subshell, brace group, compound body, function body,
//! substitution, `-c`/`eval` string and command run from words; deeper than [`MAX_DEPTH`] is
//! `unparsed`. `parent` is the command whose word, redirection, `-c`/`eval` string or command
//! words hold this one; compound nesting keeps the enclosing `parent` (`None` at top level).
//! Redirections of a compound command (`{ a; } > f`, `while …; done < f`) are copied onto every
//! command inside it, after the inherited ones; the commands of a `-c`/`eval` string, and a
//! command run from words, inherit the redirections of the command that runs them.
//!
//! # Words
//! Quotes are removed (`"r""m"`, `'rm'`, `\rm`, `r\m` and `$'\x72m'` are all `rm`). A word with
//! an expansion keeps its source text and counts as an expansion: `$X`, `${…}`, `$(…)`,
//! backquotes, `$((…))`, `~`, an unquoted glob (`*`, `?`, `[…]`, extglob `@(`, `!(`, `+(`),
//! an unquoted brace expansion (`{a,b}`, `{1..3}`), a `$'…'` escape this module does not decode
//! (`\u`, `\c`, bytes ≥ 0x80 or NUL), and a process substitution (text `<( … )` as brush prints
//! it). A here-document's `target` is its delimiter (quotes removed) and `body` its text; it is
//! `dynamic` when the delimiter is unquoted and the body has an expansion.
//!
//! # `dynamic`
//! A command is `dynamic` when what runs cannot be read from the line:
//! 1. its program word (`argv[0]`) has an expansion (`$X`, `${X}`, `$(echo rm)`, `/bin/r?`);
//! 2. its program, or the command its wrappers run (see "Commands that run commands"), is
//!    `eval` (its static string is also parsed as a nested `shell-c` string), `.`/`source`,
//!    `xargs` (arguments come from stdin), or a non-POSIX shell (`csh tcsh fish`);
//! 3. it, or the command its wrappers run, is a POSIX shell (`sh bash dash zsh ksh mksh ash
//!    rbash yash posh oksh pdksh lksh`, by basename) without `-c` (code from stdin or a file:
//!    `… | base64 -d | sh`, `sudo bash`, `bash x.sh`), with a dynamic option or `-c` string,
//!    with `--rcfile`/`--init-file`, or with an `ENV=` / `BASH_ENV=` assignment (its own, or a
//!    `NAME=value` word of `env`/`sudo`); a static `-c` string is parsed as nested code
//!    (context `shell-c`, `parent` = the command) and the command is then not dynamic;
//! 4. a wrapper's words cannot be read: an expansion where the wrapped command, an option, an
//!    option's value or an operand is read (`sudo $X`, `sudo -u "$U" rm`, `timeout $T rm`,
//!    `su "$U" -c …`), a code string with an expansion or for a shell that is not POSIX
//!    (`su -c "$X"`, `su -s /usr/bin/python3 -c …`), `env -S STRING` (split by env's own
//!    rules), or a wrapper that starts a shell reading stdin (`su`, `sudo -s`, `chroot DIR`);
//! 5. `find` runs a command whose program word has an expansion or holds `{}`
//!    (`find . -exec $X {} \;`).
//!
//! # Commands that run commands
//! A wrapper runs the command given by its later words. Its options are read getopt-style up
//! to the first operand or `--` (`-abc` is a cluster; an option that takes a value takes the
//! rest of the cluster or the next word; `--name=value`, `--name value`, a long name
//! abbreviated), then its operands are skipped (`timeout DURATION`, `chroot DIR`,
//! `taskset MASK`, `flock FILE`, `chrt PRIO` when a number); the next word is the wrapped
//! command, read again, so wrappers nest (`sudo -u root nice -n 5 taskset 1 sh -c …`). The
//! wrappers known, with the options that take a value, are in the table [`WRAPPERS`]:
//! - `sudo doas pkexec env exec command builtin nohup setsid busybox nice ionice time timeout
//!   stdbuf chroot taskset chrt flock prlimit strace ltrace unshare nsenter setpriv systemd-run
//!   firejail` run the wrapped command; `env` and `sudo` skip `NAME=value` words. After an
//!   option that runs nothing (`sudo -l`/`-v`/`-e`, `doas -C`, `command -v`, `taskset -p`,
//!   `chrt -p`, `ionice -p`, `strace -p`, `prlimit -p`, `setpriv -d`) they run nothing. With no
//!   command, `chroot DIR`, `unshare`, `nsenter`, `firejail`, `pkexec`, `sudo -s`/`-i`,
//!   `doas -s` and `systemd-run -S` start a shell reading stdin: dynamic, like a bare `sh`.
//!   `sudo -s CMD …` and `sudo -i CMD …` wrap CMD.
//! - `su`, `runuser` and `script` take options anywhere: the value of `-c`/`--command` (and
//!   `su`'s `-C`/`--session-command`) is parsed like a `-c` string (`su - root -c CODE`); without
//!   one they start a shell reading stdin (dynamic), except `runuser -u USER CMD …`, which wraps
//!   CMD. `flock FILE -c CODE` is parsed the same way.
//! - `watch ARGS…` runs ARGS joined by spaces with `sh -c`: parsed like a `-c` string
//!   (`watch -x` wraps instead).
//! - `xargs [OPTIONS] CMD ARGS…` (dynamic, rule 2) runs CMD ARGS; a word holding its
//!   `-I`/`-i` replace string counts as an expansion (stdin text goes there).
//!
//! The wrapped command stays in argv only (see `program`); the commands of its `-c`/`eval`
//! string (or `su -c`, `watch` string) are nested under the wrapper. A command that `find`
//! (`-exec PROG ARGS… ;`, also `-execdir`, `-ok`, `-okdir`, and `… {} +`) or `xargs` runs is
//! listed as a nested command of its own (context `shell-c`, `parent` = find/xargs, one level
//! deeper), read by all these rules in turn; in its argv a word holding `{}` counts as an
//! expansion (a found path goes there: `find . -exec sh -c 'echo {}' \;` is dynamic).
//!
//! General rule, for wrappers nobody listed: in any other command (not a wrapper above, a
//! shell, `eval`, `.` or `find`), the first later static word naming a POSIX shell (by
//! basename, so also `/bin/sh`) whose options include `-c` is read as that shell by rule 3:
//! its static `-c` string is parsed as nested code (`docker exec box sh -c CODE`,
//! `kubectl exec pod -- bash -lc CODE`), a dynamic one makes the command dynamic. This
//! over-approximates (`echo sh -c 'rm x'` lists `rm x`; a string brush cannot parse makes the
//! line `unparsed`). Not caught: an unknown wrapper of a plain program or of a shell reading
//! stdin (`foo rm -rf /`, `curl x | foo bash`), and an expansion in a `find` argument that
//! splits into `-exec …` (`find . $ACTION`).
//!
//! # `program`
//! `None` when argv is empty or `argv[0]` has an expansion, is a bash builtin or keyword, or
//! names a function defined anywhere in the same shell (the line, or one `-c` string);
//! `argv[0]` as written when it contains `/` (`./rm` stays relative); otherwise
//! `resolve(argv[0])`. A command run by `find -exec` or `xargs` is executed as a file, so a
//! builtin name resolves too (`find . -exec echo {} \;` → `/usr/bin/echo`). A command that is
//! dynamic by rules 2–5 still gets its `program` (`sh` → `/usr/bin/sh`). Builtins that run
//! another program (`exec rm`, `command rm`) and wrappers (`sudo rm`) keep that program in
//! argv only: a policy on programs must look past them.
//!
//! # Limits
//! Lines with a NUL byte are `unparsed`. brush parses recursively, so before each call into it
//! the nesting constructs of the text (`(`, `{`, backquotes and compound keywords) are counted:
//! up to [`INLINE_BUDGET`] the parse runs on the caller's stack, up to [`MAX_BUDGET`] the whole
//! parse is redone on a helper thread with a [`BIG_STACK`] stack, beyond that it is `unparsed`.
//! Nested code is parsed again at each level (`eval eval … rm`), so the bytes handed to brush
//! are capped at [`WORK_FACTOR`] × the line + [`WORK_EXTRA`]; past that the line is `unparsed`.
//! A panic inside brush is caught and reported as `unparsed`.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::LazyLock;

use brush_parser::ast::{self, CommandPrefixOrSuffixItem as Item};
use brush_parser::word::{self, WordPiece, WordPieceWithSource};
use brush_parser::{Parser, ParserOptions};
use serde::{Deserialize, Serialize};

/// Deepest accepted [`Position::depth`]; deeper lines are `unparsed`.
pub const MAX_DEPTH: u32 = 64;
/// Most nesting constructs in one text parsed on the caller's stack.
pub const INLINE_BUDGET: usize = 32;
/// Most nesting constructs in one text parsed at all (on the helper thread).
pub const MAX_BUDGET: usize = 2048;
/// Nested code may make brush parse at most `WORK_FACTOR` × the line + `WORK_EXTRA` bytes.
pub const WORK_FACTOR: usize = 4;
/// See [`WORK_FACTOR`].
pub const WORK_EXTRA: usize = 64 << 10;
/// Stack size of the helper thread used for heavily nested lines.
pub const BIG_STACK: usize = 64 << 20;

/// The parse of one command line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parse {
    /// Every simple command in the line, flat, in the order given in the module docs.
    pub commands: Vec<SimpleCommand>,
    /// Why the line could not be parsed; `commands` is then empty.
    pub unparsed: Option<String>,
}

/// One simple command (`FOO=1 cmd args > file`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimpleCommand {
    /// The words, quotes removed; a word with an expansion keeps its source text.
    pub argv: Vec<String>,
    /// `argv[0]` as an absolute path where static (see the module docs).
    pub program: Option<String>,
    /// What runs depends on data the host cannot see (rules in the module docs).
    pub dynamic: bool,
    /// Where the command sits in the line.
    pub position: Position,
    /// Its redirections: inherited ones (from enclosing compound commands) first.
    pub redirections: Vec<Redirection>,
    /// Assignments before the program, as `NAME=value` source text.
    pub assignments: Vec<String>,
}

/// Where a command sits in the line (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Index of its pipeline in its list (0-based).
    pub pipeline: u32,
    /// Stage within its pipeline (0 = first).
    pub stage: u32,
    /// How its pipeline is joined to the one before it in the same list.
    pub after: Connector,
    /// Its and-or list, or an enclosing one, ends with `&`.
    pub background: bool,
    /// Its pipeline starts with `!`.
    pub negated: bool,
    /// Nesting depth: 0 at top level.
    pub depth: u32,
    /// The innermost construct it sits in.
    pub context: Context,
    /// Index in [`Parse::commands`] of the command whose word, redirection or `-c` string
    /// holds it, or that runs it from its words (`find -exec`, `xargs`).
    pub parent: Option<u32>,
}

/// How a pipeline is joined to the previous one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Connector {
    /// First pipeline of its list.
    #[default]
    Start,
    /// `;`, `&` or a newline.
    Sequence,
    /// `&&`.
    And,
    /// `||`.
    Or,
}

/// The innermost construct a command sits in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Context {
    /// Top level of the line.
    #[default]
    Top,
    /// `( … )` or a `coproc` body.
    Subshell,
    /// `{ …; }`.
    BraceGroup,
    /// Condition or body of `if`, `while`, `until`, `for`, `case`.
    Compound,
    /// A function body.
    Function,
    /// `$(…)` or backquotes, also inside `$((…))`, `${…}` and here-documents.
    CommandSubstitution,
    /// `<(…)` or `>(…)`.
    ProcessSubstitution,
    /// The string of `sh -c` (and the like: `su -c`, `watch`) or of `eval`, parsed again; or
    /// a command that `find -exec` or `xargs` runs.
    ShellC,
}

/// One redirection of a command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirection {
    /// The file descriptor written before the operator (`2>`), if any.
    pub fd: Option<u32>,
    /// The operator: `>`, `>>`, `<`, `<<`, `<<-`, `<<<`, `>&`, `<&`, `&>`, `&>>`, `>|`, `<>`.
    pub op: String,
    /// The target word, quotes removed (here-document: the delimiter).
    pub target: String,
    /// The target (or the here-document body) has an expansion.
    pub dynamic: bool,
    /// The here-document body, as written.
    pub body: Option<String>,
}

/// Parses `line` as a bash command line; `resolve(name)` looks a program up on the job's PATH.
/// Never panics; see the module docs for every rule.
pub fn parse(line: &str, resolve: &dyn Fn(&str) -> Option<String>) -> Parse {
    if line.contains('\0') {
        return unparsed("the line contains a NUL byte".into());
    }
    let walked = match walk(line, false) {
        Err(Fail::Budget) => {
            let owned = line.to_owned();
            match std::thread::Builder::new()
                .name("ccx-parse".into())
                .stack_size(BIG_STACK)
                .spawn(move || walk(&owned, true))
            {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(Fail::Msg("parser panicked".into()))),
                Err(e) => Err(Fail::Msg(format!("cannot start the parser thread: {e}"))),
            }
        }
        r => r,
    };
    match walked {
        Ok(w) => w.finish(resolve),
        Err(Fail::Budget) => unparsed(format!("more than {MAX_BUDGET} nested constructs")),
        Err(Fail::Msg(m)) => unparsed(m),
    }
}

fn unparsed(msg: String) -> Parse {
    Parse {
        commands: Vec::new(),
        unparsed: Some(msg),
    }
}

fn walk(line: &str, big: bool) -> R<Walker> {
    catch_unwind(AssertUnwindSafe(|| {
        let mut w = Walker {
            big,
            out: vec![],
            meta: vec![],
            fns: vec![vec![]],
            shell: 0,
            src: String::new(),
            respace: vec![],
            work: WORK_FACTOR * line.len() + WORK_EXTRA,
        };
        w.program(line, &Frame::default())?;
        Ok(w)
    }))
    .unwrap_or_else(|_| Err(Fail::Msg("the shell parser panicked".into())))
}

enum Fail {
    /// Too many nesting constructs for the current stack.
    Budget,
    Msg(String),
}
type R<T = ()> = Result<T, Fail>;

// Word lists, space-separated (see the module docs).
const KEYWORDS: &str = "if while until for select case function coproc [[ !";
const BUILTINS: &str = ". : [ [[ (( alias bg bind break builtin caller cd command compgen complete \
    compopt continue declare dirs disown echo enable eval exec exit export false fc fg getopts \
    hash help history jobs kill let local logout mapfile popd printf pushd pwd read readarray \
    readonly return set shift shopt source suspend test times trap true type typeset ulimit \
    umask unalias unset wait time coproc select function";
const SHELLS: &str = "sh bash dash zsh ksh mksh ash rbash yash posh oksh pdksh lksh";
const OPAQUE: &str = ". source csh tcsh fish";
const FIND_EXEC: &str = "-exec -execdir -ok -okdir";

/// Whether `word` (not empty) is in `list`, whose words are separated by single spaces.
fn is_in(list: &str, word: &str) -> bool {
    !word.is_empty() && list.split(' ').any(|w| w == word)
}

/// Upper bound of brush's recursion depth for `s`: nesting characters plus compound keywords.
fn budget(s: &str, big: bool) -> R {
    let s = s.replace("\\\n", "");
    let chars = s
        .bytes()
        .filter(|b| matches!(b, b'(' | b'{' | b'`'))
        .count();
    let words = s
        .split(|c: char| c.is_whitespace() || ";&|()<>\"'`$".contains(c))
        .filter(|w| is_in(KEYWORDS, w))
        .count();
    let limit = if big { MAX_BUDGET } else { INLINE_BUDGET };
    if chars + words > limit {
        Err(Fail::Budget)
    } else {
        Ok(())
    }
}

#[derive(Clone, Default)]
struct Frame {
    depth: u32,
    context: Context,
    parent: Option<u32>,
    background: bool,
    redirs: Vec<Redirection>,
}

impl Frame {
    fn position(&self) -> Position {
        let (depth, context, parent, background) =
            (self.depth, self.context, self.parent, self.background);
        Position {
            depth,
            context,
            parent,
            background,
            ..Default::default()
        }
    }

    fn enter(&self, context: Context, parent: Option<u32>, redirs: Vec<Redirection>) -> R<Frame> {
        if self.depth >= MAX_DEPTH {
            return Err(Fail::Msg(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let parent = parent.or(self.parent);
        Ok(Frame {
            depth: self.depth + 1,
            context,
            parent,
            background: self.background,
            redirs,
        })
    }
}

/// Code found inside a word: a substitution's text, or a process substitution's list.
enum Nested<'a> {
    Code(String),
    Proc(&'a ast::CompoundList),
}

#[derive(Default)]
struct Word<'a> {
    text: String,
    /// Unquoted characters only (others as NUL), to spot brace expansion.
    bare: String,
    dynamic: bool,
    subs: Vec<Nested<'a>>,
}

struct Walker {
    big: bool,
    out: Vec<SimpleCommand>,
    /// Per command: its shell (index in `fns`) and what its `argv[0]` is.
    meta: Vec<(usize, Head)>,
    /// Function names defined per shell (the line, then each `-c` string).
    fns: Vec<Vec<String>>,
    shell: usize,
    /// Source of the program being walked, and where brush misread `( (` in it.
    src: String,
    respace: Vec<usize>,
    /// Bytes brush may still parse: nested code is parsed again at every level.
    work: usize,
}

/// What a listed command's `argv[0]` is, for its `program`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Head {
    /// It has an expansion.
    Dynamic,
    /// Static: a builtin, a function or a program.
    Static,
    /// Static and executed as a file (`find -exec`, `xargs`): never a builtin or a function.
    Exec,
}

fn base(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

impl Walker {
    /// Parses and walks `src`. brush reads `( (` and `(( … ) )` as an arithmetic command where
    /// bash sees nested subshells; such spots are split with a newline (`(\n(`) and parsed again.
    fn program(&mut self, src: &str, fr: &Frame) -> R {
        let saved = (
            std::mem::replace(&mut self.src, src.to_owned()),
            std::mem::take(&mut self.respace),
        );
        let marks = (self.out.len(), self.fns.len(), self.fns[self.shell].len());
        let mut r = Ok(());
        for _ in 0..=MAX_DEPTH {
            r = self.program_once(fr);
            if r.is_err() || self.respace.is_empty() {
                break;
            }
            self.out.truncate(marks.0);
            self.meta.truncate(marks.0);
            self.fns.truncate(marks.1);
            self.fns[self.shell].truncate(marks.2);
            let mut chars: Vec<char> = self.src.chars().collect();
            self.respace.sort_unstable();
            for i in self.respace.drain(..).rev() {
                chars.insert((i + 1).min(chars.len()), '\n');
            }
            self.src = chars.into_iter().collect();
            r = Err(Fail::Msg("too many `( (` to split".into()));
        }
        (self.src, self.respace) = saved;
        r
    }

    fn program_once(&mut self, fr: &Frame) -> R {
        budget(&self.src, self.big)?;
        self.work = self.work.saturating_sub(self.src.len());
        if self.work == 0 {
            return Err(Fail::Msg("too much nested code to analyse".into()));
        }
        let prog = Parser::new(self.src.as_bytes(), &ParserOptions::default())
            .parse_program()
            .map_err(|e| Fail::Msg(e.to_string()))?;
        let mut n = 0;
        prog.complete_commands
            .iter()
            .try_for_each(|l| self.list(&l.0, fr, &mut n))
    }

    /// Whether brush's arithmetic command is one for bash too (`((` and `))` unbroken).
    fn arithmetic(&mut self, a: &ast::ArithmeticCommand) -> bool {
        let (start, end) = (a.loc.start.index, a.loc.end.index);
        let text: Vec<char> = self
            .src
            .chars()
            .skip(start)
            .take(end.saturating_sub(start))
            .collect();
        let real = text.starts_with(&['(', '(']) && text.ends_with(&[')', ')']);
        if !real {
            self.respace.push(start);
        }
        real
    }

    fn list(&mut self, items: &[ast::CompoundListItem], fr: &Frame, n: &mut u32) -> R {
        for ast::CompoundListItem(ao, sep) in items {
            let bg = fr.background || matches!(sep, ast::SeparatorOperator::Async);
            let fr = &Frame {
                background: bg,
                ..fr.clone()
            };
            let first = if *n == 0 {
                Connector::Start
            } else {
                Connector::Sequence
            };
            self.pipeline(&ao.first, first, fr, n)?;
            for next in &ao.additional {
                let (after, p) = match next {
                    ast::AndOr::And(p) => (Connector::And, p),
                    ast::AndOr::Or(p) => (Connector::Or, p),
                };
                self.pipeline(p, after, fr, n)?;
            }
        }
        Ok(())
    }

    fn body(&mut self, l: &ast::CompoundList, fr: &Frame) -> R {
        self.list(&l.0, fr, &mut 0)
    }

    fn pipeline(&mut self, p: &ast::Pipeline, after: Connector, fr: &Frame, n: &mut u32) -> R {
        for (stage, cmd) in p.seq.iter().enumerate() {
            let (pipeline, stage, negated) = (*n, stage as u32, p.bang);
            let pos = Position {
                pipeline,
                stage,
                after,
                negated,
                ..fr.position()
            };
            self.command(cmd, pos, fr)?;
        }
        *n += 1;
        Ok(())
    }

    fn command(&mut self, cmd: &ast::Command, pos: Position, fr: &Frame) -> R {
        match cmd {
            ast::Command::Simple(sc) => self.simple(sc, pos, fr),
            ast::Command::Compound(cc, r) => self.compound(cc, r.as_ref(), pos, fr),
            ast::Command::Function(f) => {
                self.fns[self.shell].push(f.fname.value.clone());
                let ast::FunctionBody(cc, r) = &f.body;
                let (redirs, subs) = self.redirects(r.as_ref(), fr)?;
                self.nested(subs, fr, None)?;
                self.compound_body(cc, &fr.enter(Context::Function, None, redirs)?)
            }
            ast::Command::ExtendedTest(t, r) => {
                let mut words = vec![];
                let mut stack = vec![&t.expr];
                while let Some(e) = stack.pop() {
                    use ast::ExtendedTestExpr as E;
                    match e {
                        E::And(a, b) | E::Or(a, b) => stack.extend([&**b, &**a]),
                        E::Not(a) | E::Parenthesized(a) => stack.push(a),
                        E::UnaryTest(_, w) => words.push(w.value.clone()),
                        E::BinaryTest(_, a, b) => words.extend([a.value.clone(), b.value.clone()]),
                    }
                }
                self.pseudo("[[", &words, r.as_ref(), pos, fr)
            }
        }
    }

    /// Lists `[[`/`((` as a command so their redirections and substitutions have an owner.
    fn pseudo(
        &mut self,
        name: &str,
        texts: &[String],
        r: Option<&ast::RedirectList>,
        pos: Position,
        fr: &Frame,
    ) -> R {
        let mut w = Word::default();
        for t in texts {
            self.scan(t, &mut w)?;
        }
        let (redirections, subs) = self.redirects(r, fr)?;
        let cmd = SimpleCommand {
            argv: vec![name.into()],
            position: pos,
            redirections,
            ..Default::default()
        };
        let subs = w.subs.into_iter().chain(subs).collect();
        self.push(cmd, Head::Static, subs, Runs::default(), fr)
    }

    fn redirects<'a>(
        &mut self,
        r: Option<&'a ast::RedirectList>,
        fr: &Frame,
    ) -> R<(Vec<Redirection>, Vec<Nested<'a>>)> {
        let (mut redirs, mut subs) = (fr.redirs.clone(), vec![]);
        for r in r.iter().flat_map(|l| &l.0) {
            redirs.push(self.redirect(r, &mut subs)?);
        }
        Ok((redirs, subs))
    }

    fn compound(
        &mut self,
        cc: &ast::CompoundCommand,
        r: Option<&ast::RedirectList>,
        pos: Position,
        fr: &Frame,
    ) -> R {
        use ast::CompoundCommand as C;
        if let C::Arithmetic(a) = cc {
            if !self.arithmetic(a) {
                return Ok(());
            }
            return self.pseudo("((", std::slice::from_ref(&a.expr.value), r, pos, fr);
        }
        let (redirs, subs) = self.redirects(r, fr)?;
        self.nested(subs, fr, None)?;
        let ctx = match cc {
            C::BraceGroup(_) => Context::BraceGroup,
            C::Subshell(_) | C::Coprocess(_) => Context::Subshell,
            _ => Context::Compound,
        };
        let mut inner = fr.enter(ctx, None, redirs)?;
        inner.background |= matches!(cc, C::Coprocess(_));
        self.compound_body(cc, &inner)
    }

    /// Walks a compound command's header substitutions (`for` words, `case` word and
    /// patterns, arithmetic), then its bodies, all with frame `fr`.
    fn compound_body(&mut self, cc: &ast::CompoundCommand, fr: &Frame) -> R {
        use ast::CompoundCommand as C;
        let texts: Vec<&String> = match cc {
            C::Arithmetic(a) if self.arithmetic(a) => vec![&a.expr.value],
            C::ForClause(f) => f.values.iter().flatten().map(|w| &w.value).collect(),
            C::ArithmeticForClause(f) => {
                let exprs = [&f.initializer, &f.condition, &f.updater];
                exprs.into_iter().flatten().map(|e| &e.value).collect()
            }
            C::CaseClause(c) => {
                let patterns = c.cases.iter().flat_map(|i| &i.patterns);
                std::iter::once(&c.value)
                    .chain(patterns)
                    .map(|w| &w.value)
                    .collect()
            }
            _ => vec![],
        };
        let mut header = Word::default();
        for t in texts {
            self.scan(t, &mut header)?;
        }
        self.nested(header.subs, fr, None)?;
        match cc {
            C::Arithmetic(_) => Ok(()),
            C::BraceGroup(ast::BraceGroupCommand { list, .. })
            | C::Subshell(ast::SubshellCommand { list, .. }) => self.body(list, fr),
            C::ForClause(ast::ForClauseCommand { body, .. })
            | C::ArithmeticForClause(ast::ArithmeticForClauseCommand { body, .. }) => {
                self.body(&body.list, fr)
            }
            C::CaseClause(c) => c
                .cases
                .iter()
                .flat_map(|i| &i.cmd)
                .try_for_each(|l| self.body(l, fr)),
            C::IfClause(i) => {
                self.body(&i.condition, fr)?;
                self.body(&i.then, fr)?;
                for e in i.elses.iter().flatten() {
                    e.condition.iter().try_for_each(|c| self.body(c, fr))?;
                    self.body(&e.body, fr)?;
                }
                Ok(())
            }
            C::WhileClause(w) | C::UntilClause(w) => {
                self.body(&w.0, fr)?;
                self.body(&w.1.list, fr)
            }
            C::Coprocess(c) => {
                let pos = Position {
                    background: true,
                    ..fr.position()
                };
                self.command(&c.body, pos, fr)
            }
        }
    }

    fn simple(&mut self, sc: &ast::SimpleCommand, pos: Position, fr: &Frame) -> R {
        let mut cmd = SimpleCommand {
            position: pos,
            redirections: fr.redirs.clone(),
            ..Default::default()
        };
        let (mut dyns, mut subs) = (vec![], vec![]);
        let prefix = sc.prefix.iter().flat_map(|p| &p.0).map(|i| (i, true));
        for (item, in_prefix) in prefix {
            self.item(item, in_prefix, &mut cmd, &mut dyns, &mut subs)?;
        }
        if let Some(w) = &sc.word_or_name {
            self.arg(&w.value, &mut cmd, &mut dyns, &mut subs)?;
        }
        for item in sc.suffix.iter().flat_map(|s| &s.0) {
            self.item(item, false, &mut cmd, &mut dyns, &mut subs)?;
        }
        let runs = classify(&cmd.argv, &dyns, &cmd.assignments);
        cmd.dynamic = runs.dynamic;
        let head = match dyns.first() {
            Some(false) => Head::Static,
            _ => Head::Dynamic,
        };
        self.push(cmd, head, subs, runs, fr)
    }

    fn arg(
        &mut self,
        text: &str,
        cmd: &mut SimpleCommand,
        dyns: &mut Vec<bool>,
        subs: &mut Vec<Nested<'_>>,
    ) -> R {
        let w = self.word(text)?;
        cmd.argv
            .push(if w.dynamic { text.to_owned() } else { w.text });
        dyns.push(w.dynamic);
        subs.extend(w.subs);
        Ok(())
    }

    fn item<'a>(
        &mut self,
        item: &'a Item,
        in_prefix: bool,
        cmd: &mut SimpleCommand,
        dyns: &mut Vec<bool>,
        subs: &mut Vec<Nested<'a>>,
    ) -> R {
        match item {
            Item::AssignmentWord(_, w) if in_prefix => {
                subs.extend(self.word(&w.value)?.subs);
                cmd.assignments.push(w.value.clone());
            }
            Item::Word(w) | Item::AssignmentWord(_, w) => self.arg(&w.value, cmd, dyns, subs)?,
            Item::IoRedirect(r) => {
                let r = self.redirect(r, subs)?;
                cmd.redirections.push(r);
            }
            Item::ProcessSubstitution(kind, sub) => {
                cmd.argv.push(format!("{kind}{sub}"));
                dyns.push(true);
                subs.push(Nested::Proc(&sub.list));
            }
        }
        Ok(())
    }

    /// Appends `cmd`, then the commands of its substitutions, then those it runs (`runs`:
    /// from its words, or its `-c`/`eval` string).
    fn push(
        &mut self,
        cmd: SimpleCommand,
        head: Head,
        subs: Vec<Nested<'_>>,
        runs: Runs,
        fr: &Frame,
    ) -> R {
        let redirs = cmd.redirections.clone();
        self.out.push(cmd);
        self.meta.push((self.shell, head));
        let idx = Some((self.out.len() - 1) as u32);
        self.nested(subs, fr, idx)?;
        for (argv, dyns) in runs.argvs {
            self.run_words(argv, dyns, idx, &redirs, fr)?;
        }
        if let Some((code, new_shell)) = runs.code {
            let saved = self.shell;
            if new_shell {
                self.shell = self.fns.len();
                self.fns.push(vec![]);
            }
            let r = self.program(&code, &fr.enter(Context::ShellC, idx, redirs)?);
            self.shell = saved;
            r?;
        }
        Ok(())
    }

    /// Lists the command `argv` that command `parent` runs from its words (`find -exec`,
    /// `xargs`) one level below `fr`, with its redirections, then what it runs in turn.
    fn run_words(
        &mut self,
        argv: Vec<String>,
        dyns: Vec<bool>,
        parent: Option<u32>,
        redirs: &[Redirection],
        fr: &Frame,
    ) -> R {
        let fr = &fr.enter(Context::ShellC, parent, redirs.to_vec())?;
        let runs = classify(&argv, &dyns, &[]);
        let cmd = SimpleCommand {
            argv,
            dynamic: runs.dynamic,
            position: fr.position(),
            redirections: redirs.to_vec(),
            ..Default::default()
        };
        let head = if dyns[0] { Head::Dynamic } else { Head::Exec };
        self.push(cmd, head, vec![], runs, fr)
    }

    /// Walks substitutions one level below `fr`, held by command `parent` (if any).
    fn nested(&mut self, subs: Vec<Nested<'_>>, fr: &Frame, parent: Option<u32>) -> R {
        if subs.is_empty() {
            return Ok(());
        }
        let fr = &fr.enter(Context::CommandSubstitution, parent, vec![])?;
        for s in subs {
            match s {
                Nested::Code(c) => self.program(&c, fr)?,
                Nested::Proc(l) => self.body(
                    l,
                    &Frame {
                        context: Context::ProcessSubstitution,
                        ..fr.clone()
                    },
                )?,
            }
        }
        Ok(())
    }

    fn redirect<'a>(
        &mut self,
        r: &'a ast::IoRedirect,
        subs: &mut Vec<Nested<'a>>,
    ) -> R<Redirection> {
        use ast::{IoFileRedirectTarget as T, IoRedirect as I};
        let mut out = Redirection::default();
        let target = match r {
            I::File(fd, kind, target) => {
                (out.fd, out.op) = (fd.and_then(|n| u32::try_from(n).ok()), kind.to_string());
                match target {
                    T::Filename(w) | T::Duplicate(w) => Some(&w.value),
                    T::Fd(n) => {
                        out.target = n.to_string();
                        None
                    }
                    T::ProcessSubstitution(kind, sub) => {
                        (out.target, out.dynamic) = (format!("{kind}{sub}"), true);
                        subs.push(Nested::Proc(&sub.list));
                        None
                    }
                }
            }
            I::HereDocument(fd, h) => {
                (out.fd, out.op) = (
                    fd.and_then(|n| u32::try_from(n).ok()),
                    if h.remove_tabs { "<<-" } else { "<<" }.into(),
                );
                out.target = self.word(&h.here_end.value)?.text;
                out.body = Some(h.doc.value.clone());
                if h.requires_expansion && (h.doc.value.contains('$') || h.doc.value.contains('`'))
                {
                    budget(&h.doc.value, self.big)?;
                    let pieces = word::parse_heredoc(&h.doc.value, &ParserOptions::default())
                        .map_err(|e| Fail::Msg(e.to_string()))?;
                    let mut w = Word::default();
                    self.pieces(&pieces, &h.doc.value, true, &mut w)?;
                    out.dynamic = w.dynamic;
                    subs.extend(w.subs);
                }
                None
            }
            I::HereString(fd, w) => {
                (out.fd, out.op) = (fd.and_then(|n| u32::try_from(n).ok()), "<<<".into());
                Some(&w.value)
            }
            I::OutputAndError(w, append) => {
                out.op = if *append { "&>>" } else { "&>" }.into();
                Some(&w.value)
            }
        };
        if let Some(t) = target {
            let w = self.word(t)?;
            (out.target, out.dynamic) = (if w.dynamic { t.clone() } else { w.text }, w.dynamic);
            subs.extend(w.subs);
        }
        Ok(out)
    }

    fn word<'a>(&mut self, src: &str) -> R<Word<'a>> {
        budget(src, self.big)?;
        let pieces =
            word::parse(src, &ParserOptions::default()).map_err(|e| Fail::Msg(e.to_string()))?;
        let mut w = Word::default();
        self.pieces(&pieces, src, false, &mut w)?;
        let b = &w.bare;
        let glob = b.contains(['*', '?']) || ["@(", "!(", "+("].iter().any(|e| b.contains(e));
        let pair = |open: char, close: char| {
            let (i, j) = (b.find(open)?, b.rfind(close)?);
            (j > i).then(|| &b[i..j])
        };
        let braces = pair('{', '}').is_some_and(|t| t.contains(',') || t.contains(".."));
        w.dynamic |= glob || braces || pair('[', ']').is_some_and(|t| t.len() > 1);
        Ok(w)
    }

    /// Collects the substitutions of `src` (an expression or `${…}` text) into `w`.
    fn scan(&mut self, src: &str, w: &mut Word<'_>) -> R {
        if src.contains('$') || src.contains('`') {
            match self.word(src) {
                Ok(inner) => w.subs.extend(inner.subs),
                Err(Fail::Msg(_)) if !src.contains("$(") && !src.contains('`') => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn pieces(
        &mut self,
        pieces: &[WordPieceWithSource],
        src: &str,
        quoted: bool,
        w: &mut Word<'_>,
    ) -> R {
        for p in pieces {
            match &p.piece {
                WordPiece::Text(t) => {
                    w.text.push_str(t);
                    if !quoted {
                        w.bare.push_str(t);
                    }
                }
                WordPiece::SingleQuotedText(t) => w.text.push_str(t),
                WordPiece::AnsiCQuotedText(t) => match ansi_c(t) {
                    Some(t) => w.text.push_str(&t),
                    None => w.dynamic = true,
                },
                WordPiece::DoubleQuotedSequence(ps)
                | WordPiece::GettextDoubleQuotedSequence(ps) => self.pieces(ps, src, true, w)?,
                WordPiece::EscapeSequence(e) => w.text.push_str(e.get(1..).unwrap_or_default()),
                WordPiece::TildeExpansion(_) => w.dynamic = true,
                WordPiece::CommandSubstitution(c) | WordPiece::BackquotedCommandSubstitution(c) => {
                    w.dynamic = true;
                    w.subs.push(Nested::Code(c.clone()));
                }
                WordPiece::ArithmeticExpression(e) => {
                    w.dynamic = true;
                    self.scan(&e.value, w)?;
                }
                WordPiece::ParameterExpansion(_) => {
                    w.dynamic = true;
                    let text = src.get(p.start_index..p.end_index).unwrap_or_default();
                    if let Some(inner) = text.strip_prefix("${").and_then(|t| t.strip_suffix('}')) {
                        self.scan(inner, w)?;
                    }
                }
            }
            if !matches!(p.piece, WordPiece::Text(_)) && !quoted {
                w.bare.push('\0');
            }
        }
        Ok(())
    }

    fn finish(self, resolve: &dyn Fn(&str) -> Option<String>) -> Parse {
        let mut commands = self.out;
        for (c, &(shell, head)) in commands.iter_mut().zip(&self.meta) {
            c.program = match c.argv.first() {
                _ if head == Head::Dynamic => None,
                Some(a) if a.contains('/') => Some(a.clone()),
                Some(a) if head == Head::Exec && !a.is_empty() => resolve(a),
                Some(a) if !a.is_empty() => {
                    let known = is_in(BUILTINS, a.as_str()) || self.fns[shell].contains(a);
                    if known { None } else { resolve(a) }
                }
                _ => None,
            };
        }
        Parse {
            commands,
            unparsed: None,
        }
    }
}

/// What a simple command runs besides its own program word: the `dynamic` rules 2–5 and its
/// nested code or commands (module docs).
#[derive(Default)]
struct Runs {
    /// The command is `dynamic`.
    dynamic: bool,
    /// Shell code it runs (a `-c`, `eval` or `watch` string), and whether in a new shell.
    code: Option<(String, bool)>,
    /// Commands it runs from its words (`find -exec`, `xargs`): their argv and which words
    /// have an expansion.
    argvs: Vec<(Vec<String>, Vec<bool>)>,
}

impl Runs {
    fn dynamic() -> Runs {
        Runs {
            dynamic: true,
            ..Default::default()
        }
    }

    fn code(code: String, new_shell: bool) -> Runs {
        Runs {
            code: Some((code, new_shell)),
            ..Default::default()
        }
    }

    /// Adds the command `argv` (with `dyns`) that this one runs; a dynamic program makes this
    /// one dynamic too.
    fn run(&mut self, argv: Vec<String>, dyns: Vec<bool>) {
        if let Some(&d) = dyns.first() {
            self.dynamic |= d;
            self.argvs.push((argv, dyns));
        }
    }
}

/// What `argv` runs (`dyns[i]`: word `i` has an expansion; `assignments`: the command's own).
/// Shape: `[WRAPPER [OPTIONS] [OPERANDS]]… PROGRAM ARGS…`.
fn classify(argv: &[String], dyns: &[bool], assignments: &[String]) -> Runs {
    let mut env = assignments.to_vec();
    let mut i = 0;
    while let Some(word) = argv.get(i) {
        if dyns[i] {
            return Runs::dynamic();
        }
        let Some(w) = BY_NAME.get(base(word)) else {
            return program(argv, dyns, i, &env);
        };
        match w.read(argv, dyns, i, &mut env) {
            Step::Command(j) => i = j,
            Step::Done(runs) => return runs,
        }
    }
    Runs::default()
}

/// Where, in a static `argv`, the program its wrappers run is: `Some(0)` when `argv[0]` is
/// no wrapper, `Some(3)` for `sudo -u root rm -rf /`, `None` when the wrappers run nothing
/// (`sudo -l`, `command -v x`) or `argv` is empty. For matchers, which look past wrappers
/// (`programs = ["rm"]` meets `sudo rm`); hooks get the argv as written.
pub fn wrapped(argv: &[String]) -> Option<usize> {
    let dyns = vec![false; argv.len()];
    let mut env = Vec::new();
    let mut i = 0;
    while let Some(word) = argv.get(i) {
        let Some(w) = BY_NAME.get(base(word)) else {
            return Some(i);
        };
        match w.read(argv, &dyns, i, &mut env) {
            Step::Command(j) => i = j,
            Step::Done(_) => return None,
        }
    }
    None
}

/// What the program `argv[i]` (static, not a wrapper) runs: `eval`, `.`, a shell, `find`, or
/// another program with a shell and `-c` among its arguments (the general rule).
fn program(argv: &[String], dyns: &[bool], i: usize, env: &[String]) -> Runs {
    let name = base(&argv[i]);
    if name == "eval" {
        let static_args = dyns[i + 1..].iter().all(|d| !d);
        return Runs {
            dynamic: true,
            code: static_args.then(|| (argv[i + 1..].join(" "), false)),
            ..Default::default()
        };
    }
    if is_in(OPAQUE, name) {
        return Runs::dynamic();
    }
    if is_in(SHELLS, name) {
        return shell(argv, dyns, i, env).1;
    }
    if name == "find" {
        return find(argv, dyns, i);
    }
    for j in i + 1..argv.len() {
        if !dyns[j] && is_in(SHELLS, base(&argv[j])) {
            let (has_c, runs) = shell(argv, dyns, j, env);
            if has_c {
                return runs;
            }
        }
    }
    Runs::default()
}

/// The POSIX shell `argv[i]` (rule 3): whether its options include `-c`, and what it runs.
/// Shape: `sh [-abc…|+o NAME|--long]… [--|-] [CODE|FILE] ARGS…`.
fn shell(argv: &[String], dyns: &[bool], i: usize, env: &[String]) -> (bool, Runs) {
    let (mut j, mut c) = (i + 1, false);
    while let Some(a) = argv.get(j) {
        if dyns[j] || a.starts_with("--rcfile") || a.starts_with("--init-file") {
            return (c, Runs::dynamic());
        }
        if a == "--" || a == "-" {
            j += 1;
            break;
        }
        if a.len() < 2 || !a.starts_with(['-', '+']) {
            break;
        }
        if !a.starts_with("--") {
            c |= a.starts_with('-') && a.contains('c');
            j += usize::from(a.contains(['o', 'O']));
        }
        j += 1;
    }
    let rc = env
        .iter()
        .any(|a| a.starts_with("ENV=") || a.starts_with("BASH_ENV="));
    match argv.get(j) {
        Some(code) if c && !rc && !dyns[j] => (c, Runs::code(code.clone(), true)),
        _ => (c, Runs::dynamic()),
    }
}

/// The commands `find` runs. Shape: `find … -exec PROG ARGS… ;` (also `-execdir`, `-ok`,
/// `-okdir`, and `… {} +`); a word holding `{}` (a found path) counts as an expansion.
fn find(argv: &[String], dyns: &[bool], i: usize) -> Runs {
    let word = |k: usize, w: &str| !dyns[k] && argv[k] == w;
    let mut runs = Runs::default();
    let mut k = i + 1;
    while k < argv.len() {
        let exec = !dyns[k] && is_in(FIND_EXEC, &argv[k]);
        k += 1;
        if !exec {
            continue;
        }
        let start = k;
        let end = |k: usize| word(k, ";") || (word(k, "+") && k > start && word(k - 1, "{}"));
        while k < argv.len() && !end(k) {
            k += 1;
        }
        let dyns = (start..k).map(|x| dyns[x] || argv[x].contains("{}"));
        runs.run(argv[start..k].to_vec(), dyns.collect());
        k += 1;
    }
    runs
}

/// A program that runs the command given in its later words (module docs, "Commands that run
/// commands"). Lists are space-separated; short options are letters.
struct Wrapper {
    /// Its names (basenames).
    names: &'static str,
    /// How its command is given.
    kind: Kind,
    /// Short options that take a value: `-u USER`, `-uUSER`.
    short: &'static str,
    /// Short options whose value is optional and attached: `-i`, `-iR` (xargs).
    attached: &'static str,
    /// Long options that take a value: `--user USER`, `--user=USER`.
    long: &'static str,
    /// Operands between the options and the command: `timeout DURATION`, `flock FILE`.
    operands: usize,
    /// The operands are skipped only when they are numbers (`chrt [PRIO] CMD`).
    numeric: bool,
    /// Options after which no command runs: `sudo -l`, `taskset -p PID`.
    inert: &'static str,
    /// Options whose value is shell code: `su -c CODE`, `flock FILE -c CODE`.
    code: &'static str,
    /// Options naming the shell that runs that code (`su -s SHELL`): it must be a POSIX one.
    interp: &'static str,
    /// Options that make what runs unreadable: `env -S STRING` (split by env's own rules).
    opaque: &'static str,
    /// Options that make it start a shell, which reads stdin without a command: `sudo -s`.
    shell: &'static str,
    /// Options that make a [`Kind::Su`] or [`Kind::Watch`] wrapper run its command words.
    exec: &'static str,
    /// Without a command it starts a shell reading stdin (`chroot DIR`, `unshare`).
    bare_shell: bool,
    /// `NAME=value` words may come before the command (`env`, `sudo`).
    assigns: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `W [OPTIONS] [OPERANDS] CMD ARGS…`: runs CMD ARGS (getopt stops at the first operand).
    Exec,
    /// `su [OPTIONS|OPERANDS]… `: options anywhere; a shell runs the `-c` code, or stdin.
    Su,
    /// `watch [OPTIONS] ARGS…`: `sh -c` runs ARGS joined by spaces.
    Watch,
    /// `xargs [OPTIONS] CMD ARGS…`: runs CMD ARGS plus words read from stdin.
    Xargs,
}

const W: Wrapper = Wrapper {
    names: "",
    kind: Kind::Exec,
    short: "",
    attached: "",
    long: "",
    operands: 0,
    numeric: false,
    inert: "",
    code: "",
    interp: "",
    opaque: "",
    shell: "",
    exec: "",
    bare_shell: false,
    assigns: false,
};

/// The wrappers known by name, with the option syntax that decides where the command starts.
const WRAPPERS: &[Wrapper] = &[
    Wrapper {
        names: "sudo",
        short: "aCcDgpRrTtUu",
        attached: "h",
        long: "auth-type chdir chroot close-from command-timeout group login-class other-user \
            prompt role type user",
        inert: "e K l V v edit list remove-timestamp validate version",
        shell: "i s login shell",
        assigns: true,
        ..W
    },
    Wrapper {
        names: "doas",
        short: "aCu",
        inert: "C L",
        shell: "s",
        ..W
    },
    Wrapper {
        names: "pkexec",
        long: "user",
        bare_shell: true,
        ..W
    },
    Wrapper {
        names: "env",
        short: "aCSu",
        long: "argv0 chdir split-string unset",
        opaque: "S split-string",
        assigns: true,
        ..W
    },
    Wrapper {
        names: "exec",
        short: "a",
        ..W
    },
    Wrapper {
        names: "command",
        inert: "v V",
        ..W
    },
    Wrapper {
        names: "builtin nohup setsid busybox",
        ..W
    },
    Wrapper {
        names: "firejail",
        bare_shell: true,
        ..W
    },
    Wrapper {
        names: "nice",
        short: "n",
        long: "adjustment",
        ..W
    },
    Wrapper {
        names: "ionice",
        short: "cnpPu",
        long: "class classdata pid pgid uid",
        inert: "p P u pid pgid uid",
        ..W
    },
    Wrapper {
        names: "time",
        short: "fo",
        long: "format output",
        ..W
    },
    Wrapper {
        names: "timeout",
        short: "ks",
        long: "kill-after signal",
        operands: 1,
        ..W
    },
    Wrapper {
        names: "stdbuf",
        short: "eio",
        long: "error input output",
        ..W
    },
    Wrapper {
        names: "chroot",
        long: "groups userspec",
        operands: 1,
        bare_shell: true,
        ..W
    },
    Wrapper {
        names: "taskset",
        operands: 1,
        inert: "p pid",
        ..W
    },
    Wrapper {
        names: "chrt",
        short: "DPT",
        long: "sched-deadline sched-period sched-runtime",
        operands: 1,
        numeric: true,
        inert: "m p max pid",
        ..W
    },
    Wrapper {
        names: "flock",
        short: "cEw",
        long: "command conflict-exit-code timeout wait",
        operands: 1,
        code: "c command",
        ..W
    },
    Wrapper {
        names: "prlimit",
        short: "op",
        attached: "cdefilmnqrstuvxy",
        long: "output pid",
        inert: "p pid",
        ..W
    },
    Wrapper {
        names: "strace",
        short: "abeEIoOpPsSuUX",
        long: "abbrev argv0 attach columns detach-on env fault inject output raw read signal \
            status string-limit summary-columns summary-sort-by trace trace-path user verbose \
            write",
        inert: "p attach",
        ..W
    },
    Wrapper {
        names: "ltrace",
        short: "aADeFlnopsuxX",
        long: "align indent library output",
        inert: "p",
        ..W
    },
    Wrapper {
        names: "unshare",
        short: "GRSw",
        long: "boottime load-interp map-group map-groups map-user map-users monotonic \
            propagation root setgid setgroups setuid wd",
        bare_shell: true,
        ..W
    },
    Wrapper {
        names: "nsenter",
        short: "GSt",
        attached: "CimnprTUuw",
        long: "setgid setuid target",
        bare_shell: true,
        ..W
    },
    Wrapper {
        names: "setpriv",
        long: "ambient-caps apparmor-profile bounding-set egid euid groups inh-caps \
            landlock-access landlock-rule pdeathsig regid reuid rgid ruid securebits \
            selinux-label",
        inert: "d dump",
        ..W
    },
    Wrapper {
        names: "systemd-run",
        short: "CEHMpu",
        long: "capsule description expand-environment gid host job-mode machine nice \
            on-active on-boot on-calendar on-startup on-unit-active on-unit-inactive \
            path-property property service-type setenv slice socket-property timer-property \
            uid unit working-directory",
        shell: "S shell",
        ..W
    },
    Wrapper {
        names: "su",
        kind: Kind::Su,
        short: "cCgGsw",
        long: "command group session-command shell supp-group whitelist-environment",
        code: "c C command session-command",
        interp: "s shell",
        ..W
    },
    Wrapper {
        names: "runuser",
        kind: Kind::Su,
        short: "cCgGsuw",
        long: "command group session-command shell supp-group user whitelist-environment",
        code: "c C command session-command",
        interp: "s shell",
        exec: "u user",
        bare_shell: true,
        ..W
    },
    Wrapper {
        names: "script",
        kind: Kind::Su,
        short: "BcEImOoT",
        attached: "t",
        long: "command echo log-in log-io log-out log-timing logging-format output-limit",
        code: "c command",
        ..W
    },
    Wrapper {
        names: "watch",
        kind: Kind::Watch,
        short: "nq",
        attached: "d",
        long: "equexit interval",
        exec: "x exec",
        ..W
    },
    Wrapper {
        names: "xargs",
        kind: Kind::Xargs,
        short: "adEILnPs",
        attached: "eil",
        long: "arg-file delimiter max-args max-chars max-procs process-slot-var",
        ..W
    },
];

/// [`WRAPPERS`] by name.
static BY_NAME: LazyLock<HashMap<&str, &Wrapper>> = LazyLock::new(|| {
    let named = |w: &'static Wrapper| w.names.split(' ').map(move |n| (n, w));
    WRAPPERS.iter().flat_map(named).collect()
});

/// One step through a wrapper: the index of the command it runs, or what it runs otherwise.
enum Step {
    Command(usize),
    Done(Runs),
}

/// An option read by [`Wrapper::options`]: its letter or long name, and its value (text, has
/// an expansion). `--` is read as an option named `--`.
struct Opt {
    name: String,
    value: Option<(String, bool)>,
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

impl Wrapper {
    /// Reads the wrapper `argv[i]`; `NAME=value` words it skips are added to `env`.
    fn read(&self, argv: &[String], dyns: &[bool], i: usize, env: &mut Vec<String>) -> Step {
        let mut opts = vec![];
        let mut k = self.options(argv, dyns, i + 1, &mut opts);
        if self.kind == Kind::Su {
            // Options anywhere: skip operands (user, file) until `--` or a runuser command. A
            // word with an expansion before `--` may be an option (`-s SHELL`): dynamic.
            let open = |opts: &[Opt]| !ended(opts) && !self.has(opts, self.exec);
            while k < argv.len() && open(&opts) {
                if dyns[k] {
                    return Step::Done(Runs::dynamic());
                }
                k = self.options(argv, dyns, k + 1, &mut opts);
            }
        }
        while self.assigns && argv.get(k).is_some_and(|a| is_assignment(a)) {
            env.push(argv[k].clone());
            k += 1;
        }
        for _ in 0..self.operands {
            let number = |a: &String| a.bytes().all(|b| b.is_ascii_digit());
            match argv.get(k) {
                Some(_) if dyns[k] => return Step::Done(Runs::dynamic()),
                Some(a) if !self.numeric || number(a) => {
                    k = self.options(argv, dyns, k + 1, &mut opts);
                }
                _ => {}
            }
        }
        self.outcome(&opts, argv, dyns, k)
    }

    /// What runs, given the options read and the index `k` of the first word after them.
    fn outcome(&self, opts: &[Opt], argv: &[String], dyns: &[bool], k: usize) -> Step {
        if self.has(opts, self.inert) {
            return Step::Done(Runs::default());
        }
        let code = opts.iter().rev().find(|o| is_in(self.code, &o.name));
        let other_values = opts
            .iter()
            .filter(|o| !is_in(self.code, &o.name))
            .any(|o| o.value.as_ref().is_some_and(|v| v.1));
        if self.has(opts, self.opaque) || other_values {
            return Step::Done(Runs::dynamic());
        }
        if let Some(Opt { value, .. }) = code {
            let posix = opts.iter().rev().find(|o| is_in(self.interp, &o.name));
            let posix = posix.is_none_or(|o| {
                o.value
                    .as_ref()
                    .is_some_and(|(v, d)| !d && is_in(SHELLS, base(v)))
            });
            return Step::Done(match value {
                Some((code, false)) if posix => Runs::code(code.clone(), true),
                _ => Runs::dynamic(),
            });
        }
        let runs_words = self.kind == Kind::Exec || self.has(opts, self.exec);
        match argv.get(k) {
            _ if self.kind == Kind::Xargs => Step::Done(xargs(opts, argv, dyns, k)),
            _ if self.kind == Kind::Su && !runs_words => Step::Done(Runs::dynamic()),
            Some(_) if dyns[k] => Step::Done(Runs::dynamic()),
            Some(_) if runs_words => Step::Command(k),
            Some(_) => Step::Done(watch(argv, dyns, k)),
            None => Step::Done(Runs {
                dynamic: self.bare_shell || self.has(opts, self.shell),
                ..Default::default()
            }),
        }
    }

    /// Reads `argv[k..]` as options (getopt style: `-abc` clusters, a value in the rest of the
    /// cluster or the next word, `--name=value` or `--name value`, a long name abbreviated)
    /// up to the first operand, a word with an expansion, or past `--`; returns where it
    /// stopped. `-` alone is skipped (`env -`, `su -`).
    fn options(&self, argv: &[String], dyns: &[bool], mut k: usize, opts: &mut Vec<Opt>) -> usize {
        let word_at = |k: usize| argv.get(k).map(|v| (v.clone(), dyns[k]));
        while let Some(a) = argv.get(k) {
            if dyns[k] {
                return k;
            }
            if a == "--" {
                opts.push(Opt {
                    name: a.clone(),
                    value: None,
                });
                return k + 1;
            }
            if let Some(long) = a.strip_prefix("--") {
                let (name, inline) = match long.split_once('=') {
                    Some((n, v)) => (self.long_name(n), Some((v.to_owned(), false))),
                    None => (self.long_name(long), None),
                };
                let value = match inline {
                    None if is_in(self.long, &name) => {
                        k += 1;
                        word_at(k)
                    }
                    v => v,
                };
                opts.push(Opt { name, value });
            } else if a.len() > 1 && a.starts_with('-') {
                for (at, c) in a.char_indices().skip(1) {
                    let (name, rest) = (c.to_string(), &a[at + c.len_utf8()..]);
                    let value = if self.short.contains(c) && rest.is_empty() {
                        k += 1;
                        word_at(k)
                    } else if self.short.contains(c) || self.attached.contains(c) {
                        Some((rest.to_owned(), false))
                    } else {
                        opts.push(Opt { name, value: None });
                        continue;
                    };
                    opts.push(Opt { name, value });
                    break;
                }
            } else if a != "-" {
                return k;
            }
            k += 1;
        }
        k.min(argv.len())
    }

    /// The long option `name` stands for: itself, or the first listed one it abbreviates.
    fn long_name(&self, name: &str) -> String {
        let lists = [
            self.long,
            self.inert,
            self.code,
            self.interp,
            self.opaque,
            self.shell,
            self.exec,
        ];
        let names = || lists.iter().flat_map(|l| l.split(' '));
        let full = names()
            .find(|n| *n == name)
            .or_else(|| names().find(|n| n.len() > 1 && !name.is_empty() && n.starts_with(name)));
        full.unwrap_or(name).to_owned()
    }

    fn has(&self, opts: &[Opt], list: &str) -> bool {
        opts.iter().any(|o| is_in(list, &o.name))
    }
}

fn ended(opts: &[Opt]) -> bool {
    opts.last().is_some_and(|o| o.name == "--")
}

/// `watch ARGS…` without `-x`: `sh -c` runs ARGS joined by spaces.
fn watch(argv: &[String], dyns: &[bool], k: usize) -> Runs {
    if dyns[k..].iter().any(|d| *d) {
        return Runs::dynamic();
    }
    Runs::code(argv[k..].join(" "), true)
}

/// `xargs [OPTIONS] CMD ARGS…`: dynamic (more arguments come from stdin); CMD ARGS is a
/// command it runs, where a word holding the `-I R`/`-i[R]`/`--replace[=R]` string counts as
/// an expansion (stdin text goes there).
fn xargs(opts: &[Opt], argv: &[String], dyns: &[bool], k: usize) -> Runs {
    let replace = opts
        .iter()
        .rev()
        .find(|o| matches!(o.name.as_str(), "I" | "i" | "replace"))
        .map(|o| match &o.value {
            Some((r, _)) if !r.is_empty() => r.as_str(),
            _ => "{}",
        });
    let mut runs = Runs::dynamic();
    let dyns = (k..argv.len()).map(|x| dyns[x] || replace.is_some_and(|r| argv[x].contains(r)));
    runs.run(argv[k..].to_vec(), dyns.collect());
    runs
}

/// Decodes the body of `$'…'`; `None` for escapes not handled (`\u`, `\c`, bytes ≥ 0x80, NUL).
fn ansi_c(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let e = it.next()?;
        out.push(match e {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'a' => '\x07',
            'b' => '\x08',
            'e' | 'E' => '\x1b',
            'f' => '\x0c',
            'v' => '\x0b',
            '\\' | '\'' | '"' | '?' => e,
            'x' | '0'..='7' => {
                let (radix, mut v) = if e == 'x' {
                    (16, 0)
                } else {
                    (8, e.to_digit(8)?)
                };
                for _ in 0..2 {
                    match it.peek().and_then(|d| d.to_digit(radix)) {
                        Some(d) => (v, _) = (v * radix + d, it.next()),
                        None => break,
                    }
                }
                if v == 0 || v >= 0x80 {
                    return None;
                }
                char::from_u32(v)?
            }
            _ => return None,
        });
    }
    Some(out)
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
