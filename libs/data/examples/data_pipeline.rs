//! A data pipeline end to end: synthetic Parquet written, then read →
//! map_batches → filter → group-by → Parquet, then batch inference with a
//! small tch model on a pool of actors, each loading the model once.
//!
//! ```text
//! cargo run --release -p troupe-data --features gpu --example data_pipeline -- --gigabytes 1
//! ```
//!
//! Prints each phase's time and throughput (bytes are in-memory Arrow
//! bytes); exits with an error if a check on the output fails.

#[path = "../benches/common/synthetic.rs"]
mod synthetic;

use std::sync::Arc;
use std::time::Instant;

use arrow_array::{Array, Float32Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use futures::StreamExt;
use synthetic::{f32_column, positive, with_score};
use troupe::gpu::tch::{self, nn, nn::Module};
use troupe::prelude::*;
use troupe_data::{ActorPoolStrategy, Aggregation, DataError, DataOptions, Dataset};

const BYTES_PER_ROW: f64 = 44.0;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut gigabytes = 1.0f64;
    let mut dir = std::env::temp_dir().join(format!("troupe-data-pipeline-{}", std::process::id()));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--gigabytes", Some(v)) => gigabytes = v.parse()?,
            ("--dir", Some(v)) => dir = v.into(),
            _ => {
                return Err(format!(
                    "usage: data_pipeline [--gigabytes G] [--dir DIR]; got {arg:?}"
                )
                .into())
            }
        }
    }
    let rows = (gigabytes * 1e9 / BYTES_PER_ROW) as u64;
    let rt = Runtime::start(Config::default())?;
    let options = DataOptions::new()
        .rows_per_block(1 << 19)
        .memory_budget(1 << 30)
        .progress(true);
    let outcome = rt.block_on(run(&rt, rows, &dir, options));
    let _ = std::fs::remove_dir_all(&dir);
    rt.block_on(rt.shutdown())?;
    outcome
}

fn report(phase: &str, started: Instant, rows: u64) {
    let s = started.elapsed().as_secs_f64();
    let gb = rows as f64 * BYTES_PER_ROW / 1e9;
    println!(
        "{phase:<34} {s:>7.2} s  {:>6.2} GB/s  {:>6.1} M rows/s",
        gb / s,
        rows as f64 / s / 1e6
    );
}

async fn run(
    rt: &Runtime,
    rows: u64,
    dir: &std::path::Path,
    options: DataOptions,
) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "{rows} rows ({:.2} GB in memory) under {}",
        rows as f64 * BYTES_PER_ROW / 1e9,
        dir.display()
    );

    let started = Instant::now();
    let written = synthetic::table(rt, rows)
        .with_options(options.clone())
        .write_parquet(dir.join("input"))
        .await?;
    report("write synthetic Parquet", started, rows);
    println!(
        "  {} files, {:.2} GB on disk",
        written.files.len(),
        written.bytes as f64 / 1e9
    );

    let started = Instant::now();
    let input = Dataset::read_parquet(rt, &[dir.join("input")])?.with_options(options.clone());
    let by_key = input
        .select_columns(&["key", "f0", "f1", "f2", "f3"]) // only these are decoded
        .map_batches(with_score)
        .filter_batches(positive)
        .groupby(["key"])
        .aggregate([
            Aggregation::count(),
            Aggregation::mean("score"),
            Aggregation::max("f3"),
        ]);
    let out = by_key.write_parquet(dir.join("by_key")).await?;
    report("read→map→filter→groupby→write", started, rows);
    let groups = Dataset::read_parquet(rt, &[dir.join("by_key")])?
        .collect()
        .await?;
    let counted: i64 = groups
        .iter()
        .map(|b| int_sum(b, "count()"))
        .sum::<Result<i64, DataError>>()?;
    println!(
        "  {} groups, {counted} rows with a positive score, in {} files",
        out.rows,
        out.files.len()
    );
    if out.rows == 0 || out.rows > 1000 || counted <= 0 || counted as u64 > rows {
        return Err(format!(
            "unexpected group-by output: {} groups, {counted} rows",
            out.rows
        )
        .into());
    }

    let started = Instant::now();
    let pool = ActorPoolStrategy::new(1, 2);
    let predictions = input.map_batches_on_actors(pool, Model::load, Model::predict);
    let mut stream = Box::pin(predictions.stream());
    let (mut seen, mut total) = (0u64, 0f64);
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        seen += batch.num_rows() as u64;
        total += f32_column(&batch, "prediction")?
            .values()
            .iter()
            .map(|v| *v as f64)
            .sum::<f64>();
    }
    report("batch inference (tch, 1..2 actors)", started, rows);
    let stats = predictions.last_stats().ok_or("no stats")?;
    let actors = stats
        .operators
        .iter()
        .map(|o| o.max_actors)
        .max()
        .unwrap_or(0);
    println!(
        "  {seen} predictions, mean {:.4}, {actors} actors at most, peak {:.0} MB in flight",
        total / seen.max(1) as f64,
        stats.peak_bytes_in_flight as f64 / 1e6
    );
    if seen != rows {
        return Err(format!("{seen} predictions for {rows} rows").into());
    }
    Ok(())
}

fn int_sum(b: &RecordBatch, name: &str) -> Result<i64, DataError> {
    let c = b
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>().cloned())
        .ok_or_else(|| DataError::Column {
            column: name.into(),
            message: "missing or not Int64".into(),
        })?;
    Ok(c.values().iter().sum())
}

/// An MLP (8 → 32 → 1) on the device Troupe gave its actor; the same
/// weights in every actor (seeded).
struct Model {
    _vs: nn::VarStore,
    net: nn::Sequential,
    device: tch::Device,
}

impl Model {
    fn load() -> Result<Model, Box<dyn std::error::Error + Send + Sync>> {
        let device = troupe::gpu::device()?;
        tch::manual_seed(0);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let net = nn::seq()
            .add(nn::linear(&root / "l1", 8, 32, Default::default()))
            .add_fn(|x| x.relu())
            .add(nn::linear(&root / "l2", 32, 1, Default::default()));
        Ok(Model {
            _vs: vs,
            net,
            device,
        })
    }

    fn predict(
        &mut self,
        b: RecordBatch,
    ) -> Result<RecordBatch, Box<dyn std::error::Error + Send + Sync>> {
        // One libtorch thread per actor: the pool's actors share the cores.
        tch::set_num_threads(1);
        let rows = b.num_rows();
        let features: Vec<Float32Array> = (0..8)
            .map(|c| f32_column(&b, &format!("f{c}")))
            .collect::<Result<_, _>>()?;
        let mut x = Vec::with_capacity(rows * 8);
        for i in 0..rows {
            x.extend(features.iter().map(|f| f.value(i)));
        }
        let input = tch::Tensor::from_slice(&x)
            .view([rows as i64, 8])
            .to_device(self.device);
        let out = tch::no_grad(|| self.net.forward(&input))
            .to_device(tch::Device::Cpu)
            .flatten(0, -1);
        let predictions = Vec::<f32>::try_from(&out)?;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("prediction", DataType::Float32, false),
        ]));
        let id = b.column_by_name("id").cloned().ok_or("no id column")?;
        Ok(RecordBatch::try_new(
            schema,
            vec![id, Arc::new(Float32Array::from(predictions))],
        )?)
    }
}
