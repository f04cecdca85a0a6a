"""GPU numbers in one prepared run: ms per iteration, a converged 1024² job, peak memory per size.

Runs the real engine loop (Engine.stylize, the product's own path, progress callback included) on a
square crop of chelsea with starry-night:

1. ms per iteration at each --iter-sizes (default 512 and 1024), one scale, default recipe (L-BFGS)
   and Adam: the time between the end of iteration --warmup and the last one, divided by the
   iterations between, measured with device events; median over --repeats.
2. A whole default job at 1024 px (coarse to fine, --job-iterations at full size): wall seconds.
3. Peak device memory for a few iterations at each --memory-sizes (default 512 … 4096).

On a CPU (--device cpu) it measures the same things with the wall clock, so the script can be
checked without a GPU: `python bench/gpu.py --device cpu --iter-sizes 32 --memory-sizes 32 48
--job-size 48 --iterations 4 --job-iterations 2 --repeats 1`.

    python bench/gpu.py                    # on the GPU machine, about 2–4 minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import torch
from impasto.engine import DEFAULT, Engine, Options, Style, load_original_vgg19, pick_device
from impasto.engine.recipes import with_optimizer
from impasto.images import load_picture
from sample_images import IMAGES


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
    args = parser.parse_args()
    device = pick_device(args.device)
    engine = Engine(load_original_vgg19(), device, args.precision)
    clock = Clock(device)
    # Square, so that each working size N is N×N pixels (the engine scales the content to it).
    content = square(load_picture(IMAGES / "content" / "chelsea.png").rgb)
    style = load_picture(IMAGES / "styles" / "starry-night.jpg").rgb
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"- device: {name} ({device}), precision {engine.precision}, torch {torch.__version__}")
    print(f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")

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
    engine.stylize(content, [Style(style)], options)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(
        f"\nWhole default job at {args.job_size} px, {args.job_iterations} iterations at full size: "
        f"{time.perf_counter() - start:.2f} s\n"
    )

    print("| size | peak memory (3 iterations, one scale) |")
    print("|---:|---|")
    for size in args.memory_sizes:
        print(f"| {size}² | {peak_memory(engine, content, style, size)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
