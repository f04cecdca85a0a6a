"""The StyleTransfer service: translates between the proto contract and the jobs layer.

It owns what belongs to the transport — message parsing, open streams (counted in streams.py), upload
deadlines — and nothing else: checks, decoding, the queue and the library live in `impasto.jobs`.
Runs on grpc.aio, so an idle or slow client holds no thread, and unary calls are never starved.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc._cython.cygrpc import ExecuteBatchError  # what a write raises once the call has ended

from .. import __version__
from ..jobs import Job, Jobs, Request, Upload, check_counts, shutting_down
from ..protocol import (
    CHUNK_BYTES,
    KIND_KEY,
    DeviceState,
    Event,
    Failed,
    ImpastoError,
    Info,
    Kind,
    Preview,
    Progress,
    Result,
    wire,
)
from ..v1 import impasto_pb2 as pb
from .idle import Activity
from .streams import Slot, StreamCounts, client_key

log = logging.getLogger("impasto.service")

SERVICE_NAME = "impasto.v1.StyleTransfer"
EOF = grpc.aio.EOF


async def abort(context: grpc.aio.ServicerContext, error: ImpastoError) -> None:
    """Ends the call with the error's status, its detail as the message and its kind in the trailers."""
    await context.abort(
        grpc.StatusCode[error.kind.status],
        error.detail,
        trailing_metadata=((KIND_KEY, error.kind.name.lower()),),
    )


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
    """ImpastoError becomes its status; any other exception is a bug: logged with its traceback, INTERNAL."""

    @functools.wraps(method)
    async def call(self, request, context: grpc.aio.ServicerContext):
        try:
            if isinstance(request, Malformed):
                raise ImpastoError(Kind.INVALID, "the request could not be parsed as this call's message")
            with self.activity.call():
                return await method(self, request, context)
        except ImpastoError as error:
            await abort(context, error)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("%s failed", method.__name__)
            await abort(context, ImpastoError(Kind.BUG, f"{method.__name__} failed"))

    return call


def _release_admitted(admitting: asyncio.Future[Upload]) -> None:
    if not admitting.cancelled() and admitting.exception() is None:
        admitting.result().release()


class _ClientGone(Exception):
    """The client cancelled, or its connection dropped, while a message was being written to it."""


class _ClientStalled(Exception):
    """The client did not take a message of the answer in the time allowed."""


