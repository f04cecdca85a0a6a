"""A fault suite that speaks the proto directly, like a hostile outside tester.

Every call goes through a raw `grpc` channel and the generated stubs (tests/wire.py), on loopback, with a
deadline; every loop is bounded in count and time; waits are polls with deadlines. Images are made here.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import grpc
import helpers
import impasto.library
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from impasto.jobs import Jobs
from impasto.protocol import Image as ResultImage
from impasto.protocol import Limits, Preview, Progress, Result
from impasto.protocol import wire as wire_codec
from impasto.service.servicer import StyleTransferServicer
from impasto.service.streams import StreamCounts
from impasto.v1 import impasto_pb2 as pb
from PIL import Image, ImageFile
from wire import (
    OWN_CONNECTION,
    Call,
    encode,
    encoded_header,
    errors,
    gradient,
    info,
    is_idle,
    job_lines,
    noise,
    outcome,
    parameters,
    rgba_header,
    stub,
    stylize,
    wait_idle,
    wait_until,
)

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED
STYLES = ("style-a", "style-b", "style-c")
LONG = {"size": 64, "iterations": 5000}  # runs until cancelled


# ---- servers ---------------------------------------------------------------------------------


def write_styles(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "style-a.jpg").write_bytes(encode(noise(96, 80, 3, seed=1), "JPEG", quality=90))
    (folder / "style-b.png").write_bytes(encode(gradient(64, 64, seed=2), "PNG"))
    (folder / "style-c.jpg").write_bytes(encode(gradient(80, 60, seed=3)[::-1].copy(), "JPEG"))
    return folder


@pytest.fixture(scope="module")
def fault_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fault-cache")


@contextmanager
def serving(cache: Path, *flags: str) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMPASTO_CACHE_DIR", str(cache))
        with helpers.running_server(*flags) as address:
            yield address


def start_server(*flags: str):
    """helpers.start_server (address, shutdown); the same thing built from main.start where it is missing."""
    if hasattr(helpers, "start_server"):
        return helpers.start_server(*flags)
    from impasto.server.main import build_parser, start

    port, shutdown = start(build_parser().parse_args(["--port", "0", "--device", "cpu", *flags]), None)
    return f"127.0.0.1:{port}", shutdown


@pytest.fixture(scope="module")
def styles_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_styles(tmp_path_factory.mktemp("styles"))


@pytest.fixture(scope="module")
def server(fault_cache: Path, styles_dir: Path) -> Iterator[str]:
    """Default limits."""
    with serving(fault_cache, "--styles-dir", str(styles_dir), "--grace-seconds", "1") as address:
        yield address


@pytest.fixture(scope="module")
def impatient_server(fault_cache: Path, styles_dir: Path) -> Iterator[str]:
    flags = ("--upload-timeout", "1", "--min-upload-rate", "1000")
    with serving(fault_cache, "--styles-dir", str(styles_dir), *flags) as address:
        yield address


@pytest.fixture(scope="module")
def frugal_server(fault_cache: Path, styles_dir: Path) -> Iterator[str]:
    flags = ("--max-request-bytes", "1000000", "--max-inflight-bytes", "1700000", "--max-streams", "3")
    with serving(fault_cache, "--styles-dir", str(styles_dir), *flags) as address:
        yield address


@pytest.fixture(scope="module")
def short_queue_server(fault_cache: Path, styles_dir: Path) -> Iterator[str]:
    with serving(fault_cache, "--styles-dir", str(styles_dir), "--max-queue", "2") as address:
        yield address


class Session:
    """Channels and calls of one test; all cancelled and closed at its end."""

    def __init__(self) -> None:
        self.channels: list[grpc.Channel] = []
        self.calls: list[Call] = []

    def channel(self, address: str) -> grpc.Channel:
        channel = grpc.insecure_channel(address, options=OWN_CONNECTION)
        self.channels.append(channel)
        return channel

    def call(self, channel: grpc.Channel, timeout: float = 120.0, **options) -> Call:
        call = Call(channel, timeout=timeout, **options)
        self.calls.append(call)
        return call

    def close(self) -> None:
        for call in self.calls:
            call.cancel()
        for channel in self.channels:
            channel.close()


@pytest.fixture
def session() -> Iterator[Session]:
    opened = Session()
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="impasto.jobs")
    return caplog


# ---- jobs ------------------------------------------------------------------------------------


def tiny_params(preset: str = "style-a", side: int = 16, **fields) -> pb.StylizeParameters:
    return parameters(rgba_header(side, side), [preset], **fields)


def tiny_content(side: int = 16, seed: int = 0) -> bytes:
    return noise(side, side, 4, seed).tobytes()


def tiny_job(channel: grpc.Channel, preset: str = "style-a", seed: int = 0) -> Call:
    return stylize(channel, tiny_params(preset), [tiny_content(seed=seed)], timeout=60)


def start_job(session: Session, address: str, params: pb.StylizeParameters, images: list[bytes]) -> Call:
    call = session.call(session.channel(address), timeout=300)
    call.parameters(params)
    for index, data in enumerate(images):
        call.upload(index, data)
    return call.close()


def long_job(session: Session, address: str) -> Call:
    """A job that runs until cancelled; returns once it has started."""
    call = start_job(session, address, tiny_params(side=64, **LONG), [tiny_content(64)])
    assert call.wait_event("started", 30) is not None, call
    return call


def queued_job(session: Session, address: str, seed: int = 0) -> Call:
    call = start_job(session, address, tiny_params(), [tiny_content(seed=seed)])
    assert call.wait_event("queued", 30) is not None, call
    return call


def refusal(call: Call, timeout: float = 15.0) -> tuple[grpc.StatusCode | None, str]:
    return call.wait(timeout), call.details


def settle(address: str, quiet: float = 2.0, timeout: float = 30.0) -> bool:
    """True once the server has stayed idle for `quiet` seconds (late work would show in that time)."""
    deadline = time.monotonic() + timeout
    idle_since = None
    while time.monotonic() < deadline:
        now = time.monotonic()
        if is_idle(address):
            idle_since = idle_since or now
            if now - idle_since >= quiet:
                return True
        else:
            idle_since = None
        time.sleep(0.05)
    return False


def assert_next_job_succeeds(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        call = tiny_job(channel, seed=99)
    assert call.code == OK, call


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


# ---- 1. idle streams -------------------------------------------------------------------------


def test_idle_streams_leave_info_health_styles_and_jobs_answering(server: str, session: Session):
    idle = []
    for index in range(20):  # 2 per connection over 10 connections: below both default caps
        if index % 2 == 0:
            channel = session.channel(server)
        idle.append(session.call(channel).parameters(tiny_params()))
    assert all(call.wait_sent(10) for call in idle)
    fresh = session.channel(server)
    assert info(fresh, timeout=10).limits.max_queue > 0
    health = health_pb2_grpc.HealthStub(fresh).Check(
        health_pb2.HealthCheckRequest(service="impasto.v1.StyleTransfer"), timeout=10
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    styles = stub(fresh).ListStyles(pb.ListStylesRequest(), timeout=20).styles
    assert {s.id for s in styles} >= set(STYLES)
    thumbnail = stub(fresh).GetStyleThumbnail(pb.GetStyleThumbnailRequest(id="style-a"), timeout=20)
    assert thumbnail.png
    job = tiny_job(session.channel(server))
    assert job.code == OK, job
    assert not [call for call in idle if call.done], [call for call in idle if call.done][:3]


def test_silent_streams_end_deadline_exceeded_and_free_their_slot(impatient_server: str, session: Session):
    silent = session.call(session.channel(impatient_server), timeout=90)
    parameters_only = session.call(session.channel(impatient_server), timeout=90).parameters(tiny_params())
    for call in (silent, parameters_only):
        # Ended by the server's upload deadline (its sentence names the upload), not the call's own.
        assert call.wait(60) == DEADLINE, call
        assert "upload" in call.details.lower(), call
    assert_next_job_succeeds(impatient_server)


def test_a_trickled_upload_ends_deadline_exceeded(impatient_server: str, session: Session):
    # Announces ~5 kB at a minimum rate of 1000 B/s: ~6 s allowed; sends 80 B/s.
    data = encode(noise(40, 40, 3), "PNG")
    assert len(data) > 4000
    call = session.call(session.channel(impatient_server), timeout=90)
    call.parameters(parameters(encoded_header(data), ["style-a"]))
    sent = 0
    deadline = time.monotonic() + 40
    while not call.done and sent < len(data) - 20 and time.monotonic() < deadline:
        call.chunk(0, data[sent : sent + 20])
        sent += 20
        time.sleep(0.25)  # the trickle's pace
    assert call.wait(60) == DEADLINE, call
    assert "upload" in call.details.lower(), call
    assert_next_job_succeeds(impatient_server)


def test_the_fifth_stream_on_one_connection_is_refused_but_not_on_another(server: str, session: Session):
    crowded = session.channel(server)
    calls = [session.call(crowded).parameters(tiny_params()) for _ in range(5)]
    assert wait_until(lambda: any(call.done for call in calls), 60), "no stream over the cap was refused"
    ended = [call for call in calls if call.done]
    assert len(ended) == 1 and ended[0].code == EXHAUSTED, ended
    assert "4" in ended[0].details, ended[0]
    other = tiny_job(session.channel(server))
    assert other.code == OK, other
    assert sum(call.done for call in calls) == 1


def client_id(name: str) -> tuple[tuple[str, str], ...]:
    return (("impasto-client-id", name),)


def test_users_behind_one_connection_are_counted_by_their_client_id(
    fault_cache: Path, styles_dir: Path, session: Session
):
    with serving(fault_cache, "--styles-dir", str(styles_dir), "--max-queue", "12") as address:
        # A proxy carries every user over one connection: 12 users at once, 12 ids, all served.
        proxy = session.channel(address)
        users = [session.call(proxy, metadata=client_id(f"user-{n}")) for n in range(12)]
        for call in users:
            call.parameters(tiny_params(side=32, size=32, iterations=20)).upload(0, tiny_content(32))
        for call in users:
            call.close()
        assert [call.wait(120) for call in users] == [OK] * 12, [c for c in users if c.code != OK][:2]
        # One user over five connections is still one user: one of five calls is refused — the one the
        # server counted last, which need not be the one sent last.
        same = [
            session.call(session.channel(address), metadata=client_id("one-user")).parameters(tiny_params())
            for _ in range(5)
        ]
        assert wait_until(lambda: any(call.done for call in same), 60), "none over the client cap refused"
        refused = [call for call in same if call.done]
        assert len(refused) == 1 and refused[0].code == EXHAUSTED, refused
        assert "this client has 4" in refused[0].details, refused[0]


def test_streams_over_the_server_wide_cap_are_refused(frugal_server: str, session: Session):
    # The server counts a call when its handler starts, in whatever order gRPC starts them: of four
    # idle calls on four connections, the one counted last is refused, whichever was sent last.
    calls = [session.call(session.channel(frugal_server)).parameters(tiny_params()) for _ in range(4)]
    assert wait_until(lambda: any(call.done for call in calls), 60), "no stream over the cap was refused"
    refused = [call for call in calls if call.done]
    assert len(refused) == 1 and refused[0].code == EXHAUSTED and "3" in refused[0].details, refused
    assert info(session.channel(frugal_server)).limits.max_queue > 0
    assert sum(call.done for call in calls) == 1, calls  # the three within the cap are still open
    for call in calls:
        call.cancel()
    assert wait_until(lambda: tiny_job(session.channel(frugal_server)).code == OK, 30, interval=0.2)


# ---- 2. ghost jobs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_png() -> bytes:
    """A 3000×3000 PNG of noise: a moment to decode."""
    return encode(noise(3000, 3000, 3, seed=7), "PNG", compress_level=1)


class DecodeGate:
    """Holds the server's decoder once, before or after Pillow decodes an image of `size`, until `go`
    is set: a cancel point chosen by what the server is doing, not by the clock."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, size: tuple[int, int], where: str):
        self.reached, self.go = threading.Event(), threading.Event()
        load, held = ImageFile.ImageFile.load, []

        def hold() -> None:
            held.append(True)
            self.reached.set()
            assert self.go.wait(60), "the test never let the decoder go on"

        def gated(image: ImageFile.ImageFile):
            if image.size != size or held:
                return load(image)
            if where == "before":
                hold()
            pixels = load(image)
            if where == "after":
                hold()
            return pixels

        monkeypatch.setattr(ImageFile.ImageFile, "load", gated)


