"""The optimisation: coarse-to-fine gradient descent on the image itself."""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ..protocol import bounds
from .device import default_size, free_memory_bytes, pick_precision
from .estimate import FIRST_GUESS_COSTS, HOST_LINK_BYTES_PER_SECOND, OTHER_DEVICE_COSTS, CostModel
from .gram_cache import GramCache
from .imageops import keep_content_colours, resize
from .learned_costs import LearnedCosts, pace_key
from .memory import fix_malloc_mmap_threshold
from .plan import Plan, Planner
from .recipes import DEFAULT, Recipe
from .run import PreviewCallback, ProgressCallback, Run
from .tiled import TiledScale
from .vgg import VGGFeatures
from .weights import WeightSet

Precision = Literal["auto", "fp32", "bf16"]


@dataclass(frozen=True)
class Style:
    image: torch.Tensor  # (1, 3, H, W), RGB in [0, 1]
    weight: float = 1.0


# Iterations at the working size of the job that measures a new device's pace (`Engine.measure_pace`),
# whose working size is half the device's default: 0.6–1.1 s on a 2-core CPU; longer ones (192 × 4, 256 × 2)
# gave no clear gain (docs/benchmarks.md, "A new machine's first plan").
PACE_JOB_ITERATIONS = 2

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
    # Only the job's coarsest scale, exactly as the whole job runs it (the same seed, targets and steps):
    # its preview, in a small share of its time. The colours and the composition are laid out there.
    preview: bool = False


