"""impasto-server on an ephemeral loopback port, driven by the real gRPC client."""

from __future__ import annotations

import io
import logging
import math
import re
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from helpers import interrupt_stylize, running_server, self_signed, start_long_job
from impasto.client import Client
from impasto.engine import Engine
from impasto.engine.learned_costs import FILE_NAME as LEARNED_COSTS
from impasto.jobs import queue as job_queue
from impasto.launcher import EXIT_PORT_IN_USE
from impasto.protocol import (
    NO_PREVIEWS,
    Image,
    ImageHeader,
    ImpastoError,
    Kind,
    Preview,
    Progress,
    Queued,
    Settings,
    StyleChoice,
)
from impasto.service import idle as idle_module
from impasto.v1 import impasto_pb2 as pb
from impasto.v1 import impasto_pb2_grpc
from PIL import Image as PILImage
from wire import job_lines, outcome

FAST = Settings(size=48, iterations=4, preview_seconds=NO_PREVIEWS)


# Explicit, so that the limit does not follow this machine's RAM: the 24-megapixel test needs it.
MAX_PIXELS = 25_000_000


@pytest.fixture(scope="module")
def server(images: Path) -> Iterator[str]:
    flags = ("--styles-dir", str(images / "styles"), "--grace-seconds", "1", "--max-pixels", str(MAX_PIXELS))
    with running_server(*flags) as address:
        yield address


def rgba(path: Path) -> tuple[Image, np.ndarray]:
    picture = PILImage.open(path).convert("RGBA")
    pixels = np.array(picture)
    return Image(pixels.tobytes(), picture.width, picture.height), pixels


def wait_until(condition, timeout: float) -> bool:
    """Polls `condition` until it holds or `timeout` passes: a deadline, not a sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def idle(address: str) -> bool:
    with Client(address) as client:
        info = client.info()
    return info.running_jobs == 0 and info.queue_length == 0


def run_job(
    address: str,
    content: Image,
    styles: list[StyleChoice],
    settings: Settings = FAST,
    uploads: list[Image] = (),
    **client_args,
):
    with Client(address, **client_args) as client:
        job = client.stylize(content, styles, settings, uploads)
        events = list(job.events())
    return events, job.result


def status_of(
    address: str, content: Image, styles: list[StyleChoice], settings: Settings = FAST
) -> ImpastoError:
    with pytest.raises(ImpastoError) as caught:
        run_job(address, content, styles, settings)
    return caught.value


def test_info(server: str, capsys: pytest.CaptureFixture[str]):
    from impasto.cli import main

    with Client(server) as client:
        info = client.info()
    assert info.device.kind == "cpu" and info.device.memory_bytes > 0
    assert info.weights == "vgg19-original"
    assert info.limits.max_pixels == MAX_PIXELS and info.limits.max_queue == 8
    assert info.default_size == 384 and info.protocol_version == pb.PROTOCOL_VERSION_CURRENT
    assert info.default_iterations == 40  # a CPU's (engine/device.py): a 12-megapixel photo in a minute
    assert info.limits.full_size
    assert info.idle_exit_minutes == 0
    assert main(["info", "--server", server]) == 0
    out = capsys.readouterr().out
    assert "full size: yes" in out and "idle exit: never" in out


def test_info_says_when_the_server_cannot_paint_at_full_size(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """Limits.full_size follows the jobs layer's: False, and a full-size job is refused, not ignored."""
    from impasto.cli import main

    with running_server("--styles-dir", str(images / "styles"), full_size=False) as address:
        with Client(address) as client:
            assert not client.info().limits.full_size
        assert main(["info", "--server", address]) == 0
        assert "full size: no" in capsys.readouterr().out
        content, _ = rgba(images / "content" / "chelsea.png")
        refused = status_of(address, content, [StyleChoice(preset_id="udnie")], replace(FAST, full_size=True))
        # The CLI asks before it sends: a server older than full_size would ignore it, not refuse it.
        out = tmp_path / "out.png"
        chelsea = str(images / "content" / "chelsea.png")
        code = main(
            ["stylize", chelsea, "--style", "udnie", "--size", "full", "--server", address, "-o", str(out)]
        )
    assert refused.kind.status == "INVALID_ARGUMENT" and "full size" in str(refused), refused
    assert code == 1 and not out.exists()
    assert (
        f"the server at {address} is not compatible with this client: it cannot paint at the content's full "
        "size (an older impasto-server); update it" in capsys.readouterr().err
    )


