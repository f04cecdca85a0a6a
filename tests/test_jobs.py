"""The jobs layer without gRPC or a network: the request checks, the byte budget and the queue.

The queue runs a fake engine that the test drives: each job it runs waits until the test finishes it,
fails it, or cancels it, so positions, cancels and shutdown are observed at chosen points, not timed.
"""

from __future__ import annotations

import math
import queue
import threading
import weakref
from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from impasto.engine import Cancelled, Options
from impasto.images import picture_from_rgba8
from impasto.jobs import Expert, Job, Request, Upload
from impasto.jobs.budget import ByteBudget
from impasto.jobs.queue import JobQueue
from impasto.jobs.request import check_request
from impasto.protocol import (
    NO_PREVIEWS,
    Device,
    Failed,
    ImageHeader,
    ImpastoError,
    Kind,
    Limits,
    Parameters,
    Queued,
    Result,
    Settings,
    Started,
    StyleChoice,
)

WAIT = 30  # seconds: a guard for waits on threads, never reached unless something is broken

# ---- a fake engine ---------------------------------------------------------------------------


class Run:
    """One job inside the fake engine, held there until the test says how it ends."""

    def __init__(self, content: torch.Tensor, cancel: threading.Event):
        self.content, self.cancel = content, cancel
        self._ending: queue.Queue = queue.Queue()

    def finish(self) -> None:
        self._ending.put(None)

    def fail(self, error: BaseException) -> None:
        self._ending.put(error)

    def wait(self) -> torch.Tensor:
        # The real engine checks its cancel once an iteration; this one does between short waits.
        for _ in range(WAIT * 100):
            if self.cancel.is_set():
                raise Cancelled()
            try:
                error = self._ending.get(timeout=0.01)
            except queue.Empty:
                continue
            if error is not None:
                raise error
            return self.content
        raise AssertionError("the test never ended this job")


class FakeEngine:
    """What the queue uses of an engine: `plan()` and `stylize()`, on a device."""

    device = torch.device("cpu")
    precision = "fp32"

    def __init__(self, peak_bytes: int = 1 << 20):
        self.peak_bytes = peak_bytes
        self.runs: queue.Queue[Run] = queue.Queue()

    def plan(self, content_shape, style_shapes, options):
        return SimpleNamespace(
            estimate=SimpleNamespace(peak_bytes=self.peak_bytes, seconds=1.0),
            working_size=tuple(content_shape),
            scales=[SimpleNamespace(iterations=options.iterations)],
            total_iterations=options.iterations,
        )

    def stylize(self, content, styles, options, *, plan, on_progress, on_preview, cancel):
        run = Run(content, cancel)
        self.runs.put(run)
        return run.wait()

    def next_run(self) -> Run:
        """The job the engine has started, once it has."""
        return self.runs.get(timeout=WAIT)


class Owner:
    """A job's owner: its events in order, and the budget's use when the last one came."""

    def __init__(self, budget: ByteBudget, jobs: JobQueue | None = None):
        self.budget, self.jobs = budget, jobs
        self.events: list = []
        self.used_at_end: int | None = None
        self.running_at_end: int | None = None  # jobs the queue ran when the end came
        self._ended = threading.Event()

    def __call__(self, event) -> None:
        self.events.append(event)
        if isinstance(event, Result | Failed):
            self.used_at_end = self.budget.used
            self.running_at_end = self.jobs.running if self.jobs is not None else None
            self._ended.set()

    def ended(self) -> Result | Failed:
        assert self._ended.wait(WAIT), f"the job never ended: {self.events}"
        return self.events[-1]

    def positions(self) -> list[int]:
        return [e.position for e in self.events if isinstance(e, Queued)]

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]


@pytest.fixture
def budget() -> ByteBudget:
    return ByteBudget(10_000)


