//! Tasks as the state API shows them: where each unfinished task is (read
//! from the scheduler's state), and a bounded ring of the last finished
//! ones (`Config::task_history`), so that memory stays bounded however many
//! tasks a service runs.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, TaskId};
use crate::spec::FunctionName;

/// Where a task is, or how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaskState {
    /// Its arguments are ready; it waits for resources.
    Queued,
    /// It waits for its arguments.
    WaitingForArgs,
    /// An attempt runs on this node.
    Running,
    /// It fits no node known yet (a cluster's placement hook said wait).
    Unplaced,
    /// An attempt runs on another node.
    Delegated,
    /// Its results are stored.
    Finished,
    /// It failed for good (its last attempt failed, a dependency failed,
    /// it could not run anywhere, or the runtime shut down).
    Failed,
    /// It was cancelled.
    Cancelled,
}

impl TaskState {
    /// Whether the task has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Finished | TaskState::Failed | TaskState::Cancelled
        )
    }
}

/// One task as the state API lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// The task.
    pub id: TaskId,
    /// Its function's registered name.
    pub function: FunctionName,
    /// Where it is, or how it ended.
    pub state: TaskState,
    /// The attempt it is at (running or queued), or the attempts it made
    /// (ended; 0 if it never ran).
    pub attempt: u32,
    /// The node running it (or that ran its last attempt), if any.
    pub node: Option<NodeId>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// When it was submitted, in microseconds since the Unix epoch.
    pub submitted_at_us: u64,
    /// When its current (or last) attempt started, if one did.
    pub started_at_us: Option<u64>,
    /// When it ended, if it did.
    pub ended_at_us: Option<u64>,
}

/// Which tasks to list (`Runtime::tasks`, the state API's query).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFilter {
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// Only tasks of this function (its registered name, or its last
    /// path segment: `add` matches `my_crate::add`).
    pub function: Option<String>,
    /// At most this many (default 1,000).
    pub limit: usize,
}

impl Default for TaskFilter {
    fn default() -> Self {
        Self {
            state: None,
            function: None,
            limit: 1000,
        }
    }
}

impl TaskFilter {
    /// Every task, up to the default limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only tasks in `state`.
    pub fn state(mut self, state: TaskState) -> Self {
        self.state = Some(state);
        self
    }

    /// Only tasks of `function`.
    pub fn function(mut self, function: impl Into<String>) -> Self {
        self.function = Some(function.into());
        self
    }

    /// At most `limit` tasks.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Whether a task of `function` in `state` is wanted.
    pub(crate) fn keeps(&self, function: &str, state: TaskState) -> bool {
        self.state.is_none_or(|s| s == state)
            && self.function.as_deref().is_none_or(|f| {
                function == f || function.rsplit("::").next().is_some_and(|last| last == f)
            })
    }
}

/// The last finished tasks, newest last.
pub(crate) struct History {
    capacity: usize,
    ring: Mutex<VecDeque<TaskInfo>>,
}

impl History {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            // Grown as tasks finish: a runtime that runs few tasks never pays for
            // the ring, and a start allocates nothing for it.
            ring: Mutex::new(VecDeque::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<TaskInfo>> {
        // One push or one copy per critical section.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a finished task, forgetting the oldest if full.
    pub(crate) fn push(&self, info: TaskInfo) {
        if self.capacity == 0 {
            return;
        }
        let mut ring = self.lock();
        if ring.len() >= self.capacity {
            ring.pop_front();
        }
        ring.push_back(info);
    }

    /// Finished tasks `filter` keeps, newest first.
    pub(crate) fn list(&self, filter: &TaskFilter, limit: usize) -> Vec<TaskInfo> {
        self.lock()
            .iter()
            .rev()
            .filter(|t| filter.keeps(&t.function, t.state))
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(seq: u64, function: &'static str, state: TaskState) -> TaskInfo {
        TaskInfo {
            id: TaskId {
                node: NodeId(1),
                seq,
            },
            function: function.into(),
            state,
            attempt: 1,
            node: Some(NodeId(1)),
            error: None,
            submitted_at_us: seq,
            started_at_us: Some(seq),
            ended_at_us: Some(seq),
        }
    }

    #[test]
    fn the_ring_is_bounded_and_lists_newest_first() {
        let history = History::new(3);
        for seq in 0..5 {
            history.push(info(seq, "app::f", TaskState::Finished));
        }
        let seqs: Vec<u64> = history
            .list(&TaskFilter::new(), 10)
            .iter()
            .map(|t| t.id.seq)
            .collect();
        assert_eq!(seqs, [4, 3, 2]);
        let none = History::new(0);
        none.push(info(1, "app::f", TaskState::Failed));
        assert!(none.list(&TaskFilter::new(), 10).is_empty());
    }

    #[test]
    fn filters_match_state_and_function_by_full_or_short_name() {
        let history = History::new(10);
        history.push(info(1, "app::f", TaskState::Finished));
        history.push(info(2, "app::g", TaskState::Failed));
        history.push(info(3, "app::f", TaskState::Failed));
        let ids = |filter: TaskFilter| -> Vec<u64> {
            history.list(&filter, 10).iter().map(|t| t.id.seq).collect()
        };
        assert_eq!(ids(TaskFilter::new().state(TaskState::Failed)), [3, 2]);
        assert_eq!(ids(TaskFilter::new().function("f")), [3, 1]);
        assert_eq!(ids(TaskFilter::new().function("app::g")), [2]);
        assert_eq!(ids(TaskFilter::new().function("pp::g")), Vec::<u64>::new());
        assert_eq!(
            ids(TaskFilter::new().function("f").state(TaskState::Finished)),
            [1]
        );
    }
}
