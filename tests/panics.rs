//! A panic in a task or an actor is Troupe's to report (one line naming
//! the task or actor); any other panic still reaches the hook the program
//! installed before the runtime started.
//!
//! Alone in its binary: it installs a process-wide panic hook.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use troupe::prelude::*;

#[troupe::remote]
fn explode(n: u64) -> u64 {
    if n > 0 {
        panic!("task exploded at {n}");
    }
    n
}

struct Fragile;

#[troupe::actor]
impl Fragile {
    pub fn break_now(&self) {
        panic!("actor broke")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_in_tasks_and_actors_are_troupes_and_others_reach_the_programs_hook() {
    let seen: Arc<AtomicUsize> = Arc::default();
    let counter = seen.clone();
    std::panic::set_hook(Box::new(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    }));
    let rt = troupe::init(Config::default()).await.expect("a runtime");

    let err = rt
        .get(&explode::remote(&rt, 3))
        .await
        .expect_err("the task panicked");
    assert!(err.to_string().contains("task exploded at 3"), "{err}");
    let fragile = rt
        .spawn_actor(ActorOptions::new(), || Fragile)
        .await
        .expect("spawned");
    assert!(fragile.break_now().await.is_err());
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "the program's hook saw a task's or actor's panic"
    );

    // Outside any task or actor: the program's hook, as before.
    let outside = std::thread::spawn(|| panic!("not Troupe's")).join();
    assert!(outside.is_err());
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    rt.shutdown().await.expect("shut down");
}
