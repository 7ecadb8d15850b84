use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;

use super::*;
use crate::ids::NodeId;

#[derive(Clone, Debug)]
struct T {
    id: TaskId,
    deps: Vec<ObjectId>,
    results: Vec<ObjectId>,
    needs: Units,
    retry: RetryPolicy,
    abortable: bool,
}

impl Payload for T {
    fn id(&self) -> TaskId {
        self.id
    }
    fn deps(&self) -> &[ObjectId] {
        &self.deps
    }
    fn results(&self) -> &[ObjectId] {
        &self.results
    }
    fn needs(&self) -> &Units {
        &self.needs
    }
    fn retry(&self) -> RetryPolicy {
        self.retry
    }
    fn abortable(&self) -> bool {
        self.abortable
    }
}

const NODE: NodeId = NodeId(7);

fn obj(seq: u64) -> ObjectId {
    ObjectId { node: NODE, seq }
}

fn cpus(n: i64) -> Units {
    Units {
        cpus: n * 1000,
        ..Units::default()
    }
}

fn task(seq: u64, needs: Units, deps: Vec<ObjectId>) -> T {
    T {
        id: TaskId { node: NODE, seq },
        deps,
        results: vec![obj(1000 + seq)],
        needs,
        retry: RetryPolicy {
            max_retries: 1,
            retry_exceptions: false,
        },
        abortable: false,
    }
}

type S = State<T, u32>;

/// A fake store: which objects are readable here (settled), and which
/// are made on another node; the rest are pending.
#[derive(Default)]
struct Settled(HashSet<ObjectId>, HashSet<ObjectId>);

impl Settled {
    fn f(&self) -> impl Fn(ObjectId) -> Availability + '_ {
        |id| {
            if self.0.contains(&id) {
                Availability::Here
            } else if self.1.contains(&id) {
                Availability::Elsewhere
            } else {
                Availability::Pending
            }
        }
    }
}

fn launched(actions: &Actions<T, u32>) -> Vec<u64> {
    actions.launch.iter().map(|l| l.task.id.seq).collect()
}

#[test]
fn tasks_run_in_order_while_resources_last() {
    let settled = Settled::default();
    let mut s = S::new(cpus(2), 0);
    assert_eq!(
        launched(&s.submit(task(1, cpus(1), vec![]), &settled.f())),
        [1]
    );
    assert_eq!(
        launched(&s.submit(task(2, cpus(1), vec![]), &settled.f())),
        [2]
    );
    assert!(launched(&s.submit(task(3, cpus(1), vec![]), &settled.f())).is_empty());
    assert_eq!(s.counts().queued, 1);
    let a = s.finished(task(1, cpus(1), vec![]).id, Outcome::Done, &settled.f());
    assert_eq!(launched(&a), [3]);
}

#[test]
fn a_task_withdrawn_while_it_waits_for_resources_never_launches_here() {
    let settled = Settled::default();
    let mut s = S::new(cpus(1), 0);
    let (one, two, three) = (
        task(1, cpus(1), vec![]),
        task(2, cpus(1), vec![]),
        task(3, cpus(1), vec![]),
    );
    assert_eq!(launched(&s.submit(one.clone(), &settled.f())), [1]);
    assert!(launched(&s.submit(two.clone(), &settled.f())).is_empty());
    assert!(launched(&s.submit(three.clone(), &settled.f())).is_empty());
    let waiting: Vec<u64> = s
        .waiting_for_resources(8)
        .iter()
        .map(|t| t.id.seq)
        .collect();
    assert_eq!(waiting, [2, 3]);
    assert_eq!(s.waiting_for_resources(1).len(), 1);
    // Two leaves the node (back to its owner): forgotten here, so a
    // cancel of it finds nothing; three stays tracked while it is placed
    // again.
    let gone = s.withdraw_waiting(two.id, true).expect("two waits");
    assert_eq!((gone.task.id, gone.attempt), (two.id, 1));
    assert!(s.cancel(two.results[0], &settled.f()).is_none());
    let moving = s.withdraw_waiting(three.id, false).expect("three waits");
    assert!(s.withdraw_waiting(three.id, false).is_none(), "taken once");
    assert_eq!(s.counts().queued, 0);
    // One ends: nothing is launched in their place, and the CPU is free.
    let a = s.finished(one.id, Outcome::Done, &settled.f());
    assert!(launched(&a).is_empty());
    assert_eq!(s.free(), &cpus(1));
    // Placed here again (the hook chose this node after all), it runs.
    s.requeue(moving).expect("not shut down");
    let mut actions = Actions::default();
    s.step(&settled.f(), &mut actions);
    assert_eq!(launched(&actions), [3]);
}

