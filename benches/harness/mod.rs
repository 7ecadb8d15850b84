//! What `perf` and `actor_compare` share: Ray's `timeit` method, its
//! timings, and the process's resident memory. A module of each bench (not
//! a bench of its own: Cargo only finds `benches/*.rs` and
//! `benches/*/main.rs`).

use std::future::Future;
use std::time::{Duration, Instant};

/// Whether `TROUPE_PERF_QUICK` asks for short runs (smoke tests in CI).
pub fn quick() -> bool {
    std::env::var_os("TROUPE_PERF_QUICK").is_some()
}

/// How long [`timeit`] warms up, how long one run lasts, and how many runs.
#[derive(Clone, Copy)]
pub struct Timing {
    pub warmup: Duration,
    pub run: Duration,
    pub runs: usize,
}

impl Timing {
    /// Ray's `ray_perf.py` timings (1 s warm-up, 4 runs of 2 s), or short
    /// ones under `TROUPE_PERF_QUICK`.
    pub fn from_env() -> Self {
        if quick() {
            Timing {
                warmup: Duration::from_millis(100),
                run: Duration::from_millis(200),
                runs: 2,
            }
        } else {
            Timing {
                warmup: Duration::from_secs(1),
                run: Duration::from_secs(2),
                runs: 4,
            }
        }
    }
}

/// Ray's `timeit`: runs `step` (which does `per_step` operations) repeatedly
/// and returns the mean and standard deviation of operations per second.
pub async fn timeit<F, Fut>(timing: &Timing, per_step: u64, mut step: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let began = Instant::now();
    while began.elapsed() < timing.warmup {
        step().await;
    }
    let mut rates = Vec::with_capacity(timing.runs);
    for _ in 0..timing.runs {
        let began = Instant::now();
        let mut steps = 0u64;
        while began.elapsed() < timing.run {
            step().await;
            steps += 1;
        }
        rates.push((steps * per_step) as f64 / began.elapsed().as_secs_f64());
    }
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let var = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64;
    (mean, var.sqrt())
}

/// This process's resident memory in bytes (Linux), `None` elsewhere.
pub fn rss_bytes() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}
