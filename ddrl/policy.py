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
from ddrl.normalizer import normalize

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
ACTIVATION_FUNCTIONS = {"tanh": torch.tanh, "relu": torch.relu}
NUMPY_ACTIVATIONS = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}
POLICY_WEIGHTS = "policy.safetensors"
POLICY_SPEC = "policy.json"


def mlp(
    input_dim: int, hidden_sizes: list[int], output_dim: int, activation: str, output_gain: float, initialize: bool = True
) -> nn.Sequential:
    """An MLP with orthogonal initialization (gain sqrt(2) in hidden layers, ``output_gain`` at the output).

    ``initialize=False`` keeps torch's default initialization, for weights that are loaded right after:
    orthogonal initialization costs a QR decomposition per layer, tens of milliseconds on busy cores.
    """
    layers: list[nn.Module] = []
    sizes = [input_dim, *hidden_sizes]
    for size_in, size_out in zip(sizes, sizes[1:]):
        layers += [_linear(size_in, size_out, np.sqrt(2), initialize), ACTIVATIONS[activation]()]
    layers.append(_linear(sizes[-1], output_dim, output_gain, initialize))
    return nn.Sequential(*layers)


def _linear(size_in: int, size_out: int, gain: float, initialize: bool) -> nn.Linear:
    layer = nn.Linear(size_in, size_out)
    if initialize:
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.zeros_(layer.bias)
    return layer


class Policy:
    """A deterministic policy: normalize the observation, run the actor, take argmax or the clipped mean."""

    def __init__(
        self,
        actor: nn.Module,
        env: EnvInfo,
        architecture: dict[str, Any],
        observation_mean: np.ndarray | None = None,
        observation_variance: np.ndarray | None = None,
    ) -> None:
        self.actor = actor.eval()
        self.layers = [(layer.weight, layer.bias) for layer in actor if isinstance(layer, nn.Linear)]
        self.numpy_layers = [(weight.detach().numpy().T, bias.detach().numpy()) for weight, bias in self.layers]
        self.env = env
        self.architecture = architecture
        self.observation_mean = observation_mean
        self.observation_variance = observation_variance

    def act(self, observation: np.ndarray) -> np.ndarray:
        """The action for one observation, or a batch of actions for a batch of observations."""
        observation = np.asarray(observation, dtype=np.float32)
        batch = observation.reshape(-1, self.env.observation_dim)
        if self.observation_mean is not None:
            batch = normalize(batch, self.observation_mean, self.observation_variance)
        # The actor's layers called as functions: the same kernels (and bits) as the module, without
        # nn.Module's per-call cost, which dominates at evaluation's one call per env step.
        activation = ACTIVATION_FUNCTIONS[self.architecture["activation"]]
        with torch.inference_mode():
            hidden = torch.from_numpy(batch)
            for weight, bias in self.layers[:-1]:
                hidden = activation(nn.functional.linear(hidden, weight, bias))
            output = nn.functional.linear(hidden, *self.layers[-1]).numpy()
        actions = self._actions(output)
        return actions if observation.ndim > 1 else actions[0]

    def act_independently(self, observations: np.ndarray) -> np.ndarray:
        """``act`` for a batch, each row computed by the same arithmetic as if it were alone (one NumPy matrix
        product per row), so that an evaluation episode's actions never depend on the episodes that share its
        batch.  The values may differ from ``act``'s in the last bits."""
        batch = np.asarray(observations, dtype=np.float32).reshape(-1, self.env.observation_dim)
        if self.observation_mean is not None:
            batch = normalize(batch, self.observation_mean, self.observation_variance)
        activation = NUMPY_ACTIVATIONS[self.architecture["activation"]]
        hidden = batch[:, None, :]
        for weight_t, bias in self.numpy_layers[:-1]:
            hidden = activation(np.matmul(hidden, weight_t) + bias)
        weight_t, bias = self.numpy_layers[-1]
        return self._actions((np.matmul(hidden, weight_t) + bias)[:, 0, :])

    def _actions(self, output: np.ndarray) -> np.ndarray:
        if self.env.discrete:
            return output.argmax(axis=1)
        return np.clip(output, self.env.action_low, self.env.action_high).astype(np.float32)

    def save(self, directory: str | Path) -> Path:
        """Write the policy as safetensors weights plus a JSON spec; returns the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"actor.{name}": value.detach().numpy() for name, value in self.actor.state_dict().items()}
        if self.observation_mean is not None:
            tensors["observation_mean"] = np.asarray(self.observation_mean, dtype=np.float64)
            tensors["observation_variance"] = np.asarray(self.observation_variance, dtype=np.float64)
        checkpoint.atomic_write(directory / POLICY_WEIGHTS, lambda path: save_file(tensors, str(path)))
        spec = {"format": 1, "env": self.env.to_dict(), "architecture": self.architecture}
        checkpoint.atomic_write(directory / POLICY_SPEC, lambda path: path.write_text(json.dumps(spec, indent=2)))
        return directory


def build_actor(env: EnvInfo, architecture: dict[str, Any], initialize: bool = True) -> nn.Sequential:
    return mlp(env.observation_dim, architecture["hidden_sizes"], env.action_dim, architecture["activation"], 0.01, initialize)


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
    actor = build_actor(env, spec["architecture"], initialize=False)
    prefix = "actor."
    actor.load_state_dict({name[len(prefix):]: torch.from_numpy(value) for name, value in tensors.items() if name.startswith(prefix)})
    return Policy(actor, env, spec["architecture"], tensors.get("observation_mean"), tensors.get("observation_variance"))
