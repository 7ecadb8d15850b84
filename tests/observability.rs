//! Seeing what runs, without a network: the state API after a known
//! workload (a restarted actor, a failed task, a tree of your own), the
//! bounded task history, the timeline as a Chrome trace, and the service
//! seam a dashboard plugs into.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::eventually;
use futures::future::BoxFuture;
use troupe::prelude::*;
use troupe::runtime::{
    ChildKind, ChildView, RunningService, RuntimeService, ServiceError, StateQuery, SupervisorView,
};
use troupe::{TaskFilter, TaskState, TimelineError};

#[troupe::remote]
fn double(x: u64) -> u64 {
    x * 2
}

#[troupe::remote]
fn explode(why: String) -> u64 {
    panic!("{why}")
}

#[troupe::remote]
async fn nap(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

struct Flaky {
    calls: u64,
}

#[troupe::actor]
impl Flaky {
    pub fn crash(&mut self, why: String) {
        panic!("{why}")
    }
    pub fn ping(&mut self) -> u64 {
        self.calls += 1;
        self.calls
    }
}

fn find<'a>(view: &'a SupervisorView, path: &str) -> Option<&'a SupervisorView> {
    if view.path == path {
        return Some(view);
    }
    view.children
        .iter()
        .filter_map(|c| c.supervisor.as_ref())
        .find_map(|s| find(s, path))
}

