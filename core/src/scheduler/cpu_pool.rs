//! Threads for synchronous task bodies.
//!
//! A sync body may block, so it must not run on an async worker. Handing a
//! job from one thread to another costs a wake-up, and on the VMs Troupe is
//! measured on a wake-up that crosses vCPUs costs 44-167 µs (halt polling
//! is off), against 2-4 µs on the same vCPU: the same code ran 2.5x faster
//! or slower depending on where the scheduler put its threads. So the pool
//! avoids hand-offs where it can:
//!
//! - **A local slot per thread.** A job submitted from one of the pool's own
//!   threads as its job ends (the next link of a chain, launched by the one
//!   that just finished) runs next on that thread: no queue, no wake-up, no
//!   new thread. Only as it ends: a job submitted while the body runs would
//!   wait behind a body that may be waiting for it.
//! - **Claimable jobs.** A queued job can be claimed and run by someone else:
//!   a task waiting for its result runs it itself when it is known to be
//!   short (see `Scheduler::help`), instead of sleeping until a pool thread
//!   wakes up to run it.
//! - **One spinner.** A thread with nothing to do looks again for a short
//!   while (yielding its vCPU between looks) before it parks, so a steady
//!   stream of jobs from outside does not pay a park and a wake-up per job;
//!   only one thread spins at a time, so idle threads do not eat the vCPUs
//!   the producers need (measured: several spinners collapse throughput when
//!   threads share a vCPU).
//!
//! The pool keeps `base` threads (the node's CPUs) and starts another when a
//! job is queued and no thread is idle (bodies that block must not starve
//! the others); extra threads exit after sitting idle. A thread whose body
//! waits in `get` ([`CpuPool::blocking`]) does not count against the cap on
//! running threads: the job it waits for may be queued behind it, and a
//! DAG whose tasks all land on one node can have more than a thousand
//! bodies waiting at once (Ray starts a worker for each blocked one too).
//! Only the ceiling on threads in all bounds them.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

type Work = Box<dyn FnOnce() + Send>;

/// Most threads running bodies that do not wait in `get`.
const MAX_RUNNING: usize = 512;
/// Most threads in all, waiting ones included: past it, a queued job
/// waits for a thread to come free (and an error says why).
const MAX_THREADS: usize = 4096;
/// How long an extra thread stays idle before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(10);
/// How long the spinning thread looks for work before it parks.
const SPIN: Duration = Duration::from_micros(50);

/// A job that runs once, on whichever thread claims it first.
pub(crate) struct Job {
    work: Mutex<Option<Work>>,
    claimed: AtomicBool,
}

impl Job {
    pub(crate) fn new(work: Work) -> Arc<Self> {
        Arc::new(Job {
            work: Mutex::new(Some(work)),
            claimed: AtomicBool::new(false),
        })
    }

    /// Runs the job here if nobody has; true if this call ran it.
    pub(crate) fn run(&self) -> bool {
        if self.claimed.swap(true, Ordering::AcqRel) {
            return false;
        }
        let work = self.work.lock().unwrap_or_else(|e| e.into_inner()).take();
        match work {
            Some(work) => {
                let _depth = Nested::enter();
                work();
                true
            }
            None => false,
        }
    }

    /// Whether someone has taken it.
    pub(crate) fn is_claimed(&self) -> bool {
        self.claimed.load(Ordering::Acquire)
    }
}

/// What a pool thread keeps for itself.
struct Local {
    pool: Weak<CpuPool>,
    /// The job this thread runs next.
    next: Option<Arc<Job>>,
    /// The current job's body has returned: what it submits now can wait
    /// for this thread.
    ending: bool,
    /// Jobs running on this thread, one inside another when a body waiting
    /// for a result runs the job that makes it (`Scheduler::help`).
    depth: usize,
}

/// One more job running on this thread, for as long as it lives.
struct Nested;

impl Nested {
    fn enter() -> Self {
        LOCAL.with(|local| {
            if let Some(local) = local.borrow_mut().as_mut() {
                local.depth += 1;
            }
        });
        Nested
    }
}

