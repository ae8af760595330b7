"""Export a trained policy for serving without ddrl: one TorchScript file, observation in, action out.

::

    from ddrl.export import export_torchscript
    export_torchscript(ddrl.load_policy("runs/cartpole_ppo-..."), "cartpole.pt")

    # anywhere with torch only (no ddrl, no Spark, no pickle):
    model = torch.jit.load("cartpole.pt")
    action = model(torch.as_tensor(observation, dtype=torch.float32).reshape(1, -1))[0]

``export_program`` writes the same module as a ``torch.export`` program (``.pt2``), the format recent torch
releases recommend over TorchScript: ``torch.export.load("cartpole.pt2").module()(observations)``.

The exported module does what ``Policy.act`` does on a batch: standardize and clip the observation with the
policy's running moments (in float64, as ddrl does), run the actor, then take the argmax (discrete actions,
int64) or clip the mean to the action bounds (continuous actions, float32).  It gives the same actions as
``ddrl.load_policy(...).act`` on the same observations.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ddrl import checkpoint
from ddrl.normalizer import CLIP, EPSILON
from ddrl.policy import Policy


class ServingPolicy(nn.Module):
    """A self-contained ``nn.Module`` version of a ``Policy``: float32 observations ``(batch, obs_dim)`` to actions."""

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        env = policy.env
        self.actor = policy.actor
        self.discrete = bool(env.discrete)
        self.clip = float(CLIP)
        self.normalized = policy.observation_mean is not None
        dim = env.observation_dim
        mean = policy.observation_mean if self.normalized else np.zeros(dim)
        variance = policy.observation_variance if self.normalized else np.ones(dim)
        self.register_buffer("observation_mean", torch.as_tensor(np.asarray(mean, dtype=np.float64)))
        self.register_buffer("observation_scale", torch.as_tensor(np.sqrt(np.asarray(variance, dtype=np.float64) + EPSILON)))
        low = env.action_low if not self.discrete else (0.0,)
        high = env.action_high if not self.discrete else (0.0,)
        self.register_buffer("action_low", torch.tensor(low, dtype=torch.float32))
        self.register_buffer("action_high", torch.tensor(high, dtype=torch.float32))

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        batch = observation.to(torch.float32)
        if self.normalized:
            standardized = (batch.to(torch.float64) - self.observation_mean) / self.observation_scale
            batch = standardized.clamp(-self.clip, self.clip).to(torch.float32)
        output = self.actor(batch)
        if self.discrete:
            return output.argmax(dim=-1)
        return torch.maximum(torch.minimum(output, self.action_high), self.action_low)


def serving_module(policy: Policy) -> ServingPolicy:
    """The policy as an ``nn.Module`` in eval mode (for TorchScript, ONNX or ``mlflow.pytorch.log_model``)."""
    return ServingPolicy(policy).eval()


def export_torchscript(policy: Policy, path: str | Path) -> Path:
    """Write ``policy`` as a TorchScript file (``torch.jit.load`` reads it back without ddrl); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torch 2.10+ marks TorchScript deprecated; torch.jit.load still reads it
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(serving_module(policy))
        checkpoint.atomic_write(path, lambda target: torch.jit.save(scripted, str(target)))
    return path


def export_program(policy: Policy, path: str | Path) -> Path:
    """Write ``policy`` as a ``torch.export`` program (``.pt2``, any batch size); returns the path.

    Read it back without ddrl with ``torch.export.load(path).module()``.  TorchScript is deprecated in recent
    torch releases; this is its successor.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, policy.env.observation_dim, dtype=torch.float32)
    batch = torch.export.Dim("batch")
    program = torch.export.export(serving_module(policy), (example,), dynamic_shapes={"observation": {0: batch}})
    checkpoint.atomic_write(path, lambda target: torch.export.save(program, str(target)))
    return path
