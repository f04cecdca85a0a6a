"""L-BFGS's history in host memory: what a smaller one (bf16 values, fewer pairs) costs in quality, and
what each moves between host and device.

1. Quality: one tiled scale of chelsea + starry-night (--size, --iterations, tiles of half the long side
   at the exact halo, fp32 convolutions), with the history on the host as a GPU's tiled scale keeps it
   (`Engine(state_on_host=True)`), for each history: fp32 × 10 pairs (the reference), bf16 × 10, fp32 × 5,
   bf16 × 5. For each: the final loss, the style and content distances of bench/quality.py, the mean
   and largest difference from the reference in levels of 255, and the job's wall time.
2. Time: one L-BFGS step's work on the history at --megapixels (24) on this CPU, history on the host
   (pieces, conversions) against on the device, and the bytes each step moves between host and device
   (each pair's two vectors read twice by the two-loop recursion, the new pair written once), with the
   seconds that takes at --link-gbs (PCIe 4.0 ×16 moves about 25 GB/s from pinned memory).

    .venv/bin/python bench/history.py                  # minutes on a 2-core CPU
    .venv/bin/python bench/history.py --quick          # tiny: checks that it runs
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch
from impasto.engine import DEFAULT, Engine, Options, Style, load_original_vgg19
from impasto.engine.imageops import fit_long_side
from impasto.engine.lbfgs import LBFGS, History
from impasto.images import load_picture
from quality import Reference
from sample_images import IMAGES

HISTORIES = [("fp32", 10), ("bf16", 10), ("fp32", 5), ("bf16", 5)]


def quality(size: int, iterations: int) -> None:
    content = load_picture(IMAGES / "content" / "chelsea.png").rgb
    style = load_picture(IMAGES / "styles" / "starry-night.jpg").rgb
    working = fit_long_side(*content.shape[2:], size)
    engine = Engine(load_original_vgg19(), torch.device("cpu"), "fp32", state_on_host=True)
    engine.warm_up()
    reference = Reference(content, style, working)
    print(f"## Quality: {working[1]}×{working[0]}, {iterations} iterations, tiles of {size // 2} px\n")
    print("| history | final loss | style distance | content distance | Δ mean (levels) | Δ max | s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    first = None
    for precision, pairs in HISTORIES:
        recipe = replace(DEFAULT, coarse_to_fine=False, history_precision=precision, lbfgs_history=pairs)
        options = Options(size=size, iterations=iterations, tile_size=size // 2, recipe=recipe)
        seen = []
        start = time.perf_counter()
        result = engine.stylize(content, [Style(style)], options, on_progress=seen.append)
        seconds = time.perf_counter() - start
        loss = seen[-1].content_loss + seen[-1].style_loss + seen[-1].tv_loss
        style_distance, content_distance = reference.distances(result)
        first = result if first is None else first
        difference = (result - first).abs() * 255
        print(
            f"| {precision} × {pairs} | {loss:.4f} | {style_distance:.4f} | {content_distance:.4f} "
            f"| {float(difference.mean()):.2f} | {float(difference.max()):.1f} | {seconds:.0f} |",
            flush=True,
        )


def step_time(megapixels: float, link_gbs: float, repeats: int) -> None:
    values = int(megapixels * 1e6) * 3
    print(f"\n## One step's history work at {megapixels:g} Mpx ({values / 1e6:.0f} M values), this CPU\n")
    print("| history | where | s / step (median) | moved per step | at the link |")
    print("|---|---|---:|---:|---:|")
    generator = torch.Generator().manual_seed(0)
    for precision, pairs in HISTORIES:
        for on_host in (False, True):
            if not on_host and precision == "bf16":
                continue  # bf16 applies to a history on the host
            dtype = torch.bfloat16 if precision == "bf16" else None
            x = torch.zeros(values, requires_grad=True)
            optimizer = LBFGS(x, 1e-3, History(pairs, x.device, on_host, dtype))
            times = []
            for step in range(pairs + repeats):
                gradient = torch.randn(values, generator=generator)

                def closure(x=x, gradient=gradient) -> torch.Tensor:
                    x.grad = gradient
                    return torch.zeros(())

                start = time.perf_counter()
                optimizer.step(closure)
                if step >= pairs:  # a full history
                    times.append(time.perf_counter() - start)
            value_bytes = 2 if precision == "bf16" else 4
            moved = values * value_bytes * (2 * 2 * pairs + 2) if on_host else 0
            link = f"{moved / (link_gbs * 1e9):.2f} s" if on_host else "—"
            where = "host" if on_host else "device"
            print(
                f"| {precision} × {pairs} | {where} | {statistics.median(times):.2f} "
                f"| {moved / 1e9:.1f} GB | {link} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=384, help="long side of the quality runs")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--megapixels", type=float, default=24.0, help="picture of the step timing")
    parser.add_argument("--link-gbs", type=float, default=25.0, help="host-device GB/s, pinned")
    parser.add_argument("--repeats", type=int, default=3, help="steps timed with a full history")
    parser.add_argument("--part", choices=["all", "quality", "time"], default="all")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    args = parser.parse_args()
    if args.quick:
        args.size, args.iterations, args.megapixels, args.repeats = 96, 3, 0.05, 1
    torch.manual_seed(0)
    if args.part in ("all", "quality"):
        quality(args.size, args.iterations)
    if args.part in ("all", "time"):
        step_time(args.megapixels, args.link_gbs, args.repeats)


if __name__ == "__main__":
    main()
