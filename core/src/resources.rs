//! Resource needs of actors and tasks, carried for the scheduler.

use std::collections::BTreeMap;

/// What a piece of work needs from a node: CPUs, GPUs (fractions allowed),
/// memory, and any custom named resource.
///
/// ```
/// use troupe_core::Resources;
/// let needs = Resources::cpus(2.0).with_gpus(0.25).with("license", 1.0);
/// assert_eq!(needs.num_gpus, 0.25);
/// assert_eq!(needs.custom["license"], 1.0);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
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
