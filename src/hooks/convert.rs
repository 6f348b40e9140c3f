//! Conversions between the plain types (`types`) and each contract version's guest types
//! (`bindings`): requests and results go out in the version the hook was built against; a
//! 0.1.0 answer comes back as the 0.2.0 answer that means the same (a patch without limits),
//! so the checks in `types` and everything after them see one version.

use super::bindings::{types as wit, v1};
use super::parse::{Connector, Context, SimpleCommand};
use super::types::{
    HookLimits, HookRequest, HookResult, JobStatus, StdinMode, Submitter, TerminalSize,
};

// ---- 0.2.0 ------------------------------------------------------------------------------------

impl From<HookLimits> for wit::Limits {
    fn from(l: HookLimits) -> Self {
        wit::Limits {
            memory_mb: l.memory_mb,
            pids: l.pids,
            cpu_seconds: l.cpu_seconds,
            open_files: l.open_files,
            file_size_mb: l.file_size_mb,
        }
    }
}

impl From<StdinMode> for wit::StdinMode {
    fn from(m: StdinMode) -> Self {
        match m {
            StdinMode::None => wit::StdinMode::None,
            StdinMode::Text => wit::StdinMode::Text,
            StdinMode::Open => wit::StdinMode::Open,
            StdinMode::Terminal => wit::StdinMode::Terminal,
        }
    }
}

fn terminal(t: TerminalSize) -> wit::TerminalSize {
    wit::TerminalSize {
        rows: t.rows,
        cols: t.cols,
    }
}

fn submitter(s: &Submitter) -> wit::Submitter {
    wit::Submitter {
        token_label: s.token_label.clone(),
        peer: s.peer.clone(),
    }
}

fn simple_command(c: &SimpleCommand) -> wit::SimpleCommand {
    let p = &c.position;
    wit::SimpleCommand {
        argv: c.argv.clone(),
        program: c.program.clone(),
        dynamic: c.dynamic,
        position: wit::Position {
            pipeline: p.pipeline,
            stage: p.stage,
            after: match p.after {
                Connector::Start => wit::Connector::Start,
                Connector::Sequence => wit::Connector::Sequence,
                Connector::And => wit::Connector::And,
                Connector::Or => wit::Connector::Or,
            },
            background: p.background,
            negated: p.negated,
            depth: p.depth,
            context: match p.context {
                Context::Top => wit::Context::Top,
                Context::Subshell => wit::Context::Subshell,
                Context::BraceGroup => wit::Context::BraceGroup,
                Context::Compound => wit::Context::Compound,
                Context::Function => wit::Context::Function,
                Context::CommandSubstitution => wit::Context::CommandSubstitution,
                Context::ProcessSubstitution => wit::Context::ProcessSubstitution,
                Context::ShellC => wit::Context::ShellC,
            },
            parent: p.parent,
        },
        redirections: c
            .redirections
            .iter()
            .map(|r| wit::Redirection {
                fd: r.fd,
                op: r.op.clone(),
                target: r.target.clone(),
                dynamic: r.dynamic,
                body: r.body.clone(),
            })
            .collect(),
        assignments: c.assignments.clone(),
    }
}

impl From<&HookRequest> for wit::ExecRequest {
    fn from(r: &HookRequest) -> Self {
        wit::ExecRequest {
            session_id: r.session_id.clone(),
            job_id: r.job_id.clone(),
            command: r.command.clone(),
            cwd: r.cwd.clone(),
            env: r.env.clone(),
            timeout_ms: r.timeout_ms,
            stdin: r.stdin.into(),
            terminal: r.terminal.map(terminal),
            limits: r.limits.into(),
            labels: r.labels.clone(),
            submitter: submitter(&r.submitter),
            commands: r.commands.iter().map(simple_command).collect(),
            unparsed: r.unparsed.clone(),
        }
    }
}

impl From<JobStatus> for wit::JobStatus {
    fn from(s: JobStatus) -> Self {
        match s {
            JobStatus::Completed => wit::JobStatus::Completed,
            JobStatus::Failed => wit::JobStatus::Failed,
            JobStatus::TimedOut => wit::JobStatus::TimedOut,
            JobStatus::Canceled => wit::JobStatus::Canceled,
        }
    }
}

impl From<&HookResult> for wit::ExecResult {
    fn from(r: &HookResult) -> Self {
        wit::ExecResult {
            request: (&r.request).into(),
            received: (&r.received).into(),
            status: r.status.into(),
            exit_code: r.exit_code,
            signal: r.signal,
            duration_ms: r.duration_ms,
            stdout_bytes: r.stdout_bytes,
            stderr_bytes: r.stderr_bytes,
            stdout_tail: r.stdout_tail.clone(),
            stderr_tail: r.stderr_tail.clone(),
        }
    }
}

// ---- 0.1.0 ------------------------------------------------------------------------------------

impl From<&HookRequest> for v1::types::ExecRequest {
    fn from(r: &HookRequest) -> Self {
        v1::types::ExecRequest {
            session_id: r.session_id.clone(),
            job_id: r.job_id.clone(),
            command: r.command.clone(),
            cwd: r.cwd.clone(),
            env: r.env.clone(),
            timeout_ms: r.timeout_ms,
        }
    }
}

impl From<&HookResult> for v1::types::ExecResult {
    fn from(r: &HookResult) -> Self {
        use v1::types::JobStatus as S;
        v1::types::ExecResult {
            request: (&r.request).into(),
            status: match r.status {
                JobStatus::Completed => S::Completed,
                JobStatus::Failed => S::Failed,
                JobStatus::TimedOut => S::TimedOut,
                JobStatus::Canceled => S::Canceled,
            },
            exit_code: r.exit_code,
            signal: r.signal,
            duration_ms: r.duration_ms,
            stdout_bytes: r.stdout_bytes,
            stderr_bytes: r.stderr_bytes,
            stdout_tail: r.stdout_tail.clone(),
            stderr_tail: r.stderr_tail.clone(),
        }
    }
}

/// A 0.1.0 pre-hook's answer as the 0.2.0 answer that means the same.
pub(crate) fn pre_decision_v1(d: v1::types::PreDecision) -> wit::PreDecision {
    match d {
        v1::types::PreDecision::Allow => wit::PreDecision::Allow,
        v1::types::PreDecision::Deny(reason) => wit::PreDecision::Deny(reason),
        v1::types::PreDecision::Modify(p) => wit::PreDecision::Modify(wit::RequestPatch {
            command: p.command,
            cwd: p.cwd,
            set_env: p.set_env,
            unset_env: p.unset_env,
            timeout_ms: p.timeout_ms,
            limits: None,
        }),
    }
}

/// A 0.1.0 post-hook's answer as the 0.2.0 answer that means the same.
pub(crate) fn post_outcome_v1(o: v1::types::PostOutcome) -> wit::PostOutcome {
    wit::PostOutcome {
        annotations: o.annotations,
        verdict: o.verdict.map(|v| match v {
            v1::types::Verdict::Pass => wit::Verdict::Pass,
            v1::types::Verdict::Fail(reason) => wit::Verdict::Fail(reason),
        }),
    }
}

/// A 0.1.0 `host.log` level as the 0.2.0 one.
pub(crate) fn level_v1(l: v1::host::Level) -> super::bindings::host::Level {
    use super::bindings::host::Level;
    match l {
        v1::host::Level::Trace => Level::Trace,
        v1::host::Level::Debug => Level::Debug,
        v1::host::Level::Info => Level::Info,
        v1::host::Level::Warn => Level::Warn,
        v1::host::Level::Error => Level::Error,
    }
}
