"""How long a job will take and how much device memory it needs, before it starts.

Memory per working pixel at the peak of an iteration (activations kept for the backward pass plus
its transients), measured through conv5_1 (docs/benchmarks.md; reference/performance.md): about
2.5 KB in fp32 and 1.6 KB with bf16 convolutions, plus the optimiser's state. Time is pixels ×
iterations × a seconds-per-pixel-iteration rate that starts from a per-device guess and is replaced
by what this engine measured on its last jobs.
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
    ("cpu", "fp32"): 1.3e-5,
    ("cuda", "bf16"): 6e-9,  # ~1.5 ms at 512² on an H100-class GPU (target, not yet measured)
    ("cuda", "fp32"): 2.5e-8,
    ("mps", "fp32"): 1e-7,
}


@dataclass(frozen=True)
class Estimate:
    seconds: float
    peak_bytes: int


def optimiser_bytes_per_pixel(recipe: Recipe) -> int:
    # L-BFGS keeps `history` pairs of fp32 vectors of 3 values a pixel, plus a few work vectors.
    if recipe.optimizer == "lbfgs":
        return 12 * (2 * recipe.lbfgs_history + 4)
    return 12 * 3  # Adam: two moments and the gradient


def peak_bytes(height: int, width: int, precision: str, recipe: Recipe) -> int:
    return height * width * (PEAK_BYTES_PER_PIXEL[precision] + optimiser_bytes_per_pixel(recipe))


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
) -> Estimate:
    """`scales`: ((height, width), iterations) for each scale of the job; `style_sizes`: each style
    image's (height, width) at the finest scale, where it is largest."""
    pixel_iterations = sum(h * w * iterations for (h, w), iterations in scales)
    largest = max((size for size, _ in scales), key=lambda s: s[0] * s[1])
    optimisation = peak_bytes(*largest, precision, recipe)
    style_pass = max((h * w * STYLE_BYTES_PER_PIXEL[precision] for h, w in style_sizes), default=0)
    # The style passes run before each scale's optimisation, with only the content's targets alive.
    return Estimate(pixel_iterations * seconds_per_pixel_iteration, max(optimisation, style_pass))
