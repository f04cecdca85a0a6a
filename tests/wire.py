"""Raw-proto helpers: talk to impasto-server the way an outside client (or a hostile one) does.

Nothing here uses impasto.client: calls go through plain `grpc` channels and the generated stubs, every
call has a deadline, and every wait is bounded.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import grpc
import numpy as np
from impasto.v1 import impasto_pb2 as pb
from impasto.v1 import impasto_pb2_grpc
from PIL import Image

STYLIZE = "/impasto.v1.StyleTransfer/Stylize"
CHUNK_BYTES = 1 << 20
_CLOSE = object()

# gRPC shares one TCP connection among a process's channels to the same address unless told not to;
# a call without an impasto-client-id is counted by its connection, so a channel that stands for another
# client needs its own.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


class Call:
    """One Stylize call whose requests the test sends one at a time; events are read in a thread.

    `raw=True` sends bytes as they are (no serialisation), for messages that are not StylizeRequests.
    `read=False` never reads the server's answer: a client that has stopped reading. `metadata`: sent
    with the call (an `impasto-client-id`, a token).
    """

    def __init__(
        self,
        channel: grpc.Channel,
        timeout: float = 120.0,
        raw: bool = False,
        read: bool = True,
        metadata: tuple[tuple[str, str], ...] = (),
    ):
        self._outbox: queue.Queue = queue.Queue()
        self._queued = self._taken = 0
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self.events: list[pb.StylizeEvent] = []
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.started_at = time.monotonic()
        self.ended_at: float | None = None
        serializer = (lambda data: data) if raw else pb.StylizeRequest.SerializeToString
        method = channel.stream_stream(
            STYLIZE, request_serializer=serializer, response_deserializer=pb.StylizeEvent.FromString
        )
        self._call = method(self._requests(), timeout=timeout, metadata=metadata or None)
        self._reader = threading.Thread(target=self._read, daemon=True, name="wire-reader")
        if read:
            self._reader.start()

    # ---- sending -----------------------------------------------------------------------------

    def _requests(self):
        while not self._stop.is_set():
            try:
                item = self._outbox.get(timeout=0.05)
            except queue.Empty:
                continue
            with self._changed:
                self._taken += 1
                self._changed.notify_all()
            if item is _CLOSE:
                return
            yield item

    def send(self, message) -> Call:
        with self._changed:
            self._queued += 1
        self._outbox.put(message)
        return self

    def wait_sent(self, timeout: float = 30.0) -> bool:
        """Waits until gRPC has taken every message queued so far (the last one is on its way)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._taken >= self._queued or self.code is not None, timeout
            )

    def parameters(self, parameters: pb.StylizeParameters) -> Call:
        return self.send(pb.StylizeRequest(parameters=parameters))

    def chunk(self, image: int, data: bytes) -> Call:
        return self.send(pb.StylizeRequest(chunk=pb.Chunk(image=image, data=data)))

    def upload(self, image: int, data: bytes) -> Call:
        for start in range(0, len(data), CHUNK_BYTES):
            self.chunk(image, data[start : start + CHUNK_BYTES])
        return self

    def close(self) -> Call:
        """Half-closes: the client has nothing more to send."""
        return self.send(_CLOSE)

    def cancel(self) -> None:
        self._call.cancel()

    # ---- receiving ---------------------------------------------------------------------------

    def _read(self) -> None:
        try:
            for event in self._call:
                with self._changed:
                    self.events.append(event)
                    self._changed.notify_all()
            code, details = self._call.code(), self._call.details() or ""
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""
        self._stop.set()
        with self._changed:
            self.code, self.details, self.ended_at = code, details, time.monotonic()
            self._changed.notify_all()

    def wait(self, timeout: float = 60.0) -> grpc.StatusCode | None:
        """The final status code, or None if the call has not ended within `timeout`."""
        with self._changed:
            self._changed.wait_for(lambda: self.code is not None, timeout)
            return self.code

    @property
    def done(self) -> bool:
        return self.code is not None

    def wait_for(self, condition: Callable[[pb.StylizeEvent], bool], timeout: float = 30.0):
        """The first event (received or to come) meeting `condition`; None at the deadline or the end."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self.events:
                    if condition(event):
                        return event
                left = deadline - time.monotonic()
                if self.code is not None or left <= 0:
                    return None
                self._changed.wait(left)

    def wait_event(self, kind: str, timeout: float = 30.0):
        return self.wait_for(lambda e: e.WhichOneof("event") == kind, timeout)

    def kinds(self) -> list[str]:
        with self._changed:
            return [e.WhichOneof("event") for e in self.events]

    def queued_positions(self) -> list[int]:
        with self._changed:
            return [e.queued.position for e in self.events if e.HasField("queued")]

    def job_id(self) -> str | None:
        with self._changed:
            for event in self.events:
                if event.HasField("queued"):
                    return event.queued.job_id
                if event.HasField("started"):
                    return event.started.job_id
        return None

    def result(self) -> tuple[pb.ImageHeader, bytes]:
        with self._changed:
            pieces = [e.result for e in self.events if e.HasField("result")]
        assert pieces, f"no result; events {self.kinds()}, status {self.code} {self.details!r}"
        return pieces[0].header, b"".join(p.data for p in pieces)

    def __repr__(self) -> str:
        return f"Call(code={self.code}, details={self.details!r}, events={self.kinds()})"


def stylize(
    channel: grpc.Channel,
    parameters: pb.StylizeParameters,
    images: Iterable[bytes] = (),
    timeout: float = 120.0,
) -> Call:
    """A whole call: parameters, every image's bytes in chunks, close; waits for the end."""
    call = Call(channel, timeout=timeout).parameters(parameters)
    for index, data in enumerate(images):
        call.upload(index, data)
    call.close()
    assert call.wait(timeout + 10) is not None, "the call did not end"
    return call


