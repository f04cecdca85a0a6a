"""The style dialog's preview: OK's own job, only its beginning — its first scale (at most PREVIEW_SIDE px),
with the same settings, seed and strokes as OK will run them — shown in an area of fixed size. It runs when
Preview is pressed, and by itself once the choices have stayed the same for a moment; a change stops the
one running.

Each run first asks the server what OK will cost (cost.py), before its own job is on the server."""

import threading
from collections.abc import Callable

from gi.repository import GdkPixbuf, Gimp, GLib, Gtk

from .cost import CostLine, Question
from .layers import Box, painted_box, read_layer
from .local_server import start_if_needed
from .pictures import at_most, fit, pixbuf_from_rgba
from .progress import describe
from .remote import (
    FAILURES,
    PREVIEW_SIDE,
    Image,
    Progress,
    Settings,
    connect,
    preview_settings,
    sentence,
    style_chosen,
)

# px: the long side of the layer's copy that a preview sends. The preview paints the job's first scale
# only; the server brings the copy to the job's working size itself.
PREVIEW_UPLOAD = 512
SETTLE_MS = 600  # the choices unchanged for this long: the preview (and the cost) runs by itself
WAIT_FOR_PREVIOUS = 30.0  # s: a guard; a preview told to stop ends within an iteration
READY = "The preview will show the beginning of the painting, as OK will start it."
NO_STYLE = "Choose a style above: a preset, or a style image file."
SHOWN = "the beginning of the painting, as OK will start it."
REFUSED = "No preview: the server refuses this job."  # the cost line, under it, says why