def make_job(budget: ByteBudget, held: int = 1000, jobs: JobQueue | None = None) -> tuple[Job, Owner]:
    owner = Owner(budget, jobs)
    pixels = bytearray(range(4 * 8 * 8))
    source = picture_from_rgba8(pixels, 8, 8, "content")
    job = Job(
        content=source.rgb,
        styles=[],
        options=Options(size=8, iterations=1),
        source=source,
        reply_encoded=False,
        on_event=owner,
        cancel=threading.Event(),
        reservation=budget.reserve(held, "a test job"),
    )
    return job, owner


def make_queue(engines: list[FakeEngine], max_queue: int = 8, free: int = 1 << 40) -> JobQueue:
    devices = [Device("cpu", f"fake {index}", 0, "fp32") for index in range(len(engines))]
    return JobQueue(engines, devices, max_queue, free_memory=lambda device: free)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def jobs(engine: FakeEngine) -> Iterator[JobQueue]:
    opened = make_queue([engine])
    yield opened
    opened.close(grace_seconds=0)


def running(jobs: JobQueue, engine: FakeEngine, budget: ByteBudget) -> tuple[Job, Owner, Run]:
    """A job submitted and started on the (only) worker."""
    job, owner = make_job(budget, jobs=jobs)
    jobs.submit(job)
    return job, owner, engine.next_run()


# ---- the queue -------------------------------------------------------------------------------


def test_a_job_is_queued_started_and_finished_and_its_memory_and_worker_released_first(jobs, engine, budget):
    _, owner, run = running(jobs, engine, budget)
    assert budget.used == 1000 and jobs.running == 1
    run.finish()
    end = owner.ended()
    assert owner.kinds() == ["Queued", "Started", "Result"]
    assert owner.positions() == [0]
    assert isinstance(end, Result) and (end.image.width, end.image.height) == (8, 8)
    assert len(end.image.data) == 8 * 8 * 4
    assert owner.used_at_end == 0  # released before its owner heard the end
    assert owner.running_at_end == 0  # so that a plan asked at once finds no job ahead (the dialog's)


def test_waiting_jobs_are_told_their_place_as_the_queue_moves(jobs, engine, budget):
    _, first_owner, first_run = running(jobs, engine, budget)
    waiting = [make_job(budget) for _ in range(2)]
    for job, _ in waiting:
        jobs.submit(job)
    (_, second), (_, third) = waiting
    assert (second.positions(), third.positions()) == ([1], [2])  # the running job is ahead of both
    assert jobs.waiting == 2
    first_run.finish()
    engine.next_run().finish()  # the second starts once the first has finished, then ends
    engine.next_run().finish()
    for owner in (first_owner, second, third):
        assert isinstance(owner.ended(), Result)
    # A place may be told again unchanged, never a worse one; the third moved up to the front.
    assert third.positions() == sorted(third.positions(), reverse=True) and third.positions()[-1] == 0
    assert second.kinds()[-2:] == ["Started", "Result"] and budget.used == 0


def test_cancelling_a_waiting_job_ends_it_at_once_and_moves_the_others_up(jobs, engine, budget):
    _, first_owner, first_run = running(jobs, engine, budget)
    (second, second_owner), (third, third_owner) = make_job(budget), make_job(budget)
    jobs.submit(second)
    jobs.submit(third)
    jobs.cancel(second)
    end = second_owner.ended()
    assert isinstance(end, Failed) and end.error.kind == Kind.CANCELLED
    assert second_owner.used_at_end == 2000 and "Started" not in second_owner.kinds()
    assert jobs.waiting == 1 and third_owner.positions() == [2, 1]
    first_run.finish()
    engine.next_run().finish()  # the third runs next: the cancelled job never reaches the engine
    assert isinstance(third_owner.ended(), Result) and isinstance(first_owner.ended(), Result)
    assert engine.runs.empty() and budget.used == 0


def test_cancelling_a_running_job_stops_it_and_frees_the_worker(jobs, engine, budget):
    job, owner, _ = running(jobs, engine, budget)
    jobs.cancel(job)
    end = owner.ended()
    assert isinstance(end, Failed) and end.error.kind == Kind.CANCELLED and owner.used_at_end == 0
    _, next_owner, next_run = running(jobs, engine, budget)
    next_run.finish()
    assert isinstance(next_owner.ended(), Result)


