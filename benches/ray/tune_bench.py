"""Ray Tune's side of troupe-tune's `trial_overhead_ms`
(libs/tune/benches/tune_perf.rs): N trials of a function trainable that
reports once and returns, 2 at a time (ray.init(num_cpus=2), 1 CPU per
trial, FIFO), wall time of Tuner.fit() / trials. No checkpoints, no
progress output (verbose=0); the experiment goes to a temporary directory.

    python3 -m venv /tmp/raytune-venv
    /tmp/raytune-venv/bin/pip install -r benches/ray/tune_requirements.txt
    /tmp/raytune-venv/bin/python benches/ray/tune_bench.py [TRIALS]   # default 1000

Prints one line, `trial_overhead_ms <value> ms`, and details on stderr.
Ray's overhead is about a second per trial on 2 vCPUs, so 1,000 trials
take about 20 minutes; a smaller TRIALS (e.g. 100) gives the same figure
to within a few percent.
"""

import os
import sys
import tempfile
import time

import ray
from ray import tune


def trainable(config):
    tune.report({"score": config["x"]})


def main():
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as storage:
        tuner = tune.Tuner(
            trainable,
            param_space={"x": tune.uniform(0.0, 1.0)},
            tune_config=tune.TuneConfig(
                num_samples=trials,
                max_concurrent_trials=2,
                metric="score",
                mode="max",
            ),
            run_config=tune.RunConfig(storage_path=storage, name="bench", verbose=0),
        )
        started = time.perf_counter()
        results = tuner.fit()
        elapsed = time.perf_counter() - started
    assert len(results) == trials, len(results)
    errors = sum(1 for r in results if r.error is not None)
    print(
        f"{trials} trials in {elapsed:.1f} s ({errors} errored), Ray {ray.__version__}",
        file=sys.stderr,
    )
    print(f"trial_overhead_ms {elapsed * 1e3 / trials:.1f} ms")
    ray.shutdown()


if __name__ == "__main__":
    main()
