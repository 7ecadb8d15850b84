"""Joins the `metric value unit` lines of Ray's and Troupe's runs into one
markdown table (printed; written to a file with --write)."""

import argparse
import datetime
import os
import platform

# Metrics where lower is better; for the rest (rates), higher is better.
LOWER_IS_BETTER = ("_ms", "_mib")
# Physical references measured by each side, not a contest.
REFERENCES = ("memcpy_gigabytes_per_s", "disk_write_gigabytes_per_s")
ORDER = [
    "tasks_sync_per_s", "tasks_async_per_s", "task_chain_per_s",
    "actor_calls_sync_per_s", "actor_calls_async_per_s", "actor_creation_per_s",
    "put_small_per_s", "get_small_per_s",
    "put_gigabytes_per_s", "get_gigabytes_per_s", "memcpy_gigabytes_per_s",
    "get_object_containing_10k_refs_per_s", "wait_1k_refs_ms",
    "runtime_start_ms", "idle_rss_mib",
]


def read(path):
    metrics = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:
                try:
                    metrics[parts[0]] = (float(parts[1]), parts[2])
                except ValueError:
                    pass
    return metrics


def fmt(value):
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def compare(name, ray, troupe):
    """How Troupe fares against Ray on one metric, in words."""
    if troupe is None:
        return "not reported"
    if name in REFERENCES:
        return "(reference)"
    if ray <= 0 or troupe <= 0:
        return "n/a"
    better = ray / troupe if name.endswith(LOWER_IS_BETTER) else troupe / ray
    if better >= 1:
        word = "less" if name.endswith(LOWER_IS_BETTER) else "faster"
        return f"{better:,.1f}x {word}"
    word = "more" if name.endswith(LOWER_IS_BETTER) else "slower"
    return f"**{1 / better:,.1f}x {word}**"


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = 0.0
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(l.split()[1]) for l in f if l.startswith("MemTotal"))
            mem = kib / 1024 / 1024
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB memory, {platform.system()} {platform.release()}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("ray")
    p.add_argument("troupe")
    p.add_argument("--also", nargs=2, metavar=("LABEL", "FILE"),
                   help="a second Troupe run (another build) to show beside the first")
    p.add_argument("--command", required=True)
    p.add_argument("--ray-version", required=True)
    p.add_argument("--troupe-version", required=True)
    p.add_argument("--rustc", required=True)
    p.add_argument("--write")
    args = p.parse_args()
    ray, troupe = read(args.ray), read(args.troupe)
    also = read(args.also[1]) if args.also else None

    header = "| metric | unit | Ray | Troupe | Troupe vs Ray |"
    rule = "|---|---|---:|---:|---:|"
    if also is not None:
        header += f" Troupe, {args.also[0]} | vs Ray |"
        rule += "---:|---:|"
    lines = [header, rule]
    names = [m for m in ORDER if m in ray or m in troupe]
    names += sorted(m for m in set(ray) | set(troupe) if m not in ORDER)
    only_troupe = []
    for name in names:
        if name not in ray:
            only_troupe.append(name)
            continue
        r, unit = ray[name]
        row = f"| {name} | {unit} | {fmt(r)} |"
        for run in [troupe] + ([also] if also is not None else []):
            t = run.get(name, (None, unit))[0]
            row += f" {fmt(t) if t is not None else '-'} | {compare(name, r, t)} |"
        lines.append(row)

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        f"Machine: {machine()}.",
        f"Versions: Ray {args.ray_version} (Python {platform.python_version()}), "
        f"Troupe {args.troupe_version} ({args.rustc}).",
        f"Date: {now}. Command: `{args.command}`.",
        "",
    ]
    tail = []
    if only_troupe:
        tail = ["", "Troupe only (no Ray counterpart): " + ", ".join(
            f"{n} = {fmt(troupe[n][0])} {troupe[n][1]}" for n in only_troupe) + "."]
    table = "\n".join(head + lines + tail)
    print(table)
    if args.write:
        with open(args.write, "w") as f:
            f.write(DOC_HEAD + table + "\n" + DOC_TAIL)
        print(f"\n(written to {args.write})")


DOC_HEAD = """# Troupe and Ray, side by side

Produced by `benches/ray/compare.sh` (one command; it creates its own cached
Python venv with the pinned Ray of `benches/ray/requirements.txt`). Ray's loops
are in `benches/ray/ray_perf.py`, Troupe's in `benches/perf.rs`; both time them
with the `timeit` of Ray's `ray_perf.py` (warm up 1 s, then 4 runs of 2 s, mean
shown). Both sides have 2 CPUs and run one after the other, never at once.
Ratios are from this one run; this VM moves by up to a quarter between runs.

"""

DOC_TAIL = """
How to read it:
- "vs Ray" says how many times faster (rates) or smaller (latency, memory)
  Troupe is, or, in bold, slower; memcpy is each side's own measure of the
  machine's copy bandwidth, the ceiling for a 100 MB put.
- Troupe runs twice: as built by default, and with its opt-in `mimalloc`
  feature (a global allocator for binaries; a library must not choose its
  users' allocator, so it is off by default).
- put_gigabytes_per_s: both sides copy the caller's 100 MB into the store
  (Troupe: `rt.put_bytes(&array)`, Ray: `ray.put(array)`). Ray copies into
  shared memory it mapped at start; Troupe into a buffer its store owns and
  reuses once freed, so the copy runs at memory speed with glibc's malloc
  too (a fresh 100 MB `Vec` would fault its pages in on first touch).
  Moving a value in (`rt.put(array)`) copies nothing.
- spill_gigabytes_per_s (Troupe only): the store writing a 100 MB byte
  object to its spill directory, beside disk_write_gigabytes_per_s, a plain
  sequential write of the same bytes to the same directory.
- Ray's tasks and actors run in worker processes and every call crosses a
  socket; Troupe's run in the caller's process. That is the design difference
  the ratios measure, and it is also why an actor of a single-node Troupe
  lives and dies with its process (the cluster section below runs nodes
  as separate processes).
- actor_creation: Troupe creates 1,000 actors per step, Ray one (a process per
  actor; a step of 1,000 would take minutes).
- get_gigabytes_per_s: both return the stored 100 MB without copying it
  (Troupe shares an `Arc`, Ray maps its shared memory), so the figure is
  calls per second times 100 MB, not a bandwidth.
- get_object_containing_10k_refs: only the get is timed on both sides (Ray's
  own ray_perf.py also creates the 10k refs in a task on every step).
- runtime_start_ms: Ray's is the median of 3 `ray.init(num_cpus=2)` in fresh
  processes, Troupe's the median of 21 starts of its whole supervision tree.
- soak (Troupe only): waves of 10,000 tasks, all in flight at once. The
  first 400,000 tasks raise RSS to a plateau (the working set of one wave,
  ~10 MB of heap, held by glibc's per-thread arenas):
  soak_warmup_rss_growth_mib. soak_1m_tasks_rss_growth_mib is the growth
  over the next million; a leak would grow with the task count, and a
  5M-task run stays within ±1 MiB of its plateau.
- idle_rss_mib: every process Ray started (driver, GCS, raylet, workers,
  5 s after `ray.init`), against Troupe's one process.
"""


if __name__ == "__main__":
    main()
