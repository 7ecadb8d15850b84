//! The learner actor: the model and its optimizer on the actor's device,
//! and PPO's update (CleanRL's `ppo.py`, detail for detail).

use std::sync::Arc;

use get_size2::GetSize;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};
use troupe::gpu::tch::{self, Kind, Tensor};
use troupe::gpu::{device, Weights};
use troupe::{ObjectRef, Runtime};

use crate::config::PpoConfig;
use crate::error::RlError;
use crate::fragment::Fragment;
use crate::mix_seed;
use crate::normalize::RewardScaler;
use crate::policy::{tensor_to_vec, ActionHead, PolicyShape, TorchPolicy};

/// What one update measured (means over its minibatches).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateStats {
    /// The clipped surrogate loss.
    pub policy_loss: f64,
    /// The value loss (halved squared error, clipped or not).
    pub value_loss: f64,
    /// Mean entropy of the action distribution.
    pub entropy: f64,
    /// Approximate KL between the acting and updated policies
    /// (`(r - 1) - ln r`, Schulman's low-variance estimator).
    pub approx_kl: f64,
    /// Fraction of ratios outside the clip range.
    pub clip_fraction: f64,
    /// How much of the returns' variance the values explain.
    pub explained_variance: f64,
    /// Rows trained on (autoreset rows excluded).
    pub samples: usize,
    /// Gradient steps taken.
    pub gradient_steps: usize,
    /// The learning rate used.
    pub learning_rate: f64,
}

/// A tensor as plain numbers, for checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, GetSize)]
pub(crate) struct NamedTensor {
    pub(crate) name: String,
    pub(crate) shape: Vec<i64>,
    pub(crate) data: Vec<f32>,
}

/// Everything the learner needs to continue exactly where it stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, GetSize)]
pub(crate) struct LearnerState {
    pub(crate) variables: Vec<NamedTensor>,
    pub(crate) adam_m: Vec<f32>,
    pub(crate) adam_v: Vec<f32>,
    pub(crate) adam_steps: u64,
    pub(crate) updates: u64,
    /// Reward normalization's statistics (default: none gathered yet).
    #[serde(default)]
    pub(crate) reward_scaler: RewardScaler,
}

/// Adam over all parameters as one flat vector (PyTorch's `Adam`
/// arithmetic): one set of tensor operations per step instead of one per
/// parameter, and a state that fits in a checkpoint (`tch`'s optimizer does
/// not expose its moments).
struct Adam {
    params: Vec<(String, Tensor)>,
    sizes: Vec<i64>,
    m: Tensor,
    v: Tensor,
    steps: u64,
    eps: f64,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;

impl Adam {
    fn new(vs: &tch::nn::VarStore, eps: f64) -> Adam {
        let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let sizes: Vec<i64> = params.iter().map(|(_, p)| p.numel() as i64).collect();
        let total: i64 = sizes.iter().sum();
        let device = vs.device();
        Adam {
            params,
            sizes,
            m: Tensor::zeros([total], (Kind::Float, device)),
            v: Tensor::zeros([total], (Kind::Float, device)),
            steps: 0,
            eps,
        }
    }

    fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// Clips the global gradient norm to `max_norm` (as
    /// `clip_grad_norm_`), then takes one Adam step.
    fn step(&mut self, lr: f64, max_norm: f64) {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self
                .params
                .iter()
                .map(|(_, p)| {
                    let g = p.grad();
                    if g.defined() {
                        g.flatten(0, -1)
                    } else {
                        p.zeros_like().flatten(0, -1)
                    }
                })
                .collect();
            let g = Tensor::cat(&grads, 0);
            let coef = (g.norm() + 1e-6)
                .reciprocal()
                .multiply_scalar(max_norm)
                .clamp_max(1.0);
            let g = g * coef;
            self.steps += 1;
            let _ = self.m.g_mul_scalar_(BETA1);
            let _ = self.m.g_add_(&(&g * (1.0 - BETA1)));
            let _ = self.v.g_mul_scalar_(BETA2);
            let _ = self.v.addcmul_(&(&g * (1.0 - BETA2)), &g);
            let bias1 = 1.0 - BETA1.powi(self.steps as i32);
            let bias2 = 1.0 - BETA2.powi(self.steps as i32);
            let denom = self.v.sqrt() / bias2.sqrt() + self.eps;
            let update = (&self.m / denom) * (-lr / bias1);
            for ((_, p), chunk) in self
                .params
                .iter_mut()
                .zip(update.split_with_sizes(&self.sizes, 0))
            {
                let _ = p.g_add_(&chunk.view_(p.size()));
            }
        });
    }
}

