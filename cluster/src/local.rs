//! A cluster of real processes on this machine, for tests and benchmarks
//! (Ray's `cluster_utils.Cluster`): each node is this same program
//! re-launched in node mode, so it holds the same remote functions.
//! Every process started is killed when the [`LocalCluster`] drops, even
//! when a test panics.
//!
//! Its methods block (they wait for a process to come up or exit): from
//! async code that runs on a Troupe runtime's tokio workers, call them
//! inside `tokio::task::block_in_place`, or the node in this process
//! stops answering its peers while they wait (its links and heartbeats
//! run on those workers).

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use troupe_core::NodeId;

/// How to launch this program as a node running `troupe <args>` (the
/// arguments after `troupe`). For a binary that calls
/// [`main_if_requested`](crate::cli::main_if_requested):
/// `Command::new(current_exe).arg("troupe").args(args)`; a test binary
/// re-runs one test that calls [`crate::cli::run`] (see `tests/cluster.rs`).
pub type Launcher = Box<dyn Fn(&[String]) -> Command + Send + Sync>;

/// A node started by a [`LocalCluster`].
#[derive(Clone, Debug)]
pub struct LocalNode {
    /// Its node id.
    pub node: NodeId,
    /// Its control address (`host:port`).
    pub address: String,
    /// Its process id.
    pub pid: u32,
    index: usize,
}

/// Set (to anything), every child's log lines are also written to this
/// process's stderr, prefixed with the child's index: to follow a test.
pub const ECHO_LOGS_ENV: &str = "TROUPE_TEST_NODE_LOGS";

/// How many of a node's last log lines are kept.
const LOG_LINES_KEPT: usize = 400;

/// Processes of a cluster on this machine; all killed on drop.
pub struct LocalCluster {
    launcher: Launcher,
    home: PathBuf,
    cookie: String,
    children: Vec<(String, Child)>,
    /// The last lines each child wrote to stderr (its log), by index.
    logs: Vec<std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>>,
    /// How long a node may take to come up.
    pub start_timeout: Duration,
}