def test_a_cancel_with_a_reason_reports_the_reason(jobs, engine, budget):
    job, owner, _ = running(jobs, engine, budget)
    jobs.cancel(job, ImpastoError(Kind.ALREADY_EXISTS, "a preset 'x' exists already"))
    end = owner.ended()
    assert isinstance(end, Failed) and end.error.kind == Kind.ALREADY_EXISTS


def test_a_job_cancelled_before_it_is_queued_is_refused(jobs, budget):
    job, owner = make_job(budget)
    job.cancel.set()
    with pytest.raises(ImpastoError) as caught:
        jobs.submit(job)
    assert caught.value.kind == Kind.CANCELLED and owner.events == [] and jobs.waiting == 0


def test_a_full_queue_refuses_with_its_limit(engine, budget):
    jobs = make_queue([engine], max_queue=1)
    try:
        _, first_owner, first_run = running(jobs, engine, budget)
        waiting, _ = make_job(budget)
        jobs.submit(waiting)
        refused, refused_owner = make_job(budget)
        with pytest.raises(ImpastoError) as caught:
            jobs.submit(refused)
        assert caught.value.kind == Kind.BUSY and "1 waiting" in caught.value.detail
        assert refused_owner.events == [] and jobs.waiting == 1
        first_run.finish()
        assert isinstance(first_owner.ended(), Result)
    finally:
        jobs.close(grace_seconds=0)


def submit_jobs(jobs, budget, count: int) -> list:
    """Submits `count` jobs; returns their owners (only they hold on to their jobs' events)."""
    owners = []
    for _ in range(count):
        job, owner = make_job(budget)
        jobs.submit(job)
        owners.append(owner)
    return owners


def test_two_workers_run_two_jobs_and_the_third_takes_the_first_free_one(budget):
    engines = [FakeEngine(), FakeEngine()]
    jobs = make_queue(engines)
    try:
        owners = submit_jobs(jobs, budget, 3)
        runs = [engine.next_run() for engine in engines]  # each worker took one
        assert jobs.busy() == [True, True] and jobs.waiting == 1
        assert owners[2].positions()[-1] == 1  # both busy: one must finish first
        runs[1].finish()
        engines[1].next_run().finish()  # the third ran on the worker that freed up
        started = [e for e in owners[2].events if isinstance(e, Started)]
        assert [e.device.name for e in started] == ["fake 1"]
        runs[0].finish()
        assert all(isinstance(owner.ended(), Result) for owner in owners) and budget.used == 0
    finally:
        jobs.close(grace_seconds=0)


def test_a_failing_engine_fails_the_job_not_the_worker(jobs, engine, budget, caplog):
    _, owner, run = running(jobs, engine, budget)
    run.fail(ValueError("boom"))
    end = owner.ended()
    assert isinstance(end, Failed) and end.error.kind == Kind.BUG and "boom" not in end.error.detail
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)  # the log has it
    _, oom_owner, oom_run = running(jobs, engine, budget)
    oom_run.fail(torch.OutOfMemoryError("CUDA out of memory"))
    end = oom_owner.ended()
    assert isinstance(end, Failed) and end.error.kind == Kind.OUT_OF_MEMORY
    assert "smaller working size" in end.error.detail and budget.used == 0


class OutOfMemoryEngine(FakeEngine):
    """Runs out of memory in every job, with a tensor of the job's still referenced by its frame."""

    def __init__(self):
        super().__init__()
        self.tensors: list[weakref.ref] = []

    def stylize(self, content, styles, options, *, plan, on_progress, on_preview, cancel):
        activations = torch.zeros(1 << 10)
        self.tensors.append(weakref.ref(activations))
        raise torch.OutOfMemoryError("CUDA out of memory")


