// Over 500 lines only because of the tests: the redactor itself is ~460 lines.
//! Streaming secret redaction, the pure-Rust core of the `secret-redact` output hook (no WIT).
//!
//! One [`Redactor`] per output stream of a job. Each secret becomes `[REDACTED:kind]`; every
//! other byte comes out unchanged and in order. Patterns are matched on bytes with Unicode off
//! (`\w`, `\d`, `\s`, `\b` are ASCII; `(?s:.)` is any byte), leftmost-first, built-ins first.
//! A pattern may name a group `secret`: only that group is replaced and the rest of the match
//! is kept (`Authorization: Bearer [REDACTED:bearer-token]`).
//!
//! Hold-back rule. After a chunk, the buffer (held bytes + chunk) is searched; a match is
//! released only once it is *decided*: an anchored lazy DFA run from its start has died, so no
//! later byte can change it. Bytes are released up to the earliest position whose anchored run
//! is still alive at the end of the buffer (it may start a secret, or a match may still grow:
//! `ghp_` + 36 characters waits for a delimiter); positions are checked in the last `HOLD_MAX`
//! bytes. A run still alive after `HOLD_MAX` bytes ("long") is decided from those bytes alone:
//! if a match starts there within them (the window's end counting as `\z`), the window is
//! redacted and the run goes on, dropping bytes, until it dies or the stream ends; bytes after
//! its last match end are then scanned again (at most `HOLD_MAX` of them are kept, older ones
//! are dropped as part of the secret). Otherwise that position is not a secret. Every decision
//! depends only on the bytes near it, so the output is the same for any split into chunks,
//! provided no pattern can stay undecided for `HOLD_MAX` bytes without matching there yet:
//! true of every built-in (once past its fixed prefix, a token or a key block matches at each
//! further byte of its body). For an extra pattern that breaks this (`A(?s:.)*B`, a far `B`),
//! chunking may change the outcome: the part seen in a window is redacted, or nothing.
use super::prefilter::Prefilter;
use regex_automata::{
    Anchored, Input, Match,
    hybrid::{
        LazyStateID,
        dfa::{Cache as DfaCache, DFA},
    },
    meta::{self, Regex},
    nfa::thompson,
    util::{captures::Captures, syntax},
};

/// The most bytes a [`Redactor`] holds back (also: how far a decision looks ahead).
pub const HOLD_MAX: usize = 8 * 1024;

/// Built-in `(kind, pattern)`, in priority order (kind names as in the `secret-scan` hook).
const BUILTIN: &[(&str, &str)] = &[
    // PEM/armored private keys, the whole block: RFC 7468 §10-11 (`PRIVATE KEY`, `ENCRYPTED
    // PRIVATE KEY`), OpenSSL's `RSA`/`EC`/`DSA PRIVATE KEY` with RFC 1421 headers (`Proc-Type:`,
    // `DEK-Info:`), OpenSSH's `OPENSSH PRIVATE KEY`, RFC 4880 §6.2 `PGP PRIVATE KEY BLOCK` with
    // armor headers. Body lines may be split by newlines, JSON's `\n` or blanks; the block ends
    // at its END line, or (cut short) after its last base64 line.
    (
        "private-key",
        concat!(
            r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----",
            r"(?:(?:\r?\n|\\r\\n|\\n|[ \t])(?:",
            r"(?:Proc-Type|DEK-Info|Version|Comment|Hash|Charset|MessageID): [^\r\n\\]*",
            r"|[A-Za-z0-9+/=]+)?)*",
            r"(?:-----END[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----)?",
        ),
    ),
    // RFC 6750 §2.1: `Authorization: Bearer <b64token>`, b64token = 1*(ALPHA / DIGIT / "-" / "."
    // / "_" / "~" / "+" / "/") *"="; header name and scheme case-insensitive (RFC 9110 §11.1),
    // also quoted as in JSON or Python (`"Authorization": "Bearer …"`). The token only.
    (
        "bearer-token",
        r#"(?i:authorization)["']?[ \t]*[:=][ \t]*["']?(?i:bearer)[ \t]+(?P<secret>[A-Za-z0-9._~+/-]+=*)"#,
    ),
    // AWS secret access key, 40 base64 characters (IAM User Guide, "Manage access keys"), when
    // named: `aws_secret_access_key = …` (~/.aws/credentials), `AWS_SECRET_ACCESS_KEY=…`,
    // `"SecretAccessKey": "…"` (STS output). The value only.
    (
        "aws-secret-access-key",
        r#"(?i:(?:aws_?)?secret_?access_?key)["']?[ \t]*[:=][ \t]*["']?(?P<secret>[A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|\z)"#,
    ),
    // AWS access key ids (IAM User Guide, "Unique ID prefixes"): AKIA long-term, ASIA temporary
    // (STS), ABIA STS service bearer token, ACCA context-specific credential; + 16 [0-9A-Z].
    (
        "aws-access-key-id",
        r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b",
    ),
    // GitHub token formats (docs "About authentication to GitHub", blog 2021-04-05): ghp_
    // personal (classic), gho_ OAuth, ghu_ user-to-server, ghs_ server-to-server, ghr_ refresh,
    // + 36 alphanumerics (longer runs too: GitHub may lengthen them); github_pat_ fine-grained.
    (
        "github-token",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
    ),
    // Slack incoming/workflow webhooks (api.slack.com "Sending messages using incoming
    // webhooks"): https://hooks.slack.com/services/T…/B…/…; the path after the kind only.
    (
        "slack-webhook",
        r"https?://hooks\.slack\.com/(?:services|workflows|triggers)/(?P<secret>[A-Za-z0-9_/-]{8,})",
    ),
    // Slack tokens (api.slack.com "Token types"): xoxb- bot, xoxp- user, xoxa- workspace app,
    // xoxr- refresh, xoxs- session, xoxo-, xoxe- and xoxe.xoxp-/xoxe.xoxb- rotating tokens.
    (
        "slack-token",
        r"\bxox(?:[abeoprs]|e\.xox[bp])-[A-Za-z0-9-]{10,}",
    ),
    // JWT (RFC 7519, JWS compact serialization RFC 7515 §7.1): base64url header (a JSON object,
    // so `eyJ`) . payload . signature.
    (
        "jwt",
        r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{16,}",
    ),
];

