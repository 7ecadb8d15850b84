//! Troupe's typed actors side by side with the libraries users would pick
//! instead: plain [ractor](https://docs.rs/ractor) (what Troupe is built on)
//! and [kameo](https://docs.rs/kameo). The same workloads, one process, one
//! tokio runtime with exactly 2 worker threads, the default allocator.
//!
//! ```text
//! cargo bench -p troupe --bench actor_compare            # everything
//! cargo bench -p troupe --bench actor_compare -- calls   # metrics whose name contains "calls"
//! TROUPE_PERF_QUICK=1 cargo bench -p troupe --bench actor_compare   # short timings
//! ```
//!
//! Output: one `metric value unit` line per framework per row on stdout,
//! the metric named `<row>.<framework>` (`spawn_call_stop_per_s.troupe
//! 59900.000 actors/s`), then a ratio table on stderr. Rows:
//!
//! - `idle_actor_rss_bytes`, `idle_actor_heap_bytes`: 10,000 idle actors
//!   spawned and held; the growth of the process's RSS, and of the bytes
//!   live in the heap (from the counting allocator below), divided by
//!   10,000. Measured first, with every framework's actors held at once
//!   (nothing is freed between them, so no framework reuses memory another
//!   one gave back).
//! - `allocs_per_spawn_call_stop`, `allocs_per_call`, `allocs_per_tell`:
//!   heap allocations per operation, all threads included.
//! - `spawn_call_stop_per_s`: spawn an actor, make one call with a reply,
//!   stop it and wait until it is gone; one after another.
//! - `sync_calls_per_s`: one call awaited at a time, on one actor.
//! - `pipelined_calls_per_s`: 1,000 calls sent, then their replies awaited.
//! - `tells_per_s`: 10,000 fire-and-forget messages (Troupe's `.detach()`,
//!   ractor's `cast`, kameo's `tell`), then one call that returns how many
//!   the actor processed (checked), so that the rate counts processing.
//!
//! Rates use `benches/harness`'s `timeit` (Ray's method): warm up for
//! 1 s, then 4 runs of 2 s; the mean is printed, the standard deviation goes
//! to stderr. `TROUPE_PERF_QUICK=1` shortens the runs and spawns 2,000 idle
//! actors instead of 10,000.
//!
//! Each framework is used as its documentation shows. "Gone" means the
//! actor's task has ended: ractor actors are spawned with `Actor::spawn`,
//! stopped with `stop` and their join handle awaited (as ractor's examples
//! do); kameo actors are spawned with an unbounded mailbox (as ractor's and
//! Troupe's are; kameo's default is bounded at 64, which would make 1,000
//! pipelined calls wait for room), stopped with `stop_gracefully` and their
//! join handle awaited. ractor runs as the workspace builds it, with its
//! `cluster` feature (see the root `Cargo.toml`). Troupe's actors are
//! stopped with `kill` (the only stop that can be awaited today) and then
//! awaited until dead for good (their supervisor has removed them); that
//! code is in the module `troupe_side`, to switch to a graceful
//! `stop().await` when it exists.
//!
//! Under the facade's `mimalloc` feature the allocator is mimalloc, which
//! the bench cannot wrap: the allocation rows and `idle_actor_heap_bytes`
//! are skipped.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

mod harness;
use harness::{rss_bytes, timeit, Timing};

