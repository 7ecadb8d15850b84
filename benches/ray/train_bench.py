#!/usr/bin/env python3
"""PyTorch DDP's and Ray Train's side of troupe-train's bench
(libs/train/benches/train_perf.rs): the same work, one `metric value unit`
line each on stdout (progress on stderr).

    python benches/ray/train_bench.py --mode ddp [--quick]
    python benches/ray/train_bench.py --mode ray [--quick]

- `mlp_samples_per_s_2_workers`: an MLP (32-256-256-10, ReLU) with SGD (lr
  0.05) on a seeded synthetic classification set (16,384 points of dim 32,
  10 classes), a global batch of 256 (128 per worker), 300 steps (50 with
  --quick); each step: forward, cross-entropy, backward, gradient all-reduce
  (DDP's), optimizer step, and with Ray `ray.train.report({"loss": ...})`.
  Timed on rank 0 from the end of the first step to the end of the last;
  (steps - 1) * 256 / seconds. `mlp_samples_per_s_1_worker` (DDP mode
  only): the same loop in one plain torch process, batch 256.
- `step_overhead_ms`: 2 workers whose steps only all-reduce the gradients of
  nn.Linear(4, 2) (after one backward), plus `ray.train.report` with Ray;
  2000 steps (200 with --quick), ms per step on rank 0.
- `allreduce_100mb_gigabytes_per_s`: 2 ranks all-reduce (sum) a 25,000,000
  element f32 tensor (10^8 bytes) with gloo; median of 10 timed rounds (3
  with --quick), after one warm-up and a barrier before each.
- `train_fit_seconds` (Ray mode only): wall time of `trainer.fit()` for the
  MLP run, startup included.
- `step_overhead_ms_default_poll` (Ray mode only): the overhead loop at Ray's
  default RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s), 10 steps.

Ray Train 2.60's report() blocks until the controller polls the worker (once
per RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default), so a loop that
reports every step runs at about one step per poll: the MLP and overhead
figures are taken with that interval at 0.001 s (--poll-interval); the
all-reduce (no report inside the timed rounds) runs at Ray's default.

Each worker runs torch with one intra-op thread (torch.set_num_threads(1)).
DDP: torch.multiprocessing.spawn, 2 processes, gloo over tcp://127.0.0.1.
Ray: ray.init(num_cpus=2), TorchTrainer with 2 CPU workers.
"""

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

BYTES = 100_000_000
GLOBAL_BATCH = 256
N_POINTS, DIM, CLASSES, DATA_SEED = 16_384, 32, 10, 3
LR = 0.05


def log(msg):
    print(f"train_bench: {msg}", file=sys.stderr, flush=True)


