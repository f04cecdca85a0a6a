"""The optimisation: coarse-to-fine gradient descent on the image itself."""

from __future__ import annotations

import collections
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from .device import free_memory_bytes, pick_precision
from .estimate import FIRST_GUESS_SECONDS_PER_PIXEL_ITERATION
from .gram_cache import GramCache, image_digest
from .imageops import fit_long_side, keep_content_colours, resize
from .lbfgs import LBFGS, History
from .losses import LossParts, Targets, gram, total_loss
from .memory import fix_malloc_mmap_threshold
from .plan import Plan, Planner, Scale, style_tile
from .recipes import DEFAULT, Recipe
from .tiled import TiledScale
from .vgg import VGGFeatures
from .weights import WeightSet

Precision = Literal["auto", "fp32", "bf16"]


class Cancelled(Exception):
    """The caller asked the job to stop."""


@dataclass(frozen=True)
class Style:
    image: torch.Tensor  # (1, 3, H, W), RGB in [0, 1]
    weight: float = 1.0


# A memory budget left to its default keeps this share of the free memory, and at least this much, free.
BUDGET_MARGIN_SHARE = 0.1
BUDGET_MARGIN_BYTES = 256 << 20


@dataclass(frozen=True)
class Options:
    # Working long side in pixels, or "full": the content's own size (coarse to fine up to it, in tiles
    # where a scale does not fit `memory_budget`).
    size: int | Literal["full"] = 384
    iterations: int = 100  # at the working size; coarser scales run recipe.coarse_iterations of this
    strength: float = 1.0  # multiplies the style weight: 0 keeps the content, 2 doubles the style
    style_scale: float = 1.0  # style image long side relative to the working size
    preserve_colors: bool = False
    init: Literal["content", "noise"] | torch.Tensor = "content"
    seed: int = 0
    preview_seconds: float | None = None
    recipe: Recipe = DEFAULT
    # Bytes of device memory a job may use (tensors the engine allocates; not the model's weights).
    # A scale that does not fit is optimised in tiles (engine/tiled.py). None: what the device has free
    # now, less a margin.
    memory_budget: int | None = None
    # Forces tiles of this interior side (px, rounded up to 16) on every scale longer than it.
    tile_size: int | None = None
    # The tiles' halo in px; None: the deepest layer's receptive field (exact). Smaller is faster and
    # approximate (engine/tiled.py states the error).
    tile_halo: int | None = None


@dataclass(frozen=True)
class Progress:
    scale: int  # 1-based
    scales: int
    height: int
    width: int
    iteration: int  # 1-based, within the scale
    iterations: int
    step: int  # 1-based, over the whole job
    steps: int
    content_loss: float
    style_loss: float
    tv_loss: float
    elapsed: float
    eta: float = field(default=math.nan)
    # Share of the job's work done: iterations weighted by their scale's pixels, so that it moves as
    # time does (a fine scale's iteration costs several coarse ones).
    fraction: float = 0.0
    # On a tiled scale: the tile just done (1-based) of `tiles`, reported after each tile's gradient
    # pass and again (tile == tiles) with the iteration; 0 and 0 on a scale optimised whole.
    tile: int = 0
    tiles: int = 0


ProgressCallback = Callable[[Progress], None]
PreviewCallback = Callable[[torch.Tensor, Progress], None]


