"""How long the default CPU job takes with each way OpenMP's threads may wait for each other.

PyTorch's CPU threads (GNU OpenMP on Linux) wait at the end of each parallel operation: by spinning
(GOMP_SPINCOUNT rounds; 300,000 by default), then asleep; OMP_WAIT_POLICY=PASSIVE sleeps at once. Each
setting runs in a process of its own (libgomp reads them when PyTorch loads), a warm engine, then a job
of 128 px and the default job (384 px, 40 iterations) on chelsea in the style of The Starry Night.
Run it on a quiet machine and beside other work, e.g. `stress-ng --cpu N` with N the number of cores.

    .venv/bin/python bench/openmp.py                         # about 4 minutes on 2 quiet cores
    stress-ng --cpu 2 & .venv/bin/python bench/openmp.py; kill %1
    .venv/bin/python bench/openmp.py --precision fp32 --settings default spin=10000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
SETTINGS = {
    "default": {"GOMP_SPINCOUNT": "300000"},  # libgomp's own default (impasto sets a shorter one)
    "spin=10000": {"GOMP_SPINCOUNT": "10000"},  # impasto's
    "spin=30000": {"GOMP_SPINCOUNT": "30000"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
}


def child(precision: str, sizes: list[int]) -> None:
    """In a process whose OpenMP setting is the one measured: one line per job."""
    import torch
    from impasto.engine import Engine, Options, Style, load_original_vgg19
    from impasto.images import load_picture

    content = load_picture(REPOSITORY / "docs" / "examples" / "chelsea.jpg").rgb
    style = load_picture(REPOSITORY / "server" / "impasto" / "presets" / "starry-night.jpg").rgb
    engine = Engine(load_original_vgg19(), torch.device("cpu"), precision)
    engine.warm_up()
    for size in sizes:
        wall, cpu = time.monotonic(), time.process_time()
        engine.stylize(content, [Style(style)], Options(size=size, iterations=40))
        print(f"{size} {time.monotonic() - wall:.2f} {time.process_time() - cpu:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 384])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.precision, args.sizes)
        return
    print(f"load average before: {os.getloadavg()[0]:.2f}; {args.precision}")
    print("| OpenMP's wait | job | wall s | CPU s |")
    print("|---|---|---:|---:|")
    for name in args.settings:
        environment = {
            **{k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")},
            **SETTINGS[name],
        }
        command = [sys.executable, __file__, "--child", "--precision", args.precision, "--sizes"]
        lines = subprocess.run(
            [*command, *map(str, args.sizes)], env=environment, capture_output=True, text=True, check=True
        ).stdout.split("\n")
        for line in filter(None, lines):
            size, wall, cpu = line.split()
            print(f"| {name} | {size} px × 40 it | {wall} | {cpu} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
