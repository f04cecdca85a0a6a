"""`impasto-server`: the gRPC server GIMP talks to, on this machine or a GPU machine."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .. import __version__
from ..library import DEFAULT_STYLES_DIR
from ..v1 import impasto_pb2_grpc
from .auth import TokenInterceptor, read_token, server_credentials
from .service import CHUNK_BYTES, Limits, StyleTransferServicer

log = logging.getLogger("impasto.server")
SERVICE_NAME = "impasto.v1.StyleTransfer"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="impasto-server", description="Serve Impasto's style transfer over gRPC."
    )
    parser.add_argument("--version", action="version", version=f"impasto-server {__version__}")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"
    )
    parser.add_argument("--port", type=int, default=50051, help="port (default: 50051; 0 picks a free one)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument(
        "--styles-dir",
        type=Path,
        default=DEFAULT_STYLES_DIR,
        help="folder of style images served as presets",
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
    parser.add_argument(
        "--max-queue", type=int, default=8, help="jobs that may wait; more are refused (default: 8)"
    )
    parser.add_argument(
        "--max-pixels", type=int, help="largest image accepted, in pixels (default: from RAM, ≤ 100 M)"
    )
    parser.add_argument(
        "--max-size", type=int, help="largest working long side (default: from device memory)"
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=10.0,
        help="on SIGTERM/SIGINT, how long running jobs may finish before they are cancelled",
    )
    return parser


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["styles"]:
        return styles_main(argv[1:])
    args = build_parser().parse_args(argv)
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
        for preset in library.presets():
            by = f" — {preset.artist}, {preset.year}" if preset.artist else ""
            print(f"{preset.id:32} {preset.title}{by}")
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


def start(args: argparse.Namespace, token: str | None):
    """Loads the model, binds the port and starts serving; returns (port, shutdown)."""
    # Engine imports pull in torch; kept here so that `--help` answers at once.
    from ..cli import load_engine
    from ..engine.stylize import default_size
    from ..library import StyleLibrary
    from .device import describe, max_upload_pixels, max_working_size
    from .jobs import JobQueue

    engine = load_engine(args.device, precision=args.precision)
    engine.warm_up()  # load and place the network once, before the first job
    device = describe(engine.device)
    limits = Limits(
        max_pixels=args.max_pixels or max_upload_pixels(),
        max_queue=args.max_queue,
        max_size=args.max_size or max_working_size(device, engine.precision),
        default_size=default_size(engine.device),
    )
    queue = JobQueue(engine, limits.max_queue)
    library = StyleLibrary(args.styles_dir, limits.max_pixels)
    log.info(
        "device %s (%s, %s), weights %s, styles from %s, limits %s",
        engine.device,
        device.name,
        engine.precision,
        engine.weights.name,
        args.styles_dir,
        limits,
    )

    threads = limits.max_queue + 8  # each waiting Stylize call holds a thread; a few spare for info
    message_bytes = CHUNK_BYTES + (64 << 10)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="impasto-rpc"),
        interceptors=[TokenInterceptor(token)] if token else [],
        maximum_concurrent_rpcs=threads,
        options=[
            ("grpc.max_receive_message_length", message_bytes),
            ("grpc.max_send_message_length", message_bytes),
        ],
    )
    impasto_pb2_grpc.add_StyleTransferServicer_to_server(
        StyleTransferServicer(queue, library, limits, device), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{args.host}:{args.port}"
    if args.tls_cert:
        port = server.add_secure_port(address, server_credentials(args.tls_cert, args.tls_key))
    else:
        port = server.add_insecure_port(address)
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    def shutdown() -> None:
        log.info("shutting down: no new calls; running jobs get %.0f s to finish", args.grace_seconds)
        health_servicer.enter_graceful_shutdown()
        # New calls are refused at once; calls still running after the grace period are cancelled,
        # which cancels their jobs through the servicer's callbacks.
        server.stop(grace=args.grace_seconds).wait()
        stopped = queue.close(timeout=5.0)
        log.info("stopped%s", "" if stopped else "; a job did not stop in time")

    return port, shutdown


if __name__ == "__main__":
    sys.exit(main())
