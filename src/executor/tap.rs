//! The executor's [`OutputTap`]: each read of a job's output goes to the registry's spool
//! (the raw bytes, with their `seq` and offset) and, encoded as the job asked, to the live
//! stream.

use crate::events::{Event, JobId, Stream};
use crate::jobs::OutputTap;
use crate::protocol::OutputEncoding;
use crate::protocol::output::OutputEncoder;
use crate::registry::JobLog;

pub(super) struct JobTap {
    log: JobLog,
    encoder: OutputEncoder,
}

impl JobTap {
    pub(super) fn new(job_id: JobId, encoding: OutputEncoding, log: JobLog) -> JobTap {
        JobTap {
            log,
            encoder: OutputEncoder::new(job_id, encoding),
        }
    }
}

impl OutputTap for JobTap {
    fn output(&mut self, stream: Stream, seq: u64, offset: u64, bytes: &[u8]) -> Option<Event> {
        self.log
            .output(stream != Stream::Stderr, seq, offset, bytes);
        self.encoder
            .encode(stream, seq, offset, bytes)
            .map(Event::Output)
    }

    fn note(&mut self, event: &Event) {
        self.log.event(event);
    }
}
