//! Splits a POSIX shell command line into the simple commands it would run, for hooks that
//! judge or rewrite commands: every part of a line chained with `;`, `&`, `&&`, `||`, `|` or a
//! newline, inside `( … )` and `{ …; }` groups, and inside `$( … )`, backticks and `<( … )` /
//! `>( … )` substitutions (also within double quotes) is returned as its own [`Simple`].
//!
//! It is a judge's tokenizer, not a shell: it does no expansion, keeps quoted text as written
//! without the quotes, reads here-document bodies as if they were commands, and so errs on the
//! side of finding a command where a real shell might see plain text. Hooks that deny must
//! assume it can be fooled by anything a shell evaluates at run time (`eval "$x"`, aliases,
//! variables holding command names) and say so in their docs.
//!
//! Over 500 lines: a tokenizer for the whole POSIX grammar a judge needs. Only `venv-setup` still
//! uses it (it looks through wrappers, which the 0.2.0 parse leaves in `argv`); new hooks should
//! read the host's parse (`request.commands`) instead.

/// One simple command: its words (quotes removed) and where it redirects output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Simple {
    /// Leading `NAME=value` assignments are kept here, not in `words`.
    pub assignments: Vec<String>,
    /// The command word and its arguments.
    pub words: Vec<String>,
    /// Targets of output redirections (`>`, `>>`, `>|`, `&>`, `N>`).
    pub redirects: Vec<String>,
    /// Command lines of the substitutions in this command's words (`$( … )`, backticks,
    /// `<( … )`), unparsed; they are parsed into [`Line::pipelines`] too.
    pub substitutions: Vec<String>,
}

impl Simple {
    /// The command word, if any.
    pub fn program(&self) -> Option<&str> {
        self.words.first().map(String::as_str)
    }

    /// The words joined with single spaces.
    pub fn text(&self) -> String {
        self.words.join(" ")
    }
}

/// A parsed command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Line {
    /// Each pipeline (`a | b | c`) as its simple commands in order, including pipelines found
    /// inside substitutions (after the pipeline of the command that holds them).
    pub pipelines: Vec<Vec<Simple>>,
}

impl Line {
    /// Every simple command, in order.
    pub fn commands(&self) -> impl Iterator<Item = &Simple> {
        self.pipelines.iter().flatten()
    }
}

/// Reserved words that may start a command without being its program.
const KEYWORDS: &[&str] = &[
    "!", "{", "}", "if", "then", "else", "elif", "fi", "while", "until", "do", "done", "case",
    "esac", "in", "function", "select", "time",
];

/// Parses a command line. Substitutions nested deeper than 16 levels are not parsed further.
pub fn parse(line: &str) -> Line {
    let mut out = Line::default();
    parse_into(line, 0, &mut out);
    out
}

