"""A quality measure for style-transfer results, independent of any tool's own loss, in two views.

Both views use the original VGG19 (Impasto's default weights, which pastiche uses too) in fp32 with max
pooling, and are relative errors, so lower is better and 0 is a perfect match:

* style distance: the mean over the view's style layers of ‖G(result) − G(style)‖_F / ‖G(style)‖_F,
  with the Gram matrix G = X·Xᵀ / (C·H·W); the style image is first resized so that its long side
  equals the result's long side;
* content distance: ‖F(result) − F(content)‖_F / ‖F(content)‖_F at the view's content layer, with the
  content image resized to the result's exact size.

The views:

* "relu": relu1_1 … relu5_1 and relu4_2 — the very layers Impasto's default recipe optimises (with other
  weights), so this view flatters it;
* "conv": conv1_1 … conv5_1 and conv4_2 before their ReLU — layers no recipe of Impasto optimises with
  these statistics: the neutral judge. (pastiche's own loss sits at relu layers too.)

A tool reaches another's quality only when it matches both distances in both views.
"""

from __future__ import annotations

import functools

import torch
from impasto.engine.imageops import fit_long_side, resize
from impasto.engine.losses import gram
from impasto.engine.vgg import VGGFeatures
from impasto.engine.weights import load_original_vgg19

# view -> (style layers, content layer)
VIEWS = {
    "relu": (tuple(f"relu{i}_1" for i in range(1, 6)), "relu4_2"),
    "conv": (tuple(f"conv{i}_1" for i in range(1, 6)), "conv4_2"),
}
STYLE_LAYERS, CONTENT_LAYER = VIEWS["relu"]
Scores = dict[str, tuple[float, float]]  # view -> (style distance, content distance)


@functools.cache
def _network() -> VGGFeatures:
    layers = {layer for style, content in VIEWS.values() for layer in (*style, content)}
    return VGGFeatures(load_original_vgg19(), tuple(sorted(layers)), pooling="max")


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
        content = _features(resize(content_rgb.float(), self.size))
        self.content = {layer: content[layer] for _, layer in VIEWS.values()}
        style_size = fit_long_side(style_rgb.shape[2], style_rgb.shape[3], max(self.size))
        style = _features(resize(style_rgb.float(), style_size))
        self.grams = {layer: gram(style[layer]) for layers, _ in VIEWS.values() for layer in layers}

    def scores(self, result_rgb: torch.Tensor) -> Scores:
        """Each view's (style distance, content distance) of a (1, 3, H, W) RGB image in [0, 1]."""
        if tuple(result_rgb.shape[2:]) != self.size:
            raise ValueError(f"result is {tuple(result_rgb.shape[2:])}, the reference {self.size}")
        features = _features(result_rgb)
        return {
            view: (
                sum(_relative(gram(features[k]), self.grams[k]) for k in layers) / len(layers),
                _relative(features[content], self.content[content]),
            )
            for view, (layers, content) in VIEWS.items()
        }

    def distances(self, result_rgb: torch.Tensor) -> tuple[float, float]:
        """(style distance, content distance) in the "relu" view."""
        return self.scores(result_rgb)["relu"]


def at_least_as_good(scores: Scores, target: Scores) -> bool:
    """Every distance of every view at most the target's."""
    return all(s <= ts and c <= tc for (s, c), (ts, tc) in zip(scores.values(), target.values(), strict=True))


def distances(
    result_rgb: torch.Tensor, content_rgb: torch.Tensor, style_rgb: torch.Tensor
) -> tuple[float, float]:
    """(style distance, content distance) of one result; see the module docstring."""
    return Reference(content_rgb, style_rgb, tuple(result_rgb.shape[2:])).distances(result_rgb)