#[test]
fn a_dependent_waits_under_its_argument_and_runs_when_it_is_done() {
    let mut settled = Settled::default();
    let mut s = S::new(cpus(2), 0);
    let a = task(1, cpus(1), vec![]);
    let b = task(2, cpus(1), a.results.clone());
    assert_eq!(launched(&s.submit(a.clone(), &settled.f())), [1]);
    let actions = s.submit(b, &settled.f());
    assert!(actions.launch.is_empty() && actions.watch.is_empty());
    assert_eq!(s.counts().waiting_for_args, 1);
    settled.0.insert(a.results[0]);
    assert_eq!(
        launched(&s.finished(a.id, Outcome::Done, &settled.f())),
        [2]
    );
}

#[test]
fn an_argument_made_elsewhere_is_watched() {
    let mut settled = Settled::default();
    let mut s = S::new(cpus(1), 0);
    let foreign = ObjectId {
        node: NodeId(99),
        seq: 1,
    };
    let t = task(1, cpus(1), vec![foreign]);
    let actions = s.submit(t.clone(), &settled.f());
    assert_eq!(actions.watch, vec![(t.id, vec![foreign], Wait::Made)]);
    // Made on another node: fetched here before it runs here.
    settled.1.insert(foreign);
    let actions = s.deps_settled(t.id, &settled.f());
    assert_eq!(actions.watch, vec![(t.id, vec![foreign], Wait::Here)]);
    assert!(actions.launch.is_empty());
    settled.1.remove(&foreign);
    settled.0.insert(foreign);
    assert_eq!(launched(&s.deps_settled(t.id, &settled.f())), [1]);
}

#[test]
fn a_task_that_may_leave_is_offered_to_placement_only_once_its_arguments_are_made() {
    let mut settled = Settled::default();
    let mut s = S::new(cpus(1), 0);
    let a = task(1, cpus(1), vec![]);
    let _ = s.submit_routed(a.clone(), Route::Placed, &settled.f());
    // Delegated by the driver (as the placement hook would).
    let queued = Queued {
        task: a.clone(),
        attempt: 1,
        route: Route::Placed,
    };
    s.delegated(queued, NodeId(3));
    // Its dependent, bound for another node too, waits under it: it is
    // not offered to the hook while its argument is not made.
    let b = task(2, cpus(1), a.results.clone());
    let actions = s.submit_routed(b.clone(), Route::Placed, &settled.f());
    assert!(actions.place.is_empty() && actions.watch.is_empty());
    assert_eq!(s.counts().waiting_for_args, 1);
    // Made on node 3: the dependent goes to the hook, and nothing is
    // fetched here for it.
    settled.1.insert(a.results[0]);
    let actions = s.delegated_ended(a.id, 1, Outcome::Done, &settled.f());
    assert_eq!(actions.place.len(), 1);
    assert_eq!(actions.place[0].task.id, b.id);
    assert!(actions.watch.is_empty());
}

#[test]
fn spillback_happens_when_a_ready_task_does_not_fit_here() {
    let settled = Settled::default();
    let mut s = S::new(cpus(1), 0);
    let first = s.submit_routed(task(1, cpus(1), vec![]), Route::HereFirst, &settled.f());
    assert_eq!(launched(&first), [1], "it fits: it runs here");
    let second = s.submit_routed(task(2, cpus(1), vec![]), Route::HereFirst, &settled.f());
    assert!(second.launch.is_empty());
    assert_eq!(
        second.place.len(),
        1,
        "it does not fit now: another node may take it"
    );
    // Placed here after all: it waits its turn here.
    let mut placed = second.place.into_iter().next().unwrap();
    placed.route = Route::HereFirst;
    s.requeue(placed).unwrap();
    let mut actions = Actions::default();
    s.step(&settled.f(), &mut actions);
    assert!(actions.place.is_empty(), "not offered again");
    assert_eq!(s.counts().queued, 1);
    // A node that cannot run it refuses it: the same attempt is placed again.
    s.delegated(
        Queued {
            task: task(3, cpus(1), vec![]),
            attempt: 2,
            route: Route::Placed,
        },
        NodeId(5),
    );
    assert!(
        s.delegated_refused(task(3, cpus(1), vec![]).id, 1)
            .place
            .is_empty(),
        "an earlier attempt's refusal"
    );
    let again = s.delegated_refused(task(3, cpus(1), vec![]).id, 2);
    assert_eq!(again.place.len(), 1);
    assert_eq!(again.place[0].attempt, 2, "a refusal is not an attempt");
}

