//! Rollout workers: actors that own a batch of environments and a CPU copy
//! of the policy, and sample fragments into the object store.
//!
//! The rollout itself (environment steps and policy inference) runs on a
//! blocking thread, never on the runtime's async workers: a slow or hung
//! user environment holds that thread only, so timers, the trainer's
//! deadline and the kill that replaces a hung worker still run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use troupe::gpu::Weights;
use troupe::{ObjectRef, Runtime};

use crate::env::{EnvError, EnvMaker};
use crate::error::RlError;
use crate::fragment::Fragment;
use crate::mix_seed;
use crate::policy::{ActMode, CpuPolicy, PolicyOutput, PolicyShape};
use crate::space::Actions;

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
/// the trainer asks it for the lost fragment again; so does a worker that
/// does not answer within `sample_timeout`, which the trainer kills.
pub struct RolloutWorker {
    setup: WorkerSetup,
    /// `None` while a rollout has it on its blocking thread (or after a
    /// call was dropped mid-rollout: the next call builds a fresh one).
    core: Option<Core>,
}

/// The environments, the policy and the generators: everything a rollout
/// touches, moved to the blocking thread that runs it.
struct Core {
    index: usize,
    fragment_len: usize,
    envs: Result<crate::VecEnv, EnvError>,
    policy: Option<(u64, CpuPolicy)>,
    rng: Xoshiro256PlusPlus,
    episode_seed: u64,
    needs_reset: bool,
    out: PolicyOutput,
    values: Vec<f32>,
}

/// Sets the flag when dropped: a call dropped mid-rollout (a kill, a
/// shutdown) stops its blocking rollout at the next step.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Core {
    fn new(setup: &WorkerSetup) -> Core {
        let incarnation = setup.incarnations.fetch_add(1, Ordering::Relaxed);
        let first = setup.index * setup.envs;
        let envs = crate::VecEnv::from_maker(&setup.maker, first, setup.envs);
        let stream = mix_seed(setup.seed, &[1, setup.index as u64, incarnation]);
        tracing::debug!(worker = setup.index, incarnation, "rollout worker started");
        Core {
            index: setup.index,
            fragment_len: setup.fragment_len,
            rng: Xoshiro256PlusPlus::seed_from_u64(stream),
            episode_seed: mix_seed(setup.seed, &[2, setup.index as u64, incarnation]),
            envs,
            policy: None,
            needs_reset: true,
            out: PolicyOutput::default(),
            values: Vec::new(),
        }
    }

    /// Samples one fragment (on a blocking thread). Stops early, with an
    /// error no one reads, once `cancel` is set.
    fn rollout(&mut self, version: u64, cancel: &AtomicBool) -> Result<Fragment, RlError> {
        let worker = self.index;
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
        let (k, steps) = (envs.len(), self.fragment_len);
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
        for _ in 0..steps {
            if cancel.load(Ordering::Acquire) {
                return Err(RlError::Learner("the rollout was cancelled".into()));
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

impl RolloutWorker {
    pub(crate) fn new(setup: WorkerSetup) -> RolloutWorker {
        RolloutWorker {
            core: Some(Core::new(&setup)),
            setup,
        }
    }
}

#[troupe::actor]
impl RolloutWorker {
    /// Samples one fragment with weights `version` (loaded from `weights`
    /// if the worker does not have them yet) and puts it in the store. The
    /// rollout runs on a blocking thread; a panic in it panics this actor
    /// (its supervisor restarts it).
    pub async fn sample(
        &mut self,
        weights: ObjectRef<Weights>,
        version: u64,
    ) -> Result<ObjectRef<Fragment>, RlError> {
        let has = self
            .core
            .as_ref()
            .and_then(|core| core.policy.as_ref())
            .map(|(v, _)| *v);
        let policy = if has == Some(version) {
            None
        } else {
            let weights = self.setup.rt.get(&weights).await?;
            Some(CpuPolicy::from_weights(&self.setup.shape, &weights)?)
        };
        let mut core = match self.core.take() {
            Some(core) => core,
            None => Core::new(&self.setup),
        };
        if let Some(policy) = policy {
            core.policy = Some((version, policy));
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancel.clone());
        let span = tracing::debug_span!("rollout_fragment", worker = self.setup.index, version);
        let rollout = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let result = core.rollout(version, &cancel);
            (core, result)
        });
        let (core, result) = match rollout.await {
            Ok(done) => done,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => {
                return Err(RlError::Learner(format!(
                    "worker {}: the rollout thread was cancelled: {err}",
                    self.setup.index
                )))
            }
        };
        self.core = Some(core);
        let fragment = result?;
        metrics::counter!("troupe_rl_env_steps_total").increment(fragment.rows() as u64);
        Ok(self.setup.rt.put(fragment).await?)
    }
}
