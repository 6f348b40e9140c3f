//! What a client asks for and what it is answered: [`JobRequest`] (validated on the way in),
//! [`Accepted`] for an `execute` that was taken, and [`ExecError`] for one that was not.

use crate::events::JobId;
use crate::protocol::{ExecuteParams, ExecuteResult, Limits, OutputEncoding, PtySize};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::oneshot;

/// A command as a client asked for it (and as pre-hooks may have changed it).
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    pub command: String,
    /// `None`: the configured default applies.
    pub timeout: Option<Duration>,
    pub cwd: Option<String>,
    /// Variables the request sets, on top of the server's child environment.
    pub env: BTreeMap<String, String>,
    /// Keep running after the session closes.
    pub detach: bool,
    pub output_encoding: OutputEncoding,
    /// A retry with the same key answers with the first job (see `ExecuteParams`).
    pub idempotency_key: Option<String>,
    /// Written to the command's stdin, which is then closed; `None`: `/dev/null`.
    pub stdin: Option<String>,
    /// stderr goes to the stdout pipe (exact order, one stream).
    pub merge_stderr: bool,
    /// Resource limits asked for; the server's defaults fill the rest.
    pub limits: Option<Limits>,
    /// stdin stays open for `input` (after `stdin`).
    pub stdin_open: bool,
    /// Run on a terminal of this size.
    pub pty: Option<PtySize>,
    /// The client's labels, for hooks (matchers, policies) and records.
    pub labels: BTreeMap<String, String>,
    /// The client's trace context; the job runs under a child span of it.
    pub trace: Option<crate::trace::TraceParent>,
    /// The id a cluster gateway gave the job before a worker took it; `None`: the executor
    /// makes a new one.
    pub job_id: Option<JobId>,
}

/// Most labels a request may carry.
pub const MAX_LABELS: usize = 32;

impl JobRequest {
    /// Checks `labels`: at most [`MAX_LABELS`], keys of 1 to 64 bytes of `[A-Za-z0-9._/-]`,
    /// values of at most 256 bytes without NUL. Errors are meant for the client.
    pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ExecError> {
        if labels.len() > MAX_LABELS {
            return Err(ExecError::Invalid(format!(
                "`labels`: {} labels (at most {MAX_LABELS})",
                labels.len()
            )));
        }
        let key_ok = |k: &str| {
            (1..=64).contains(&k.len())
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
        };
        match labels
            .iter()
            .find(|(k, v)| !key_ok(k) || v.len() > 256 || v.contains('\0'))
        {
            Some((k, _)) => Err(ExecError::Invalid(format!(
                "`labels`: `{k}` is not a label key of 1 to 64 of [A-Za-z0-9._/-], or its value is longer than 256 bytes or has a NUL"
            ))),
            None => Ok(()),
        }
    }

    /// SHA-256 (hex) of what makes two requests the same for an idempotency key: command,
    /// cwd, env, timeout, detach, encoding, stdin, `merge_stderr`, limits, `stdin_open` and
    /// pty.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let canonical = serde_json::json!([
            self.command,
            self.cwd,
            self.env,
            self.timeout.map(|t| t.as_secs_f64()),
            self.detach,
            self.output_encoding,
            self.stdin,
            self.merge_stderr,
            self.limits,
            self.stdin_open,
            self.pty,
            self.labels,
        ]);
        Sha256::digest(canonical.to_string().as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Validates a request's fields; errors are meant for the client.
    pub fn new(
        command: String,
        timeout_secs: Option<f64>,
        cwd: Option<String>,
        env: BTreeMap<String, String>,
    ) -> Result<JobRequest, ExecError> {
        if command.trim().is_empty() {
            return Err(ExecError::Invalid("`command` is empty".into()));
        }
        if command.contains('\0') {
            return Err(ExecError::Invalid("`command` contains a NUL byte".into()));
        }
        let timeout = match timeout_secs {
            None => None,
            Some(t) if t.is_finite() && t > 0.0 && t < 1e9 => Some(Duration::from_secs_f64(t)),
            Some(t) => {
                return Err(ExecError::Invalid(format!(
                    "`timeout` must be a positive number of seconds, got {t}"
                )));
            }
        };
        if let Some(cwd) = &cwd
            && (cwd.is_empty() || cwd.contains('\0'))
        {
            return Err(ExecError::Invalid(
                "`cwd` is empty or has a NUL byte".into(),
            ));
        }
        if let Some((k, _)) = env
            .iter()
            .find(|(k, v)| !crate::config::valid_env_name(k) || v.contains('\0'))
        {
            return Err(ExecError::Invalid(format!(
                "`env`: `{k}` is not a valid variable name or its value has a NUL byte"
            )));
        }
        Ok(JobRequest {
            command,
            timeout,
            cwd,
            env,
            detach: false,
            output_encoding: OutputEncoding::Utf8,
            idempotency_key: None,
            stdin: None,
            merge_stderr: false,
            limits: None,
            stdin_open: false,
            pty: None,
            labels: BTreeMap::new(),
            trace: None,
            job_id: None,
        })
    }

    /// The request an `execute` asks for, every field checked (`requires` is the caller's
    /// business: only a cluster gateway routes by it). Errors are meant for the client.
    pub fn from_params(p: ExecuteParams) -> Result<JobRequest, ExecError> {
        let mut request = JobRequest::new(p.command, p.timeout, p.cwd, p.env.unwrap_or_default())?;
        request.detach = p.detach;
        request.output_encoding = p.output_encoding.unwrap_or_default();
        request.idempotency_key = p.idempotency_key;
        request.stdin = p.stdin;
        request.merge_stderr = p.merge_stderr;
        request.limits = p.limits;
        request.stdin_open = p.stdin_open;
        request.pty = p.pty;
        request.labels = p.labels.unwrap_or_default();
        request.trace = p
            .traceparent
            .as_deref()
            .map(crate::trace::TraceParent::parse)
            .transpose()
            .map_err(ExecError::Invalid)?;
        if p.retry_lost && request.idempotency_key.is_none() {
            return Err(ExecError::Invalid(
                "`retry_lost` may run the command twice: it needs an `idempotency_key`".into(),
            ));
        }
        if let Some(key) = &request.idempotency_key
            && (key.is_empty() || key.len() > 256)
        {
            return Err(ExecError::Invalid(
                "`idempotency_key` must be 1 to 256 bytes".into(),
            ));
        }
        Ok(request)
    }
}