/// The learner actor: the runtime handle and the model, which an update
/// lends to a blocking thread.
pub(crate) struct Learner {
    rt: Runtime,
    core: Option<LearnerCore>,
}

/// The model, its optimizer and the update count.
struct LearnerCore {
    config: PpoConfig,
    policy: TorchPolicy,
    adam: Adam,
    updates: u64,
    rewards: RewardScaler,
}

impl Learner {
    /// Builds the model on this actor's device (`troupe::gpu::device()`).
    pub(crate) fn new(
        rt: Runtime,
        config: PpoConfig,
        shape: PolicyShape,
    ) -> Result<Learner, RlError> {
        tch::set_num_threads(config.learner_threads as i32);
        let on = device()?;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix_seed(config.seed, &[3]));
        let policy = TorchPolicy::new(shape, on, &mut rng)?;
        let adam = Adam::new(&policy.vs, config.adam_eps);
        tracing::debug!(device = ?on, "learner started");
        Ok(Learner {
            rt,
            core: Some(LearnerCore {
                config,
                policy,
                adam,
                updates: 0,
                rewards: RewardScaler::default(),
            }),
        })
    }

    fn core(&self) -> Result<&LearnerCore, RlError> {
        self.core
            .as_ref()
            .ok_or_else(|| RlError::Learner("the model was lost in a failed update".into()))
    }

    fn core_mut(&mut self) -> Result<&mut LearnerCore, RlError> {
        self.core
            .as_mut()
            .ok_or_else(|| RlError::Learner("the model was lost in a failed update".into()))
    }
}