class StyleTransferServicer:
    def __init__(self, jobs: Jobs, idle_exit_minutes: float = 0.0):
        """`idle_exit_minutes`: --idle-exit, told in GetServerInfo (0: never)."""
        self.jobs, self.limits = jobs, jobs.limits
        self.idle_exit_minutes = idle_exit_minutes
        self.activity = Activity(lambda: bool(jobs.queue.waiting or jobs.queue.running))  # for --idle-exit
        self.closing = asyncio.Event()  # set when the server begins to shut down
        self.streams = StreamCounts(self.limits)
        self._decoders = ThreadPoolExecutor(max_workers=4, thread_name_prefix="impasto-decode")

    @_answers_with_status
    async def GetServerInfo(self, request: pb.GetServerInfoRequest, context) -> pb.ServerInfo:
        jobs, queue = self.jobs, self.jobs.queue
        info = Info(
            server_version=__version__,
            protocol_version=pb.PROTOCOL_VERSION_CURRENT,
            device=jobs.devices[0],
            weights=jobs.engines[0].weights.name,
            limits=self.limits,
            default_size=jobs.default_size,
            default_iterations=jobs.default_iterations,
            queue_length=queue.waiting,
            running_jobs=queue.running,
            devices=tuple(DeviceState(d, busy) for d, busy in zip(jobs.devices, queue.busy(), strict=True)),
            idle_exit_minutes=self.idle_exit_minutes,
        )
        return wire.to_message(info, pb.ServerInfo())

    @_answers_with_status
    async def ListStyles(self, request: pb.ListStylesRequest, context) -> pb.ListStylesResponse:
        presets = await asyncio.to_thread(self.jobs.library.presets)
        reply = pb.ListStylesResponse()
        for preset in presets:
            wire.to_message(preset, reply.styles.add())
        return reply

    @_answers_with_status
    async def GetStyleThumbnail(self, request: pb.GetStyleThumbnailRequest, context) -> pb.StyleThumbnail:
        version, png = await asyncio.to_thread(self.jobs.thumbnail, request.id)
        return pb.StyleThumbnail(id=request.id, version=version, png=png)

    @_answers_with_status
    async def PlanJob(self, request: pb.StylizeParameters, context) -> pb.JobPlan:
        plan = await asyncio.to_thread(self.jobs.plan, self._request(request))
        return wire.to_message(plan, pb.JobPlan())

    @_answers_with_status
    async def Stylize(self, requests, context: grpc.aio.ServicerContext) -> None:
        if self.closing.is_set():
            raise shutting_down()
        slot = self.streams.open(client_key(context))
        # Counted until the call has fully ended, its status sent: what `drain` waits for.
        context.add_done_callback(lambda _: self.streams.close(slot))
        await self._stylize(context, slot)

    async def _stylize(self, context: grpc.aio.ServicerContext, slot: Slot) -> None:
        upload = await self._receive(context, slot)
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
        except (_ClientGone, _ClientStalled) as error:
            if isinstance(error, _ClientStalled):
                limits = self.limits
                log.info(
                    "job id=%s: its client did not read the answer in time (%g s plus %g MiB a second for "
                    "each message); its call is ended",
                    job.id,
                    limits.download_timeout_seconds,
                    limits.min_download_bytes_per_second / 2**20,
                )
            # No status can reach such a client: gRPC would wait for the write it is blocked in. Ending the
            # handler as a cancelled one frees the call's slot and job here; gRPC's asyncio server has no
            # way to reset one stream, which it ends when the client leaves or the server stops.
            raise asyncio.CancelledError() from None
        finally:
            # The client is gone, or the call failed: a job must never outlive its call.
            cancel.set()
            if job is None:  # cancelled while decoding: wait for the decoder, which sees `cancel`
                job = await asyncio.shield(_quietly(submitted))
            if job is not None:
                self.jobs.cancel(job)

    # ---- proto -> job ----------------------------------------------------------------------------

    async def _receive(self, context: grpc.aio.ServicerContext, slot: Slot) -> Upload:
        limits = self.limits
        began = asyncio.get_running_loop().time()
        waited = limits.parameters_timeout_seconds
        first = await self._read(context, began + waited, "the parameters", f"{waited:g} s")
        if first is EOF or not first.HasField("parameters"):
            raise ImpastoError(Kind.INVALID, "the first message must carry the parameters")
        self.streams.start_working(slot)
        upload = await self._admit(self._request(first.parameters))
        try:
            total = sum(image.total_bytes for image in upload.request.images)
            deadline = began + limits.upload_timeout_seconds + total / limits.min_upload_bytes_per_second
            allowed = (
                f"{limits.upload_timeout_seconds:g} s plus "
                f"{limits.min_upload_bytes_per_second / 2**20:g} MiB a second"
            )
            # Until the client closes its side: bytes beyond the announced ones are an error too.
            while (
                message := await self._read(context, deadline, f"the images ({total:,} bytes)", allowed)
            ) is not EOF:
                if not message.HasField("chunk"):
                    raise ImpastoError(Kind.INVALID, "parameters may be sent only once, in the first message")
                if len(message.chunk.data) > CHUNK_BYTES:
                    size = len(message.chunk.data)
                    raise ImpastoError(
                        Kind.INVALID, f"a chunk of {size:,} bytes is over the {CHUNK_BYTES:,}-byte limit"
                    )
                upload.add(message.chunk.image, message.chunk.data)
            upload.check_complete()
        except BaseException:
            upload.release()
            raise
        return upload

    def _request(self, message: pb.StylizeParameters) -> Request:
        """The request a parameters message asks for; its lists are counted before they are converted,
        so that a message of a million empty entries costs the event loop nothing."""
        check_counts(len(message.styles), len(message.style_uploads), self.limits)
        return Request(wire.parameters_from_message(message))

    async def _admit(self, request: Request) -> Upload:
        """`jobs.admit` in a thread (it reads the style folders). The thread cannot be stopped: if the
        call is cancelled meanwhile, the memory it goes on to hold is given back when it ends."""
        admitting = asyncio.ensure_future(asyncio.to_thread(self.jobs.admit, request))
        try:
            return await asyncio.shield(admitting)
        except asyncio.CancelledError:
            admitting.add_done_callback(_release_admitted)
            raise

    async def _read(self, context: grpc.aio.ServicerContext, deadline: float, what: str, allowed: str):
        """The next message, or ImpastoError if it does not come by `deadline` (`allowed` says how that
        was reckoned) or the server is closing."""
        loop = asyncio.get_running_loop()
        reading = asyncio.ensure_future(context.read())
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            done, _ = await asyncio.wait(
                {reading, closing},
                timeout=max(0.0, deadline - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            # Also when the call is cancelled while it waits: neither task may outlive it.
            closing.cancel()
            if not reading.done():
                reading.cancel()
        if reading not in done:
            if self.closing.is_set():
                raise shutting_down()
            raise ImpastoError(
                Kind.TIMEOUT,
                f"the upload was too slow: {what} did not arrive in time (this server allows {allowed}); "
                "check the network",
            )
        message = reading.result()
        if isinstance(message, Malformed):
            raise ImpastoError(Kind.INVALID, "a message could not be parsed as an impasto.v1.StylizeRequest")
        return message

    # ---- job -> proto ----------------------------------------------------------------------------

    async def _send_events(self, job: Job, events: asyncio.Queue[Event], context) -> None:
        while True:
            # With what came while the last message was written: a client that reads more slowly than the
            # job reports gets its newest progress and preview, not a growing backlog of old ones.
            backlog = [await events.get()]
            while not events.empty():
                backlog.append(events.get_nowait())
            for event in _newest_only(backlog):
                if isinstance(event, Failed):
                    raise event.error
                if isinstance(event, Result):
                    await self._send_result(job, event, context)
                    return
                await self._write(context, wire.event_message(event))

    async def _send_result(self, job: Job, result: Result, context) -> None:
        try:
            for message in wire.result_messages(result.image):
                await self._write(context, message)
        except (_ClientGone, asyncio.CancelledError):
            # A client that leaves mid-answer fails the write, or, where gRPC sees it first, cancels this
            # handler: the same departure, told once either way. A server that is stopping cancels its
            # handlers too; that is no client's leaving.
            if not self.closing.is_set():
                log.info("job id=%s: its client went away before it had the whole result", job.id)
            raise

    async def _write(self, context: grpc.aio.ServicerContext, message: pb.StylizeEvent) -> None:
        """Writes a message within the time its size allows; _ClientStalled if the client does not take
        it by then, _ClientGone if it leaves meanwhile."""
        limits = self.limits
        allowed = limits.download_timeout_seconds + message.ByteSize() / limits.min_download_bytes_per_second
        try:
            await asyncio.wait_for(context.write(message), allowed)
        except TimeoutError:
            raise _ClientStalled() from None
        except ExecuteBatchError:  # gRPC fails a write when the call is cancelled or its connection drops
            raise _ClientGone() from None


def _newest_only(events: list[Event]) -> list[Event]:
    """`events` in order, less each Progress or Preview that a newer one of its kind follows."""
    kept, superseded = [], set()
    for event in reversed(events):
        if isinstance(event, Progress | Preview):
            if type(event) in superseded:
                continue
            superseded.add(type(event))
        kept.append(event)
    return kept[::-1]


async def _quietly(future: Awaitable[Job]) -> Job | None:
    try:
        return await future
    except Exception:  # noqa: BLE001 - it already failed the call that submitted it
        return None
