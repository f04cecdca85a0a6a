"""Work that waits until the user's choices have settled: the dialog's preview and cost line."""

from collections.abc import Callable

from gi.repository import GLib

SETTLE_MS = 600  # the choices unchanged for this long: the preview and the cost are made for them


class WhenSettled:
    """Calls `action` on GTK's main thread once `changed()` has not been called for SETTLE_MS."""

    def __init__(self, action: Callable[[], None]):
        self.action = action
        self.timer: int | None = None

    @property
    def pending(self) -> bool:
        return self.timer is not None

    def changed(self) -> None:
        self.stop()
        self.timer = GLib.timeout_add(SETTLE_MS, self._settled)

    def stop(self) -> None:
        if self.timer is not None:
            GLib.source_remove(self.timer)
            self.timer = None

    def _settled(self) -> bool:
        self.timer = None
        self.action()
        return False  # once, for GLib.timeout_add
