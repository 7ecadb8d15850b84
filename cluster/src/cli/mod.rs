//! The `troupe` command line: `start` (a head, or a node joining one),
//! `status`, `list`, `summary`, `get`, `timeline` (across nodes), `job`,
//! `stop`, `token` (a read-only credential), and `cert` (a cluster CA and node certificates for
//! TLS). The same commands run from the `troupe` binary and
//! from a user's own binary through [`main_if_requested`] (a node must run
//! the user's program, which holds its remote functions and actor types).

use std::ffi::{OsStr, OsString};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use troupe_core::{Config, Resources};

use crate::handshake::HandshakeError;
use crate::node::{ClusterNode, ClusterOptions};
use crate::protocol::{Member, MemberState, Reply, Request, Role};
use crate::session::{self, SessionError};
use crate::tls::{Credentials, Tls};
use crate::{cookie, ClusterError, ADDRESS_ENV};

mod job;
mod logs;
mod start;
mod state;
pub use job::{JobArgs, JobCommand, ListJobsArgs, LogsArgs, SubmitArgs};
pub use logs::NodeLogsArgs;
pub use state::{Format, GetArgs, Kind, ListArgs, SummaryArgs, TimelineArgs};

/// The levels `troupe logs` keeps, as `RUST_LOG` would say them (default
/// `info,ractor_cluster=error`).
pub const CAPTURE_ENV: &str = "TROUPE_LOG_CAPTURE";

/// Troupe's cluster commands.
#[derive(Debug, Parser)]
#[command(
    name = "troupe",
    about = "Start, inspect and stop Troupe cluster nodes",
    version
)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// A `troupe` command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Starts a head (`--head`) or a node joining one (`--address`).
    Start(StartArgs),
    /// Lists the cluster's nodes: state, resources, load.
    Status(ClientArgs),
    /// Stops every node of the cluster, then its head (a clean leave).
    Stop(ClientArgs),
    /// Lists nodes, actors, tasks or objects across the cluster.
    List(state::ListArgs),
    /// Counts tasks by function, actors by type, objects by node, across
    /// the cluster.
    Summary(state::SummaryArgs),
    /// Prints one actor's, task's or object's whole record.
    Get(state::GetArgs),
    /// Prints what the nodes logged, merged by time: every node's, one
    /// node's (`--node`), or only what one task's or actor's code wrote
    /// (`--task`, `--actor`); `-f` follows.
    Logs(logs::NodeLogsArgs),
    /// Writes every node's timeline as one Chrome trace (a process per
    /// node, clocks aligned to the head's).
    Timeline(state::TimelineArgs),
    /// Runs driver programs on the head and keeps their logs and status.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Prints the cluster's read-only token: with it (`status
    /// --token-file`), a client sees the cluster's status and can neither
    /// join, run work, nor stop it. Derived from the cookie: a new cookie
    /// revokes it.
    Token(TokenArgs),
    /// Makes the cluster's TLS files: a CA (`init`), node certificates
    /// (`issue`).
    #[command(subcommand)]
    Cert(CertCommand),
}

/// `troupe cert`.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Makes a cluster CA (`ca.pem`, `ca.key`, mode 0600) in `--dir`.
    Init {
        /// Where (default: `tls` in the state directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Where cookie and node files live.
        #[arg(long, env = "TROUPE_HOME")]
        state_dir: Option<PathBuf>,
    },
    /// Issues a node certificate signed by the CA: `node.pem`, `node.key`
    /// and a copy of `ca.pem` in `--out`, what `--tls-dir` takes. Give each
    /// machine its own; keep `ca.key` where certificates are issued.
    Issue {
        /// The CA's directory (default: `tls` in the state directory).
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        /// Where to write (default: the CA's directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = crate::tls::NODE_CERT_DAYS)]
        days: i64,
        /// Where cookie and node files live.
        #[arg(long, env = "TROUPE_HOME")]
        state_dir: Option<PathBuf>,
    },
}

