//! Resource needs of actors and tasks, carried for the scheduler.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The most GPUs one node may have or one request may ask for. Far above
/// any real machine; it keeps a typo (`1e10`) from becoming a per-device
/// allocation that takes the process down.
pub const MAX_GPUS: f64 = 1024.0;

/// The most CPUs, or units of a custom resource, one amount may be.
pub const MAX_AMOUNT: f64 = 1e12;

/// What a piece of work needs from a node: CPUs, GPUs (fractions allowed),
/// memory, and any custom named resource.
///
/// ```
/// use troupe_core::Resources;
/// let needs = Resources::cpus(2.0).with_gpus(0.25).with("license", 1.0);
/// assert_eq!(needs.num_gpus, 0.25);
/// assert_eq!(needs.custom["license"], 1.0);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// CPUs (cores).
    pub num_cpus: f64,
    /// GPUs; a fraction shares one device.
    pub num_gpus: f64,
    /// Memory in bytes.
    pub memory: u64,
    /// Custom resources by name.
    pub custom: BTreeMap<String, f64>,
}

impl Resources {
    /// `n` CPUs and nothing else.
    pub fn cpus(n: f64) -> Self {
        Self {
            num_cpus: n,
            ..Self::default()
        }
    }

    /// Sets the GPUs.
    pub fn with_gpus(mut self, n: f64) -> Self {
        self.num_gpus = n;
        self
    }

    /// Sets the memory in bytes.
    pub fn with_memory(mut self, bytes: u64) -> Self {
        self.memory = bytes;
        self
    }

    /// Adds a custom resource.
    pub fn with(mut self, name: impl Into<String>, amount: f64) -> Self {
        self.custom.insert(name.into(), amount);
        self
    }
}

impl Resources {
    /// Checks that the amounts make sense: finite, not negative, at most
    /// [`MAX_GPUS`] GPUs and [`MAX_AMOUNT`] of anything else, and GPUs
    /// either a fraction of one device (`0.25`) or whole devices (`2`), as
    /// Ray requires. The error says what to change.
    ///
    /// ```
    /// use troupe_core::Resources;
    /// assert!(Resources::cpus(1.0).with_gpus(0.5).validate().is_ok());
    /// assert!(Resources::cpus(1.0).with_gpus(2.0).validate().is_ok());
    /// assert!(Resources::cpus(1.0).with_gpus(1.5).validate().is_err());
    /// assert!(Resources::cpus(-1.0).validate().is_err());
    /// assert!(Resources::cpus(1.0).with_gpus(1e10).validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), String> {
        let amounts = [("num_cpus", self.num_cpus), ("num_gpus", self.num_gpus)]
            .into_iter()
            .chain(self.custom.iter().map(|(k, v)| (k.as_str(), *v)));
        for (what, amount) in amounts {
            if !amount.is_finite() || amount < 0.0 {
                return Err(format!(
                    "{what} = {amount} is not a finite, non-negative amount"
                ));
            }
            if amount > MAX_AMOUNT {
                return Err(format!(
                    "{what} = {amount} is more than the most one amount may be ({MAX_AMOUNT})"
                ));
            }
        }
        if self.num_gpus > MAX_GPUS {
            return Err(format!(
                "num_gpus = {} is more than the most a node may have ({MAX_GPUS})",
                self.num_gpus
            ));
        }
        if self.num_gpus > 1.0 && self.num_gpus.fract() != 0.0 {
            return Err(format!(
                "num_gpus = {} mixes whole and partial devices; ask for a fraction of one GPU (at most 1.0) or a whole number of GPUs",
                self.num_gpus
            ));
        }
        Ok(())
    }
}

/// One GPU of a node: what a [`GpuDetector`] found, or what
/// [`Config::resources`](crate::Config) declared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// The device ordinal (CUDA's numbering on this node).
    pub ordinal: u32,
    /// The device's name, e.g. "NVIDIA H100 80GB HBM3" ("declared" when
    /// the configuration declared it instead of a detector).
    pub name: String,
    /// Total device memory in bytes, when known.
    pub memory_bytes: Option<u64>,
}

/// Finds a node's GPUs when a runtime starts; they become its `GPU`
/// resources. Core knows no GPU library: the `gpu` crate implements this
/// with libtorch.
pub trait GpuDetector: std::fmt::Debug + Send + Sync + 'static {
    /// The node's GPUs, ordinals `0..n`. An error fails the runtime's start
    /// (a machine whose driver is broken should say so, not run on CPU).
    fn detect(&self) -> Result<Vec<GpuInfo>, String>;
}
