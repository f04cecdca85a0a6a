"""A FIFO queue in front of the engines: one worker thread per device, cancellable jobs, events to each
job's owner.

Knows jobs, the engine and pictures; nothing of gRPC. Each job reports through its `on_event`
callback, from whichever thread the event happens on.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .. import engine as engine_types
from ..engine import Cancelled, DoesNotFit, Engine, Options, Plan, Style
from ..engine.device import free_memory_bytes
from ..engine.estimate import largest_long_side
from ..engine.imageops import fit_long_side, resize
from ..images import Picture, compose_result, compose_rgba, png_bytes, to_pil
from ..protocol import (
    Device,
    Event,
    Failed,
    Image,
    ImpastoError,
    Kind,
    Preview,
    Progress,
    Queued,
    Result,
    Started,
)
from .budget import Reservation

log = logging.getLogger("impasto.jobs")

PREVIEW_SIDE = 512
# Progress goes out at most this often; each scale's last iteration always does.
PROGRESS_INTERVAL_SECONDS = 0.05


def shutting_down(what: str = "") -> ImpastoError:
    return ImpastoError(Kind.UNAVAILABLE, f"the server is shutting down{what}; try again when it is back")


def cancelled() -> ImpastoError:
    return ImpastoError(Kind.CANCELLED)


@dataclass(eq=False)  # a job is itself, whatever its tensors hold
class Job:
    content: torch.Tensor  # at the working size
    styles: list[Style]
    options: Options
    source: Picture  # the content as uploaded: its full size and alpha make the result
    reply_encoded: bool
    on_event: Callable[[Event], None]
    cancel: threading.Event
    reservation: Reservation | None = None
    description: str = ""  # for the log line: the style's name
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    # Why `cancel` was set when it was not the client: reported instead of "cancelled".
    stop_reason: ImpastoError | None = None

    def end(self, event: Result | Failed) -> None:
        """The job's last event; its memory goes back to the server first."""
        self.content, self.styles, self.source = torch.empty(0), [], None
        if self.reservation is not None:
            self.reservation.release()
        self.on_event(event)


