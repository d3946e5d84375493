"""The command line: the aws backend's account: preflight and cleanup."""

from __future__ import annotations

import argparse
from typing import Any

from .common import _print_json


def _aws_params(args: argparse.Namespace) -> dict[str, Any]:
    """The notebooks' parameters from --params, with every training instance type its notebooks name."""
    from ..course import load_params

    params: dict[str, Any] = {}
    if getattr(args, "params", None):
        doc = load_params(args.params)
        params = dict(doc.get("parameters") or {})
        types: list[str] = []
        for entry in doc.get("notebooks") or []:
            if isinstance(entry, dict):
                found = (entry.get("foreach") or {}).get("INSTANCE_TYPE") or []
                types += [found] if isinstance(found, str) else list(found)
                params.update({k: v for k, v in (entry.get("parameters") or {}).items() if k not in params})
        if types:
            params["INSTANCE_TYPES"] = types
        params.setdefault("RUN_ID", doc.get("run_id") or "")
    if getattr(args, "region", None):
        params["REGION"] = args.region
    return params


def cmd_aws_check(args: argparse.Namespace) -> int:
    from .. import aws_preflight

    params = _aws_params(args)
    rows = aws_preflight.preflight(params, args.checks)
    cost = aws_preflight.estimate(params)
    if args.json:
        _print_json({"checks": [r.to_dict() for r in rows], "estimated_cost": cost, "passed": aws_preflight.passed(rows)})
    else:
        print(aws_preflight.format_table(rows, cost))
    return 0 if aws_preflight.passed(rows) else 2


def cmd_aws_cleanup(args: argparse.Namespace) -> int:
    from .. import aws, aws_cleanup

    params = _aws_params(args)
    session = aws.boto_session(params.get("REGION"))
    bucket = args.bucket or params.get("BUCKET") or ""
    if args.delete_data and not bucket:
        bucket = aws.default_bucket_name(session)
    removed = aws_cleanup.cleanup(args.run, session=session, bucket=bucket,
                          prefixes=aws_cleanup.data_prefixes(args.prefix or params.get("PREFIX") or "intel", args.run),
                          delete_data=args.delete_data)
    if args.json:
        _print_json(removed)
    else:
        print(aws_cleanup.format_removed(removed))
    return 1 if removed.get("not_removed") else 0


def register(sub) -> None:
    """The `aws` subcommands, each next to its handler above."""
    aws_cmd = sub.add_parser("aws", help="the aws backend's account: preflight and cleanup").add_subparsers(
        dest="action", required=True)
    p = aws_cmd.add_parser("check", help="preflight: credentials, data, role, bucket, quotas, names, SAM; estimated "
                                         "cost (exit 0 all pass, 2 a failure); creates nothing")
    p.add_argument("--params", default="params/aws.yaml", help="the course's parameter file")
    p.add_argument("--region", help="overrides REGION")
    p.add_argument("--checks", nargs="+", default=["all"],
                   choices=["all", "data", "bucket", "role", "training", "endpoint", "api"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_aws_check)
    p = aws_cmd.add_parser("cleanup", help="delete what the course created for a run (endpoints, configs, models, "
                                           "the SAM stack; with --delete-data the uploaded data); safe to repeat")
    p.add_argument("--run", required=True, help="the run id (runs/<run-id>; resources carry it as a tag)")
    p.add_argument("--region")
    p.add_argument("--params", help="read REGION, BUCKET and PREFIX from this file")
    p.add_argument("--bucket", help="for --delete-data (default: BUCKET, else sagemaker-<region>-<account>)")
    p.add_argument("--prefix", help="the data prefix for --delete-data (default: PREFIX, else intel)")
    p.add_argument("--delete-data", action="store_true", help="also delete the run's objects in S3")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_aws_cleanup)
