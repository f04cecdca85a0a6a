"""Full-size jobs in tiles: time and peak memory of a job at its own size under a memory budget, against
the same job whole, and the cost of tiling per iteration against the whole image.

1. A full-size job (`Options(size="full")`, default 1500×1000, --iterations at full size and the
   recipe's share on coarser scales) under --memory-budget (default 400 MiB), planned as a GPU would
   plan it (`--state host`, the default: L-BFGS's history and the content's features in host memory,
   counted beside the budget, not in it; `--state device` counts them in). Reports the plan (scales,
   tiles, time, device and host memory) or its refusal, with how long the refusal took. A refused
   job runs again under the budget the refusal names. Then the same job whole (no budget): the tiled
   job's wall and CPU time against it, the difference between the pictures and the steps at the
   finest tiles' borders in each (seams), and the peak resident memory each job added (Linux VmHWM,
   reset just before it: on a CPU the host's state is in it too). --save DIR writes both pictures;
   --control runs the job whole once more from a start nudged by 1e-6, to show how far differences of
   rounding's size carry through a job (as far as the tiles' summation order carries them).
2. Time per iteration at --size (512 px): whole image, and in forced tiles of --tiles (256 and 128 px;
   median of the iterations after the first), in wall time and in the process's CPU time, against the
   plan's cost factor. Where other work shares the CPU, measure with --threads 1 (see its help).

glibc's mmap threshold is fixed at 1 MiB from the start (engine/memory.py; the engine does that itself
for a job with a tiled scale), so that the whole image and the tiles run alike and freed tensors leave
the process. `--glibc-mmap` leaves glibc's moving threshold, to see what the fix saves (the peak then
shows the allocator's retention). (`--fixed-mmap`, which set it from outside, is now the default.)

    python bench/tiled.py                       # both parts (minutes on a 2-core CPU)
    python bench/tiled.py --quick               # tiny sizes, seconds
    python bench/tiled.py --part iteration --per-iteration 3 --threads 1    # the cost of tiles
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from impasto.engine import DEFAULT, DoesNotFit, Engine, Options, Style, memory
from impasto.engine.imageops import resize
from impasto.engine.loading import load_engine
from impasto.images import to_pil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def picture(name: str, size: tuple[int, int]) -> torch.Tensor:
    for folder in (REPO.parent / "shared" / "images", REPO / "tests" / "data"):
        for path in sorted((folder / "content").glob(f"{name}.*")) + sorted(
            (folder / "styles").glob(f"{name}.*")
        ):
            rgb = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255
            return resize(torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous(), size)
    generator = torch.Generator().manual_seed(0)
    return resize(torch.rand(1, 3, 48, 64, generator=generator), size)


def peak_rss() -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def full_size_job(
    engine: Engine,
    size: tuple[int, int],
    iterations: int,
    budget: int,
    style: torch.Tensor,
    save: Path | None = None,
    control: bool = False,
) -> None:
    content = picture("chelsea", size)
    options = Options(size="full", iterations=iterations, memory_budget=budget)
    styles = [tuple(style.shape[2:])]
    where = "in host memory" if engine.state_on_host else "on the device"
    print(f"## Full-size job: {size[1]}×{size[0]}, {iterations} iterations at full size\n")
    print(f"budget {mib(budget)}, picture-sized state of tiled scales {where}\n")
    start = time.perf_counter()
    try:
        plan = engine.plan(size, styles, options)
    except DoesNotFit as refusal:
        seconds = time.perf_counter() - start
        print(f"refused in {seconds * 1000:.0f} ms: {refusal}\n")
        print(f"again under the budget it names, {mib(refusal.needed_bytes)}:\n")
        options = replace(options, memory_budget=refusal.needed_bytes)
        plan = engine.plan(size, styles, options)
    print(
        f"plan: {plan.estimate.seconds:.0f} s, device peak {mib(plan.estimate.peak_bytes)} "
        f"(budget {mib(plan.memory_budget)}), host {mib(plan.estimate.host_bytes)}\n"
    )
    print("| scale | size | tiles (interior px) | cost × | it. | planned s | s | device | host |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    tiled, tiled_seconds, tiled_cpu, tiled_growth, marks = run(engine, content, style, options, plan)
    previous = 0.0
    for index, scale in enumerate(plan.scales, 1):
        tiles = f"{scale.tiles} ({scale.tile})" if scale.tile else "whole"
        h, w = scale.size
        seconds, previous = marks[index] - previous, marks[index]
        print(
            f"| {index} | {w}×{h} | {tiles} | {scale.cost_factor:.2f} | {scale.iterations} "
            f"| {scale.seconds:.0f} | {seconds:.0f} | {mib(scale.device_bytes)} | {mib(scale.host_bytes)} |"
        )
    whole_options = replace(options, memory_budget=1 << 50)
    whole_plan = engine.plan(size, styles, whole_options)
    whole, whole_seconds, whole_cpu, whole_growth, _ = run(engine, content, style, whole_options, whole_plan)
    difference = (tiled - whole).abs() * 255
    borders = plan.scales[-1].tile or max(size)
    print(
        f"\n| job | s | CPU s | peak resident memory added | seam ratio at the finest tiles' borders |\n"
        f"|---|---:|---:|---:|---:|\n"
        f"| tiled | {tiled_seconds:.0f} | {tiled_cpu:.0f} | {mib(tiled_growth)} "
        f"| {seam_ratio(tiled, borders):.2f} |\n"
        f"| whole | {whole_seconds:.0f} | {whole_cpu:.0f} | {mib(whole_growth)} "
        f"(planned {mib(whole_plan.estimate.peak_bytes)}) | {seam_ratio(whole, borders):.2f} |\n\n"
        f"tiled / whole: {tiled_seconds / whole_seconds:.2f}× wall, {tiled_cpu / whole_cpu:.2f}× CPU time; "
        f"the pictures differ by {float(difference.mean()):.2f} levels of 255 on average, "
        f"{float(difference.max()):.0f} at most\n"
    )
    if control:
        # How far differences of rounding's size carry through the job: whole again, from a start
        # that differs by at most 1e-6 (the engine starts from the content at the working size).
        noise = 1e-6 * torch.rand(content.shape, generator=torch.Generator().manual_seed(0))
        nudged = replace(whole_options, init=resize(content, size) + noise)
        again, *_ = run(engine, content, style, nudged, whole_plan)
        nudge = (again - whole).abs() * 255
        print(
            f"control: whole again from a start nudged by at most 1e-6 differs from whole by "
            f"{float(nudge.mean()):.2f} levels on average, {float(nudge.max()):.0f} at most\n"
        )
    if save is not None:
        for name, image in (("tiled", tiled), ("whole", whole)):
            to_pil(image).save(save / f"full-{size[1]}x{size[0]}-{name}.png")


def seam_ratio(image: torch.Tensor, tile: int) -> float:
    """The largest step between adjacent rows or columns at multiples of `tile`, against the median
    step: about 1 where tile borders leave no trace."""
    ratios = []
    for axis in (2, 3):
        steps = image.diff(dim=axis).abs().mean(dim=(0, 1, 5 - axis))
        borders = range(tile, image.shape[axis], tile)
        ratios += [float(steps[b - 1] / steps.median()) for b in borders]
    return max(ratios, default=1.0)


def run(engine: Engine, content, style, options, plan) -> tuple[torch.Tensor, float, float, int, dict]:
    """The job's result, seconds, CPU seconds, peak resident memory added, and when each scale ended."""
    marks: dict[int, float] = {}
    start = time.monotonic()

    def on_progress(p) -> None:
        if p.tile == p.tiles and p.iteration == p.iterations:  # a scale done
            marks[p.scale] = time.monotonic() - start

    reset_peak_rss()
    before = peak_rss() or 0
    cpu = time.process_time()
    result = engine.stylize(content, [Style(style)], options, plan=plan, on_progress=on_progress)
    seconds, cpu = time.monotonic() - start, time.process_time() - cpu
    return result, seconds, cpu, (peak_rss() or 0) - before, marks


def mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def per_iteration(engine, side: int, tiles: list[int | None], iterations: int, style: torch.Tensor) -> None:
    content = picture("chelsea", (side * 3 // 4, side))
    recipe = replace(DEFAULT, coarse_to_fine=False)
    print(f"\n## Time per iteration at {side}×{side * 3 // 4} ({engine.precision})\n")
    print("| tiles | tiles per iteration | cost × (planned) | s / it. | × whole | CPU s / it. | × whole |")
    print("|---|---|---|---|---|---|---|")
    whole = whole_cpu = None
    for tile in tiles:
        options = Options(
            size=side, iterations=iterations, tile_size=tile, memory_budget=1 << 40, recipe=recipe
        )
        plan = engine.plan(tuple(content.shape[2:]), [tuple(style.shape[2:])], options)
        marks: list[tuple[float, float]] = []

        def on_progress(p, marks=marks) -> None:
            if p.tile == p.tiles:
                marks.append((time.monotonic(), time.process_time()))

        engine.stylize(content, [Style(style)], options, plan=plan, on_progress=on_progress)
        seconds = statistics.median(b[0] - a[0] for a, b in itertools.pairwise(marks))
        cpu = statistics.median(b[1] - a[1] for a, b in itertools.pairwise(marks))
        whole, whole_cpu = whole or seconds, whole_cpu or cpu
        scale = plan.scales[-1]
        name = "whole" if tile is None else f"{tile} px"
        print(
            f"| {name} | {scale.tiles or 1} | {scale.cost_factor:.2f} | {seconds:.2f} "
            f"| {seconds / whole:.2f} | {cpu:.2f} | {cpu / whole_cpu:.2f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--full", default="1500x1000", help="the full-size job's WxH (default 1500x1000)")
    parser.add_argument("--iterations", type=int, default=6, help="at full size; coarser: less")
    parser.add_argument("--memory-budget", type=int, default=400 << 20, help="bytes (default 400 MiB)")
    parser.add_argument(
        "--state",
        choices=["host", "device"],
        default="host",
        help="where tiled scales keep their picture-sized state: host (as on a GPU; the default) or device",
    )
    parser.add_argument(
        "--save", type=Path, help="a folder for the full-size job's pictures, tiled and whole"
    )
    parser.add_argument("--control", action="store_true", help="whole again from a start nudged by 1e-6")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--part", choices=["all", "full", "iteration"], default="all")
    parser.add_argument("--glibc-mmap", action="store_true", help="keep glibc's moving mmap threshold")
    parser.add_argument("--fixed-mmap", action="store_true", help="the default now (see above)")
    parser.add_argument("--size", type=int, default=512, help="long side of part 2 (default 512)")
    parser.add_argument("--tiles", type=int, nargs="+", default=[256, 128], help="part 2's tile sides")
    parser.add_argument("--per-iteration", type=int, default=4, help="iterations of each run of part 2")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: PyTorch's). Under other load, 2 threads wait a time slice for each "
        "other at every operation (measured: 8 ms for a 150k-element fill, 0.01 ms with 1 thread), which "
        "swamps the cost of tiles' many small operations; 1 thread measures the work",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.glibc_mmap:
        memory._fixed = True  # the engine then takes the fix as done and leaves glibc's threshold alone
        mmap = "glibc's moving threshold"
    else:
        fixed = memory.fix_malloc_mmap_threshold()
        mmap = "fixed at 1 MiB" if fixed else "not fixed (not glibc, or set outside)"
    engine = load_engine(args.device, "original", args.precision, keep_pace=False)  # warm_up measures
    engine.state_on_host = args.state == "host"
    engine.warm_up()
    threads = torch.get_num_threads()
    print(f"device {engine.device}, precision {engine.precision}, {threads} threads; mmap threshold {mmap}\n")
    style = picture("starry-night", (512, 640))
    if args.quick:
        full_size_job(engine, (300, 400), 1, 200 << 20, style, args.save, args.control)
        per_iteration(engine, 256, [None, 128], 3, style)
        return
    if args.part in ("all", "full"):
        width, height = (int(part) for part in args.full.lower().split("x"))
        budget = args.memory_budget
        full_size_job(engine, (height, width), args.iterations, budget, style, args.save, args.control)
    if args.part in ("all", "iteration"):
        per_iteration(engine, args.size, [None, *args.tiles], args.per_iteration, style)


if __name__ == "__main__":
    main()
