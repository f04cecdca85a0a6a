"""The bounds of every number a job may ask for, and their defaults: read by the jobs layer, the engine's
own check, both command lines and the dialog, so that each is written once."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Bound:
    """A number's allowed range and its default, with the one sentence that refuses it."""

    name: str  # as a user reads it in a message
    low: float
    high: float
    default: float | None = None  # None: the server's (it depends on the device)

    def check(self, value: float, high: float | None = None) -> None:
        """Raises ValueError unless `value` is finite and within [low, high] (`high` may be tighter)."""
        top = self.high if high is None else min(high, self.high)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{self.name} must be a number, got {value!r}")
        if not (math.isfinite(value) and self.low <= value <= top):
            low, high, got = (_number(x) for x in (self.low, top, value))
            raise ValueError(f"{self.name} must be between {low} and {high}, got {got}")

    def or_default(self, value: float | None) -> float:
        return self.default if value is None else value


SIZE = Bound("the working size (long side in px)", 16, 1 << 16)
ITERATIONS = Bound("iterations", 1, 1_000_000)
STRENGTH = Bound("strength", 0, 1000, default=1.0)
STYLE_SCALE = Bound("the style scale", 0.01, 8, default=1.0)
PREVIEW_SECONDS = Bound("the preview interval (seconds)", 0.05, 3600, default=2.0)
SEED = Bound("seed", 0, 2**64 - 1, default=0)
STYLE_WEIGHT = Bound("a style's weight", 0, 1e6, default=1.0)
MEMORY_BUDGET = Bound("the memory budget (bytes)", 1 << 20, 1 << 50)


def _number(value: float) -> str:
    """1048576 -> "1,048,576"; 0.05 -> "0.05"; nan -> "nan"."""
    if math.isfinite(value) and value == int(value) and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:g}"
