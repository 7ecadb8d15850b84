//! Rollout workers: actors that own a batch of environments and a CPU copy
//! of the policy, and sample fragments into the object store.
//!
//! A worker is spawned either here, as a supervised child with its
//! [`EnvMaker`] (any maker, closures included), or on any node of a
//! cluster through its registered constructor [`RolloutWorker::on_node`]
//! from a [`WorkerSetup`]: plain data that travels, the environment named
//! by its registered id. Either way it receives the weights as an
//! `ObjectRef` (pulled from the learner's node when it is elsewhere) and
//! answers with an `ObjectRef` to the fragment it put in its own node's
//! store.
//!
//! The rollout itself (environment steps and policy inference) runs on a
//! blocking thread, never on the runtime's async workers: a slow or hung
//! user environment holds that thread only, so timers, the trainer's
//! deadline and the kill that replaces a hung worker still run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};
use troupe::gpu::Weights;
use troupe::{NodeId, ObjectError, ObjectRef, Runtime};

use crate::env::{EnvError, EnvMaker};
use crate::error::RlError;
use crate::fragment::Fragment;
use crate::mix_seed;
use crate::policy::{ActMode, CpuPolicy, PolicyOutput, PolicyShape};
use crate::space::Actions;

/// What a local worker needs to build itself (again, after a restart).
#[derive(Clone)]
pub(crate) struct LocalSetup {
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

/// What a rollout worker on any node is built from
/// ([`RolloutWorker::on_node`]): plain data, so that it travels to the node
/// that spawns the worker. The trainer makes it; it is public so that the
/// worker's registered constructor can name it.
///
/// A worker's random streams are `mix_seed(seed, [stream, index,
/// incarnation])`: the same for a worker here and one on another node, so
/// that where a worker runs does not change what it samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerSetup {
    /// The environment's registered id ([`EnvMaker::by_id`]).
    pub env: String,
    /// The worker's index (`0..num_workers`); its environments are
    /// `index * envs ..`.
    pub index: usize,
    /// Environments it steps together.
    pub envs: usize,
    /// Steps per environment in a fragment.
    pub fragment_len: usize,
    /// The policy's shape (the weights must fit it).
    pub shape: PolicyShape,
    /// The run's seed.
    pub seed: u64,
    /// Which incarnation this is: the trainer counts a worker's respawns
    /// in the high 32 bits; the worker counts fresh starts of its own
    /// environments (after a cancelled rollout) in the low ones.
    pub incarnation: u64,
}

/// How a worker makes its environments again and counts its incarnations.
enum Build {
    /// A supervised local child: the maker, and the incarnations shared
    /// with the child's later restarts.
    Local(LocalSetup),
    /// On any node: the maker by name (an unknown name is the first
    /// rollout's error), and the next incarnation.
    Named {
        setup: WorkerSetup,
        maker: Result<EnvMaker, EnvError>,
        next: u64,
    },
}

impl Build {
    fn index(&self) -> usize {
        match self {
            Build::Local(setup) => setup.index,
            Build::Named { setup, .. } => setup.index,
        }
    }

    fn shape(&self) -> &PolicyShape {
        match self {
            Build::Local(setup) => &setup.shape,
            Build::Named { setup, .. } => &setup.shape,
        }
    }
}

/// A rollout worker actor (one per `num_workers`). A local one is
/// supervised: a panic in an environment or the policy restarts it with
/// fresh environments, and the trainer asks it for the lost fragment
/// again; so does a worker that does not answer within `sample_timeout`,
/// which the trainer kills. One on another node
/// ([`PpoConfig::workers_on_cluster`](crate::PpoConfig::workers_on_cluster))
/// is respawned by the trainer instead, on a node the cluster picks (never
/// a dead one), with the same budget.
pub struct RolloutWorker {
    build: Build,
    /// The runtime it runs on (its node's).
    rt: Option<Runtime>,
    /// `None` while a rollout has it on its blocking thread (or after a
    /// call was dropped mid-rollout: the next call builds a fresh one).
    core: Option<Core>,
}

/// Why a rollout worker could not sample a fragment: serializable, so that
/// a worker on another node answers with it. The trainer turns it into an
/// [`RlError`].
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SampleError {
    /// An environment failed (retrying would fail the same way).
    #[error("rollout worker {worker}: {source}")]
    Env {
        /// The worker.
        worker: usize,
        /// What went wrong, naming the environment.
        #[source]
        source: EnvError,
    },
    /// The weights do not fit the worker's policy.
    #[error("rollout worker {worker}: the weights do not fit the policy: {reason}")]
    WeightsMismatch {
        /// The worker.
        worker: usize,
        /// How they differ.
        reason: String,
    },
    /// The worker's object store could not read the weights or keep the
    /// fragment.
    #[error("rollout worker {worker}: object store: {source}")]
    Object {
        /// The worker.
        worker: usize,
        /// The store's error.
        #[source]
        source: ObjectError,
    },
    /// The rollout was cancelled, or the worker runs outside a runtime.
    #[error("rollout worker {worker}: {reason}")]
    Failed {
        /// The worker.
        worker: usize,
        /// What happened.
        reason: String,
    },
}