/// Counts heap allocations and live bytes, for the allocation rows. Off
/// under the `mimalloc` feature, which installs its own global allocator.
#[cfg(not(feature = "mimalloc"))]
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

    /// A counter per group of threads, each on its own cache line, so that
    /// counting does not make the two workers' allocations contend.
    #[repr(align(128))]
    struct Shard {
        allocations: AtomicU64,
        live_bytes: AtomicI64,
    }

    const SHARDS: usize = 16;
    static COUNTS: [Shard; SHARDS] = [const {
        Shard {
            allocations: AtomicU64::new(0),
            live_bytes: AtomicI64::new(0),
        }
    }; SHARDS];
    static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

    thread_local! {
        // Const-initialised and without Drop: reading it never allocates
        // and works while a thread is being torn down.
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }

    fn shard() -> &'static Shard {
        let index = SHARD
            .try_with(|s| {
                let mut i = s.get();
                if i == usize::MAX {
                    i = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
                    s.set(i);
                }
                i
            })
            .unwrap_or(0);
        &COUNTS[index]
    }

    fn record(allocations: u64, bytes: i64) {
        let shard = shard();
        shard.allocations.fetch_add(allocations, Ordering::Relaxed);
        shard.live_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub struct Counting;

    // SAFETY: every method forwards to `System` with the caller's arguments
    // unchanged and only adds to counters, which never allocate.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                record(1, layout.size() as i64);
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                record(1, layout.size() as i64);
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) };
            record(0, -(layout.size() as i64));
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                // A realloc counts as one allocation, as heaptrack counts it.
                record(1, new_size as i64 - layout.size() as i64);
            }
            p
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// (allocations so far, bytes live now), over every thread.
    pub fn snapshot() -> (u64, i64) {
        COUNTS.iter().fold((0, 0), |(a, b), s| {
            (
                a + s.allocations.load(Ordering::Relaxed),
                b + s.live_bytes.load(Ordering::Relaxed),
            )
        })
    }
}

/// `None` when the counting allocator is off (the `mimalloc` feature).
fn heap_snapshot() -> Option<(u64, i64)> {
    #[cfg(not(feature = "mimalloc"))]
    {
        Some(counting::snapshot())
    }
    #[cfg(feature = "mimalloc")]
    {
        None
    }
}

/// What the bench does with an actor framework. Each implementation uses
/// the framework as its documentation shows.
trait Framework: Send + Sync + 'static {
    const NAME: &'static str;
    type Actor: Send + Sync + 'static;
    /// Spawns an actor and returns once it has started.
    fn spawn(&self) -> impl Future<Output = Self::Actor> + Send;
    /// One call with a reply (the reply is always 1).
    fn call(actor: &Self::Actor) -> impl Future<Output = u64> + Send;
    /// Sends `n` calls, then awaits their replies in order.
    fn pipelined(actor: &Self::Actor, n: usize) -> impl Future<Output = ()> + Send;
    /// A fire-and-forget message, counted by the actor.
    fn tell(actor: &Self::Actor);
    /// A call that returns how many tells the actor has processed.
    fn told(actor: &Self::Actor) -> impl Future<Output = u64> + Send;
    /// Stops the actor and returns once it is gone.
    fn stop(actor: Self::Actor) -> impl Future<Output = ()> + Send;
}

// ============================================================================
// TROUPE SIDE. Everything the bench does with Troupe's actors is here, through
// the public API.
// ============================================================================
mod troupe_side {
    use troupe::prelude::*;

    /// The workload actor: answers, and counts what it was told.
    pub struct TroupeCounter {
        told: u64,
    }

    #[troupe::actor]
    impl TroupeCounter {
        pub fn ping(&self) -> u64 {
            1
        }

        pub fn tell(&mut self) {
            self.told += 1;
        }

        pub fn told(&self) -> u64 {
            self.told
        }
    }

    pub struct Troupe(pub Runtime);

    impl super::Framework for Troupe {
        const NAME: &'static str = "troupe";
        type Actor = TroupeCounterHandle;

        async fn spawn(&self) -> Self::Actor {
            self.0
                .spawn_actor(ActorOptions::new(), || TroupeCounter { told: 0 })
                .await
                .expect("troupe spawn")
        }

        async fn call(actor: &Self::Actor) -> u64 {
            actor.ping().await.expect("troupe call")
        }

        async fn pipelined(actor: &Self::Actor, n: usize) {
            let pending: Vec<_> = (0..n).map(|_| actor.ping()).collect();
            for p in pending {
                p.await.expect("troupe pipelined call");
            }
        }

        fn tell(actor: &Self::Actor) {
            actor.tell().detach();
        }

        async fn told(actor: &Self::Actor) -> u64 {
            actor.told().await.expect("troupe told")
        }

        /// A graceful stop (the calls already sent are answered), awaited
        /// until the actor is dead: as ractor's `stop_and_wait`.
        async fn stop(actor: Self::Actor) {
            actor.stop().await;
        }
    }
}
// ============================================================================
// END OF TROUPE SIDE
// ============================================================================

/// Plain ractor: one actor type, one message enum.
mod ractor_side {
    use ractor::{ActorProcessingErr, ActorRef, RpcReplyPort};

    pub struct RactorCounter;

