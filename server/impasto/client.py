"""The network client of impasto-server, shared by the `impasto` CLI and the GIMP plug-in.

Pure Python — protobuf's pure-Python runtime, grpclib (HTTP/2 written in Python) and the standard
library — because GIMP's Python on Windows cannot load compiled wheels, and one client that runs in
every GIMP needs no build per Python version. gRPC stays the protocol; grpcio stays the server.

Callers see only this module's own small types: `Info`, `Preset`, the job events `Queued`,
`Started`, `Progress` and `Preview`, the result `Image`, and `ServerError` with a sentence a person
can act on. Nothing here returns a protobuf message or asks callers to compare status codes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import queue
import socket
import ssl
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path

from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from .v1 import impasto_pb2 as pb

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_PORT = 50051
CHUNK_BYTES = 1 << 20  # the contract's largest chunk of image data
START_SERVER_HINT = "start one there with `impasto-server` (or pass another address with --server HOST:PORT)"
SERVICE = "/impasto.v1.StyleTransfer/"


def resolve_address(address: str | None) -> str:
    return address or os.environ.get("IMPASTO_SERVER") or DEFAULT_ADDRESS


def addresses(address: str | None) -> list[str]:
    """Several servers may be given separated by commas (`a:50051,https://b:50051`)."""
    return [part.strip() for part in resolve_address(address).split(",") if part.strip()]


def least_busy(candidates: list[str], **client_args) -> str:
    """Of several servers, the one with the fewest jobs per device that answers; ServerError if none does."""
    loads, errors = [], []
    for address in candidates:
        try:
            with Client(address, **{"timeout": 3.0, **client_args}) as client:
                info = client.info()
        except ServerError as error:
            errors.append(str(error))
            continue
        loads.append(((info.running_jobs + info.queue_length) / max(1, len(info.devices)), address))
    if not loads:
        raise ServerError("no Impasto server answered: " + "; ".join(errors), Status.UNAVAILABLE)
    return min(loads)[1]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_address(address: str) -> tuple[str, int, bool]:
    """`host:port` (plaintext) or `https://host:port` (TLS) -> (host, port, tls)."""
    tls = address.startswith("https://")
    rest = address.split("://", 1)[-1].rstrip("/")
    if rest.startswith("["):  # [IPv6]:port
        host, _, port = rest[1:].partition("]:")
    else:
        host, _, port = rest.rpartition(":")
    if not host:
        host, port = rest, ""
    return host, int(port) if port.isdigit() else DEFAULT_PORT, tls


class InsecureToken(ValueError):
    """A token would cross the network in clear."""


class ServerError(Exception):
    """A call failed. `code` is the gRPC status (None when the call never reached a server); the message
    is a sentence that says what happened and what to do."""

    def __init__(self, message: str, code: Status | None = None):
        super().__init__(message)
        self.code = code

    @property
    def cancelled(self) -> bool:
        return self.code == Status.CANCELLED

    @property
    def unavailable(self) -> bool:
        """The server cannot be reached, or is going away: another server may take the job."""
        return self.code == Status.UNAVAILABLE

    @property
    def refused(self) -> bool:
        """The server would not take this request as it is (bad input, limits): retrying as is won't help."""
        return self.code in _REFUSALS


_REFUSALS = {
    Status.INVALID_ARGUMENT,
    Status.NOT_FOUND,
    Status.ALREADY_EXISTS,
    Status.FAILED_PRECONDITION,
    Status.RESOURCE_EXHAUSTED,
}


# ---- what callers see --------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda", "mps" or "cpu"
    name: str
    memory_bytes: int
    precision: str
    busy: bool  # running a job now


@dataclass(frozen=True)
class Info:
    server_version: str
    protocol_version: int
    device_kind: str
    device_name: str
    device_memory_bytes: int
    precision: str
    weights: str
    default_size: int
    default_iterations: int
    max_size: int
    max_pixels: int
    max_queue: int
    max_iterations: int
    max_styles: int
    max_strength: float
    full_size: bool  # honours Settings.full_size; False from an older server, which ignores it
    queue_length: int
    running_jobs: int
    devices: tuple[Device, ...]  # one worker each
    idle_exit_minutes: float = 0.0  # the server ends itself after this long unused; 0: never


