"""Evaluate a saved policy without Spark: ``python jobs/evaluate.py RUN_DIR --episodes 20 [--gif out.gif]``.

Loads the policy (no pickle), runs N episodes of the run's environment in parallel and prints the mean and
standard deviation of the return.  ``--record PATH`` writes the episodes' transitions as Parquet
(``ddrl.data.trajectories``: ``spark.read.parquet(PATH)``; episode i from seed ``--seed`` + i).  ``--gif`` also records one greedy episode as an animated GIF (rendered
off-screen with render_mode="rgb_array"; MuJoCo envs need ``MUJOCO_GL=egl`` or ``osmesa`` without a display).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np

import ddrl
from ddrl import config as config_module, envs, extras
from ddrl.data import trajectories
from ddrl.envs import evaluate
from ddrl.run import CONFIG_FILE
from ddrl.cli import HelpFormatter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory (with config.yaml and policy/)")
    parser.add_argument("--episodes", type=int, default=20, help="greedy episodes to play, one per sub-env, each seeded from --seed")
    parser.add_argument("--best", action="store_true", help="the run's best-evaluated policy (best/) instead of its final one")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the evaluation episodes")
    parser.add_argument("--record", metavar="PATH", help="write the episodes' transitions to PATH/evaluation-seed-<seed>.parquet")
    parser.add_argument("--gif", type=Path, metavar="OUT.gif", help="record one episode of the policy as an animated GIF")
    parser.add_argument("--gif-every", type=int, default=2, metavar="K", help="keep every K-th frame")
    parser.add_argument("--gif-width", type=int, default=320, metavar="PIXELS", help="frame width")
    parser.add_argument("--gif-fps", type=float, default=25.0, help="frames per second of the GIF")
    args = parser.parse_args(argv)
    try:
        config = config_module.load(args.run_dir / CONFIG_FILE)
        policy = ddrl.load_policy(args.run_dir, best=args.best)
        if args.gif is not None:
            extras.require("PIL", "--gif")
    except (ddrl.ConfigError, FileNotFoundError) as error:
        print(f"ddrl: {error}", file=sys.stderr)
        return 2
    recorder = None
    if args.record is not None:
        spaces = envs.make_env(config.env)
        seeds = [args.seed + episode for episode in range(args.episodes)]
        recorder = trajectories.EpisodeRecorder(spaces.observation_space, spaces.action_space, seeds, mask=policy.env.mask,
                                                value=policy.value if policy.critic is not None else None)
        spaces.close()
    returns, lengths = evaluate(policy.act, config.env, args.episodes, args.seed, on_step=recorder)
    print(f"{config.env.id}: return {returns.mean():.1f} +- {returns.std():.1f} over {args.episodes} episodes "
          f"(mean length {lengths.mean():.0f})")
    if recorder is not None:
        path = trajectories.write(trajectories.absolute(args.record), trajectories.evaluation_file_name(args.seed), recorder.table())
        print(f"recorded {int(lengths.sum())} transitions of {args.episodes} episodes in {path}")
    if args.gif is not None:
        try:
            episode_return, length, frames = record_gif(
                policy.act, config.env, args.gif, args.seed, every=args.gif_every, width=args.gif_width, fps=args.gif_fps
            )
        except gym.error.DependencyNotInstalled as error:  # classic-control envs render with pygame
            print(f"ddrl: {extras.missing('pygame', '--gif') if 'pygame' in str(error) else error}", file=sys.stderr)
            return 2
        print(f"recorded one episode (return {episode_return:.1f}, {length} steps) as {frames} frames in {args.gif} "
              f"({args.gif.stat().st_size / 1024:.0f} KiB)")
    return 0


def record_gif(act, env_config, out: Path, seed: int, every: int = 2, width: int = 320, fps: float = 25.0) -> tuple[float, int, int]:
    """Run one episode with ``act(observation, info)`` and write every ``every``-th rendered frame to ``out``; returns (return, length, frames)."""
    import os

    for name, value in (("SDL_VIDEODRIVER", "dummy"), ("SDL_AUDIODRIVER", "dummy"), ("PYGAME_HIDE_SUPPORT_PROMPT", "1")):
        os.environ.setdefault(name, value)  # pygame (classic control) renders off-screen, quietly
    from PIL import Image

    from ddrl.envs import make_env

    env = make_env(env_config, render_mode="rgb_array")
    images: list[Image.Image] = []

    def keep(frame: np.ndarray) -> None:
        image = Image.fromarray(np.asarray(frame, dtype=np.uint8))
        if width and image.width > width:
            image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
        images.append(image)

    try:
        observation, info = env.reset(seed=seed)
        keep(env.render())
        total, steps, done = 0.0, 0, False
        while not done:
            observation, reward, terminated, truncated, info = env.step(act(observation, info))
            total, steps, done = total + float(reward), steps + 1, terminated or truncated
            if steps % max(every, 1) == 0 or done:
                keep(env.render())
    finally:
        env.close()
    # One shared palette keeps the file small and the colours steady from frame to frame.
    palette = images[len(images) // 2].quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    frames = [image.quantize(palette=palette, dither=Image.Dither.NONE) for image in images]
    out.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(out, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0, optimize=True)
    return total, steps, len(frames)


if __name__ == "__main__":
    sys.exit(main())
