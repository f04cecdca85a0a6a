"""The style dialog, in the order of the choices: the style (the server's presets as a grid, or a style
image), the strength, the preview, then the cost; the connection's fields in a "Server" section that
opens by itself while not connected, and the rest in "Advanced".

Every argument's widget is GIMP's own (GimpProcedureDialog), so that GIMP keeps them as last values and
Filters ▸ Repeat reuses them; but the token's, whose field is the dialog's own, so that no settings file of
GIMP's ever holds it. Errors stay in the dialog: OK is greyed out until a style is chosen, and
OK with an unreachable server or a refused token keeps the dialog open with the reason in its status
line, the choices as they were."""

import os
import threading
from typing import NamedTuple

from gi.repository import Gdk, Gimp, GimpUi, GLib, GObject, Gtk

from . import hook
from .cost import CostLine
from .local_server import start_if_needed
from .pictures import thumbnail_pixbuf
from .presets import THUMBNAIL, Preset, PresetGrid
from .preview import PreviewPane
from .remote import (
    FAILURES,
    Client,
    ImpastoError,
    Info,
    Tls,
    addresses,
    chosen_style,
    connect,
    display_address,
    job_settings,
    sentence,
    style_chosen,
    style_file_path,
)
from .store import server_address, token_for
from .token_field import TokenField

# A change, or one of the token field: connect again before a job.
SERVER_FIELDS = ["server", "tls-ca", "insecure"]
ADVANCED_FIELDS = ["iterations", "size", "full-size", "preserve-colors", "seed"]
# A change: a new preview and cost, once the choices have settled.
CHOICES = ["style", "strength", *ADVANCED_FIELDS]  # and style-file, which also replaces the preset
STRENGTH_SLIDER = (0.0, 3.0)  # the slider's range; the number field takes the argument's whole range
HELP_PAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "help.html")
NO_STYLE_YET = "Choose a style first: a preset above, or a style image file"
CONNECTING = "impasto-connect"  # the name of each thread that connects to list the presets
FULL_SIZE_UNAVAILABLE = "This server cannot paint at full size (an older impasto-server)"


class ServerFields(NamedTuple):
    """The Server section as it is: a connect is for these, and its news is wanted while they stay."""

    address: str
    token: str  # as typed in the Token field
    tls: Tls


