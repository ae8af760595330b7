"""The SB3 subcommands of jobs/benchmark.py (run as their own processes by vs_sb3 and halfcheetah):
``sb3-cartpole``, ``sb3-mujoco`` and ``sb3-atari``."""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any, Callable

import numpy as np

from jobs.benchmark_parts.common import CARTPOLE_TARGET, STARTED_AT


def require_sb3() -> None:
    import importlib.util

    if importlib.util.find_spec("stable_baselines3") is None:
        raise RuntimeError("stable-baselines3 is not installed: .venv/bin/pip install -r requirements-bench.txt")


def _evaluate_sb3(model: Any, env_id: str, episodes: int, seed: int, normalize: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Deterministic returns of ``episodes`` episodes, one per sub-env of a vector env (as ddrl evaluates)."""
    import gymnasium as gym

    vector_env = gym.make_vec(env_id, episodes)
    try:
        obs, _ = vector_env.reset(seed=seed)
        returns, running = np.zeros(episodes), np.ones(episodes, dtype=bool)
        while running.any():
            action, _ = model.predict(normalize(obs) if normalize else obs, deterministic=True)
            obs, reward, terminated, truncated, _ = vector_env.step(action)
            returns += np.where(running, reward, 0.0)
            running &= ~(terminated | truncated)
        return returns
    finally:
        vector_env.close()


def _linear(start: float) -> Callable[[float], float]:
    """rl-zoo's ``lin_X`` schedule: X decayed linearly to 0 over the budget."""
    return lambda progress_remaining: progress_remaining * start


def _one_core(cpu: int) -> None:
    """Pin this process to ``cpu`` (unless it is -1) and torch to one thread (before its first op): SB3 as one core
    runs it."""
    if cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    import torch

    torch.set_num_threads(1)


def sb3_cartpole(argv: list[str]) -> int:
    """SB3 PPO with rl-zoo's CartPole-v1 hyperparameters until a 20-episode deterministic evaluation >= 475."""
    parser = argparse.ArgumentParser(prog="benchmark.py sb3-cartpole")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=100_000, help="rl-zoo's n_timesteps (schedules decay over it)")
    parser.add_argument("--eval-every", type=int, default=4096, help="env steps between evaluations (ddrl: one iteration)")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest for a 64x64 MLP; 2 threads on 2 busy cores ran 6x slower)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)  # before the first torch op
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env("CartPole-v1", n_envs=8, seed=args.seed)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
                learning_rate=_linear(1e-3), clip_range=_linear(0.2), seed=args.seed, device="cpu", verbose=0)
    evaluations: list[tuple[int, float, float]] = []

    class Check(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps // args.eval_every > len(evaluations):
                returns = _evaluate_sb3(model, "CartPole-v1", args.eval_episodes, args.seed * 1000 + len(evaluations))
                evaluations.append((self.num_timesteps, float(returns.mean()), time.time() - STARTED_AT))
                print(f"eval at {self.num_timesteps} steps: {returns.mean():.1f} ({evaluations[-1][2]:.1f} s)", flush=True)
                return returns.mean() < CARTPOLE_TARGET
            return True

    model.learn(total_timesteps=args.max_steps, callback=Check())
    last_steps, last_eval, _ = evaluations[-1] if evaluations else (model.num_timesteps, math.nan, 0.0)
    print(f"stopping evaluation: {last_eval:.1f} at {last_steps} steps")
    wall = time.time() - STARTED_AT
    final = _evaluate_sb3(model, "CartPole-v1", args.eval_episodes, 10**6 + args.seed)
    verdict = "solved" if final.mean() >= CARTPOLE_TARGET else "not solved"
    print(f"final evaluation: {final.mean():.1f} +- {final.std():.1f} over {args.eval_episodes} episodes ({verdict})")
    print(f"env steps: {model.num_timesteps}")
    print(f"wall time: {wall:.1f} s, whole process (to the stopping evaluation)")
    return 0


ZOO_MUJOCO: dict[str, dict[str, Any]] = {
    # rl-zoo's tuned PPO (DLR-RM/rl-baselines3-zoo, hyperparams/ppo.yml, the -v3 entries), one env, VecNormalize
    # with the algorithm's gamma; both use log std -2, no orthogonal init, separate 256x256 ReLU networks.
    "HalfCheetah-v5": {"batch_size": 64, "n_steps": 512, "gamma": 0.98, "learning_rate": 2.0633e-05, "ent_coef": 0.000401762,
                       "clip_range": 0.1, "n_epochs": 20, "gae_lambda": 0.92, "max_grad_norm": 0.8, "vf_coef": 0.58096},
    "Hopper-v5": {"batch_size": 32, "n_steps": 512, "gamma": 0.999, "learning_rate": 9.80828e-05, "ent_coef": 0.00229519,
                  "clip_range": 0.2, "n_epochs": 5, "gae_lambda": 0.99, "max_grad_norm": 0.7, "vf_coef": 0.835671},
}


def sb3_mujoco(argv: list[str]) -> int:
    """SB3 PPO with rl-zoo's tuned settings for a MuJoCo env on one core, trained for a wall-time budget (or
    ``--steps``), with a 20-episode deterministic evaluation every ``--eval-every`` env steps (0: none) and at the
    end.  ``--n-envs`` and ``--n-steps`` split rl-zoo's batch of 1 env x 512 steps (4 x 128: the shipped configs')."""
    parser = argparse.ArgumentParser(prog="benchmark.py sb3-mujoco")
    parser.add_argument("--env", choices=sorted(ZOO_MUJOCO), default="HalfCheetah-v5")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=15.0, help="whole-process budget, final evaluation included")
    parser.add_argument("--eval-every", type=int, default=0, help="env steps between evaluations (0: only the final one)")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--cpu", type=int, default=0, help="the core to pin to (-1: none, for runs side by side)")
    parser.add_argument("--n-envs", type=int, default=1, help="envs of the vector env (rl-zoo: 1)")
    parser.add_argument("--n-steps", type=int, default=512, help="steps per env and update (rl-zoo: 512)")
    parser.add_argument("--steps", type=int, default=0, help="train this many env steps instead of --minutes (0: the minutes)")
    args = parser.parse_args(argv)
    _one_core(args.cpu)
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    reserve = 10.0 if args.minutes >= 5 else 4.0  # seconds kept for the final evaluation
    deadline = math.inf if args.steps else STARTED_AT + args.minutes * 60 - reserve
    hyperparameters = {**ZOO_MUJOCO[args.env], "n_steps": args.n_steps}
    env = VecNormalize(make_vec_env(args.env, n_envs=args.n_envs, seed=args.seed), gamma=hyperparameters["gamma"])
    policy_kwargs = {"log_std_init": -2, "ortho_init": False, "activation_fn": torch.nn.ReLU, "net_arch": {"pi": [256, 256], "vf": [256, 256]}}
    model = PPO("MlpPolicy", env, **hyperparameters, policy_kwargs=policy_kwargs, seed=args.seed, device="cpu", verbose=0)

    def evaluate(seed: int) -> np.ndarray:
        env.training = False
        returns = _evaluate_sb3(model, args.env, args.eval_episodes, seed, normalize=env.normalize_obs)
        env.training = True
        return returns

    class DeadlineAndEvaluations(BaseCallback):
        evaluations = 0

        def _on_step(self) -> bool:
            if args.eval_every and self.num_timesteps // args.eval_every > self.evaluations:
                self.evaluations += 1
                returns = evaluate(args.seed * 1000 + self.evaluations)
                print(f"eval at {self.num_timesteps} steps: {returns.mean():.1f} ({time.time() - STARTED_AT:.1f} s)", flush=True)
            return time.time() < deadline

    # rl-zoo's budget is 1M steps; the deadline stops training here (lr and clip are constant: no schedule to keep).
    model.learn(total_timesteps=args.steps or 100_000_000, callback=DeadlineAndEvaluations())
    final = evaluate(10**6 + args.seed)
    print(f"eval at {model.num_timesteps} steps: {final.mean():.1f} ({time.time() - STARTED_AT:.1f} s)", flush=True)
    print(f"final evaluation: {final.mean():.1f} +- {final.std():.1f} over {args.eval_episodes} episodes (not solved)")
    print(f"env steps: {model.num_timesteps}")
    print(f"wall time: {time.time() - STARTED_AT:.1f} s, whole process")
    return 0


