//! The actors that run one-to-one transforms: an ephemeral one per block
//! (a task), or long-lived ones in a pool that grows and shrinks.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use troupe::prelude::*;
use troupe::{ObjectRef, Resources};

use crate::block::Block;
use crate::plan::{BatchFn, MakeStateful, StatefulFn, StepError};

/// How many actors a pool runs, and what each holds.
///
/// The pool starts `min` actors, adds one (up to `max`) whenever a block
/// waits and every actor is busy, and stops actors beyond `min` that stay
/// idle for `idle_timeout`.
#[derive(Clone, Debug, PartialEq)]
pub struct ActorPoolStrategy {
    /// Actors started before the first block, and kept to the end.
    pub min: usize,
    /// The most actors at once.
    pub max: usize,
    /// CPUs each actor holds (default 1).
    pub num_cpus: f64,
    /// GPUs each actor holds (default 0); the actor's `troupe::actor::current()`
    /// lists the ones it was given.
    pub num_gpus: f64,
    /// How long an actor beyond `min` may sit idle before it is stopped.
    pub idle_timeout: Duration,
}

impl ActorPoolStrategy {
    /// A pool of `min..=max` actors with one CPU each.
    pub fn new(min: usize, max: usize) -> Self {
        ActorPoolStrategy {
            min,
            max,
            num_cpus: 1.0,
            num_gpus: 0.0,
            idle_timeout: Duration::from_secs(2),
        }
    }

    /// A pool of exactly `n` actors.
    pub fn fixed(n: usize) -> Self {
        Self::new(n, n)
    }

    /// CPUs per actor.
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.num_cpus = n;
        self
    }

    /// GPUs per actor.
    pub fn num_gpus(mut self, n: f64) -> Self {
        self.num_gpus = n;
        self
    }

    /// How long an actor beyond `min` may idle.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    fn resources(&self) -> Resources {
        Resources::cpus(self.num_cpus).with_gpus(self.num_gpus)
    }
}

/// A block a worker made: in the store, with its size.
pub(crate) struct Applied {
    pub(crate) object: ObjectRef<Block>,
    pub(crate) rows: usize,
    pub(crate) bytes: usize,
}

/// Why a worker could not make its block.
#[derive(Debug)]
pub(crate) enum Failure {
    User(StepError),
    Store(String),
}

/// Runs a transform on blocks it reads from, and puts into, the store.
pub(crate) struct BatchWorker {
    rt: Runtime,
    f: StatefulFn,
}

#[troupe::actor]
impl BatchWorker {
    /// Transforms one block. The user's function runs on this actor's
    /// blocking thread; a panic in it is the block's failure, not the
    /// actor's death.
    #[blocking]
    pub(crate) fn apply(&mut self, input: ObjectRef<Block>) -> Result<Applied, Failure> {
        let block = self
            .rt
            .get_blocking(&input)
            .map_err(|e| Failure::Store(e.to_string()))?;
        let batch = block.0.clone();
        drop(block);
        let f = &mut self.f;
        let out = match catch_unwind(AssertUnwindSafe(|| f(batch))) {
            Ok(out) => out.map_err(Failure::User)?,
            Err(panic) => {
                return Err(Failure::User(StepError {
                    operator: "user function".into(),
                    message: format!("panicked: {}", panic_message(&panic)),
                }))
            }
        };
        let block = Block(out);
        let (rows, bytes) = (block.num_rows(), block.bytes());
        let object = self
            .rt
            .put_blocking(block)
            .map_err(|e| Failure::Store(e.to_string()))?;
        Ok(Applied {
            object,
            rows,
            bytes,
        })
    }
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}

/// Spawns a task-like worker: holds `num_cpus` while it transforms one block.
pub(crate) async fn spawn_task_worker(
    rt: &Runtime,
    num_cpus: f64,
    f: BatchFn,
) -> Result<BatchWorkerHandle, SpawnError> {
    let worker_rt = rt.clone();
    let options = ActorOptions::new().resources(Resources::cpus(num_cpus));
    rt.spawn_actor(options, move || BatchWorker {
        rt: worker_rt.clone(),
        f: {
            let f = f.clone();
            Box::new(move |batch| f(batch))
        },
    })
    .await
}