def test_health_service_says_serving(server: str):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="impasto.v1.StyleTransfer")
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_styles_lists_the_folder_with_thumbnails(server: str):
    with Client(server) as client:
        presets = {p.id: p for p in client.styles()}
        thumbnail = PILImage.open(io.BytesIO(client.thumbnail("starry-night")))
    user_presets = {p.id for p in presets.values() if not p.builtin}
    assert len(user_presets) == 8 and len(presets) >= 10
    assert max(thumbnail.size) == 256


def test_stylize_end_to_end(server: str, images: Path):
    content, pixels = rgba(images / "odd" / "rgba-640x480-transparent.png")
    events, result = run_job(
        server,
        content,
        [StyleChoice(preset_id="starry-night")],
        Settings(size=64, iterations=6, preview_seconds=0.05),
    )
    kinds = [type(e).__name__.lower() for e in events]
    assert kinds[0] == "queued" and kinds[1] == "started"
    started = events[1]
    assert started.estimated_seconds > 0 and started.estimated_memory_bytes > 64 * 43 * 1000
    assert (started.scales, started.iterations_per_scale, started.total_iterations) == (1, 6, 6)
    assert (started.working_width, started.working_height) == (64, 48)
    fractions = [e.fraction for e in events if isinstance(e, Progress)]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 1 <= len(fractions) <= 6
    previews = [e for e in events if isinstance(e, Preview)]
    assert previews and max(PILImage.open(io.BytesIO(previews[-1].png)).size) == 64
    assert (result.width, result.height, result.encoded) == (640, 480, False)
    out = np.frombuffer(result.data, np.uint8).reshape(480, 640, 4)
    assert np.array_equal(out[:, :, 3], pixels[:, :, 3])  # alpha byte for byte
    opaque = pixels[:, :, 3] > 0
    assert np.abs(out[opaque, :3].astype(int) - pixels[opaque, :3]).mean() > 5


def test_progress_reaches_the_client_a_few_times_a_second_and_at_the_end(server: str, images: Path):
    content, _ = rgba(images / "content" / "camera.png")
    started = time.monotonic()
    events, _ = run_job(
        server, content, [StyleChoice(preset_id="udnie")], replace(FAST, size=24, iterations=300)
    )
    seconds = time.monotonic() - started
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[-1].fraction == 1.0 and progress[-1].iteration == 300
    # Throttled: at most one event per interval (and the last), however fast the iterations run.
    assert len(progress) <= seconds / job_queue.PROGRESS_INTERVAL_SECONDS + 2


def test_uploaded_style_and_encoded_content(server: str, images: Path):
    content = Image.from_file(images / "content" / "coffee.png")
    style = Image.from_file(images / "styles" / "udnie.jpg")
    styles = [StyleChoice(upload=0, weight=0.5), StyleChoice(preset_id="the-scream")]
    _, result = run_job(server, content, styles, uploads=[style])
    assert (
        result.encoded
        and PILImage.open(io.BytesIO(result.data)).size
        == PILImage.open(images / "content" / "coffee.png").size
    )


def last_outcome(caplog: pytest.LogCaptureFixture) -> str | None:
    """The outcome of the last job the server logged ("ok", "cancelled", …), None before any."""
    lines = job_lines(caplog.records)
    return outcome(lines[-1]) if lines else None


def test_cancel_frees_the_worker(server: str, images: Path, caplog: pytest.LogCaptureFixture):
    """Stopped, not finished (test_stylize: within an iteration), and the worker is free for the next."""
    caplog.set_level(logging.INFO, logger="impasto.jobs")
    content, _ = rgba(images / "content" / "camera.png")
    with Client(server) as client:
        job = client.stylize(
            content,
            [StyleChoice(preset_id="udnie")],
            Settings(size=64, iterations=5000, preview_seconds=NO_PREVIEWS),
        )
        with pytest.raises(ImpastoError) as caught:
            for event in job.events():
                if isinstance(event, Progress):
                    job.cancel()
        assert caught.value.kind.status == "CANCELLED"
    assert wait_until(lambda: idle(server), timeout=120)
    assert last_outcome(caplog) == "cancelled", job_lines(caplog.records)
    _, result = run_job(server, content, [StyleChoice(preset_id="udnie")])
    assert result.width == content.width


