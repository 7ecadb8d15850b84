//! Search spaces: grid, uniform, log-uniform, integer and choice
//! dimensions, sampled reproducibly from a seed (Ray's `tune.grid_search`,
//! `tune.uniform`, `tune.loguniform`, `tune.randint`, `tune.choice`).
//!
//! Generation follows Ray's `BasicVariantGenerator`: each of `num_samples`
//! samples runs over the whole grid (the cartesian product of the grid
//! dimensions, the last one varying fastest), and each resulting config
//! draws its random dimensions afresh. The generator is xoshiro256++
//! seeded with the seed, so a seed gives the same configs everywhere.

use rand_xoshiro::rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

use crate::error::TuneError;
use crate::params::{Params, Value};

/// The generator the crate uses wherever it draws.
pub(crate) type Rng = Xoshiro256PlusPlus;

/// A generator from a seed.
pub(crate) fn rng(seed: u64) -> Rng {
    Xoshiro256PlusPlus::seed_from_u64(seed)
}

/// Uniform in `[0, 1)`, from the top 53 bits.
pub(crate) fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform in `0..n` (`n > 0`), without modulo bias worth noting.
pub(crate) fn below(rng: &mut Rng, n: usize) -> usize {
    ((rng.next_u64() as u128 * n as u128) >> 64) as usize
}

/// One dimension of a search space.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Domain {
    /// Every value, each in its own trial (the grid's product).
    Grid(Vec<Value>),
    /// A float uniform in `[low, high)`.
    Uniform {
        /// Lower bound, included.
        low: f64,
        /// Upper bound, excluded.
        high: f64,
    },
    /// A float whose logarithm is uniform in `[ln low, ln high)`.
    LogUniform {
        /// Lower bound, included (> 0).
        low: f64,
        /// Upper bound, excluded.
        high: f64,
    },
    /// An integer uniform in `low..high` (high excluded, as Ray's `randint`).
    RandInt {
        /// Lower bound, included.
        low: i64,
        /// Upper bound, excluded.
        high: i64,
    },
    /// One of the values, each as likely.
    Choice(Vec<Value>),
}

impl Domain {
    /// Draws a value (a grid draws as a choice).
    pub(crate) fn sample(&self, rng: &mut Rng) -> Value {
        match self {
            Domain::Grid(values) | Domain::Choice(values) => {
                values[below(rng, values.len())].clone()
            }
            Domain::Uniform { low, high } => Value::Float(low + (high - low) * unit(rng)),
            Domain::LogUniform { low, high } => {
                let (a, b) = (low.ln(), high.ln());
                Value::Float((a + (b - a) * unit(rng)).exp())
            }
            Domain::RandInt { low, high } => {
                let span = (*high - *low) as u64;
                let offset = ((rng.next_u64() as u128 * span as u128) >> 64) as i64;
                Value::Int(low + offset)
            }
        }
    }

    fn check(&self, name: &str) -> Result<(), TuneError> {
        let bad = |reason: String| Err(TuneError::invalid(format!("dimension `{name}`"), reason));
        match self {
            Domain::Grid(v) | Domain::Choice(v) if v.is_empty() => bad("no values".into()),
            Domain::Uniform { low, high }
                if !(low.is_finite() && high.is_finite() && low < high) =>
            {
                bad(format!("needs finite low < high, got [{low}, {high})"))
            }
            Domain::LogUniform { low, high }
                if !(low.is_finite() && high.is_finite() && *low > 0.0 && low < high) =>
            {
                bad(format!("needs 0 < low < high, got [{low}, {high})"))
            }
            Domain::RandInt { low, high } if low >= high => {
                bad(format!("needs low < high, got {low}..{high}"))
            }
            _ => Ok(()),
        }
    }
}

