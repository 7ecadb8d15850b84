//! The actor-critic network: its shape, the learner's `tch` model, and
//! [`CpuPolicy`], the workers' pure-Rust copy that runs batched inference.
//!
//! Why a pure-Rust copy: a rollout worker runs the policy once per step of
//! each of its environments. Through libtorch, each of the dozen small
//! operations of an MLP forward pass costs microseconds of dispatch, so a
//! step would cost more in overhead than the environment costs in physics.
//! The copy does the same arithmetic in `f32` (matrix products through
//! `matrixmultiply`, a rational `tanh` accurate to a few ulps) over all of
//! a worker's environments at once, and loads its numbers from the
//! learner's [`troupe::gpu::Weights`] by variable name.

use rand::Rng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};
use troupe::gpu::tch::{nn, Device, Kind, Tensor};
use troupe::gpu::Weights;

use crate::error::RlError;
use crate::space::Space;

/// What the policy outputs: how actions are distributed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ActionHead {
    /// A categorical distribution over `n` actions (logits).
    Categorical {
        /// How many actions.
        n: usize,
    },
    /// A diagonal Gaussian with a state-independent log standard deviation
    /// (CleanRL's continuous PPO). Samples are clipped to the box before
    /// the environment sees them; the unclipped sample is what is learned.
    Gaussian {
        /// Lower bounds of the action box.
        low: Vec<f32>,
        /// Upper bounds of the action box.
        high: Vec<f32>,
    },
}

impl ActionHead {
    /// The head for an action space.
    pub fn for_space(space: &Space) -> Result<ActionHead, RlError> {
        match space {
            Space::Discrete { n } if *n <= 1 << 24 => {
                Ok(ActionHead::Categorical { n: *n as usize })
            }
            Space::Discrete { n } => Err(RlError::UnsupportedSpace {
                space: format!("Discrete({n})"),
                reason: "more actions than a policy here supports (2^24)".to_owned(),
            }),
            Space::Box { low, high } => Ok(ActionHead::Gaussian {
                low: low.clone(),
                high: high.clone(),
            }),
        }
    }

    /// Numbers the actor outputs per observation (logits or means).
    pub fn outputs(&self) -> usize {
        match self {
            ActionHead::Categorical { n } => *n,
            ActionHead::Gaussian { low, .. } => low.len(),
        }
    }

    /// Numbers an action takes (1 for an index).
    pub fn action_len(&self) -> usize {
        match self {
            ActionHead::Categorical { .. } => 1,
            ActionHead::Gaussian { low, .. } => low.len(),
        }
    }
}

/// The shape of an actor-critic: two MLPs (CleanRL's layout: separate actor
/// and critic, `tanh` hidden layers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyShape {
    /// Floats per observation.
    pub obs_len: usize,
    /// Hidden layer widths (the same for actor and critic).
    pub hidden: Vec<usize>,
    /// The action distribution.
    pub head: ActionHead,
}

impl PolicyShape {
    /// `(variable name, [out, in])` of each layer of `net` ("actor" or "critic").
    fn layers(&self, net: &str) -> Vec<(String, usize, usize)> {
        let out = if net == "actor" {
            self.head.outputs()
        } else {
            1
        };
        let mut widths = vec![self.obs_len];
        widths.extend(&self.hidden);
        widths.push(out);
        widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| (format!("{net}.l{i}"), w[1], w[0]))
            .collect()
    }
}

/// How a policy picks actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActMode {
    /// Sample from the distribution (training).
    Sample,
    /// The most likely action (evaluation): the argmax, or the mean.
    Deterministic,
}

/// The learner's model: actor and critic on a device, with `tch` autograd.
pub(crate) struct TorchPolicy {
    pub(crate) vs: nn::VarStore,
    actor: Vec<nn::Linear>,
    critic: Vec<nn::Linear>,
    log_std: Option<Tensor>,
    pub(crate) shape: PolicyShape,
}

