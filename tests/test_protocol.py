"""The protocol every part shares: its types to the contract's messages and back, byte sizes as users
write them, and the client's promise that a job always ends."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import running_server
from impasto import client as client_module
from impasto.arguments import parse_bytes
from impasto.client import Client
from impasto.protocol import (
    KIND_KEY,
    NO_PREVIEWS,
    PREVIEW_SIDE,
    Device,
    DeviceState,
    Image,
    ImageHeader,
    ImpastoError,
    Info,
    Kind,
    Limits,
    Parameters,
    Preset,
    Preview,
    Progress,
    Queued,
    Settings,
    Started,
    StyleChoice,
    wire,
)
from impasto.v1 import impasto_pb2 as pb


def through_the_wire(message):
    return type(message).FromString(message.SerializeToString())


@pytest.mark.parametrize(
    "settings",
    [
        Settings(),
        Settings(strength=0.0, iterations=1, size=16, seed=0, style_scale=0.01, preview_seconds=0.05),
        Settings(strength=2.5, full_size=True, preserve_colors=True, seed=2**64 - 1),
        Settings(preview_seconds=NO_PREVIEWS),
    ],
)
def test_settings_cross_the_wire_unchanged_none_included(settings: Settings):
    parameters = Parameters(
        content=ImageHeader("rgba8", 16, 2, 2),
        styles=(StyleChoice(preset_id="udnie"), StyleChoice(upload=0, weight=0.0, save_as_preset="Mine")),
        uploads=(ImageHeader("encoded", 123),),
        settings=settings,
    )
    message = through_the_wire(wire.parameters_message(parameters))
    assert wire.parameters_from_message(message) == parameters


def test_a_setting_left_to_the_server_is_not_on_the_wire():
    """An older server reads an unset field as its own default, so None must not travel as a zero."""
    message = wire.parameters_message(Parameters(ImageHeader("encoded", 1), (StyleChoice(preset_id="a"),)))
    for name in ("strength", "iterations", "size", "seed", "style_scale", "preview_interval_seconds"):
        assert not message.HasField(name), name
    assert not message.styles[0].HasField("weight")


def test_no_previews_is_the_contracts_negative_interval():
    settings = Settings(preview_seconds=NO_PREVIEWS)
    parameters = Parameters(ImageHeader("encoded", 1), (StyleChoice(preset_id="a"),), settings=settings)
    assert wire.parameters_message(parameters).preview_interval_seconds < 0


def test_info_and_presets_and_events_cross_the_wire_unchanged():
    device = Device("cuda", "NVIDIA H200", 140 << 30, "bf16")
    info = Info(
        server_version="0.1.0",
        protocol_version=1,
        device=device,
        weights="vgg19-original",
        limits=Limits(max_size=8192, memory_budget=6 << 30, full_size=True),
        default_size=1024,
        default_iterations=100,
        queue_length=2,
        running_jobs=1,
        devices=(DeviceState(device, True), DeviceState(device, False)),
    )
    assert wire.from_message(through_the_wire(wire.to_message(info, pb.ServerInfo())), Info) == info
    preset = Preset("starry-night", "The Starry Night", "Vincent van Gogh", "1889", recommended_strength=1.5)
    assert wire.from_message(through_the_wire(wire.to_message(preset, pb.StylePreset())), Preset) == preset
    events = [
        Queued("j1", 3),
        Started("j1", device, 4, 100, 250, 1024, 683, 41.5, 3 << 30),
        Progress(0.5, 2, 4, 7, 50, 1.0, 2.0, 0.5, 12.0, 11.0, tile=3, tiles=9),
        Preview(b"\x89PNG...", 512, 341, 0.5),
    ]
    for event in events:
        assert wire.event_from_message(through_the_wire(wire.event_message(event))) == event


def test_a_result_is_chunked_and_put_back_together():
    image = Image(bytes(range(256)) * 10_000, 1600, 400)  # 2.56 MB: three chunks
    assembler = wire.ResultAssembler()
    for message in wire.result_messages(image):
        assert len(message.result.data) <= wire.CHUNK_BYTES
        assembler.add(through_the_wire(message).result)
    assert dataclasses.astuple(assembler.image) == dataclasses.astuple(image)


def test_an_older_servers_info_reads_as_its_limits_say():
    """Fields an older server does not send arrive as their zero: it cannot paint at full size."""
    info = wire.from_message(pb.ServerInfo(server_version="0.0.9"), Info)
    assert not info.limits.full_size and info.limits.memory_budget is None and info.devices == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("419430400", 419430400),
        ("400MiB", 400 << 20),
        ("400 MiB", 400 << 20),
        ("1.5GiB", 3 << 29),
        ("300MB", 300_000_000),
        ("2gb", 2_000_000_000),
        ("400M", 400 << 20),
        ("64k", 64 << 10),
    ],
)
def test_byte_sizes_take_units(text: str, expected: int):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "-1", "1e9", "400 parsecs", "4 00MiB"])
def test_anything_else_is_not_a_byte_size(text: str):
    with pytest.raises(ValueError, match="not a size in bytes"):
        parse_bytes(text)


def test_a_job_ends_whatever_goes_wrong_in_the_client(images: Path, monkeypatch: pytest.MonkeyPatch):
    """An unexpected failure while events arrive ends the job with an error instead of leaving
    `events()` waiting for ever."""

    def broken(message):
        raise RuntimeError("a defect while reading an event")

    monkeypatch.setattr(client_module.wire, "event_from_message", broken)
    outcome: list[BaseException] = []

    def follow() -> None:
        try:
            list(job.events())
        except BaseException as error:  # noqa: BLE001 - the test looks at what it was
            outcome.append(error)

    with running_server("--styles-dir", str(images / "styles")) as address, Client(address) as client:
        content = Image.from_file(images / "content" / "camera.png")
        job = client.stylize(content, [StyleChoice(preset_id="udnie")], Settings(size=32, iterations=1))
        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        follower.join(timeout=120)  # a guard only: the job ends as soon as the event arrives
        assert not follower.is_alive(), "events() never ended"
    assert isinstance(outcome[0], ImpastoError) and outcome[0].kind is Kind.CLIENT_BUG
    said = f"this program failed while talking to the server at {address}: RuntimeError"
    assert str(outcome[0]).startswith(said)
    assert "its log" not in str(outcome[0])  # the server's log knows nothing of a failure here


def test_a_refusal_sent_while_the_upload_goes_on_keeps_the_servers_words(images: Path):
    """The server refuses after the parameters, while the client is still sending a large image; grpclib
    then raises the status from the raw headers, and the kind must still be read there."""
    content = Image(bytes(2000 * 2000 * 4), 2000, 2000)  # 16 MB: sixteen chunks still to go
    with running_server("--styles-dir", str(images / "styles")) as address, Client(address) as client:
        for _ in range(10):
            job = client.stylize(content, [StyleChoice(preset_id="no-such-style")], Settings(size=32))
            with pytest.raises(ImpastoError) as caught:
                list(job.events())
            assert caught.value.kind is Kind.NOT_FOUND
            assert caught.value.detail == "no style preset 'no-such-style' on this server"


def test_a_send_that_fails_after_the_servers_refusal_still_reports_the_refusal():
    """The race behind the test above, forced: the server's trailers-only refusal has arrived, but
    grpclib fails the next send with h2's StreamClosedError instead of raising that status. The user
    must read the server's sentence, not "this program failed"; seen once in ~20 runs of the suite."""
    from grpclib.client import Stream as GrpclibStream
    from h2.exceptions import StreamClosedError

    refusal = [
        (":status", "200"),
        ("grpc-status", "5"),
        ("grpc-message", "no style preset %27no-such-style%27 on this server"),
        (KIND_KEY, "not_found"),
    ]

    def grpclib_stream(headers):  # grpclib's call, as it stands: the raw HTTP/2 stream holds what arrived
        stream = GrpclibStream.__new__(GrpclibStream)
        stream._stream = SimpleNamespace(headers=headers, trailers=None)
        stream._status_details_codec = None
        return stream

    error = client_module._failure(StreamClosedError(19), "127.0.0.1:50051", grpclib_stream(refusal))
    assert error.kind is Kind.NOT_FOUND
    assert error.detail == "no style preset 'no-such-style' on this server"
    dropped = client_module._failure(StreamClosedError(19), "127.0.0.1:50051", grpclib_stream(None))
    assert dropped.kind is Kind.UNREACHABLE


