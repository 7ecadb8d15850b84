"""Joins the `metric value unit` lines of Ray's and Troupe's runs into one
markdown table (printed; written to a file with --write)."""

import argparse
import datetime
import os
import platform

# Metrics where lower is better; for the rest (rates), higher is better.
LOWER_IS_BETTER = ("_ms", "_mib")
# Physical references measured by each side, not a contest.
REFERENCES = ("memcpy_gigabytes_per_s",)
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
    p.add_argument("--command", required=True)
    p.add_argument("--ray-version", required=True)
    p.add_argument("--troupe-version", required=True)
    p.add_argument("--rustc", required=True)
    p.add_argument("--write")
    args = p.parse_args()
    ray, troupe = read(args.ray), read(args.troupe)

    lines = [
        "| metric | unit | Ray | Troupe | Troupe vs Ray |",
        "|---|---|---:|---:|---:|",
    ]
    names = [m for m in ORDER if m in ray or m in troupe]
    names += sorted(m for m in set(ray) | set(troupe) if m not in ORDER)
    only_troupe = []
    for name in names:
        if name not in ray:
            only_troupe.append(name)
            continue
        r, unit = ray[name]
        t = troupe.get(name, (None, unit))[0]
        if t is None:
            ratio = "Troupe did not report it"
        elif name in REFERENCES:
            ratio = "(reference: memory bandwidth)"
        elif r <= 0 or t <= 0:
            ratio = "n/a"
        elif name.endswith(LOWER_IS_BETTER):
            ratio = f"{r / t:,.1f}x less"
        else:
            ratio = f"{t / r:,.1f}x faster"
        lines.append(f"| {name} | {unit} | {fmt(r)} | {fmt(t) if t is not None else '-'} | {ratio} |")

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
- "Troupe vs Ray" is how many times faster (rates) or smaller (latency,
  memory) Troupe is; memcpy is each side's own measure of the machine's
  copy bandwidth, the ceiling for a 100 MB put.
- Ray's tasks and actors run in worker processes and every call crosses a
  socket; Troupe's run in the caller's process. That is the design difference
  the ratios measure, and it is also why a Troupe actor cannot outlive its
  process (the cluster issue brings remote nodes).
- actor_creation: Troupe creates 1,000 actors per step, Ray one (a process per
  actor; a step of 1,000 would take minutes).
- get_gigabytes_per_s: both return the stored 100 MB without copying it
  (Troupe shares an `Arc`, Ray maps its shared memory), so the figure is
  calls per second times 100 MB, not a bandwidth.
- get_object_containing_10k_refs: only the get is timed on both sides (Ray's
  own ray_perf.py also creates the 10k refs in a task on every step).
- runtime_start_ms: Ray's is the median of 3 `ray.init(num_cpus=2)` in fresh
  processes, Troupe's the median of 21 starts of its whole supervision tree.
- idle_rss_mib: every process Ray started (driver, GCS, raylet, workers,
  5 s after `ray.init`), against Troupe's one process.
"""


if __name__ == "__main__":
    main()