def test_a_call_cancelled_during_upload_or_decode_leaves_no_job(
    server: str, session: Session, log: pytest.LogCaptureFixture, slow_png: bytes, monkeypatch
):
    assert wait_idle(server)
    before = len(job_lines(log.records))
    # Too long to finish before its cancel: a job that ends "ok" is a ghost.
    params = parameters(encoded_header(slow_png), ["style-a"], iterations=5000)
    for point in ["mid-upload", "uploaded", "before-decoding", "after-decoding"]:
        call = session.call(session.channel(server), timeout=120).parameters(params)
        if point == "mid-upload":
            call.upload(0, slow_png[: 5 << 20])
            assert call.wait_sent(30)
            call.cancel()
        elif point == "uploaded":  # every byte and the half-close handed to gRPC
            call.upload(0, slow_png).close()
            assert call.wait_sent(60)
            call.cancel()
        else:
            with monkeypatch.context() as patch:
                gate = DecodeGate(patch, (3000, 3000), point.split("-")[0])
                try:
                    call.upload(0, slow_png).close()
                    assert gate.reached.wait(60), f"the server never decoded the upload: {call}"
                    call.cancel()
                    assert call.wait(30) == grpc.StatusCode.CANCELLED, call
                finally:  # the server sees the cancel before or after the decoder goes on: no job either way
                    gate.go.set()
        assert wait_idle(server), f"the server is still busy after a cancel at {point}"
    assert settle(server), "the server did not stay idle"
    new = job_lines(log.records)[before:]
    assert not [line for line in new if outcome(line) == "ok"], new
    assert not errors(log.records)


