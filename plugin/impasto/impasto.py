#!/usr/bin/env python3
"""Impasto for GIMP 3: Filters ▸ Artistic ▸ Impasto Style Transfer…

Sends the active layer and a style (a preset of the server's, or an image file) to an
impasto-server, shows its progress and previews, and puts the result in a new layer above the
source, limited to the selection, as one undo step. The network client (impasto.client, in
vendor/, pure Python) knows nothing of GIMP; this file knows nothing of gRPC or protobuf.
"""

import json
import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "vendor"))

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gegl", "0.4")
gi.require_version("GdkPixbuf", "2.0")
gi.require_version("Gtk", "3.0")
from gi.repository import GdkPixbuf, Gegl, Gimp, GimpUi, GLib, GObject, Gtk  # noqa: E402
from impasto.client import (  # noqa: E402
    DEFAULT_ADDRESS,
    Client,
    Image,
    Preview,
    Progress,
    Queued,
    ServerError,
    Settings,
    Started,
    StyleSpec,
    addresses,
)

PROCEDURE = "python-fu-impasto"
PIXELS = "R'G'B'A u8"
RW = GObject.ParamFlags.READWRITE
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


class Impasto(Gimp.PlugIn):
    def do_query_procedures(self):
        return [PROCEDURE]

    def do_set_i18n(self, name):
        return False

    def do_create_procedure(self, name):
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run, None)
        procedure.set_image_types("RGB*, GRAY*")
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        procedure.set_menu_label("Impasto Style Transfer…")
        procedure.add_menu_path("<Image>/Filters/Artistic")
        procedure.set_documentation(
            "Repaint the layer in the style of a painting (neural style transfer)",
            "Sends the active layer and a style to an impasto-server, which optimises the picture with "
            "VGG19 features (Gatys et al.); the result lands in a new layer above the source, limited to "
            "the selection.",
            name,
        )
        procedure.set_attribution("Impasto developers", "Impasto developers", "2026")
        procedure.add_string_argument(
            "style",
            "Style preset",
            "Id of one of the server's presets; empty when a style file is given",
            "",
            RW,
        )
        procedure.add_file_argument(
            "style-file",
            "Style image",
            "Any image to take the style from",
            Gimp.FileChooserAction.OPEN,
            True,
            None,
            RW,
        )
        procedure.add_double_argument(
            "strength",
            "Strength",
            "Style versus content: 0 keeps the picture, 0.25 paints gently, 2 lets the style take over",
            0.0,
            10.0,
            1.0,
            RW,
        )
        procedure.add_int_argument(
            "iterations", "Iterations", "At full size; smaller steps run half; 0 = default", 0, 5000, 0, RW
        )
        procedure.add_int_argument(
            "size",
            "Working size",
            "Long side in px that the style is painted at; 0 = the server's default",
            0,
            16384,
            0,
            RW,
        )
        procedure.add_boolean_argument(
            "full-size",
            "Full size (the layer's own resolution; slower)",
            "Paint at the layer's own size (with a selection: its bounding box at its own size), in tiles "
            "where the server's memory is short; the working size is then ignored",
            False,
            RW,
        )
        procedure.add_boolean_argument(
            "preserve-colors", "Preserve colors", "Keep the picture's colours", False, RW
        )
        procedure.add_int_argument("seed", "Seed", "Same seed, same result", 0, 2**31 - 1, 0, RW)
        procedure.add_string_argument(
            "server",
            "Server",
            "host:port (plaintext) or https://host:port (TLS), or several separated by commas (the "
            "least busy that answers); empty = the last address used, else $IMPASTO_SERVER, else "
            f"{DEFAULT_ADDRESS}",
            "",
            RW,
        )
        procedure.add_string_argument(
            "token",
            "Token",
            "The server's token, if it needs one; in the dialog, empty = the one last used with this server",
            "",
            RW,
        )
        procedure.add_file_argument(
            "tls-ca",
            "TLS certificate",
            "The certificate (PEM) of a self-signed https:// server; empty = the system's roots",
            Gimp.FileChooserAction.OPEN,
            True,
            None,
            RW,
        )
        procedure.add_boolean_argument(
            "insecure",
            "Send the token unencrypted (only on a network you trust)",
            "Allow the token over plain host:port to another machine; without it that is refused",
            False,
            RW,
        )
        procedure.add_layer_return_value("result-layer", "Result layer", "The new layer", True, RW)
        return procedure


