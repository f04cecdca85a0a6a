"""The style library: built-in presets plus the user's own folder, with metadata, thumbnails and saves.

A preset is an image file (`starry-night.jpg`) with optional metadata beside it
(`starry-night.json`: title, artist, year, licence, source_url, strength, style_scale). Ids are
slugs of the file names. Two folders are layered: the built-in starter library shipped inside the
package (read-only) and the user's folder (`--styles-dir`), which adds presets and may override a
built-in by id; saves and imports write only to the user's folder. A client's id is only ever looked up
among the files found in the folders, never joined onto a path; symbolic links and files that resolve
outside their folder are ignored. The folders are read on every listing (cheaply: nothing is decoded),
so a file dropped in is a preset at once. A preset whose image turns out not to decode is reported
once in the log and left out of listings until its file changes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from pathlib import Path

from PIL import Image, ImageOps

from .engine.weights import default_cache_dir
from .files import write_atomically, write_cache_file
from .images import DEFAULT_MAX_PIXELS, ImageError, Picture, decode_picture, decoding, png_bytes
from .protocol.formats import IMAGE_SUFFIXES, PILLOW_FORMATS, suffix_for
from .style_files import (
    MAX_ID_LENGTH,
    MAX_METADATA_BYTES,
    InvalidStyleId,
    StyleFile,
    check_id,
    file_stat_version,
    file_version,
    quoted,
    slug,
    with_metadata,
)

log = logging.getLogger("impasto.library")


BUILTIN_STYLES_DIR = Path(__file__).resolve().parent / "presets"
THUMBNAIL_SIDE = 256
MAX_STYLE_BYTES = 64 << 20  # a style file larger than this is refused on import, save and load
# Presets past which a client's upload is no longer saved as one: clients could otherwise fill the disk,
# and the listing (one ListStyles message, which grpcio clients take up to 4 MiB) would outgrow them all.
MAX_SAVED_PRESETS = 1000
PICTURES_KEPT = 4  # decoded presets kept in memory, least recently used dropped first


class StyleExists(ValueError):
    pass


class LibraryFull(ValueError):
    """The library holds MAX_SAVED_PRESETS presets: no client's upload is saved as another."""


class BrokenPreset(ImageError):
    """A preset's file does not decode; the message names the preset, never the server's paths."""


