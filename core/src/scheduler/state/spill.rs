//! What the spillback check (`scheduler::spillback`) asks of the state:
//! which tasks wait here for resources, and taking one out.

use super::*;

impl<P: Payload, W> State<P, W> {
    /// The first `limit` tasks whose arguments are here and that wait for
    /// resources (in the order they would run).
    pub(crate) fn waiting_for_resources(&self, limit: usize) -> Vec<P> {
        self.ready
            .iter()
            .take(limit)
            .map(|q| q.task.clone())
            .collect()
    }

    /// Takes task `id` out of the queue of tasks waiting for resources,
    /// if it still waits there (it may have started meanwhile). Its
    /// results stay tracked while its owner places it again (`leaving`
    /// false); a task that leaves this node for good (back to its owner on
    /// another node) is forgotten here.
    pub(crate) fn withdraw_waiting(&mut self, id: TaskId, leaving: bool) -> Option<Queued<P>> {
        let at = self.ready.iter().position(|q| q.task.id() == id)?;
        let queued = self.ready.remove(at)?;
        if leaving {
            self.untrack(&queued.task);
        }
        Some(queued)
    }
}
