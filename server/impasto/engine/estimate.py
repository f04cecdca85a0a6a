"""How long a job will take and how much device memory it needs, before it starts.

Memory per working pixel at the peak of an iteration (activations kept for the backward pass plus
its transients), measured through conv5_1 (docs/benchmarks.md; reference/performance.md): about
2.5 KB in fp32 and 1.6 KB with bf16 convolutions, plus the optimiser's state. Time is pixels ×
iterations × a seconds-per-pixel-iteration rate that starts from a per-device guess and is replaced
by what this engine measured on its last jobs.

A tiled scale (engine/tiled.py) needs one tile's working set (its input pixels, halo included, at the
same cost per pixel) plus buffers of the whole image: the image, its gradient, the optimiser's state,
the content's features at the content layers and the resized content (`FULL_BYTES_PER_PIXEL`).
Its time is the whole image's times `Scale.cost_factor` (`tiled_cost_factor`: the halos and the extra
pass without gradients).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .recipes import Recipe

PEAK_BYTES_PER_PIXEL = {"fp32": 2500, "bf16": 1600}
# A style image's forward pass without gradients (for its Gram matrices): the image, its preprocessed
# copy and the two largest activations alive at once.
STYLE_BYTES_PER_PIXEL = {"fp32": 600, "bf16": 350}
FIRST_GUESS_SECONDS_PER_PIXEL_ITERATION = {
    ("cpu", "bf16"): 5.5e-6,  # measured on a 2-core Xeon with AMX
    ("cpu", "fp32"): 6.5e-6,  # measured on a 2-core Xeon (5.4–6.9; bench/eta.py, docs/benchmarks.md)
    ("cuda", "bf16"): 6e-9,  # ~1.5 ms at 512² on an H100-class GPU (target, not yet measured)
    ("cuda", "fp32"): 2.5e-8,
    ("mps", "fp32"): 1e-7,
}


@dataclass(frozen=True)
class Estimate:
    seconds: float
    peak_bytes: int


# Shares of an iteration's work per pixel (reference/performance.md, section 2: 1.549 MFLOP per pixel):
# VGG19's forward pass through conv5_1 (0.722); its backward pass to the input costs as much again, the
# weights being frozen; the Gram matrices with their backward pass are the rest (0.104).
FORWARD_SHARE = 0.722 / 1.549
GRAM_SHARE = 0.104 / 1.549


def tiled_cost_factor(input_pixels: int, pixels: int) -> float:
    """Work of a tiled iteration relative to a whole-image one, for tiles of `input_pixels` in all (halos
    included) over an image of `pixels`. Pass 1 runs every tile's input forward without gradients and
    pass 2 forward and backward: the network's work grows with the inputs, once more for the forward
    pass. The Gram terms cover the interiors only, the image once, as in a whole iteration.

    Measured (bench/tiled.py --threads 1, 512×384, fp32 on a 2-core Xeon): 3.04× for 4 tiles of 256 px
    (this gives 2.95×), 6.01× for 12 tiles of 128 px (6.01×). Taking the pass without gradients for a
    third of a forward and backward pass, as before, gave 2.75× and 5.67×."""
    vgg = 1 - GRAM_SHARE
    return input_pixels / pixels * (vgg + FORWARD_SHARE) + GRAM_SHARE


def optimiser_bytes_per_pixel(recipe: Recipe) -> int:
    # L-BFGS keeps `history` pairs of fp32 vectors of 3 values a pixel, plus a few work vectors.
    if recipe.optimizer == "lbfgs":
        return 12 * (2 * recipe.lbfgs_history + 4)
    return 12 * 3  # Adam: two moments and the gradient


def peak_bytes(height: int, width: int, precision: str, recipe: Recipe) -> int:
    return height * width * (PEAK_BYTES_PER_PIXEL[precision] + optimiser_bytes_per_pixel(recipe))


def full_bytes_per_pixel(recipe: Recipe) -> int:
    """Image-sized buffers of a tiled scale, per pixel: image, gradient buffer, the content at this
    scale and at the working size, the previous scale's result resized (fp32 RGB each), the content
    features (a stride-8 layer of 512 channels: 8 fp32 values a pixel, per content layer) and the
    optimiser's state."""
    return 12 * 5 + 32 * len(recipe.content_layers) + optimiser_bytes_per_pixel(recipe)


def tiled_peak_bytes(height: int, width: int, tile_input_pixels: int, precision: str, recipe: Recipe) -> int:
    return tile_input_pixels * PEAK_BYTES_PER_PIXEL[precision] + height * width * full_bytes_per_pixel(recipe)


def largest_tile(
    memory_bytes: int, height: int, width: int, halo: int, align: int, precision: str, recipe: Recipe
) -> int:
    """The largest tile interior side (a multiple of `align`) whose tiled scale fits `memory_bytes`;
    `align` where none does (the estimate then says by how much it does not)."""
    spare = memory_bytes - height * width * full_bytes_per_pixel(recipe)
    side = int(math.sqrt(max(spare, 0) / PEAK_BYTES_PER_PIXEL[precision])) - 2 * halo
    return max(align, side // align * align)


def largest_long_side(memory_bytes: int, height: int, width: int, precision: str, recipe: Recipe) -> int:
    """The longest working side, for a picture of this shape, whose optimisation fits `memory_bytes`."""
    pixels = memory_bytes / peak_bytes(1, 1, precision, recipe)
    return int(math.sqrt(pixels * max(height, width) / min(height, width)))


def estimate(
    scales: list[tuple[tuple[int, int], int]],
    style_sizes: list[tuple[int, int]],
    precision: str,
    recipe: Recipe,
    seconds_per_pixel_iteration: float,
    tiles: list[int | None] | None = None,
    style_tiles: list[int | None] | None = None,
    cost_factors: list[float] | None = None,
) -> Estimate:
    """`scales`: ((height, width), iterations) for each scale of the job; `style_sizes`: each style
    image's (height, width) at the finest scale, where it is largest. For tiled scales, `tiles` gives
    the pixels of the largest tile input of each scale (None: whole), `cost_factors` each scale's work
    per iteration relative to a whole-image one, and `style_tiles` the pixels of the largest tile input
    of each style image's pass (None: whole)."""
    tiles = tiles or [None] * len(scales)
    cost_factors = cost_factors or [1.0] * len(scales)
    style_tiles = style_tiles or [None] * len(style_sizes)
    pixel_iterations = sum(
        h * w * iterations * factor for ((h, w), iterations), factor in zip(scales, cost_factors, strict=True)
    )
    optimisation = max(
        peak_bytes(h, w, precision, recipe)
        if tile is None
        else tiled_peak_bytes(h, w, tile, precision, recipe)
        for ((h, w), _), tile in zip(scales, tiles, strict=True)
    )
    style_pass = max(
        (
            (h * w if tile is None else tile) * STYLE_BYTES_PER_PIXEL[precision]
            for (h, w), tile in zip(style_sizes, style_tiles, strict=True)
        ),
        default=0,
    )
    # The style passes run before each scale's optimisation, with only the content's targets alive.
    return Estimate(pixel_iterations * seconds_per_pixel_iteration, max(optimisation, style_pass))
