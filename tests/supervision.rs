//! OTP supervisor semantics: strategies, restart types, intensity and
//! escalation, ordered shutdown, failed starts, dynamic children, events.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, next_event, within, Log, Probe, ProbeMsg};
use ractor::{ActorCell, ActorProcessingErr, ActorRef};
use troupe::prelude::*;
use troupe::supervisor::{ChildInfo, EventBus};
use troupe::SupervisorError;

fn probe(name: &'static str, log: &Log) -> ChildSpec {
    ChildSpec::new(name, Probe::new(name, log), ())
}

async fn children(sup: &SupervisorRef) -> Vec<ChildInfo> {
    sup.which_children().await.expect("supervisor answers")
}

async fn cell_of(sup: &SupervisorRef, id: &str) -> ActorCell {
    children(sup)
        .await
        .into_iter()
        .find(|c| &*c.id == id)
        .and_then(|c| c.actor)
        .unwrap_or_else(|| panic!("no running child {id}"))
}

fn crash(cell: &ActorCell) {
    cell.send_message(ProbeMsg::Crash)
        .expect("child is running");
}

fn restarted(sup: &'static str, child: &'static str) -> impl FnMut(&SupervisionEvent) -> bool {
    move |e| matches!(e, SupervisionEvent::ChildRestarted { supervisor, child: c, .. } if &**supervisor == sup && &**c == child)
}

async fn spawn_tree(strategy: Strategy, log: &Log, bus: &EventBus) -> SupervisorRef {
    let spec = SupervisorSpec::new("tree", strategy)
        .events(bus.clone())
        .child(probe("a", log))
        .child(probe("b", log))
        .child(probe("c", log));
    Supervisor::spawn(spec).await.expect("tree starts")
}

#[tokio::test]
async fn children_start_in_order_and_stop_in_reverse() {
    let log = Log::default();
    let sup = spawn_tree(Strategy::OneForOne, &log, &EventBus::new(64)).await;
    assert_eq!(log.lines(), ["start a", "start b", "start c"]);
    assert!(sup.stop(Duration::from_secs(5)).await);
    assert_eq!(
        log.lines(),
        ["start a", "start b", "start c", "stop c", "stop b", "stop a"]
    );
}