@dataclass(frozen=True)
class Preset:
    id: str
    title: str
    artist: str = ""
    year: str = ""
    licence: str = ""
    source_url: str = ""
    recommended_strength: float = 0.0
    recommended_style_scale: float = 0.0
    version: str = ""
    builtin: bool = False


@dataclass(frozen=True)
class Queued:
    job_id: str
    position: int  # jobs ahead of this one


@dataclass(frozen=True)
class Started:
    job_id: str
    device: str
    scales: int
    iterations_per_scale: int  # at the working size; coarser scales run fewer
    total_iterations: int
    working_width: int
    working_height: int
    estimated_seconds: float
    estimated_memory_bytes: int


@dataclass(frozen=True)
class Progress:
    fraction: float  # of the job's work, 0..1
    scale: int
    scales: int
    iteration: int
    iterations: int
    content_loss: float
    style_loss: float
    tv_loss: float
    elapsed_seconds: float
    eta_seconds: float  # 0 while unknown
    tile: int = 0  # on a scale painted in tiles: the tile just done, of `tiles`; else 0
    tiles: int = 0


@dataclass(frozen=True)
class Preview:
    png: bytes
    width: int
    height: int
    fraction: float


Event = Queued | Started | Progress | Preview


@dataclass
class Image:
    """Image bytes for upload or as a result: raw RGBA8 rows, or an encoded file."""

    data: bytes
    width: int = 0
    height: int = 0
    encoded: bool = False

    @classmethod
    def from_file(cls, path: str | Path) -> Image:
        return cls(Path(path).read_bytes(), encoded=True)

    def header(self) -> pb.ImageHeader:
        fmt = pb.PIXEL_FORMAT_ENCODED if self.encoded else pb.PIXEL_FORMAT_RGBA8
        return pb.ImageHeader(format=fmt, width=self.width, height=self.height, total_bytes=len(self.data))


@dataclass
class StyleSpec:
    """A style: a preset id on the server, or an image to upload."""

    preset: str | None = None
    image: Image | None = None
    weight: float = 1.0
    save_as: str = ""  # for an image: also keep it on the server as a preset with this name


@dataclass
class Settings:
    strength: float = 1.0
    iterations: int = 0  # 0: the server's default
    size: int = 0  # 0: the server's default
    full_size: bool = False  # paint at the content's own size (tiled where memory is short); size ignored
    preserve_colors: bool = False
    seed: int = 0
    style_scale: float = 1.0
    preview_seconds: float = 2.0  # negative: no previews


# ---- the connection ----------------------------------------------------------------------------