    pub enum RactorMsg {
        Ping(RpcReplyPort<u64>),
        Tell,
        Told(RpcReplyPort<u64>),
    }

    // With ractor's `cluster` feature on (a workspace build links
    // troupe-cluster) a message type needs its own impl; off, ractor's
    // blanket impl covers it and this expands to nothing.
    troupe::local_message!(RactorMsg);

    impl ractor::Actor for RactorCounter {
        type Msg = RactorMsg;
        type State = u64;
        type Arguments = ();

        async fn pre_start(
            &self,
            _myself: ActorRef<RactorMsg>,
            _: (),
        ) -> Result<u64, ActorProcessingErr> {
            Ok(0)
        }

        async fn handle(
            &self,
            _myself: ActorRef<RactorMsg>,
            msg: RactorMsg,
            told: &mut u64,
        ) -> Result<(), ActorProcessingErr> {
            match msg {
                RactorMsg::Ping(reply) => {
                    let _ = reply.send(1);
                }
                RactorMsg::Tell => *told += 1,
                RactorMsg::Told(reply) => {
                    let _ = reply.send(*told);
                }
            }
            Ok(())
        }
    }

    pub struct Ractor;

    /// The actor and its task, which ends when the actor is gone.
    pub struct RactorActor {
        actor: ActorRef<RactorMsg>,
        task: tokio::task::JoinHandle<()>,
    }

    impl std::ops::Deref for RactorActor {
        type Target = ActorRef<RactorMsg>;
        fn deref(&self) -> &Self::Target {
            &self.actor
        }
    }

    impl super::Framework for Ractor {
        const NAME: &'static str = "ractor";
        type Actor = RactorActor;

        async fn spawn(&self) -> Self::Actor {
            let (actor, task) = ractor::Actor::spawn(None, RactorCounter, ())
                .await
                .expect("ractor spawn");
            RactorActor { actor, task }
        }

        async fn call(actor: &Self::Actor) -> u64 {
            match actor.call(RactorMsg::Ping, None).await {
                Ok(ractor::rpc::CallResult::Success(v)) => v,
                _ => panic!("ractor call failed"),
            }
        }

        /// Each call with its own reply port, as `ActorRef::call` builds it.
        async fn pipelined(actor: &Self::Actor, n: usize) {
            let replies: Vec<_> = (0..n)
                .map(|_| {
                    let (tx, rx) = ractor::concurrency::oneshot();
                    if actor.cast(RactorMsg::Ping(tx.into())).is_err() {
                        panic!("ractor send failed");
                    }
                    rx
                })
                .collect();
            for rx in replies {
                rx.await.expect("ractor pipelined call");
            }
        }

        fn tell(actor: &Self::Actor) {
            if actor.cast(RactorMsg::Tell).is_err() {
                panic!("ractor cast failed");
            }
        }

        async fn told(actor: &Self::Actor) -> u64 {
            match actor.call(RactorMsg::Told, None).await {
                Ok(ractor::rpc::CallResult::Success(v)) => v,
                _ => panic!("ractor call failed"),
            }
        }

        /// As ractor's own examples stop an actor: `stop`, then await its
        /// task.
        async fn stop(actor: Self::Actor) {
            actor.actor.stop(None);
            actor.task.await.expect("ractor actor ended cleanly");
        }
    }
}

/// kameo: one actor type, one message type per method.
mod kameo_side {
    use std::convert::Infallible;

    use kameo::actor::{ActorRef, PreparedActor};
    use kameo::message::{Context, Message};

    pub struct KameoCounter {
        told: u64,
    }

    impl kameo::Actor for KameoCounter {
        type Args = ();
        type Error = Infallible;

        async fn on_start(_: (), _: ActorRef<Self>) -> Result<Self, Infallible> {
            Ok(KameoCounter { told: 0 })
        }
    }

    pub struct Ping;
    pub struct Tell;
    pub struct Told;

    impl Message<Ping> for KameoCounter {
        type Reply = u64;
        async fn handle(&mut self, _: Ping, _: &mut Context<Self, u64>) -> u64 {
            1
        }
    }

    impl Message<Tell> for KameoCounter {
        type Reply = ();
        async fn handle(&mut self, _: Tell, _: &mut Context<Self, ()>) {
            self.told += 1;
        }
    }

