//! A test guest for the output stage (world `output-hook`), its behaviour chosen by the config
//! key `mode`, so that one component serves every output-stage test:
//! - `pass` (default): passes every chunk;
//! - `upper`: replaces each chunk with its ASCII upper case;
//! - `drop-stderr`: drops stderr chunks;
//! - `drop-odd`: drops the chunks with an odd `seq`;
//! - `hold`: holds everything back and releases it, tagged `[held N]`, at each stream's end;
//! - `end-on`: ends the job when a chunk contains `needle` (with `pad_kb`, the reason carries
//!   that many KiB of `x` after it);
//! - `tag`: replaces each chunk with `<seq:LEN>` (shows how the host cut the stream);
//! - `spin`: spins without end on every chunk (fuel or the deadline cuts it);
//! - `alloc`: keeps `mb` MiB more per chunk (default 8), never freeing (the memory limit cuts it);
//! - `fail-start`: traps in `start-output`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "output-hook",
});

use ccx::hooks::host;
use ccx::hooks::types::OutputStream;
use std::cell::RefCell;

struct OutputTest;

thread_local! {
    static HELD: RefCell<[Vec<u8>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
    static KEPT: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn cfg(key: &str) -> Option<String> {
    host::config().into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

impl Guest for OutputTest {
    fn start_output(_request: ExecRequest) {
        if cfg("mode").as_deref() == Some("fail-start") {
            panic!("fail-start");
        }
    }

    fn filter_output(chunk: OutputChunk) -> OutputAction {
        let mode = cfg("mode").unwrap_or_else(|| "pass".into());
        match mode.as_str() {
            "upper" => OutputAction::Replace(chunk.data.to_ascii_uppercase()),
            "drop-stderr" if chunk.source == OutputStream::Stderr => OutputAction::Drop,
            "drop-odd" if chunk.seq % 2 == 1 => OutputAction::Drop,
            "hold" => {
                let i = usize::from(chunk.source == OutputStream::Stderr);
                HELD.with_borrow_mut(|held| {
                    held[i].extend_from_slice(&chunk.data);
                    if chunk.end {
                        let all = std::mem::take(&mut held[i]);
                        let mut out = format!("[held {}]", all.len()).into_bytes();
                        out.extend_from_slice(&all);
                        OutputAction::Replace(out)
                    } else {
                        OutputAction::Drop
                    }
                })
            }
            "end-on" => {
                let needle = cfg("needle").unwrap_or_else(|| "STOP".into());
                if String::from_utf8_lossy(&chunk.data).contains(&needle) {
                    let pad_kb: usize = cfg("pad_kb").and_then(|k| k.parse().ok()).unwrap_or(0);
                    OutputAction::EndJob(format!("saw `{needle}`{}", "x".repeat(pad_kb << 10)))
                } else {
                    OutputAction::Pass
                }
            }
            "tag" if !chunk.data.is_empty() => {
                OutputAction::Replace(format!("<{}:{}>", chunk.seq, chunk.data.len()).into_bytes())
            }
            "spin" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            }
            "alloc" => {
                let mb: usize = cfg("mb").and_then(|v| v.parse().ok()).unwrap_or(8);
                KEPT.with_borrow_mut(|kept| kept.push(vec![1u8; mb << 20]));
                OutputAction::Pass
            }
            _ => OutputAction::Pass,
        }
    }
}

export!(OutputTest);
