"""What the preview's first scale costs the whole job: the default CPU job (384 px, 40 iterations) with
the schedule of before (a first scale of 128 px on the long side, running half the iterations like every
coarser scale) and with the default recipe's (a first scale of `min_pixels`, running all of them).

Quality is bench/quality.py's two views (lower is better; "conv" is the judge the engine does not
optimise); time is the wall time of `Engine.stylize` on a warm engine.

    .venv/bin/python bench/first_scale.py                  # the evaluation pairs, fp32
    .venv/bin/python bench/first_scale.py --schedules now --precision bf16   # today's job in bf16
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from impasto.engine import DEFAULT, Options, Style
from impasto.engine.loading import load_engine
from impasto.images import load_picture
from preview import EVALUATION
from quality import Reference
from sample_images import IMAGES

BEFORE = replace(DEFAULT, min_pixels=128 * 85, first_scale_iterations=DEFAULT.coarse_iterations)
SCHEDULES = {"before": BEFORE, "now": DEFAULT}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", default=EVALUATION, metavar="CONTENT:STYLE")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--schedules", nargs="+", choices=list(SCHEDULES), default=list(SCHEDULES))
    args = parser.parse_args()

    engine = load_engine("cpu", precision=args.precision)
    engine.warm_up()
    print(f"engine: {engine.device}, {engine.precision}, {torch.get_num_threads()} threads")
    print("| pair | schedule | scales | s | relu: style / content | conv: style / content |")
    print("|---|---|---:|---:|---:|---:|")
    for pair in args.pairs:
        content_name, style_name = pair.split(":")
        content = load_picture(IMAGES / "content" / f"{content_name}.png").rgb
        style = load_picture(IMAGES / "styles" / f"{style_name}.jpg").rgb
        for name in args.schedules:
            options = Options(size=args.size, iterations=args.iterations, recipe=SCHEDULES[name])
            plan = engine.plan(tuple(content.shape[2:]), [tuple(style.shape[2:])], options)
            started = time.perf_counter()
            result = engine.stylize(content, [Style(style)], options)
            seconds = time.perf_counter() - started
            scores = Reference(content, style, tuple(result.shape[2:])).scores(result)
            views = " | ".join(f"{s:.3f} / {c:.3f}" for s, c in scores.values())
            print(f"| {pair} | {name} | {len(plan.scales)} | {seconds:.1f} | {views} |", flush=True)


if __name__ == "__main__":
    main()
