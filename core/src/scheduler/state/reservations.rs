//! Actors' lifelong resources: granted in order, before tasks, as they
//! come back.

use super::*;

impl<P: Payload, W> State<P, W> {
    /// Reserves `needs` for an actor's whole life: granted now if they fit
    /// and nobody waits ahead, else queued (granted in order as resources
    /// come back). `Err` when they can never fit, or after shutdown.
    pub(crate) fn reserve(
        &mut self,
        needs: Units,
        waiter: W,
    ) -> Result<Option<Grant>, (W, ReserveError)> {
        if self.shut_down {
            return Err((waiter, ReserveError::ShutDown));
        }
        if !self.feasible(&needs) {
            return Err((waiter, ReserveError::Infeasible));
        }
        if self.reservations.is_empty() {
            if let Some(grant) = self.take_for_life(&needs) {
                return Ok(Some(grant));
            }
        }
        self.reservations.push_back((needs, waiter));
        Ok(None)
    }

    /// Reserves `needs` now or not at all.
    pub(crate) fn try_reserve(&mut self, needs: &Units) -> Result<Option<Grant>, ReserveError> {
        if self.shut_down {
            return Err(ReserveError::ShutDown);
        }
        if !self.feasible(needs) {
            return Err(ReserveError::Infeasible);
        }
        Ok(self.take_for_life(needs))
    }

    pub(super) fn take_for_life(&mut self, needs: &Units) -> Option<Grant> {
        if !needs.fits_in(&self.free) {
            return None;
        }
        let gpus = self.gpus.place(needs.gpus)?;
        needs.take_from(&mut self.free);
        self.gpus.take(&gpus);
        Some(Grant {
            needs: needs.clone(),
            gpus,
        })
    }

    /// An actor's resources come back (it died for good).
    pub(crate) fn release_grant(&mut self, grant: &Grant, settled: &Avail<'_>) -> Actions<P, W> {
        grant.needs.give_back(&mut self.free);
        self.gpus.give_back(&grant.gpus);
        let mut actions = Actions::default();
        self.step(settled, &mut actions);
        actions
    }

    /// Resources a placement group's bundle offers here, from now on (taken
    /// out of the free pool by its reservation first).
    pub(crate) fn add_capacity(&mut self, offered: &Units, settled: &Avail<'_>) -> Actions<P, W> {
        offered.give_back(&mut self.capacity);
        offered.give_back(&mut self.free);
        let mut actions = Actions::default();
        self.step(settled, &mut actions);
        actions
    }

    /// A bundle's resources are no longer offered: work still holding them
    /// gives them back as it ends (its cancellation follows), and names
    /// nobody offers leave the books.
    pub(crate) fn remove_capacity(&mut self, offered: &Units) {
        offered.take_from(&mut self.capacity);
        offered.take_from(&mut self.free);
        self.capacity.custom.retain(|_, v| *v != 0);
        self.free
            .custom
            .retain(|k, v| *v != 0 || self.capacity.custom.contains_key(k));
    }

    /// The first result of each unfinished task here that asks for a
    /// resource whose name starts with `prefix` (what a removed bundle
    /// cancels).
    pub(crate) fn results_needing(&self, prefix: &str) -> Vec<ObjectId> {
        let asks = |task: &P| task.needs().custom.keys().any(|k| k.starts_with(prefix));
        let queued = self
            .incoming
            .iter()
            .chain(self.ready.iter())
            .chain(self.watched.values())
            .chain(self.dependents.values().flatten())
            .chain(self.unplaced.iter())
            .chain(self.running.values().map(|a| &a.queued))
            .map(|q| &q.task);
        queued
            .filter(|task| asks(task))
            .filter_map(|task| task.results().first().copied())
            .collect()
    }
}
