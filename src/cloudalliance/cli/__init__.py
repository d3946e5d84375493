"""The ``cloudalliance`` command: one module per command group, each registering its subcommands next to their
handlers (data, s3, course, train, serve, api, bench, aws, records); helpers they share are in ``common``.

Exit codes: 0 done, 1 the work failed (a notebook, a check), 2 bad input or
an environment problem (with a message that says what to do).

Each handler imports the library when it runs, not at the top: the command starts (``--help``, a typo's exit 2)
quickly, without importing boto3, torch or the servers' packages.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from .. import __version__
from ..errors import CloudallianceError
from . import api, aws, bench, course, data, records, s3, serve, train
from .common import _FITS, _UPLOAD_TOOLS

__all__ = ["build_parser", "main", "_FITS", "_UPLOAD_TOOLS"]  # the choices tests check against the library's


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloudalliance", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The course's command line: one subcommand per stage (data, s3, train, endpoint, api, bench, aws), "
                    "and `course run` for the notebooks.",
        epilog="Exit codes: 0 done, 1 the work failed (a notebook, a check), 2 bad input or an environment problem "
               "(with a message that says what to do).")
    parser.add_argument("--version", action="version", version=f"cloudalliance {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    for group in (data, s3, course, train, serve, api, bench, aws, records):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cloudalliance records ... | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
    except (CloudallianceError, FileNotFoundError, ValueError) as exc:  # each says what to do
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