def test_a_job_that_ran_out_of_memory_leaves_none_of_its_tensors_alive_for_the_next(budget):
    """The frames of an out-of-memory error hold the job's picture, gradient and activations: kept in its
    Failed event or by the worker, they would take the next job's memory (smaller tiles, or out of memory
    again)."""
    engine = OutOfMemoryEngine()
    jobs = make_queue([engine])
    try:
        owners = submit_jobs(jobs, budget, 2)
        assert [owner.ended().error.kind for owner in owners] == [Kind.OUT_OF_MEMORY] * 2
        # The first job's tensor is gone by the time the next one ends: its owner still holds its event.
        assert engine.tensors[0]() is None
    finally:
        jobs.close(grace_seconds=0)


def test_a_job_that_needs_more_memory_than_is_free_is_refused_with_a_size_that_fits(budget):
    engine = FakeEngine(peak_bytes=8 << 30)
    jobs = make_queue([engine], free=1 << 30)
    try:
        job, owner = make_job(budget)
        jobs.submit(job)
        end = owner.ended()
        assert isinstance(end, Failed) and end.error.kind == Kind.OUT_OF_MEMORY
        assert "8.0 GiB" in end.error.detail and "1.0 GiB are free" in end.error.detail
        assert "Started" not in owner.kinds() and engine.runs.empty() and budget.used == 0
    finally:
        jobs.close(grace_seconds=0)


def test_close_fails_waiting_jobs_at_once_and_lets_the_running_one_finish_in_its_grace(engine, budget):
    jobs = make_queue([engine])
    _, running_owner, run = running(jobs, engine, budget)
    waiting = [make_job(budget) for _ in range(2)]
    for job, _ in waiting:
        jobs.submit(job)
    closed = []
    closer = threading.Thread(target=lambda: closed.append(jobs.close(grace_seconds=WAIT)))
    closer.start()
    for _, owner in waiting:
        end = owner.ended()  # while the running job still runs
        assert isinstance(end, Failed) and end.error.kind == Kind.UNAVAILABLE
    assert running_owner.kinds()[-1] == "Started"
    with pytest.raises(ImpastoError) as caught:
        jobs.submit(make_job(budget)[0])
    assert caught.value.kind == Kind.UNAVAILABLE
    run.finish()
    closer.join(WAIT)
    assert closed == [True] and isinstance(running_owner.ended(), Result)
    assert budget.used == 1000  # only the job refused above holds its bytes: its caller releases them


def test_close_stops_the_running_job_after_its_grace(engine, budget):
    jobs = make_queue([engine])
    _, owner, _ = running(jobs, engine, budget)
    assert jobs.close(grace_seconds=0)
    end = owner.ended()
    assert isinstance(end, Failed) and end.error.kind == Kind.UNAVAILABLE
    assert "shutting down; the job was stopped" in end.error.detail and budget.used == 0


# ---- the byte budget -------------------------------------------------------------------------


def test_reservations_hold_bytes_until_released():
    budget = ByteBudget(1000)
    first = budget.reserve(600, "the first upload")
    second = budget.reserve(400, "the second upload")
    assert budget.used == 1000
    first.release()
    first.release()  # a second release gives nothing back twice
    assert budget.used == 400
    second.grow(600, "its decoded pixels")
    assert budget.used == 1000 and second.amount == 1000
    second.release()
    assert budget.used == 0


def test_a_reservation_over_the_whole_budget_says_so():
    budget = ByteBudget(10 << 20)
    with pytest.raises(ImpastoError) as caught:
        budget.reserve(11 << 20, "this request's images")
    assert caught.value.kind == Kind.TOO_LARGE
    assert (
        "this request's images needs 11 MiB" in caught.value.detail
        and "limit of 10 MiB" in caught.value.detail
    )
    assert budget.used == 0


