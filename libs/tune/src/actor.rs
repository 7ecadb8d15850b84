//! The trial actor: one per running trial, holding the user's trainable
//! with its type erased. Its methods may block (`#[blocking]`), so a long
//! iteration stalls no other task. A panic in one is the actor's failure:
//! its supervisor restarts it, which builds the trainable again from the
//! trial's current config, and the tuner then restores the last checkpoint.
//!
//! On a cluster ([`TrialActor::on_node`]) the trainable is built from its
//! registered name, and checkpoints travel as objects (pulled over the data
//! path, so that their size is not bounded by a control frame's).

use std::sync::{Arc, Mutex};

use troupe::{Blob, ObjectRef, Runtime};

use crate::error::TrainableError;
use crate::lock::lock;
use crate::params::Params;
use crate::registry;
use crate::trainable::{Factory, Metrics, Trainable};

/// A running trial's trainable (or why it could not be built).
pub(crate) struct TrialActor {
    trainable: Result<Box<dyn Trainable>, TrainableError>,
    factory: Factory,
}

impl TrialActor {
    /// Builds the trainable from the trial's current config.
    pub(crate) fn new(factory: &Factory, params: &Arc<Mutex<Params>>) -> TrialActor {
        let params = lock(params).clone();
        TrialActor {
            trainable: factory(&params),
            factory: factory.clone(),
        }
    }

    fn trainable(&mut self) -> Result<&mut Box<dyn Trainable>, TrainableError> {
        self.trainable.as_mut().map_err(|e| e.clone())
    }

    fn runtime() -> Result<Runtime, TrainableError> {
        Runtime::current().ok_or_else(|| {
            TrainableError::Checkpoint("the trial runs outside a Troupe runtime".into())
        })
    }
}

#[troupe::actor]
impl TrialActor {
    /// A trial built on whichever node spawns it, from the trainable
    /// registered as `trainable` and the config `params` (the constructor
    /// trials on a cluster are spawned with). An unknown name is the error
    /// of its first call.
    pub(crate) fn on_node(trainable: String, params: Params) -> Self {
        match registry::registered(&trainable) {
            Ok(factory) => TrialActor {
                trainable: factory(&params),
                factory,
            },
            Err(e) => TrialActor {
                trainable: Err(e.clone()),
                factory: Arc::new(move |_: &Params| Err(e.clone())),
            },
        }
    }

    /// One iteration.
    #[blocking]
    pub(crate) fn step(&mut self) -> Result<Metrics, TrainableError> {
        self.trainable()?.step()
    }

    /// A checkpoint.
    #[blocking]
    pub(crate) fn save(&mut self) -> Result<Vec<u8>, TrainableError> {
        self.trainable()?.save()
    }

    /// Back to `checkpoint`.
    #[blocking]
    pub(crate) fn restore(&mut self, checkpoint: Arc<Vec<u8>>) -> Result<(), TrainableError> {
        self.trainable()?.restore(&checkpoint)
    }

    /// A checkpoint, put in the store of the trial's node (read by the
    /// tuner from there).
    #[blocking]
    pub(crate) fn save_object(&mut self) -> Result<ObjectRef<Blob>, TrainableError> {
        let bytes = self.trainable()?.save()?;
        TrialActor::runtime()?
            .put_blocking(Blob::from(bytes))
            .map_err(|e| TrainableError::Checkpoint(format!("putting it in the store: {e}")))
    }

    /// Back to the checkpoint `checkpoint` holds (read from the tuner's
    /// node).
    #[blocking]
    pub(crate) fn restore_object(
        &mut self,
        checkpoint: ObjectRef<Blob>,
    ) -> Result<(), TrainableError> {
        let bytes = TrialActor::runtime()?
            .get_blocking(&checkpoint)
            .map_err(|e| TrainableError::Checkpoint(format!("reading it from the store: {e}")))?;
        self.trainable()?.restore(&bytes)
    }

    /// Builds the trainable again with `params` (PBT's exploit, and a
    /// restarted trial on a cluster, whose constructor had its first
    /// config).
    #[blocking]
    pub(crate) fn reset(&mut self, params: Params) {
        self.trainable = (self.factory)(&params);
    }
}