/// `troupe start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Start the head (it keeps the directory and runs tasks too).
    #[arg(long, conflicts_with = "address", required_unless_present = "address")]
    pub head: bool,
    /// The head to join (`host:port`).
    #[arg(long, env = ADDRESS_ENV)]
    pub address: Option<String>,
    /// The control port (the head's default: 6380; nodes: any free port).
    #[arg(long)]
    pub port: Option<u16>,
    /// The data path's port (default: any free port).
    #[arg(long, default_value_t = 0)]
    pub data_port: u16,
    /// The control link's port (default: any free port).
    #[arg(long, default_value_t = 0)]
    pub link_port: u16,
    /// The interface to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// The host other nodes reach this one at (default: the bind address,
    /// or the host name when bound to 0.0.0.0). A node joining a head on
    /// another machine while bound to loopback binds the address its route
    /// to the head leaves from instead.
    #[arg(long, alias = "node-ip-address")]
    pub advertise: Option<String>,
    /// Bytes of objects this node keeps in memory before spilling, with an
    /// optional K, M or G suffix (powers of 1024) (default: 30% of the
    /// memory this process may use, its container's limit included).
    #[arg(long, value_parser = parse_bytes)]
    pub object_store_memory: Option<u64>,
    /// CPUs offered (default: this machine's).
    #[arg(long)]
    pub num_cpus: Option<f64>,
    /// GPUs offered.
    #[arg(long)]
    pub num_gpus: Option<f64>,
    /// Custom resources, `name=amount,...` (e.g. `special=2`).
    #[arg(long, default_value = "")]
    pub resources: String,
    /// The node's name (default: its role).
    #[arg(long)]
    pub name: Option<String>,
    /// A file holding the cluster's cookie (else TROUPE_COOKIE, then the
    /// state directory's cookie file, which a head creates).
    #[arg(long, env = "TROUPE_COOKIE_FILE")]
    pub cookie_file: Option<PathBuf>,
    /// Where cookie and node files live (default $TROUPE_HOME or ~/.troupe).
    #[arg(long, env = "TROUPE_HOME")]
    pub state_dir: Option<PathBuf>,
    /// This node's TLS files (`ca.pem`, `node.pem`, `node.key`, made with
    /// `troupe cert`): TLS with mutual authentication on every connection.
    #[arg(long, env = crate::TLS_DIR_ENV)]
    pub tls_dir: Option<PathBuf>,
    /// Listen beyond loopback without TLS (only on a network you trust).
    #[arg(long)]
    pub insecure: bool,
    /// Stay in the foreground (default: start in the background, print the
    /// address, return once the node is up).
    #[arg(long)]
    pub block: bool,
    /// Serve `GET /healthz` (200 while part of the cluster, else 503) on
    /// this port of the bind address: for Kubernetes probes.
    #[arg(long)]
    pub health_port: Option<u16>,
    /// Serve Prometheus metrics on this port of the bind address (0: any
    /// free port): this node's at `/metrics`, and at `/targets` every
    /// node's endpoint for Prometheus's HTTP service discovery. Needs a
    /// build with the `dashboard` feature, and a token beyond loopback.
    #[arg(long)]
    pub metrics_port: Option<u16>,
    /// The token every scrape must carry (`Authorization: Bearer TOKEN`):
    /// 16 or more letters, digits, `-`, `_` or `.`. Set it through the
    /// environment rather than the command line, which others may read.
    #[arg(long, env = "TROUPE_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub heartbeat_ms: u64,
    /// Silence, in milliseconds, after which the head declares a node dead.
    #[arg(long, default_value_t = 1500)]
    pub dead_after_ms: u64,
    /// Accept another build's nodes as the cluster's build (a head started
    /// from the `troupe` binary, which runs no user code: the first node
    /// to join sets the build).
    #[arg(long, hide = true)]
    pub any_build: bool,
}

/// Where the cluster is and how to prove it: `troupe status`, `stop`,
/// `list`, `summary`, `get`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The head (default: TROUPE_ADDRESS, then the head started on this
    /// machine).
    #[arg(long, env = ADDRESS_ENV)]
    pub address: Option<String>,
    /// A file holding the cluster's cookie.
    #[arg(long, env = "TROUPE_COOKIE_FILE")]
    pub cookie_file: Option<PathBuf>,
    /// Where cookie and node files live.
    #[arg(long, env = "TROUPE_HOME")]
    pub state_dir: Option<PathBuf>,
    /// The TLS files to reach a cluster that uses TLS.
    #[arg(long, env = crate::TLS_DIR_ENV)]
    pub tls_dir: Option<PathBuf>,
    /// A file holding the cluster's read-only token (`troupe token`), in
    /// place of the cookie: `status` works, `stop` is refused.
    #[arg(long, env = "TROUPE_TOKEN_FILE", conflicts_with = "cookie_file")]
    pub token_file: Option<PathBuf>,
}

/// `troupe token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// A file holding the cluster's cookie.
    #[arg(long, env = "TROUPE_COOKIE_FILE")]
    pub cookie_file: Option<PathBuf>,
    /// Where cookie and node files live.
    #[arg(long, env = "TROUPE_HOME")]
    pub state_dir: Option<PathBuf>,
}

