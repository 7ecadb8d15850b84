"""Ray's side of troupe-rl's `asha_cartpole_seconds_to_475`
(libs/rl/benches/rl_perf.rs, the `tune_ppo_cartpole` example's search):
RLlib's PPO on CartPole-v1 tuned by Ray Tune with ASHA, timed until some
trial's mean return over its last 100 episodes reaches 475.

The same search as troupe-rl's (`troupe_rl::tune::ppo_search_space`):
16 configs drawn at random from learning_rate log-uniform [1e-3, 1e-2),
clip in {0.1, 0.2, 0.3}, entropy coefficient in {0, 0.001, 0.01}, gamma in
{0.98, 0.99}, lambda in {0.8, 0.9, 0.95}, epochs in {4, 10}, minibatches
in {1, 2, 4}; 2 trials at a time on `ray.init(num_cpus=2)`, 1 CPU each;
ASHA with Ray's grace period 1 and reduction factor 4 and max_t 40, where
a tune iteration is 10 PPO updates of 512 env steps (16 envs x 32 steps),
as troupe-rl's; the learning rate anneals linearly to 0 over the 40
iterations (204,800 env steps), as troupe-rl's. The network is troupe-rl's
(separate 64-64 tanh actor and critic), value loss coefficient 0.5,
gradient norm clip 0.5, no KL loss, no value-loss clipping. Each trial
runs an RLlib `Algorithm` (new API stack) in its own process, sampling in
it (0 remote env runners, 0 remote learners: a trial holds 1 CPU, as
troupe-rl's). Configs differ from troupe-rl's draws (another generator);
the spaces and budgets are the same.

    python3 -m venv .cache/rllib-venv
    .cache/rllib-venv/bin/pip install --only-binary=:all: -r benches/ray/rllib_requirements.txt
    .cache/rllib-venv/bin/python benches/ray/rllib_tune_asha.py [--seeds 3] [--max-seconds 900]

(benches/ray/rllib_compare.sh makes the same venv.) Prints
`rllib_tune_asha_cartpole_seconds_to_475 <median> s` and per seed the
seconds and trials started, `metric value unit` lines; progress on stderr.
"""

import argparse
import collections
import os
import shutil
import statistics
import sys
import tempfile
import time

import gymnasium as gym
import ray
from ray import tune
from ray.rllib.algorithms.ppo import PPOConfig
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

TARGET = 475.0
ITERATIONS_PER_STEP = 10
MAX_T = 40
BATCH = 512
BUDGET = MAX_T * ITERATIONS_PER_STEP * BATCH

ENV = "CartPoleRecorded"


class Recorded(gym.Wrapper):
    """CartPole-v1 that appends each finished episode's return to `shared`
    (set on every sub-environment after the algorithm is built). RLlib's
    own `episode_return_mean` is, with a local env runner, a mean over the
    episodes of the last iteration only, not over the last 100 episodes;
    this gives troupe-rl's measure."""

    def __init__(self, env):
        super().__init__(env)
        self.shared = None
        self.episode_return = 0.0

    def reset(self, **kwargs):
        self.episode_return = 0.0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.episode_return += reward
        if (terminated or truncated) and self.shared is not None:
            self.shared.append(self.episode_return)
        return obs, reward, terminated, truncated, info


def make_env(_config):
    return Recorded(gym.make("CartPole-v1"))


SPACE = {
    "learning_rate": tune.loguniform(1e-3, 1e-2),
    "clip_coef": tune.choice([0.1, 0.2, 0.3]),
    "entropy_coef": tune.choice([0.0, 0.001, 0.01]),
    "gamma": tune.choice([0.98, 0.99]),
    "gae_lambda": tune.choice([0.8, 0.9, 0.95]),
    "update_epochs": tune.choice([4, 10]),
    "num_minibatches": tune.choice([1, 2, 4]),
}


def ppo(config, seed):
    return (
        PPOConfig()
        .environment(ENV)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=16, rollout_fragment_length=32)
        .learners(num_learners=0)
        .rl_module(
            model_config={
                "fcnet_hiddens": [64, 64],
                "fcnet_activation": "tanh",
                "vf_share_layers": False,
            }
        )
        .training(
            train_batch_size_per_learner=BATCH,
            minibatch_size=BATCH // config["num_minibatches"],
            num_epochs=config["update_epochs"],
            lr=[[0, config["learning_rate"]], [BUDGET, 0.0]],
            gamma=config["gamma"],
            lambda_=config["gae_lambda"],
            clip_param=config["clip_coef"],
            entropy_coeff=config["entropy_coef"],
            vf_loss_coeff=0.5,
            vf_clip_param=float("inf"),
            grad_clip=0.5,
            use_kl_loss=False,
        )
        .debugging(seed=seed)
    )