/// An orthogonal matrix times `gain` (as `torch.nn.init.orthogonal_`),
/// drawn from our own generator so that a seed fixes the initial weights
/// without touching libtorch's global one.
fn orthogonal(
    rows: usize,
    cols: usize,
    gain: f64,
    rng: &mut Xoshiro256PlusPlus,
) -> Result<Tensor, RlError> {
    let normal: Vec<f32> = (0..rows * cols).map(|_| standard_normal(rng)).collect();
    let flat = Tensor::from_slice(&normal).reshape([rows as i64, cols as i64]);
    let flat = if rows < cols { flat.tr() } else { flat };
    let (q, r) = Tensor::f_linalg_qr(&flat, "reduced")?;
    let q = q * r.diag(0).sign();
    let q = if rows < cols { q.tr() } else { q };
    Ok((q * gain).contiguous())
}

/// Bounds of a Gaussian policy's log standard deviation, applied where it
/// is used (the learner's log-probabilities and entropy, the workers'
/// sampling): the standard deviation stays within [0.0067, 7.4], so it can
/// neither collapse to 0 nor blow up.
pub(crate) const LOG_STD_MIN: f64 = -5.0;
/// See [`LOG_STD_MIN`].
pub(crate) const LOG_STD_MAX: f64 = 2.0;

impl TorchPolicy {
    /// A freshly initialised model (CleanRL's `layer_init`: orthogonal
    /// weights, gain √2 for hidden layers, 0.01 for the actor's output, 1 for
    /// the critic's; zero biases; log-std 0).
    pub(crate) fn new(
        shape: PolicyShape,
        device: Device,
        rng: &mut Xoshiro256PlusPlus,
    ) -> Result<Self, RlError> {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let mut build = |net: &str, last_gain: f64| -> Result<Vec<nn::Linear>, RlError> {
            let layers = shape.layers(net);
            let count = layers.len();
            layers
                .into_iter()
                .enumerate()
                .map(|(i, (name, out, inp))| {
                    let gain = if i + 1 == count {
                        last_gain
                    } else {
                        2f64.sqrt()
                    };
                    let init = orthogonal(out, inp, gain, rng)?.to_device(device);
                    // "actor.l0": a path of two segments (names cannot hold dots).
                    let path = name
                        .split('.')
                        .fold(root.clone(), |p, segment| &p / segment);
                    let ws = path.var_copy("weight", &init);
                    let bs = path.zeros("bias", &[out as i64]);
                    Ok(nn::Linear { ws, bs: Some(bs) })
                })
                .collect()
        };
        let actor = build("actor", 0.01)?;
        let critic = build("critic", 1.0)?;
        let log_std = match &shape.head {
            ActionHead::Gaussian { low, .. } => {
                Some((&root / "actor").zeros("log_std", &[low.len() as i64]))
            }
            ActionHead::Categorical { .. } => None,
        };
        Ok(TorchPolicy {
            vs,
            actor,
            critic,
            log_std,
            shape,
        })
    }

    fn mlp(layers: &[nn::Linear], x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for (i, layer) in layers.iter().enumerate() {
            h = h.linear(&layer.ws, layer.bs.as_ref());
            if i + 1 < layers.len() {
                h = h.tanh();
            }
        }
        h
    }

    /// Values of a batch of observations, `[B]`.
    pub(crate) fn value(&self, obs: &Tensor) -> Tensor {
        Self::mlp(&self.critic, obs).squeeze_dim(-1)
    }

    /// Log-probabilities of `actions`, entropies and values, each `[B]`.
    pub(crate) fn evaluate(&self, obs: &Tensor, actions: &Tensor) -> (Tensor, Tensor, Tensor) {
        let out = Self::mlp(&self.actor, obs);
        let value = self.value(obs);
        match &self.log_std {
            None => {
                let logp_all = out.log_softmax(-1, Kind::Float);
                let index = actions.to_kind(Kind::Int64).unsqueeze(-1);
                let logp = logp_all.gather(-1, &index, false).squeeze_dim(-1);
                let entropy = -(logp_all.exp() * &logp_all).sum_dim_intlist(-1, false, Kind::Float);
                (logp, entropy, value)
            }
            Some(log_std) => {
                let log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX);
                let z = (actions - &out) * (-&log_std).exp();
                let half_log_2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
                let logp = (z.square() * -0.5 - &log_std - half_log_2pi).sum_dim_intlist(
                    -1,
                    false,
                    Kind::Float,
                );
                let entropy_per_dim = &log_std + 0.5 + half_log_2pi;
                let entropy = entropy_per_dim
                    .sum(Kind::Float)
                    .expand([out.size()[0]], false);
                (logp, entropy, value)
            }
        }
    }
}

