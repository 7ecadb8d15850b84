//! Resources in fixed point (thousandths), so that fractions add up exactly.

use std::collections::BTreeMap;

use crate::Resources;

/// An amount of each resource, in thousandths (memory in bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Units {
    // Signed: a task that takes back the CPU it lent during a nested get
    // may oversubscribe the node for a moment (as in Ray).
    pub(crate) cpus: i64,
    pub(crate) gpus: i64,
    pub(crate) memory: i64,
    pub(crate) custom: BTreeMap<String, i64>,
}

fn milli(x: f64) -> i64 {
    // Amounts are validated (finite, at most 1e12) before they get here.
    (x.max(0.0) * 1000.0).round() as i64
}

impl Units {
    pub(crate) fn of(r: &Resources) -> Self {
        Units {
            cpus: milli(r.num_cpus),
            gpus: milli(r.num_gpus),
            memory: i64::try_from(r.memory).unwrap_or(i64::MAX),
            custom: r
                .custom
                .iter()
                .map(|(k, v)| (k.clone(), milli(*v)))
                .collect(),
        }
    }

    pub(crate) fn fits_in(&self, have: &Units) -> bool {
        self.cpus <= have.cpus
            && self.gpus <= have.gpus
            && self.memory <= have.memory
            && self
                .custom
                .iter()
                .all(|(k, v)| *v == 0 || have.custom.get(k).is_some_and(|h| v <= h))
    }

    pub(crate) fn take_from(&self, have: &mut Units) {
        have.cpus -= self.cpus;
        have.gpus -= self.gpus;
        have.memory -= self.memory;
        for (k, v) in &self.custom {
            if let Some(h) = have.custom.get_mut(k) {
                *h -= v;
            }
        }
    }

    pub(crate) fn give_back(&self, have: &mut Units) {
        have.cpus += self.cpus;
        have.gpus += self.gpus;
        have.memory += self.memory;
        for (k, v) in &self.custom {
            *have.custom.entry(k.clone()).or_default() += v;
        }
    }

    pub(crate) fn is_zero(&self) -> bool {
        self.cpus == 0
            && self.gpus == 0
            && self.memory == 0
            && self.custom.values().all(|v| *v == 0)
    }

    /// Back to resources (for the state API and errors).
    pub(crate) fn to_resources(&self) -> Resources {
        Resources {
            num_cpus: self.cpus as f64 / 1000.0,
            num_gpus: self.gpus as f64 / 1000.0,
            memory: self.memory.max(0) as u64,
            custom: self
                .custom
                .iter()
                .map(|(k, v)| (k.clone(), *v as f64 / 1000.0))
                .collect(),
        }
    }
}