class JobQueue:
    """One queue feeding one worker thread per engine (device): the first free worker takes the next job."""

    def __init__(
        self,
        engines: list[Engine],
        devices: list[Device],
        max_queue: int,
        free_memory: Callable[[torch.device], int] | None = None,
    ):
        """`devices`: what each engine runs on, in the same order (for the jobs' Started events)."""
        self.engines, self.devices = engines, devices
        self.max_queue = max_queue
        self.free_memory = free_memory or free_memory_bytes
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: list[Job | None] = [None] * len(engines)  # by worker
        self._closed = False
        self._changed = threading.Condition()
        self._workers = [
            threading.Thread(target=self._work, args=(index,), name=f"impasto-worker-{index}", daemon=True)
            for index in range(len(engines))
        ]
        for worker in self._workers:
            worker.start()

    @property
    def waiting(self) -> int:
        with self._changed:
            return len(self._waiting)

    @property
    def running(self) -> int:
        with self._changed:
            return sum(job is not None for job in self._running)

    def busy(self) -> list[bool]:
        """For each worker (engine), whether it runs a job now."""
        with self._changed:
            return [job is not None for job in self._running]

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, job: Job) -> None:
        with self._changed:
            if self._closed:
                raise shutting_down()
            if job.cancel.is_set():  # cancelled while its upload was being decoded
                raise cancelled()
            if len(self._waiting) >= self.max_queue:
                raise ImpastoError(
                    Kind.BUSY,
                    f"the job queue is full ({self.max_queue} waiting); try again when a job has finished",
                )
            self._waiting.append(job)
            job.on_event(Queued(job.id, len(self._waiting) - 1 + self._all_busy()))
            self._changed.notify_all()

    def cancel(self, job: Job, reason: ImpastoError | None = None) -> None:
        """Stops a running job within an iteration; a waiting one leaves the queue at once."""
        with self._changed:
            job.stop_reason = job.stop_reason or reason
            job.cancel.set()
            if job not in self._waiting:
                return
            self._waiting.remove(job)
            self._tell_positions()
        job.end(Failed(reason or cancelled()))

    def close(self, grace_seconds: float) -> bool:
        """Refuses new jobs and fails the waiting ones at once; running ones get `grace_seconds` to
        finish and are then stopped. True if every worker stopped."""
        with self._changed:
            self._closed = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            self._changed.notify_all()
        for job in waiting:
            job.cancel.set()
            job.end(Failed(shutting_down()))
        with self._changed:
            self._changed.wait_for(lambda: not any(self._running), timeout=grace_seconds)
            for job in filter(None, self._running):
                job.stop_reason = shutting_down("; the job was stopped")
                job.cancel.set()
        for worker in self._workers:
            worker.join(timeout=30)
        return not any(worker.is_alive() for worker in self._workers)

    def _all_busy(self) -> int:
        """1 when every worker runs a job (one must finish before the next starts), else 0."""
        return int(all(job is not None for job in self._running))

    def _tell_positions(self) -> None:
        ahead = self._all_busy()
        for position, job in enumerate(self._waiting):
            job.on_event(Queued(job.id, position + ahead))

    def _next_job(self, worker: int) -> Job | None:
        with self._changed:
            while not self._waiting and not self._closed:
                self._changed.wait()
            if self._closed:
                return None
            job = self._running[worker] = self._waiting.popleft()
            self._tell_positions()
            return job

    def _work(self, worker: int) -> None:
        while (job := self._next_job(worker)) is not None:
            try:
                ending = self._run(job, worker)
            finally:
                with self._changed:
                    self._running[worker] = None
                    self._tell_positions()
                    self._changed.notify_all()
            # Told once the worker is free: a client that plans its next job as soon as it has this one's
            # result must not find this job ahead of it.
            job.end(ending)
            # Dropped before the cache is emptied: held until the next job, they would keep this one's memory
            # (its result, or a failure) taken through it.
            del job, ending
            self._release_cached_memory(self.engines[worker])

    def _run(self, job: Job, worker: int) -> Result | Failed:
        engine = self.engines[worker]
        started = time.monotonic()
        pixels = job.content.shape[2] * job.content.shape[3]
        ending: Result | Failed
        try:
            ending = Result(self._stylize(job, worker))
            outcome = "ok"
        except Exception as error:  # noqa: BLE001 - whatever happens, the job ends with a status
            ending = Failed(_without_frames(self._failure(job, error)))
            outcome = ending.error.kind.name.lower()
        # Logged before the client hears of it, so that the log never lags behind what a client saw.
        log.info(
            "job id=%s pixels=%d size=%s style=%s device=%s seconds=%.2f outcome=%s",
            job.id,
            pixels,
            job.options.size,
            job.description or "-",
            engine.device,
            time.monotonic() - started,
            outcome,
        )
        return ending

    def _release_cached_memory(self, engine: Engine) -> None:
        """Gives back the GPU memory and the pinned host memory PyTorch cached for the job that ended, with
        the engine's GPU current (in a thread left on cuda:0, a call would make a context there). A failure
        here is logged: the worker goes on to the next job.

        The pinned memory holds a tiled scale's state kept on the host (L-BFGS's history, the content's
        features), each block rounded up to a power of two; PyTorch's cache would keep it for good. Neither
        call has a per-device form: blocks of a job running on another GPU that are in use stay.
        """
        if engine.device.type != "cuda":
            return
        try:
            with engine.on_device():
                torch.cuda.empty_cache()
                torch.accelerator.empty_host_cache()
        except Exception:  # a worker that ended here would take its device's jobs with it
            log.exception("could not release the cached memory of %s", engine.device)

    def _stylize(self, job: Job, worker: int) -> Image:
        if job.cancel.is_set():
            raise Cancelled()
        engine = self.engines[worker]
        # Planned here, by the engine that runs it: devices differ in precision and speed.
        plan = engine.plan(
            tuple(job.content.shape[2:]), [tuple(s.image.shape[2:]) for s in job.styles], job.options
        )
        self._check_memory(job, plan, engine)
        job.on_event(_started(job, plan, self.devices[worker]))
        last_progress = -float("inf")

        def progress(p: engine_types.Progress) -> None:
            nonlocal last_progress
            # A GPU runs hundreds of iterations a second; a client needs a few reports.
            if p.iteration < p.iterations and time.monotonic() - last_progress < PROGRESS_INTERVAL_SECONDS:
                return
            last_progress = time.monotonic()
            job.on_event(_progress(p))

        try:
            result = engine.stylize(
                job.content,
                job.styles,
                job.options,
                plan=plan,
                on_progress=progress,
                on_preview=lambda image, p: job.on_event(_preview(image, p)),
                cancel=job.cancel,
            )
        except torch.OutOfMemoryError:
            raise ImpastoError(
                Kind.OUT_OF_MEMORY,
                f"the {engine.device.type.upper()} ran out of memory during the job; "
                "choose a smaller working size",
            ) from None  # the error and its frames are the failed job's memory: `_without_frames`
        source = job.source
        if job.options.preview:  # at its own small size
            source = source.resized(tuple(result.shape[2:]))
        height, width = source.size
        if job.reply_encoded:
            return Image(png_bytes(compose_result(result, source)), width, height, encoded=True)
        return Image(memoryview(compose_rgba(result, source)).cast("B"), width, height)

    def _failure(self, job: Job, error: Exception) -> ImpastoError:
        if isinstance(error, ImpastoError):
            return error
        if isinstance(error, Cancelled):
            return job.stop_reason or cancelled()
        if isinstance(error, DoesNotFit):  # refused by its plan, before anything ran
            return ImpastoError(Kind.OUT_OF_MEMORY, str(error))
        log.error("job %s failed", job.id, exc_info=error)
        return ImpastoError(Kind.BUG, f"job {job.id} failed ({type(error).__name__})")

    def _check_memory(self, job: Job, plan: Plan, engine: Engine) -> None:
        free = self.free_memory(engine.device)
        needed = plan.estimate.peak_bytes
        if needed <= free:
            return
        height, width = job.content.shape[2:]
        fits = largest_long_side(free, height, width, engine.precision, job.options.recipe)
        raise ImpastoError(
            Kind.OUT_OF_MEMORY,
            f"this job needs about {needed / 2**30:.1f} GiB of {engine.device.type.upper()} "
            f"memory at a working size of {job.options.size} px, and {free / 2**30:.1f} GiB are free; "
            f"choose a working size of at most {fits} px, or try again when other work on the device "
            "has finished",
        )


