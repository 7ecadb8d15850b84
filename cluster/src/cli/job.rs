//! `troupe job submit|status|logs|stop|list` (Ray's `ray job`): driver
//! programs run by the head, their logs and status kept after they end.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::ClientArgs;
use crate::jobs::{JobInfo, JobSpec, JobState};
use crate::{ClusterError, ClusterNode};

/// `troupe job`.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Runs a driver program on the head with the cluster's address and
    /// credentials in its environment; follows its log until it ends
    /// (unless `--no-wait`) and exits with its outcome.
    Submit(SubmitArgs),
    /// A job's state.
    Status(JobArgs),
    /// A job's log (`-f` follows it until the job ends).
    Logs(LogsArgs),
    /// Stops a job (SIGTERM, then SIGKILL after 5 s); its actors end with it.
    Stop(JobArgs),
    /// Every job the head keeps.
    List(ListJobsArgs),
}

/// `troupe job submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Where it runs on the head (default: the head's directory).
    #[arg(long)]
    pub working_dir: Option<PathBuf>,
    /// An environment variable for it, `KEY=VALUE` (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Return once it started, printing its id.
    #[arg(long)]
    pub no_wait: bool,
    /// Where the cluster is and how to prove it.
    #[command(flatten)]
    pub client: ClientArgs,
    /// The program and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// `troupe job status` and `stop`.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// The job's id (`job-N`).
    pub id: String,
    /// Where the cluster is and how to prove it.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `troupe job logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The job's id (`job-N`).
    pub id: String,
    /// Follow the log until the job ends.
    #[arg(short, long)]
    pub follow: bool,
    /// Where the cluster is and how to prove it.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `troupe job list`.
#[derive(Debug, Args)]
pub struct ListJobsArgs {
    /// Where the cluster is and how to prove it.
    #[command(flatten)]
    pub client: ClientArgs,
}

fn client_of(command: &JobCommand) -> &ClientArgs {
    match command {
        JobCommand::Submit(a) => &a.client,
        JobCommand::Status(a) | JobCommand::Stop(a) => &a.client,
        JobCommand::Logs(a) => &a.client,
        JobCommand::List(a) => &a.client,
    }
}

/// Runs a `troupe job` command.
pub(super) async fn run(command: JobCommand) -> Result<(), ClusterError> {
    let client = client_of(&command);
    if client.token_file.is_some() {
        return Err(ClusterError::ReadOnly(
            "jobs need the cluster's cookie".to_owned(),
        ));
    }
    let (rt, node) = super::client(client).await?;
    let result = job(&node, command).await;
    let _ = rt.shutdown().await;
    result
}

fn state_word(state: &JobState) -> String {
    match state {
        JobState::Running => "RUNNING".to_owned(),
        JobState::Succeeded => "SUCCEEDED".to_owned(),
        JobState::Stopped => "STOPPED".to_owned(),
        JobState::Failed(how) => format!("FAILED ({how})"),
    }
}

fn line(info: &JobInfo) -> String {
    format!(
        "{}  {}  {}",
        info.id,
        state_word(&info.state),
        info.spec.command.join(" ")
    )
}

async fn job(node: &ClusterNode, command: JobCommand) -> Result<(), ClusterError> {
    match command {
        JobCommand::Submit(args) => {
            let env = args
                .env
                .iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
                    _ => Err(ClusterError::Job(format!("--env {kv:?} is not KEY=VALUE"))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let spec = JobSpec {
                command: args.command,
                env,
                working_dir: args.working_dir,
            };
            let info = node.submit_job(spec).await?;
            eprintln!("troupe: job {} started", info.id);
            if args.no_wait {
                println!("{}", info.id);
                return Ok(());
            }
            follow(node, &info.id).await?;
            let ended = status(node, &info.id).await?;
            eprintln!("troupe: {}", line(&ended));
            match ended.state {
                JobState::Succeeded => Ok(()),
                other => Err(ClusterError::Job(format!(
                    "{} ended {}",
                    info.id,
                    state_word(&other)
                ))),
            }
        }
        JobCommand::Status(args) => {
            println!("{}", line(&status(node, &args.id).await?));
            Ok(())
        }
        JobCommand::Logs(args) if args.follow => follow(node, &args.id).await,
        JobCommand::Logs(args) => {
            let mut from = 0;
            loop {
                let page = node.job_logs(&args.id, from).await?;
                if page.bytes.is_empty() {
                    return Ok(());
                }
                write_out(&page.bytes)?;
                from = page.next;
            }
        }
        JobCommand::Stop(args) => {
            let info = node.stop_job(&args.id).await?;
            println!("{}", line(&info));
            Ok(())
        }
        JobCommand::List(_) => {
            let jobs = node.jobs().await?;
            if jobs.is_empty() {
                println!("(no jobs)");
            }
            for info in jobs {
                println!("{}", line(&info));
            }
            Ok(())
        }
    }
}

async fn status(node: &ClusterNode, id: &str) -> Result<JobInfo, ClusterError> {
    node.jobs()
        .await?
        .into_iter()
        .find(|j| j.id == id)
        .ok_or_else(|| ClusterError::Job(format!("no job {id} (see `troupe job list`)")))
}

fn write_out(bytes: &[u8]) -> Result<(), ClusterError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| ClusterError::Job(format!("writing the log: {e}")))
}

/// Prints the log as it grows, until the job has ended and all of it was
/// printed.
async fn follow(node: &ClusterNode, id: &str) -> Result<(), ClusterError> {
    let mut from = 0;
    loop {
        let page = node.job_logs(id, from).await?;
        if !page.bytes.is_empty() {
            write_out(&page.bytes)?;
            from = page.next;
            continue;
        }
        if page.ended {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
