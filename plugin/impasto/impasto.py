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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "vendor"))

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gegl", "0.4")
gi.require_version("Gtk", "3.0")
from gi.repository import Gegl, Gimp, GimpUi, GLib, GObject, Gtk  # noqa: E402
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
)

PROCEDURE = "python-fu-impasto"
PIXELS = "R'G'B'A u8"
RW = GObject.ParamFlags.READWRITE
DIALOG_ARGUMENTS = [
    "style-file",
    "strength",
    "iterations",
    "size",
    "preserve-colors",
    "seed",
    "server",
    "token",
]


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
            "Style versus content: 0 keeps the picture, 2 doubles the style",
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
            "preserve-colors", "Preserve colors", "Keep the picture's colours", False, RW
        )
        procedure.add_int_argument("seed", "Seed", "Same seed, same result", 0, 2**31 - 1, 0, RW)
        procedure.add_string_argument(
            "server",
            "Server",
            f"host:port; empty = the last address used, else $IMPASTO_SERVER, else {DEFAULT_ADDRESS}",
            "",
            RW,
        )
        procedure.add_string_argument("token", "Token", "The server's token, if it needs one", "", RW)
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
    if run_mode == Gimp.RunMode.INTERACTIVE:
        GimpUi.init(PROCEDURE)
        if not StyleDialog(procedure, config).run():
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())

    address = config.get_property("server").strip() or remembered_address()
    try:
        style, style_name = chosen_style(config)
        content = read_layer(layer)
        settings = Settings(
            strength=config.get_property("strength"),
            iterations=config.get_property("iterations"),
            size=config.get_property("size"),
            preserve_colors=config.get_property("preserve-colors"),
            seed=config.get_property("seed"),
        )
        with Client(address, token=config.get_property("token") or None) as client:
            job = client.stylize(content, [style], settings)
            if run_mode == Gimp.RunMode.INTERACTIVE:
                finished = ProgressDialog(job, style_name).run()
            else:
                finished = follow_in_status_bar(job, style_name)
    except (ServerError, OSError, ValueError) as error:
        return fail(procedure, str(error))
    if not finished:
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    remember_address(client.address)
    if not (image.is_valid() and layer.is_valid()):
        return fail(procedure, "The image or layer was closed while Impasto worked; nothing was changed.")
    result = add_result_layer(image, layer, job.result, style_name)
    return Gimp.ValueArray.new_from_values(
        [
            GObject.Value(Gimp.PDBStatusType, Gimp.PDBStatusType.SUCCESS),
            GObject.Value(Gimp.Layer, result),
        ]
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


def read_layer(layer):
    width, height = layer.get_width(), layer.get_height()
    rect = Gegl.Rectangle.new(0, 0, width, height)
    data = layer.get_buffer().get(rect, 1.0, PIXELS, Gegl.AbyssPolicy.NONE)
    return Image(bytes(data), width, height)


def add_result_layer(image, source, result, style_name):
    """A new layer directly above the source, same size and offsets, masked by the selection."""
    if result.encoded or (result.width, result.height) != (source.get_width(), source.get_height()):
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
        layer.set_offsets(x, y)
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
        return f"Scale {p.scale} of {p.scales}, iteration {p.iteration} of {p.iterations}{left}"
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
    through GLib.idle_add.
    """

    def __init__(self, job, style_name):
        self.job = job
        self.error = None
        self.finished = False
        self.dialog = Gtk.Dialog(title=f"Impasto: {style_name}", modal=True)
        self.dialog.add_button("_Cancel", Gtk.ResponseType.CANCEL)
        self.dialog.connect("response", lambda *_: self.job.cancel())
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

    def _show(self, event):
        text = describe(event)
        if text:
            self.stage.set_text(text)
        if isinstance(event, Progress):
            self.bar.set_fraction(event.fraction)
            Gimp.progress_update(event.fraction)
        if isinstance(event, Preview):
            self.preview.set_from_pixbuf(pixbuf_from_png(event.png))
        return False


def pixbuf_from_png(data):
    from gi.repository import GdkPixbuf

    loader = GdkPixbuf.PixbufLoader.new_with_type("png")
    loader.write(data)
    loader.close()
    return loader.get_pixbuf()


# ---- dialog ------------------------------------------------------------------------------------


class StyleDialog:
    """GIMP's own procedure dialog, plus a preset list fetched from the server (with thumbnails)."""

    def __init__(self, procedure, config):
        self.config = config
        self.dialog = GimpUi.ProcedureDialog.new(procedure, config, "Impasto Style Transfer")
        self.dialog.fill(DIALOG_ARGUMENTS)
        area = self.dialog.get_content_area()
        self.status = Gtk.Label(xalign=0, wrap=True, max_width_chars=60)
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
        area.pack_start(row, False, False, 0)
        area.pack_start(self.status, False, False, 0)
        area.reorder_child(row, 0)
        area.reorder_child(self.status, 1)

    def run(self):
        self.dialog.show_all()
        self.load_presets()
        ok = self.dialog.run()
        self.dialog.destroy()
        return ok

    def load_presets(self):
        address = self.config.get_property("server").strip() or remembered_address()
        self.presets.clear()
        try:
            with Client(address, token=self.config.get_property("token") or None, timeout=3) as client:
                presets = client.styles()
                thumbnails = {p.id: _thumbnail_or_none(client, p.id) for p in presets}
        except (ServerError, ValueError) as error:
            self.status.set_markup(
                f"<b>{GLib.markup_escape_text(str(error))}</b>\nYou can still choose a style "
                "image file, fix the server address and press Connect."
            )
            return
        chosen = self.config.get_property("style")
        for preset in presets:
            self.presets.append([preset.id, preset.title, thumbnail_pixbuf(thumbnails[preset.id])])
            if preset.id == chosen:
                self.combo.set_active(len(self.presets) - 1)
        self.status.set_text(
            f"{len(presets)} presets on {address}"
            if presets
            else f"The server at {address} has no presets; choose a style image file."
        )

    def _preset_chosen(self, combo):
        row = combo.get_active_iter()
        if row is not None:
            self.config.set_property("style", self.presets[row][0])


def _thumbnail_or_none(client, preset_id):
    """A preset's thumbnail; a preset whose file is broken on the server just shows none."""
    try:
        return client.thumbnail(preset_id)
    except ServerError:
        return None


def thumbnail_pixbuf(png):
    pixbuf = pixbuf_from_png(png) if png else None
    if pixbuf is None:
        return None
    scale = 64 / max(pixbuf.get_width(), pixbuf.get_height())
    from gi.repository import GdkPixbuf

    return pixbuf.scale_simple(
        max(1, int(pixbuf.get_width() * scale)),
        max(1, int(pixbuf.get_height() * scale)),
        GdkPixbuf.InterpType.BILINEAR,
    )


# ---- remembered server -------------------------------------------------------------------------


def settings_file():
    return os.path.join(Gimp.directory(), "impasto.json")


def remembered_address():
    try:
        with open(settings_file()) as f:
            saved = json.load(f).get("server")
    except (OSError, ValueError):
        saved = None
    return saved or os.environ.get("IMPASTO_SERVER") or DEFAULT_ADDRESS


def remember_address(address):
    try:
        with open(settings_file(), "w") as f:
            json.dump({"server": address}, f)
    except OSError:
        pass  # remembering is a convenience; the run itself succeeded


Gimp.main(Impasto.__gtype__, sys.argv)
