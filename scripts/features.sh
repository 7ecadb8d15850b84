# Sourced by scripts/test.sh and .ci/run: every feature of every crate that
# builds on this machine (the GPU ones run on CPU without a GPU). One list,
# so that the tests and CI's examples and benches build one feature set and
# share one debug build (each set unifies features afresh and rebuilds).
all_features=troupe/gpu,troupe/dashboard,troupe/cluster,troupe-rl/tune,troupe-rl/cluster,troupe-tune/cluster,troupe-serve/cluster,troupe-serve/gpu,troupe-data/gpu,troupe-data/cluster,troupe-train/cluster