#[test]
fn panics_are_retried_up_to_max_retries_and_errors_only_when_asked() {
    let settled = Settled::default();
    let mut s = S::new(cpus(1), 0);
    let t = task(1, cpus(1), vec![]);
    let _ = s.submit(t.clone(), &settled.f());
    let a = s.finished(
        t.id,
        Outcome::Failed(Failure::Panicked("boom".into())),
        &settled.f(),
    );
    let retried: Vec<_> = a.retried.iter().map(|(t, n, _)| (t.id, *n)).collect();
    assert_eq!(retried, vec![(t.id, 1)]);
    assert_eq!(a.launch[0].attempt, 2);
    let a = s.finished(
        t.id,
        Outcome::Failed(Failure::Panicked("boom".into())),
        &settled.f(),
    );
    match &a.give_up[..] {
        [(_, GiveUp::Failed { attempts: 2, .. })] => {}
        other => panic!("expected a give-up after 2 attempts, got {other:?}"),
    }
    let e = task(2, cpus(1), vec![]);
    let _ = s.submit(e.clone(), &settled.f());
    let err = Failure::Error(troupe_objects::Cause::new(std::io::Error::other("no")));
    let a = s.finished(e.id, Outcome::Failed(err), &settled.f());
    assert!(
        a.retried.is_empty(),
        "an Err is not retried without retry_exceptions"
    );
    assert_eq!(a.give_up.len(), 1);
}

#[test]
fn the_state_api_sees_each_task_where_it_is_and_done_is_reported_once() {
    let mut settled = Settled::default();
    let mut s = S::new(cpus(1), 0);
    let running = task(1, cpus(1), vec![]);
    let queued = task(2, cpus(1), vec![]);
    let waiting = task(3, cpus(1), running.results.clone());
    for t in [&running, &queued, &waiting] {
        let _ = s.submit(t.clone(), &settled.f());
    }
    let stage_of = |s: &S, seq: u64| {
        s.list(10, &|_, _| true)
            .into_iter()
            .find(|(t, ..)| t.id.seq == seq)
            .map(|(_, stage, attempt)| (stage, attempt))
    };
    assert_eq!(stage_of(&s, 1), Some((Stage::Running, 1)));
    assert_eq!(stage_of(&s, 2), Some((Stage::Queued, 1)));
    assert_eq!(stage_of(&s, 3), Some((Stage::WaitingForArgs, 1)));
    let only_queued = s.list(10, &|_, stage| stage == Stage::Queued);
    assert_eq!(only_queued.len(), 1);
    assert_eq!(s.list(1, &|_, _| true).len(), 1, "the limit holds");

    settled.0.extend(running.results.iter().copied());
    let a = s.finished(running.id, Outcome::Done, &settled.f());
    let done: Vec<_> = a.done.iter().map(|(t, n)| (t.id.seq, *n)).collect();
    assert_eq!(done, [(1, 1)]);
    assert_eq!(stage_of(&s, 1), None, "finished tasks leave the scheduler");
}

#[test]
fn cancel_is_exact_about_where_the_task_was() {
    let settled = Settled::default();
    let mut s = S::new(cpus(1), 0);
    let running = task(1, cpus(1), vec![]);
    let queued = task(2, cpus(1), vec![]);
    let _ = s.submit(running.clone(), &settled.f());
    let _ = s.submit(queued.clone(), &settled.f());
    let (stage, a) = s.cancel(queued.results[0], &settled.f()).unwrap();
    assert_eq!(stage, Stage::Queued);
    assert!(matches!(a.give_up[..], [(_, GiveUp::Cancelled)]));
    // A sync body cannot be stopped: cancelled, it runs on, and its end
    // gives nothing up a second time.
    let (stage, a) = s.cancel(running.results[0], &settled.f()).unwrap();
    assert_eq!(stage, Stage::Running);
    assert!(a.abort.is_empty());
    let a = s.finished(running.id, Outcome::Done, &settled.f());
    assert!(a.give_up.is_empty());
    assert!(
        s.cancel(running.results[0], &settled.f()).is_none(),
        "finished: nothing to cancel"
    );
    // An async body is aborted and its resources come back at once.
    let mut abortable = task(3, cpus(1), vec![]);
    abortable.abortable = true;
    let _ = s.submit(abortable.clone(), &settled.f());
    let next = task(4, cpus(1), vec![]);
    let _ = s.submit(next, &settled.f());
    let (_, a) = s.cancel(abortable.results[0], &settled.f()).unwrap();
    assert_eq!(
        a.abort.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![abortable.id]
    );
    assert_eq!(launched(&a), [4], "its CPU went to the next task");
}

