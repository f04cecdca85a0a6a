"""One job's run: its targets at each scale, the optimisation loop, progress, previews, time left."""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .gram_cache import image_digest
from .imageops import fit_long_side, keep_content_colours, resize
from .lbfgs import LBFGS, History
from .losses import LossParts, Targets, gram, total_loss
from .plan import SETUP_ITERATIONS, Scale, style_tile
from .recipes import Recipe
from .tiled import TiledScale

if TYPE_CHECKING:
    from .stylize import Style


class Cancelled(Exception):
    """The caller asked the job to stop."""


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
    # Share of the job's work done: iterations weighted by their planned time (the engine's CostModel),
    # so that it moves as time does (a fine scale's iteration costs several coarse ones).
    fraction: float = 0.0
    # On a tiled scale: the tile just done (1-based) of `tiles`, reported after each tile's gradient
    # pass and again (tile == tiles) with the iteration; 0 and 0 on a scale optimised whole.
    tile: int = 0
    tiles: int = 0


ProgressCallback = Callable[[Progress], None]
PreviewCallback = Callable[[torch.Tensor, Progress], None]


class Run:
    """One job's state across scales: targets, timing, callbacks."""

    def __init__(self, engine, net, content, styles, options, plan, on_progress, on_preview, cancel):
        self.engine, self.net, self.content, self.styles = engine, net, content, styles
        self.options, self.recipe, self.scales, self.plan = options, options.recipe, plan.scales, plan
        scales = plan.scales
        self.on_progress, self.on_preview, self.cancel = on_progress, on_preview, cancel
        self.start = time.monotonic()
        self.last_preview = -math.inf
        self.steps_done = 0
        # Work is counted in the plan's seconds: an iteration weighs what the engine's cost model gave
        # its scale, fixed cost included, so that fast coarse iterations do not make the fine ones
        # look cheap.
        self.cost_total = sum(s.seconds for s in scales)
        self.cost_done = 0.0
        self.steps = sum(s.iterations for s in scales)
        # What each scale done took, its targets included, for the engine to learn its costs from:
        # (passes, pixel-iterations, seconds) as CostModel.learned takes them.
        self.scale_work: list[tuple[float, float, float]] = []
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
        started = time.monotonic()
        scale = self.scales[index]
        tiles = (
            None
            if scale.tile is None
            else self.engine.tiled_scale(self.net, scale.size, scale.tile, self.options, scale.state_on_host)
        )
        targets = self.targets(scale, tiles)
        image = image.detach().clone().contiguous().requires_grad_(True)
        optimizer = _make_optimizer(self.recipe, image, tiles is not None, scale.state_on_host)
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
        if self.engine.device.type == "cuda":
            # The host has only queued the scale's work: its time, which teaches the engine its costs, is
            # read once the GPU has done it.
            torch.cuda.synchronize(self.engine.device)
        self.scale_work.append((*scale.work, time.monotonic() - started))
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
        # The scale's set-up is done with its first iteration's first report.
        setup = scale.iteration_seconds * SETUP_ITERATIONS if iteration == 1 else 0.0
        if within:
            # Mid-iteration: the step under way, its share of work done so far; no preview.
            cost_done = self.cost_done + setup + scale.iteration_seconds * tile[0] / tile[1]
        else:
            self.steps_done += 1
            self.cost_done += setup + scale.iteration_seconds
            cost_done = self.cost_done
        if self.steps_done == self.steps:
            cost_done = self.cost_total  # exactly 1 at the end, whatever the float sums of tiled costs
        elapsed = time.monotonic() - self.start
        eta = self._time_left(elapsed, cost_done)
        # A scale's last report goes out whatever the reporting rate: with its own losses, not earlier ones.
        last_of_scale = not within and iteration == scale.iterations
        content_loss, style_loss, tv_loss = self.losses.read(parts, wait=last_of_scale)
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
        2:11 (docs/benchmarks.md). The plan's costs were learned from the last job on this engine. Both
        count work in the plan's seconds, so the job's own rate is how much faster or slower than
        planned it runs.
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
    every iteration. Elsewhere they are read at once. `wait`: the host waits for the copies in flight,
    and the values are the iteration's own.
    """

    def __init__(self, device: torch.device):
        self.asynchronous = device.type == "cuda"
        self.in_flight: collections.deque[tuple[torch.cuda.Event, torch.Tensor]] = collections.deque()
        self.latest = (math.nan, math.nan, math.nan)

    def read(self, parts: LossParts, wait: bool = False) -> tuple[float, float, float]:
        values = torch.stack([parts.content, parts.style, parts.tv]).detach()
        if not self.asynchronous:
            return tuple(values.tolist())
        host = torch.empty(3, pin_memory=True)
        host.copy_(values, non_blocking=True)
        landed = torch.cuda.Event()
        landed.record(torch.cuda.current_stream(values.device))  # the copy's stream, whatever GPU is current
        self.in_flight.append((landed, host))
        if wait:
            landed.synchronize()  # and so every copy before it, queued on the same stream
        while self.in_flight and self.in_flight[0][0].query():
            self.latest = tuple(self.in_flight.popleft()[1].tolist())
        return self.latest


def _mean_square(tensor: torch.Tensor) -> float:
    return max(float(torch.square(tensor).mean()), 1e-12)


def _make_optimizer(
    recipe: Recipe, image: torch.Tensor, tiled: bool, history_on_host: bool
) -> LBFGS | torch.optim.Adam:
    if recipe.optimizer == "lbfgs":
        dtype = torch.bfloat16 if tiled and recipe.history_precision == "bf16" else None
        history = History(recipe.lbfgs_history, image.device, history_on_host, dtype)
        # One function evaluation per iteration, so progress and cancel keep their rhythm.
        return LBFGS(image, recipe.learning_rate, history)
    return torch.optim.Adam([image], lr=recipe.learning_rate)
