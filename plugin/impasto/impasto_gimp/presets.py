"""The style dialog's presets: the server's presets as a grid of thumbnails with their titles, in a
scrolled window of fixed size, so that the dialog keeps its size whatever the server has."""

from collections.abc import Callable
from dataclasses import dataclass

from gi.repository import GdkPixbuf, GLib, Gtk, Pango

THUMBNAIL = 56  # px, the long side of a preset's thumbnail; its title goes under it, in two lines at most
COLUMNS = 6
ROWS_SHOWN = 2  # more scroll
SPACING = 2  # px between cells


@dataclass(frozen=True)
class Preset:
    id: str
    title: str
    thumbnail: GdkPixbuf.Pixbuf | None  # None: the server could not give one


class PresetGrid:
    """Choosing a preset (a click, or the arrow keys) calls `chosen` with its id; `widget` is what the
    dialog packs."""

    def __init__(self, chosen: Callable[[str], None]):
        self.chosen = chosen
        self.ids: list[str] = []
        self.flowbox = Gtk.FlowBox(
            selection_mode=Gtk.SelectionMode.SINGLE,
            homogeneous=True,
            min_children_per_line=COLUMNS,
            max_children_per_line=COLUMNS,
            column_spacing=SPACING,
            row_spacing=SPACING,
            valign=Gtk.Align.START,
        )
        self.flowbox.connect("selected-children-changed", self._selected)
        # COLUMNS wide and ROWS_SHOWN high (the scroll bar beside the cells, not over them), measured on a
        # cell as the theme draws it; while there are no presets, a line says so in their place, as wide.
        probe = _cell(Preset("", "Two\nlines", None))
        self.flowbox.add(probe)
        probe.show_all()
        width = COLUMNS * probe.get_preferred_width()[1] + (COLUMNS - 1) * SPACING
        height = ROWS_SHOWN * probe.get_preferred_height()[1] + (ROWS_SHOWN - 1) * SPACING
        self.flowbox.remove(probe)
        self.flowbox.set_size_request(width, -1)
        self.scrolled = Gtk.ScrolledWindow(
            hscrollbar_policy=Gtk.PolicyType.NEVER,
            vscrollbar_policy=Gtk.PolicyType.AUTOMATIC,
            overlay_scrolling=False,
            shadow_type=Gtk.ShadowType.IN,
        )
        self.scrolled.set_min_content_height(height)
        self.scrolled.set_max_content_height(height)
        self.scrolled.add(self.flowbox)
        self.flowbox.set_vadjustment(self.scrolled.get_vadjustment())  # the arrow keys scroll along
        self.placeholder = Gtk.Label(xalign=0, wrap=True)
        self.placeholder.get_style_context().add_class("dim-label")
        self.widget = Gtk.Stack(hhomogeneous=True, vhomogeneous=False)
        self.widget.add(self.scrolled)
        self.widget.add(self.placeholder)
        self.widget.show_all()
        self.clear()

    def show(self, presets: list[Preset], preselected: str | None) -> None:
        """Shows `presets`, with `preselected` chosen (None: none)."""
        self.clear()
        for preset in presets:
            self.flowbox.add(_cell(preset))
            self.ids.append(preset.id)
        self.flowbox.show_all()
        if presets:
            self.widget.set_visible_child(self.scrolled)
        else:
            self.placeholder.set_text("This server has no presets: choose a style image (above).")
        self.select(preselected)

    def clear(self) -> None:
        """No presets (yet): a line in their place."""
        for child in self.flowbox.get_children():
            self.flowbox.remove(child)
        self.ids = []
        self.placeholder.set_text("The server's presets show here once connected.")
        self.widget.set_visible_child(self.placeholder)

    def select(self, preset_id: str | None) -> bool:
        """Chooses the preset `preset_id` as a click would (None: none); False if there is no such preset."""
        if preset_id not in self.ids:
            self.flowbox.unselect_all()
            return False
        child = self.flowbox.get_child_at_index(self.ids.index(preset_id))
        self.flowbox.select_child(child)
        # Scrolled to, once laid out (idle callbacks come after GTK's layout): it may be below the rows shown.
        GLib.idle_add(self._scroll_to, child)
        return True

    def selected(self) -> str | None:
        children = self.flowbox.get_selected_children()
        return self.ids[children[0].get_index()] if children else None

    def _scroll_to(self, child: Gtk.FlowBoxChild) -> bool:
        top, height = child.get_allocation().y, child.get_allocation().height
        if height > 1:
            self.scrolled.get_vadjustment().clamp_page(top, top + height)
        return False  # once, for GLib.idle_add

    def _selected(self, _flowbox) -> None:
        preset_id = self.selected()
        if preset_id is not None:  # none: the grid was cleared, or a style file was chosen instead
            self.chosen(preset_id)


def _cell(preset: Preset) -> Gtk.FlowBoxChild:
    image = Gtk.Image.new_from_pixbuf(preset.thumbnail) if preset.thumbnail else Gtk.Image()
    image.set_size_request(THUMBNAIL, THUMBNAIL)
    title = Gtk.Label(
        label=preset.title,
        wrap=True,
        lines=2,
        ellipsize=Pango.EllipsizeMode.END,
        justify=Gtk.Justification.CENTER,
        max_width_chars=11,
        width_chars=11,
    )
    title.get_style_context().add_class("dim-label")
    box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=2)
    box.pack_start(image, False, False, 0)
    box.pack_start(title, False, False, 0)
    child = Gtk.FlowBoxChild()
    child.set_tooltip_text(f"{preset.title} ({preset.id})")
    child.add(box)
    return child
