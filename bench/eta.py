"""Is the time left honest? The engine's estimates against the truth, on the jobs users run.

Runs each job through `Engine.stylize` (the product's own loop) with a progress callback and keeps
every event. For the first event at or after 10 %, 25 % and 50 % of the work (`Progress.fraction`) it
compares `Progress.eta` with the true time left (the job's end minus the moment of that event), and
reports the worst such error from 10 % to 75 %. "At the start" compares the plan's estimate
(`Plan.estimate.seconds`, what a user sees before the first iteration) with the job's wall time.

The jobs (`--jobs`):

* `default`: the default CPU job (the server's default working size and iterations) on a photo scaled
  to 4000 px wide (12 megapixels), as `impasto stylize PHOTO --style STYLE` runs it;
* `full`: full size (the content scaled to `--full-side`) under a memory budget that puts its finer
  scales in tiles;
* `sweep`: working sizes 128, 256 and 384 px (`--sizes`, `--iterations`): 1, 2 and 4 scales.

Per precision (`--precision fp32 bf16`) one engine is built as the server builds it (`load_engine`,
then `warm_up`, which measures this machine's pace with a small job, as on a machine where no job has
run) and runs the chosen jobs twice over: the first job on that measured pace (as the first job on a
machine runs), every later one on the costs the engine learned from the jobs before (as a server runs,
and the next server: engine/learned_costs.py). Each job gets an empty Gram cache, so it pays its style
passes as a first use of that style does. Per scale: what the plan gave it and what it took.

    python bench/eta.py --precision fp32 bf16 --threads 1   # default and full jobs, ~15 min on 2 cores
    python bench/eta.py --jobs sweep --precision fp32        # the three working sizes
    python bench/eta.py --jobs --costs 136 192 272 384 543   # what an iteration costs here, fitted
    python bench/eta.py --quick                              # tiny sizes, seconds (the test suite runs it)
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from impasto.engine import DEFAULT, Options, Style, default_iterations, default_size, describe
from impasto.engine.estimate import CostModel
from impasto.engine.gram_cache import GramCache
from impasto.engine.imageops import fit_long_side
from impasto.engine.loading import load_engine
from impasto.images import load_picture
from sample_images import IMAGES

MARKS = (0.10, 0.25, 0.50)
WORST_UNTIL = 0.75  # the worst error is taken over events from the first mark to this share of the work
GOAL = 0.25  # |eta − truth| / truth from 10 % of the work on, on every job
DEFAULT_JOB_WIDTH = 4000  # px: a 12-megapixel photo at 3:2


@dataclass
class Event:
    at: float  # time.monotonic() when the callback ran
    fraction: float
    eta: float
    scale: int
    iteration: int
    height: int
    width: int


@dataclass
class ScaleRecord:
    size: tuple[int, int]
    iterations: int
    tiles: int
    planned: float  # seconds


@dataclass
class Job:
    name: str
    precision: str
    costs_before: str  # the engine's cost model when the job was planned
    learned: bool  # planned on costs learned from an earlier job (else the pace warm_up measured)
    estimate: float = math.nan  # plan.estimate.seconds, before the job
    total: float = math.nan  # wall seconds of Engine.stylize
    start: float = math.nan
    end: float = math.nan
    costs_after: str = ""
    scales: list[ScaleRecord] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def at_mark(self, mark: float) -> tuple[Event, float] | None:
        """The first event at or after `mark`, and the true time left then."""
        for event in self.events:
            if event.fraction >= mark - 1e-12:
                return event, self.end - event.at
        return None

    def error_at(self, mark: float) -> float:
        found = self.at_mark(mark)
        return math.nan if found is None else relative(found[0].eta, found[1])

    def worst_error(self) -> float:
        """The largest error, by magnitude, of the events from the first mark to WORST_UNTIL."""
        errors = [
            relative(event.eta, self.end - event.at)
            for event in self.events
            if MARKS[0] - 1e-12 <= event.fraction <= WORST_UNTIL
        ]
        return max(errors, key=abs, default=math.nan)


@dataclass(frozen=True)
class Spec:
    name: str
    content: torch.Tensor
    options: Options


def costs(engine) -> str:
    model = engine.cost_model
    per_pixel = model.seconds_per_pixel_iteration * 1e6
    return f"{model.seconds_per_pass * 1e3:.1f} ms/pass + {per_pixel:.2f} µs/pixel-it"


def run_job(engine, spec: Spec, style: torch.Tensor, learned: bool) -> Job:
    engine.gram_cache = GramCache(None)  # a first use of this style: its passes are paid
    plan = engine.plan(tuple(spec.content.shape[2:]), [tuple(style.shape[2:])], spec.options)
    job = Job(spec.name, engine.precision, costs(engine), learned, plan.estimate.seconds)
    job.scales = [ScaleRecord(s.size, s.iterations, s.tiles, s.seconds) for s in plan.scales]

    def on_progress(p) -> None:
        job.events.append(Event(time.monotonic(), p.fraction, p.eta, p.scale, p.iteration, p.height, p.width))

    job.start = time.monotonic()
    engine.stylize(spec.content, [Style(style)], spec.options, on_progress=on_progress, plan=plan)
    job.end = time.monotonic()
    job.total = job.end - job.start
    job.costs_after = costs(engine)
    return job


def relative(estimate: float, truth: float) -> float:
    return (estimate - truth) / truth if truth > 0 else math.nan


def percent(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:+.0%}"


def label(job: Job) -> str:
    return f"{job.name} ({'learned' if job.learned else 'fresh engine'})"


def eta_table(jobs: list[Job]) -> list[str]:
    lines = [
        "| precision | job (in order run) | total s | at the start: plan s (error) | "
        + " | ".join(f"at {m:.0%}: eta / true s (error)" for m in MARKS)
        + f" | worst {MARKS[0]:.0%}–{WORST_UNTIL:.0%} |",
        "|---|---|---:|---:|" + "---:|" * len(MARKS) + "---:|",
    ]
    for job in jobs:
        cells = []
        for mark in MARKS:
            found = job.at_mark(mark)
            if found is None:
                cells.append("–")
                continue
            event, truth = found
            cells.append(f"{event.eta:.1f} / {truth:.1f} ({percent(relative(event.eta, truth))})")
        start = f"{job.estimate:.1f} ({percent(relative(job.estimate, job.total))})"
        lines.append(
            f"| {job.precision} | {label(job)} | {job.total:.1f} | {start} | "
            + " | ".join(cells)
            + f" | {percent(job.worst_error())} |"
        )
    return lines


def cost_table(jobs: list[Job]) -> list[str]:
    lines = ["| precision | job (in order run) | costs planned with | learned from it |", "|---|---|---|---|"]
    lines += [f"| {job.precision} | {label(job)} | {job.costs_before} | {job.costs_after} |" for job in jobs]
    return lines


def scale_table(jobs: list[Job]) -> list[str]:
    """Where the time goes: per scale, what the plan gave it and what it took, from the end of the scale
    before (its targets and style passes included) to its last event."""
    lines = [
        "| precision | job | scale | size | tiles | its | planned s | took s | error |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for job in jobs:
        ends: dict[int, float] = {}
        for event in job.events:
            ends[event.scale] = event.at
        previous = job.start
        for index, scale in enumerate(job.scales, 1):
            took = ends.get(index, math.nan) - previous
            previous = ends.get(index, math.nan)
            lines.append(
                f"| {job.precision} | {label(job)} | {index} | {scale.size[1]}×{scale.size[0]} | "
                f"{scale.tiles or '–'} | {scale.iterations} | {scale.planned:.2f} | {took:.2f} | "
                f"{percent(relative(scale.planned, took))} |"
            )
    return lines


def measure_costs(
    engine, content: torch.Tensor, style: torch.Tensor, sides: list[int], rounds: int
) -> list[str]:
    """The engine's cost per iteration at each working side, whole and in one scale: the shortest of
    the steps between iterations (after the first, which sets up), over `rounds` rounds that take the
    sides in turn, so that another process's burst slows one round, not one side. The model fitted to
    them is what a quiet machine does: the first guess to take for this kind of CPU."""
    one_scale = replace(DEFAULT, coarse_to_fine=False)
    shortest = dict.fromkeys(sides, math.inf)
    sizes = {}
    for _ in range(rounds):
        for side in sides:
            times: list[float] = []
            options = Options(size=side, iterations=4, recipe=one_scale)
            engine.stylize(
                content, [Style(style)], options, on_progress=lambda _, t=times: t.append(time.monotonic())
            )
            steps = [b - a for a, b in itertools.pairwise(times)]
            shortest[side] = min(shortest[side], *steps)
            sizes[side] = fit_long_side(*content.shape[2:], side)
    samples = [(1, sizes[side][0] * sizes[side][1], shortest[side]) for side in sides]
    fitted = CostModel(0.0, 1e-6).learned(samples)
    lines = ["| size | shortest s / it | µs / pixel-it | fitted s / it |", "|---|---:|---:|---:|"]
    for side, (passes, pixels, seconds) in zip(sides, samples, strict=True):
        (h, w), fit = sizes[side], fitted.seconds(passes, pixels)
        lines.append(f"| {w}×{h} | {seconds:.3f} | {seconds / pixels * 1e6:.2f} | {fit:.3f} |")
    per_pixel = fitted.seconds_per_pixel_iteration * 1e6
    lines.append(
        f"\nFitted: {fitted.seconds_per_pass * 1e3:.1f} ms per pass + {per_pixel:.2f} µs per pixel-iteration"
    )
    return lines


def job_specs(args: argparse.Namespace, content: torch.Tensor) -> list[Spec]:
    device = torch.device("cpu")
    specs = []
    for kind in args.jobs:
        if kind == "default":
            side = args.default_width
            photo = resize_to_width(content, side)
            size = args.default_size or default_size(device)
            options = Options(size=size, iterations=args.default_iterations or default_iterations(device))
            name = f"default: {photo.shape[3]}×{photo.shape[2]} at {size} px × {options.iterations} it"
            specs.append(Spec(name, photo, options))
        elif kind == "full":
            photo = resize_to_width(content, args.full_side)
            options = Options(
                size="full",
                iterations=args.full_iterations,
                memory_budget=args.full_budget << 20,
                tile_halo=args.full_halo,
            )
            name = (
                f"full: {photo.shape[3]}×{photo.shape[2]} × {options.iterations} it, "
                f"budget {args.full_budget} MiB"
            )
            specs.append(Spec(name, photo, options))
        else:
            for size, iterations in zip(args.sizes, args.iterations, strict=True):
                options = Options(size=size, iterations=iterations)
                specs.append(Spec(f"{size} px × {iterations} it", content, options))
    return specs


def resize_to_width(image: torch.Tensor, width: int) -> torch.Tensor:
    height = round(image.shape[2] * width / image.shape[3])
    scaled = torch.nn.functional.interpolate(image, (height, width), mode="bilinear", antialias=True)
    return scaled.clamp(0, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    precisions, kinds = ["auto", "fp32", "bf16"], ["default", "full", "sweep"]
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=precisions)
    parser.add_argument("--jobs", nargs="*", default=["default", "full"], choices=kinds)
    parser.add_argument("--costs", type=int, nargs="+", help="first measure an iteration at these sides")
    parser.add_argument("--rounds", type=int, default=3, help="of --costs")
    parser.add_argument("--default-width", type=int, default=DEFAULT_JOB_WIDTH, help="its photo's width")
    parser.add_argument("--default-size", type=int, help="its working size (default: the server's)")
    parser.add_argument("--default-iterations", type=int, help="its iterations (default: the server's)")
    parser.add_argument("--full-side", type=int, default=768, help="the full-size job's width in px")
    parser.add_argument("--full-iterations", type=int, default=6, help="at its full size")
    parser.add_argument("--full-budget", type=int, default=640, help="its memory budget in MiB")
    parser.add_argument("--full-halo", type=int, help="its tiles' halo in px (default: exact)")
    parser.add_argument("--sizes", type=int, nargs=3, default=[128, 256, 384], help="the sweep's sides")
    parser.add_argument("--iterations", type=int, nargs=3, default=[120, 40, 30], help="and iterations")
    parser.add_argument("--content", default="chelsea.png", help="in shared/images/content/")
    parser.add_argument("--style", default="starry-night.jpg", help="in shared/images/styles/")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few iterations (a smoke test)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: PyTorch's choice)")
    parser.add_argument("--json", type=Path, help="also write every event here, after each job")
    args = parser.parse_args()
    if args.quick:
        args.default_width, args.default_size, args.default_iterations = 400, 48, 4
        args.full_side, args.full_iterations, args.full_budget, args.full_halo = 128, 2, 18, 16
        args.sizes, args.iterations = [24, 32, 40], [6, 6, 6]
    if args.threads:
        torch.set_num_threads(args.threads)
    content = load_picture(IMAGES / "content" / args.content).rgb
    style = load_picture(IMAGES / "styles" / args.style).rgb
    specs = job_specs(args, content)
    flags = cpu_flags()
    print(
        f"- machine: {describe(torch.device('cpu')).name}, {os.cpu_count()} CPUs, flags: "
        f"{', '.join(flags) or 'no bf16/AMX'}; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"- content {args.content}, style {args.style}, default recipe; load before: {load_average()}")
    print(f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")

    jobs: list[Job] = []
    for precision in args.precision:
        engine = load_engine("cpu", precision=precision, keep_pace=False)
        engine.warm_up()  # as the server does before its first job
        if args.costs:
            print(f"Cost of an iteration, {engine.precision} (load before: {load_average()}):\n")
            print("\n".join(measure_costs(engine, content, style, args.costs, args.rounds)))
            print(f"\n- load after: {load_average()}\n", flush=True)
            engine = load_engine("cpu", precision=precision, keep_pace=False)  # measured anew
            engine.warm_up()
        for index, spec in enumerate([*specs, *specs]):
            job = run_job(engine, spec, style, learned=index > 0)
            jobs.append(job)
            print(
                f"  done: {job.precision} {label(job)} in {job.total:.1f} s (plan {job.estimate:.1f} s; "
                f"at 10 %: {percent(job.error_at(MARKS[0]))}; load {load_average()})",
                file=sys.stderr,
                flush=True,
            )
            if args.json:
                args.json.write_text(json.dumps([asdict(job) for job in jobs]))

    if not jobs:
        return 0
    print("Time left (Progress.eta) against the truth:\n")
    print("\n".join(eta_table(jobs)))
    worst = [job.worst_error() for job in jobs]
    met = all(abs(error) <= GOAL for error in worst)
    print(
        f"\nGoal (eta within ±{GOAL:.0%} from {MARKS[0]:.0%} to {WORST_UNTIL:.0%} of the work on every job): "
        f"{'met' if met else 'NOT met'} (worst {', '.join(percent(error) for error in worst)})\n"
    )
    print("The engine's costs (CostModel) before each job and as learned from it:\n")
    print("\n".join(cost_table(jobs)))
    print("\nWhere the time goes, per scale:\n")
    print("\n".join(scale_table(jobs)))
    print(f"\n- load after: {load_average()}")
    return 0


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            words = set(f.read().split())
    except OSError:
        return []
    return sorted(w for w in words if w in {"avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"})


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    sys.exit(main())