fn child<'a>(view: &'a SupervisorView, id: &str) -> &'a ChildView {
    view.children
        .iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("{} has no child {id}: {view:#?}", view.path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_api_shows_a_known_workload() {
    let rt = troupe::init(Config::default().resources(Resources::cpus(2.0)))
        .await
        .unwrap();

    // An actor supervised in place, restarted once.
    let flaky = rt
        .spawn_actor(ActorOptions::new().name("flaky").max_restarts(3), || {
            Flaky { calls: 0 }
        })
        .await
        .unwrap();
    assert!(flaky.crash("boom in place".into()).await.is_err());
    assert_eq!(
        flaky.ping().await.unwrap(),
        1,
        "a fresh incarnation answers"
    );

    // A tree of your own whose first worker crashes once.
    let (a_spec, a) = rt
        .actor_child(ActorOptions::new().max_restarts(2), || Flaky { calls: 0 })
        .unwrap();
    let (b_spec, _b) = rt
        .actor_child(ActorOptions::new(), || Flaky { calls: 0 })
        .unwrap();
    let workers = rt
        .spawn_supervisor(
            SupervisorSpec::new("workers", Strategy::OneForOne)
                .child(a_spec.restart(Restart::Permanent))
                .child(b_spec),
        )
        .await
        .unwrap();
    assert_eq!(workers.path(), "root/user/workers");
    assert!(a.crash("boom in a tree".into()).await.is_err());
    eventually("the tree restarts its worker", || a.is_alive()).await;
    assert_eq!(a.ping().await.unwrap(), 1);

    // Tasks: five that finish, one that fails for good, one running.
    for i in 0..5 {
        assert_eq!(*rt.get(&double::remote(&rt, i)).await.unwrap(), i * 2);
    }
    let failed =
        explode::options(TaskOptions::default().max_retries(0)).remote(&rt, "no good".to_owned());
    assert!(rt.get(&failed).await.is_err());
    let sleeping = nap::remote(&rt, 60_000);
    eventually("the nap runs", || rt.task_summary().running == 1).await;
    let kept = rt.put(vec![1u8; 1000]).await.unwrap();

    let state = rt.state().await;

    // Nodes and resources.
    assert_eq!(state.nodes.len(), 1);
    let node = &state.nodes[0];
    assert_eq!(node.id, rt.node_id());
    assert!(node.alive);
    assert_eq!(node.resources.num_cpus, 2.0);
    assert_eq!(node.available.num_cpus, 1.0, "the nap holds a CPU");

    // Actors: the in-place one with its restart and why it failed.
    let listed = state
        .actors
        .iter()
        .find(|s| s.info.name.as_deref() == Some("flaky"))
        .expect("flaky is listed");
    assert_eq!(listed.restarts, 1);
    assert_eq!(listed.supervisor, "root/user");
    assert!(listed.in_place);
    let failure = listed.last_failure.as_ref().expect("a last failure");
    assert!(failure.reason.contains("boom in place"), "{failure:?}");
    let in_tree = state
        .actors
        .iter()
        .find(|s| s.info.id == a.id())
        .expect("the tree's worker is listed");
    assert_eq!(in_tree.supervisor, "root/user/workers");
    assert!(!in_tree.in_place);

    // The supervision tree, from the root down to both kinds of actor.
    let tree = &state.supervisors;
    assert_eq!(tree.path, "root");
    let system = find(tree, "root/system").expect("the system subtree");
    assert_eq!(child(system, "object_store").kind, ChildKind::Ractor);
    assert_eq!(child(system, "scheduler").kind, ChildKind::Ractor);
    let user = find(tree, "root/user").expect("the user subtree");
    let flaky_view = child(user, &listed.info.to_string());
    assert_eq!(flaky_view.kind, ChildKind::Actor);
    assert_eq!(flaky_view.restarts, 1);
    assert!(flaky_view.running);
    assert_eq!(
        flaky_view.actor_type.as_deref(),
        Some(listed.info.type_name.as_ref())
    );
    assert_eq!(child(user, "workers").kind, ChildKind::Supervisor);
    let workers_view = find(tree, "root/user/workers").expect("the workers tree");
    assert_eq!(workers_view.children.len(), 2);
    let a_view = &workers_view.children[0];
    assert_eq!(a_view.actor, Some(a.id()));
    assert_eq!(a_view.kind, ChildKind::Actor);
    assert_eq!(a_view.restarts, 1);
    let why = a_view
        .last_failure
        .as_ref()
        .expect("the worker's last failure");
    assert!(why.reason.contains("boom in a tree"), "{why:?}");
    assert_eq!(workers_view.children[1].restarts, 0);
    assert!(workers_view.children[1].last_failure.is_none());

    // Tasks: the failed one with its error, the running one, filters.
    let failed_info = state
        .tasks
        .iter()
        .find(|t| t.state == TaskState::Failed)
        .expect("the failed task is listed");
    assert!(failed_info.function.ends_with("explode"));
    assert_eq!(failed_info.attempt, 1);
    let error = failed_info.error.as_deref().unwrap_or_default();
    assert!(error.contains("no good"), "{error}");
    assert!(failed_info.ended_at_us >= failed_info.started_at_us);
    assert_eq!(state.tasks[0].state, TaskState::Running, "live tasks first");
    assert!(state.tasks[0].function.ends_with("nap"));
    let doubles = rt.tasks(&TaskFilter::new().function("double"));
    assert_eq!(doubles.len(), 5);
    assert!(doubles
        .iter()
        .all(|t| t.state == TaskState::Finished && t.error.is_none()));
    // Newest first, by when the scheduler saw each end (a task's value
    // is stored, and its waiter woken, just before that).
    let ids: std::collections::HashSet<u64> = doubles.iter().map(|t| t.id.seq).collect();
    assert_eq!(ids.len(), 5);
    assert!(doubles[0].id.seq > doubles[4].id.seq);
    assert_eq!(
        rt.tasks(&TaskFilter::new().state(TaskState::Failed)).len(),
        1
    );
    assert_eq!(rt.tasks(&TaskFilter::new().limit(2)).len(), 2);

    // The summary: counts by state and by function.
    let summary = &state.summary;
    assert_eq!(summary.tasks.running, 1);
    let by_name = |name: &str| {
        summary
            .functions
            .iter()
            .find(|f| f.function.ends_with(name))
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {:?}", summary.functions))
    };
    let double_counts = by_name("double");
    assert_eq!((double_counts.submitted, double_counts.finished), (5, 5));
    let explode_counts = by_name("explode");
    assert_eq!((explode_counts.submitted, explode_counts.failed), (1, 1));
    assert_eq!((by_name("nap").running, by_name("nap").pending), (1, 0));
    assert!(summary.actors.alive >= 3);
    assert!(summary.actors.restarts >= 2);
    assert!(summary.objects.objects >= 1);
    assert!(summary.objects.memory_bytes >= 1000);
    assert!(state
        .objects
        .iter()
        .any(|o| o.id == kept.id() && o.refs == 1));

    // The snapshot is serializable as it is (the dashboard serves it).
    let json = serde_json::to_string(&state).unwrap();
    let back: troupe::State = serde_json::from_str(&json).unwrap();
    assert_eq!(back.summary, state.summary);

    // Cancelling the nap shows up as cancelled.
    assert!(rt.cancel(&sleeping, false));
    let cancelled = rt.tasks(&TaskFilter::new().state(TaskState::Cancelled));
    assert_eq!(cancelled.len(), 1);
    assert!(cancelled[0]
        .error
        .as_deref()
        .unwrap_or_default()
        .contains("cancel"));
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_history_is_bounded_and_lists_are_limited() {
    let rt = troupe::init(Config::default().task_history(5))
        .await
        .unwrap();
    let refs: Vec<_> = (0..20).map(|i| double::remote(&rt, i)).collect();
    rt.get_many(&refs, None).await.unwrap();
    // A task's end is recorded just after its value is readable: poll.
    eventually("every end recorded", || {
        rt.summary().functions.first().map(|f| f.finished) == Some(20)
    })
    .await;
    // Counts stay complete whatever the history keeps.
    let finished = rt.tasks(&TaskFilter::new().state(TaskState::Finished));
    assert_eq!(finished.len(), 5, "only the last five are kept");
    let state = rt.state_with(&StateQuery::new().limit(1)).await;
    assert!(state.objects.len() <= 1);
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_is_a_chrome_trace_with_one_event_per_task() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let path = std::env::temp_dir().join(format!("troupe-timeline-{}.json", std::process::id()));
    // Off by default: asking for it says how to turn it on.
    let err = rt.timeline(&path).unwrap_err();
    assert!(matches!(err, TimelineError::NotRecorded), "{err}");
    assert!(err.to_string().contains("record_timeline"), "{err}");

    assert!(rt.record_timeline(true));
    let refs: Vec<_> = (0..10).map(|i| double::remote(&rt, i)).collect();
    rt.get_many(&refs, None).await.unwrap();
    let naps: Vec<_> = (0..3).map(|_| nap::remote(&rt, 1)).collect();
    rt.get_many(&naps, None).await.unwrap();
    let failing =
        explode::options(TaskOptions::default().max_retries(1)).remote(&rt, "twice".to_owned());
    assert!(rt.get(&failing).await.is_err());
    let actor = rt
        .spawn_actor(ActorOptions::new(), || Flaky { calls: 0 })
        .await
        .unwrap();
    for _ in 0..4 {
        actor.ping().await.unwrap();
    }
    rt.record_timeline(false);
    // An attempt's event is recorded just after its value is readable (and
    // it is recorded if recording was on when it started): poll.
    eventually("every event recorded", || {
        rt.timeline_events().0.len() >= 10 + 3 + 2 + 4
    })
    .await;
    // Not recorded: off again.
    rt.get(&double::remote(&rt, 99)).await.unwrap();

    let written = rt.timeline(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let trace: Vec<serde_json::Value> = serde_json::from_str(&text).expect("a JSON array");
    let complete: Vec<&serde_json::Value> = trace.iter().filter(|e| e["ph"] == "X").collect();
    assert_eq!(complete.len(), written);
    let tasks: Vec<_> = complete.iter().filter(|e| e["cat"] == "task").collect();
    // One event per attempt: 10 doubles, 3 naps, 2 attempts of explode.
    assert_eq!(tasks.len(), 15, "{tasks:#?}");
    let ids: std::collections::HashSet<&str> = tasks
        .iter()
        .filter(|e| e["name"].as_str().is_some_and(|n| n.ends_with("double")))
        .map(|e| e["args"]["task"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 10, "one event per task");
    let explode_events: Vec<_> = tasks
        .iter()
        .filter(|e| e["name"].as_str().is_some_and(|n| n.ends_with("explode")))
        .collect();
    assert_eq!(explode_events.len(), 2);
    assert!(explode_events
        .iter()
        .all(|e| e["args"]["error"].as_str().unwrap_or("").contains("twice")));
    let calls: Vec<_> = complete
        .iter()
        .filter(|e| e["cat"] == "actor_call")
        .collect();
    assert_eq!(calls.len(), 4);
    assert_eq!(calls[0]["name"], "Flaky.ping");
    for event in &complete {
        assert!(event["ts"].as_u64().is_some() && event["dur"].as_u64() >= Some(1));
        assert!(event["pid"].as_u64().is_some() && event["tid"].as_u64().is_some());
    }
    let named_threads = trace.iter().filter(|e| e["name"] == "thread_name").count();
    assert!(named_threads >= 1);
    rt.shutdown().await.unwrap();
}

/// A service that records what happens to it.
#[derive(Debug, Clone)]
struct Probe {
    name: &'static str,
    fail: bool,
    log: Arc<Mutex<Vec<String>>>,
    runtime_seen: Arc<AtomicUsize>,
}

struct ProbeRunning {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl RunningService for ProbeRunning {
    fn endpoint(&self) -> Option<String> {
        Some(format!("probe://{}", self.name))
    }
    fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.log.lock().unwrap().push(format!("stop {}", self.name));
        })
    }
}

impl RuntimeService for Probe {
    fn name(&self) -> &str {
        self.name
    }
    fn start(
        &self,
        runtime: &Runtime,
    ) -> BoxFuture<'static, Result<Box<dyn RunningService>, ServiceError>> {
        let this = self.clone();
        let live = runtime.live_actors();
        Box::pin(async move {
            this.runtime_seen.store(live, Ordering::SeqCst);
            this.log
                .lock()
                .unwrap()
                .push(format!("start {}", this.name));
            if this.fail {
                return Err("the port is taken".into());
            }
            Ok(Box::new(ProbeRunning {
                name: this.name,
                log: this.log.clone(),
            }) as Box<dyn RunningService>)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_start_after_boot_and_stop_first_in_reverse_order() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(AtomicUsize::new(0));
    let probe = |name, fail| Probe {
        name,
        fail,
        log: log.clone(),
        runtime_seen: seen.clone(),
    };
    let rt = troupe::init(
        Config::default()
            .service(probe("first", false))
            .service(probe("second", false)),
    )
    .await
    .unwrap();
    assert!(seen.load(Ordering::SeqCst) >= 5, "started on a booted tree");
    let services = rt.services();
    assert_eq!(services.len(), 2);
    assert_eq!(services[1].endpoint.as_deref(), Some("probe://second"));
    rt.shutdown().await.unwrap();
    assert!(rt.services().is_empty());
    assert_eq!(
        *log.lock().unwrap(),
        ["start first", "start second", "stop second", "stop first"]
    );

    // One that fails to start fails init, naming it; the one started
    // before it is stopped again.
    log.lock().unwrap().clear();
    let err = troupe::init(
        Config::default()
            .service(probe("first", false))
            .service(probe("broken", true)),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("broken") && text.contains("port is taken"),
        "{text}"
    );
    assert_eq!(
        *log.lock().unwrap(),
        ["start first", "start broken", "stop first"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weak_runtime_does_not_keep_it_alive() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let weak = rt.downgrade();
    assert!(weak.upgrade().is_some());
    rt.shutdown().await.unwrap();
    drop(rt);
    assert!(weak.upgrade().is_none(), "the last handle dropped it");
}
