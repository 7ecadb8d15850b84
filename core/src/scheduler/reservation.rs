//! Resources an actor holds for its whole life.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::placement::ordinals;
use super::state::{Grant, ReserveError};
use super::{Scheduler, Units};

impl Scheduler {
    /// Reserves `needs` for an actor's whole life: at once if free,
    /// otherwise when given back, in the order asked. Fails at once when the
    /// node can never fit them.
    pub(crate) async fn reserve(
        self: &Arc<Self>,
        needs: Units,
    ) -> Result<Reservation, ReserveError> {
        let (tx, rx) = oneshot::channel();
        let reserved = self.lock().reserve(needs, tx);
        let grant = match reserved {
            Ok(Some(grant)) => grant,
            Ok(None) => {
                metrics::counter!("troupe_actor_reservations_waited_total").increment(1);
                // A dropped sender: the runtime shut down while we waited.
                rx.await.map_err(|_| ReserveError::ShutDown)?
            }
            Err((_, err)) => return Err(err),
        };
        Ok(self.reservation(grant))
    }

    /// Reserves `needs` now or not at all (trees start synchronously).
    pub(crate) fn try_reserve(
        self: &Arc<Self>,
        needs: &Units,
    ) -> Result<Option<Reservation>, ReserveError> {
        let grant = self.lock().try_reserve(needs)?;
        Ok(grant.map(|g| self.reservation(g)))
    }

    /// Offers a placement group bundle's resources here (see
    /// [`State::add_capacity`](super::state::State::add_capacity)).
    pub(crate) fn add_capacity(self: &Arc<Self>, offered: &Units) {
        let actions = self.lock().add_capacity(offered, &self.settled());
        self.perform(actions);
    }

    /// Stops offering a bundle's resources, and cancels the work here that
    /// asks for resources named with `prefix` (the bundle's).
    pub(crate) fn remove_capacity(self: &Arc<Self>, offered: &Units, prefix: &str) {
        let cancel = {
            let mut state = self.lock();
            state.remove_capacity(offered);
            state.results_needing(prefix)
        };
        for result in cancel {
            self.cancel(result);
        }
    }

    fn reservation(self: &Arc<Self>, grant: Grant) -> Reservation {
        if !grant.gpus.is_empty() {
            self.gpus_gauge();
        }
        Reservation {
            scheduler: self.clone(),
            grant,
        }
    }

    fn gpus_gauge(&self) {
        let in_use = self.lock().gpus_in_use();
        metrics::gauge!("troupe_scheduler_gpus_in_use").set(in_use as f64 / 1000.0);
    }
}

/// Resources an actor holds for its life; dropping it gives them back and
/// lets waiting actors and tasks use them.
pub(crate) struct Reservation {
    scheduler: Arc<Scheduler>,
    grant: Grant,
}

impl Reservation {
    /// The GPUs it holds, by ordinal.
    pub(crate) fn gpu_ids(&self) -> Vec<u32> {
        ordinals(&self.grant.gpus)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let actions = self
            .scheduler
            .lock()
            .release_grant(&self.grant, &self.scheduler.settled());
        if !self.grant.gpus.is_empty() {
            self.scheduler.gpus_gauge();
        }
        self.scheduler.perform(actions);
    }
}