/// Runs the `troupe` commands if this process was started as
/// `<program> troupe <command> ...`, then exits; returns otherwise. Call it
/// first in `main` so that the same binary is both the program and its
/// cluster nodes:
///
/// ```no_run
/// troupe_cluster::cli::main_if_requested();
/// // ... the program ...
/// ```
pub fn main_if_requested() {
    let mut args = std::env::args_os();
    let _program = args.next();
    if args.next().as_deref() == Some(OsStr::new("troupe")) {
        let code = run(std::iter::once(OsString::from("troupe")).chain(args), true);
        std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 });
    }
}

/// Runs one `troupe` command line (its first item is the program name).
/// `user_build`: this binary holds the user's functions (its build is the
/// cluster's); the `troupe` binary passes `false`.
pub fn run(args: impl IntoIterator<Item = OsString>, user_build: bool) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // A node's log: warnings and errors by default (refused connections,
    // peers lost; ractor_cluster's errors only, as it warns once per closed
    // connection, which a flood of them would turn into a flood of lines),
    // more with RUST_LOG. What `troupe logs` reads keeps INFO too (each
    // task's and actor's own lines among them), or TROUPE_LOG_CAPTURE's
    // levels. A program that installed its own subscriber keeps it.
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,ractor_cluster=error"));
    let captured = EnvFilter::try_from_env(CAPTURE_ENV)
        .unwrap_or_else(|_| EnvFilter::new("info,ractor_cluster=error"));
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_filter(filter),
        )
        .with(troupe_core::logs::LogCapture::global().with_filter(captured))
        .try_init();
    let tokio = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("troupe: cannot start tokio: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Start(args) if !args.block => start_detached(args),
        Command::Start(args) => tokio.block_on(start::blocking(args, user_build)),
        Command::Status(args) => tokio.block_on(status(args)),
        Command::Stop(args) => tokio.block_on(stop(args)),
        Command::Token(args) => token(args),
        Command::List(args) => tokio.block_on(state::list(args)),
        Command::Summary(args) => tokio.block_on(state::summary(args)),
        Command::Get(args) => tokio.block_on(state::get(args)),
        Command::Timeline(args) => tokio.block_on(state::timeline(args)),
        Command::Logs(args) => tokio.block_on(logs::logs(args)),
        Command::Job(command) => tokio.block_on(job::run(command)),
        Command::Cert(command) => cert(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("troupe: {err}");
            ExitCode::FAILURE
        }
    }
}

fn cert(command: CertCommand) -> Result<(), ClusterError> {
    let default_dir = |state: &Option<PathBuf>| cookie::state_dir(state.as_deref()).join("tls");
    match command {
        CertCommand::Init { dir, state_dir } => {
            let dir = dir.unwrap_or_else(|| default_dir(&state_dir));
            crate::tls::init_ca(&dir)?;
            println!("troupe: a cluster CA in {}", dir.display());
        }
        CertCommand::Issue {
            ca_dir,
            out,
            days,
            state_dir,
        } => {
            let ca_dir = ca_dir.unwrap_or_else(|| default_dir(&state_dir));
            let out = out.unwrap_or_else(|| ca_dir.clone());
            crate::tls::issue(&ca_dir, &out, days)?;
            println!(
                "troupe: a node certificate in {} (start nodes with --tls-dir {})",
                out.display(),
                out.display()
            );
        }
    }
    Ok(())
}

/// Parses `name=amount,...`.
pub fn parse_resources(spec: &str) -> Result<Vec<(String, f64)>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (name, amount) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not `name=amount`"))?;
            let amount: f64 = amount
                .trim()
                .parse()
                .map_err(|_| format!("`{amount}` in `{pair}` is not a number"))?;
            if !amount.is_finite() || amount < 0.0 {
                return Err(format!("`{pair}`: the amount must be a finite number ≥ 0"));
            }
            Ok((name.trim().to_owned(), amount))
        })
        .collect()
}

fn cookie_of(file: &Option<PathBuf>) -> Result<Option<String>, ClusterError> {
    match file {
        None => Ok(None),
        Some(path) => std::fs::read_to_string(path)
            .map(|c| Some(c.trim().to_owned()))
            .map_err(|source| ClusterError::CookieFile {
                path: path.clone(),
                source,
            }),
    }
}

