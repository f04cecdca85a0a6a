"""How faithful the dialog's preview is to what OK paints, and how long it takes.

For each content/style pair: the default job as OK runs it (the CPU default: 384 px, 40 iterations), the
preview job (`preview_only`: the same job's own first scales, up to 160 px), and for comparison the
preview of before (a separate small job: 160 px, a quarter of the iterations). Fidelity is judged as a
person looking at the dialog would: both pictures brought to 32 px on the long side (colour and
composition), mean absolute difference on 0-255, divided by the photo's own difference from the final
picture — 0 is the final picture itself, 1 no closer than the unpainted photo. The target is 0.4 or less.

Times are of a warm engine (the model loaded, one job run before), as in a server that has answered the
dialog once. Runs through the jobs layer, as the server and `impasto stylize` do.

    .venv/bin/python bench/preview.py                     # the evaluation pairs, fp32
    .venv/bin/python bench/preview.py --pairs chelsea:starry-night --repeats 5
"""

from __future__ import annotations

import argparse
import io
import queue
import statistics
import threading
import time

import numpy as np
import torch
from impasto.engine.loading import load_engine
from impasto.jobs import Jobs, Request
from impasto.library import StyleLibrary
from impasto.protocol import NO_PREVIEWS, Failed, Image, Limits, Parameters, Result, Settings, StyleChoice
from PIL import Image as PILImage
from sample_images import IMAGES

EVALUATION = ["camera:composition-vii", "astronaut:water-lilies", "coffee:shipwreck-of-the-minotaur"]
JUDGE_SIDE = 32


def run(jobs: Jobs, content: bytes, style: bytes, settings: Settings) -> tuple[np.ndarray, float]:
    """One job through the jobs layer: (its picture as uint8 RGB, seconds from submission to result)."""
    parameters = Parameters(
        Image(content, encoded=True).header,
        (StyleChoice(upload=0),),
        (Image(style, encoded=True).header,),
        settings,
    )
    started = time.perf_counter()
    upload = jobs.admit(Request(parameters))
    upload.add(0, content)
    upload.add(1, style)
    events: queue.Queue = queue.Queue()
    jobs.submit(upload, events.put, threading.Event())
    while not isinstance(event := events.get(), Result | Failed):
        pass
    seconds = time.perf_counter() - started
    if isinstance(event, Failed):
        raise event.error
    picture = PILImage.open(io.BytesIO(event.image.data)).convert("RGB")
    return np.asarray(picture), seconds


def judged(pixels: np.ndarray) -> np.ndarray:
    """A picture as the comparison sees it: 32 px on the long side, float."""
    image = PILImage.fromarray(pixels)
    scale = JUDGE_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return np.asarray(image.resize(size, PILImage.Resampling.LANCZOS), dtype=np.float64)


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(judged(a) - judged(b)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", default=EVALUATION, metavar="CONTENT:STYLE")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=3, help="preview runs timed per pair (median)")
    parser.add_argument("--threads", type=int, help="torch threads (default: PyTorch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    engine = load_engine("cpu", precision=args.precision)
    limits = Limits(max_size=1 << 15, max_queue=1, max_iterations=1_000_000)
    jobs = Jobs([engine], StyleLibrary(IMAGES / "no-such-folder"), limits)
    final = Settings(preview_seconds=NO_PREVIEWS)  # the server's defaults: what OK paints
    preview = Settings(preview_only=True, preview_seconds=NO_PREVIEWS)
    before = Settings(size=160, iterations=max(1, jobs.default_iterations // 4), preview_seconds=NO_PREVIEWS)
    print(f"engine: {engine.device}, {engine.precision}, {torch.get_num_threads()} threads; images: {IMAGES}")
    print("| pair | preview | ratio (target ≤ 0.4) | before: ratio | preview s (median) | final s |")
    print("|---|---|---:|---:|---:|---:|")
    try:
        for pair in args.pairs:
            content_name, style_name = pair.split(":")
            content = (IMAGES / "content" / f"{content_name}.png").read_bytes()
            style = (IMAGES / "styles" / f"{style_name}.jpg").read_bytes()
            photo = np.asarray(PILImage.open(io.BytesIO(content)).convert("RGB"))
            run(jobs, content, style, preview)  # warm: the style's targets at these sizes, the allocator
            painted, final_seconds = run(jobs, content, style, final)
            times = []
            for _ in range(args.repeats):
                small, seconds = run(jobs, content, style, preview)
                times.append(seconds)
            old, _ = run(jobs, content, style, before)
            baseline = distance(photo, painted)
            print(
                f"| {pair} | {small.shape[1]}×{small.shape[0]} | {distance(small, painted) / baseline:.2f} "
                f"| {distance(old, painted) / baseline:.2f} | {statistics.median(times):.2f} "
                f"| {final_seconds:.1f} |",
                flush=True,
            )
    finally:
        jobs.close(grace_seconds=0)


if __name__ == "__main__":
    main()
