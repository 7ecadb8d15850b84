//! Troupe's headline numbers, one `metric value unit` line each on stdout.
//!
//! ```text
//! cargo bench -p troupe --bench perf            # everything
//! cargo bench -p troupe --bench perf -- actor   # metrics whose name contains "actor"
//! cargo bench -p troupe --bench perf --features dashboard -- tasks_async   # with the dashboard's cost
//! ```
//!
//! Rates use the method of Ray's `ray_perf.py` `timeit`: warm up for 1 s,
//! then 4 runs of 2 s each; the mean is printed, the standard deviation goes
//! to stderr. `TROUPE_PERF_QUICK=1` shortens the runs (for smoke tests);
//! `TROUPE_SOAK_TASKS=N` changes the soak's task count (growth that does not
//! scale with N is the allocator keeping pages, not a leak). The soak
//! reports the RSS its first 400,000 tasks add (the working set of 10,000
//! tasks in flight) apart from the growth over the next million.
//! The loops run in a tokio task on the runtime, as a service's code would.

use std::future::Future;
use std::time::{Duration, Instant};

use troupe::prelude::*;

mod harness;
use harness::{timeit, Timing};

/// A small HTTP client (GET, server-sent events) for the dashboard's bench.
#[cfg(feature = "dashboard")]
#[path = "../tests/common/http.rs"]
#[allow(dead_code)] // shared with the tests, which use all of it
mod http;

/// The task used by every task loop: does nothing.
#[troupe::remote]
fn noop_task() {}

/// Takes the previous link of a chain.
#[troupe::remote]
fn link(previous: u64) -> u64 {
    previous + 1
}

/// The actor used by every actor loop: does nothing but answer.
struct Noop;

#[troupe::actor]
impl Noop {
    pub fn noop(&self) -> u64 {
        1
    }
}

/// Runs a measurement in a task on the runtime, as a service's code would
/// run (not on the calling thread, which would add a wake-up per step).
fn on_runtime(
    rt: &Runtime,
    measurement: std::pin::Pin<Box<dyn Future<Output = (f64, f64)> + Send>>,
) -> (f64, f64) {
    rt.block_on(async { tokio::spawn(measurement).await.expect("bench task") })
}

fn report(metric: &str, value: f64, unit: &str, std: Option<f64>) {
    println!("{metric} {value:.3} {unit}");
    if let Some(std) = std {
        eprintln!("  {metric}: {value:.1} +- {std:.1} {unit}");
    }
}

fn rss_mib() -> Option<f64> {
    harness::rss_bytes().map(|bytes| bytes / (1024.0 * 1024.0))
}

/// In a fresh child process: start a runtime, let it idle, print its RSS.
fn idle_child() {
    let rt = Runtime::start(Config::default()).expect("runtime starts");
    std::thread::sleep(Duration::from_millis(500));
    match rss_mib() {
        Some(mib) => println!("{mib:.1}"),
        None => eprintln!("cannot read /proc/self/status"),
    }
    drop(rt);
}

