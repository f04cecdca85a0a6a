"""What a server learns of this machine's pace from its jobs, and what the next server starts from.

Starts `impasto-server` as its own process on a fresh cache folder (where it measures this machine's pace
with a small job before it listens: `Engine.measure_pace`) and asks it for the plan of a job on a
1200×900 layer (by default the default job: what the dialog's cost line says) before any job, then
after each of a few jobs of other sizes (by default three of 48 px, 4 iterations, a fraction of a second
each, then one of 128 px), then runs the planned job itself: its time is the truth the plans are
compared with. Then it stops the server and starts another on the same cache folder, which plans the
job again before running anything (the plug-in's own server ends itself after 20 minutes unused).

    .venv/bin/python bench/pace.py                    # about a minute on 2 cores
    stress-ng --cpu 2 & .venv/bin/python bench/pace.py; kill %1    # the same under load
    OMP_NUM_THREADS=1 .venv/bin/python bench/pace.py --precision fp32  # a machine slower than the guess's
    .venv/bin/python bench/pace.py --jobs 48x2 --planned 64x2      # seconds (the test suite runs it)
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from impasto.client import Client
from impasto.protocol import NO_PREVIEWS, Image, ImageHeader, Settings, StyleChoice
from PIL import Image as PILImage
from sample_images import IMAGES
from transfer import start_server

REPOSITORY = Path(__file__).resolve().parents[1]
LAYER = ImageHeader("rgba8", 1200 * 900 * 4, 1200, 900)


@contextlib.contextmanager
def server(cache: Path, precision: str) -> Iterator[str]:
    """A CPU impasto-server whose cache folder is `cache`; yields its address."""
    # On a fresh cache folder the server measures this machine's pace before it listens.
    which = "the same" if any(cache.iterdir()) else "a fresh"
    started = time.monotonic()
    process, address = start_server(IMAGES / "styles", cache, ("--precision", precision))
    print(f"a server on {which} cache folder listened after {time.monotonic() - started:.1f} s")
    try:
        yield address
    finally:
        process.terminate()
        process.wait()


def settings(job: str | None) -> Settings:
    """SIZExITERATIONS, or None for the server's defaults."""
    if job is None:
        return Settings(preview_seconds=NO_PREVIEWS)
    size, iterations = map(int, job.split("x"))
    return Settings(size=size, iterations=iterations, preview_seconds=NO_PREVIEWS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--style", default="starry-night")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument(
        "--jobs", nargs="+", default=["48x4", "48x4", "48x4", "128x20"], help="SIZExITERATIONS"
    )
    parser.add_argument(
        "--planned", help="SIZExITERATIONS of the job planned and run (default: the server's)"
    )
    args = parser.parse_args()
    styles, planned_job = [StyleChoice(preset_id=args.style)], settings(args.planned)
    photo = REPOSITORY / "docs" / "examples" / "chelsea.jpg"
    content = Image.from_file(photo)

    def planned(client: Client) -> float:
        return client.plan(LAYER, styles, planned_job).estimated_seconds

    rows: list[tuple[str, float | None, float]] = []
    with tempfile.TemporaryDirectory() as cache:
        with server(Path(cache), args.precision) as address, Client(address) as client:
            rows.append(("(none yet)", None, planned(client)))
            for job in args.jobs:
                took = run(client, content, styles, settings(job))
                rows.append((f"{job.replace('x', ' px, ')} it.", took, planned(client)))
            truth = run(client, layer_content(photo), styles, planned_job)
        with server(Path(cache), args.precision) as address, Client(address) as client:
            rows.append(("(a new server)", None, planned(client)))
    print(f"the planned job on a {LAYER.width}×{LAYER.height} layer took {truth:.1f} s")
    print("| after the job | it took (s) | the planned job's plan (s) | error |")
    print("|---|---:|---:|---:|")
    for label, took, seconds in rows:
        took_text = "" if took is None else f"{took:.2f}"
        print(f"| {label} | {took_text} | {seconds:.1f} | {seconds / truth - 1:+.0%} |")
    return 0


def run(client: Client, content: Image, styles: list[StyleChoice], settings: Settings) -> float:
    started = time.monotonic()
    job = client.stylize(content, styles, settings)
    for _ in job.events():
        pass
    return time.monotonic() - started


def layer_content(photo: Path) -> Image:
    """The photo as a layer of the planned size, so that the job run is the job planned."""
    picture = PILImage.open(photo).convert("RGBA").resize((LAYER.width, LAYER.height))
    return Image(picture.tobytes(), LAYER.width, LAYER.height)


if __name__ == "__main__":
    sys.exit(main())
