"""`impasto stylize`: every file of a batch to the next free runner — this process, one server, or
several servers (a single server is a spread of one) — with a bar per file and Ctrl-C that stops it all.
A file whose server goes away goes to another; each file is written once."""

from __future__ import annotations

import argparse
import dataclasses
import io
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..protocol import Image, ImpastoError, Result, addresses
from .batch import Batch, JobInputs, job_inputs, read_image
from .info import describe_plan
from .progress import ProgressBar, ctrl_c_calls
from .runners import LocalRunner, RemoteRunner, Runner, own_failure

EXIT_FAILED, EXIT_CANCELLED = 1, 130


def stylize(args: argparse.Namespace, batch: Batch) -> int:
    if batch.to_folder:
        batch.folder.mkdir(parents=True, exist_ok=True)
    if not batch.several and not batch.files[0][0].is_file():  # before the model loads, not after
        raise ValueError(f"cannot read image {batch.files[0][0]}: no such file")
    inputs = job_inputs(args)
    full_size = args.size == "full"
    if not args.server:
        starts = [lambda: LocalRunner(args)]
    elif batch.several:
        starts = [lambda a=address: RemoteRunner(args, a, full_size) for address in addresses(args.server)]
    else:  # one file: of several servers, the least busy (the client picks it)
        starts = [lambda: RemoteRunner(args, args.server, full_size)]
    if args.dry_run:
        return dry_run(batch, inputs, starts[0])
    spread = Spread(batch, inputs, quiet=args.quiet or len(starts) > 1)
    with ctrl_c_calls(spread.stop):
        spread.run(starts)
    return spread.report()


def dry_run(batch: Batch, inputs: JobInputs, start: Callable[[], Runner]) -> int:
    """Prints each file's plan; nothing is painted or written."""
    runner = start()
    try:
        for content, _ in batch.files:
            print(describe_plan(str(content), runner.plan(read_image(content), inputs)))
    finally:
        runner.close()
    return 0