class StyleDialog:
    """The server is asked for its presets and info when the dialog opens and on Connect (short calls,
    3 s timeout), on a worker thread that also starts the plug-in's own server where it has to, and reaches
    GTK through GLib.idle_add."""

    def __init__(self, procedure: Gimp.Procedure, config: Gimp.ProcedureConfig, layer: Gimp.Layer):
        GimpUi.init(procedure.get_name())
        self.config = config
        self.info: Info | None = None
        self.connected_with: ServerFields | None = None  # the Server section's fields when it connected
        self.choices: tuple | None = None  # the style, style file and settings the preview was made for
        self.closed = False  # a worker's late news is dropped then
        self.connecting: ServerFields | None = None  # the fields of the connect under way
        self.ok_when_connected: ServerFields | None = None  # the fields when OK was pressed meanwhile
        self.server_opened_by_itself = False
        self.dialog = dialog = GimpUi.ProcedureDialog.new(procedure, config, "Impasto Style Transfer")
        dialog.get_scale_entry("strength", 1.0).set_bounds(*STRENGTH_SLIDER, False)
        style_file = dialog.fill_box("style-file-box", ["style-file"])
        strength = dialog.fill_box("strength-box", ["strength"])
        server_fields = dialog.fill_box("server-fields", SERVER_FIELDS)
        server_fields.set_margin_start(12)  # a section's fields under its title
        self.token_field = TokenField(procedure, config, dialog, server_fields)
        dialog.get_label("server-title", "Ser_ver", False, True)
        self.server_section = dialog.fill_expander("server-section", "server-title", False, "server-fields")
        dialog.fill_box("advanced-fields", ADVANCED_FIELDS).set_margin_start(12)
        dialog.get_label("advanced-title", "Adva_nced", False, True)
        self.advanced_section = dialog.fill_expander(
            "advanced-section", "advanced-title", False, "advanced-fields"
        )

        self.grid = PresetGrid(self._preset_chosen)
        heading = Gtk.Label(xalign=0)
        heading.set_markup("<b>Style</b>")
        style_row = Gtk.Box(spacing=12)
        style_row.pack_start(heading, False, False, 0)
        style_row.pack_end(style_file, False, False, 0)
        self.cost = CostLine(config, layer, self.token_field.value)  # the preview's pane shows its line
        self.preview = PreviewPane(config, layer, self._connected, self.cost)
        # The status line wraps, asking for little width and using all there is: its text never widens the
        # dialog.
        self.status = Gtk.Label(xalign=0, wrap=True, max_width_chars=40, selectable=True)
        self.connect_button = Gtk.Button.new_with_mnemonic("Connec_t")
        self.connect_button.set_tooltip_text("Connect to the server in the Server field; list its presets")
        self.connect_button.connect("clicked", lambda *_: self.load_presets())
        connect_row = Gtk.Box()
        connect_row.pack_end(self.connect_button, False, False, 0)
        server_fields.pack_start(connect_row, False, False, 0)
        area = dialog.get_content_area()
        area.set_spacing(6)
        for widget in (style_row, self.grid.widget, strength, self.preview.widget, self.status,
                       self.server_section, self.advanced_section):  # fmt: skip
            area.pack_start(widget, False, False, 0)
        self._own_help()

        # "Auto (N)" beside the two arguments whose 0 means the server's default.
        self.auto = {}
        for name in ("iterations", "size"):
            label = Gtk.Label(xalign=0)
            label.get_style_context().add_class("dim-label")
            _beside(dialog.get_widget(name, GObject.TYPE_NONE), label)
            self.auto[name] = label
            config.connect(f"notify::{name}", lambda *_: self._show_auto())
        # Full size: the working size means nothing then; a server that cannot paint at full size (its
        # info says so) greys the box out.
        full_size = dialog.get_widget("full-size", GObject.TYPE_NONE)
        self.full_size_tooltip = full_size.get_tooltip_text()
        config.connect("notify::full-size", lambda *_: self._show_auto())
        self._show_auto()

        for name in CHOICES:
            config.connect(f"notify::{name}", lambda *_: self._choices_changed())
        config.connect("notify::style-file", lambda *_: self._style_file_changed())
        for name in SERVER_FIELDS:
            config.connect(f"notify::{name}", lambda *_: self._server_fields_changed())
        self.token_field.entry.connect("changed", lambda *_: self._server_fields_changed())
        self._choices_changed()

    def _own_help(self) -> None:
        """Help (and F1) open the plug-in's help page in the web browser. GIMP's own Help button, which asks
        for GIMP's user manual, gives way to one that does."""
        gimps = self.dialog.get_widget_for_response(Gtk.ResponseType.HELP)
        self.help_button = Gtk.Button.new_with_mnemonic("_Help")
        self.help_button.connect("clicked", lambda *_: self.show_help())
        buttons = self.dialog.get_widget_for_response(Gtk.ResponseType.OK).get_parent()
        if isinstance(buttons, Gtk.HeaderBar):
            buttons.pack_start(self.help_button)
        else:
            buttons.pack_start(self.help_button, False, False, 0)
            buttons.set_child_secondary(self.help_button, True)  # on the left, as GIMP's was
        if gimps is not None:
            gimps.set_no_show_all(True)
            gimps.hide()
        self.dialog.connect("key-press-event", self._key_pressed)

    def _key_pressed(self, _dialog, event: Gdk.EventKey) -> bool:
        if event.keyval == Gdk.KEY_F1:
            self.show_help()
            return True
        return False

    def show_help(self) -> None:
        uri = GLib.filename_to_uri(HELP_PAGE, None)
        try:
            Gtk.show_uri_on_window(self.dialog, uri, Gtk.get_current_event_time())
        except GLib.Error as error:
            self._say(f"The help page could not be opened ({error.message}): it is the file {HELP_PAGE}.")

    def run(self) -> bool:
        """True for OK: the config holds the choices. OK keeps the dialog open while no job could start."""
        self.dialog.show_all()
        self.load_presets()
        hook.attach(self)
        ok = False
        while not ok and self.dialog.run():
            ok = self._ready_to_paint()
        if ok:
            self.config.set_property("token", self.token_field.value())  # the run forgets it as it ends
        self.closed = True
        self.preview.close()
        self.cost.close()
        self.dialog.destroy()
        return ok

    def _ready_to_paint(self) -> bool:
        """OK was pressed: True when the job can go; else the status line, or the cost line for a job the
        server would refuse, says why. A long job asks first."""
        try:
            chosen_style(self.config)  # a style file that cannot be read
        except FAILURES as error:
            self._say(sentence(error))
            return False
        if not self._connected():
            # OK goes on by itself once connected, but only to the server in the fields as they are now.
            self.ok_when_connected = self._server_fields()
            if self.connecting != self.ok_when_connected:
                self.load_presets()
            return False
        try:
            return self.cost.approve(self.dialog)
        except FAILURES as error:
            self._say(sentence(error))
            return False

    def _connected(self) -> bool:
        """Connected to the server in the Server section's fields as they are."""
        return self.info is not None and self.connected_with == self._server_fields()

    # ---- the server's presets and state ---------------------------------------------------------

    def address(self) -> str:
        return server_address(self.config)

    def load_presets(self) -> None:
        """Connects and lists the server's presets on a worker thread (the plug-in's own server started
        first where nothing answers), so that the dialog stays responsive however slow the link."""
        fields = self.connecting = self._server_fields()
        token = token_for(fields.address, fields.token)
        self.connected_with = None
        self.grid.clear()
        self.status.set_text(f"Connecting to {display_address(fields.address)}…")
        worker = threading.Thread(target=self._fetch_presets, args=(fields, token), name=CONNECTING)
        worker.daemon = True
        worker.start()

    def _fetch_presets(self, fields: ServerFields, token: str | None) -> None:
        """On a worker thread: no GTK here, only idle callbacks, each with the fields it connected for."""
        address = fields.address
        try:
            start_if_needed(address, lambda text: GLib.idle_add(self._starting, fields, text))
            with connect(fields.tls, address, token, timeout=3) as client:
                chosen_server = client.address  # of several: the least busy that answered
                info = client.info()
                presets = client.styles()
                thumbnails = {p.id: _thumbnail_or_none(client, p.id) for p in presets}
        except FAILURES as error:
            GLib.idle_add(self._not_connected, fields, error)
            return
        GLib.idle_add(self._show_server, fields, chosen_server, info, presets, thumbnails)

    def _still_wanted(self, fields: ServerFields) -> bool:
        """Whether news of the connect for `fields` is still wanted: the dialog is open, no other connect
        has started since, and the Server section's fields are still those it connected for."""
        return not self.closed and fields == self.connecting == self._server_fields()

    def _starting(self, fields: ServerFields, text: str) -> bool:
        if self._still_wanted(fields):
            self.status.set_text(text)
        return False  # once, for GLib.idle_add

    def _not_connected(self, fields: ServerFields, error: Exception) -> bool:
        if not self._still_wanted(fields):
            return False
        self.connecting = self.ok_when_connected = None
        self.info = None
        self.cost.forget()
        self._show_auto()
        problem = sentence(error).rstrip(".")
        self._say(f"{problem}.\nFix the Server section's fields and press Connect.")
        if not self.server_section.get_expanded():
            self.server_section.set_expanded(True)
            self.server_opened_by_itself = True
        return False

    def _say(self, problem: str) -> None:
        self.status.set_markup(f"<b>{GLib.markup_escape_text(problem)}</b>")

    def _show_server(
        self, fields: ServerFields, chosen_server: str, info: Info, presets: list, thumbnails: dict
    ) -> bool:
        if not self._still_wanted(fields):
            return False
        self.connecting = None
        self.info = info
        self.connected_with = fields
        self._show_auto()
        ids = [preset.id for preset in presets]
        chosen = self.config.get_property("style")
        # The style last used, else the first preset; none where a style file is chosen.
        preselected = chosen if chosen in ids else next(iter(ids), None)
        if style_file_path(self.config) is not None:
            preselected = None
        grid = [Preset(p.id, p.title or p.id, thumbnail_pixbuf(thumbnails[p.id], THUMBNAIL)) for p in presets]
        self.grid.show(grid, preselected)
        count = f"{len(presets)} presets" if presets else "no presets: choose a style image file"
        servers = addresses(fields.address)
        which = f" (the least busy of {len(servers)} servers)" if len(servers) > 1 else ""
        self.status.set_markup(
            f"<b>Connected</b> to {GLib.markup_escape_text(chosen_server)}{which}: {count}; "
            f"{GLib.markup_escape_text(describe_server(info))}"
        )
        if self.server_opened_by_itself:
            self.server_section.set_expanded(False)
            self.server_opened_by_itself = False
        self.preview.schedule()
        if self.ok_when_connected == fields:
            self.ok_when_connected = None
            self.dialog.response(Gtk.ResponseType.OK)
        return False  # once, for GLib.idle_add

    def _server_fields(self) -> ServerFields:
        return ServerFields(self.address(), self.token_field.value(), Tls.of(self.config))

    def _server_fields_changed(self) -> None:
        """GIMP's widgets also notify values that did not change."""
        fields = self._server_fields()
        if self.connecting not in (None, fields):
            self.connecting = self.ok_when_connected = None  # the connect under way: its news is dropped
        elif self.connected_with not in (None, fields):
            self.connected_with = None
            self.cost.forget()  # it was the other server's
        else:
            return
        self.status.set_text("The Server section changed: press Connect (or OK) to connect again.")

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
        box.set_sensitive(able)
        box.set_tooltip_text(self.full_size_tooltip if able else FULL_SIZE_UNAVAILABLE)
        if not able and self.config.get_property("full-size"):
            self.config.set_property("full-size", False)  # notifies: _show_auto again, with it unticked
            return
        full_size = self.config.get_property("full-size")
        self.dialog.get_widget("size", GObject.TYPE_NONE).set_sensitive(not full_size)
        if full_size:
            self.auto["size"].set_text("The layer's own size")

    # ---- the style ------------------------------------------------------------------------------

    def _preset_chosen(self, preset_id: str) -> None:
        """A preset chosen in the grid replaces a style file."""
        self.config.set_property("style", preset_id)
        if style_file_path(self.config) is not None:
            self.config.set_property("style-file", None)

    def _style_file_changed(self) -> None:
        """A style file chosen replaces the preset."""
        if style_file_path(self.config) is not None:
            self.grid.select(None)
            self.config.set_property("style", "")
        self._choices_changed()

    def _choices_changed(self) -> None:
        """A choice of the job changed (GIMP's widgets also notify values that did not)."""
        style_file = style_file_path(self.config)
        choices = self.config.get_property("style"), style_file, job_settings(self.config)
        if choices == self.choices:
            return
        self.choices = choices
        if style_file is None and self.grid.selected() != choices[0]:
            self.grid.select(choices[0])  # the style changed by Reset or Load Saved Settings
        chosen = style_chosen(self.config)
        ok = self.dialog.get_widget_for_response(Gtk.ResponseType.OK)
        ok.set_tooltip_text(None if chosen else NO_STYLE_YET)  # a greyed-out OK says why
        self.dialog.set_response_sensitive(Gtk.ResponseType.OK, chosen)
        self.preview.schedule()


def _beside(widget: Gtk.Widget, label: Gtk.Label) -> None:
    """Puts `label` to the right of an argument's widget (a GimpLabeled grid in GIMP 3.0 and 3.2)."""
    widget.attach(label, 3, 0, 1, 1)
    label.set_margin_start(6)


def describe_server(info: Info) -> str:
    """Where jobs run and how busy the server is, in a few words."""
    names = ", ".join(f"{s.device} ({'busy' if s.busy else 'idle'})" for s in info.devices)
    waiting = f"{info.queue_length} job(s) waiting" if info.queue_length else "nothing waiting"
    full_size = "" if info.limits.full_size else " It cannot paint at full size (an older impasto-server)."
    return f"{names}, {waiting}.{full_size}"


def _thumbnail_or_none(client: Client, preset_id: str) -> bytes | None:
    """A preset's thumbnail; a preset whose file is broken on the server just shows none."""
    try:
        return client.thumbnail(preset_id)
    except ImpastoError:
        return None
