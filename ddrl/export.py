"""Export a trained policy for serving without ddrl: one TorchScript file, observation in, action out.

::

    from ddrl.export import export_torchscript
    export_torchscript(ddrl.load_policy("runs/cartpole_ppo-..."), "cartpole.pt")

    # anywhere with torch only (no ddrl, no Spark, no pickle):
    model = torch.jit.load("cartpole.pt")
    action = model(torch.as_tensor(observation, dtype=torch.float32).reshape(1, -1))[0]

``export_program`` writes the same module as a ``torch.export`` program (``.pt2``), the format recent torch
releases recommend over TorchScript: ``torch.export.load("cartpole.pt2").module()(observations)``.

The exported module does what ``Policy.act`` does on a batch: encode the observation's parts into features
(``ddrl.spaces``; Dict and Tuple observations come as a dict of batches by part name, "key.subkey" or a Tuple's
"0", "1"), standardize and clip the vector features with the policy's running moments (in float64, as ddrl does),
run the actor (CNNs included), mask invalid actions (from the observation, or a second ``action_mask`` argument
for masks that come in the env's info), then take the head's greedy action: argmax (int64), argmax per dimension
(MultiDiscrete), logit > 0 (MultiBinary, int8), or the mean clipped to the bounds (Box, float32, the action's
shape).  It gives the same actions as ``ddrl.load_policy(...).act`` on the same observations.
"""


import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ddrl import checkpoint
from ddrl.networks import EncodedMLP
from ddrl.normalizer import CLIP, EPSILON
from ddrl.policy import Policy
from ddrl.spaces import MASKED_LOGIT, ObservationPart


