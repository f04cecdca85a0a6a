"""`impasto`: stylise images from the command line, with the engine running in this process."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from . import __version__
from .images import ImageError, compose_result, load_picture, save_image

EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="impasto", description="Neural style transfer (Gatys et al.).")
    parser.add_argument("--version", action="version", version=f"impasto {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    stylize = commands.add_parser("stylize", help="paint CONTENT in the style of one or more images")
    stylize.add_argument("content", metavar="CONTENT", help="the image to repaint")
    stylize.add_argument(
        "--style",
        action="append",
        required=True,
        metavar="STYLE",
        help="style image; repeat for a blend of several styles",
    )
    stylize.add_argument(
        "--style-weight",
        action="append",
        type=float,
        metavar="W",
        help="blend weight of each --style, in the same order (default: equal)",
    )
    stylize.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="result file (.png keeps alpha)"
    )
    stylize.add_argument(
        "--size",
        type=int,
        help="working long side in px (default: 384 on CPU, "
        "768 on Apple MPS, 1024 on CUDA); the result is written at CONTENT's own size",
    )
    stylize.add_argument("--iterations", type=int, default=100, help="iterations per scale (default: 100)")
    stylize.add_argument(
        "--strength",
        type=float,
        default=1.0,
        help="style versus content: 0 keeps the content, 2 doubles the style (default: 1)",
    )
    stylize.add_argument(
        "--style-scale",
        type=float,
        default=1.0,
        help="size of the style's brush strokes relative to the working size (default: 1)",
    )
    stylize.add_argument(
        "--preserve-colors",
        action="store_true",
        help="keep the content's colours; take only the style's luminance patterns",
    )
    stylize.add_argument("--seed", type=int, default=0, help="random seed; CPU runs repeat bit for bit")
    stylize.add_argument(
        "--init", default="content", help="start from 'content' (default), 'noise', or an image file"
    )
    stylize.add_argument(
        "--recipe",
        choices=["default", "seed"],
        default="default",
        help="'seed' reproduces the d2l chapter's losses and optimiser (single scale)",
    )
    stylize.add_argument("--optimizer", choices=["lbfgs", "adam"], help="override the recipe's optimiser")
    stylize.add_argument(
        "--weights",
        default="original",
        help="'original' (Gatys' VGG19, default), 'torchvision' (needs the internet once), "
        "or a .pt state dict with Caffe preprocessing",
    )
    stylize.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    stylize.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="convolution precision; losses are always fp32 (default: auto)",
    )
    stylize.add_argument("--quiet", action="store_true", help="no progress bar")

    info = commands.add_parser("info", help="what this machine would run on")
    info.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "info":
            return _info(args)
        return _stylize(args)
    except (ImageError, ValueError, OSError) as error:
        print(f"impasto: error: {error}", file=sys.stderr)
        return EXIT_FAILED


def _load_engine(device_name: str, weights: str = "original", precision: str = "auto"):
    # torch is imported here so that `impasto --help` answers at once.
    from .engine import Engine, pick_device
    from .engine.weights import CAFFE, load_original_vgg19, load_torchvision_vgg19, load_weight_file

    device = pick_device(device_name)
    if weights == "original":
        weight_set = load_original_vgg19()
    elif weights == "torchvision":
        weight_set = load_torchvision_vgg19()
    else:
        weight_set = load_weight_file(Path(weights), CAFFE)
    return Engine(weight_set, device, precision)


def _info(args: argparse.Namespace) -> int:
    from .engine.stylize import default_size

    engine = _load_engine(args.device)
    print(f"impasto {__version__}")
    print(f"device:    {engine.device}  (precision {engine.precision})")
    print(f"weights:   {engine.weights.name}  (preprocessing {engine.weights.preprocessing.name})")
    print(f"size:      {default_size(engine.device)} px long side by default")
    return 0


def _stylize(args: argparse.Namespace) -> int:
    from .engine import RECIPES, Cancelled, Options, Style
    from .engine.recipes import with_optimizer
    from .engine.stylize import default_size

    weights = args.style_weight or [1.0] * len(args.style)
    if len(weights) != len(args.style):
        raise ValueError(
            f"{len(args.style)} --style but {len(weights)} --style-weight; give one weight per style"
        )
    output = Path(args.output)
    if not output.parent.is_dir():
        raise ValueError(f"cannot write {output}: folder {output.parent} does not exist")
    content = load_picture(args.content)
    styles = [Style(load_picture(path).rgb, w) for path, w in zip(args.style, weights, strict=True)]
    init = args.init if args.init in ("content", "noise") else load_picture(args.init).rgb

    engine = _load_engine(args.device, args.weights, args.precision)
    recipe = RECIPES[args.recipe]
    if args.optimizer:
        recipe = with_optimizer(recipe, args.optimizer)
    options = Options(
        size=args.size or default_size(engine.device), iterations=args.iterations, strength=args.strength,
        style_scale=args.style_scale, preserve_colors=args.preserve_colors, init=init, seed=args.seed,
        recipe=recipe,
    )  # fmt: skip
    cancel = threading.Event()
    previous_handler = signal.signal(signal.SIGINT, lambda *_: _request_cancel(cancel, previous_handler))
    started = time.monotonic()
    with _ProgressBar(disabled=args.quiet) as bar:
        try:
            result = engine.stylize(content.rgb, styles, options, on_progress=bar.update, cancel=cancel)
        except Cancelled:
            bar.close()
            print("impasto: cancelled; nothing written", file=sys.stderr)
            return EXIT_CANCELLED
        finally:
            signal.signal(signal.SIGINT, previous_handler)
    save_image(compose_result(result, content), output)
    height, width = content.size
    print(f"wrote {output} ({width}×{height}) in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


def _request_cancel(cancel: threading.Event, previous_handler) -> None:
    # The first Ctrl-C stops after the current iteration; a second one interrupts at once.
    print("\nimpasto: stopping after this iteration (Ctrl-C again to abort)", file=sys.stderr)
    cancel.set()
    signal.signal(signal.SIGINT, previous_handler)


class _ProgressBar:
    def __init__(self, disabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=None, unit="it", disable=disabled, file=sys.stderr, dynamic_ncols=True)

    def update(self, progress) -> None:
        if self.bar.total != progress.steps:
            self.bar.reset(total=progress.steps)
        self.bar.set_description(
            f"scale {progress.scale}/{progress.scales} {progress.width}×{progress.height}"
        )
        self.bar.set_postfix(content=f"{progress.content_loss:.3g}", style=f"{progress.style_loss:.3g}",
                             refresh=False)  # fmt: skip
        self.bar.update(progress.step - self.bar.n)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *_) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
