"""The style library: preset images in one folder, listed by id, with thumbnails.

Ids are slugs of the file names. A client's id is only ever looked up among the files found in
the folder, never joined onto a path, so no id can reach outside it.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .images import DEFAULT_MAX_PIXELS, Picture, load_picture, png_bytes

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff"}
THUMBNAIL_SIDE = 256


@dataclass(frozen=True)
class Preset:
    id: str
    title: str
    path: Path


def slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


class StyleLibrary:
    def __init__(self, folder: Path, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.folder = folder
        self.max_pixels = max_pixels
        self._thumbnails: dict[tuple[Path, float], bytes] = {}
        self._lock = threading.Lock()

    def presets(self) -> list[Preset]:
        """Scanned on every call, so a file dropped into the folder is a preset at once."""
        if not self.folder.is_dir():
            return []
        found: dict[str, Preset] = {}
        for path in sorted(self.folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not path.is_symlink():
                preset = Preset(slug(path.stem), path.stem.replace("-", " ").replace("_", " ").title(), path)
                found.setdefault(preset.id, preset)
        return list(found.values())

    def find(self, preset_id: str) -> Preset:
        for preset in self.presets():
            if preset.id == preset_id:
                return preset
        raise KeyError(preset_id)

    def load(self, preset_id: str) -> Picture:
        return load_picture(self.find(preset_id).path, self.max_pixels)

    def thumbnail(self, preset: Preset) -> bytes:
        key = (preset.path, preset.path.stat().st_mtime)
        with self._lock:
            if key not in self._thumbnails:
                with Image.open(preset.path) as image:
                    image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG: decode small
                    small = image.convert("RGB")
                    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
                self._thumbnails[key] = png_bytes(small)
            return self._thumbnails[key]
