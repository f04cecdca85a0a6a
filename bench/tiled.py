"""Full-size jobs in tiles: time and peak memory of a 1600×1200 job at its own size, and the cost of
tiling per iteration against the whole image.

1. A full-size job (`Options(size="full")`) on a 1600×1200 content with a memory budget (default
   1 GiB, which makes the fine scales run in tiles): every scale runs `--iterations` iterations.
   Reports the plan (scales, tiles, estimate), wall time, time per scale and the peak resident memory
   the job added (Linux VmHWM, reset just before the job). With `--fixed-mmap`, glibc's mmap threshold
   is fixed at 1 MiB so that freed tensors leave the process, as in the test of the budget: the peak
   then shows the engine's memory rather than the allocator's retention (and runs slower).
2. Time per iteration at 512 px: whole image, and in forced tiles of 256 and 128 px (median of the
   iterations after the first).

    python bench/tiled.py                       # both parts (minutes on a 2-core CPU)
    python bench/tiled.py --quick               # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

if "--fixed-mmap" in sys.argv and os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
    # Re-run with glibc's mmap threshold fixed before anything is allocated (see the docstring).
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "1048576"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import numpy as np
import torch
from impasto.engine import DEFAULT, Options, Style
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
    print("| tiles | tiles per iteration | cost × (planned) | s / iteration | × whole |")
    print("|---|---|---|---|---|")
    whole = None
    for tile in tiles:
        options = Options(
            size=side, iterations=iterations, tile_size=tile, memory_budget=1 << 40, recipe=recipe
        )
        plan = engine.plan(tuple(content.shape[2:]), [tuple(style.shape[2:])], options)
        marks: list[float] = []

        def on_progress(p, marks=marks) -> None:
            if p.tile == p.tiles:
                marks.append(time.monotonic())

        engine.stylize(content, [Style(style)], options, plan=plan, on_progress=on_progress)
        seconds = statistics.median(b - a for a, b in itertools.pairwise(marks))
        whole = whole or seconds
        scale = plan.scales[-1]
        name = "whole" if tile is None else f"{tile} px"
        ratio = seconds / whole
        print(f"| {name} | {scale.tiles or 1} | {scale.cost_factor:.2f} | {seconds:.2f} | {ratio:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--iterations", type=int, default=2, help="per scale of the full-size job")
    parser.add_argument("--memory-budget", type=int, default=1 << 30, help="bytes (default 1 GiB)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--part", choices=["all", "full", "iteration"], default="all")
    parser.add_argument("--fixed-mmap", action="store_true", help="glibc mmap threshold 1 MiB (see above)")
    args = parser.parse_args()
    engine = load_engine(args.device, "original", args.precision)
    engine.warm_up()
    print(f"device {engine.device}, precision {engine.precision}, {torch.get_num_threads()} threads\n")
    style = picture("starry-night", (512, 640))
    if args.quick:
        full_size_job(engine, (300, 400), 1, 200 << 20, style)
        per_iteration(engine, 256, [None, 128], 3, style)
        return
    if args.part in ("all", "full"):
        full_size_job(engine, (1200, 1600), args.iterations, args.memory_budget, style)
    if args.part in ("all", "iteration"):
        per_iteration(engine, 512, [None, 256, 128], 4, style)


if __name__ == "__main__":
    main()
