"""GPU numbers in one prepared run: ms per iteration, a converged 1024² job, peak memory per size,
full-size jobs of 12 to 48 Mpx, at the default budget and under the budgets of common cards.

Runs the real engine loop (Engine.stylize, the product's own path, progress callback included) on a
square crop of chelsea with starry-night:

1. ms per iteration at each --iter-sizes (default 512 and 1024), one scale, default recipe (L-BFGS)
   and Adam: the time between the end of iteration --warmup and the last one, divided by the
   iterations between, measured with device events; median over --repeats.
2. A whole default job at 1024 px (coarse to fine, --job-iterations at full size): wall seconds, against
   its plan at the pace `Engine.measure_pace` measured first, as a new server does (and that time).
3. Peak device memory for a few iterations at each --memory-sizes (default 512 … 4096).
4. Full-size jobs (`Options(size="full")`, chelsea scaled up to each size; coarse to fine up to the
   content's own size with the default recipe, --full-iterations at full size, half that on each
   coarser scale): each --full-sizes (default 4000×3000 and 6000×4000) at the default memory budget
   (the device's free memory less a margin: an 80–141 GB GPU holds 24 Mpx whole, ~1.6 KB a pixel in
   bf16), then each --budget-cases under its budget (default 24 Mpx under 8 GiB, 48 Mpx under 16 GiB,
   and 48 Mpx under 8 GiB, where the finest scale's state must go to host memory). For each: the plan
   (per scale: tiles, time, device and host memory) against what ran (each scale's time by device
   events, its targets included, and its peak `torch.cuda.max_memory_allocated`, reset at each scale),
   or the plan's refusal.

On a CPU (--device cpu) it measures the same things with the wall clock; --smoke shrinks every case
(the full-size ones to 48×32 and 64×32 in forced 32 px tiles, then 128×64 with a 16 px halo under
18 MiB, in tiles, and under 8 MiB, refused) and runs one thread, so that a CPU checks the script end
to end in seconds: `python bench/gpu.py --device cpu --smoke` (tests/test_bench.py).
--plan-only prints the full-size plans without running them; on a CPU it plans as a CUDA GPU would
(state on the host where that is faster, a GPU's first-guess costs and host link):
`python bench/gpu.py --device cpu --precision bf16 --plan-only`.

    python bench/gpu.py                    # on an H100/H200-class GPU: a few minutes (< 10)
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from dataclasses import replace

import torch
from impasto.engine import DEFAULT, DoesNotFit, Engine, Options, Style, load_original_vgg19, pick_device
from impasto.engine.estimate import FIRST_GUESS_COSTS, HOST_LINK_BYTES_PER_SECOND
from impasto.engine.imageops import resize
from impasto.engine.recipes import with_optimizer
from impasto.images import load_picture
from sample_images import IMAGES

GIB = 2**30


def gib(size: int) -> str:
    return f"{size / GIB:.2f} GiB" if size >= GIB // 10 else f"{size / 2**20:.1f} MiB"


class Clock:
    """Device-event timing on CUDA, the wall clock elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start, end) -> float:
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end) / 1000
        return end - start


def square(image: torch.Tensor) -> torch.Tensor:
    side = min(image.shape[2:])
    return image[:, :, :side, :side]


def ms_per_iteration(
    engine: Engine, content, style, size: int, recipe, iterations: int, warmup: int, clock: Clock
):
    marks = {}

    def on_progress(progress) -> None:
        if progress.step in (warmup, iterations):
            marks[progress.step] = clock.now()

    options = Options(
        size=size, iterations=iterations, recipe=dataclasses.replace(recipe, coarse_to_fine=False)
    )
    engine.stylize(content, [Style(style)], options, on_progress=on_progress)
    return 1000 * clock.seconds(marks[warmup], marks[iterations]) / (iterations - warmup)


def peak_memory(engine: Engine, content, style, size: int) -> str:
    device = engine.device
    if device.type != "cuda":
        return "n/a (CPU)"
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    options = Options(size=size, iterations=3, recipe=dataclasses.replace(DEFAULT, coarse_to_fine=False))
    try:
        engine.stylize(content, [Style(style)], options)
    except torch.cuda.OutOfMemoryError:
        return "out of memory"
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"


