"""What the Gram cache saves: one job with a cold cache, then the same job again, at 512 and 1024 px.

The job runs the default recipe with --iterations at full size (1 by default, so that the style pass is
a large share and the saving is easy to see; a saving in seconds is the same for longer jobs). For
each size: the cold run's seconds, the warm run's, the difference, and whether the results are
bit-identical. Median of --repeats, each with a fresh cache folder.

    .venv/bin/python bench/style_cache.py [--sizes 512 1024] [--iterations 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from impasto.engine import Engine, Options, Style, load_original_vgg19
from impasto.engine.gram_cache import GramCache
from impasto.engine.plan import scale_sizes
from impasto.images import load_picture
from sample_images import IMAGES


def timed_job(
    engine: Engine, content: torch.Tensor, style: torch.Tensor, options: Options
) -> tuple[float, torch.Tensor]:
    started = time.perf_counter()
    result = engine.stylize(content, [Style(style)], options)
    return time.perf_counter() - started, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    weights = load_original_vgg19()
    content = load_picture(IMAGES / "content" / "chelsea.png").rgb
    style = load_picture(IMAGES / "styles" / "starry-night.jpg").rgb
    print(f"chelsea + starry-night, {args.iterations} iteration(s) at full size, median of {args.repeats}\n")
    print("| long side | scales | cold cache s | warm cache s | saved s | bit-identical |")
    print("|---:|---:|---:|---:|---:|---|")
    for size in args.sizes:
        options = Options(size=size, iterations=args.iterations)
        cold, warm, identical = [], [], True
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as folder:
                engine = Engine(weights, torch.device("cpu"), gram_cache=GramCache(Path(folder)))
                seconds, first = timed_job(engine, content, style, options)
                cold.append(seconds)
                seconds, second = timed_job(engine, content, style, options)
                warm.append(seconds)
                identical &= torch.equal(first, second)
        scales = len(scale_sizes(content.shape[2], content.shape[3], size, options.recipe))
        c, w = statistics.median(cold), statistics.median(warm)
        print(f"| {size} | {scales} | {c:.2f} | {w:.2f} | {c - w:.2f} | {'yes' if identical else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
