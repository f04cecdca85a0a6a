"""Pictures for the dialogs: the server's PNGs and raw results as GdkPixbufs, and a small copy of a
layer for the preview."""

from gi.repository import GdkPixbuf, GLib

from .remote import Image


def pixbuf_from_png(data: bytes) -> GdkPixbuf.Pixbuf:
    loader = GdkPixbuf.PixbufLoader.new_with_type("png")
    loader.write(data)
    loader.close()
    return loader.get_pixbuf()


def pixbuf_from_rgba(image: Image) -> GdkPixbuf.Pixbuf:
    """A raw RGBA8 Image (what the server sends back) as a GdkPixbuf."""
    width, height = image.width, image.height
    return GdkPixbuf.Pixbuf.new_from_bytes(
        GLib.Bytes.new(image.data), GdkPixbuf.Colorspace.RGB, True, 8, width, height, width * 4
    )


def fit(pixbuf: GdkPixbuf.Pixbuf, width: int, height: int | None = None) -> GdkPixbuf.Pixbuf:
    """`pixbuf` scaled, larger or smaller, to the largest size that fits a box of `width`×`height` px
    (a square one without `height`)."""
    height = width if height is None else height
    scale = min(width / pixbuf.get_width(), height / pixbuf.get_height())
    return pixbuf.scale_simple(
        max(1, round(pixbuf.get_width() * scale)),
        max(1, round(pixbuf.get_height() * scale)),
        GdkPixbuf.InterpType.BILINEAR,
    )


def thumbnail_pixbuf(png: bytes | None, size: int) -> GdkPixbuf.Pixbuf | None:
    pixbuf = pixbuf_from_png(png) if png else None
    return fit(pixbuf, size) if pixbuf is not None else None


def at_most(image: Image, size: int) -> Image:
    """A raw RGBA8 Image scaled down so that its long side is at most `size` px."""
    if max(image.width, image.height) <= size:
        return image
    pixbuf = fit(pixbuf_from_rgba(image), size)
    width, height = pixbuf.get_width(), pixbuf.get_height()
    data = pixbuf.get_pixels()
    stride = pixbuf.get_rowstride()
    if stride != width * 4:
        data = b"".join(data[y * stride : y * stride + width * 4] for y in range(height))
    return Image(bytes(data), width, height)


def file_image_size(path: str) -> tuple[int, int]:
    """The width and height of the image in the file at `path`, from its header; (0, 0) where GdkPixbuf
    cannot tell (the server then reads them itself)."""
    known, width, height = GdkPixbuf.Pixbuf.get_file_info(path)
    return (width, height) if known is not None else (0, 0)
