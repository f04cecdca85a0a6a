"""`impasto-server`: the gRPC server GIMP talks to, on this machine or a GPU machine."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .. import __version__
from ..arguments import add_engine_arguments, byte_size
from ..paths import DEFAULT_STATE_DIR, DEFAULT_STYLES_DIR
from ..protocol import CHUNK_BYTES, Limits, is_loopback, pairing_string
from ..v1 import impasto_pb2 as pb
from .auth import TokenInterceptor, read_token, server_credentials
from .pairing import advertised_host, fingerprint_of, secrets_in
from .servicer import SERVICE_NAME, StyleTransferServicer, lenient

log = logging.getLogger("impasto.server")
# Host bytes per uploaded pixel while a job lives (raw RGBA, float RGB, resized copies, the reply):
# the default largest image is what a host's memory holds.
HOST_BYTES_PER_PIXEL = 160
DEFAULT_HOST = "127.0.0.1"  # this machine only
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
        "--host",
        help="address to listen on (default: 127.0.0.1, this machine only; with --remote every interface)",
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
    remote = parser.add_argument_group(
        "a GPU machine for other machines (README: The GPU machine)",
    )
    remote.add_argument(
        "--remote",
        action="store_true",
        help="listen on every interface with TLS and a token, both made the first time and kept in "
        "--state-dir, and print the one pairing string (address, token, certificate fingerprint) that "
        "GIMP's Server field and `impasto --server` take; the same string every time. --tls-cert/--tls-key "
        "and --token-file, if given, are used instead of the made ones",
    )
    remote.add_argument(
        "--new-secrets",
        action="store_true",
        help="with --remote: make a new token and certificate; clients paired before must take the new "
        "string",
    )
    remote.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="where --remote keeps its token and certificate, readable by this user only "
        "(default: %(default)s)",
    )
    remote.add_argument(
        "--advertise",
        metavar="HOST",
        help="the name or address clients reach this machine by, for the pairing string (default: its "
        "address on the default route)",
    )
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
        "--parameters-timeout",
        type=float,
        default=Limits.parameters_timeout_seconds,
        help="seconds for a call's first message, its parameters, to arrive; calls still waiting for "
        "theirs hold no slot of --max-streams (default: %(default)g)",
    )
    limits.add_argument(
        "--upload-timeout",
        type=float,
        default=Limits.upload_timeout_seconds,
        help="seconds for a call's upload, plus its size at --min-upload-rate (default: %(default)g)",
    )
    limits.add_argument(
        "--min-upload-rate",
        type=byte_size(),
        default=Limits.min_upload_bytes_per_second,
        metavar="BYTES",
        help="bytes a second (default: 1MiB)",
    )
    limits.add_argument(
        "--download-timeout",
        type=float,
        default=Limits.download_timeout_seconds,
        help="seconds for a client to take each message of the answer, plus its size at "
        "--min-download-rate; a client that stops reading has its call ended (default: %(default)g)",
    )
    limits.add_argument(
        "--min-download-rate",
        type=byte_size(),
        default=Limits.min_download_bytes_per_second,
        metavar="BYTES",
        help="bytes a second (default: 1MiB)",
    )
    limits.add_argument(
        "--max-streams-per-client",
        type=int,
        default=Limits.max_streams_per_client,
        help="open Stylize calls per client: per impasto-client-id (which the client sends and proxies "
        "pass on), else per connection (default: %(default)s)",
    )
    limits.add_argument(
        "--max-streams",
        type=int,
        default=Limits.max_streams,
        help="open Stylize calls in all (default: %(default)s)",
    )
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
    stop = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stop.set())
    port, shutdown = start(args, token)
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
    servicer = StyleTransferServicer(jobs)
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
        # Every job has ended and told its call; only then does gRPC's stop send GOAWAY (on which some
        # clients, grpclib among them, drop every stream of the connection at once).
        if await servicer.drain(timeout=5):
            # A call's status handed to gRPC at the last moment is not yet on the wire, and gRPC offers
            # nothing to await for that; measured: without this linger 3 of 10 clients lost it.
            await asyncio.sleep(LINGER_SECONDS)
        await server.stop(grace=1)
        log.info("stopped%s", "" if stopped else "; a job did not stop in time")

    def shutdown() -> None:
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
    address = f"{args.host or DEFAULT_HOST}:{args.port}"
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
