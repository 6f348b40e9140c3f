//! A bounded capture of a guest's stdout or stderr for one call, plugged into its `WasiCtx`.
//! Unlike wasmtime's `MemoryOutputPipe`, writes past the cap succeed and are only counted, so
//! a guest's `println!` never fails and a chatty hook is not turned into a trapping one.
//!
//! Lives as long as one call: `call` makes a pair per store and reads them once it is over.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::call::lock;

/// Bytes of guest stdout (and, separately, stderr) kept per call; the rest is dropped and a
/// note says how much. Writes never fail, so a chatty guest is not turned into a trapping one.
pub const OUTPUT_CAP_BYTES: usize = 16 * 1024;

/// The capture of one guest output stream, up to [`OUTPUT_CAP_BYTES`]; clones share the buffer
/// (the `WasiCtx` holds one, the call reads the text from another).
#[derive(Clone, Default)]
pub(crate) struct Capture(Arc<Mutex<CaptureBuf>>);

#[derive(Default)]
struct CaptureBuf {
    data: Vec<u8>,
    dropped: u64,
}

impl Capture {
    fn push(&self, bytes: &[u8]) {
        let mut buf = lock(&self.0);
        let room = OUTPUT_CAP_BYTES.saturating_sub(buf.data.len());
        let keep = room.min(bytes.len());
        buf.data.extend_from_slice(&bytes[..keep]);
        buf.dropped += (bytes.len() - keep) as u64;
    }

    /// The captured text, lossy UTF-8, with a note when bytes were dropped.
    pub(crate) fn text(&self) -> String {
        let buf = lock(&self.0);
        let mut text = String::from_utf8_lossy(&buf.data).into_owned();
        if buf.dropped > 0 {
            text.push_str(&format!(
                "\n[… {} more bytes dropped: output is capped at {OUTPUT_CAP_BYTES} bytes]",
                buf.dropped
            ));
        }
        text
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