    impl Message<Told> for KameoCounter {
        type Reply = u64;
        async fn handle(&mut self, _: Told, _: &mut Context<Self, u64>) -> u64 {
            self.told
        }
    }

    pub struct Kameo;

    /// The actor and its task, which ends when the actor is gone.
    pub struct KameoActor {
        actor: ActorRef<KameoCounter>,
        task: tokio::task::JoinHandle<
            Result<(KameoCounter, kameo::error::ActorStopReason), kameo::error::PanicError>,
        >,
    }

    impl std::ops::Deref for KameoActor {
        type Target = ActorRef<KameoCounter>;
        fn deref(&self) -> &Self::Target {
            &self.actor
        }
    }

    impl super::Framework for Kameo {
        const NAME: &'static str = "kameo";
        type Actor = KameoActor;

        /// With an unbounded mailbox, as ractor's and Troupe's are.
        async fn spawn(&self) -> Self::Actor {
            let prepared = PreparedActor::new(kameo::mailbox::unbounded());
            let actor = prepared.actor_ref().clone();
            let task = prepared.spawn(());
            actor.wait_for_startup().await;
            KameoActor { actor, task }
        }

        async fn call(actor: &Self::Actor) -> u64 {
            actor.ask(Ping).await.expect("kameo call")
        }

        async fn pipelined(actor: &Self::Actor, n: usize) {
            let pending: Vec<_> = (0..n)
                .map(|_| actor.ask(Ping).try_enqueue().expect("kameo enqueue"))
                .collect();
            for p in pending {
                p.await.expect("kameo pipelined call");
            }
        }

        fn tell(actor: &Self::Actor) {
            actor.tell(Tell).try_send().expect("kameo tell");
        }

        async fn told(actor: &Self::Actor) -> u64 {
            actor.ask(Told).await.expect("kameo told")
        }

        /// A graceful stop, then its task awaited (`wait_for_shutdown`
        /// returns when the mailbox closes, before `on_stop` has run).
        async fn stop(actor: Self::Actor) {
            actor.actor.stop_gracefully().await.expect("kameo stop");
            if !matches!(actor.task.await, Ok(Ok(_))) {
                panic!("kameo actor did not end cleanly");
            }
        }
    }
}

/// The frameworks, in the order they are measured and printed.
const FRAMEWORKS: [&str; 3] = ["troupe", "ractor", "kameo"];

/// One printed row: a metric's value for each framework.
struct Row {
    name: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    values: Vec<(&'static str, f64)>,
}

struct Report {
    wanted: Box<dyn Fn(&str) -> bool>,
    rows: Vec<Row>,
}

impl Report {
    fn wants(&self, row: &str) -> bool {
        FRAMEWORKS
            .iter()
            .any(|f| (self.wanted)(&format!("{row}.{f}")))
    }

    fn print(
        &mut self,
        row: &'static str,
        unit: &'static str,
        higher_is_better: bool,
        framework: &'static str,
        value: f64,
        std: Option<f64>,
    ) {
        let metric = format!("{row}.{framework}");
        if !(self.wanted)(&metric) {
            return;
        }
        println!("{metric} {value:.3} {unit}");
        if let Some(std) = std {
            eprintln!("  {metric}: {value:.1} +- {std:.1} {unit}");
        }
        match self.rows.iter_mut().find(|r| r.name == row) {
            Some(r) => r.values.push((framework, value)),
            None => self.rows.push(Row {
                name: row,
                unit,
                higher_is_better,
                values: vec![(framework, value)],
            }),
        }
    }