#[test]
fn lent_cpus_let_another_task_run() {
    let settled = Settled::default();
    let mut s = S::new(cpus(1), 0);
    let outer = task(1, cpus(1), vec![]);
    let inner = task(2, cpus(1), vec![]);
    let _ = s.submit(outer.clone(), &settled.f());
    assert!(launched(&s.submit(inner.clone(), &settled.f())).is_empty());
    let (lent, a) = s.lend(outer.id, &settled.f());
    assert!(lent);
    assert_eq!(launched(&a), [2]);
    s.unlend(outer.id);
    assert_eq!(s.free().cpus, -1000, "oversubscribed for a moment");
    let _ = s.finished(inner.id, Outcome::Done, &settled.f());
    let _ = s.finished(outer.id, Outcome::Done, &settled.f());
    assert_eq!(s.free(), s.capacity());
}

#[test]
fn waiting_actors_are_granted_first_when_resources_come_back() {
    let settled = Settled::default();
    let mut s = S::new(cpus(2), 0);
    let t = task(1, cpus(1), vec![]);
    let _ = s.submit(t.clone(), &settled.f());
    // The actor wants both CPUs: it waits.
    assert_eq!(s.reserve(cpus(2), 7).ok(), Some(None));
    let a = s.finished(t.id, Outcome::Done, &settled.f());
    assert_eq!(a.grants.len(), 1, "granted as soon as both are free");
    assert_eq!(a.grants[0].0, 7);
    // Tasks queued meanwhile wait for the actor to give them back.
    assert!(launched(&s.submit(task(2, cpus(1), vec![]), &settled.f())).is_empty());
    assert!(matches!(
        s.reserve(cpus(3), 8),
        Err((8, ReserveError::Infeasible))
    ));
    let grant = a.grants.into_iter().next().unwrap().1;
    assert_eq!(launched(&s.release_grant(&grant, &settled.f())), [2]);
    // Two waiting actors are granted in the order they asked.
    assert_eq!(s.reserve(cpus(2), 1).ok(), Some(None));
    assert_eq!(s.reserve(cpus(1), 2).ok(), Some(None));
    let a = s.finished(task(2, cpus(1), vec![]).id, Outcome::Done, &settled.f());
    assert_eq!(a.grants.iter().map(|g| g.0).collect::<Vec<_>>(), [1]);
}

#[test]
fn shutdown_gives_everything_up_and_aborts_async_attempts() {
    let settled = Settled::default();
    let mut s = S::new(cpus(1), 0);
    let mut running = task(1, cpus(1), vec![]);
    running.abortable = true;
    let _ = s.submit(running.clone(), &settled.f());
    let _ = s.submit(task(2, cpus(1), vec![]), &settled.f());
    let _ = s.submit(task(3, cpus(1), vec![obj(1001)]), &settled.f());
    let a = s.shut_down();
    assert_eq!(
        a.abort.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![running.id]
    );
    assert_eq!(a.give_up.len(), 3);
    assert!(a
        .give_up
        .iter()
        .all(|(_, why)| matches!(why, GiveUp::ShutDown)));
    assert!(matches!(
        s.submit(task(4, cpus(1), vec![]), &settled.f()).give_up[..],
        [(_, GiveUp::ShutDown)]
    ));
}

