"""The networks policies are made of: MLPs over the vector features, CNN encoders for image features.

A network over features that hold no image is a plain ``nn.Sequential`` MLP taking the vector features.  With
images it is an ``EncodedMLP``: one CNN per image part (``cnn``: the Nature CNN of Mnih et al. 2015 for
Atari-sized frames, or the one-layer CNN of MinAtar, Young & Tian 2019, for small grids), whose outputs join
the vector features before the MLP.  ``forward`` runs either on a features dict (``ddrl.spaces``).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ddrl.spaces import ObservationPart, ObservationSpec

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
NATURE_CNN_MIN_SIZE = 36
"""The smallest height and width the Nature CNN's 8/4, 4/2, 3/1 convolutions leave a pixel of."""


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
        layers += [_initialized(nn.Linear(size_in, size_out), np.sqrt(2), initialize), ACTIVATIONS[activation]()]
    layers.append(_initialized(nn.Linear(sizes[-1], output_dim), output_gain, initialize))
    return nn.Sequential(*layers)


def _initialized(layer: nn.Linear | nn.Conv2d, gain: float, initialize: bool) -> Any:
    if initialize:
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.zeros_(layer.bias)
    return layer


class ImageEncoder(nn.Module):
    """A CNN over one image part: scaled to [0, 1], convolutions, then a ReLU layer of ``features`` units."""

    def __init__(self, part: ObservationPart, cnn: Literal["nature", "small"], initialize: bool = True) -> None:
        super().__init__()
        channels, height, width = part.image_shape
        self.scale = float(part.scale)
        gain = np.sqrt(2)
        if cnn == "nature":
            convolutions = [nn.Conv2d(channels, 32, 8, stride=4), nn.Conv2d(32, 64, 4, stride=2), nn.Conv2d(64, 64, 3, stride=1)]
            features = 512
        else:
            convolutions = [nn.Conv2d(channels, 16, 3, stride=1)]
            features = 128
        layers: list[nn.Module] = []
        for convolution in convolutions:
            layers += [_initialized(convolution, gain, initialize), nn.ReLU()]
        self.convolutions = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            flat = self.convolutions(torch.zeros(1, channels, height, width)).shape[1]
        self.output = nn.Sequential(_initialized(nn.Linear(flat, features), gain, initialize), nn.ReLU())
        self.features = features

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.output(self.convolutions(image.to(torch.float32) * self.scale))


class EncodedMLP(nn.Module):
    """CNN encoders for the image features, their outputs beside the vector features, then an MLP ``head``."""

    def __init__(self, encoders: nn.ModuleList, head: nn.Sequential) -> None:
        super().__init__()
        self.encoders = encoders
        self.head = head

    def forward(self, vector: torch.Tensor, images: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.encode(vector, images))

    def encode(self, vector: torch.Tensor, images: list[torch.Tensor]) -> torch.Tensor:
        """The head's input: the vector features beside each image's CNN output."""
        encoded = [vector.to(torch.float32)]
        for index, encoder in enumerate(self.encoders):
            encoded.append(encoder(images[index]))
        return torch.cat(encoded, dim=-1)


def resolve_cnn(observation: ObservationSpec, cnn: str) -> str | None:
    """The CNN an ``auto`` choice means for these observations (None without images)."""
    if not observation.images:
        return None
    if cnn != "auto":
        return cnn
    smallest = min(min(part.image_shape[1:]) for part in observation.images)
    return "nature" if smallest >= NATURE_CNN_MIN_SIZE else "small"


def build_encoders(observation: ObservationSpec, cnn: str | None, initialize: bool = True) -> nn.ModuleList:
    return nn.ModuleList([ImageEncoder(part, cnn, initialize) for part in observation.images]) if cnn else nn.ModuleList()


def network(
    observation: ObservationSpec, encoders: nn.ModuleList, architecture: dict[str, Any], output_dim: int, output_gain: float, initialize: bool = True
) -> nn.Module:
    """An MLP from the features to ``output_dim``, after ``encoders`` (which several networks may share)."""
    input_dim = observation.vector_dim + sum(encoder.features for encoder in encoders)
    head = mlp(input_dim, architecture["hidden_sizes"], output_dim, architecture["activation"], output_gain, initialize)
    return EncodedMLP(encoders, head) if len(encoders) else head


def build_actor(observation: ObservationSpec, output_dim: int, architecture: dict[str, Any], initialize: bool = True) -> nn.Module:
    """The policy network alone (the output layer at gain 0.01): what ``ddrl.load_policy`` rebuilds."""
    encoders = build_encoders(observation, architecture.get("cnn"), initialize)
    return network(observation, encoders, architecture, output_dim, 0.01, initialize)


def forward(module: nn.Module, features: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run a network of ``network`` on a features dict of tensors."""
    return head(module)(encode(module, features))


def encode(module: nn.Module, features: dict[str, torch.Tensor]) -> torch.Tensor:
    """What a network of ``network`` feeds its MLP head: the vector features, with the encoded images if it has
    encoders.  Networks that share their encoders need it once for all their heads."""
    if isinstance(module, EncodedMLP):
        return module.encode(features["vector"], [features[f"image{index}"] for index in range(len(module.encoders))])
    return features["vector"]


def head(module: nn.Module) -> nn.Module:
    """The MLP of a network of ``network``, after its encoders."""
    return module.head if isinstance(module, EncodedMLP) else module


def linear_layers(module: nn.Module) -> list[nn.Linear]:
    """The Linear layers of an MLP network in order: what a NumPy forward pass needs (empty with encoders)."""
    return [] if isinstance(module, EncodedMLP) else [layer for layer in module if isinstance(layer, nn.Linear)]
