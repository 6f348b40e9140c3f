//! `secret-redact`: an output hook (world `output-hook`) that replaces secrets in a job's output
//! with `[REDACTED:kind]` before anything leaves the host: AWS access keys (and secret keys
//! where named), GitHub and Slack tokens, Slack webhook URLs, private-key blocks, JWTs and
//! `Authorization: Bearer …` values. A secret split across reads is still caught: each stream
//! has a [`redact::Redactor`] that holds back (at most 8 KiB of) bytes that could still start
//! a secret, and releases them at the stream's end.
//!
//! Config: `pattern.KIND = "REGEX"` adds a pattern (bytes, Unicode off; a group named
//! `secret` limits the replacement to it), e.g.
//! `config = { "pattern.internal-token" = "itk_[0-9a-f]{32}" }`. A bad pattern fails the
//! hook's start, so its `on_failure` decides (the output stage fails closed by default).

wit_bindgen::generate!({
    path: "../../wit",
    world: "output-hook",
});

mod prefilter;
mod redact;

use ccx::hooks::host::{self, Level};
use ccx::hooks::types::OutputStream;
use redact::Redactor;
use std::cell::RefCell;

struct SecretRedact;

thread_local! {
    /// One redactor per stream (stdout, stderr), for this job's instance.
    static STREAMS: RefCell<Option<[Redactor; 2]>> = const { RefCell::new(None) };
}

impl Guest for SecretRedact {
    fn start_output(_request: ExecRequest) {
        let extra: Vec<(String, String)> = host::config()
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix("pattern.").map(|kind| (kind.to_string(), v)))
            .collect();
        let first = match Redactor::new(&extra) {
            Ok(r) => r,
            Err(e) => {
                host::log(Level::Error, &format!("bad config: {e}"));
                panic!("secret-redact: {e}");
            }
        };
        let second = first.fresh();
        STREAMS.set(Some([first, second]));
    }

    fn filter_output(chunk: OutputChunk) -> OutputAction {
        STREAMS.with_borrow_mut(|streams| {
            let streams = streams.as_mut().expect("start-output runs first");
            let r = &mut streams[usize::from(chunk.source == OutputStream::Stderr)];
            let out = if chunk.end {
                r.finish()
            } else {
                r.push(&chunk.data)
            };
            if same(&out, &chunk.data) {
                OutputAction::Pass
            } else {
                OutputAction::Replace(out)
            }
        })
    }
}

/// `a == b`, sixteen bytes a step: a byte-wise compare costs WebAssembly ~17 instructions a
/// byte, more than the search.
fn same(a: &[u8], b: &[u8]) -> bool {
    let word = |c: &[u8]| u128::from_ne_bytes(c.try_into().expect("16 bytes"));
    a.len() == b.len()
        && a.chunks_exact(16)
            .zip(b.chunks_exact(16))
            .all(|(x, y)| word(x) == word(y))
        && a.chunks_exact(16).remainder() == b.chunks_exact(16).remainder()
}

export!(SecretRedact);
