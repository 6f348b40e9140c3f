//! The job-handle operations behind the MCP tools `job_start`, `job_output`, `job_wait`,
//! `job_cancel` and `job_list`, for both backends: [`Local`] reads the executor's registry in
//! this process, [`Remote`] speaks `execute {detach}`, `attach`, `get_job`, `control` and
//! `list_jobs` to a ccx server.

use super::backend::{JobError, JobSpec, Local, Remote, remote_error};
use crate::events::Event;
use crate::executor::{Closing, ExecError, Origin};
use crate::protocol::{
    AttachParams, AttachResult, Control, ControlParams, ControlType, Execute, ExecuteParams,
    GetJob, JobRecord, JobRef, ListJobs, ListJobsParams, Notification, OutputEncoding, ServerFrame,
};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A job's replay: its `attach` answer and its events (base64 output) to the end.
pub type Events = (AttachResult, BoxStream<'static, Event>);

/// What the job tools need from a backend.
pub trait JobOps: Send + Sync + 'static {
    /// Starts `spec` detached and answers its id at once.
    fn start(&self, spec: JobSpec) -> BoxFuture<'_, Result<String, JobError>>;
    /// The job's replay from the start, output in base64.
    fn events(&self, job_id: String) -> BoxFuture<'_, Result<Events, JobError>>;
    /// The job's record.
    fn record(&self, job_id: String) -> BoxFuture<'_, Result<JobRecord, JobError>>;
    fn cancel(&self, job_id: String) -> BoxFuture<'_, Result<(), JobError>>;
    /// Queues `data` (then the end of input, if `eof`) for the job's stdin; answers the
    /// bytes queued.
    fn input(
        &self,
        job_id: String,
        data: Vec<u8>,
        eof: bool,
    ) -> BoxFuture<'_, Result<u64, JobError>>;
    /// The newest records.
    fn list(&self, limit: usize) -> BoxFuture<'_, Result<Vec<JobRecord>, JobError>>;
}

fn refused(e: impl std::fmt::Display) -> JobError {
    JobError::Refused(e.to_string())
}

impl JobOps for Local {
    fn start(&self, spec: JobSpec) -> BoxFuture<'_, Result<String, JobError>> {
        Box::pin(async move {
            let mut request = spec.request()?;
            request.detach = true;
            // A session of its own that nobody reads: the job's output goes to the registry.
            let (tx, _rx) = mpsc::channel(1);
            let id: Arc<str> = format!("mcp-{}", uuid::Uuid::new_v4().simple()).into();
            let session = self.exec().session(id, tx, Origin::default());
            let accepted = session.execute(request).await.map_err(|e| match e {
                ExecError::Denied { hook, reason, .. } => JobError::Denied { hook, reason },
                other => refused(other),
            })?;
            let job_id = accepted.job_id().to_string();
            drop(accepted);
            session.close(Closing::Disconnect).await;
            Ok(job_id)
        })
    }

    fn events(&self, job_id: String) -> BoxFuture<'_, Result<Events, JobError>> {
        Box::pin(async move {
            let replay = self
                .exec()
                .registry()
                .attach(&job_id, None, Some(OutputEncoding::Base64))
                .await
                .map_err(refused)?;
            let result = replay.result().clone();
            let stream = futures_util::stream::unfold(replay, |mut r| async move {
                r.next().await.map(|e| (e, r))
            });
            Ok((result, Box::pin(stream) as BoxStream<'static, Event>))
        })
    }

    fn record(&self, job_id: String) -> BoxFuture<'_, Result<JobRecord, JobError>> {
        Box::pin(async move { self.exec().registry().get(&job_id).await.map_err(refused) })
    }

    fn cancel(&self, job_id: String) -> BoxFuture<'_, Result<(), JobError>> {
        Box::pin(async move {
            self.exec()
                .control(ControlType::Cancel, &job_id)
                .await
                .map(|_| ())
                .map_err(refused)
        })
    }

    fn input(
        &self,
        job_id: String,
        data: Vec<u8>,
        eof: bool,
    ) -> BoxFuture<'_, Result<u64, JobError>> {
        Box::pin(async move {
            self.exec()
                .input(&job_id, data, eof)
                .await
                .map(|n| n as u64)
                .map_err(refused)
        })
    }

    fn list(&self, limit: usize) -> BoxFuture<'_, Result<Vec<JobRecord>, JobError>> {
        Box::pin(async move {
            self.exec()
                .registry()
                .list(None, Some(limit))
                .await
                .map_err(refused)
        })
    }
}

