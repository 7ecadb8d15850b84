//! What the page receives: the state API's snapshot, plus what the page
//! shows that the state does not keep (the object store's use over time,
//! recent failures gathered from tasks and the supervision tree).

use serde::{Deserialize, Serialize};
use troupe_core::runtime::{ChildView, SupervisorView};
use troupe_core::{State, TaskInfo};

/// The object store at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSample {
    /// When, in microseconds since the Unix epoch.
    pub at_us: u64,
    /// Objects in the store.
    pub objects: u64,
    /// Bytes in memory.
    pub memory_bytes: u64,
    /// Bytes spilled to disk.
    pub spilled_bytes: u64,
}

/// A recent failure, of a task or of a supervised child.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// When, in microseconds since the Unix epoch.
    pub at_us: u64,
    /// "task" or "actor".
    pub kind: String,
    /// Who: the task's function and id, or the child's path.
    pub who: String,
    /// Why.
    pub reason: String,
}

/// One update of the page: what `/api/events` sends and `/api/snapshot`
/// returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The runtime's state (lists bounded by the dashboard's query).
    pub state: State,
    /// The object store over time, oldest first.
    pub store: Vec<StoreSample>,
    /// Recent failures, newest first.
    pub failures: Vec<Failure>,
    /// The dashboard's update interval, in milliseconds.
    pub interval_ms: u64,
}

/// How many recent failures a snapshot carries.
pub(crate) const FAILURES: usize = 50;

/// Recent failures: failed tasks (from the state's history) and children
/// of the supervision tree that failed, newest first.
pub(crate) fn failures(failed_tasks: &[TaskInfo], tree: &SupervisorView) -> Vec<Failure> {
    let mut out: Vec<Failure> = failed_tasks
        .iter()
        .filter_map(|task| {
            Some(Failure {
                at_us: task.ended_at_us?,
                kind: "task".to_owned(),
                who: format!("{} ({})", task.function, task.id),
                reason: task.error.clone().unwrap_or_default(),
            })
        })
        .collect();
    fn walk(view: &SupervisorView, out: &mut Vec<Failure>) {
        for child in &view.children {
            push_child(view, child, out);
            if let Some(nested) = &child.supervisor {
                walk(nested, out);
            }
        }
    }
    fn push_child(parent: &SupervisorView, child: &ChildView, out: &mut Vec<Failure>) {
        if let Some(failure) = &child.last_failure {
            out.push(Failure {
                at_us: failure.at_us,
                kind: "actor".to_owned(),
                who: format!("{}/{}", parent.path, child.id),
                reason: failure.reason.clone(),
            });
        }
    }
    walk(tree, &mut out);
    out.sort_by_key(|f| std::cmp::Reverse(f.at_us));
    out.truncate(FAILURES);
    out
}

/// One update: the state, the store's samples, and recent failures.
pub(crate) fn snapshot(
    state: State,
    store: Vec<StoreSample>,
    failed_tasks: &[TaskInfo],
    interval_ms: u64,
) -> Snapshot {
    let failures = failures(failed_tasks, &state.supervisors);
    Snapshot {
        state,
        store,
        failures,
        interval_ms,
    }
}
