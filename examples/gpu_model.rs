//! A model-owning actor, the pattern under Troupe's RL library:
//!
//! - two `Producer` actors make training batches and put them in the object
//!   store;
//! - a `Learner` actor owns a model and its optimizer on its device (a GPU
//!   if the node has one, the CPU otherwise) and trains on those batches;
//! - it broadcasts its weights (one snapshot, one object) to four CPU
//!   `Replica` actors, which then answer exactly as the learner does.
//!
//! ```text
//! scripts/setup-libtorch.sh
//! cargo run --release --features gpu --example gpu_model
//! ```

use std::time::Instant;

use get_size2::GetSize;
use serde::{Deserialize, Serialize};
use troupe::gpu::tch::nn::{self, Module, OptimizerConfig};
use troupe::gpu::tch::{self, Device, Kind, Tensor};
use troupe::gpu::{device, Detector, GpuError, TensorObject, Weights};
use troupe::prelude::*;

const FEATURES: i64 = 8;
const BATCH: i64 = 256;

/// One training batch: inputs and the values to learn.
#[derive(Serialize, Deserialize, GetSize, Clone, Debug)]
struct Batch {
    x: TensorObject,
    y: TensorObject,
}

/// Makes batches of a fixed function to learn: y = sin(x · w).
struct Producer {
    rt: Runtime,
    w: Tensor,
}

#[troupe::actor]
impl Producer {
    pub fn next_batch(&self) -> Result<ObjectRef<Batch>, ObjectError> {
        let x = Tensor::randn([BATCH, FEATURES], (Kind::Float, Device::Cpu));
        let y = x.matmul(&self.w).sin();
        self.rt.try_put(Batch {
            x: x.into(),
            y: y.into(),
        })
    }
}

fn network(vs: &nn::VarStore) -> nn::Sequential {
    let root = vs.root();
    nn::seq()
        .add(nn::linear(
            &root / "hidden",
            FEATURES,
            64,
            Default::default(),
        ))
        .add_fn(|x| x.relu())
        .add(nn::linear(&root / "out", 64, 1, Default::default()))
}

/// Owns the model and its optimizer on its device for its whole life.
struct Learner {
    rt: Runtime,
    vs: nn::VarStore,
    net: nn::Sequential,
    opt: nn::Optimizer,
}

impl Learner {
    fn new(rt: Runtime) -> Result<Self, GpuError> {
        // The device this actor was given (a restart gets one again).
        let vs = nn::VarStore::new(device()?);
        let net = network(&vs);
        let opt = nn::Adam::default().build(&vs, 3e-3)?;
        Ok(Learner { rt, vs, net, opt })
    }
}

#[troupe::actor]
impl Learner {
    pub fn device(&self) -> String {
        format!("{:?}", self.vs.device())
    }

    /// One optimizer step on a batch from the store; returns the loss.
    pub async fn train(&mut self, batch: ObjectRef<Batch>) -> Result<f64, ObjectError> {
        let batch = self.rt.get(&batch).await?;
        let on = self.vs.device();
        let (x, y) = (batch.x.view().to_device(on), batch.y.view().to_device(on));
        let loss = self.net.forward(&x).mse_loss(&y, tch::Reduction::Mean);
        self.opt.backward_step(&loss);
        Ok(loss.double_value(&[]))
    }

    /// Snapshots the weights into the store: one copy, shared by readers.
    pub fn publish_weights(&self) -> Result<ObjectRef<Weights>, String> {
        let weights = Weights::snapshot(&self.vs).map_err(|e| e.to_string())?;
        self.rt.try_put(weights).map_err(|e| e.to_string())
    }

    pub fn predict(&self, x: TensorObject) -> TensorObject {
        let x = x.view().to_device(self.vs.device());
        tch::no_grad(|| self.net.forward(&x))
            .to_device(Device::Cpu)
            .into()
    }
}