fn options_of(args: &StartArgs, user_build: bool) -> Result<ClusterOptions, ClusterError> {
    let mut options = match (&args.head, &args.address) {
        (true, _) => ClusterOptions::head(),
        (false, Some(address)) => ClusterOptions::worker(address.clone()),
        (false, None) => return Err(ClusterError::NoAddress),
    };
    if let Some(port) = args.port {
        options.port = port;
    }
    options.data_port = args.data_port;
    options.link_port = args.link_port;
    options.bind = args.bind;
    options.advertise = args.advertise.clone();
    options.cookie = cookie_of(&args.cookie_file)?;
    options.state_dir = args.state_dir.clone();
    options.tls_dir = args.tls_dir.clone();
    options.insecure = args.insecure;
    options.detector.heartbeat = Duration::from_millis(args.heartbeat_ms.max(10));
    options.detector.dead_after =
        Duration::from_millis(args.dead_after_ms.max(args.heartbeat_ms * 3));
    options.detector.suspect_after =
        (options.detector.dead_after * 2 / 5).max(options.detector.heartbeat * 2);
    if args.head && (!user_build || args.any_build) {
        options.build_id = None;
    }
    Ok(options)
}

fn resources_of(args: &StartArgs) -> Result<Resources, ClusterError> {
    let cpus = args.num_cpus.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0)
    });
    let mut resources = Resources::cpus(cpus);
    if let Some(gpus) = args.num_gpus {
        resources = resources.with_gpus(gpus);
    }
    for (name, amount) in parse_resources(&args.resources).map_err(ClusterError::Start)? {
        resources = resources.with(name, amount);
    }
    Ok(resources)
}

