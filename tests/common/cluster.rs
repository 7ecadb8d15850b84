//! The multi-process kit shared by the cluster tests and `cluster_perf`:
//! this test binary re-launched as a node (`node_process`), a local
//! cluster of such processes (killed when it drops), and this process
//! joining it as a driver.
#![allow(dead_code)]

use std::ffi::OsString;
use std::process::Command;

use troupe::cluster::local::{Launcher, LocalCluster, LocalNode};
use troupe::cluster::ClusterOptions;
use troupe::prelude::*;

/// Set on a re-launched test binary: the `troupe start` arguments it runs.
pub const NODE_ARGS: &str = "TROUPE_TEST_NODE_ARGS";

/// The body of each cluster test file's `node_process` test: with
/// [`NODE_ARGS`] set, runs `troupe start ...` and exits with its status;
/// otherwise does nothing.
pub fn run_node_if_asked() {
    let Ok(args) = std::env::var(NODE_ARGS) else {
        return;
    };
    let argv =
        std::iter::once(OsString::from("troupe")).chain(args.split('\u{1f}').map(OsString::from));
    let code = troupe::cluster::cli::run(argv, true);
    std::process::exit(if code == std::process::ExitCode::SUCCESS {
        0
    } else {
        1
    });
}

/// A cluster of this test binary's processes in node mode (their
/// `node_process` test), in a temporary home named after `test`.
pub fn processes(test: &str) -> LocalCluster {
    LocalCluster::new(test, node_launcher(&[])).expect("a temporary directory")
}

/// Starts nodes as this test binary's `node_process`, with `env` set.
pub fn node_launcher(env: &[(&str, &str)]) -> Launcher {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Box::new(move |args: &[String]| {
        let mut command = Command::new(std::env::current_exe().expect("the test binary"));
        command
            .args(["node_process", "--exact", "--nocapture", "--test-threads=1"])
            .env(NODE_ARGS, args.join("\u{1f}"))
            .envs(env.iter().map(|(k, v)| (k, v)));
        command
    })
}

/// This process as a driver (no CPUs of its own) of `head`'s cluster.
pub async fn join_as_driver(p: &LocalCluster, head: &LocalNode) -> Runtime {
    let mut options = ClusterOptions::driver(&head.address);
    options.cookie = Some(p.cookie().to_owned());
    options.state_dir = Some(p.home().clone());
    troupe::init(
        Config::default()
            .resources(Resources::default())
            .cluster_node(options),
    )
    .await
    .expect("the driver joins")
}