/// Why an `execute` or `control` was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExecError {
    #[error("{0}")]
    Invalid(String),
    #[error("denied by hook `{hook}`: {reason}")]
    Denied {
        job_id: JobId,
        hook: String,
        reason: String,
    },
    #[error("queue full: {0} jobs already queued")]
    QueueFull(usize),
    /// `[state] max_detached` detached jobs already run.
    #[error("{0} detached jobs already run (`[state] max_detached`)")]
    DetachedLimit(usize),
    /// The registry refused (it is off, the key was reused, …): the error as the wire shows it.
    #[error("{0}")]
    Registry(crate::protocol::RpcError),
    #[error("{0}")]
    NoSuchJob(String),
    #[error("the session is closing")]
    Closed,
    /// The hooks of the configuration in force had not finished loading within
    /// `[sandbox] load_timeout`.
    #[error("hooks not ready: {0}")]
    HooksNotReady(String),
}

impl From<ExecError> for crate::protocol::RpcError {
    /// The error as the client sees it.
    fn from(e: ExecError) -> Self {
        use crate::protocol::RpcError;
        match e {
            ExecError::Invalid(msg) => RpcError::InvalidParams(msg),
            ExecError::Denied { hook, reason, .. } => RpcError::CommandNotAllowed { hook, reason },
            ExecError::QueueFull(n) => RpcError::QueueFull(n),
            ExecError::NoSuchJob(msg) => RpcError::NoSuchJob(msg),
            ExecError::Closed => RpcError::InvalidRequest("the session is closing".into()),
            ExecError::HooksNotReady(msg) => RpcError::HooksNotReady(msg),
            ExecError::DetachedLimit(n) => RpcError::DetachedLimit(n),
            ExecError::Registry(e) => e,
        }
    }
}

/// The answer to an accepted `execute`.
#[derive(Debug)]
pub enum Accepted {
    /// Running now. Events for the job are held back until this value is dropped, so a
    /// caller can send its reply first and the client sees reply → started → output.
    Started {
        job_id: JobId,
        pid: u32,
        pgid: i32,
        _gate: oneshot::Sender<()>,
    },
    /// Waiting behind `position - 1` other jobs.
    Queued { job_id: JobId, position: usize },
    /// Could not be started (spawn failure, or its task failed internally); its terminal
    /// `failed` event has been sent.
    Failed { job_id: JobId, error: String },
    /// Its `idempotency_key` names this earlier job; nothing was run.
    Existing { job_id: JobId },
}

impl Accepted {
    pub fn job_id(&self) -> &JobId {
        match self {
            Accepted::Started { job_id, .. }
            | Accepted::Queued { job_id, .. }
            | Accepted::Failed { job_id, .. }
            | Accepted::Existing { job_id } => job_id,
        }
    }

    /// The `execute` result as the wire shows it.
    pub fn to_result(&self) -> ExecuteResult {
        match self {
            Accepted::Started {
                job_id, pid, pgid, ..
            } => ExecuteResult::Started {
                job_id: job_id.clone(),
                pid: *pid,
                pgid: *pgid,
            },
            Accepted::Queued { job_id, position } => ExecuteResult::Queued {
                job_id: job_id.clone(),
                position: *position,
            },
            Accepted::Failed { job_id, error } => ExecuteResult::Failed {
                job_id: job_id.clone(),
                error: error.clone(),
            },
            Accepted::Existing { job_id } => ExecuteResult::Existing {
                job_id: job_id.clone(),
            },
        }
    }
}