class Client:
    """A connection to one server. Its calls block; a job's events arrive while it runs.

    The connection lives on an event loop in a thread of its own, so that callers — the CLI, GIMP's
    main loop — need no asyncio of their own.
    """

    def __init__(
        self,
        address: str | None = None,
        token: str | None = None,
        tls_ca: Path | None = None,
        timeout: float = 10.0,
        insecure: bool = False,
    ):
        """`address`: `host:port` (plaintext) or `https://host:port` (TLS, verified against the system's
        roots, or `tls_ca`); several separated by commas: the least busy one that answers. A token goes
        in clear only to this machine, or with `insecure`."""
        servers = addresses(address)
        if len(servers) > 1:
            servers = [least_busy(servers, token=token, tls_ca=tls_ca, insecure=insecure)]
        self.address = servers[0]
        self.timeout = timeout
        host, port, tls = split_address(self.address)
        tls = tls or tls_ca is not None
        token = token if token is not None else os.environ.get("IMPASTO_TOKEN")
        if token and not tls and not insecure and not is_loopback(host):
            raise InsecureToken(
                f"refusing to send the token in clear to {host}: anyone on the network could read it. "
                f"Use TLS (https://{host}:{port}, with --tls-ca CERT for a self-signed server), an SSH "
                "tunnel to 127.0.0.1, or --insecure if the network is private and you accept that"
            )
        self._metadata = {"authorization": f"Bearer {token}"} if token else {}
        context = _tls_context(tls_ca) if tls else None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="impasto-client", daemon=True)
        self._thread.start()
        self._channel = self._run(_open_channel(host, port, context))

    def close(self) -> None:
        """Ends the connection; a job still running is cancelled (the server stops it)."""
        if self._loop.is_closed():
            return
        self._run(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    async def _close(self) -> None:
        calls = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in calls:
            task.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def info(self) -> Info:
        reply = self._unary("GetServerInfo", pb.GetServerInfoRequest(), pb.ServerInfo)
        device, limits = reply.device, reply.limits
        return Info(
            server_version=reply.server_version,
            protocol_version=reply.protocol_version,
            device_kind=device.kind,
            device_name=device.name,
            device_memory_bytes=device.memory_bytes,
            precision=device.precision,
            weights=reply.weights,
            default_size=reply.default_size,
            default_iterations=reply.default_iterations,
            max_size=limits.max_size,
            max_pixels=limits.max_pixels,
            max_queue=limits.max_queue,
            max_iterations=limits.max_iterations,
            max_styles=limits.max_styles,
            max_strength=limits.max_strength,
            full_size=limits.full_size,
            queue_length=reply.queue_length,
            running_jobs=reply.running_jobs,
            devices=tuple(
                Device(d.device.kind, d.device.name, d.device.memory_bytes, d.device.precision, d.busy)
                for d in reply.devices
            ),
            idle_exit_minutes=reply.idle_exit_minutes,
        )

    def styles(self) -> list[Preset]:
        reply = self._unary("ListStyles", pb.ListStylesRequest(), pb.ListStylesResponse)
        return [
            Preset(
                id=p.id,
                title=p.title,
                artist=p.artist,
                year=p.year,
                licence=p.licence,
                source_url=p.source_url,
                recommended_strength=p.recommended_strength,
                recommended_style_scale=p.recommended_style_scale,
                version=p.version,
                builtin=p.builtin,
            )
            for p in reply.styles
        ]

    def thumbnail(self, preset_id: str) -> bytes:
        """A preset's thumbnail, PNG with a long side of at most 256 px."""
        request = pb.GetStyleThumbnailRequest(id=preset_id)
        return self._unary("GetStyleThumbnail", request, pb.StyleThumbnail).png

    def stylize(self, content: Image, styles: list[StyleSpec], settings: Settings | None = None) -> RemoteJob:
        job = RemoteJob(self.address, self._loop)
        requests = list(_requests(content, styles, settings or Settings()))
        job._future = asyncio.run_coroutine_threadsafe(self._stylize(job, requests), self._loop)
        return job

    # ---- on the event loop -----------------------------------------------------------------------

    def _run(self, coroutine: Coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _unary(self, method: str, request, reply_type):
        async def call():
            stream = self._channel.request(
                SERVICE + method,
                Cardinality.UNARY_UNARY,
                type(request),
                reply_type,
                timeout=self.timeout,
                metadata=self._metadata,
            )
            async with stream:
                await stream.send_message(request, end=True)
                return await stream.recv_message()

        try:
            return self._run(call())
        except _FAILURES as error:
            raise _server_error(error, self.address) from None

    async def _stylize(self, job: RemoteJob, requests: list[pb.StylizeRequest]) -> None:
        try:
            stream = self._channel.request(
                SERVICE + "Stylize",
                Cardinality.STREAM_STREAM,
                pb.StylizeRequest,
                pb.StylizeEvent,
                metadata=self._metadata,
            )
            async with stream:
                for request in requests:
                    await stream.send_message(request)
                await stream.end()
                job._put(await _receive(stream, job))
        except asyncio.CancelledError:
            job._put(ServerError("the job was cancelled; nothing was written", Status.CANCELLED))
        except _FAILURES as error:
            job._put(_server_error(error, self.address, "job"))


class RemoteJob:
    """A running Stylize call: iterate `events()`, then read `result`; `cancel()` from any thread."""

    def __init__(self, address: str, loop: asyncio.AbstractEventLoop):
        self.address = address
        self.result: Image | None = None
        self._loop = loop
        self._items: queue.Queue = queue.Queue()
        self._future = None

    def cancel(self) -> None:
        """Stops the job on the server (the call is cancelled, which the server treats as a stop)."""
        if self._future is not None:
            self._future.cancel()

    def events(self) -> Iterator[Event]:
        """Queued, Started, Progress and Preview events; then `result` holds the image. Raises
        ServerError when the job fails or is cancelled."""
        while True:
            item = self._items.get()
            if isinstance(item, ServerError):
                raise item
            if isinstance(item, Image):
                self.result = item
                return
            yield item

    def _put(self, item: Event | Image | ServerError) -> None:
        self._items.put(item)


async def _open_channel(host: str, port: int, context: ssl.SSLContext | None) -> Channel:
    return Channel(host, port, ssl=context)


def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])  # gRPC runs on HTTP/2
    return context