impl Drop for Nested {
    fn drop(&mut self) {
        LOCAL.with(|local| {
            if let Some(local) = local.borrow_mut().as_mut() {
                local.depth -= 1;
            }
        });
    }
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

/// Runs `f` (what a job does after its body returned) so that a job it
/// submits to this thread's pool runs next on this thread. Only for the
/// outermost job: one run inside another body (by a waiter) must not leave
/// work behind that body, which may be waiting for exactly that work.
pub(crate) fn as_job_ends<R>(f: impl FnOnce() -> R) -> R {
    let previous = LOCAL.with(|local| {
        local
            .borrow_mut()
            .as_mut()
            .map(|local| std::mem::replace(&mut local.ending, local.depth == 1))
    });
    let out = f();
    if let Some(previous) = previous {
        LOCAL.with(|local| {
            if let Some(local) = local.borrow_mut().as_mut() {
                local.ending = previous;
            }
        });
    }
    out
}

pub(crate) struct CpuPool {
    queue: Mutex<VecDeque<Arc<Job>>>,
    work: Condvar,
    /// Threads parked, waiting for work.
    idle: AtomicUsize,
    threads: AtomicUsize,
    /// Threads whose body waits in `get` (see [`CpuPool::blocking`]).
    blocked: AtomicUsize,
    /// The ceiling was hit with jobs queued (said once).
    exhausted: AtomicBool,
    base: usize,
    closed: AtomicBool,
    /// A thread is spinning (looking for work before it parks).
    spinning: AtomicBool,
}

impl CpuPool {
    pub(crate) fn new(base: usize) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(VecDeque::new()),
            work: Condvar::new(),
            idle: AtomicUsize::new(0),
            threads: AtomicUsize::new(0),
            blocked: AtomicUsize::new(0),
            exhausted: AtomicBool::new(false),
            base: base.max(1),
            closed: AtomicBool::new(false),
            spinning: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Arc<Job>>> {
        // Jobs run outside the lock and catch their own panics.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `job` on a pool thread: next on this one if it is one of ours
    /// with a free slot, else on an idle (or a new) thread.
    pub(crate) fn execute(self: &Arc<Self>, job: Arc<Job>) {
        let job = LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            match local.as_mut() {
                Some(local)
                    if local.ending
                        && local.next.is_none()
                        && std::ptr::eq(local.pool.as_ptr(), Arc::as_ptr(self)) =>
                {
                    local.next = Some(job);
                    None
                }
                _ => Some(job),
            }
        });
        let Some(job) = job else { return };
        self.lock().push_back(job);
        self.wake_one();
    }

    /// Makes sure a thread will look at the queue: the spinner will; else
    /// a parked thread is woken, or a new one started. Called for each job
    /// queued, and by each thread that takes a job and leaves others
    /// queued: a thread counted idle or spinning may take only one of the
    /// jobs that counted on it, and then block in its body (waiting, say,
    /// for the very job left behind).
    fn wake_one(self: &Arc<Self>) {
        if self.spinning.load(Ordering::Acquire) {
            // The spinner will find it: no wake-up needed.
        } else if self.idle.load(Ordering::Acquire) > 0 {
            self.work.notify_one();
        } else {
            let threads = self.threads.load(Ordering::Acquire);
            let running = threads.saturating_sub(self.blocked.load(Ordering::Acquire));
            if running < MAX_RUNNING && threads < MAX_THREADS {
                self.spawn_thread();
            } else if threads >= MAX_THREADS && !self.exhausted.swap(true, Ordering::AcqRel) {
                metrics::counter!("troupe_cpu_pool_exhausted_total").increment(1);
                tracing::error!(
                    threads,
                    "every CPU thread is taken ({MAX_THREADS}, most waiting in get): queued task bodies wait for one to come free; if this node stalls, fewer sync tasks should wait on others at once (async task bodies hold no thread while they wait)"
                );
            }
        }
    }

    /// Marks this thread, if it is one of this pool's, as waiting in `get`
    /// until the guard drops: it stops counting against the cap on running
    /// threads, and a job queued behind it gets a thread of its own.
    pub(crate) fn blocking(self: &Arc<Self>) -> Option<Blocked> {
        let ours = LOCAL.with(|local| {
            local
                .borrow()
                .as_ref()
                .is_some_and(|l| std::ptr::eq(l.pool.as_ptr(), Arc::as_ptr(self)))
        });
        if !ours {
            return None;
        }
        self.blocked.fetch_add(1, Ordering::AcqRel);
        if !self.lock().is_empty() {
            self.wake_one();
        }
        Some(Blocked(self.clone()))
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

    /// The next job nobody has claimed, and whether others are queued.
    fn take(queue: &mut VecDeque<Arc<Job>>) -> Option<(Arc<Job>, bool)> {
        while let Some(job) = queue.pop_front() {
            if !job.is_claimed() {
                return Some((job, !queue.is_empty()));
            }
        }
        None
    }

    fn pop(&self) -> Option<(Arc<Job>, bool)> {
        Self::take(&mut self.lock())
    }

    /// This thread took a job: if others are left, another thread must
    /// look at them (see `wake_one`).
    fn took(self: &Arc<Self>, (job, more): (Arc<Job>, bool)) -> Arc<Job> {
        if more {
            self.wake_one();
        }
        job
    }

    /// Looks for work for a short while, if no other thread is already.
    fn spin(self: &Arc<Self>) -> Option<Arc<Job>> {
        if self
            .spinning
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None;
        }
        let until = std::time::Instant::now() + SPIN;
        let mut found = None;
        while std::time::Instant::now() < until && !self.closed.load(Ordering::Acquire) {
            if let Some((job, _)) = self.pop() {
                found = Some(job);
                break;
            }
            std::thread::yield_now();
        }
        self.spinning.store(false, Ordering::Release);
        match found {
            // Jobs queued while we spun woke nobody (they counted on this
            // thread, which is about to be busy): share them out.
            Some(job) => {
                if !self.lock().is_empty() {
                    self.wake_one();
                }
                Some(job)
            }
            // A job queued as the spin ended, with nobody woken for it.
            None => self.pop().map(|taken| self.took(taken)),
        }
    }

