//! PPO with its rollout workers on the nodes of a cluster: the learner on
//! this program (the driver), one worker per node, spread by a placement
//! group. Every node runs this same program, so every node knows the
//! environment registered below by its name.
//!
//! ```text
//! cargo build --release -p troupe-rl --features cluster --example ppo_cluster
//! B=target/release/examples/ppo_cluster
//! $B troupe start --head --port 6380 --num-cpus 0 &          # the head: no workers there
//! $B troupe start --address 127.0.0.1:6380 --num-cpus 1 &    # two nodes, a worker each
//! $B troupe start --address 127.0.0.1:6380 --num-cpus 1 &
//! TROUPE_ADDRESS=127.0.0.1:6380 $B                            # the driver: trains to 475
//! TROUPE_ADDRESS=127.0.0.1:6380 $B --async                    # sampling during the updates
//! $B troupe stop --address 127.0.0.1:6380
//! ```
//!
//! On one machine the nodes share the cookie the head writes into the
//! state directory; across machines, set `TROUPE_COOKIE` on each (see the
//! clusters guide).

use troupe::prelude::*;
use troupe_rl::{CartPole, EnvMaker, PpoConfig, Progress, Stop, Trainer};

// A CartPole with longer episodes, made by name on whichever node a
// worker runs.
troupe_rl::register_env!("LongCartPole-v0", |_index| {
    Ok(CartPole::new().max_episode_steps(1000))
});

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `ppo_cluster troupe start ...` runs a node and exits here.
    troupe::node::main_if_requested();
    let rt = Runtime::start(Config::connect_from_env()?)?;
    rt.block_on(async {
        // `--long`: the registered LongCartPole-v0; `--async`: sample the
        // next batch during each update (one update stale); `--seed=N`,
        // `--budget=STEPS` (default 7 and 300,000).
        let flag = |name: &str| std::env::args().any(|a| a == name);
        let number = |name: &str, default: u64| -> Result<u64, String> {
            let prefix = format!("--{name}=");
            match std::env::args().find_map(|a| a.strip_prefix(&prefix).map(str::to_owned)) {
                Some(n) => n.parse().map_err(|e| format!("{prefix}{n}: {e}")),
                None => Ok(default),
            }
        };
        let (seed, budget) = (number("seed", 7)?, number("budget", 300_000)?);
        let env = EnvMaker::by_id(if flag("--long") {
            "LongCartPole-v0"
        } else {
            "CartPole-v1"
        })?;
        let config = PpoConfig::default()
            .seed(seed)
            .workers_on_cluster(true)
            .async_sampling(flag("--async"));
        let mut trainer = Trainer::new(&rt, env, config).await?;
        for (i, worker) in trainer.workers().iter().enumerate() {
            println!("worker {i} runs on node {:?}", worker.node().await?);
        }
        let summary = trainer
            .train_until(
                &Stop::at_return(475.0).or_env_steps(budget),
                &mut Progress::new(budget),
            )
            .await?;
        println!(
            "mean return {:.1} after {} env steps, {:.1} s ({} worker(s) replaced)",
            summary.last.episode_return_mean,
            summary.last.env_steps,
            summary.seconds,
            summary.last.worker_restarts
        );
        trainer.shutdown().await;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    rt.block_on(rt.shutdown())?;
    Ok(())
}