impl From<SampleError> for RlError {
    fn from(err: SampleError) -> RlError {
        match err {
            SampleError::Env { worker, source } => RlError::Env { worker, source },
            SampleError::WeightsMismatch { reason, .. } => RlError::WeightsMismatch(reason),
            SampleError::Object { source, .. } => RlError::Object(source),
            failed @ SampleError::Failed { .. } => RlError::Learner(failed.to_string()),
        }
    }
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
    fn new(build: &mut Build) -> Core {
        let (index, fragment_len, seed, incarnation, envs) = match build {
            Build::Local(setup) => {
                let incarnation = setup.incarnations.fetch_add(1, Ordering::Relaxed);
                let first = setup.index * setup.envs;
                let envs = crate::VecEnv::from_maker(&setup.maker, first, setup.envs);
                let s = &*setup;
                (s.index, s.fragment_len, s.seed, incarnation, envs)
            }
            Build::Named { setup, maker, next } => {
                let incarnation = *next;
                *next = next.wrapping_add(1);
                let first = setup.index * setup.envs;
                let envs = match maker {
                    Ok(maker) => crate::VecEnv::from_maker(maker, first, setup.envs),
                    Err(err) => Err(err.clone()),
                };
                let s = &*setup;
                (s.index, s.fragment_len, s.seed, incarnation, envs)
            }
        };
        let stream = mix_seed(seed, &[1, index as u64, incarnation]);
        tracing::debug!(worker = index, incarnation, "rollout worker started");
        Core {
            index,
            fragment_len,
            rng: Xoshiro256PlusPlus::seed_from_u64(stream),
            episode_seed: mix_seed(seed, &[2, index as u64, incarnation]),
            envs,
            policy: None,
            needs_reset: true,
            out: PolicyOutput::default(),
            values: Vec::new(),
        }
    }

    /// Samples one fragment (on a blocking thread). Stops early, with an
    /// error no one reads, once `cancel` is set.
    fn rollout(&mut self, version: u64, cancel: &AtomicBool) -> Result<Fragment, SampleError> {
        let worker = self.index;
        let env_error = |source: EnvError| SampleError::Env { worker, source };
        let envs = self.envs.as_mut().map_err(|e| env_error(e.clone()))?;
        let (_, policy) = self
            .policy
            .as_mut()
            .ok_or_else(|| SampleError::WeightsMismatch {
                worker,
                reason: "the worker has no weights yet".into(),
            })?;
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
                return Err(SampleError::Failed {
                    worker,
                    reason: "the rollout was cancelled".into(),
                });
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
    /// A local worker, supervised here (any maker, closures included).
    pub(crate) fn local(setup: LocalSetup) -> RolloutWorker {
        let rt = Some(setup.rt.clone());
        let mut build = Build::Local(setup);
        RolloutWorker {
            core: Some(Core::new(&mut build)),
            build,
            rt,
        }
    }

    fn no_runtime(&self) -> SampleError {
        SampleError::Failed {
            worker: self.build.index(),
            reason: "the worker runs outside a Troupe runtime (spawn it with RolloutWorker::remote or through a Trainer)".into(),
        }
    }
}

#[troupe::actor]
impl RolloutWorker {
    /// A worker built from plain data, on whichever node spawns it (the
    /// registered constructor behind
    /// `RolloutWorker::remote(&rt, options).on_node(setup)`): it makes its
    /// environments by their registered id ([`EnvMaker::by_id`]); an
    /// unknown id is the error of its first `sample`.
    pub fn on_node(setup: WorkerSetup) -> Self {
        let maker = EnvMaker::by_id(&setup.env);
        let next = setup.incarnation;
        let mut build = Build::Named { setup, maker, next };
        RolloutWorker {
            core: Some(Core::new(&mut build)),
            build,
            rt: Runtime::current(),
        }
    }

    /// The node this worker runs on (`None` outside a runtime).
    pub fn node(&self) -> Option<NodeId> {
        self.rt
            .clone()
            .or_else(Runtime::current)
            .map(|rt| rt.node_id())
    }

    /// Samples one fragment with weights `version` (loaded from `weights`
    /// if the worker does not have them yet: read from the store, pulled
    /// from the learner's node when that is another) and puts it in the
    /// store of the worker's node. The rollout runs on a blocking thread;
    /// a panic in it panics this actor.
    pub async fn sample(
        &mut self,
        weights: ObjectRef<Weights>,
        version: u64,
    ) -> Result<ObjectRef<Fragment>, SampleError> {
        let worker = self.build.index();
        if self.rt.is_none() {
            self.rt = Runtime::current();
        }
        let Some(rt) = self.rt.clone() else {
            return Err(self.no_runtime());
        };
        let has = self
            .core
            .as_ref()
            .and_then(|core| core.policy.as_ref())
            .map(|(v, _)| *v);
        let policy = if has == Some(version) {
            None
        } else {
            let weights = rt
                .get(&weights)
                .await
                .map_err(|source| SampleError::Object { worker, source })?;
            let policy =
                CpuPolicy::from_weights(self.build.shape(), &weights).map_err(|err| match err {
                    RlError::WeightsMismatch(reason) => {
                        SampleError::WeightsMismatch { worker, reason }
                    }
                    other => SampleError::Failed {
                        worker,
                        reason: other.to_string(),
                    },
                })?;
            Some(policy)
        };
        let mut core = match self.core.take() {
            Some(core) => core,
            None => Core::new(&mut self.build),
        };
        if let Some(policy) = policy {
            core.policy = Some((version, policy));
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancel.clone());
        let span = tracing::debug_span!("rollout_fragment", worker, version);
        let rollout = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let result = core.rollout(version, &cancel);
            (core, result)
        });
        let (core, result) = match rollout.await {
            Ok(done) => done,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => {
                return Err(SampleError::Failed {
                    worker,
                    reason: format!("the rollout thread was cancelled: {err}"),
                })
            }
        };
        self.core = Some(core);
        let fragment = result?;
        metrics::counter!("troupe_rl_env_steps_total").increment(fragment.rows() as u64);
        rt.put(fragment)
            .await
            .map_err(|source| SampleError::Object { worker, source })
    }
}