def _without_frames(error: ImpastoError) -> ImpastoError:
    """`error` without its traceback and the exceptions it was raised from, as a Failed event keeps it: their
    frames hold the failed job's tensors (picture, gradient, activations), which would stay in memory for
    as long as the event does, through the next job (smaller tiles there, or out of memory again)."""
    error.__traceback__ = error.__cause__ = error.__context__ = None
    return error


def _started(job: Job, plan: Plan, device: Device) -> Started:
    height, width = plan.working_size
    return Started(
        job_id=job.id,
        device=device,
        scales=len(plan.scales),
        iterations_per_scale=plan.scales[-1].iterations,
        total_iterations=plan.total_iterations,
        working_width=width,
        working_height=height,
        estimated_seconds=plan.estimate.seconds,
        estimated_memory_bytes=plan.estimate.peak_bytes,
    )


def _progress(p: engine_types.Progress) -> Progress:
    return Progress(
        fraction=p.fraction,
        scale=p.scale,
        scales=p.scales,
        iteration=p.iteration,
        iterations=p.iterations,
        content_loss=p.content_loss,
        style_loss=p.style_loss,
        tv_loss=p.tv_loss,
        elapsed_seconds=p.elapsed,
        eta_seconds=p.eta if math.isfinite(p.eta) else 0.0,
        tile=p.tile,
        tiles=p.tiles,
    )


def _preview(image: torch.Tensor, progress: engine_types.Progress) -> Preview:
    small = resize(image, fit_long_side(*image.shape[2:], min(PREVIEW_SIDE, max(image.shape[2:]))))
    return Preview(png_bytes(to_pil(small)), small.shape[3], small.shape[2], progress.fraction)
