"""`impasto-server`: the gRPC server GIMP talks to, on this machine or a GPU machine."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import math
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .. import __version__
from ..arguments import add_engine_arguments, byte_size
from ..launcher import EXIT_PORT_IN_USE
from ..paths import DEFAULT_STYLES_DIR
from ..protocol import CHUNK_BYTES, Limits, is_loopback
from ..v1 import impasto_pb2 as pb
from .auth import TokenInterceptor, read_token, server_credentials
from .servicer import SERVICE_NAME, StyleTransferServicer, lenient
from .styles_command import styles_main, take_styles_dir

log = logging.getLogger("impasto.server")
# Host bytes per uploaded pixel while a job lives (raw RGBA, float RGB, resized copies, the reply):
# the default largest image is what a host's memory holds.
HOST_BYTES_PER_PIXEL = 160
LINGER_SECONDS = 0.5  # at shutdown, for the last statuses to leave the machine


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="impasto-server",
        description="Serve Impasto's style transfer over gRPC.",
        epilog="Manage the style presets without a running server: impasto-server styles list | "
        "fetch | import FOLDER [--styles-dir DIR] (see impasto-server styles --help).",
    )
    parser.add_argument("--version", action="version", version=f"impasto-server {__version__}")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"
    )
    parser.add_argument("--port", type=int, default=50051, help="port (default: 50051; 0 picks a free one)")
    add_engine_arguments(parser, DEFAULT_STYLES_DIR, several_devices=True)
    parser.add_argument(
        "--token-file", type=Path, help="file holding the token clients must send (else IMPASTO_TOKEN)"
    )
    parser.add_argument(
        "--tls-cert", type=Path, help="PEM certificate chain, with --tls-key, to serve over TLS"
    )
    parser.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening beyond this machine without a token (anyone who can reach it may use it)",
    )
    limits = parser.add_argument_group(
        "limits (a client that crosses one gets a status naming it; byte sizes take units: 512MiB, 4GiB)"
    )
    limits.add_argument(
        "--max-queue", type=int, default=Limits.max_queue, help="jobs that may wait (default: %(default)s)"
    )
    limits.add_argument(
        "--max-pixels",
        type=int,
        help=f"largest image accepted, in pixels (default: from RAM, ≤ {Limits.max_pixels:,})",
    )
    limits.add_argument(
        "--max-size", type=int, help="largest working long side (default: from device memory)"
    )
    limits.add_argument(
        "--max-styles",
        type=int,
        default=Limits.max_styles,
        help="styles per job, and uploads (default: %(default)s)",
    )
    limits.add_argument(
        "--max-request-bytes",
        type=byte_size(),
        default=Limits.max_request_bytes,
        metavar="BYTES",
        help="image bytes one job may upload (default: 512MiB)",
    )
    limits.add_argument(
        "--max-inflight-bytes",
        type=byte_size(),
        metavar="BYTES",
        help="memory for all uploads in progress and their decoded pixels "
        "(default: a quarter of RAM, at most 16GiB)",
    )
    limits.add_argument(
        "--upload-timeout",
        type=float,
        default=Limits.upload_timeout_seconds,
        help="seconds for a call's parameters to arrive; its upload gets this plus its size at "
        "--min-upload-rate (default: %(default)g)",
    )
    limits.add_argument(
        "--min-upload-rate",
        type=byte_size(),
        default=Limits.min_upload_bytes_per_second,
        metavar="BYTES",
        help="bytes a second (default: 1MiB)",
    )
    limits.add_argument(
        "--max-streams-per-client",
        type=int,
        default=Limits.max_streams_per_client,
        help="open Stylize calls per connection (default: %(default)s)",
    )
    limits.add_argument(
        "--max-streams",
        type=int,
        default=Limits.max_streams,
        help="open Stylize calls in all (default: %(default)s)",
    )
    parser.add_argument(
        "--idle-exit",
        type=_minutes,
        default=0.0,
        metavar="MINUTES",
        help="end the server once it has had no call and no job for this long (fractions allowed); "
        "a job running or waiting is never cut (default: 0, run until stopped)",
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=10.0,
        help="on SIGTERM/SIGINT, how long a running job may finish before it is stopped (default: 10)",
    )
    return parser


def _minutes(text: str) -> float:
    try:
        minutes = float(text)
    except ValueError:
        minutes = math.nan
    if not (math.isfinite(minutes) and minutes >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes (e.g. 20, or 0.5)")
    return minutes


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "styles" in argv:
        styles_dir, rest = take_styles_dir(argv)
        if rest[:1] == ["styles"]:
            return styles_main((["--styles-dir", styles_dir] if styles_dir else []) + rest[1:])
    args = build_parser().parse_args(argv)
    if not args.styles_dir.is_dir():
        print(
            f"impasto-server: styles folder {args.styles_dir} does not exist yet; serving the built-in "
            "presets; it will be created when a style is saved or imported",
            file=sys.stderr,
        )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        token = read_token(args.token_file, os.environ.get("IMPASTO_TOKEN"))
    except (OSError, ValueError) as error:
        print(f"impasto-server: cannot read the token: {error}", file=sys.stderr)
        return 2
    if not is_loopback(args.host) and token is None and not args.insecure:
        print(
            f"impasto-server: refusing to listen on {args.host} without a token: anyone who can reach this "
            "machine could use it. Give --token-file FILE (or IMPASTO_TOKEN), or --insecure if the network "
            "is private and you accept that.",
            file=sys.stderr,
        )
        return 2
    if (args.tls_cert is None) != (args.tls_key is None):
        print("impasto-server: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    stop = threading.Event()
    try:
        port, shutdown = start(args, token, on_idle=stop.set)
    except CannotListen as error:
        print(f"impasto-server: {error}", file=sys.stderr)
        return EXIT_PORT_IN_USE if error.in_use else 2
    scheme = "TLS" if args.tls_cert else "plaintext"
    print(
        f"impasto-server listening on {args.host}:{port} ({scheme}{', token required' if token else ''})",
        file=sys.stderr,
        flush=True,
    )
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stop.set())
    stop.wait()
    shutdown()
    return 0


class CannotListen(Exception):
    def __init__(self, message: str, in_use: bool):
        super().__init__(message)
        self.in_use = in_use  # the port is taken: by another impasto-server, or another program


def start(
    args: argparse.Namespace, token: str | None, on_idle: Callable[[], None] | None = None
) -> tuple[int, Callable[[], None]]:
    """Loads the model, binds the port and serves from a thread of its own; returns (port, shutdown).

    `shutdown()` is what SIGTERM does: new calls are refused, waiting jobs end UNAVAILABLE at once,
    the running job gets --grace-seconds to finish; it returns once the server has stopped.
    With --idle-exit, `on_idle()` is called (from a thread of its own) once the server has had no call
    and no job for that long; main() then shuts down as on SIGTERM. Raises CannotListen.
    """
    # Engine imports pull in torch; kept here so that `--help` answers at once.
    from ..engine import describe
    from ..engine.loading import load_engines
    from ..jobs import Jobs
    from ..library import StyleLibrary

    engines = load_engines(args.device, precision=args.precision)
    for engine in engines:
        engine.warm_up()  # load and place the network once, before the first job
    devices = [describe(engine.device) for engine in engines]
    limits = limits_from(args, engines)
    library = StyleLibrary(args.styles_dir, limits.max_pixels)
    jobs = Jobs(engines, library, limits)
    log.info(
        "devices %s, weights %s, styles from %s, %s",
        ", ".join(f"{e.device} ({d.name}, {e.precision})" for e, d in zip(engines, devices, strict=True)),
        engines[0].weights.name,
        args.styles_dir,
        limits,
    )
    servicer = StyleTransferServicer(jobs, idle_exit_minutes=args.idle_exit)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="impasto-grpc", daemon=True)
    thread.start()
    try:
        server, health_servicer, port = asyncio.run_coroutine_threadsafe(
            _serve(args, token, servicer), loop
        ).result()
    except CannotListen:
        jobs.close(0)
        loop.call_soon_threadsafe(loop.stop)
        raise
    stopped_serving = threading.Event()
    if args.idle_exit and on_idle is not None:
        threading.Thread(
            target=_watch_idle, args=(servicer, args.idle_exit, stopped_serving, on_idle), daemon=True
        ).start()

    async def stop() -> None:
        log.info("shutting down: no new calls; a running job gets %.0f s to finish", args.grace_seconds)
        servicer.closing.set()
        await health_servicer.enter_graceful_shutdown()
        stopped = await asyncio.to_thread(jobs.close, args.grace_seconds)
        # Every job has ended and told its call; only then does gRPC's stop send GOAWAY (on which some
        # clients, grpclib among them, drop every stream of the connection at once).
        if await servicer.drain(timeout=5):
            # A call's status handed to gRPC at the last moment is not yet on the wire, and gRPC offers
            # nothing to await for that; measured: without this linger 3 of 10 clients lost it.
            await asyncio.sleep(LINGER_SECONDS)
        await server.stop(grace=1)
        log.info("stopped%s", "" if stopped else "; a job did not stop in time")

    def shutdown() -> None:
        stopped_serving.set()
        asyncio.run_coroutine_threadsafe(stop(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()

    return port, shutdown


def limits_from(args: argparse.Namespace, engines: list) -> Limits:
    """The flags' limits; those left out follow this host's memory and the first device's."""
    from ..engine import describe
    from ..engine.device import host_memory_bytes, max_working_size

    engine = engines[0]
    return Limits(
        max_pixels=args.max_pixels or min(Limits.max_pixels, host_memory_bytes() // HOST_BYTES_PER_PIXEL),
        max_size=args.max_size or max_working_size(describe(engine.device), engine.precision),
        max_queue=args.max_queue,
        max_styles=args.max_styles,
        max_request_bytes=args.max_request_bytes,
        max_inflight_bytes=args.max_inflight_bytes or min(16 << 30, host_memory_bytes() // 4),
        memory_budget=args.memory_budget,
        upload_timeout_seconds=args.upload_timeout,
        min_upload_bytes_per_second=args.min_upload_rate,
        max_streams_per_client=args.max_streams_per_client,
        max_streams=args.max_streams,
    )


def _watch_idle(
    servicer: StyleTransferServicer, minutes: float, stopped: threading.Event, on_idle: Callable[[], None]
) -> None:
    if servicer.activity.wait_until_idle(minutes * 60, stopped):
        log.info("no call and no job for %g minutes (--idle-exit %g): shutting down", minutes, minutes)
        on_idle()


async def _serve(args: argparse.Namespace, token: str | None, servicer: StyleTransferServicer):
    server = grpc.aio.server(
        interceptors=[TokenInterceptor(token)] if token else [],
        options=[
            # Incoming messages are chunks of at most 1 MiB and small parameters; outgoing ones are
            # result chunks, thumbnails (≤ 256 px) and the preset list (bounded metadata).
            ("grpc.max_receive_message_length", CHUNK_BYTES + (64 << 10)),
            ("grpc.max_send_message_length", 8 << 20),
            # gRPC's default lets a second server bind the same port and share its calls at random:
            # two impasto-servers started at once must not both serve.
            ("grpc.so_reuseport", 0),
        ],
    )
    server.add_generic_rpc_handlers([_handlers(servicer)])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{args.host}:{args.port}"
    try:
        if args.tls_cert:
            port = server.add_secure_port(address, server_credentials(args.tls_cert, args.tls_key))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as error:  # gRPC says only "Failed to bind to address"
        if _port_in_use(args.host, args.port):
            raise CannotListen(
                f"cannot listen on {address}: the port is in use, by another impasto-server or another "
                "program; stop that one, or give another --port",
                in_use=True,
            ) from error
        raise CannotListen(f"cannot listen on {address}; check --host and --port", in_use=False) from error
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer, port


def _port_in_use(host: str, port: int) -> bool:
    try:
        family, kind, proto, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            if os.name == "posix":  # as gRPC does: a closed connection's lingering state is no user
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(where)
    except OSError as error:
        return error.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", None))
    return False


def _handlers(servicer: StyleTransferServicer) -> grpc.GenericRpcHandler:
    """The service's methods, with requests that do not parse handed to the servicer as Malformed."""
    unary = {
        "GetServerInfo": pb.GetServerInfoRequest,
        "ListStyles": pb.ListStylesRequest,
        "GetStyleThumbnail": pb.GetStyleThumbnailRequest,
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=lenient(message.FromString),
            response_serializer=lambda reply: reply.SerializeToString(),
        )
        for name, message in unary.items()
    }
    handlers["Stylize"] = grpc.stream_stream_rpc_method_handler(
        servicer.Stylize,
        request_deserializer=lenient(pb.StylizeRequest.FromString),
        response_serializer=lambda reply: reply.SerializeToString(),
    )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


if __name__ == "__main__":
    sys.exit(main())
