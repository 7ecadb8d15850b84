"""Ray Data's and Polars' side of troupe-data's bench
(libs/data/benches/data_perf.rs): the same synthetic table, the same four
measurements, the same `metric value unit` lines, prefixed `ray_data_` or
`polars_`.

    python3 -m venv .cache/data-venv
    .cache/data-venv/bin/pip install -r benches/ray/data_requirements.txt
    .cache/data-venv/bin/python benches/ray/data_bench.py --engine ray
    .cache/data-venv/bin/python benches/ray/data_bench.py --engine polars --rows 10000000

(benches/ray/data_compare.sh does all of this and runs troupe-data's bench.)

The data: 10 columns, `id` Int64 (0..rows), `key` Int32 uniform in 0..1000,
`f0`..`f7` Float32 uniform in [-1, 1) (numpy, seeded), 44 bytes a row in
memory, written before timing as Parquet (snappy) in files of 2^19 rows, one
row group each. Rows: --rows, else $TROUPE_DATA_BENCH_ROWS, else 50M
(1M with TROUPE_PERF_QUICK=1). Gigabytes are rows * 44 / 1e9, per second
of the median round (3 rounds; 1 with TROUPE_PERF_QUICK=1).

- `read_map_filter_groupby_write_seconds`: read the Parquet directory, add
  `score = f0 * f1 + f2`, keep `score > 0`, group by `key` (count,
  mean(score), max(f3)), write Parquet.
- `map_batches_gigabytes_per_s`: the same `score` map over the table already
  in memory (Ray: materialized in the object store; Polars: a collected
  DataFrame), to a row count.
- `random_shuffle_gigabytes_per_s`: a seeded random shuffle of that table,
  to a row count.
- `sort_gigabytes_per_s`: a sort by `f0` of that table, to a row count.

Ray runs on ray.init(num_cpus=<this machine's cores>); Polars in this one
process, on its own thread pool (all cores). Progress and rounds go to
stderr; stdout holds only the four metric lines.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

# The columns the read → map → filter → group-by pipeline uses.
PIPELINE_COLUMNS = ["key", "f0", "f1", "f2", "f3"]

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROWS_PER_FILE = 1 << 19
BYTES_PER_ROW = 44  # 8 (id) + 4 (key) + 8 * 4 (f0..f7)
SEED = 20240601

SCHEMA = pa.schema(
    [pa.field("id", pa.int64(), nullable=False), pa.field("key", pa.int32(), nullable=False)]
    + [pa.field(f"f{c}", pa.float32(), nullable=False) for c in range(8)]
)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def median(values):
    """The upper median, as troupe-data's bench takes it."""
    return sorted(values)[len(values) // 2]


def quick():
    return os.environ.get("TROUPE_PERF_QUICK", "0") not in ("", "0")


def write_synthetic(directory, rows):
    """The synthetic table as Parquet files of ROWS_PER_FILE rows (one row
    group each, snappy); each file's values come from its own seeded
    generator, so a given row count always gives the same table."""
    os.makedirs(directory, exist_ok=True)
    for index, start in enumerate(range(0, rows, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, rows - start)
        rng = np.random.default_rng([SEED, index])
        columns = [
            pa.array(np.arange(start, start + n, dtype=np.int64)),
            pa.array(rng.integers(0, 1000, n, dtype=np.int32)),
        ]
        for _ in range(8):
            f = rng.random(n, dtype=np.float32)
            f *= 2.0
            f -= 1.0
            columns.append(pa.array(f))
        table = pa.Table.from_arrays(columns, schema=SCHEMA)
        pq.write_table(
            table,
            os.path.join(directory, f"part-{index:05}.parquet"),
            compression="snappy",
            row_group_size=ROWS_PER_FILE,
        )


# --- Ray Data -----------------------------------------------------------------


def with_score_arrow(batch: pa.Table) -> pa.Table:
    # batch_format="pyarrow": Ray's blocks are Arrow tables, so the batch is a
    # zero-copy view of the block and the new column one vectorized Arrow
    # kernel pass. The fastest of the three formats here: on 8M rows,
    # materialized, 2 cores, map_batches(...).count() ran at about 2-3 GB/s
    # with "pyarrow", 1.5 GB/s with "pandas" (b["score"] = b.f0 * b.f1 + b.f2)
    # and 0.04 GB/s with "numpy" (the same on a dict of arrays).
    score = pc.add(pc.multiply(batch["f0"], batch["f1"]), batch["f2"])
    return batch.append_column("score", score)


def run_ray(directory, rows, rounds, gigabytes):
    import ray
    from ray.data.aggregate import Count, Max, Mean
    from ray.data.expressions import col

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    input_dir = os.path.join(directory, "input")
    pipeline, map_rate, shuffle_rate, sort_rate = [], [], [], []
    for r in range(rounds):
        started = time.perf_counter()
        (
            # The pipeline's columns only, as troupe-data's select_columns
            # (Polars infers the projection from its expressions).
            ray.data.read_parquet(input_dir, columns=PIPELINE_COLUMNS)
            .map_batches(with_score_arrow, batch_format="pyarrow")
            .filter(expr=col("score") > 0)
            .groupby("key")
            .aggregate(Count(), Mean("score"), Max("f3"))
            .write_parquet(os.path.join(directory, f"ray_by_key_{r}"))
        )
        pipeline.append(time.perf_counter() - started)

        # The table in the object store (not timed), as troupe-data's
        # `input.materialize()`.
        table = ray.data.read_parquet(input_dir).materialize()
        # Forcing the work: Dataset.count() never runs what cannot change the
        # row count. On a materialized dataset under random_shuffle / sort it
        # answers from block metadata in ~0 s without shuffling or sorting
        # anything (Dataset._meta_count), so those two are forced with
        # .materialize() (the sorted / shuffled blocks end up in the object
        # store, as any Ray all-to-all output does), then counted from its
        # metadata. A map_batches UDF may change the row count, so count()
        # on it runs the map and counts each output block inside the fused
        # map task (MapBatches->Project -> AggregateNumRows), like
        # troupe-data's `.count()`. `--check-ray-count` shows all of this.
        started = time.perf_counter()
        n = table.map_batches(with_score_arrow, batch_format="pyarrow").count()
        map_rate.append(gigabytes / (time.perf_counter() - started))
        started = time.perf_counter()
        m = table.random_shuffle(seed=r).materialize().count()
        shuffle_rate.append(gigabytes / (time.perf_counter() - started))
        started = time.perf_counter()
        s = table.sort("f0").materialize().count()
        sort_rate.append(gigabytes / (time.perf_counter() - started))
        del table
        if [n, m, s] != [rows] * 3:
            raise SystemExit(f"row counts {n}, {m}, {s} for {rows} rows")
        log(
            f"ray round {r}: pipeline {pipeline[r]:.2f} s, map {map_rate[r]:.2f} GB/s, "
            f"shuffle {shuffle_rate[r]:.2f} GB/s, sort {sort_rate[r]:.2f} GB/s"
        )
    ray.shutdown()
    return pipeline, map_rate, shuffle_rate, sort_rate


def check_ray_count():
    """Shows what `.count()` runs on a materialized dataset: a map_batches
    whose batches each sleep 1 s takes about (blocks / cores) s, so it runs;
    random_shuffle(...).count() and sort(...).count() take ~0 s, so they
    don't (the row count comes from metadata), while the same with
    .materialize() in between takes real time."""
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    table = ray.data.range(4_000_000, override_num_blocks=8).materialize()

    def slow(batch):
        time.sleep(1.0)
        return batch

    for name, count in [
        ("count()", lambda: table.count()),
        (
            "map_batches(sleep 1 s a batch).count()",
            lambda: table.map_batches(slow, batch_format="pyarrow").count(),
        ),
        ("random_shuffle().count()", lambda: table.random_shuffle(seed=0).count()),
        (
            "random_shuffle().materialize().count()",
            lambda: table.random_shuffle(seed=0).materialize().count(),
        ),
        ("sort().count()", lambda: table.sort("id", descending=True).count()),
        (
            "sort().materialize().count()",
            lambda: table.sort("id", descending=True).materialize().count(),
        ),
    ]:
        started = time.perf_counter()
        n = count()
        log(f"check: {name} = {n} in {time.perf_counter() - started:.3f} s")
    ray.shutdown()


# --- Polars -------------------------------------------------------------------


def run_polars(directory, rows, rounds, gigabytes):
    import polars as pl

    input_glob = os.path.join(directory, "input", "*.parquet")
    score = (pl.col("f0") * pl.col("f1") + pl.col("f2")).alias("score")
    pipeline, map_rate, shuffle_rate, sort_rate = [], [], [], []
    for r in range(rounds):
        out = os.path.join(directory, f"polars_by_key_{r}")
        os.makedirs(out, exist_ok=True)
        started = time.perf_counter()
        (
            pl.scan_parquet(input_glob)
            .with_columns(score)
            .filter(pl.col("score") > 0)
            .group_by("key")
            .agg(
                pl.len().alias("count"),
                pl.col("score").mean().alias("mean(score)"),
                pl.col("f3").max().alias("max(f3)"),
            )
            .sink_parquet(os.path.join(out, "part-0.parquet"), compression="snappy")
        )
        pipeline.append(time.perf_counter() - started)

        table = pl.read_parquet(input_glob)  # the table in memory, not timed
        started = time.perf_counter()
        n = table.with_columns(score).height
        map_rate.append(gigabytes / (time.perf_counter() - started))
        started = time.perf_counter()
        m = table.sample(fraction=1.0, shuffle=True, seed=r).height
        shuffle_rate.append(gigabytes / (time.perf_counter() - started))
        started = time.perf_counter()
        s = table.sort("f0").height
        sort_rate.append(gigabytes / (time.perf_counter() - started))
        del table
        if [n, m, s] != [rows] * 3:
            raise SystemExit(f"row counts {n}, {m}, {s} for {rows} rows")
        log(
            f"polars round {r}: pipeline {pipeline[r]:.2f} s, map {map_rate[r]:.2f} GB/s, "
            f"shuffle {shuffle_rate[r]:.2f} GB/s, sort {sort_rate[r]:.2f} GB/s"
        )
    return pipeline, map_rate, shuffle_rate, sort_rate


def main():
    env_rows = os.environ.get("TROUPE_DATA_BENCH_ROWS")
    default_rows = int(env_rows) if env_rows else (1_000_000 if quick() else 50_000_000)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["ray", "polars"], required=True)
    parser.add_argument("--rows", type=int, default=default_rows)
    parser.add_argument("--rounds", type=int, default=1 if quick() else 3)
    parser.add_argument(
        "--dir", help="working directory (kept); default: a temporary one, removed at the end"
    )
    parser.add_argument(
        "--check-ray-count",
        action="store_true",
        help="only show that Ray's count() runs the map / shuffle / sort it counts",
    )
    args = parser.parse_args()
    if args.check_ray_count:
        check_ray_count()
        return

    directory = args.dir or tempfile.mkdtemp(prefix="troupe-data-bench-")
    gigabytes = args.rows * BYTES_PER_ROW / 1e9
    try:
        log(f"writing {args.rows} rows ({gigabytes:.2f} GB) of synthetic Parquet to {directory}")
        started = time.perf_counter()
        write_synthetic(os.path.join(directory, "input"), args.rows)
        log(f"written in {time.perf_counter() - started:.1f} s")
        run = run_ray if args.engine == "ray" else run_polars
        pipeline, map_rate, shuffle_rate, sort_rate = run(
            directory, args.rows, args.rounds, gigabytes
        )
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    prefix = "ray_data" if args.engine == "ray" else "polars"
    print(f"{prefix}_read_map_filter_groupby_write_seconds {median(pipeline):.3f} s")
    print(f"{prefix}_map_batches_gigabytes_per_s {median(map_rate):.3f} GB/s")
    print(f"{prefix}_random_shuffle_gigabytes_per_s {median(shuffle_rate):.3f} GB/s")
    print(f"{prefix}_sort_gigabytes_per_s {median(sort_rate):.3f} GB/s")


if __name__ == "__main__":
    main()
