"""`impasto-server`'s command line: where it listens, what it runs on, its secrets and its limits."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .. import __version__
from ..arguments import add_engine_arguments, byte_size
from ..paths import DEFAULT_STATE_DIR, DEFAULT_STYLES_DIR
from ..protocol import Limits

DEFAULT_HOST = "127.0.0.1"  # this machine only


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
