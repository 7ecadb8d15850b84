//! Threads for synchronous task bodies.
//!
//! A sync body may block, so it must not run on an async worker. tokio's
//! blocking pool parks idle threads at once, and waking one costs a context
//! switch per task (measured: 4.5x the cost of an async no-op task). These
//! threads spin briefly before they park, so a stream of tasks flows without
//! a sleep or a wake-up. The pool keeps `base` threads (the node's CPUs) and
//! grows while every thread is busy (bodies that block, tasks needing no
//! CPU), shrinking back when the extra threads sit idle.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send>;

/// Most threads the pool grows to.
const MAX_THREADS: usize = 512;
/// How long a thread spins for work before it parks.
const SPIN: Duration = Duration::from_micros(50);
/// How long an extra thread stays idle before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(10);

pub(crate) struct CpuPool {
    queue: Mutex<VecDeque<Job>>,
    work: Condvar,
    /// Threads waiting for work (spinning or parked).
    idle: AtomicUsize,
    threads: AtomicUsize,
    base: usize,
    closed: AtomicBool,
}

impl CpuPool {
    pub(crate) fn new(base: usize) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(VecDeque::new()),
            work: Condvar::new(),
            idle: AtomicUsize::new(0),
            threads: AtomicUsize::new(0),
            base: base.max(1),
            closed: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Job>> {
        // Jobs run outside the lock and catch their own panics.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn execute(self: &Arc<Self>, job: Job) {
        self.lock().push_back(job);
        if self.idle.load(Ordering::Acquire) > 0 {
            self.work.notify_one();
        } else if self.threads.load(Ordering::Acquire) < MAX_THREADS {
            self.spawn_thread();
        }
    }

    fn spawn_thread(self: &Arc<Self>) {
        let n = self.threads.fetch_add(1, Ordering::AcqRel);
        let pool = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("troupe-cpu-{n}"))
            .spawn(move || pool.run());
        if let Err(err) = spawned {
            self.threads.fetch_sub(1, Ordering::AcqRel);
            // The job stays queued for a thread that exists.
            tracing::error!(%err, "could not start a CPU thread");
        }
    }

    fn next(&self) -> Option<Job> {
        if let Some(job) = self.lock().pop_front() {
            return Some(job);
        }
        self.idle.fetch_add(1, Ordering::AcqRel);
        let spin_until = Instant::now() + SPIN;
        while Instant::now() < spin_until {
            if let Some(job) = self.lock().pop_front() {
                self.idle.fetch_sub(1, Ordering::AcqRel);
                return Some(job);
            }
            std::hint::spin_loop();
            std::thread::yield_now();
        }
        let mut queue = self.lock();
        let parked_at = Instant::now();
        loop {
            if let Some(job) = queue.pop_front() {
                self.idle.fetch_sub(1, Ordering::AcqRel);
                return Some(job);
            }
            if self.closed.load(Ordering::Acquire) {
                self.idle.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
            let extra = self.threads.load(Ordering::Acquire) > self.base;
            if extra && parked_at.elapsed() >= IDLE_EXIT {
                self.idle.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
            queue = self
                .work
                .wait_timeout(queue, IDLE_EXIT)
                .map(|(q, _)| q)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn run(self: Arc<Self>) {
        while let Some(job) = self.next() {
            job();
        }
        self.threads.fetch_sub(1, Ordering::AcqRel);
    }

    /// Lets idle threads exit; queued jobs still run.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.work.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn runs_every_job_and_grows_when_jobs_block() {
        let pool = CpuPool::new(1);
        let (tx, rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        // Two jobs that block until released: the pool must add a thread.
        for _ in 0..2 {
            let tx = tx.clone();
            let release = release_rx.clone();
            pool.execute(Box::new(move || {
                tx.send("started").unwrap();
                let _ = release
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(10));
            }));
        }
        for _ in 0..2 {
            assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("started"));
        }
        release_tx.send(()).unwrap();
        release_tx.send(()).unwrap();
        for i in 0..100 {
            let tx = tx.clone();
            pool.execute(Box::new(move || {
                tx.send(if i == 99 { "last" } else { "job" }).unwrap()
            }));
        }
        let got: Vec<_> = (0..100)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(got.iter().filter(|s| **s == "job").count(), 99);
        pool.close();
    }
}