# ---- 3. cancelling a waiting job that is not first -------------------------------------------


def test_cancelling_the_second_waiting_job(server: str, session: Session, log: pytest.LogCaptureFixture):
    assert wait_idle(server)
    first = long_job(session, server)
    b, c, d = (queued_job(session, server, seed) for seed in (1, 2, 3))
    assert (b.queued_positions()[0], c.queued_positions()[0], d.queued_positions()[0]) == (1, 2, 3)
    probe = session.channel(server)
    c.cancel()
    assert c.wait(60) == grpc.StatusCode.CANCELLED
    assert wait_until(lambda: info(probe).queue_length == 2, 60), info(probe)
    assert not errors(log.records)
    b.cancel()
    assert wait_until(lambda: info(probe).queue_length == 1, 60), info(probe)
    moved = d.wait_for(lambda e: e.HasField("queued") and e.queued.position == 1, 60)
    assert moved is not None, f"D was not told its new place: {d.queued_positions()}"
    d.cancel()
    first.cancel()
    assert wait_idle(server)
    ids = {b.job_id(), c.job_id(), d.job_id()}
    assert not [
        line for line in job_lines(log.records) if outcome(line) == "ok" and line.split()[1][3:] in ids
    ]
    assert not errors(log.records)


def test_a_full_queue_with_cancels_in_the_middle(
    short_queue_server: str, session: Session, log: pytest.LogCaptureFixture
):
    address = short_queue_server
    assert wait_idle(address)
    running = long_job(session, address)
    b, c = queued_job(session, address, 1), queued_job(session, address, 2)
    refused = start_job(session, address, tiny_params(), [tiny_content()])
    code, details = refusal(refused)
    assert code == EXHAUSTED and "queue" in details.lower(), refused
    c.cancel()  # the last waiting job
    b.cancel()  # the first
    probe = session.channel(address)
    assert wait_until(lambda: info(probe).queue_length == 0, 60), info(probe)
    late = queued_job(session, address, 3)
    again = queued_job(session, address, 4)
    late.cancel()
    assert again.wait_for(lambda e: e.HasField("queued") and e.queued.position == 1, 60) is not None
    running.cancel()
    assert again.wait(60) == OK, again
    assert wait_idle(address)
    assert not errors(log.records)


# ---- 4. unbounded work per request -----------------------------------------------------------


def test_too_many_style_choices_or_uploads(server: str, session: Session):
    choices = parameters(rgba_header(16, 16), [STYLES[i % 3] for i in range(9)])
    call = stylize(session.channel(server), choices, [tiny_content()])
    assert call.code == EXHAUSTED and "8" in call.details, call
    style = tiny_content(seed=5)
    uploads = parameters(rgba_header(16, 16), uploads=[rgba_header(16, 16)] * 9)
    call = stylize(session.channel(server), uploads, [tiny_content()] + [style] * 9)
    assert call.code == EXHAUSTED and "8" in call.details, call


def test_a_request_over_the_byte_limit_is_refused_at_its_parameters(frugal_server: str, session: Session):
    too_big = parameters(rgba_header(600, 500), ["style-a"])  # 1.2 MB announced, nothing sent
    call = session.call(session.channel(frugal_server)).parameters(too_big)
    code, details = refusal(call)
    assert code == EXHAUSTED and "1000000" in digits(details), call


def test_concurrent_uploads_over_the_inflight_budget(frugal_server: str, session: Session):
    first_data = noise(500, 400, 4, seed=1).tobytes()  # 800 kB of a 1.7 MB budget
    first = session.call(session.channel(frugal_server)).parameters(
        parameters(rgba_header(500, 400), ["style-a"])
    )
    first.chunk(0, first_data[:400_000])
    assert first.wait_sent(10)
    second_params = parameters(rgba_header(500, 460), ["style-a"])  # 920 kB more: over the budget
    second = start_job(session, frugal_server, second_params, [noise(500, 460, 4).tobytes()])
    assert refusal(second)[0] == EXHAUSTED, second
    first.chunk(0, first_data[400_000:]).close()
    assert first.wait(60) == OK, first
    header, data = first.result()
    assert (header.width, header.height, len(data)) == (500, 400, len(first_data))


def calls_ended(patch: pytest.MonkeyPatch) -> threading.Semaphore:
    """Released once for each Stylize call the server has ended (its status sent or the client gone)."""
    ended = threading.Semaphore(0)
    close = StreamCounts.close

    def counted(streams: StreamCounts, slot) -> None:
        close(streams, slot)
        ended.release()

    patch.setattr(StreamCounts, "close", counted)
    return ended


class AdmitGate:
    """Holds every request in `Jobs.admit` (the check that reserves memory for its images, run in a
    thread) until `go` is set; `jobs` is the server's own, once a request has come."""

    def __init__(self, patch: pytest.MonkeyPatch):
        self.reached, self.go = threading.Event(), threading.Event()
        self.jobs: Jobs | None = None
        admit = Jobs.admit

        def held(jobs: Jobs, request):
            self.jobs = jobs
            self.reached.set()
            assert self.go.wait(60), "the test never let the request on"
            return admit(jobs, request)

        patch.setattr(Jobs, "admit", held)


def test_a_call_cancelled_while_its_request_is_checked_holds_no_memory(
    frugal_server: str, session: Session, monkeypatch: pytest.MonkeyPatch
):
    # The check runs in a thread that a cancel cannot stop. Before, the memory it went on to hold was
    # never given back: one such cancel held 1.6 of this server's 1.7 MB, and every later upload was
    # "busy" until the server restarted.
    ended = calls_ended(monkeypatch)
    content = noise(500, 400, 4, seed=1).tobytes()  # 800 kB, as much again decoded: 1.6 of 1.7 MB
    params = parameters(rgba_header(500, 400), ["style-a"])
    for _ in range(2):
        with monkeypatch.context() as patch:
            gate = AdmitGate(patch)
            call = session.call(session.channel(frugal_server)).parameters(params)
            try:
                assert gate.reached.wait(30), f"the request never reached its check: {call}"
                call.cancel()
                assert ended.acquire(timeout=30), "the server never ended the cancelled call"
            finally:
                gate.go.set()
        budget = gate.jobs.budget
        assert wait_until(lambda: budget.used == 0, 30), f"{budget.used:,} bytes held"  # noqa: B023
    served = start_job(session, frugal_server, params, [content])
    assert served.wait(60) == OK, served


