//! The multi-process kit shared by the cluster tests and `cluster_perf`:
//! this test binary re-launched as a node (`node_process`), a local
//! cluster of such processes (killed when it drops), and this process
//! joining it as a driver.
#![allow(dead_code)]

use troupe::cluster::local::{Launcher, LocalCluster, LocalNode};
use troupe::prelude::*;

/// The body of each cluster test file's `node_process` test.
pub fn run_node_if_asked() {
    troupe::cluster::local::run_node_if_asked();
}

/// A cluster of this test binary's processes in node mode (their
/// `node_process` test), in a temporary home named after `test`.
pub fn processes(test: &str) -> LocalCluster {
    LocalCluster::new(test, node_launcher(&[])).expect("a temporary directory")
}

/// Starts nodes as this test binary's `node_process`, with `env` set.
pub fn node_launcher(env: &[(&str, &str)]) -> Launcher {
    troupe::cluster::local::test_binary("node_process", env)
}

/// This process as a driver (no CPUs of its own) of `head`'s cluster.
pub async fn join_as_driver(p: &LocalCluster, head: &LocalNode) -> Runtime {
    let options = p.driver_options(head);
    troupe::init(
        Config::default()
            .resources(Resources::default())
            .cluster_node(options),
    )
    .await
    .expect("the driver joins")
}