#[tokio::test]
async fn one_for_one_restarts_only_the_failed_child() {
    let log = Log::default();
    let bus = EventBus::new(64);
    let mut rx = bus.subscribe();
    let sup = spawn_tree(Strategy::OneForOne, &log, &bus).await;
    crash(&cell_of(&sup, "b").await);
    next_event(&mut rx, restarted("tree", "b")).await;
    assert_eq!(log.count("start a"), 1);
    assert_eq!(log.count("start b"), 2);
    assert_eq!(log.count("start c"), 1);
    let infos = children(&sup).await;
    assert_eq!(
        infos.iter().map(|c| c.restarts).collect::<Vec<_>>(),
        [0, 1, 0]
    );
    sup.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn one_for_all_restarts_every_child_in_order() {
    let log = Log::default();
    let bus = EventBus::new(64);
    let mut rx = bus.subscribe();
    let sup = spawn_tree(Strategy::OneForAll, &log, &bus).await;
    crash(&cell_of(&sup, "b").await);
    next_event(&mut rx, restarted("tree", "c")).await;
    // b crashed (no post_stop); c and a were stopped in reverse order, then
    // all three started again in order.
    assert_eq!(
        log.lines()[3..],
        ["stop c", "stop a", "start a", "start b", "start c"]
    );
    sup.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn rest_for_one_restarts_the_failed_child_and_those_after_it() {
    let log = Log::default();
    let bus = EventBus::new(64);
    let mut rx = bus.subscribe();
    let sup = spawn_tree(Strategy::RestForOne, &log, &bus).await;
    crash(&cell_of(&sup, "b").await);
    next_event(&mut rx, restarted("tree", "c")).await;
    assert_eq!(log.lines()[3..], ["stop c", "start b", "start c"]);
    assert_eq!(log.count("start a"), 1);
    sup.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn restart_types_decide_on_normal_and_abnormal_exits() {
    let log = Log::default();
    let bus = EventBus::new(64);
    let mut rx = bus.subscribe();
    let spec = SupervisorSpec::new("types", Strategy::OneForOne)
        .events(bus.clone())
        .child(probe("perm", &log).restart(Restart::Permanent))
        .child(probe("trans", &log).restart(Restart::Transient))
        .child(probe("temp", &log).restart(Restart::Temporary));
    let sup = Supervisor::spawn(spec).await.unwrap();

    // A normal stop: only the permanent child comes back.
    for id in ["perm", "trans", "temp"] {
        cell_of(&sup, id)
            .await
            .send_message(ProbeMsg::Stop)
            .unwrap();
    }
    next_event(&mut rx, restarted("types", "perm")).await;
    eventually(
        "transient and temporary removed after a normal exit",
        || log.count("stop trans") == 1 && log.count("stop temp") == 1,
    )
    .await;
    let ids = |infos: Vec<ChildInfo>| {
        infos
            .into_iter()
            .map(|c| c.id.to_string())
            .collect::<Vec<_>>()
    };
    within("children listed", async {
        loop {
            if ids(children(&sup).await) == ["perm"] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;

    // A crash: a transient child comes back, a temporary one does not.
    let trans = sup
        .start_child(probe("trans2", &log).restart(Restart::Transient))
        .await
        .unwrap();
    let temp = sup
        .start_child(probe("temp2", &log).restart(Restart::Temporary))
        .await
        .unwrap();
    assert!(trans < temp);
    crash(&cell_of(&sup, "trans2").await);
    crash(&cell_of(&sup, "temp2").await);
    next_event(&mut rx, restarted("types", "trans2")).await;
    next_event(
        &mut rx,
        |e| matches!(e, SupervisionEvent::ChildRemoved { child, .. } if &**child == "temp2"),
    )
    .await;
    assert_eq!(ids(children(&sup).await), ["perm", "trans2"]);
    sup.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn intensity_exceeded_escalates_two_levels() {
    let log = Log::default();
    let bus = EventBus::new(256);
    let mut rx = bus.subscribe();
    let mid = SupervisorSpec::new("mid", Strategy::OneForOne)
        .intensity(Intensity::new(1, Duration::from_secs(60)))
        .child(probe("leaf", &log))
        .child(probe("sibling", &log));
    let top = SupervisorSpec::new("top", Strategy::OneForOne)
        .intensity(Intensity::new(0, Duration::from_secs(60)))
        .events(bus.clone())
        .child(ChildSpec::supervisor(mid));
    let top = Supervisor::spawn(top).await.unwrap();
    let mid_ref: ractor::ActorRef<troupe::supervisor::SupervisorMsg> =
        children(&top).await[0].actor.clone().unwrap().into();

    let leaf = |mid: ractor::ActorRef<troupe::supervisor::SupervisorMsg>| async move {
        let infos = mid
            .call(troupe::supervisor::SupervisorMsg::WhichChildren, None)
            .await
            .unwrap()
            .unwrap();
        infos[0].actor.clone().unwrap()
    };
    crash(&leaf(mid_ref.clone()).await);
    next_event(&mut rx, restarted("mid", "leaf")).await;
    crash(&leaf(mid_ref.clone()).await);

    let first = next_event(&mut rx, |e| {
        matches!(e, SupervisionEvent::IntensityExceeded { .. })
    })
    .await;
    assert!(
        matches!(first, SupervisionEvent::IntensityExceeded { supervisor, max_restarts: 1, .. } if &*supervisor == "mid")
    );
    let second = next_event(&mut rx, |e| {
        matches!(e, SupervisionEvent::IntensityExceeded { .. })
    })
    .await;
    assert!(
        matches!(second, SupervisionEvent::IntensityExceeded { supervisor, max_restarts: 0, .. } if &*supervisor == "top")
    );
    eventually("top supervisor failed", || !top.is_alive()).await;
    // mid stopped its surviving child in order before failing.
    assert_eq!(log.count("stop sibling"), 1);
    assert_eq!(
        log.count("start leaf"),
        2,
        "leaf was not restarted past the intensity"
    );
}

#[tokio::test]
async fn child_ignoring_stop_is_killed_after_its_timeout() {
    let log = Log::default();
    let spec = SupervisorSpec::new("stubborn", Strategy::OneForOne)
        .child(probe("polite", &log))
        .child(probe("hung", &log).shutdown(Shutdown::Timeout(Duration::from_millis(200))));
    let sup = Supervisor::spawn(spec).await.unwrap();
    let hung = cell_of(&sup, "hung").await;
    hung.send_message(ProbeMsg::Hang).unwrap();
    let began = Instant::now();
    assert!(
        sup.stop(Duration::from_secs(10)).await,
        "ordered stop finished"
    );
    assert!(
        began.elapsed() >= Duration::from_millis(200),
        "waited for the timeout first"
    );
    assert_eq!(hung.get_status(), ractor::ActorStatus::Stopped);
    // The hung child was killed (no post_stop), then the polite one stopped.
    assert_eq!(log.count("stop hung"), 0);
    assert_eq!(log.lines().last().map(String::as_str), Some("stop polite"));
}

#[tokio::test]
async fn brutal_shutdown_kills_without_waiting() {
    let log = Log::default();
    let spec = SupervisorSpec::new("brutal", Strategy::OneForOne)
        .child(probe("hung", &log).shutdown(Shutdown::Brutal));
    let sup = Supervisor::spawn(spec).await.unwrap();
    let hung = cell_of(&sup, "hung").await;
    hung.send_message(ProbeMsg::Hang).unwrap();
    assert!(sup.stop(Duration::from_secs(10)).await);
    assert_eq!(hung.get_status(), ractor::ActorStatus::Stopped);
}

#[tokio::test]
async fn panic_in_pre_start_fails_the_start_not_the_caller() {
    let log = Log::default();
    let mut bad = Probe::new("bad", &log);
    bad.fail_starts = vec![1];
    let spec = SupervisorSpec::new("starts", Strategy::OneForOne)
        .child(probe("good", &log))
        .child(ChildSpec::new("bad", bad, ()))
        .child(probe("never", &log));
    let err = Supervisor::spawn(spec)
        .await
        .expect_err("a child failed to start");
    let text = err.to_string();
    assert!(
        text.contains("bad") && text.contains("refuses start #1"),
        "{text}"
    );
    // The child started before it was stopped again; the one after never ran.
    assert_eq!(log.lines(), ["start good", "start bad", "stop good"]);
}

#[tokio::test]
async fn failed_restart_is_retried_and_counts_against_intensity() {
    let log = Log::default();
    let bus = EventBus::new(64);
    let mut rx = bus.subscribe();
    let mut flaky = Probe::new("flaky", &log);
    flaky.fail_starts = vec![2]; // the first restart fails, the second works
    let spec = SupervisorSpec::new("retry", Strategy::OneForOne)
        .events(bus.clone())
        .child(ChildSpec::new("flaky", flaky, ()));
    let sup = Supervisor::spawn(spec).await.unwrap();
    crash(&cell_of(&sup, "flaky").await);
    next_event(&mut rx, |e| {
        matches!(e, SupervisionEvent::ChildStartFailed { .. })
    })
    .await;
    next_event(&mut rx, restarted("retry", "flaky")).await;
    assert_eq!(log.count("start flaky"), 3);
    assert!(sup.is_alive());
    sup.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn backoff_delays_restarts() {
    let log = Log::default();
    let bus = EventBus::new(64);
    let mut rx = bus.subscribe();
    let spec = SupervisorSpec::new("slow", Strategy::OneForOne)
        .events(bus.clone())
        .backoff(Backoff::exponential(
            Duration::from_millis(150),
            Duration::from_secs(1),
        ))
        .child(probe("w", &log));
    let sup = Supervisor::spawn(spec).await.unwrap();
    let began = Instant::now();
    crash(&cell_of(&sup, "w").await);
    next_event(&mut rx, restarted("slow", "w")).await;
    assert!(began.elapsed() >= Duration::from_millis(150));
    sup.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn dynamic_children_are_added_and_removed_at_run_time() {
    let log = Log::default();
    let sup = Supervisor::spawn(SupervisorSpec::dynamic("pool"))
        .await
        .unwrap();
    let mut keys = Vec::new();
    for name in ["w1", "w2", "w3"] {
        keys.push(sup.start_child(probe(name, &log)).await.unwrap());
    }
    assert_eq!(children(&sup).await.len(), 3);
    sup.terminate_child(keys[1]).await.unwrap();
    assert_eq!(log.count("stop w2"), 1);
    let left: Vec<String> = children(&sup)
        .await
        .iter()
        .map(|c| c.id.to_string())
        .collect();
    assert_eq!(left, ["w1", "w3"]);
    let err = sup.terminate_child(keys[1]).await.unwrap_err();
    assert!(
        matches!(err, troupe::SupervisorError::NoSuchChild { .. }),
        "{err}"
    );

    let mut bad = Probe::new("bad", &log);
    bad.fail_starts = vec![1];
    let err = sup
        .start_child(ChildSpec::new("bad", bad, ()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refuses start #1"), "{err}");
    assert_eq!(children(&sup).await.len(), 2);
    sup.stop(Duration::from_secs(5)).await;
    assert_eq!(
        log.lines()
            .iter()
            .filter(|l| l.starts_with("stop"))
            .cloned()
            .collect::<Vec<_>>(),
        ["stop w2", "stop w3", "stop w1"]
    );
}

#[tokio::test]
async fn per_child_restart_cap_removes_the_child_without_escalating() {
    let log = Log::default();
    let bus = EventBus::new(64);
    let mut rx = bus.subscribe();
    let spec = SupervisorSpec::new("capped", Strategy::OneForOne)
        .unlimited_intensity()
        .events(bus.clone())
        .child(probe("w", &log).max_restarts(Some(1)))
        .child(probe("other", &log));
    let sup = Supervisor::spawn(spec).await.unwrap();
    crash(&cell_of(&sup, "w").await);
    next_event(&mut rx, restarted("capped", "w")).await;
    crash(&cell_of(&sup, "w").await);
    next_event(
        &mut rx,
        |e| matches!(e, SupervisionEvent::ChildRemoved { child, .. } if &**child == "w"),
    )
    .await;
    assert!(sup.is_alive());
    let left: Vec<String> = children(&sup)
        .await
        .iter()
        .map(|c| c.id.to_string())
        .collect();
    assert_eq!(left, ["other"]);
    sup.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn nested_supervisor_stops_its_children_before_its_parent_moves_on() {
    let log = Log::default();
    let inner = SupervisorSpec::new("inner", Strategy::OneForOne)
        .child(probe("i1", &log))
        .child(probe("i2", &log));
    let outer = SupervisorSpec::new("outer", Strategy::OneForOne)
        .child(probe("o1", &log))
        .child(ChildSpec::supervisor(inner))
        .child(probe("o2", &log));
    let sup = Supervisor::spawn(outer).await.unwrap();
    assert_eq!(
        log.lines(),
        ["start o1", "start i1", "start i2", "start o2"]
    );
    sup.stop(Duration::from_secs(5)).await;
    assert_eq!(
        log.lines()[4..],
        ["stop o2", "stop i2", "stop i1", "stop o1"]
    );
}

/// Never finishes stopping.
#[derive(Clone)]
struct Stubborn;

impl ractor::Actor for Stubborn {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<()>, _: &mut ()) -> Result<(), ActorProcessingErr> {
        std::future::pending::<()>().await;
        Ok(())
    }
}

/// `terminate_child` on a child that never stops (`Shutdown::Infinity`)
/// still returns: it does not wait without a timeout.
#[tokio::test]
async fn terminate_child_gives_up_waiting_after_its_timeout() {
    let sup = Supervisor::spawn(SupervisorSpec::dynamic("dyn"))
        .await
        .unwrap();
    let key = sup
        .start_child(ChildSpec::new("stubborn", Stubborn, ()).shutdown(Shutdown::Infinity))
        .await
        .unwrap();
    let err = sup
        .terminate_child_within(key, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, SupervisorError::Timeout { .. }), "{err}");
    sup.stop(Duration::from_millis(100)).await;
}

/// A tree meant for another node (see `tests/cluster.rs` for one running).
#[derive(serde::Serialize, serde::Deserialize)]
struct Elsewhere {
    name: String,
}

impl RemoteTree for Elsewhere {
    const NAME: &'static str = "supervision_tests::Elsewhere";

    fn spec(self, _rt: &Runtime) -> SupervisorSpec {
        SupervisorSpec::new(self.name, Strategy::OneForOne)
    }
}

troupe::remote_tree!(Elsewhere);

/// Without a cluster a remote subtree cannot start, and the supervisor's
/// start fails saying why (instead of hanging or running it here).
#[tokio::test]
async fn a_remote_subtree_without_a_cluster_fails_to_start_saying_why() {
    let rt = troupe::init(Config::default().name("no-cluster"))
        .await
        .unwrap();
    let tree = rt
        .remote_tree_child(
            "tree",
            ActorOptions::new(),
            &Elsewhere {
                name: "far".to_owned(),
            },
        )
        .unwrap();
    let started = within(
        "the supervisor's start",
        rt.spawn_supervisor(SupervisorSpec::new("top", Strategy::OneForOne).child(tree)),
    )
    .await;
    let err = started.expect_err("no cluster to run the tree on");
    assert!(err.to_string().contains("cluster"), "{err}");
    rt.shutdown().await.unwrap();
}

/// A tree whose spec panics, as a user's may.
#[derive(serde::Serialize, serde::Deserialize)]
struct Panicky;

impl RemoteTree for Panicky {
    const NAME: &'static str = "supervision_tests::Panicky";

    fn spec(self, _rt: &Runtime) -> SupervisorSpec {
        panic!("no spec today")
    }
}

troupe::remote_tree!(Panicky);

/// Whether the state API lists a supervisor or child named `name`.
async fn listed(rt: &Runtime, name: &str) -> bool {
    let state = serde_json::to_string(&rt.state().await).expect("state as JSON");
    state.contains(&format!("\"{name}\""))
}

/// What a node does when another asks it to host a subtree (the built-in
/// `troupe::Subtree` actor, spawned by name): the tree's supervisor runs as
/// long as that actor and goes with it; a spec that panics is the spawn's
/// error, and the node runs on.
#[tokio::test]
async fn a_hosted_subtree_lives_as_its_actor_and_a_panicking_spec_is_an_error() {
    let rt = troupe::init(Config::default().name("host")).await.unwrap();
    let err = rt
        .spawn_by_name(
            "troupe::Subtree",
            "new",
            ActorOptions::new(),
            &hosted::<Panicky>(&Panicky),
        )
        .await
        .expect_err("a spec that panics fails the spawn");
    assert!(err.to_string().contains("no spec today"), "{err}");
    let tree = Elsewhere {
        name: "hosted-tree".to_owned(),
    };
    let id = rt
        .spawn_by_name(
            "troupe::Subtree",
            "new",
            ActorOptions::new(),
            &hosted::<Elsewhere>(&tree),
        )
        .await
        .expect("the tree starts here");
    assert!(rt.actor_info(id).is_some());
    assert!(listed(&rt, "hosted-tree").await, "its supervisor runs");
    rt.stop_requested(id, troupe::remote::StopHow::Kill { no_restart: true })
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while listed(&rt, "hosted-tree").await {
        assert!(Instant::now() < deadline, "the tree outlived its actor");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rt.shutdown().await.unwrap();
}

/// Encodes a tree as the `Subtree` constructor reads it: its type's name,
/// then the tree.
fn hosted<T: RemoteTree>(tree: &T) -> Vec<u8> {
    troupe::Encoded::of(&(T::NAME, tree))
        .expect("a tree encodes")
        .bytes
}
