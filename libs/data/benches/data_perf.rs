//! troupe-data's speed, one `metric value unit` line each on stdout
//! (rounds on stderr):
//!
//! ```text
//! cargo bench -p troupe-data --bench data_perf
//! TROUPE_PERF_QUICK=1 cargo bench -p troupe-data --bench data_perf            # 1M rows
//! TROUPE_DATA_BENCH_ROWS=10000000 cargo bench -p troupe-data --bench data_perf  # another size
//! ```
//!
//! The data: the synthetic table of `benches/common/synthetic.rs` (10
//! columns, 44 bytes a row in memory), 50M rows (2.2 GB) by default,
//! written once as Parquet (blocks of 2^19 rows, snappy) before timing.
//! Gigabytes are in-memory Arrow bytes of the input, per second of the
//! median round (3 rounds; 1 with `TROUPE_PERF_QUICK`).
//!
//! - `read_map_filter_groupby_write_seconds`: read the Parquet's `key`
//!   and `f0`..`f3` (`select_columns`: only they are decoded), add
//!   `score = f0 * f1 + f2`, keep `score > 0`, group by `key` (1000 groups:
//!   count, mean(score), max(f3)), write Parquet.
//! - `map_batches_gigabytes_per_s`: the same `score` map over the table
//!   already in the object store (materialized), to a count.
//! - `random_shuffle_gigabytes_per_s`: `random_shuffle(seed)` of the
//!   materialized table, to a count.
//! - `sort_gigabytes_per_s`: `sort_by("f0")` of the materialized table, to
//!   a count.

#[path = "common/synthetic.rs"]
mod synthetic;

use std::time::Instant;

use synthetic::{positive, with_score};
use troupe::prelude::*;
use troupe_data::{Aggregation, DataOptions, Dataset};

type Error = Box<dyn std::error::Error>;

fn quick() -> bool {
    std::env::var_os("TROUPE_PERF_QUICK").is_some_and(|v| v != "0")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Error> {
    let rows: u64 = match std::env::var("TROUPE_DATA_BENCH_ROWS") {
        Ok(v) => v.parse()?,
        Err(_) if quick() => 1_000_000,
        Err(_) => 50_000_000,
    };
    let rounds = if quick() { 1 } else { 3 };
    let gigabytes = rows as f64 * 44.0 / 1e9;
    let rt = Runtime::start(Config::default())?;
    let dir = std::env::temp_dir().join(format!("troupe-data-perf-{}", std::process::id()));
    let options = DataOptions::new()
        .rows_per_block(1 << 19)
        .memory_budget(1 << 30);
    let outcome = rt.block_on(async {
        eprintln!("writing {rows} rows ({gigabytes:.2} GB) of synthetic Parquet to {}", dir.display());
        synthetic::table(&rt, rows).with_options(options.clone()).write_parquet(dir.join("input")).await?;
        let input = Dataset::read_parquet(&rt, &[dir.join("input")])?.with_options(options.clone());
        let (mut pipeline, mut map, mut shuffle, mut sort) = (vec![], vec![], vec![], vec![]);
        for round in 0..rounds {
            let started = Instant::now();
            let grouped = input
                .select_columns(&["key", "f0", "f1", "f2", "f3"])
                .map_batches(with_score)
                .filter_batches(positive)
                .groupby(["key"])
                .aggregate([Aggregation::count(), Aggregation::mean("score"), Aggregation::max("f3")]);
            grouped.write_parquet(dir.join(format!("by_key_{round}"))).await?;
            pipeline.push(started.elapsed().as_secs_f64());

            let table = input.materialize().await?;
            let started = Instant::now();
            let n = table.map_batches(with_score).count().await?;
            map.push(gigabytes / started.elapsed().as_secs_f64());
            let started = Instant::now();
            let m = table.random_shuffle(round as u64).count().await?;
            shuffle.push(gigabytes / started.elapsed().as_secs_f64());
            let started = Instant::now();
            let s = table.sort_by("f0").count().await?;
            sort.push(gigabytes / started.elapsed().as_secs_f64());
            if [n, m, s] != [rows as usize; 3] {
                return Err(format!("row counts {n}, {m}, {s} for {rows} rows").into());
            }
            eprintln!(
                "round {round}: pipeline {:.2} s, map {:.2} GB/s, shuffle {:.2} GB/s, sort {:.2} GB/s",
                pipeline[round], map[round], shuffle[round], sort[round]
            );
        }
        println!("read_map_filter_groupby_write_seconds {:.3} s", median(pipeline));
        println!("map_batches_gigabytes_per_s {:.3} GB/s", median(map));
        println!("random_shuffle_gigabytes_per_s {:.3} GB/s", median(shuffle));
        println!("sort_gigabytes_per_s {:.3} GB/s", median(sort));
        Ok::<(), Error>(())
    });
    let _ = std::fs::remove_dir_all(&dir);
    rt.block_on(rt.shutdown())?;
    outcome
}