impl LocalCluster {
    /// A cluster whose nodes `launcher` starts; its cookie and state
    /// directory are its own (a fresh temporary directory named after
    /// `name`).
    pub fn new(name: &str, launcher: Launcher) -> std::io::Result<Self> {
        let home = std::env::temp_dir().join(format!("troupe-local-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home)?;
        let mut cookie = [0u8; 16];
        getrandom::fill(&mut cookie).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(LocalCluster {
            launcher,
            home,
            cookie: cookie.iter().map(|b| format!("{b:02x}")).collect(),
            children: Vec::new(),
            logs: Vec::new(),
            start_timeout: Duration::from_secs(20),
        })
    }

    /// The cluster's cookie (a driver in this process needs it).
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// The cluster's state directory.
    pub fn home(&self) -> &PathBuf {
        &self.home
    }

    /// Options for this process to join the cluster of `head` as a driver:
    /// the cluster's cookie and state directory set (pass them to
    /// `Config::cluster_node`).
    pub fn driver_options(&self, head: &LocalNode) -> crate::ClusterOptions {
        let mut options = crate::ClusterOptions::driver(&head.address);
        options.cookie = Some(self.cookie.clone());
        options.state_dir = Some(self.home.clone());
        options
    }

    /// Joins this process to the cluster of `head` as a driver that offers
    /// no resources (so all work goes to the nodes), and waits until
    /// `members` members (the head and the nodes: drivers not counted) are
    /// alive in its view, for at most `within`.
    ///
    /// ```no_run
    /// # async fn f(cluster: &troupe_cluster::local::LocalCluster, head: &troupe_cluster::local::LocalNode) -> Result<(), String> {
    /// let rt = cluster.join_as_driver(head, 3, std::time::Duration::from_secs(60)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn join_as_driver(
        &self,
        head: &LocalNode,
        members: usize,
        within: Duration,
    ) -> Result<troupe_core::Runtime, String> {
        use crate::ConfigExt as _;
        let config = troupe_core::Config::default()
            .resources(troupe_core::Resources::default())
            .cluster_node(self.driver_options(head));
        let rt = troupe_core::init(config)
            .await
            .map_err(|e| format!("the driver did not join {}: {e}", head.address))?;
        let deadline = Instant::now() + within;
        while crate::ClusterNode::current().is_none_or(|c| c.alive_nodes() != members) {
            if Instant::now() >= deadline {
                let alive = crate::ClusterNode::current().map_or(0, |c| c.alive_nodes());
                return Err(format!(
                    "{members} members were not alive within {within:?} ({alive} are)"
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(rt)
    }

    fn command(&self, args: &[&str], cookie: &str) -> Command {
        self.command_of(&self.launcher, args, cookie)
    }

    fn command_of(&self, launcher: &Launcher, args: &[&str], cookie: &str) -> Command {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut command = launcher(&args);
        command
            .env("TROUPE_HOME", &self.home)
            .env("TROUPE_COOKIE", cookie)
            .env_remove("TROUPE_ADDRESS")
            .env_remove("TROUPE_COOKIE_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        command
    }

    /// Starts `troupe <args>` (a `start ... --block` command line) and
    /// waits until the node is up, or fails with its output.
    pub fn start(&mut self, args: &[&str]) -> Result<LocalNode, String> {
        let cookie = self.cookie.clone();
        self.start_with_cookie(args, &cookie)
    }

    /// [`start`](Self::start) with another cookie (to test refusals).
    pub fn start_with_cookie(&mut self, args: &[&str], cookie: &str) -> Result<LocalNode, String> {
        let command = self.command(args, cookie);
        self.spawn_node(command, args)
    }

    /// [`start`](Self::start) through another launcher than the cluster's:
    /// a head from the `troupe` binary (which runs no user code), say, as a
    /// user following the README starts one.
    pub fn start_with(&mut self, launcher: &Launcher, args: &[&str]) -> Result<LocalNode, String> {
        let command = self.command_of(launcher, args, &self.cookie);
        self.spawn_node(command, args)
    }

    fn spawn_node(&mut self, mut command: Command, args: &[&str]) -> Result<LocalNode, String> {
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start a node: {e}"))?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        // Both pipes are read for the process's whole life (a full pipe
        // would stop it): stdout's lines go to the start below, stderr's
        // last ones are kept for its error.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let last_errors = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::<
            String,
        >::new()));
        let mut stderr_reader = None;
        if let Some(stderr) = child.stderr.take() {
            let kept = last_errors.clone();
            let echo = std::env::var_os(ECHO_LOGS_ENV).is_some();
            let index = self.children.len();
            stderr_reader = Some(std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("[node {index}] {line}");
                    }
                    let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                    if kept.len() == LOG_LINES_KEPT {
                        kept.pop_front();
                    }
                    kept.push_back(line);
                }
            }));
        }
        let errors = || {
            let kept = last_errors.lock().unwrap_or_else(|e| e.into_inner());
            kept.iter().cloned().collect::<Vec<_>>().join("\n")
        };
        let index = self.children.len();
        self.children.push((args.join(" "), child));
        self.logs.push(last_errors.clone());
        let deadline = Instant::now() + self.start_timeout;
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(line) => {
                    if let Some((node, address)) = parse_up_line(&line) {
                        return Ok(LocalNode {
                            node,
                            address,
                            pid,
                            index,
                        });
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let child = &mut self.children[index].1;
                    let status = child.wait().map_err(|e| e.to_string())?;
                    // Its stderr's reader ends with it (the pipe closed).
                    if let Some(reader) = stderr_reader.take() {
                        let _ = reader.join();
                    }
                    return Err(format!("exited {status}: {} {}", seen.join("\n"), errors()));
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() > deadline => {
                    return Err(format!(
                        "not up within {:?}: {} {}",
                        self.start_timeout,
                        seen.join("\n"),
                        errors()
                    ));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Starts a head on a port the OS picks as it binds (`--port 0`: a
    /// port found free first and bound later may be taken in between),
    /// with `extra` flags; its address is the one it says it is up at.
    pub fn head(&mut self, extra: &[&str]) -> Result<LocalNode, String> {
        let mut args = vec!["start", "--head", "--block", "--port", "0"];
        args.extend_from_slice(extra);
        self.start(&args)
    }

    /// Starts a head as [`head`](Self::head) does, through `launcher`
    /// (the `troupe` binary's: [`binary`]), with `extra` flags.
    pub fn head_with(&mut self, launcher: &Launcher, extra: &[&str]) -> Result<LocalNode, String> {
        let mut args = vec!["start", "--head", "--block", "--port", "0"];
        args.extend_from_slice(extra);
        self.start_with(launcher, &args)
    }

    /// Starts a worker joining `head`, with `extra` flags.
    pub fn worker(&mut self, head: &LocalNode, extra: &[&str]) -> Result<LocalNode, String> {
        let mut args = vec!["start", "--block", "--address", &head.address];
        args.extend_from_slice(extra);
        self.start(&args)
    }

    /// The last lines (at most a few hundred) `node` wrote to its log
    /// (stderr), oldest first.
    pub fn log_tail(&self, node: &LocalNode) -> Vec<String> {
        self.logs
            .get(node.index)
            .map(|kept| {
                kept.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// SIGKILLs a node's process.
    pub fn kill(&mut self, node: &LocalNode) {
        if let Some((_, child)) = self.children.get_mut(node.index) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops `node`'s process (SIGSTOP) until [`resume`](Self::resume):
    /// alive but silent, as a machine that swaps or is preempted. Killing
    /// the cluster (its drop) ends it even while stopped.
    pub fn pause(&self, node: &LocalNode) -> std::io::Result<()> {
        signal(node.pid, libc::SIGSTOP)
    }

    /// Lets a [`pause`](Self::pause)d node's process run again (SIGCONT).
    pub fn resume(&self, node: &LocalNode) -> std::io::Result<()> {
        signal(node.pid, libc::SIGCONT)
    }

    /// Runs `troupe <args>` to completion (`status`, `stop`): whether it
    /// succeeded, and its output.
    pub fn run(&self, args: &[&str]) -> std::io::Result<(bool, String)> {
        let output = self.command(args, &self.cookie).output()?;
        let text = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        Ok((output.status.success(), text))
    }

    /// Waits until every process exited by itself; their command lines
    /// and whether each succeeded, or `None` past `within`.
    pub fn wait_all(&mut self, within: Duration) -> Option<Vec<(String, bool)>> {
        let deadline = Instant::now() + within;
        loop {
            let done = self
                .children
                .iter_mut()
                .all(|(_, c)| matches!(c.try_wait(), Ok(Some(_))));
            if done {
                return Some(
                    self.children
                        .iter_mut()
                        .map(|(args, c)| (args.clone(), c.wait().is_ok_and(|s| s.success())))
                        .collect(),
                );
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process ids of the nodes still running.
    pub fn pids(&mut self) -> Vec<u32> {
        self.children
            .iter_mut()
            .filter_map(|(_, c)| matches!(c.try_wait(), Ok(None)).then(|| c.id()))
            .collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// A TCP port free on loopback now (another process may take it before
/// it is bound: prefer port 0 where the port can be read back).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Parses `troupe start`'s line `troupe: <role> <node id> up at <address>`
/// (anywhere in `line`, and what may follow the address, such as its
/// metrics endpoint).
pub fn parse_up_line(line: &str) -> Option<(NodeId, String)> {
    let said = line.split("troupe: ").nth(1)?;
    let (head, address) = said.split_once(" up at ")?;
    let id = head.split_whitespace().nth(1)?;
    let node = u64::from_str_radix(id, 16).ok().map(NodeId)?;
    Some((node, address.split_whitespace().next()?.to_owned()))
}

/// A [`Launcher`] for a program whose command line is `troupe`'s own (the
/// `troupe` binary at `path`): it runs `<path> <args>`.
pub fn binary(path: impl Into<PathBuf>) -> Launcher {
    let path = path.into();
    Box::new(move |args: &[String]| {
        let mut command = Command::new(&path);
        command.args(args.iter().map(OsString::from));
        command
    })
}

/// A [`Launcher`] for a binary that calls
/// [`main_if_requested`](crate::cli::main_if_requested) first: it runs
/// `<this program> troupe <args>`.
pub fn this_program() -> Launcher {
    Box::new(|args: &[String]| {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("troupe"));
        let mut command = Command::new(exe);
        command.arg("troupe").args(args.iter().map(OsString::from));
        command
    })
}

/// Set on a test binary re-launched as a node by [`test_binary`]: the
/// `troupe` arguments it runs, separated by U+001F.
pub const TEST_NODE_ARGS_ENV: &str = "TROUPE_TEST_NODE_ARGS";

/// A [`Launcher`] for a test binary (tests in `tests/` cannot add a
/// `troupe` subcommand to `main`): it re-runs this binary's test `test`
/// alone, with [`TEST_NODE_ARGS_ENV`] and `env` set. That test's body is
/// [`run_node_if_asked`]: in node mode it becomes the node.
///
/// ```no_run
/// use troupe_cluster::local::{run_node_if_asked, test_binary, LocalCluster};
///
/// #[test]
/// fn node_process() {
///     run_node_if_asked();
/// }
///
/// #[test]
/// fn two_nodes() {
///     let mut cluster = LocalCluster::new("two-nodes", test_binary("node_process", &[]))
///         .expect("a temporary directory");
///     let head = cluster.head(&[]).expect("the head starts");
///     cluster.worker(&head, &["--num-cpus", "1"]).expect("a worker starts");
///     // Join it as a driver with `cluster.driver_options(&head)`.
/// }
/// ```
pub fn test_binary(test: &'static str, env: &[(&str, &str)]) -> Launcher {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Box::new(move |args: &[String]| {
        // A test binary that cannot find itself cannot start nodes; the
        // spawn then fails with this path in its error.
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("current_exe-unknown"));
        let mut command = Command::new(exe);
        command
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(TEST_NODE_ARGS_ENV, args.join("\u{1f}"))
            .envs(env.iter().map(|(k, v)| (k, v)));
        command
    })
}

/// The body of the test that [`test_binary`] re-runs: with
/// [`TEST_NODE_ARGS_ENV`] set, runs `troupe <args>` (with this program's
/// remote functions and actor types) and exits with its status; without
/// it, returns at once, so that the test passes in a normal run.
pub fn run_node_if_asked() {
    let Ok(args) = std::env::var(TEST_NODE_ARGS_ENV) else {
        return;
    };
    let argv =
        std::iter::once(OsString::from("troupe")).chain(args.split('\u{1f}').map(OsString::from));
    let code = crate::cli::run(argv, true);
    std::process::exit(if code == std::process::ExitCode::SUCCESS {
        0
    } else {
        1
    });
}

fn signal(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: kill(2) takes plain integers and touches no memory of this
    // process.
    #[allow(unsafe_code)]
    let sent = unsafe { libc::kill(pid, signal) };
    if sent == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_up_line_is_parsed_wherever_it_is() {
        let (node, address) =
            parse_up_line("test x ... troupe: Worker 00000000000000ff up at 127.0.0.1:99").unwrap();
        assert_eq!((node, address.as_str()), (NodeId(255), "127.0.0.1:99"));
        assert!(parse_up_line("troupe: nothing").is_none());
    }
}
