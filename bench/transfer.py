"""How long a big layer takes to cross the wire, and how soon a job shows progress.

Starts `impasto-server` as its own process on a loopback port, then for a 24-megapixel RGBA layer
(6000×4000, photo-like content with a varying alpha) sends one Stylize call per pixel encoding
with a tiny workload (16 px working size, 1 iteration), so that the time is almost all transfer,
decoding and resizing:

- raw RGBA8 rows (what GIMP hands the plug-in), result as raw RGBA8, through Impasto's own client
  (pure Python: grpclib and protobuf's Python runtime, what the plug-in runs);
- the same through grpcio's compiled client, for reference;
- PNG (compress level 1) made by the client, result as PNG, through Impasto's client.

For each: upload (call start to the Queued event), the rest (server work and the result's
download) and the total, median of --repeats. Then the latency from request to first progress
event with a warm model, for a 64 px content image.

    .venv/bin/python bench/transfer.py [--repeats 3] [--megapixels 24]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np
from impasto.client import Client
from impasto.protocol import NO_PREVIEWS, Image, Progress, Queued, Settings, StyleChoice
from impasto.protocol.wire import request_messages
from impasto.v1 import impasto_pb2_grpc
from PIL import Image as PILImage
from sample_images import IMAGES

TINY = Settings(size=16, iterations=1, preview_seconds=NO_PREVIEWS)


def start_server(
    styles: Path, cache: Path | None = None, flags: Sequence[str] = ()
) -> tuple[subprocess.Popen, str]:
    """impasto-server on a loopback port (its cache folder `cache`, if given; more of its `flags`):
    (process, address)."""
    command = [sys.executable, "-m", "impasto.service.main", "--port", "0", "--styles-dir", str(styles)]
    command += flags
    environment = {**os.environ, **({"IMPASTO_CACHE_DIR": str(cache)} if cache else {})}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=environment)
    for line in process.stderr:
        if "listening on" in line:
            return process, line.split("listening on ", 1)[1].split()[0]
    raise RuntimeError("impasto-server did not start")


def layer(width: int, height: int) -> np.ndarray:
    """A photo upscaled to the layer's size (compresses like a photo, unlike noise), varying alpha."""
    photo = PILImage.open(IMAGES / "content" / "astronaut.png").convert("RGB").resize((width, height))
    alpha = np.tile(np.linspace(0, 255, width, dtype=np.uint8), (height, 1))
    return np.dstack([np.asarray(photo), alpha])


def timed(events, started: float) -> dict[str, float]:
    """`events`: Impasto client events, or grpcio's raw StylizeEvent messages (reference run)."""
    queued = None
    for event in events:
        if queued is None and (isinstance(event, Queued) or getattr(event, "WhichOneof", None)):
            queued = time.perf_counter()
    finished = time.perf_counter()
    return {"upload": queued - started, "rest": finished - queued, "total": finished - started}


def grpcio_call(address: str, content: Image) -> dict[str, float]:
    options = [("grpc.max_receive_message_length", 2 << 20)]
    with grpc.insecure_channel(address, options=options) as channel:
        stub = impasto_pb2_grpc.StyleTransferStub(channel)
        started = time.perf_counter()
        requests = request_messages(content, [StyleChoice(preset_id="udnie")], [], TINY)
        return timed(stub.Stylize(requests), started)


def client_call(address: str, content: Image) -> dict[str, float]:
    with Client(address) as client:
        started = time.perf_counter()
        job = client.stylize(content, [StyleChoice(preset_id="udnie")], TINY)
        return timed(job.events(), started)


def png_call(address: str, pixels: np.ndarray) -> dict[str, float]:
    """The upload time includes the client's PNG encoding."""
    with Client(address) as client:
        started = time.perf_counter()
        buffer = io.BytesIO()
        PILImage.fromarray(pixels, "RGBA").save(buffer, "PNG", compress_level=1)
        job = client.stylize(Image(buffer.getvalue(), encoded=True), [StyleChoice(preset_id="udnie")], TINY)
        return timed(job.events(), started)


def first_progress(address: str) -> float:
    content = Image.from_file(IMAGES / "content" / "camera.png")
    with Client(address) as client:
        started = time.perf_counter()
        job = client.stylize(
            content,
            [StyleChoice(preset_id="udnie")],
            Settings(size=64, iterations=5, preview_seconds=NO_PREVIEWS),
        )
        for event in job.events():
            if isinstance(event, Progress):
                seconds = time.perf_counter() - started
                job.cancel()
                return seconds
    raise RuntimeError("no progress event")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--megapixels", type=float, default=24)
    args = parser.parse_args()
    width = int((args.megapixels * 1e6 * 1.5) ** 0.5)
    height = int(width / 1.5)
    pixels = layer(width, height)
    raw = Image(pixels.tobytes(), width, height)
    process, address = start_server(IMAGES / "styles")
    try:
        runs = {
            "raw RGBA8, Impasto's client (pure Python)": lambda: client_call(address, raw),
            "raw RGBA8, grpcio's client (reference)": lambda: grpcio_call(address, raw),
            "PNG (level 1), Impasto's client": lambda: png_call(address, pixels),
        }
        print(
            f"{width}×{height} RGBA ({width * height / 1e6:.1f} Mpx, {len(raw.data) / 2**20:.0f} MiB raw), "
            f"loopback, median of {args.repeats}; seconds\n"
        )
        print("| encoding, client | upload | server and download | total |")
        print("|---|---:|---:|---:|")
        for name, run in runs.items():
            results = [run() for _ in range(args.repeats)]
            median = {k: statistics.median(r[k] for r in results) for k in ("upload", "rest", "total")}
            print(f"| {name} | {median['upload']:.2f} | {median['rest']:.2f} | {median['total']:.2f} |")
        latencies = [first_progress(address) for _ in range(max(3, args.repeats))]
        print(
            "\nRequest to first progress event, 64 px job, warm model: "
            f"median {statistics.median(latencies):.3f} s "
            f"(min {min(latencies):.3f}, max {max(latencies):.3f})"
        )
    finally:
        process.terminate()
        process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
