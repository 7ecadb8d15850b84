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
}
