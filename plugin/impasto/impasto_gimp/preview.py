"""The style dialog's preview: a quick small job on the layer, shown in an area of fixed size. It runs
when Preview is pressed, and by itself once the style and strength have stayed the same for a moment;
a change stops the one running."""

import threading
from collections.abc import Callable

from gi.repository import GdkPixbuf, Gimp, GLib, Gtk

from .layers import read_layer
from .local_server import start_if_needed
from .pictures import at_most, pixbuf_from_rgba
from .progress import describe
from .remote import (
    FAILURES,
    NO_PREVIEWS,
    Info,
    Progress,
    chosen_style,
    connect,
    job_settings,
    sentence,
    style_chosen,
)
from .store import server_address, token_for

PREVIEW_SIZE = 160  # px: the preview job's working long side, at most, and its area's width and height
SETTLE_MS = 600  # the style and strength unchanged for this long: the preview runs by itself
READY = "The preview shows the style on a small copy of the layer."
NO_STYLE = "Choose a style above: a preset, or a style image file."


class PreviewPane:
    """`widget` is what the dialog packs; `schedule()` is called when the style or strength changes.

    The job is waited for on a worker thread, which reaches GTK through GLib.idle_add; a generation
    number drops the news of a preview that was stopped meanwhile."""

    def __init__(self, config: Gimp.ProcedureConfig, layer: Gimp.Layer, info: Callable[[], Info | None]):
        self.config = config
        self.layer = layer
        self.info = info  # the server's info, None while not connected
        self.generation = 0
        self.cancel: threading.Event | None = None  # of the running preview
        self.timer: int | None = None  # the pending start, after a change
        self.closed = False
        self.result_shown = False  # else the layer itself, faded, while no preview is there
        self.faded: GdkPixbuf.Pixbuf | None = None
        self.button = Gtk.Button.new_with_mnemonic("_Preview")
        self.button.set_tooltip_text("Run the preview again now")
        self.button.connect("clicked", lambda *_: self.start())
        self.stop = Gtk.Button(label="Stop")
        self.stop.set_sensitive(False)
        self.stop.connect("clicked", lambda *_: self.clear("Preview stopped."))
        self.line = Gtk.Label(xalign=0, yalign=0, wrap=True, max_width_chars=36, width_chars=36)
        self.image = Gtk.Image()
        area = Gtk.Frame(shadow_type=Gtk.ShadowType.IN)
        area.set_size_request(PREVIEW_SIZE + 4, PREVIEW_SIZE + 4)  # the frame's border inside
        area.add(self.image)
        buttons = Gtk.Box(spacing=6)
        buttons.pack_start(self.button, False, False, 0)
        buttons.pack_start(self.stop, False, False, 0)
        heading = Gtk.Label(xalign=0)
        heading.set_markup("<b>Preview</b>")
        side = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=6)
        side.pack_start(heading, False, False, 0)
        side.pack_start(self.line, True, True, 0)
        side.pack_end(buttons, False, False, 0)
        self.widget = Gtk.Box(spacing=12)
        self.widget.pack_start(area, False, False, 0)
        self.widget.pack_start(side, True, True, 0)
        self.clear()

    def schedule(self) -> None:
        """The style or strength changed: the preview shown is cleared, a running one stops, and a new
        one starts once they have settled (when connected)."""
        self.clear()
        if self.timer is not None:
            GLib.source_remove(self.timer)
        self.timer = GLib.timeout_add(SETTLE_MS, self._settled)

    def _settled(self) -> bool:
        self.timer = None
        if not self.closed and self.info() is not None and style_chosen(self.config):
            self.start()
        return False  # once, for GLib.timeout_add

    def close(self) -> None:
        """The dialog closes: a pending or running preview stops."""
        self.closed = True
        if self.timer is not None:
            GLib.source_remove(self.timer)
            self.timer = None
        self.clear()

    def start(self) -> None:
        self.clear()
        try:
            style = chosen_style(self.config)
            settings, content = self._job()
        except FAILURES as error:
            self.line.set_text(sentence(error))
            return
        address = server_address(self.config)
        token = token_for(self.config, address)
        cancel = self.cancel = threading.Event()
        self.stop.set_sensitive(True)
        self.line.set_text(f"Preview of {style.name}: sending…")
        worker = threading.Thread(
            target=self._work,
            args=(self.generation, cancel, address, token, content, style, settings),
            daemon=True,
        )
        worker.start()

    def _job(self):
        """The settings and (downscaled) layer of a quick job: at most PREVIEW_SIZE px, a quarter of the
        iterations; the same style, strength, seed and colour choice."""
        info = self.info()
        default_size = info.default_size if info else 0
        default_iterations = info.default_iterations if info else 0
        size = min(self.config.get_property("size") or default_size or PREVIEW_SIZE, PREVIEW_SIZE)
        iterations = self.config.get_property("iterations") or default_iterations or 100
        quick = {"iterations": max(1, iterations // 4), "size": size, "full_size": False}
        settings = job_settings(self.config, **quick, preview_seconds=NO_PREVIEWS)
        return settings, at_most(read_layer(self.layer), size)

    def _work(self, generation, cancel, address, token, content, style, settings):
        """On a worker thread: no GTK here, only idle callbacks."""
        try:
            start_if_needed(address, lambda text: GLib.idle_add(self._said, generation, text))
            with connect(self.config, address, token) as client:
                job = style.start(client, content, settings)
                watcher = threading.Thread(target=lambda: cancel.wait() and job.cancel(), daemon=True)
                watcher.start()
                for event in job.events():
                    GLib.idle_add(self._event, generation, event)
                result = job.result
            GLib.idle_add(self._done, generation, result, None)
        except FAILURES as error:
            GLib.idle_add(self._done, generation, None, error)
        finally:
            cancel.set()  # ends the watcher

    def _event(self, generation, event):
        text = describe(event)
        if isinstance(event, Progress):
            text = f"{event.fraction:.0%}: {text}"
        return self._said(generation, text)

    def _said(self, generation: int, text: str | None) -> bool:
        if text and generation == self.generation:
            self.line.set_text(text)
        return False  # once, for GLib.idle_add

    def _done(self, generation, result, error):
        if generation != self.generation:
            return False  # stopped meanwhile; clear() already said so
        self.stop.set_sensitive(False)
        self.cancel = None
        if error is not None:
            stopped = getattr(error, "cancelled", False)
            self.line.set_text("Preview stopped." if stopped else sentence(error))
        else:
            self.result_shown = True
            self.image.set_from_pixbuf(pixbuf_from_rgba(result))
            size = f"{result.width}×{result.height} px"
            self.line.set_text(f"Preview at {size}. OK paints the whole layer.")
        return False

    def clear(self, text: str | None = None) -> None:
        """Stops a running preview and clears the one shown."""
        self.generation += 1
        if self.cancel is not None:
            self.cancel.set()
            self.cancel = None
        self.result_shown = False
        self.image.set_from_pixbuf(self._faded_layer())
        self.stop.set_sensitive(False)
        self.line.set_text(text or (READY if style_chosen(self.config) else NO_STYLE))

    def _faded_layer(self) -> GdkPixbuf.Pixbuf:
        """The layer, small and faded: what the preview will show in the style, until it does."""
        if self.faded is None:
            layer = pixbuf_from_rgba(at_most(read_layer(self.layer), PREVIEW_SIZE))
            self.faded = layer.copy()
            layer.saturate_and_pixelate(self.faded, 0.15, False)
        return self.faded
