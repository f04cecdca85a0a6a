"""The default CPU job a GIMP user starts: a 12-megapixel photo, a built-in preset, nothing else set.

Runs `impasto stylize PHOTO --style PRESET -o OUT.png` as a user would (a fresh process each time, the
product's defaults; `--precision` only to pin what runs: fp32 unless told, what most CPUs run)
and reads the progress bar it draws on stderr as the user reads it, with a clock. For each run it
reports:

* the whole run's wall time (import, model load, decoding the photo, the optimisation, scaling the result
  to the photo's size, writing the PNG);
* when the bar first showed a time left, and how far each time left the user saw was from the truth
  (the run's end minus the moment it was shown): the first one, and the ones at 10 %, 25 % and 50 %;
* the tail: from the bar's last update to the end (scaling the result to the photo's size, writing it),
  which no time left counts.

The photo is made by scaling one of the sample photos to --megapixels (4:3): a camera's photo costs the
same to decode, scale and write, and the optimisation runs at the working size whatever the detail.

    python bench/default_job.py                       # 12 Mpx, 3 runs, ~3-5 min on 2 cores
    python bench/default_job.py --precision bf16      # as `auto` runs it with AMX or on AMD's Zen 4
    python bench/default_job.py --megapixels 0.5 --repeats 1 --extra-args --iterations 5   # a check
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from sample_images import IMAGES

GOAL_SECONDS = 60.0
PERCENT = re.compile(r"(\d+)%\|")
LEFT = re.compile(r"about (?:(\d+):)?(\d+):(\d\d) left")


@dataclass
class Sighting:
    at: float  # seconds since the process started
    percent: int
    left: float  # the time left the bar showed, seconds; nan when it showed none


@dataclass
class Run:
    wall: float = math.nan
    sightings: list[Sighting] = field(default_factory=list)

    def first_estimate(self) -> Sighting | None:
        return next((s for s in self.sightings if math.isfinite(s.left)), None)

    def estimate_at(self, percent: int) -> Sighting | None:
        return next((s for s in self.sightings if s.percent >= percent and math.isfinite(s.left)), None)

    def error(self, sighting: Sighting | None) -> float:
        """(shown − true) / true time left, at that sighting."""
        if sighting is None:
            return math.nan
        truth = self.wall - sighting.at
        return (sighting.left - truth) / truth if truth > 0 else math.nan


def make_photo(folder: Path, megapixels: float, source: Path) -> Path:
    width = round(math.sqrt(megapixels * 1e6 * 4 / 3))
    height = round(width * 3 / 4)
    photo = folder / f"photo-{width}x{height}.jpg"
    with Image.open(source) as image:
        image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC).save(photo, quality=92)
    return photo


def parse_left(text: str) -> float:
    match = LEFT.search(text)
    if match is None:
        return math.nan
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def run_once(photo: Path, style: str, output: Path, precision: str, extra: list[str]) -> Run:
    command = [
        sys.executable, "-m", "impasto.cli", "stylize", str(photo), "--style", style, "-o", str(output),
        "--precision", precision, *extra,
    ]  # fmt: skip
    run = Run()
    started = time.perf_counter()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    buffer = b""
    while chunk := os.read(process.stderr.fileno(), 4096):
        now = time.perf_counter() - started
        buffer += chunk
        *lines, buffer = re.split(rb"[\r\n]", buffer)
        for line in lines:
            text = line.decode(errors="replace")
            if match := PERCENT.search(text):
                run.sightings.append(Sighting(now, int(match[1]), parse_left(text)))
    if process.wait() != 0:
        raise SystemExit(f"impasto stylize failed ({process.returncode}): {buffer.decode(errors='replace')}")
    run.wall = time.perf_counter() - started
    return run


def percent(value: float) -> str:
    return "–" if math.isnan(value) else f"{value * 100:+.0f} %"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--style", default="starry-night", help="a built-in preset")
    parser.add_argument("--photo", default="chelsea", help="a sample photo (content/NAME.*) to scale up")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--extra-args", nargs=argparse.REMAINDER, default=[], help="more impasto flags")
    args = parser.parse_args(argv)

    source = next(iter(sorted((IMAGES / "content").glob(f"{args.photo}.*"))), None)
    if source is None:
        raise SystemExit(f"no photo called {args.photo!r} in {IMAGES / 'content'}")
    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line), "?")
    print(f"- CPU: {cpu}, {os.cpu_count()} logical cores, AMX: {'amx_bf16' in cpuinfo}, "
          f"AVX512-BF16: {'avx512_bf16' in cpuinfo}")  # fmt: skip
    print(f"- load average at the start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as folder:
        photo = make_photo(Path(folder), args.megapixels, source)
        flags = " ".join(["--precision", args.precision, *args.extra_args])
        with Image.open(photo) as image:
            print(f"- photo: {photo.name} ({image.width * image.height / 1e6:.1f} Mpx) from {source.name}; "
                  f"style {args.style}; flags: {flags}")  # fmt: skip
        runs = []
        for repeat in range(args.repeats):
            run = run_once(photo, args.style, Path(folder) / "out.png", args.precision, args.extra_args)
            first = run.first_estimate() or Sighting(math.nan, 0, math.nan)
            tail = run.wall - run.sightings[-1].at if run.sightings else math.nan
            print(
                f"- run {repeat + 1}: {run.wall:.1f} s; first time left at {first.at:.1f} s "
                f"({first.left:.0f} s shown), off by {percent(run.error(first))}; "
                + ", ".join(f"at {p} %: {percent(run.error(run.estimate_at(p)))}" for p in (10, 25, 50))
                + f"; tail {tail:.1f} s",
                flush=True,
            )
            runs.append(run)
    walls = [run.wall for run in runs]
    median = statistics.median(walls)
    print(f"- wall time: median {median:.1f} s (min {min(walls):.1f}, max {max(walls):.1f}); "
          f"goal ≤ {GOAL_SECONDS:.0f} s: {'met' if median <= GOAL_SECONDS else 'NOT met'}")  # fmt: skip
    print(f"- load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