def test_a_busy_budget_refuses_at_once_and_accepts_once_bytes_are_back():
    budget = ByteBudget(10 << 20)
    held = budget.reserve(8 << 20, "another upload")
    growing = budget.reserve(1 << 20, "an upload")
    with pytest.raises(ImpastoError) as caught:
        growing.grow(2 << 20, "its decoded pixels")
    assert caught.value.kind == Kind.BUSY and "busy with other uploads" in caught.value.detail
    assert "1 MiB are free" in caught.value.detail
    assert growing.amount == 1 << 20 and budget.used == 9 << 20  # a refused growth holds nothing more
    held.release()
    growing.grow(2 << 20, "its decoded pixels")
    assert budget.used == 3 << 20


def test_concurrent_reservations_never_overdraw_the_budget():
    budget = ByteBudget(1000)
    peaks, refused = [], []

    def worker() -> None:
        for _ in range(200):
            try:
                reservation = budget.reserve(300, "an upload")
            except ImpastoError:
                refused.append(1)
                continue
            peaks.append(budget.used)
            reservation.release()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert max(peaks) <= 1000 and budget.used == 0


# ---- the request checks ----------------------------------------------------------------------

LIMITS = Limits(max_pixels=10_000, max_size=64, max_request_bytes=100_000, full_size=False)
CONTENT = ImageHeader("rgba8", 16 * 16 * 4, 16, 16)
UDNIE = StyleChoice(preset_id="udnie")


def request(
    styles: tuple[StyleChoice, ...] = (UDNIE,),
    content: ImageHeader = CONTENT,
    uploads: tuple[ImageHeader, ...] = (),
    expert: Expert | None = None,
    **settings,
) -> Request:
    return Request(Parameters(content, styles, uploads, Settings(**settings)), expert or Expert())


GOOD = request()
UPLOADED = request(styles=(StyleChoice(upload=0),), uploads=(ImageHeader("encoded", 500),))
ONE_UPLOAD = {"styles": (StyleChoice(upload=0),)}


def test_a_good_request_passes():
    check_request(GOOD, LIMITS)
    check_request(UPLOADED, LIMITS)
    check_request(request(full_size=True), replace(LIMITS, full_size=True))
    check_request(request(preview_seconds=NO_PREVIEWS, size=64, iterations=5000, seed=2**64 - 1), LIMITS)


