"""Ray's side of benches/ray/compare.sh: the loops of Troupe's `perf` bench,
written against Ray, timed with the `timeit` of Ray's own
python/ray/_private/ray_perf.py (warm up 1 s, then 4 runs of 2 s; mean and
standard deviation). Prints `metric value unit` lines on stdout, like the
Troupe bench, so that the two can be joined by metric name.

Usage: python ray_perf.py [filter ...]   (metrics whose name contains a filter)
"""

import os
import subprocess
import sys
import time

import numpy as np
import ray

NUM_CPUS = 2
LARGE = 100 * 1000 * 1000  # 100 MB, as the Troupe bench
QUICK = bool(os.environ.get("TROUPE_PERF_QUICK"))
WARMUP, RUN, RUNS = (0.1, 0.2, 2) if QUICK else (1.0, 2.0, 4)
FILTERS = [a for a in sys.argv[1:] if not a.startswith("-")]


def wanted(metric):
    return not FILTERS or any(f in metric for f in FILTERS)


def timeit(fn, multiplier=1):
    """ray_perf.py's timeit: returns (mean, std) of operations per second."""
    start = time.perf_counter()
    count = 0
    while time.perf_counter() - start < WARMUP:
        fn()
        count += 1
    step = count // 10 + 1
    stats = []
    for _ in range(RUNS):
        start = time.perf_counter()
        count = 0
        while time.perf_counter() - start < RUN:
            for _ in range(step):
                fn()
            count += step
        end = time.perf_counter()
        stats.append(multiplier * count / (end - start))
    return float(np.mean(stats)), float(np.std(stats))


def report(metric, value, unit, std=None):
    print(f"{metric} {value:.3f} {unit}", flush=True)
    if std is not None:
        print(f"  {metric}: {value:.1f} +- {std:.1f} {unit}", file=sys.stderr, flush=True)


def tree_rss_mib(root):
    """RSS of a process and all its descendants (raylet, GCS, workers...)."""
    parents = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(pid))
    total_kib, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(parents.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total_kib += int(line.split()[1])
        except OSError:
            pass
    return total_kib / 1024.0


CHILD_START = """
import time, ray
t = time.perf_counter()
ray.init(num_cpus=%d)
print((time.perf_counter() - t) * 1e3, flush=True)
ray.shutdown()
""" % NUM_CPUS

CHILD_IDLE = """
import os, sys, time, ray
sys.path.insert(0, %r)
from ray_perf import tree_rss_mib
ray.init(num_cpus=%d)
time.sleep(5)
print(tree_rss_mib(os.getpid()), flush=True)
ray.shutdown()
""" % (os.path.dirname(os.path.abspath(__file__)), NUM_CPUS)


def child(code):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@ray.remote
def noop_task():
    return None


@ray.remote
def link(previous):
    return previous + 1


@ray.remote
class Noop:
    def noop(self):
        return 1


def main():
    if wanted("runtime_start_ms"):
        # Median of 3 fresh processes (Troupe takes 21: Ray's start is seconds).
        times = sorted(child(CHILD_START) for _ in range(3))
        report("runtime_start_ms", times[1], "ms")
    if wanted("idle_rss_mib"):
        # Ray's default start, idle for 5 s: every process it started.
        report("idle_rss_mib", child(CHILD_IDLE), "MiB")

    ray.init(num_cpus=NUM_CPUS)

    if wanted("actor_calls_sync_per_s"):
        a = Noop.remote()
        ray.get(a.noop.remote())
        mean, std = timeit(lambda: ray.get(a.noop.remote()))
        report("actor_calls_sync_per_s", mean, "calls/s", std)
        del a
    if wanted("actor_calls_async_per_s"):
        a = Noop.remote()
        ray.get(a.noop.remote())
        mean, std = timeit(lambda: ray.get([a.noop.remote() for _ in range(1000)]), 1000)
        report("actor_calls_async_per_s", mean, "calls/s", std)
        del a
    if wanted("actor_creation_per_s"):
        # An actor created, called once and dropped (Ray kills it on drop).
        # Troupe's loop creates 1,000 per step; at Ray's rate a step of 1,000
        # would take minutes, so one actor per step here.
        def create():
            a = Noop.remote()
            ray.get(a.noop.remote())

        mean, std = timeit(create)
        report("actor_creation_per_s", mean, "actors/s", std)

    if wanted("tasks_sync_per_s"):
        mean, std = timeit(lambda: ray.get(noop_task.remote()))
        report("tasks_sync_per_s", mean, "tasks/s", std)
    if wanted("tasks_async_per_s"):
        mean, std = timeit(lambda: ray.get([noop_task.remote() for _ in range(1000)]), 1000)
        report("tasks_async_per_s", mean, "tasks/s", std)
    if wanted("task_chain_per_s"):
        def chain():
            r = link.remote(0)
            for _ in range(999):
                r = link.remote(r)
            assert ray.get(r) == 1000

        mean, std = timeit(chain, 1000)
        report("task_chain_per_s", mean, "tasks/s", std)

    if wanted("put_small_per_s"):
        mean, std = timeit(lambda: ray.put(0))
        report("put_small_per_s", mean, "puts/s", std)
    if wanted("get_small_per_s"):
        small = ray.put(7)
        mean, std = timeit(lambda: ray.get(small))
        report("get_small_per_s", mean, "gets/s", std)
    if any(wanted(m) for m in ("memcpy_gigabytes_per_s", "put_gigabytes_per_s", "get_gigabytes_per_s")):
        source = np.ones(LARGE, dtype=np.uint8)
        target = np.zeros(LARGE, dtype=np.uint8)
        gb = LARGE / 1e9
        mean, std = timeit(lambda: np.copyto(target, source))
        report("memcpy_gigabytes_per_s", mean * gb, "GB/s", std * gb)
        mean, std = timeit(lambda: ray.put(source))
        report("put_gigabytes_per_s", mean * gb, "GB/s", std * gb)
        large = ray.put(source)
        mean, std = timeit(lambda: ray.get(large))
        report("get_gigabytes_per_s", mean * gb, "GB/s", std * gb)
        del large
    if wanted("get_object_containing_10k_refs_per_s"):
        # As Troupe's loop: the 10k refs exist; only the get is timed.
        # (ray_perf.py also creates them in a task on every step.)
        holder = ray.put([ray.put(i) for i in range(10_000)])
        mean, std = timeit(lambda: ray.get(holder))
        report("get_object_containing_10k_refs_per_s", mean, "gets/s", std)
    if wanted("wait_1k_refs_ms"):
        refs = [ray.put(i) for i in range(1000)]

        def wait_all():
            ready, _ = ray.wait(refs, num_returns=1000)
            assert len(ready) == 1000

        mean, std = timeit(wait_all)
        report("wait_1k_refs_ms", 1e3 / mean, "ms", 1e3 * std / (mean * mean))

    ray.shutdown()


if __name__ == "__main__":
    main()
