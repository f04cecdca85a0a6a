"""The seed's losses (d2l's formulas), and their weighted sum.

Gram matrices and every loss are computed in float32 even when the network runs in bf16/fp16:
fp16 Grams overflow and bf16 makes (G - G_target) noisy near convergence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.square(features.float() - target.detach().float()).mean()


def gram(features: torch.Tensor) -> torch.Tensor:
    """X·Xᵀ / (C·H·W) for one image (batch of 1)."""
    channels = features.shape[1]
    flat = features.float().reshape(channels, -1)
    return flat @ flat.T / flat.numel()


def style_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    return torch.square(gram(features) - target_gram.detach()).mean()


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    vertical = torch.abs(image[:, :, 1:, :] - image[:, :, :-1, :]).mean()
    horizontal = torch.abs(image[:, :, :, 1:] - image[:, :, :, :-1]).mean()
    return 0.5 * (vertical + horizontal)


@dataclass
class Targets:
    """What the image is pulled towards at one scale, with each layer's weight already folded in."""

    content: dict[str, torch.Tensor]
    content_weights: dict[str, float]
    style_grams: dict[str, torch.Tensor]
    style_weights: dict[str, float]
    tv_weight: float


@dataclass
class LossParts:
    content: torch.Tensor
    style: torch.Tensor
    tv: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.content + self.style + self.tv


def total_loss(image: torch.Tensor, features: dict[str, torch.Tensor], targets: Targets) -> LossParts:
    zero = image.new_zeros((), dtype=torch.float32)
    content = sum(
        (w * content_loss(features[k], targets.content[k]) for k, w in targets.content_weights.items()),
        zero,
    )
    style = sum(
        (w * style_loss(features[k], targets.style_grams[k]) for k, w in targets.style_weights.items()),
        zero,
    )
    return LossParts(content, style, targets.tv_weight * tv_loss(image.float()))