/// A streaming redactor for one output stream: [`push`](Self::push) each chunk,
/// [`finish`](Self::finish) at the end. The concatenation of what they return is the same for
/// any split of the input into chunks.
pub struct Redactor {
    re: Regex,
    dfa: DFA,
    /// Per pattern: index into `counts`.
    kind_of: Vec<usize>,
    /// Per pattern: has a group named `secret`.
    has_secret: Vec<bool>,
    /// Per byte: some match may start with it (whatever precedes it).
    starts: [bool; 256],
    /// Where a match may begin, when the patterns allow a filter.
    pre: Option<Prefilter>,
    counts: Vec<(String, u64)>,
    hold: usize,
    cache: meta::Cache,
    dcache: DfaCache,
    caps: Captures,
    /// `buf[..ctx]` (0 or 1 byte) is released look-behind context; `buf[ctx..]` is held.
    buf: Vec<u8>,
    ctx: usize,
    /// Inside a long secret: bytes are dropped while its DFA run lives.
    cont: Option<Cont>,
}

struct Cont {
    sid: LazyStateID,
    /// Bytes after the last match end (maybe part of the secret); `tail[0]` is look-behind.
    tail: Vec<u8>,
}

enum Run {
    Dead,
    Pending,
    Long(LazyStateID),
}

impl Redactor {
    /// The built-in patterns plus `extra`, `(kind, regex source)` pairs from the hook's config,
    /// matched after the built-ins. Errors: `pattern KIND: …` for a bad kind name (non-empty
    /// ASCII letters, digits, `-`, `_`, `.`), a regex that does not parse, or one that can
    /// match the empty string; `patterns: …` if the set as a whole is too big to compile.
    pub fn new(extra: &[(String, String)]) -> Result<Redactor, String> {
        Self::with_hold(extra, HOLD_MAX)
    }