def sb3_atari(argv: list[str]) -> int:
    """SB3 PPO on Atari Breakout with rl-zoo's Atari settings (hyperparams/ppo.yml ``atari``: AtariWrapper, 4 frames
    stacked, 8 envs x 128 steps, 4 epochs of 256, lr and clip 2.5e-4 and 0.1 decayed linearly, entropy 0.01) on one
    core for ``--steps`` agent steps, the schedules decaying over that budget as ddrl's do.  AtariWrapper is CleanRL's
    preprocessing (both are SB3's atari_wrappers).  Whole training games (the Monitor under the life-loss wrapper)
    are printed on the way; the final evaluation plays whole games greedily, unclipped, with rl-zoo's evaluation
    (the same wrappers, FIRE pressed after every lost life, the Monitor's game returns)."""
    parser = argparse.ArgumentParser(prog="benchmark.py sb3-atari")
    parser.add_argument("--steps", type=int, required=True, help="agent steps (4 frames each)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--cpu", type=int, default=0, help="the core to pin to")
    args = parser.parse_args(argv)
    _one_core(args.cpu)
    import ale_py  # noqa: F401  (registers the ALE/ ids)
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecFrameStack

    def breakout(n_envs: int, seed: int, clip_reward: bool = True) -> Any:
        # ALE/Breakout-v5 without its own frame skip and sticky actions is BreakoutNoFrameskip-v4, as conf/breakout_ppo.yaml
        env = make_atari_env("ALE/Breakout-v5", n_envs=n_envs, seed=seed, env_kwargs={"frameskip": 1, "repeat_action_probability": 0.0},
                             wrapper_kwargs={"clip_reward": clip_reward})
        return VecFrameStack(env, n_stack=4)

    model = PPO("CnnPolicy", breakout(8, args.seed), n_steps=128, n_epochs=4, batch_size=256, learning_rate=_linear(2.5e-4),
                clip_range=_linear(0.1), vf_coef=0.5, ent_coef=0.01, seed=args.seed, device="cpu", verbose=0)
    report_every = max(args.steps // 10, 1)

    class TrainingGames(BaseCallback):
        reported = 0

        def _on_step(self) -> bool:
            if self.num_timesteps // report_every > self.reported:
                self.reported += 1
                games = [episode["r"] for episode in list(self.model.ep_info_buffer)[-20:]]
                print(f"training games at {self.num_timesteps} steps: {np.mean(games) if games else math.nan:.1f} "
                      f"over the last {len(games)} ({time.time() - STARTED_AT:.1f} s)", flush=True)
            return True

    model.learn(total_timesteps=args.steps, callback=TrainingGames())
    wall = time.time() - STARTED_AT
    returns, lengths = evaluate_policy(model, breakout(args.eval_episodes, 10**6 + args.seed, clip_reward=False),
                                       n_eval_episodes=args.eval_episodes, deterministic=True, return_episode_rewards=True)
    print(f"final evaluation: {np.mean(returns):.1f} +- {np.std(returns):.1f} over {args.eval_episodes} episodes (not solved)")
    print(f"evaluation games: {np.mean(lengths):.0f} agent steps on average")
    print(f"env steps: {model.num_timesteps}")
    print(f"wall time: {wall:.1f} s, whole process (to the end of training)")
    return 0
