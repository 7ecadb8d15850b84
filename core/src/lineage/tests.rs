use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use troupe_objects::{Encoded, NodeId, ObjectError, ObjectId, ObjectRef, ObjectStore, StoreConfig};

use super::{Lineage, Start};
use crate::context::TraceContext;
use crate::ids::TaskId;
use crate::spec::{Returns, TaskArgs, TaskOptions, TaskSpec};

/// A store whose node lost the node `DEAD`, and its lineage table, told of
/// every object the store frees.
fn setup(cap: u64) -> (ObjectStore, Arc<Lineage>) {
    let store = ObjectStore::new(StoreConfig::with_budget(1 << 26));
    let lineage = Arc::new(Lineage::new(cap));
    let freed = lineage.clone();
    store.on_forget(Arc::new(move |id| freed.freed(id)));
    (store, lineage)
}

const DEAD: NodeId = NodeId(0xdead);

/// A result of this node kept on `DEAD` (as a task run there leaves it).
fn result(store: &ObjectStore) -> ObjectRef<u64> {
    store.remote::<u64>(store.new_id(), Some(DEAD))
}

/// A spec of task `seq` of this node, with `args` bytes of arguments
/// holding `refs`, making `results`.
fn spec(
    store: &ObjectStore,
    seq: u64,
    args: usize,
    refs: Vec<troupe_objects::AnyObjectRef>,
    results: &[ObjectId],
    max_retries: u32,
) -> TaskSpec {
    let id = TaskId {
        node: store.node(),
        seq,
    };
    TaskSpec {
        id,
        function: "tests::f".into(),
        args: TaskArgs::Encoded(Encoded::new(vec![7; args], refs)),
        deps: Vec::new(),
        options: TaskOptions::default().max_retries(max_retries),
        owner: store.node(),
        attempt: 1,
        results: results.to_vec(),
        returns: Returns::One,
        trace: TraceContext::for_new_task(id),
    }
}

/// A rerun that counts its calls and does nothing else.
fn counting(
    calls: &Arc<AtomicUsize>,
) -> impl FnOnce(TaskSpec) -> BoxFuture<'static, Result<(), ObjectError>> {
    let calls = calls.clone();
    move |_spec| {
        calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
}

#[test]
fn an_entry_goes_with_its_results_and_then_its_arguments() {
    let (store, lineage) = setup(1 << 30);
    let a = result(&store);
    let b = result(&store);
    lineage.record(&spec(&store, 1, 100, Vec::new(), &[a.id()], 3), &store);
    // b's task takes a: its lineage holds a.
    lineage.record(
        &spec(&store, 2, 100, vec![a.clone().erase()], &[b.id()], 3),
        &store,
    );
    assert_eq!(lineage.len(), 2);
    assert!(lineage.bytes() > 200);
    drop(a);
    assert_eq!(lineage.len(), 2, "a lives while b's lineage needs it");
    drop(b);
    assert_eq!(
        lineage.len(),
        0,
        "b went, then a, whose only holder was b's lineage"
    );
    assert_eq!(lineage.bytes(), 0);
    assert!(store.is_empty());
}

#[test]
fn a_long_chain_is_freed_without_deep_recursion() {
    let (store, lineage) = setup(1 << 30);
    let mut last = result(&store);
    lineage.record(&spec(&store, 0, 10, Vec::new(), &[last.id()], 3), &store);
    for seq in 1..20_000 {
        let next = result(&store);
        lineage.record(
            &spec(&store, seq, 10, vec![last.erase()], &[next.id()], 3),
            &store,
        );
        last = next;
    }
    assert_eq!(lineage.len(), 20_000);
    drop(last);
    assert_eq!(lineage.len(), 0);
    assert_eq!(lineage.bytes(), 0);
    assert!(store.is_empty());
}

