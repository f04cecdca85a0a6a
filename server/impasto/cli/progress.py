"""The terminal's side of a job: one progress bar per file, and Ctrl-C."""

from __future__ import annotations

import math
import signal
import sys
from collections.abc import Callable

from ..protocol import Event, Progress, Queued, Started


class ProgressBar:
    """One bar (one line) per job, in percent of its work, with the engine's own estimate of time left
    (later scales cost more per iteration, so a rate of iterations would mislead). `label` ("[2/3]
    B.jpg") starts its description in a batch."""

    def __init__(self, disabled: bool, label: str = ""):
        from tqdm import tqdm

        self.label = f"{label} " if label else ""
        self.bar = tqdm(
            total=100,
            disable=disabled,
            file=sys.stderr,
            dynamic_ncols=True,
            bar_format="{desc}{percentage:3.0f}%|{bar}| {elapsed} elapsed{postfix}",  # desc ends in ": "
        )
        self.bar.set_description(f"{self.label}starting")

    def show(self, event: Event) -> None:
        if isinstance(event, Queued) and event.position > 0:
            self.bar.set_description(f"{self.label}queued: {event.position} job(s) ahead")
        elif isinstance(event, Started):
            # The plan's estimate, shown before the first iteration: the style's and content's targets
            # take seconds on a CPU, and a bar without a time left then looks stuck.
            self.bar.set_description(f"{self.label}preparing {event.working_width}×{event.working_height}")
            if event.estimated_seconds > 0:
                self.bar.set_postfix_str(f"about {duration(event.estimated_seconds)} left", refresh=False)
            self.bar.refresh()
        elif isinstance(event, Progress):
            on_tile = f" tile {event.tile}/{event.tiles}" if event.tiles > 1 else ""
            self.bar.set_description(f"{self.label}scale {event.scale}/{event.scales}{on_tile}")
            left = f"about {duration(event.eta_seconds)} left, " if event.eta_seconds > 0 else ""
            losses = f"content {event.content_loss:.3g}, style {event.style_loss:.3g}"
            self.bar.set_postfix_str(left + losses, refresh=False)
            self.bar.update(event.fraction * 100 - self.bar.n)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *_) -> None:
        self.close()


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds) if math.isfinite(seconds) else 0, 60)
    return (
        f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"
    )


class ctrl_c_calls:  # noqa: N801 - used as a context manager, reads like one
    """The first Ctrl-C calls `stop`; a second one interrupts at once (KeyboardInterrupt)."""

    def __init__(self, stop: Callable[[], None]):
        self.stop = stop

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_) -> None:
        print("\nimpasto: stopping (Ctrl-C again to abort)", file=sys.stderr)
        signal.signal(signal.SIGINT, self.previous)
        self.stop()

    def __exit__(self, *_) -> None:
        signal.signal(signal.SIGINT, self.previous)