def test_calls_cancelled_while_the_server_waits_for_them_leave_no_task_behind(
    server: str, session: Session, monkeypatch: pytest.MonkeyPatch
):
    # Each read waits for the message or for the server to close; a call cancelled meanwhile left both
    # waits behind, two tasks a call for as long as the server ran.
    ended = calls_ended(monkeypatch)
    loops: list[asyncio.AbstractEventLoop] = []
    read = StyleTransferServicer._read

    async def reading(servicer: StyleTransferServicer, *args):
        loops.append(asyncio.get_running_loop())
        return await read(servicer, *args)

    monkeypatch.setattr(StyleTransferServicer, "_read", reading)

    async def waiting_tasks() -> list[asyncio.Task]:
        return [task for task in asyncio.all_tasks() if task.get_coro().__qualname__ == "Event.wait"]

    for calls in range(1, 4):
        call = session.call(session.channel(server))
        assert wait_until(lambda: len(loops) == calls, 30), "the server never read the call"  # noqa: B023
        call.cancel()
        assert ended.acquire(timeout=30), "the server never ended the cancelled call"
    left = lambda: asyncio.run_coroutine_threadsafe(waiting_tasks(), loops[0]).result(10)  # noqa: E731
    assert wait_until(lambda: not left(), 10), left()


def test_a_million_empty_styles_are_refused_before_they_are_read(
    server: str, session: Session, monkeypatch: pytest.MonkeyPatch
):
    # Converting each entry of such a message took seconds of the event loop, which every call shares.
    converted = []
    convert = wire_codec.parameters_from_message
    monkeypatch.setattr(wire_codec, "parameters_from_message", lambda m: converted.append(m) or convert(m))
    flood = parameters(rgba_header(16, 16), ["style-a"])
    flood.styles.extend(pb.StyleChoice() for _ in range(200_000))
    call = stylize(session.channel(server), flood, [tiny_content()])
    assert call.code == EXHAUSTED and "200001 style choices" in call.details, call
    flood = parameters(rgba_header(16, 16), ["style-a"])
    flood.style_uploads.extend(pb.ImageHeader() for _ in range(200_000))
    with pytest.raises(grpc.RpcError) as refused:
        stub(session.channel(server)).PlanJob(flood, timeout=60)
    assert refused.value.code() == EXHAUSTED and "200000 style uploads" in refused.value.details()
    assert not converted


def test_an_encoded_upload_that_decodes_over_the_budget(frugal_server: str, session: Session):
    flat = encode(Image.new("RGB", (4000, 4000), (200, 120, 40)), "PNG")
    assert len(flat) < 500_000
    call = stylize(session.channel(frugal_server), parameters(encoded_header(flat), ["style-a"]), [flat])
    assert call.code == EXHAUSTED, call


def style_noise_jpeg(seed: int) -> bytes:
    coarse = Image.fromarray(noise(256, 256, 3, seed))
    return encode(coarse.resize((1024, 1024), Image.NEAREST), "JPEG", quality=80)


def test_cancel_while_many_style_targets_are_computed(
    server: str, session: Session, log: pytest.LogCaptureFixture
):
    assert wait_idle(server)
    styles = [style_noise_jpeg(seed) for seed in range(8)]
    content = gradient(128, 128)
    content_rgba = np.dstack([content, np.full((128, 128), 255, np.uint8)]).tobytes()
    params = parameters(
        rgba_header(128, 128),
        uploads=[encoded_header(s) for s in styles],
        size=128,
        iterations=5,
        style_scale=8,
    )
    call = start_job(session, server, params, [content_rgba, *styles])
    assert call.wait_event("started", 60) is not None, call
    job_id = call.job_id()
    call.cancel()

    def logged() -> list[str]:
        return [line for line in job_lines(log.records) if f"id={job_id} " in line]

    # Stopped, not finished: between two style passes (test_stylize checks that), or at the latest
    # within its first iteration.
    assert wait_until(lambda: bool(logged()), 120), "the job never ended"
    assert outcome(logged()[0]) == "cancelled", logged()
    assert wait_idle(server)


def test_estimated_memory_grows_with_style_scale(server: str, session: Session):
    style = style_noise_jpeg(11)
    content = np.dstack([gradient(128, 128), np.full((128, 128), 255, np.uint8)]).tobytes()
    estimates = {}
    for scale in (1, 8):
        assert wait_idle(server)
        params = parameters(
            rgba_header(128, 128), uploads=[encoded_header(style)], size=128, iterations=5, style_scale=scale
        )
        call = start_job(session, server, params, [content, style])
        started = call.wait_event("started", 60)
        assert started is not None, call
        estimates[scale] = started.started.estimated_memory_bytes
        call.cancel()
    assert estimates[8] >= 8 * estimates[1], estimates
    assert wait_idle(server, 60)


# ---- 5, 6. the style library -----------------------------------------------------------------


