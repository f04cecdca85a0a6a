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
    """mean((gram(features) - target_gram)²)."""
    return _GramDistance.apply(features, target_gram.detach())


class _GramDistance(torch.autograd.Function):
    """The style loss with its gradient written out: d/dF = 2·(E + Eᵀ)·F / (n·C²), E = G - T,
    for F of C rows and n entries.

    Autograd would take two matmuls for it and keep a float32 copy of every tapped layer for the
    backward pass; this takes one, in the features' own precision, and keeps only the (C, C) error.
    The gradient comes out in the features' memory layout, as the layers want it.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        error = gram(features) - target
        ctx.save_for_backward(features, error)
        return torch.square(error).mean()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        features, error = ctx.saved_tensors
        _, channels, height, width = features.shape
        scale = grad_output * 2 / (features.numel() * channels * channels)
        # (H·W, C) rows of pixels: a view for channels-last features.
        pixels = features.permute(0, 2, 3, 1).reshape(height * width, channels)
        grad = pixels @ ((error + error.T) * scale).to(features.dtype)
        grad = grad.reshape(1, height, width, channels).permute(0, 3, 1, 2)
        return grad if features.is_contiguous(memory_format=torch.channels_last) else grad.contiguous(), None


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