# ---- run ---------------------------------------------------------------------------------------


def run(procedure, run_mode, image, drawables, config, data):
    if len(drawables) != 1 or not isinstance(drawables[0], Gimp.Layer):
        return fail(procedure, "Select exactly one layer to stylise.")
    layer = drawables[0]
    if image.get_base_type() == Gimp.ImageBaseType.INDEXED:
        return fail(
            procedure,
            "Impasto works on RGB and grayscale images; convert this one with Image ▸ Mode ▸ RGB first.",
        )
    autopilot = []  # the dialog's autopilot steps left for the progress window
    if run_mode == Gimp.RunMode.INTERACTIVE:
        GimpUi.init(PROCEDURE)
        dialog = StyleDialog(procedure, config, layer)
        if not dialog.run():
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        autopilot = dialog.autopilot

    address = server_address(config)
    token = config.get_property("token")
    if not token and run_mode != Gimp.RunMode.NONINTERACTIVE:
        token = remembered_token(address)  # Filters ▸ Repeat, or the dialog's empty field
    try:
        style, style_name = chosen_style(config)
        full_size = config.get_property("full-size")
        box = painted_box(image, layer, full_size)
        content = read_layer(layer, box)
        settings = Settings(
            strength=config.get_property("strength"),
            iterations=config.get_property("iterations"),
            size=config.get_property("size"),
            full_size=full_size,
            preserve_colors=config.get_property("preserve-colors"),
            seed=config.get_property("seed"),
        )
        with connect(config, address, token) as client:
            if full_size and not client.info().full_size:
                # An older server would ignore full_size and paint at its working size.
                raise ValueError(cannot_paint_full_size(client.address))
            job = client.stylize(content, [style], settings)
            if run_mode == Gimp.RunMode.INTERACTIVE:
                finished = ProgressDialog(job, style_name, autopilot).run()
            else:
                finished = follow_in_status_bar(job, style_name)
        if not finished:
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        remember(address, token if run_mode != Gimp.RunMode.NONINTERACTIVE else None)
        # GIMP saves the arguments as last values, globally and in the image (a persistent parasite, so
        # inside XCF files): never the token. It stays in impasto.json (this user's only), per server.
        config.set_property("token", "")
        if not (image.is_valid() and layer.is_valid()):
            return fail(procedure, "The image or layer was closed while Impasto worked; nothing was changed.")
        result = add_result_layer(image, layer, box, job.result, style_name)
    except (ServerError, OSError, ValueError) as error:
        return fail(procedure, str(error))
    return Gimp.ValueArray.new_from_values(
        [
            GObject.Value(Gimp.PDBStatusType, Gimp.PDBStatusType.SUCCESS),
            GObject.Value(Gimp.Layer, result),
        ]
    )


def connect(config, address, token, timeout=10.0):
    """A Client for the config's TLS settings. Raises InsecureToken (a ValueError) where the token
    would go in clear to another machine without `insecure`."""
    ca = config.get_property("tls-ca")
    ca_path = Path(ca.get_path()) if ca is not None and ca.get_path() else None
    if ca_path is not None and not ca_path.is_file():
        raise ValueError(f"the TLS certificate {ca_path} (tls-ca) cannot be read; choose the server's PEM")
    return Client(
        address,
        token=token or None,
        tls_ca=ca_path,
        timeout=timeout,
        insecure=config.get_property("insecure"),
    )


def cannot_paint_full_size(address):
    return (
        f"The server at {address} cannot paint at the layer's full size; update impasto-server or untick "
        "Full size."
    )


def fail(procedure, message):
    return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(message))


def chosen_style(config):
    style_file = config.get_property("style-file")
    if style_file is not None and style_file.get_path():
        path = style_file.get_path()
        with open(path, "rb") as f:
            return StyleSpec(image=Image(f.read(), encoded=True)), os.path.splitext(os.path.basename(path))[0]
    preset = config.get_property("style").strip()
    if not preset:
        raise ValueError("Choose a style: a preset of the server's (style) or an image file (style-file).")
    return StyleSpec(preset=preset), preset