@pytest.fixture(scope="module")
def big_library_server(fault_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("forty")
    for index in range(40):
        coarse = Image.fromarray(noise(250, 250, 3, seed=100 + index)).resize((1000, 1000))
        (folder / f"preset-{index:02d}.jpg").write_bytes(encode(coarse, "JPEG", quality=85))
    with serving(fault_cache, "--styles-dir", str(folder)) as address:
        yield address


def test_forty_presets_list_and_thumbnails_come_one_by_one(big_library_server: str, session: Session):
    channel = session.channel(big_library_server)
    # Quick because a listing decodes no image (test_library checks that), whatever the machine's load.
    styles = stub(channel).ListStyles(pb.ListStylesRequest(), timeout=60).styles
    assert len([s for s in styles if not s.builtin]) == 40 and len(styles) > 40
    assert all(not s.thumbnail_png for s in styles)
    for preset in styles:
        reply = stub(channel).GetStyleThumbnail(pb.GetStyleThumbnailRequest(id=preset.id), timeout=30)
        picture = Image.open(io.BytesIO(reply.png))
        assert picture.format == "PNG" and max(picture.size) <= 256
        assert reply.id == preset.id and reply.version == preset.version and preset.version
    with pytest.raises(grpc.RpcError) as caught:
        stub(channel).GetStyleThumbnail(pb.GetStyleThumbnailRequest(id="no-such-style"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def broken_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = write_styles(tmp_path_factory.mktemp("with-broken"))
    whole = encode(gradient(300, 200, seed=4), "JPEG", quality=95)
    (folder / "broken.jpg").write_bytes(whole[: int(len(whole) * 0.3)])
    return folder


@pytest.fixture(scope="module")
def broken_library_server(fault_cache: Path, broken_folder: Path) -> Iterator[str]:
    with serving(fault_cache, "--styles-dir", str(broken_folder)) as address:
        yield address


def test_a_half_copied_preset_is_failed_precondition_and_others_work(
    broken_library_server: str, broken_folder: Path, session: Session
):
    channel = session.channel(broken_library_server)
    styles = stub(channel).ListStyles(pb.ListStylesRequest(), timeout=30).styles
    assert {s.id for s in styles} >= set(STYLES)
    with pytest.raises(grpc.RpcError) as caught:
        stub(channel).GetStyleThumbnail(pb.GetStyleThumbnailRequest(id="broken"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert str(broken_folder.resolve()) not in caught.value.details()
    assert str(broken_folder) not in caught.value.details()
    call = tiny_job(channel, preset="broken")
    assert call.code == grpc.StatusCode.FAILED_PRECONDITION, call
    assert str(broken_folder.resolve()) not in call.details and str(broken_folder) not in call.details
    assert stub(channel).GetStyleThumbnail(pb.GetStyleThumbnailRequest(id="style-a"), timeout=30).png
    assert tiny_job(channel, preset="style-b").code == OK
    assert len(stub(channel).ListStyles(pb.ListStylesRequest(), timeout=30).styles) >= 3


# ---- 7. a preset is saved only when its job is admitted --------------------------------------


def test_a_refused_job_saves_no_preset(
    fault_cache: Path, tmp_path: Path, styles_dir: Path, session: Session, log: pytest.LogCaptureFixture
):
    folder = tmp_path / "styles"
    shutil.copytree(styles_dir, folder)
    style = encode(gradient(40, 32, seed=8), "PNG")
    params = parameters(rgba_header(16, 16), uploads=[encoded_header(style)])
    params.styles[0].save_as_preset = "kept-style"

    def listed(channel: grpc.Channel) -> set[str]:
        return {s.id for s in stub(channel).ListStyles(pb.ListStylesRequest(), timeout=30).styles}

    with serving(fault_cache, "--styles-dir", str(folder), "--max-queue", "1") as address:
        channel = session.channel(address)
        running = long_job(session, address)
        waiting = queued_job(session, address)
        refused = stylize(session.channel(address), params, [tiny_content(), style])
        assert refused.code == EXHAUSTED, refused
        assert "kept-style" not in listed(channel)
        waiting.cancel()
        running.cancel()
        assert wait_idle(address)
        accepted = stylize(session.channel(address), params, [tiny_content(), style])
        assert accepted.code == OK, accepted
        assert "kept-style" in listed(channel)
        again = stylize(session.channel(address), params, [tiny_content(), style])
        assert again.code == grpc.StatusCode.ALREADY_EXISTS, again


def test_a_full_library_saves_no_more_presets_but_still_paints(
    server: str, session: Session, monkeypatch: pytest.MonkeyPatch
):
    # Before, any client could save presets without end: the disk filled, and past a few thousand the
    # listing outgrew one message and ListStyles failed for every user.
    channel = session.channel(server)
    listed = len(stub(channel).ListStyles(pb.ListStylesRequest(), timeout=30).styles)
    monkeypatch.setattr(impasto.library, "MAX_SAVED_PRESETS", listed)
    style = encode(gradient(40, 32, seed=9), "PNG")
    params = parameters(rgba_header(16, 16), uploads=[encoded_header(style)])
    params.styles[0].save_as_preset = "one-too-many"
    call = session.call(channel).parameters(params)  # refused with its parameters: no byte is sent
    code, details = refusal(call)
    assert code == EXHAUSTED and f"holds {listed} presets" in details and "without saving" in details, call
    params.styles[0].save_as_preset = ""
    assert stylize(channel, params, [tiny_content(), style]).code == OK
    assert len(stub(channel).ListStyles(pb.ListStylesRequest(), timeout=30).styles) == listed


# ---- 8. absurd values ------------------------------------------------------------------------


def _strength(value):
    def change(p: pb.StylizeParameters, limits: pb.Limits) -> None:
        p.strength = value

    return change


def _weight(value):
    def change(p: pb.StylizeParameters, limits: pb.Limits) -> None:
        p.styles[0].weight = value

    return change


def _field(name, value):
    def change(p: pb.StylizeParameters, limits: pb.Limits) -> None:
        setattr(p, name, value(limits) if callable(value) else value)

    return change


ABSURD = {
    "strength-1e308": (_strength(1e308), INVALID),
    "strength-nan": (_strength(math.nan), INVALID),
    "strength-inf": (_strength(math.inf), INVALID),
    "strength-negative": (_strength(-1.0), INVALID),
    "weight-nan": (_weight(math.nan), INVALID),
    "weight-inf": (_weight(math.inf), INVALID),
    "weight-negative": (_weight(-1.0), INVALID),
    "weight-1e7": (_weight(1e7), INVALID),
    "style-scale-9": (_field("style_scale", 9.0), INVALID),
    "style-scale-0.001": (_field("style_scale", 0.001), INVALID),
    "size-15": (_field("size", 15), INVALID),
    "size-over-max": (_field("size", lambda limits: limits.max_size + 1), EXHAUSTED),
    "iterations-over-max": (_field("iterations", lambda limits: limits.max_iterations + 1), INVALID),
    "preview-0.01": (_field("preview_interval_seconds", 0.01), INVALID),
    "preview-1e9": (_field("preview_interval_seconds", 1e9), INVALID),
}


@pytest.mark.parametrize("case", list(ABSURD))
def test_absurd_values_are_refused(server: str, session: Session, case: str):
    change, expected = ABSURD[case]
    channel = session.channel(server)
    params = tiny_params()
    change(params, info(channel).limits)
    call = stylize(channel, params, [tiny_content()])
    if call.code == OK:
        _, data = call.result()
        assert np.frombuffer(data, np.uint8).reshape(16, 16, 4)[:, :, :3].max() > 0, "accepted, and all black"
    assert call.code == expected, call


def test_the_largest_accepted_values_never_give_a_black_image(server: str, session: Session):
    channel = session.channel(server)
    params = parameters(rgba_header(32, 32), ["style-a", "style-b"], size=32, iterations=3, strength=100.0)
    params.styles[0].weight = 1e6
    content = np.dstack([gradient(32, 32), np.full((32, 32), 255, np.uint8)])
    call = stylize(channel, params, [content.tobytes()])
    assert call.code == OK, call
    _, data = call.result()
    rgb = np.frombuffer(data, np.uint8).reshape(32, 32, 4)[:, :, :3]
    assert rgb.max() > 0 and rgb.mean() > 5, "an all-black result"
    assert info(channel).limits.max_strength == 100


def nan_tiff() -> bytes:
    pixels = np.linspace(0, 1, 24 * 24, dtype=np.float32).reshape(24, 24)
    pixels[5:9, 5:9] = np.nan
    return encode(Image.fromarray(pixels, "F"), "TIFF")


@pytest.mark.parametrize("where", ["content", "style", "saved-style"])
def test_non_finite_pixels_are_refused(server: str, session: Session, where: str):
    tiff = nan_tiff()
    channel = session.channel(server)
    if where == "content":
        params = parameters(encoded_header(tiff), ["style-a"])
        images = [tiff]
    else:
        params = parameters(rgba_header(16, 16), uploads=[encoded_header(tiff)])
        if where == "saved-style":
            params.styles[0].save_as_preset = "nan-style"
        images = [tiny_content(), tiff]
    call = stylize(channel, params, images)
    assert call.code == INVALID, call
    assert "nan-style" not in {
        s.id for s in stub(channel).ListStyles(pb.ListStylesRequest(), timeout=30).styles
    }


# ---- 9. errors -------------------------------------------------------------------------------


def test_bytes_that_are_not_a_request_are_invalid_argument(server: str, session: Session):
    call = session.call(session.channel(server), timeout=30, raw=True)
    call.send(b"\xff\xff\xff").close()
    assert call.wait(30) == INVALID, call


def _chunk_first(call: Call) -> None:
    call.chunk(0, tiny_content()).parameters(tiny_params()).close()


def _parameters_twice(call: Call) -> None:
    call.parameters(tiny_params()).parameters(tiny_params()).chunk(0, tiny_content()).close()


def _unannounced_image(call: Call) -> None:
    call.parameters(tiny_params()).chunk(0, tiny_content()).chunk(1, tiny_content()).close()


def _too_many_bytes(call: Call) -> None:
    call.parameters(tiny_params()).chunk(0, tiny_content()).chunk(0, b"\0" * 4).close()


def _too_few_bytes(call: Call) -> None:
    call.parameters(tiny_params()).chunk(0, tiny_content()[:-4]).close()


OUT_OF_ORDER = {
    "chunk-before-parameters": _chunk_first,
    "parameters-twice": _parameters_twice,
    "unannounced-image": _unannounced_image,
    "more-bytes-than-announced": _too_many_bytes,
    "fewer-bytes-then-close": _too_few_bytes,
}


@pytest.mark.parametrize("case", list(OUT_OF_ORDER))
def test_messages_out_of_order_are_invalid_argument(server: str, session: Session, case: str):
    call = session.call(session.channel(server), timeout=30)
    OUT_OF_ORDER[case](call)
    assert call.wait(30) == INVALID, call


def test_a_megabyte_preset_id_gets_a_short_message(server: str, session: Session):
    call = tiny_job(session.channel(server), preset="a" * (1 << 20))
    assert call.code == INVALID, (call.code, call.details[:200])
    assert len(call.details) < 300, call.details[:300]


def test_a_preset_id_with_a_trailing_newline_is_invalid(server: str, session: Session):
    call = tiny_job(session.channel(server), preset="style-a\n")
    assert call.code == INVALID, call


def test_an_rgba8_header_without_pixels(server: str, session: Session):
    params = parameters(
        pb.ImageHeader(format=pb.PIXEL_FORMAT_RGBA8, width=0, height=16, total_bytes=0), ["style-a"]
    )
    call = stylize(session.channel(server), params)
    assert call.code == INVALID and "no pixels" in call.details, call


def test_a_server_bug_is_internal_and_logged(
    server: str, session: Session, monkeypatch: pytest.MonkeyPatch, log: pytest.LogCaptureFixture
):
    from impasto.engine import Engine

    def boom(*args, **kwargs):
        raise ValueError("boom")

    assert wait_idle(server)
    monkeypatch.setattr(Engine, "stylize", boom)
    call = tiny_job(session.channel(server))
    assert call.code == grpc.StatusCode.INTERNAL, call
    assert "boom" not in call.details
    assert any(r.exc_info is not None and "boom" in str(r.exc_info[1]) for r in log.records)
    monkeypatch.undo()
    assert tiny_job(session.channel(server)).code == OK


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "impasto.cli", *args], capture_output=True, text=True, timeout=90, check=False
    )


def test_the_cli_refuses_negative_iterations_plainly(tmp_path: Path):
    picture = tmp_path / "X.png"
    picture.write_bytes(encode(gradient(24, 24), "PNG"))
    out = str(tmp_path / "out.png")
    args = (
        "stylize",
        str(picture),
        "--style",
        "x",
        "--iterations",
        "-5",
        "--server",
        "127.0.0.1:1",
        "-o",
        out,
    )
    done = cli(*args)
    said = done.stdout + done.stderr
    assert done.returncode != 0
    last = [line for line in said.splitlines() if line.strip()][-1]
    assert "iterations" in last, said
    assert "Exception iterating requests" not in said and "UNKNOWN" not in said, said


# ---- 10. formats -----------------------------------------------------------------------------

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


@pytest.mark.parametrize("kind", ["eps-content", "eps-style", "pdf-content"])
def test_unsupported_formats_name_the_supported_ones(server: str, session: Session, kind: str):
    data = PDF if kind.startswith("pdf") else EPS
    if kind.endswith("content"):
        params, images = parameters(encoded_header(data), ["style-a"]), [data]
    else:
        params, images = (
            parameters(rgba_header(16, 16), uploads=[encoded_header(data)]),
            [tiny_content(), data],
        )
    call = stylize(session.channel(server), params, images)
    assert call.code == INVALID, call
    assert "PNG" in call.details and "JPEG" in call.details, call


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF"])
def test_common_formats_are_accepted(server: str, session: Session, fmt: str):
    content = encode(gradient(30, 22, seed=1), fmt)
    style = encode(noise(40, 40, 3, seed=2), fmt)
    params = parameters(encoded_header(content), uploads=[encoded_header(style)])
    call = stylize(session.channel(server), params, [content, style])
    assert call.code == OK, call
    header, data = call.result()
    assert header.format == pb.PIXEL_FORMAT_ENCODED and Image.open(io.BytesIO(data)).size == (30, 22)


# ---- 11. secrets -----------------------------------------------------------------------------


def test_the_cli_will_not_send_a_token_in_clear_over_a_network(server: str):
    done = cli("info", "--server", "impasto-test.invalid:50051", "--token", "secret")
    said = done.stdout + done.stderr
    assert done.returncode != 0
    assert "clear" in said.lower(), said
    assert any(hint in said for hint in ("https://", "--tls-ca", "--insecure")), said
    local = cli("info", "--server", server, "--token", "secret")
    assert local.returncode == 0, local.stdout + local.stderr
    assert "clear" not in (local.stdout + local.stderr).lower()


# ---- 12. shutdown ----------------------------------------------------------------------------


def test_shutdown_refuses_waiting_jobs_at_once_and_the_running_one_after_the_grace(
    fault_cache: Path, styles_dir: Path, session: Session
):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMPASTO_CACHE_DIR", str(fault_cache))
        address, shutdown = start_server("--grace-seconds", "3", "--styles-dir", str(styles_dir))
    stopper = threading.Thread(target=shutdown, daemon=True)
    try:
        running = long_job(session, address)
        waiting = [queued_job(session, address, seed) for seed in (1, 2)]
        began = time.monotonic()
        stopper.start()
        for call in waiting:
            assert call.wait(30) == grpc.StatusCode.UNAVAILABLE, call
            assert "shutting down" in call.details.lower(), call
        assert running.wait(60) == grpc.StatusCode.UNAVAILABLE, running
        assert "shutting down" in running.details.lower(), running
        assert "Cancelling all calls" not in running.details
        assert all(call.ended_at < running.ended_at for call in waiting)
        # A lower bound, which load only lengthens: `began` precedes the shutdown and its 3 s of grace.
        assert running.ended_at - began > 2.0, "the running job did not get its grace period"
        stopper.join(60)
        assert not stopper.is_alive(), "shutdown() did not return"
    finally:
        session.close()
        if stopper.ident is None:
            shutdown()


# ---- general faults --------------------------------------------------------------------------


PHASES = ["before-parameters", "mid-upload", "queued", "running", "result"]


@pytest.mark.parametrize("phase", PHASES)
def test_a_dropped_client_leaves_the_server_idle(
    server: str, session: Session, log: pytest.LogCaptureFixture, phase: str
):
    assert wait_idle(server)
    channel = grpc.insecure_channel(server)
    blocker = None
    big = noise(700, 700, 4, seed=3).tobytes()  # ~1.9 MB: the result takes two chunks
    try:
        if phase == "before-parameters":
            call = Call(channel, timeout=60)  # opened, nothing sent
        elif phase == "mid-upload":
            call = Call(channel, timeout=60).parameters(parameters(rgba_header(700, 700), ["style-a"]))
            call.chunk(0, big[: 1 << 20])
            assert call.wait_sent(30)
        elif phase == "queued":
            blocker = long_job(session, server)
            call = Call(channel, timeout=60).parameters(tiny_params()).upload(0, tiny_content()).close()
            assert call.wait_event("queued", 30) is not None, call
        elif phase == "running":
            call = Call(channel, timeout=60).parameters(tiny_params(side=64, **LONG))
            call.upload(0, tiny_content(64)).close()
            assert call.wait_event("started", 30) is not None, call
        else:
            call = Call(channel, timeout=60).parameters(parameters(rgba_header(700, 700), ["style-a"]))
            call.upload(0, big).close()
            assert call.wait_event("result", 60) is not None, call
    finally:
        channel.close()
    job_id = call.job_id()
    if blocker is not None:
        blocker.cancel()
    assert wait_idle(server), f"the server is busy after a client dropped at {phase}"
    assert_next_job_succeeds(server)
    if job_id and phase != "result":
        mine = [line for line in job_lines(log.records) if f"id={job_id} " in line]
        assert not [line for line in mine if outcome(line) == "ok"], mine
    assert not errors(log.records)


def test_eight_concurrent_clients_get_their_own_results(server: str, log: pytest.LogCaptureFixture):
    assert wait_idle(server)
    rng = np.random.default_rng(42)
    sizes = [(int(rng.integers(17, 65)), int(rng.integers(17, 65))) for _ in range(8)]
    results: dict[int, tuple] = {}

    def client(index: int) -> None:
        width, height = sizes[index]
        pixels = noise(width, height, 4, seed=index)
        with grpc.insecure_channel(server, options=OWN_CONNECTION) as channel:
            params = parameters(rgba_header(width, height), [STYLES[index % 3]], size=24, iterations=2)
            call = stylize(channel, params, [pixels.tobytes()], timeout=120)
        results[index] = (call, pixels)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(150)
    assert len(results) == 8
    for index, (call, pixels) in results.items():
        assert call.code == OK, call
        header, data = call.result()
        width, height = sizes[index]
        assert (header.width, header.height) == (width, height)
        out = np.frombuffer(data, np.uint8).reshape(height, width, 4)
        assert np.array_equal(out[:, :, 3], pixels[:, :, 3])
    assert not errors(log.records)


def test_a_soak_of_tiny_jobs_keeps_memory_flat(server: str, log: pytest.LogCaptureFixture):
    assert wait_idle(server)
    params = tiny_params()
    content = tiny_content()
    baseline = None
    with grpc.insecure_channel(server) as channel:
        for index in range(1, 201):
            call = stylize(channel, params, [content], timeout=60)
            assert call.code == OK, (index, call)
            if index == 50:
                baseline = rss_bytes()
    grown = rss_bytes() - baseline
    assert grown < 60 << 20, f"RSS grew by {grown / 2**20:.0f} MiB over 150 tiny jobs"
    assert not errors(log.records)
    assert len([line for line in job_lines(log.records) if outcome(line) == "ok"]) >= 200


# ---- 13. the second hostile probe -----------------------------------------------------------

SAVES_UNDER_ONE_ID = {
    "two uploads, one name": (["Dupe One", "Dupe One"], 2),
    "one upload chosen twice": (["Dupe Two", "Dupe Two"], 1),
    "two names, one id": (["Dupe Three", "dupe-three"], 2),
}


@pytest.mark.parametrize("case", list(SAVES_UNDER_ONE_ID))
def test_two_saves_under_one_id_are_refused_before_anything_is_saved(
    fault_cache: Path, tmp_path: Path, styles_dir: Path, session: Session, case: str
):
    names, upload_count = SAVES_UNDER_ONE_ID[case]
    folder = tmp_path / "styles"
    shutil.copytree(styles_dir, folder)
    styles = [encode(gradient(40, 32, seed=seed), "PNG") for seed in range(upload_count)]
    params = parameters(rgba_header(16, 16), uploads=[encoded_header(style) for style in styles])
    del params.styles[:]
    for index, name in enumerate(names):
        params.styles.add(upload=index % upload_count, save_as_preset=name)
    with serving(fault_cache, "--styles-dir", str(folder)) as address:
        channel = session.channel(address)
        call = stylize(channel, params, [tiny_content(), *styles])
        assert call.code == INVALID, call
        assert "own name" in call.details, call
        listed = {s.id for s in stub(channel).ListStyles(pb.ListStylesRequest(), timeout=30).styles}
        assert not {"dupe-one", "dupe-two", "dupe-three"} & listed, listed
    assert {path.name for path in folder.iterdir()} == {path.name for path in styles_dir.iterdir()}


def service_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="impasto.service")
    return caplog


@pytest.fixture(scope="module")
def one_call_server(fault_cache: Path, styles_dir: Path) -> Iterator[str]:
    """One Stylize call at a time, and 3 s (plus 1 MiB a second) for each write of an answer."""
    flags = ("--max-streams", "1", "--download-timeout", "3", "--min-download-rate", "1MiB")
    with serving(fault_cache, "--styles-dir", str(styles_dir), *flags) as address:
        yield address


def stalled_reader(session: Session, address: str, log: pytest.LogCaptureFixture) -> Call:
    """A call whose job has finished with a 16 MB result that its client never reads."""
    side = 2000
    call = session.call(session.channel(address), timeout=300, read=False)
    call.parameters(parameters(rgba_header(side, side), ["style-a"], size=32, iterations=2))
    call.upload(0, noise(side, side, 4, seed=5).tobytes()).close()
    finished = lambda: any(outcome(line) == "ok" for line in job_lines(log.records))  # noqa: E731
    assert wait_until(finished, 120), "the stalled client's job did not finish"
    return call


def served_once_free(session: Session, address: str, timeout: float) -> bool:
    """True once a tiny job of another client has been served (it is refused while the slot is held)."""
    return wait_until(lambda: tiny_job(session.channel(address)).code == OK, timeout, interval=0.25)


def test_a_client_that_stops_reading_is_ended_and_frees_its_slot(
    one_call_server: str, session: Session, log: pytest.LogCaptureFixture
):
    service_log(log)
    assert wait_idle(one_call_server)
    stalled_reader(session, one_call_server, log)
    # Before the fix the server waited on the stalled client forever, and every other client was refused.
    assert served_once_free(session, one_call_server, 60), "the stalled call still holds the only slot"
    said = [r.getMessage() for r in log.records if r.name == "impasto.service" and r.levelno == logging.INFO]
    assert any("did not read" in line for line in said), said
    assert not errors(log.records)


def test_a_client_leaving_while_its_answer_is_blocked_is_one_info_line(
    one_call_server: str, session: Session, log: pytest.LogCaptureFixture
):
    service_log(log)
    assert wait_idle(one_call_server)
    stalled = stalled_reader(session, one_call_server, log)
    stalled.cancel()
    assert served_once_free(session, one_call_server, 60)
    assert not errors(log.records), errors(log.records)
    gone = [r for r in log.records if r.name == "impasto.service" and "went away" in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelno == logging.INFO, [r.getMessage() for r in log.records]


@pytest.mark.parametrize("stopping", [False, True])
def test_a_client_leaving_that_cancels_the_handler_is_the_same_one_line(
    stopping: bool, caplog: pytest.LogCaptureFixture
):
    """The race behind the test above, forced: where gRPC sees the client leave before the blocked write
    fails, it cancels the handler instead, and the operator must still read the line (seen once, in a
    whole-suite run under load). A server that is stopping cancels its handlers too: no client left then."""

    class LeavingClient:
        async def write(self, message) -> None:
            raise asyncio.CancelledError()

    async def answer() -> None:
        jobs = SimpleNamespace(limits=Limits(), queue=None)
        servicer = StyleTransferServicer(jobs)
        if stopping:
            servicer.closing.set()
        events: asyncio.Queue = asyncio.Queue()
        events.put_nowait(Result(ResultImage(bytes(16 * 16 * 4), 16, 16)))
        with pytest.raises(asyncio.CancelledError):
            await servicer._send_events(SimpleNamespace(id="1a2b"), events, LeavingClient())

    caplog.set_level(logging.INFO, logger="impasto.service")
    asyncio.run(answer())
    gone = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(gone) == (0 if stopping else 1) and all(r.levelno == logging.INFO for r in gone), gone


def test_a_client_that_reads_slowly_gets_the_newest_progress_and_preview_not_a_backlog():
    """A job reports up to 20 times a second and sends previews of hundreds of kB; a client on a slow
    link used to be sent every one of them, in order, while the rest piled up in the server's memory."""

    class SlowClient:
        def __init__(self, events: asyncio.Queue):
            self.events, self.written = events, []

        async def write(self, message) -> None:
            self.written.append(message.WhichOneof("event"))
            if len(self.written) == 1:  # the job goes on while the first message crawls to the client
                for number in range(1, 41):
                    self.events.put_nowait(progress(number / 40))
                    if number % 10 == 0:
                        self.events.put_nowait(Preview(b"png", 8, 8, number / 40))
                self.events.put_nowait(Result(ResultImage(bytes(8 * 8 * 4), 8, 8)))

    def progress(fraction: float) -> Progress:
        return Progress(fraction, 1, 1, 1, 1, 0.0, 0.0, 0.0, 1.0, 1.0)

    async def answer() -> list[str]:
        servicer = StyleTransferServicer(SimpleNamespace(limits=Limits(), queue=None))
        events: asyncio.Queue = asyncio.Queue()
        client = SlowClient(events)
        events.put_nowait(progress(0.0))
        await servicer._send_events(SimpleNamespace(id="1a2b"), events, client)
        return client.written

    written = asyncio.run(answer())
    assert written[:3] == ["progress", "progress", "preview"] and set(written[3:]) == {"result"}, written


def test_silent_streams_lock_a_sending_user_out_for_seconds_at_most(
    fault_cache: Path, styles_dir: Path, session: Session
):
    with serving(fault_cache, "--styles-dir", str(styles_dir), "--max-streams", "8") as address:
        silent = [session.call(session.channel(address), timeout=120) for _ in range(40)]
        assert wait_until(lambda: sum(call.done for call in silent) >= 32, 30), silent[:3]
        held = [call for call in silent if not call.done]
        began = time.monotonic()
        assert served_once_free(session, address, 60), "a sending user was never served"
        locked_out = time.monotonic() - began
        # The parameters' own deadline (5 s by default) ends the silent streams; before, the upload's 30 s.
        assert locked_out < 15, f"a sending user was locked out for {locked_out:.0f} s"
        for call in held:
            assert call.wait(30) == DEADLINE and "parameters" in call.details, call
