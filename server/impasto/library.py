"""The style library: preset images in one folder, with metadata, thumbnails, imports and saves.

A preset is an image file (`starry-night.jpg`) with optional metadata beside it
(`starry-night.json`: title, artist, year, licence, source_url, strength, style_scale). Ids are
slugs of the file names. A client's id is only ever looked up among the files found in the folder,
never joined onto a path; symbolic links and files that resolve outside the folder are ignored.
The folder is read on every listing, so a file dropped into it is a preset at once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from platformdirs import user_data_dir

from .engine.weights import default_cache_dir
from .images import DEFAULT_MAX_PIXELS, ImageError, Picture, decode_picture, load_picture, png_bytes

DEFAULT_STYLES_DIR = Path(user_data_dir("impasto")) / "styles"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff"}
THUMBNAIL_SIDE = 256
ID_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
MAX_STYLE_BYTES = 64 << 20  # a style file larger than this is refused on import and save
PICTURES_KEPT = 4  # decoded presets kept in memory, least recently used dropped first


class InvalidStyleId(ValueError):
    """An id or name that cannot name a preset (empty, path-like, or nothing left after slugging)."""


class StyleExists(ValueError):
    pass


@dataclass(frozen=True)
class Preset:
    id: str
    path: Path
    title: str
    artist: str = ""
    year: str = ""
    licence: str = ""
    source_url: str = ""
    strength: float = 0.0  # recommended; 0 = none
    style_scale: float = 0.0  # recommended; 0 = none


def slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def check_id(preset_id: str) -> str:
    if not ID_PATTERN.match(preset_id) or len(preset_id) > 100:
        raise InvalidStyleId(
            f"'{preset_id}' is not a preset id: ids are lowercase letters, digits and single dashes"
        )
    return preset_id


class StyleLibrary:
    def __init__(self, folder: Path, max_pixels: int = DEFAULT_MAX_PIXELS, cache_dir: Path | None = None):
        self.folder = folder
        self.max_pixels = max_pixels
        self._thumbnail_dir = (cache_dir or default_cache_dir()) / "thumbnails"
        self._thumbnails: dict[str, bytes] = {}
        self._pictures: dict[str, Picture] = {}
        self._lock = threading.Lock()

    # ---- reading -------------------------------------------------------------------------------

    def presets(self) -> list[Preset]:
        if not self.folder.is_dir():
            return []
        root = self.folder.resolve()
        found: dict[str, Preset] = {}
        for path in sorted(self.folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES or path.is_symlink() or not path.is_file():
                continue
            if not path.resolve().is_relative_to(root):
                continue
            preset_id = slug(path.stem)
            if preset_id and preset_id not in found:
                found[preset_id] = _with_metadata(preset_id, path)
        return list(found.values())

    def find(self, preset_id: str) -> Preset:
        check_id(preset_id)
        for preset in self.presets():
            if preset.id == preset_id:
                return preset
        raise KeyError(preset_id)

    def load(self, preset_id: str) -> Picture:
        """The preset's picture, decoded once per file version, so that repeated jobs skip the decode."""
        path = self.find(preset_id).path
        key = _file_version(path)
        with self._lock:
            picture = self._pictures.pop(key, None)
        if picture is None:
            picture = load_picture(path, self.max_pixels)
        with self._lock:
            self._pictures[key] = picture  # now the most recently used
            while len(self._pictures) > PICTURES_KEPT:
                del self._pictures[next(iter(self._pictures))]
        return picture

    def thumbnail(self, preset: Preset) -> bytes:
        """PNG, long side ≤ 256 px; made once per file version, kept in memory and on disk."""
        key = _file_version(preset.path)
        with self._lock:
            if key in self._thumbnails:
                return self._thumbnails[key]
        cached = self._thumbnail_dir / f"{key}.png"
        try:
            data = cached.read_bytes()
        except OSError:
            data = _make_thumbnail(preset.path)
            _write_quietly(cached, data)
        with self._lock:
            self._thumbnails[key] = data
        return data

    # ---- writing -------------------------------------------------------------------------------

    def save(self, name: str, data: bytes, metadata: dict | None = None) -> Preset:
        """Adds an image (file bytes) as a preset named `name`; checks it decodes and is not huge."""
        preset_id = slug(name)
        if not preset_id:
            raise InvalidStyleId(f"'{name}' has no letters or digits to make a preset id from")
        check_id(preset_id)
        if len(data) > MAX_STYLE_BYTES:
            raise ImageError(
                f"style '{name}' is {len(data):,} bytes, over the {MAX_STYLE_BYTES:,}-byte limit"
            )
        decode_picture(data, f"style '{name}'", self.max_pixels)  # raises ImageError
        with Image.open(io.BytesIO(data)) as image:
            suffix = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tif"}.get(image.format or "")
        if suffix is None:
            data, suffix = png_bytes(Image.open(io.BytesIO(data))), ".png"
        with self._lock:
            if any(p.id == preset_id for p in self.presets()):
                raise StyleExists(f"a preset '{preset_id}' exists already; choose another name")
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{preset_id}{suffix}"
            _write_atomically(path, data)
            if metadata:
                _write_atomically(path.with_suffix(".json"), json.dumps(metadata, indent=2).encode())
        return _with_metadata(preset_id, path)

    def import_folder(self, source: Path) -> list[tuple[str, str]]:
        """Copies every image of `source` (with its .json metadata) in; returns (file, outcome) per file."""
        report = []
        for path in sorted(source.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            metadata_file = path.with_suffix(".json")
            try:
                metadata = json.loads(metadata_file.read_text()) if metadata_file.is_file() else None
                preset = self.save(path.stem, path.read_bytes(), metadata)
                report.append((path.name, f"added as '{preset.id}'"))
            except StyleExists as error:
                report.append((path.name, f"skipped: {error}"))
            except (OSError, ValueError) as error:
                report.append((path.name, f"failed: {error}"))
        return report


def _with_metadata(preset_id: str, path: Path) -> Preset:
    title = path.stem.replace("-", " ").replace("_", " ").strip().title()
    metadata_file = path.with_suffix(".json")
    try:
        metadata = json.loads(metadata_file.read_text()) if metadata_file.is_file() else {}
    except (OSError, ValueError):
        metadata = {}  # a broken metadata file must not hide the image
    if not isinstance(metadata, dict):
        metadata = {}

    def number(name: str) -> float:
        try:
            value = float(metadata.get(name) or 0)
        except (TypeError, ValueError):
            return 0.0
        return value if 0 < value < 100 else 0.0

    text = {name: str(metadata.get(name, "")) for name in ("artist", "year", "licence", "source_url")}
    return Preset(
        id=preset_id,
        path=path,
        title=str(metadata.get("title") or title),
        strength=number("strength"),
        style_scale=number("style_scale"),
        **text,
    )


def _make_thumbnail(path: Path) -> bytes:
    with Image.open(path) as image:
        image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG: decode at a fraction of the size
        small = image.convert("RGB")
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return png_bytes(small)


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    partial.replace(path)


def _file_version(path: Path) -> str:
    """A key that changes whenever the file is replaced or rewritten."""
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:32]


def _write_quietly(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, data)
    except OSError:
        pass  # a read-only cache only costs remaking the thumbnail
