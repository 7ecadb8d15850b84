//! After `shutdown()` not one actor is left in the process.
//!
//! Every actor, Troupe's and ractor's, is a tokio task: this file holds a
//! single test so that the runtime's count of live tasks sees only this
//! test's.

use std::time::Duration;

use troupe::prelude::*;

struct Echo;

#[troupe::actor]
impl Echo {
    pub fn echo(&self, x: u64) -> u64 {
        x
    }
    pub fn crash(&self) {
        panic!("crash")
    }
}

/// Tasks alive on this tokio runtime (the test's own body is not one).
fn actors_in_process() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_actor_survives_shutdown() {
    assert_eq!(actors_in_process(), 0);
    let rt = troupe::init(Config::default()).await.unwrap();
    let mut handles = Vec::new();
    for i in 0..100 {
        let options = ActorOptions::new()
            .name(format!("echo-{i}"))
            .max_restarts(1);
        handles.push(rt.spawn_actor(options, || Echo).await.unwrap());
    }
    // Some restart, some die for good, a tree on top.
    for h in handles.iter().take(10) {
        let _ = h.crash().await;
    }
    let tree = SupervisorSpec::new("tree", Strategy::OneForAll)
        .child(rt.actor_child(ActorOptions::new(), || Echo).unwrap().0)
        .child(rt.actor_child(ActorOptions::new(), || Echo).unwrap().0);
    rt.spawn_supervisor(tree).await.unwrap();
    for h in &handles {
        assert_eq!(h.echo(3).await.unwrap(), 3);
    }
    // root, system, object store, scheduler, user, 100 actors, a tree of 2
    assert_eq!(rt.live_actors(), 5 + 100 + 3);
    // One task per actor, and the object store actor's threshold watcher.
    assert_eq!(actors_in_process(), 5 + 100 + 3 + 1);

    rt.shutdown().await.unwrap();
    // Tasks end just after they report their end; allow that to finish.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while actors_in_process() != 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(actors_in_process(), 0, "actors left after shutdown");
    assert_eq!(rt.live_actors(), 0);
}
