"""`impasto-server`: the gRPC server GIMP talks to, on this machine or a GPU machine."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc._cython import cygrpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .. import __version__
from ..client import CHUNK_BYTES, is_loopback
from ..library import DEFAULT_STYLES_DIR
from ..v1 import impasto_pb2 as pb
from .auth import TokenInterceptor, read_token, server_credentials
from .servicer import SERVICE_NAME, StyleTransferServicer, Transport, lenient

log = logging.getLogger("impasto.server")
# Host bytes per uploaded pixel while a job lives (raw RGBA, float RGB, resized copies, the reply):
# the default largest image is what a host's memory holds.
HOST_BYTES_PER_PIXEL = 160
MAX_UPLOAD_PIXELS = 100_000_000
# At shutdown, how long clients told "shutting down" get to read that status and hang up.
HANG_UP_SECONDS = 5.0


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
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (default), cpu, cuda, cuda:N, mps; several separated by commas (cuda:0,cuda:1), or all "
        "(every CUDA GPU): one worker per device, fed by one queue",
    )
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument(
        "--styles-dir",
        type=Path,
        default=DEFAULT_STYLES_DIR,
        help="your own style presets, served beside the built-in ones (default: %(default)s)",
    )
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
    limits = parser.add_argument_group("limits (a client that crosses one gets a status naming it)")
    limits.add_argument("--max-queue", type=int, default=8, help="jobs that may wait (default: 8)")
    limits.add_argument(
        "--max-pixels", type=int, help="largest image accepted, in pixels (default: from RAM, ≤ 100 M)"
    )
    limits.add_argument(
        "--max-size", type=int, help="largest working long side (default: from device memory)"
    )
    limits.add_argument("--max-styles", type=int, default=8, help="styles per job, and uploads (default: 8)")
    limits.add_argument(
        "--max-request-bytes",
        type=int,
        default=512 << 20,
        help="image bytes one job may upload (default: 512 MiB)",
    )
    limits.add_argument(
        "--max-inflight-bytes",
        type=int,
        help="memory for all uploads in progress and their decoded pixels "
        "(default: a quarter of RAM, at most 16 GiB)",
    )
    limits.add_argument(
        "--memory-budget",
        type=int,
        metavar="BYTES",
        help="device memory one job may use (default: what is free, less a margin)",
    )
    limits.add_argument(
        "--upload-timeout",
        type=float,
        default=30.0,
        help="seconds for a call's parameters to arrive; its upload gets this plus its size at "
        "--min-upload-rate (default: 30)",
    )
    limits.add_argument(
        "--min-upload-rate", type=int, default=1 << 20, help="bytes a second (default: 1 MiB)"
    )
    limits.add_argument(
        "--max-streams-per-client",
        type=int,
        default=4,
        help="open Stylize calls per connection (default: 4)",
    )
    limits.add_argument("--max-streams", type=int, default=32, help="open Stylize calls in all (default: 32)")
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=10.0,
        help="on SIGTERM/SIGINT, how long a running job may finish before it is stopped (default: 10)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "styles" in argv:
        styles_dir, rest = _take_styles_dir(argv)
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
    port, shutdown = start(args, token)
    scheme = "TLS" if args.tls_cert else "plaintext"
    print(
        f"impasto-server listening on {args.host}:{port} ({scheme}{', token required' if token else ''})",
        file=sys.stderr,
        flush=True,
    )
    stop = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stop.set())
    stop.wait()
    shutdown()
    return 0


def _take_styles_dir(argv: list[str]) -> tuple[str | None, list[str]]:
    """`--styles-dir DIR` wherever it stands, and the other arguments in order."""
    styles_dir, rest, words = None, [], iter(argv)
    for word in words:
        if word == "--styles-dir":
            styles_dir = next(words, None)
        elif word.startswith("--styles-dir="):
            styles_dir = word.split("=", 1)[1]
        else:
            rest.append(word)
    return styles_dir, rest


def styles_main(argv: list[str]) -> int:
    """`impasto-server styles list|fetch|import DIR`: manage the style library without a running server."""
    from ..catalogue import fetch
    from ..library import StyleLibrary

    parser = argparse.ArgumentParser(prog="impasto-server styles", description="Manage the style presets.")
    parser.add_argument("--styles-dir", type=Path, default=DEFAULT_STYLES_DIR, help="the library's folder")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="the presets and their metadata")
    actions.add_parser(
        "fetch", help="download the built-in catalogue of public-domain paintings (needs the internet)"
    )
    source = actions.add_parser("import", help="copy the images of a folder (and their .json metadata) in")
    source.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    library = StyleLibrary(args.styles_dir)
    if args.action == "list":
        presets = library.presets()
        for preset in presets:
            by = f" — {preset.artist}, {preset.year}" if preset.artist else ""
            origin = "built-in" if preset.builtin else "yours"
            print(f"{preset.id:32} {origin:9} {preset.title}{by}")
        if not any(not preset.builtin for preset in presets):
            print(
                f"none of your own in {library.folder}: add some with `impasto-server styles import FOLDER`, "
                "or drop image files there",
                file=sys.stderr,
            )
        return 0
    if args.action == "import" and not args.folder.is_dir():
        print(f"impasto-server styles import: {args.folder} is not a folder", file=sys.stderr)
        return 2
    report = fetch(library) if args.action == "fetch" else library.import_folder(args.folder)
    for name, outcome in report:
        print(f"{name:40} {outcome}")
    failed = sum(outcome.startswith("failed") for _, outcome in report)
    print(f"{len(report) - failed} of {len(report)} ok; library: {library.folder}", file=sys.stderr)
    return 1 if failed else 0


def start(args: argparse.Namespace, token: str | None) -> tuple[int, Callable[[], None]]:
    """Loads the model, binds the port and serves from a thread of its own; returns (port, shutdown).

    `shutdown()` is what SIGTERM does: new calls are refused, waiting jobs end UNAVAILABLE at once,
    the running job gets --grace-seconds to finish; it returns once the server has stopped.
    """
    # Engine imports pull in torch; kept here so that `--help` answers at once.
    from ..engine import default_iterations, default_size, describe
    from ..engine.device import host_memory_bytes, max_working_size
    from ..engine.loading import load_engines
    from ..jobs import Jobs, Limits
    from ..library import StyleLibrary

    engines = load_engines(args.device, precision=args.precision)
    for engine in engines:
        engine.warm_up()  # load and place the network once, before the first job
    devices = [describe(engine.device) for engine in engines]
    engine, device = engines[0], devices[0]  # the limits follow the first device
    limits = Limits(
        max_pixels=args.max_pixels or min(MAX_UPLOAD_PIXELS, host_memory_bytes() // HOST_BYTES_PER_PIXEL),
        max_size=args.max_size or max_working_size(device, engine.precision),
        default_size=default_size(engine.device),
        default_iterations=default_iterations(engine.device),
        max_queue=args.max_queue,
        max_styles=args.max_styles,
        max_request_bytes=args.max_request_bytes,
        max_inflight_bytes=args.max_inflight_bytes or min(16 << 30, host_memory_bytes() // 4),
        memory_budget=args.memory_budget,
        full_size=True,
    )
    transport = Transport(
        upload_timeout_seconds=args.upload_timeout,
        min_upload_bytes_per_second=args.min_upload_rate,
        max_streams_per_client=args.max_streams_per_client,
        max_streams=args.max_streams,
    )
    library = StyleLibrary(args.styles_dir, limits.max_pixels)
    jobs = Jobs(engines, library, limits)
    log.info(
        "devices %s, weights %s, styles from %s, %s, %s",
        ", ".join(f"{e.device} ({d.name}, {e.precision})" for e, d in zip(engines, devices, strict=True)),
        engine.weights.name,
        args.styles_dir,
        limits,
        transport,
    )
    servicer = StyleTransferServicer(jobs, devices, transport)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="impasto-grpc", daemon=True)
    thread.start()
    server, health_servicer, port = asyncio.run_coroutine_threadsafe(
        _serve(args, token, servicer), loop
    ).result()

    async def stop() -> None:
        log.info("shutting down: no new calls; a running job gets %.0f s to finish", args.grace_seconds)
        servicer.closing.set()
        await health_servicer.enter_graceful_shutdown()
        stopped = await asyncio.to_thread(jobs.close, args.grace_seconds)
        await servicer.drain(timeout=5)
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
        asyncio.run_coroutine_threadsafe(stop(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()

    return port, shutdown


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
            socket = _channelz(cygrpc.channelz_get_socket, int(reference["socketId"])).get("socket", {})
            ports.add(socket.get("local", {}).get("tcpipAddress", {}).get("port"))
    return ports


def _channelz(query: Callable[..., str], *ids: int) -> dict:
    """A channelz entry; empty if it has gone since it was listed (a closed connection, a stopped server)."""
    try:
        return json.loads(query(*ids))
    except ValueError:
        return {}


async def _serve(args: argparse.Namespace, token: str | None, servicer: StyleTransferServicer):
    server = grpc.aio.server(
        interceptors=[TokenInterceptor(token)] if token else [],
        options=[
            # Incoming messages are chunks of at most 1 MiB and small parameters; outgoing ones are
            # result chunks, thumbnails (≤ 256 px) and the preset list (bounded metadata).
            ("grpc.max_receive_message_length", CHUNK_BYTES + (64 << 10)),
            ("grpc.max_send_message_length", 8 << 20),
        ],
    )
    server.add_generic_rpc_handlers([_handlers(servicer)])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{args.host}:{args.port}"
    if args.tls_cert:
        port = server.add_secure_port(address, server_credentials(args.tls_cert, args.tls_key))
    else:
        port = server.add_insecure_port(address)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer, port


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
