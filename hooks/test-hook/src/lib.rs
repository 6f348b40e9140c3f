//! A test hook whose behaviour is chosen by its config table, so that one component (built once)
//! serves every runtime test and benchmark.
//!
//! Config keys:
//! - `mode` (pre-execute): `allow` (default), `deny` (`reason`), `modify` (`command`, `cwd`,
//!   `set_env=K=V`, `unset_env`, `timeout_ms`, `limit.memory_mb`, `limit.pids`, …),
//!   `describe` (deny with what the request says besides its command line: stdin mode,
//!   terminal, limits, labels, submitter, parse), `deny-if-contains` (`needle`), `counter`, `log`,
//!   `big` (`size` bytes of deny reason), `instance-count` (deny with how many calls this
//!   instance has seen), `remember` (deny with the command an earlier call on this instance saw,
//!   kept on the heap), `probe` (deny with a report of what the sandbox let
//!   through), or a misbehaviour below. With `when` set, the pre stage applies its mode only to
//!   commands containing that text and allows the rest.
//! - `post_mode` (post-execute): `annotate` (default; `note.*` keys become annotations, plus an
//!   echo of the job; verdict fail when `fail_on_exit_nonzero=true` and the exit code is
//!   non-zero; `command` is the request as run, `received_command` as the client sent it), `big` (`count` annotations), `log`, or a misbehaviour below.
//! - `random` (either stage): a well-typed answer drawn at random (seeded by the command line,
//!   and `seed`), with strings and lists below, at and past the host's bounds, up to 4 MiB
//!   strings and 100,000-entry lists: the hook boundary's fuzzer. Some answers are tame: within
//!   every bound, often right at the 64 KiB answer limit, so they must be accepted.
//! - misbehaviours, either stage: `loop`, `alloc` (without end), `alloc-some` (`mb` MiB, then
//!   answer normally), `stack`, `panic`, `sleep` (`ms`, default 60000).

wit_bindgen::generate!({
    path: "../../wit",
    world: "hook",
});

use ccx::hooks::host::{self, Level};
// The worlds `use` ExecRequest, PreDecision, ExecResult and PostOutcome at the top level.
use ccx::hooks::types::{JobStatus, RequestPatch, Verdict};

struct TestHook;

fn cfg(key: &str) -> Option<String> {
    host::config().into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// `limit.memory_mb`, `limit.pids`, … as a limits patch; `None` when no such key is set.
fn cfg_limits() -> Option<ccx::hooks::types::Limits> {
    let get = |k: &str| cfg(&format!("limit.{k}")).and_then(|v| v.parse().ok());
    let l = ccx::hooks::types::Limits {
        memory_mb: get("memory_mb"),
        pids: get("pids"),
        cpu_seconds: get("cpu_seconds"),
        open_files: get("open_files"),
        file_size_mb: get("file_size_mb"),
    };
    let any = [l.memory_mb, l.pids, l.cpu_seconds, l.open_files, l.file_size_mb]
        .iter()
        .any(Option::is_some);
    any.then_some(l)
}

fn cfg_u64(key: &str, default: u64) -> u64 {
    cfg(key).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Misbehaviours shared by both stages; returns normally only for modes that are not one.
fn misbehave(mode: &str) {
    match mode {
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut chunk = vec![0u8; 1 << 20];
                chunk[0] = 1;
                hoard.push(std::hint::black_box(chunk));
            }
        }
        "alloc-some" => {
            let mb = cfg_u64("mb", 1) as usize;
            let mut hoard = vec![0u8; mb << 20];
            hoard[mb << 19] = 1;
            std::hint::black_box(&hoard);
        }
        "stack" => {
            std::hint::black_box(recurse(std::hint::black_box(1)));
        }
        "panic" => panic!("test-hook panicked on purpose"),
        "sleep" => std::thread::sleep(std::time::Duration::from_millis(cfg_u64("ms", 60_000))),
        _ => {}
    }
}

/// Recurses until the wasm stack overflows; the opaque condition keeps the compiler from
/// turning it into a loop.
fn recurse(n: u64) -> u64 {
    let buf = std::hint::black_box([n; 64]);
    if std::hint::black_box(n) == 0 {
        return 0;
    }
    recurse(buf[(n % 64) as usize] + 1) + buf[3]
}