class StyleLibrary:
    def __init__(
        self,
        folder: Path,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        cache_dir: Path | None = None,
        *,
        builtin_folder: Path | None = BUILTIN_STYLES_DIR,
    ):
        self.folder = Path(folder)  # the user's folder: the only one written to
        self.builtin_folder = Path(builtin_folder) if builtin_folder is not None else None
        self.max_pixels = max_pixels
        self._thumbnail_dir = (cache_dir or default_cache_dir()) / "thumbnails"
        self._thumbnails: dict[str, bytes] = {}
        self._pictures: dict[str, Picture] = {}
        self._listed: dict[tuple, StyleFile] = {}  # (path, image stat, metadata stat) -> preset
        self._broken: dict[str, str] = {}  # file version that failed to decode -> the client's message
        self._lock = threading.Lock()  # the caches above
        self._saving = threading.Lock()  # one save at a time: the check for an existing id, then the write

    @property
    def user_folder_exists(self) -> bool:
        """False until the user's folder is made (by the first save or import): only built-ins list."""
        return self.folder.is_dir()

    # ---- reading -------------------------------------------------------------------------------

    def presets(self) -> list[StyleFile]:
        """Built-ins and the user's presets, sorted by id; a user's preset replaces a built-in of its id.

        Cheap: one directory scan and a stat or two per file; nothing is decoded.
        """
        with self._lock:
            broken = set(self._broken)
        return [preset for preset in self._all_presets() if preset.version not in broken]

    def find(self, preset_id: str) -> StyleFile:
        """The preset of that id, or KeyError. A preset whose file is known not to decode is left out of
        listings but still found, so that `load` and `thumbnail` tell a client that names it why it
        cannot be used (BrokenPreset) rather than that it does not exist."""
        check_id(preset_id)
        for preset in self._all_presets():
            if preset.id == preset_id:
                return preset
        raise KeyError(preset_id)

    def load(self, preset: StyleFile) -> Picture:
        """The preset's picture, decoded once per file version, so that repeated jobs skip the decode.
        KeyError if its file was removed since it was found."""
        self._check_not_broken(preset)
        with self._lock:
            picture = self._pictures.pop(preset.version, None)
        key = preset.version
        if picture is None:
            try:
                with open(preset.path, "rb") as file:
                    stat = os.fstat(file.fileno())
                    key = file_stat_version(preset.path, stat)  # the version actually read
                    if stat.st_size > MAX_STYLE_BYTES:
                        raise ImageError(
                            f"preset '{preset.id}' is {stat.st_size:,} bytes, "
                            f"over the {MAX_STYLE_BYTES:,}-byte limit"
                        )
                    data = file.read()
                picture = decode_picture(data, f"preset '{preset.id}'", self.max_pixels)
            except FileNotFoundError:
                raise KeyError(preset.id) from None  # removed since the listing
            except (OSError, ImageError) as error:
                raise self._broken_preset(preset, key, error) from None
        with self._lock:
            self._pictures[key] = picture  # now the most recently used
            while len(self._pictures) > PICTURES_KEPT:
                del self._pictures[next(iter(self._pictures))]
        return picture

    def thumbnail(self, preset: StyleFile) -> bytes:
        """PNG, long side ≤ 256 px; made once per file version, kept in memory and on disk."""
        key = preset.version or file_version(preset.path)
        self._check_not_broken(preset, key)
        with self._lock:
            if key in self._thumbnails:
                return self._thumbnails[key]
        cached = self._thumbnail_dir / f"{key}.png"
        try:
            data = cached.read_bytes()
        except OSError:
            try:
                data = _make_thumbnail(preset.path, self.max_pixels)
            except (OSError, ImageError) as error:
                raise self._broken_preset(preset, key, error) from None
            write_cache_file(cached, data)
        with self._lock:
            self._thumbnails[key] = data
        return data

    def _broken_preset(self, preset: StyleFile, version: str, error: Exception) -> BrokenPreset:
        """Remembers a file version that does not decode (logged once) and makes the client's error."""
        reason = str(error) if isinstance(error, ImageError) else "its file cannot be read"
        reason = reason.replace(str(preset.path), f"preset '{preset.id}'")
        if f"'{preset.id}'" not in reason:
            reason = f"preset '{preset.id}' cannot be used: {reason}"
        with self._lock:
            new = version not in self._broken
            self._broken.setdefault(version, reason)
        if new:
            log.warning(
                "preset '%s' (%s) cannot be used and is left out of listings until the file changes: %s",
                preset.id,
                preset.path,
                error,
            )
        return BrokenPreset(reason)

    def _check_not_broken(self, preset: StyleFile, version: str | None = None) -> None:
        with self._lock:
            reason = self._broken.get(version or preset.version)
        if reason is not None:
            raise BrokenPreset(f"{reason}; replace or remove its file")

    def _scan(self, folder: Path, builtin: bool) -> dict[str, StyleFile]:
        """id -> preset for one folder; the first file (by name) of each id wins."""
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
            root = folder.resolve()
        except OSError:
            return {}
        found: dict[str, StyleFile] = {}
        for entry in entries:
            suffix = os.path.splitext(entry.name)[1].lower()
            if suffix not in IMAGE_SUFFIXES or entry.is_symlink():
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                stat = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            preset_id = slug(os.path.splitext(entry.name)[0])
            if not preset_id or len(preset_id) > MAX_ID_LENGTH or preset_id in found:
                continue
            path = root / entry.name
            found[preset_id] = self._listed_preset(preset_id, path, stat, builtin)
        return found

    def _listed_preset(self, preset_id: str, path: Path, stat: os.stat_result, builtin: bool) -> StyleFile:
        metadata_file = path.with_suffix(".json")
        try:
            metadata_stat = metadata_file.lstat()
            metadata_key = (metadata_stat.st_size, metadata_stat.st_mtime_ns, metadata_stat.st_ino)
        except OSError:
            metadata_key = None
        key = (path, stat.st_size, stat.st_mtime_ns, stat.st_ino, metadata_key, builtin)
        with self._lock:
            preset = self._listed.get(key)
        if preset is None:
            preset = with_metadata(preset_id, path, file_stat_version(path, stat), builtin)
            with self._lock:
                if len(self._listed) > 10_000:  # files come and go: forget old entries now and then
                    self._listed.clear()
                self._listed[key] = preset
        return preset

    # ---- writing -------------------------------------------------------------------------------

    def save(
        self, name: str, data: bytes, metadata: dict | None = None, from_client: bool = False
    ) -> StyleFile:
        """Adds an image (file bytes) to the user's folder as a preset named `name`; checks it decodes,
        is not huge, and that no preset (built-in or the user's) has its id. `from_client`: a client's
        upload, refused (LibraryFull) once the library holds MAX_SAVED_PRESETS; the operator's are not."""
        if not isinstance(name, str) or len(name) > MAX_ID_LENGTH:
            raise InvalidStyleId(f"preset name {quoted(name)} is over {MAX_ID_LENGTH} characters")
        preset_id = slug(name)
        if not preset_id:
            raise InvalidStyleId(f"{quoted(name)} has no letters or digits to make a preset id from")
        check_id(preset_id)
        if len(data) > MAX_STYLE_BYTES:
            raise ImageError(
                f"style {quoted(name)} is {len(data):,} bytes, over the {MAX_STYLE_BYTES:,}-byte limit"
            )
        decode_picture(data, f"style {quoted(name)}", self.max_pixels)  # raises ImageError
        with Image.open(io.BytesIO(data), formats=PILLOW_FORMATS) as image:
            suffix = suffix_for(image.format or "")
            if suffix is None:
                data, suffix = png_bytes(image), ".png"
        with self._saving:
            presets = self._all_presets()
            if any(p.id == preset_id for p in presets):
                raise StyleExists(f"a preset '{preset_id}' exists already; choose another name")
            if from_client:
                _check_room(len(presets))
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder.resolve() / f"{preset_id}{suffix}"
            write_atomically(path, data)
            if metadata:
                write_atomically(path.with_suffix(".json"), json.dumps(metadata, indent=2).encode())
        return self.find(preset_id)

    def check_room(self) -> None:
        """Raises LibraryFull if no client's upload can be saved as a preset now."""
        _check_room(len(self._all_presets()))

    def import_folder(self, source: Path) -> list[tuple[str, str]]:
        """Copies every image of `source` (with its .json metadata) into the user's folder; returns
        (file, outcome) per file."""
        report = []
        for path in sorted(source.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            metadata_file = path.with_suffix(".json")
            try:
                if path.stat().st_size > MAX_STYLE_BYTES:
                    raise ImageError(f"{path.name} is over the {MAX_STYLE_BYTES:,}-byte limit")
                metadata = None
                if metadata_file.is_file() and metadata_file.stat().st_size <= MAX_METADATA_BYTES:
                    metadata = json.loads(metadata_file.read_text(encoding="utf-8"))
                preset = self.save(path.stem[:MAX_ID_LENGTH], path.read_bytes(), metadata)
                report.append((path.name, f"added as '{preset.id}'"))
            except StyleExists as error:
                report.append((path.name, f"skipped: {error}"))
            except (OSError, ValueError) as error:
                report.append((path.name, f"failed: {error}"))
        return report

    def _all_presets(self) -> list[StyleFile]:
        """Every preset, sorted by id, including those whose files were found broken (their ids are
        taken too); a user's preset replaces a built-in of its id."""
        found: dict[str, StyleFile] = {}
        if self.builtin_folder is not None:
            found.update(self._scan(self.builtin_folder, builtin=True))
        found.update(self._scan(self.folder, builtin=False))
        return [found[key] for key in sorted(found)]


def _check_room(presets: int) -> None:
    if presets >= MAX_SAVED_PRESETS:
        raise LibraryFull(
            f"this server's style library holds {presets:,} presets, its limit for saving more; paint "
            "without saving the style, or ask the server's operator to remove some"
        )


def _make_thumbnail(path: Path, max_pixels: int) -> bytes:
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size > MAX_STYLE_BYTES:
            raise ImageError(f"the file is over the {MAX_STYLE_BYTES:,}-byte limit")
        head = file.read(16)
        file.seek(0)
        with decoding("the file", head), Image.open(file, formats=PILLOW_FORMATS) as image:
            if image.width * image.height > max_pixels:
                raise ImageError(f"{image.width}×{image.height} is over the limit of pixels")
            image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG: decode at a fraction
            small = ImageOps.exif_transpose(image).convert("RGB")
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return png_bytes(small)