class Engine:
    """Holds the network for one weight set on one device; runs one job at a time per call.

    `state_on_host`: whether a tiled scale may keep the bulk of its picture-sized state (L-BFGS's
    history, the content's features) in host memory, so that the device's memory goes to its tiles; the
    plan keeps it there where that is faster (larger tiles against the time to move the history). None:
    on a CUDA GPU, which has memory of its own; elsewhere host and device share one memory, and True
    only exercises that path and counts the budget as a GPU would.
    """

    def __init__(
        self,
        weights: WeightSet,
        device: torch.device,
        precision: Precision = "auto",
        gram_cache: GramCache | None = None,
        state_on_host: bool | None = None,
        learned_costs: LearnedCosts | None = None,
    ):
        self.weights = weights
        self.device = device
        self.gram_cache = gram_cache
        self.precision = pick_precision(device, precision)
        self.state_on_host = device.type == "cuda" if state_on_host is None else state_on_host
        # How fast state in host memory reaches the device; None: the host's memory is the device's.
        self.host_link_bytes_per_second = HOST_LINK_BYTES_PER_SECOND if device.type == "cuda" else None
        if device.type == "cuda":
            _set_cudnn_for_jobs()
        self._networks: dict[tuple[frozenset[str], str], VGGFeatures] = {}
        # How long iterations take here: what the last job here took (kept by `learned_costs` between
        # servers), else a first guess for this kind of device until `measure_pace`.
        self.learned_costs = learned_costs
        self.pace_key = pace_key(device, self.precision)
        kept = learned_costs.get(self.pace_key) if learned_costs is not None else None
        self.cost_model = kept or FIRST_GUESS_COSTS.get((device.type, self.precision), OTHER_DEVICE_COSTS)
        self.pace_measured = kept is not None  # else the first guess, from another machine
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
        """Loads the network and runs one small pass, so that a first job does not pay the set-up; then,
        where no job has measured this device's pace yet, measures it (`measure_pace`)."""
        with self.on_device():
            image = torch.rand(1, 3, 64, 64, device=self.device, requires_grad=True)
            features = self.features(self.network(recipe), image)
            sum(f.float().mean() for f in features.values()).backward()
            torch.optim.Adam([image])  # PyTorch's first optimiser imports torch._dynamo: seconds
            if not self.pace_measured:
                self.measure_pace(recipe)

    def measure_pace(self, recipe: Recipe = DEFAULT) -> None:
        """Times a small job (random pictures, half the default working size, PACE_JOB_ITERATIONS: 0.6–1.1
        s on a 2-core CPU) and plans at its pace from then on.

        The first guess was fitted on one machine: a CPU of half its speed was planned at half the time,
        and the dialog's first quote said so. The guess is scaled to this job's time in all (`rescaled`):
        its few small scales, each with its set-up, cannot part the fixed cost from the pixels' steadily
        (fitting both planned the default job 20 % short). Later jobs teach both parts by their length as
        usual (docs/benchmarks.md, "A new machine's first plan")."""
        side = default_size(self.device) // 2
        generator = torch.Generator().manual_seed(0)
        content = torch.rand(1, 3, side * 3 // 4, side, generator=generator)
        style = torch.rand(1, 3, side, side, generator=generator)
        options = Options(size=side, iterations=PACE_JOB_ITERATIONS, recipe=recipe)
        # On a CUDA GPU each new shape's first passes choose its convolutions' algorithms (cudnn.benchmark):
        # a moment that a real job's scales hardly notice but most of this small job's time. It is timed
        # on its second run. Not measured (no GPU yet): bench/gpu.py prints its plan against a job.
        with self.on_device():
            for _ in range(2 if self.device.type == "cuda" else 1):
                _, _, scale_work = self._optimise(content, [Style(style)], options)
        self._keep_pace(self.cost_model.rescaled(scale_work))

    def plan(
        self, content_size: tuple[int, int], style_sizes: Sequence[tuple[int, int]], options: Options
    ) -> Plan:
        """The scales of a job on a content of `content_size` (height, width), with each one's tiles,
        time and peak device memory (the style images' passes at their scaled sizes included), and the
        host memory a tiled scale's state takes instead. Raises DoesNotFit, at once, for a job that
        cannot run within its memory budget in tiles worth running."""
        planner = Planner(
            self.precision, self.cost_model, self.state_on_host, self.host_link_bytes_per_second
        )
        return planner.plan(content_size, style_sizes, options, self.memory_budget(options))

    def memory_budget(self, options: Options) -> int:
        if options.memory_budget is not None:
            return options.memory_budget
        free = free_memory_bytes(self.device)
        return max(0, free - max(int(free * BUDGET_MARGIN_SHARE), BUDGET_MARGIN_BYTES))

    def tiled_scale(
        self,
        net: VGGFeatures,
        size: tuple[int, int],
        tile: int,
        options: Options,
        state_on_host: bool = False,
    ) -> TiledScale:
        """Tiles of a picture; `state_on_host`: keeping the content's features in host memory."""
        return TiledScale(
            lambda image: self.features(net, image),
            net.names,
            size,
            tile,
            options.tile_halo,
            self.gram_matmuls,
            torch.device("cpu") if state_on_host else None,
        )

    def features(self, net: VGGFeatures, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return net(image.contiguous(memory_format=torch.channels_last))

    def gram_matmuls(self) -> contextlib.AbstractContextManager:
        """Lets float32 matmuls run on bf16 (CPU) or TF32 (CUDA) units while Grams are formed.

        With a bf16 network the features are bf16 values, so those units multiply them exactly and
        accumulate in float32: the Gram is as exact as in plain float32, at a third of the CPU cost.
        Only the gradient through the Gram, which flows into bf16 layers anyway, is rounded.
        """
        if self.precision != "bf16" or self.device.type not in _GRAM_MATMUL_PRECISION:
            return contextlib.nullcontext()
        return _gram_matmuls.lowered(self.device.type)

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
        with self.on_device():
            image, content, scale_work = self._optimise(
                content, styles, options, plan, on_progress, on_preview, cancel
            )
            if options.preserve_colors:
                image = keep_content_colours(image, content)
            image = image.detach().clamp(0, 1).cpu()
        if not options.preview:
            # Not a preview's one small scale: measured, it planned whole jobs 12–64 % long on a quiet
            # machine (docs/benchmarks.md, "The dialog's cost line").
            self._keep_pace(self.cost_model.taught(scale_work))
        return image

    def on_device(self) -> contextlib.AbstractContextManager:
        """Makes this engine's GPU the calling thread's current CUDA device while it runs a job.

        Every thread starts on cuda:0, the jobs' worker threads too. What PyTorch takes from the current
        device (the stream an event records on, the CUDA context a call without a tensor creates) would
        otherwise be cuda:0's while the job runs on another GPU.
        """
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def _optimise(
        self,
        content: torch.Tensor,
        styles: Sequence[Style],
        options: Options,
        plan: Plan | None = None,
        on_progress: ProgressCallback | None = None,
        on_preview: PreviewCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[float, float, float]]]:
        """The job's scales, coarse to fine: (the image, the content at the working size, each scale's
        work and seconds for a CostModel)."""
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
        content = resize(content.to(self.device, torch.float32), plan.final_size)
        run = Run(self, net, content, styles, options, plan, on_progress, on_preview, cancel)
        image = run.initial_image(scales[0].size)
        for index, scale in enumerate(scales):
            image = run.optimise_scale(index, resize(image, scale.size))
        return image, content, run.scale_work

    def _keep_pace(self, model: CostModel) -> None:
        """Plans here, and in the next server on this machine, at the pace this device was measured at."""
        self.cost_model, self.pace_measured = model, True
        if self.learned_costs is not None:
            self.learned_costs.put(self.pace_key, model)


def _set_cudnn_for_jobs() -> None:
    """cuDNN's settings for every CUDA engine. They are the process's, and every engine wants the same, so
    engines of either precision set them alike and never restore them:

    - benchmark: shapes are fixed within a scale, so autotuning the convolutions pays for itself at once;
    - deterministic: among deterministic algorithms only. Some backward convolutions are not, and the same
      seed must give the same picture, and a preview exactly the beginning of its job;
    - no TF32 convolutions (PyTorch's default has them): an fp32 engine's convolutions are float32; a bf16
      engine's run in bf16 and are not affected. Set through `allow_tf32`, which keeps the per-operator
      settings in step; setting only `cudnn.conv.fp32_precision` makes PyTorch's query without an
      operator (`torch.backends.cudnn.allow_tf32`, `cudnn.flags()`) raise that the two APIs were mixed.
    """
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.allow_tf32 = False


# The float32 matmul precision that Grams of bf16 features are formed at, by device type.
_GRAM_MATMUL_PRECISION = {"cpu": (torch.backends.mkldnn, "bf16"), "cuda": (torch.backends.cuda, "tf32")}


class _LoweredMatmuls:
    """PyTorch's float32 matmul precision is one setting per backend for the whole process, and engines on
    several GPUs form Grams at once, each in its worker thread. Each saving and restoring it for itself,
    one would restore it in the middle of another's Grams, or restore another's lowered value and leave it
    so for good. Here the first to enter lowers it and the last to leave restores it.

    A float32 engine of the same backend in the same process would see it lowered meanwhile; none runs
    beside a bf16 one: every engine of a server has the same precision, except where `auto` gives fp32
    to a GPU older than Ampere, which has no TF32 units for the setting to reach.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside: collections.Counter[str] = collections.Counter()  # by device type: engines in Grams now
        self._before: dict[str, str] = {}  # by device type: the precision to restore

    @contextlib.contextmanager
    def lowered(self, device_type: str) -> Iterator[None]:
        backend, precision = _GRAM_MATMUL_PRECISION[device_type]
        with self._lock:
            if not self._inside[device_type]:
                self._before[device_type] = backend.matmul.fp32_precision
                backend.matmul.fp32_precision = precision
            self._inside[device_type] += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside[device_type] -= 1
                if not self._inside[device_type]:
                    backend.matmul.fp32_precision = self._before.pop(device_type)


# One for the process, as the setting it guards is.
_gram_matmuls = _LoweredMatmuls()


def check_options(options: Options, styles: Sequence[Style]) -> None:
    """Raises ValueError naming the first absurd option (the protocol's bounds, which the jobs layer
    checks too); cheap, so callers can check before queueing."""
    if not styles:
        raise ValueError("at least one style image is needed")
    if options.size != "full":  # "full": the content's own size, whatever it is
        if isinstance(options.size, str):
            raise ValueError(f"size must be a number of pixels or 'full', got {options.size!r}")
        bounds.SIZE.check(options.size)
    bounds.ITERATIONS.check(options.iterations)
    bounds.STRENGTH.check(options.strength)
    bounds.STYLE_SCALE.check(options.style_scale)
    for style in styles:
        bounds.STYLE_WEIGHT.check(style.weight)
    if sum(s.weight for s in styles) <= 0:
        raise ValueError("the style weights add up to 0; give at least one style a positive weight")
    if options.preview_seconds is not None and not options.preview_seconds >= 0:
        raise ValueError(f"preview_seconds must be ≥ 0, got {options.preview_seconds}")
    if options.memory_budget is not None:
        bounds.MEMORY_BUDGET.check(options.memory_budget)
    if options.tile_size is not None:
        bounds.SIZE.check(options.tile_size)
    if options.tile_halo is not None and options.tile_halo < 0:
        raise ValueError(f"tile_halo must be ≥ 0 px, got {options.tile_halo}")
