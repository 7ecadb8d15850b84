//! GPU support through the facade (`--features gpu`): tensors as objects
//! through tasks, actors and spilling; model-owning actors on their device,
//! restarted onto it again; weight broadcast; and the errors for GPUs that
//! do not exist. Everything runs on CPU, except the checks that need a
//! real GPU: those are `#[ignore]`d, so a run without one reports them
//! ignored rather than passed; on a GPU machine, run them with
//! `cargo test --features gpu --test gpu -- --include-ignored` (without a
//! GPU they then fail).

mod common;

use common::{eventually, within};
use troupe::gpu::tch::nn::{self, Module, OptimizerConfig};
use troupe::gpu::tch::{Device, Kind, Tensor};
use troupe::gpu::{device, Detector, GpuError, TensorObject, TypedTensor, Weights};
use troupe::prelude::*;

/// A GPU-only check was asked to run: there must be a GPU.
fn needs_a_gpu() {
    assert!(
        troupe::gpu::cuda_available(),
        "this check needs a CUDA GPU (cuda_available() is false); it is ignored by default"
    );
}

async fn gpu_runtime() -> Runtime {
    troupe::init(Config::default().gpu_detector(Detector))
        .await
        .expect("runtime starts")
}

#[troupe::remote]
fn scale(t: TensorObject, by: f64) -> TensorObject {
    TensorObject::from(t.view() * by)
}

#[troupe::remote]
fn data_address(t: TensorObject) -> usize {
    t.view().data_ptr() as usize
}

#[troupe::remote]
fn sum(t: TypedTensor<f32>) -> f64 {
    t.view().sum(Kind::Double).double_value(&[])
}