    /// The next queued job nobody has claimed, waiting for one; `None` when
    /// this thread should exit.
    fn next(self: &Arc<Self>) -> Option<Arc<Job>> {
        if let Some(taken) = self.pop() {
            return Some(self.took(taken));
        }
        if let Some(job) = self.spin() {
            return Some(job);
        }
        let mut queue = self.lock();
        let mut waited = Duration::ZERO;
        loop {
            if let Some(taken) = Self::take(&mut queue) {
                drop(queue);
                return Some(self.took(taken));
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            let extra = self.threads.load(Ordering::Acquire) > self.base;
            if extra && waited >= IDLE_EXIT {
                return None;
            }
            self.idle.fetch_add(1, Ordering::AcqRel);
            let (guard, timeout) = self
                .work
                .wait_timeout(queue, IDLE_EXIT)
                .unwrap_or_else(|e| e.into_inner());
            self.idle.fetch_sub(1, Ordering::AcqRel);
            queue = guard;
            waited = if timeout.timed_out() {
                waited + IDLE_EXIT
            } else {
                Duration::ZERO
            };
        }
    }

    fn run(self: Arc<Self>) {
        LOCAL.with(|local| {
            *local.borrow_mut() = Some(Local {
                pool: Arc::downgrade(&self),
                next: None,
                ending: false,
                depth: 0,
            })
        });
        let take_next =
            || LOCAL.with(|local| local.borrow_mut().as_mut().and_then(|l| l.next.take()));
        while let Some(job) = self.next() {
            job.run();
            // Jobs launched as it ended run here, one after another.
            while let Some(next) = take_next() {
                next.run();
            }
        }
        LOCAL.with(|local| *local.borrow_mut() = None);
        self.threads.fetch_sub(1, Ordering::AcqRel);
    }

    /// Threads whose body waits in `get` now (for tests and metrics).
    pub(crate) fn blocked(&self) -> usize {
        self.blocked.load(Ordering::Acquire)
    }

    /// Threads running now (for tests and metrics).
    pub(crate) fn threads(&self) -> usize {
        self.threads.load(Ordering::Acquire)
    }

    /// Lets idle threads exit; queued jobs still run.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.work.notify_all();
    }
}

/// A pool thread waiting in `get` (see [`CpuPool::blocking`]).
pub(crate) struct Blocked(Arc<CpuPool>);

