"""How long a job will take and how much device memory it needs, before it starts.

Memory per working pixel at the peak of an iteration (activations kept for the backward pass plus
its transients), measured through conv5_1 (docs/benchmarks.md): about 2.5 KB in fp32 and 1.6 KB with
bf16 convolutions, plus the optimiser's state. Time follows a `CostModel`: each iteration's fixed cost
plus its pixels' work: a per-device first guess until a small job measures this machine
(`Engine.measure_pace`), then moved by each job towards what its scales really took.

A tiled scale (engine/tiled.py) needs one tile's working set (its input pixels, halo included, at the
same cost per pixel) beside buffers of the whole image: the image, its gradient, the resized content,
the content's features and the optimiser's state (`state_bytes_per_pixel`; the last two can live in
host memory). Its time is the whole image's times `Scale.cost_factor` (`tiled_cost_factor`: the halos
and the extra pass without gradients), and its tiles are never so small that this exceeds
`MAX_TILED_COST`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .recipes import Recipe

PEAK_BYTES_PER_PIXEL = {"fp32": 2500, "bf16": 1600}
# A style image's forward pass without gradients (for its Gram matrices): the image, its preprocessed
# copy and the two largest activations alive at once.
STYLE_BYTES_PER_PIXEL = {"fp32": 600, "bf16": 350}
# Pinned host memory to a CUDA GPU and back: PCIe 4.0 ×16 moves about 25 GB/s in theory (a first guess,
# not yet measured). A GPU's L-BFGS history in host memory crosses it twice a step.
HOST_LINK_BYTES_PER_SECOND = 20e9


# How far one job moves the cost model to what its own scales fit: by the share seconds / (seconds +
# LEARNING_SECONDS) of its length. A job of a fraction of a second, its time mostly start-up and noise,
# barely moves it (taken whole, such jobs planned the default job up to 85 % long); the default CPU job,
# half a minute, nearly replaces it (bench/pace.py; docs/benchmarks.md, "What a server learns of its pace").
LEARNING_SECONDS = 5.0


@dataclass(frozen=True)
class CostModel:
    """How long a job's iterations take on one engine: a fixed cost for each pass of the network over the
    image or a tile of it (Python, the optimiser's step, oneDNN's weight reorders, launches: most of a
    coarse scale's time) plus a cost for each pixel that the pass runs over."""

    seconds_per_pass: float
    seconds_per_pixel_iteration: float

    def seconds(self, passes: float, pixel_iterations: float) -> float:
        return passes * self.seconds_per_pass + pixel_iterations * self.seconds_per_pixel_iteration

    def learned(self, samples: Sequence[tuple[float, float, float]]) -> CostModel:
        """The model that fits `samples`, each scale's (passes, pixel-iterations, seconds) in a job.

        Least squares on the relative error, so that a coarse scale, where the fixed cost shows, counts
        as much as a fine one. Where the samples cannot tell the two costs apart (one scale, or scales
        of one size) or make either negative, the two keep this model's proportion, scaled to the
        samples' total time."""
        # Minimise Σ (a·u + b·v − 1)², u and v the samples' passes and pixel-iterations over their time.
        u = [passes / seconds for passes, _, seconds in samples if seconds > 0]
        v = [pixels / seconds for _, pixels, seconds in samples if seconds > 0]
        if not u:
            return self
        uu, uv, vv = (
            sum(x * x for x in u),
            sum(x * y for x, y in zip(u, v, strict=True)),
            sum(y * y for y in v),
        )
        determinant = uu * vv - uv * uv
        if determinant > 1e-9 * uu * vv:
            fixed = (vv * sum(u) - uv * sum(v)) / determinant
            per_pixel = (uu * sum(v) - uv * sum(u)) / determinant
            if fixed >= 0 and per_pixel > 0:
                return CostModel(fixed, per_pixel)
        return self.rescaled(samples)

    def rescaled(self, samples: Sequence[tuple[float, float, float]]) -> CostModel:
        """This model's proportion of fixed cost to pixels', at the speed that `samples` (as for `learned`)
        show in all: one number from their total time, steadier than both parts from a few small scales."""
        factor = sum(seconds for *_, seconds in samples) / sum(self.seconds(*work) for *work, _ in samples)
        return CostModel(self.seconds_per_pass * factor, self.seconds_per_pixel_iteration * factor)

    def taught(self, samples: Sequence[tuple[float, float, float]]) -> CostModel:
        """This model moved towards what one job's `samples` fit (`learned`), as far as the job's length
        can tell (LEARNING_SECONDS)."""
        seconds = sum(seconds for *_, seconds in samples)
        share = seconds / (seconds + LEARNING_SECONDS)
        fitted = self.learned(samples)
        return CostModel(
            (1 - share) * self.seconds_per_pass + share * fitted.seconds_per_pass,
            (1 - share) * self.seconds_per_pixel_iteration + share * fitted.seconds_per_pixel_iteration,
        )


FIRST_GUESS_COSTS = {
    # Fitted on a 2-core AMD EPYC with AVX512-BF16 (bench/eta.py --costs, docs/benchmarks.md); a 2-core
    # Xeon measured 5.4–6.9 µs per pixel-iteration in fp32.
    ("cpu", "bf16"): CostModel(0.010, 3.8e-6),
    ("cpu", "fp32"): CostModel(0.016, 7.3e-6),
    # Not yet measured on a GPU: ~1.5 ms at 512² on an H100-class card is the target. The fixed part, a
    # few ms of kernel launches and optimiser steps per pass, matters before it is measured too: a small
    # job of one scale (nearly all fixed cost) teaches the engine its first rate, which a guess with no
    # fixed part would put all on the pixels, and large scales would be planned at many times their time.
    ("cuda", "bf16"): CostModel(0.003, 6e-9),
    ("cuda", "fp32"): CostModel(0.003, 2.5e-8),
    ("mps", "fp32"): CostModel(0.005, 1e-7),
}
# Any other device: some fixed cost for the same reason.
OTHER_DEVICE_COSTS = CostModel(0.005, 1e-6)


@dataclass(frozen=True)
class Estimate:
    seconds: float
    peak_bytes: int  # device memory
    host_bytes: int = 0  # picture-sized state the job keeps in host memory instead


# Shares of an iteration's work per pixel (1.549 MFLOP per pixel, counted layer by layer):
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


# The most a tiled scale may cost per iteration against the whole image: a tile is never smaller than
# the interior that keeps within it (`smallest_tile`), so that a job in tiles takes at most this many
# times its whole-image time. Smaller tiles spend most of their work on their halos, and a budget that
# leaves room only for slivers once planned hours for a job of a minute (docs/benchmarks.md).
MAX_TILED_COST = 4.0


def smallest_tile(halo: int, align: int) -> int:
    """The smallest tile interior side (px, a multiple of `align`) worth running with a halo of `halo`.

    The work of a tile is its input, (interior + 2·halo)². Along a side of n tiles the inputs add up to
    at most the side plus 2·halo·(n − 1), so a scale in tiles of interior t costs at most
    tiled_cost_factor((t + 2·halo)², t²): this is the smallest t for which that is MAX_TILED_COST.
    """
    widest = math.sqrt((MAX_TILED_COST - GRAM_SHARE) / (1 - GRAM_SHARE + FORWARD_SHARE))  # 1 + 2·halo/t
    side = math.ceil(2 * halo / (widest - 1))
    return max(align, math.ceil(side / align) * align)


def optimiser_bytes_per_pixel(
    recipe: Recipe, tiled: bool = False, history_on_host: bool = False
) -> tuple[int, int]:
    """The optimiser's state per pixel: (working vectors on the device, history).

    L-BFGS keeps `history` pairs of vectors of 3 values a pixel (fp32; on a tiled scale in
    `recipe.history_precision`) and a few working vectors: the last gradient and step, the new direction
    and, with the history on the host, the pieces in flight."""
    if recipe.optimizer != "lbfgs":
        return 12 * 3, 0  # Adam: two moments and the gradient
    value_bytes = 2 if tiled and recipe.history_precision == "bf16" else 4
    history = 3 * value_bytes * 2 * recipe.lbfgs_history
    return (12 * 3 if history_on_host else 12 * 4), history


def history_traffic_bytes_per_pixel(recipe: Recipe) -> int:
    """What one L-BFGS step moves per pixel between a history in host memory and the device: each pair
    read twice by the two-loop recursion, the new pair written once."""
    if recipe.optimizer != "lbfgs":
        return 0
    value_bytes = 2 if recipe.history_precision == "bf16" else 4
    return 3 * value_bytes * (4 * recipe.lbfgs_history + 2)


def peak_bytes(height: int, width: int, precision: str, recipe: Recipe) -> int:
    """Device memory of a scale optimised whole."""
    return height * width * (PEAK_BYTES_PER_PIXEL[precision] + sum(optimiser_bytes_per_pixel(recipe)))


def state_bytes_per_pixel(recipe: Recipe, on_host: bool) -> tuple[int, int]:
    """A tiled scale's picture-sized buffers per pixel: (on the device, in host memory).

    On the device always: the image, its gradient, the content at this scale and at the working size
    and the previous scale's result resized (fp32 RGB each), and the optimiser's working vectors. The
    content's features (a stride-8 layer of 512 channels: 8 fp32 values a pixel, per content layer)
    and L-BFGS's history are the bulk: in host memory where `on_host`, else on the device."""
    pictures = 12 * 5
    features = 32 * len(recipe.content_layers)
    work, history = optimiser_bytes_per_pixel(recipe, tiled=True, history_on_host=on_host)
    if on_host:
        return pictures + work, features + history
    return pictures + work + features + history, 0


def largest_long_side(memory_bytes: int, height: int, width: int, precision: str, recipe: Recipe) -> int:
    """The longest working side, for a picture of this shape, whose optimisation fits `memory_bytes`
    whole."""
    pixels = memory_bytes / peak_bytes(1, 1, precision, recipe)
    return int(math.sqrt(pixels * max(height, width) / min(height, width)))
