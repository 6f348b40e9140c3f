//! The worker's side of `control`, `input`, `resize` and `get_job` for a job it runs: it
//! answers requests on `ccx.ctl.<job_id>` ([`ControlMessage`]) with its own executor and
//! registry until the job has ended.

use super::{ControlMessage, ControlReply};
use crate::executor::Executor;
use crate::protocol::RpcError;
use futures_util::StreamExt;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Answers `control` requests for one job until `done`.
pub(super) async fn answer_control(
    exec: Arc<Executor>,
    client: async_nats::Client,
    mut sub: async_nats::Subscriber,
    job_id: String,
    done: CancellationToken,
) {
    loop {
        let req = tokio::select! {
            r = sub.next() => r,
            _ = done.cancelled() => break,
        };
        let Some(req) = req else { return };
        let reply = match serde_json::from_slice::<ControlMessage>(&req.payload) {
            Ok(c) => obey(&exec, &job_id, c).await,
            Err(e) => Err(RpcError::InvalidParams(format!(
                "not a control request: {e}"
            ))),
        };
        let reply: ControlReply = reply.map_err(|e| e.to_object());
        if let Some(to) = req.reply {
            let body = serde_json::to_vec(&reply).expect("replies serialize");
            let _ = client.publish(to, body.into()).await;
        }
    }
    // Requests that arrived meanwhile hear that the job has ended.
    let _ = sub.unsubscribe().await;
    while let Ok(Some(req)) = tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
        if let Some(to) = req.reply {
            let ended = RpcError::NoSuchJob(format!("job {job_id} has already ended"));
            let reply: ControlReply = Err(ended.to_object());
            let body = serde_json::to_vec(&reply).expect("replies serialize");
            let _ = client.publish(to, body.into()).await;
        }
    }
}

/// Carries out one request for a running job with this worker's executor.
async fn obey(exec: &Executor, job_id: &str, c: ControlMessage) -> Result<Value, RpcError> {
    match c {
        ControlMessage::Control { kind } => {
            exec.control(kind, job_id).await?;
            Ok(Value::Null)
        }
        ControlMessage::Input {
            data,
            encoding,
            eof,
        } => {
            let data =
                crate::protocol::input::decode(&data, encoding).map_err(RpcError::InvalidParams)?;
            Ok(Value::from(exec.input(job_id, data, eof).await? as u64))
        }
        ControlMessage::Resize { rows, cols } => {
            exec.resize(job_id, rows, cols).await?;
            Ok(Value::Null)
        }
        ControlMessage::GetJob => {
            let record = exec.registry().get(job_id).await?;
            Ok(serde_json::to_value(record).expect("records serialize"))
        }
    }
}