def painted_box(image, layer, full_size):
    """The part of the layer that is sent, (x, y, width, height) in layer coordinates: the whole layer,
    or at full size with a selection, the selection's bounding box (painted at its own size)."""
    if full_size and not Gimp.Selection.is_empty(image):
        ok, x, y, width, height = layer.mask_intersect()
        if not ok or width < 1 or height < 1:
            raise ValueError("The selection does not touch this layer; select part of it, or select none.")
        return x, y, width, height
    return 0, 0, layer.get_width(), layer.get_height()


def read_layer(layer, box=None):
    x, y, width, height = box or (0, 0, layer.get_width(), layer.get_height())
    rect = Gegl.Rectangle.new(x, y, width, height)
    data = layer.get_buffer().get(rect, 1.0, PIXELS, Gegl.AbyssPolicy.NONE)
    return Image(bytes(data), width, height)


def add_result_layer(image, source, box, result, style_name):
    """A new layer directly above the source over the painted box (the whole layer, or a selection's
    bounding box), masked by the selection: one undo step."""
    box_x, box_y, width, height = box
    if result.encoded or (result.width, result.height) != (width, height):
        raise ValueError("the server sent a result that does not fit the layer")
    image.undo_group_start()
    try:
        kind = (
            Gimp.ImageType.GRAYA_IMAGE
            if image.get_base_type() == Gimp.ImageBaseType.GRAY
            else Gimp.ImageType.RGBA_IMAGE
        )
        layer = Gimp.Layer.new(
            image, f"Impasto: {style_name}", result.width, result.height, kind, 100.0, Gimp.LayerMode.NORMAL
        )
        image.insert_layer(layer, source.get_parent(), image.get_item_position(source))
        _, x, y = source.get_offsets()
        layer.set_offsets(x + box_x, y + box_y)
        buffer = layer.get_buffer()
        buffer.set(Gegl.Rectangle.new(0, 0, result.width, result.height), PIXELS, result.data)
        buffer.flush()
        if not Gimp.Selection.is_empty(image):
            layer.add_mask(layer.create_mask(Gimp.AddMaskType.SELECTION))
        layer.update(0, 0, result.width, result.height)
    finally:
        image.undo_group_end()
    Gimp.displays_flush()
    return layer


# ---- progress ----------------------------------------------------------------------------------


def describe(event):
    """A status line for a server event, or None."""
    if isinstance(event, Queued):
        ahead = event.position
        return f"Waiting for the server: {ahead} job(s) ahead" if ahead else "Starting…"
    if isinstance(event, Started):
        s = event
        about = f", about {s.estimated_seconds:.0f} s" if s.estimated_seconds >= 1 else ""
        return f"Painting at {s.working_width}×{s.working_height} on {s.device}{about}"
    if isinstance(event, Progress):
        p = event
        left = f", about {p.eta_seconds:.0f} s left" if p.eta_seconds > 0 else ""
        tile = f", tile {p.tile} of {p.tiles}" if p.tiles else ""
        return f"Scale {p.scale} of {p.scales}{tile}, iteration {p.iteration} of {p.iterations}{left}"
    return None


def follow_in_status_bar(job, style_name):
    """Non-interactive runs: GIMP's own progress bar; all libgimp calls on this (the main) thread."""
    Gimp.progress_init(f"Impasto: {style_name}")
    for event in job.events():
        text = describe(event)
        if text:
            Gimp.progress_set_text(text)
        if isinstance(event, Progress):
            Gimp.progress_update(event.fraction)
    Gimp.progress_end()
    return True


