"""Benchmark part 1: throughput."""

from __future__ import annotations

import os
import re
import time
from typing import Any

import numpy as np

from jobs.benchmark_parts.common import ROOT, Bench, load_average, log, median, per_iteration_steps, row, slim, timed, train_in_process


def raw_env_rate(env_config: Any, num_envs: int, seconds: float, repetitions: int, seed: int = 0) -> float:
    """Steps per second of the config's vector env with pre-drawn uniform random actions (median)."""
    import gymnasium as gym

    from ddrl import envs

    vector_env = envs.make_vector_env(env_config, num_envs)
    rng = np.random.default_rng(seed)
    space = vector_env.single_action_space
    chunk = 256

    def actions() -> np.ndarray:
        if isinstance(space, gym.spaces.Discrete):
            return rng.integers(0, space.n, (chunk, num_envs))
        return rng.uniform(space.low, space.high, (chunk, num_envs, space.shape[0])).astype(np.float32)

    try:
        vector_env.reset(seed=seed)
        rates = []
        for _ in range(repetitions + 1):  # the first is a warm-up
            batch, steps, started = actions(), 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                for action in batch:
                    vector_env.step(action)
                steps += chunk * num_envs
            rates.append(steps / (time.perf_counter() - started))
        return median(rates[1:])
    finally:
        vector_env.close()


def policy_step_seconds(config: Any, repetitions: int) -> float:
    """Median seconds of one rollout step's policy work in ddrl's PPO on num_envs observations: the NumPy actor
    (``ddrl.algorithms.ppo.actor_forward``) and the action draw (``ddrl.spaces.ActionSpec.sample``)."""
    from ddrl import envs
    from ddrl.algorithms.ppo import ActorCritic, actor_forward, numpy_actor

    env = envs.describe(config.env)
    hp = config.hyperparameters
    layers = numpy_actor(ActorCritic(env, hp).actor)
    obs = np.zeros((config.env.num_envs, env.observation_dim), dtype=np.float32)
    noise = np.zeros((config.env.num_envs, env.action_dim), dtype=np.float32)
    calls = 2000

    def steps() -> None:
        for _ in range(calls):
            env.action.sample(actor_forward(layers, obs, hp.activation), noise, None)

    seconds, _ = timed(steps, repetitions)
    return seconds / calls


def throughput(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    cases = [
        ("CartPole-v1 (conf, 8 envs)", "conf/cartpole_ppo.yaml", [], 0.5),
        # One task leaves the second core to the driver's JVM, which in local mode works beside the tasks as they start.
        ("CartPole-v1 (conf, 1 task)", "conf/cartpole_ppo.yaml", ["spark.num_tasks=1"], 0.5),
        ("CartPole-v1 (64 envs x 32 steps)", "conf/cartpole_ppo.yaml", ["env.total_envs=null", "env.num_envs=64", "ppo.num_steps=32"], 0.5),
        ("HalfCheetah-v5 (conf/halfcheetah_ppo.yaml)", "conf/halfcheetah_ppo.yaml", [], 0.7),
        ("HalfCheetah-v5 (conf, 1 task)", "conf/halfcheetah_ppo.yaml", ["spark.num_tasks=1"], 0.7),
        ("HalfCheetah-v5 (8 envs x 128 steps)", "conf/halfcheetah_ppo.yaml", ["env.total_envs=null", "env.num_envs=8", "ppo.num_steps=128"], 0.7),
    ]
    rows, data = [], {}
    for case, path, overrides, target in cases:
        from ddrl import config as config_module

        config = config_module.load(ROOT / path, overrides)
        num_envs = config.env.num_envs
        log(f"throughput {case}: raw env rate")
        raw = raw_env_rate(config.env, num_envs, sizes.raw_seconds, sizes.repetitions)
        policy_step = policy_step_seconds(config, sizes.repetitions)
        label = "throughput-" + re.sub(r"\W+", "-", case).strip("-").lower()
        config, iterations = train_in_process(bench, path, overrides, sizes.throughput_iterations, label)
        steps = per_iteration_steps(iterations)
        num_tasks = config.spark.num_tasks
        later = list(zip(iterations, steps))[1:]  # the first iteration starts Python workers: warm-up
        rollout_rate = median([s / num_tasks / r["rollout_s"] for r, s in later])
        update_rate = median([s / num_tasks / r["update_s"] for r, s in later])
        whole = median([r["steps_per_s"] for r, _ in later])
        ratio = rollout_rate / raw
        inference_share = median([policy_step * config.hyperparameters.num_steps / r["rollout_s"] for r, _ in later])
        env_share = median([s / num_tasks / raw / r["rollout_s"] for r, s in later])
        rows += [
            row(case, "raw env steps/s (1 process, random actions)", raw, "steps/s"),
            row(case, "ddrl rollout steps/s per task (1 core)", rollout_rate, "steps/s"),
            row(case, "rollout / raw", ratio * 100, "%", f">= {target * 100:.0f}%", ratio >= target),
            row(case, "policy per rollout step (NumPy actor + action draw)", policy_step * 1e6, "us"),
            row(case, "share of rollout time in the policy step", inference_share * 100, "%"),
            row(case, "share of rollout time in env.step (at the raw rate)", env_share * 100, "%"),
            row(case, "share of rollout time elsewhere (loop, normalization, values, GAE)", max(1 - inference_share - env_share, 0.0) * 100, "%"),
            row(case, f"ddrl whole-iteration steps/s ({num_tasks} tasks)", whole, "steps/s"),
            row(case, "whole-iteration / (raw x cores)", whole / (raw * (os.cpu_count() or 1)) * 100, "%"),
            row(case, "samples/s through the update per task", update_rate, "steps/s"),
        ]
        data[case] = {
            "config": path,
            "overrides": overrides,
            "num_envs": num_envs,
            "num_tasks": num_tasks,
            "raw_steps_per_s": raw,
            "rollout_steps_per_s_per_task": rollout_rate,
            "rollout_over_raw": ratio,
            "target": target,
            "policy_step_s": policy_step,
            "whole_iteration_steps_per_s": whole,
            "iterations": slim(iterations),
            "load_average": load_average(),
        }
    return {"rows": rows, "data": data}
