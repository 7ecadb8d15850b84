"""Ray's side of the cluster section of benches/ray/compare.sh: the loops of
Troupe's `cluster_perf` bench (a head and two nodes on loopback), written
against Ray's `ray.cluster_utils.Cluster`.

The cluster: a head with 0 CPUs, where the driver attaches, and two nodes of
1 CPU each, all on 127.0.0.1. The nodes carry custom resources only they have
(`node_a`, `node_b`); every task and actor here asks for one, so it runs on
another node than the driver's. Each node's object store is 2 GiB (Cluster's
default, 150 MiB, cannot hold the 1 GB object).

Prints `metric value unit` lines on stdout, like the Troupe bench, so that
the two can be joined by metric name:
  remote_tasks_sync_per_s        a no-op task on node A, submitted and waited, one at a time
  remote_tasks_async_per_s       10,000 no-op tasks on node A, submitted, then gathered
  remote_actor_calls_sync_per_s  calls of an actor on node B, one at a time
  remote_actor_calls_async_per_s 10,000 pipelined calls of that actor, then gathered
  cross_node_get_gigabytes_per_s 1 GB made by a task on node A, read by a task on node B
                                 (timed from submitting the read to its result)
  tcp_loopback_gigabytes_per_s   the same 1 GB copied over a plain TCP socket on loopback
  node_dead_after_sigkill_s      SIGKILL of node B's raylet until `ray.nodes()` says
                                 it is not Alive (Ray's default health checks)
  start_seconds                  start of the head and two nodes, until all three are registered
  idle_rss_mib                   RSS of every Ray process (and the driver), idle 5 s after start

Timing as benches/ray/ray_perf.py (the `timeit` of Ray's own ray_perf.py:
warm up 1 s, then runs of 2 s; a 10,000 batch is one step of a run), with the
median of 3 runs; the 1 GB transfers and TCP copies: one warm-up (the first
1 GB in a fresh cluster touches its shared memory for the first time), then
the median of 3; the start: median of 3 (two in fresh child processes, and
the cluster used here); the SIGKILL: once, at the end.

Usage: python cluster_bench.py [filter ...]   (metrics whose name contains a filter)
       TROUPE_PERF_QUICK=1 python cluster_bench.py   (short runs, 1,000 batches, a smoke test)
Run through benches/ray/compare.sh (COMPARE_CLUSTER=1), which makes the venv.
"""

import os

# Keep every address on loopback: on Linux Ray otherwise swaps 127.0.0.1 for
# the machine's external address. Read when ray is imported, and inherited by
# the processes the nodes start.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import ray  # noqa: E402
from ray._private import ray_constants  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ray_perf import tree_rss_mib  # noqa: E402

QUICK = bool(os.environ.get("TROUPE_PERF_QUICK"))
WARMUP, RUN, RUNS = (0.1, 0.2, 2) if QUICK else (1.0, 2.0, 3)
BATCH = 1_000 if QUICK else 10_000
GB = 1_000_000_000  # 1 GB, as the Troupe bench
TRANSFERS = 1 if QUICK else 3
OBJECT_STORE = 2 * 1024**3
HOST = "127.0.0.1"
FILTERS = [a for a in sys.argv[1:] if not a.startswith("-")]


def wanted(metric):
    return not FILTERS or any(f in metric for f in FILTERS)


def timeit(fn, multiplier=1):
    """ray_perf.py's timeit, with the median of the runs: operations per second."""
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
    return statistics.median(stats), stats


def report(metric, value, unit, samples=None):
    print(f"{metric} {value:.3f} {unit}", flush=True)
    if samples is not None:
        shown = ", ".join(f"{s:,.3f}" for s in samples)
        print(f"  {metric}: median {value:,.3f} {unit} of [{shown}]", file=sys.stderr, flush=True)


def note(text):
    print(f"# {text}", file=sys.stderr, flush=True)


def start_cluster():
    """A head (0 CPUs) and two nodes (1 CPU, a custom resource each), all on
    loopback; returns the cluster, the two nodes and the seconds it took."""
    began = time.perf_counter()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "node_ip_address": HOST},
    )
    node_a = cluster.add_node(
        num_cpus=1, resources={"node_a": 1000}, object_store_memory=OBJECT_STORE, node_ip_address=HOST
    )
    node_b = cluster.add_node(
        num_cpus=1, resources={"node_b": 1000}, object_store_memory=OBJECT_STORE, node_ip_address=HOST
    )
    cluster.wait_for_nodes()
    return cluster, node_a, node_b, time.perf_counter() - began


def start_only():
    """Child process: start the cluster, print the seconds, stop it."""
    cluster, _, _, seconds = start_cluster()
    print(seconds, flush=True)
    cluster.shutdown()


def start_in_child():
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--start-only"],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


@ray.remote(resources={"node_a": 1})
def noop():
    return None


@ray.remote
def where():
    return ray.get_runtime_context().get_node_id()


@ray.remote(resources={"node_a": 1})
def make(n):
    return np.ones(n, dtype=np.uint8)


@ray.remote(resources={"node_b": 1})
def read(array):
    # The argument is pulled to node B before the task runs, then mapped.
    return int(array.nbytes), int(array[-1])


@ray.remote(resources={"node_b": 1})
class Noop:
    def noop(self):
        return 1

    def node(self):
        return ray.get_runtime_context().get_node_id()


