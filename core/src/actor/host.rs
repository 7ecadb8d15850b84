//! The ractor actor that hosts one incarnation of a user's actor.

use std::sync::Arc;

use futures::future::BoxFuture;
use ractor::{ActorProcessingErr, ActorRef};
use tracing::Instrument;

use super::slot::{Envelope, Run, Slot};
use super::Actor;
use crate::error::ActorError;

/// Builds a fresh instance: called at spawn and again on every restart.
pub(crate) type Factory<A> = Arc<dyn Fn() -> BoxFuture<'static, Result<A, String>> + Send + Sync>;

pub(crate) struct Host<A: Actor> {
    pub(crate) slot: Arc<Slot<A>>,
    pub(crate) factory: Factory<A>,
}

impl<A: Actor> ractor::Actor for Host<A> {
    type Msg = Envelope<A>;
    type State = A;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<A, ActorProcessingErr> {
        // A panic here is caught by ractor and reported as a failed start.
        // The constructor sees its actor's context (its GPUs, say).
        let info = &self.slot.info;
        let building = super::with_current(info, || (self.factory)());
        Ok(super::CURRENT_ASYNC.scope(info.clone(), building).await?)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        mut envelope: Envelope<A>,
        actor: &mut A,
    ) -> Result<(), ActorProcessingErr> {
        let Some(job) = envelope.take_job() else {
            return Ok(());
        };
        drop(envelope);
        let method = job.method();
        let info = &self.slot.info;
        // Sync methods run inside `run`, under the thread's context; async
        // ones are polled below, under the task's.
        let run = super::with_current(info, || job.run(actor, info));
        let outcome = match run {
            Run::Done(outcome) => outcome,
            Run::Pending(future) => {
                super::CURRENT_ASYNC
                    .scope(
                        info.clone(),
                        future.instrument(tracing::trace_span!(
                            "actor_call",
                            actor = info.id,
                            method
                        )),
                    )
                    .await
            }
        };
        // A panic fails this incarnation (its state may be broken); the
        // supervisor decides on a restart. Retire it before telling the
        // caller, so the caller's next call waits for the next incarnation.
        outcome.map_err(|panicked| {
            self.slot.retire_current();
            let text = format!("{info} panicked in {method}: {}", panicked.message);
            (panicked.reply)(ActorError::Panicked {
                actor: info.clone(),
                method,
                message: panicked.message,
            });
            text.into()
        })
    }
}
