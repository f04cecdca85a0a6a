"""The network client of impasto-server, shared by the `impasto` CLI and the GIMP plug-in.

Pure Python — protobuf's pure-Python runtime, grpclib (HTTP/2 written in Python) and the standard
library — because GIMP's Python on Windows cannot load compiled wheels, and one client that runs in
every GIMP needs no build per Python version. gRPC stays the protocol; grpcio stays the server.

Callers speak `impasto.protocol`: they send `Settings`, `StyleChoice`s and `Image`s and get `Info`,
`Preset`s and a job's events back; every failure is an `ImpastoError` whose sentence a person can act
on. Nothing here returns a protobuf message or asks callers to compare status codes.
"""

from __future__ import annotations

import asyncio
import os
import queue
import socket
import ssl
import threading
import uuid
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path

from grpclib.client import Channel, Stream
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from h2.exceptions import StreamClosedError

from .protocol import (
    KIND_KEY,
    Address,
    Event,
    Image,
    ImageHeader,
    ImpastoError,
    Info,
    JobPlan,
    Kind,
    Parameters,
    Preset,
    Result,
    Settings,
    StyleChoice,
    addresses,
    certificate_fingerprint,
    display_address,
    from_status,
    parse_address,
    wire,
)
from .v1 import impasto_pb2 as pb

SERVICE = "/impasto.v1.StyleTransfer/"


def least_busy(candidates: list[str], **client_args) -> str:
    """Of several servers, the one with the fewest jobs per device that answers; ImpastoError if none does."""
    loads, errors = [], []
    for address in candidates:
        try:
            with Client(address, **{"timeout": 3.0, **client_args}) as client:
                loads.append((client.info().load, address))
        except ImpastoError as error:
            errors.append(f"{display_address(address)}: {error.detail or error}")
    if not loads:
        detail = "none of them answered: " + "; ".join(errors)
        raise ImpastoError(Kind.UNREACHABLE, detail, ", ".join(map(display_address, candidates)))
    return min(loads)[1]


