"""The command line: what several command groups share."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (argparse turns the error into exit code 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def _positive_float(text: str) -> float:
    """An argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number above 0")
    return value


_UPLOAD_TOOLS = ["aws-s3-sync", "s5cmd", "objects", "shards"]  # storage.UPLOAD_TOOLS, kept literal (no import at start)


# presets.FITS, written out so that the CLI starts without importing numpy (a test checks they agree)
_FITS = ("squash", "crop", "pad")


def _add_s3_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="local", choices=["local", "aws"])
    p.add_argument("--endpoint-url", help="S3 endpoint (local: the embedded server, started if needed)")
    p.add_argument("--region")

def _client(args: argparse.Namespace, workers: int = 32):
    from ..storage import create_s3_client

    return create_s3_client(args.backend, endpoint_url=args.endpoint_url, region=args.region,
                            max_pool_connections=max(10, workers))
