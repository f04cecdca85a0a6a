"""The layer's pixels out to the server, and the server's result back in as a new layer."""

from gi.repository import Gegl, Gimp

from .remote import Image

PIXELS = "R'G'B'A u8"  # sRGB-encoded 8-bit RGBA: what the server reads and sends back
PIXEL_BYTES = 4  # of PIXELS

Box = tuple[int, int, int, int]  # x, y, width, height in layer coordinates


def painted_box(image: Gimp.Image, layer: Gimp.Layer, full_size: bool) -> Box:
    """The part of the layer that is sent: the whole layer, or at full size with a selection, the
    selection's bounding box (painted at its own size). Raises ValueError for a selection that misses the
    layer, whose result would be masked away entirely, or for an image or layer that is gone."""
    check_still_there(image, layer)
    whole = 0, 0, layer.get_width(), layer.get_height()
    if Gimp.Selection.is_empty(image):
        return whole
    ok, x, y, width, height = layer.mask_intersect()
    if not ok or width < 1 or height < 1:
        raise ValueError(
            f"The selection does not touch layer '{layer.get_name()}': select part of it, or Select ▸ None."
        )
    return (x, y, width, height) if full_size else whole


def check_still_there(image: Gimp.Image | None, layer: Gimp.Layer) -> None:
    """Raises ValueError once the image is closed or the layer deleted: the user may do either while the
    dialog is open or a job runs."""
    if not (layer.is_valid() and image is not None and image.is_valid()):
        raise ValueError("The image or layer was closed or deleted meanwhile; nothing was changed.")


def read_layer(layer: Gimp.Layer, box: Box | None = None) -> Image:
    x, y, width, height = box or (0, 0, layer.get_width(), layer.get_height())
    rect = Gegl.Rectangle.new(x, y, width, height)
    data = layer.get_buffer().get(rect, 1.0, PIXELS, Gegl.AbyssPolicy.NONE)
    return Image(bytes(data), width, height)


def add_result_layer(
    image: Gimp.Image, source: Gimp.Layer, box: Box, result: Image, title: str
) -> Gimp.Layer:
    """A new layer "Impasto: `title`" directly above the source over the painted box (the whole layer, or
    a selection's bounding box), looking as the source would painted in place: with its mode and
    opacity, masked by the selection and by the source's own mask. One undo step. The new layer is left
    selected (not its mask), so that Filters ▸ Repeat paints again on a layer."""
    box_x, box_y, width, height = box
    _check_fits(result, width, height)
    image.undo_group_start()
    try:
        kind = (
            Gimp.ImageType.GRAYA_IMAGE
            if image.get_base_type() == Gimp.ImageBaseType.GRAY
            else Gimp.ImageType.RGBA_IMAGE
        )
        layer = Gimp.Layer.new(
            image, f"Impasto: {title}", width, height, kind, source.get_opacity(), source.get_mode()
        )
        image.insert_layer(layer, source.get_parent(), image.get_item_position(source))
        _, x, y = source.get_offsets()
        layer.set_offsets(x + box_x, y + box_y)
        buffer = layer.get_buffer()
        buffer.set(Gegl.Rectangle.new(0, 0, width, height), PIXELS, result.data)
        buffer.flush()
        _mask_as_source_shows(image, source, layer, box)
        layer.update(0, 0, width, height)
    finally:
        image.undo_group_end()
    Gimp.displays_flush()
    return layer


def _mask_as_source_shows(image: Gimp.Image, source: Gimp.Layer, layer: Gimp.Layer, box: Box) -> None:
    """Gives the new layer over `box` a mask where a painted source would hide parts: outside the
    selection, and where the source's own mask (unless disabled) hides them; where both apply, only what
    both show is shown."""
    source_mask = source.get_mask()
    if source_mask is not None and not source.get_apply_mask():
        source_mask = None  # disabled: the whole source shows
    selected = not Gimp.Selection.is_empty(image)
    if source_mask is None and not selected:
        return
    # A SELECTION mask with nothing selected is all black: GIMP's "nothing selected" means "all".
    layer.add_mask(layer.create_mask(Gimp.AddMaskType.SELECTION if selected else Gimp.AddMaskType.WHITE))
    if source_mask is not None:
        # INTERSECT keeps the lower value of the two masks; the offset is the source mask's corner as seen
        # from the box's, so that only the box's part of it counts.
        box_x, box_y, _, _ = box
        layer.get_mask().combine_masks(source_mask, Gimp.ChannelOps.INTERSECT, -box_x, -box_y)
    # Adding a mask makes the mask the selected drawable; Repeat needs the layer (inserted: selected).
    layer.set_edit_mask(False)


def _check_fits(result: Image, width: int, height: int) -> None:
    """Raises ValueError unless `result` is PIXELS for exactly width×height px: GEGL would write nothing
    from data of another length, without a word, and the run would seem to succeed."""
    due = width * height * PIXEL_BYTES
    if result.encoded or (result.width, result.height) != (width, height):
        misfit = f"{result.width}×{result.height} px for {width}×{height} px"
    elif len(result.data) != due:
        misfit = f"{len(result.data)} bytes for {width}×{height} px, which take {due}"
    else:
        return
    raise ValueError(
        f"The server sent a result that does not fit the layer ({misfit}); nothing was changed. Is it an "
        "impasto-server of this plug-in's release?"
    )
