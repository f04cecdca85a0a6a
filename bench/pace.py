"""What a server learns of this machine's pace from its jobs, and what the next server starts from.

Starts `impasto-server` as its own process on a fresh cache folder and asks it for the plan of the
default job on a 1200×900 layer (what the dialog's cost line says) before any job, then after each of a
few jobs of other sizes (by default three of 48 px, 4 iterations, a fraction of a second each, then one
of 128 px), then runs that default job itself: its time is the truth the plans are compared with. Then
it stops the server and starts another on the same cache folder, which plans the default job again
before running anything (the plug-in's own server ends itself after 20 minutes unused).

    .venv/bin/python bench/pace.py                    # about a minute on 2 cores
    stress-ng --cpu 2 & .venv/bin/python bench/pace.py; kill %1    # the same under load
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from impasto.client import Client
from impasto.protocol import NO_PREVIEWS, Image, ImageHeader, Settings, StyleChoice
from PIL import Image as PILImage

REPOSITORY = Path(__file__).resolve().parents[1]
LAYER = ImageHeader("rgba8", 1200 * 900 * 4, 1200, 900)


def start_server(cache: Path) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "impasto.service.main", "--port", "0", "--device", "cpu"]
    environment = {**os.environ, "IMPASTO_CACHE_DIR": str(cache)}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=environment)
    for line in process.stderr:
        if "listening on" in line:
            return process, line.split("listening on ", 1)[1].split()[0]
    raise RuntimeError("impasto-server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--style", default="starry-night")
    parser.add_argument(
        "--jobs", nargs="+", default=["48x4", "48x4", "48x4", "128x20"], help="SIZExITERATIONS"
    )
    args = parser.parse_args()
    styles = [StyleChoice(preset_id=args.style)]
    photo = REPOSITORY / "docs" / "examples" / "chelsea.jpg"
    content = Image.from_file(photo)
    rows: list[tuple[str, float | None, float]] = []
    with tempfile.TemporaryDirectory() as cache:
        process, address = start_server(Path(cache))
        try:
            with Client(address) as client:
                rows.append(("(none yet)", None, client.plan(LAYER, styles).estimated_seconds))
                for job in args.jobs:
                    size, iterations = map(int, job.split("x"))
                    settings = Settings(size=size, iterations=iterations, preview_seconds=NO_PREVIEWS)
                    took = run(client, content, styles, settings)
                    rows.append(
                        (f"{size} px, {iterations} it.", took, client.plan(LAYER, styles).estimated_seconds)
                    )
                truth = run(client, layer_content(photo), styles, Settings(preview_seconds=NO_PREVIEWS))
        finally:
            process.terminate()
            process.wait()
        process, address = start_server(Path(cache))
        try:
            with Client(address) as client:
                rows.append(("(a new server)", None, client.plan(LAYER, styles).estimated_seconds))
        finally:
            process.terminate()
            process.wait()
    print(f"the default job on a 1200×900 layer took {truth:.1f} s")
    print("| after the job | it took (s) | plan of the default job (s) | error |")
    print("|---|---:|---:|---:|")
    for label, took, planned in rows:
        took_text = "" if took is None else f"{took:.2f}"
        print(f"| {label} | {took_text} | {planned:.1f} | {planned / truth - 1:+.0%} |")
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
