"""Is the time left honest? The engine's estimates against the truth, for three jobs of different sizes.

Runs each job through `Engine.stylize` (the product's own loop) with a progress callback and keeps
every event. For the first event at or after 10 %, 25 % and 50 % of the work (`Progress.fraction`,
iterations weighted by their scale's pixels) it compares `Progress.eta` with the true time left (the
job's end minus the moment of that event). It also compares the up-front `Plan.estimate.seconds` with
the job's true wall time: the first job runs on a fresh engine (its per-device first guess), later
ones after the engine has learned its speed from the job before; the first job runs again at the end.

The engine is built as the server builds it (`load_engine`, then `warm_up`). Each job gets an empty
Gram cache, so it pays its style passes as a first use of that style does. A table per scale (time
between scales, steady seconds per iteration) shows where the time the estimate misses goes.

    python bench/eta.py --precision fp32          # three jobs of 20–60 s each on a quiet 2-core CPU
    python bench/eta.py --quick                   # tiny sizes, seconds (the test suite runs this)
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from impasto.engine import Options, Style, describe
from impasto.engine.gram_cache import GramCache
from impasto.engine.loading import load_engine
from impasto.images import load_picture
from sample_images import IMAGES

MARKS = (0.10, 0.25, 0.50)
GOAL = 0.25  # |eta − truth| / truth at the 10 % mark, on every job


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
class Job:
    size: int
    iterations: int
    estimate: float = math.nan  # plan.estimate.seconds, before the job
    rate_before: float = math.nan  # the engine's seconds per pixel-iteration when planned
    total: float = math.nan  # wall seconds of Engine.stylize
    start: float = math.nan
    end: float = math.nan
    events: list[Event] = field(default_factory=list)

    def at_mark(self, mark: float) -> tuple[Event, float] | None:
        """The first event at or after `mark`, and the true time left then."""
        for event in self.events:
            if event.fraction >= mark - 1e-12:
                return event, self.end - event.at
        return None


def run_job(engine, content, style, size: int, iterations: int) -> Job:
    engine.gram_cache = GramCache(None)  # a first use of this style: its passes are paid
    options = Options(size=size, iterations=iterations)
    plan = engine.plan(tuple(content.shape[2:]), [tuple(style.shape[2:])], options)
    job = Job(size, iterations, plan.estimate.seconds, engine.seconds_per_pixel_iteration)

    def on_progress(p) -> None:
        job.events.append(Event(time.monotonic(), p.fraction, p.eta, p.scale, p.iteration, p.height, p.width))

    job.start = time.monotonic()
    engine.stylize(content, [Style(style)], options, on_progress=on_progress, plan=plan)
    job.end = time.monotonic()
    job.total = job.end - job.start
    return job


def relative(estimate: float, truth: float) -> float:
    return (estimate - truth) / truth if truth > 0 else math.nan


def eta_table(jobs: list[Job]) -> list[str]:
    lines = [
        "| job | total s | " + " | ".join(f"at {m:.0%}: eta / true s (error)" for m in MARKS) + " |",
        "|---|---:|" + "---:|" * len(MARKS),
    ]
    for job in jobs:
        cells = []
        for mark in MARKS:
            found = job.at_mark(mark)
            if found is None:
                cells.append("–")
                continue
            event, truth = found
            cells.append(f"{event.eta:.1f} / {truth:.1f} ({relative(event.eta, truth):+.0%})")
        lines.append(f"| {label(job)} | {job.total:.1f} | " + " | ".join(cells) + " |")
    return lines


def label(job: Job) -> str:
    return f"{job.size} px × {job.iterations} it"


def plan_table(jobs: list[Job]) -> list[str]:
    lines = [
        "| job (in order run) | rate used, µs / pixel-it | plan estimate s | true s | error |",
        "|---|---:|---:|---:|---:|",
    ]
    for index, job in enumerate(jobs):
        when = "fresh engine" if index == 0 else "learned"
        lines.append(
            f"| {index + 1}. {label(job)} ({when}) | {job.rate_before * 1e6:.2f} | {job.estimate:.1f} | "
            f"{job.total:.1f} | {relative(job.estimate, job.total):+.0%} |"
        )
    return lines


def scale_table(jobs: list[Job]) -> list[str]:
    """Where the time goes: per scale, the gap before its first event (targets, style passes and the
    first iteration), the steady seconds per iteration, and that per megapixel."""
    lines = [
        "| job | scale | size | its | gap before 1st event s | steady s / it | µs / pixel-it | scale s |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for job in jobs:
        by_scale: dict[int, list[Event]] = {}
        for event in job.events:
            by_scale.setdefault(event.scale, []).append(event)
        previous = job.start
        for scale, events in sorted(by_scale.items()):
            steps = [b.at - a.at for a, b in itertools.pairwise(events)]
            steady = statistics.median(steps) if steps else math.nan
            pixels = events[0].height * events[0].width
            lines.append(
                f"| {label(job)} | {scale} | {events[0].height}×{events[0].width} | {len(events)} | "
                f"{events[0].at - previous:.2f} | {steady:.3f} | {steady / pixels * 1e6:.2f} | "
                f"{events[-1].at - previous:.1f} |"
            )
            previous = events[-1].at
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--sizes", type=int, nargs=3, default=[128, 256, 384], help="working long sides")
    parser.add_argument(
        "--iterations", type=int, nargs=3, default=None, help="iterations at the working size, per job"
    )
    parser.add_argument("--content", default="astronaut.png", help="in shared/images/content/")
    parser.add_argument("--style", default="starry-night.jpg", help="in shared/images/styles/")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few iterations (a smoke test)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: PyTorch's choice)")
    parser.add_argument("--json", type=Path, help="also write every event here, after each job")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.iterations = [24, 32, 40], args.iterations or [6, 6, 6]
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = load_engine("cpu", precision=args.precision)
    engine.warm_up()  # as the server does before its first job
    if args.iterations is None:
        # About 20–60 s each on the quiet 2-core VM of docs/benchmarks.md (no AMX: bf16 slower there).
        args.iterations = {"bf16": [120, 40, 30], "fp32": [200, 60, 30]}[engine.precision]
    content = load_picture(IMAGES / "content" / args.content).rgb
    style = load_picture(IMAGES / "styles" / args.style).rgb
    info = describe(engine.device)
    flags = cpu_flags()
    print(
        f"- machine: {info.name}, {os.cpu_count()} CPUs, flags: {', '.join(flags) or 'no bf16/AMX'}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"- precision: {engine.precision} (asked: {args.precision})")
    print(f"- content {args.content}, style {args.style}, default recipe; load before: {load_average()}")
    print(f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")

    jobs: list[Job] = []
    # The three jobs, then the first again on the engine that has learned its speed.
    runs = [*zip(args.sizes, args.iterations, strict=True), (args.sizes[0], args.iterations[0])]
    for size, iterations in runs:
        job = run_job(engine, content, style, size, iterations)
        jobs.append(job)
        at_10 = _eta_and_truth(job, MARKS[0])
        print(
            f"  done: {label(job)} in {job.total:.1f} s (plan {job.estimate:.1f} s; at 10 %: "
            f"eta {at_10[0]:.1f} s, true {at_10[1]:.1f} s; load {load_average()})",
            file=sys.stderr,
            flush=True,
        )
        if args.json:
            args.json.write_text(json.dumps([asdict(job) for job in jobs]))
    jobs, again = jobs[:3], jobs[3]

    print("Time left (Progress.eta) against the truth:\n")
    print("\n".join(eta_table(jobs)))
    errors = [relative(*_eta_and_truth(job, MARKS[0])) for job in jobs]
    met = all(abs(e) <= GOAL for e in errors)
    print(
        f"\nGoal (eta at 10 % within ±{GOAL:.0%} on all three): {'met' if met else 'NOT met'} "
        f"(errors {', '.join(f'{e:+.0%}' for e in errors)})\n"
    )
    print("Up-front estimate (Plan.estimate.seconds) against the true wall time:\n")
    print("\n".join(plan_table([*jobs, again])))
    print("\nWhere the time goes, per scale:\n")
    print("\n".join(scale_table(jobs)))
    print(f"\n- load after: {load_average()}")
    return 0


def _eta_and_truth(job: Job, mark: float) -> tuple[float, float]:
    found = job.at_mark(mark)
    if found is None:
        return math.nan, math.nan
    event, truth = found
    return event.eta, truth


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