def test_a_plan_comes_before_any_image_is_sent(images: Path):
    """PlanJob: the job's scales, time and memory from the sizes in the headers; a preview's plan is
    the whole plan's beginning; a header without a size cannot be planned."""
    photo = ImageHeader("rgba8", 4000 * 2670 * 4, 4000, 2670)  # 12 megapixels, never sent
    udnie = [StyleChoice(preset_id="udnie")]
    with running_server("--styles-dir", str(images / "styles")) as address, Client(address) as client:
        plan = client.plan(photo, udnie, Settings(size=384))
        preview = client.plan(photo, udnie, Settings(size=384, preview_only=True))
        full = client.plan(photo, udnie, Settings(full_size=True))
        # The contract lets a plan's headers leave total_bytes 0: no bytes follow a plan.
        unsized = [ImageHeader(kind, 0, 4000, 2670) for kind in ("rgba8", "encoded")]
        unsized_plans = [client.plan(header, udnie, Settings(size=384)) for header in unsized]
        with pytest.raises(ImpastoError) as caught:
            client.plan(ImageHeader("encoded", 1000), udnie)
    assert (plan.working_width, plan.working_height) == (384, 256) and plan.device.kind == "cpu"
    assert plan.scales[-1].width == 384 and plan.estimated_seconds == pytest.approx(
        sum(scale.seconds for scale in plan.scales)
    )
    assert preview.scales == plan.scales[:1] and preview.scales[0].width <= PREVIEW_SIDE
    assert full.scales[-1].width == 4000 and full.estimated_seconds > 10 * plan.estimated_seconds
    assert caught.value.kind is Kind.INVALID and "width and height" in caught.value.detail
    assert [unsized_plan.scales for unsized_plan in unsized_plans] == [plan.scales, plan.scales]
