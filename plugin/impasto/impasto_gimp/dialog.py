"""The style dialog: GIMP's own procedure dialog for the arguments, plus the server's presets, the
connection's state and a quick preview on the layer."""

import threading

from gi.repository import Gimp, GimpUi, GLib, GObject, Gtk

from . import hook
from .layers import read_layer
from .local_server import local_address, start_if_needed
from .pictures import at_most, pixbuf_from_rgba, thumbnail_pixbuf
from .progress import describe
from .remote import (
    FAILURES,
    NO_PREVIEWS,
    Client,
    ImpastoError,
    Info,
    Progress,
    addresses,
    chosen_style,
    connect,
    job_settings,
    sentence,
)
from .store import server_address, token_for

DIALOG_ARGUMENTS = [
    "style-file",
    "strength",
    "iterations",
    "size",
    "full-size",
    "preserve-colors",
    "seed",
    "server",
    "token",
    "tls-ca",
    "insecure",
]
PREVIEW_SIZE = 160  # the Preview button's working long side, at most
FULL_SIZE_UNAVAILABLE = "This server cannot paint at full size (an older impasto-server)"


class StyleDialog:
    """GIMP's own procedure dialog, plus: a preset list fetched from the server (with thumbnails), the
    connection's state (address, devices, queue), what "0 = server default" means on that server
    ("Auto (40)"), and a Preview button that runs a quick small job on the layer.

    The server is asked for its presets and info when the dialog opens and on Connect (short calls,
    3 s timeout); the plug-in's own server, when it has to be started first, and the preview job are
    waited for on worker threads, which reach GTK through GLib.idle_add.
    """

    def __init__(self, procedure: Gimp.Procedure, config: Gimp.ProcedureConfig, layer: Gimp.Layer):
        GimpUi.init(procedure.get_name())
        self.config = config
        self.layer = layer
        self.info: Info | None = None
        self.preview_generation = 0
        self.preview_cancel: threading.Event | None = None  # of the running preview
        self.closed = False  # a worker's late news is dropped then
        self.dialog = GimpUi.ProcedureDialog.new(procedure, config, "Impasto Style Transfer")
        self.dialog.fill(DIALOG_ARGUMENTS)
        area = self.dialog.get_content_area()

        # The preset list and the connection's state, above GIMP's own widgets.
        self.presets = Gtk.ListStore(str, str, GObject.TYPE_OBJECT)
        self.combo = Gtk.ComboBox.new_with_model(self.presets)
        thumbnail, title = Gtk.CellRendererPixbuf(), Gtk.CellRendererText()
        self.combo.pack_start(thumbnail, False)
        self.combo.add_attribute(thumbnail, "pixbuf", 2)
        self.combo.pack_start(title, True)
        self.combo.add_attribute(title, "text", 1)
        self.combo.connect("changed", self._preset_chosen)
        retry = Gtk.Button(label="Connect")
        retry.connect("clicked", lambda *_: self.load_presets())
        row = Gtk.Box(spacing=6)
        row.pack_start(Gtk.Label(label="Style preset"), False, False, 0)
        row.pack_start(self.combo, True, True, 0)
        row.pack_start(retry, False, False, 0)
        self.status = Gtk.Label(xalign=0, wrap=True, max_width_chars=60, selectable=True)
        area.pack_start(row, False, False, 0)
        area.pack_start(self.status, False, False, 0)
        area.reorder_child(row, 0)
        area.reorder_child(self.status, 1)

        # "Auto (N)" beside the two arguments whose 0 means the server's default.
        self.auto = {}
        for name in ("iterations", "size"):
            label = Gtk.Label(xalign=0)
            label.get_style_context().add_class("dim-label")
            self._beside(name, label)
            self.auto[name] = label
            config.connect(f"notify::{name}", lambda *_: self._show_auto())
        # Full size: the working size means nothing then; a server that cannot paint at full size (its
        # info says so) greys the box out.
        full_size = self.dialog.get_widget("full-size", GObject.TYPE_NONE)
        self.full_size_tooltip = full_size.get_tooltip_text() if full_size is not None else None
        config.connect("notify::full-size", lambda *_: self._show_auto())
        self._show_auto()
        token_widget = self.dialog.get_widget("token", GObject.TYPE_NONE)
        entry = token_widget.get_entry() if hasattr(token_widget, "get_entry") else None
        if isinstance(entry, Gtk.Entry):
            entry.set_visibility(False)  # a password: dots, not letters

        # Preview: a quick small job on this layer.
        self.preview_button = Gtk.Button.new_with_mnemonic("_Preview")
        self.preview_button.connect("clicked", lambda *_: self.start_preview())
        self.preview_stop = Gtk.Button(label="Stop")
        self.preview_stop.set_sensitive(False)
        self.preview_stop.connect("clicked", lambda *_: self.clear_preview("Preview stopped."))
        self.preview_line = Gtk.Label(xalign=0, wrap=True, max_width_chars=50)
        self.preview_image = Gtk.Image()
        self.preview_image.set_size_request(PREVIEW_SIZE + 16, PREVIEW_SIZE)
        buttons = Gtk.Box(spacing=6)
        buttons.pack_start(self.preview_button, False, False, 0)
        buttons.pack_start(self.preview_stop, False, False, 0)
        preview = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=6)
        preview.pack_start(buttons, False, False, 0)
        preview.pack_start(self.preview_line, False, False, 0)
        preview.pack_start(self.preview_image, False, False, 0)
        frame = Gtk.Frame(label="Preview (small and quick)")
        preview.set_border_width(6)
        frame.add(preview)
        area.pack_start(frame, False, False, 0)
        self.preview_line.set_text(f"A {PREVIEW_SIZE} px version with a quarter of the iterations.")
        for name in ("style", "style-file", "strength"):
            config.connect(f"notify::{name}", lambda *_: self.clear_preview())

    def _beside(self, name, label):
        """Puts `label` to the right of argument `name`'s widget (a GimpLabeled grid in GIMP 3.0 and 3.2)."""
        widget = self.dialog.get_widget(name, GObject.TYPE_NONE)
        if isinstance(widget, Gtk.Grid):
            widget.attach(label, 3, 0, 1, 1)
            label.set_margin_start(6)
        else:
            self.dialog.get_content_area().pack_start(label, False, False, 0)

    def run(self) -> bool:
        """True for OK: the config holds the choices."""
        self.dialog.show_all()
        self.load_presets()
        hook.attach(self)
        ok = self.dialog.run()
        self.closed = True
        self.clear_preview()
        self.dialog.destroy()
        return ok

    # ---- the server's presets and state ---------------------------------------------------------

    def address(self) -> str:
        return server_address(self.config)

    def load_presets(self) -> None:
        """Connects and lists the server's presets; the plug-in's own server is first made sure of on a
        worker thread (started if nothing answers), so that the dialog stays responsive meanwhile."""
        address = self.address()
        self.presets.clear()
        if address == local_address():
            threading.Thread(target=self._start_then_connect, args=(address,), daemon=True).start()
        else:
            self._connect(address)

    def _start_then_connect(self, address: str) -> None:
        """On a worker thread: no GTK here, only idle callbacks."""
        try:
            start_if_needed(address, lambda text: GLib.idle_add(self._show_state, text, None))
        except FAILURES as error:
            GLib.idle_add(self._show_state, None, error)
            return
        GLib.idle_add(self._connect, address)

    def _show_state(self, text: str | None, error: Exception | None) -> bool:
        if self.closed:
            return False
        if error is None:
            self.status.set_text(text)
        else:
            self.info = None
            self._show_auto()
            self.status.set_markup(
                f"<b>{GLib.markup_escape_text(sentence(error))}</b>\nYou can still choose a style "
                "image file, fix the server address and press Connect."
            )
        return False  # once, for GLib.idle_add

    def _connect(self, address: str) -> bool:
        if self.closed:
            return False
        try:
            with connect(self.config, address, token_for(self.config, address), timeout=3) as client:
                chosen_server = client.address  # of several: the least busy that answered
                info = client.info()
                presets = client.styles()
                thumbnails = {p.id: _thumbnail_or_none(client, p.id) for p in presets}
        except FAILURES as error:
            return self._show_state(None, error)
        self.info = info
        self._show_auto()
        chosen = self.config.get_property("style")
        for preset in presets:
            self.presets.append([preset.id, preset.title, thumbnail_pixbuf(thumbnails[preset.id])])
            if preset.id == chosen:
                self.combo.set_active(len(self.presets) - 1)
        count = (
            f"{len(presets)} presets" if presets else "No presets on this server: choose a style image file"
        )
        servers = addresses(address)
        which = f" (the least busy of {len(servers)} servers)" if len(servers) > 1 else ""
        self.status.set_markup(
            f"<b>Connected</b> to {GLib.markup_escape_text(chosen_server)}{which}: {count}.\n"
            f"{GLib.markup_escape_text(describe_server(info))}"
        )
        return False  # once, for GLib.idle_add

    def _show_auto(self):
        info = self.info
        defaults = {
            "iterations": str(info.default_iterations) if info else "server default",
            "size": f"{info.default_size} px" if info else "server default",
        }
        for name, label in self.auto.items():
            auto = f"Auto ({defaults[name]})"
            label.set_text(auto if self.config.get_property(name) == 0 else f"0 = {auto}")
        able = info is None or info.limits.full_size  # unknown until connected: the run checks then
        box = self.dialog.get_widget("full-size", GObject.TYPE_NONE)
        if box is not None:
            box.set_sensitive(able)
            box.set_tooltip_text(self.full_size_tooltip if able else FULL_SIZE_UNAVAILABLE)
        if not able and self.config.get_property("full-size"):
            self.config.set_property("full-size", False)  # notifies: _show_auto again, with it unticked
            return
        full_size = self.config.get_property("full-size")
        size = self.dialog.get_widget("size", GObject.TYPE_NONE)
        if size is not None:
            size.set_sensitive(not full_size)
        if full_size:
            self.auto["size"].set_text("The layer's own size")

    def _preset_chosen(self, combo):
        row = combo.get_active_iter()
        if row is not None:
            self.config.set_property("style", self.presets[row][0])

    # ---- preview ----------------------------------------------------------------------------

    def start_preview(self) -> None:
        self.clear_preview()
        try:
            style = chosen_style(self.config)
            settings, content = self._preview_job()
        except FAILURES as error:
            self.preview_line.set_text(sentence(error))
            return
        address = self.address()
        token = token_for(self.config, address)
        cancel = self.preview_cancel = threading.Event()
        generation = self.preview_generation
        self.preview_button.set_sensitive(False)
        self.preview_stop.set_sensitive(True)
        self.preview_line.set_text(f"Preview of {style.name}: sending…")
        worker = threading.Thread(
            target=self._preview_work,
            args=(generation, cancel, address, token, content, style, settings),
            daemon=True,
        )
        worker.start()

    def _preview_job(self):
        """The settings and (downscaled) layer of a quick job: at most PREVIEW_SIZE px, a quarter of the
        iterations; the same style, strength, seed and colour choice."""
        default_size = self.info.default_size if self.info else 0
        default_iterations = self.info.default_iterations if self.info else 0
        size = min(self.config.get_property("size") or default_size or PREVIEW_SIZE, PREVIEW_SIZE)
        iterations = self.config.get_property("iterations") or default_iterations or 100
        quick = {"iterations": max(1, iterations // 4), "size": size, "full_size": False}
        settings = job_settings(self.config, **quick, preview_seconds=NO_PREVIEWS)
        return settings, at_most(read_layer(self.layer), size)

    def _preview_work(self, generation, cancel, address, token, content, style, settings):
        """On a worker thread: no GTK here, only idle callbacks."""
        try:
            start_if_needed(address, lambda text: GLib.idle_add(self._preview_said, generation, text))
            with connect(self.config, address, token) as client:
                job = style.start(client, content, settings)
                watcher = threading.Thread(target=lambda: cancel.wait() and job.cancel(), daemon=True)
                watcher.start()
                for event in job.events():
                    GLib.idle_add(self._preview_event, generation, event)
                result = job.result
            GLib.idle_add(self._preview_done, generation, result, None)
        except FAILURES as error:
            GLib.idle_add(self._preview_done, generation, None, error)
        finally:
            cancel.set()  # ends the watcher

    def _preview_event(self, generation, event):
        text = describe(event)
        if isinstance(event, Progress):
            text = f"{event.fraction:.0%}: {text}"
        return self._preview_said(generation, text)

    def _preview_said(self, generation: int, text: str | None) -> bool:
        if text and generation == self.preview_generation:
            self.preview_line.set_text(text)
        return False  # once, for GLib.idle_add

    def _preview_done(self, generation, result, error):
        if generation != self.preview_generation:
            return False  # the settings changed meanwhile; clear_preview already said so
        self.preview_button.set_sensitive(True)
        self.preview_stop.set_sensitive(False)
        self.preview_cancel = None
        if error is not None:
            stopped = getattr(error, "cancelled", False)
            self.preview_line.set_text("Preview stopped." if stopped else sentence(error))
        else:
            self.preview_image.set_from_pixbuf(pixbuf_from_rgba(result))
            size = f"{result.width}×{result.height} px"
            self.preview_line.set_text(f"Preview at {size}. OK paints the whole layer.")
        return False

    def clear_preview(self, text=None):
        """Stops a running preview and clears the shown one (style, style file or strength changed)."""
        self.preview_generation += 1
        if self.preview_cancel is not None:
            self.preview_cancel.set()
            self.preview_cancel = None
        self.preview_image.clear()
        self.preview_button.set_sensitive(True)
        self.preview_stop.set_sensitive(False)
        self.preview_line.set_text(text or "Press Preview to see the style on a small copy of the layer.")


def describe_server(info: Info) -> str:
    """One line on where jobs run and how busy the server is."""
    names = ", ".join(f"{s.device} ({'busy' if s.busy else 'idle'})" for s in info.devices)
    waiting = f"{info.queue_length} job(s) waiting" if info.queue_length else "no jobs waiting"
    full_size = "" if info.limits.full_size else " It cannot paint at full size (an older impasto-server)."
    return f"Runs on {names}; {waiting}, {info.running_jobs} running.{full_size}"


def _thumbnail_or_none(client: Client, preset_id: str) -> bytes | None:
    """A preset's thumbnail; a preset whose file is broken on the server just shows none."""
    try:
        return client.thumbnail(preset_id)
    except ImpastoError:
        return None