def trainable(config):
    algo = ppo(config, seed=0).build_algo()
    # The last 100 episodes of the trial's 16 environments, in the order
    # they end (SyncVectorEnv steps them in turn).
    recent = collections.deque(maxlen=100)
    recorded = 0
    for sub in algo.env_runner.env.unwrapped.envs:
        # RLlib may wrap our env again; find ours (by name: the class
        # comes pickled by value).
        while type(sub).__name__ != "Recorded" and hasattr(sub, "env"):
            sub = sub.env
        if type(sub).__name__ == "Recorded":
            sub.shared = recent
            recorded += 1
    if recorded != 16:
        raise RuntimeError(f"found {recorded} of 16 recording environments")
    try:
        while True:
            for _ in range(ITERATIONS_PER_STEP):
                result = algo.train()
                mean = sum(recent) / len(recent) if recent else float("nan")
                # As troupe-rl: the target counts over a full window.
                if len(recent) == recent.maxlen and mean >= TARGET:
                    break
            steps = result.get("env_runners", {}).get("num_env_steps_sampled_lifetime", 0)
            tune.report({"episode_return_mean": mean, "episodes_in_window": len(recent), "env_steps": steps})
    finally:
        algo.stop()


class FirstAt(tune.Stopper):
    """Stops everything once a trial reports the target; notes when."""

    def __init__(self):
        self.reached = None

    def __call__(self, trial_id, result):
        full = result.get("episodes_in_window", 0) >= 100
        if self.reached is None and full and result.get("episode_return_mean", 0.0) >= TARGET:
            self.reached = time.perf_counter()
        return False

    def stop_all(self):
        return self.reached is not None


def search(seed, max_seconds):
    stopper = FirstAt()
    storage = tempfile.mkdtemp(prefix="rllib_tune_asha_")
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space=SPACE,
        tune_config=tune.TuneConfig(
            metric="episode_return_mean",
            mode="max",
            num_samples=16,
            max_concurrent_trials=2,
            scheduler=ASHAScheduler(max_t=MAX_T, grace_period=1, reduction_factor=4),
            search_alg=BasicVariantGenerator(random_state=seed),
            time_budget_s=max_seconds,
        ),
        run_config=tune.RunConfig(
            storage_path=storage, name=f"seed{seed}", stop=stopper, verbose=1
        ),
    )
    began = time.perf_counter()
    results = tuner.fit()
    trials = sum(1 for r in results if r.metrics and "episode_return_mean" in r.metrics)
    best = results.get_best_result(metric="episode_return_mean", mode="max")
    print(
        f"# seed {seed}: best {best.metrics.get('episode_return_mean')} with {best.config}, "
        f"{time.perf_counter() - began:.1f} s in all",
        file=sys.stderr,
    )
    shutil.rmtree(storage, ignore_errors=True)
    seconds = None if stopper.reached is None else stopper.reached - began
    return seconds, trials


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tune.register_env(ENV, make_env)
    runs = [search(seed, args.max_seconds) for seed in range(args.seeds)]
    for seed, (seconds, trials) in enumerate(runs):
        if seconds is None:
            print(f"rllib_tune_asha_cartpole_seconds_to_475_seed{seed} unsolved within {args.max_seconds:.0f} s")
        else:
            print(f"rllib_tune_asha_cartpole_seconds_to_475_seed{seed} {seconds:.1f} s")
        print(f"rllib_tune_asha_cartpole_trials_to_475_seed{seed} {trials} trials")
    solved = [s for s, _ in runs if s is not None]
    if len(solved) == len(runs):
        print(f"rllib_tune_asha_cartpole_seconds_to_475 {statistics.median(solved):.1f} s")
    else:
        print(f"rllib_tune_asha_cartpole_seconds_to_475 unsolved by {len(runs) - len(solved)} of {len(runs)} seeds")
    ray.shutdown()


if __name__ == "__main__":
    main()