/// Starts this same program with `--block` in the background, its output
/// in the state directory's `logs/`, and returns once it is up (its node
/// file appeared) or has failed (its log's tail is shown).
fn start_detached(args: StartArgs) -> Result<(), ClusterError> {
    start::check_metrics(&args)?;
    let dir = cookie::state_dir(args.state_dir.as_deref());
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|source| ClusterError::CookieFile {
        path: logs.clone(),
        source,
    })?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let log_path = logs.join(format!("node-{stamp}.log"));
    let log = std::fs::File::create(&log_path).map_err(|source| ClusterError::CookieFile {
        path: log_path.clone(),
        source,
    })?;
    let err_log = log.try_clone().map_err(|source| ClusterError::CookieFile {
        path: log_path.clone(),
        source,
    })?;
    let exe = std::env::current_exe().map_err(|e| ClusterError::Start(e.to_string()))?;
    let mut argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    argv.push("--block".into());
    let mut command = std::process::Command::new(exe);
    command
        .args(argv)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err_log);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0); // outlives this shell's job control
    }
    let mut child = command
        .spawn()
        .map_err(|e| ClusterError::Start(format!("a background node: {e}")))?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(" up at ")) {
            println!("{line} (pid {pid}, log {})", log_path.display());
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(ClusterError::Start(format!(
                "the node exited ({status}): {}",
                tail.join(" | ")
            )));
        }
        if Instant::now() > deadline {
            return Err(ClusterError::Start(format!(
                "the node (pid {pid}) did not come up within 30 s; see {}",
                log_path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn client(args: &ClientArgs) -> Result<(troupe_core::Runtime, ClusterNode), ClusterError> {
    let dir = cookie::state_dir(args.state_dir.as_deref());
    let address = args
        .address
        .clone()
        .or_else(|| cookie::head_address(&dir))
        .ok_or(ClusterError::NoAddress)?;
    let mut options = ClusterOptions::client(address);
    options.cookie = cookie_of(&args.cookie_file)?;
    options.state_dir = args.state_dir.clone();
    options.tls_dir = args.tls_dir.clone();
    options.connect_timeout = Duration::from_secs(5);
    let node = ClusterNode::new(options);
    let config = node.configure(
        Config::default()
            .name("troupe-cli")
            .resources(Resources::default()),
    );
    let rt = troupe_core::init(config)
        .await
        .map_err(|e| ClusterError::Start(e.to_string()))?;
    Ok((rt, node))
}

fn token(args: TokenArgs) -> Result<(), ClusterError> {
    let dir = cookie::state_dir(args.state_dir.as_deref());
    let cookie = cookie::resolve(cookie_of(&args.cookie_file)?, &dir, false)?;
    println!("{}", cookie::read_only_token(cookie.as_bytes()));
    Ok(())
}

/// Asks the head `request` as a read-only client (`--token-file`), without
/// joining.
async fn observe(
    args: &ClientArgs,
    token_file: &Path,
    request: Request,
) -> Result<Reply, ClusterError> {
    let dir = cookie::state_dir(args.state_dir.as_deref());
    let address = args
        .address
        .clone()
        .or_else(|| cookie::head_address(&dir))
        .ok_or(ClusterError::NoAddress)?;
    let token = std::fs::read_to_string(token_file).map_err(|source| ClusterError::CookieFile {
        path: token_file.to_owned(),
        source,
    })?;
    let mut credentials = Credentials::cookie(token.trim());
    if let Some(tls_dir) = &args.tls_dir {
        credentials = credentials.with_tls(Tls::load(tls_dir)?);
    }
    match session::ask(&address, &credentials, request, Duration::from_secs(5)).await {
        Ok(reply) => Ok(reply),
        Err(SessionError::Handshake(HandshakeError::WrongCookie)) => Err(ClusterError::ReadOnly(
            "the token is not this cluster's (print it with `troupe token` where the cookie is)"
                .to_owned(),
        )),
        Err(err) => Err(ClusterError::Unreachable {
            addr: address,
            reason: err.to_string(),
        }),
    }
}

async fn status(args: ClientArgs) -> Result<(), ClusterError> {
    if let Some(token_file) = &args.token_file {
        return match observe(&args, token_file, Request::Status).await? {
            Reply::Status(members) => {
                print!("{}", render_status(&members));
                Ok(())
            }
            Reply::Refused(why) => Err(ClusterError::ReadOnly(why)),
            other => Err(ClusterError::Protocol(format!(
                "unexpected reply {other:?}"
            ))),
        };
    }
    let (rt, node) = client(&args).await?;
    let members = node.status().await;
    let _ = rt.shutdown().await;
    print!("{}", render_status(&members?));
    Ok(())
}

async fn stop(args: ClientArgs) -> Result<(), ClusterError> {
    if let Some(token_file) = &args.token_file {
        return match observe(&args, token_file, Request::StopCluster).await? {
            Reply::Refused(why) => Err(ClusterError::ReadOnly(why)),
            other => Err(ClusterError::Protocol(format!(
                "a read-only stop was answered {other:?}"
            ))),
        };
    }
    let (rt, node) = client(&args).await?;
    let result = node.stop_cluster().await;
    let _ = rt.shutdown().await;
    result?;
    println!("troupe: the cluster is stopping");
    Ok(())
}

fn fmt_resources(r: &Resources) -> String {
    let mut parts = vec![format!("CPU {}", r.num_cpus)];
    if r.num_gpus > 0.0 {
        parts.push(format!("GPU {}", r.num_gpus));
    }
    for (k, v) in &r.custom {
        parts.push(format!("{k} {v}"));
    }
    parts.join(", ")
}

/// A byte count: digits, then an optional `K`, `M` or `G` (powers of
/// 1024; `KiB`, `MiB`, `GiB` and a trailing `B` are read the same).
pub fn parse_bytes(spec: &str) -> Result<u64, String> {
    let spec = spec.trim();
    let digits = spec.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = spec[digits.len()..].to_ascii_uppercase();
    let shift = match unit.trim_end_matches('B').trim_end_matches('I') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        other => return Err(format!("unknown unit {other:?} in {spec:?}: use K, M or G")),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{spec:?} is not a byte count (e.g. 2G, 512M, 1073741824)"))?;
    n.checked_mul(1 << shift)
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("{spec:?} is out of range"))
}

/// `troupe status`'s table.
pub fn render_status(members: &[Member]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let nodes: Vec<&Member> = members
        .iter()
        .filter(|m| m.hello.role != Role::Client)
        .collect();
    let alive = nodes
        .iter()
        .filter(|m| m.state == MemberState::Alive)
        .count();
    let _ = writeln!(out, "{} nodes ({alive} alive)", nodes.len());
    for m in nodes {
        let h = &m.hello;
        let _ = writeln!(
            out,
            "{:<20} {:<7} {:<8} {:<22} pid {:<7} free [{}] of [{}] | tasks {} queued, {} running, {} pending (no node fits) | {} actors | {} objects, {} bytes",
            h.node.to_string(),
            format!("{:?}", h.role),
            format!("{:?}", m.state),
            h.control_addr,
            h.pid,
            fmt_resources(&m.available),
            fmt_resources(&h.resources),
            m.load.tasks_queued,
            m.load.tasks_running,
            m.load.tasks_unplaced,
            m.load.actors,
            m.load.objects,
            m.load.object_bytes,
        );
        if m.load.placement_groups_pending > 0 {
            let _ = writeln!(
                out,
                "{:<20} {} placement group(s) pending (no set of nodes fits them now)",
                "", m.load.placement_groups_pending
            );
        }
    }
    out
}

#[cfg(test)]
mod tests;
