"""The command line: a run's records, and the local servers left running."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import _print_json


def cmd_records(args: argparse.Namespace) -> int:
    from ..records import load_records

    if args.run_dir == "pack" and args.target:
        return cmd_records_pack(args)
    if args.target:
        print(f"cloudalliance records: unexpected argument {args.target!r} (did you mean `records pack RUN`?)",
              file=sys.stderr)
        return 2
    folder = Path(args.run_dir)
    records = load_records(folder / "records" if (folder / "records").is_dir() else folder, args.stage)
    if args.json:
        _print_json([r.to_dict() for r in records])
        return 0
    print(f"{'record':<40} {'backend':<7} {'instance':<16} total s")
    for r in records:
        total = r.timings.get("total_s", "")
        print(f"{r.filename:<40} {r.backend:<7} {r.instance:<16} {total}")
    return 0


def cmd_records_pack(args: argparse.Namespace) -> int:
    from ..bench.comparison import pack_run

    path = pack_run(args.target, args.out)
    print(f"[records] packed {args.target} into {path} ({path.stat().st_size / 1024:.1f} KiB): "
          f"bring it to one machine and run `cloudalliance bench compare` on the archives")
    return 0


def cmd_services(args: argparse.Namespace) -> int:
    from ..local import services

    if args.action == "stop":
        stopped = services.stop_all()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    found = services.list_services()
    for info in found:
        alive = services.running(info.name) is not None
        print(f"{info.name:<10} {'up' if alive else 'gone':<5} {info.endpoint_url:<28} pid {info.pid}  log {info.log_file}")
    if not found:
        print(f"no local services in {services.state_dir()}")
    return 0


def register(sub) -> None:
    """The `records` subcommands, each next to its handler above."""
    p = sub.add_parser("records", help="list the records of a run")
    p.add_argument("run_dir", help="runs/<run-id> (or its records folder); `records pack RUN` packs a run")
    p.add_argument("target", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--out", help="records pack: the archive (default: runs/<run-id>.tar.gz)")
    p.add_argument("--stage")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_records)
    p = sub.add_parser("services", help="local servers (S3, endpoint, gateway, images)")
    p.add_argument("action", choices=["list", "stop"])
    p.set_defaults(func=cmd_services)