fn say(stage: &str) {
    let lines = cfg_u64("lines", 1);
    for i in 0..lines {
        println!("{stage} stdout line {i}");
    }
    eprintln!("{stage} stderr line");
    host::log(Level::Info, &format!("{stage} says hello"));
}

/// The host's bounds (`src/hooks/types.rs`), which the tame answers keep to.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
const MAX_PATCH_ENV: usize = 256;
const MAX_ANNOTATIONS: usize = 64;
const MAX_ANNOTATION_KEY_BYTES: usize = 128;
const MAX_ANNOTATION_VALUE_BYTES: usize = 4 * 1024;
const MAX_REASON_BYTES: usize = 4 * 1024;

/// xorshift64* (Vigna, "An experimental exploration of Marsaglia's xorshift generators"),
/// seeded by FNV-1a of a text: each command line draws its own answer, the same each time.
struct Rng(u64);

impl Rng {
    fn seeded(text: &str) -> Rng {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ cfg_u64("seed", 0);
        for b in text.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self) -> bool {
        self.below(2) == 0
    }

    /// A byte length: empty, short, at or just past a host bound, or up to `huge` (never
    /// more than `huge`).
    fn len(&mut self, huge: usize) -> usize {
        let len = match self.below(7) {
            0 => 0,
            1 => self.below(64) as usize,
            2 => 128,
            3 => 4096,
            4 => 4097,
            5 => 65_537,
            _ => self.below(huge as u64 + 1) as usize,
        };
        len.min(huge)
    }

    /// A string of about `len` bytes from every Unicode plane, with NUL, controls, quotes.
    fn string(&mut self, len: usize) -> String {
        const POOL: &[char] = &[
            'a', ' ', '\0', '\n', '\r', '\t', '"', '\\', '$', '(', '`', 'é', '\u{7ff}', '\u{ffff}',
            '\u{fffd}', '😀', '\u{1d11e}', '\u{2a6d6}', '\u{e0001}', '\u{10fffd}',
        ];
        let mut s = String::with_capacity(len + 4);
        while s.len() < len {
            s.push(POOL[self.below(POOL.len() as u64) as usize]);
        }
        s
    }

    /// Exactly `len` bytes with no NUL or `=` (valid in any patch or annotation).
    fn clean(&mut self, len: usize) -> String {
        const POOL: &[char] =
            &['a', 'Z', '_', ' ', '\n', '\t', '"', '\\', '$', 'é', '\u{ffff}', '😀', '\u{10fffd}'];
        let mut s = String::with_capacity(len);
        while s.len() < len {
            let c = POOL[self.below(POOL.len() as u64) as usize];
            s.push(if s.len() + c.len_utf8() <= len { c } else { 'a' });
        }
        s
    }

    /// A length in `0..=max`: empty, short, `max` itself, or anything between.
    fn upto(&mut self, max: usize) -> usize {
        match self.below(4) {
            0 => 0,
            1 => self.below(max.min(16) as u64 + 1) as usize,
            2 => max,
            _ => self.below(max as u64 + 1) as usize,
        }
    }

    fn maybe_string(&mut self, huge: usize) -> Option<String> {
        let len = self.len(huge);
        self.chance().then(|| self.string(len))
    }

    /// A list length: empty, short, at or just past a host bound, or up to 100,000.
    fn count(&mut self) -> usize {
        match self.below(6) {
            0 => 0,
            1 => self.below(8) as usize,
            2 => 64,
            3 => 65,
            4 => 257,
            _ => self.below(100_001) as usize,
        }
    }

    /// A number: 0, 1, small, or the largest there is.
    fn number(&mut self) -> Option<u64> {
        match self.below(5) {
            0 => None,
            1 => Some(0),
            2 => Some(1),
            3 => Some(self.below(100_000)),
            _ => Some(u64::MAX),
        }
    }

    /// `count` strings: long ones only when there are few, so one answer stays within a few
    /// MiB of guest memory.
    fn strings(&mut self, count: usize) -> Vec<String> {
        let huge = if count > 100 { 16 } else { 64 << 10 };
        (0..count)
            .map(|_| {
                let len = self.len(huge);
                self.string(len)
            })
            .collect()
    }

