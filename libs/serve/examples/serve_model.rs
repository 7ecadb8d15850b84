//! A small tch model served with batching:
//!
//! 1. trains a two-layer network on y = sin(x · w) (synthetic data) for a
//!    few hundred Adam steps;
//! 2. deploys it as `model`, 2 replicas at `/predict`, each owning a copy
//!    of the weights on its device (a GPU if the node has one and the
//!    replica asked for it, the CPU otherwise), batches of at most 32
//!    requests gathered for at most 2 ms and run as one forward pass;
//! 3. queries it over HTTP, checks the answers against the trained model,
//!    and measures its rate for a few seconds.
//!
//! ```text
//! scripts/setup-libtorch.sh
//! cargo run --release -p troupe-serve --features gpu --example serve_model
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use troupe::gpu::tch::nn::{self, Module, OptimizerConfig};
use troupe::gpu::tch::{self, Device, Kind, Tensor};
use troupe::gpu::{device, Detector, Weights};
use troupe::prelude::*;
use troupe_serve::{BatchConfig, Deployment, DeploymentOptions, HandlerError, Serve, ServeOptions};

#[path = "../tests/support/client.rs"]
#[allow(dead_code)] // shared with the tests, which use all of it
mod client;

const FEATURES: usize = 8;

fn network(vs: &nn::VarStore) -> nn::Sequential {
    let root = vs.root();
    nn::seq()
        .add(nn::linear(
            &root / "hidden",
            FEATURES as i64,
            64,
            Default::default(),
        ))
        .add_fn(|x| x.relu())
        .add(nn::linear(&root / "out", 64, 1, Default::default()))
}

/// One replica: the network and its weights on the replica's device.
struct Model {
    vs: nn::VarStore,
    net: nn::Sequential,
}

impl Model {
    fn load(weights: &Weights) -> Self {
        // The device the replica's actor was given; the CPU if it has none.
        let mut vs = nn::VarStore::new(device().unwrap_or(Device::Cpu));
        let net = network(&vs);
        if let Err(e) = weights.load_into(&mut vs) {
            // A replica that cannot load its weights fails to start.
            panic!("the replica could not load the trained weights: {e}");
        }
        Model { vs, net }
    }
}

impl Deployment for Model {
    /// One input row.
    type Request = Vec<f32>;
    /// The model's output for it.
    type Response = f32;

    async fn call(&mut self, x: Vec<f32>) -> Result<f32, HandlerError> {
        self.call_batch(vec![x])
            .await
            .pop()
            .unwrap_or_else(|| Err(HandlerError::internal("no answer")))
    }

    /// One forward pass over the batch's well-formed rows.
    async fn call_batch(&mut self, rows: Vec<Vec<f32>>) -> Vec<Result<f32, HandlerError>> {
        let good: Vec<&Vec<f32>> = rows.iter().filter(|r| r.len() == FEATURES).collect();
        let mut outputs = Vec::new();
        if !good.is_empty() {
            let flat: Vec<f32> = good.iter().flat_map(|r| r.iter().copied()).collect();
            let x = Tensor::from_slice(&flat)
                .view([good.len() as i64, FEATURES as i64])
                .to_device(self.vs.device());
            let y = tch::no_grad(|| self.net.forward(&x)).to_device(Device::Cpu);
            outputs = match Vec::<f32>::try_from(y.view([-1])) {
                Ok(v) => v,
                Err(e) => {
                    let e = HandlerError::internal(format!("reading the output: {e}"));
                    return rows.iter().map(|_| Err(e.clone())).collect();
                }
            };
        }
        let mut outputs = outputs.into_iter();
        rows.iter()
            .map(|r| {
                if r.len() != FEATURES {
                    return Err(HandlerError::bad_request(format!(
                        "expected {FEATURES} numbers, got {}",
                        r.len()
                    )));
                }
                outputs
                    .next()
                    .ok_or_else(|| HandlerError::internal("the batch lost an output"))
            })
            .collect()
    }
}

