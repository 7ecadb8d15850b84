//! Troupe quickstart: tasks, typed actors, objects, a supervised tree and a restart.
//!
//! Run it with `cargo run --release --example quickstart`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use troupe::prelude::*;

/// A remote function: `square::remote(&rt, x)` runs it as a task.
#[troupe::remote]
fn square(x: u64) -> u64 {
    x * x
}

/// Remote functions may be async, and may fail.
#[troupe::remote]
async fn checked_sqrt(x: u64) -> Result<u64, String> {
    let root = (x as f64).sqrt() as u64;
    if root * root == x {
        Ok(root)
    } else {
        Err(format!("{x} is not a perfect square"))
    }
}

/// A stateful actor: a plain struct and its methods.
struct Counter {
    count: u64,
}

#[troupe::actor]
impl Counter {
    /// Adds `by` and returns the new count.
    pub fn incr(&mut self, by: u64) -> u64 {
        self.count += by;
        self.count
    }

    /// Async methods work too; they still run one at a time.
    pub async fn slow_get(&mut self, delay_ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        self.count
    }

    /// Panics on purpose, to show a restart.
    pub fn crash(&mut self) {
        panic!("asked to crash at count {}", self.count);
    }
}

/// An actor that lives in a supervision tree and reports its own starts.
struct Worker {
    label: &'static str,
    starts: u32,
}

#[troupe::actor]
impl Worker {
    pub fn hello(&self) -> String {
        format!("worker {} (start #{})", self.label, self.starts)
    }

    pub fn fail(&mut self) {
        panic!("worker {} failed", self.label);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A plain `fn main`: the runtime brings its own tokio runtime.
    // Inside an existing tokio runtime, use `troupe::init(config).await`.
    // Panics below are on purpose: Troupe reports each on one line, with
    // the task or actor it happened in.
    let rt = Runtime::start(Config::default().name("quickstart"))?;
    println!("runtime started in {:?}", rt.started_in());
    rt.block_on(run(&rt))?;
    rt.block_on(rt.shutdown())?;
    println!("shut down; live actors: {}", rt.live_actors());
    Ok(())
}

async fn run(rt: &Runtime) -> Result<(), Box<dyn std::error::Error>> {
    let mut events = rt.subscribe();

    // 1. A named actor that may restart twice.
    let counter = rt
        .spawn_actor(ActorOptions::new().name("counter").max_restarts(2), || {
            Counter { count: 0 }
        })
        .await?;
    println!("incr -> {}", counter.incr(5).await?);

    // 2. Pipelining: send 1,000 calls, then await them all.
    let pending: Vec<_> = (0..1000).map(|_| counter.incr(1)).collect();
    let mut last = 0;
    for reply in pending {
        last = reply.await?;
    }
    println!("after 1,000 pipelined calls -> {last}");
    println!("slow_get -> {}", counter.slow_get(10).await?);

    // 3. Named lookup, typed.
    let same = rt.get_actor::<Counter>("counter")?;
    println!("looked up {} -> {}", same.info(), same.incr(0).await?);

    // 4. A panic fails the call with a typed error; the actor restarts
    //    (the constructor runs again, so the count starts over).
    match counter.crash().await {
        Err(err) => println!("crash -> {err}"),
        Ok(()) => println!("crash -> unexpectedly returned"),
    }
    println!("after restart: incr -> {}", counter.incr(1).await?);

    // 5. A one-for-all supervision tree: when one worker fails, both restart.
    let starts = Arc::new(AtomicU32::new(0));
    let mut tree = SupervisorSpec::new("workers", Strategy::OneForAll)
        .intensity(Intensity::new(3, Duration::from_secs(5)));
    let mut workers = Vec::new();
    for label in ["a", "b"] {
        let starts = starts.clone();
        let (child, handle) =
            rt.actor_child(ActorOptions::new().max_restarts(None), move || Worker {
                label,
                starts: starts.fetch_add(1, Ordering::SeqCst) + 1,
            })?;
        tree = tree.child(child.restart(Restart::Permanent));
        workers.push(handle);
    }
    let sup = rt.spawn_supervisor(tree).await?;
    for w in &workers {
        println!("{}", w.hello().await?);
    }
    let _ = workers[0].fail().await;
    // The replies wait for the new incarnations: no sleep needed.
    for w in &workers {
        println!("after one_for_all restart: {}", w.hello().await?);
    }
    println!(
        "tree {:?} has {} children",
        sup.name(),
        sup.which_children().await?.len()
    );

    // 6. What the supervisors reported.
    while let Ok(event) = events.try_recv() {
        if let SupervisionEvent::ChildRestarted {
            supervisor,
            child,
            restarts,
        } = event
        {
            println!("event: {supervisor} restarted {child} (restart #{restarts})");
        }
    }

    // 7. Tasks: refs come back at once; refs as arguments chain tasks.
    let squares: Vec<_> = (1..=5).map(|x| square::remote(rt, x)).collect();
    let root = checked_sqrt::remote(rt, &squares[3]);
    let not_square = checked_sqrt::options(TaskOptions::default().max_retries(0)).remote(rt, 17);
    let values: Vec<u64> = rt
        .get_many(&squares, None)
        .await?
        .iter()
        .map(|v| **v)
        .collect();
    println!(
        "squares -> {values:?}; sqrt(16) -> {}",
        rt.get(&root).await?
    );
    match rt.get(&not_square).await {
        Err(err) => println!("sqrt(17) -> {err}"),
        Ok(v) => println!("sqrt(17) -> unexpectedly {v}"),
    }

    // 8. Objects: put moves a value into the node's object store; get shares
    //    it (an Arc, no copy); the object is freed with its last ref.
    let observations = rt.put(vec![0.5f32; 1_000_000]).await?;
    let a = rt.get(&observations).await?;
    let b = rt.get(&observations).await?;
    println!(
        "object {} holds {} floats; two gets share one value: {}",
        observations.id(),
        a.len(),
        Arc::ptr_eq(&a, &b)
    );
    let (ready, _) = rt.wait(vec![observations.clone()], 1, None).await;
    println!("wait -> {} ready", ready.len());
    drop((observations, ready));
    println!(
        "objects left after dropping the refs: {}",
        rt.objects().len()
    );

    // 9. Kill for good: later calls fail fast and the name is free again.
    counter.kill(true).await;
    println!("call after kill -> {}", counter.incr(1).await.unwrap_err());
    println!(
        "lookup after kill -> {}",
        rt.get_actor::<Counter>("counter").unwrap_err()
    );
    Ok(())
}