/// A CPU copy of the model that serves predictions.
struct Replica {
    rt: Runtime,
    vs: nn::VarStore,
    net: nn::Sequential,
}

#[troupe::actor]
impl Replica {
    pub async fn load(&mut self, weights: ObjectRef<Weights>) -> Result<(), String> {
        let weights = self.rt.get(&weights).await.map_err(|e| e.to_string())?;
        weights.load_into(&mut self.vs).map_err(|e| e.to_string())
    }

    pub fn predict(&self, x: TensorObject) -> TensorObject {
        tch::no_grad(|| self.net.forward(&x.view())).into()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = Runtime::start(Config::default().gpu_detector(Detector))?;
    rt.block_on(run(&rt))?;
    rt.block_on(rt.shutdown())?;
    Ok(())
}

async fn run(rt: &Runtime) -> Result<(), Box<dyn std::error::Error>> {
    tch::manual_seed(7);
    println!("node GPUs: {:?}", rt.gpus());
    // Ask for a GPU where there is one; the same code runs on the CPU.
    let gpus = if rt.gpus().is_empty() { 0.0 } else { 1.0 };
    let learner_options = ActorOptions::new()
        .max_restarts(3)
        .resources(Resources::default().with_gpus(gpus));
    let learner = {
        let rt2 = rt.clone();
        rt.spawn_actor_with(learner_options, move || {
            let rt = rt2.clone();
            async move { Learner::new(rt) }
        })
        .await?
    };
    println!("learner trains on {}", learner.device().await?);

    let w = Tensor::randn([FEATURES, 1], (Kind::Float, Device::Cpu));
    let mut producers = Vec::new();
    for _ in 0..2 {
        let (rt2, w) = (rt.clone(), w.shallow_clone());
        let w = TensorObject::from(w);
        producers.push(
            rt.spawn_actor(ActorOptions::new(), move || Producer {
                rt: rt2.clone(),
                w: w.view(),
            })
            .await?,
        );
    }

    let began = Instant::now();
    let mut first = None;
    let mut loss = 0.0;
    for step in 0..300 {
        let batch = producers[step % producers.len()].next_batch().await??;
        loss = learner.train(batch).await??;
        first.get_or_insert(loss);
        if step % 100 == 0 {
            println!("step {step:>3}: loss {loss:.4}");
        }
    }
    println!(
        "300 steps in {:.2} s: loss {:.4} -> {loss:.4}",
        began.elapsed().as_secs_f64(),
        first.unwrap_or(loss)
    );

    let mut replicas = Vec::new();
    for _ in 0..4 {
        let rt2 = rt.clone();
        replicas.push(
            rt.spawn_actor(ActorOptions::new(), move || {
                let vs = nn::VarStore::new(Device::Cpu);
                let net = network(&vs);
                Replica {
                    rt: rt2.clone(),
                    vs,
                    net,
                }
            })
            .await?,
        );
    }
    // Broadcast: one snapshot put once; every replica loads the shared
    // object into its own variables, all at once.
    let began = Instant::now();
    let weights = learner.publish_weights().await??;
    let loads: Vec<_> = replicas.iter().map(|r| r.load(weights.clone())).collect();
    for load in loads {
        load.await??;
    }
    println!(
        "weights ({} parameters) broadcast to {} replicas in {:.2} ms",
        rt.get(&weights).await?.num_parameters(),
        replicas.len(),
        began.elapsed().as_secs_f64() * 1e3
    );

    let probe = TensorObject::from(Tensor::randn([16, FEATURES], (Kind::Float, Device::Cpu)));
    let expected = learner.predict(probe.clone()).await?;
    for (i, replica) in replicas.iter().enumerate() {
        let got = replica.predict(probe.clone()).await?;
        if !got.view().equal(&expected.view()) {
            return Err(format!("replica {i} answers differently from the learner").into());
        }
    }
    println!(
        "all {} replicas answer exactly as the learner",
        replicas.len()
    );
    Ok(())
}