def median(v):
    # As the Rust bench: the upper median for an even count.
    v = sorted(v)
    return v[len(v) // 2]


def synthetic_classification():
    """A seeded set: 10 Gaussian class centres in 32 dims, unit noise."""
    rng = np.random.default_rng(DATA_SEED)
    centres = rng.normal(0.0, 1.0, size=(CLASSES, DIM)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=N_POINTS)
    x = centres[y] + rng.normal(0.0, 1.0, size=(N_POINTS, DIM)).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


def shard_indices(n, epoch, rank, world):
    """This rank's part of a seeded per-epoch permutation."""
    perm = np.random.default_rng(1000 + epoch).permutation(n)
    per = n // world
    return torch.from_numpy(perm[rank * per:(rank + 1) * per])


def make_mlp():
    return nn.Sequential(
        nn.Linear(32, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 10),
    )


def mlp_seconds(model, steps, rank, world, report=None):
    """Seconds from the end of the first step to the end of the last."""
    x_all, y_all = synthetic_classification()
    batch = GLOBAL_BATCH // world
    per_epoch = N_POINTS // GLOBAL_BATCH
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    shard, shard_epoch = None, -1
    started = time.perf_counter()
    for step in range(steps):
        epoch = step // per_epoch
        if epoch != shard_epoch:
            shard, shard_epoch = shard_indices(N_POINTS, epoch, rank, world), epoch
        b = step % per_epoch
        idx = shard[b * batch:(b + 1) * batch]
        x, y = x_all[idx], y_all[idx]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()  # DDP all-reduces (averages) the gradients here
        opt.step()
        if report is not None:
            report({"loss": loss.item()})
        if step == 0:
            started = time.perf_counter()
    return time.perf_counter() - started


def all_reduce_grads(params, world):
    for p in params:
        dist.all_reduce(p.grad)
        p.grad.div_(world)


def overhead_seconds(steps, world, report=None):
    model = nn.Linear(4, 2)
    model(torch.ones(1, 4)).sum().backward()
    params = list(model.parameters())
    dist.barrier()
    started = time.perf_counter()
    for _ in range(steps):
        all_reduce_grads(params, world)
        if report is not None:
            report({"loss": 0.0})
    return time.perf_counter() - started


def allreduce_rounds(rounds):
    t = torch.ones(BYTES // 4, dtype=torch.float32)
    dist.all_reduce(t)  # warm-up
    times = []
    for _ in range(rounds):
        dist.barrier()
        started = time.perf_counter()
        dist.all_reduce(t)
        times.append(time.perf_counter() - started)
    return times


def sizes(quick):
    # (all-reduce rounds, MLP steps, overhead steps)
    return (3, 50, 200) if quick else (10, 300, 2000)


def samples_per_s(steps, seconds):
    return (steps - 1) * GLOBAL_BATCH / seconds


# ---------------------------------------------------------------- DDP


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_worker(rank, world, port, quick, out_path):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    rounds, mlp_steps, overhead_steps = sizes(quick)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ar = allreduce_rounds(rounds)
    torch.manual_seed(0)
    model = DDP(make_mlp())  # broadcasts rank 0's parameters
    mlp = mlp_seconds(model, mlp_steps, rank, world)
    over = overhead_seconds(overhead_steps, world)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({"allreduce": ar, "mlp": mlp, "overhead": over}, f)
    dist.barrier()
    dist.destroy_process_group()


def run_ddp(quick):
    import torch.multiprocessing as mp

    rounds, mlp_steps, overhead_steps = sizes(quick)
    torch.set_num_threads(1)
    log(f"1 worker: plain torch, {mlp_steps} steps")
    torch.manual_seed(0)
    m1 = samples_per_s(mlp_steps, mlp_seconds(make_mlp(), mlp_steps, 0, 1))

    with tempfile.TemporaryDirectory() as d:
        out_path = os.path.join(d, "rank0.json")
        log("2 workers: torch.multiprocessing.spawn, gloo")
        mp.spawn(ddp_worker, args=(2, free_port(), quick, out_path), nprocs=2, join=True)
        with open(out_path) as f:
            r = json.load(f)
    print(f"allreduce_100mb_gigabytes_per_s {BYTES / median(r['allreduce']) / 1e9:.3f} GB/s")
    print(f"mlp_samples_per_s_1_worker {m1:.0f} samples/s")
    print(f"mlp_samples_per_s_2_workers {samples_per_s(mlp_steps, r['mlp']):.0f} samples/s")
    print(f"step_overhead_ms {r['overhead'] * 1e3 / overhead_steps:.4f} ms")


# ---------------------------------------------------------------- Ray Train


def ray_loop(config):
    import ray.train
    import ray.train.torch

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    job = config["job"]
    if job == "allreduce":
        value = median(allreduce_rounds(config["rounds"]))
    elif job == "mlp":
        torch.manual_seed(0)
        model = ray.train.torch.prepare_model(make_mlp())  # DDP on gloo
        value = mlp_seconds(model, config["steps"], rank, world, report=ray.train.report)
    else:
        value = overhead_seconds(config["steps"], world, report=ray.train.report)
    if rank == 0:
        with open(config["out"], "w") as f:
            json.dump({"value": value}, f)
    ray.train.report({"value": value})


POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def ray_fit(storage, job, tag, **cfg):
    """One TorchTrainer run of `job`; (rank 0's value, seconds of fit())."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = os.path.join(storage, f"{job}-{tag}.json")
    trainer = TorchTrainer(
        ray_loop,
        train_loop_config={"job": job, "out": out, **cfg},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        run_config=RunConfig(name=f"train-bench-{job}-{tag}", storage_path=storage),
    )
    started = time.perf_counter()
    result = trainer.fit()
    secs = time.perf_counter() - started
    if result.error:
        raise result.error
    with open(out) as f:
        value = json.load(f)["value"]
    os.remove(out)
    reported = (result.metrics or {}).get("value")
    if reported is not None and reported != value:
        log(f"{job}: result.metrics value {reported} != rank 0's file {value}")
    return value, secs


def run_ray(quick, poll_interval, default_poll_steps):
    """Ray Train 2.60 (Train V2) hands each worker's report to its
    controller through a queue of one, which the controller drains once per
    poll, every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default): a loop
    that reports every step runs at one step per poll. The main figures are
    taken with that interval set to `poll_interval`, except the all-reduce
    (one report in all), run at Ray's default, since a short interval has the
    controller poll the workers for the CPUs; `step_overhead_ms_default_poll`
    is the overhead loop at Ray's default, `default_poll_steps` steps."""
    import ray

    rounds, mlp_steps, overhead_steps = sizes(quick)
    storage = tempfile.mkdtemp(prefix="train-bench-ray-")
    default = None
    os.environ.pop(POLL_ENV, None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        log("Ray (default poll interval): all-reduce")
        ar, _ = ray_fit(storage, "allreduce", "default", rounds=rounds)
        if default_poll_steps > 0:
            log(f"Ray (default poll interval): step overhead, {default_poll_steps} steps")
            default, _ = ray_fit(storage, "overhead", "default", steps=default_poll_steps)
    finally:
        ray.shutdown()
    if poll_interval is not None:
        os.environ[POLL_ENV] = str(poll_interval)
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False,
        runtime_env={"env_vars": {POLL_ENV: os.environ[POLL_ENV]}} if poll_interval is not None else None,
    )
    try:
        log(f"Ray ({POLL_ENV}={os.environ.get(POLL_ENV, 'default')}): MLP, {mlp_steps} steps")
        mlp, fit_secs = ray_fit(storage, "mlp", "main", steps=mlp_steps)
        log(f"Ray: step overhead, {overhead_steps} steps")
        over, _ = ray_fit(storage, "overhead", "main", steps=overhead_steps)
    finally:
        ray.shutdown()
    shutil.rmtree(storage, ignore_errors=True)
    print(f"allreduce_100mb_gigabytes_per_s {BYTES / ar / 1e9:.3f} GB/s")
    print(f"mlp_samples_per_s_2_workers {samples_per_s(mlp_steps, mlp):.0f} samples/s")
    print(f"train_fit_seconds {fit_secs:.2f} s")
    print(f"step_overhead_ms {over * 1e3 / overhead_steps:.4f} ms")
    if default is not None:
        print(f"step_overhead_ms_default_poll {default * 1e3 / default_poll_steps:.4f} ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["ddp", "ray"], required=True)
    ap.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    ap.add_argument(
        "--poll-interval", type=float, default=0.001,
        help="Ray: RAY_TRAIN_HEALTH_CHECK_INTERVAL_S for the main figures "
        "(Ray's default, 2 s, caps a loop that reports each step at one step per 2 s); "
        "a negative value keeps Ray's default",
    )
    ap.add_argument(
        "--default-poll-steps", type=int, default=10,
        help="Ray: steps of the overhead loop at Ray's default poll interval (0: skip)",
    )
    args = ap.parse_args()
    # gloo finds its interface from the hostname; keep it on loopback.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    log(f"torch {torch.__version__}, mode {args.mode}{' (quick)' if args.quick else ''}")
    if args.mode == "ddp":
        run_ddp(args.quick)
    else:
        run_ray(args.quick, None if args.poll_interval < 0 else args.poll_interval, args.default_poll_steps)


if __name__ == "__main__":
    main()
