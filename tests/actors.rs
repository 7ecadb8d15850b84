//! Typed actors: calls, pipelining, restarts, replay, names, kill, errors.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, next_event, runtime, within};
use troupe::prelude::*;
use troupe::{ActorError, CallProblem, LookupError};
use troupe::{ObjectError, SpawnError};

struct Counter {
    count: u64,
    /// Counts constructor runs across restarts.
    builds: Arc<AtomicU32>,
}

#[troupe::actor]
impl Counter {
    pub fn new(start: u64, builds: Arc<AtomicU32>) -> Self {
        builds.fetch_add(1, Ordering::SeqCst);
        Self {
            count: start,
            builds,
        }
    }

    pub fn incr(&mut self, by: u64) -> u64 {
        self.count += by;
        self.count
    }

    pub fn get(&self) -> u64 {
        self.count
    }

    pub fn builds(&self) -> u32 {
        self.builds.load(Ordering::SeqCst)
    }

    pub fn crash(&mut self) -> u64 {
        panic!("crash at {}", self.count)
    }

    pub async fn sleep_then_get(&mut self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.count
    }

    pub async fn crash_async(&mut self) {
        tokio::task::yield_now().await;
        panic!("async crash")
    }

    pub async fn hang(&mut self) {
        std::future::pending::<()>().await
    }
}

/// Has no methods of its own named like the handle's management methods.
struct Other;

#[troupe::actor]
impl Other {
    /// A constructor whose arguments can travel.
    pub fn new(_label: String) -> Self {
        Other
    }

    pub fn ping(&self) -> &'static str {
        "pong"
    }

    /// `Self` in a signature means the actor type, not the handle.
    pub fn echo_back(&self, others: Vec<Self>) -> usize {
        others.len()
    }

    /// Crate-visible: a message too, from a handle method as visible.
    pub(crate) fn crate_ping(&self) -> &'static str {
        self.helper()
    }

    /// Private: a helper, not a message.
    fn helper(&self) -> &'static str {
        "crate pong"
    }
}

async fn counter(rt: &Runtime, options: ActorOptions) -> (CounterHandle, Arc<AtomicU32>) {
    let builds = Arc::new(AtomicU32::new(0));
    let b = builds.clone();
    let handle = rt
        .spawn_actor(options, move || Counter::new(10, b.clone()))
        .await
        .expect("actor starts");
    (handle, builds)
}

