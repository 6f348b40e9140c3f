//! The output stage between a job's pipes and everything else: what an [`OutputStage`] returns
//! is all that the live stream, the spool, the byte counts and hashes and the post-hooks' tails
//! ever see of the job's output. The executor fills it (with output hooks); this module knows
//! nothing of hooks.

use super::{OutputTap, Pipe};
use crate::events::{Event, Stream};
use futures_util::future::BoxFuture;
use std::collections::VecDeque;
use std::time::Duration;

/// What the stage made of one read (or flush, or end of a stream).
#[derive(Debug, Default)]
pub struct StageOut {
    /// The bytes to send on (empty: nothing for this read; its `seq` becomes a gap).
    pub data: Vec<u8>,
    /// Notifications to send (`hook.warning`).
    pub events: Vec<Event>,
    /// The job must end `failed` with this error; nothing more of its output is sent.
    pub end: Option<String>,
}

/// A stage that may change a job's output before it goes anywhere (see the module doc).
pub trait OutputStage: Send {
    /// One read of `data` from `stream`, with its `seq`.
    fn filter<'a>(
        &'a mut self,
        stream: Stream,
        seq: u64,
        data: &'a [u8],
    ) -> BoxFuture<'a, StageOut>;
    /// Sends what waits in `stream` without waiting for more (a partial line).
    fn flush(&mut self, stream: Stream, seq: u64) -> BoxFuture<'_, StageOut>;
    /// `stream` has ended: sends what waits and lets the stage release what it held.
    fn end(&mut self, stream: Stream, seq: u64) -> BoxFuture<'_, StageOut>;
    /// How long bytes may wait in the stage before [`OutputStage::flush`]; `None`: never.
    fn flush_after(&self) -> Option<Duration>;
    /// Whether bytes of `stream` wait in the stage.
    fn holds(&self, stream: Stream) -> bool;
}

/// What one pass through the stage did, for the job loop.
pub(super) struct Passed {
    /// The job must end with this error.
    pub(super) end: Option<String>,
    /// Bytes went on (a new partial line, if one waits now, starts its wait).
    pub(super) delivered: bool,
}

/// Everything the job loop hands to [`pass`].
pub(super) struct Sink<'a> {
    pub(super) tap: &'a mut dyn OutputTap,
    pub(super) pending: &'a mut VecDeque<Event>,
    pub(super) sink_open: bool,
    pub(super) tail_cap: usize,
}

/// How a pass reaches the stage.
pub(super) enum Via {
    Read,
    Flush,
}

/// Passes the `n` bytes just read into `pipe` (0: its end) through `stage`, then accounts for
/// and sends what comes out, with `seq` (and one more `seq` for a stream's end after data).
pub(super) async fn pass<R: tokio::io::AsyncRead + Unpin>(
    stage: &mut dyn OutputStage,
    pipe: &mut Pipe<R>,
    stream: Stream,
    seq: &mut u64,
    n: usize,
    via: Via,
    sink: Sink<'_>,
) -> Passed {
    let out = match via {
        Via::Flush => stage.flush(stream, *seq).await,
        Via::Read if n == 0 => {
            pipe.reader = None;
            stage.end(stream, *seq).await
        }
        Via::Read => {
            pipe.raw_bytes += n as u64;
            let data = pipe.buf[..n].to_vec();
            stage.filter(stream, *seq, &data).await
        }
    };
    sink.pending.extend(out.events);
    let delivered = !out.data.is_empty();
    if delivered {
        let offset = pipe.account(&out.data, sink.tail_cap);
        if let Some(ev) = sink.tap.output(stream, *seq, offset, &out.data)
            && sink.sink_open
        {
            sink.pending.push_back(ev);
        }
    }
    if matches!(via, Via::Read) && n == 0 {
        // The stream's end, as without a stage (the encoder flushes a cut character).
        if !out.data.is_empty() {
            *seq += 1;
        }
        if let Some(ev) = sink.tap.output(stream, *seq, pipe.bytes, &[])
            && sink.sink_open
        {
            sink.pending.push_back(ev);
        }
    }
    Passed {
        end: out.end,
        delivered,
    }
}