def impasto_answers(address: str, timeout: float = 2.0) -> bool:
    """Whether an impasto-server answers at `address`: its info, or its refusal of a missing token."""
    try:
        with Client(address, timeout=timeout) as client:
            client.info()
    except ImpastoError as error:
        return error.kind is Kind.UNAUTHENTICATED
    return True


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
        """`address`: `host:port` (plaintext), `https://host:port` (TLS, verified against the system's
        roots, or `tls_ca`) or a pairing string (TLS to the server whose certificate it pins, with its
        token); several separated by commas: the least busy one that answers. A token goes in clear only
        to this machine, or with `insecure` (else ImpastoError INSECURE, nothing sent); to a paired
        server only once its certificate is the pinned one (else ImpastoError NOT_PAIRED, nothing sent)."""
        servers = addresses(address)
        if len(servers) > 1:
            servers = [least_busy(servers, token=token, tls_ca=tls_ca, insecure=insecure)]
        target = parse_address(servers[0])
        self.address = display_address(servers[0])  # for sentences: without a pairing string's token
        self.timeout = timeout
        tls = target.tls or tls_ca is not None
        if not token:  # a pairing string's own token, else $IMPASTO_TOKEN unless "" said "none"
            token = target.token or (os.environ.get("IMPASTO_TOKEN") if token is None else None)
        if token and not tls and not insecure and not target.loopback:
            raise ImpastoError(Kind.INSECURE, server=self.address)
        # A random id per Client: behind a proxy every user may share one connection, and the server's
        # limits per client count by this id.
        self._metadata = {wire.CLIENT_ID_KEY: uuid.uuid4().hex}
        if token:
            self._metadata["authorization"] = f"Bearer {token}"
        if target.fingerprint:
            context = _pinned_context(target, timeout)
        else:
            context = _tls_context(tls_ca) if tls else None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="impasto-client", daemon=True)
        self._thread.start()
        self._channel = self._run(_open_channel(target.host, target.port, context))

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
        return wire.from_message(self._unary("GetServerInfo", pb.GetServerInfoRequest(), pb.ServerInfo), Info)

    def styles(self) -> list[Preset]:
        reply = self._unary("ListStyles", pb.ListStylesRequest(), pb.ListStylesResponse)
        return [wire.from_message(preset, Preset) for preset in reply.styles]

    def thumbnail(self, preset_id: str) -> bytes:
        """A preset's thumbnail, PNG with a long side of at most 256 px."""
        request = pb.GetStyleThumbnailRequest(id=preset_id)
        return self._unary("GetStyleThumbnail", request, pb.StyleThumbnail).png

    def plan(
        self,
        content: ImageHeader,
        styles: Sequence[StyleChoice],
        settings: Settings | None = None,
        uploads: Sequence[ImageHeader] = (),
    ) -> JobPlan:
        """What the job would do and cost on this server, from the images' sizes (their headers) alone:
        nothing is uploaded. ImpastoError for a job the server would refuse, as Stylize would."""
        parameters = Parameters(content, tuple(styles), tuple(uploads), settings or Settings())
        return wire.from_message(
            self._unary("PlanJob", wire.parameters_message(parameters), pb.JobPlan), JobPlan
        )

    def require_full_size(self) -> None:
        """ImpastoError unless this server paints at full size: an older one ignores the setting and
        would paint at its working size without a word."""
        if not self.info().limits.full_size:
            detail = "it cannot paint at the content's full size (an older impasto-server); update it"
            raise ImpastoError(Kind.INCOMPATIBLE, detail, self.address)

    def stylize(
        self,
        content: Image,
        styles: Sequence[StyleChoice],
        settings: Settings | None = None,
        uploads: Sequence[Image] = (),
    ) -> RemoteJob:
        """Starts a job: `styles` name presets or `uploads` (by index). Its events come from the job."""
        job = RemoteJob(self.address)
        requests = list(wire.request_messages(content, styles, uploads, settings or Settings()))
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
            try:
                async with stream:
                    await stream.send_message(request, end=True)
                    return await stream.recv_message()
            except BaseException as error:  # noqa: BLE001 - every failure becomes the user's sentence
                raise _failure(error, self.address, stream) from None

        return self._run(call())

    async def _stylize(self, job: RemoteJob, requests: list[pb.StylizeRequest]) -> None:
        """Runs the call; whatever happens, the job's last item is its result or its error."""
        stream = None
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
        except BaseException as error:
            job._put(_failure(error, self.address, stream))
            if not isinstance(error, Exception | asyncio.CancelledError):
                raise


class RemoteJob:
    """A running Stylize call: iterate `events()`; `cancel()` from any thread."""

    def __init__(self, address: str):
        self.address = address
        self.result: Image | None = None
        self._items: queue.Queue = queue.Queue()
        self._future = None

    def cancel(self) -> None:
        """Stops the job on the server (the call is cancelled, which the server treats as a stop)."""
        if self._future is not None:
            self._future.cancel()

    def events(self) -> Iterator[Event]:
        """Queued, Started, Progress and Preview events, and last the Result (also kept in `result`).
        Raises ImpastoError when the job fails or is cancelled."""
        while True:
            item = self._items.get()
            if isinstance(item, ImpastoError):
                raise item
            if isinstance(item, Image):
                self.result = item
                yield Result(item)
                return
            yield item

    def _put(self, item: Event | Image | ImpastoError) -> None:
        self._items.put(item)


async def _open_channel(host: str, port: int, context: ssl.SSLContext | None) -> Channel:
    return Channel(host, port, ssl=context)


def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    return _for_grpc(context)


def _for_grpc(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])  # gRPC runs on HTTP/2
    return context


