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
from ddrl.networks import EncodedMLP, build_actor, forward, linear_layers
from ddrl.normalizer import normalize
from ddrl.spaces import MASKED_LOGIT

ACTIVATION_FUNCTIONS = {"tanh": torch.tanh, "relu": torch.relu}
NUMPY_ACTIVATIONS = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}
POLICY_WEIGHTS = "policy.safetensors"
POLICY_SPEC = "policy.json"


class Policy:
    """A deterministic policy: the observation's features (standardized where ``ddrl.spaces`` says), the actor,
    then the greedy action of its head (argmax, per-dimension argmax, logit > 0, or the clipped mean).

    PPO's policies also carry the critic (``value``) and, for Box actions, the Gaussian's log std; ES's and those
    saved before ddrl kept them have None there."""

    def __init__(
        self,
        actor: nn.Module,
        env: EnvInfo,
        architecture: dict[str, Any],
        observation_mean: np.ndarray | None = None,
        observation_variance: np.ndarray | None = None,
        *,
        critic: nn.Module | None = None,
        log_std: np.ndarray | None = None,
        observation_count: float | None = None,
    ) -> None:
        self.actor = actor.eval()
        self.critic = None if critic is None else critic.eval()
        self.log_std = log_std
        self.layers = [(layer.weight, layer.bias) for layer in linear_layers(actor)]
        self.numpy_layers = [(weight.detach().numpy().T, bias.detach().numpy()) for weight, bias in self.layers]
        self.env = env
        self.architecture = architecture
        self.observation_mean = observation_mean
        self.observation_variance = observation_variance
        self.observation_count = observation_count
        """How many observations the moments summarize (what a run that starts from the policy weighs them by)."""

    def act(self, observation: Any, info: Any = None, action_mask: np.ndarray | None = None) -> np.ndarray:
        """The action for one observation, or a batch of actions for a batch of observations.

        Masked envs: the valid-action mask comes from the observation, from ``info`` (the env's info dict, a
        vector env's for a batch), or from ``action_mask`` itself.
        """
        features, batched = self._features(observation)
        mask = self._mask(observation, info, action_mask, batched)
        actions = self.env.action.greedy(self._output(features), mask)
        return actions if batched else actions[0]

    def action_probabilities(self, observation: Any, info: Any = None, action_mask: np.ndarray | None = None) -> np.ndarray:
        """The probability of each action under the trained distribution (float64), for one observation or a batch:
        Discrete, a softmax over the masked logits (n values); MultiDiscrete, each dimension's softmax, one after
        the other (sum(nvec) values); MultiBinary, each bit's probability of 1.  The mask comes as in ``act``."""
        action = self.env.action
        if action.kind == "box":
            raise ValueError(
                f"{self.env.id}: a Box action policy has no action probabilities: it has a Gaussian's mean (the greedy "
                "action, act) and its log std (Policy.log_std)"
            )
        features, batched = self._features(observation)
        mask = self._mask(observation, info, action_mask, batched)
        output = self._output(features).astype(np.float64)
        if mask is not None:
            output = np.where(mask, output, MASKED_LOGIT)
        if action.kind == "multi_binary":
            probabilities = np.exp(-np.logaddexp(0.0, -output))  # the sigmoid, without overflow at masked logits
        else:
            logits = [output[:, start : start + n] for start, n in zip(action.offsets, action.nvec)]
            exponentials = [np.exp(values - values.max(axis=-1, keepdims=True)) for values in logits]
            probabilities = np.concatenate([values / values.sum(axis=-1, keepdims=True) for values in exponentials], axis=-1)
        return probabilities if batched else probabilities[0]

    def value(self, observation: Any) -> np.ndarray:
        """The critic's V(s) (float32) for one observation (a 0-d array) or a batch of them, from the features
        ``act`` reads (standardized alike)."""
        if self.critic is None:
            raise ValueError(f"{self.env.id}: this policy has no critic (ES policies, and PPO policies saved before ddrl kept it)")
        features, batched = self._features(observation)
        with torch.inference_mode():
            values = forward(self.critic, {name: torch.from_numpy(value) for name, value in features.items()})[:, 0].numpy()
        return values if batched else values[0]

    def _output(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """The actor's output for a batch of features: the head's input."""
        with torch.inference_mode():
            if self.layers:
                # The actor's layers called as functions: the same kernels (and bits) as the module, without
                # nn.Module's per-call cost, which dominates at evaluation's one call per env step.
                activation = ACTIVATION_FUNCTIONS[self.architecture["activation"]]
                hidden = torch.from_numpy(features["vector"])
                for weight, bias in self.layers[:-1]:
                    hidden = activation(nn.functional.linear(hidden, weight, bias))
                return nn.functional.linear(hidden, *self.layers[-1]).numpy()
            return forward(self.actor, {name: torch.from_numpy(value) for name, value in features.items()}).numpy()

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
        tensors = self.tensors()
        checkpoint.atomic_write(directory / POLICY_WEIGHTS, lambda path: save_file(tensors, str(path)))
        spec = self.spec()
        checkpoint.atomic_write(directory / POLICY_SPEC, lambda path: path.write_text(json.dumps(spec, indent=2)))
        return directory

    def tensors(self) -> dict[str, np.ndarray]:
        """What ``save`` writes to policy.safetensors: ``actor.*``, ``critic.*`` (without the CNN encoders it shares
        with the actor, saved once), ``log_std``, and the observation moments."""
        tensors = {f"actor.{name}": value.detach().numpy() for name, value in self.actor.state_dict().items()}
        if self.critic is not None:
            shared = isinstance(self.critic, EncodedMLP) and self.critic.encoders is getattr(self.actor, "encoders", None)
            tensors.update({f"critic.{name}": value.detach().numpy() for name, value in self.critic.state_dict().items()
                            if not (shared and name.startswith("encoders."))})
        if self.log_std is not None:
            tensors["log_std"] = np.asarray(self.log_std, dtype=np.float32)
        if self.observation_mean is not None:
            tensors["observation_mean"] = np.asarray(self.observation_mean, dtype=np.float64)
            tensors["observation_variance"] = np.asarray(self.observation_variance, dtype=np.float64)
        if self.observation_count is not None:
            tensors["observation_count"] = np.asarray(self.observation_count, dtype=np.float64)
        return tensors

    def spec(self) -> dict[str, Any]:
        """What ``save`` writes to policy.json."""
        return {"format": 2, "env": self.env.to_dict(), "architecture": self.architecture}


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
    return policy_from_tensors(json.loads(spec_path.read_text()), load_file(str(directory / POLICY_WEIGHTS)))


def policy_from_tensors(spec: dict[str, Any], tensors: dict[str, np.ndarray]) -> Policy:
    """The policy of a ``Policy.spec()`` and its ``Policy.tensors()`` (what ``load_policy`` reads from files)."""
    env, architecture = EnvInfo.from_dict(spec["env"]), spec["architecture"]
    actor = build_actor(env.observation, env.action_dim, architecture, initialize=False)
    actor.load_state_dict(_prefixed(tensors, "actor."))
    critic = None
    critic_tensors = _prefixed(tensors, "critic.")
    if critic_tensors:  # PPO's critic network: the actor's structure with one output
        critic = build_actor(env.observation, 1, architecture, initialize=False)
        if isinstance(critic, EncodedMLP) and not any(name.startswith("encoders.") for name in critic_tensors):
            critic.encoders = actor.encoders  # shared with the actor, as in training, and saved with it
            critic_tensors.update({f"encoders.{name}": value for name, value in _prefixed(tensors, "actor.encoders.").items()})
        critic.load_state_dict(critic_tensors)
    return Policy(actor, env, architecture, tensors.get("observation_mean"), tensors.get("observation_variance"),
                  critic=critic, log_std=tensors.get("log_std"),
                  observation_count=float(tensors["observation_count"]) if "observation_count" in tensors else None)


def _prefixed(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, torch.Tensor]:
    return {name[len(prefix):]: torch.from_numpy(value) for name, value in tensors.items() if name.startswith(prefix)}
