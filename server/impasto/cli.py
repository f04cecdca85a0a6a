"""`impasto`: stylise images from the command line, in this process or on an impasto-server."""

from __future__ import annotations

import argparse
import glob
import io
import math
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .images import ImageError, save_image
from .library import DEFAULT_STYLES_DIR, IMAGE_SUFFIXES

EXIT_FAILED, EXIT_CANCELLED = 1, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="impasto", description="Neural style transfer (Gatys et al.).")
    parser.add_argument("--version", action="version", version=f"impasto {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="an impasto-server (default for info/styles: $IMPASTO_SERVER, else 127.0.0.1:50051)",
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
        type=_whole_number(16, full=True),
        help="working long side in px, 'full' (CONTENT's own size, in tiles where memory is short), "
        "or 'auto' (default: 384 on CPU, 768 on Apple MPS, 1024 on CUDA); the result is written at "
        "CONTENT's own size",
    )
    stylize.add_argument(
        "--iterations",
        type=_whole_number(1),
        help="iterations at the working size, or 'auto'; smaller scales run half (default: 40 on CPU, "
        "100 on a GPU)",
    )
    stylize.add_argument(
        "--strength",
        type=float,
        default=1.0,
        help="style versus content: 0 keeps the content, 0.25 paints gently, 1 as much as Gatys' recipe, "
        "2 lets the style take over (default: 1)",
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
    local.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    local.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="convolution precision; losses are always fp32 (default: auto)",
    )
    local.add_argument(
        "--memory-budget",
        type=_whole_number(1 << 20),
        metavar="BYTES",
        help="memory a scale may use; larger ones run in tiles (default: free memory less a margin)",
    )
    local.add_argument(
        "--styles-dir", type=Path, default=DEFAULT_STYLES_DIR, help="where preset ids are looked up"
    )
    stylize.add_argument("--quiet", action="store_true", help="no progress bar")

    info = commands.add_parser("info", parents=[remote], help="what the server runs on and its limits")
    info.add_argument(
        "--local", action="store_true", help="describe this machine's engine instead of a server"
    )
    commands.add_parser("styles", parents=[remote], help="the server's style presets")
    return parser


def _whole_number(minimum: int, full: bool = False):
    """An argparse type: a whole number ≥ `minimum`, or 'auto' (None: the default); with `full`, also
    'full' (the size: the content's own)."""

    def parse(text: str) -> int | str | None:
        if text == "auto":
            return None
        if full and text == "full":
            return "full"
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            also = ", 'auto' or 'full'" if full else ", or 'auto'"
            raise argparse.ArgumentTypeError(f"must be a whole number ≥ {minimum}{also} (got {text!r})")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .client import ServerError
    from .jobs import JobError

    try:
        if args.command == "info":
            return _local_info() if args.local else _remote_info(args)
        if args.command == "styles":
            return _remote_styles(args)
        return _stylize(args, *_batch_plan(args, parser.error))
    except KeyboardInterrupt:  # the second Ctrl-C
        print("\nimpasto: aborted; the image in progress is not written", file=sys.stderr)
        return EXIT_CANCELLED
    except BrokenPipeError:
        # `impasto info | head -1`: the reader has all it wanted; end quietly, as a Unix tool does. (Not
        # by restoring SIGPIPE's default, which would also kill the program on a dropped network socket.)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ServerError as error:
        print(f"impasto: {error}", file=sys.stderr)
        return EXIT_CANCELLED if error.cancelled else EXIT_FAILED
    except (ImageError, ValueError, OSError, KeyError, JobError) as error:
        print(f"impasto: error: {error}", file=sys.stderr)
        return EXIT_FAILED


def _style_weights(args: argparse.Namespace) -> list[float]:
    weights = args.style_weight or [1.0] * len(args.style)
    if len(weights) != len(args.style):
        raise ValueError(
            f"{len(args.style)} --style but {len(weights)} --style-weight; give one weight per style"
        )
    return weights


def _is_style_file(style: str) -> bool:
    """STYLE is an image file if it exists or looks like one, else a preset id (locally and remotely)."""
    return Path(style).exists() or Path(style).suffix.lower() in IMAGE_SUFFIXES


