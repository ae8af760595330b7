"""Policy networks, and the trained policy as users load and run it, without Spark."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from torch import nn

from ddrl import checkpoint
from ddrl.envs import EnvInfo
from ddrl.networks import build_actor, forward, linear_layers
from ddrl.normalizer import normalize

ACTIVATION_FUNCTIONS = {"tanh": torch.tanh, "relu": torch.relu}
NUMPY_ACTIVATIONS = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}
POLICY_WEIGHTS = "policy.safetensors"
POLICY_SPEC = "policy.json"


class Policy:
    """A deterministic policy: the observation's features (standardized where ``ddrl.spaces`` says), the actor,
    then the greedy action of its head (argmax, per-dimension argmax, logit > 0, or the clipped mean)."""

    def __init__(
        self,
        actor: nn.Module,
        env: EnvInfo,
        architecture: dict[str, Any],
        observation_mean: np.ndarray | None = None,
        observation_variance: np.ndarray | None = None,
    ) -> None:
        self.actor = actor.eval()
        self.layers = [(layer.weight, layer.bias) for layer in linear_layers(actor)]
        self.numpy_layers = [(weight.detach().numpy().T, bias.detach().numpy()) for weight, bias in self.layers]
        self.env = env
        self.architecture = architecture
        self.observation_mean = observation_mean
        self.observation_variance = observation_variance

    def act(self, observation: Any, info: Any = None, action_mask: np.ndarray | None = None) -> np.ndarray:
        """The action for one observation, or a batch of actions for a batch of observations.

        Masked envs: the valid-action mask comes from the observation, from ``info`` (the env's info dict, a
        vector env's for a batch), or from ``action_mask`` itself.
        """
        features, batched = self._features(observation)
        mask = self._mask(observation, info, action_mask, batched)
        with torch.inference_mode():
            if self.layers:
                # The actor's layers called as functions: the same kernels (and bits) as the module, without
                # nn.Module's per-call cost, which dominates at evaluation's one call per env step.
                activation = ACTIVATION_FUNCTIONS[self.architecture["activation"]]
                hidden = torch.from_numpy(features["vector"])
                for weight, bias in self.layers[:-1]:
                    hidden = activation(nn.functional.linear(hidden, weight, bias))
                output = nn.functional.linear(hidden, *self.layers[-1]).numpy()
            else:
                output = forward(self.actor, {name: torch.from_numpy(value) for name, value in features.items()}).numpy()
        actions = self.env.action.greedy(output, mask)
        return actions if batched else actions[0]

    def act_independently(self, observations: Any, info: Any = None) -> np.ndarray:
        """``act`` for a batch, each row computed by the same arithmetic as if it were alone (one NumPy matrix
        product per row, or one network call per row with encoders), so that an evaluation episode's actions
        never depend on the episodes that share its batch.  The values may differ from ``act``'s in the last bits."""
        features, _ = self._features(observations)
        mask = self._mask(observations, info, None, True)
        if self.numpy_layers:
            activation = NUMPY_ACTIVATIONS[self.architecture["activation"]]
            hidden = features["vector"][:, None, :]
            for weight_t, bias in self.numpy_layers[:-1]:
                hidden = activation(np.matmul(hidden, weight_t) + bias)
            weight_t, bias = self.numpy_layers[-1]
            return self.env.action.greedy((np.matmul(hidden, weight_t) + bias)[:, 0, :], mask)
        with torch.inference_mode():
            rows = [forward(self.actor, {name: torch.from_numpy(value[row : row + 1]) for name, value in features.items()})
                    for row in range(len(features["vector"]))]
        return self.env.action.greedy(torch.cat(rows).numpy(), mask)

    def _features(self, observation: Any) -> tuple[dict[str, np.ndarray], bool]:
        """The actor's inputs as a batch (float32 vector, images as they come), and whether a batch was given."""
        if self.env.observation.plain_vector:
            observation = np.asarray(observation, dtype=np.float32)  # the precision the actor runs at, before standardizing
        features = self.env.observation.features(observation)
        batched = features["vector"].ndim > 1
        vector = features["vector"] if batched else features["vector"][None]
        if self.observation_mean is not None:
            vector = normalize(vector, self.observation_mean, self.observation_variance, self.env.observation.normalized)
        features = {name: value if batched else value[None] for name, value in features.items()}
        features["vector"] = vector.astype(np.float32)
        return features, batched

    def _mask(self, observation: Any, info: Any, action_mask: np.ndarray | None, batched: bool) -> np.ndarray | None:
        mask = action_mask if action_mask is not None else self.env.mask(observation, info)
        return None if mask is None else np.asarray(mask, dtype=bool).reshape(-1 if batched else 1, self.env.action_dim)

    def save(self, directory: str | Path) -> Path:
        """Write the policy as safetensors weights plus a JSON spec; returns the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"actor.{name}": value.detach().numpy() for name, value in self.actor.state_dict().items()}
        if self.observation_mean is not None:
            tensors["observation_mean"] = np.asarray(self.observation_mean, dtype=np.float64)
            tensors["observation_variance"] = np.asarray(self.observation_variance, dtype=np.float64)
        checkpoint.atomic_write(directory / POLICY_WEIGHTS, lambda path: save_file(tensors, str(path)))
        spec = {"format": 2, "env": self.env.to_dict(), "architecture": self.architecture}
        checkpoint.atomic_write(directory / POLICY_SPEC, lambda path: path.write_text(json.dumps(spec, indent=2)))
        return directory


def load_policy(path: str | Path, best: bool = False) -> Policy:
    """Load a saved policy from a run directory (its final policy, or with ``best`` its best-evaluated one) or
    from a policy directory; no code runs on load (no pickle)."""
    directory = Path(path)
    kept = "best" if best else "policy"
    if (directory / kept / POLICY_SPEC).exists():
        directory = directory / kept
    elif best:
        raise FileNotFoundError(f"no best policy in {path} (expected {kept}/{POLICY_SPEC}; runs keep one with train.keep_best)")
    spec_path = directory / POLICY_SPEC
    if not spec_path.exists():
        raise FileNotFoundError(f"no saved policy at {path} (expected {POLICY_SPEC})")
    spec = json.loads(spec_path.read_text())
    env = EnvInfo.from_dict(spec["env"])
    tensors = load_file(str(directory / POLICY_WEIGHTS))
    actor = build_actor(env.observation, env.action_dim, spec["architecture"], initialize=False)
    prefix = "actor."
    actor.load_state_dict({name[len(prefix):]: torch.from_numpy(value) for name, value in tensors.items() if name.startswith(prefix)})
    return Policy(actor, env, spec["architecture"], tensors.get("observation_mean"), tensors.get("observation_variance"))