/// The actors of one pool stage; owned by the stage's driver (no locks).
pub(crate) struct Pool {
    rt: Runtime,
    strategy: ActorPoolStrategy,
    make: MakeStateful,
    idle: Vec<(BatchWorkerHandle, Instant)>,
    /// Actors alive (idle or busy).
    size: usize,
    spawning: FuturesUnordered<BoxFuture<'static, Result<BatchWorkerHandle, String>>>,
    pub(crate) max_seen: usize,
}

impl Pool {
    /// Starts `min` actors (at least one) and waits for them.
    pub(crate) async fn start(
        rt: &Runtime,
        strategy: ActorPoolStrategy,
        make: MakeStateful,
    ) -> Result<Pool, String> {
        if strategy.max == 0 || strategy.min > strategy.max {
            return Err(format!(
                "min {} and max {} must satisfy 1 <= max and min <= max",
                strategy.min, strategy.max
            ));
        }
        let mut pool = Pool {
            rt: rt.clone(),
            strategy,
            make,
            idle: Vec::new(),
            size: 0,
            spawning: FuturesUnordered::new(),
            max_seen: 0,
        };
        for _ in 0..pool.strategy.min.max(1) {
            pool.grow();
        }
        while let Some(spawned) = pool.spawning.next().await {
            pool.add(spawned?);
        }
        Ok(pool)
    }

    /// Starts one more actor, in the background.
    fn grow(&mut self) {
        let rt = self.rt.clone();
        let make = self.make.clone();
        let options = ActorOptions::new().resources(self.strategy.resources());
        self.spawning.push(Box::pin(async move {
            let worker_rt = rt.clone();
            rt.spawn_actor_with(options, move || {
                let (rt, make) = (worker_rt.clone(), make.clone());
                async move { make().map(|f| BatchWorker { rt, f }) }
            })
            .await
            .map_err(|e| e.to_string())
        }));
    }

    fn add(&mut self, handle: BatchWorkerHandle) {
        self.size += 1;
        self.max_seen = self.max_seen.max(self.size);
        self.idle.push((handle, Instant::now()));
    }

    /// An idle actor, if any.
    pub(crate) fn take(&mut self) -> Option<BatchWorkerHandle> {
        self.idle.pop().map(|(h, _)| h)
    }

    /// An actor is done with its block.
    pub(crate) fn give_back(&mut self, handle: BatchWorkerHandle) {
        self.idle.push((handle, Instant::now()));
    }

    pub(crate) fn has_idle(&self) -> bool {
        !self.idle.is_empty()
    }

    /// A block waits and every actor is busy: add one if the pool may.
    pub(crate) fn wanted(&mut self) {
        if self.idle.is_empty()
            && self.spawning.is_empty()
            && self.size + self.spawning.len() < self.strategy.max
        {
            self.grow();
        }
    }

    pub(crate) fn is_spawning(&self) -> bool {
        !self.spawning.is_empty()
    }

    /// The next actor started in the background.
    pub(crate) async fn spawned(&mut self) -> Result<(), String> {
        match self.spawning.next().await {
            Some(Ok(handle)) => {
                self.add(handle);
                Ok(())
            }
            Some(Err(e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Stops actors beyond `min` idle for longer than the timeout.
    pub(crate) fn shrink(&mut self) {
        let floor = self.strategy.min.max(1);
        while self.size > floor {
            let Some(i) = self
                .idle
                .iter()
                .position(|(_, since)| since.elapsed() >= self.strategy.idle_timeout)
            else {
                break;
            };
            let (handle, _) = self.idle.swap_remove(i);
            self.size -= 1;
            tokio::spawn(async move { handle.stop().await });
        }
    }

    /// Stops every actor (busy ones were given back before this is called).
    pub(crate) async fn stop(mut self) {
        while let Some(spawned) = self.spawning.next().await {
            if let Ok(handle) = spawned {
                self.idle.push((handle, Instant::now()));
            }
        }
        for (handle, _) in self.idle.drain(..) {
            handle.stop().await;
        }
    }
}