fn main() {
    if std::env::var_os("TROUPE_PERF_IDLE_CHILD").is_some() {
        idle_child();
        return;
    }
    // cargo bench passes `--bench`; anything else not starting with `-` filters.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted =
        |metric: &str| filters.is_empty() || filters.iter().any(|f| metric.contains(f.as_str()));
    let timing = Timing::from_env();

    if wanted("runtime_start_ms") {
        // Median of 21 boots of the whole supervision tree, each shut down.
        let tokio = tokio::runtime::Runtime::new().expect("tokio");
        let mut times: Vec<f64> = (0..21)
            .map(|_| {
                tokio.block_on(async {
                    let began = Instant::now();
                    let rt = troupe::init(Config::default())
                        .await
                        .expect("runtime starts");
                    let took = began.elapsed();
                    rt.shutdown().await.expect("shutdown");
                    took.as_secs_f64() * 1e3
                })
            })
            .collect();
        times.sort_by(f64::total_cmp);
        report("runtime_start_ms", times[times.len() / 2], "ms", None);
    }

    if wanted("idle_rss_mib") {
        let exe = std::env::current_exe().expect("own path");
        let out = std::process::Command::new(exe)
            .env("TROUPE_PERF_IDLE_CHILD", "1")
            .output()
            .expect("child runs");
        let text = String::from_utf8_lossy(&out.stdout);
        match text.trim().parse::<f64>() {
            Ok(mib) => report("idle_rss_mib", mib, "MiB", None),
            Err(_) => eprintln!("idle_rss_mib: child printed {text:?}"),
        }
    }

    let rt = Runtime::start(Config::default()).expect("runtime starts");
    if wanted("actor_calls_sync_per_s") {
        let actor = rt
            .block_on(rt.spawn_actor(ActorOptions::new(), || Noop))
            .expect("spawn");
        let timing = Timing {
            ..Timing::from_env()
        };
        let (mean, std) = on_runtime(
            &rt,
            Box::pin(async move {
                timeit(&timing, 1, || {
                    let actor = actor.clone();
                    async move {
                        actor.noop().await.expect("reply");
                    }
                })
                .await
            }),
        );
        report("actor_calls_sync_per_s", mean, "calls/s", Some(std));
    }

    if wanted("actor_calls_async_per_s") {
        let actor = rt
            .block_on(rt.spawn_actor(ActorOptions::new(), || Noop))
            .expect("spawn");
        let timing = Timing::from_env();
        let (mean, std) = on_runtime(
            &rt,
            Box::pin(async move {
                timeit(&timing, 1000, || {
                    let pending: Vec<_> = (0..1000).map(|_| actor.noop()).collect();
                    async move {
                        for p in pending {
                            p.await.expect("reply");
                        }
                    }
                })
                .await
            }),
        );
        report("actor_calls_async_per_s", mean, "calls/s", Some(std));
    }

    if wanted("actor_creation_per_s") {
        let rt2 = rt.clone();
        let timing = Timing::from_env();
        let (mean, std) = on_runtime(
            &rt,
            Box::pin(async move {
                timeit(&timing, 1000, || {
                    let rt = rt2.clone();
                    async move {
                        let mut actors = Vec::with_capacity(1000);
                        for _ in 0..1000 {
                            let a = rt
                                .spawn_actor(ActorOptions::new(), || Noop)
                                .await
                                .expect("spawn");
                            a.noop().await.expect("reply");
                            actors.push(a);
                        }
                        // Dropping the handles stops the actors (as Ray collects
                        // them); that work overlaps the next step, as in Ray.
                        drop(actors);
                    }
                })
                .await
            }),
        );
        report("actor_creation_per_s", mean, "actors/s", Some(std));
    }

    tasks(&rt, &wanted);
    soak(&rt, &wanted);
    objects(&rt, &wanted);
    #[cfg(feature = "gpu")]
    gpu::run(&rt, &wanted);
    // Last: it installs the process's Prometheus recorder.
    #[cfg(feature = "dashboard")]
    dashboard_overhead(&rt, &wanted);

    let _ = rt.block_on(rt.shutdown());
    let _ = timing;
}

/// Task loops (Ray's `ray_perf.py` single-client task benchmarks).
fn tasks(runtime: &Runtime, wanted: &dyn Fn(&str) -> bool) {
    let rt = runtime;
    if wanted("tasks_sync_per_s") {
        let rt = rt.clone();
        let timing = Timing::from_env();
        let (mean, std) = on_runtime(
            runtime,
            Box::pin(async move {
                timeit(&timing, 1, || {
                    let rt = rt.clone();
                    async move {
                        rt.get(&noop_task::remote(&rt)).await.expect("task");
                    }
                })
                .await
            }),
        );
        report("tasks_sync_per_s", mean, "tasks/s", Some(std));
    }
    if wanted("tasks_async_per_s") {
        let rt = rt.clone();
        let timing = Timing::from_env();
        let (mean, std) = on_runtime(
            runtime,
            Box::pin(async move { timeit(&timing, 1000, || tasks_async_step(rt.clone())).await }),
        );
        report("tasks_async_per_s", mean, "tasks/s", Some(std));
    }
    if wanted("task_chain_per_s") {
        let rt = rt.clone();
        let timing = Timing::from_env();
        let (mean, std) = on_runtime(
            runtime,
            Box::pin(async move {
                timeit(&timing, 1000, || {
                    let rt = rt.clone();
                    async move {
                        let mut r = link::remote(&rt, 0);
                        for _ in 1..1000 {
                            r = link::remote(&rt, r);
                        }
                        assert_eq!(*rt.get(&r).await.expect("chain"), 1000);
                    }
                })
                .await
            }),
        );
        report("task_chain_per_s", mean, "tasks/s", Some(std));
    }
}