#[tokio::test]
async fn calls_return_typed_values() {
    let rt = runtime().await;
    let (c, _) = counter(&rt, ActorOptions::new()).await;
    assert_eq!(c.incr(5).await.unwrap(), 15);
    assert_eq!(c.get().await.unwrap(), 15);
    assert_eq!(c.sleep_then_get(1).await.unwrap(), 15);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn crate_visible_methods_are_messages_and_private_ones_helpers() {
    let rt = runtime().await;
    let other = rt
        .spawn_actor(ActorOptions::new(), || Other)
        .await
        .expect("actor starts");
    assert_eq!(other.crate_ping().await.unwrap(), "crate pong");
    assert_eq!(other.ping().await.unwrap(), "pong");
    rt.shutdown().await.unwrap();
}

/// Built from something that cannot leave this process.
struct Reporter(std::sync::mpsc::Sender<u32>);

#[troupe::actor]
impl Reporter {
    pub fn new(to: std::sync::mpsc::Sender<u32>) -> Self {
        Reporter(to)
    }

    pub fn report(&self, n: u32) -> bool {
        self.0.send(n).is_ok()
    }
}

/// `A::remote(&rt, options).constructor(args)` has the constructor's own
/// signature (checked by the compiler); what it cannot do says so.
#[tokio::test]
async fn typed_remote_constructors_say_why_they_cannot_spawn() {
    let rt = runtime().await;
    // Arguments that cannot travel (a channel's sender).
    let (tx, _rx) = std::sync::mpsc::channel();
    let err = Reporter::remote(&rt, ActorOptions::new())
        .new(tx)
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, SpawnError::BadArguments { constructor, .. } if constructor.ends_with("Reporter::new")),
        "{err}"
    );
    // Arguments that can, on a runtime outside any cluster.
    let err = Other::remote(&rt, ActorOptions::new())
        .new("a label".to_owned())
        .await
        .expect_err("refused");
    assert!(
        matches!(err, SpawnError::Remote { node: None, .. }),
        "{err}"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn pipelined_calls_run_in_order() {
    let rt = runtime().await;
    let (c, _) = counter(&rt, ActorOptions::new()).await;
    let pending: Vec<_> = (1..=1000).map(|_| c.incr(1)).collect();
    let mut values = Vec::new();
    for p in pending {
        values.push(p.await.unwrap());
    }
    assert_eq!(values, (11..=1010).collect::<Vec<_>>());
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn fire_and_forget_calls_still_run() {
    let rt = runtime().await;
    let (c, _) = counter(&rt, ActorOptions::new()).await;
    for _ in 0..100 {
        c.incr(1).detach();
    }
    assert_eq!(c.get().await.unwrap(), 110);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn mut_methods_run_one_at_a_time_even_when_async() {
    let rt = runtime().await;
    let (c, _) = counter(&rt, ActorOptions::new()).await;
    // The async call holds the actor until it is done: the incr queued behind
    // it cannot interleave, so the slow read still sees 10.
    let slow = c.sleep_then_get(50);
    let fast = c.incr(1);
    assert_eq!(slow.await.unwrap(), 10);
    assert_eq!(fast.await.unwrap(), 11);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn panicking_method_fails_the_call_and_restart_reruns_the_constructor() {
    let rt = runtime().await;
    let (c, builds) = counter(&rt, ActorOptions::new().max_restarts(2)).await;
    c.incr(5).await.unwrap();
    let err = within("panicking call answers", c.crash())
        .await
        .unwrap_err();
    match &err {
        ActorError::Panicked {
            method, message, ..
        } => {
            assert_eq!(*method, "crash");
            assert_eq!(message, "crash at 15");
        }
        other => panic!("expected Panicked, got {other}"),
    }
    // The new incarnation was built by the constructor, with its arguments.
    assert_eq!(c.get().await.unwrap(), 10);
    assert_eq!(builds.load(Ordering::SeqCst), 2);
    let err = within("async panic answers", c.crash_async())
        .await
        .unwrap_err();
    assert!(matches!(err, ActorError::Panicked { .. }), "{err}");
    assert_eq!(c.get().await.unwrap(), 10);
    assert_eq!(builds.load(Ordering::SeqCst), 3);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn restarts_exhausted_leaves_the_actor_dead() {
    let rt = runtime().await;
    let (c, builds) = counter(&rt, ActorOptions::new().max_restarts(1)).await;
    assert!(c.crash().await.is_err());
    assert_eq!(c.get().await.unwrap(), 10);
    assert!(c.crash().await.is_err());
    let err = within("call to a dead actor answers", c.get())
        .await
        .unwrap_err();
    match &err {
        ActorError::ActorDied { reason, .. } => {
            assert!(
                reason.contains("no") && reason.contains("max_restarts"),
                "{reason}"
            )
        }
        other => panic!("expected ActorDied, got {other}"),
    }
    assert!(c.is_dead());
    assert_eq!(builds.load(Ordering::SeqCst), 2);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn no_restarts_by_default() {
    let rt = runtime().await;
    let (c, builds) = counter(&rt, ActorOptions::new()).await;
    assert!(c.crash().await.is_err());
    let err = c.get().await.unwrap_err();
    assert!(matches!(err, ActorError::ActorDied { .. }), "{err}");
    assert_eq!(builds.load(Ordering::SeqCst), 1);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn at_most_once_fails_calls_queued_behind_a_crash() {
    let rt = runtime().await;
    let (c, _) = counter(&rt, ActorOptions::new().max_restarts(1)).await;
    let crash = c.crash();
    let queued: Vec<_> = (0..10).map(|_| c.incr(1)).collect();
    assert!(matches!(crash.await, Err(ActorError::Panicked { .. })));
    for q in queued {
        let err = within("queued call answers", q).await.unwrap_err();
        assert!(matches!(err, ActorError::ActorDied { .. }), "{err}");
    }
    // The actor itself restarted and serves new calls.
    assert_eq!(c.incr(1).await.unwrap(), 11);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn max_task_retries_replays_calls_queued_behind_a_crash() {
    let rt = runtime().await;
    let (c, _) = counter(&rt, ActorOptions::new().max_restarts(1).max_task_retries(1)).await;
    let crash = c.crash();
    let queued: Vec<_> = (0..10).map(|_| c.incr(1)).collect();
    assert!(matches!(crash.await, Err(ActorError::Panicked { .. })));
    let mut values = Vec::new();
    for q in queued {
        values.push(within("replayed call answers", q).await.unwrap());
    }
    // Replayed on the new incarnation, in their original order.
    assert_eq!(values, (11..=20).collect::<Vec<_>>());
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn kill_restarts_unless_no_restart() {
    let rt = runtime().await;
    let (c, builds) = counter(&rt, ActorOptions::new().name("k").max_restarts(None)).await;
    let hung = c.hang();
    c.kill(false).await;
    let err = within("call interrupted by kill answers", hung)
        .await
        .unwrap_err();
    assert!(matches!(err, ActorError::ActorDied { .. }), "{err}");
    assert_eq!(c.get().await.unwrap(), 10, "restarted after kill");
    assert_eq!(builds.load(Ordering::SeqCst), 2);

    c.kill(true).await;
    let err = c.get().await.unwrap_err();
    assert!(
        matches!(err, ActorError::ActorDied { ref reason, .. } if reason.contains("no_restart")),
        "{err}"
    );
    assert!(c.is_dead());
    // The name is free again.
    assert!(matches!(
        rt.get_actor::<Counter>("k"),
        Err(LookupError::NotFound(_))
    ));
    let (again, _) = counter(&rt, ActorOptions::new().name("k")).await;
    assert_eq!(again.get().await.unwrap(), 10);
    eventually("killed actor never restarts", || {
        builds.load(Ordering::SeqCst) == 2
    })
    .await;
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn named_lookup_is_typed() {
    let rt = runtime().await;
    let (c, _) = counter(&rt, ActorOptions::new().name("counter")).await;
    let found = rt.get_actor::<Counter>("counter").unwrap();
    assert_eq!(found.id(), c.id());
    found.incr(1).await.unwrap();
    assert_eq!(c.get().await.unwrap(), 11);

    match rt.get_actor::<Other>("counter") {
        Err(LookupError::WrongType {
            expected, actual, ..
        }) => {
            assert!(expected.ends_with("Other") && actual.ends_with("Counter"));
        }
        other => panic!("expected WrongType, got {:?}", other.map(|h| h.id())),
    }
    assert_eq!(
        rt.get_actor::<Counter>("nobody").unwrap_err(),
        LookupError::NotFound("nobody".into())
    );
    rt.shutdown().await.unwrap();
}

/// `stop` returns once the actor is dead and its name given back: a spawn
/// under the same name right after never finds it taken (it did, now and
/// then, when `stop` returned as the actor's death began rather than
/// ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_free_the_moment_stop_returns() {
    let rt = runtime().await;
    let named = ActorOptions::new().name("again");
    for round in 0..2_000 {
        let actor = rt
            .spawn_actor(named.clone(), || Other)
            .await
            .unwrap_or_else(|err| panic!("round {round}: {err}"));
        actor.stop().await;
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_taken_name_is_refused() {
    let rt = runtime().await;
    let _first = rt
        .spawn_actor(ActorOptions::new().name("dup"), || Other)
        .await
        .unwrap();
    let err = rt
        .spawn_actor(ActorOptions::new().name("dup"), || Other)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SpawnError::NameTaken(ref n) if n == "dup"),
        "{err}"
    );
    assert!(err.to_string().contains("already taken"));
    // Names are per runtime: another runtime may use it.
    let rt2 = runtime().await;
    rt2.spawn_actor(ActorOptions::new().name("dup"), || Other)
        .await
        .unwrap();
    rt.shutdown().await.unwrap();
    rt2.shutdown().await.unwrap();
}

#[tokio::test]
async fn panicking_constructor_is_a_failed_spawn() {
    let rt = runtime().await;
    let err = rt
        .spawn_actor(ActorOptions::new().name("boom"), || -> Other {
            panic!("no config file")
        })
        .await
        .unwrap_err();
    match &err {
        SpawnError::StartFailed { cause, .. } => {
            assert!(cause.contains("no config file"), "{cause}")
        }
        other => panic!("expected StartFailed, got {other}"),
    }
    // Nothing is left holding the name, and the runtime is fine.
    assert!(rt.get_actor::<Other>("boom").is_err());
    let ok = rt
        .spawn_actor(ActorOptions::new().name("boom"), || Other)
        .await
        .unwrap();
    assert_eq!(ok.ping().await.unwrap(), "pong");
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn fallible_async_constructor_error_is_reported() {
    let rt = runtime().await;
    let err = rt
        .spawn_actor_with(ActorOptions::new(), || async {
            Err::<Other, _>("database unreachable")
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("database unreachable"), "{err}");
    let ok = rt
        .spawn_actor_with(ActorOptions::new(), || async { Ok::<_, String>(Other) })
        .await
        .unwrap();
    assert_eq!(ok.ping().await.unwrap(), "pong");
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn constructor_failing_on_restart_leaves_the_actor_dead_with_a_reason() {
    let rt = runtime().await;
    let builds = Arc::new(AtomicU32::new(0));
    let b = builds.clone();
    let c = rt
        .spawn_actor(ActorOptions::new().max_restarts(3), move || {
            if b.fetch_add(1, Ordering::SeqCst) > 0 {
                panic!("cannot rebuild");
            }
            Counter::new(0, Arc::new(AtomicU32::new(0)))
        })
        .await
        .unwrap();
    assert!(c.crash().await.is_err());
    let err = within("call after failed restarts answers", c.get())
        .await
        .unwrap_err();
    assert!(matches!(err, ActorError::ActorDied { .. }), "{err}");
    eventually("actor dead for good", || c.is_dead()).await;
    // 1 start + 3 restart attempts.
    assert_eq!(builds.load(Ordering::SeqCst), 4);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn restarts_are_reported_as_events() {
    let rt = runtime().await;
    let mut events = rt.subscribe();
    let (c, _) = counter(&rt, ActorOptions::new().max_restarts(1)).await;
    let _ = c.crash().await;
    let event = next_event(&mut events, |e| {
        matches!(e, SupervisionEvent::ChildRestarted { .. })
    })
    .await;
    match event {
        SupervisionEvent::ChildRestarted {
            supervisor,
            child,
            restarts,
        } => {
            assert_eq!(&*supervisor, "user");
            assert!(child.contains("Counter"));
            assert_eq!(restarts, 1);
        }
        _ => unreachable!(),
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn actors_in_user_trees_follow_the_strategy() {
    let rt = runtime().await;
    let builds = Arc::new(AtomicU32::new(0));
    let mut tree = SupervisorSpec::new("pair", Strategy::OneForAll);
    let mut handles = Vec::new();
    for _ in 0..2 {
        let b = builds.clone();
        let (child, handle) = rt
            .actor_child(ActorOptions::new(), move || Counter::new(0, b.clone()))
            .unwrap();
        tree = tree.child(child.restart(Restart::Permanent));
        handles.push(handle);
    }
    let sup = rt.spawn_supervisor(tree).await.unwrap();
    handles[0].incr(3).await.unwrap();
    handles[1].incr(4).await.unwrap();
    assert!(handles[0].crash().await.is_err());
    // one_for_all: both were rebuilt, so both counts start over.
    assert_eq!(handles[0].get().await.unwrap(), 0);
    assert_eq!(handles[1].get().await.unwrap(), 0);
    assert_eq!(builds.load(Ordering::SeqCst), 4);
    assert_eq!(sup.which_children().await.unwrap().len(), 2);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn self_in_a_method_signature_is_the_actor_type() {
    let rt = runtime().await;
    let a = rt.spawn_actor(ActorOptions::new(), || Other).await.unwrap();
    assert_eq!(a.echo_back(vec![Other, Other]).await.unwrap(), 2);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn resources_are_held_by_the_actor_and_given_back_when_it_dies() {
    let node = Resources::cpus(2.0).with_gpus(1.0).with("disk", 2.0);
    let rt = troupe::init(Config::default().resources(node))
        .await
        .unwrap();
    let needs = Resources::cpus(1.0).with_gpus(0.5).with("disk", 2.0);
    let a = rt
        .spawn_actor(ActorOptions::new().resources(needs.clone()), || Other)
        .await
        .unwrap();
    assert_eq!(a.options().get_resources(), &needs);
    assert_eq!(a.info().resources, needs);
    assert_eq!(a.info().gpu_ids, vec![0]);
    // All the "disk" is held: a second such actor waits until the first dies.
    let rt2 = rt.clone();
    let needs2 = needs.clone();
    let second = tokio::spawn(async move {
        rt2.spawn_actor(ActorOptions::new().resources(needs2), || Other)
            .await
    });
    eventually("the second spawn waits for the resources", || {
        rt.task_summary().actors_waiting == 1
    })
    .await;
    assert!(
        !second.is_finished(),
        "placed while the resources were held"
    );
    a.kill(true).await;
    let second = within("placed once the first died", second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.info().gpu_ids, vec![0]);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn calls_after_shutdown_fail_fast() {
    let rt = runtime().await;
    let (c, _) = counter(&rt, ActorOptions::new().max_restarts(None)).await;
    rt.shutdown().await.unwrap();
    let err = within("call after shutdown answers", c.get())
        .await
        .unwrap_err();
    assert!(matches!(err, ActorError::ActorDied { .. }), "{err}");
    let err = rt
        .spawn_actor(ActorOptions::new(), || Other)
        .await
        .unwrap_err();
    assert!(matches!(err, SpawnError::RuntimeShutDown), "{err}");
}

#[tokio::test]
async fn dropping_the_last_handle_collects_an_unnamed_actor_after_it_answers() {
    let rt = runtime().await;
    let (c, builds) = counter(&rt, ActorOptions::new().max_restarts(None)).await;
    let clone = c.clone();
    drop(c);
    // A clone still holds it.
    assert_eq!(clone.incr(1).await.unwrap(), 11);
    let before = rt.live_actors();
    // Calls sent before the last handle goes are still answered.
    let pending: Vec<_> = (0..100).map(|_| clone.incr(1)).collect();
    drop(clone);
    let mut last = 0;
    for p in pending {
        last = within("call sent before the drop answers", p)
            .await
            .unwrap();
    }
    assert_eq!(last, 111);
    eventually("collected actor stops", || rt.live_actors() == before - 1).await;
    // It is not restarted, whatever its max_restarts.
    assert_eq!(builds.load(Ordering::SeqCst), 1);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn named_actors_outlive_their_handles() {
    let rt = runtime().await;
    let (c, _) = counter(&rt, ActorOptions::new().name("kept")).await;
    c.incr(1).await.unwrap();
    drop(c);
    let again = rt.get_actor::<Counter>("kept").unwrap();
    assert_eq!(again.get().await.unwrap(), 11);
    drop(again);
    assert_eq!(
        rt.get_actor::<Counter>("kept")
            .unwrap()
            .get()
            .await
            .unwrap(),
        11
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_made_after_a_panic_reply_reaches_the_restarted_actor() {
    // Even under at-most-once, a call sent after the caller saw the panic
    // must wait for the new incarnation, not die in the old mailbox.
    let rt = runtime().await;
    let (c, _) = counter(&rt, ActorOptions::new().max_restarts(None)).await;
    for round in 0..200 {
        assert!(matches!(c.crash().await, Err(ActorError::Panicked { .. })));
        let value = within("call after panic answers", c.get())
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(value, 10);
    }
    rt.shutdown().await.unwrap();
}

struct Introspective;

#[troupe::actor]
impl Introspective {
    pub fn whoami(&self) -> Option<(troupe::ActorId, Option<String>, troupe::NodeId)> {
        troupe::actor::current().map(|info| (info.id, info.name.clone(), info.node))
    }

    pub async fn whoami_async(&self) -> Option<troupe::ActorId> {
        tokio::task::yield_now().await;
        troupe::actor::current().map(|info| info.id)
    }
}

#[tokio::test]
async fn methods_see_their_actor_context() {
    let rt = runtime().await;
    let a = rt
        .spawn_actor(ActorOptions::new().name("me"), || Introspective)
        .await
        .unwrap();
    assert_eq!(
        a.whoami().await.unwrap(),
        Some((a.id(), Some("me".to_owned()), rt.node_id()))
    );
    assert_eq!(a.whoami_async().await.unwrap(), Some(a.id()));
    assert!(
        troupe::actor::current().is_none(),
        "no actor context outside actors"
    );
    rt.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// Restarts racing calls.

/// No lost wake-up: a call sent while the actor restarts reaches the next
/// incarnation by itself, without another call nudging it (the mailbox
/// outlives incarnations, so a call parked during a failed flush is not
/// left waiting until someone else calls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_sent_during_a_restart_is_never_left_waiting() {
    let rt = runtime().await;
    let (c, _) = counter(&rt, ActorOptions::new().max_restarts(None)).await;
    for round in 0..500 {
        // The crash and the next call race on two workers.
        let crash = c.crash();
        let racer = {
            let c = c.clone();
            tokio::spawn(async move { c.get().await })
        };
        let _ = crash.await;
        let got = within("a lone call during a restart answers", racer)
            .await
            .unwrap();
        // At-most-once: it ran (10) or died with the incarnation it reached.
        match got {
            Ok(v) => assert_eq!(v, 10, "round {round}"),
            Err(ActorError::ActorDied { .. }) => {}
            Err(other) => panic!("round {round}: {other}"),
        }
    }
    rt.shutdown().await.unwrap();
}

struct Holder {
    running: Arc<AtomicU32>,
}

#[troupe::actor]
impl Holder {
    pub async fn work(&mut self, started: tokio::sync::oneshot::Sender<()>) {
        self.running.fetch_add(1, Ordering::SeqCst);
        let _ = started.send(());
        // Until killed; the guard below counts the end.
        let _done = Ended(self.running.clone());
        std::future::pending::<()>().await
    }

    pub fn ping(&self) -> u8 {
        1
    }
}

/// Decrements a counter when dropped (an interrupted method's end).
struct Ended(Arc<AtomicU32>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `kill(no_restart)` stops the running incarnation before the actor counts
/// as dead: its name and its GPU are not handed on while its method still
/// runs, and no queued call stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_with_no_restart_stops_the_incarnation_before_giving_anything_back() {
    let rt = troupe::init(Config::default().resources(Resources::cpus(2.0).with_gpus(1.0)))
        .await
        .unwrap();
    let running = Arc::new(AtomicU32::new(0));
    let r = running.clone();
    let options = ActorOptions::new()
        .name("holder")
        .resources(Resources::default().with_gpus(1.0));
    let holder = rt
        .spawn_actor(options.clone(), move || Holder { running: r.clone() })
        .await
        .unwrap();
    let (started, working) = tokio::sync::oneshot::channel();
    let work = holder.work(started);
    within("work starts", working).await.unwrap();
    let queued = holder.ping();
    holder.kill(true).await;
    // The incarnation is gone by the time kill returns: its method ended...
    assert_eq!(running.load(Ordering::SeqCst), 0, "the method still runs");
    assert!(matches!(
        within("the running call answers", work).await,
        Err(ActorError::ActorDied { .. })
    ));
    // ...the call queued behind it failed at once...
    assert!(matches!(
        within("the queued call answers", queued).await,
        Err(ActorError::ActorDied { ref reason, .. }) if reason.contains("no_restart")
    ));
    // ...and only now are its name and its GPU free for another actor.
    let r = running.clone();
    let next = within(
        "the name and the GPU are free",
        rt.spawn_actor(options, move || Holder { running: r.clone() }),
    )
    .await
    .unwrap();
    assert_eq!(next.info().gpu_ids, vec![0]);
    assert_eq!(next.ping().await.unwrap(), 1);
    rt.shutdown().await.unwrap();
}

struct Slow;

/// A gate a test opens: a blocking method holds its thread until then.
#[derive(Default)]
struct Gate {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
    /// How many methods are holding.
    waiting: AtomicU32,
}

impl Gate {
    fn hold(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

/// Opens the gate however the test ends, so no thread stays blocked.
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

#[troupe::actor]
impl Slow {
    /// Blocks its thread until the gate opens; `#[blocking]` hands the
    /// worker's other tasks on.
    #[blocking]
    pub fn hold(&mut self, gate: Arc<Gate>) {
        gate.hold();
    }

    /// Reads an object from sync code running on a runtime worker.
    pub fn read(
        &self,
        rt: Runtime,
        r: ObjectRef<u64>,
        reading: Arc<AtomicU32>,
    ) -> Result<u64, ObjectError> {
        reading.fetch_add(1, Ordering::SeqCst);
        rt.get_blocking(&r).map(|v| *v)
    }

    /// The same from an async method.
    pub async fn read_async(&self, rt: Runtime, r: ObjectRef<u64>) -> Result<u64, ObjectError> {
        rt.get_blocking(&r).map(|v| *v)
    }
}

/// Two blocking methods holding both workers of a 2-worker runtime do not
/// stall every other task: a timer and an unrelated call complete while
/// they still hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_methods_do_not_stall_the_runtime() {
    let rt = runtime().await;
    let a = rt.spawn_actor(ActorOptions::new(), || Slow).await.unwrap();
    let b = rt.spawn_actor(ActorOptions::new(), || Slow).await.unwrap();
    let other = rt.spawn_actor(ActorOptions::new(), || Other).await.unwrap();
    let gate = Arc::new(Gate::default());
    let release = OpenOnDrop(gate.clone());
    let (ha, hb) = (a.hold(gate.clone()), b.hold(gate.clone()));
    eventually("both methods hold their threads", || {
        gate.waiting.load(Ordering::SeqCst) == 2
    })
    .await;
    let pong = within("a timer and a call while two methods block", async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        other.ping().await
    })
    .await;
    assert_eq!(pong.unwrap(), "pong");
    assert_eq!(gate.waiting.load(Ordering::SeqCst), 2, "they still hold");
    drop(release);
    within("the held methods", async {
        ha.await.unwrap();
        hb.await.unwrap();
    })
    .await;
    rt.shutdown().await.unwrap();
}

/// `get_blocking` works in sync and async actor methods (it must not panic
/// with "Cannot start a runtime from within a runtime").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_blocking_works_in_actor_methods() {
    let rt = runtime().await;
    let a = rt.spawn_actor(ActorOptions::new(), || Slow).await.unwrap();
    let (r, done) = rt.objects().pending::<u64>();
    let started = Arc::new(AtomicU32::new(0));
    let reading = a.read(rt.clone(), r.clone(), started.clone());
    eventually("the method reads", || started.load(Ordering::SeqCst) == 1).await;
    done.complete(5).unwrap();
    assert_eq!(within("sync read", reading).await.unwrap().unwrap(), 5);
    assert_eq!(a.read_async(rt.clone(), r).await.unwrap().unwrap(), 5);
    rt.shutdown().await.unwrap();
}

/// On a current-thread runtime nothing could produce the object while the
/// method waits: an error that says so, not a panic or a hang.
#[tokio::test(flavor = "current_thread")]
async fn get_blocking_on_a_current_thread_runtime_is_an_error() {
    let rt = runtime().await;
    let a = rt.spawn_actor(ActorOptions::new(), || Slow).await.unwrap();
    let (r, _done) = rt.objects().pending::<u64>();
    let err = within("read", a.read(rt.clone(), r, Arc::default()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, ObjectError::WouldDeadlock { .. }), "{err}");
    assert!(err.to_string().contains("current-thread"), "{err}");
    rt.shutdown().await.unwrap();
}

struct Boom;

#[troupe::actor]
impl Boom {
    pub fn noop(&self) {}
}

/// After a constructor panicked, `actor::current()` on that thread still
/// named the dead actor.
#[tokio::test(flavor = "current_thread")]
async fn a_panicking_constructor_leaves_no_actor_context_behind() {
    let rt = runtime().await;
    let err = rt
        .spawn_actor(ActorOptions::new().name("boom"), || -> Boom {
            panic!("no")
        })
        .await
        .unwrap_err();
    assert!(matches!(err, SpawnError::StartFailed { .. }), "{err}");
    assert!(troupe::actor::current().is_none(), "context restored");
    rt.shutdown().await.unwrap();
}

/// A graceful stop answers what was sent before it, fails what comes after,
/// and frees the name.
#[tokio::test]
async fn stop_drains_the_mailbox_then_stops_for_good() {
    let rt = runtime().await;
    let (c, builds) = counter(&rt, ActorOptions::new().name("s").max_restarts(None)).await;
    let before: Vec<_> = (0..100).map(|_| c.incr(1)).collect();
    c.stop().await;
    for (i, p) in before.into_iter().enumerate() {
        assert_eq!(
            p.await.unwrap(),
            11 + i as u64,
            "sent before the stop: answered"
        );
    }
    assert!(c.is_dead());
    assert!(matches!(
        c.get().await,
        Err(ActorError::ActorDied { ref reason, .. }) if reason.contains("stopped")
    ));
    assert!(rt.get_actor::<Counter>("s").is_err());
    assert_eq!(builds.load(Ordering::SeqCst), 1, "a stop is not a failure");
    rt.shutdown().await.unwrap();
}

struct Named;

#[troupe::actor]
impl Named {
    pub fn new(prefix: String) -> Self {
        let _ = prefix;
        Named
    }

    pub fn greet(&self, who: String) -> String {
        format!("hello {who}")
    }

    pub fn not_by_name(&self, reply: tokio::sync::oneshot::Sender<u8>) {
        let _ = reply.send(1);
    }
}

/// Every actor type registers its constructors and methods by name: what a
/// node runs for another (the cluster's seam).
#[tokio::test]
async fn actors_are_spawned_and_called_by_name() {
    let rt = runtime().await;
    let ty = <Named as troupe::Actor>::NAME;
    let args = postcard::to_allocvec(&("x".to_owned(),)).unwrap();
    let id = rt
        .spawn_by_name(ty, "new", ActorOptions::new(), &args)
        .await
        .unwrap();
    let args = postcard::to_allocvec(&("you".to_owned(),)).unwrap();
    let reply = rt.call_by_name(id, "greet", &args).await.unwrap();
    let text: String = postcard::from_bytes(&reply.bytes).unwrap();
    assert_eq!(text, "hello you");
    // Each error names what is wrong.
    let problem = |err: ActorError| match err {
        ActorError::BadCall { problem, .. } => problem,
        other => panic!("not a bad call: {other}"),
    };
    let err = rt.call_by_name(id, "nope", &args).await.unwrap_err();
    assert_eq!(problem(err), CallProblem::NoSuchMethod);
    let err = rt.call_by_name(id, "greet", &[0xff]).await.unwrap_err();
    assert_eq!(problem(err), CallProblem::Arguments);
    let err = rt.call_by_name(id, "not_by_name", &[]).await.unwrap_err();
    assert_eq!(problem(err), CallProblem::NotRemotable);
    let err = rt
        .spawn_by_name(ty, "missing", ActorOptions::new(), &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SpawnError::UnknownConstructor(name) if name.ends_with("::missing")),
        "{err}"
    );
    // Spawned by name, it is not collected: it lives until stopped.
    assert_eq!(rt.state().await.actors.len(), 1);
    rt.shutdown().await.unwrap();
}

/// A spawn dropped while its async constructor ran left a slot that looked
/// alive: its name stayed taken, and shutdown waited for it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_dropped_while_constructing_leaves_nothing_behind() {
    let rt = troupe::init(Config::default().shutdown_timeout(Duration::from_millis(500)))
        .await
        .unwrap();
    let spawning = rt.spawn_actor_with(ActorOptions::new().name("slow-start"), || async {
        std::future::pending::<()>().await;
        Ok::<_, String>(Counter {
            count: 0,
            builds: Arc::new(AtomicU32::new(0)),
        })
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(50), spawning)
            .await
            .is_err(),
        "the constructor never finishes"
    );
    // The name is free again, for an actor that starts.
    let (again, _) = counter(&rt, ActorOptions::new().name("slow-start")).await;
    assert_eq!(within("call", again.get()).await.unwrap(), 10);
    within("shutdown", rt.shutdown()).await.unwrap();
}

/// An actor whose constructor keeps failing restarts in a loop (no restart
/// limit); that loop never looked at kill or shutdown, so `kill(true)` and
/// `shutdown` waited for it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_failing_to_restart_can_still_be_killed() {
    let rt = troupe::init(Config::default().shutdown_timeout(Duration::from_secs(2)))
        .await
        .unwrap();
    let builds = Arc::new(AtomicU32::new(0));
    let b = builds.clone();
    let fragile = rt
        .spawn_actor(ActorOptions::new().max_restarts(None), move || {
            if b.fetch_add(1, Ordering::SeqCst) > 0 {
                panic!("cannot rebuild");
            }
            Counter {
                count: 0,
                builds: Arc::new(AtomicU32::new(0)),
            }
        })
        .await
        .unwrap();
    assert!(fragile.crash().await.is_err());
    eventually("rebuilds failing", || builds.load(Ordering::SeqCst) > 3).await;
    within("kill during the restart loop", fragile.kill(true)).await;
    assert!(fragile.get().await.is_err(), "dead for good");
    within("shutdown", rt.shutdown()).await.unwrap();
}

#[tokio::test]
async fn a_handle_travels_as_data_and_decodes_only_inside_a_runtime() {
    let rt = runtime().await;
    let (c, _) = counter(&rt, ActorOptions::new().name("travels")).await;
    let bytes = postcard::to_allocvec(&c).unwrap();
    // Outside any runtime: an error (postcard keeps no message), not a
    // handle to nowhere.
    assert!(postcard::from_bytes::<CounterHandle>(&bytes).is_err());
    // Inside one (a task of it), the same bytes are a live handle.
    let decoded = rt.get(&read_handle::remote(&rt, bytes)).await.unwrap();
    assert_eq!(*decoded, 15);
    rt.shutdown().await.unwrap();
}

/// Decodes a counter's handle inside a task and calls it.
#[troupe::remote]
async fn read_handle(bytes: Vec<u8>) -> u64 {
    let counter: CounterHandle = postcard::from_bytes(&bytes).expect("a handle");
    counter.incr(5).await.expect("a call")
}
