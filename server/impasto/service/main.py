"""`impasto-server`: the gRPC server GIMP talks to, on this machine or a GPU machine."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
from grpc._cython import cygrpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..launcher import EXIT_PORT_IN_USE
from ..protocol import CHUNK_BYTES, Limits, is_loopback, pairing_string
from ..v1 import impasto_pb2 as pb
from .auth import TokenInterceptor, read_token, server_credentials
from .pairing import advertised_host, fingerprint_of, secrets_in
from .parser import DEFAULT_HOST, build_parser
from .servicer import SERVICE_NAME, StyleTransferServicer, lenient
from .styles_command import styles_main, take_styles_dir

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("impasto.server")
# Host bytes per uploaded pixel while a job lives (raw RGBA, float RGB, resized copies, the reply):
# the default largest image is what a host's memory holds.
HOST_BYTES_PER_PIXEL = 160
# At shutdown, how long clients told "shutting down" get to read that status and hang up.
HANG_UP_SECONDS = 5.0


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
    if args.new_secrets and not args.remote:
        print("impasto-server: --new-secrets goes with --remote", file=sys.stderr)
        return 2
    args.host = args.host or ("[::]" if args.remote else DEFAULT_HOST)
    try:
        # With --remote, $IMPASTO_TOKEN (a client's setting, too) does not replace the server's own.
        token = read_token(args.token_file, None if args.remote else os.environ.get("IMPASTO_TOKEN"))
    except (OSError, ValueError) as error:
        print(f"impasto-server: cannot read the token: {error}", file=sys.stderr)
        return 2
    if args.remote:
        try:
            made = secrets_in(args.state_dir, renew=args.new_secrets)
        except OSError as error:
            print(f"impasto-server: cannot keep the secrets in {args.state_dir}: {error}", file=sys.stderr)
            return 2
        token = token or made.token
        if args.tls_cert is None and args.tls_key is None:
            args.tls_cert, args.tls_key = made.cert, made.key
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
    # Before anything is printed: whoever reads the first line may stop the server at once.
    stop = _StopRequest()
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
    if args.remote:
        host = args.advertise or advertised_host(args.host)
        print(pairing_string(host, port, token, fingerprint_of(args.tls_cert)), flush=True)
        print(
            "impasto-server: paste the line above into GIMP's Impasto dialog (Server), or give it to "
            "`impasto --server`; it holds the token, so keep it as private as a password",
            file=sys.stderr,
            flush=True,
        )
    stop.wait()
    shutdown()
    return 0


class _StopRequest:
    """SIGTERM, SIGINT or the idle watcher asks the main thread to shut down.

    A self-pipe rather than a threading.Event: a signal handler runs on the main thread between two
    bytecodes, possibly while that thread holds the Event's lock inside wait(), and setting the Event
    there deadlocks (seen under load when SIGTERM came right after the first line). The C-level
    handler writes the signal's number to the pipe itself, so the Python handler has nothing to do."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()  # sockets: what set_wakeup_fd takes on Windows too
        self._write.setblocking(False)
        signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signal_number, lambda *_: None)

    def set(self) -> None:
        """From any thread but a signal handler's."""
        with contextlib.suppress(BlockingIOError):  # full: requests enough are waiting already
            self._write.send(b"\0")

    def wait(self) -> None:
        self._read.recv(1)


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
        _warm_up(engine)
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
        await servicer.streams.drain(timeout=5)
        # Every job has ended and told its call. gRPC's stop then sends GOAWAY and a PING, which grpclib
        # (the plug-in's and the CLI's client) takes as the end of every stream of the connection: a
        # status it has received but not yet handed to its caller is lost, and one read together with
        # the GOAWAY too (h2 refuses the PING that follows, and with it the whole read). So the server
        # stops once its clients have read their statuses, which they show by hanging up; one that
        # stays connected (an idle dialog) holds it for HANG_UP_SECONDS at most.
        if not await _hung_up(port, HANG_UP_SECONDS):
            log.info("a client is still connected after %.0f s; stopping", HANG_UP_SECONDS)
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
        parameters_timeout_seconds=args.parameters_timeout,
        upload_timeout_seconds=args.upload_timeout,
        download_timeout_seconds=args.download_timeout,
        min_download_bytes_per_second=args.min_download_rate,
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


async def _hung_up(port: int, timeout: float) -> bool:
    """Waits, up to `timeout`, until no client is connected to `port`; True if none is left."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while port in _connected_ports():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _connected_ports() -> set[int]:
    """The local ports of this process's open server connections, from gRPC's own register of its
    sockets (channelz, which grpcio-channelz serves; gRPC has no public call that lists them)."""
    ports = set()
    for server in json.loads(cygrpc.channelz_get_servers(0)).get("server", []):
        server_id = int(server["ref"]["serverId"])
        sockets = _channelz(cygrpc.channelz_get_server_sockets, server_id, 0, 0).get("socketRef", [])
        for reference in sockets:
            entry = _channelz(cygrpc.channelz_get_socket, int(reference["socketId"])).get("socket", {})
            ports.add(entry.get("local", {}).get("tcpipAddress", {}).get("port"))
    return ports


def _channelz(query: Callable[..., str], *ids: int) -> dict:
    """A channelz entry; empty if it has gone since it was listed (a closed connection, a stopped server)."""
    try:
        return json.loads(query(*ids))
    except ValueError:
        return {}


def _warm_up(engine: Engine) -> None:
    """Loads and places the network once, before the first job, and where no job has run on this device yet
    measures its pace; logs which, and the pace its plans start from."""
    import torch

    measures = not engine.pace_measured
    started = time.monotonic()
    try:
        engine.warm_up()
    except torch.OutOfMemoryError as error:
        # A GPU that other programs fill now may have room later, and the jobs refuse or tile what does not
        # fit: the server still serves.
        log.warning(
            "%s: too little free memory to warm up and measure its pace (%s); the first job will pay the "
            "set-up and is planned from a guess",
            engine.device,
            str(error).splitlines()[0],
        )
        return
    cost = engine.cost_model
    log.info(
        "%s ready in %.1f s; plans at %.1f ms a pass + %.3f µs a pixel-iteration, %s",
        engine.device,
        time.monotonic() - started,
        cost.seconds_per_pass * 1e3,
        cost.seconds_per_pixel_iteration * 1e6,
        "measured now" if measures else f"as kept in {engine.learned_costs.path}",
    )


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
    address = f"{args.host or DEFAULT_HOST}:{args.port}"
    try:
        if args.tls_cert:
            port = server.add_secure_port(address, server_credentials(args.tls_cert, args.tls_key))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as error:  # gRPC says only "Failed to bind to address"
        if _port_in_use(args.host or DEFAULT_HOST, args.port):
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
        "PlanJob": pb.StylizeParameters,
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
