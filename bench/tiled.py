"""Full-size jobs in tiles: time and peak memory of a 1600×1200 job at its own size, and the cost of
tiling per iteration against the whole image.

1. A full-size job (`Options(size="full")`) on a 1600×1200 content with a memory budget (default
   1 GiB, which makes the fine scales run in tiles): every scale runs `--iterations` iterations.
   Reports the plan (scales, tiles, estimate), wall time, time per scale and the peak resident memory
   the job added (Linux VmHWM, reset just before the job).
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
from impasto.engine import DEFAULT, Options, Style, memory
from impasto.engine.imageops import resize
from impasto.engine.loading import load_engine
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


def full_size_job(engine, size: tuple[int, int], iterations: int, budget: int, style: torch.Tensor) -> None:
    content = picture("chelsea", size)
    recipe = replace(DEFAULT, coarse_iterations=1.0)
    options = Options(size="full", iterations=iterations, memory_budget=budget, recipe=recipe)
    plan = engine.plan(size, [tuple(style.shape[2:])], options)
    mib = budget / 2**20
    print(f"## Full-size job: {size[1]}×{size[0]}, {iterations} iterations per scale, budget {mib:.0f} MiB\n")
    print(f"estimate: {plan.estimate.seconds:.0f} s, peak {plan.estimate.peak_bytes / 2**20:.0f} MiB\n")
    print("| scale | size | tiles (interior px) | cost × | seconds | s / iteration |")
    print("|---|---|---|---|---|---|")
    marks: dict[int, list[float]] = {}

    def on_progress(p) -> None:
        if p.tile == p.tiles:  # an iteration done
            marks.setdefault(p.scale, []).append(time.monotonic())

    reset = reset_peak_rss()
    before = peak_rss()
    start = time.monotonic()
    result = engine.stylize(content, [Style(style)], options, plan=plan, on_progress=on_progress)
    wall = time.monotonic() - start
    growth = peak_rss() - before if reset and before is not None else None
    previous = start
    for index, scale in enumerate(plan.scales, 1):
        done = marks[index]
        seconds = done[-1] - previous
        tiles = f"{scale.tiles} ({scale.tile})" if scale.tile else "whole"
        h, w = scale.size
        each = seconds / len(done)
        print(f"| {index} | {w}×{h} | {tiles} | {scale.cost_factor:.2f} | {seconds:.1f} | {each:.1f} |")
        previous = done[-1]
    print(f"\nresult {tuple(result.shape[2:])}; wall time {wall:.1f} s", end="")
    if growth is not None:
        print(f"; peak resident memory added {growth / 2**20:.0f} MiB (budget {budget / 2**20:.0f} MiB)")
    else:
        print()


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
    parser.add_argument("--iterations", type=int, default=2, help="per scale of the full-size job")
    parser.add_argument("--memory-budget", type=int, default=1 << 30, help="bytes (default 1 GiB)")
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
    engine = load_engine(args.device, "original", args.precision)
    engine.warm_up()
    threads = torch.get_num_threads()
    print(f"device {engine.device}, precision {engine.precision}, {threads} threads; mmap threshold {mmap}\n")
    style = picture("starry-night", (512, 640))
    if args.quick:
        full_size_job(engine, (300, 400), 1, 200 << 20, style)
        per_iteration(engine, 256, [None, 128], 3, style)
        return
    if args.part in ("all", "full"):
        full_size_job(engine, (1200, 1600), args.iterations, args.memory_budget, style)
    if args.part in ("all", "iteration"):
        per_iteration(engine, args.size, [None, *args.tiles], args.per_iteration, style)


if __name__ == "__main__":
    main()