    /// A patch within every bound: at most `MAX_PATCH_ENV` entries, names non-empty, no NUL,
    /// at most `MAX_ANSWER_BYTES` in all; a quarter of the commands fill the budget exactly.
    fn tame_patch(&mut self) -> RequestPatch {
        let mut left = MAX_ANSWER_BYTES;
        let mut set_env = Vec::new();
        for _ in 0..self.below(MAX_PATCH_ENV as u64 / 2 + 1) {
            if left == 0 {
                break;
            }
            let k = 1 + self.upto(15.min(left - 1));
            left -= k;
            let v = self.upto(256.min(left));
            left -= v;
            set_env.push((self.clean(k), self.clean(v)));
        }
        let mut unset_env = Vec::new();
        for _ in 0..self.below(MAX_PATCH_ENV as u64 / 2 + 1) {
            if left == 0 {
                break;
            }
            let k = 1 + self.upto(15.min(left - 1));
            left -= k;
            unset_env.push(self.clean(k));
        }
        let cwd = self.chance().then(|| {
            let n = self.upto(4096.min(left));
            left -= n;
            self.clean(n)
        });
        let command = match self.below(4) {
            0 => None,
            1 => Some(self.clean(left)),
            _ => {
                let n = self.upto(left);
                Some(self.clean(n))
            }
        };
        RequestPatch {
            command,
            cwd,
            set_env,
            unset_env,
            timeout_ms: self.number(),
            limits: None,
        }
    }

    /// Annotations and a verdict within every bound, often right at the answer limit.
    fn tame_post(&mut self) -> PostOutcome {
        let mut left = MAX_ANSWER_BYTES;
        let verdict = match self.below(3) {
            0 => None,
            1 => Some(Verdict::Pass),
            _ => {
                let n = self.upto(MAX_REASON_BYTES);
                left -= n;
                Some(Verdict::Fail(self.clean(n)))
            }
        };
        let mut annotations = Vec::new();
        for _ in 0..self.below(MAX_ANNOTATIONS as u64 + 1) {
            let k = self.upto(MAX_ANNOTATION_KEY_BYTES.min(left));
            left -= k;
            let v = self.upto(MAX_ANNOTATION_VALUE_BYTES.min(left));
            left -= v;
            annotations.push((self.clean(k), self.clean(v)));
        }
        PostOutcome { annotations, verdict }
    }

    fn pre(&mut self) -> PreDecision {
        match self.below(4) {
            0 => PreDecision::Allow,
            3 => PreDecision::Modify(self.tame_patch()),
            1 => {
                let len = self.len(4 << 20);
                PreDecision::Deny(self.string(len))
            }
            _ => {
                let n = self.count();
                let keys = self.strings(n);
                let values = self.strings(n);
                let unset = self.count();
                let limits = self.chance().then(|| ccx::hooks::types::Limits {
                    memory_mb: self.number(),
                    pids: self.number(),
                    cpu_seconds: self.number(),
                    open_files: self.number(),
                    file_size_mb: self.number(),
                });
                PreDecision::Modify(RequestPatch {
                    command: self.maybe_string(4 << 20),
                    cwd: self.maybe_string(64 << 10),
                    set_env: keys.into_iter().zip(values).collect(),
                    unset_env: self.strings(unset),
                    timeout_ms: self.number(),
                    limits,
                })
            }
        }
    }

    fn post(&mut self) -> PostOutcome {
        if self.chance() {
            return self.tame_post();
        }
        let n = self.count();
        let keys = self.strings(n);
        let values = self.strings(n);
        let verdict = match self.below(3) {
            0 => None,
            1 => Some(Verdict::Pass),
            _ => {
                let len = self.len(4 << 20);
                Some(Verdict::Fail(self.string(len)))
            }
        };
        PostOutcome {
            annotations: keys.into_iter().zip(values).collect(),
            verdict,
        }
    }
}

