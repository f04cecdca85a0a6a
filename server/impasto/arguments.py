"""Command-line words that `impasto` and `impasto-server` share: numbers, byte sizes, and the options
of the engine that both can run. Imports nothing heavy, so that `--help` answers at once."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

from .protocol import bounds

# K, M, G (as Docker and others read them) and KiB, MiB, GiB are 1024-based; KB, MB, GB are the SI's.
_UNITS = {"": 1, "b": 1} | {
    unit: factor
    for power, letter in enumerate("kmgt", 1)
    for unit, factor in ((letter, 1024**power), (f"{letter}ib", 1024**power), (f"{letter}b", 1000**power))
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """`419430400`, `400MiB`, `1.5 GiB`, `300MB`, `400M` -> bytes; ValueError for anything else."""
    match = _SIZE.fullmatch(text)
    factor = _UNITS.get(match[2].lower()) if match else None
    if factor is None:
        raise ValueError(
            f"{text!r} is not a size in bytes: a number of bytes, or one with a unit (400MiB, 1.5GiB, 300MB)"
        )
    return int(float(match[1]) * factor)


def byte_size(minimum: int = 1, auto: bool = False) -> Callable[[str], int | None]:
    """An argparse type: a size in bytes with or without a unit, at least `minimum`; with `auto`, also
    'auto' (None: the default)."""

    def parse(text: str) -> int | None:
        if auto and text == "auto":
            return None
        try:
            value = parse_bytes(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"{text!r} is below the smallest allowed, {describe_bytes(minimum)}"
            )
        return value

    return parse


def describe_bytes(count: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= factor:
            return f"{count / factor:g} {unit}"
    return f"{count} bytes"


def whole_number(minimum: int, words: tuple[str, ...] = ("auto",)) -> Callable[[str], int | str | None]:
    """An argparse type: a whole number ≥ `minimum`, or one of `words` ('auto' is None: the default)."""

    def parse(text: str) -> int | str | None:
        if text in words:
            return None if text == "auto" else text
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            others = " or ".join(repr(word) for word in words)
            raise argparse.ArgumentTypeError(
                f"must be a whole number ≥ {minimum}, or {others} (got {text!r})"
            )
        return value

    return parse


def add_engine_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, styles_dir: Path, several_devices: bool = False
) -> None:
    """The engine's options, the same for the server and the CLI's in-process jobs."""
    several = (
        "; several separated by commas (cuda:0,cuda:1), or all (every CUDA GPU): one worker per device, fed "
        "by one queue"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help=f"auto (default), cpu, cuda, cuda:N or mps{several if several_devices else ''}",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="what the convolutions run in; losses are always fp32 (default: auto)",
    )
    parser.add_argument(
        "--memory-budget",
        type=byte_size(int(bounds.MEMORY_BUDGET.low), auto=True),
        metavar="BYTES",
        help="device memory one job may use, in bytes or with a unit (400MiB, 6GiB); a scale larger than "
        "it is painted in tiles (default: what is free, less a margin)",
    )
    parser.add_argument(
        "--styles-dir",
        type=Path,
        default=styles_dir,
        help="your own style presets, beside the built-in ones (default: %(default)s)",
    )