def _check_save_style(args: argparse.Namespace) -> None:
    if args.save_style and (len(args.style) != 1 or not _is_style_file(args.style[0])):
        raise ValueError("--save-style keeps one style image file as a preset; give exactly one --style FILE")


def _check_output(output: Path) -> None:
    if not output.parent.is_dir():
        raise ValueError(f"cannot write {output}: folder {output.parent} does not exist")


def _is_pattern(name: str) -> bool:
    return any(character in name for character in "*?[")


def _content_files(names: list[str], usage) -> tuple[list[Path], bool]:
    """CONTENT arguments as files, and whether they make a batch: several, a folder, or a pattern the
    shell left alone (quoted, or matching nothing there)."""
    files: list[Path] = []
    batch = len(names) > 1
    for name in names:
        path = Path(name)
        if path.is_dir():
            found = [p for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
            if not found:
                usage(f"folder {name} holds no images ({' '.join(sorted(IMAGE_SUFFIXES))})")
            files += found
            batch = True
        elif not path.exists() and _is_pattern(name):
            found = [
                Path(match)
                for match in sorted(glob.glob(name))
                if Path(match).suffix.lower() in IMAGE_SUFFIXES and Path(match).is_file()
            ]
            if not found:
                usage(f"no image files match {name!r}")
            files += found
            batch = True
        else:
            files.append(path)
    unique: dict[Path, Path] = {}
    for file in files:  # the same file named twice (as itself and in its folder) runs once
        unique.setdefault(file.resolve(), file)
    return list(unique.values()), batch


def _batch_plan(args: argparse.Namespace, usage) -> tuple[list[tuple[Path, Path]], bool]:
    """(content, output) pairs, and whether they make a batch; a mistake is a usage error, found before
    any model is loaded or any file written."""
    contents, batch = _content_files(args.content, usage)
    folder = Path(args.output)
    to_folder = folder.is_dir() or args.output.endswith(("/", os.sep))
    if not to_folder:
        if batch:
            usage(
                f"{' '.join(args.content)}: several CONTENT images (or a folder, or a pattern) are written "
                f"into a folder: give -o an existing folder, or a path ending in / (not {args.output})"
            )
        return [(contents[0], folder)], False
    if folder.exists() and not folder.is_dir():
        usage(f"-o {args.output}: {folder} exists and is not a folder")
    plan: list[tuple[Path, Path]] = []
    sources: dict[Path, Path] = {}
    for content in contents:
        output = folder / f"{content.stem}.png"
        if output in sources:
            usage(f"{sources[output]} and {content} would both be written to {output}; rename one of them")
        if output.resolve() == content.resolve():
            usage(f"{output} would be written over its own content image; give -o another folder")
        sources[output] = content
        plan.append((content, output))
    return plan, batch


def _stylize(args: argparse.Namespace, plan: list[tuple[Path, Path]], batch: bool) -> int:
    """Each (content, output) in turn, through one runner: one model (or one connection) for all.
    In a batch, a file that fails for reasons of its own is reported and the others go on."""
    if plan[0][1] == Path(args.output):  # -o FILE
        _check_output(plan[0][1])
    else:  # -o FOLDER
        plan[0][1].parent.mkdir(parents=True, exist_ok=True)
    if not batch and not plan[0][0].is_file():  # before the model loads, not after
        raise ImageError(f"cannot read image {plan[0][0]}: no such file")
    _check_save_style(args)
    weights = _style_weights(args)
    stop = _Stop()
    failed: list[Path] = []
    written = 0
    if args.server:
        from .client import addresses

        servers = addresses(args.server)
        if batch and len(servers) > 1:
            return _stylize_spread(args, plan, servers, weights, stop)
    runner = _RemoteRunner(args, weights) if args.server else _LocalRunner(args, weights)
    with runner, _ctrl_c_sets(stop.set):
        for number, (content, output) in enumerate(plan, 1):
            if stop.is_set():
                break
            label = f"[{number}/{len(plan)}] {content.name}" if batch else ""
            started = time.monotonic()
            try:
                with _ProgressBar(args.quiet, label) as bar:
                    result = runner.run(content, bar, stop)
            except Exception as error:
                if stop.is_set():
                    break
                if not batch or not runner.own_failure(error, content):
                    raise
                text = str(error)
                print(
                    f"impasto: {text}" if str(content) in text else f"impasto: {content}: {text}",
                    file=sys.stderr,
                )
                failed.append(content)
                continue
            if stop.is_set():  # stopped as the result came: nothing more is written
                break
            _save_result(result.data, output)
            written += 1
            print(
                f"wrote {output} ({result.width}×{result.height}) in {time.monotonic() - started:.1f} s"
                f"{runner.where}",
                file=sys.stderr,
            )
    if stop.is_set():
        done = f"{written} of {len(plan)} written, no more" if written else "nothing written"
        print(f"impasto: cancelled; {done}", file=sys.stderr)
        return EXIT_CANCELLED
    if batch:
        summary = f"{written} of {len(plan)} written to {plan[0][1].parent}"
        if failed:
            summary += f"; failed: {', '.join(str(path) for path in failed)}"
        print(summary, file=sys.stderr)
    return EXIT_FAILED if failed else 0


def _stylize_spread(
    args: argparse.Namespace, plan: list[tuple[Path, Path]], servers: list[str], weights: list[float], stop
) -> int:
    """A batch over several servers: one job in flight on each, every file to the next free one. A file
    whose server stops answering goes to another; each file is written once."""
    from .client import ServerError

    work: queue.Queue[tuple[Path, Path]] = queue.Queue()
    for item in plan:
        work.put(item)
    lock = threading.Lock()
    written, failed = [], []

    def serve(address: str) -> None:
        try:
            runner = _RemoteRunner(argparse.Namespace(**{**vars(args), "server": address}), weights)
        except ServerError as error:
            print(f"impasto: {error}; the other servers take its files", file=sys.stderr)
            return
        with runner:
            while not stop.is_set():
                try:
                    content, output = work.get_nowait()
                except queue.Empty:
                    return
                started = time.monotonic()
                try:
                    with _ProgressBar(True, "") as quiet:
                        result = runner.run(content, quiet, stop)
                except ServerError as error:
                    if error.unavailable and not stop.is_set():
                        work.put((content, output))  # never finished there: another server paints it
                        print(f"impasto: {error}; the other servers take its files", file=sys.stderr)
                        return
                    with lock:
                        failed.append(content)
                    print(f"impasto: {content}: {error}", file=sys.stderr)
                    continue
                except ImageError as error:
                    with lock:
                        failed.append(content)
                    print(f"impasto: {error}", file=sys.stderr)
                    continue
                if stop.is_set():
                    return
                _save_result(result.data, output)
                with lock:
                    written.append(output)
                    count = len(written)
                print(
                    f"[{count}/{len(plan)}] wrote {output} ({result.width}×{result.height}) in "
                    f"{time.monotonic() - started:.1f} s{runner.where}",
                    file=sys.stderr,
                )

    with _ctrl_c_sets(stop.set):
        threads = [threading.Thread(target=serve, args=(address,), daemon=True) for address in servers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if stop.is_set():
        print(f"impasto: cancelled; {len(written)} of {len(plan)} written, no more", file=sys.stderr)
        return EXIT_CANCELLED
    left = [content for content, _ in list(work.queue)]
    summary = f"{len(written)} of {len(plan)} written to {plan[0][1].parent}"
    if left:
        summary += f"; no server answered for: {', '.join(str(path) for path in left)}"
    if failed:
        summary += f"; failed: {', '.join(str(path) for path in failed)}"
    print(summary, file=sys.stderr)
    return EXIT_FAILED if failed or left else 0


class _Stop:
    """What Ctrl-C sets: the batch stops, and so do the jobs in flight (in-process: `event` is their
    cancel; over the network: `jobs` are the calls, one per server)."""

    def __init__(self):
        self.event = threading.Event()
        self.jobs: set = set()

    def set(self) -> None:
        self.event.set()
        for job in list(self.jobs):
            job.cancel()

    def is_set(self) -> bool:
        return self.event.is_set()


# ---- in-process --------------------------------------------------------------------------------


def _local_info() -> int:
    from .engine import default_iterations, default_size
    from .engine.loading import load_engine

    engine = load_engine("auto")
    print(f"impasto {__version__} (in-process engine)")
    print(f"device:    {engine.device}  (precision {engine.precision})")
    print(f"weights:   {engine.weights.name}  (preprocessing {engine.weights.preprocessing.name})")
    print(
        f"defaults:  {default_size(engine.device)} px long side, "
        f"{default_iterations(engine.device)} iterations"
    )
    return 0


class _LocalRunner:
    """The same jobs layer as the server's, in this process: one way to check, decode and run a job.
    The model is loaded once, and every file of a batch is one job through the same `Jobs`."""

    where = ""

    def __init__(self, args: argparse.Namespace, weights: list[float]):
        from .engine import default_iterations, default_size
        from .engine.device import host_memory_bytes
        from .engine.loading import load_engine
        from .images import DEFAULT_MAX_PIXELS
        from .jobs import Jobs, Limits, StyleRef
        from .library import StyleLibrary

        self.args = args
        library = StyleLibrary(args.styles_dir)
        if args.save_style:
            preset = library.save(args.save_style, Path(args.style[0]).read_bytes())
            print(f"saved {args.style[0]} as preset '{preset.id}' in {library.folder}", file=sys.stderr)
        # The style and init files, read once: uploads 0, 1, … after each job's content.
        files: list[str] = []
        styles = []
        for name, weight in zip(args.style, weights, strict=True):
            if _is_style_file(name):
                files.append(name)
                styles.append(StyleRef(upload=len(files) - 1, weight=weight))
            else:
                styles.append(StyleRef(preset_id=name, weight=weight))
        self.init_upload = None
        if args.init not in ("content", "noise"):
            files.append(args.init)
            self.init_upload = len(files) - 1
        self.labels, self.styles = tuple(files), tuple(styles)
        self.data = [Path(name).read_bytes() for name in files]
        engine = load_engine(args.device, args.weights, args.precision)
        memory = host_memory_bytes()
        limits = Limits(
            max_pixels=DEFAULT_MAX_PIXELS,
            max_size=1 << 15,
            default_size=default_size(engine.device),
            default_iterations=default_iterations(engine.device),
            max_queue=1,
            max_iterations=1_000_000,
            max_styles=64,
            max_request_bytes=memory,
            max_inflight_bytes=memory,
            full_size=True,
        )
        self.jobs = Jobs([engine], library, limits)

    def run(self, content: Path, bar: _ProgressBar, stop: _Stop):
        """One job; its Result, or an exception (JobError CANCELLED once `stop` is set)."""
        from .jobs import Failed, Finished, ImageSpec, Queued, Request

        args = self.args
        try:
            data = content.read_bytes()
        except OSError as error:
            raise ImageError(f"cannot read image {content}: {error.strerror or error}") from None
        request = Request(
            content=ImageSpec("encoded", len(data)),
            styles=self.styles,
            uploads=tuple(ImageSpec("encoded", len(d)) for d in self.data),
            size=args.size,
            iterations=args.iterations,
            strength=args.strength,
            style_scale=args.style_scale,
            preserve_colors=args.preserve_colors,
            seed=args.seed,
            preview_seconds=None,
            recipe=args.recipe,
            optimizer=args.optimizer,
            init="noise" if args.init == "noise" else "content",
            init_upload=self.init_upload,
            memory_budget=args.memory_budget,
            labels=(str(content), *self.labels),
        )
        upload = self.jobs.admit(request)
        for index, file_bytes in enumerate([data, *self.data]):
            upload.add(index, file_bytes)
        events: queue.Queue = queue.Queue()
        self.jobs.submit(upload, events.put, stop.event)
        while not isinstance(event := events.get(), Finished | Failed):
            if not isinstance(event, Queued):
                bar.event(event)
        if isinstance(event, Failed):
            raise event.error
        return event.result

    @staticmethod
    def own_failure(error: Exception, content: Path) -> bool:
        """A failure of this file alone (it names the file), not one every file of a batch would meet."""
        from .jobs import JobError

        return isinstance(error, ImageError | JobError) and str(content) in str(error)

    def __enter__(self) -> _LocalRunner:
        return self

    def __exit__(self, *_) -> None:
        self.jobs.close(grace_seconds=0)


def _save_result(png: bytes | memoryview, output: Path) -> None:
    from PIL import Image as PILImage

    if output.suffix.lower() == ".png":
        # Already the PNG to write: decoding and compressing it again took 3 s of a 12-megapixel job.
        try:
            output.write_bytes(png)
        except OSError as error:
            raise ImageError(f"cannot write {output}: {error.strerror or error}") from None
        return
    save_image(PILImage.open(io.BytesIO(png)), output)


# ---- over the network --------------------------------------------------------------------------


def _client_args(args: argparse.Namespace) -> dict:
    token = args.token
    if args.token_file is not None:
        token = args.token_file.read_text().strip()
    return {"token": token, "tls_ca": args.tls_ca, "insecure": args.insecure}


def _client(args: argparse.Namespace):
    """A connection to --server; of several, the least busy one that answers."""
    from .client import Client

    return Client(args.server, **_client_args(args))


def _remote_info(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.info()
        print(f"impasto-server {info.server_version} at {client.address} (protocol {info.protocol_version})")
        for device in info.devices:
            memory = f"{device.memory_bytes / 2**30:.1f} GiB" if device.memory_bytes else "?"
            state = "busy" if device.busy else "idle"
            print(f"device:    {device.kind} — {device.name}, {memory}, {device.precision}, {state}")
        print(f"weights:   {info.weights}")
        print(f"defaults:  {info.default_size} px long side, {info.default_iterations} iterations")
        print(
            f"limits:    {info.max_pixels:,} pixels per image, {info.max_size} px working size, "
            f"{info.max_queue} jobs queued"
        )
        print(f"full size: {'yes' if info.full_size else 'no (update impasto-server for --size full)'}")
        print(f"now:       {info.running_jobs} running, {info.queue_length} waiting")
        idle = f"after {info.idle_exit_minutes:g} minutes unused" if info.idle_exit_minutes else "never"
        print(f"idle exit: {idle}")
    return 0


def _remote_styles(args: argparse.Namespace) -> int:
    with _client(args) as client:
        presets = client.styles()
    if not presets:
        print("the server has no style presets; add images to its --styles-dir", file=sys.stderr)
    for preset in presets:
        print(f"{preset.id:32} {preset.title}")
    return 0


class _RemoteRunner:
    """Jobs on an impasto-server, through one Client: each file of a batch is a job of its own."""

    def __init__(self, args: argparse.Namespace, weights: list[float]):
        from .client import Image, Settings, StyleSpec

        self.styles = [
            StyleSpec(image=Image.from_file(s), weight=w, save_as=args.save_style or "")
            if _is_style_file(s)
            else StyleSpec(preset=s, weight=w)
            for s, w in zip(args.style, weights, strict=True)
        ]
        self.settings = Settings(
            strength=args.strength,
            iterations=args.iterations or 0,  # the contract's 0: the server's default
            size=0 if args.size in (None, "full") else args.size,
            full_size=args.size == "full",
            preserve_colors=args.preserve_colors,
            seed=args.seed,
            style_scale=args.style_scale,
            preview_seconds=-1,
        )
        self.client = _client(args)
        self.where = f" via {self.client.address}"
        # An older server ignores full_size and would paint at its working size without a word.
        if args.size == "full" and not self.client.info().full_size:
            raise ValueError(
                f"the server at {self.client.address} cannot paint at full size; "
                "update impasto-server, or leave out --size full"
            )

    def run(self, content: Path, bar: _ProgressBar, stop: _Stop):
        """One job; its result Image, or a ServerError (CANCELLED once `stop` is set)."""
        from dataclasses import replace

        from .client import Image, Progress, Queued, Started

        try:
            image = Image.from_file(content)
        except OSError as error:
            raise ImageError(f"cannot read image {content}: {error.strerror or error}") from None
        job = self.client.stylize(image, self.styles, self.settings)
        stop.jobs.add(job)
        if stop.is_set():
            job.cancel()
        try:
            for event in job.events():
                # The server has queued the job and kept any --save-style: the next jobs need not.
                self.styles = [replace(style, save_as="") for style in self.styles]
                if isinstance(event, Queued) and event.position > 0:
                    bar.note(f"queued: {event.position} job(s) ahead")
                elif isinstance(event, Started):
                    bar.started(event.estimated_seconds, event.working_width, event.working_height)
                elif isinstance(event, Progress):
                    p = event
                    bar.show(
                        p.fraction,
                        p.eta_seconds,
                        p.scale,
                        p.scales,
                        p.content_loss,
                        p.style_loss,
                        p.tile,
                        p.tiles,
                    )
        finally:
            stop.jobs.discard(job)
        return job.result

    @staticmethod
    def own_failure(error: Exception, content: Path) -> bool:
        """A failure of this file alone: unreadable here, or refused by the server for its content."""
        from .client import ServerError

        if isinstance(error, ImageError):
            return str(content) in str(error)
        return isinstance(error, ServerError) and error.refused and "content image" in str(error)

    def __enter__(self) -> _RemoteRunner:
        return self

    def __exit__(self, *_) -> None:
        self.client.close()


# ---- terminal ----------------------------------------------------------------------------------


class _ctrl_c_sets:  # noqa: N801 - used as a context manager, reads like one
    """The first Ctrl-C calls `stop`; a second one interrupts at once (KeyboardInterrupt)."""

    def __init__(self, stop: Callable[[], None]):
        self.stop = stop

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_) -> None:
        print("\nimpasto: stopping (Ctrl-C again to abort)", file=sys.stderr)
        signal.signal(signal.SIGINT, self.previous)
        self.stop()

    def __exit__(self, *_) -> None:
        signal.signal(signal.SIGINT, self.previous)


class _ProgressBar:
    """One bar (one line) per job, in percent of its work, with the engine's own estimate of time left
    (later scales cost more per iteration, so a rate of iterations would mislead). `label` ("[2/3]
    B.jpg") starts its description in a batch."""

    def __init__(self, disabled: bool, label: str = ""):
        from tqdm import tqdm

        self.label = f"{label} " if label else ""

        self.bar = tqdm(
            total=100,
            disable=disabled,
            file=sys.stderr,
            dynamic_ncols=True,
            bar_format="{desc}{percentage:3.0f}%|{bar}| {elapsed} elapsed{postfix}",  # desc ends in ": "
        )
        self.bar.set_description(f"{self.label}starting")

    def event(self, event) -> None:
        """An in-process job's event."""
        from .engine import Progress
        from .jobs import Started

        if isinstance(event, Started):
            self.started(event.plan.estimate.seconds, *reversed(event.plan.working_size))
        elif isinstance(event, Progress):
            p = event
            self.show(p.fraction, p.eta, p.scale, p.scales, p.content_loss, p.style_loss, p.tile, p.tiles)

    def started(self, estimate: float, width: int, height: int) -> None:
        # The plan's estimate, shown before the first iteration: the style's and content's targets
        # take seconds on a CPU, and a bar without a time left then looks stuck.
        self.bar.set_description(f"{self.label}preparing {width}×{height}")
        if math.isfinite(estimate) and estimate > 0:
            self.bar.set_postfix_str(f"about {_duration(estimate)} left", refresh=False)
        self.bar.refresh()

    def show(
        self,
        fraction: float,
        eta: float,
        scale: int,
        scales: int,
        content_loss: float,
        style_loss: float,
        tile: int = 0,
        tiles: int = 0,
    ) -> None:
        on_tile = f" tile {tile}/{tiles}" if tiles > 1 else ""
        self.bar.set_description(f"{self.label}scale {scale}/{scales}{on_tile}")
        left = f"about {_duration(eta)} left, " if math.isfinite(eta) and eta > 0 else ""
        self.bar.set_postfix_str(f"{left}content {content_loss:.3g}, style {style_loss:.3g}", refresh=False)
        self.bar.update(fraction * 100 - self.bar.n)

    def note(self, text: str) -> None:
        self.bar.set_description(f"{self.label}{text}")

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *_) -> None:
        self.close()


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return (
        f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"
    )


if __name__ == "__main__":
    sys.exit(main())