impl Guest for TestHook {
    fn pre_execute(request: ExecRequest) -> PreDecision {
        let mode = cfg("mode").unwrap_or_else(|| "allow".into());
        // `when`: misbehave only for commands containing it (else allow), so one connection's
        // job can trip a limit while another's runs normally.
        if let Some(when) = cfg("when")
            && !request.command.contains(&when)
        {
            return PreDecision::Allow;
        }
        misbehave(&mode);
        match mode.as_str() {
            "random" => Rng::seeded(&request.command).pre(),
            "deny" => PreDecision::Deny(cfg("reason").unwrap_or_else(|| "denied by test-hook".into())),
            "modify" => {
                let set_env = cfg("set_env")
                    .and_then(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                    .into_iter()
                    .collect();
                PreDecision::Modify(RequestPatch {
                    command: cfg("command"),
                    cwd: cfg("cwd"),
                    set_env,
                    unset_env: cfg("unset_env").into_iter().collect(),
                    timeout_ms: cfg("timeout_ms").and_then(|v| v.parse().ok()),
                    limits: cfg_limits(),
                })
            }
            "deny-if-contains" => {
                let needle = cfg("needle").unwrap_or_default();
                if !needle.is_empty() && request.command.contains(&needle) {
                    PreDecision::Deny(format!("command contains `{needle}`"))
                } else {
                    PreDecision::Allow
                }
            }
            "counter" => {
                let word = request.command.split_whitespace().next().unwrap_or("").to_string();
                let key = format!("count:{word}");
                let n = host::kv_get(&key).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
                host::kv_set(&key, &n.to_string());
                PreDecision::Modify(RequestPatch {
                    command: None,
                    cwd: None,
                    set_env: vec![("COUNT".into(), n.to_string())],
                    unset_env: vec![],
                    timeout_ms: None,
                    limits: None,
                })
            }
            "log" => {
                say("pre");
                PreDecision::Allow
            }
            "big" => PreDecision::Deny("x".repeat(cfg_u64("size", 100_000) as usize)),
            "instance-count" => {
                // A global in linear memory: 1 on every call if each call gets a fresh instance.
                static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                PreDecision::Deny(format!("calls seen by this instance: {n}"))
            }
            "remember" => {
                // Heap memory: what an earlier call on this instance left there, if any.
                static LAST: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
                let previous = LAST.lock().unwrap().replace(request.command.clone());
                PreDecision::Deny(format!(
                    "previous command in this instance: {}",
                    previous.as_deref().unwrap_or("none")
                ))
            }
            "describe" => PreDecision::Deny(format!(
                "stdin={:?} terminal={:?} limits={:?} labels={:?} submitter={:?} commands={:?} unparsed={:?}",
                request.stdin,
                request.terminal,
                request.limits,
                request.labels,
                request.submitter,
                request.commands,
                request.unparsed
            )),
            "probe" => {
                // Reports what the sandbox let through; every probe should fail or be empty.
                let fs = std::fs::read_dir("/").is_ok() || std::fs::read_dir(".").is_ok();
                let env = std::env::vars().count();
                let args = std::env::args().count();
                let net = std::net::TcpStream::connect("127.0.0.1:9").is_ok();
                PreDecision::Deny(format!("fs={fs} env={env} args={args} net={net}"))
            }
            _ => PreDecision::Allow,
        }
    }

    fn post_execute(job: ExecResult) -> PostOutcome {
        let mode = cfg("post_mode").unwrap_or_else(|| "annotate".into());
        misbehave(&mode);
        match mode.as_str() {
            "random" => Rng::seeded(&job.request.command).post(),
            "big" => PostOutcome {
                annotations: (0..cfg_u64("count", 1000)).map(|i| (format!("k{i}"), "v".into())).collect(),
                verdict: None,
            },
            "log" => {
                say("post");
                PostOutcome { annotations: vec![], verdict: None }
            }
            _ => {
                let status = match job.status {
                    JobStatus::Completed => "completed",
                    JobStatus::Failed => "failed",
                    JobStatus::TimedOut => "timed-out",
                    JobStatus::Canceled => "canceled",
                };
                let mut annotations: Vec<(String, String)> = host::config()
                    .into_iter()
                    .filter_map(|(k, v)| k.strip_prefix("note.").map(|k| (k.to_string(), v)))
                    .collect();
                annotations.push(("status".into(), status.into()));
                annotations.push(("command".into(), job.request.command.clone()));
                annotations.push(("received_command".into(), job.received.command.clone()));
                annotations.push((
                    "exit_code".into(),
                    job.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "none".into()),
                ));
                annotations.push(("stdout_tail_len".into(), job.stdout_tail.len().to_string()));
                let verdict = if cfg("fail_on_exit_nonzero").as_deref() == Some("true") {
                    match job.exit_code {
                        Some(0) => Some(Verdict::Pass),
                        Some(c) => Some(Verdict::Fail(format!("exit code {c}"))),
                        None => Some(Verdict::Fail("no exit code".into())),
                    }
                } else {
                    None
                };
                PostOutcome { annotations, verdict }
            }
        }
    }
}

export!(TestHook);