class PreviewPane:
    """`widget` is what the dialog packs; `schedule()` is called when a choice changes; `ready()` says
    whether the dialog is connected to the server in its fields.

    The job is waited for on a worker thread, which reaches GTK through GLib.idle_add; a generation
    number drops the news of a preview that was stopped meanwhile."""

    def __init__(
        self, config: Gimp.ProcedureConfig, layer: Gimp.Layer, ready: Callable[[], bool], cost: CostLine
    ):
        self.config = config
        self.layer = layer
        self.ready = ready
        self.cost = cost
        self.generation = 0
        self.cancel: threading.Event | None = None  # of the running preview
        self.worker: threading.Thread | None = None  # the latest preview's
        self.timer: int | None = None  # the pending start, after a change
        self.closed = False
        # The preview shown, in its own size as the server painted it; None: the layer itself, faded.
        self.result_size: tuple[int, int] | None = None
        self.copies: dict[Box, Image] = {}  # the layer's small copies, by the box OK paints
        self.faded: dict[Box, GdkPixbuf.Pixbuf] = {}
        self.button = Gtk.Button.new_with_mnemonic("_Preview")
        self.button.set_tooltip_text("Run the preview again now")
        self.button.connect("clicked", lambda *_: self.start())
        self.stop = Gtk.Button(label="Stop")
        self.stop.set_sensitive(False)
        self.stop.connect("clicked", lambda *_: self.clear("Preview stopped."))
        self.line = Gtk.Label(xalign=0, yalign=0, wrap=True, max_width_chars=36, width_chars=36)
        self.image = Gtk.Image()
        area = Gtk.Frame(shadow_type=Gtk.ShadowType.IN)
        area.set_size_request(PREVIEW_SIDE + 4, PREVIEW_SIDE + 4)  # the frame's border inside
        area.add(self.image)
        buttons = Gtk.Box(spacing=6)
        buttons.pack_start(self.button, False, False, 0)
        buttons.pack_start(self.stop, False, False, 0)
        heading = Gtk.Label(xalign=0)
        heading.set_markup("<b>Preview</b>")
        side = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=6)
        side.pack_start(heading, False, False, 0)
        side.pack_start(self.line, False, False, 0)
        side.pack_start(cost.label, False, False, 0)
        side.pack_end(buttons, False, False, 0)
        self.widget = Gtk.Box(spacing=12)
        self.widget.pack_start(area, False, False, 0)
        self.widget.pack_start(side, True, True, 0)
        self.clear()

    def schedule(self) -> None:
        """A choice changed: the preview shown is cleared, a running one stops, and a new one starts once
        the choices have settled (when connected)."""
        self.clear()
        self.cost.outdated()
        if self.timer is not None:
            GLib.source_remove(self.timer)
        self.timer = GLib.timeout_add(SETTLE_MS, self._settled)

    @property
    def result_shown(self) -> bool:
        return self.result_size is not None

    @property
    def settling(self) -> bool:
        """A choice changed a moment ago: the preview and the cost start once they have settled."""
        return self.timer is not None

    def _settled(self) -> bool:
        self.timer = None
        if self.closed:
            return False
        if self.ready() and style_chosen(self.config):
            self.start()
        else:
            self.cost.forget()
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
            question = self.cost.question()
            long_side = max(question.box[2:])
            settings = preview_settings(self.config, long_side)
            content = self._copy(question.box)
        except FAILURES as error:
            self.cost.forget()
            self.line.set_text(sentence(error))
            return
        cancel = self.cancel = threading.Event()
        self.stop.set_sensitive(True)
        self.line.set_text(f"Preview of {question.style.name}: sending…")
        previous = self.worker
        self.worker = threading.Thread(
            target=self._work,
            args=(self.generation, cancel, previous, question, content, settings),
            daemon=True,
        )
        self.worker.start()

    def _work(
        self,
        generation: int,
        cancel: threading.Event,
        previous: threading.Thread | None,
        question: Question,
        content: Image,
        settings: Settings,
    ) -> None:
        """On a worker thread: no GTK here, only idle callbacks. The preview before this one, told to stop,
        is off the server first: the plan's jobs ahead are other people's."""
        if previous is not None:
            previous.join(WAIT_FOR_PREVIOUS)
        if cancel.is_set():
            return  # stopped meanwhile
        address = question.address
        try:
            start_if_needed(address, lambda text: GLib.idle_add(self._said, generation, text))
            with connect(question.tls, address, question.token) as client:
                if self.cost.answer(client, question) is not None:
                    GLib.idle_add(self._done, generation, None, None, REFUSED)
                    return
                job = question.style.start(client, content, settings)
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

    def _done(self, generation, result, error, text: str | None = None):
        if generation != self.generation:
            return False  # stopped meanwhile; clear() already said so
        self.stop.set_sensitive(False)
        self.cancel = None
        if error is not None:
            stopped = getattr(error, "cancelled", False)
            self.line.set_text("Preview stopped." if stopped else sentence(error))
        elif result is None:
            self.line.set_text(text)
        else:
            # In the faded layer's place, at its size: the first scale is smaller than the area.
            self.result_size = (result.width, result.height)
            faded = self._faded_layer()
            self.image.set_from_pixbuf(fit(pixbuf_from_rgba(result), faded.get_width(), faded.get_height()))
            self.line.set_text(f"{result.width}×{result.height} px: {SHOWN}")
        return False

    def clear(self, text: str | None = None) -> None:
        """Stops a running preview and clears the one shown."""
        self.generation += 1
        if self.cancel is not None:
            self.cancel.set()
            self.cancel = None
        self.result_size = None
        self.image.set_from_pixbuf(self._faded_layer())
        self.stop.set_sensitive(False)
        self.line.set_text(text or (READY if style_chosen(self.config) else NO_STYLE))

    def _copy(self, box: Box) -> Image:
        """The part of the layer OK paints, at most PREVIEW_UPLOAD px on its long side."""
        if box not in self.copies:
            self.copies[box] = at_most(read_layer(self.layer, box), PREVIEW_UPLOAD)
        return self.copies[box]

    def _faded_layer(self) -> GdkPixbuf.Pixbuf:
        """The part of the layer OK paints, small and faded: what the preview will show in the style,
        until it does."""
        try:
            box = painted_box(self.layer.get_image(), self.layer, self.config.get_property("full-size"))
        except ValueError:  # a selection beside the layer: the whole layer, the start says why
            box = (0, 0, self.layer.get_width(), self.layer.get_height())
        if box not in self.faded:
            layer = pixbuf_from_rgba(at_most(self._copy(box), PREVIEW_SIDE))
            self.faded[box] = layer.copy()
            layer.saturate_and_pixelate(self.faded[box], 0.15, False)
        return self.faded[box]