#[test]
fn past_the_cap_the_oldest_lineage_is_evicted_and_its_loss_says_so() {
    let (store, lineage) = setup(3 * 1300);
    let results: Vec<_> = (0..4).map(|_| result(&store)).collect();
    for (seq, r) in results.iter().enumerate() {
        lineage.record(
            &spec(&store, seq as u64, 1000, Vec::new(), &[r.id()], 3),
            &store,
        );
        assert!(lineage.bytes() <= 3 * 1300);
    }
    assert_eq!(lineage.len(), 3, "the oldest went");
    let lost = store.node_died(DEAD);
    assert_eq!(lost.len(), 4);
    let calls = Arc::new(AtomicUsize::new(0));
    match lineage.start(results[0].id(), &store, counting(&calls)) {
        Start::Cannot(why) => assert!(why.contains("evicted"), "{why}"),
        _ => panic!("an evicted entry cannot be rebuilt"),
    }
    assert!(lineage.why_not(results[0].id()).is_some());
    assert!(lineage.why_not(results[1].id()).is_none());
    assert!(matches!(
        lineage.start(results[1].id(), &store, counting(&calls)),
        Start::Began(_)
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    drop(results);
    assert_eq!(lineage.bytes(), 0);
    assert!(
        lineage.lock().evicted.is_empty(),
        "freed results are forgotten"
    );
}

#[test]
fn an_entry_larger_than_the_cap_is_not_kept() {
    let (store, lineage) = setup(1000);
    let r = result(&store);
    lineage.record(&spec(&store, 1, 5000, Vec::new(), &[r.id()], 3), &store);
    assert_eq!(lineage.bytes(), 0);
    store.node_died(DEAD);
    assert!(lineage
        .why_not(r.id())
        .is_some_and(|w| w.contains("evicted")));
}

#[tokio::test]
async fn concurrent_reads_share_one_reconstruction() {
    let (store, lineage) = setup(1 << 30);
    let r = result(&store);
    lineage.record(&spec(&store, 1, 10, Vec::new(), &[r.id()], 3), &store);
    store.node_died(DEAD);
    let calls = Arc::new(AtomicUsize::new(0));
    let first = match lineage.start(r.id(), &store, counting(&calls)) {
        Start::Began(running) => running,
        _ => panic!("a lost result with lineage is rebuilt"),
    };
    let second = match lineage.start(r.id(), &store, counting(&calls)) {
        Start::Wait(running) => running,
        _ => panic!("a second read joins the running reconstruction"),
    };
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one rerun");
    assert!(first.await.is_ok());
    assert!(second.await.is_ok());
    lineage.finished(TaskId {
        node: store.node(),
        seq: 1,
    });
    // Still lost here (the counting rerun made nothing): the next read
    // starts another, at the next attempt.
    assert!(matches!(
        lineage.start(r.id(), &store, counting(&calls)),
        Start::Began(_)
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn an_object_that_is_not_lost_is_not_rebuilt() {
    let (store, lineage) = setup(1 << 30);
    let r = result(&store);
    lineage.record(&spec(&store, 1, 10, Vec::new(), &[r.id()], 3), &store);
    let calls = Arc::new(AtomicUsize::new(0));
    assert!(matches!(
        lineage.start(r.id(), &store, counting(&calls)),
        Start::NotLost
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[test]
fn retries_are_spent_by_reconstructions() {
    let (store, lineage) = setup(1 << 30);
    let r = result(&store);
    let mut first = spec(&store, 1, 10, Vec::new(), &[r.id()], 1);
    lineage.record(&first, &store);
    store.node_died(DEAD);
    let mut attempts = Vec::new();
    let rerun = |spec: TaskSpec| -> BoxFuture<'static, Result<(), ObjectError>> {
        attempts.push(spec.attempt);
        Box::pin(async { Ok(()) })
    };
    assert!(matches!(
        lineage.start(r.id(), &store, rerun),
        Start::Began(_)
    ));
    assert_eq!(attempts, [2], "the reconstruction is the second attempt");
    lineage.finished(first.id);
    // A retry of that attempt (its node died too) is recorded: attempt 3
    // is past max_retries = 1.
    first.attempt = 2;
    lineage.record(&first, &store);
    let calls = Arc::new(AtomicUsize::new(0));
    match lineage.start(r.id(), &store, counting(&calls)) {
        Start::Cannot(why) => assert!(why.contains("spent its 2 attempts"), "{why}"),
        _ => panic!("no attempt is left"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[test]
fn a_generator_keeps_no_lineage() {
    let (store, lineage) = setup(1 << 30);
    let r = result(&store);
    let mut generator = spec(&store, 1, 10, Vec::new(), &[r.id()], 3);
    generator.returns = Returns::Stream;
    lineage.record(&generator, &store);
    assert_eq!(lineage.len(), 0);
}

#[test]
fn a_task_that_is_not_retried_keeps_no_lineage() {
    let (store, lineage) = setup(1 << 30);
    let r = result(&store);
    lineage.record(&spec(&store, 1, 10, Vec::new(), &[r.id()], 0), &store);
    assert_eq!(lineage.len(), 0);
    assert_eq!(lineage.bytes(), 0);
    store.node_died(DEAD);
    let calls = Arc::new(AtomicUsize::new(0));
    match lineage.start(r.id(), &store, counting(&calls)) {
        Start::Cannot(why) => assert!(why.contains("max_retries = 0"), "{why}"),
        _ => panic!("no lineage, no reconstruction"),
    }
}

#[test]
fn a_result_freed_before_its_task_ran_elsewhere_keeps_no_lineage() {
    let (store, lineage) = setup(1 << 30);
    let arg = result(&store);
    let r = result(&store);
    let id = r.id();
    drop(r);
    lineage.record(
        &spec(&store, 1, 10, vec![arg.clone().erase()], &[id], 3),
        &store,
    );
    assert_eq!(lineage.len(), 0);
    assert_eq!(lineage.bytes(), 0);
    drop(arg);
    assert!(store.is_empty(), "its arguments are not held either");
}

#[tokio::test]
async fn a_lost_object_awaits_recovery_until_it_ends_or_the_object_is_freed() {
    let (store, lineage) = setup(1 << 30);
    let a = result(&store);
    let b = result(&store);
    assert!(!lineage.awaits_recovery(a.id()));
    lineage.mark_lost([a.id(), b.id()]);
    assert!(lineage.awaits_recovery(a.id()) && lineage.awaits_recovery(b.id()));
    // No recovery set: nothing to wait for.
    assert!(lineage.recover(a.id()).await.is_ok());
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    lineage.set_recover(Box::new(move |id| {
        seen.lock().unwrap().push(id);
        Box::pin(async { Ok(()) })
    }));
    assert!(lineage.recover(a.id()).await.is_ok());
    assert_eq!(*asked.lock().unwrap(), [a.id()]);
    lineage.recovered(a.id());
    assert!(!lineage.awaits_recovery(a.id()), "its recovery ended");
    assert!(lineage.recover(a.id()).await.is_ok());
    assert_eq!(asked.lock().unwrap().len(), 1, "not asked again");
    drop(b);
    assert_eq!(
        lineage.lost_count.load(Ordering::SeqCst),
        0,
        "freed: forgotten"
    );
}
