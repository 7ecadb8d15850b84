//! The trial actor: one per running trial, holding the user's trainable
//! with its type erased. Its methods may block (`#[blocking]`), so a long
//! iteration stalls no other task. A panic in one is the actor's failure:
//! its supervisor restarts it, which builds the trainable again from the
//! trial's current config, and the tuner then restores the last checkpoint.

use std::sync::{Arc, Mutex};

use crate::error::TrainableError;
use crate::lock::lock;
use crate::params::Params;
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
}

#[troupe::actor]
impl TrialActor {
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

    /// Builds the trainable again with `params` (PBT's exploit).
    #[blocking]
    pub(crate) fn reset(&mut self, params: Params) {
        self.trainable = (self.factory)(&params);
    }
}