async def _receive(stream, job: RemoteJob) -> Image:
    header, parts = None, []
    async for message in stream:
        kind = message.WhichOneof("event")
        if kind == "result":
            if message.result.HasField("header"):
                header = message.result.header
            parts.append(message.result.data)
        elif kind is not None:
            job._put(_event(message, kind))
    if header is None:
        await stream.recv_trailing_metadata()  # raises the status the server ended the call with
        raise ServerError(f"the server at {job.address} ended the job without a result", Status.INTERNAL)
    data = b"".join(parts)
    return Image(data, header.width, header.height, header.format == pb.PIXEL_FORMAT_ENCODED)


def _event(message: pb.StylizeEvent, kind: str) -> Event:
    if kind == "queued":
        return Queued(message.queued.job_id, message.queued.position)
    if kind == "started":
        s = message.started
        return Started(
            s.job_id,
            f"{s.device.kind} — {s.device.name}",
            s.scales,
            s.iterations_per_scale,
            s.total_iterations,
            s.working_width,
            s.working_height,
            s.estimated_seconds,
            s.estimated_memory_bytes,
        )
    if kind == "progress":
        p = message.progress
        return Progress(
            p.fraction,
            p.scale,
            p.scales,
            p.iteration,
            p.iterations,
            p.content_loss,
            p.style_loss,
            p.tv_loss,
            p.elapsed_seconds,
            p.eta_seconds,
            p.tile,
            p.tiles,
        )
    p = message.preview
    return Preview(p.png, p.width, p.height, p.fraction)


def _requests(content: Image, styles: list[StyleSpec], settings: Settings) -> Iterator[pb.StylizeRequest]:
    uploads = [s.image for s in styles if s.image is not None]
    choices = []
    for spec in styles:
        if spec.image is not None:
            index = next(i for i, upload in enumerate(uploads) if upload is spec.image)
            choices.append(pb.StyleChoice(upload=index, weight=spec.weight, save_as_preset=spec.save_as))
        else:
            choices.append(pb.StyleChoice(preset_id=spec.preset or "", weight=spec.weight))
    yield pb.StylizeRequest(
        parameters=pb.StylizeParameters(
            styles=choices,
            content=content.header(),
            style_uploads=[u.header() for u in uploads],
            strength=settings.strength,
            iterations=settings.iterations,
            size=settings.size,
            preserve_colors=settings.preserve_colors,
            seed=settings.seed,
            style_scale=settings.style_scale,
            preview_interval_seconds=settings.preview_seconds,
            full_size=settings.full_size,
        )
    )
    for index, image in enumerate([content, *uploads]):
        for data in chunks(image.data):
            yield pb.StylizeRequest(chunk=pb.Chunk(image=index, data=data))


def chunks(data: bytes | memoryview) -> Iterator[bytes]:
    """The contract's pieces of image data, at most CHUNK_BYTES each (one empty piece for no data)."""
    view = memoryview(data)
    for offset in range(0, max(len(view), 1), CHUNK_BYTES):
        yield bytes(view[offset : offset + CHUNK_BYTES])


_FAILURES = (GRPCError, StreamTerminatedError, ProtocolError, OSError, asyncio.TimeoutError, ServerError)


