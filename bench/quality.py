"""A neutral quality measure for style-transfer results, independent of any tool's own loss.

Both distances use the original VGG19 (Impasto's default weights, which pastiche uses too) in
fp32 with max pooling, and are relative errors, so lower is better and 0 is a perfect match:

* style distance: the mean over relu1_1 … relu5_1 of ‖G(result) − G(style)‖_F / ‖G(style)‖_F,
  with the Gram matrix G = X·Xᵀ / (C·H·W); the style image is first resized so that its long
  side equals the result's long side;
* content distance: ‖F(result) − F(content)‖_F / ‖F(content)‖_F at relu4_2, with the content
  image resized to the result's exact size.

Neither tool optimises exactly this: pastiche weights its layers by 1/C² and its content by
0.01 on unnormalised activations, Impasto divides each layer by its target's mean square.
"""

from __future__ import annotations

import functools

import torch
from impasto.engine.imageops import fit_long_side, resize
from impasto.engine.losses import gram
from impasto.engine.vgg import VGGFeatures
from impasto.engine.weights import load_original_vgg19

STYLE_LAYERS = tuple(f"relu{i}_1" for i in range(1, 6))
CONTENT_LAYER = "relu4_2"


@functools.cache
def _network() -> VGGFeatures:
    return VGGFeatures(load_original_vgg19(), (*STYLE_LAYERS, CONTENT_LAYER), pooling="max")


def _features(rgb: torch.Tensor) -> dict[str, torch.Tensor]:
    # fp32 even when called from inside a caller's bf16 autocast region.
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        return _network()(rgb.detach().float().cpu())


def _relative(value: torch.Tensor, target: torch.Tensor) -> float:
    return float(torch.linalg.norm(value - target) / torch.linalg.norm(target))


class Reference:
    """The content and style targets for results of one size, computed once to score many images."""

    def __init__(self, content_rgb: torch.Tensor, style_rgb: torch.Tensor, size: tuple[int, int]):
        self.size = tuple(size)
        self.content = _features(resize(content_rgb.float(), self.size))[CONTENT_LAYER]
        style_size = fit_long_side(style_rgb.shape[2], style_rgb.shape[3], max(self.size))
        style = _features(resize(style_rgb.float(), style_size))
        self.grams = {layer: gram(style[layer]) for layer in STYLE_LAYERS}

    def distances(self, result_rgb: torch.Tensor) -> tuple[float, float]:
        """(style distance, content distance) of a (1, 3, H, W) RGB image in [0, 1]."""
        if tuple(result_rgb.shape[2:]) != self.size:
            raise ValueError(f"result is {tuple(result_rgb.shape[2:])}, the reference {self.size}")
        features = _features(result_rgb)
        style = sum(_relative(gram(features[k]), self.grams[k]) for k in STYLE_LAYERS) / len(STYLE_LAYERS)
        return style, _relative(features[CONTENT_LAYER], self.content)


def distances(
    result_rgb: torch.Tensor, content_rgb: torch.Tensor, style_rgb: torch.Tensor
) -> tuple[float, float]:
    """(style distance, content distance) of one result; see the module docstring."""
    return Reference(content_rgb, style_rgb, tuple(result_rgb.shape[2:])).distances(result_rgb)
