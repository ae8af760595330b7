"""Gymnasium spaces as policies see them: observations turned into network inputs, network outputs into actions.

An observation of any supported space becomes *features*, a dict of arrays whose leading axes are batch axes:

* ``"vector"``: float64 ``(..., F)``, every part that is not an image, flattened and concatenated in the
  space's order: Box values as they are, Discrete one-hot, MultiDiscrete one-hot per dimension, MultiBinary
  0/1.  Only the Box parts are standardized by the running observation moments (``ObservationSpec.normalized``).
* ``"image0"``, ``"image1"``, ...: each image part channels-first ``(..., C, H, W)`` in its own dtype; the
  network's CNN scales it (uint8 by 1/255).  An image is a 3-D Box of uint8 or bool, or a 2-D uint8 one
  (one channel); its channel axis is its smallest (the last on ties).

Dict and Tuple spaces (nested too) are read part by part; a part is addressed by its key path, joined with
"." for the exported model's input names.  An action space becomes one head over the network's flat output:

| action space | output | sampled in rollouts | deterministic |
| --- | --- | --- | --- |
| Discrete(n) | n logits | Gumbel-max | argmax |
| MultiDiscrete(nvec) | sum(nvec) logits, a categorical per dimension | Gumbel-max per dimension | argmax per dimension |
| MultiBinary(n) | n logits, a Bernoulli each | logit + logistic noise > 0 | logit > 0 |
| bounded Box, any shape | the mean of a diagonal Gaussian | mean + std * normal noise, clipped for the env | the mean, clipped |

Invalid-action masks (Discrete and MultiDiscrete) set the logits of invalid actions to ``MASKED_LOGIT`` in
rollouts, updates and greedy actions alike, so a masked action is never taken.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch

MASKED_LOGIT = -1e8
"""The logit of an invalid action: finite, so entropies stay defined, and far below any noise added to it."""

PartKind = Literal["box", "image", "discrete", "multi_discrete", "multi_binary"]


class SpaceError(ValueError):
    """A space ddrl cannot read or write; the message says why (``ddrl.envs`` names the config field)."""


# ---- observations ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ObservationPart:
    """One leaf of an observation space."""

    path: tuple[str | int, ...]
    """Keys (Dict) and indices (Tuple) from the observation to this part; () for a space that is one leaf."""
    kind: PartKind
    shape: tuple[int, ...]
    """The part's shape in one observation."""
    nvec: tuple[int, ...] = ()
    """Category counts: (n,) for Discrete, nvec for MultiDiscrete."""
    start: tuple[int, ...] = ()
    """The smallest value of each Discrete or MultiDiscrete dimension."""
    channels_last: bool = False
    """An image stored as (H, W, C)."""
    scale: float = 1.0
    """What an image's values are multiplied by to reach [0, 1]: 1/255 for uint8."""
    dtype: str = "float32"
    """The part's NumPy dtype in the env's observations."""

    @property
    def name(self) -> str:
        return ".".join(str(key) for key in self.path)

    @property
    def size(self) -> int:
        """How many vector features the part contributes (0 for an image)."""
        if self.kind == "image":
            return 0
        if self.kind in ("discrete", "multi_discrete"):
            return int(sum(self.nvec))
        return math.prod(self.shape)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of an image part."""
        if len(self.shape) == 2:
            return (1, *self.shape)
        return (self.shape[2], self.shape[0], self.shape[1]) if self.channels_last else self.shape

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "ObservationPart":
        return ObservationPart(
            tuple(data["path"]), data["kind"], tuple(data["shape"]), tuple(data.get("nvec", ())),
            tuple(data.get("start", ())), bool(data.get("channels_last", False)), float(data.get("scale", 1.0)),
            data.get("dtype", "float32"),
        )


@dataclasses.dataclass(frozen=True)
class ObservationSpec:
    """How raw observations of one space become features."""

    parts: tuple[ObservationPart, ...]
    structured: bool = False
    """Raw observations are dicts or tuples (Dict and Tuple spaces), not one array."""

    @functools.cached_property
    def vector_dim(self) -> int:
        return sum(part.size for part in self.parts)

    @property
    def images(self) -> list[ObservationPart]:
        return [part for part in self.parts if part.kind == "image"]

    @functools.cached_property
    def plain_vector(self) -> bool:
        """One 1-D Box: the raw observation is already the vector feature, nothing to convert."""
        return len(self.parts) == 1 and self.parts[0].kind == "box" and len(self.parts[0].shape) == 1 and not self.structured

    @functools.cached_property
    def normalized(self) -> np.ndarray | None:
        """Which vector features the observation moments standardize: the Box parts', not one-hot or 0/1 ones
        (the ``where`` of ``ddrl.normalizer.normalize``); None when that is all of them."""
        where = np.concatenate([np.full(part.size, part.kind == "box") for part in self.parts] or [np.zeros(0, bool)])
        return None if where.all() else where

    def features(self, observation: Any) -> dict[str, np.ndarray]:
        """Features of one raw observation or of a batch (leading axes) of them."""
        if self.plain_vector:
            return {"vector": np.asarray(observation, dtype=np.float64)}
        vectors: list[np.ndarray] = []
        images: dict[str, np.ndarray] = {}
        batch: tuple[int, ...] = ()
        for part in self.parts:
            value = np.asarray(_at(observation, part.path))
            batch = value.shape[: value.ndim - len(part.shape)]
            if part.kind == "image":
                if len(part.shape) == 2:
                    value = value[..., None, :, :]
                elif part.channels_last:
                    value = np.moveaxis(value, -1, -3)
                images[f"image{len(images)}"] = value
            elif part.kind in ("discrete", "multi_discrete"):
                codes = value.reshape(*batch, -1).astype(np.int64) - np.asarray(part.start)
                vectors += [np.eye(n)[codes[..., d]] for d, n in enumerate(part.nvec)]
            else:  # at float32 precision, the actor's
                vectors.append(value.reshape(*batch, -1).astype(np.float32).astype(np.float64))
        vector = np.concatenate(vectors, axis=-1) if vectors else np.zeros((*batch, 0))
        return {"vector": vector, **images}

    def to_dict(self) -> dict[str, Any]:
        return {"structured": self.structured, "parts": [part.to_dict() for part in self.parts]}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "ObservationSpec":
        return ObservationSpec(tuple(ObservationPart.from_dict(part) for part in data["parts"]), bool(data["structured"]))


def _at(observation: Any, path: tuple[str | int, ...]) -> Any:
    for key in path:
        observation = observation[key]
    return observation


def observation_spec(space: gym.Space) -> ObservationSpec:
    """The features of ``space``; raises ``SpaceError`` for spaces with no fixed-size encoding (Text, Graph, ...)."""
    parts = tuple(_parts(space, ()))
    if not parts:
        raise SpaceError(f"observation space {space} has no parts")
    return ObservationSpec(parts, structured=isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)))


def _parts(space: gym.Space, path: tuple[str | int, ...]) -> list[ObservationPart]:
    if isinstance(space, gym.spaces.Dict):
        return [part for key, child in space.spaces.items() for part in _parts(child, (*path, key))]
    if isinstance(space, gym.spaces.Tuple):
        return [part for index, child in enumerate(space.spaces) for part in _parts(child, (*path, index))]
    where = f" at {'.'.join(map(str, path))}" if path else ""
    dtype = np.dtype(space.dtype).name if space.dtype is not None else "float32"
    if isinstance(space, gym.spaces.Discrete):
        return [ObservationPart(path, "discrete", (), (int(space.n),), (int(space.start),), dtype=dtype)]
    if isinstance(space, gym.spaces.MultiDiscrete):
        if space.nvec.ndim != 1:
            raise SpaceError(f"observation space {space}{where}: only 1-D MultiDiscrete is supported")
        nvec, start = tuple(int(n) for n in space.nvec), tuple(int(s) for s in space.start)
        return [ObservationPart(path, "multi_discrete", space.shape, nvec, start, dtype=dtype)]
    if isinstance(space, gym.spaces.MultiBinary):
        return [ObservationPart(path, "multi_binary", tuple(space.shape), dtype=dtype)]
    if isinstance(space, gym.spaces.Box):
        if _is_image(space):
            channels_last = len(space.shape) == 3 and int(np.argmin(space.shape[::-1])) == 0
            scale = 1.0 / 255.0 if space.dtype == np.uint8 else 1.0
            return [ObservationPart(path, "image", tuple(space.shape), channels_last=channels_last, scale=scale, dtype=dtype)]
        return [ObservationPart(path, "box", tuple(space.shape), dtype=dtype)]
    raise SpaceError(f"observation space {space}{where} is not supported (Box, Discrete, MultiDiscrete, MultiBinary, Dict, Tuple are)")


def _is_image(space: gym.spaces.Box) -> bool:
    if space.dtype == np.uint8 and len(space.shape) == 2:
        return min(space.shape) >= 8
    return len(space.shape) == 3 and (space.dtype == np.uint8 or space.dtype == np.bool_)


# ---- actions -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ActionSpec:
    """An action space as a head over the network's flat output (see the table above)."""

    kind: Literal["discrete", "multi_discrete", "multi_binary", "box"]
    shape: tuple[int, ...]
    """One action's shape as the env takes it."""
    nvec: tuple[int, ...] = ()
    low: tuple[float, ...] = ()
    """Box bounds, flattened."""
    high: tuple[float, ...] = ()

    @property
    def output_dim(self) -> int:
        return int(sum(self.nvec)) if self.nvec else math.prod(self.shape)

    @property
    def categorical(self) -> bool:
        return self.kind in ("discrete", "multi_discrete")

    @property
    def stored_shape(self) -> tuple[int, ...]:
        """The shape of one action in a rollout buffer: a code per categorical dimension, else the flat output."""
        if self.kind == "discrete":
            return ()
        return (len(self.nvec),) if self.kind == "multi_discrete" else (self.output_dim,)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "ActionSpec":
        return ActionSpec(data["kind"], tuple(data["shape"]), tuple(data.get("nvec", ())), tuple(data.get("low", ())), tuple(data.get("high", ())))

    # ---- NumPy: rollouts and greedy actions ----------------------------------------------------------------
    def noise(self, rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
        """Noise for ``size`` steps of sampling, drawn up front: Gumbel, logistic, or unit normal (Box)."""
        shape = (*size, self.output_dim)
        if self.categorical:
            return rng.gumbel(size=shape).astype(np.float32)
        if self.kind == "multi_binary":
            return rng.logistic(size=shape).astype(np.float32)
        return rng.standard_normal(shape, dtype=np.float32)

    def sample(self, output: np.ndarray, noise: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The sampled actions of a batch (as stored) and the actions the env receives.  For Box, ``noise``
        comes scaled by the std and the env's action is clipped to the bounds."""
        if self.kind == "box":  # the env gets the float64 clip (the float32 mean plus noise, against float64 bounds)
            return output + noise, self._clipped(output + noise)
        action = self.greedy(output + noise, mask)
        return action.reshape(len(output), *self.stored_shape), action

    def greedy(self, output: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """The deterministic action of each row of ``output`` (batch, output_dim), shaped for the env."""
        if self.kind == "box":
            return self._clipped(output).astype(np.float32)
        if mask is not None:
            output = np.where(mask, output, MASKED_LOGIT)
        if self.kind == "discrete":
            return output.argmax(axis=-1)
        if self.kind == "multi_binary":
            return (output > 0).astype(np.int8).reshape(*output.shape[:-1], *self.shape)
        return np.stack([logits.argmax(axis=-1) for logits in self._split(output)], axis=-1)

    def _clipped(self, output: np.ndarray) -> np.ndarray:
        clipped = np.minimum(np.maximum(output, np.asarray(self.low)), np.asarray(self.high))
        return clipped.reshape(*output.shape[:-1], *self.shape)

    @functools.cached_property
    def offsets(self) -> tuple[int, ...]:
        """Where each categorical dimension's logits start in the output (MultiDiscrete: one per dimension)."""
        return tuple(int(offset) for offset in np.cumsum((0, *self.nvec[:-1])))

    def _split(self, output: Any) -> list[Any]:
        return [output[..., start : start + n] for start, n in zip(self.offsets, self.nvec)]

    # ---- torch: the update ---------------------------------------------------------------------------------
    def log_prob_and_entropy(
        self, output: torch.Tensor, action: torch.Tensor, mask: torch.Tensor | None, log_std: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi(action) and the entropy of each row's distribution."""
        if self.kind == "box":  # the entropy's graph first: log_std's gradient then sums in the order it always has
            entropy = (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1).expand(len(output))
            std = log_std.exp()
            log_prob = (-0.5 * ((action - output) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
            return log_prob, entropy
        if self.kind == "multi_binary":
            log_p, log_not_p = torch.nn.functional.logsigmoid(output), torch.nn.functional.logsigmoid(-output)
            log_prob = (action * log_p + (1 - action) * log_not_p).sum(-1)
            return log_prob, -(log_p.exp() * log_p + log_not_p.exp() * log_not_p).sum(-1)
        if mask is not None:
            output = output.masked_fill(~mask, MASKED_LOGIT)
        codes = action.long().reshape(len(output), -1)
        log_prob = torch.zeros(len(output))
        entropy = torch.zeros(len(output))
        for dimension, logits in enumerate(self._split(output)):
            log_probs = torch.log_softmax(logits, -1)
            log_prob = log_prob + log_probs.gather(-1, codes[:, dimension : dimension + 1]).squeeze(-1)
            entropy = entropy - (log_probs.exp() * log_probs).sum(-1)
        return log_prob, entropy


def action_spec(space: gym.Space) -> ActionSpec:
    """The head for ``space``; raises ``SpaceError`` for spaces ddrl cannot act in."""
    if isinstance(space, gym.spaces.Discrete):
        if space.start != 0:
            raise SpaceError(f"action space {space} starts at {space.start}; only Discrete spaces starting at 0 are supported")
        return ActionSpec("discrete", (), (int(space.n),))
    if isinstance(space, gym.spaces.MultiDiscrete):
        if space.nvec.ndim != 1 or np.any(space.start != 0):
            raise SpaceError(f"action space {space}: only 1-D MultiDiscrete spaces starting at 0 are supported")
        return ActionSpec("multi_discrete", tuple(space.shape), tuple(int(n) for n in space.nvec))
    if isinstance(space, gym.spaces.MultiBinary):
        return ActionSpec("multi_binary", tuple(space.shape))
    if isinstance(space, gym.spaces.Box):
        if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
            raise SpaceError(f"action space {space} is an unbounded Box; bounded actions are required")
        low, high = space.low.reshape(-1), space.high.reshape(-1)
        return ActionSpec("box", tuple(space.shape), (), tuple(float(x) for x in low), tuple(float(x) for x in high))
    raise SpaceError(f"action space {space} is not supported (Discrete, MultiDiscrete, MultiBinary and bounded Box are)")


# ---- invalid-action masks ----------------------------------------------------------------------------------


def action_mask(source: str | None, key: str, observation: Any, info: Any) -> np.ndarray | None:
    """The mask of valid actions that goes with ``observation``, from the observation's ``key`` part or from
    ``info[key]`` (``source`` "observation" or "info"; None: no mask).  A vector env's info marks which
    sub-envs reported a mask (``_key``); those that did not get every action allowed."""
    if source is None:
        return None
    if source == "observation":
        return np.asarray(observation[key], dtype=bool)
    if key not in info:
        return None
    mask = np.asarray(info[key], dtype=bool)
    reported = info.get("_" + key)
    if reported is not None and not np.all(reported):
        mask = np.where(np.asarray(reported)[:, None], mask, True)
    return mask
