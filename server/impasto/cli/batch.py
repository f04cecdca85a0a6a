"""What `impasto stylize` was asked to do, worked out before any model loads or any file is written:
which files go where, and the job every one of them gets (settings, styles, uploads)."""

from __future__ import annotations

import argparse
import glob
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..protocol import Image, ImageHeader, Settings, StyleChoice
from ..protocol.formats import IMAGE_SUFFIXES

Usage = Callable[[str], None]  # argparse's `error`: prints the usage and the message, exits 2


@dataclass(frozen=True)
class Batch:
    files: list[tuple[Path, Path]]  # (content, output)
    several: bool  # several files, a folder or a pattern: failures of one file do not stop the others
    to_folder: bool  # -o names a folder (made if missing)

    @property
    def folder(self) -> Path:
        return self.files[0][1].parent


@dataclass(frozen=True)
class JobInputs:
    """The same for every file of a batch: read once."""

    settings: Settings
    styles: tuple[StyleChoice, ...]
    uploads: tuple[Image, ...]  # the style images (and an --init image), in the order styles name them
    labels: tuple[str, ...]  # their file names, for messages


def plan_batch(args: argparse.Namespace, usage: Usage) -> Batch:
    """(content, output) pairs; a mistake is a usage error."""
    contents, several = _content_files(args.content, usage)
    folder = Path(args.output)
    to_folder = folder.is_dir() or args.output.endswith(("/", os.sep))
    if not to_folder:
        if several:
            usage(
                f"{' '.join(args.content)}: several CONTENT images (or a folder, or a pattern) are written "
                f"into a folder: give -o an existing folder, or a path ending in / (not {args.output})"
            )
        if not folder.parent.is_dir():
            raise ValueError(f"cannot write {folder}: folder {folder.parent} does not exist")
        return Batch([(contents[0], folder)], several=False, to_folder=False)
    if folder.exists() and not folder.is_dir():
        usage(f"-o {args.output}: {folder} exists and is not a folder")
    files: list[tuple[Path, Path]] = []
    sources: dict[Path, Path] = {}
    for content in contents:
        output = folder / f"{content.stem}.png"
        if output in sources:
            usage(f"{sources[output]} and {content} would both be written to {output}; rename one of them")
        if output.resolve() == content.resolve():
            usage(f"{output} would be written over its own content image; give -o another folder")
        sources[output] = content
        files.append((content, output))
    return Batch(files, several, to_folder=True)


def job_inputs(args: argparse.Namespace) -> JobInputs:
    """The settings, styles and style files of the command line (files read here, once)."""
    weights = args.style_weight or [None] * len(args.style)
    if len(weights) != len(args.style):
        raise ValueError(
            f"{len(args.style)} --style but {len(weights)} --style-weight; give one weight per style"
        )
    if args.save_style and (len(args.style) != 1 or not is_style_file(args.style[0])):
        raise ValueError("--save-style keeps one style image file as a preset; give exactly one --style FILE")
    styles, files = [], []
    for name, weight in zip(args.style, weights, strict=True):
        if is_style_file(name):
            files.append(name)
            styles.append(
                StyleChoice(upload=len(files) - 1, weight=weight, save_as_preset=args.save_style or "")
            )
        else:
            styles.append(StyleChoice(preset_id=name, weight=weight))
    if not args.server and args.init not in ("content", "noise"):
        files.append(args.init)  # in-process only: the runner takes it as the last upload
    settings = Settings(
        strength=args.strength,
        iterations=args.iterations,
        size=None if args.size == "full" else args.size,
        full_size=args.size == "full",
        preserve_colors=args.preserve_colors,
        seed=args.seed,
        style_scale=args.style_scale,
        preview_only=args.preview,
    )
    return JobInputs(settings, tuple(styles), tuple(read_image(Path(f)) for f in files), tuple(files))


def sized_header(image: Image) -> ImageHeader:
    """An image's header with its width and height, read from its file's header (what a plan needs)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(image.data)) as opened:
            width, height = opened.size
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the size of an image: {error}") from None
    return ImageHeader("rgba8", width * height * 4, width, height)


def read_image(path: Path) -> Image:
    try:
        return Image.from_file(path)
    except OSError as error:
        raise ValueError(f"cannot read image {path}: {error.strerror or error}") from None


def is_style_file(style: str) -> bool:
    """STYLE is an image file if it exists or looks like one, else a preset id (locally and remotely)."""
    return Path(style).exists() or Path(style).suffix.lower() in IMAGE_SUFFIXES


def _image_files(candidates: list[Path]) -> list[Path]:
    return [p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]


def _content_files(names: list[str], usage: Usage) -> tuple[list[Path], bool]:
    """CONTENT arguments as files, and whether they make a batch: several, a folder, or a pattern the
    shell left alone (quoted, or matching nothing there)."""
    files: list[Path] = []
    several = len(names) > 1
    for name in names:
        path = Path(name)
        if path.is_dir():
            found = _image_files(sorted(path.iterdir()))
            if not found:
                usage(f"folder {name} holds no images ({' '.join(sorted(IMAGE_SUFFIXES))})")
        elif not path.exists() and any(character in name for character in "*?["):
            found = _image_files([Path(match) for match in sorted(glob.glob(name))])
            if not found:
                usage(f"no image files match {name!r}")
        else:
            files.append(path)
            continue
        files += found
        several = True
    unique: dict[Path, Path] = {}
    for file in files:  # the same file named twice (as itself and in its folder) runs once
        unique.setdefault(file.resolve(), file)
    return list(unique.values()), several