    /// Troupe against each other framework, on stderr.
    fn ratios(&self) {
        eprintln!();
        eprintln!(
            "{:<28} {:>14} {:>14} {:>14} {:>10} {:>10}",
            "row", "troupe", "ractor", "kameo", "/ractor", "/kameo"
        );
        for row in &self.rows {
            let get = |f: &str| row.values.iter().find(|(n, _)| *n == f).map(|(_, v)| *v);
            let cell = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
            let ratio = |other: Option<f64>| match (get("troupe"), other) {
                (Some(t), Some(o)) if o != 0.0 => format!("{:.2}x", t / o),
                _ => "-".to_owned(),
            };
            eprintln!(
                "{:<28} {:>14} {:>14} {:>14} {:>10} {:>10}   ({}, {} is better)",
                row.name,
                cell(get("troupe")),
                cell(get("ractor")),
                cell(get("kameo")),
                ratio(get("ractor")),
                ratio(get("kameo")),
                row.unit,
                if row.higher_is_better {
                    "higher"
                } else {
                    "lower"
                },
            );
        }
    }
}

fn main() {
    // cargo bench passes `--bench`; anything else not starting with `-` filters.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut report = Report {
        wanted: Box::new(move |metric: &str| {
            filters.is_empty() || filters.iter().any(|f| metric.contains(f.as_str()))
        }),
        rows: Vec::new(),
    };
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let rt = tokio
        .block_on(troupe::init(troupe::Config::default()))
        .expect("troupe runtime");
    let troupe = Arc::new(troupe_side::Troupe(rt.clone()));
    let ractor = Arc::new(ractor_side::Ractor);
    let kameo = Arc::new(kameo_side::Kameo);
    let bench = Bench { tokio: &tokio };

    if report.wants("idle_actor_rss_bytes") || report.wants("idle_actor_heap_bytes") {
        // All three frameworks' actors are held at once: nothing is freed
        // between them, so none reuses memory another one gave back.
        let n = if harness::quick() { 2_000 } else { 10_000 };
        let (t, r, k) = (troupe.clone(), ractor.clone(), kameo.clone());
        let measured = bench.run(async move {
            let (troupe_bytes, troupe_held) = idle_actors(&*t, n).await;
            let (ractor_bytes, ractor_held) = idle_actors(&*r, n).await;
            let (kameo_bytes, kameo_held) = idle_actors(&*k, n).await;
            stop_all::<troupe_side::Troupe>(troupe_held).await;
            stop_all::<ractor_side::Ractor>(ractor_held).await;
            stop_all::<kameo_side::Kameo>(kameo_held).await;
            [troupe_bytes, ractor_bytes, kameo_bytes]
        });
        for (framework, (rss, heap)) in FRAMEWORKS.into_iter().zip(measured) {
            report.print("idle_actor_rss_bytes", "bytes", false, framework, rss, None);
            if let Some(heap) = heap {
                report.print(
                    "idle_actor_heap_bytes",
                    "bytes",
                    false,
                    framework,
                    heap,
                    None,
                );
            }
        }
    }

    let allocation_rows = [
        "allocs_per_spawn_call_stop",
        "allocs_per_call",
        "allocs_per_tell",
    ];
    if allocation_rows.iter().any(|r| report.wants(r)) {
        if heap_snapshot().is_none() {
            eprintln!(
                "allocation rows skipped: the mimalloc feature replaces the counting allocator"
            );
        } else {
            bench.allocation_rows(&mut report, troupe.clone(), allocation_rows);
            bench.allocation_rows(&mut report, ractor.clone(), allocation_rows);
            bench.allocation_rows(&mut report, kameo.clone(), allocation_rows);
        }
    }

    let rows: [(&'static str, &'static str); 4] = [
        ("spawn_call_stop_per_s", "actors/s"),
        ("sync_calls_per_s", "calls/s"),
        ("pipelined_calls_per_s", "calls/s"),
        ("tells_per_s", "messages/s"),
    ];
    for (row, unit) in rows {
        bench.throughput_row(&mut report, troupe.clone(), row, unit);
        bench.throughput_row(&mut report, ractor.clone(), row, unit);
        bench.throughput_row(&mut report, kameo.clone(), row, unit);
    }

    report.ratios();
    let _ = tokio.block_on(rt.shutdown());
}

struct Bench<'a> {
    tokio: &'a tokio::runtime::Runtime,
}

impl Bench<'_> {
    /// Runs a measurement in a task on the runtime, as a service's code
    /// would run (not on the calling thread, which would add a wake-up per
    /// step).
    fn run<T: Send + 'static>(&self, measurement: impl Future<Output = T> + Send + 'static) -> T {
        self.tokio
            .block_on(async { tokio::spawn(measurement).await.expect("bench task") })
    }

    fn throughput_row<F: Framework>(
        &self,
        report: &mut Report,
        framework: Arc<F>,
        row: &'static str,
        unit: &'static str,
    ) {
        if (report.wanted)(&format!("{row}.{}", F::NAME)) {
            let (mean, std) = self.run(throughput(framework, row));
            report.print(row, unit, true, F::NAME, mean, Some(std));
        }
    }

    fn allocation_rows<F: Framework>(
        &self,
        report: &mut Report,
        framework: Arc<F>,
        rows: [&'static str; 3],
    ) {
        let per_op = self.run(allocations(framework));
        for (row, value) in rows.into_iter().zip(per_op) {
            report.print(row, "allocations", false, F::NAME, value, None);
        }
    }
}

