"""The StyleTransfer service: translates between the proto contract and the jobs layer.

It owns what belongs to the transport — message parsing, open streams per connection, upload
deadlines — and nothing else: checks, decoding, the queue and the library live in `impasto.jobs`.
Runs on grpc.aio, so an idle or slow client holds no thread, and unary calls are never starved.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from .. import __version__
from ..client import CHUNK_BYTES, chunks
from ..engine import DeviceInfo, Progress
from ..jobs import (
    Event,
    Failed,
    Finished,
    ImageSpec,
    Job,
    JobError,
    Jobs,
    Kind,
    Preview,
    Queued,
    Request,
    Result,
    Started,
    StyleRef,
    Upload,
)
from ..jobs.errors import shutting_down
from ..v1 import impasto_pb2 as pb
from .idle import Activity

log = logging.getLogger("impasto.service")

SERVICE_NAME = "impasto.v1.StyleTransfer"
EOF = grpc.aio.EOF
DEFAULT_PREVIEW_SECONDS = 2.0

STATUS = {
    Kind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Kind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Kind.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Kind.BROKEN_PRESET: grpc.StatusCode.FAILED_PRECONDITION,
    Kind.EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Kind.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    Kind.CANCELLED: grpc.StatusCode.CANCELLED,
    Kind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Kind.BUG: grpc.StatusCode.INTERNAL,
}


@dataclass(frozen=True)
class Transport:
    upload_timeout_seconds: float = 30.0  # for the parameters; the upload gets this plus its size's worth
    min_upload_bytes_per_second: int = 1 << 20
    max_streams_per_client: int = 4  # open Stylize calls per connection
    max_streams: int = 32  # open Stylize calls in all


class Malformed:
    """What a message that does not parse becomes, so that the servicer can answer INVALID_ARGUMENT."""


def lenient(parse: Callable[[bytes], object]) -> Callable[[bytes], object]:
    def parse_or_mark(data: bytes) -> object:
        try:
            return parse(data)
        except Exception:  # noqa: BLE001 - any parse failure is the client's malformed message
            return Malformed()

    return parse_or_mark


def _answers_with_status(method: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
    """JobError becomes its status; any other exception is a bug: logged with its traceback, INTERNAL."""

    @functools.wraps(method)
    async def call(self, request, context: grpc.aio.ServicerContext):
        try:
            if isinstance(request, Malformed):
                raise JobError(Kind.INVALID, "the request could not be parsed as this call's message")
            with self.activity.call():
                return await method(self, request, context)
        except JobError as error:
            await context.abort(STATUS[error.kind], error.message)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "the server failed; its log has details")

    return call


class StyleTransferServicer:
    def __init__(
        self, jobs: Jobs, devices: list[DeviceInfo], transport: Transport, idle_exit_minutes: float = 0.0
    ):
        """`devices`: what each of the jobs layer's engines runs on, in the same order;
        `idle_exit_minutes`: --idle-exit, reported in GetServerInfo (0: never)."""
        self.jobs, self.devices, self.transport = jobs, devices, transport
        self.idle_exit_minutes = idle_exit_minutes
        self.closing = asyncio.Event()  # set when the server begins to shut down
        self._streams_changed = asyncio.Event()
        self._streams: collections.Counter[str] = collections.Counter()  # per peer; loop thread only
        self._decoders = ThreadPoolExecutor(max_workers=4, thread_name_prefix="impasto-decode")
        self.activity = Activity(lambda: bool(jobs.queue.waiting or jobs.queue.running))  # --idle-exit

    @_answers_with_status
    async def GetServerInfo(self, request: pb.GetServerInfoRequest, context) -> pb.ServerInfo:
        limits, transport, queue = self.jobs.limits, self.transport, self.jobs.queue
        return pb.ServerInfo(
            server_version=__version__,
            protocol_version=pb.PROTOCOL_VERSION_CURRENT,
            device=self._device(0),
            weights=self.jobs.engines[0].weights.name,
            limits=pb.Limits(
                max_pixels=limits.max_pixels,
                max_queue=limits.max_queue,
                max_chunk_bytes=CHUNK_BYTES,
                max_size=limits.max_size,
                max_iterations=limits.max_iterations,
                max_styles=limits.max_styles,
                max_request_bytes=limits.max_request_bytes,
                upload_timeout_seconds=transport.upload_timeout_seconds,
                min_upload_bytes_per_second=transport.min_upload_bytes_per_second,
                max_streams_per_client=transport.max_streams_per_client,
                max_strength=limits.max_strength,
                full_size=limits.full_size,
            ),
            default_size=limits.default_size,
            default_iterations=limits.default_iterations,
            queue_length=queue.waiting,
            running_jobs=queue.running,
            idle_exit_minutes=self.idle_exit_minutes,
            devices=[
                pb.DeviceState(device=self._device(worker), busy=busy)
                for worker, busy in enumerate(queue.busy())
            ],
        )

    @_answers_with_status
    async def ListStyles(self, request: pb.ListStylesRequest, context) -> pb.ListStylesResponse:
        presets = await asyncio.to_thread(self.jobs.library.presets)
        return pb.ListStylesResponse(
            styles=[
                pb.StylePreset(
                    id=p.id,
                    title=p.title,
                    artist=p.artist,
                    year=p.year,
                    licence=p.licence,
                    source_url=p.source_url,
                    recommended_strength=p.strength,
                    recommended_style_scale=p.style_scale,
                    version=p.version,
                    builtin=p.builtin,
                )
                for p in presets
            ]
        )

    @_answers_with_status
    async def GetStyleThumbnail(self, request: pb.GetStyleThumbnailRequest, context) -> pb.StyleThumbnail:
        version, png = await asyncio.to_thread(self.jobs.thumbnail, request.id)
        return pb.StyleThumbnail(id=request.id, version=version, png=png)

    @_answers_with_status
    async def Stylize(self, requests, context: grpc.aio.ServicerContext) -> None:
        peer = context.peer()  # one connection: every user behind one tunnel or NAT is not one peer
        self._open_stream(peer)
        # Counted until the call has fully ended, its status sent: what `drain` waits for.
        context.add_done_callback(lambda _: self._stream_done(peer))
        await self._stylize(context)

    def _stream_done(self, peer: str) -> None:
        self._streams[peer] -= 1
        if not self._streams[peer]:
            del self._streams[peer]
        self._streams_changed.set()

    async def drain(self, timeout: float) -> bool:
        """Waits, up to `timeout`, until every Stylize call has ended: at shutdown each has been told its
        job's fate, and its status must reach the client before the connection closes. True if any
        call was open."""
        if not self._streams:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._streams and loop.time() < deadline:
            self._streams_changed.clear()
            try:
                await asyncio.wait_for(self._streams_changed.wait(), deadline - loop.time())
            except TimeoutError:
                break
        if self._streams:
            log.warning("%d Stylize calls still open at shutdown", sum(self._streams.values()))
        return True

    async def _stylize(self, context: grpc.aio.ServicerContext) -> None:
        upload = await self._receive(context)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        cancel = threading.Event()
        submitted = loop.run_in_executor(
            self._decoders,
            self.jobs.submit,
            upload,
            lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
            cancel,
        )
        job = None
        try:
            job = await asyncio.shield(submitted)
            await self._send_events(job, events, context)
        finally:
            # The client is gone, or the call failed: a job must never outlive its call.
            cancel.set()
            if job is None:  # cancelled while decoding: wait for the decoder, which sees `cancel`
                job = await asyncio.shield(_quietly(submitted))
            if job is not None:
                self.jobs.cancel(job)

    def _open_stream(self, peer: str) -> None:
        transport = self.transport
        if self.closing.is_set():
            raise shutting_down()
        if self._streams[peer] >= transport.max_streams_per_client:
            raise JobError(
                Kind.EXHAUSTED,
                f"this connection has {transport.max_streams_per_client} Stylize calls open, this server's "
                "limit per connection; wait for one to finish",
            )
        if sum(self._streams.values()) >= transport.max_streams:
            raise JobError(
                Kind.EXHAUSTED,
                f"the server has {transport.max_streams} Stylize calls open, its limit; try again shortly",
            )
        self._streams[peer] += 1

    # ---- proto -> job ----------------------------------------------------------------------------

    async def _receive(self, context: grpc.aio.ServicerContext) -> Upload:
        transport = self.transport
        loop = asyncio.get_running_loop()
        deadline = loop.time() + transport.upload_timeout_seconds
        first = await self._read(context, deadline, "the parameters")
        if first is EOF or not first.HasField("parameters"):
            raise JobError(Kind.INVALID, "the first message must carry the parameters")
        upload = self.jobs.admit(_request(first.parameters))
        try:
            total = sum(image.total_bytes for image in upload.request.images)
            deadline += total / transport.min_upload_bytes_per_second
            # Until the client closes its side: bytes beyond the announced ones are an error too.
            while (
                message := await self._read(context, deadline, f"the images ({total:,} bytes)")
            ) is not EOF:
                if not message.HasField("chunk"):
                    raise JobError(Kind.INVALID, "parameters may be sent only once, in the first message")
                if len(message.chunk.data) > CHUNK_BYTES:
                    size = len(message.chunk.data)
                    raise JobError(
                        Kind.INVALID, f"a chunk of {size:,} bytes is over the {CHUNK_BYTES:,}-byte limit"
                    )
                upload.add(message.chunk.image, message.chunk.data)
            upload.check_complete()
        except BaseException:
            upload.release()
            raise
        return upload

    async def _read(self, context: grpc.aio.ServicerContext, deadline: float, what: str):
        """The next message, or JobError if it does not come by `deadline` or the server is closing."""
        loop = asyncio.get_running_loop()
        reading = asyncio.ensure_future(context.read())
        closing = asyncio.ensure_future(self.closing.wait())
        done, _ = await asyncio.wait(
            {reading, closing}, timeout=max(0.0, deadline - loop.time()), return_when=asyncio.FIRST_COMPLETED
        )
        closing.cancel()
        if reading not in done:
            reading.cancel()
            if self.closing.is_set():
                raise shutting_down()
            raise JobError(
                Kind.TIMEOUT,
                f"the upload was too slow: {what} did not arrive in time (this server allows "
                f"{self.transport.upload_timeout_seconds:g} s plus "
                f"{self.transport.min_upload_bytes_per_second / 2**20:g} MiB a second); check the network",
            )
        message = reading.result()
        if isinstance(message, Malformed):
            raise JobError(Kind.INVALID, "a message could not be parsed as an impasto.v1.StylizeRequest")
        return message

    # ---- job -> proto ----------------------------------------------------------------------------

    async def _send_events(self, job: Job, events: asyncio.Queue[Event], context) -> None:
        while True:
            event = await events.get()
            if isinstance(event, Failed):
                raise event.error
            if isinstance(event, Finished):
                for message in _result_messages(event.result):
                    await context.write(message)
                return
            await context.write(self._event(job, event))

    def _event(self, job: Job, event: Event) -> pb.StylizeEvent:
        if isinstance(event, Queued):
            return pb.StylizeEvent(queued=pb.Queued(job_id=job.id, position=event.position))
        if isinstance(event, Started):
            plan = event.plan
            height, width = plan.working_size
            return pb.StylizeEvent(
                started=pb.Started(
                    job_id=job.id,
                    device=self._device(event.worker),
                    scales=len(plan.scales),
                    iterations_per_scale=plan.scales[-1].iterations,
                    total_iterations=plan.total_iterations,
                    working_width=width,
                    working_height=height,
                    estimated_seconds=plan.estimate.seconds,
                    estimated_memory_bytes=plan.estimate.peak_bytes,
                )
            )
        if isinstance(event, Progress):
            return pb.StylizeEvent(progress=_progress(event))
        if isinstance(event, Preview):
            return pb.StylizeEvent(
                preview=pb.Preview(
                    png=event.png, width=event.width, height=event.height, fraction=event.fraction
                )
            )
        raise TypeError(f"unexpected job event {event!r}")

    def _device(self, worker: int) -> pb.Device:
        d, engine = self.devices[worker], self.jobs.engines[worker]
        return pb.Device(kind=d.kind, name=d.name, memory_bytes=d.memory_bytes, precision=engine.precision)


async def _quietly(future: Awaitable[Job]) -> Job | None:
    try:
        return await future
    except Exception:  # noqa: BLE001 - it already failed the call that submitted it
        return None


def _image(header: pb.ImageHeader) -> ImageSpec:
    formats = {pb.PIXEL_FORMAT_RGBA8: "rgba8", pb.PIXEL_FORMAT_ENCODED: "encoded"}
    return ImageSpec(formats.get(header.format, ""), header.total_bytes, header.width, header.height)


def _request(params: pb.StylizeParameters) -> Request:
    """The contract's zeros become the jobs layer's defaults."""
    preview = params.preview_interval_seconds
    return Request(
        content=_image(params.content),
        styles=tuple(
            StyleRef(
                preset_id=choice.preset_id if choice.HasField("preset_id") else None,
                upload=choice.upload if choice.HasField("upload") else None,
                weight=choice.weight or 1.0,
                save_as=choice.save_as_preset,
            )
            for choice in params.styles
        ),
        uploads=tuple(_image(header) for header in params.style_uploads),
        size="full" if params.full_size else (params.size or None),
        iterations=params.iterations or None,
        strength=params.strength if params.HasField("strength") else 1.0,
        style_scale=params.style_scale or 1.0,
        preserve_colors=params.preserve_colors,
        seed=params.seed,
        preview_seconds=None if preview < 0 else (preview or DEFAULT_PREVIEW_SECONDS),
    )


def _progress(p: Progress) -> pb.Progress:
    return pb.Progress(
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


def _result_messages(result: Result) -> Iterator[pb.StylizeEvent]:
    header = pb.ImageHeader(
        format=pb.PIXEL_FORMAT_ENCODED if result.encoded else pb.PIXEL_FORMAT_RGBA8,
        width=result.width,
        height=result.height,
        total_bytes=len(result.data),
    )
    for index, piece in enumerate(chunks(result.data)):
        chunk = pb.ResultChunk(data=piece)
        if index == 0:
            chunk.header.CopyFrom(header)
        yield pb.StylizeEvent(result=chunk)
