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

from .device import pick_precision
from .estimate import FIRST_GUESS_SECONDS_PER_PIXEL_ITERATION, Estimate, estimate
from .gram_cache import GramCache, image_digest
from .imageops import fit_long_side, keep_content_colours, resize
from .lbfgs import LBFGS
from .losses import LossParts, Targets, gram, total_loss
from .recipes import DEFAULT, Recipe
from .vgg import VGGFeatures
from .weights import WeightSet

Precision = Literal["auto", "fp32", "bf16"]


class Cancelled(Exception):
    """The caller asked the job to stop."""


@dataclass(frozen=True)
class Style:
    image: torch.Tensor  # (1, 3, H, W), RGB in [0, 1]
    weight: float = 1.0


@dataclass(frozen=True)
class Options:
    size: int = 384  # working long side in pixels
    iterations: int = 100  # at the working size; coarser scales run recipe.coarse_iterations of this
    strength: float = 1.0  # multiplies the style weight: 0 keeps the content, 2 doubles the style
    style_scale: float = 1.0  # style image long side relative to the working size
    preserve_colors: bool = False
    init: Literal["content", "noise"] | torch.Tensor = "content"
    seed: int = 0
    preview_seconds: float | None = None
    recipe: Recipe = DEFAULT


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


ProgressCallback = Callable[[Progress], None]
PreviewCallback = Callable[[torch.Tensor, Progress], None]


def scale_sizes(height: int, width: int, long_side: int, recipe: Recipe) -> list[tuple[int, int]]:
    """Working sizes from coarse to fine, about √2 apart, ending at `long_side`."""
    sides = [long_side]
    while recipe.coarse_to_fine and sides[-1] / math.sqrt(2) >= recipe.min_scale:
        sides.append(round(sides[-1] / math.sqrt(2)))
    return [fit_long_side(height, width, side) for side in reversed(sides)]


@dataclass(frozen=True)
class Scale:
    size: tuple[int, int]  # (height, width)
    iterations: int


@dataclass(frozen=True)
class Plan:
    """What a job will do, decided once before it starts: its scales and what they will cost."""

    scales: list[Scale]
    estimate: Estimate

    @property
    def working_size(self) -> tuple[int, int]:
        return self.scales[-1].size

    @property
    def total_iterations(self) -> int:
        return sum(scale.iterations for scale in self.scales)


def schedule(height: int, width: int, options: Options) -> list[Scale]:
    """The scales a job runs, coarse to fine, and the iterations each gets.

    The last scale, at the working size, runs `options.iterations`. Each coarser one runs the recipe's
    share of that: it only has to lay out the large shapes that the next scale refines, and the
    finest scale costs as much as all coarser ones together (docs/benchmarks.md, time to quality).
    """
    recipe = options.recipe
    sizes = scale_sizes(height, width, options.size, recipe)
    coarse = max(1, round(options.iterations * recipe.coarse_iterations))
    return [Scale(size, coarse) for size in sizes[:-1]] + [Scale(sizes[-1], options.iterations)]


class Engine:
    """Holds the network for one weight set on one device; runs one job at a time per call."""

    def __init__(
        self,
        weights: WeightSet,
        device: torch.device,
        precision: Precision = "auto",
        gram_cache: GramCache | None = None,
    ):
        self.weights = weights
        self.device = device
        self.gram_cache = gram_cache
        self.precision = pick_precision(device, precision)
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
        """The scales of a job on a content of `content_size` (height, width), and its time and peak
        device memory, the style images' forward passes at their scaled sizes included."""
        scales = schedule(*content_size, options)
        largest_side = round(max(scales[-1].size) * options.style_scale)
        styles_scaled = [fit_long_side(*size, largest_side) for size in style_sizes]
        cost = estimate(
            [(scale.size, scale.iterations) for scale in scales],
            styles_scaled,
            self.precision,
            options.recipe,
            self.seconds_per_pixel_iteration,
        )
        return Plan(scales, cost)

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
        # Every later resize starts from the working size, not from a layer of many megapixels.
        content = resize(content.to(self.device, torch.float32), scales[-1].size)
        run = _Run(self, net, content, styles, options, scales, on_progress, on_preview, cancel)
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
    numbers = {
        "size": options.size,
        "iterations": options.iterations,
        "strength": options.strength,
        "style_scale": options.style_scale,
    } | {f"style weight {i + 1}": s.weight for i, s in enumerate(styles)}
    for name, value in numbers.items():
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number ≥ 0, got {value}")
    if options.size < 16:
        raise ValueError(f"size must be at least 16 px, got {options.size}")
    if sum(s.weight for s in styles) <= 0:
        raise ValueError("the style weights add up to 0; give at least one style a positive weight")
    if options.iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {options.iterations}")
    if options.preview_seconds is not None and not options.preview_seconds >= 0:
        raise ValueError(f"preview_seconds must be ≥ 0, got {options.preview_seconds}")
    if not 0.01 <= options.style_scale <= 8:
        raise ValueError(f"style_scale must be between 0.01 and 8, got {options.style_scale}")


