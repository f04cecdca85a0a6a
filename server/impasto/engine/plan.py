"""What a job will do, decided before it starts: its scales, their tiles, each one's time and memory.

A scale runs whole where its optimisation fits the memory budget. Otherwise it runs in tiles
(engine/tiled.py), the largest whose working set fits beside the picture-sized state the scale keeps
on the device; next to a GPU the bulk of that state lives in host memory (`state_on_host`). A tile is
never smaller than `estimate.smallest_tile`, below which its halo would be most of its work: where even
that does not fit, the job is refused before anything runs (`DoesNotFit`), naming the smallest budget
and the largest working size that would do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .estimate import (
    MAX_TILED_COST,
    PEAK_BYTES_PER_PIXEL,
    STYLE_BYTES_PER_PIXEL,
    CostModel,
    Estimate,
    history_traffic_bytes_per_pixel,
    peak_bytes,
    smallest_tile,
    state_bytes_per_pixel,
    tiled_cost_factor,
)
from .imageops import fit_long_side
from .recipes import Recipe
from .tiled import alignment, receptive_halo, tile_inputs
from .vgg import layer_names

if TYPE_CHECKING:
    from .stylize import Options


class DoesNotFit(Exception):
    """The job cannot run within its memory budget in tiles worth running. `needed_bytes`: the smallest
    budget that runs it; `largest_side`: the longest working side that runs within this budget (None:
    none does)."""

    def __init__(self, message: str, needed_bytes: int, budget_bytes: int, largest_side: int | None):
        super().__init__(message)
        self.needed_bytes, self.budget_bytes, self.largest_side = needed_bytes, budget_bytes, largest_side


# A scale's set-up (its targets' passes and the first pass on new shapes) costs about one of its iterations
# (0.9–1.4 measured: docs/benchmarks.md, "Time left"): a tenth of a coarse scale of few iterations.
SETUP_ITERATIONS = 1


@dataclass(frozen=True)
class Scale:
    size: tuple[int, int]  # (height, width)
    iterations: int
    tile: int | None = None  # interior side of its tiles in px; None: the whole image at once
    tiles: int = 0
    # Work per iteration relative to a whole-image iteration of this size (tiles' halos, two passes, and
    # the time the state in host memory takes to reach the device, if it does).
    cost_factor: float = 1.0
    seconds: float = 0.0  # planned time of its set-up and its iterations
    device_bytes: int = 0  # planned peak device memory: its optimisation, or its style passes if more
    # A tiled scale may keep L-BFGS's history and the content's features in host memory, `host_bytes`.
    state_on_host: bool = False
    host_bytes: int = 0

    @property
    def work(self) -> tuple[float, float]:
        """Its set-up's and iterations' work in a CostModel's terms: (passes of the network,
        pixel-iterations). Each tile runs through the network twice an iteration (engine/tiled.py)."""
        runs = self.iterations + SETUP_ITERATIONS
        passes = 1 if self.tile is None else 2 * self.tiles
        return runs * passes, runs * self.size[0] * self.size[1] * self.cost_factor

    @property
    def iteration_seconds(self) -> float:
        """The planned time of one of its iterations (its set-up takes SETUP_ITERATIONS of them)."""
        return self.seconds / (self.iterations + SETUP_ITERATIONS)


@dataclass(frozen=True)
class Plan:
    """What a job will do, decided once before it starts: its scales and what they will cost."""

    scales: list[Scale]
    estimate: Estimate
    # Where the whole job ends: the working size, which the content is brought to first. A preview
    # (Options.preview) stops at its first scale, as the whole job passes it.
    final_size: tuple[int, int]
    memory_budget: int | None = None  # what the plan was made to fit

    @property
    def working_size(self) -> tuple[int, int]:
        return self.scales[-1].size

    @property
    def total_iterations(self) -> int:
        return sum(scale.iterations for scale in self.scales)


def scale_sizes(height: int, width: int, long_side: int, recipe: Recipe) -> list[tuple[int, int]]:
    """Working sizes from coarse to fine, ending at `long_side`: evenly spaced steps of at most √2 from a
    first scale of `recipe.min_pixels`, so that it (the job's preview) costs the same at any size."""
    smallest = math.sqrt(recipe.min_pixels * max(height, width) / min(height, width))  # its long side
    if not recipe.coarse_to_fine or long_side < smallest * 1.01:
        return [fit_long_side(height, width, long_side)]
    steps = math.ceil(math.log(long_side / smallest) / math.log(math.sqrt(2)) - 1e-9)
    ratio = (long_side / smallest) ** (1 / steps)
    sides = [round(long_side / ratio**k) for k in range(steps + 1)]
    return [fit_long_side(height, width, side) for side in reversed(sides)]


def schedule(height: int, width: int, options: Options) -> list[Scale]:
    """The scales a job runs, coarse to fine, and the iterations each gets.

    The last scale, at the working size, runs `options.iterations`. Each coarser one runs the recipe's
    share of that: it only has to lay out the large shapes that the next scale refines, and the
    finest scale costs as much as all coarser ones together (docs/benchmarks.md, time to quality).
    """
    recipe = options.recipe
    long_side = max(height, width) if options.size == "full" else options.size
    sizes = scale_sizes(height, width, long_side, recipe)
    coarse = max(1, round(options.iterations * recipe.coarse_iterations))
    first = max(1, round(options.iterations * recipe.first_scale_iterations))
    scales = [Scale(size, coarse) for size in sizes[:-1]] + [Scale(sizes[-1], options.iterations)]
    if len(scales) > 1:
        scales[0] = replace(scales[0], iterations=first)
    return scales


def beginning(scales: list[Scale], options: Options) -> list[Scale]:
    """The scales a job runs: all of them, or for its preview the first."""
    return scales[:1] if options.preview else scales


def geometry(options: Options) -> tuple[int, int]:
    """The tiles' alignment and their halo (rounded up to it), for the layers up to the deepest tap."""
    names = layer_names()
    names = names[: max(names.index(k) for k in options.recipe.layers) + 1]
    align = alignment(names)
    halo = receptive_halo(names) if options.tile_halo is None else options.tile_halo
    return align, max(align, math.ceil(halo / align) * align)


def style_tile(size: tuple[int, int], options: Options, budget: int | None, precision: str) -> int | None:
    """Interior side of the tiles of a style image's Gram pass at `size`; None: whole."""
    h, w = size
    if budget is None or h * w * STYLE_BYTES_PER_PIXEL[precision] <= budget:
        return None
    align, halo = geometry(options)
    side = int(math.sqrt(budget / STYLE_BYTES_PER_PIXEL[precision])) - 2 * halo
    return max(align, side // align * align)


@dataclass(frozen=True)
class Planner:
    """Plans jobs for one engine: its precision and speed, whether a tiled scale may keep its state in
    host memory, and how fast that memory reaches the device (None: it is the device's own)."""

    precision: str
    cost: CostModel
    state_on_host: bool
    host_link_bytes_per_second: float | None = None

    def plan(
        self,
        content_size: tuple[int, int],
        style_sizes: Sequence[tuple[int, int]],
        options: Options,
        budget: int,
    ) -> Plan:
        """The job's plan within `budget` bytes of device memory (see Engine.plan)."""
        if options.tile_size is None and self._smallest_budget(content_size, options) > budget:
            raise self._refusal(content_size, options, budget)
        whole = schedule(*content_size, options)
        scales = [
            self._with_styles(self._tiling(scale, options, budget), style_sizes, options, budget)
            for scale in beginning(whole, options)
        ]
        estimate = Estimate(
            sum(scale.seconds for scale in scales),
            max(scale.device_bytes for scale in scales),
            max(scale.host_bytes for scale in scales),
        )
        return Plan(scales, estimate, whole[-1].size, budget)

    def _tiling(self, scale: Scale, options: Options, budget: int) -> Scale:
        """`scale` whole where it fits, else in tiles: the fastest of its state's places that fit,
        each with the largest tiles that fit beside it."""
        h, w = scale.size
        if options.tile_size is not None:
            if max(h, w) <= options.tile_size:
                return self._costed(scale, None, False, options)
            return self._costed(scale, options.tile_size, self.state_on_host, options)
        if peak_bytes(h, w, self.precision, options.recipe) <= budget:
            return self._costed(scale, None, False, options)
        candidates = [
            self._costed(scale, tile, on_host, options)
            for on_host in {False, self.state_on_host}
            if (tile := self._largest_tile(scale.size, on_host, options, budget)) is not None
        ]
        return min(candidates, key=lambda candidate: (candidate.seconds, candidate.device_bytes))

    def _largest_tile(
        self, size: tuple[int, int], on_host: bool, options: Options, budget: int
    ) -> int | None:
        """The largest tile side that fits the budget beside the state (in steps of the alignment), or
        None where not even the smallest worth running does."""
        align, halo = geometry(options)
        low = smallest_tile(halo, align) // align
        if self._tiled_bytes(size, low * align, on_host, options)[0] > budget:
            return None
        high = max(low, math.ceil(max(size) / align))
        while low < high:  # by bisection: a tile's input only grows with its interior
            middle = (low + high + 1) // 2
            if self._tiled_bytes(size, middle * align, on_host, options)[0] <= budget:
                low = middle
            else:
                high = middle - 1
        return low * align

    def _tiled_bytes(
        self, size: tuple[int, int], tile: int, on_host: bool, options: Options
    ) -> tuple[int, int]:
        """(device, host) bytes of a scale in tiles of `tile`: its largest tile beside its state."""
        align, halo = geometry(options)
        _, largest, _ = tile_inputs(*size, tile, halo, align)
        on_device, in_host = state_bytes_per_pixel(options.recipe, on_host)
        pixels = size[0] * size[1]
        return largest * PEAK_BYTES_PER_PIXEL[self.precision] + pixels * on_device, pixels * in_host

    def _costed(self, scale: Scale, tile: int | None, on_host: bool, options: Options) -> Scale:
        """`scale` in tiles of `tile` (None: whole) with its state on the host or not: its work and
        time, and its optimisation's memory."""
        h, w = scale.size
        if tile is None:
            device = peak_bytes(h, w, self.precision, options.recipe)
            return replace(scale, seconds=self.cost.seconds(*scale.work), device_bytes=device)
        align, halo = geometry(options)
        tiles, _, inputs = tile_inputs(h, w, tile, halo, align)
        factor = tiled_cost_factor(inputs, h * w)
        if on_host and self.host_link_bytes_per_second is not None:
            # The history crosses to the device and back each step, while no tile runs: time counted
            # as work, so that progress and the time left move with it.
            seconds = history_traffic_bytes_per_pixel(options.recipe) / self.host_link_bytes_per_second
            factor += seconds / self.cost.seconds_per_pixel_iteration
        device, host = self._tiled_bytes(scale.size, tile, on_host, options)
        tiled = replace(
            scale,
            tile=tile,
            tiles=tiles,
            cost_factor=factor,
            device_bytes=device,
            host_bytes=host,
            state_on_host=on_host,
        )
        return replace(tiled, seconds=self.cost.seconds(*tiled.work))

    def _with_styles(
        self, scale: Scale, style_sizes: Sequence[tuple[int, int]], options: Options, budget: int
    ) -> Scale:
        """`scale` with its style passes' memory: they run before its optimisation, with only the
        content's targets alive."""
        device = scale.device_bytes
        style_side = round(max(scale.size) * options.style_scale)
        for style in style_sizes:
            size = fit_long_side(*style, style_side)
            side = style_tile(size, options, budget, self.precision)
            if side is None:
                pixels = size[0] * size[1]
            else:
                align, halo = geometry(options)
                pixels = tile_inputs(*size, side, halo, align)[1]
            device = max(device, pixels * STYLE_BYTES_PER_PIXEL[self.precision])
        return replace(scale, device_bytes=device)

    def _smallest_budget(self, content_size: tuple[int, int], options: Options) -> int:
        """The least device memory that runs every scale of the job: each whole or in its smallest
        tiles, whichever needs less."""
        align, halo = geometry(options)
        return max(
            min(
                peak_bytes(*scale.size, self.precision, options.recipe),
                self._tiled_bytes(scale.size, smallest_tile(halo, align), self.state_on_host, options)[0],
            )
            for scale in schedule(*content_size, options)
        )

    def _refusal(self, content_size: tuple[int, int], options: Options, budget: int) -> DoesNotFit:
        needed = self._smallest_budget(content_size, options)
        requested = max(content_size) if options.size == "full" else options.size
        largest = None
        low, high = 16, requested - 1  # the largest working side that fits, by bisection
        while low <= high:
            middle = (low + high) // 2
            if self._smallest_budget(content_size, replace(options, size=middle)) <= budget:
                largest, low = middle, middle + 1
            else:
                high = middle - 1
        align, halo = geometry(options)
        smallest = smallest_tile(halo, align)
        size = fit_long_side(*content_size, requested)
        why = (
            f" (tiles under {smallest} px, with their {halo}-px margins, would make it over "
            f"{MAX_TILED_COST:g}× slower than in one piece)"
            if max(size) > smallest
            else ""
        )
        instead = f"choose a working size of at most {largest} px, or " if largest else ""
        message = (
            f"a {size[1]}×{size[0]} px result needs at least {_mib(needed)} of device memory and the "
            f"memory budget is {_mib(budget, up=False)}{why}; {instead}allow it at least {_mib(needed)}"
        )
        return DoesNotFit(message, needed, budget, largest)


def _mib(size: int, up: bool = True) -> str:
    """Bytes for a person, in MiB or tenths of a GiB; `up`: rounded up, so that a budget this large is
    enough."""
    rounding = math.ceil if up else round
    return f"{rounding(size / 2**30 * 10) / 10} GiB" if size >= 2**30 else f"{rounding(size / 2**20)} MiB"