class ServingPolicy(nn.Module):
    """A self-contained ``nn.Module`` version of a ``Policy`` for observations that are one array: a batch of them
    (``(batch, *shape)``, in the env's dtype), and for envs whose mask comes in their info, the batch of masks."""

    part_names: List[str]
    part_kinds: List[str]
    part_nvec: List[List[int]]
    part_start: List[List[int]]
    part_layout: List[str]
    action_shape: List[int]
    action_nvec: List[int]

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        env, spec = policy.env, policy.env.observation
        self.network = policy.actor if isinstance(policy.actor, EncodedMLP) else VectorNetwork(policy.actor)
        self.part_names = [part.name for part in spec.parts]
        self.part_kinds = [part.kind for part in spec.parts]
        self.part_nvec = [list(part.nvec) for part in spec.parts]
        self.part_start = [list(part.start) for part in spec.parts]
        self.part_layout = [_image_layout(part) for part in spec.parts]
        self.clip = float(CLIP)
        dim = spec.vector_dim
        self.normalized = policy.observation_mean is not None and dim > 0
        # Placeholders of one entry where nothing is standardized: torch.export cannot save empty buffers.
        mean = policy.observation_mean if self.normalized else np.zeros(max(dim, 1))
        variance = policy.observation_variance if self.normalized else np.ones(max(dim, 1))
        where = spec.normalized if spec.normalized is not None else np.ones(max(dim, 1), dtype=bool)
        self.register_buffer("observation_mean", torch.as_tensor(np.asarray(mean, dtype=np.float64)))
        self.register_buffer("observation_scale", torch.as_tensor(np.sqrt(np.asarray(variance, dtype=np.float64) + EPSILON)))
        self.register_buffer("standardized_features", torch.as_tensor(where))
        action = env.action
        self.action_kind = action.kind
        self.action_shape = list(action.shape)
        self.action_nvec = list(action.nvec)
        self.register_buffer("action_low", torch.tensor(action.low or (0.0,), dtype=torch.float32))
        self.register_buffer("action_high", torch.tensor(action.high or (0.0,), dtype=torch.float32))
        self.mask_key = env.action_mask_key if env.action_mask == "observation" else ""
        self.masked_logit = MASKED_LOGIT

    def forward(self, observation: torch.Tensor, action_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.act({"": observation}, action_mask)

    def act(self, observation: Dict[str, torch.Tensor], action_mask: Optional[torch.Tensor]) -> torch.Tensor:
        vector, images = self.features(observation)
        if self.normalized:
            standardized = ((vector - self.observation_mean) / self.observation_scale).clamp(-self.clip, self.clip)
            vector = torch.where(self.standardized_features, standardized, vector)
        output = self.network(vector.to(torch.float32), images)
        if self.mask_key != "":
            action_mask = observation[self.mask_key]
        if action_mask is not None:
            output = output.masked_fill(~action_mask.to(torch.bool).reshape(output.shape), self.masked_logit)
        batch = output.shape[0]
        if self.action_kind == "discrete":
            return output.argmax(dim=-1)
        if self.action_kind == "multi_discrete":
            codes: List[torch.Tensor] = []
            start = 0
            for n in self.action_nvec:
                codes.append(output[:, start : start + n].argmax(dim=-1))
                start += n
            return torch.stack(codes, dim=-1)
        if self.action_kind == "multi_binary":
            return (output > 0).to(torch.int8).reshape([batch] + self.action_shape)
        return torch.maximum(torch.minimum(output, self.action_high), self.action_low).reshape([batch] + self.action_shape)

    def features(self, observation: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """``ddrl.spaces.ObservationSpec.features`` in torch: the float64 vector features and the images (C, H, W)."""
        vectors: List[torch.Tensor] = []
        images: List[torch.Tensor] = []
        batch = 0
        for index, name in enumerate(self.part_names):
            value = observation[name]
            batch = value.shape[0]
            kind = self.part_kinds[index]
            if kind == "image":
                layout = self.part_layout[index]
                images.append(value.unsqueeze(1) if layout == "gray" else value.permute(0, 3, 1, 2) if layout == "channels_last" else value)
            elif kind == "discrete" or kind == "multi_discrete":
                codes = value.reshape(batch, -1).to(torch.int64)
                for dimension, n in enumerate(self.part_nvec[index]):
                    code = codes[:, dimension] - self.part_start[index][dimension]
                    vectors.append(nn.functional.one_hot(code, n).to(torch.float64))
            else:  # at float32 precision first, as Policy.act reads them
                vectors.append(value.reshape(batch, -1).to(torch.float32).to(torch.float64))
        vector = torch.cat(vectors, dim=-1) if len(vectors) > 0 else torch.zeros(batch, 0, dtype=torch.float64)
        return vector, images


def _image_layout(part: ObservationPart) -> str:
    if part.kind != "image":
        return ""
    return "gray" if len(part.shape) == 2 else "channels_last" if part.channels_last else "channels_first"


class StructuredServingPolicy(ServingPolicy):
    """``ServingPolicy`` for Dict and Tuple observations: a dict of batches keyed by part name ("key.subkey", a
    Tuple's parts by index: "0", "1")."""

    def forward(self, observation: Dict[str, torch.Tensor], action_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.act(observation, action_mask)


class VectorNetwork(nn.Module):
    """An MLP actor with ``EncodedMLP``'s call signature (vector features, images), so that one serving module fits both."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, vector: torch.Tensor, images: List[torch.Tensor]) -> torch.Tensor:
        return self.mlp(vector)


def serving_module(policy: Policy) -> ServingPolicy:
    """The policy as an ``nn.Module`` in eval mode (for TorchScript, ONNX or ``mlflow.pytorch.log_model``)."""
    module = StructuredServingPolicy(policy) if policy.env.observation.structured else ServingPolicy(policy)
    return module.eval()


def example_input(policy: Policy, batch: int = 2) -> tuple[Any, ...]:
    """Zero observations (a dict of them for Dict and Tuple spaces) and, where masks come in the env's info, an
    all-valid mask: the serving module's arguments."""
    spec = policy.env.observation
    parts = {part.name: torch.zeros((batch, *part.shape), dtype=_TORCH_DTYPES[part.dtype]) for part in spec.parts}
    observation = parts if spec.structured else parts[""]
    if policy.env.action_mask == "info":
        return observation, torch.ones(batch, policy.env.action_dim, dtype=torch.bool)
    return (observation,)


_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "uint8": torch.uint8, "bool": torch.bool,
                 "int8": torch.int8, "int32": torch.int32, "int64": torch.int64}


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
    example = example_input(policy)
    batch = torch.export.Dim("batch")
    observation = {name: {0: batch} for name in example[0]} if isinstance(example[0], dict) else {0: batch}
    dynamic = {"observation": observation, **({"action_mask": {0: batch}} if len(example) > 1 else {})}
    program = torch.export.export(serving_module(policy), example, dynamic_shapes=dynamic)
    checkpoint.atomic_write(path, lambda target: torch.export.save(program, str(target)))
    return path
