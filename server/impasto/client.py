"""A small client for impasto-server, shared by the `impasto` CLI and the GIMP plug-in.

Needs only grpcio, protobuf and the generated stubs — no torch, no numpy — because GIMP's Python
has neither.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from .v1 import impasto_pb2 as pb
from .v1 import impasto_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
CHUNK_BYTES = 1 << 20  # the contract's largest chunk of image data
START_SERVER_HINT = "start one there with `impasto-server` (or pass another address with --server HOST:PORT)"


def resolve_address(address: str | None) -> str:
    return address or os.environ.get("IMPASTO_SERVER") or DEFAULT_ADDRESS


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_address(address: str) -> tuple[str, bool]:
    """`host:port` (plaintext) or `https://host:port` (TLS) -> (host:port, tls)."""
    if address.startswith("https://"):
        return address.removeprefix("https://").rstrip("/"), True
    return address.removeprefix("http://").rstrip("/"), False


class InsecureToken(ValueError):
    """A token would cross the network in clear."""


class ServerError(Exception):
    """A call failed; `code` is the gRPC status, the message says what to do."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


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
    preserve_colors: bool = False
    seed: int = 0
    style_scale: float = 1.0
    preview_seconds: float = 2.0  # negative: no previews


@dataclass
class RemoteJob:
    """A running Stylize call: iterate `events()`, then read `result`; `cancel()` from any thread."""

    call: grpc.Future
    address: str
    result: Image | None = None
    _parts: list[bytes] = field(default_factory=list)

    def cancel(self) -> None:
        self.call.cancel()

    def events(self) -> Iterator[pb.StylizeEvent]:
        """Queued, started, progress and preview events; the result is gathered into `result`."""
        header = None
        try:
            for event in self.call:
                if event.HasField("result"):
                    if event.result.HasField("header"):
                        header = event.result.header
                    self._parts.append(event.result.data)
                else:
                    yield event
        except grpc.RpcError as error:
            raise _server_error(error, self.address, "job") from None
        if header is None:
            raise ServerError(
                grpc.StatusCode.INTERNAL, f"the server at {self.address} ended without a result"
            )
        data = b"".join(self._parts)
        self._parts.clear()
        encoded = header.format == pb.PIXEL_FORMAT_ENCODED
        self.result = Image(data, header.width, header.height, encoded)


class Client:
    def __init__(
        self,
        address: str | None = None,
        token: str | None = None,
        tls_ca: Path | None = None,
        timeout: float = 10.0,
        insecure: bool = False,
    ):
        """`address`: `host:port` (plaintext) or `https://host:port` (TLS, verified against the system's
        roots, or `tls_ca`). A token goes in clear only to this machine, or with `insecure`."""
        self.address = resolve_address(address)
        self.timeout = timeout
        target, tls = split_address(self.address)
        tls = tls or tls_ca is not None
        token = token if token is not None else os.environ.get("IMPASTO_TOKEN")
        host = target.rsplit(":", 1)[0] if ":" in target else target
        if token and not tls and not insecure and not is_loopback(host):
            raise InsecureToken(
                f"refusing to send the token in clear to {host}: anyone on the network could read it. "
                f"Use TLS (https://{target}, with --tls-ca CERT for a self-signed server), an SSH tunnel "
                "to 127.0.0.1, or --insecure if the network is private and you accept that"
            )
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [
            ("grpc.max_receive_message_length", CHUNK_BYTES + (64 << 10)),
            # A client is one connection of its own (gRPC would share one among a process's channels),
            # which is what the server's per-connection limits count.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if tls:
            roots = Path(tls_ca).read_bytes() if tls_ca is not None else None
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = impasto_pb2_grpc.StyleTransferStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def info(self) -> pb.ServerInfo:
        return self._unary(self._stub.GetServerInfo, pb.GetServerInfoRequest())

    def styles(self) -> list[pb.StylePreset]:
        return list(self._unary(self._stub.ListStyles, pb.ListStylesRequest()).styles)

    def thumbnail(self, preset_id: str) -> bytes:
        """A preset's thumbnail, PNG with a long side of at most 256 px."""
        return self._unary(self._stub.GetStyleThumbnail, pb.GetStyleThumbnailRequest(id=preset_id)).png

    def stylize(self, content: Image, styles: list[StyleSpec], settings: Settings | None = None) -> RemoteJob:
        call = self._stub.Stylize(_requests(content, styles, settings or Settings()), metadata=self._metadata)
        return RemoteJob(call, self.address)

    def _unary(self, method: Callable, request):
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise _server_error(error, self.address) from None


def _requests(content: Image, styles: list[StyleSpec], settings: Settings) -> Iterator[pb.StylizeRequest]:
    uploads = [s.image for s in styles if s.image is not None]
    choices = []
    for spec in styles:
        if spec.image is not None:
            choices.append(
                pb.StyleChoice(
                    upload=uploads.index(spec.image), weight=spec.weight, save_as_preset=spec.save_as
                )
            )
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


def _server_error(error: grpc.RpcError, address: str, what: str = "request") -> ServerError:
    """A status as a sentence that says what happened and what to do; gRPC's own words never show.
    `what` names the call for the sentence: "request", or "job" for a Stylize call."""
    code, details = error.code(), (error.details() or "").strip()
    said, at, status = _said_by_server(details), f"the server at {address}", grpc.StatusCode
    if code == status.CANCELLED:
        text = f"{at} cancelled the {what}: {said}" if said else "cancelled"
    elif code == status.UNAVAILABLE:
        text = (
            f"{at} is not available now: {said}"
            if said
            else f"cannot reach an Impasto server at {address}{_why_unreachable(details)}; "
            + START_SERVER_HINT
        )
    elif code == status.DEADLINE_EXCEEDED:
        text = (
            f"{at} gave up on the {what}: {said}"
            if said
            else f"{at} did not answer in time; it may be busy or the network slow, so try again"
        )
    elif code == status.UNAUTHENTICATED:
        text = (
            f"{at} did not accept the token: {said}"
            if said
            else f"{at} wants a token; give it with --token-file FILE or $IMPASTO_TOKEN"
        )
    elif code == status.RESOURCE_EXHAUSTED:
        text = (
            f"{at} cannot take the {what} now: {said}"
            if said
            else f"a message from {address} was larger than this client accepts; "
            "install the same impasto release on both sides"
        )
    elif code in (status.UNKNOWN, status.INTERNAL):
        if "exception iterating" in details.lower():
            text = (
                f"sending the {what} to {address} failed in this client (a bug in impasto: please report it)"
            )
        elif said and said != _SERVER_FAILED:
            text = f"{at} failed: {said}; its log has details"
        else:
            text = f"{at} failed; its log has details"
    elif code == status.UNIMPLEMENTED:
        text = (
            f"{at} does not offer this call: it runs another version of impasto-server, or is not one; "
            "install the same impasto release on both sides"
        )
    elif code == status.PERMISSION_DENIED:
        text = f"{at} does not allow this: {said or 'ask whoever runs it'}"
    elif said:  # INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION and the rest
        text = f"{at} refused the {what}: {said}"
    else:
        text = f"{at} could not complete the {what}; try again, and see its log if it keeps failing"
    return ServerError(code, text)