impl LearnerCore {
    fn train(&mut self, fragments: &[Arc<Fragment>], lr: f64) -> Result<UpdateStats, RlError> {
        let c = &self.config;
        let shape = &self.policy.shape;
        let on = self.policy.vs.device();
        let discrete = matches!(shape.head, ActionHead::Categorical { .. });
        let (mut obs, mut act, mut old_logp, mut adv, mut ret, mut old_v) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for f in fragments {
            f.check().map_err(RlError::Learner)?;
            if f.obs_len != shape.obs_len || f.action_len != shape.head.action_len() {
                return Err(RlError::Learner(format!(
                    "fragment of worker {} has observations of {} and actions of {} floats; the policy takes {} and {}",
                    f.worker,
                    f.obs_len,
                    f.action_len,
                    shape.obs_len,
                    shape.head.action_len()
                )));
            }
            let scale = if c.normalize_rewards {
                self.rewards.update(f, c.gamma)
            } else {
                1.0
            };
            let (a, r) = f.advantages_scaled(c.gamma as f32, c.gae_lambda as f32, scale);
            for i in 0..f.rows() {
                if f.valid[i] {
                    obs.extend_from_slice(&f.observations[i * f.obs_len..(i + 1) * f.obs_len]);
                    act.extend_from_slice(&f.actions[i * f.action_len..(i + 1) * f.action_len]);
                    old_logp.push(f.log_probs[i]);
                    adv.push(a[i]);
                    ret.push(r[i]);
                    old_v.push(f.values[i]);
                }
            }
        }
        let n = adv.len();
        let mut stats = UpdateStats {
            samples: n,
            learning_rate: lr,
            explained_variance: explained_variance(&old_v, &ret),
            ..UpdateStats::default()
        };
        if n == 0 {
            return Ok(stats);
        }
        // Per-row values are `[n]`; observations and continuous actions are
        // always `[n, len]`, also when `len` is 1 (a `[n]` action minus the
        // `[n, 1]` mean would broadcast to `[n, n]`).
        let column = |v: &[f32]| Tensor::from_slice(v).to_device(on);
        let matrix = |v: &[f32], cols: usize| column(v).reshape([n as i64, cols as i64]);
        let obs = matrix(&obs, shape.obs_len);
        let act = if discrete {
            column(&act)
        } else {
            matrix(&act, shape.head.action_len())
        };
        let (old_logp, adv, ret, old_v) = (
            column(&old_logp),
            column(&adv),
            column(&ret),
            column(&old_v),
        );

        let mb = n.div_ceil(c.num_minibatches);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix_seed(c.seed, &[4, self.updates]));
        let mut order: Vec<i64> = (0..n as i64).collect();
        let sums = Tensor::zeros([5], (Kind::Float, on));
        let mut steps = 0usize;
        for _ in 0..c.update_epochs {
            let mut last_kl = None;
            // When one minibatch is the whole batch its order changes
            // nothing: skip the shuffle and the gathers.
            let perm = if mb == n {
                None
            } else {
                order.shuffle(&mut rng);
                Some(Tensor::from_slice(&order).to_device(on))
            };
            for start in (0..n).step_by(mb) {
                let len = mb.min(n - start);
                let idx = perm.as_ref().map(|p| p.narrow(0, start as i64, len as i64));
                let pick = |t: &Tensor| match &idx {
                    Some(idx) => t.index_select(0, idx),
                    None => t.shallow_clone(),
                };
                let (new_logp, entropy, new_v) = self.policy.evaluate(&pick(&obs), &pick(&act));
                let logratio = new_logp - pick(&old_logp);
                let ratio = logratio.exp();
                let mut mb_adv = pick(&adv);
                if c.normalize_advantages && len > 1 {
                    mb_adv = (&mb_adv - mb_adv.mean(Kind::Float)) / (mb_adv.std(true) + 1e-8);
                }
                let pg1 = -&mb_adv * &ratio;
                let pg2 = -&mb_adv * ratio.clamp(1.0 - c.clip_coef, 1.0 + c.clip_coef);
                let pg_loss = pg1.maximum(&pg2).mean(Kind::Float);
                let mb_ret = pick(&ret);
                let v_loss = if c.clip_value_loss {
                    let mb_old_v = pick(&old_v);
                    let unclipped = (&new_v - &mb_ret).square();
                    let clipped = &mb_old_v + (&new_v - &mb_old_v).clamp(-c.clip_coef, c.clip_coef);
                    let clipped = (clipped - &mb_ret).square();
                    unclipped.maximum(&clipped).mean(Kind::Float) * 0.5
                } else {
                    (&new_v - &mb_ret).square().mean(Kind::Float) * 0.5
                };
                let entropy = entropy.mean(Kind::Float);
                let loss = &pg_loss - &entropy * c.entropy_coef + &v_loss * c.value_coef;
                self.adam.zero_grad();
                loss.backward();
                self.adam.step(lr, c.max_grad_norm);
                steps += 1;
                let approx_kl = tch::no_grad(|| {
                    let kl = ((&ratio - 1.0) - &logratio).mean(Kind::Float);
                    let clipped = (&ratio - 1.0)
                        .abs()
                        .gt(c.clip_coef)
                        .to_kind(Kind::Float)
                        .mean(Kind::Float);
                    let row = Tensor::stack(
                        &[
                            pg_loss.detach(),
                            v_loss.detach(),
                            entropy.detach(),
                            kl.shallow_clone(),
                            clipped,
                        ],
                        0,
                    );
                    let _ = sums.shallow_clone().g_add_(&row);
                    kl
                });
                last_kl = Some(approx_kl);
            }
            // CleanRL's early stop: after a whole epoch, on the approximate
            // KL of its last minibatch.
            if let (Some(target), Some(kl)) = (c.target_kl, &last_kl) {
                if kl.double_value(&[]) > target {
                    break;
                }
            }
        }
        let means = tensor_to_vec(&(sums / steps.max(1) as f64))?;
        stats.policy_loss = f64::from(means[0]);
        stats.value_loss = f64::from(means[1]);
        stats.entropy = f64::from(means[2]);
        stats.approx_kl = f64::from(means[3]);
        stats.clip_fraction = f64::from(means[4]);
        stats.gradient_steps = steps;
        self.updates += 1;
        Ok(stats)
    }

    fn snapshot(&self) -> Result<Weights, RlError> {
        Ok(Weights::snapshot(&self.policy.vs)?)
    }
}

fn explained_variance(values: &[f32], returns: &[f32]) -> f64 {
    let n = returns.len() as f64;
    if returns.len() < 2 {
        return f64::NAN;
    }
    let mean = |x: &mut dyn Iterator<Item = f64>| x.sum::<f64>() / n;
    let var = |x: &[f64]| {
        let m = mean(&mut x.iter().copied());
        mean(&mut x.iter().map(|v| (v - m) * (v - m)))
    };
    let r: Vec<f64> = returns.iter().map(|v| f64::from(*v)).collect();
    let diff: Vec<f64> = returns
        .iter()
        .zip(values)
        .map(|(r, v)| f64::from(r - v))
        .collect();
    let var_r = var(&r);
    if var_r == 0.0 {
        f64::NAN
    } else {
        1.0 - var(&diff) / var_r
    }
}