class ProgressDialog:
    """Stage, fraction, time left, the latest preview and a Cancel button that cancels the server job.

    The stream is read on a worker thread; every GTK and libgimp call happens on the main thread
    through GLib.idle_add. `autopilot`: the steps the dialog's autopilot left; "cancel-progress"
    presses Cancel once the job's first progress arrives.
    """

    def __init__(self, job, style_name, autopilot=()):
        self.job = job
        self.error = None
        self.finished = False
        self.autopilot = list(autopilot)
        self.dialog = Gtk.Dialog(title=f"Impasto: {style_name}", modal=True)
        self.cancel_button = self.dialog.add_button("_Cancel", Gtk.ResponseType.CANCEL)
        self.dialog.connect("response", lambda *_: self._cancel())
        box = self.dialog.get_content_area()
        box.set_spacing(8)
        box.set_border_width(12)
        self.stage = Gtk.Label(label="Uploading…", xalign=0)
        self.bar = Gtk.ProgressBar(show_text=True)
        self.preview = Gtk.Image()
        for widget in (self.stage, self.bar, self.preview):
            box.pack_start(widget, False, False, 0)
        self.loop = GLib.MainLoop()
        Gimp.progress_init(f"Impasto: {style_name}")

    def run(self):
        self.dialog.show_all()
        threading.Thread(target=self._read, daemon=True).start()
        self.loop.run()
        self.dialog.destroy()
        Gimp.progress_end()
        if self.error is not None and not self.error.cancelled:
            raise self.error
        return self.finished

    def _read(self):
        try:
            for event in self.job.events():
                GLib.idle_add(self._show, event)
            self.finished = True
        except ServerError as error:
            self.error = error
        GLib.idle_add(self.loop.quit)

    def _cancel(self):
        """Cancel (or the window closed): the server stops the job; the window goes when it has."""
        self.cancel_button.set_sensitive(False)
        self.stage.set_text("Cancelling…")
        self.job.cancel()

    def _show(self, event):
        if not self.cancel_button.get_sensitive():
            return False  # cancelling: the stage says so
        text = describe(event)
        if text:
            self.stage.set_text(text)
        if isinstance(event, Progress):
            self.bar.set_fraction(event.fraction)
            Gimp.progress_update(event.fraction)
            if self.autopilot and self.autopilot[0] == "cancel-progress":
                print(f"impasto-autopilot: {self.autopilot.pop(0)}", flush=True)
                self.cancel_button.clicked()
        if isinstance(event, Preview):
            self.preview.set_from_pixbuf(pixbuf_from_png(event.png))
        return False


def pixbuf_from_png(data):
    loader = GdkPixbuf.PixbufLoader.new_with_type("png")
    loader.write(data)
    loader.close()
    return loader.get_pixbuf()


def pixbuf_from_rgba(image):
    """A raw RGBA8 Image (what the server sends back) as a GdkPixbuf."""
    width, height = image.width, image.height
    return GdkPixbuf.Pixbuf.new_from_bytes(
        GLib.Bytes.new(image.data), GdkPixbuf.Colorspace.RGB, True, 8, width, height, width * 4
    )


def fit(pixbuf, box):
    """`pixbuf` scaled so that its long side is `box` px."""
    scale = box / max(pixbuf.get_width(), pixbuf.get_height())
    return pixbuf.scale_simple(
        max(1, round(pixbuf.get_width() * scale)),
        max(1, round(pixbuf.get_height() * scale)),
        GdkPixbuf.InterpType.BILINEAR,
    )


# ---- dialog ------------------------------------------------------------------------------------