#[test]
fn tasks_on_a_dead_node_are_retried_through_placement() {
    let settled = Settled::default();
    let mut s = S::new(cpus(1), 0);
    let t = task(1, cpus(4), vec![]);
    s.delegated(
        Queued {
            task: t.clone(),
            attempt: 1,
            route: Route::Placed,
        },
        NodeId(3),
    );
    assert_eq!(s.counts().delegated, 1);
    let a = s.node_died(NodeId(3), &settled.f());
    assert_eq!(a.place.len(), 1);
    assert_eq!(a.place[0].attempt, 2);
    assert!(matches!(
        a.retried[..],
        [(_, 1, Failure::NodeDied(NodeId(3)))]
    ));
    // No node fits it now: it waits, then fails as its attempt did.
    let retry = a.place.into_iter().next().unwrap();
    let _ = s.park_unplaced(retry);
    assert_eq!(s.counts().unplaced, 1);
    let a = s.unplaced_expired(t.id, 1, Failure::NodeDied(NodeId(3)), &settled.f());
    assert!(
        a.give_up.is_empty(),
        "another attempt's expiry changes nothing"
    );
    let a = s.unplaced_expired(t.id, 2, Failure::NodeDied(NodeId(3)), &settled.f());
    assert!(matches!(
        a.give_up[..],
        [(
            _,
            GiveUp::Failed {
                attempts: 1,
                failure: Failure::NodeDied(NodeId(3))
            }
        )]
    ));
    assert_eq!(s.counts().unplaced, 0);
}

// ---------------------------------------------------------------------------
// Properties, over random sequences of events.

