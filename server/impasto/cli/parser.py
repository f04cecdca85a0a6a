"""`impasto`'s command line: the commands, their options, and what each option means."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__
from ..arguments import add_engine_arguments, whole_number
from ..paths import DEFAULT_STYLES_DIR
from ..protocol import PREVIEW_SIDE, bounds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="impasto", description="Neural style transfer (Gatys et al.).")
    parser.add_argument("--version", action="version", version=f"impasto {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    remote = _remote_options()

    stylize = commands.add_parser(
        "stylize", parents=[remote], help="paint CONTENT in the style of other images"
    )
    stylize.add_argument(
        "content",
        nargs="+",
        metavar="CONTENT",
        help="the image to repaint; several images, a folder or a quoted pattern ('photos/*.jpg') "
        "make a batch, written into the folder -o names",
    )
    stylize.add_argument(
        "--style",
        action="append",
        required=True,
        metavar="STYLE",
        help="a style image, or a preset id; repeat for a blend of several styles",
    )
    stylize.add_argument(
        "--style-weight",
        action="append",
        type=float,
        metavar="W",
        help="blend weight of each --style, in the same order (default: equal)",
    )
    stylize.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="result file (.png keeps alpha), or a folder (existing, or ending in /) that gets <name>.png "
        "for each CONTENT",
    )
    stylize.add_argument(
        "--size",
        type=whole_number(int(bounds.SIZE.low), words=("auto", "full")),
        help="working long side in px, 'full' (CONTENT's own size, in tiles where memory is short), "
        "or 'auto' (default: 384 on CPU, 768 on Apple MPS, 1024 on CUDA); the result is written at "
        "CONTENT's own size",
    )
    stylize.add_argument(
        "--iterations",
        type=whole_number(int(bounds.ITERATIONS.low)),
        help="iterations at the working size, or 'auto'; smaller scales run half (default: 40 on CPU, "
        "100 on a GPU)",
    )
    stylize.add_argument(
        "--strength",
        type=float,
        help="style versus content: 0 keeps the content, 0.25 paints gently, 1 as much as Gatys' recipe, "
        f"2 lets the style take over (default: {bounds.STRENGTH.default:g})",
    )
    stylize.add_argument(
        "--style-scale",
        type=float,
        help="size of the style's brush strokes relative to the working size "
        f"(default: {bounds.STYLE_SCALE.default:g})",
    )
    stylize.add_argument(
        "--preserve-colors",
        action="store_true",
        help="keep the content's colours; take only the style's luminance patterns",
    )
    stylize.add_argument("--seed", type=int, help="random seed; CPU runs repeat bit for bit (default: 0)")
    stylize.add_argument(
        "--save-style",
        metavar="NAME",
        help="also keep the (single) style image as a preset named NAME (in --styles-dir, or on the server)",
    )
    local = stylize.add_argument_group("in-process only (without --server)")
    local.add_argument(
        "--init", default="content", help="start from 'content' (default), 'noise', or an image file"
    )
    local.add_argument(
        "--recipe",
        choices=["default", "seed"],
        default="default",
        help="'seed' reproduces the d2l chapter's losses and optimiser (single scale)",
    )
    local.add_argument("--optimizer", choices=["lbfgs", "adam"], help="override the recipe's optimiser")
    local.add_argument(
        "--weights",
        default="original",
        help="'original' (Gatys' VGG19, default), 'torchvision' "
        "(needs the internet once), or a .pt state dict with Caffe preprocessing",
    )
    add_engine_arguments(local, DEFAULT_STYLES_DIR)
    stylize.add_argument(
        "--preview",
        action="store_true",
        help="write the quick preview the GIMP dialog shows: the job's own first scale (at most "
        f"{PREVIEW_SIDE} px), with the same seed and strokes as the whole job, in a fraction of its time",
    )
    stylize.add_argument(
        "--dry-run",
        action="store_true",
        help="print what the job would do and cost (working size, scales, tiles, time, memory) and stop",
    )
    stylize.add_argument("--quiet", action="store_true", help="no progress bar")

    info = commands.add_parser("info", parents=[remote], help="what the server runs on and its limits")
    info.add_argument(
        "--local", action="store_true", help="describe this machine's engine instead of a server"
    )
    commands.add_parser("styles", parents=[remote], help="the server's style presets")
    return parser


def _remote_options() -> argparse.ArgumentParser:
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="an impasto-server, https://HOST:PORT for TLS, the string `impasto-server --remote` printed "
        "(impasto://…: TLS to that server alone, with its token), or several separated by commas (a batch "
        "is spread over them; default for info/styles: $IMPASTO_SERVER, else 127.0.0.1:50051)",
    )
    remote.add_argument(
        "--token",
        help="the server's token; visible to other users in `ps`, so prefer $IMPASTO_TOKEN or --token-file",
    )
    remote.add_argument("--token-file", type=Path, metavar="FILE", help="read the server's token from FILE")
    remote.add_argument("--tls-ca", type=Path, metavar="PEM", help="talk TLS, trusting this CA certificate")
    remote.add_argument(
        "--insecure",
        action="store_true",
        help="allow sending the token in clear to another machine (only on a network you trust)",
    )
    return remote