def tcp_copy_seconds(data, target):
    """Seconds to copy `data` into `target` over one TCP connection on loopback."""
    server = socket.create_server((HOST, 0))
    port = server.getsockname()[1]
    got = [0]

    def receive():
        conn, _ = server.accept()
        with conn:
            view = memoryview(target)
            while got[0] < len(view):
                n = conn.recv_into(view[got[0] :])
                if n == 0:
                    break
                got[0] += n

    began = time.perf_counter()
    thread = threading.Thread(target=receive)
    thread.start()
    with socket.create_connection((HOST, port)) as conn:
        conn.sendall(memoryview(data))
    thread.join()
    elapsed = time.perf_counter() - began
    server.close()
    assert got[0] == len(data), (got[0], len(data))
    return elapsed


def main():
    starts = []
    if wanted("start_seconds") and not QUICK:
        starts = [start_in_child() for _ in range(2)]
    cluster, node_a, node_b, seconds = start_cluster()
    starts.append(seconds)
    if wanted("start_seconds"):
        report("start_seconds", statistics.median(starts), "s", starts)

    ray.init(address=cluster.address)
    try:
        if wanted("idle_rss_mib"):
            # Every process the cluster started is a descendant of this one
            # (GCS, raylets, agents, dashboard, prestarted workers); the
            # driver's own RSS is included, as in ray_perf.py.
            time.sleep(5)
            report("idle_rss_mib", tree_rss_mib(os.getpid()), "MiB")

        driver_node = ray.get_runtime_context().get_node_id()
        head = cluster.head_node.node_id
        on_a = ray.get(where.options(resources={"node_a": 1}).remote())
        on_b = ray.get(where.options(resources={"node_b": 1}).remote())
        assert driver_node == head, (driver_node, head)
        assert on_a == node_a.node_id and on_b == node_b.node_id, (on_a, on_b)
        assert len({head, on_a, on_b}) == 3
        note(f"driver on the head {head[:8]}, node A {on_a[:8]}, node B {on_b[:8]}")

        if wanted("remote_tasks_sync_per_s"):
            ray.get(noop.remote())
            value, runs = timeit(lambda: ray.get(noop.remote()))
            report("remote_tasks_sync_per_s", value, "tasks/s", runs)
        if wanted("remote_tasks_async_per_s"):
            value, runs = timeit(lambda: ray.get([noop.remote() for _ in range(BATCH)]), BATCH)
            report("remote_tasks_async_per_s", value, "tasks/s", runs)

        if wanted("remote_actor_calls_sync_per_s") or wanted("remote_actor_calls_async_per_s"):
            actor = Noop.remote()
            assert ray.get(actor.node.remote()) == node_b.node_id
            if wanted("remote_actor_calls_sync_per_s"):
                value, runs = timeit(lambda: ray.get(actor.noop.remote()))
                report("remote_actor_calls_sync_per_s", value, "calls/s", runs)
            if wanted("remote_actor_calls_async_per_s"):
                value, runs = timeit(lambda: ray.get([actor.noop.remote() for _ in range(BATCH)]), BATCH)
                report("remote_actor_calls_async_per_s", value, "calls/s", runs)
            ray.kill(actor)
            del actor

        if wanted("cross_node_get_gigabytes_per_s"):
            rates = []
            for i in range(1 + TRANSFERS):
                ref = make.remote(GB)
                # Made and sealed on node A; not fetched to the driver.
                ray.wait([ref], fetch_local=False)
                began = time.perf_counter()
                nbytes, last = ray.get(read.remote(ref))
                elapsed = time.perf_counter() - began
                assert (nbytes, last) == (GB, 1), (nbytes, last)
                note(f"1 GB node A -> node B: {elapsed:.3f} s{' (warm-up)' if i == 0 else ''}")
                if i > 0:
                    rates.append(GB / elapsed / 1e9)
                del ref
            report("cross_node_get_gigabytes_per_s", statistics.median(rates), "GB/s", rates)
        if wanted("tcp_loopback_gigabytes_per_s"):
            data = np.ones(GB, dtype=np.uint8)
            target = np.zeros(GB, dtype=np.uint8)
            target.fill(0)  # touch its pages, as a warm store's
            tcp_copy_seconds(data, target)
            rates = [GB / tcp_copy_seconds(data, target) / 1e9 for _ in range(TRANSFERS)]
            assert target[-1] == 1
            report("tcp_loopback_gigabytes_per_s", statistics.median(rates), "GB/s", rates)
            del data, target

        if wanted("node_dead_after_sigkill_s"):
            raylet = node_b.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
            began = time.perf_counter()
            os.kill(raylet.pid, signal.SIGKILL)
            while True:
                alive = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
                if not alive.get(node_b.node_id, True):
                    break
                if time.perf_counter() - began > 120:
                    raise TimeoutError("node B still alive 120 s after SIGKILL of its raylet")
                time.sleep(0.05)
            report("node_dead_after_sigkill_s", time.perf_counter() - began, "s")
    finally:
        ray.shutdown()
        try:
            cluster.shutdown()
        except Exception as e:  # a killed node may leave its shutdown unhappy
            note(f"cluster shutdown: {e!r}")


if __name__ == "__main__":
    if "--start-only" in sys.argv:
        start_only()
    else:
        main()
