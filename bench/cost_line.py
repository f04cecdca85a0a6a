"""What the dialog's cost line says OK will take, before and after its preview, against what OK took.

For each content/style pair, on a fresh engine (the first guess for its device and precision, as a server
that has just started): the plan of OK's job, then the dialog's preview (the job's own first scale), the
plan again (what the line says once the preview shows: the engine has learned its pace from the
preview), OK's job timed from submission to result, and the plan once more (what a next job would be
told). Run it on a quiet machine and beside `stress-ng --cpu 2`: the first guess is for a quiet one.

    PYTHONPATH=bench .venv/bin/python bench/cost_line.py
    stress-ng --cpu 2 --timeout 0 & PYTHONPATH=bench .venv/bin/python bench/cost_line.py; kill %1
"""

from __future__ import annotations

import argparse
import io
import os

from impasto.engine.loading import load_engine
from impasto.jobs import Jobs, Request
from impasto.library import StyleLibrary
from impasto.protocol import NO_PREVIEWS, ImageHeader, Limits, Parameters, Settings, StyleChoice
from PIL import Image as PILImage
from preview import EVALUATION, run
from sample_images import IMAGES


def planned_seconds(jobs: Jobs, content: bytes, style: bytes, settings: Settings) -> float:
    """The plan's time, asked as the dialog asks it: with the pictures' sizes only."""
    parameters = Parameters(sized(content), (StyleChoice(upload=0),), (sized(style),), settings)
    return jobs.plan(Request(parameters)).estimated_seconds


def sized(encoded: bytes) -> ImageHeader:
    width, height = PILImage.open(io.BytesIO(encoded)).size
    return ImageHeader("rgba8", width * height * 4, width, height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", default=EVALUATION, metavar="CONTENT:STYLE")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    args = parser.parse_args()

    ok = Settings(preview_seconds=NO_PREVIEWS)  # the server's defaults: what OK paints
    preview = Settings(preview_only=True, preview_seconds=NO_PREVIEWS)
    limits = Limits(max_size=1 << 15, max_queue=1, max_iterations=1_000_000)
    print(f"load average at the start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; images: {IMAGES}")
    print("| pair | precision | before the preview s | after it s | OK's job s | after the job s |")
    print("|---|---|---:|---:|---:|---:|")
    for pair in args.pairs:
        content_name, style_name = pair.split(":")
        content = (IMAGES / "content" / f"{content_name}.png").read_bytes()
        style = (IMAGES / "styles" / f"{style_name}.jpg").read_bytes()
        engine = load_engine("cpu", precision=args.precision)
        engine.warm_up()  # as impasto-server does before it listens
        jobs = Jobs([engine], StyleLibrary(IMAGES / "no-such-folder"), limits)
        try:
            before = planned_seconds(jobs, content, style, ok)
            run(jobs, content, style, preview)
            after_preview = planned_seconds(jobs, content, style, ok)
            _, took = run(jobs, content, style, ok)
            after_job = planned_seconds(jobs, content, style, ok)
        finally:
            jobs.close(grace_seconds=0)
        seconds = " | ".join(f"{value:.1f}" for value in (before, after_preview, took, after_job))
        print(f"| {pair} | {engine.precision} | {seconds} |", flush=True)


if __name__ == "__main__":
    main()