/// One throughput row of one framework: the mean and standard deviation.
async fn throughput<F: Framework>(framework: Arc<F>, row: &'static str) -> (f64, f64) {
    const SPAWNS_PER_STEP: u64 = 100;
    const CALLS_PER_STEP: u64 = 1_000;
    const PIPELINED: usize = 1_000;
    const TELLS: u64 = 10_000;
    let timing = Timing::from_env();
    let framework = &*framework;
    if row == "spawn_call_stop_per_s" {
        return timeit(&timing, SPAWNS_PER_STEP, || async move {
            for _ in 0..SPAWNS_PER_STEP {
                let actor = framework.spawn().await;
                assert_eq!(F::call(&actor).await, 1);
                F::stop(actor).await;
            }
        })
        .await;
    }
    let actor = framework.spawn().await;
    let rate = match row {
        "sync_calls_per_s" => {
            timeit(&timing, CALLS_PER_STEP, || async {
                for _ in 0..CALLS_PER_STEP {
                    F::call(&actor).await;
                }
            })
            .await
        }
        "pipelined_calls_per_s" => {
            timeit(&timing, PIPELINED as u64, || {
                F::pipelined(&actor, PIPELINED)
            })
            .await
        }
        _ => {
            let mut expected = 0;
            let actor = &actor;
            timeit(&timing, TELLS, || {
                for _ in 0..TELLS {
                    F::tell(actor);
                }
                expected += TELLS;
                let expected = expected;
                async move {
                    // Processed, not only sent: the actor counted them all.
                    assert_eq!(F::told(actor).await, expected);
                }
            })
            .await
        }
    };
    F::stop(actor).await;
    rate
}

/// Spawns `n` idle actors and keeps them: (RSS growth, heap growth) per
/// actor, and the actors.
async fn idle_actors<F: Framework>(framework: &F, n: usize) -> ((f64, Option<f64>), Vec<F::Actor>) {
    let rss_before = rss_bytes().unwrap_or(f64::NAN);
    let heap_before = heap_snapshot().map(|(_, live)| live);
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(framework.spawn().await);
    }
    // Let what the spawns left to other tasks (Troupe's supervisor adopting
    // its children) finish before measuring.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss = (rss_bytes().unwrap_or(f64::NAN) - rss_before) / n as f64;
    let heap = heap_before
        .and_then(|before| heap_snapshot().map(|(_, live)| (live - before) as f64 / n as f64));
    ((rss, heap), held)
}

async fn stop_all<F: Framework>(actors: Vec<F::Actor>) {
    for actor in actors {
        F::stop(actor).await;
    }
}

/// Heap allocations per spawn-call-stop, per call, and per tell, all
/// threads included, after a warm-up of the same size.
async fn allocations<F: Framework>(framework: Arc<F>) -> [f64; 3] {
    const N: u64 = 1_000;
    let count = || heap_snapshot().map_or(0, |(allocations, _)| allocations);
    let per_op = |before: u64| (count() - before) as f64 / N as f64;
    let spawn_call_stop = || async {
        for _ in 0..N {
            let actor = framework.spawn().await;
            F::call(&actor).await;
            F::stop(actor).await;
        }
    };
    spawn_call_stop().await; // warm-up: one-time growth (maps, pools) is not counted
    let before = count();
    spawn_call_stop().await;
    let per_spawn_call_stop = per_op(before);

    let actor = framework.spawn().await;
    let calls = || async {
        for _ in 0..N {
            F::call(&actor).await;
        }
    };
    calls().await;
    let before = count();
    calls().await;
    let per_call = per_op(before);

    let before = count();
    for _ in 0..N {
        F::tell(&actor);
    }
    // One call makes sure every tell was processed; its own allocations are
    // taken off.
    assert_eq!(F::told(&actor).await, N);
    let per_tell = per_op(before) - per_call / N as f64;
    F::stop(actor).await;
    [per_spawn_call_stop, per_call, per_tell]
}
