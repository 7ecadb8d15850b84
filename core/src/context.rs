//! The one context of running code: the task or the actor it belongs to,
//! and the runtime that runs it.
//!
//! Async code (task bodies, actor drivers) carries it in a tokio task-local
//! scope, which follows the future across threads and ends with it. Sync
//! code (task bodies on CPU threads, sync actor methods) carries it in a
//! thread-local entered through a [`FrameGuard`], which restores the
//! previous frame when it drops: after a normal return, after a panic, and
//! when frames nest. The innermost frame wins: the thread-local one when
//! set, else the task-local one.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Weak};

use serde::{Deserialize, Serialize};

use crate::ids::{ActorInfo, NodeId, TaskId};
use crate::Resources;

/// Where a task sits in the tree of tasks it belongs to: the task that
/// started the tree (a task submitted outside any task starts its own) and
/// the task that submitted it. It travels in the task's spec, so the spans
/// of every node that runs, places or fetches for a tree carry the same
/// `trace` field: one filter on it follows a job across nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TraceContext {
    /// The task at the top of the tree.
    pub root: TaskId,
    /// The task whose body submitted this one; `None` for the root.
    pub parent: Option<TaskId>,
}

impl troupe_objects::GetSize for TraceContext {}

impl TraceContext {
    /// The context of the task `id`, submitted by the code running now: a
    /// child of the running task, or the root of a new tree.
    pub fn for_new_task(id: TaskId) -> Self {
        match task() {
            Some(running) => TraceContext {
                root: running.trace.root,
                parent: Some(running.task_id),
            },
            None => TraceContext {
                root: id,
                parent: None,
            },
        }
    }
}

/// Where a task runs, readable from its body with
/// [`task::current`](crate::task::current).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskContext {
    /// The task.
    pub task_id: TaskId,
    /// Its function's registered name.
    pub function: std::borrow::Cow<'static, str>,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
    /// Its place in its tree of tasks.
    pub trace: TraceContext,
    /// The node running it.
    pub node: NodeId,
    /// What it holds while it runs.
    pub resources: Resources,
    /// The GPUs it was given, by ordinal (Ray's `get_gpu_ids()`): empty
    /// unless it asked for `num_gpus`. A fraction shares one device.
    pub gpu_ids: Vec<u32>,
}

/// What the running code is part of.
#[derive(Clone, Default)]
pub(crate) struct Frame {
    pub(crate) task: Option<Arc<TaskContext>>,
    pub(crate) actor: Option<Arc<ActorInfo>>,
    /// The runtime, type-erased so that this module depends on nothing
    /// above it; `runtime` downcasts it.
    pub(crate) runtime: Option<Weak<dyn Any + Send + Sync>>,
}

tokio::task_local! {
    static ASYNC_FRAME: Frame;
}

thread_local! {
    static SYNC_FRAME: RefCell<Option<Frame>> = const { RefCell::new(None) };
}

/// Runs `future` with `frame` as its context (async code).
pub(crate) fn scope<F: Future>(frame: Frame, future: F) -> impl Future<Output = F::Output> {
    ASYNC_FRAME.scope(frame, future)
}

/// Makes `frame` this thread's context until the guard drops (sync code).
pub(crate) fn enter(frame: Frame) -> FrameGuard {
    let previous = SYNC_FRAME.with(|f| f.replace(Some(frame)));
    FrameGuard {
        previous,
        _not_send: PhantomData,
    }
}

/// Restores the previous thread context when dropped, panics included.
#[must_use = "the context ends when the guard drops"]
pub(crate) struct FrameGuard {
    previous: Option<Frame>,
    // Restores a thread-local: must drop on the thread that made it.
    _not_send: PhantomData<*const ()>,
}

impl Drop for FrameGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        // During thread teardown the slot may be gone: nothing to restore.
        let _ = SYNC_FRAME.try_with(|f| *f.borrow_mut() = previous);
    }
}

/// Reads the innermost frame.
pub(crate) fn with<T>(read: impl Fn(&Frame) -> Option<T>) -> Option<T> {
    let sync = SYNC_FRAME
        .try_with(|f| f.borrow().as_ref().map(&read))
        .ok()
        .flatten();
    match sync {
        Some(found) => found,
        None => ASYNC_FRAME.try_with(|f| read(f)).ok().flatten(),
    }
}

/// The task running this code, if any.
pub(crate) fn task() -> Option<Arc<TaskContext>> {
    with(|f| f.task.clone())
}

/// The actor running this code, if any.
pub(crate) fn actor() -> Option<Arc<ActorInfo>> {
    with(|f| f.actor.clone())
}

/// The runtime running this code, if any (type-erased).
pub(crate) fn runtime() -> Option<Arc<dyn Any + Send + Sync>> {
    with(|f| f.runtime.as_ref().and_then(Weak::upgrade))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ActorId;

    fn info(seq: u64) -> Arc<ActorInfo> {
        Arc::new(ActorInfo {
            id: ActorId {
                node: NodeId(1),
                seq,
            },
            name: None,
            type_name: "T".into(),
            node: NodeId(1),
            resources: Resources::default(),
            gpu_ids: Vec::new(),
        })
    }

    fn as_actor(seq: u64) -> Frame {
        Frame {
            actor: Some(info(seq)),
            ..Frame::default()
        }
    }

    #[test]
    fn frames_nest_and_restore() {
        assert!(actor().is_none());
        let outer = enter(as_actor(1));
        {
            let _inner = enter(as_actor(2));
            assert_eq!(actor().map(|a| a.id.seq), Some(2));
        }
        assert_eq!(actor().map(|a| a.id.seq), Some(1));
        drop(outer);
        assert!(actor().is_none());
    }

    #[test]
    fn a_panic_restores_the_previous_frame() {
        let _outer = enter(as_actor(1));
        let caught = std::panic::catch_unwind(|| {
            let _inner = enter(as_actor(2));
            panic!("constructor failed");
        });
        assert!(caught.is_err());
        assert_eq!(actor().map(|a| a.id.seq), Some(1), "not the dead actor");
    }

    #[tokio::test]
    async fn the_sync_frame_is_innermost() {
        scope(as_actor(1), async {
            assert_eq!(actor().map(|a| a.id.seq), Some(1));
            {
                let _sync = enter(as_actor(2));
                assert_eq!(actor().map(|a| a.id.seq), Some(2));
            }
            assert_eq!(actor().map(|a| a.id.seq), Some(1));
        })
        .await;
        assert!(actor().is_none());
    }
}
