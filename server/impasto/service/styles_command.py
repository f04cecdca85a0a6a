"""`impasto-server styles list|fetch|import FOLDER`: the style library, managed without a running server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..paths import DEFAULT_STYLES_DIR


def take_styles_dir(argv: list[str]) -> tuple[str | None, list[str]]:
    """`--styles-dir DIR` wherever it stands, and the other arguments in order."""
    styles_dir, rest, words = None, [], iter(argv)
    for word in words:
        if word == "--styles-dir":
            styles_dir = next(words, None)
        elif word.startswith("--styles-dir="):
            styles_dir = word.split("=", 1)[1]
        else:
            rest.append(word)
    return styles_dir, rest


def styles_main(argv: list[str]) -> int:
    """`impasto-server styles list|fetch|import DIR`: manage the style library without a running server."""
    from ..catalogue import fetch
    from ..library import StyleLibrary

    parser = argparse.ArgumentParser(prog="impasto-server styles", description="Manage the style presets.")
    parser.add_argument("--styles-dir", type=Path, default=DEFAULT_STYLES_DIR, help="the library's folder")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="the presets and their metadata")
    actions.add_parser(
        "fetch", help="download the built-in catalogue of public-domain paintings (needs the internet)"
    )
    source = actions.add_parser("import", help="copy the images of a folder (and their .json metadata) in")
    source.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    library = StyleLibrary(args.styles_dir)
    if args.action == "list":
        presets = library.presets()
        for preset in presets:
            by = f" — {preset.artist}, {preset.year}" if preset.artist else ""
            origin = "built-in" if preset.builtin else "yours"
            print(f"{preset.id:32} {origin:9} {preset.title}{by}")
        if not any(not preset.builtin for preset in presets):
            print(
                f"none of your own in {library.folder}: add some with `impasto-server styles import FOLDER`, "
                "or drop image files there",
                file=sys.stderr,
            )
        return 0
    if args.action == "import" and not args.folder.is_dir():
        print(f"impasto-server styles import: {args.folder} is not a folder", file=sys.stderr)
        return 2
    report = fetch(library) if args.action == "fetch" else library.import_folder(args.folder)
    for name, outcome in report:
        print(f"{name:40} {outcome}")
    failed = sum(outcome.startswith("failed") for _, outcome in report)
    print(f"{len(report) - failed} of {len(report)} ok; library: {library.folder}", file=sys.stderr)
    return 1 if failed else 0