impl JobOps for Remote {
    fn start(&self, spec: JobSpec) -> BoxFuture<'_, Result<String, JobError>> {
        Box::pin(async move {
            let mut client = self.connect().await?;
            let params = ExecuteParams {
                detach: true,
                ..spec.params()
            };
            let r = client
                .call::<Execute>(&params)
                .await
                .map_err(remote_error)?;
            Ok(r.job_id().to_string())
        })
    }

    fn events(&self, job_id: String) -> BoxFuture<'_, Result<Events, JobError>> {
        Box::pin(async move {
            let mut client = self.connect().await?;
            let params = AttachParams {
                job_id: job_id.clone(),
                after_seq: None,
                output_encoding: Some(OutputEncoding::Base64),
            };
            let result = {
                let (result, _stream) = client.attach(&params).await.map_err(remote_error)?;
                result
            };
            // The events after the answer, read straight off the connection.
            let stream = futures_util::stream::unfold(Some(client), move |client| {
                let job_id = job_id.clone();
                async move {
                    let mut client = client?;
                    loop {
                        match client.next_frame().await {
                            Ok(ServerFrame::Notification(n))
                                if n.job_id().is_some_and(|id| **id == *job_id) =>
                            {
                                let last = matches!(n, Notification::Completed(_));
                                return Some((n, (!last).then_some(client)));
                            }
                            Ok(_) => continue,
                            Err(_) => return None,
                        }
                    }
                }
            });
            Ok((result, Box::pin(stream) as BoxStream<'static, Event>))
        })
    }

    fn record(&self, job_id: String) -> BoxFuture<'_, Result<JobRecord, JobError>> {
        Box::pin(async move {
            let mut client = self.connect().await?;
            client
                .call::<GetJob>(&JobRef { job_id })
                .await
                .map_err(remote_error)
        })
    }

    fn cancel(&self, job_id: String) -> BoxFuture<'_, Result<(), JobError>> {
        Box::pin(async move {
            let mut client = self.connect().await?;
            let params = ControlParams {
                kind: ControlType::Cancel,
                job_id: Some(job_id),
            };
            client
                .call::<Control>(&params)
                .await
                .map(|_| ())
                .map_err(remote_error)
        })
    }

    fn input(
        &self,
        job_id: String,
        data: Vec<u8>,
        eof: bool,
    ) -> BoxFuture<'_, Result<u64, JobError>> {
        Box::pin(async move {
            use base64::Engine;
            let mut client = self.connect().await?;
            let params = crate::protocol::InputParams {
                job_id,
                data: base64::engine::general_purpose::STANDARD.encode(data),
                encoding: Some(OutputEncoding::Base64),
                eof,
            };
            client
                .call::<crate::protocol::Input>(&params)
                .await
                .map(|r| r.bytes)
                .map_err(remote_error)
        })
    }

    fn list(&self, limit: usize) -> BoxFuture<'_, Result<Vec<JobRecord>, JobError>> {
        Box::pin(async move {
            let mut client = self.connect().await?;
            let params = ListJobsParams {
                status: None,
                limit: Some(limit),
            };
            client
                .call::<ListJobs>(&params)
                .await
                .map(|l| l.jobs)
                .map_err(remote_error)
        })
    }
}