class Engine:
    """Holds the network for one weight set on one device; runs one job at a time per call.

    `state_on_host`: whether a tiled scale keeps the bulk of its picture-sized state (L-BFGS's history,
    the content's features) in host memory, so that the device's memory goes to its tiles. None: on a
    CUDA GPU, which has memory of its own; elsewhere host and device share one memory, and True only
    exercises that path and counts the budget as a GPU would.
    """

    def __init__(
        self,
        weights: WeightSet,
        device: torch.device,
        precision: Precision = "auto",
        gram_cache: GramCache | None = None,
        state_on_host: bool | None = None,
    ):
        self.weights = weights
        self.device = device
        self.gram_cache = gram_cache
        self.precision = pick_precision(device, precision)
        self.state_on_host = device.type == "cuda" if state_on_host is None else state_on_host
        if device.type == "cuda":
            # Shapes are fixed within a scale, so cuDNN's autotuning pays for itself at once.
            torch.backends.cudnn.benchmark = True
        self._networks: dict[tuple[frozenset[str], str], VGGFeatures] = {}
        self.seconds_per_pixel_iteration = FIRST_GUESS_SECONDS_PER_PIXEL_ITERATION.get(
            (device.type, self.precision), 1e-6
        )
        self._lock = threading.Lock()

    def network(self, recipe: Recipe) -> VGGFeatures:
        key = (frozenset(recipe.layers), recipe.pooling)
        with self._lock:
            if key not in self._networks:
                net = VGGFeatures(self.weights, recipe.layers, recipe.pooling)
                dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
                self._networks[key] = net.to(self.device, dtype, memory_format=torch.channels_last)
            return self._networks[key]

    def warm_up(self, recipe: Recipe = DEFAULT) -> None:
        """Loads the network and runs one small pass, so that a first job does not pay the set-up."""
        image = torch.rand(1, 3, 64, 64, device=self.device, requires_grad=True)
        features = self.features(self.network(recipe), image)
        sum(f.float().mean() for f in features.values()).backward()
        torch.optim.Adam([image])  # PyTorch's first optimiser imports torch._dynamo: seconds

    def plan(
        self, content_size: tuple[int, int], style_sizes: Sequence[tuple[int, int]], options: Options
    ) -> Plan:
        """The scales of a job on a content of `content_size` (height, width), with each one's tiles,
        time and peak device memory (the style images' passes at their scaled sizes included), and the
        host memory a tiled scale's state takes instead. Raises DoesNotFit, at once, for a job that
        cannot run within its memory budget in tiles worth running."""
        planner = Planner(self.precision, self.seconds_per_pixel_iteration, self.state_on_host)
        return planner.plan(content_size, style_sizes, options, self.memory_budget(options))

    def memory_budget(self, options: Options) -> int:
        if options.memory_budget is not None:
            return options.memory_budget
        free = free_memory_bytes(self.device)
        return max(0, free - max(int(free * BUDGET_MARGIN_SHARE), BUDGET_MARGIN_BYTES))

    def tiled_scale(
        self, net: VGGFeatures, size: tuple[int, int], tile: int, options: Options, optimised: bool = False
    ) -> TiledScale:
        """Tiles of a picture; `optimised`: of the one the job optimises, whose state may go to the host."""
        return TiledScale(
            lambda image: self.features(net, image),
            net.names,
            size,
            tile,
            options.tile_halo,
            self.gram_matmuls,
            torch.device("cpu") if optimised and self.state_on_host else None,
        )

    def features(self, net: VGGFeatures, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return net(image.contiguous(memory_format=torch.channels_last))

    @contextlib.contextmanager
    def gram_matmuls(self) -> Iterator[None]:
        """Lets float32 matmuls run on bf16 (CPU) or TF32 (CUDA) units while Grams are formed.

        With a bf16 network the features are bf16 values, so those units multiply them exactly and
        accumulate in float32: the Gram is as exact as in plain float32, at a third of the CPU cost.
        Only the gradient through the Gram, which flows into bf16 layers anyway, is rounded.
        """
        backend = {"cpu": torch.backends.mkldnn, "cuda": torch.backends.cuda}.get(self.device.type)
        if self.precision != "bf16" or backend is None:
            yield
            return
        before = backend.matmul.fp32_precision
        backend.matmul.fp32_precision = "bf16" if self.device.type == "cpu" else "tf32"
        try:
            yield
        finally:
            backend.matmul.fp32_precision = before

    def stylize(
        self,
        content: torch.Tensor,
        styles: Sequence[Style],
        options: Options = Options(),
        *,
        on_progress: ProgressCallback | None = None,
        on_preview: PreviewCallback | None = None,
        cancel: threading.Event | None = None,
        plan: Plan | None = None,
    ) -> torch.Tensor:
        """Returns the stylised image at the working size, RGB in [0, 1], on the CPU.

        `plan` is what `self.plan` made for this content, styles and options (made here if not given).
        """
        if content.ndim != 4 or content.shape[:2] != (1, 3):
            raise ValueError(f"content must be a (1, 3, H, W) tensor, got {tuple(content.shape)}")
        check_options(options, styles)
        recipe = options.recipe
        net = self.network(recipe)
        if plan is None:
            plan = self.plan(tuple(content.shape[2:]), [tuple(s.image.shape[2:]) for s in styles], options)
        scales = plan.scales
        if self.device.type == "cpu" and any(scale.tile is not None for scale in scales):
            # Tiles churn large blocks that glibc's heap would keep: the process's memory would outgrow
            # the budget (engine/memory.py has the measurements, and why not always).
            fix_malloc_mmap_threshold()
        # Every later resize starts from the working size, not from a layer of many megapixels.
        content = resize(content.to(self.device, torch.float32), scales[-1].size)
        run = _Run(self, net, content, styles, options, plan, on_progress, on_preview, cancel)
        image = run.initial_image(scales[0].size)
        for index, scale in enumerate(scales):
            image = run.optimise_scale(index, resize(image, scale.size))
        # What this device really did replaces the first guess used for the next estimate.
        self.seconds_per_pixel_iteration = (time.monotonic() - run.start) / run.cost_total
        if options.preserve_colors:
            image = keep_content_colours(image, content)
        return image.detach().clamp(0, 1).cpu()


def check_options(options: Options, styles: Sequence[Style]) -> None:
    """Raises ValueError naming the first absurd option; cheap, so callers can check before queueing."""
    if not styles:
        raise ValueError("at least one style image is needed")
    if isinstance(options.size, str) and options.size != "full":
        raise ValueError(f"size must be a number of pixels or 'full', got {options.size!r}")
    size = 16 if options.size == "full" else options.size  # "full": checked against the content later
    numbers = {
        "size": size,
        "iterations": options.iterations,
        "strength": options.strength,
        "style_scale": options.style_scale,
    } | {f"style weight {i + 1}": s.weight for i, s in enumerate(styles)}
    for name, value in numbers.items():
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number ≥ 0, got {value}")
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {options.size}")
    if sum(s.weight for s in styles) <= 0:
        raise ValueError("the style weights add up to 0; give at least one style a positive weight")
    if options.iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {options.iterations}")
    if options.preview_seconds is not None and not options.preview_seconds >= 0:
        raise ValueError(f"preview_seconds must be ≥ 0, got {options.preview_seconds}")
    if not 0.01 <= options.style_scale <= 8:
        raise ValueError(f"style_scale must be between 0.01 and 8, got {options.style_scale}")
    if options.memory_budget is not None and options.memory_budget <= 0:
        raise ValueError(f"memory_budget must be a number of bytes > 0, got {options.memory_budget}")
    if options.tile_size is not None and options.tile_size < 16:
        raise ValueError(f"tile_size must be at least 16 px, got {options.tile_size}")
    if options.tile_halo is not None and options.tile_halo < 0:
        raise ValueError(f"tile_halo must be ≥ 0 px, got {options.tile_halo}")


class _Run:
    """One job's state across scales: targets, timing, callbacks."""

    def __init__(self, engine, net, content, styles, options, plan, on_progress, on_preview, cancel):
        self.engine, self.net, self.content, self.styles = engine, net, content, styles
        self.options, self.recipe, self.scales, self.plan = options, options.recipe, plan.scales, plan
        scales = plan.scales
        self.on_progress, self.on_preview, self.cancel = on_progress, on_preview, cancel
        self.start = time.monotonic()
        self.last_preview = -math.inf
        self.steps_done = 0
        # An iteration costs about its scale's pixel count (times the tiles' overhead); used for the
        # time-left estimate.
        self.cost_total = sum(s.size[0] * s.size[1] * s.iterations * s.cost_factor for s in scales)
        self.cost_done = 0.0
        self.steps = sum(s.iterations for s in scales)
        self.losses = _LossReadout(engine.device)
        cache = engine.gram_cache
        self.style_digests = [image_digest(s.image) if cache is not None else None for s in styles]

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled()

    def initial_image(self, size: tuple[int, int]) -> torch.Tensor:
        init = self.options.init
        if isinstance(init, torch.Tensor):
            return resize(init.to(self.engine.device, torch.float32), size)
        if init == "noise":
            generator = torch.Generator().manual_seed(self.options.seed)
            noise = torch.rand((1, 3, *size), generator=generator)
            return noise.to(self.engine.device)
        return resize(self.content, size)

    def targets(self, scale: Scale, tiles: TiledScale | None = None) -> Targets:
        """The scale's targets; a tiled scale (`tiles`) takes its content features tile by tile."""
        recipe, size = self.recipe, scale.size
        with torch.no_grad():
            if tiles is None:
                content = {
                    k: v.float()
                    for k, v in self.engine.features(self.net, resize(self.content, size)).items()
                    if k in recipe.content_layers
                }
            else:
                content = tiles.feature_maps(resize(self.content, size), list(recipe.content_layers))
            total_weight = sum(s.weight for s in self.styles)
            grams = {k: 0.0 for k in recipe.style_layers}
            for style, digest in zip(self.styles, self.style_digests, strict=True):
                self.check_cancel()  # each style's forward pass may take seconds
                style_size = fit_long_side(
                    *style.image.shape[2:], round(max(size) * self.options.style_scale)
                )
                style_grams = self.style_grams(style, digest, style_size)
                for k in grams:
                    # A weighted mean of Grams: its MSE differs from the weighted sum of per-style MSEs
                    # only by a constant, at a fraction of the cost.
                    grams[k] = grams[k] + style_grams[k] * (style.weight / total_weight)
        style_weight = recipe.style_weight * self.options.strength
        content_weights = {k: recipe.content_weight * w for k, w in recipe.content_layers.items()}
        style_weights = {k: style_weight * w for k, w in recipe.style_layers.items()}
        if recipe.normalize_by_target:
            content_weights = {k: w / _mean_square(content[k]) for k, w in content_weights.items()}
            style_weights = {k: w / _mean_square(grams[k]) for k, w in style_weights.items()}
        return Targets(content, content_weights, grams, style_weights, recipe.tv_weight)

    def style_grams(self, style: Style, digest: str | None, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        cache, engine, recipe = self.engine.gram_cache, self.engine, self.recipe
        key = None
        if cache is not None:
            layers = sorted(recipe.style_layers)
            key = cache.key(digest, engine.weights.name, recipe.pooling, layers, size, engine.precision)
            cached = cache.get(key)
            if cached is not None:
                return {k: g.to(engine.device) for k, g in cached.items()}
        image = resize(style.image.to(engine.device, torch.float32), size)
        tile = style_tile(size, self.options, self.plan.memory_budget, engine.precision)
        with engine.gram_matmuls():
            if tile is None:
                features = engine.features(self.net, image)
                grams = {k: gram(features[k]) for k in recipe.style_layers}
            else:
                tiles = engine.tiled_scale(self.net, size, tile, self.options)
                grams = tiles.grams(image, list(recipe.style_layers))
        if key is not None:
            cache.put(key, grams)
        return grams

    def optimise_scale(self, index: int, image: torch.Tensor) -> torch.Tensor:
        scale = self.scales[index]
        tiles = (
            None
            if scale.tile is None
            else self.engine.tiled_scale(self.net, scale.size, scale.tile, self.options, optimised=True)
        )
        targets = self.targets(scale, tiles)
        image = image.detach().clone().contiguous().requires_grad_(True)
        optimizer = _make_optimizer(self.recipe, image, tiles is not None and self.engine.state_on_host)
        parts: list[LossParts] = []
        iteration = 0

        def closure() -> torch.Tensor:
            image.grad = None
            if tiles is not None:

                def on_tile(tile: int, count: int, loss_parts: LossParts) -> None:
                    if tile < count:
                        self._report(index, image, iteration, loss_parts, (tile, count))

                loss_parts, image.grad = tiles.loss_and_gradient(image, targets, on_tile, self.check_cancel)
                parts.append(loss_parts)
                return loss_parts.total
            with self.engine.gram_matmuls():
                loss_parts = total_loss(image, self.engine.features(self.net, image), targets)
                loss_parts.total.backward()
            parts.append(loss_parts)
            return loss_parts.total

        for iteration in range(1, self.scales[index].iterations + 1):
            self.check_cancel()
            parts.clear()
            if isinstance(optimizer, LBFGS):
                optimizer.step(closure)
            else:
                closure()
                optimizer.step()
                with torch.no_grad():
                    image.clamp_(0, 1)
            tiles_done = (scale.tiles, scale.tiles)
            self._report(index, image, iteration, parts[-1], tiles_done if tiles is not None else None)
        return image.detach().clamp(0, 1)

    def _report(
        self,
        index: int,
        image: torch.Tensor,
        iteration: int,
        parts: LossParts,
        tile: tuple[int, int] | None = None,
    ) -> None:
        """Reports an iteration done, or with `tile` = (done, of) below the count, a tile of one."""
        scale = self.scales[index]
        h, w = image.shape[2:]
        within = tile is not None and tile[0] < tile[1]
        if within:
            # Mid-iteration: the step under way, its share of work done so far; no preview.
            cost_done = self.cost_done + h * w * scale.cost_factor * tile[0] / tile[1]
        else:
            self.steps_done += 1
            self.cost_done += h * w * scale.cost_factor
            cost_done = self.cost_done
        if self.steps_done == self.steps:
            cost_done = self.cost_total  # exactly 1 at the end, whatever the float sums of tiled costs
        elapsed = time.monotonic() - self.start
        eta = self._time_left(elapsed, cost_done)
        content_loss, style_loss, tv_loss = self.losses.read(parts)
        progress = Progress(
            scale=index + 1,
            scales=len(self.scales),
            height=h,
            width=w,
            iteration=iteration,
            iterations=self.scales[index].iterations,
            step=self.steps_done + within,
            steps=self.steps,
            content_loss=content_loss,
            style_loss=style_loss,
            tv_loss=tv_loss,
            elapsed=elapsed,
            eta=eta,
            fraction=cost_done / self.cost_total,
            tile=tile[0] if tile else 0,
            tiles=tile[1] if tile else 0,
        )
        if self.on_progress is not None:
            self.on_progress(progress)
        if within:
            return
        preview_due = self.options.preview_seconds is not None and (
            elapsed - self.last_preview >= self.options.preview_seconds or progress.step == progress.steps
        )
        if self.on_preview is not None and preview_due:
            self.last_preview = elapsed
            preview = image.detach().clamp(0, 1)
            if self.options.preserve_colors:
                preview = keep_content_colours(preview, self.content)
            self.on_preview(preview.cpu(), progress)

    def _time_left(self, elapsed: float, cost_done: float) -> float:
        """The plan's estimate at first, handing over to the rate this job shows as its work gets done.

        The rate alone is wild in the first seconds: the elapsed time then holds the targets' forward
        passes and the first iteration's set-up, so after one iteration of a 40-second CPU job it said
        2:11 (docs/benchmarks.md). The plan's rate was learned from the last job on this device.
        """
        observed = elapsed * (self.cost_total - cost_done) / cost_done
        planned = max(0.0, self.plan.estimate.seconds - elapsed)
        trust = min(1.0, cost_done / (TRUST_OBSERVED_AFTER * self.cost_total))
        if not math.isfinite(planned):
            trust = 1.0
        return max(0.0, trust * observed + (1 - trust) * planned)


# Share of a job's work after which its time left is its own rate alone (before: blended with the plan).
TRUST_OBSERVED_AFTER = 0.1


class _LossReadout:
    """The loss values for progress reports, read without making a GPU wait for the host.

    On CUDA each iteration's values are copied to pinned host memory asynchronously and reported
    once the copy has landed, an iteration or two late; reading them at once would stall the GPU
    every iteration. Elsewhere they are read at once.
    """

    def __init__(self, device: torch.device):
        self.asynchronous = device.type == "cuda"
        self.in_flight: collections.deque[tuple[torch.cuda.Event, torch.Tensor]] = collections.deque()
        self.latest = (math.nan, math.nan, math.nan)

    def read(self, parts: LossParts) -> tuple[float, float, float]:
        values = torch.stack([parts.content, parts.style, parts.tv]).detach()
        if not self.asynchronous:
            return tuple(values.tolist())
        host = torch.empty(3, pin_memory=True)
        host.copy_(values, non_blocking=True)
        landed = torch.cuda.Event()
        landed.record()
        self.in_flight.append((landed, host))
        while self.in_flight and self.in_flight[0][0].query():
            self.latest = tuple(self.in_flight.popleft()[1].tolist())
        return self.latest


def _mean_square(tensor: torch.Tensor) -> float:
    return max(float(torch.square(tensor).mean()), 1e-12)


def _make_optimizer(recipe: Recipe, image: torch.Tensor, history_on_host: bool) -> LBFGS | torch.optim.Adam:
    if recipe.optimizer == "lbfgs":
        dtype = torch.bfloat16 if history_on_host and recipe.history_precision == "bf16" else None
        history = History(recipe.lbfgs_history, image.device, history_on_host, dtype)
        # One function evaluation per iteration, so progress and cancel keep their rhythm.
        return LBFGS(image, recipe.learning_rate, history)
    return torch.optim.Adam([image], lr=recipe.learning_rate)
