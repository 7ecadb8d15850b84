"""Builds the RL comparison table from `metric value unit` lines of
benches/ray/rllib_ppo.py (RLlib) and `cargo bench -p troupe-rl --bench
rl_perf` (troupe-rl); prints it, and with --write replaces the section
between the troupe-rl markers of a results file (appending it if absent)."""

import argparse
import datetime
import os
import platform
import re

BEGIN = "<!-- troupe-rl:begin -->"
END = "<!-- troupe-rl:end -->"

# (label, RLlib metric, troupe-rl metric, unit, better, target)
ROWS = [
    ("PPO CartPole-v1: seconds to 475 (median)", "rllib_ppo_cartpole_seconds_to_475", "ppo_cartpole_seconds_to_475", "s", "lower", "≤ 10"),
    ("PPO CartPole-v1: env steps to 475 (median)", "rllib_ppo_cartpole_env_steps_to_475", "ppo_cartpole_env_steps_to_475", "steps", "lower", ""),
    ("PPO CartPole-v1: seconds to 450 (median)", "rllib_ppo_cartpole_seconds_to_450", "ppo_cartpole_seconds_to_450", "s", "lower", ""),
    ("PPO CartPole-v1: env steps to 450 (median)", "rllib_ppo_cartpole_env_steps_to_450", "ppo_cartpole_env_steps_to_450", "steps", "lower", ""),
    ("sampling with policy inference, 2 workers", "rllib_sampling_env_steps_per_s", "sampling_env_steps_per_s", "steps/s", "higher", "≥ 500,000"),
    ("CartPole VecEnv alone, 1 thread", None, "cartpole_env_steps_per_s", "steps/s", "higher", ""),
    ("policy inference alone, 1 thread", None, "policy_inference_steps_per_s", "steps/s", "higher", ""),
]


def parse(path):
    values = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and not line.startswith("#"):
                try:
                    values[parts[0]] = float(parts[1])
                except ValueError:
                    values[parts[0]] = " ".join(parts[1:])
    return values


def fmt(v):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"


def ratio(r, t, better):
    if not isinstance(r, float) or not isinstance(t, float) or r <= 0 or t <= 0:
        return "—"
    x = r / t if better == "lower" else t / r
    word = "less" if better == "lower" else "faster"
    return f"{x:,.1f}x {word}" if x >= 1 else f"**{1 / x:,.1f}x worse**"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("rllib")
    p.add_argument("troupe")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--command", default="benches/ray/rllib_compare.sh")
    p.add_argument("--rllib-version", default="?")
    p.add_argument("--troupe-version", default="?")
    p.add_argument("--write")
    args = p.parse_args()
    rllib, troupe = parse(args.rllib), parse(args.troupe)
    lines = [
        "| measure | unit | RLlib | troupe-rl | troupe-rl vs RLlib | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for label, rm, tm, unit, better, target in ROWS:
        r = rllib.get(rm) if rm else None
        t = troupe.get(tm)
        lines.append(f"| {label} | {unit} | {fmt(r)} | {fmt(t)} | {ratio(r, t, better)} | {target} |")
    seeds = [
        f"- {name}: {fmt(value)}"
        for source in (rllib, troupe)
        for name, value in sorted(source.items())
        if "_seed" in name
    ]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join(
        [
            BEGIN,
            "## Reinforcement learning: troupe-rl and RLlib",
            "",
            f"Produced by `{args.command}`: RLlib {args.rllib_version} (`benches/ray/rllib_ppo.py`, Ray's tuned",
            "CartPole PPO example settings, 2 env runners, `ray.init(num_cpus=2)`) and troupe-rl",
            f"{args.troupe_version} (`cargo bench -p troupe-rl --bench rl_perf`, `PpoConfig::default()`, 2 rollout",
            f"workers), one after the other on this machine; medians over {args.seeds} seed(s). Both measure the",
            "mean training return over the last 100 episodes, timed from building the trainer.",
            "",
            f"Machine: {os.cpu_count()} cores, {platform.platform()}. Date: {when}.",
            "Load average (1, 5, 15 min) when the table was written: "
            + ", ".join(f"{x:.2f}" for x in os.getloadavg())
            + " (other work may share this machine; compare within one run only).",
            "",
            *lines,
            "",
            "Each seed:",
            "",
            *seeds,
            END,
        ]
    )
    print(section)
    if args.write:
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


if __name__ == "__main__":
    main()