class StyleDialog:
    """GIMP's own procedure dialog, plus: a preset list fetched from the server (with thumbnails), the
    connection's state (address, devices, queue), what "0 = server default" means on that server
    ("Auto (40)"), and a Preview button that runs a quick small job on the layer.

    The server is asked for its presets and info when the dialog opens and on Connect (short calls,
    3 s timeout); the preview job runs on a worker thread and reaches GTK through GLib.idle_add.
    """

    def __init__(self, procedure, config, layer):
        self.config = config
        self.layer = layer
        self.info = None
        self.preview_generation = 0
        self.preview_cancel = None  # threading.Event of the running preview
        self.autopilot = [step for step in os.environ.get("IMPASTO_AUTOPILOT", "").split(",") if step]
        self.autopiloting = bool(self.autopilot)
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

    def run(self):
        self.dialog.show_all()
        self.load_presets()
        if self.autopilot:
            GLib.timeout_add(100, self._autopilot_next)
        ok = self.dialog.run()
        self.clear_preview()
        self.dialog.destroy()
        return ok

    # ---- the server's presets and state ---------------------------------------------------------

    def address(self):
        return server_address(self.config)

    def load_presets(self):
        address = self.address()
        self.presets.clear()
        try:
            with connect(self.config, address, token_for(self.config, address), timeout=3) as client:
                chosen_server = client.address  # of several: the least busy that answered
                info = client.info()
                presets = client.styles()
                thumbnails = {p.id: _thumbnail_or_none(client, p.id) for p in presets}
        except (ServerError, ValueError) as error:
            self.info = None
            self._show_auto()
            self._set_status(
                f"<b>{GLib.markup_escape_text(str(error))}</b>\nYou can still choose a style "
                "image file, fix the server address and press Connect."
            )
            return
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
        self._set_status(
            f"<b>Connected</b> to {GLib.markup_escape_text(chosen_server)}{which}: {count}.\n"
            f"{GLib.markup_escape_text(describe_server(info))}"
        )

    def _set_status(self, markup):
        self.status.set_markup(markup)
        if self.autopiloting:
            print(f"impasto-autopilot: status: {self.status.get_text()}", flush=True)

    def _show_auto(self):
        info = self.info
        defaults = {
            "iterations": str(info.default_iterations) if info else "server default",
            "size": f"{info.default_size} px" if info else "server default",
        }
        for name, label in self.auto.items():
            auto = f"Auto ({defaults[name]})"
            label.set_text(auto if self.config.get_property(name) == 0 else f"0 = {auto}")
        able = info is None or info.full_size  # unknown until connected: the job's run checks then
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

    def start_preview(self):
        self.clear_preview()
        try:
            style, style_name = chosen_style(self.config)
            settings, content = self._preview_job()
        except (OSError, ValueError) as error:
            self.preview_line.set_text(str(error))
            self._autopilot_resume()
            return
        address = self.address()
        token = token_for(self.config, address)
        cancel = self.preview_cancel = threading.Event()
        generation = self.preview_generation
        self.preview_button.set_sensitive(False)
        self.preview_stop.set_sensitive(True)
        self.preview_line.set_text(f"Preview of {style_name}: sending…")
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
        settings = Settings(
            strength=self.config.get_property("strength"),
            iterations=max(1, iterations // 4),
            size=size,
            preserve_colors=self.config.get_property("preserve-colors"),
            seed=self.config.get_property("seed"),
            preview_seconds=-1,
        )
        full = read_layer(self.layer)
        pixbuf = pixbuf_from_rgba(full)
        if max(full.width, full.height) > size:
            pixbuf = fit(pixbuf, size)
        width, height = pixbuf.get_width(), pixbuf.get_height()
        data = pixbuf.get_pixels()
        stride = pixbuf.get_rowstride()
        if stride != width * 4:
            data = b"".join(data[y * stride : y * stride + width * 4] for y in range(height))
        return settings, Image(bytes(data), width, height)

    def _preview_work(self, generation, cancel, address, token, content, style, settings):
        """On a worker thread: no GTK here, only idle callbacks."""
        try:
            with connect(self.config, address, token) as client:
                job = client.stylize(content, [style], settings)
                watcher = threading.Thread(target=lambda: cancel.wait() and job.cancel(), daemon=True)
                watcher.start()
                for event in job.events():
                    GLib.idle_add(self._preview_event, generation, event)
                result = job.result
            GLib.idle_add(self._preview_done, generation, result, None)
        except (ServerError, OSError, ValueError) as error:
            GLib.idle_add(self._preview_done, generation, None, error)
        finally:
            cancel.set()  # ends the watcher

    def _preview_event(self, generation, event):
        if generation == self.preview_generation:
            text = describe(event)
            if isinstance(event, Progress):
                text = f"{event.fraction:.0%}: {text}"
            if text:
                self.preview_line.set_text(text)
        return False

    def _preview_done(self, generation, result, error):
        if generation != self.preview_generation:
            return False  # the settings changed meanwhile; clear_preview already said so
        self.preview_button.set_sensitive(True)
        self.preview_stop.set_sensitive(False)
        self.preview_cancel = None
        if error is not None:
            stopped = getattr(error, "cancelled", False)
            self.preview_line.set_text("Preview stopped." if stopped else str(error))
        else:
            self.preview_image.set_from_pixbuf(pixbuf_from_rgba(result))
            size = f"{result.width}×{result.height} px"
            self.preview_line.set_text(f"Preview at {size}. OK paints the whole layer.")
            if self.autopiloting:
                print("impasto-autopilot: preview shown", flush=True)
        self._autopilot_resume()
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

    # ---- autopilot: IMPASTO_AUTOPILOT="sleep:3,preview,set:size=64,ok" presses the buttons (the test suite's
    # screenshots and GUI tests use it; steps are printed on stdout). Steps after "ok" are the progress
    # window's: "cancel-progress" presses its Cancel once the job's progress shows. -------------------

    def _autopilot_next(self):
        if not self.autopilot:
            return False
        step = self.autopilot.pop(0)
        print(f"impasto-autopilot: {step}", flush=True)
        if step.startswith("sleep:"):
            GLib.timeout_add(int(float(step.split(":", 1)[1]) * 1000), self._autopilot_next)
        elif step == "preview":
            self.autopilot.insert(0, "wait")  # resumed by _preview_done
            self.start_preview()
        elif step.startswith("set:"):  # set:iterations=40
            name, _, value = step[4:].partition("=")
            kind = type(self.config.get_property(name))
            self.config.set_property(name, value == "true" if kind is bool else kind(value))
            GLib.idle_add(self._autopilot_next)
        elif step == "ok":
            self.dialog.response(Gtk.ResponseType.OK)
        elif step == "cancel":
            self.dialog.response(Gtk.ResponseType.CANCEL)
        return False

    def _autopilot_resume(self):
        if self.autopilot and self.autopilot[0] == "wait":
            self.autopilot.pop(0)
            GLib.idle_add(self._autopilot_next)


def describe_server(info):
    """One line on where jobs run and how busy the server is."""
    devices = info.devices or ()
    if devices:
        names = ", ".join(f"{d.kind}: {d.name} ({'busy' if d.busy else 'idle'})" for d in devices)
    else:
        names = f"{info.device_kind}: {info.device_name}"
    waiting = f"{info.queue_length} job(s) waiting" if info.queue_length else "no jobs waiting"
    full_size = "" if info.full_size else " It cannot paint at full size (an older impasto-server)."
    return f"Runs on {names}; {waiting}, {info.running_jobs} running.{full_size}"


def _thumbnail_or_none(client, preset_id):
    """A preset's thumbnail; a preset whose file is broken on the server just shows none."""
    try:
        return client.thumbnail(preset_id)
    except ServerError:
        return None


def thumbnail_pixbuf(png):
    pixbuf = pixbuf_from_png(png) if png else None
    return fit(pixbuf, 64) if pixbuf is not None else None


# ---- remembered server and token ---------------------------------------------------------------


def settings_file():
    return os.path.join(Gimp.directory(), "impasto.json")


def _saved():
    try:
        with open(settings_file()) as f:
            saved = json.load(f)
        return saved if isinstance(saved, dict) else {}
    except (OSError, ValueError):
        return {}


def remembered_address():
    return _saved().get("server") or os.environ.get("IMPASTO_SERVER") or DEFAULT_ADDRESS


def server_address(config) -> str:
    """The server field as typed, else the last address used."""
    return config.get_property("server").strip() or remembered_address()


def token_for(config, address: str) -> str | None:
    """The token field, else the token remembered for this address (never another server's)."""
    return config.get_property("token") or remembered_token(address)


def remembered_token(address):
    """The token last used with `address` from the dialog, or None."""
    tokens = _saved().get("tokens")
    return tokens.get(address) if isinstance(tokens, dict) else None


def remember(address, token=None):
    """The last address used; with a token, that token for this address (the file is this user's only)."""
    saved = _saved()
    saved["server"] = address
    if token:
        tokens = saved.get("tokens") if isinstance(saved.get("tokens"), dict) else {}
        tokens[address] = token
        saved["tokens"] = tokens
    try:
        descriptor = os.open(settings_file(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as f:
            json.dump(saved, f)
    except OSError:
        pass  # remembering is a convenience; the run itself succeeded


Gimp.main(Impasto.__gtype__, sys.argv)
