"""RLlib's side of the RL comparison: PPO on CartPole-v1.

Ray's own tuned example settings (rllib/tuned_examples/ppo/cartpole_ppo.py:
a 32-unit linear network with shared value layers, gamma 0.99, lr 3e-4,
6 epochs, vf_loss_coeff 0.01, the KL loss; PPO's defaults otherwise:
4,000 steps per update, minibatches of 128), with 2 env runners, on 2 CPUs.
The example's parallel evaluation runner is left out: the measure is the
training return, RLlib's `env_runners/episode_return_mean` (a mean over the
last 100 episodes, as troupe-rl's).

Prints `metric value unit` lines (medians over the seeds, and each seed):
  rllib_ppo_cartpole_seconds_to_475, rllib_ppo_cartpole_env_steps_to_475
  (and _to_450, the figure quoted in issue 12), and
  rllib_sampling_env_steps_per_s (the 2 env runners sampling with policy
  inference, no training).

Run through benches/ray/rllib_compare.sh, which makes the venv.
"""

import argparse
import statistics
import sys
import time

import ray
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample

TARGETS = (450.0, 475.0)


def config(seed):
    return (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=2)
        .rl_module(
            model_config={
                "fcnet_hiddens": [32],
                "fcnet_activation": "linear",
                "vf_share_layers": True,
            }
        )
        .training(
            gamma=0.99,
            lr=0.0003,
            num_epochs=6,
            vf_loss_coeff=0.01,
            use_kl_loss=True,
        )
        .debugging(seed=seed)
    )


def solve(seed, max_seconds, max_steps):
    algo = config(seed).build_algo()
    began = time.perf_counter()
    reached = {}
    steps = 0
    try:
        while time.perf_counter() - began < max_seconds and steps < max_steps:
            result = algo.train()
            runners = result.get("env_runners", {})
            steps = runners.get("num_env_steps_sampled_lifetime", steps)
            mean = runners.get("episode_return_mean", float("nan"))
            elapsed = time.perf_counter() - began
            print(f"# seed {seed}: {steps} steps, return {mean:.1f}, {elapsed:.1f} s", file=sys.stderr)
            for target in TARGETS:
                if target not in reached and mean >= target:
                    reached[target] = (elapsed, steps)
            if len(reached) == len(TARGETS):
                break
    finally:
        algo.stop()
    return reached


def sampling_rate(rounds):
    algo = config(0).build_algo()
    try:
        group = algo.env_runner_group
        synchronous_parallel_sample(worker_set=group, max_env_steps=4000, _uses_new_env_runners=True)
        began = time.perf_counter()
        steps = 0
        for _ in range(rounds):
            episodes = synchronous_parallel_sample(
                worker_set=group, max_env_steps=4000, _uses_new_env_runners=True
            )
            steps += sum(len(e) for e in episodes)
        return steps / (time.perf_counter() - began)
    finally:
        algo.stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--max-steps", type=int, default=1_000_000)
    parser.add_argument("--sampling-rounds", type=int, default=10)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"rllib_sampling_env_steps_per_s {sampling_rate(args.sampling_rounds):.0f} steps/s", flush=True)
    runs = [solve(seed, args.max_seconds, args.max_steps) for seed in range(args.seeds)]
    for target in TARGETS:
        name = f"to_{target:.0f}"
        solved = [r[target] for r in runs if target in r]
        for seed, r in enumerate(runs):
            if target in r:
                print(f"rllib_ppo_cartpole_seconds_{name}_seed{seed} {r[target][0]:.1f} s")
                print(f"rllib_ppo_cartpole_env_steps_{name}_seed{seed} {r[target][1]} steps")
            else:
                print(f"rllib_ppo_cartpole_seconds_{name}_seed{seed} unsolved within the limits")
        if len(solved) == len(runs):
            print(f"rllib_ppo_cartpole_seconds_{name} {statistics.median(s for s, _ in solved):.1f} s")
            print(f"rllib_ppo_cartpole_env_steps_{name} {statistics.median(n for _, n in solved):.0f} steps")
        else:
            print(f"rllib_ppo_cartpole_seconds_{name} unsolved by {len(runs) - len(solved)} of {len(runs)} seeds")
    ray.shutdown()


if __name__ == "__main__":
    main()
