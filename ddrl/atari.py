"""Atari wrappers that gymnasium lacks, for ``env.wrappers`` (``ddrl.atari:FireReset``, ``ddrl.atari:EpisodicLife``).

They wrap an ale-py env, usually after ``gymnasium.wrappers:AtariPreprocessing``, and complete the preprocessing of
Mnih et al. (2015) that CleanRL's ``ppo_atari.py`` takes from Stable-Baselines3's ``atari_wrappers``:

* ``EpisodicLife``: a lost life ends the training episode, but the game goes on from there.  gymnasium's
  ``AtariPreprocessing(terminal_on_life_loss=True)`` ends the episode too, and the autoreset that follows starts a
  new game, so an agent would only ever see a game's first life.
* ``FireReset``: games such as Breakout wait for FIRE to launch the ball at the start and after each lost life.  An
  agent trained with it never has to learn that, and a greedy evaluation does not stand still until the time limit.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

FIRE = 1
"""The action FIRE in ALE's minimal action sets (``get_action_meanings()[1]``)."""


def _lives(env: gym.Env) -> int:
    return int(env.unwrapped.ale.lives())


def _require_ale(env: gym.Env, wrapper: str) -> None:
    if not hasattr(env.unwrapped, "ale"):
        raise ValueError(f"{wrapper} needs an ale-py env (ale_py:ALE/...); {type(env.unwrapped).__name__} is not one")


class FireReset(gym.Wrapper):
    """Presses FIRE after every reset and after every step that loses a life but not the game; the rewards of those
    presses count in the step's reward."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        _require_ale(env, "FireReset")
        meanings = env.unwrapped.get_action_meanings()
        if len(meanings) <= FIRE or meanings[FIRE] != "FIRE":
            raise ValueError(f"FireReset needs a game whose action {FIRE} is FIRE; this one's actions are {meanings}")
        self._lives = 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        observation, info = self.env.reset(**kwargs)
        observation, _, terminated, truncated, info = self.env.step(FIRE)
        if terminated or truncated:  # a game over in one press: start again rather than hand back an ended game
            observation, info = self.env.reset()
        self._lives = _lives(self.env)
        return observation, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        lives = _lives(self.env)
        if lives < self._lives and not (terminated or truncated):
            observation, fire_reward, terminated, truncated, info = self.env.step(FIRE)
            reward += fire_reward
        self._lives = lives
        return observation, reward, terminated, truncated, info


class EpisodicLife(gym.Wrapper):
    """Ends the episode (``terminated``) when a life is lost; the reset that follows goes on with the same game by a
    no-op step.  Only a game over, a truncation or a seeded reset starts a new game, so that a reset with a seed
    always gives the same start."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        _require_ale(env, "EpisodicLife")
        self._lives = 0
        self._game_over = True

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        self._game_over = terminated or truncated
        lives = _lives(self.env)
        life_lost = 0 < lives < self._lives
        self._lives = lives
        return observation, reward, terminated or life_lost, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if self._game_over or seed is not None:
            observation, info = self.env.reset(seed=seed, options=options)
        else:
            observation, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                observation, info = self.env.reset(options=options)
        self._game_over = False
        self._lives = _lives(self.env)
        return observation, info
