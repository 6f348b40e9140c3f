//! Interactive jobs on the wire: `execute {stdin_open, pty}`, then `input` (bytes to the job's
//! stdin or terminal) and `resize` (its terminal's size).

use super::methods::Method;
use super::notify::{JobId, OutputEncoding};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A terminal's size in character cells (`struct winsize` of tty_ioctl(4)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PtySize {
    /// 1 to 1000.
    pub rows: u16,
    /// 1 to 1000.
    pub cols: u16,
}

impl PtySize {
    /// Errors (for the client) when a side is 0 or above 1000.
    pub fn check(&self) -> Result<(), String> {
        let ok = |n: u16| (1..=1000).contains(&n);
        if ok(self.rows) && ok(self.cols) {
            Ok(())
        } else {
            Err(format!(
                "a terminal of {} rows and {} columns: each must be 1 to 1000",
                self.rows, self.cols
            ))
        }
    }
}

/// `input`: bytes for a running job's stdin (`stdin_open`) or terminal (`pty`).
pub struct Input;
impl Method for Input {
    const NAME: &'static str = "input";
    type Params = InputParams;
    type Result = InputResult;
}

/// `input` params.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputParams {
    pub job_id: String,
    /// The bytes, as `encoding` says (Ctrl-C on a terminal is `"\u0003"`).
    #[serde(default)]
    pub data: String,
    /// How `data` carries bytes; absent: `utf8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<OutputEncoding>,
    /// After `data`: close stdin (a pipe), or send the terminal's end-of-file character
    /// (Ctrl-D, for a `pty`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub eof: bool,
}

/// The `input` result: the bytes were queued for the job (they are written in order while
/// the command reads; at most 1 MiB waits per job, beyond that `input` is refused until the
/// command reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InputResult {
    pub job_id: JobId,
    pub bytes: u64,
}

/// `resize`: a new size for a job's terminal (the command gets SIGWINCH).
pub struct Resize;
impl Method for Resize {
    const NAME: &'static str = "resize";
    type Params = ResizeParams;
    type Result = ResizeParams;
}

/// `resize` params, and its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeParams {
    pub job_id: String,
    pub rows: u16,
    pub cols: u16,
}

/// The bytes of an `input`'s `data` in `encoding` (absent: UTF-8 text as is). Errors (for
/// the client): invalid base64.
pub fn decode(data: &str, encoding: Option<OutputEncoding>) -> Result<Vec<u8>, String> {
    use base64::Engine;
    match encoding.unwrap_or_default() {
        OutputEncoding::Utf8 => Ok(data.as_bytes().to_vec()),
        OutputEncoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("`data` is not valid base64: {e}")),
    }
}
