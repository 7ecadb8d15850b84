//! The actor that drives the scheduler: bursts of submissions, and the
//! periodic spillback check. It holds no data (a restart loses nothing).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ractor::{ActorProcessingErr, ActorRef};

use super::spillback::SPILLBACK_CHECK;
use super::Scheduler;
use crate::supervisor::AliveGauge;

/// Messages of the scheduler actor.
pub enum SchedulerMsg {
    /// Tasks were queued: sort and launch them.
    Pump,
    /// Offer tasks that wait for resources to nodes with room (with a
    /// cluster, every `SPILLBACK_CHECK`).
    Spillback,
}

#[cfg(feature = "cluster")]
impl ractor::Message for SchedulerMsg {}

/// The scheduler actor, supervised in the system subtree. It holds no
/// data: it drives bursts of submissions on the runtime's scheduler.
#[derive(Clone)]
pub struct SchedulerActor {
    pub(crate) scheduler: Arc<Scheduler>,
}

impl ractor::Actor for SchedulerActor {
    type Msg = SchedulerMsg;
    type State = AliveGauge;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<SchedulerMsg>,
        _: (),
    ) -> Result<AliveGauge, ActorProcessingErr> {
        self.scheduler.actor.store(Some(Arc::new(myself.clone())));
        // Pick up whatever arrived while no actor was listening.
        self.scheduler.nudged.store(false, Ordering::Release);
        let _ = myself.send_message(SchedulerMsg::Pump);
        if self.scheduler.placement.is_some() {
            // Ends with this actor (its successor starts its own).
            myself.send_interval(SPILLBACK_CHECK, || SchedulerMsg::Spillback);
        }
        Ok(AliveGauge::new("troupe::scheduler"))
    }

    async fn handle(
        &self,
        _myself: ActorRef<SchedulerMsg>,
        msg: SchedulerMsg,
        _: &mut AliveGauge,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SchedulerMsg::Pump => {
                self.scheduler.nudged.store(false, Ordering::Release);
                self.scheduler.pump();
            }
            SchedulerMsg::Spillback => self.scheduler.check_spillback(),
        }
        Ok(())
    }
}
