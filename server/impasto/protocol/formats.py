"""The image file formats Impasto reads: one table for the server's decoder, the style library and the
CLI's file lists. Pillow's other plug-ins (EPS runs Ghostscript, many parse rarely used formats) are never
offered a client's bytes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageFormat:
    pillow: str  # Pillow's name for it
    name: str  # as users read it
    suffixes: tuple[str, ...]  # the first is what a saved file of this format gets
    signatures: tuple[bytes, ...]  # how its files start

    def starts(self, data: bytes | bytearray) -> bool:
        if self.pillow == "WEBP":  # RIFF, a length, then WEBP
            return data[:4] == b"RIFF" and data[8:12] == b"WEBP"
        return bytes(data[:8]).startswith(self.signatures)


FORMATS = (
    ImageFormat("PNG", "PNG", (".png",), (b"\x89PNG\r\n\x1a\n",)),
    ImageFormat("JPEG", "JPEG", (".jpg", ".jpeg"), (b"\xff\xd8",)),
    ImageFormat("WEBP", "WebP", (".webp",), ()),
    ImageFormat("TIFF", "TIFF", (".tif", ".tiff"), (b"II*\x00", b"MM\x00*")),
    ImageFormat("BMP", "BMP", (".bmp",), (b"BM",)),
    ImageFormat("GIF", "GIF", (".gif",), (b"GIF8",)),
)
PILLOW_FORMATS = tuple(f.pillow for f in FORMATS)
FORMAT_NAMES = ", ".join(f.name for f in FORMATS[:-1]) + f" or {FORMATS[-1].name}"
IMAGE_SUFFIXES = frozenset(suffix for f in FORMATS for suffix in f.suffixes)


def suffix_for(pillow_format: str) -> str | None:
    """The file suffix for a format Pillow named; a camera's MPO is a JPEG with a second picture in it."""
    wanted = "JPEG" if pillow_format == "MPO" else pillow_format
    return next((f.suffixes[0] for f in FORMATS if f.pillow == wanted), None)


def looks_like_image(data: bytes | bytearray) -> bool:
    """Whether `data` starts as a file of one of the formats does (a damaged one, if it does not decode)."""
    return any(f.starts(data) for f in FORMATS)