/// A search space: named dimensions, in the order they were added.
///
/// ```
/// use troupe_tune::SearchSpace;
/// let space = SearchSpace::new()
///     .grid("layers", [1, 2, 3])
///     .log_uniform("lr", 1e-4, 1e-1)
///     .choice("act", ["relu", "tanh"]);
/// let configs = space.generate(2, 7).unwrap(); // 2 samples × 3 grid points
/// assert_eq!(configs.len(), 6);
/// assert_eq!(configs, space.generate(2, 7).unwrap()); // same seed, same configs
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchSpace {
    dims: Vec<(String, Domain)>,
}

impl SearchSpace {
    /// An empty space (one config, with no values).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `name` over `domain` (replacing an earlier one of that name).
    pub fn dim(mut self, name: impl Into<String>, domain: Domain) -> Self {
        let name = name.into();
        self.dims.retain(|(n, _)| *n != name);
        self.dims.push((name, domain));
        self
    }

    /// A grid over `values` (Ray's `tune.grid_search`).
    pub fn grid<V: Into<Value>>(self, name: &str, values: impl IntoIterator<Item = V>) -> Self {
        self.dim(
            name,
            Domain::Grid(values.into_iter().map(Into::into).collect()),
        )
    }

    /// Uniform in `[low, high)` (Ray's `tune.uniform`).
    pub fn uniform(self, name: &str, low: f64, high: f64) -> Self {
        self.dim(name, Domain::Uniform { low, high })
    }

    /// Log-uniform in `[low, high)` (Ray's `tune.loguniform`).
    pub fn log_uniform(self, name: &str, low: f64, high: f64) -> Self {
        self.dim(name, Domain::LogUniform { low, high })
    }

    /// An integer in `low..high` (Ray's `tune.randint`).
    pub fn randint(self, name: &str, low: i64, high: i64) -> Self {
        self.dim(name, Domain::RandInt { low, high })
    }

    /// One of `values` (Ray's `tune.choice`).
    pub fn choice<V: Into<Value>>(self, name: &str, values: impl IntoIterator<Item = V>) -> Self {
        self.dim(
            name,
            Domain::Choice(values.into_iter().map(Into::into).collect()),
        )
    }

    /// The dimensions.
    pub fn dims(&self) -> impl Iterator<Item = (&str, &Domain)> {
        self.dims.iter().map(|(n, d)| (n.as_str(), d))
    }

    /// The number of points of the grid (1 without grid dimensions).
    pub fn grid_size(&self) -> usize {
        self.dims
            .iter()
            .map(|(_, d)| match d {
                Domain::Grid(v) => v.len(),
                _ => 1,
            })
            .product()
    }

    /// Checks every dimension.
    pub fn validate(&self) -> Result<(), TuneError> {
        self.dims.iter().try_for_each(|(n, d)| d.check(n))
    }

    /// `num_samples` × [`grid_size`](Self::grid_size) configs, drawn from
    /// `seed`: the same seed gives the same configs.
    pub fn generate(&self, num_samples: usize, seed: u64) -> Result<Vec<Params>, TuneError> {
        self.validate()?;
        if num_samples == 0 {
            return Err(TuneError::invalid("num_samples", "must be at least 1"));
        }
        let grids: Vec<(&str, &[Value])> = self
            .dims
            .iter()
            .filter_map(|(n, d)| match d {
                Domain::Grid(v) => Some((n.as_str(), v.as_slice())),
                _ => None,
            })
            .collect();
        let points = self.grid_size();
        let mut rng = rng(seed);
        let mut out = Vec::with_capacity(num_samples * points);
        for _ in 0..num_samples {
            for point in 0..points {
                let mut params = Params::new();
                // Mixed radix, the last grid dimension fastest.
                let mut rest = point;
                for (name, values) in grids.iter().rev() {
                    params.set(*name, values[rest % values.len()].clone());
                    rest /= values.len();
                }
                for (name, domain) in &self.dims {
                    if !matches!(domain, Domain::Grid(_)) {
                        params.set(name.as_str(), domain.sample(&mut rng));
                    }
                }
                out.push(params);
            }
        }
        Ok(out)
    }
}
