"""The command line: package the model, serve it on a local endpoint, call an API (notebook 05)."""

from __future__ import annotations

import argparse
import json

from ..defaults import ENDPOINT_NAME
from .common import _print_json


def cmd_package(args: argparse.Namespace) -> int:
    from ..presets import Preprocess
    from ..serving.model_artifact import check_images, package_model

    images = None
    if args.check_data:
        _, images = check_images(args.check_data, args.check_count, Preprocess.load(args.model_dir).size)
    path, check = package_model(args.model_dir, args.out, check_images=images)
    print(f"artifact: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if check:
        print(f"ONNX vs PyTorch on {check.images} images: max |p diff| {check.max_abs_diff:.2e}, "
              f"same label {check.same_label:.0%}, {check.torch_ms_per_image:.1f} vs {check.onnx_ms_per_image:.1f} ms/image")
    return 0


def cmd_endpoint_start(args: argparse.Namespace) -> int:
    from ..local.endpoint_server import ensure_local_endpoint

    info = ensure_local_endpoint(args.artifact, args.name)
    if args.json:
        _print_json({"endpoint_url": info.endpoint_url, "endpoint_name": args.name, "pid": info.pid,
                     "log_file": info.log_file})
    else:
        print(f"endpoint {args.name} at {info.endpoint_url} (pid {info.pid}); "
              f"boto3: client('sagemaker-runtime', endpoint_url='{info.endpoint_url}')")
    return 0


def cmd_endpoint_stop(args: argparse.Namespace) -> int:
    from ..local.endpoint_server import stop_local_endpoint

    print("endpoint stopped" if stop_local_endpoint() else "endpoint was not running")
    return 0


def cmd_endpoint_delete(args: argparse.Namespace) -> int:
    import boto3

    from ..serving.deploy import delete_sagemaker_endpoint

    deleted = delete_sagemaker_endpoint(args.name, boto3.client("sagemaker", region_name=args.region))
    print(json.dumps(deleted) if deleted["endpoint"] else f"no endpoint named {args.name}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..api.calls import call_api, image_payload

    payload = {"url": args.url} if args.url else image_payload(args.file)
    reply = call_api(args.api, payload)
    print(json.dumps(reply.body, indent=2))
    return 0 if reply.status == 200 else 1


def register(sub) -> None:
    """The `serve` subcommands, each next to its handler above."""
    p = sub.add_parser("package", help="build model.tar.gz (ONNX export checked against PyTorch)")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--out", help="default: <model-dir>.tar.gz")
    p.add_argument("--check-data", help="a data set whose test images check the ONNX export")
    p.add_argument("--check-count", type=int, default=32)
    p.set_defaults(func=cmd_package)
    endpoint = sub.add_parser("endpoint", help="the local SageMaker-style endpoint").add_subparsers(
        dest="action", required=True)
    p = endpoint.add_parser("start", help="serve model.tar.gz on 127.0.0.1 and leave it running")
    p.add_argument("--artifact", required=True)
    p.add_argument("--name", default=ENDPOINT_NAME)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_endpoint_start)

    p = endpoint.add_parser("stop", help="stop the local endpoint")
    p.set_defaults(func=cmd_endpoint_stop)
    p = endpoint.add_parser("delete", help="delete a SageMaker endpoint, its config and model (aws)")
    p.add_argument("--name", required=True)
    p.add_argument("--region")
    p.set_defaults(func=cmd_endpoint_delete)
    p = sub.add_parser("predict", help="call the API like curl: an image URL or a local file")
    p.add_argument("--api", required=True, help="the API URL, ending in /predict")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="an image URL the API fetches")
    source.add_argument("--file", help="a local image, sent as base64")
    p.set_defaults(func=cmd_predict)
