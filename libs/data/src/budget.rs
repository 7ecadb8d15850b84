//! The memory budget of a running pipeline: the bytes of blocks made and
//! not yet consumed, across all operators.
//!
//! An operator may start a unit of work (a read, a task) when its
//! estimated output fits in the budget and in half of it for the
//! operator's own blocks (so that a source reading ahead leaves room for
//! the stages after it); the estimate is charged until the output's real
//! size is known. Whatever the budget, an operator none of whose output is
//! waiting downstream may start one unit, so that every operator always
//! makes progress and a full budget never deadlocks the pipeline. So the
//! bytes in flight stay under the budget plus about one block per
//! operator; [`ExecStats::peak_bytes_in_flight`] is what a run measured.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// What a finished (or failed) run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExecStats {
    /// The plan, as one line.
    pub plan: String,
    /// The most bytes of blocks that were in flight at once.
    pub peak_bytes_in_flight: usize,
    /// The budget the run had.
    pub memory_budget: usize,
    /// Per operator, in the order they were started.
    pub operators: Vec<OperatorStats>,
}

/// One operator's counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OperatorStats {
    /// Its name (`read_parquet`, `map_batches+filter`, `sort`).
    pub name: String,
    /// Blocks it emitted.
    pub blocks: usize,
    /// Rows it emitted.
    pub rows: usize,
    /// Bytes it emitted.
    pub bytes: usize,
    /// The most actors its pool had at once (0 for task stages).
    pub max_actors: usize,
    /// Seconds from its start to its last block.
    pub seconds: f64,
}

#[derive(Default)]
struct State {
    in_flight: usize,
    peak: usize,
    /// Per operator: units started whose output is not consumed yet.
    outstanding: Vec<usize>,
    /// Per operator: the bytes those units hold.
    held: Vec<usize>,
}

/// Shared by every operator of one run.
pub(crate) struct Budget {
    limit: usize,
    state: Mutex<State>,
    changed: Notify,
}

/// An operator's share of the budget, released when dropped.
pub(crate) struct Charge {
    budget: Arc<Budget>,
    operator: usize,
    bytes: usize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Budget {
            limit,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain counters: keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new operator's index.
    pub(crate) fn operator(&self) -> usize {
        let mut state = self.lock();
        state.outstanding.push(0);
        state.held.push(0);
        state.outstanding.len() - 1
    }

    /// Waits until `operator` may start a unit of work expected to make
    /// `estimate` bytes, and charges them.
    pub(crate) async fn admit(self: &Arc<Self>, operator: usize, estimate: usize) -> Charge {
        self.admit_unless(operator, estimate, || false).await
    }

    /// [`admit`](Self::admit), or at once whenever `exempt` holds: for the
    /// reader whose blocks are next in order while the operator after it
    /// has nothing to work on (blocks read ahead of it, out of order, may
    /// hold the whole budget; they cannot move before its block does).
    pub(crate) async fn admit_unless(
        self: &Arc<Self>,
        operator: usize,
        estimate: usize,
        exempt: impl Fn() -> bool,
    ) -> Charge {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(charge) = self.try_admit(operator, estimate, exempt()) {
                return charge;
            }
            // `exempt` may turn true without a charge changing: look again
            // now and then.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(20), notified).await;
        }
    }

    fn try_admit(
        self: &Arc<Self>,
        operator: usize,
        estimate: usize,
        exempt: bool,
    ) -> Option<Charge> {
        let mut state = self.lock();
        let idle = state.outstanding.get(operator).is_none_or(|n| *n == 0);
        // An operator that knows nothing yet of its blocks' size (0) starts
        // one unit at a time until it does.
        // Nor may one operator take more than half of it while others
        // exist: a source reading ahead must leave room for the stages
        // after it, or they run one block at a time.
        let held = state.held.get(operator).copied().unwrap_or(0);
        let share = if state.held.len() > 1 {
            self.limit / 2
        } else {
            self.limit
        };
        let fits =
            estimate > 0 && state.in_flight + estimate <= self.limit && held + estimate <= share;
        if !(fits || state.in_flight == 0 || idle || exempt) {
            return None;
        }
        state.in_flight += estimate;
        state.peak = state.peak.max(state.in_flight);
        if let Some(n) = state.outstanding.get_mut(operator) {
            *n += 1;
        }
        if let Some(held) = state.held.get_mut(operator) {
            *held += estimate;
        }
        metrics::gauge!("troupe_data_bytes_in_flight").set(state.in_flight as f64);
        Some(Charge {
            budget: self.clone(),
            operator,
            bytes: estimate,
        })
    }

    pub(crate) fn peak(&self) -> usize {
        self.lock().peak
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

impl Charge {
    /// The unit's output is known: charge its real size instead.
    pub(crate) fn settle(&mut self, bytes: usize) {
        let mut state = self.budget.lock();
        state.in_flight = state.in_flight.saturating_sub(self.bytes) + bytes;
        if let Some(held) = state.held.get_mut(self.operator) {
            *held = held.saturating_sub(self.bytes) + bytes;
        }
        self.bytes = bytes;
        state.peak = state.peak.max(state.in_flight);
        metrics::gauge!("troupe_data_bytes_in_flight").set(state.in_flight as f64);
        drop(state);
        self.budget.changed.notify_waiters();
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let mut state = self.budget.lock();
        state.in_flight = state.in_flight.saturating_sub(self.bytes);
        if let Some(n) = state.outstanding.get_mut(self.operator) {
            *n = n.saturating_sub(1);
        }
        if let Some(held) = state.held.get_mut(self.operator) {
            *held = held.saturating_sub(self.bytes);
        }
        metrics::gauge!("troupe_data_bytes_in_flight").set(state.in_flight as f64);
        drop(state);
        self.budget.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_operator_waits_for_room_in_the_budget_and_its_half_unless_it_has_nothing_downstream(
    ) {
        let budget = Budget::new(100);
        let (a, b) = (budget.operator(), budget.operator());
        let mut first = budget.admit(a, 30).await;
        first.settle(45);
        // `a` holds 45 of 100: 10 more fit, 10 more would pass its half.
        let small = budget.try_admit(a, 5, false);
        assert!(small.is_some());
        assert!(budget.try_admit(a, 10, false).is_none());
        let mut second = budget.try_admit(b, 40, false).expect("fits");
        second.settle(60);
        // 110 in flight: `a` waits, `b` (with a block downstream) too.
        assert!(budget.try_admit(a, 1, false).is_none());
        assert!(budget.try_admit(b, 1, false).is_none());
        // The reader next in order may go while its consumer starves.
        assert!(budget.try_admit(a, 1, true).is_some());
        assert_eq!(budget.peak(), 111);
        drop((first, small, second));
        // `b` has nothing downstream now: whatever the estimate, it may go.
        assert!(budget.try_admit(b, 1000, false).is_some());
    }
}
