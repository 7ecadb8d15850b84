//! What a trial runs: a [`Trainable`] (Ray's class API) or a step function
//! with a serde state ([`FnTrainable`], Ray's function API with
//! checkpoints).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::TrainableError;
use crate::params::Params;

/// What one iteration reports: named metrics, and whether the trial is
/// done (Ray's `done`).
///
/// ```
/// use troupe_tune::Metrics;
/// let m = Metrics::new().with("loss", 0.5).done();
/// assert_eq!(m.get("loss"), Some(0.5));
/// assert!(m.is_done());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    // JSON has no NaN nor infinities: serde_json writes them as `null`,
    // read back as NaN (else a resumed history would end at that line).
    #[serde(deserialize_with = "values_or_nan")]
    values: BTreeMap<String, f64>,
    #[serde(default)]
    done: bool,
}

fn values_or_nan<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, f64>, D::Error> {
    // Only JSON writes NaN as null: a binary format (postcard, between
    // nodes) keeps every f64 as it is.
    if !deserializer.is_human_readable() {
        return serde::Deserialize::deserialize(deserializer);
    }
    let values: BTreeMap<String, Option<f64>> = serde::Deserialize::deserialize(deserializer)?;
    Ok(values
        .into_iter()
        .map(|(name, value)| (name, value.unwrap_or(f64::NAN)))
        .collect())
}

impl Metrics {
    /// No metrics, not done.
    pub fn new() -> Self {
        Self::default()
    }

    /// With `name` = `value`.
    pub fn with(mut self, name: impl Into<String>, value: f64) -> Self {
        self.values.insert(name.into(), value);
        self
    }

    /// Marks the trial done after this iteration.
    pub fn done(mut self) -> Self {
        self.done = true;
        self
    }

    /// Whether the trial said it is done.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.get(name).copied()
    }

    /// Every metric, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.values.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

/// A trial's code: it runs iterations and saves and restores its state.
///
/// Each method runs on the trial's actor, on a thread it may block. A panic
/// fails the attempt: the actor is restarted (the factory builds the
/// trainable again) and restored from the last checkpoint, up to
/// `max_failures` times. A returned error fails the trial at once.
pub trait Trainable: Send + 'static {
    /// Runs one iteration and reports its metrics.
    fn step(&mut self) -> Result<Metrics, TrainableError>;

    /// The state to resume from, as bytes.
    fn save(&mut self) -> Result<Vec<u8>, TrainableError>;

    /// Goes back to a state `save` made (perhaps another trial's, under
    /// PBT, whose config then replaces this one's: the trainable was built
    /// again with it first).
    fn restore(&mut self, checkpoint: &[u8]) -> Result<(), TrainableError>;
}

/// Builds a trial's trainable from its config (again after each failure).
pub(crate) type Factory =
    Arc<dyn Fn(&Params) -> Result<Box<dyn Trainable>, TrainableError> + Send + Sync>;

/// The step function of an [`FnTrainable`]: the config, the state, and the
/// iteration (from 1).
pub type StepFn<S> =
    Arc<dyn Fn(&Params, &mut S, u64) -> Result<Metrics, TrainableError> + Send + Sync>;

/// A trainable made of a step function and a state that serde saves (as
/// JSON, with the iteration).
///
/// ```
/// use troupe_tune::{FnTrainable, Metrics, Params, Trainable};
/// let mut t = FnTrainable::new(Params::new().with("x", 2.0), |p: &Params, sum: &mut f64, _i: u64| {
///     *sum += p.f64("x")?;
///     Ok(Metrics::new().with("sum", *sum))
/// });
/// t.step().unwrap();
/// let saved = t.save().unwrap();
/// t.step().unwrap();
/// t.restore(&saved).unwrap();
/// assert_eq!(t.step().unwrap().get("sum"), Some(4.0));
/// ```
pub struct FnTrainable<S> {
    params: Params,
    state: S,
    iteration: u64,
    step: StepFn<S>,
}

impl<S> std::fmt::Debug for FnTrainable<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnTrainable")
            .field("params", &self.params)
            .field("iteration", &self.iteration)
            .finish_non_exhaustive()
    }
}

impl<S: Default> FnTrainable<S> {
    /// `step` over a default state.
    pub fn new(
        params: Params,
        step: impl Fn(&Params, &mut S, u64) -> Result<Metrics, TrainableError> + Send + Sync + 'static,
    ) -> Self {
        Self::from_arc(params, Arc::new(step))
    }

    /// As [`new`](Self::new), sharing the step function.
    pub fn from_arc(params: Params, step: StepFn<S>) -> Self {
        FnTrainable {
            params,
            state: S::default(),
            iteration: 0,
            step,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Saved<S> {
    iteration: u64,
    state: S,
}

impl<S> Trainable for FnTrainable<S>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    fn step(&mut self) -> Result<Metrics, TrainableError> {
        self.iteration += 1;
        (self.step)(&self.params, &mut self.state, self.iteration)
    }

    fn save(&mut self) -> Result<Vec<u8>, TrainableError> {
        let saved = Saved {
            iteration: self.iteration,
            state: &self.state,
        };
        serde_json::to_vec(&saved).map_err(|e| TrainableError::Checkpoint(e.to_string()))
    }

    fn restore(&mut self, checkpoint: &[u8]) -> Result<(), TrainableError> {
        let saved: Saved<S> = serde_json::from_slice(checkpoint)
            .map_err(|e| TrainableError::Checkpoint(e.to_string()))?;
        self.iteration = saved.iteration;
        self.state = saved.state;
        Ok(())
    }
}
