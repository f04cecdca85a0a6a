"""What a job asks for: its settings, its styles and its images.

One convention everywhere: a setting left at `None` is the server's default (`bounds.py` says which).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

NO_PREVIEWS = math.inf  # a preview interval that never comes
# px: the dialog's preview box. A preview_only job paints the job's first scale, which the engine keeps
# below it (96-136 px on the long side with its default recipe).
PREVIEW_SIDE = 160


@dataclass(frozen=True)
class Settings:
    """Every choice of a job besides its images and styles; `None` is the server's default."""

    strength: float | None = None  # style versus content: 0 keeps the content; default 1
    iterations: int | None = None  # at the working size; coarser scales run a share of them
    size: int | None = None  # the working long side in px
    full_size: bool = False  # paint at the content's own size (tiled where memory is short); size ignored
    preserve_colors: bool = False
    seed: int | None = None  # default 0
    style_scale: float | None = None  # the style's brush size relative to the working size; default 1
    preview_seconds: float | None = None  # between previews; default 2; NO_PREVIEWS: none
    # Only the job's own beginning, its first scale, sent as a small result: its preview.
    preview_only: bool = False


@dataclass(frozen=True)
class ImageHeader:
    """An image as announced before its bytes: raw RGBA8 rows of a known size, or an encoded file."""

    format: Literal["rgba8", "encoded", ""]  # "" is a client that did not say
    total_bytes: int
    width: int = 0  # rgba8 only
    height: int = 0


@dataclass
class Image:
    """Image bytes to upload, or a result: raw RGBA8 rows (width × height × 4), or an encoded file."""

    data: bytes | memoryview
    width: int = 0
    height: int = 0
    encoded: bool = False

    @classmethod
    def from_file(cls, path: str | Path) -> Image:
        return cls(Path(path).read_bytes(), encoded=True)

    @property
    def header(self) -> ImageHeader:
        fmt = "encoded" if self.encoded else "rgba8"
        return ImageHeader(
            fmt, len(self.data), 0 if self.encoded else self.width, 0 if self.encoded else self.height
        )


@dataclass(frozen=True)
class StyleChoice:
    """One style of a job: a preset of the server's, or one of the job's uploaded images."""

    preset_id: str | None = None
    upload: int | None = None  # index into the job's uploads
    weight: float | None = None  # in a blend of several; default 1
    save_as_preset: str = ""  # for an upload: also keep it on the server as a preset with this name


@dataclass(frozen=True)
class Parameters:
    """The first message of a job: what it asks for, and the images whose bytes follow (content first)."""

    content: ImageHeader
    styles: tuple[StyleChoice, ...]
    uploads: tuple[ImageHeader, ...] = ()
    settings: Settings = Settings()

    @property
    def images(self) -> tuple[ImageHeader, ...]:
        """Content first, then the uploads: the order of their bytes."""
        return (self.content, *self.uploads)