/// Trains the network on y = sin(x · w); returns its variables.
fn train() -> Result<(nn::VarStore, nn::Sequential), Box<dyn std::error::Error>> {
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = network(&vs);
    let mut opt = nn::Adam::default().build(&vs, 3e-3)?;
    let w = Tensor::randn([FEATURES as i64, 1], (Kind::Float, Device::Cpu));
    let began = Instant::now();
    let mut first = None;
    let mut loss = 0.0;
    for _ in 0..400 {
        let x = Tensor::randn([256, FEATURES as i64], (Kind::Float, Device::Cpu));
        let y = x.matmul(&w).sin();
        let l = net.forward(&x).mse_loss(&y, tch::Reduction::Mean);
        opt.backward_step(&l);
        loss = l.double_value(&[]);
        first.get_or_insert(loss);
    }
    println!(
        "trained 400 steps in {:.2} s: loss {:.4} -> {loss:.4}",
        began.elapsed().as_secs_f64(),
        first.unwrap_or(loss)
    );
    Ok((vs, net))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = Runtime::start(Config::default().gpu_detector(Detector))?;
    rt.block_on(run(&rt))?;
    rt.block_on(rt.shutdown())?;
    Ok(())
}

async fn run(rt: &Runtime) -> Result<(), Box<dyn std::error::Error>> {
    let (vs, net) = train()?;
    let weights = Arc::new(Weights::snapshot(&vs)?);

    let addr: SocketAddr = "127.0.0.1:0".parse()?;
    let serve = Serve::start(rt, ServeOptions::new().http(addr)).await?;
    let gpus = if rt.gpus().is_empty() { 0.0 } else { 0.5 };
    let options = DeploymentOptions::new()
        .replicas(2)
        .num_gpus(gpus)
        .max_ongoing_requests(64)
        .batching(BatchConfig::new(32, Duration::from_millis(2)))
        .route_prefix("/predict");
    let for_replicas = weights.clone();
    serve
        .deploy("model", options, move || Model::load(&for_replicas))
        .await?;
    let addr = serve.http_addr().ok_or("the proxy is not running")?;
    println!("serving the model at http://{addr}/predict (POST [8 numbers])");

    // A few queries, checked against the trained model.
    let probes = Tensor::randn([8, FEATURES as i64], (Kind::Float, Device::Cpu));
    let expected = Vec::<f32>::try_from(tch::no_grad(|| net.forward(&probes)).view([-1]))?;
    let rows: Vec<Vec<f32>> = (0..8)
        .map(|i| Vec::<f32>::try_from(probes.get(i)))
        .collect::<Result<_, _>>()?;
    let queries: Vec<_> = rows
        .iter()
        .map(|row| {
            let body = serde_json::to_string(row);
            tokio::spawn(async move {
                client::post(addr, "/predict", &body?)
                    .await
                    .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
            })
        })
        .collect();
    for (i, query) in queries.into_iter().enumerate() {
        let reply = query.await?.map_err(|e| e.to_string())?;
        let got: f32 = serde_json::from_slice(&reply.body)?;
        println!(
            "  row {i}: HTTP {} -> {got:+.4} (model {:+.4})",
            reply.status, expected[i]
        );
        if (got - expected[i]).abs() > 1e-5 {
            return Err(format!("row {i}: served {got}, the model says {}", expected[i]).into());
        }
    }
    let bad = client::post(addr, "/predict", "[1, 2]").await?;
    println!("  a short row: HTTP {} {}", bad.status, bad.text());

    // The rate: 64 connections for 3 seconds.
    let until = Instant::now() + Duration::from_secs(3);
    let body = Arc::new(serde_json::to_string(&rows[0])?);
    let loads: Vec<_> = (0..64)
        .map(|_| {
            let body = body.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                let Ok(mut conn) = client::Conn::connect(addr).await else {
                    return n;
                };
                while Instant::now() < until {
                    match conn.post("/predict", &body).await {
                        Ok(r) if r.status == 200 => n += 1,
                        _ => break,
                    }
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for l in loads {
        total += l.await?;
    }
    println!("model_requests_per_s {:.0}", total as f64 / 3.0);
    println!("{}", serde_json::to_string_pretty(&serve.status())?);
    serve.shutdown().await?;
    Ok(())
}