#[derive(Clone, Debug)]
enum Op {
    Submit {
        cpus: i64,
        dep: Option<usize>,
        abortable: bool,
    },
    Finish {
        which: usize,
        ok: bool,
    },
    Cancel {
        which: usize,
    },
    Lend {
        which: usize,
    },
    Unlend {
        which: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0i64..3, proptest::option::of(0usize..40), any::<bool>()).prop_map(
            |(cpus, dep, abortable)| Op::Submit {
                cpus,
                dep,
                abortable
            }
        ),
        (0usize..40, any::<bool>()).prop_map(|(which, ok)| Op::Finish { which, ok }),
        (0usize..40).prop_map(|which| Op::Cancel { which }),
        (0usize..40).prop_map(|which| Op::Lend { which }),
        (0usize..40).prop_map(|which| Op::Unlend { which }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn resources_balance_and_nothing_launches_twice(ops in proptest::collection::vec(op(), 1..120)) {
        let mut s = S::new(cpus(3), 0);
        let mut settled = Settled::default();
        let mut tasks: Vec<T> = Vec::new();
        // task seq -> running attempt number (to catch a double launch)
        let mut running: BTreeMap<u64, u32> = BTreeMap::new();
        let mut lent: BTreeMap<u64, u32> = BTreeMap::new();
        let mut ended: HashSet<u64> = HashSet::new();
        let mut given_up: HashSet<u64> = HashSet::new();
        let done: std::cell::RefCell<HashSet<u64>> = Default::default();
        let apply = |a: Actions<T, u32>, running: &mut BTreeMap<u64, u32>,
                         settled: &mut Settled, given_up: &mut HashSet<u64>, lent: &mut BTreeMap<u64, u32>| {
            for (t, _) in &a.done {
                prop_assert!(done.borrow_mut().insert(t.id.seq), "reported done twice");
                prop_assert!(!given_up.contains(&t.id.seq), "done after it was given up");
            }
            for l in &a.launch {
                prop_assert!(running.insert(l.task.id.seq, l.attempt).is_none(), "launched twice");
            }
            for t in &a.abort {
                running.remove(&t.id.seq);
                lent.remove(&t.id.seq);
            }
            for (t, _) in &a.give_up {
                prop_assert!(given_up.insert(t.id.seq), "given up twice");
                prop_assert!(!done.borrow().contains(&t.id.seq), "given up after it was done");
                settled.0.extend(t.results.iter().copied());
            }
            Ok(())
        };
        for op in ops {
            match op {
                Op::Submit { cpus: n, dep, abortable } => {
                    let seq = tasks.len() as u64;
                    let deps = dep.and_then(|d| tasks.get(d)).map(|t: &T| t.results.clone()).unwrap_or_default();
                    let mut t = task(seq, self::cpus(n), deps);
                    t.abortable = abortable;
                    tasks.push(t.clone());
                    let a = s.submit(t, &settled.f());
                    apply(a, &mut running, &mut settled, &mut given_up, &mut lent)?;
                }
                Op::Finish { which, ok } => {
                    if let Some((&seq, _)) = running.iter().nth(which % running.len().max(1)) {
                        running.remove(&seq);
                        lent.remove(&seq);
                        let t = &tasks[seq as usize];
                        let outcome = if ok {
                            settled.0.extend(t.results.iter().copied());
                            ended.insert(seq);
                            Outcome::Done
                        } else {
                            Outcome::Failed(Failure::Panicked("p".into()))
                        };
                        let a = s.finished(t.id, outcome, &settled.f());
                        let gave: Vec<_> = a.give_up.iter().flat_map(|(t, _)| t.results.clone()).collect();
                        apply(a, &mut running, &mut settled, &mut given_up, &mut lent)?;
                        let a = s.settled(&gave, &settled.f());
                        apply(a, &mut running, &mut settled, &mut given_up, &mut lent)?;
                    }
                }
                Op::Cancel { which } => {
                    if let Some(t) = tasks.get(which) {
                        let cancelled = s.cancel(t.results[0], &settled.f());
                        if let Some((_, a)) = cancelled {
                            let gave: Vec<_> = a.give_up.iter().flat_map(|(t, _)| t.results.clone()).collect();
                            apply(a, &mut running, &mut settled, &mut given_up, &mut lent)?;
                            let a = s.settled(&gave, &settled.f());
                            apply(a, &mut running, &mut settled, &mut given_up, &mut lent)?;
                        }
                    }
                }
                Op::Lend { which } => {
                    if let Some(t) = tasks.get(which) {
                        let (ok, a) = s.lend(t.id, &settled.f());
                        if ok {
                            *lent.entry(t.id.seq).or_default() += 1;
                        }
                        apply(a, &mut running, &mut settled, &mut given_up, &mut lent)?;
                    }
                }
                Op::Unlend { which } => {
                    if let Some(t) = tasks.get(which) {
                        if let Some(n) = lent.get_mut(&t.id.seq) {
                            s.unlend(t.id);
                            *n -= 1;
                            if *n == 0 {
                                lent.remove(&t.id.seq);
                            }
                        }
                    }
                }
            }
            // Free plus what running attempts hold is the capacity.
            let held: i64 = running
                .keys()
                .filter(|seq| !lent.contains_key(seq))
                .map(|seq| tasks[*seq as usize].needs.cpus)
                .sum();
            prop_assert_eq!(s.free().cpus + held, 3000);
            // The state API lists every unfinished task once.
            let listed = s.list(usize::MAX, &|_, _| true);
            let c = s.counts();
            prop_assert_eq!(listed.len(), c.queued + c.waiting_for_args + c.running + c.unplaced + c.delegated);
            let ids: HashSet<u64> = listed.iter().map(|(t, ..)| t.id.seq).collect();
            prop_assert_eq!(ids.len(), listed.len(), "listed twice");
        }
        // Drain: finish whatever runs until nothing does.
        for _ in 0..1000 {
            let Some((&seq, _)) = running.iter().next() else { break };
            running.remove(&seq);
            lent.remove(&seq);
            let t = &tasks[seq as usize];
            settled.0.extend(t.results.iter().copied());
            let a = s.finished(t.id, Outcome::Done, &settled.f());
            apply(a, &mut running, &mut settled, &mut given_up, &mut lent)?;
        }
        prop_assert_eq!(s.free().cpus, 3000, "everything given back");
    }
}

#[test]
fn an_attempt_replaced_by_a_retry_ends_without_touching_the_retry() {
    // Node 3 dies: the directory's verdict retries the attempt there; the
    // transport's failure of the same attempt comes after, and must not end
    // (and retry again) the attempt that replaced it on node 4.
    let settled = Settled::default();
    let mut s = S::new(cpus(1), 0);
    let mut t = task(1, cpus(1), vec![]);
    t.retry.max_retries = 3;
    let _ = s.submit_routed(t.clone(), Route::Placed, &settled.f());
    let queued = |attempt| Queued {
        task: t.clone(),
        attempt,
        route: Route::Placed,
    };
    s.delegated(queued(1), NodeId(3));
    let retried = s.node_died(NodeId(3), &settled.f());
    assert_eq!(retried.place.len(), 1);
    assert_eq!(retried.place[0].attempt, 2);
    s.delegated(queued(2), NodeId(4));
    let stale = s.delegated_ended(
        t.id,
        1,
        Outcome::Failed(Failure::NodeDied(NodeId(3))),
        &settled.f(),
    );
    assert!(
        stale.place.is_empty() && stale.give_up.is_empty() && stale.retried.is_empty(),
        "the replaced attempt's end changed the retry"
    );
    let done = s.delegated_ended(t.id, 2, Outcome::Done, &settled.f());
    assert!(done.place.is_empty());
    assert_eq!(s.counts().running + s.counts().queued, 0);
}
