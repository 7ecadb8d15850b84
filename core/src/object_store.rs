//! The object store actor: keeps the node's object store within its memory
//! budget by spilling, off the callers' path.
//!
//! It holds no data. The store itself (`troupe_objects::ObjectStore`) is
//! owned by the runtime and shared with every caller, so a restart of this
//! actor loses nothing: reads and writes never go through it.

use ractor::{ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;
use troupe_objects::{ObjectStore, SpillerGuard};

use crate::supervisor::AliveGauge;

/// Messages of the object store actor.
pub enum ObjectStoreMsg {
    /// Memory use crossed the spill threshold.
    Spill,
}

#[cfg(feature = "cluster")]
impl ractor::Message for ObjectStoreMsg {}

/// The actor; supervised in the runtime's system subtree.
#[derive(Clone)]
pub struct ObjectStoreActor {
    pub(crate) store: ObjectStore,
}

/// Its state: the task that turns threshold crossings into messages, and
/// its registration as the store's spiller (while it lives, a put that does
/// not fit waits for it).
pub struct Watcher(
    JoinHandle<()>,
    #[allow(dead_code)] SpillerGuard,
    #[allow(dead_code)] AliveGauge,
);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ractor::Actor for ObjectStoreActor {
    type Msg = ObjectStoreMsg;
    type State = Watcher;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<ObjectStoreMsg>,
        _: (),
    ) -> Result<Watcher, ActorProcessingErr> {
        let guard = self.store.attach_spiller();
        let store = self.store.clone();
        let watcher = tokio::spawn(async move {
            loop {
                // Catch up with anything put while no actor was listening.
                if store.needs_spill() && myself.send_message(ObjectStoreMsg::Spill).is_err() {
                    return;
                }
                store.spill_wanted().await;
            }
        });
        Ok(Watcher(
            watcher,
            guard,
            AliveGauge::new("troupe::object_store"),
        ))
    }

    async fn handle(
        &self,
        _myself: ActorRef<ObjectStoreMsg>,
        msg: ObjectStoreMsg,
        _state: &mut Watcher,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ObjectStoreMsg::Spill => {
                let store = self.store.clone();
                // File I/O: on a blocking thread, never on a runtime worker.
                match tokio::task::spawn_blocking(move || store.spill()).await {
                    Ok(Ok(report)) if report.objects > 0 => {
                        tracing::debug!(objects = report.objects, bytes = report.bytes, "spilled")
                    }
                    Ok(Ok(_)) => {}
                    // A full disk: objects stay in memory; say so and go on.
                    Ok(Err(err)) => tracing::error!(%err, "spilling failed"),
                    Err(join) => return Err(format!("spill task failed: {join}").into()),
                }
            }
        }
        Ok(())
    }
}