    fn with_hold(extra: &[(String, String)], hold: usize) -> Result<Redactor, String> {
        let syn = syntax::Config::new().unicode(false).utf8(false);
        let all = BUILTIN.iter().map(|&(k, p)| (k, p));
        let all = all.chain(extra.iter().map(|(k, p)| (k.as_str(), p.as_str())));
        let (mut srcs, mut kind_of, mut counts) = (vec![], vec![], Vec::<(String, u64)>::new());
        let mut hirs = vec![];
        for (kind, src) in all {
            let ok = |b: u8| b.is_ascii_alphanumeric() || b"-_.".contains(&b);
            if kind.is_empty() || !kind.bytes().all(ok) {
                return Err(format!(
                    "pattern {kind:?}: a kind is ASCII letters, digits, '-', '_', '.'"
                ));
            }
            let hir = syntax::parse_with(src, &syn).map_err(|e| format!("pattern {kind}: {e}"))?;
            if hir.properties().minimum_len() == Some(0) {
                return Err(format!("pattern {kind}: can match the empty string"));
            }
            let k = counts
                .iter()
                .position(|(c, _)| c == kind)
                .unwrap_or_else(|| {
                    counts.push((kind.to_string(), 0));
                    counts.len() - 1
                });
            srcs.push(src);
            hirs.push(hir);
            kind_of.push(k);
        }
        let pre = Prefilter::new(&hirs);
        // With a prefilter of ours the regex only runs anchored, where its own is not used.
        let re = Regex::builder()
            .syntax(syn)
            .configure(
                Regex::config()
                    .utf8_empty(false)
                    .auto_prefilter(pre.is_none()),
            )
            .build_many(&srcs)
            .map_err(|e| format!("patterns: {e}"))?;
        let dfa = DFA::builder()
            .syntax(syn)
            .thompson(thompson::Config::new().utf8(false))
            .build_many(&srcs)
            .map_err(|e| format!("patterns: {e}"))?;
        let mut dcache = dfa.create_cache();
        let mut starts = [false; 256];
        for (b, start) in starts.iter_mut().enumerate() {
            // One look-behind byte of each kind a start state depends on (and none).
            for hay in [
                &[b as u8][..],
                &[b'a', b as u8],
                &[b' ', b as u8],
                &[b'\n', b as u8],
                &[b'\r', b as u8],
            ] {
                let at = hay.len() - 1;
                let input = Input::new(hay).span(at..hay.len()).anchored(Anchored::Yes);
                let alive = dfa.start_state_forward(&mut dcache, &input).is_ok_and(|s| {
                    dfa.next_state(&mut dcache, s, b as u8)
                        .is_ok_and(|s| !s.is_dead())
                });
                *start |= alive;
            }
        }
        let gi = re.group_info();
        let has_secret = (0..srcs.len())
            .map(|p| gi.to_index(p.try_into().unwrap(), "secret").is_some())
            .collect();
        Ok(Redactor {
            cache: re.create_cache(),
            dcache,
            caps: re.create_captures(),
            re,
            starts,
            pre,
            dfa,
            kind_of,
            has_secret,
            counts,
            hold,
            buf: Vec::new(),
            ctx: 0,
            cont: None,
        })
    }

    /// A redactor for another stream with the same patterns (no recompiling), counts at zero.
    pub fn fresh(&self) -> Redactor {
        let mut counts = self.counts.clone();
        counts.iter_mut().for_each(|c| c.1 = 0);
        Redactor {
            re: self.re.clone(),
            dfa: self.dfa.clone(),
            kind_of: self.kind_of.clone(),
            has_secret: self.has_secret.clone(),
            starts: self.starts,
            pre: self.pre.clone(),
            counts,
            hold: self.hold,
            cache: self.re.create_cache(),
            dcache: self.dfa.create_cache(),
            caps: self.re.create_captures(),
            buf: Vec::new(),
            ctx: 0,
            cont: None,
        }
    }