@dataclasses.dataclass
class Spread:
    batch: Batch
    inputs: JobInputs
    quiet: bool

    def __post_init__(self) -> None:
        self.work: queue.Queue[tuple[int, Path, Path]] = queue.Queue()
        for number, (content, output) in enumerate(self.batch.files, 1):
            self.work.put((number, content, output))
        self.lock = threading.Lock()
        self.stopped = threading.Event()  # Ctrl-C, or a failure every file would meet
        self.jobs: set = set()  # in flight, one per runner: what Ctrl-C cancels
        self.written: list[Path] = []
        self.failed: list[Path] = []
        self.errors: list[BaseException] = []  # what ended a runner; re-raised when nothing could be done
        self.cancelled = False  # by Ctrl-C
        self.runners = 0

    def stop(self, cancelled: bool = True) -> None:
        self.cancelled = self.cancelled or cancelled
        self.stopped.set()
        for job in list(self.jobs):
            job.cancel()

    def run(self, starts: list[Callable[[], Runner]]) -> None:
        self.runners = len(starts)
        threads = [threading.Thread(target=self._serve, args=(start,), daemon=True) for start in starts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        fatal = [e for e in self.errors if not (isinstance(e, ImpastoError) and e.unavailable)]
        if self.errors and (fatal or not self.written) and not self.cancelled:
            raise (fatal or self.errors)[0]

    def report(self) -> int:
        total, written = len(self.batch.files), len(self.written)
        if self.cancelled:
            done = f"{written} of {total} written, no more" if written else "nothing written"
            print(f"impasto: cancelled; {done}", file=sys.stderr)
            return EXIT_CANCELLED
        left = [content for _, content, _ in list(self.work.queue)]
        if self.batch.several:
            summary = f"{written} of {total} written to {self.batch.folder}"
            if left:
                summary += f"; no server answered for: {', '.join(map(str, left))}"
            if self.failed:
                summary += f"; failed: {', '.join(map(str, self.failed))}"
            print(summary, file=sys.stderr)
        return EXIT_FAILED if self.failed or left else 0

    # ---- one runner's thread -------------------------------------------------------------------

    def _serve(self, start: Callable[[], Runner]) -> None:
        try:
            runner = start()
        except (ImpastoError, ValueError, OSError) as error:
            self._runner_ended(error)
            return
        inputs = self.inputs
        try:
            while not self.stopped.is_set():
                try:
                    number, content, output = self.work.get_nowait()
                except queue.Empty:
                    return
                try:
                    inputs = self._paint(runner, inputs, number, content, output)
                except ImpastoError as error:
                    if error.unavailable and self.runners > 1 and not self.stopped.is_set():
                        self.work.put((number, content, output))  # never finished there: another paints it
                        self._runner_ended(error)
                        return
                    self._file_failed(error, content)
                except ValueError as error:
                    self._file_failed(error, content)
        except BaseException as error:  # noqa: BLE001 - the main thread reports it
            self._runner_ended(error)
        finally:
            runner.close()

    def _paint(
        self, runner: Runner, inputs: JobInputs, number: int, content: Path, output: Path
    ) -> JobInputs:
        """Paints one file and writes it; returns the inputs for the next (a style is saved once)."""
        several = self.batch.several
        started = time.monotonic()
        job = runner.start(read_image(content), inputs, str(content))
        self.jobs.add(job)
        if self.stopped.is_set():
            job.cancel()
        result = None
        label = f"[{number}/{len(self.batch.files)}] {content.name}" if several else ""
        try:
            with ProgressBar(self.quiet, label) as bar:
                for event in job.events():
                    # The job was accepted: a style saved as a preset is on the server for the next ones.
                    inputs = _without_saves(inputs)
                    bar.show(event)
                    if isinstance(event, Result):
                        result = event.image
        finally:
            self.jobs.discard(job)
        if self.stopped.is_set() or result is None:  # stopped as the result came: nothing more is written
            return inputs
        save_result(result, output)
        with self.lock:
            self.written.append(output)
            count = len(self.written)
        where = f"[{count}/{len(self.batch.files)}] " if several else ""
        print(
            f"{where}wrote {output} ({result.width}×{result.height}) in {time.monotonic() - started:.1f} s"
            f"{runner.where}",
            file=sys.stderr,
        )
        return inputs

    def _file_failed(self, error: Exception, content: Path) -> None:
        if self.stopped.is_set():
            return
        if not self.batch.several or not own_failure(error, content):
            raise error  # every file would meet it: the batch ends
        text = error.sentence("cli") if isinstance(error, ImpastoError) else str(error)
        print(f"impasto: {text}" if str(content) in text else f"impasto: {content}: {text}", file=sys.stderr)
        with self.lock:
            self.failed.append(content)

    def _runner_ended(self, error: BaseException) -> None:
        with self.lock:
            self.errors.append(error)
            self.runners -= 1
            others = self.runners > 0
        if others and isinstance(error, ImpastoError) and error.unavailable:
            print(f"impasto: {error.sentence('cli')}; the other servers take its files", file=sys.stderr)
        elif not isinstance(error, ImpastoError) or not error.unavailable:
            self.stop(cancelled=False)  # a mistake every file would meet: stop the others too


def _without_saves(inputs: JobInputs) -> JobInputs:
    if not any(style.save_as_preset for style in inputs.styles):
        return inputs
    styles = tuple(dataclasses.replace(style, save_as_preset="") for style in inputs.styles)
    return dataclasses.replace(inputs, styles=styles)


def save_result(image: Image, output: Path) -> None:
    from ..images import save_image

    try:
        if output.suffix.lower() == ".png" and image.encoded:
            # Already the PNG to write: decoding and compressing it again costs seconds on a large picture.
            output.write_bytes(image.data)
            return
        from PIL import Image as PILImage

        save_image(PILImage.open(io.BytesIO(image.data)), output)
    except OSError as error:
        raise ValueError(f"cannot write {output}: {error.strerror or error}") from None