impl Drop for Blocked {
    fn drop(&mut self) {
        self.0.blocked.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn job(f: impl FnOnce() + Send + 'static) -> Arc<Job> {
        Job::new(Box::new(f))
    }

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
            pool.execute(job(move || {
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
            pool.execute(job(move || {
                tx.send(if i == 99 { "last" } else { "job" }).unwrap()
            }));
        }
        let got: Vec<_> = (0..100)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(got.iter().filter(|s| **s == "job").count(), 99);
        pool.close();
    }

    /// More bodies waiting in `get` at once than the cap on running
    /// threads, each for the job queued after it: every one starts, because
    /// a waiting thread does not count against that cap (before, the
    /// 513th job waited for a thread forever).
    #[test]
    fn more_bodies_waiting_than_the_cap_on_running_threads_all_finish() {
        let pool = CpuPool::new(1);
        let n = MAX_RUNNING + 40;
        let (done_tx, done_rx) = mpsc::channel();
        // started[i] fires when job i starts; job i waits for job i + 1
        // (the last for one that never comes: its sender is dropped).
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..=n).map(|_| mpsc::channel()).unzip();
        let mut receivers: Vec<Option<mpsc::Receiver<()>>> =
            receivers.into_iter().map(Some).collect();
        for (i, started) in senders.into_iter().enumerate().take(n) {
            let next = receivers[i + 1].take().unwrap();
            let done = done_tx.clone();
            let in_pool = pool.clone();
            pool.execute(job(move || {
                started.send(()).unwrap();
                let waiting = in_pool.blocking().expect("a pool thread");
                let next_started = next.recv_timeout(Duration::from_secs(30)).is_ok();
                drop(waiting);
                done.send(next_started).unwrap();
            }));
        }
        let finished: Vec<bool> = (0..n)
            .map(|_| done_rx.recv_timeout(Duration::from_secs(60)).unwrap())
            .collect();
        // The last job's successor never runs: it alone may say false.
        assert!(
            finished.iter().filter(|ok| !**ok).count() <= 1,
            "{finished:?}"
        );
        assert_eq!(pool.blocked(), 0);
        pool.close();
    }

    /// Two jobs queued together while every thread but one is busy (here,
    /// the only one), the first waiting for the second: the second must
    /// start anyway, whether the thread was parked or spinning when they
    /// came. A thread that takes a job and leaves others queued must make
    /// sure another thread looks at them.
    #[test]
    fn jobs_queued_together_all_start_when_the_first_waits_for_the_second() {
        let pool = CpuPool::new(1);
        // One thread, which then spins or parks: the rounds find it so.
        let (warm_tx, warm_rx) = mpsc::channel();
        pool.execute(job(move || warm_tx.send(()).unwrap()));
        warm_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        for round in 0..300 {
            let (second_tx, second_rx) = mpsc::channel::<()>();
            let (done_tx, done_rx) = mpsc::channel();
            pool.execute(job(move || {
                let second_ran = second_rx.recv_timeout(Duration::from_secs(5)).is_ok();
                done_tx.send(second_ran).unwrap();
            }));
            pool.execute(job(move || second_tx.send(()).unwrap()));
            assert_eq!(
                done_rx.recv_timeout(Duration::from_secs(10)),
                Ok(true),
                "round {round}: the second job waited behind the first"
            );
            if round % 3 == 0 {
                // Let the thread park sometimes rather than spin.
                std::thread::sleep(SPIN * 4);
            }
        }
        pool.close();
    }

    #[test]
    fn a_chain_runs_on_one_thread_without_growing_the_pool() {
        let pool = CpuPool::new(2);
        let (tx, rx) = mpsc::channel();
        fn link(pool: Arc<CpuPool>, left: u32, tx: mpsc::Sender<std::thread::ThreadId>) {
            tx.send(std::thread::current().id()).unwrap();
            if left > 0 {
                let next = pool.clone();
                as_job_ends(|| pool.execute(Job::new(Box::new(move || link(next, left - 1, tx)))));
            }
        }
        let p = pool.clone();
        pool.execute(job(move || link(p, 999, tx)));
        let threads: std::collections::HashSet<_> = (0..1000)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(
            threads.len(),
            1,
            "every link ran on the first link's thread"
        );
        assert!(pool.threads() <= 2, "{} threads", pool.threads());
        pool.close();
    }

    #[test]
    fn a_job_submitted_while_a_body_runs_does_not_wait_behind_it() {
        let pool = CpuPool::new(2);
        let (tx, rx) = mpsc::channel();
        let p = pool.clone();
        pool.execute(job(move || {
            let (inner_tx, inner_rx) = mpsc::channel();
            p.execute(Job::new(Box::new(move || inner_tx.send(()).unwrap())));
            // The body waits for what it submitted: it must run elsewhere.
            inner_rx.recv_timeout(Duration::from_secs(10)).unwrap();
            tx.send(()).unwrap();
        }));
        rx.recv_timeout(Duration::from_secs(20)).unwrap();
        pool.close();
    }

    /// A body that runs another job itself (a waiter helping) must not get
    /// what that job launches as it ends parked behind the body: the body
    /// may be waiting for exactly that.
    #[test]
    fn a_job_run_inside_a_body_does_not_park_work_behind_it() {
        let pool = CpuPool::new(2);
        let (tx, rx) = mpsc::channel();
        let p = pool.clone();
        pool.execute(job(move || {
            let (done_tx, done_rx) = mpsc::channel();
            let launcher = p.clone();
            // What `help` does: a queued job, run here, inside this body.
            let inner = Job::new(Box::new(move || {
                as_job_ends(|| {
                    launcher.execute(Job::new(Box::new(move || done_tx.send(()).unwrap())))
                })
            }));
            assert!(inner.run());
            // The body waits for what the inner job launched.
            tx.send(done_rx.recv_timeout(Duration::from_secs(5)).is_ok())
                .unwrap();
        }));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(20)),
            Ok(true),
            "the launched job ran while the body waited"
        );
        pool.close();
    }

    #[test]
    fn a_claimed_job_runs_once() {
        let pool = CpuPool::new(1);
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let j = job(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        assert!(j.run(), "the first claim runs it");
        pool.execute(j.clone());
        assert!(!j.run());
        // A job queued after it runs, so the claimed one was passed over.
        let (tx, rx) = mpsc::channel();
        pool.execute(job(move || tx.send(()).unwrap()));
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        pool.close();
    }
}