# Words that gRPC itself (this client's library, or the transport) writes: never a server's sentence.
_GRPC_WORDS = (
    "locally cancelled",
    "cancelling all calls",
    "exception iterating",
    "exception calling application",
    "failed to connect",
    "connection refused",
    "connection reset",
    "connection closed",
    "socket closed",
    "broken pipe",
    "deadline exceeded",
    "dns resolution",
    "name resolution",
    "handshake",
    "ssl",
    "endpoint",
    "goaway",
    "rst_stream",
    "stream removed",
    "keepalive",
    "too_many_pings",
    "message larger than max",
    "method not found",
    "unimplemented",
    "http2",
    "backends",
    "subchannel",
    "unknown:",
    "unavailable:",
)
_SERVER_FAILED = "the server failed; its log has details"
_OTHER_RELEASE = "install the same impasto release on both sides"
# status -> (the sentence around the server's own words, the sentence when it said nothing of its own)
_SENTENCES = {
    Status.CANCELLED: ("{at} cancelled the {what}: {said}", "cancelled"),
    Status.UNAVAILABLE: (
        "{at} is not available now: {said}",
        "cannot reach an Impasto server at {address}; {hint}",
    ),
    Status.DEADLINE_EXCEEDED: (
        "{at} gave up on the {what}: {said}",
        "{at} did not answer in time; it may be busy or the network slow, so try again",
    ),
    Status.UNAUTHENTICATED: (
        "{at} did not accept the token: {said}",
        "{at} wants a token; give it with --token-file FILE or $IMPASTO_TOKEN",
    ),
    Status.RESOURCE_EXHAUSTED: (
        "{at} cannot take the {what} now: {said}",
        "a message from {address} was larger than this client accepts; " + _OTHER_RELEASE,
    ),
    Status.UNKNOWN: ("{at} failed: {said}; its log has details", "{at} failed; its log has details"),
    Status.INTERNAL: ("{at} failed: {said}; its log has details", "{at} failed; its log has details"),
    Status.UNIMPLEMENTED: (
        "{at} does not offer this call: it runs another version of impasto-server, or is not one; "
        + _OTHER_RELEASE,
    )
    * 2,
    Status.PERMISSION_DENIED: (
        "{at} does not allow this: {said}",
        "{at} does not allow this: ask whoever runs it",
    ),
}
# INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION and the rest
_REFUSED = (
    "{at} refused the {what}: {said}",
    "{at} could not complete the {what}; try again, and see its log if it keeps failing",
)


def _said_by_server(details: str) -> str:
    """The server's own sentence from a status's details, or "" where gRPC wrote them."""
    lowered = details.lower()
    return "" if not details or any(words in lowered for words in _GRPC_WORDS) else details


def _why_unreachable(details: str) -> str:
    lowered = details.lower()
    if "refused" in lowered:
        return " (nothing answers on that port)"
    if "handshake" in lowered or "ssl" in lowered:
        return " (the TLS handshake failed: https:// needs a TLS server, and --tls-ca its certificate)"
    if "dns" in lowered or "resolv" in lowered:
        return " (that host name is not known)"
    if any(word in lowered for word in ("socket closed", "reset", "goaway", "rst_stream", "stream removed")):
        return " (the connection was dropped)"
    if "timed out" in lowered or "timeout" in lowered:
        return " (it did not answer)"
    return ""


def _server_error(error: BaseException, address: str, what: str = "request") -> ServerError:
    """A failure as a sentence that says what happened and what to do; gRPC's own words never show.
    `what` names the call for the sentence: "request", or "job" for a Stylize call."""
    if isinstance(error, ServerError):
        return error
    at = f"the server at {address}"
    if isinstance(error, asyncio.TimeoutError):
        text = f"{at} did not answer in time; it may be busy or the network slow, so try again"
        return ServerError(text, Status.DEADLINE_EXCEEDED)
    if isinstance(error, OSError | StreamTerminatedError | ProtocolError):
        return ServerError(
            f"cannot reach an Impasto server at {address}{_why_unreachable(error)}; {START_SERVER_HINT}",
            Status.UNAVAILABLE,
        )
    said = _said_by_server((error.message or "").strip())
    with_words, without = _SENTENCES.get(error.status, _REFUSED)
    text = (with_words if said and said != _SERVER_FAILED else without).format(
        at=f"the server at {address}", what=what, said=said, address=address, hint=START_SERVER_HINT
    )
    return ServerError(text, error.status)


def _why_unreachable(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return " (nothing answers on that port)"
    if isinstance(error, ssl.SSLError):
        return " (the TLS handshake failed: https:// needs a TLS server, and --tls-ca its certificate)"
    if isinstance(error, socket.gaierror):
        return " (that host name is not known)"
    if isinstance(error, StreamTerminatedError | ConnectionError):
        return " (the connection was dropped)"
    if isinstance(error, ProtocolError):
        return " (what answers there does not speak gRPC over TLS as asked; check http:// or https://)"
    return f" ({getattr(error, 'strerror', None) or error})"