def _pinned_context(target: Address, timeout: float) -> ssl.SSLContext:
    """A TLS context that trusts exactly the certificate a pairing string pins, and nothing else.

    The certificate is fetched first over a TLS handshake that verifies nothing and sends nothing, and
    compared with the pinned SHA-256; only the same certificate becomes the context's one trust anchor,
    so the real connection (and the token in it) can reach no other server. Host names are not checked:
    the pin says which server this is, whatever name or address reached it."""
    server = str(target)
    probe = _for_grpc(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    probe.check_hostname, probe.verify_mode = False, ssl.CERT_NONE
    try:
        with (
            socket.create_connection((target.host, target.port), timeout=timeout) as raw,
            probe.wrap_socket(raw) as connection,
        ):
            certificate = connection.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as error:
        raise ImpastoError(Kind.UNREACHABLE, _why_unreachable(error), server) from None
    if certificate is None or certificate_fingerprint(certificate) != target.fingerprint:
        raise ImpastoError(Kind.NOT_PAIRED, server=server)
    pinned = _for_grpc(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    pinned.check_hostname = False
    pinned.load_verify_locations(cadata=ssl.DER_cert_to_PEM_cert(certificate))
    return pinned


async def _receive(stream: Stream, job: RemoteJob) -> Image:
    result = wire.ResultAssembler()
    async for message in stream:
        event = wire.event_from_message(message)
        if event is not None:
            job._put(event)
        elif message.HasField("result"):
            result.add(message.result)
    if result.image is None:
        await stream.recv_trailing_metadata()  # raises the status the server ended the call with
        raise ImpastoError(Kind.BUG, "it ended the job without a result", job.address)
    return result.image


def _failure(error: BaseException, address: str, stream: Stream | None) -> ImpastoError:
    """What ended a call, as the error its user reads."""
    if isinstance(error, ImpastoError):
        return error
    if not isinstance(error, GRPCError):
        error = _status_received(stream) or error
    if isinstance(error, GRPCError):
        return from_status(error.status.name, (error.message or "").strip(), _kind_sent(stream), address)
    if isinstance(error, asyncio.CancelledError):
        return ImpastoError(Kind.CANCELLED, "nothing was written", address)
    if isinstance(error, asyncio.TimeoutError):
        return from_status("DEADLINE_EXCEEDED", "", None, address)
    if isinstance(error, OSError | StreamTerminatedError | StreamClosedError | ProtocolError):
        return ImpastoError(Kind.UNREACHABLE, _why_unreachable(error), address)
    return ImpastoError(Kind.CLIENT_BUG, f"{type(error).__name__}: {error}", address)


def _kind_sent(stream: Stream | None) -> str | None:
    """The error kind the server put in the call's trailers. grpclib keeps them as `trailing_metadata`
    when it read them itself; when the server ended the call while the upload was still being sent,
    only the raw header block holds them."""
    metadata = getattr(stream, "trailing_metadata", None)
    if metadata:
        return metadata.get(KIND_KEY)
    raw = getattr(stream, "_stream", None)  # grpclib's HTTP/2 stream: what arrived, parsed or not
    for block in (getattr(raw, "trailers", None), getattr(raw, "headers", None)):
        kind = dict(block or ()).get(KIND_KEY)
        if kind is not None:
            return kind
    return None


def _status_received(stream: Stream | None) -> GRPCError | None:
    """The failing status the server ended the call with, when grpclib received it but raised something
    else: with the upload still going, it may fail the next send with h2's StreamClosedError (or a late
    cancellation) instead."""
    try:
        stream._maybe_raise()  # grpclib's own reading of the headers and trailers that arrived
    except GRPCError as status:
        return status
    except AttributeError:  # no stream yet, or a grpclib that reads them otherwise
        pass
    return None


def _why_unreachable(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "nothing answers on that port"
    if isinstance(error, ssl.SSLError):
        return "the TLS handshake failed: an https:// address needs a TLS server, and its certificate"
    if isinstance(error, socket.gaierror):
        return "that host name is not known"
    if isinstance(error, StreamTerminatedError | StreamClosedError | ConnectionError):
        return "the connection was dropped"
    if isinstance(error, ProtocolError):
        return "what answers there does not speak gRPC as asked; check http:// or https://"
    return str(getattr(error, "strerror", None) or error)