impl LearnerCore {
    /// Everything a checkpoint needs.
    fn state(&self) -> Result<LearnerState, RlError> {
        let mut variables = Vec::new();
        let mut named: Vec<(String, Tensor)> = self.policy.vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in named {
            variables.push(NamedTensor {
                name,
                shape: t.size(),
                data: tensor_to_vec(&t)?,
            });
        }
        Ok(LearnerState {
            variables,
            adam_m: tensor_to_vec(&self.adam.m)?,
            adam_v: tensor_to_vec(&self.adam.v)?,
            adam_steps: self.adam.steps,
            updates: self.updates,
            reward_scaler: self.rewards.clone(),
        })
    }

    /// Restores a checkpoint's state; every name and shape is checked first,
    /// so a mismatch changes nothing.
    fn load_state(&mut self, state: LearnerState) -> Result<(), RlError> {
        let mut targets = self.policy.vs.variables();
        if targets.len() != state.variables.len() {
            return Err(RlError::WeightsMismatch(format!(
                "the checkpoint has {} variables, the model {}",
                state.variables.len(),
                targets.len()
            )));
        }
        for v in &state.variables {
            let target = targets.get(&v.name).ok_or_else(|| {
                RlError::WeightsMismatch(format!("the model has no variable {:?}", v.name))
            })?;
            let numel: i64 = v.shape.iter().product();
            if target.size() != v.shape || numel as usize != v.data.len() {
                return Err(RlError::WeightsMismatch(format!(
                    "{:?} is {:?} in the checkpoint, {:?} in the model",
                    v.name,
                    v.shape,
                    target.size()
                )));
            }
        }
        let total = self.adam.m.numel();
        if state.adam_m.len() != total || state.adam_v.len() != total {
            return Err(RlError::WeightsMismatch(format!(
                "the checkpoint's optimizer state has {} numbers, the model {total}",
                state.adam_m.len()
            )));
        }
        let on = self.policy.vs.device();
        tch::no_grad(|| {
            for v in &state.variables {
                if let Some(target) = targets.get_mut(&v.name) {
                    target.copy_(&Tensor::from_slice(&v.data).reshape(&v.shape).to_device(on));
                }
            }
            self.adam
                .m
                .copy_(&Tensor::from_slice(&state.adam_m).to_device(on));
            self.adam
                .v
                .copy_(&Tensor::from_slice(&state.adam_v).to_device(on));
        });
        self.adam.steps = state.adam_steps;
        self.updates = state.updates;
        self.rewards = state.reward_scaler;
        Ok(())
    }
}

#[troupe::actor]
impl Learner {
    /// The device the model lives on.
    pub(crate) fn device(&self) -> Result<String, RlError> {
        Ok(format!("{:?}", self.core()?.policy.vs.device()))
    }

    /// One PPO update on `fragments` with learning rate `lr`. The update
    /// runs on a blocking thread (it takes milliseconds to seconds), so it
    /// holds none of the runtime's async workers; a panic in it fails this
    /// call as a panic of the actor.
    pub(crate) async fn update(
        &mut self,
        fragments: Vec<ObjectRef<Fragment>>,
        lr: f64,
    ) -> Result<UpdateStats, RlError> {
        let fragments = self.rt.get_many(&fragments, None).await?;
        let mut core = self
            .core
            .take()
            .ok_or_else(|| RlError::Learner("the model was lost in a failed update".into()))?;
        let began = std::time::Instant::now();
        let (core, result) = match tokio::task::spawn_blocking(move || {
            let result = core.train(&fragments, lr);
            (core, result)
        })
        .await
        {
            Ok(done) => done,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => {
                return Err(RlError::Learner(format!(
                    "the update thread was cancelled: {err}"
                )))
            }
        };
        self.core = Some(core);
        metrics::histogram!("troupe_rl_update_seconds").record(began.elapsed().as_secs_f64());
        result
    }

    /// Snapshots the weights into the object store (waiting while the
    /// store is over its budget).
    pub(crate) async fn publish(&mut self) -> Result<ObjectRef<Weights>, RlError> {
        let snapshot = self.core()?.snapshot()?;
        Ok(self.rt.put(snapshot).await?)
    }

    /// Everything a checkpoint needs.
    pub(crate) fn state(&self) -> Result<LearnerState, RlError> {
        self.core()?.state()
    }

