"""VGG19 as a frozen feature extractor, truncated after the deepest layer in use."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

from .weights import CONV_NAMES, WeightSet

Pooling = Literal["max", "avg"]


def layer_names() -> list[str]:
    """Every tap in network order: conv1_1, relu1_1, conv1_2, relu1_2, pool1, conv2_1, …"""
    names = []
    for i, conv in enumerate(CONV_NAMES):
        names += [conv, "relu" + conv[4:]]
        last_of_block = i + 1 == len(CONV_NAMES) or CONV_NAMES[i + 1][4] != conv[4]
        if last_of_block:
            names.append(f"pool{conv[4]}")
    return names


class VGGFeatures(nn.Module):
    """Maps an RGB image in [0, 1] to the activations at the requested layers.

    The weight set's own preprocessing is applied inside, so callers never see network space. Move the
    module to bfloat16 (`.to(torch.bfloat16)`) for bf16 convolutions: the input is cast after
    preprocessing, so the pixels stay float32 and the weights are cast once, not on every call.
    """

    def __init__(self, weights: WeightSet, layers: Iterable[str], pooling: Pooling = "max"):
        super().__init__()
        all_names = layer_names()
        wanted = set(layers)
        unknown = wanted - set(all_names)
        if unknown:
            raise ValueError(f"unknown VGG19 layers: {sorted(unknown)}")
        self.taps = wanted
        self.preprocessing = weights.preprocessing
        depth = max(all_names.index(name) for name in wanted) + 1
        self.names = all_names[:depth]
        self.stack = nn.ModuleList(self._make(name, weights, pooling) for name in self.names)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def _make(name: str, weights: WeightSet, pooling: Pooling) -> nn.Module:
        if name.startswith("conv"):
            weight = weights.state_dict[f"{name}.weight"]
            conv = nn.Conv2d(weight.shape[1], weight.shape[0], kernel_size=3, padding=1)
            conv.weight.data.copy_(weight)
            conv.bias.data.copy_(weights.state_dict[f"{name}.bias"])
            return conv
        if name.startswith("relu"):
            return nn.ReLU(inplace=False)
        return nn.MaxPool2d(2, ceil_mode=True) if pooling == "max" else nn.AvgPool2d(2, ceil_mode=True)

    def forward(self, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.preprocessing.to_network(rgb).to(self.stack[0].weight.dtype)
        features = {}
        for name, layer in zip(self.names, self.stack, strict=True):
            x = layer(x)
            if name in self.taps:
                features[name] = x
        return features
