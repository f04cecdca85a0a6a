"""The Server section's Token field. GIMP's own widget for the token argument would be saved, in plain text,
by the dialog's Save Settings (and kept as a last value): this one is the dialog's own, bound to no
argument, in the place and with the label GIMP's would have. OK hands its text to the run."""

from gi.repository import Gimp, GimpUi, GObject, Gtk

from .store import split_token_leniently


class TokenField:
    def __init__(
        self,
        procedure: Gimp.Procedure,
        config: Gimp.ProcedureConfig,
        dialog: GimpUi.ProcedureDialog,
        server_fields: Gtk.Box,
    ):
        """Second in `server_fields`, starting with the token a script passed (which leaves the config)."""
        self.config = config
        argument = procedure.find_argument("token")
        self.widget = GimpUi.LabelEntry.new(argument.get_nick())
        self.widget.set_tooltip_text(argument.get_blurb())
        self.widget.set_value(config.get_property("token") or "")  # None where a script passed none
        config.set_property("token", "")
        self.entry = self.widget.get_entry()
        self.entry.set_visibility(False)  # a password: dots, not letters
        # Its label as wide as those of GIMP's fields: a chain of size groups joins GIMP's own.
        labels = Gtk.SizeGroup(mode=Gtk.SizeGroupMode.HORIZONTAL)
        labels.add_widget(dialog.get_widget("server", GObject.TYPE_NONE).get_label())
        labels.add_widget(self.widget.get_label())
        server_fields.pack_start(self.widget, False, False, 0)
        server_fields.reorder_child(self.widget, 1)
        self.widget.show_all()
        self.server_text = ""
        config.connect("notify::server", lambda *_: self._take_pairing_token())
        self._take_pairing_token()

    def value(self) -> str:
        return self.widget.get_value()

    def _take_pairing_token(self) -> None:
        """A pairing string pasted into Server leaves its token here: GIMP's Save Settings writes the Server
        field as it is, and the token would stay there in plain text. Only a paste moves it (the text grew
        by more than a letter): a string typed by hand would lose its token's first letter."""
        text = self.config.get_property("server")
        pasted = len(text) > len(self.server_text) + 1
        self.server_text = text
        address, token = split_token_leniently(text)
        if pasted and token:
            self.widget.set_value(token)
            self.config.set_property("server", address)  # notifies again, without a token
