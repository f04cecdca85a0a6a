"""A FIFO job queue in front of the engine: one worker thread per device, cancellable jobs.

Knows jobs and the engine's callbacks; knows nothing of gRPC. Each job carries a queue of events
that whoever submitted it drains (the gRPC servicer streams them to the client).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..engine import Cancelled, Engine, Options, Progress, Style
from ..engine.estimate import Estimate, largest_long_side
from ..engine.stylize import Scale, schedule
from .device import free_memory_bytes

log = logging.getLogger("impasto.jobs")


class QueueFull(Exception):
    def __init__(self, limit: int):
        super().__init__(f"the job queue is full ({limit} waiting); try again when a job has finished")
        self.limit = limit


class NotEnoughMemory(Exception):
    """A job would not fit in the device's memory now, or ran out of it."""


class ShuttingDown(Exception):
    def __init__(self) -> None:
        super().__init__("the server is shutting down; try again when it is back")


@dataclass
class Queued:
    position: int  # jobs ahead of this one


@dataclass
class Started:
    scales: list[Scale]
    estimate: Estimate


@dataclass
class Preview:
    image: torch.Tensor  # (1, 3, H, W) in [0, 1] on the CPU
    progress: Progress


@dataclass
class Finished:
    result: torch.Tensor  # at the working size, (1, 3, H, W) in [0, 1] on the CPU


@dataclass
class Failed:
    # Cancelled, ValueError (the request), NotEnoughMemory, ShuttingDown, or anything else (a bug)
    error: BaseException


Event = Queued | Started | Progress | Preview | Finished | Failed


@dataclass
class Job:
    content: torch.Tensor
    styles: list[Style]
    options: Options
    description: str = ""  # for the log line: the style's name
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    cancel: threading.Event = field(default_factory=threading.Event)
    events: queue.Queue[Event] = field(default_factory=queue.Queue)

    @property
    def pixels(self) -> int:
        return self.content.shape[2] * self.content.shape[3]


def _outcome(error: Exception) -> str:
    """The log's word for how a job ended; "error" is a bug."""
    kinds = {Cancelled: "cancelled", NotEnoughMemory: "out-of-memory", ValueError: "invalid"}
    return next((word for kind, word in kinds.items() if isinstance(error, kind)), "error")


class JobQueue:
    def __init__(self, engine: Engine, max_queue: int, free_memory: Callable[[], int] | None = None):
        self.engine = engine
        self.max_queue = max_queue
        self.free_memory = free_memory or (lambda: free_memory_bytes(engine.device))
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._closed = False
        self._changed = threading.Condition()
        self._worker = threading.Thread(target=self._work, name="impasto-worker", daemon=True)
        self._worker.start()

    @property
    def waiting(self) -> int:
        with self._changed:
            return len(self._waiting)

    @property
    def running(self) -> int:
        with self._changed:
            return int(self._running is not None)

    def submit(self, job: Job) -> None:
        with self._changed:
            if self._closed:
                raise ShuttingDown()
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(self.max_queue)
            self._waiting.append(job)
            job.events.put(Queued(len(self._waiting) - 1 + int(self._running is not None)))
            self._changed.notify_all()

    def cancel(self, job: Job) -> None:
        """Stops a running job within an iteration; a waiting one leaves the queue at once."""
        job.cancel.set()
        with self._changed:
            if job in self._waiting:
                self._waiting.remove(job)
                job.events.put(Failed(Cancelled()))
                self._changed.notify_all()

    def close(self, timeout: float) -> bool:
        """Refuses new jobs, fails waiting ones, cancels the running one; True if it stopped in time."""
        with self._changed:
            self._closed = True
            for job in self._waiting:
                job.events.put(Failed(ShuttingDown()))
            self._waiting.clear()
            if self._running is not None:
                self._running.cancel.set()
            self._changed.notify_all()
        self._worker.join(timeout)
        return not self._worker.is_alive()

    def _next_job(self) -> Job | None:
        with self._changed:
            while not self._waiting and not self._closed:
                self._changed.wait()
            if self._closed:
                return None
            job = self._waiting.popleft()
            self._running = job
            for position, waiting in enumerate(self._waiting):
                waiting.events.put(Queued(position + 1))
            return job

    def _work(self) -> None:
        while (job := self._next_job()) is not None:
            try:
                self._run(job)
            finally:
                with self._changed:
                    self._running = None
                    self._changed.notify_all()

    def _run(self, job: Job) -> None:
        started = time.monotonic()
        outcome = "ok"
        try:
            if job.cancel.is_set():
                raise Cancelled()
            height, width = job.content.shape[2:]
            estimate = self.engine.estimate(height, width, job.options)
            self._check_memory(job, estimate)
            job.events.put(Started(schedule(height, width, job.options), estimate))
            try:
                result = self.engine.stylize(
                    job.content,
                    job.styles,
                    job.options,
                    on_progress=job.events.put,
                    on_preview=lambda image, progress: job.events.put(Preview(image, progress)),
                    cancel=job.cancel,
                )
            except torch.OutOfMemoryError as error:
                raise NotEnoughMemory(
                    f"the {self.engine.device.type.upper()} ran out of memory during the job; "
                    "choose a smaller working size"
                ) from error
            job.events.put(Finished(result))
        except Exception as error:
            outcome = _outcome(error)
            if outcome == "error":
                log.exception("job %s failed", job.id)
            job.events.put(Failed(error))
        finally:
            log.info(
                "job id=%s pixels=%d size=%d style=%s device=%s seconds=%.2f outcome=%s",
                job.id,
                job.pixels,
                job.options.size,
                job.description or "-",
                self.engine.device,
                time.monotonic() - started,
                outcome,
            )
            # Drop the job's tensors now rather than when the client has read its last event.
            job.content = torch.empty(0)
            job.styles = []
            if self.engine.device.type == "cuda":
                torch.cuda.empty_cache()

    def _check_memory(self, job: Job, estimate: Estimate) -> None:
        free = self.free_memory()
        if estimate.peak_bytes <= free:
            return
        height, width = job.content.shape[2:]
        engine = self.engine
        fits = largest_long_side(free, height, width, engine.precision, job.options.recipe)
        raise NotEnoughMemory(
            f"this job needs about {estimate.peak_bytes / 2**30:.1f} GiB of {engine.device.type.upper()} "
            f"memory at a working size of {job.options.size} px, and {free / 2**30:.1f} GiB are free; "
            f"choose a working size of at most {fits} px, or try again when other work on the device "
            "has finished"
        )