# ---- parameters ------------------------------------------------------------------------------


def rgba_header(width: int, height: int) -> pb.ImageHeader:
    return pb.ImageHeader(
        format=pb.PIXEL_FORMAT_RGBA8, width=width, height=height, total_bytes=width * height * 4
    )


def encoded_header(data: bytes) -> pb.ImageHeader:
    return pb.ImageHeader(format=pb.PIXEL_FORMAT_ENCODED, total_bytes=len(data))


def parameters(
    content: pb.ImageHeader,
    presets: Iterable[str] = (),
    uploads: Iterable[pb.ImageHeader] = (),
    size: int = 16,
    iterations: int = 1,
    preview: float = -1,
    **fields,
) -> pb.StylizeParameters:
    """Presets first, then one choice per upload (in order); tiny job by default."""
    uploads = list(uploads)
    choices = [pb.StyleChoice(preset_id=p) for p in presets]
    choices += [pb.StyleChoice(upload=i) for i in range(len(uploads))]
    return pb.StylizeParameters(
        styles=choices,
        content=content,
        style_uploads=uploads,
        size=size,
        iterations=iterations,
        preview_interval_seconds=preview,
        **fields,
    )


# ---- images ----------------------------------------------------------------------------------


def noise(width: int, height: int, channels: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def gradient(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth colours plus a little noise, (H, W, 3) uint8."""
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack(
        [ys / max(height - 1, 1), xs / max(width - 1, 1), 1 - ys * xs / max(height * width, 1)], -1
    )
    jitter = np.random.default_rng(seed).random((height, width, 3))
    return ((0.8 * base + 0.2 * jitter) * 255).clip(0, 255).astype(np.uint8)


def encode(pixels: np.ndarray | Image.Image, fmt: str, **options) -> bytes:
    picture = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **options)
    return buffer.getvalue()


# ---- server state ----------------------------------------------------------------------------


def stub(channel: grpc.Channel) -> impasto_pb2_grpc.StyleTransferStub:
    return impasto_pb2_grpc.StyleTransferStub(channel)


def info(channel: grpc.Channel, timeout: float = 10.0) -> pb.ServerInfo:
    return stub(channel).GetServerInfo(pb.GetServerInfoRequest(), timeout=timeout)


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Polls `condition` until it holds or `timeout` passes: a deadline, not a sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def is_idle(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        state = info(channel)
    return state.running_jobs == 0 and state.queue_length == 0


def wait_idle(address: str, timeout: float = 30.0) -> bool:
    return wait_until(lambda: is_idle(address), timeout)


@contextmanager
def channels(address: str, count: int):
    opened = [grpc.insecure_channel(address, options=OWN_CONNECTION) for _ in range(count)]
    try:
        yield opened
    finally:
        for channel in opened:
            channel.close()


# ---- the server's log ------------------------------------------------------------------------


def job_lines(records: Iterable[logging.LogRecord]) -> list[str]:
    """The job log's lines ("job id=… outcome=…"), in order."""
    return [
        r.getMessage() for r in records if r.name == "impasto.jobs" and r.getMessage().startswith("job id=")
    ]


def outcome(line: str) -> str:
    return line.rsplit("outcome=", 1)[-1].split()[0]


def errors(records: Iterable[logging.LogRecord]) -> list[str]:
    """ERROR (or worse) records and records with a traceback."""
    return [
        f"{r.name}: {r.getMessage()}" for r in records if r.levelno >= logging.ERROR or r.exc_info is not None
    ]
