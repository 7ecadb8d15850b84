"""Joins the `metric value unit` lines of Ray's cluster run
(benches/ray/cluster_bench.py) and Troupe's (`cargo bench -p troupe --features
cluster --bench cluster_perf`) into one markdown table; prints it, and with
--write replaces the section between the troupe-cluster markers of a results
file (appending it if absent). Troupe's file may be absent or empty: its
column then says so."""

import argparse
import datetime
import os
import platform
import re
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from table import fmt, machine, read  # noqa: E402

BEGIN = "<!-- troupe-cluster:begin -->"
END = "<!-- troupe-cluster:end -->"

ORDER = [
    "remote_tasks_sync_per_s", "remote_tasks_async_per_s",
    "remote_actor_calls_sync_per_s", "remote_actor_calls_async_per_s",
    "cross_node_get_gigabytes_per_s", "tcp_loopback_gigabytes_per_s",
    "cross_node_get_share_of_tcp",
    "node_dead_after_sigkill_s", "start_seconds", "idle_rss_mib",
]
# Each side's own measure of the machine, not a contest.
REFERENCES = ("tcp_loopback_gigabytes_per_s",)
# The 1 GB read as a share of the plain TCP copy of the same run (derived).
SHARE = "cross_node_get_share_of_tcp"


def lower_is_better(name):
    if name.endswith("_per_s"):
        return False
    return name.endswith(("_ms", "_mib", "_s", "_seconds"))


def compare(name, ray, troupe):
    """How Troupe fares against Ray on one metric, in words."""
    if troupe is None:
        return "not reported"
    if name in REFERENCES:
        return "(reference)"
    if ray <= 0 or troupe <= 0:
        return "n/a"
    lower = lower_is_better(name)
    better = ray / troupe if lower else troupe / ray
    if better >= 1:
        return f"{better:,.1f}x {'less' if lower else 'faster'}"
    return f"**{1 / better:,.1f}x {'more' if lower else 'slower'}**"


def with_share(metrics):
    get = metrics.get("cross_node_get_gigabytes_per_s")
    tcp = metrics.get("tcp_loopback_gigabytes_per_s")
    if get and tcp and tcp[0] > 0:
        metrics[SHARE] = (get[0] / tcp[0], "x")
    # One request at a time against a blocking TCP ping-pong between two
    # processes of the same machine (Troupe's bench measures it).
    pingpong = metrics.get("tcp_pingpong_round_trips_per_s")
    for sync in ("remote_tasks_sync_per_s", "remote_actor_calls_sync_per_s"):
        rate = metrics.get(sync)
        if rate and pingpong and pingpong[0] > 0:
            metrics[sync.replace("_per_s", "_share_of_pingpong")] = (rate[0] / pingpong[0], "x")
    return metrics


def main():
    p = argparse.ArgumentParser()
    p.add_argument("ray")
    p.add_argument("troupe")
    p.add_argument("--troupe-missing", default="",
                   help="why Troupe's side is absent (shown instead of its figures)")
    p.add_argument("--command", required=True)
    p.add_argument("--ray-version", required=True)
    p.add_argument("--troupe-version", required=True)
    p.add_argument("--rustc", required=True)
    p.add_argument("--write")
    args = p.parse_args()
    ray = with_share(read(args.ray))
    troupe = with_share(read(args.troupe)) if os.path.exists(args.troupe) else {}

    lines = ["| metric | unit | Ray | Troupe | Troupe vs Ray |", "|---|---|---:|---:|---:|"]
    names = [m for m in ORDER if m in ray or m in troupe]
    names += sorted(m for m in set(ray) | set(troupe) if m not in ORDER)
    only_troupe = []
    for name in names:
        if name not in ray:
            only_troupe.append(name)
            continue
        r, unit = ray[name]
        t = troupe.get(name, (None, unit))[0]
        lines.append(f"| {name} | {unit} | {fmt(r)} | {fmt(t) if t is not None else '-'} | {compare(name, r, t)} |")

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        f"Machine: {machine()}.",
        f"Versions: Ray {args.ray_version} (Python {platform.python_version()}), "
        f"Troupe {args.troupe_version} ({args.rustc}).",
        f"Date: {now}. Command: `{args.command}`.",
        "Load average (1, 5, 15 min) when the table was written: "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + ".",
        "",
    ]
    if args.troupe_missing:
        head += [f"troupe: not available ({args.troupe_missing}).", ""]
    tail = []
    if only_troupe:
        tail = ["", "Troupe only (no Ray counterpart): " + ", ".join(
            f"{n} = {fmt(troupe[n][0])} {troupe[n][1]}" for n in only_troupe) + "."]
    table = "\n".join(head + lines + tail)
    print(table)
    if args.write:
        section = "\n".join([BEGIN, DOC_HEAD, table, DOC_TAIL, END])
        try:
            with open(args.write) as f:
                text = f.read()
        except FileNotFoundError:
            text = ""
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _: section, text)
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        with open(args.write, "w") as f:
            f.write(text)
        print(f"\n(written to {args.write})")


DOC_HEAD = """## Clusters: a head and two nodes on loopback

Produced by `COMPARE_CLUSTER=1 benches/ray/compare.sh` (or `COMPARE_CLUSTER=only`).
Ray's loops are in `benches/ray/cluster_bench.py` (`ray.cluster_utils.Cluster`:
a head with 0 CPUs where the driver attaches, two nodes of 1 CPU, every
address on 127.0.0.1; tasks and actors ask for a custom resource only a node
has, so they run on another node than the driver's), Troupe's in
`cargo bench -p troupe --features cluster --bench cluster_perf`. Medians of 3
runs; the two sides run one after the other, never at once.
"""

DOC_TAIL = """
How to read it:
- remote_tasks: a no-op task on another node, submitted and awaited one at a
  time (sync), or 10,000 submitted then gathered (async). Ray's all run on
  node A, one worker process with its 1 CPU.
- remote_actor_calls: an actor on another node, called one at a time, or
  10,000 calls pipelined then gathered.
- cross_node_get: 1 GB made by a task on one node, read by a task on the
  other, timed from the read's submission to its result (after one warm-up
  transfer: the first 1 GB in a fresh Ray cluster touches its shared memory
  for the first time). tcp_loopback is each side's plain TCP copy of the same
  bytes on the same loopback, the ceiling; cross_node_get_share_of_tcp is the
  first divided by the second.
- tcp_pingpong_round_trips_per_s (Troupe's bench): 64-byte messages back
  and forth over loopback TCP between two processes, blocking reads on both
  sides: what one request at a time can reach on this machine at best;
  remote_*_sync_share_of_pingpong divide the sync rates by it.
- cross_node_get_fresh_gigabytes_per_s (Troupe's bench): the first 1 GB
  read, into memory the reader's process never used (its pages fault in as
  they fill); the later reads land in the buffer the store kept.
- random_dag_tasks_per_s (Troupe's bench): the random DAG of
  `tests/cluster_correctness.rs` (seed 1, 10,000 tasks), submitted at once,
  every answer read and checked at the driver.
- node_dead_after_sigkill_s: SIGKILL of one node (Ray: its raylet) until the
  cluster reports it dead, with default settings (Ray: health checks every
  3 s, 10 s timeout, 5 misses).
- start_seconds: the head and two nodes started and registered. idle_rss_mib:
  every process of the cluster (and the driver), idle 5 s after start.
"""


if __name__ == "__main__":
    main()
