//! Population based training (Ray's `PopulationBasedTraining`, with the
//! iteration as its time).
//!
//! Every `perturbation_interval` iterations of a trial, the trials with a
//! score are ranked by their last one. A trial in the bottom `quantile`
//! (at most half the population) *exploits*: it takes the checkpoint and
//! config of a trial drawn from the top `quantile`, then *explores*: each
//! mutated hyperparameter is drawn afresh from its domain with probability
//! `resample_probability`, and otherwise a number is multiplied by one of
//! the perturbation factors (an integer stays an integer, truncated as
//! Ray's `int()`) and a choice moves to a neighbouring value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Decision;
use crate::error::TuneError;
use crate::params::{Params, Value};
use crate::space::{below, rng, unit, Domain, Rng, SearchSpace};

/// PBT's settings and population. Defaults are Ray's: quantile 0.25,
/// factors 1.2 and 0.8, resample probability 0.25; the interval is 4
/// iterations (Ray's is 60 s of training time).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pbt {
    perturbation_interval: u64,
    quantile_fraction: f64,
    resample_probability: f64,
    perturbation_factors: (f64, f64),
    mutations: SearchSpace,
    seed: u64,
    draws: u64,
    /// Trial → (last score, last perturbation iteration, config).
    population: BTreeMap<usize, Member>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Member {
    score: f64,
    last_perturbation: u64,
    params: Params,
}

impl Pbt {
    /// PBT mutating the dimensions of `mutations` (Ray's
    /// `hyperparam_mutations`), drawing from `seed`.
    pub fn new(mutations: SearchSpace, seed: u64) -> Self {
        Pbt {
            perturbation_interval: 4,
            quantile_fraction: 0.25,
            resample_probability: 0.25,
            perturbation_factors: (1.2, 0.8),
            mutations,
            seed,
            draws: 0,
            population: BTreeMap::new(),
        }
    }

    /// Iterations between a trial's perturbations.
    pub fn perturbation_interval(mut self, iterations: u64) -> Self {
        self.perturbation_interval = iterations;
        self
    }

    /// The fraction of the population at each end (at most 0.5).
    pub fn quantile_fraction(mut self, q: f64) -> Self {
        self.quantile_fraction = q;
        self
    }

    /// The chance of drawing a hyperparameter afresh instead of
    /// perturbing it.
    pub fn resample_probability(mut self, p: f64) -> Self {
        self.resample_probability = p;
        self
    }

    /// The factors a number is multiplied by (one of the two, at random).
    pub fn perturbation_factors(mut self, up: f64, down: f64) -> Self {
        self.perturbation_factors = (up, down);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), TuneError> {
        if self.perturbation_interval == 0 {
            return Err(TuneError::invalid(
                "PBT",
                "perturbation_interval must be at least 1",
            ));
        }
        if !(0.0..=0.5).contains(&self.quantile_fraction) {
            return Err(TuneError::invalid(
                "PBT",
                "quantile_fraction must be in [0, 0.5]",
            ));
        }
        if !(0.0..=1.0).contains(&self.resample_probability) {
            return Err(TuneError::invalid(
                "PBT",
                "resample_probability must be in [0, 1]",
            ));
        }
        self.mutations.validate()
    }

    /// A generator that goes on where the last draw stopped, also after a
    /// resume (the state keeps the count of draws).
    fn rng(&mut self) -> Rng {
        self.draws += 1;
        rng(self.seed ^ self.draws.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    pub(crate) fn on_result(
        &mut self,
        trial: usize,
        iteration: u64,
        score: f64,
        params: &Params,
    ) -> Decision {
        let member = self.population.entry(trial).or_insert_with(|| Member {
            score,
            last_perturbation: 0,
            params: params.clone(),
        });
        member.score = score;
        member.params = params.clone();
        if iteration.saturating_sub(member.last_perturbation) < self.perturbation_interval {
            return Decision::Continue;
        }
        member.last_perturbation = iteration;
        let (lower, upper) = self.quantiles();
        if !lower.contains(&trial) || upper.is_empty() {
            return Decision::Continue;
        }
        let mut rng = self.rng();
        let donor = upper[below(&mut rng, upper.len())];
        let Some(donor_params) = self.population.get(&donor).map(|m| m.params.clone()) else {
            return Decision::Continue;
        };
        let params = self.explore(&donor_params, &mut rng);
        if let Some(m) = self.population.get_mut(&trial) {
            m.params = params.clone();
        }
        Decision::Exploit { donor, params }
    }

    /// The bottom and top quantiles, by last score (Ray's `_quantiles`).
    fn quantiles(&self) -> (Vec<usize>, Vec<usize>) {
        let mut ranked: Vec<(usize, f64)> =
            self.population.iter().map(|(t, m)| (*t, m.score)).collect();
        if ranked.len() <= 1 {
            return (Vec::new(), Vec::new());
        }
        ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        let n = ranked.len();
        let k = ((n as f64 * self.quantile_fraction).ceil() as usize).min(n / 2);
        let ids: Vec<usize> = ranked.into_iter().map(|(t, _)| t).collect();
        (ids[..k].to_vec(), ids[n - k..].to_vec())
    }

    /// The donor's config, perturbed (Ray's `explore`).
    fn explore(&self, donor: &Params, rng: &mut Rng) -> Params {
        let mut out = donor.clone();
        let (up, down) = self.perturbation_factors;
        for (name, domain) in self.mutations.dims() {
            let resample = unit(rng) < self.resample_probability;
            let current = donor.get(name);
            let new = match (domain, current) {
                (Domain::Grid(values) | Domain::Choice(values), Some(v)) if !resample => {
                    match values.iter().position(|x| x == v) {
                        Some(i) => {
                            let j = if unit(rng) < 0.5 {
                                i.saturating_sub(1)
                            } else {
                                (i + 1).min(values.len() - 1)
                            };
                            values[j].clone()
                        }
                        None => domain.sample(rng),
                    }
                }
                (_, Some(Value::Float(v))) if !resample => {
                    Value::Float(v * if unit(rng) < 0.5 { up } else { down })
                }
                (_, Some(Value::Int(v))) if !resample => {
                    Value::Int((*v as f64 * if unit(rng) < 0.5 { up } else { down }) as i64)
                }
                _ => domain.sample(rng),
            };
            out.set(name, new);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bottom_quantile_exploits_the_top_and_perturbs_by_a_factor() {
        let space = SearchSpace::new().uniform("lr", 0.0, 1.0);
        let mut s = Pbt::new(space, 1)
            .perturbation_interval(2)
            .resample_probability(0.0);
        for t in 0..4 {
            let p = Params::new().with("lr", 0.1 * (t + 1) as f64);
            assert_eq!(s.on_result(t, 1, t as f64, &p), Decision::Continue);
        }
        // At iteration 2, trial 0 (the worst of 4: quantile ceil(1) = 1)
        // takes trial 3's config.
        let p0 = Params::new().with("lr", 0.1);
        let Decision::Exploit { donor, params } = s.on_result(0, 2, 0.0, &p0) else {
            panic!("the worst trial did not exploit");
        };
        assert_eq!(donor, 3);
        let lr = params.f64("lr").unwrap();
        assert!(
            (lr - 0.4 * 1.2).abs() < 1e-12 || (lr - 0.4 * 0.8).abs() < 1e-12,
            "{lr}"
        );
        // The best does not.
        let p3 = Params::new().with("lr", 0.4);
        assert_eq!(s.on_result(3, 2, 3.0, &p3), Decision::Continue);
    }
}