/// One dense layer, `y = x Wᵀ + b`, with `W` row-major `[out, inp]` as in
/// `tch`.
#[derive(Clone, Debug)]
struct Dense {
    w: Vec<f32>,
    b: Vec<f32>,
    inp: usize,
    out: usize,
}

impl Dense {
    fn load(weights: &Weights, name: &str, out: usize, inp: usize) -> Result<Dense, RlError> {
        Ok(Dense {
            w: read_weights(weights, &format!("{name}.weight"), &[out, inp])?,
            b: read_weights(weights, &format!("{name}.bias"), &[out])?,
            inp,
            out,
        })
    }

    /// `y[rows, out] = x[rows, inp] Wᵀ + b`.
    fn forward(&self, x: &[f32], rows: usize, y: &mut Vec<f32>) {
        y.clear();
        for _ in 0..rows {
            y.extend_from_slice(&self.b);
        }
        assert_eq!(x.len(), rows * self.inp, "input batch of the wrong size");
        assert_eq!(self.w.len(), self.out * self.inp);
        // SAFETY: x is rows×inp (row stride inp), W read as its transpose
        // inp×out (row stride 1, column stride inp) lies within w
        // (out×inp), and y is rows×out (row stride out); all three lengths
        // are asserted or built above.
        #[allow(unsafe_code)]
        unsafe {
            matrixmultiply::sgemm(
                rows,
                self.inp,
                self.out,
                1.0,
                x.as_ptr(),
                self.inp as isize,
                1,
                self.w.as_ptr(),
                1,
                self.inp as isize,
                1.0,
                y.as_mut_ptr(),
                self.out as isize,
                1,
            );
        }
    }
}

fn read_weights(weights: &Weights, name: &str, shape: &[usize]) -> Result<Vec<f32>, RlError> {
    let tensor = weights.get(name).ok_or_else(|| {
        RlError::WeightsMismatch(format!("the weights have no variable {name:?}"))
    })?;
    let size: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
    if size != shape || tensor.kind() != Kind::Float {
        return Err(RlError::WeightsMismatch(format!(
            "{name:?} is {:?} {size:?} in the weights; the policy needs Float {shape:?}",
            tensor.kind()
        )));
    }
    let flat = tensor.view().flatten(0, -1).contiguous();
    Vec::<f32>::try_from(&flat).map_err(|e| RlError::WeightsMismatch(format!("{name:?}: {e}")))
}

/// `tanh` as a rational function (the approximation Eigen uses for
/// `float`): a few ulps from the exact value, branch-free so that loops over
/// it vectorise; `std`'s `tanhf` would cost more than the rest of the
/// forward pass.
#[inline]
pub(crate) fn fast_tanh(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    const A1: f32 = 4.893_524_6e-3;
    const A3: f32 = 6.372_619_3e-4;
    const A5: f32 = 1.485_722_4e-5;
    const A7: f32 = 5.122_297e-8;
    const A9: f32 = -8.604_671e-11;
    const A11: f32 = 2.000_188e-13;
    const A13: f32 = -2.760_768_5e-16;
    const B0: f32 = 4.893_525e-3;
    const B2: f32 = 2.268_434_6e-3;
    const B4: f32 = 1.185_347_1e-4;
    const B6: f32 = 1.198_258_4e-6;
    // Plain products and sums, not mul_add: without `target-feature=+fma`
    // at compile time mul_add is a libm call, ten times slower.
    let tiny = x.abs() < 4e-4;
    let c = x.clamp(-CLAMP, CLAMP);
    let x2 = c * c;
    let mut p = x2 * A13 + A11;
    p = x2 * p + A9;
    p = x2 * p + A7;
    p = x2 * p + A5;
    p = x2 * p + A3;
    p = x2 * p + A1;
    p *= c;
    let mut q = x2 * B6 + B4;
    q = x2 * q + B2;
    q = x2 * q + B0;
    if tiny {
        x
    } else {
        p / q
    }
}

