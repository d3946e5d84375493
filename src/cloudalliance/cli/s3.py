"""The command line: the embedded S3 server and uploads (notebook 02)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import _client, _print_json, _add_s3_args


def cmd_s3_start(args: argparse.Namespace) -> int:
    from ..storage import ensure_local_s3

    info = ensure_local_s3(args.data_dir)
    if args.json:
        _print_json({"endpoint_url": info.endpoint_url, "pid": info.pid, "data_dir": info.data_dir,
                     "log_file": info.log_file, "ports": info.ports})
    else:
        print(f"embedded S3 (SeaweedFS) at {info.endpoint_url}, pid {info.pid}, data in {info.data_dir}")
    return 0


def cmd_s3_stop(args: argparse.Namespace) -> int:
    from ..storage import stop_local_s3

    stopped = stop_local_s3()
    print("embedded S3 stopped" if stopped else "embedded S3 was not running")
    return 0


def cmd_s3_status(args: argparse.Namespace) -> int:
    from ..storage import local_s3_status

    info = local_s3_status()
    if args.json:
        _print_json({"running": info is not None, **(info.to_dict() if info else {})})
    else:
        print(f"running at {info.endpoint_url} (pid {info.pid})" if info else "not running")
    return 0 if info else 1


def cmd_s3_upload(args: argparse.Namespace) -> int:
    from ..storage import S3Location, ensure_bucket, upload_folder

    location = S3Location.parse(args.dest)
    if not Path(args.src).is_dir():
        raise FileNotFoundError(f"Upload source {args.src} is not a folder")
    client = _client(args, args.workers)
    if args.create_bucket:
        ensure_bucket(client, location.bucket)
    result = upload_folder(args.src, location, client, mode=args.mode, engine=args.engine, workers=args.workers,
                           shard_mb=args.shard_mb, progress=not args.json)
    if args.json:
        _print_json(result.to_dict())
    else:
        print(f"{result.files} files ({result.bytes / 1e6:.1f} MB) in {result.seconds:.2f} s "
              f"({result.mode}, {result.engine}): {result.files_per_s:.0f} files/s, {result.mb_per_s:.1f} MB/s; "
              f"uploaded {result.uploaded}, skipped {result.skipped} already there")
    return 0


def cmd_s3_verify(args: argparse.Namespace) -> int:
    from ..storage import S3Location, verify_upload

    result = verify_upload(args.src, S3Location.parse(args.dest), _client(args))
    if args.json:
        _print_json(result.to_dict())
    elif result.ok:
        print(f"OK: all {result.files} files are in {result.location} with the right checksum ({result.mode})")
    else:
        print(f"{len(result.missing)} missing and {len(result.different)} different of {result.files} files "
              f"in {result.location}:")
        for path in result.missing[: args.show]:
            print(f"  missing    {path}")
        for path in result.different[: args.show]:
            print(f"  different  {path}")
    return 0 if result.ok else 1


def register(sub) -> None:
    """The `s3` subcommands, each next to its handler above."""
    s3 = sub.add_parser("s3", help="the embedded S3 server and uploads").add_subparsers(dest="action", required=True)
    p = s3.add_parser("start", help="start the embedded S3 server (SeaweedFS) and leave it running")
    p.add_argument("--data-dir", help="where SeaweedFS keeps its data (default: in the state folder)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_s3_start)
    p = s3.add_parser("stop", help="stop the embedded S3 server")
    p.set_defaults(func=cmd_s3_stop)
    p = s3.add_parser("status", help="is the embedded S3 server up?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_s3_status)
    p = s3.add_parser("upload", help="upload a folder to s3://BUCKET/PREFIX (resumable)")
    p.add_argument("src")
    p.add_argument("dest", help="s3://BUCKET/PREFIX")
    _add_s3_args(p)
    p.add_argument("--mode", default="objects", choices=["objects", "shards"],
                   help="objects: one object per file; shards: tar shards (WebDataset naming)")
    p.add_argument("--engine", default="auto", choices=["auto", "s5cmd", "boto3"], help="objects mode only")
    p.add_argument("--workers", type=int, default=32)
    p.add_argument("--shard-mb", type=float, default=32)
    p.add_argument("--create-bucket", action="store_true", help="create the bucket if it does not exist")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_s3_upload)
    p = s3.add_parser("verify", help="exit 0 only if every file is in S3 with the right checksum")
    p.add_argument("src")
    p.add_argument("dest", help="s3://BUCKET/PREFIX")
    _add_s3_args(p)
    p.add_argument("--show", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_s3_verify)