fn parse_into(line: &str, depth: usize, out: &mut Line) {
    let mut p = Parser {
        chars: line.chars().collect(),
        i: 0,
        pipeline: Vec::new(),
        cmd: Simple::default(),
        word: None,
        pending_redirect: None,
        nested: Vec::new(),
    };
    p.run();
    let Parser {
        pipeline, nested, ..
    } = p;
    for pl in pipeline {
        if !pl.is_empty() {
            out.pipelines.push(pl);
        }
    }
    if depth < 16 {
        for n in nested {
            parse_into(&n, depth + 1, out);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Redirect {
    Output,
    Input,
}

struct Parser {
    chars: Vec<char>,
    i: usize,
    /// Finished pipelines; the last one is the one being built.
    pipeline: Vec<Vec<Simple>>,
    cmd: Simple,
    /// The word being read, if one has started (an empty quoted word is still a word).
    word: Option<String>,
    /// The next word is the target of this redirection.
    pending_redirect: Option<Redirect>,
    /// Substitution bodies, parsed after this line.
    nested: Vec<String>,
}

impl Parser {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.i + ahead).copied()
    }

    fn push_char(&mut self, c: char) {
        self.word.get_or_insert_with(String::new).push(c);
    }

    fn end_word(&mut self) {
        let Some(word) = self.word.take() else { return };
        match self.pending_redirect.take() {
            Some(Redirect::Output) => self.cmd.redirects.push(word),
            Some(Redirect::Input) => {}
            None => {
                let is_assignment = self.cmd.words.is_empty()
                    && word.split_once('=').is_some_and(|(name, _)| is_name(name));
                if is_assignment {
                    self.cmd.assignments.push(word);
                } else if self.cmd.words.is_empty() && KEYWORDS.contains(&word.as_str()) {
                    // `if x`, `! y`, `{ z; }`: the command is what follows.
                } else {
                    self.cmd.words.push(word);
                }
            }
        }
    }

    fn end_command(&mut self) {
        self.end_word();
        let cmd = std::mem::take(&mut self.cmd);
        if cmd.words.is_empty() && cmd.assignments.is_empty() && cmd.redirects.is_empty() {
            return;
        }
        if self.pipeline.is_empty() {
            self.pipeline.push(Vec::new());
        }
        self.pipeline.last_mut().unwrap().push(cmd);
    }

    fn end_pipeline(&mut self) {
        self.end_command();
        if self.pipeline.last().is_none_or(|p| !p.is_empty()) {
            self.pipeline.push(Vec::new());
        }
    }

    /// Reads up to the `)` that closes a `(` already consumed, honouring quotes and nesting.
    fn balanced(&mut self) -> String {
        let start = self.i;
        let mut depth = 1usize;
        while let Some(c) = self.peek(0) {
            match c {
                '\\' => self.i += 1,
                '\'' => {
                    self.i += 1;
                    while self.peek(0).is_some_and(|c| c != '\'') {
                        self.i += 1;
                    }
                }
                '"' => {
                    self.i += 1;
                    while let Some(c) = self.peek(0) {
                        if c == '\\' {
                            self.i += 1;
                        } else if c == '"' {
                            break;
                        }
                        self.i += 1;
                    }
                }
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        let body: String = self.chars[start..self.i].iter().collect();
                        self.i += 1;
                        return body;
                    }
                }
                _ => {}
            }
            self.i += 1;
        }
        self.chars[start..].iter().collect()
    }

    /// Reads up to the closing backtick (one already consumed).
    fn backticks(&mut self) -> String {
        let mut body = String::new();
        while let Some(c) = self.peek(0) {
            self.i += 1;
            match c {
                '\\' => {
                    if let Some(n) = self.peek(0) {
                        body.push(n);
                        self.i += 1;
                    }
                }
                '`' => break,
                c => body.push(c),
            }
        }
        body
    }

    /// Handles `$`: a command substitution, an arithmetic expansion or a plain `$`.
    fn dollar(&mut self) {
        if self.peek(1) == Some('(') {
            if self.peek(2) == Some('(') {
                // `$(( … ))` arithmetic: no command runs (unless nested, which `balanced` skips).
                self.i += 3;
                let body = self.balanced();
                self.push_text(&format!("$(({body})"));
                if self.peek(0) == Some(')') {
                    self.i += 1;
                }
                self.push_char(')');
                return;
            }
            self.i += 2;
            let body = self.balanced();
            self.substitution(body, "$(", ")");
        } else {
            self.push_char('$');
            self.i += 1;
        }
    }

    fn push_text(&mut self, s: &str) {
        self.word.get_or_insert_with(String::new).push_str(s);
    }

    /// Records a substitution: the word keeps its text, the body is parsed as its own line.
    fn substitution(&mut self, body: String, open: &str, close: &str) {
        self.push_text(&format!("{open}{body}{close}"));
        self.cmd.substitutions.push(body.clone());
        self.nested.push(body);
    }

    fn run(&mut self) {
        while let Some(c) = self.peek(0) {
            match c {
                ' ' | '\t' | '\r' => {
                    self.end_word();
                    self.i += 1;
                }
                '\n' | ';' => {
                    self.end_pipeline();
                    self.i += 1;
                }
                '#' if self.word.is_none() => {
                    while self.peek(0).is_some_and(|c| c != '\n') {
                        self.i += 1;
                    }
                }
                '\\' => {
                    match self.peek(1) {
                        Some('\n') => {}
                        Some(n) => self.push_char(n),
                        None => {}
                    }
                    self.i += 2;
                }
                '\'' => {
                    self.i += 1;
                    self.word.get_or_insert_with(String::new);
                    while let Some(c) = self.peek(0) {
                        self.i += 1;
                        if c == '\'' {
                            break;
                        }
                        self.push_char(c);
                    }
                }
                '"' => {
                    self.i += 1;
                    self.word.get_or_insert_with(String::new);
                    self.double_quoted();
                }
                '`' => {
                    self.i += 1;
                    let body = self.backticks();
                    self.substitution(body, "`", "`");
                }
                '$' => self.dollar(),
                '<' | '>' if self.peek(1) == Some('(') => {
                    self.i += 2;
                    let body = self.balanced();
                    let open = if c == '<' { "<(" } else { ">(" };
                    self.substitution(body, open, ")");
                }
                '>' | '<' => self.redirect(c),
                '&' if self.peek(1) == Some('>') => {
                    self.end_word();
                    self.i += 1;
                    self.redirect('>');
                }
                '|' => {
                    self.end_command();
                    if self.peek(1) == Some('|') {
                        self.end_pipeline();
                        self.i += 2;
                    } else {
                        // `|` or `|&`: the next command reads this one's output.
                        self.i += if self.peek(1) == Some('&') { 2 } else { 1 };
                    }
                }
                '&' => {
                    self.end_pipeline();
                    self.i += if self.peek(1) == Some('&') { 2 } else { 1 };
                }
                '(' | ')' => {
                    self.end_pipeline();
                    self.i += 1;
                }
                c => {
                    self.push_char(c);
                    self.i += 1;
                }
            }
        }
        self.end_pipeline();
    }

    fn double_quoted(&mut self) {
        while let Some(c) = self.peek(0) {
            match c {
                '"' => {
                    self.i += 1;
                    return;
                }
                '\\' => {
                    match self.peek(1) {
                        Some(n @ ('"' | '\\' | '$' | '`')) => self.push_char(n),
                        Some('\n') => {}
                        Some(n) => {
                            self.push_char('\\');
                            self.push_char(n);
                        }
                        None => {}
                    }
                    self.i += 2;
                }
                '`' => {
                    self.i += 1;
                    let body = self.backticks();
                    self.substitution(body, "`", "`");
                }
                '$' => self.dollar(),
                c => {
                    self.push_char(c);
                    self.i += 1;
                }
            }
        }
    }

    /// `>`, `>>`, `>|`, `<`, `<<`, `<<<`, `<>`, with an optional fd number just before
    /// (`2>`) and `>&N` / `<&N` duplications, whose target is not a file.
    fn redirect(&mut self, c: char) {
        if self
            .word
            .as_deref()
            .is_some_and(|w| w.chars().all(|d| d.is_ascii_digit()))
        {
            self.word = None; // the fd number belongs to the operator
        } else {
            self.end_word();
        }
        self.i += 1;
        let mut kind = if c == '>' {
            Redirect::Output
        } else {
            Redirect::Input
        };
        while let Some(n) = self.peek(0) {
            match n {
                '>' | '|' => {
                    if c == '<' {
                        kind = Redirect::Output; // `<>` opens for writing too
                    }
                    self.i += 1;
                }
                '<' => self.i += 1,
                '&' => {
                    // `>&2`, `2>&1`: duplicates a descriptor; `>& file` (bash) is a file.
                    self.i += 1;
                    if self.peek(0).is_some_and(|d| d.is_ascii_digit() || d == '-') {
                        while self.peek(0).is_some_and(|d| d.is_ascii_digit() || d == '-') {
                            self.i += 1;
                        }
                        return;
                    }
                }
                _ => break,
            }
        }
        self.pending_redirect = Some(kind);
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Programs that run another program given as their arguments, with how many of their own
/// option words take a value. [`unwrap`] looks through them.
const WRAPPERS: &[&str] = &[
    "sudo", "doas", "env", "nice", "nohup", "time", "command", "exec", "timeout", "stdbuf",
    "ionice", "chrt", "taskset", "xargs", "setsid", "unbuffer", "strace", "ltrace", "builtin",
    "busybox", "su",
];

/// Options of wrappers that take a separate value word.
fn option_takes_value(wrapper: &str, opt: &str) -> bool {
    matches!(
        (wrapper, opt),
        (
            "sudo",
            "-u" | "-g" | "-C" | "-D" | "-h" | "-p" | "-r" | "-t" | "-U"
        ) | ("doas", "-u" | "-C")
            | ("env", "-u" | "-C" | "-S")
            | ("nice", "-n")
            | ("timeout", "-s" | "-k" | "--signal" | "--kill-after")
            | ("stdbuf", "-i" | "-o" | "-e")
            | ("ionice", "-c" | "-n" | "-p")
            | ("taskset", "-p")
            | (
                "xargs",
                "-a" | "-d" | "-E" | "-I" | "-L" | "-n" | "-P" | "-s"
            )
            | ("strace" | "ltrace", "-e" | "-o" | "-p" | "-s")
            | ("su", "-c" | "-s" | "-g")
    )
}

/// The words of the program a simple command really runs, looking through wrappers such as
/// `sudo`, `env VAR=x`, `nice -n 5`, `timeout 10`, `xargs` and `busybox`, and through a path
/// (`/bin/rm` is `rm`). Returns the program's basename followed by its arguments.
pub fn unwrap(words: &[String]) -> Vec<String> {
    let mut i = 0;
    while i < words.len() {
        let name = basename(&words[i]);
        if !WRAPPERS.contains(&name) {
            break;
        }
        i += 1;
        // `timeout 10 cmd`, `chrt 5 cmd`, `taskset 0x1 cmd`: one positional value first.
        let mut positional = matches!(name, "timeout" | "chrt" | "taskset");
        while i < words.len() {
            let w = words[i].as_str();
            if w == "--" {
                i += 1;
                break;
            }
            if w.starts_with('-') && w.len() > 1 {
                i += if option_takes_value(name, w) { 2 } else { 1 };
            } else if name == "env" && w.contains('=') {
                i += 1;
            } else if positional {
                positional = false;
                i += 1;
            } else {
                break;
            }
        }
    }
    let mut rest: Vec<String> = words[i.min(words.len())..].to_vec();
    if let Some(first) = rest.first_mut() {
        *first = basename(first).to_string();
    }
    rest
}

/// The last path component of a command word (`/usr/bin/rm` → `rm`).
pub fn basename(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

/// Matches `text` against a glob where `*` matches any run of characters and `?` any one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn programs(line: &str) -> Vec<String> {
        parse(line).commands().map(|c| c.text()).collect()
    }

    #[test]
    fn splits_every_operator_and_substitution() {
        assert_eq!(
            programs("a 1; b && c || d | e & f\ng $(h \"$(i)\") `j` <(k) (l) { m; }"),
            [
                "a 1",
                "b",
                "c",
                "d",
                "e",
                "f",
                "g $(h \"$(i)\") `j` <(k)",
                "l",
                "m",
                "h $(i)",
                "i",
                "j",
                "k"
            ]
        );
    }

    #[test]
    fn quotes_are_text_but_substitutions_in_double_quotes_run() {
        assert_eq!(programs("echo 'a; rm -rf /'"), ["echo a; rm -rf /"]);
        assert_eq!(programs("echo \"$(whoami)\""), ["echo $(whoami)", "whoami"]);
        assert_eq!(programs("echo '$(whoami)'"), ["echo $(whoami)"]);
    }

    #[test]
    fn redirects_and_assignments() {
        let line = parse("A=1 B=2 cmd x > /dev/sda 2>&1 <in");
        let c = &line.pipelines[0][0];
        assert_eq!(c.assignments, ["A=1", "B=2"]);
        assert_eq!(c.words, ["cmd", "x"]);
        assert_eq!(c.redirects, ["/dev/sda"]);
    }

    #[test]
    fn wrappers_are_looked_through() {
        let w = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            unwrap(&w("sudo -u root env A=1 nice -n 5 /bin/rm -rf /")),
            w("rm -rf /")
        );
        assert_eq!(unwrap(&w("timeout 10 xargs -n 1 rm")), w("rm"));
    }

    #[test]
    fn globs() {
        assert!(glob_match("git push *--force*", "git push origin --force"));
        assert!(!glob_match("git push *--force*", "git push origin"));
        assert!(glob_match("shutdown*", "shutdown"));
    }
}
