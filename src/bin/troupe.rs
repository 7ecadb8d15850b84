//! The `troupe` command: start a head or a node, list the cluster, stop it.
//!
//! This binary registers no remote functions, so the nodes it starts run
//! no user code: start worker nodes from your own program (call
//! `troupe::node::main_if_requested()` first in `main`, then run
//! `your_program troupe start --address HOST:PORT`). A head started here
//! takes the first joining node's build as the cluster's.

fn main() -> std::process::ExitCode {
    troupe::cluster::cli::run(std::env::args_os(), false)
}
