"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: Path, content: bytes | Callable[[BinaryIO], None]) -> None:
    """Writes `content` (bytes, or a function that writes to the file) under an unpredictable temporary
    name beside `path`, then renames it over `path`: a link (or anything else) at `path` is replaced,
    never followed, and a reader sees the old file or the new one, never a part."""
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, prefix=".", suffix=".partial") as file:
        partial = Path(file.name)
        try:
            if callable(content):
                content(file)
            else:
                file.write(content)
        except BaseException:
            file.close()
            partial.unlink(missing_ok=True)
            raise
    try:
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_cache_file(path: Path, content: bytes | Callable[[BinaryIO], None]) -> bool:
    """`write_atomically` into a cache folder (made if missing); False where the disk refused: a cache
    that cannot be written only costs the work of making the entry again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, content)
    except OSError:
        return False
    return True