/// One step of `tasks_async_per_s`: 1,000 tasks submitted, then gathered.
async fn tasks_async_step(rt: Runtime) {
    let refs: Vec<_> = (0..1000).map(|_| noop_task::remote(&rt)).collect();
    rt.get_many(&refs, None).await.expect("tasks");
}

/// `tasks_async_per_s`'s loop on a runtime that records metrics into a
/// Prometheus recorder and serves a dashboard with a page open (a client
/// reading every update), against the same loop on a plain runtime, in
/// alternating runs so that the shared machine's drift hits both alike.
#[cfg(feature = "dashboard")]
fn dashboard_overhead(plain: &Runtime, wanted: &dyn Fn(&str) -> bool) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use troupe::dashboard::{self, ConfigExt};

    const METRIC: &str = "tasks_async_per_s_with_metrics_and_dashboard";
    if !wanted(METRIC) {
        return;
    }
    let observed = Runtime::start(
        Config::default()
            .dashboard("127.0.0.1:0")
            .metrics_addr("127.0.0.1:0"),
    )
    .expect("a runtime with the dashboard starts");
    let page = http::authority(&dashboard::url(&observed).expect("the dashboard runs"));
    let updates = Arc::new(AtomicU64::new(0));
    let reader = {
        let updates = updates.clone();
        let page = page.clone();
        // Spawned on the observed runtime's own workers, like a page's
        // connection handler would be.
        let workers = observed.block_on(async { tokio::runtime::Handle::current() });
        workers.spawn(async move {
            let mut events = http::Events::open(&page, "/api/events")
                .await
                .expect("the event stream opens");
            while let Ok(Some(_)) = events.next().await {
                updates.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Short runs in alternating pairs, so that the shared machine's drift
    // hits both alike; the ratio is the median of the pairs'.
    let (pairs, length, warmup) = if harness::quick() {
        (2, Duration::from_millis(200), Duration::from_millis(100))
    } else {
        (12, Duration::from_secs(1), Duration::from_secs(1))
    };
    let run = |rt: &Runtime, length: Duration| -> f64 {
        let rt2 = rt.clone();
        on_runtime(
            rt,
            Box::pin(async move {
                let began = Instant::now();
                let mut steps = 0u64;
                while began.elapsed() < length {
                    tasks_async_step(rt2.clone()).await;
                    steps += 1;
                }
                ((steps * 1000) as f64 / began.elapsed().as_secs_f64(), 0.0)
            }),
        )
        .0
    };
    run(plain, warmup);
    run(&observed, warmup);
    let (mut bare, mut seen, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..pairs {
        // Which side goes first alternates too.
        let (a, b) = if pair % 2 == 0 {
            let a = run(plain, length);
            (a, run(&observed, length))
        } else {
            let b = run(&observed, length);
            (run(plain, length), b)
        };
        bare.push(a);
        seen.push(b);
        ratios.push(b / a);
    }
    let stats = |rates: &[f64]| {
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        let var = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64;
        (mean, var.sqrt())
    };
    let (bare_mean, _) = stats(&bare);
    let (mean, std) = stats(&seen);
    ratios.sort_by(f64::total_cmp);
    let mid = ratios.len() / 2;
    let median = if ratios.len() % 2 == 0 {
        (ratios[mid - 1] + ratios[mid]) / 2.0
    } else {
        ratios[mid]
    };
    report(METRIC, mean, "tasks/s", Some(std));
    // The recorder really recorded, and the page really read updates.
    let metrics = http::authority(&dashboard::metrics_url(&observed).expect("metrics run"));
    let scraped = observed
        .block_on(http::get(&metrics, "/metrics"))
        .expect("a scrape");
    let finished = scraped
        .body
        .lines()
        .find(|l| l.starts_with("troupe_tasks_finished_total{") && l.contains("noop_task"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(finished > 0.0, "the Prometheus recorder saw no task");
    let read = updates.load(Ordering::Relaxed);
    assert!(read > 0, "the page read no update");
    eprintln!(
        "  {METRIC}: {:.1}% of the same loop on a plain runtime (median of {pairs} alternating pairs; {:.1}% to {:.1}%; plain mean {bare_mean:.0} tasks/s); {read} updates read, {finished:.0} tasks in Prometheus",
        100.0 * median,
        100.0 * ratios[0],
        100.0 * ratios[ratios.len() - 1],
    );
    reader.abort();
    let _ = observed.block_on(observed.shutdown());
}

/// A long-running service: 1,000,000 tasks in waves of 10,000, each wave
/// awaited and dropped; how much the process grew (RSS after minus before).
/// Waves of 10,000 tasks run before the soak's growth is measured: RSS
/// reaches its plateau within 40 (measured over 5M tasks: flat within
/// ±1 MiB from wave 40 to 500).
const SOAK_WARMUP_WAVES: u64 = 40;

fn soak(rt: &Runtime, wanted: &dyn Fn(&str) -> bool) {
    if !wanted("soak_1m_tasks_rss_growth_mib") {
        return;
    }
    let warmup_waves = if harness::quick() {
        5
    } else {
        SOAK_WARMUP_WAVES
    };
    let total: u64 = if let Some(n) = std::env::var("TROUPE_SOAK_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        n
    } else if harness::quick() {
        50_000
    } else {
        1_000_000
    };
    let rt = rt.clone();
    let (warmup, growth) = rt.clone().block_on(async move {
        tokio::spawn(async move {
            let wave = |rt: Runtime| async move {
                let refs: Vec<_> = (0..10_000u64).map(|i| link::remote(&rt, i)).collect();
                rt.get_many(&refs, None).await.expect("wave");
            };
            // Warm-up waves first: each wave holds 10,000 tasks and their
            // results at once (~10 MB of heap, by valgrind's massif), and
            // glibc's malloc keeps a high-water mark per arena (one per
            // thread that allocates), which creeps up over the first waves
            // as each thread's share varies. That working set is reported
            // apart; what follows it must stay flat, or tasks leak.
            wave(rt.clone()).await;
            let start = rss_mib().unwrap_or(0.0);
            for _ in 1..warmup_waves {
                wave(rt.clone()).await;
            }
            let before = rss_mib().unwrap_or(0.0);
            for _ in 0..total / 10_000 {
                wave(rt.clone()).await;
            }
            assert_eq!(rt.objects().len(), 0, "objects left after the soak");
            (before - start, rss_mib().unwrap_or(0.0) - before)
        })
        .await
        .expect("soak")
    });
    report("soak_warmup_rss_growth_mib", warmup, "MiB", None);
    report("soak_1m_tasks_rss_growth_mib", growth, "MiB", None);
}

const LARGE: usize = 100 * 1000 * 1000; // 100 MB, as Ray's put benchmark

/// Object store loops (Ray's `ray_perf.py` put/get/wait).
fn objects(runtime: &Runtime, wanted: &dyn Fn(&str) -> bool) {
    let rt = runtime;
    if wanted("put_small_per_s") {
        let rt = rt.clone();
        let timing = Timing::from_env();
        let (mean, std) = on_runtime(
            runtime,
            Box::pin(async move {
                timeit(&timing, 1000, || {
                    let rt = rt.clone();
                    async move {
                        // Refs are dropped at once, so the store stays small.
                        for i in 0..1000u64 {
                            drop(rt.put(i).await.expect("put"));
                        }
                    }
                })
                .await
            }),
        );
        report("put_small_per_s", mean, "puts/s", Some(std));
    }

    if wanted("get_small_per_s") {
        let rt = rt.clone();
        let timing = Timing::from_env();
        let (mean, std) = on_runtime(
            runtime,
            Box::pin(async move {
                let r = rt.put(7u64).await.expect("put");
                timeit(&timing, 1000, || {
                    let (rt, r) = (rt.clone(), r.clone());
                    async move {
                        for _ in 0..1000 {
                            std::hint::black_box(rt.get(&r).await.expect("get"));
                        }
                    }
                })
                .await
            }),
        );
        report("get_small_per_s", mean, "gets/s", Some(std));
    }

    let large = wanted("memcpy_gigabytes_per_s")
        || wanted("put_gigabytes_per_s")
        || wanted("get_gigabytes_per_s");
    if large {
        // The physical reference, measured in the same run: copying 100 MB.
        let source = vec![1u8; LARGE];
        let mut target = vec![0u8; LARGE];
        let (mean, std) = rt.block_on(timeit(&Timing::from_env(), 1, || {
            target.copy_from_slice(&source);
            std::hint::black_box(&target);
            async {}
        }));
        let gbps = |per_s: f64| per_s * LARGE as f64 / 1e9;
        report(
            "memcpy_gigabytes_per_s",
            gbps(mean),
            "GB/s",
            Some(gbps(std)),
        );

        // A put gives the store its own copy (the caller keeps its array),
        // as Ray's put copies into its shared memory: one copy into a
        // buffer the store owns and reuses, no encoding.
        let source = std::sync::Arc::new(source);
        let (rt2, src) = (rt.clone(), source.clone());
        let (mean, std) = on_runtime(
            runtime,
            Box::pin(async move {
                timeit(&Timing::from_env(), 1, || {
                    let (rt, src) = (rt2.clone(), src.clone());
                    async move {
                        drop(rt.put_bytes(&src).await.expect("put"));
                    }
                })
                .await
            }),
        );
        report("put_gigabytes_per_s", gbps(mean), "GB/s", Some(gbps(std)));

        // A get shares the stored value: O(1) whatever its size.
        let (rt2, src) = (rt.clone(), source.clone());
        let (mean, std) = on_runtime(
            runtime,
            Box::pin(async move {
                let r = rt2.put_bytes(&src).await.expect("put");
                timeit(&Timing::from_env(), 1, || {
                    let (rt, r) = (rt2.clone(), r.clone());
                    async move {
                        std::hint::black_box(rt.get(&r).await.expect("get"));
                    }
                })
                .await
            }),
        );
        report("get_gigabytes_per_s", gbps(mean), "GB/s", Some(gbps(std)));
    }

    if wanted("spill_gigabytes_per_s") || wanted("disk_write_gigabytes_per_s") {
        spill(runtime);
    }

    if wanted("get_object_containing_10k_refs_per_s") {
        let rt = rt.clone();
        let timing = Timing::from_env();
        let (mean, std) = on_runtime(
            runtime,
            Box::pin(async move {
                let refs: Vec<_> = (0..10_000u64)
                    .map(|i| rt.try_put(i).expect("put"))
                    .collect();
                let holder = rt.put(refs).await.expect("put");
                timeit(&timing, 1, || {
                    let (rt, holder) = (rt.clone(), holder.clone());
                    async move {
                        let refs = rt.get(&holder).await.expect("get");
                        assert_eq!(refs.len(), 10_000);
                    }
                })
                .await
            }),
        );
        report(
            "get_object_containing_10k_refs_per_s",
            mean,
            "gets/s",
            Some(std),
        );
    }

    if wanted("wait_1k_refs_ms") {
        let rt = rt.clone();
        let timing = Timing::from_env();
        let (mean, std) = on_runtime(
            runtime,
            Box::pin(async move {
                let refs: Vec<_> = (0..1000u64).map(|i| rt.try_put(i).expect("put")).collect();
                timeit(&timing, 1, || {
                    let (rt, refs) = (rt.clone(), refs.clone());
                    async move {
                        let (ready, _) = rt.wait(refs, 1000, None).await;
                        assert_eq!(ready.len(), 1000);
                    }
                })
                .await
            }),
        );
        // timeit gives waits per second; the metric is milliseconds per wait.
        report(
            "wait_1k_refs_ms",
            1e3 / mean,
            "ms",
            Some(1e3 * std / (mean * mean)),
        );
    }
}

/// Median seconds of `runs` calls of `f`.
fn median_secs(runs: usize, mut f: impl FnMut() -> f64) -> f64 {
    let mut times: Vec<f64> = (0..runs).map(|_| f()).collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Spilling 100 MB byte objects, beside a plain sequential write of the
/// same bytes to the same directory (the disk's reference, same run).
fn spill(runtime: &Runtime) {
    let runs = if harness::quick() { 3 } else { 9 };
    let dir = std::env::temp_dir().join(format!("troupe-perf-spill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("spill dir");
    let source = vec![7u8; LARGE];
    let write = median_secs(runs, || {
        let path = dir.join("plain.bin");
        let began = Instant::now();
        std::fs::write(&path, &source).expect("write");
        let took = began.elapsed().as_secs_f64();
        std::fs::remove_file(&path).expect("remove");
        took
    });
    report(
        "disk_write_gigabytes_per_s",
        LARGE as f64 / write / 1e9,
        "GB/s",
        None,
    );
    // A store of its own, so that spilling is the only thing timed: one
    // 100 MB object over a threshold of 10 MB is spilled whole.
    let store = troupe::ObjectStore::new(StoreConfig {
        memory_budget: 4 * LARGE as u64,
        spill_threshold: 0.025,
        spill_dir: dir.clone(),
        buffer_pool: 4 * LARGE as u64,
    });
    let spill = runtime.block_on(async {
        let mut times = Vec::new();
        for _ in 0..runs {
            let r = store.put_bytes(&source).await.expect("put");
            let began = Instant::now();
            let report = store.spill().expect("spill");
            times.push(began.elapsed().as_secs_f64());
            assert_eq!(report.objects, 1);
            drop(r); // deletes the file
        }
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    });
    report(
        "spill_gigabytes_per_s",
        LARGE as f64 / spill / 1e9,
        "GB/s",
        None,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tensors and weight broadcast (`--features gpu`).
#[cfg(feature = "gpu")]
mod gpu {
    use super::*;
    use troupe::gpu::tch::nn;
    use troupe::gpu::tch::{Device, Kind, Tensor};
    use troupe::gpu::{TensorObject, Weights};

    /// A CPU replica that loads broadcast weights.
    pub struct Replica {
        rt: Runtime,
        vs: nn::VarStore,
        _net: nn::Linear,
    }

    #[troupe::actor]
    impl Replica {
        pub async fn load(&mut self, weights: ObjectRef<Weights>) -> bool {
            let weights = self.rt.get(&weights).await.expect("weights");
            weights.load_into(&mut self.vs).expect("load");
            true
        }
    }

    fn linear(vs: &nn::VarStore) -> nn::Linear {
        // 1000 x 1000 + 1000: about a million parameters.
        nn::linear(vs.root() / "fc", 1000, 1000, Default::default())
    }

    pub fn run(rt: &Runtime, wanted: &dyn Fn(&str) -> bool) {
        if wanted("tensor_put_gigabytes_per_s") || wanted("tensor_get_gigabytes_per_s") {
            // 100 MB of float32, as the byte-array put.
            let numel = (LARGE / 4) as i64;
            let source = Tensor::ones([numel], (Kind::Float, Device::Cpu));
            let gbps = |per_s: f64| per_s * LARGE as f64 / 1e9;
            let mut target = vec![0u8; LARGE];
            let bytes = vec![1u8; LARGE];
            let (memcpy, _) = rt.block_on(timeit(&Timing::from_env(), 1, || {
                target.copy_from_slice(&bytes);
                std::hint::black_box(&target);
                async {}
            }));
            // The caller keeps its tensor, so the store gets a copy (as a
            // Ray put): one allocation and one copy, no encoding.
            let (mean, std) = rt.block_on(timeit(&Timing::from_env(), 1, || {
                let mut copy = source.empty_like();
                copy.copy_(&source);
                drop(rt.try_put(TensorObject::from(copy)).expect("put"));
                async {}
            }));
            report(
                "tensor_put_gigabytes_per_s",
                gbps(mean),
                "GB/s",
                Some(gbps(std)),
            );
            report("tensor_put_vs_memcpy", mean / memcpy, "x", None);
            let r = rt
                .try_put(TensorObject::from(source.shallow_clone()))
                .expect("put");
            let (mean, std) = rt.block_on(timeit(&Timing::from_env(), 1, || {
                let r = r.clone();
                async move {
                    std::hint::black_box(rt.get(&r).await.expect("get"));
                }
            }));
            report(
                "tensor_get_gigabytes_per_s",
                gbps(mean),
                "GB/s",
                Some(gbps(std)),
            );
        }
        if wanted("weight_broadcast_1m_params_4_actors_ms") {
            let learner = nn::VarStore::new(Device::Cpu);
            let _net = linear(&learner);
            let replicas: Vec<_> = (0..4)
                .map(|_| {
                    let rt2 = rt.clone();
                    rt.block_on(rt.spawn_actor(ActorOptions::new(), move || {
                        let vs = nn::VarStore::new(Device::Cpu);
                        let _net = linear(&vs);
                        Replica {
                            rt: rt2.clone(),
                            vs,
                            _net,
                        }
                    }))
                    .expect("spawn")
                })
                .collect();
            // Snapshot, put once, every replica loads it: learner to replicas.
            let (mean, std) = rt.block_on(timeit(&Timing::from_env(), 1, || {
                let weights = rt
                    .try_put(Weights::snapshot(&learner).expect("snapshot"))
                    .expect("put");
                let loads: Vec<_> = replicas.iter().map(|r| r.load(weights.clone())).collect();
                async move {
                    for load in loads {
                        assert!(load.await.expect("load"));
                    }
                }
            }));
            report(
                "weight_broadcast_1m_params_4_actors_ms",
                1e3 / mean,
                "ms",
                Some(1e3 * std / (mean * mean)),
            );
        }
    }
}
