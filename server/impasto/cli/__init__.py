"""`impasto`: stylise images from the command line, in this process or on impasto-servers."""

from __future__ import annotations

import os
import sys

from ..protocol import ImpastoError
from .parser import build_parser
from .stylize import EXIT_CANCELLED, EXIT_FAILED

__all__ = ["EXIT_CANCELLED", "EXIT_FAILED", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .batch import plan_batch
    from .info import local_info, remote_info, remote_styles
    from .stylize import stylize

    try:
        if args.command == "info":
            return local_info() if args.local else remote_info(args)
        if args.command == "styles":
            return remote_styles(args)
        return stylize(args, plan_batch(args, parser.error))
    except KeyboardInterrupt:  # the second Ctrl-C
        print("\nimpasto: aborted; the image in progress is not written", file=sys.stderr)
        return EXIT_CANCELLED
    except BrokenPipeError:
        # `impasto info | head -1`: the reader has all it wanted; end quietly, as a Unix tool does. (Not
        # by restoring SIGPIPE's default, which would also kill the program on a dropped network socket.)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ImpastoError as error:
        print(f"impasto: {error.sentence('cli')}", file=sys.stderr)
        return EXIT_CANCELLED if error.cancelled else EXIT_FAILED
    except (ValueError, OSError, KeyError) as error:
        print(f"impasto: error: {error}", file=sys.stderr)
        return EXIT_FAILED