    /// Feeds one chunk; returns the bytes that may be released now, redacted. Bytes that may
    /// still begin a secret continuing in a later chunk are held back, at most [`HOLD_MAX`].
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len() + 64);
        let mut owned;
        let mut input = chunk;
        loop {
            let used = self.feed_cont(input);
            if self.cont.is_some() {
                return out;
            }
            self.buf.extend_from_slice(&input[used..]);
            match self.scan(&mut out, false) {
                Some(rest) => {
                    owned = rest;
                    input = &owned;
                }
                None => return out,
            }
        }
    }

    /// The stream ended: returns whatever was held back, redacted. The redactor is then ready
    /// for a new stream (counts go on).
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(mut c) = self.cont.take() {
            match self.dfa.next_eoi_state(&mut self.dcache, c.sid) {
                Ok(s) if s.is_match() => self.buf.clear(),
                _ => self.resume(&mut c.tail),
            }
        }
        self.scan(&mut out, true);
        self.buf.clear();
        self.ctx = 0;
        out
    }

    /// Redactions so far by kind, `(kind, count)`: every kind (built-ins, then extra kinds in
    /// config order), zero counts included.
    pub fn counts(&self) -> &[(String, u64)] {
        &self.counts
    }

    /// Bytes held back that may still be released later (at most [`HOLD_MAX`]).
    pub fn held(&self) -> usize {
        let tail = self
            .cont
            .as_ref()
            .map_or(0, |c| (c.tail.len() - 1).min(self.hold));
        self.buf.len() - self.ctx + tail
    }

    /// Normal mode: releases what is decided in `buf`; `Some(rest)` when a long secret begins
    /// (the bytes after its window, to feed to it).
    fn scan(&mut self, out: &mut Vec<u8>, eof: bool) -> Option<Vec<u8>> {
        let n = self.buf.len();
        let (mut pos, mut at) = (self.ctx, self.ctx);
        loop {
            let m = self.next_match(at);
            let stop = m.map_or(n, |m| m.start());
            let mut skip = false;
            if !eof {
                let from = at.max(n.saturating_sub(self.hold));
                // Positions in the last `hold` bytes before the match, then the match's start.
                let mut next = from.min(stop);
                while next < n.min(stop + 1) {
                    let j = if next < stop {
                        self.next_start(next, stop)
                    } else {
                        next
                    };
                    if j == n {
                        break;
                    }
                    next = j + 1;
                    match self.run(j) {
                        Run::Dead => {}
                        Run::Pending => {
                            out.extend_from_slice(&self.buf[pos..j]);
                            self.keep_from(j);
                            return None;
                        }
                        Run::Long(sid) => match self.force(j, sid, pos, out) {
                            Some(rest) => return Some(rest),
                            None => skip |= j == stop,
                        },
                    }
                }
            }
            let Some(m) = m else {
                out.extend_from_slice(&self.buf[pos..]);
                self.keep_from(n);
                return None;
            };
            if skip {
                at = stop + 1;
                continue;
            }
            self.emit(m, pos, out);
            (pos, at) = (m.end(), m.end());
        }
    }

    /// The leftmost-first match in `buf[at..]`: with a prefilter, the first candidate where an
    /// anchored search matches (the same match: leftmost-first picks the earliest start, then
    /// the preferred match there); without one, the meta regex's own search.
    fn next_match(&mut self, at: usize) -> Option<Match> {
        let n = self.buf.len();
        let Some(pre) = &self.pre else {
            return self
                .re
                .search_with(&mut self.cache, &Input::new(&self.buf).span(at..n));
        };
        let mut from = at;
        // Every match begins with a whole literal, so none starts in the last `width - 1`.
        while let Some(i) = pre.find(&self.buf, from, n) {
            let input = Input::new(&self.buf).span(i..n).anchored(Anchored::Yes);
            if let Some(m) = self.re.search_with(&mut self.cache, &input) {
                return Some(m);
            }
            from = i + 1;
        }
        None
    }

    /// The first position in `from..stop` where a match may begin (a run from it may still be
    /// alive at the end of `buf`), or `stop`. Near the end, fewer than a literal's checked bytes
    /// remain, so those positions are judged by their first byte alone.
    fn next_start(&self, from: usize, stop: usize) -> usize {
        let n = self.buf.len();
        let starts = |j: &usize| self.starts[usize::from(self.buf[*j])];
        let near_end = match &self.pre {
            Some(pre) => {
                let near_end = (n + 1).saturating_sub(pre.width()).max(from);
                if let Some(j) = pre.find(&self.buf, from, stop.min(near_end)) {
                    return j;
                }
                near_end
            }
            None => from,
        };
        (near_end..stop).find(starts).unwrap_or(stop)
    }

    /// Anchored DFA run from `j` over at most `hold` bytes of `buf`.
    fn run(&mut self, j: usize) -> Run {
        let n = self.buf.len();
        let input = Input::new(&self.buf).span(j..n).anchored(Anchored::Yes);
        let Ok(mut sid) = self.dfa.start_state_forward(&mut self.dcache, &input) else {
            return Run::Dead;
        };
        let end = n.min(j + self.hold);
        for &b in &self.buf[j..end] {
            if sid.is_dead() || sid.is_quit() {
                return Run::Dead;
            }
            match self.dfa.next_state(&mut self.dcache, sid, b) {
                Ok(s) => sid = s,
                Err(_) => return Run::Dead,
            }
        }
        match () {
            _ if sid.is_dead() || sid.is_quit() => Run::Dead,
            _ if end - j == self.hold => Run::Long(sid),
            _ => Run::Pending,
        }
    }

    /// A run from `j` is alive after `hold` bytes: if a match starts at `j` within them, redact
    /// the window and go on in long mode (returns the bytes after the window).
    fn force(
        &mut self,
        j: usize,
        sid: LazyStateID,
        pos: usize,
        out: &mut Vec<u8>,
    ) -> Option<Vec<u8>> {
        let end = j + self.hold;
        let input = Input::new(&self.buf[..end])
            .span(j..end)
            .anchored(Anchored::Yes);
        self.re
            .search_captures_with(&mut self.cache, &input, &mut self.caps);
        let pid = self.caps.pattern()?;
        let keep = self.caps.get_group_by_name("secret").map_or(j, |g| g.start);
        out.extend_from_slice(&self.buf[pos..keep]);
        self.mark(pid.as_usize(), out);
        let rest = self.buf[end..].to_vec();
        let tail = vec![self.buf[end - 1]];
        self.cont = Some(Cont { sid, tail });
        self.buf.clear();
        self.ctx = 0;
        Some(rest)
    }

    /// Long mode: drops bytes while the run lives; returns how many of `bytes` it used.
    fn feed_cont(&mut self, bytes: &[u8]) -> usize {
        let Some(mut c) = self.cont.take() else {
            return 0;
        };
        for (i, &b) in bytes.iter().enumerate() {
            let prev = *c.tail.last().unwrap();
            c.tail.push(b);
            match self.dfa.next_state(&mut self.dcache, c.sid, b) {
                Ok(s) if !s.is_dead() && !s.is_quit() => c.sid = s,
                _ => {
                    self.resume(&mut c.tail);
                    return i + 1;
                }
            }
            if c.sid.is_match() {
                // The match ends just before `b` (DFA matches are reported one byte late).
                c.tail.clear();
                c.tail.extend_from_slice(&[prev, b]);
            } else if c.tail.len() > 2 * self.hold + 1 {
                c.tail.drain(..c.tail.len() - self.hold - 1);
            }
        }
        self.cont = Some(c);
        bytes.len()
    }

    /// Leaves long mode: the last `hold` bytes of `tail` (after a look-behind byte) are held.
    fn resume(&mut self, tail: &mut Vec<u8>) {
        let keep = (tail.len() - 1).min(self.hold);
        self.buf = tail.split_off(tail.len() - keep - 1);
        self.ctx = 1;
    }

    fn emit(&mut self, m: Match, pos: usize, out: &mut Vec<u8>) {
        let p = m.pattern().as_usize();
        let (mut a, mut b) = (m.start(), m.end());
        if self.has_secret[p] {
            let input = Input::new(&self.buf)
                .span(a..self.buf.len())
                .anchored(Anchored::Yes);
            self.re
                .search_captures_with(&mut self.cache, &input, &mut self.caps);
            if let Some(g) = self.caps.get_group_by_name("secret") {
                (a, b) = (g.start, g.end);
            }
        }
        out.extend_from_slice(&self.buf[pos..a]);
        self.mark(p, out);
        out.extend_from_slice(&self.buf[b..m.end()]);
    }

    fn mark(&mut self, pattern: usize, out: &mut Vec<u8>) {
        let k = self.kind_of[pattern];
        self.counts[k].1 += 1;
        out.extend_from_slice(format!("[REDACTED:{}]", self.counts[k].0).as_bytes());
    }

    /// Everything before `j` is released; `buf[j..]` is held, `buf[j - 1]` kept as context.
    fn keep_from(&mut self, j: usize) {
        if j > 0 {
            self.buf.drain(..j - 1);
        }
        self.ctx = usize::from(j > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM\n+/x9=\n-----END RSA PRIVATE KEY-----";
    const JWT: &str =
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    const HOOK: &str =
        "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX";

    fn ghp() -> String {
        format!("ghp_{}", "a1B2".repeat(9))
    }

    /// Runs a stream through `r`, reused after `finish` (warm caches: debug tests stay quick).
    fn feed(r: &mut Redactor, chunks: &[&[u8]]) -> Vec<u8> {
        let mut out: Vec<u8> = chunks.iter().flat_map(|c| r.push(c)).collect();
        out.extend(r.finish());
        out
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    /// Whole input in one chunk; asserts the same for every 2-split, 1-byte chunks, 3-splits.
    fn splits(r: &mut Redactor, input: &[u8]) -> String {
        let whole = feed(r, &[input]);
        for i in 0..=input.len() {
            let got = feed(r, &[&input[..i], &input[i..]]);
            assert_eq!(
                text(&got),
                text(&whole),
                "split at {i} of {:?}",
                text(input)
            );
        }
        assert_eq!(
            text(&feed(r, &input.chunks(1).collect::<Vec<_>>())),
            text(&whole)
        );
        for i in (0..input.len()).step_by(5) {
            for j in (i..input.len()).step_by(13) {
                let got = feed(r, &[&input[..i], &input[i..j], &input[j..]]);
                assert_eq!(text(&got), text(&whole), "splits at {i}, {j}");
            }
        }
        text(&whole)
    }

    #[test]
    fn each_kind() {
        let mut r = Redactor::new(&[]).unwrap();
        let g = ghp();
        let cases = [
            (format!("x {PEM}\ny"), "x [REDACTED:private-key]\ny".to_string()),
            (format!("{{\"k\": \"{}\\n\"}}", PEM.replace('\n', "\\n")), "{\"k\": \"[REDACTED:private-key]\\n\"}".into()),
            ("-----BEGIN PGP PRIVATE KEY BLOCK-----\r\nVersion: 1\r\n\r\nlQOY\r\n=ab\r\n-----END PGP PRIVATE KEY BLOCK-----\r\n".into(), "[REDACTED:private-key]\r\n".into()),
            ("a.py:if '-----BEGIN EC PRIVATE KEY-----' in s:\n".into(), "a.py:if '[REDACTED:private-key]' in s:\n".into()),
            ("Authorization: Bearer abc.DEF-1~+/==\n".into(), "Authorization: Bearer [REDACTED:bearer-token]\n".into()),
            (r#"{"authorization": "bearer tok_1"}"#.into(), r#"{"authorization": "bearer [REDACTED:bearer-token]"}"#.into()),
            ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n".into(), "aws_secret_access_key = [REDACTED:aws-secret-access-key]\n".into()),
            ("id=AKIAIOSFODNN7EXAMPLE,ASIAIOSFODNN7EXAMPLE".into(), "id=[REDACTED:aws-access-key-id],[REDACTED:aws-access-key-id]".into()),
            (format!("t {g} {g}XYZ github_pat_11ABCDEFG0123456789_abcdefghij"), "t [REDACTED:github-token] [REDACTED:github-token] [REDACTED:github-token]".into()),
            (format!("{HOOK}\n"), "https://hooks.slack.com/services/[REDACTED:slack-webhook]\n".into()),
            ("xoxb-123456789012-abcDEF xoxe.xoxp-1-abcdefghij".into(), "[REDACTED:slack-token] [REDACTED:slack-token]".into()),
            (format!("jwt={JWT};"), "jwt=[REDACTED:jwt];".into()),
        ];
        for (input, want) in cases {
            assert_eq!(splits(&mut r, input.as_bytes()), want);
        }
    }

    #[test]
    fn clean_text_is_byte_exact() {
        let mut r = Redactor::new(&[]).unwrap();
        let mut input =
            b"ok \xff\xfe\x00 bin\x00\n\xc3\x28 ghp_short AKIA12 eyJx.y.z xox-1 ".to_vec();
        input.extend(b"-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n");
        input.extend(b"Authorization: Basic dXNlcjpwYXNz\naws_secret_access_key=short\n");
        input.extend(format!("{}-X\n", &ghp()[..38]).as_bytes());
        assert_eq!(splits(&mut r, &input).as_bytes(), text(&input).as_bytes());
        assert_eq!(feed(&mut r, &[&input]), input);
        let mut s = r.fresh();
        assert_eq!(
            s.push(b"a line\n"),
            b"a line\n",
            "nothing held after a newline"
        );
        assert_eq!(
            s.push(b"see ghp_ab"),
            b"see ",
            "a possible token start is held"
        );
        assert_eq!(s.held(), 6);
        assert_eq!(s.finish(), b"ghp_ab");
    }

    #[test]
    fn mixed_input_any_split() {
        let mut r = Redactor::new(&[]).unwrap();
        let g = ghp();
        let input = format!(
            "start {g}\n{PEM}\nAuthorization: Bearer {JWT}\n\x00{JWT}.\nkey AKIAIOSFODNN7EXAMPLE {g}_x xoxp-99999-abcdefghij {HOOK} end"
        );
        let want = "start [REDACTED:github-token]\n[REDACTED:private-key]\nAuthorization: Bearer [REDACTED:bearer-token]\n\x00[REDACTED:jwt].\nkey [REDACTED:aws-access-key-id] [REDACTED:github-token]_x [REDACTED:slack-token] https://hooks.slack.com/services/[REDACTED:slack-webhook] end";
        assert_eq!(splits(&mut r, input.as_bytes()), want);
        // Unterminated block at the end of the stream: redacted through the end.
        let cut = format!("a {}", &PEM[..60]);
        assert_eq!(splits(&mut r, cut.as_bytes()), "a [REDACTED:private-key]");
    }

    /// Plain leftmost-first matching over the whole input at once (no streaming).
    fn oneshot(r: &mut Redactor, input: &[u8]) -> Vec<u8> {
        (r.buf, r.ctx) = (input.to_vec(), 0);
        let mut out = Vec::new();
        r.scan(&mut out, true);
        (r.buf, r.ctx) = (Vec::new(), 0);
        out
    }

    #[test]
    fn random_inputs_any_split() {
        let (g, aws) = (
            ghp(),
            "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        );
        let pieces: &[&[u8]] = &[
            g.as_bytes(),
            &g.as_bytes()[..20],
            JWT.as_bytes(),
            &JWT.as_bytes()[..30],
            PEM.as_bytes(),
            &PEM.as_bytes()[..50],
            HOOK.as_bytes(),
            b"Authorization: Bearer ",
            b"tok9",
            aws.as_bytes(),
            b"AKIAIOSFODNN7EXAMPLE",
            b"xoxb-",
            b"1234567890",
            b"-----",
            b"BEGIN ",
            b"PRIVATE KEY-----",
            b"\n",
            b" ",
            b"\\n",
            b"\xff\x00",
            b"e",
            b"gh",
            b"abc",
        ];
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let mut rnd = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut big = Redactor::new(&[]).unwrap();
        let mut small = Redactor::with_hold(&[], 48).unwrap();
        for _ in 0..300 {
            let input: Vec<u8> = (0..rnd(30))
                .flat_map(|_| pieces[rnd(pieces.len())].to_vec())
                .collect();
            let oracle = oneshot(&mut big, &input);
            for r in [&mut big, &mut small] {
                let whole = if r.hold == HOLD_MAX {
                    oracle.clone()
                } else {
                    feed(r, &[&input])
                };
                for _ in 0..20 {
                    let mut chunks: Vec<&[u8]> = Vec::new();
                    let mut rest = &input[..];
                    while !rest.is_empty() {
                        let (a, b) = rest.split_at(1 + rnd(rest.len().min(40)));
                        chunks.push(a);
                        rest = b;
                    }
                    assert_eq!(text(&feed(r, &chunks)), text(&whole), "{:?}", text(&input));
                }
            }
        }
    }

    #[test]
    fn pem_over_many_chunks() {
        let mut r = Redactor::new(&[]).unwrap();
        let body: String = (0..40).map(|i| format!("{:064}\n", i)).collect();
        let input = format!(
            "log\n-----BEGIN OPENSSH PRIVATE KEY-----\n{body}-----END OPENSSH PRIVATE KEY-----\nafter\n"
        );
        for size in [1, 2, 7, 64, 1000] {
            let chunks: Vec<&[u8]> = input.as_bytes().chunks(size).collect();
            assert_eq!(
                text(&feed(&mut r, &chunks)),
                "log\n[REDACTED:private-key]\nafter\n"
            );
        }
    }

    #[test]
    fn hold_back_is_bounded() {
        let mut r = Redactor::new(&[]).unwrap();
        let body = "QUJD".repeat(5000);
        let input =
            format!("pre\n-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\npost\n");
        let mut s = r.fresh();
        let mut out = Vec::new();
        for c in input.as_bytes().chunks(97) {
            out.extend(s.push(c));
            assert!(s.held() <= HOLD_MAX, "held {}", s.held());
        }
        out.extend(s.finish());
        assert_eq!(text(&out), "pre\n[REDACTED:private-key]\npost\n");
        assert_eq!(text(&feed(&mut r, &[input.as_bytes()])), text(&out));
        let cut = format!("pre\n-----BEGIN PRIVATE KEY-----\n{body}");
        let chunks: Vec<&[u8]> = cut.as_bytes().chunks(333).collect();
        assert_eq!(text(&feed(&mut r, &chunks)), "pre\n[REDACTED:private-key]");
    }

    #[test]
    fn long_secrets_any_split_small_hold() {
        let mut r = Redactor::with_hold(&[], 64).unwrap();
        let long_pem = format!(
            "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----",
            "Zm9v".repeat(40)
        );
        let tok = "t0k".repeat(60);
        let input = format!(
            "a {long_pem}\nAuthorization: bearer {tok}\nb {}{} c\n",
            ghp(),
            "x".repeat(100)
        );
        let want = "a [REDACTED:private-key]\nAuthorization: bearer [REDACTED:bearer-token]\nb [REDACTED:github-token] c\n";
        assert_eq!(splits(&mut r, input.as_bytes()), want);
        let cut = format!("z {}", &long_pem[..150]);
        assert_eq!(splits(&mut r, cut.as_bytes()), "z [REDACTED:private-key]");
        // A long run that never matches is released as is.
        let near = format!("Authorization:{}Basic x\n", " ".repeat(80));
        assert_eq!(splits(&mut r, near.as_bytes()), near);
    }

    #[test]
    fn extra_patterns_and_counts() {
        let extra = [
            (
                "internal-token".to_string(),
                r"\bitk_[0-9a-f]{8}\b".to_string(),
            ),
            (
                "password".to_string(),
                r"(?i:password)=(?P<secret>\S+)".to_string(),
            ),
            ("jwt".to_string(), r"JWT:[0-9]{4}".to_string()),
        ];
        let mut r = Redactor::new(&extra).unwrap();
        let input = format!(
            "itk_0123abcd PASSWORD=hunter2 x {JWT} JWT:1234 {} {}\n",
            ghp(),
            ghp()
        );
        let want = "[REDACTED:internal-token] PASSWORD=[REDACTED:password] x [REDACTED:jwt] [REDACTED:jwt] [REDACTED:github-token] [REDACTED:github-token]\n";
        let mut out = r.push(input.as_bytes());
        out.extend(r.finish());
        assert_eq!(text(&out), want);
        assert_eq!(splits(&mut r.fresh(), input.as_bytes()), want);
        let c: Vec<(&str, u64)> = r.counts().iter().map(|(k, n)| (k.as_str(), *n)).collect();
        let want = [
            ("private-key", 0),
            ("bearer-token", 0),
            ("aws-secret-access-key", 0),
            ("aws-access-key-id", 0),
            ("github-token", 2),
            ("slack-webhook", 0),
            ("slack-token", 0),
            ("jwt", 2),
            ("internal-token", 1),
            ("password", 1),
        ];
        assert_eq!(c, want);
    }

    #[test]
    fn bad_patterns_are_errors_naming_them() {
        let bad = |k: &str, p: &str| Redactor::new(&[(k.into(), p.into())]).err().unwrap();
        let e = bad("broken-one", "a(b");
        assert!(e.starts_with("pattern broken-one: "), "{e}");
        assert!(bad("maybe", "x*").contains("pattern maybe: can match the empty string"));
        assert!(bad("sp ace", "x").starts_with("pattern \"sp ace\""));
        assert!(bad("", "x").starts_with("pattern \"\""));
    }

    /// `cargo test --release -- --ignored --nocapture throughput`
    #[test]
    #[ignore]
    fn throughput() {
        let t = std::time::Instant::now();
        let mut r = Redactor::new(&[]).unwrap();
        println!("Redactor::new: {:?}", t.elapsed());
        let mut log = Vec::new();
        let mut i = 0u64;
        while log.len() < 100 << 20 {
            i += 1;
            log.extend(format!("2024-05-01T12:00:{:02}Z INFO worker[{}] request id={i:x} path=/api/v1/items status=200 took={}ms\n", i % 60, i % 8, i % 997).as_bytes());
            if i.is_multiple_of(50_000) {
                log.extend(
                    format!(
                        "export GITHUB_TOKEN={} Authorization: Bearer {JWT}\n",
                        ghp()
                    )
                    .as_bytes(),
                );
            }
        }
        for kib in [64, 4] {
            let t = std::time::Instant::now();
            let mut n = 0;
            for c in log.chunks(kib << 10) {
                n += r.push(c).len();
            }
            n += r.finish().len();
            let (secs, mb) = (t.elapsed().as_secs_f64(), log.len() as f64 / 1e6);
            println!(
                "{mb:.0} MB in {kib} KiB chunks: {secs:.3} s, {:.0} MB/s, {n} bytes out",
                mb / secs
            );
        }
        println!("{:?}", r.counts());
    }
}