def full_size_job(
    engine: Engine,
    content: torch.Tensor,
    style: torch.Tensor,
    size: tuple[int, int],
    options: Options,
    clock: Clock,
    plan_only: bool,
) -> dict[str, str]:
    """One job at `size` (height, width) at its own size; prints its plan and scales, returns a row."""
    device = engine.device
    h, w = size
    case = {"case": f"{w}×{h}", "budget": gib(engine.memory_budget(options))}
    style_sizes = [tuple(style.shape[2:])]
    print(
        f"### {w}×{h} ({h * w / 1e6:.2f} Mpx) at its own size, "
        f"{options.iterations} iteration(s) at full size\n"
    )
    try:
        plan = engine.plan(size, style_sizes, options)
    except DoesNotFit as refusal:
        print(f"refused by the plan: {refusal}\n")
        return case | {"tiles": "refused", "planned": f"needs {gib(refusal.needed_bytes)}"}
    cost = engine.cost_model
    tiled = [s for s in plan.scales if s.tile is not None]
    given = "given" if options.memory_budget else "default: free less margin"
    print(
        f"budget {gib(plan.memory_budget)} ({given}); {len(plan.scales)} scales, {len(tiled)} in tiles; "
        f"planned {plan.estimate.seconds:.1f} s at {cost.seconds_per_pass * 1e3:.2f} ms per pass and "
        f"{cost.seconds_per_pixel_iteration * 1e9:.2f} ns per pixel-iteration, device peak "
        f"{gib(plan.estimate.peak_bytes)}, host {gib(plan.estimate.host_bytes)}\n",
        flush=True,
    )
    case |= {
        "tiles": ", ".join(f"{s.tiles}×{s.tile}" for s in tiled) or "none",
        "planned": f"{plan.estimate.seconds:.1f} s, {gib(plan.estimate.peak_bytes)}",
        "host": gib(plan.estimate.host_bytes),
    }
    ends: dict[int, object] = {}
    peaks: dict[int, int] = {}
    wall = None
    if not plan_only:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

        def on_progress(p) -> None:
            if p.tile == p.tiles and p.iteration == p.iterations:  # a scale done
                ends[p.scale] = clock.now()
                if device.type == "cuda":
                    peaks[p.scale] = torch.cuda.max_memory_allocated(device)
                    torch.cuda.reset_peak_memory_stats(device)
                print(
                    f"  scale {p.scale}/{p.scales} ({p.width}×{p.height}) done", file=sys.stderr, flush=True
                )

        start_event = clock.now()
        start = time.perf_counter()
        try:
            engine.stylize(resize(content, size), [Style(style)], options, plan=plan, on_progress=on_progress)
            if device.type == "cuda":
                torch.cuda.synchronize()
        except torch.cuda.OutOfMemoryError:
            print("out of memory\n")
            return case | {"measured": "out of memory"}
        wall = time.perf_counter() - start
    print(
        "| scale | size | tiles (interior px) | cost × | it. | planned s | s | planned device | peak | host |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    previous = None if plan_only else start_event
    for index, scale in enumerate(plan.scales, 1):
        seconds = "" if plan_only else f"{clock.seconds(previous, ends[index]):.2f}"
        previous = ends.get(index)
        tiles = f"{scale.tiles} ({scale.tile})" if scale.tile else "whole"
        sh, sw = scale.size
        peak = gib(peaks[index]) if index in peaks else ""
        memory = f"{gib(scale.device_bytes)} | {peak} | {gib(scale.host_bytes)}"
        print(
            f"| {index} | {sw}×{sh} | {tiles} | {scale.cost_factor:.2f} | {scale.iterations} | "
            f"{scale.seconds:.2f} | {seconds} | {memory} |"
        )
    if wall is None:
        print()
        return case
    peak = max(peaks.values()) if peaks else None
    peak_text = gib(peak) if peak is not None else "n/a (CPU)"
    print(
        f"\nwall {wall:.2f} s (planned {plan.estimate.seconds:.2f} s, ×{wall / plan.estimate.seconds:.2f}); "
        f"peak allocated {peak_text} (planned {gib(plan.estimate.peak_bytes)}, "
        f"budget {gib(plan.memory_budget)})\n",
        flush=True,
    )
    return case | {"measured": f"{wall:.1f} s, {peak_text}"}


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' → (height, width)."""
    width, height = (int(part) for part in text.lower().split("x"))
    return height, width


def parse_budget_case(text: str) -> tuple[tuple[int, int], int]:
    """'WxH@GiB' → ((height, width), bytes)."""
    size, budget = text.split("@")
    return parse_size(size), int(float(budget) * GIB)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--iter-sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--job-size", type=int, default=1024)
    parser.add_argument("--job-iterations", type=int, default=100)
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument(
        "--full-sizes", type=parse_size, nargs="*", default=[(3000, 4000), (4000, 6000)], metavar="WxH"
    )
    parser.add_argument("--full-iterations", type=int, default=10, help="at full size; coarser: half")
    parser.add_argument(
        "--budget-cases",
        type=parse_budget_case,
        nargs="*",
        default=[((4000, 6000), 8 * GIB), ((6000, 8000), 16 * GIB), ((6000, 8000), 8 * GIB)],
        metavar="WxH@GiB",
        help="full sizes under a memory budget (default 6000x4000@8 8000x6000@16 8000x6000@8)",
    )
    parser.add_argument("--full-tile", type=int, help="forces tiles of this side (--smoke's)")
    parser.add_argument("--halo", type=int, help="the budget cases' tile halo (--smoke's; default: exact)")
    parser.add_argument("--plan-only", action="store_true", help="print the full-size plans, run nothing")
    parser.add_argument("--smoke", action="store_true", help="every case tiny: checks the script on a CPU")
    args = parser.parse_args()
    if args.smoke:
        args.iter_sizes, args.iterations, args.warmup, args.repeats = [32], 4, 1, 1
        args.job_size, args.job_iterations, args.memory_sizes = 48, 2, [32]
        args.full_sizes, args.full_iterations, args.full_tile = [(32, 48), (32, 64)], 1, 32
        args.budget_cases, args.halo = [((64, 128), 18 << 20), ((64, 128), 8 << 20)], 16
        # A check, not a measurement: on a shared CPU two threads wait a time slice for each other at
        # every operation (bench/tiled.py --threads), and tiles make many small ones.
        torch.set_num_threads(1)
    sys.stdout.reconfigure(line_buffering=True)  # each line out at once: the tables are the progress
    device = pick_device(args.device)
    # Planning only, a CPU plans as a GPU would: the state in host memory, a GPU's first-guess costs.
    as_gpu = args.plan_only and device.type == "cpu"
    engine = Engine(load_original_vgg19(), device, args.precision, state_on_host=True if as_gpu else None)
    if as_gpu:
        engine.cost_model = FIRST_GUESS_COSTS["cuda", engine.precision]
        engine.host_link_bytes_per_second = HOST_LINK_BYTES_PER_SECOND
    clock = Clock(device)
    style = load_picture(IMAGES / "styles" / "starry-night.jpg").rgb
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    planned_as = " (plans only, as a CUDA GPU would make them)" if as_gpu else ""
    print(f"- device: {name} ({device}), precision {engine.precision}, torch {torch.__version__}{planned_as}")
    print(f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    if not args.plan_only:
        measure_speed_and_memory(engine, style, clock, args)

    print("\n## Full size\n", flush=True)
    picture = load_picture(IMAGES / "content" / "chelsea.png").rgb
    full = Options(size="full", iterations=args.full_iterations)
    # A CPU's default budget says nothing of a GPU's: planning as one, only the given budgets.
    cases = [] if as_gpu else [(size, replace(full, tile_size=args.full_tile)) for size in args.full_sizes]
    cases += [
        (size, replace(full, memory_budget=budget, tile_halo=args.halo)) for size, budget in args.budget_cases
    ]
    rows = [
        full_size_job(engine, picture, style, size, options, clock, args.plan_only) for size, options in cases
    ]
    print("| case | budget | tiled scales (tiles × px) | planned (time, device peak) | host | measured |")
    print("|---|---:|---|---|---:|---|")
    for row in rows:
        keys = ("case", "budget", "tiles", "planned", "host", "measured")
        print("| " + " | ".join(row.get(key, "") for key in keys) + " |")
    return 0


def measure_speed_and_memory(engine: Engine, style: torch.Tensor, clock: Clock, args) -> None:
    """Parts 1–3: ms per iteration, a whole default job, peak memory per size."""
    device = engine.device
    # Square, so that each working size N is N×N pixels (the engine scales the content to it).
    content = square(load_picture(IMAGES / "content" / "chelsea.png").rgb)
    warmup = min(args.warmup, args.iterations - 1)
    print("| size | optimiser | ms / iteration (median) | spread (min–max) |")
    print("|---:|---|---:|---|")
    for size in args.iter_sizes:
        for label, recipe in (("L-BFGS", DEFAULT), ("Adam", with_optimizer(DEFAULT, "adam"))):
            runs = [
                ms_per_iteration(engine, content, style, size, recipe, args.iterations, warmup, clock)
                for _ in range(args.repeats)
            ]
            print(f"| {size}² | {label} | {statistics.median(runs):.2f} | {min(runs):.2f}–{max(runs):.2f} |")

    options = Options(size=args.job_size, iterations=args.job_iterations)
    start = time.perf_counter()
    engine.measure_pace()  # what a new server does before it listens
    measured = time.perf_counter() - start
    cost, planned = engine.cost_model, engine.plan(content.shape[2:], [style.shape[2:]], options)
    start = time.perf_counter()
    engine.stylize(content, [Style(style)], options)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(
        f"\nPace measured in {measured:.2f} s: {cost.seconds_per_pass * 1e3:.2f} ms per pass and "
        f"{cost.seconds_per_pixel_iteration * 1e9:.2f} ns per pixel-iteration. "
        f"Whole default job at {args.job_size} px, {args.job_iterations} iterations at full size: "
        f"{time.perf_counter() - start:.2f} s (planned {planned.estimate.seconds:.2f} s)\n"
    )

    print("| size | peak memory (3 iterations, one scale) |")
    print("|---:|---|")
    for size in args.memory_sizes:
        print(f"| {size}² | {peak_memory(engine, content, style, size)} |")


if __name__ == "__main__":
    sys.exit(main())