#[tokio::test]
async fn tensors_go_through_put_tasks_and_back_without_copies() {
    let rt = gpu_runtime().await;
    let t = Tensor::arange(6, (Kind::Float, Device::Cpu)).reshape([2, 3]);
    let address = t.data_ptr() as usize;
    let r = rt.put(TensorObject::from(t)).await.unwrap();
    // get shares the stored tensor; a task argument shares it too.
    let got = rt.get(&r).await.unwrap();
    assert_eq!(got.view().data_ptr() as usize, address);
    assert_eq!(
        *rt.get(&data_address::remote(&rt, &r)).await.unwrap(),
        address
    );
    // Returned from a task, with dtype and shape.
    let scaled = rt.get(&scale::remote(&rt, &r, 2.0)).await.unwrap();
    assert_eq!(scaled.kind(), Kind::Float);
    assert_eq!(scaled.size(), vec![2, 3]);
    assert_eq!(scaled.view().double_value(&[1, 2]), 10.0);
    // A typed tensor as an argument.
    let typed = TypedTensor::<f32>::new(Tensor::from_slice(&[1.5f32, 2.5])).unwrap();
    assert_eq!(*rt.get(&sum::remote(&rt, typed)).await.unwrap(), 4.0);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn spilled_tensors_come_back_exactly() {
    let objects = StoreConfig {
        memory_budget: 64 * 1024,
        spill_threshold: 0.5,
        spill_dir: std::env::temp_dir().join(format!("troupe-gpu-it-{}", std::process::id())),
        ..StoreConfig::default()
    };
    let rt = troupe::init(Config::default().objects(objects))
        .await
        .unwrap();
    let kinds = [Kind::Float, Kind::Half, Kind::Int64, Kind::Bool];
    let originals: Vec<Tensor> = (0..16)
        .map(|i| {
            let t = (Tensor::arange(2048, (Kind::Float, Device::Cpu)) + i as f64).reshape([32, 64]);
            let t = t.to_kind(kinds[i % kinds.len()]);
            // Every other one non-contiguous.
            if i % 2 == 0 {
                t.transpose(0, 1)
            } else {
                t
            }
        })
        .collect();
    let mut refs = Vec::new();
    for t in &originals {
        // Over the budget, a put waits while the store spills.
        let put = rt.put(TensorObject::from(t.shallow_clone()));
        refs.push(within("put", put).await.unwrap());
    }
    eventually("tensors spilled", || {
        rt.objects().in_memory_bytes() <= 32 * 1024
    })
    .await;
    for (t, r) in originals.iter().zip(&refs) {
        let back = within("restore", rt.get(r)).await.unwrap();
        assert_eq!(back.kind(), t.kind());
        assert_eq!(back.size(), t.size());
        assert!(back.view().equal(t), "a tensor came back different");
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_tensor_of_the_wrong_dtype_for_a_typed_ref_is_an_error() {
    let rt = troupe::init(Config::default()).await.unwrap();
    let floats = rt
        .put(TypedTensor::<f32>::new(Tensor::from_slice(&[1.0f32, 2.0])).unwrap())
        .await
        .unwrap();
    let as_ints = floats.clone().erase().typed::<TypedTensor<i64>>();
    let err = rt.get(&as_ints).await.unwrap_err();
    assert!(matches!(err, ObjectError::WrongType { .. }), "{err}");
    // A typed tensor refuses an untyped one of another dtype.
    let any = rt.get(&floats).await.unwrap();
    let err = TypedTensor::<i64>::try_from((*any).clone().into_object()).unwrap_err();
    assert!(matches!(err, GpuError::WrongDtype { .. }), "{err}");
    assert!(err.to_string().contains("Int64"), "{err}");
    rt.shutdown().await.unwrap();
}

/// A model that trains on the device it was given.
struct Learner {
    vs: nn::VarStore,
    net: nn::Sequential,
    opt: nn::Optimizer,
}

fn mlp(vs: &nn::VarStore) -> nn::Sequential {
    let root = vs.root();
    nn::seq()
        .add(nn::linear(&root / "l1", 4, 16, Default::default()))
        .add_fn(|x| x.tanh())
        .add(nn::linear(&root / "l2", 16, 1, Default::default()))
}

impl Learner {
    fn build() -> Result<Self, GpuError> {
        let vs = nn::VarStore::new(device()?);
        let net = mlp(&vs);
        let opt = nn::Adam::default().build(&vs, 1e-2)?;
        Ok(Learner { vs, net, opt })
    }
}

#[troupe::actor]
impl Learner {
    pub fn device(&self) -> String {
        format!("{:?}", self.vs.device())
    }

    pub fn train(&mut self, batch: TensorObject) -> f64 {
        let x = batch.view().to_device(self.vs.device());
        let target = x.sum_dim_intlist(1, true, Kind::Float);
        let loss = self.net.forward(&x).mse_loss(&target, tch::Reduction::Mean);
        self.opt.backward_step(&loss);
        loss.double_value(&[])
    }

    pub fn weights(&self) -> Weights {
        Weights::snapshot(&self.vs).expect("snapshot")
    }

    pub fn predict(&self, x: TensorObject) -> TensorObject {
        let x = x.view().to_device(self.vs.device());
        TensorObject::from(tch::no_grad(|| self.net.forward(&x)).to_device(Device::Cpu))
    }

    pub fn crash(&mut self) {
        panic!("CUDA error: an illegal memory access was encountered");
    }
}

use troupe::gpu::tch;

#[tokio::test]
async fn a_cpu_model_actor_trains_and_restarts_onto_its_device() {
    let rt = gpu_runtime().await;
    let learner = rt
        .spawn_actor_with(ActorOptions::new().max_restarts(1), || async {
            Learner::build()
        })
        .await
        .unwrap();
    assert_eq!(learner.device().await.unwrap(), "Cpu");
    let batch = TensorObject::from(Tensor::randn([64, 4], (Kind::Float, Device::Cpu)));
    let first = learner.train(batch.clone()).await.unwrap();
    let mut last = first;
    for _ in 0..50 {
        last = learner.train(batch.clone()).await.unwrap();
    }
    assert!(last < first, "loss went from {first} to {last}");
    assert!(learner.crash().await.is_err());
    assert_eq!(within("restarted", learner.device()).await.unwrap(), "Cpu");
    rt.shutdown().await.unwrap();
}

#[tokio::test]
#[ignore = "needs a CUDA GPU: run with --include-ignored on a GPU machine"]
async fn a_panicking_gpu_actor_is_restarted_onto_a_device_again() {
    needs_a_gpu();
    let rt = gpu_runtime().await;
    let one_gpu = ActorOptions::new()
        .max_restarts(1)
        .resources(Resources::default().with_gpus(1.0));
    let learner = rt
        .spawn_actor_with(one_gpu, || async { Learner::build() })
        .await
        .unwrap();
    let on = learner.device().await.unwrap();
    assert!(on.starts_with("Cuda"), "{on}");
    let batch = TensorObject::from(Tensor::randn([64, 4], (Kind::Float, Device::Cpu)));
    assert!(learner.train(batch.clone()).await.unwrap().is_finite());
    assert!(learner.crash().await.is_err());
    assert_eq!(within("restarted", learner.device()).await.unwrap(), on);
    assert!(learner.train(batch).await.unwrap().is_finite());
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn more_gpus_than_exist_is_a_clear_error() {
    let rt = gpu_runtime().await;
    let have = rt.gpus().len();
    assert_eq!(have as i64, tch::Cuda::device_count());
    let too_many = ActorOptions::new().resources(Resources::default().with_gpus(have as f64 + 1.0));
    let err = rt
        .spawn_actor_with(too_many, || async { Learner::build() })
        .await
        .unwrap_err();
    assert!(matches!(err, SpawnError::Infeasible { .. }), "{err}");
    rt.shutdown().await.unwrap();

    // GPUs declared in the config that libtorch cannot see: placing works,
    // but asking for the device says what is wrong instead of using the CPU.
    if have == 0 {
        let rt = troupe::init(Config::default().resources(Resources::cpus(2.0).with_gpus(1.0)))
            .await
            .unwrap();
        let err = rt
            .spawn_actor_with(
                ActorOptions::new().resources(Resources::default().with_gpus(1.0)),
                || async { Learner::build() },
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("libtorch sees 0 CUDA device"),
            "{err}"
        );
        rt.shutdown().await.unwrap();
    }
}

/// A CPU replica that serves the learner's weights.
struct Inference {
    vs: nn::VarStore,
    net: nn::Sequential,
}

#[troupe::actor]
impl Inference {
    pub fn load_weights(&mut self, weights: std::sync::Arc<Weights>) -> Result<(), GpuError> {
        weights.load_into(&mut self.vs)
    }

    pub fn predict(&self, x: TensorObject) -> TensorObject {
        TensorObject::from(tch::no_grad(|| self.net.forward(&x.view())))
    }
}

#[tokio::test]
async fn broadcast_weights_give_identical_outputs() {
    let rt = gpu_runtime().await;
    let learner = rt
        .spawn_actor_with(ActorOptions::new(), || async { Learner::build() })
        .await
        .unwrap();
    let batch = TensorObject::from(Tensor::randn([32, 4], (Kind::Float, Device::Cpu)));
    for _ in 0..5 {
        learner.train(batch.clone()).await.unwrap();
    }
    let weights = rt.put(learner.weights().await.unwrap()).await.unwrap();
    let shared = rt.get(&weights).await.unwrap();
    let mut replicas = Vec::new();
    for _ in 0..4 {
        let replica = rt
            .spawn_actor(ActorOptions::new(), || {
                let vs = nn::VarStore::new(Device::Cpu);
                let net = mlp(&vs);
                Inference { vs, net }
            })
            .await
            .unwrap();
        replica.load_weights(shared.clone()).await.unwrap().unwrap();
        replicas.push(replica);
    }
    let x = TensorObject::from(Tensor::randn([8, 4], (Kind::Float, Device::Cpu)));
    let reference = learner.predict(x.clone()).await.unwrap();
    for replica in &replicas {
        let out = replica.predict(x.clone()).await.unwrap();
        assert!(
            out.view().equal(&reference.view()),
            "a replica answered differently"
        );
    }
    rt.shutdown().await.unwrap();
}
