"""How long a big layer takes to cross the wire, and how soon a job shows progress.

Starts `impasto-server` as its own process on a loopback port, then for a 24-megapixel RGBA layer
(6000×4000, photo-like content with a varying alpha) sends one Stylize call per pixel encoding
with a tiny workload (16 px working size, 1 iteration), so that the time is almost all transfer,
decoding and resizing:

- raw RGBA8 rows (what GIMP hands the plug-in), result as raw RGBA8;
- PNG (compress level 1) made by the client, result as PNG;
- raw RGBA8 with gRPC's gzip compression on the call.

For each: upload (call start to the Queued event), server work (Queued to the first result
chunk), download (first to last result chunk) and the total, median of --repeats. Then the
latency from request to first progress event with a warm model, for a 64 px content image.

    .venv/bin/python bench/transfer.py [--repeats 3] [--megapixels 24]
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from impasto.client import Client, Image, Settings, StyleSpec, _requests
from impasto.v1 import impasto_pb2_grpc
from PIL import Image as PILImage

IMAGES = Path(__file__).resolve().parents[2] / "shared" / "images"
TINY = Settings(size=16, iterations=1, preview_seconds=-1)


def start_server(styles: Path) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "impasto.service.main", "--port", "0", "--styles-dir", str(styles)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if "listening on" in line:
            return process, line.split("listening on ", 1)[1].split()[0]
    raise RuntimeError("impasto-server did not start")


def layer(width: int, height: int) -> np.ndarray:
    """A photo upscaled to the layer's size (compresses like a photo, unlike noise), varying alpha."""
    photo = PILImage.open(IMAGES / "content" / "astronaut.png").convert("RGB").resize((width, height))
    alpha = np.tile(np.linspace(0, 255, width, dtype=np.uint8), (height, 1))
    return np.dstack([np.asarray(photo), alpha])


def timed_call(events, started: float) -> dict[str, float]:
    marks: dict[str, float] = {}
    for event in events:
        kind = event.WhichOneof("event")
        if kind == "queued" and "queued" not in marks:
            marks["queued"] = time.perf_counter()
        if kind == "result":
            marks.setdefault("first_result", time.perf_counter())
            marks["last_result"] = time.perf_counter()
    return {
        "upload": marks["queued"] - started,
        "server": marks["first_result"] - marks["queued"],
        "download": marks["last_result"] - marks["first_result"],
        "total": marks["last_result"] - started,
    }


def raw_call(address: str, content: Image, compression: grpc.Compression | None) -> dict[str, float]:
    options = [("grpc.max_receive_message_length", 2 << 20)]
    with grpc.insecure_channel(address, options=options) as channel:
        stub = impasto_pb2_grpc.StyleTransferStub(channel)
        started = time.perf_counter()
        call = stub.Stylize(_requests(content, [StyleSpec(preset="udnie")], TINY), compression=compression)
        return timed_call(call, started)


def png_call(address: str, pixels: np.ndarray) -> dict[str, float]:
    """The upload time includes the client's PNG encoding."""
    started = time.perf_counter()
    buffer = io.BytesIO()
    PILImage.fromarray(pixels, "RGBA").save(buffer, "PNG", compress_level=1)
    with Client(address) as client:
        job = client.stylize(Image(buffer.getvalue(), encoded=True), [StyleSpec(preset="udnie")], TINY)
        return timed_call(job.call, started)


def first_progress(address: str) -> float:
    content = Image.from_file(IMAGES / "content" / "camera.png")
    with Client(address) as client:
        started = time.perf_counter()
        job = client.stylize(
            content, [StyleSpec(preset="udnie")], Settings(size=64, iterations=5, preview_seconds=-1)
        )
        for event in job.call:
            if event.HasField("progress"):
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
            "raw RGBA8": lambda: raw_call(address, raw, None),
            "PNG (level 1)": lambda: png_call(address, pixels),
            "raw RGBA8 + gRPC gzip": lambda: raw_call(address, raw, grpc.Compression.Gzip),
        }
        print(
            f"{width}×{height} RGBA ({width * height / 1e6:.1f} Mpx, {len(raw.data) / 2**20:.0f} MiB raw), "
            f"loopback, median of {args.repeats}; seconds\n"
        )
        print("| encoding | upload | server | download | total |")
        print("|---|---:|---:|---:|---:|")
        for name, run in runs.items():
            results = [run() for _ in range(args.repeats)]
            median = {
                k: statistics.median(r[k] for r in results) for k in ("upload", "server", "download", "total")
            }
            print(
                f"| {name} | {median['upload']:.2f} | {median['server']:.2f} | {median['download']:.2f} | "
                f"{median['total']:.2f} |"
            )
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
