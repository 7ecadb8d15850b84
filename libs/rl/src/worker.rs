//! Rollout workers: actors that own a batch of environments and a CPU copy
//! of the policy, and sample fragments into the object store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use tracing::Instrument;
use troupe::gpu::Weights;
use troupe::{ObjectRef, Runtime};

use crate::env::{EnvError, EnvMaker};
use crate::error::RlError;
use crate::fragment::Fragment;
use crate::mix_seed;
use crate::policy::{ActMode, CpuPolicy, PolicyOutput, PolicyShape};
use crate::space::Actions;

/// How long a rollout runs between yields to the runtime.
const YIELD_EVERY: Duration = Duration::from_millis(5);

/// What a worker needs to build itself (again, after a restart).
#[derive(Clone)]
pub(crate) struct WorkerSetup {
    pub(crate) index: usize,
    pub(crate) rt: Runtime,
    pub(crate) maker: EnvMaker,
    pub(crate) envs: usize,
    pub(crate) fragment_len: usize,
    pub(crate) shape: PolicyShape,
    pub(crate) seed: u64,
    /// Incarnations so far: each one seeds its episodes differently.
    pub(crate) incarnations: Arc<AtomicU64>,
}

/// A rollout worker actor (one per `num_workers`), supervised: a panic in
/// an environment or the policy restarts it with fresh environments, and
/// the trainer asks it for the lost fragment again.
pub struct RolloutWorker {
    setup: WorkerSetup,
    envs: Result<crate::VecEnv, EnvError>,
    policy: Option<(u64, CpuPolicy)>,
    rng: Xoshiro256PlusPlus,
    episode_seed: u64,
    needs_reset: bool,
    out: PolicyOutput,
    values: Vec<f32>,
}

impl RolloutWorker {
    pub(crate) fn new(setup: WorkerSetup) -> RolloutWorker {
        let incarnation = setup.incarnations.fetch_add(1, Ordering::Relaxed);
        let first = setup.index * setup.envs;
        let envs = crate::VecEnv::from_maker(&setup.maker, first, setup.envs);
        let stream = mix_seed(setup.seed, &[1, setup.index as u64, incarnation]);
        tracing::debug!(worker = setup.index, incarnation, "rollout worker started");
        RolloutWorker {
            rng: Xoshiro256PlusPlus::seed_from_u64(stream),
            episode_seed: mix_seed(setup.seed, &[2, setup.index as u64, incarnation]),
            envs,
            policy: None,
            needs_reset: true,
            out: PolicyOutput::default(),
            values: Vec::new(),
            setup,
        }
    }

    /// Samples one fragment. It yields to the runtime every few
    /// milliseconds, so a kill or a shutdown interrupts a long fragment
    /// instead of waiting for its end (the trainer then samples it again).
    async fn rollout(&mut self, version: u64) -> Result<Fragment, RlError> {
        let worker = self.setup.index;
        let env_error = |source: EnvError| RlError::Env { worker, source };
        let envs = self.envs.as_mut().map_err(|e| env_error(e.clone()))?;
        let (_, policy) = self
            .policy
            .as_mut()
            .ok_or_else(|| RlError::WeightsMismatch("the worker has no weights yet".into()))?;
        if self.needs_reset {
            envs.reset(Some(self.episode_seed)).map_err(env_error)?;
            self.needs_reset = false;
        }
        let (k, steps) = (envs.len(), self.setup.fragment_len);
        let obs_len = envs.observation_space().flat_len();
        let action_len = envs.action_space().action_len();
        let rows = k * steps;
        let mut f = Fragment {
            worker,
            policy_version: version,
            num_envs: k,
            steps,
            obs_len,
            action_len,
            observations: Vec::with_capacity(rows * obs_len),
            actions: Vec::with_capacity(rows * action_len),
            log_probs: Vec::with_capacity(rows),
            values: Vec::with_capacity(rows),
            rewards: Vec::with_capacity(rows),
            terminated: Vec::with_capacity(rows),
            truncated: Vec::with_capacity(rows),
            valid: Vec::with_capacity(rows),
            last_values: Vec::with_capacity(k),
            episodes: Vec::new(),
        };
        let discrete = matches!(policy.shape().head, crate::ActionHead::Categorical { .. });
        let mut since_yield = Instant::now();
        for _ in 0..steps {
            if since_yield.elapsed() >= YIELD_EVERY {
                tokio::task::yield_now().await;
                since_yield = Instant::now();
            }
            f.observations.extend_from_slice(envs.observations());
            policy.act(
                envs.observations(),
                k,
                ActMode::Sample,
                &mut self.rng,
                &mut self.out,
            );
            let actions = if discrete {
                Actions::Discrete(&self.out.discrete)
            } else {
                Actions::Continuous(&self.out.continuous)
            };
            if let Err(err) = envs.step(actions) {
                self.needs_reset = true;
                return Err(env_error(err));
            }
            f.actions.extend_from_slice(&self.out.actions);
            f.log_probs.extend_from_slice(&self.out.log_probs);
            f.values.extend_from_slice(&self.out.values);
            f.rewards.extend(envs.rewards().iter().map(|r| *r as f32));
            f.terminated.extend_from_slice(envs.terminated());
            f.truncated.extend_from_slice(envs.truncated());
            f.valid.extend(envs.autoreset().iter().map(|reset| !reset));
        }
        policy.values(envs.observations(), k, &mut self.values);
        f.last_values.extend_from_slice(&self.values);
        f.episodes = envs.take_episodes();
        Ok(f)
    }
}

#[troupe::actor]
impl RolloutWorker {
    /// Samples one fragment with weights `version` (loaded from `weights`
    /// if the worker does not have them yet) and puts it in the store.
    pub async fn sample(
        &mut self,
        weights: ObjectRef<Weights>,
        version: u64,
    ) -> Result<ObjectRef<Fragment>, RlError> {
        if self.policy.as_ref().map(|(v, _)| *v) != Some(version) {
            let weights = self.setup.rt.get(&weights).await?;
            let policy = CpuPolicy::from_weights(&self.setup.shape, &weights)?;
            self.policy = Some((version, policy));
        }
        let span = tracing::debug_span!("rollout_fragment", worker = self.setup.index, version);
        let fragment = self.rollout(version).instrument(span).await?;
        metrics::counter!("troupe_rl_env_steps_total").increment(fragment.rows() as u64);
        Ok(self.setup.rt.put(fragment).await?)
    }
}
