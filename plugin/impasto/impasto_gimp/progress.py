"""A job's progress: in a window of its own with the latest preview and a Cancel button (interactive
runs), or in GIMP's status bar (scripts and Filters ▸ Repeat)."""

import threading

from gi.repository import Gimp, GimpUi, GLib, Gtk, Pango

from . import hook
from .cost import duration
from .pictures import fit, pixbuf_from_png
from .remote import ImpastoError, Preview, Progress, Queued, RemoteJob, Started

PREVIEW_AREA = (384, 288)  # px: where the job's previews show, each fitted in


def describe(event: object) -> str | None:
    """A status line for a server event, or None."""
    if isinstance(event, Queued):
        ahead = event.position
        return f"Waiting for the server: {ahead} job(s) ahead" if ahead else "Starting…"
    if isinstance(event, Started):
        s = event
        about = f", about {duration(s.estimated_seconds)}" if s.estimated_seconds >= 1 else ""
        return f"Painting at {s.working_width}×{s.working_height} on {s.device}{about}"
    if isinstance(event, Progress):
        p = event
        left = f", about {duration(p.eta_seconds)} left" if p.eta_seconds > 0 else ""
        tile = f", tile {p.tile} of {p.tiles}" if p.tiles else ""
        return f"Scale {p.scale} of {p.scales}{tile}, iteration {p.iteration} of {p.iterations}{left}"
    return None


def follow_in_status_bar(job: RemoteJob, title: str) -> bool:
    """Non-interactive runs: GIMP's own progress bar; all libgimp calls on this (the main) thread.
    True once the job has finished."""
    Gimp.progress_init(f"Impasto: {title}")
    for event in job.events():
        text = describe(event)
        if text:
            Gimp.progress_set_text(text)
        if isinstance(event, Progress):
            Gimp.progress_update(event.fraction)
    Gimp.progress_end()
    return True


class ProgressWindow:
    """Stage, fraction, time left, the latest preview and a Cancel button that cancels the server job.

    The stream is read on a worker thread; every GTK and libgimp call happens on the main thread
    through GLib.idle_add.
    """

    def __init__(self, job: RemoteJob, title: str):
        self.job = job
        self.error = None
        self.finished = False
        self.dialog = Gtk.Dialog(title=f"Impasto: {title}", modal=True)
        GimpUi.window_set_transient(self.dialog)  # above GIMP's image window, never behind it
        self.cancel_button = self.dialog.add_button("_Cancel", Gtk.ResponseType.CANCEL)
        self.dialog.connect("response", lambda *_: self._cancel())
        box = self.dialog.get_content_area()
        box.set_spacing(8)
        box.set_border_width(12)
        # One size from start to end: the stage line is cut short rather than widening the window, and the
        # previews, which grow from the coarse scales to the working size, are fitted into one area.
        self.stage = Gtk.Label(label="Uploading…", xalign=0, ellipsize=Pango.EllipsizeMode.END)
        self.bar = Gtk.ProgressBar(show_text=True)
        self.preview = Gtk.Image()
        self.preview.set_size_request(*PREVIEW_AREA)
        for widget in (self.stage, self.bar, self.preview):
            box.pack_start(widget, False, False, 0)
        self.loop = GLib.MainLoop()
        Gimp.progress_init(f"Impasto: {title}")

    def run(self) -> bool:
        """True once the job has finished, False when it was cancelled; raises the job's ImpastoError."""
        self.dialog.show_all()
        hook.attach(self)
        threading.Thread(target=self._read, daemon=True).start()
        self.loop.run()
        self.dialog.destroy()
        Gimp.progress_end()
        if self.error is not None and not self.error.cancelled:
            raise self.error
        return self.finished

    def _read(self) -> None:
        try:
            for event in self.job.events():
                GLib.idle_add(self._show, event)
            self.finished = True
        except ImpastoError as error:
            self.error = error
        GLib.idle_add(self.loop.quit)

    def _cancel(self) -> None:
        """Cancel (or the window closed): the server stops the job; the window goes when it has."""
        self.cancel_button.set_sensitive(False)
        self.stage.set_text("Cancelling…")
        self.job.cancel()

    def _show(self, event: object) -> bool:
        if not self.cancel_button.get_sensitive():
            return False  # cancelling: the stage says so
        text = describe(event)
        if text:
            self.stage.set_text(text)
        if isinstance(event, Progress):
            self.bar.set_fraction(event.fraction)
            Gimp.progress_update(event.fraction)
        if isinstance(event, Preview):
            self.preview.set_from_pixbuf(fit(pixbuf_from_png(event.png), *PREVIEW_AREA))
        return False  # once, for GLib.idle_add
