//! Writes the format-1 checkpoint fixture (run once, with the format-1 code).

use std::time::Duration;

use troupe::prelude::*;
use troupe_rl::{EnvMaker, PpoConfig, Trainer};
use troupe_test_kit::within_for;

const TRAINING: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes libs/rl/fixtures/checkpoint_v1.*"]
async fn write_the_format_1_fixture() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let rt = troupe::init(Config::default()).await.unwrap();
    let config = PpoConfig::default()
        .num_workers(2)
        .envs_per_worker(2)
        .fragment_len(16)
        .num_cpus_per_worker(0.25)
        .hidden(vec![8])
        .seed(11);
    let mut trainer = Trainer::new(&rt, EnvMaker::cart_pole(), config)
        .await
        .unwrap();
    for _ in 0..2 {
        within_for(TRAINING, "training", trainer.train())
            .await
            .unwrap();
    }
    trainer.save(dir.join("checkpoint_v1.ckpt")).await.unwrap();
    let mut policy = trainer.policy().await.unwrap();
    let obs: Vec<f32> = (0..8 * 4).map(|i| (i as f32 * 0.37).sin() * 0.2).collect();
    let mut values = Vec::new();
    policy.values(&obs, 8, &mut values);
    let c = trainer.counters();
    let text = serde_json::json!({
        "iteration": c.iteration,
        "env_steps": c.env_steps,
        "episodes": c.episodes,
        "observations": obs,
        "values": values,
    });
    std::fs::write(dir.join("checkpoint_v1.json"), text.to_string()).unwrap();
    trainer.shutdown().await;
    rt.shutdown().await.unwrap();
}
