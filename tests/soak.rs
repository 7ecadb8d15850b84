//! A long-running service submits tasks in waves: after each wave, the
//! object store, the scheduler and the tree are back to their baseline.
//! (The full million is `soak_1m_tasks_rss_growth_mib` in the perf bench.)

use std::time::Duration;

use troupe::prelude::*;

#[troupe::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[troupe::remote]
async fn plus_one(x: u64) -> u64 {
    x + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_of_tasks_leave_nothing_behind() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let actors = rt.live_actors();
    for wave in 0..5u64 {
        let refs: Vec<_> = (0..10_000u64)
            .map(|i| {
                let squared = square::remote(&rt, i);
                plus_one::remote(&rt, squared)
            })
            .collect();
        let values = rt
            .get_many(&refs, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        assert!(values
            .iter()
            .enumerate()
            .all(|(i, v)| **v == (i as u64).pow(2) + 1));
        drop((values, refs));
        assert_eq!(
            rt.objects().len(),
            0,
            "wave {wave}: objects left in the store"
        );
        assert_eq!(rt.objects().in_memory_bytes(), 0);
        // A result is stored just before its attempt reports its exit.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while rt.task_counts() != (0, 0, 0) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            rt.task_counts(),
            (0, 0, 0),
            "wave {wave}: tasks left in the scheduler"
        );
        assert_eq!(rt.live_actors(), actors);
    }
    rt.shutdown().await.unwrap();
}