BAD = {
    "no style": (request(styles=()), Kind.INVALID, "at least one style"),
    "9 styles": (request(styles=(UDNIE,) * 9), Kind.TOO_LARGE, "9 style choices"),
    "9 uploads": (
        request(**ONE_UPLOAD, uploads=(ImageHeader("encoded", 5),) * 9),
        Kind.TOO_LARGE,
        "9 style uploads",
    ),
    "no pixels": (request(content=ImageHeader("rgba8", 0, 0, 16)), Kind.INVALID, "no pixels"),
    "too many pixels": (
        request(content=ImageHeader("rgba8", 101 * 100 * 4, 101, 100)),
        Kind.TOO_LARGE,
        "limit of 10,000",
    ),
    "wrong byte count": (request(content=ImageHeader("rgba8", 99, 16, 16)), Kind.INVALID, "announces 99"),
    "empty file": (request(content=ImageHeader("encoded", 0)), Kind.INVALID, "empty"),
    "file too big": (request(content=ImageHeader("encoded", 40_001)), Kind.TOO_LARGE, "larger than any"),
    "no format": (request(content=ImageHeader("", 100)), Kind.INVALID, "pixel format"),
    "request too big": (
        request(**ONE_UPLOAD, uploads=(ImageHeader("encoded", 40_000),) * 3),
        Kind.TOO_LARGE,
        "limit of 100,000",
    ),
    "preset and upload": (
        request(styles=(StyleChoice(preset_id="udnie", upload=0),), uploads=(ImageHeader("encoded", 5),)),
        Kind.INVALID,
        "either a preset or an upload",
    ),
    "neither": (request(styles=(StyleChoice(),)), Kind.INVALID, "either a preset or an upload"),
    "path as preset": (request(styles=(StyleChoice(preset_id="../udnie"),)), Kind.INVALID, "preset id"),
    "saving a preset": (
        request(styles=(StyleChoice(preset_id="udnie", save_as_preset="mine"),)),
        Kind.INVALID,
        "only an uploaded style",
    ),
    "unknown upload": (
        request(styles=(StyleChoice(upload=1),), uploads=(ImageHeader("encoded", 5),)),
        Kind.INVALID,
        "refers to upload 1",
    ),
    "NaN weight": (
        request(styles=(StyleChoice(preset_id="udnie", weight=math.nan),)),
        Kind.INVALID,
        "weight",
    ),
    "negative weight": (request(styles=(StyleChoice(preset_id="udnie", weight=-1),)), Kind.INVALID, "weight"),
    "huge weight": (request(styles=(StyleChoice(preset_id="udnie", weight=1e7),)), Kind.INVALID, "weight"),
    "weights add to 0": (
        request(styles=(StyleChoice(preset_id="udnie", weight=0),)),
        Kind.INVALID,
        "add up to 0",
    ),
    "unnamable preset": (
        request(styles=(StyleChoice(upload=0, save_as_preset="!!!"),), uploads=(ImageHeader("encoded", 5),)),
        Kind.INVALID,
        "cannot save a preset",
    ),
    "one name saved twice": (
        request(
            styles=(
                StyleChoice(upload=0, save_as_preset="Dupe Three"),
                StyleChoice(upload=0, save_as_preset="dupe-three"),
            ),
            uploads=(ImageHeader("encoded", 5),),
        ),
        Kind.INVALID,
        "saves two styles as preset 'dupe-three'",
    ),
    "full size not served": (request(full_size=True), Kind.INVALID, "full size"),
    "size 15": (request(size=15), Kind.INVALID, "size"),
    "size over the limit": (request(size=65), Kind.TOO_LARGE, "limit of 64 px"),
    "no iterations": (request(iterations=0), Kind.INVALID, "iterations"),
    "too many iterations": (request(iterations=5001), Kind.INVALID, "iterations"),
    "NaN strength": (request(strength=math.nan), Kind.INVALID, "strength"),
    "strength over the limit": (request(strength=101), Kind.INVALID, "strength"),
    "style scale 9": (request(style_scale=9), Kind.INVALID, "style scale"),
    "preview every 10 ms": (request(preview_seconds=0.01), Kind.INVALID, "preview interval"),
    "negative seed": (request(seed=-1), Kind.INVALID, "seed"),
    "seed over 64 bits": (request(seed=2**64), Kind.INVALID, "seed"),
    "unknown recipe": (request(expert=Expert(recipe="nope")), Kind.INVALID, "unknown recipe"),
    "unknown optimiser": (request(expert=Expert(optimizer="sgd")), Kind.INVALID, "optimiser"),
    "tiny memory budget": (request(expert=Expert(memory_budget=1000)), Kind.INVALID, "memory budget"),
    "unknown init upload": (request(expert=Expert(init_upload=0)), Kind.INVALID, "init_upload 0"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_request_is_refused_with_what_to_change(case: str):
    request, kind, words = BAD[case]
    with pytest.raises(ImpastoError) as caught:
        check_request(request, LIMITS)
    assert caught.value.kind == kind and words in caught.value.detail, caught.value.detail


def test_an_upload_takes_the_announced_bytes_and_no_more():
    budget = ByteBudget(10_000)
    upload = Upload(UPLOADED, budget.reserve(2000, "the images"), presets={})
    with pytest.raises(ImpastoError) as caught:
        upload.add(2, b"x")
    assert caught.value.kind == Kind.INVALID and "only 2 were announced" in caught.value.detail
    upload.add(0, b"\0" * 1024)
    with pytest.raises(ImpastoError) as caught:
        upload.check_complete()
    assert "uploaded image 1: the upload ended after 0 of 500 bytes" in caught.value.detail
    upload.add(1, b"\0" * 500)
    with pytest.raises(ImpastoError) as caught:
        upload.add(1, b"\0")
    assert "more bytes than the 500" in caught.value.detail
    upload.check_complete()
    upload.release()
    assert budget.used == 0