CLIENT_THAT_DIES = """
import sys
from impasto.client import Client
from impasto.protocol import NO_PREVIEWS, Image, Progress, Settings, StyleChoice
data = open(sys.argv[2], "rb").read()
job = Client(sys.argv[1]).stylize(Image(data, encoded=True), [StyleChoice(preset_id="udnie")],
                                  Settings(size=64, iterations=5000, preview_seconds=NO_PREVIEWS))
for event in job.events():
    if isinstance(event, Progress):
        print("running", flush=True)
"""


def test_dropped_connection_cancels_the_job(server: str, images: Path, caplog: pytest.LogCaptureFixture):
    """GIMP's Cancel SIGKILLs the plug-in: the server must notice and stop the job."""
    caplog.set_level(logging.INFO, logger="impasto.jobs")
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT_THAT_DIES, server, str(images / "content" / "camera.png")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdout.readline().strip() == "running"
    with Client(server) as observer:
        assert observer.info().running_jobs == 1
    client.kill()
    client.wait()
    assert wait_until(lambda: idle(server), timeout=120), "the job outlived its client"
    assert last_outcome(caplog) == "cancelled", job_lines(caplog.records)
    content, _ = rgba(images / "content" / "camera.png")
    _, result = run_job(server, content, [StyleChoice(preset_id="udnie")])
    assert result.height == content.height


def test_four_concurrent_clients_all_complete(server: str, images: Path):
    content, _ = rgba(images / "content" / "chelsea.png")
    results: dict[int, Image] = {}
    errors: list[BaseException] = []

    def one(index: int) -> None:
        try:
            results[index] = run_job(server, content, [StyleChoice(preset_id="water-lilies")])[1]
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and sorted(results) == [0, 1, 2, 3]
    assert all((r.width, r.height) == (content.width, content.height) for r in results.values())


def test_full_queue_is_refused_with_the_limit(images: Path):
    content, _ = rgba(images / "content" / "camera.png")
    long_job = Settings(size=64, iterations=5000, preview_seconds=NO_PREVIEWS)
    with (
        running_server("--styles-dir", str(images / "styles"), "--max-queue", "1") as address,
        Client(address) as first,
        Client(address) as second,
    ):
        running = first.stylize(content, [StyleChoice(preset_id="udnie")], long_job)
        running_events = running.events()
        assert isinstance(next(running_events), Queued)
        waiting = second.stylize(content, [StyleChoice(preset_id="udnie")], long_job)
        assert next(waiting.events()).position == 1
        error = status_of(address, content, [StyleChoice(preset_id="udnie")])
        assert error.kind.status == "RESOURCE_EXHAUSTED" and "1 waiting" in str(error)
        running.cancel()
        waiting.cancel()


def test_a_job_too_big_for_free_memory_is_refused_with_a_size_that_fits(images: Path, monkeypatch):
    content, _ = rgba(images / "content" / "camera.png")
    monkeypatch.setattr(job_queue, "free_memory_bytes", lambda device: 1 << 20)
    with running_server("--styles-dir", str(images / "styles")) as address:
        error = status_of(address, content, [StyleChoice(preset_id="udnie")], replace(FAST, size=64))
        assert error.kind.status == "RESOURCE_EXHAUSTED" and "0.0 GiB are free" in str(error)
        fits = int(re.search(r"at most (\d+) px", str(error))[1])
        assert 16 <= fits < 64
        _, result = run_job(address, content, [StyleChoice(preset_id="udnie")], replace(FAST, size=fits))
        assert (result.width, result.height) == (content.width, content.height)


def test_a_budget_too_small_for_worthwhile_tiles_is_refused_naming_one_that_works(images: Path):
    content, _ = rgba(images / "content" / "camera.png")
    with running_server("--styles-dir", str(images / "styles"), "--memory-budget", str(1 << 20)) as address:
        error = status_of(address, content, [StyleChoice(preset_id="udnie")], replace(FAST, size=64))
        assert error.kind is Kind.OUT_OF_MEMORY and "memory budget is 1 MiB" in str(error), error
        assert re.search(r"allow it at least \d+ MiB", str(error)), error