/// A standard normal draw (Box-Muller; the second value is dropped to keep
/// the generator's stream simple to reason about).
pub(crate) fn standard_normal(rng: &mut Xoshiro256PlusPlus) -> f32 {
    // u1 in (0, 1]: ln never sees 0.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// What a policy gives for a batch of observations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyOutput {
    /// The actions as learned: indices (as `f32`) or unclipped samples,
    /// `[B, action_len]`.
    pub actions: Vec<f32>,
    /// Indices for a discrete action space, `[B]` (empty otherwise).
    pub discrete: Vec<u64>,
    /// Actions clipped to the box, for the environment, `[B, action_len]`
    /// (empty for a discrete space).
    pub continuous: Vec<f32>,
    /// Log-probability of each action, `[B]`.
    pub log_probs: Vec<f32>,
    /// The critic's value of each observation, `[B]`.
    pub values: Vec<f32>,
}

/// The policy on the CPU in plain Rust: what rollout workers run, batched
/// over their environments. Built from the learner's [`Weights`].
#[derive(Clone, Debug)]
pub struct CpuPolicy {
    shape: PolicyShape,
    actor: Vec<Dense>,
    critic: Vec<Dense>,
    log_std: Vec<f32>,
    scratch: [Vec<f32>; 2],
    actor_out: Vec<f32>,
}

impl CpuPolicy {
    /// Loads a policy of `shape` from `weights`; every variable's name,
    /// shape and dtype is checked.
    pub fn from_weights(shape: &PolicyShape, weights: &Weights) -> Result<CpuPolicy, RlError> {
        let load = |net: &str| -> Result<Vec<Dense>, RlError> {
            shape
                .layers(net)
                .iter()
                .map(|(name, out, inp)| Dense::load(weights, name, *out, *inp))
                .collect()
        };
        let log_std = match &shape.head {
            ActionHead::Gaussian { low, .. } => {
                let mut log_std = read_weights(weights, "actor.log_std", &[low.len()])?;
                for v in &mut log_std {
                    *v = v.clamp(LOG_STD_MIN as f32, LOG_STD_MAX as f32);
                }
                log_std
            }
            ActionHead::Categorical { .. } => Vec::new(),
        };
        Ok(CpuPolicy {
            shape: shape.clone(),
            actor: load("actor")?,
            critic: load("critic")?,
            log_std,
            scratch: [Vec::new(), Vec::new()],
            actor_out: Vec::new(),
        })
    }

    /// The policy's shape.
    pub fn shape(&self) -> &PolicyShape {
        &self.shape
    }

    fn mlp(
        layers: &[Dense],
        x: &[f32],
        rows: usize,
        scratch: &mut [Vec<f32>; 2],
        out: &mut Vec<f32>,
    ) {
        let [current, next] = scratch;
        let count = layers.len();
        for (i, layer) in layers.iter().enumerate() {
            let input: &[f32] = if i == 0 { x } else { current };
            if i + 1 == count {
                layer.forward(input, rows, out);
            } else {
                layer.forward(input, rows, next);
                for v in next.iter_mut() {
                    *v = fast_tanh(*v);
                }
                std::mem::swap(current, next);
            }
        }
    }

    /// The critic's values of `rows` observations.
    pub fn values(&mut self, obs: &[f32], rows: usize, values: &mut Vec<f32>) {
        Self::mlp(&self.critic, obs, rows, &mut self.scratch, values);
    }