class _Run:
    """One job's state across scales: targets, timing, callbacks."""

    def __init__(self, engine, net, content, styles, options, scales, on_progress, on_preview, cancel):
        self.engine, self.net, self.content, self.styles = engine, net, content, styles
        self.options, self.recipe, self.scales = options, options.recipe, scales
        self.on_progress, self.on_preview, self.cancel = on_progress, on_preview, cancel
        self.start = time.monotonic()
        self.last_preview = -math.inf
        self.steps_done = 0
        # An iteration costs about its scale's pixel count; used for the time-left estimate.
        self.cost_total = sum(s.size[0] * s.size[1] * s.iterations for s in scales)
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

    def targets(self, size: tuple[int, int]) -> Targets:
        recipe = self.recipe
        with torch.no_grad():
            content = {
                k: v.float()
                for k, v in self.engine.features(self.net, resize(self.content, size)).items()
                if k in recipe.content_layers
            }
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
        with engine.gram_matmuls():
            features = engine.features(self.net, image)
            grams = {k: gram(features[k]) for k in recipe.style_layers}
        if key is not None:
            cache.put(key, grams)
        return grams

    def optimise_scale(self, index: int, image: torch.Tensor) -> torch.Tensor:
        targets = self.targets(tuple(image.shape[2:]))
        image = image.detach().clone().contiguous().requires_grad_(True)
        optimizer = _make_optimizer(self.recipe, image)
        parts: list[LossParts] = []

        def closure() -> torch.Tensor:
            image.grad = None
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
            self._report(index, image, iteration, parts[-1])
        return image.detach().clamp(0, 1)

    def _report(self, index: int, image: torch.Tensor, iteration: int, parts: LossParts) -> None:
        self.steps_done += 1
        h, w = image.shape[2:]
        self.cost_done += h * w
        elapsed = time.monotonic() - self.start
        eta = elapsed * (self.cost_total - self.cost_done) / self.cost_done
        content_loss, style_loss, tv_loss = self.losses.read(parts)
        progress = Progress(
            scale=index + 1,
            scales=len(self.scales),
            height=h,
            width=w,
            iteration=iteration,
            iterations=self.scales[index].iterations,
            step=self.steps_done,
            steps=self.steps,
            content_loss=content_loss,
            style_loss=style_loss,
            tv_loss=tv_loss,
            elapsed=elapsed,
            eta=eta,
            fraction=self.cost_done / self.cost_total,
        )
        if self.on_progress is not None:
            self.on_progress(progress)
        preview_due = self.options.preview_seconds is not None and (
            elapsed - self.last_preview >= self.options.preview_seconds or progress.step == progress.steps
        )
        if self.on_preview is not None and preview_due:
            self.last_preview = elapsed
            preview = image.detach().clamp(0, 1)
            if self.options.preserve_colors:
                preview = keep_content_colours(preview, self.content)
            self.on_preview(preview.cpu(), progress)


class _LossReadout:
    """The loss values for progress reports, read without making a GPU wait for the host.

    On CUDA each iteration's values are copied to pinned host memory asynchronously and reported
    once the copy has landed, an iteration or two late; reading them at once would stall the GPU
    every iteration (reference/performance.md). Elsewhere they are read at once.
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


def _make_optimizer(recipe: Recipe, image: torch.Tensor) -> LBFGS | torch.optim.Adam:
    if recipe.optimizer == "lbfgs":
        # One function evaluation per iteration, so progress and cancel keep their rhythm.
        return LBFGS(image, recipe.learning_rate, recipe.lbfgs_history)
    return torch.optim.Adam([image], lr=recipe.learning_rate)
