"""Where the benchmarks find their pictures: the full-size public-domain set beside the repository
(../shared/images, as the numbers in docs/benchmarks.md were measured), else the repository's own small
copies (tests/data: long side 256 px), so that a clone on its own can still run every benchmark."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = next(
    folder
    for folder in (REPO.parent / "shared" / "images", REPO / "tests" / "data")
    if (folder / "content").is_dir()
)
