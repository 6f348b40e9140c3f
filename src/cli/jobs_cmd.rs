//! `ccx attach`, `ccx logs` and `ccx jobs …`: jobs in a server's registry, from any shell.

use anyhow::{Context, Result, bail};
use ccx::client::{self, Client, ExecFailure};
use ccx::protocol::{
    AttachParams, Control, ControlParams, ControlType, GetJob, JobRecord, JobRef, JobState,
    ListJobs, ListJobsParams, OutputEncoding,
};
use std::process::ExitCode;

/// Where the server is and how to get in.
#[derive(Debug, clap::Args)]
pub(super) struct Conn {
    /// Server URL.
    #[arg(long, env = "CCX_URL", default_value = client::DEFAULT_URL)]
    pub(super) url: String,
    /// Auth token (prefer the CCX_TOKEN environment variable to the command line).
    #[arg(long, env = "CCX_TOKEN", hide_env_values = true)]
    pub(super) token: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(super) struct AttachArgs {
    #[command(flatten)]
    conn: Conn,
    /// Start after this `seq` (default: from the start).
    #[arg(long)]
    after_seq: Option<u64>,
    /// The job id.
    job_id: String,
}

#[derive(Debug, clap::Args)]
pub(super) struct LogsArgs {
    #[command(flatten)]
    conn: Conn,
    /// Keep following a running job until it ends (and exit with its code).
    #[arg(long, short)]
    follow: bool,
    /// The job id.
    job_id: String,
}

#[derive(Debug, clap::Subcommand)]
pub(super) enum JobsCommand {
    /// The newest jobs: id, state, exit code, start time and command.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Only jobs in this state (running, completed, failed, lost, …).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One job's record, as JSON.
    Show {
        #[command(flatten)]
        conn: Conn,
        job_id: String,
    },
    /// Cancel a job, whichever connection started it.
    Cancel {
        #[command(flatten)]
        conn: Conn,
        job_id: String,
    },
}

/// `ccx attach ID`: the job's output from the start (or `--after-seq`), then live; exits with
/// the job's exit code. Ctrl-C stops watching; the job goes on.
pub(super) async fn attach(args: AttachArgs) -> Result<ExitCode> {
    Ok(
        match stream(&args.conn, &args.job_id, args.after_seq, true).await? {
            Ok(code) => ExitCode::from(code),
            Err(failed) => failed,
        },
    )
}

/// `ccx logs ID [--follow]`: the job's retained output; without `--follow` it stops at what a
/// running job has written so far.
pub(super) async fn logs(args: LogsArgs) -> Result<ExitCode> {
    // The job's own exit code is `ccx attach`'s business (and `--follow`'s).
    Ok(
        match stream(&args.conn, &args.job_id, None, args.follow).await? {
            Ok(code) if args.follow => ExitCode::from(code),
            Ok(_) => ExitCode::SUCCESS,
            Err(failed) => failed,
        },
    )
}

/// Follows the job; `Ok(code)`: the exit code its end stands for, `Err`: the exit code of a
/// refusal or a broken connection (reported on stderr).
async fn stream(
    conn: &Conn,
    job_id: &str,
    after_seq: Option<u64>,
    follow: bool,
) -> Result<Result<u8, ExitCode>> {
    let mut client = connect(conn).await?;
    let params = AttachParams {
        job_id: job_id.to_string(),
        after_seq,
        output_encoding: Some(OutputEncoding::Base64),
    };
    let (result, job) = match client.attach(&params).await {
        Ok(r) => r,
        Err(e) => return Ok(Err(failure(e.into()))),
    };
    let until = (!follow && !result.status.is_final()).then_some(result.last_seq);
    if until == Some(0) {
        return Ok(Ok(0));
    }
    // Registered before anything is printed (see `exec`).
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("listening for SIGINT")?;
    let interrupt = async move {
        sigint.recv().await;
    };
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    Ok(
        client::follow(job, &mut out, &mut err, interrupt, false, until)
            .await
            .map_err(failure),
    )
}

pub(super) async fn run(cmd: JobsCommand) -> Result<ExitCode> {
    match cmd {
        JobsCommand::List {
            conn,
            status,
            limit,
        } => {
            let status = match status.as_deref() {
                None => None,
                Some(s) => Some(JobState::parse(s).with_context(|| format!("no job state `{s}`"))?),
            };
            let mut client = connect(&conn).await?;
            let params = ListJobsParams {
                status,
                limit: Some(limit),
            };
            let list = match client.call::<ListJobs>(&params).await {
                Ok(l) => l,
                Err(e) => return Ok(failure(e.into())),
            };
            println!(
                "{:<36}  {:<9}  {:>4}  {:<19}  COMMAND",
                "JOB", "STATE", "EXIT", "CREATED"
            );
            for job in &list.jobs {
                println!("{}", row(job));
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Show { conn, job_id } => {
            let mut client = connect(&conn).await?;
            match client.call::<GetJob>(&JobRef { job_id }).await {
                Ok(record) => {
                    println!("{}", serde_json::to_string_pretty(&record)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(failure(e.into())),
            }
        }
        JobsCommand::Cancel { conn, job_id } => {
            let mut client = connect(&conn).await?;
            let params = ControlParams {
                kind: ControlType::Cancel,
                job_id: Some(job_id),
            };
            match client.call::<Control>(&params).await {
                Ok(note) => {
                    println!("{} canceled", note.job_id);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(failure(e.into())),
            }
        }
    }
}

async fn connect(conn: &Conn) -> Result<Client> {
    match Client::connect(&conn.url, conn.token.as_deref()).await {
        Ok(c) => Ok(c),
        Err(e) => bail!("{e}"),
    }
}

fn failure(f: ExecFailure) -> ExitCode {
    eprintln!("ccx: {f}");
    ExitCode::from(f.exit_code())
}

/// One line of `ccx jobs list`.
fn row(job: &JobRecord) -> String {
    let exit = match (job.exit_code, job.signal) {
        (Some(c), _) => c.to_string(),
        (None, Some(s)) => format!("s{s}"),
        _ => "-".into(),
    };
    let created = format_time(job.created_at);
    let command: String = job.command.chars().take(60).collect();
    format!(
        "{:<36}  {:<9}  {:>4}  {:<19}  {}",
        job.job_id,
        job.status.as_str(),
        exit,
        created,
        command.replace('\n', " ")
    )
}

/// `YYYY-MM-DD hh:mm:ss` (UTC) for seconds since the Unix epoch.
pub(super) fn format_time(secs: f64) -> String {
    // Civil-from-days (Howard Hinnant's algorithm), to avoid a date library for one column.
    let secs = secs as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_times() {
        assert_eq!(super::format_time(0.0), "1970-01-01 00:00:00");
        assert_eq!(super::format_time(1_795_996_800.5), "2026-11-30 00:00:00");
    }
}