    /// Actions, their log-probabilities and the observations' values for a
    /// batch of `rows` observations (`obs` is `[rows, obs_len]`).
    pub fn act(
        &mut self,
        obs: &[f32],
        rows: usize,
        mode: ActMode,
        rng: &mut Xoshiro256PlusPlus,
        out: &mut PolicyOutput,
    ) {
        Self::mlp(
            &self.actor,
            obs,
            rows,
            &mut self.scratch,
            &mut self.actor_out,
        );
        Self::mlp(&self.critic, obs, rows, &mut self.scratch, &mut out.values);
        out.actions.clear();
        out.discrete.clear();
        out.continuous.clear();
        out.log_probs.clear();
        match &self.shape.head {
            ActionHead::Categorical { n } => {
                for row in self.actor_out.chunks_exact(*n) {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = row.iter().map(|l| (l - max).exp()).sum();
                    let log_z = max + sum.ln();
                    let action = match mode {
                        ActMode::Deterministic => argmax(row),
                        ActMode::Sample => {
                            let u: f32 = rng.random::<f32>() * sum;
                            let mut acc = 0.0;
                            let mut pick = n - 1;
                            for (i, l) in row.iter().enumerate() {
                                acc += (l - max).exp();
                                if u < acc {
                                    pick = i;
                                    break;
                                }
                            }
                            pick
                        }
                    };
                    out.discrete.push(action as u64);
                    out.actions.push(action as f32);
                    out.log_probs.push(row[action] - log_z);
                }
            }
            ActionHead::Gaussian { low, high } => {
                let d = low.len();
                let half_log_2pi = 0.5 * (2.0 * std::f32::consts::PI).ln();
                for mean in self.actor_out.chunks_exact(d) {
                    let mut logp = 0.0;
                    for j in 0..d {
                        let z = match mode {
                            ActMode::Sample => standard_normal(rng),
                            ActMode::Deterministic => 0.0,
                        };
                        let a = mean[j] + self.log_std[j].exp() * z;
                        logp += -0.5 * z * z - self.log_std[j] - half_log_2pi;
                        out.actions.push(a);
                        out.continuous.push(a.clamp(low[j], high[j]));
                    }
                    out.log_probs.push(logp);
                }
            }
        }
    }
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// Reads a tensor's numbers (CPU, float) for tests and checkpoints.
pub(crate) fn tensor_to_vec(t: &Tensor) -> Result<Vec<f32>, RlError> {
    let flat = t
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .flatten(0, -1)
        .contiguous();
    Vec::<f32>::try_from(&flat).map_err(RlError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use troupe::gpu::tch;

    fn shape(head: ActionHead) -> PolicyShape {
        PolicyShape {
            obs_len: 5,
            hidden: vec![16, 8],
            head,
        }
    }

    #[test]
    fn fast_tanh_is_within_a_few_ulps_of_tanh() {
        let mut worst = 0.0f32;
        for i in -200_000..=200_000 {
            let x = i as f32 * 1e-4;
            worst = worst.max((fast_tanh(x) - x.tanh()).abs());
        }
        for x in [-1e4f32, -9.0, 9.0, 1e4, 1e-9, -1e-9, 0.0] {
            worst = worst.max((fast_tanh(x) - x.tanh()).abs());
        }
        assert!(worst < 1e-6, "worst error {worst}");
    }

    #[test]
    fn the_cpu_copy_computes_what_the_torch_model_computes() {
        let heads = [
            ActionHead::Categorical { n: 3 },
            ActionHead::Gaussian {
                low: vec![-1.0; 2],
                high: vec![1.0; 2],
            },
        ];
        for head in heads {
            let shape = shape(head);
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
            let torch = TorchPolicy::new(shape.clone(), Device::Cpu, &mut rng).unwrap();
            let weights = Weights::snapshot(&torch.vs).unwrap();
            let mut cpu = CpuPolicy::from_weights(&shape, &weights).unwrap();
            let rows = 32;
            let obs: Vec<f32> = (0..rows * shape.obs_len)
                .map(|_| standard_normal(&mut rng))
                .collect();
            let mut out = PolicyOutput::default();
            cpu.act(&obs, rows, ActMode::Sample, &mut rng, &mut out);
            let obs_t = Tensor::from_slice(&obs).reshape([rows as i64, shape.obs_len as i64]);
            let act_len = shape.head.action_len() as i64;
            let act_t = Tensor::from_slice(&out.actions).reshape([rows as i64, act_len]);
            let act_t = if act_len == 1 {
                act_t.squeeze_dim(1)
            } else {
                act_t
            };
            let (logp, _, values) = tch::no_grad(|| torch.evaluate(&obs_t, &act_t));
            for (what, cpu_side, torch_side) in [
                (
                    "log-probabilities",
                    &out.log_probs,
                    tensor_to_vec(&logp).unwrap(),
                ),
                ("values", &out.values, tensor_to_vec(&values).unwrap()),
            ] {
                for (a, b) in cpu_side.iter().zip(&torch_side) {
                    assert!((a - b).abs() < 1e-5, "{:?} {what}: {a} vs {b}", shape.head);
                }
            }
            // Continuous actions reach the env clipped to the box.
            assert!(out.continuous.iter().all(|a| (-1.0..=1.0).contains(a)));
        }
    }

    #[test]
    fn the_log_std_is_bounded_alike_in_the_learner_and_the_workers() {
        let shape = shape(ActionHead::Gaussian {
            low: vec![-1.0; 2],
            high: vec![1.0; 2],
        });
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(4);
        let torch = TorchPolicy::new(shape.clone(), Device::Cpu, &mut rng).unwrap();
        if let Some(log_std) = &torch.log_std {
            tch::no_grad(|| {
                log_std
                    .shallow_clone()
                    .copy_(&Tensor::from_slice(&[9.0f32, -30.0]))
            });
        }
        let mut cpu =
            CpuPolicy::from_weights(&shape, &Weights::snapshot(&torch.vs).unwrap()).unwrap();
        let rows = 16;
        let obs: Vec<f32> = (0..rows * shape.obs_len)
            .map(|_| standard_normal(&mut rng))
            .collect();
        let mut out = PolicyOutput::default();
        cpu.act(&obs, rows, ActMode::Sample, &mut rng, &mut out);
        let obs_t = Tensor::from_slice(&obs).reshape([rows as i64, shape.obs_len as i64]);
        let act_t = Tensor::from_slice(&out.actions).reshape([rows as i64, 2]);
        let (logp, entropy, _) = tch::no_grad(|| torch.evaluate(&obs_t, &act_t));
        for (a, b) in out.log_probs.iter().zip(tensor_to_vec(&logp).unwrap()) {
            assert!((a - b).abs() < 1e-4, "log-probability {a} vs {b}");
        }
        let half_log_2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
        let want = (LOG_STD_MAX + LOG_STD_MIN + 2.0 * (0.5 + half_log_2pi)) as f32;
        let got = tensor_to_vec(&entropy).unwrap()[0];
        assert!((got - want).abs() < 1e-5, "entropy {got}, want {want}");
    }

    #[test]
    fn deterministic_actions_are_the_mode() {
        let shape = shape(ActionHead::Categorical { n: 3 });
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        let torch = TorchPolicy::new(shape.clone(), Device::Cpu, &mut rng).unwrap();
        let mut cpu =
            CpuPolicy::from_weights(&shape, &Weights::snapshot(&torch.vs).unwrap()).unwrap();
        let obs: Vec<f32> = (0..8 * 5)
            .map(|_| standard_normal(&mut rng) * 3.0)
            .collect();
        let mut out = PolicyOutput::default();
        cpu.act(&obs, 8, ActMode::Deterministic, &mut rng, &mut out);
        let logits = TorchPolicy::mlp(&torch.actor, &Tensor::from_slice(&obs).reshape([8, 5]));
        let argmax = Vec::<i64>::try_from(logits.argmax(-1, false)).unwrap();
        let ours: Vec<i64> = out.discrete.iter().map(|a| *a as i64).collect();
        assert_eq!(ours, argmax);
    }

    #[test]
    fn weights_of_another_shape_are_refused() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let small = shape(ActionHead::Categorical { n: 3 });
        let torch = TorchPolicy::new(small, Device::Cpu, &mut rng).unwrap();
        let weights = Weights::snapshot(&torch.vs).unwrap();
        let wider = PolicyShape {
            hidden: vec![32, 8],
            ..shape(ActionHead::Categorical { n: 3 })
        };
        let err = CpuPolicy::from_weights(&wider, &weights).unwrap_err();
        assert!(err.to_string().contains("actor.l0.weight"), "{err}");
        let continuous = shape(ActionHead::Gaussian {
            low: vec![-1.0; 3],
            high: vec![1.0; 3],
        });
        assert!(CpuPolicy::from_weights(&continuous, &weights).is_err());
    }
}
