"""What one preset is, apart from any library: its id (the slug of its file's name, checked wherever a
client names one), the entry clients list (StyleFile, from the file's name and the metadata beside it)
and the version key that changes whenever its file does."""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .protocol import Preset

ID_PATTERN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")  # always used with fullmatch: no trailing newline
MAX_ID_LENGTH = 100  # ids and the names they are made from
MAX_METADATA_BYTES = 64 << 10  # a larger .json beside a preset is ignored
TEXT_LIMITS = {"title": 200, "artist": 200, "year": 40, "licence": 300, "source_url": 500}


class InvalidStyleId(ValueError):
    """An id or name that cannot name a preset (empty, path-like, too long, nothing left after slugging)."""


@dataclass(frozen=True)
class StyleFile(Preset):
    """A preset as clients see it, and the file it is read from (never shown to a client)."""

    path: Path = field(kw_only=True)


def quoted(text: object, limit: int = 60) -> str:
    """A client's string for an error message: shortened to about `limit` characters and repr-quoted."""
    text = str(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return repr(text)


def slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def check_id(preset_id: str) -> str:
    if (
        not isinstance(preset_id, str)
        or len(preset_id) > MAX_ID_LENGTH
        or not ID_PATTERN.fullmatch(preset_id)
    ):
        raise InvalidStyleId(
            f"{quoted(preset_id)} is not a preset id: ids are lowercase letters, digits and single "
            f"dashes, at most {MAX_ID_LENGTH} characters"
        )
    return preset_id


def with_metadata(preset_id: str, path: Path, version: str, builtin: bool) -> StyleFile:
    title = path.stem.replace("-", " ").replace("_", " ").strip().title()
    metadata_file = path.with_suffix(".json")
    metadata = {}
    try:
        if (
            not metadata_file.is_symlink()
            and metadata_file.is_file()
            and metadata_file.stat().st_size <= MAX_METADATA_BYTES
        ):
            metadata = json.loads(metadata_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass  # a broken metadata file must not hide the image
    if not isinstance(metadata, dict):
        metadata = {}

    def number(name: str) -> float:
        try:
            value = float(metadata.get(name) or 0)
        except (TypeError, ValueError, OverflowError):
            return 0.0
        return value if 0 < value < 100 else 0.0

    def text(name: str) -> str:
        value = metadata.get(name, "")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return ""
        value = " ".join(str(value).split())  # no newlines or control whitespace in a listing
        limit = TEXT_LIMITS[name]
        return value if len(value) <= limit else value[: limit - 1] + "…"

    return StyleFile(
        id=preset_id,
        path=path,
        title=text("title") or title[: TEXT_LIMITS["title"]],
        artist=text("artist"),
        year=text("year"),
        licence=text("licence"),
        source_url=text("source_url"),
        recommended_strength=number("strength"),
        recommended_style_scale=number("style_scale"),
        builtin=builtin,
        version=version,
    )


def file_stat_version(path: Path, stat: os.stat_result) -> str:
    return hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}".encode()).hexdigest()[:32]


def file_version(path: Path) -> str:
    """A key that changes whenever the file is replaced or rewritten."""
    path = path.resolve()
    return file_stat_version(path, path.stat())