    /// Restores a checkpoint's state; every name and shape is checked first,
    /// so a mismatch changes nothing.
    pub(crate) fn load_state(&mut self, state: LearnerState) -> Result<(), RlError> {
        self.core_mut()?.load_state(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::Space;

    /// `rows` CartPole-like rows of one environment, all trained on.
    fn fragment(rows: usize) -> Fragment {
        let obs_len = 4;
        Fragment {
            worker: 0,
            policy_version: 0,
            num_envs: 1,
            steps: rows,
            obs_len,
            action_len: 1,
            observations: (0..rows * obs_len)
                .map(|i| (i * 37 % 101) as f32 / 50.0 - 1.0)
                .collect(),
            actions: (0..rows).map(|i| (i % 2) as f32).collect(),
            log_probs: vec![0.5f32.ln(); rows],
            values: vec![0.0; rows],
            rewards: (0..rows).map(|i| f32::from(i % 3 == 0)).collect(),
            terminated: vec![false; rows],
            truncated: vec![false; rows],
            valid: vec![true; rows],
            last_values: vec![0.0],
            episodes: vec![],
        }
    }

    fn core(config: PpoConfig) -> LearnerCore {
        let shape = PolicyShape {
            obs_len: 4,
            hidden: config.hidden.clone(),
            head: ActionHead::for_space(&Space::discrete(2)).unwrap(),
        };
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let policy = TorchPolicy::new(shape, tch::Device::Cpu, &mut rng).unwrap();
        let adam = Adam::new(&policy.vs, config.adam_eps);
        LearnerCore {
            config,
            policy,
            adam,
            updates: 0,
            rewards: RewardScaler::default(),
        }
    }

    /// A fragment sampled by the CPU copy of `core`'s policy, so that the
    /// first update's ratios are 1 and its approximate KL 0.
    fn sampled_by(core: &LearnerCore, obs_len: usize, rows: usize) -> Fragment {
        let shape = core.policy.shape.clone();
        let weights = Weights::snapshot(&core.policy.vs).unwrap();
        let mut cpu = crate::policy::CpuPolicy::from_weights(&shape, &weights).unwrap();
        let obs: Vec<f32> = (0..rows * obs_len)
            .map(|i| ((i * 53 % 97) as f32 / 48.0) - 1.0)
            .collect();
        let mut out = crate::policy::PolicyOutput::default();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
        cpu.act(
            &obs,
            rows,
            crate::policy::ActMode::Sample,
            &mut rng,
            &mut out,
        );
        let mut f = fragment(rows);
        f.obs_len = obs_len;
        f.action_len = shape.head.action_len();
        f.observations = obs;
        f.actions = out.actions;
        f.log_probs = out.log_probs;
        f.values = out.values;
        f
    }

    #[test]
    fn one_dimensional_observations_and_actions_keep_their_rows_apart() {
        // Pendulum's 1-D torque, and a 1-D observation with a discrete action.
        for (obs_len, space) in [
            (3, Space::bounded(vec![-2.0], vec![2.0]).unwrap()),
            (1, Space::discrete(2)),
        ] {
            let config = PpoConfig::default().update_epochs(1);
            let shape = PolicyShape {
                obs_len,
                hidden: config.hidden.clone(),
                head: ActionHead::for_space(&space).unwrap(),
            };
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
            let policy = TorchPolicy::new(shape, tch::Device::Cpu, &mut rng).unwrap();
            let adam = Adam::new(&policy.vs, config.adam_eps);
            let mut core = LearnerCore {
                config,
                policy,
                adam,
                updates: 0,
                rewards: RewardScaler::default(),
            };
            let f = Arc::new(sampled_by(&core, obs_len, 64));
            let stats = core.train(&[f], 1e-9).unwrap();
            assert!(
                stats.approx_kl.abs() < 1e-5 && stats.clip_fraction == 0.0,
                "{space}: the learner's log-probabilities are the workers': {stats:?}"
            );
        }
    }

    #[test]
    fn the_kl_early_stop_ends_the_update_after_a_whole_epoch_as_cleanrl_does() {
        let f = Arc::new(fragment(64));
        let config = PpoConfig::default()
            .update_epochs(3)
            .num_minibatches(4)
            .target_kl(Some(1e-12));
        let stats = core(config.clone())
            .train(std::slice::from_ref(&f), 0.01)
            .unwrap();
        assert_eq!(
            stats.gradient_steps, 4,
            "the first epoch's 4 minibatches, then the stop"
        );
        let stats = core(config.target_kl(None)).train(&[f], 0.01).unwrap();
        assert_eq!(stats.gradient_steps, 12, "3 epochs of 4 without a target");
    }
}