def test_running_out_of_device_memory_mid_job_is_resource_exhausted(images: Path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    content, _ = rgba(images / "content" / "camera.png")
    with running_server("--styles-dir", str(images / "styles")) as address:
        monkeypatch.setattr(Engine, "stylize", out_of_memory)
        error = status_of(address, content, [StyleChoice(preset_id="udnie")])
        assert error.kind.status == "RESOURCE_EXHAUSTED" and "smaller working size" in str(error)
        monkeypatch.undo()
        _, result = run_job(address, content, [StyleChoice(preset_id="udnie")])
        assert result.width == content.width


def png_header_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = struct.pack(">I", 0) + b"IDAT" + struct.pack(">I", zlib.crc32(b"IDAT"))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + idat


@pytest.mark.parametrize(
    "name", ["gray16-300x200.png", "pixel-1x1.png", "rgba-640x480-transparent.png", "wide-4000x300.jpg"]
)
def test_odd_images_are_stylised_at_their_own_size(server: str, images: Path, name: str):
    path = images / "odd" / name
    _, result = run_job(server, Image.from_file(path), [StyleChoice(preset_id="udnie")])
    assert PILImage.open(io.BytesIO(result.data)).size == PILImage.open(path).size


BAD_REQUESTS = {
    "corrupt bytes": (
        Image(b"definitely not an image", encoded=True),
        {},
        "INVALID_ARGUMENT",
        "not a readable image",
    ),
    "truncated png": ("truncated", {}, "INVALID_ARGUMENT", "not a readable image"),
    "zero-size encoded": (Image(b"", encoded=True), {}, "INVALID_ARGUMENT", "empty"),
    "zero-size raw": (Image(b"", 0, 0), {}, "INVALID_ARGUMENT", "0×0"),
    "raw header 100000x100000": (Image(b"\0" * 16, 100_000, 100_000), {}, "RESOURCE_EXHAUSTED", "limit"),
    "png header 100000x100000": (
        Image(png_header_claiming(100_000, 100_000), encoded=True),
        {},
        "RESOURCE_EXHAUSTED",
        "limit",
    ),
    "raw bytes short of header": (Image(b"\0" * 10, 4, 4), {}, "INVALID_ARGUMENT", "64 bytes"),
    "unknown style": ("ok", {"preset": "no-such-painting"}, "NOT_FOUND", "no-such-painting"),
    "path traversal": ("ok", {"preset": "../styles/udnie"}, "INVALID_ARGUMENT", "not a preset id"),
    "negative strength": ("ok", {"strength": -1.0}, "INVALID_ARGUMENT", "strength"),
    "NaN strength": ("ok", {"strength": math.nan}, "INVALID_ARGUMENT", "strength"),
    "NaN style scale": ("ok", {"style_scale": math.nan}, "INVALID_ARGUMENT", "style scale"),
    "huge working size": ("ok", {"size": 1_000_000}, "RESOURCE_EXHAUSTED", "limit"),
    "absurd iterations": ("ok", {"iterations": 4_000_000_000}, "INVALID_ARGUMENT", "iterations"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_precise_status_and_the_server_carries_on(server: str, images: Path, case: str):
    content, change, code, message = BAD_REQUESTS[case]
    change = dict(change)
    good = Image.from_file(images / "content" / "camera.png")
    if content == "ok":
        content = good
    elif content == "truncated":
        content = Image(good.data[: len(good.data) // 2], encoded=True)
    style = StyleChoice(preset_id=change.pop("preset", "udnie"))
    settings = Settings(**{**FAST.__dict__, **change})
    error = status_of(server, content, [style], settings)
    assert error.kind.status == code, error
    assert message in str(error)
    with Client(server) as client:
        assert client.info().running_jobs == 0  # still answering, nothing left running


def raw_call(address: str, requests: list[pb.StylizeRequest]) -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel:
        stub = impasto_pb2_grpc.StyleTransferStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Stylize(iter(requests)))
    return caught.value


def test_protocol_violations_are_invalid_arguments(server: str):
    header = pb.ImageHeader(format=pb.PIXEL_FORMAT_RGBA8, width=2, height=2, total_bytes=16)
    params = pb.StylizeRequest(
        parameters=pb.StylizeParameters(content=header, styles=[pb.StyleChoice(preset_id="udnie")])
    )
    chunk = pb.StylizeRequest(chunk=pb.Chunk(image=0, data=b"\0" * 16))
    cases = {
        "the first message must carry the parameters": [chunk],
        "parameters may be sent only once": [params, params],
        "names image 3": [params, pb.StylizeRequest(chunk=pb.Chunk(image=3, data=b"x"))],
        "more bytes than": [params, chunk, chunk],
        "ended after 0 of 16 bytes": [params],
    }
    for message, requests in cases.items():
        error = raw_call(server, requests)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.details(), (
            message,
            error,
        )


def test_a_24_megapixel_layer_round_trips(server: str):
    width, height = 6000, 4000
    rng = np.random.default_rng(0)
    pixels = np.empty((height, width, 4), np.uint8)
    pixels[:, :, :3] = 128
    pixels[:, :, 3] = rng.integers(0, 256, (height, width), dtype=np.uint8)
    _, result = run_job(
        server,
        Image(pixels.tobytes(), width, height),
        [StyleChoice(preset_id="udnie")],
        Settings(size=32, iterations=1, preview_seconds=NO_PREVIEWS),
    )
    out = np.frombuffer(result.data, np.uint8).reshape(height, width, 4)
    assert np.array_equal(out[:, :, 3], pixels[:, :, 3])


def test_token_is_required_and_checked(images: Path):
    with running_server("--styles-dir", str(images / "styles"), token="s3cret") as address:
        for token, expected in [
            (None, "no token was sent"),
            ("guess", "the token sent is not this server's"),
        ]:
            with Client(address, token=token or "") as client, pytest.raises(ImpastoError) as caught:
                client.info()
            assert caught.value.kind.status == "UNAUTHENTICATED" and expected in str(caught.value)
            with pytest.raises(ImpastoError) as caught:
                run_job(
                    address,
                    Image.from_file(images / "content" / "camera.png"),
                    [StyleChoice(preset_id="udnie")],
                    token=token or "",
                )
            assert caught.value.kind.status == "UNAUTHENTICATED"
        with Client(address, token="s3cret") as client:
            assert client.info().weights == "vgg19-original"


def test_binding_beyond_loopback_without_token_refuses_to_start():
    result = subprocess.run(
        [sys.executable, "-m", "impasto.service.main", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2 and "without a token" in result.stderr


def test_tls_round_trip(tmp_path: Path, images: Path):
    cert, key = self_signed(tmp_path)
    with running_server(
        "--styles-dir", str(images / "styles"), "--tls-cert", str(cert), "--tls-key", str(key)
    ) as address:
        port = address.rsplit(":", 1)[1]
        with Client(f"localhost:{port}", tls_ca=cert) as client:
            assert client.info().weights == "vgg19-original"
        _, result = run_job(
            f"localhost:{port}",
            Image.from_file(images / "content" / "camera.png"),
            [StyleChoice(preset_id="udnie")],
            tls_ca=cert,
        )
        assert result.width == PILImage.open(images / "content" / "camera.png").width
        with Client(f"localhost:{port}", timeout=3) as plaintext, pytest.raises(ImpastoError):
            plaintext.info()


def test_unreachable_server_names_the_address_and_the_fix():
    with Client("127.0.0.1:9", timeout=3) as client, pytest.raises(ImpastoError) as caught:
        client.info()
    assert "127.0.0.1:9" in str(caught.value) and "impasto-server" in caught.value.sentence("cli")


def start_server_process(*flags: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "impasto.service.main", "--port", "0", "--device", "cpu", *flags],
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stderr:
        if "listening on" in line:
            return process, line.split("listening on ", 1)[1].split()[0]
    raise AssertionError(f"the server did not start (exit code {process.wait()})")


def test_sigterm_cancels_running_jobs_after_the_grace_period_and_exits_0(images: Path):
    process, address = start_server_process("--styles-dir", str(images / "styles"), "--grace-seconds", "1")
    try:
        with Client(address) as client:
            _, events = start_long_job(client, images / "content" / "camera.png")
            process.terminate()
            with pytest.raises(ImpastoError) as caught:
                list(events)
            assert caught.value.kind.status == "UNAVAILABLE" and "shutting down" in str(caught.value)
        assert process.wait(timeout=30) == 0
        log = process.stderr.read()
        assert "outcome=unavailable" in log and "stopped" in log
    finally:
        process.kill()


def test_idle_time_counts_from_the_last_call_or_job(monkeypatch: pytest.MonkeyPatch):
    now = [100.0]
    monkeypatch.setattr(idle_module.time, "monotonic", lambda: now[0])
    jobs_pending = [False]
    activity = idle_module.Activity(lambda: jobs_pending[0])
    now[0] = 130.0
    assert activity.idle_seconds() == 30
    with activity.call():
        now[0] = 200.0
        assert activity.idle_seconds() == 0  # an open call (a Stylize call lasts as long as its job)
    now[0] = 210.0
    assert activity.idle_seconds() == 10  # from the end of the call
    jobs_pending[0] = True  # a job outliving its call, or waiting
    assert activity.idle_seconds() == 0
    jobs_pending[0] = False
    now[0] = 215.0
    assert activity.idle_seconds() == 5


def test_idle_exit_waits_for_a_running_job_then_ends_the_server(images: Path, capsys):
    from impasto.cli import main

    idle_minutes = 0.02  # 1.2 s
    process, address = start_server_process("--styles-dir", str(images / "styles"), "--idle-exit", "0.02")
    try:
        assert main(["info", "--server", address]) == 0
        assert "idle exit: after 0.02 minutes unused" in capsys.readouterr().out
        with Client(address) as client:
            job, events = start_long_job(client, images / "content" / "camera.png")
            for event in events:  # the job outlasts the idle time three times over
                if isinstance(event, Progress) and event.elapsed_seconds > 3 * idle_minutes * 60:
                    break
            assert process.poll() is None, "the server ended while a job was running"
            job.cancel()
        assert process.wait(timeout=120) == 0
        log = process.stderr.read()
        assert "outcome=cancelled" in log
        assert "no call and no job for 0.02 minutes (--idle-exit 0.02): shutting down" in log
    finally:
        process.kill()


def test_calls_keep_an_idle_exit_server_running(images: Path):
    idle_seconds = 3.0
    process, address = start_server_process("--styles-dir", str(images / "styles"), "--idle-exit", "0.05")
    try:
        with Client(address) as client:
            first = time.monotonic()
            while (last_call := time.monotonic()) - first < 2 * idle_seconds:
                client.info()  # each would fail once the server had gone
                time.sleep(0.1)
        assert process.wait(timeout=120) == 0
        assert time.monotonic() - last_call >= idle_seconds
    finally:
        process.kill()


def test_a_new_server_plans_at_the_pace_the_last_one_measured(images: Path, cache_dir: Path):
    """The plug-in's own server ends itself when unused; the next one quotes the first job at the pace
    the last one measured on this machine (at its start, then by its jobs), not at the first guess's
    (fitted on another), and measures nothing itself."""
    header = ImageHeader("rgba8", 1200 * 900 * 4, 1200, 900)
    styles = [StyleChoice(preset_id="udnie")]
    content, _ = rgba(images / "content" / "camera.png")
    flags = ("--styles-dir", str(images / "styles"))
    process, address = start_server_process(*flags)
    try:
        with Client(address) as client:
            # A server on a machine where no job has run yet measures its pace before it listens.
            assert (cache_dir / LEARNED_COSTS).is_file()
            measured = client.plan(header, styles)
            run_job(address, content, styles)
            learned = client.plan(header, styles)
        process.terminate()
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    assert learned.estimated_seconds != measured.estimated_seconds
    process, address = start_server_process(*flags)
    try:
        with Client(address) as client:
            planned = client.plan(header, styles)
        assert (planned.scales, planned.estimated_seconds) == (learned.scales, learned.estimated_seconds)
    finally:
        process.kill()


def test_a_server_logs_the_pace_it_plans_at_and_where_that_came_from(
    images: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="impasto.server")
    for _ in range(2):
        with running_server("--styles-dir", str(images / "styles")):
            pass
    said = [r.getMessage() for r in caplog.records if " ready in " in r.getMessage()]
    pace = r"cpu ready in \d+\.\d s; plans at (\d+\.\d ms a pass \+ \d+\.\d+ µs a pixel-iteration), "
    first, second = (re.fullmatch(pace + r"(.+)", line) for line in said)
    assert first and second, said
    assert first[2] == "measured now" and second[2] == f"as kept in {cache_dir / LEARNED_COSTS}", said
    assert first[1] == second[1], said


def test_a_gpu_too_full_to_measure_its_pace_at_start_still_serves(
    images: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """Other programs may fill a GPU while the server starts: it says so and serves; its jobs then plan
    at the first guess until one has run, and tile or refuse what does not fit, as always."""

    def out_of_memory(engine: Engine, *args) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(Engine, "measure_pace", out_of_memory)
    caplog.set_level(logging.WARNING, logger="impasto.server")
    content, _ = rgba(images / "content" / "camera.png")
    with running_server("--styles-dir", str(images / "styles")) as address:
        _, result = run_job(address, content, [StyleChoice(preset_id="udnie")])
    assert result is not None and (result.width, result.height) == (content.width, content.height)
    warned = [r.getMessage() for r in caplog.records if "measure its pace" in r.getMessage()]
    assert warned == [
        "cpu: too little free memory to warm up and measure its pace (CUDA out of memory. Tried to allocate "
        "2.00 GiB); the first job will pay the set-up and is planned from a guess"
    ], warned


def test_a_second_server_on_the_same_port_refuses_to_start(server: str):
    """gRPC would let both listen and share the calls at random; the second one must say so instead."""
    port = server.rsplit(":", 1)[1]
    result = subprocess.run(
        [sys.executable, "-m", "impasto.service.main", "--port", port, "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == EXIT_PORT_IN_USE
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in result.stderr


def test_cli_over_the_network(server: str, images: Path, tmp_path: Path, capsys):
    from impasto.cli import main

    out = tmp_path / "remote.png"
    code = main(
        [
            "stylize",
            str(images / "content" / "chelsea.png"),
            "--style",
            "starry-night",
            "--style",
            str(images / "styles" / "udnie.jpg"),
            "-o",
            str(out),
            "--size",
            "48",
            "--iterations",
            "3",
            "--server",
            server,
            "--quiet",
        ]
    )
    assert code == 0 and PILImage.open(out).size == PILImage.open(images / "content" / "chelsea.png").size
    assert main(["styles", "--server", server]) == 0
    assert "great-wave-off-kanagawa" in capsys.readouterr().out
    assert main(["info", "--server", "127.0.0.1:9"]) == 1
    error = capsys.readouterr().err
    assert "127.0.0.1:9" in error and "impasto-server" in error


def test_ctrl_c_in_the_cli_cancels_the_job_on_the_server(server: str, images: Path, tmp_path: Path):
    out = tmp_path / "out.png"
    code, stderr = interrupt_stylize(
        str(images / "content" / "camera.png"),
        "--style",
        "udnie",
        "-o",
        str(out),
        "--size",
        "64",
        "--iterations",
        "5000",
        "--server",
        server,
    )
    assert code == 130 and "cancelled" in stderr and not out.exists()
    for words in ("Locally cancelled", "CANCELLED", "UNKNOWN", "Cancelling all calls"):
        assert words not in stderr  # a sentence, not gRPC's words
    assert wait_until(lambda: idle(server), timeout=30)


def test_one_queue_feeds_a_worker_per_device(images: Path):
    """`--device cpu,cpu`: two workers, so two jobs run at once and a third waits for the first free one."""
    content, _ = rgba(images / "content" / "camera.png")
    long_job = replace(FAST, size=64, iterations=5000)
    with running_server("--styles-dir", str(images / "styles"), "--device", "cpu,cpu") as address:
        clients = [Client(address) for _ in range(4)]
        observer = clients.pop()
        assert [(d.device.kind, d.busy) for d in observer.info().devices] == [("cpu", False), ("cpu", False)]
        jobs, streams = [], []
        for client in clients:
            jobs.append(client.stylize(content, [StyleChoice(preset_id="udnie")], long_job))
            streams.append(jobs[-1].events())
            first = next(streams[-1])
            assert isinstance(first, Queued)
            if len(jobs) < 3:
                assert first.position == 0
                while not isinstance(next(streams[-1]), Progress):
                    pass
        assert first.position == 1  # both workers busy: one job must finish first
        info = observer.info()
        assert (info.running_jobs, info.queue_length) == (2, 1)
        assert [d.busy for d in info.devices] == [True, True]
        jobs[0].cancel()
        while not isinstance(next(streams[2]), Progress):  # the third starts on the freed worker
            pass
        for job in jobs:
            job.cancel()
        assert wait_until(lambda: idle(address), timeout=30)
        for client in [*clients, observer]:
            client.close()


def test_full_size_over_the_network_paints_at_the_contents_own_size(server: str, images: Path):
    content, _ = rgba(images / "content" / "chelsea.png")
    events, result = run_job(
        server, content, [StyleChoice(preset_id="udnie")], replace(FAST, full_size=True, iterations=2)
    )
    started = next(e for e in events if type(e).__name__ == "Started")
    assert (started.working_width, started.working_height) == (content.width, content.height)
    assert (result.width, result.height) == (content.width, content.height)
