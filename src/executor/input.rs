//! `input` and `resize` for any running job on the server, by id: the job's stdin or
//! terminal handle is taken from its session's state, then used without the session's lock
//! (queueing input never waits for the command to read).

use super::session::Phase;
use super::{ExecError, Executor, Session};
use crate::events::JobId;
use crate::jobs::input::JobInput;
use std::sync::Arc;

/// What the input stage needs to judge bytes for a running job: its generation's hooks, its
/// context and its request as run.
pub(super) struct InputCheck {
    pub(super) hooks: Arc<dyn super::Hooks>,
    pub(super) ctx: super::JobContext,
    pub(super) request: super::JobRequest,
}

impl Executor {
    /// Queues `data` (then, if `eof`, the end of input) for job `job_id`'s stdin or terminal
    /// and returns the number of bytes queued. Errors: no such running job; it has no open
    /// stdin (`stdin_open` or `pty` at `execute`) or has closed it; its input buffer is full;
    /// a hook's `check-input` refused the bytes ([`ExecError::Denied`]; the job goes on).
    pub async fn input(&self, job_id: &str, data: Vec<u8>, eof: bool) -> Result<usize, ExecError> {
        let (input, check) = self.job_input(job_id).await?;
        if let Some(c) = check
            && !data.is_empty()
        {
            c.hooks
                .check_input(&c.ctx, &c.request, &data)
                .await
                .map_err(|(hook, reason)| ExecError::Denied {
                    job_id: job_id.into(),
                    hook,
                    reason,
                })?;
        }
        input
            .send(data, eof)
            .map_err(|e| ExecError::Invalid(format!("job {job_id}: {e}")))
    }

    /// Resizes job `job_id`'s terminal. Errors: no such running job, or it has no terminal.
    pub async fn resize(&self, job_id: &str, rows: u16, cols: u16) -> Result<JobId, ExecError> {
        let size = crate::protocol::PtySize { rows, cols };
        size.check().map_err(ExecError::Invalid)?;
        let (input, _) = self.job_input(job_id).await?;
        input
            .resize(rows, cols)
            .map_err(|e| ExecError::Invalid(format!("job {job_id}: {e}")))?;
        Ok(job_id.into())
    }

    async fn job_input(
        &self,
        job_id: &str,
    ) -> Result<(JobInput, Option<Arc<InputCheck>>), ExecError> {
        let Some(session) = self.job_session(job_id) else {
            return Err(self.not_live(job_id).await);
        };
        session.input_of(job_id).await
    }
}

impl Session {
    /// The input handle of this session's running job `job_id`.
    async fn input_of(
        &self,
        job_id: &str,
    ) -> Result<(JobInput, Option<Arc<InputCheck>>), ExecError> {
        let st = self.inner.state.lock().await;
        let head = st.head.as_ref().filter(|h| &*h.job_id == job_id);
        match head.map(|h| &h.phase) {
            Some(Phase::Running(r)) => r
                .input
                .clone()
                .map(|i| (i, r.input_check.clone()))
                .ok_or_else(|| {
                    ExecError::Invalid(format!(
                        "job {job_id} has no open stdin: start it with `stdin_open: true` or `pty`"
                    ))
                }),
            _ => Err(ExecError::NoSuchJob(format!(
                "job {job_id} is not running (queued, or has ended)"
            ))),
        }
    }
}
