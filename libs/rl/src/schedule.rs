//! The learning-rate schedule: linear annealing to 0 over the run's budget
//! (CleanRL's `anneal_lr`), or a constant rate.
//!
//! The budget is the one the trainer is asked to train for: the env-step
//! or iteration limit of [`Trainer::train_until`](crate::Trainer::train_until)'s
//! [`Stop`](crate::Stop), and [`PpoConfig::total_env_steps`] for a bare
//! [`Trainer::train`](crate::Trainer::train) or a stop without one. A rate
//! that reaches 0 while training goes on is warned about once.

use crate::config::PpoConfig;

/// The annealing schedule and whether its end was already warned about.
#[derive(Debug, Default)]
pub(crate) struct LrSchedule {
    warned: bool,
}

impl LrSchedule {
    /// The learning rate of an update made after `env_steps` steps, when
    /// the rate reaches 0 at `horizon` steps. Warns (once) when that is 0.
    pub(crate) fn rate(&mut self, config: &PpoConfig, env_steps: u64, horizon: u64) -> f64 {
        let lr = annealed(config, env_steps, horizon);
        if lr == 0.0 && !self.warned {
            self.warned = true;
            metrics::counter!("troupe_rl_learning_rate_exhausted_total").increment(1);
            tracing::warn!(
                env_steps,
                horizon,
                "the learning rate has annealed to 0 and training goes on without learning: \
                 give train_until a Stop with the run's env-step budget, raise \
                 PpoConfig::total_env_steps, or set anneal_lr(false)"
            );
        }
        lr
    }

    /// Whether a zero rate was warned about.
    #[cfg(test)]
    pub(crate) fn warned(&self) -> bool {
        self.warned
    }
}

/// `learning_rate · (1 − env_steps / horizon)`, not below 0; the constant
/// rate without `anneal_lr`.
pub(crate) fn annealed(config: &PpoConfig, env_steps: u64, horizon: u64) -> f64 {
    if !config.anneal_lr {
        return config.learning_rate;
    }
    let done = env_steps as f64 / horizon.max(1) as f64;
    config.learning_rate * (1.0 - done).max(0.0)
}

/// The env steps at which the rate reaches 0 for a run that stops at
/// `env_steps` steps or `iterations` iterations (whichever comes first),
/// from `now` (steps, iterations) with batches of `batch` steps. Without
/// either limit, `total_env_steps`. Never within the next batch, so the
/// run's last update still learns.
pub(crate) fn horizon(
    config: &PpoConfig,
    env_steps: Option<u64>,
    iterations: Option<u64>,
    now: (u64, u64),
) -> u64 {
    let batch = config.batch_size() as u64;
    let by_iterations = iterations.map(|i| {
        now.0
            .saturating_add(i.saturating_sub(now.1).saturating_mul(batch))
    });
    let budget = match (env_steps, by_iterations) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => return config.total_env_steps,
    };
    budget.max(now.0.saturating_add(batch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_anneals_over_the_budget_and_warns_once_at_zero() {
        let c = PpoConfig::default().learning_rate(1.0);
        let mut s = LrSchedule::default();
        assert_eq!(s.rate(&c, 0, 1000), 1.0);
        assert_eq!(s.rate(&c, 250, 1000), 0.75);
        assert!(!s.warned());
        assert_eq!(s.rate(&c, 1000, 1000), 0.0);
        assert!(s.warned());
        assert_eq!(s.rate(&c, 5000, 1000), 0.0);
        let constant = c.clone().anneal_lr(false);
        assert_eq!(annealed(&constant, 5000, 1000), 1.0);
    }

    #[test]
    fn the_horizon_is_the_stop_budget() {
        let c = PpoConfig::default().total_env_steps(1000);
        let batch = c.batch_size() as u64;
        assert_eq!(horizon(&c, None, None, (0, 0)), 1000);
        assert_eq!(horizon(&c, Some(100 * batch), None, (0, 0)), 100 * batch);
        // Ten more iterations from iteration 5.
        assert_eq!(
            horizon(&c, None, Some(15), (5 * batch, 5)),
            15 * batch,
            "iterations count from where training stands"
        );
        assert_eq!(
            horizon(&c, Some(3 * batch), Some(15), (0, 0)),
            3 * batch,
            "the nearer limit"
        );
        // A budget already spent still leaves the next update a rate.
        let h = horizon(&c, Some(batch), None, (4 * batch, 4));
        assert!(annealed(&c, 4 * batch, h) > 0.0);
    }
}
