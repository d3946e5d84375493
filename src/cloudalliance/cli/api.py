"""The command line: the local API gateway and the in-Lambda package (notebook 06)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..defaults import ENDPOINT_NAME
from .common import _print_json, _positive_int


def cmd_api_start(args: argparse.Namespace) -> int:
    from ..defaults import IN_LAMBDA_MEMORY_MB
    from ..local.gateway import ROUTE, in_lambda_environment, start_local_gateway

    if args.run:
        return _serve_run(args)

    memory_mb = args.memory_mb or IN_LAMBDA_MEMORY_MB
    if args.memory_mb and args.mode != "lambda":
        raise ValueError("--memory-mb is the model-in-Lambda function's: use it with --mode lambda")
    in_lambda_environment(memory_mb)  # Lambda's range, before anything is built
    package = args.package
    if args.mode == "lambda" and not package:
        if not args.artifact:
            raise ValueError("--mode lambda needs --package DIR (cloudalliance lambda package --platform local) "
                             "or --artifact model.tar.gz")
        from ..api.lambda_package import build_package

        package = build_package(args.artifact, Path(args.artifact).resolve().parent / "lambda-local",
                                platform_name="local", make_zip=False).path
    if args.mode == "endpoint" and not args.endpoint_url:
        raise ValueError("--mode endpoint needs --endpoint-url (cloudalliance endpoint start prints it)")
    info = start_local_gateway(args.endpoint_url or "", args.name, allowed_private_hosts=args.allow_private_hosts,
                               mode=args.mode, package=package, memory_mb=memory_mb)
    url = info.endpoint_url + ROUTE
    if args.json:
        _print_json({"api_url": url, "mode": args.mode, "pid": info.pid, "log_file": info.log_file})
    else:
        print(f"API ({args.mode} mode) at {url}  (curl -X POST {url} -d '{{\"url\": \"https://...\"}}')")
    return 0


def _serve_run(args: argparse.Namespace) -> int:
    from ..api.calls import curl_command
    from ..api.postman import newman_command
    from ..local.gateway import serve_run
    from ..runs import RunContext

    from ..course import REPO_ROOT

    runs_dir = Path(args.runs_dir) if args.runs_dir else REPO_ROOT / "runs"
    if not (runs_dir / args.run / "records").is_dir():
        found = sorted(p.parent.name for p in runs_dir.glob("*/records"))[-5:] if runs_dir.is_dir() else []
        raise FileNotFoundError(f"No run {args.run!r} in {runs_dir}; "
                                + (f"the latest there: {', '.join(found)}" if found else "it holds no runs"))
    served = serve_run(RunContext(args.run, runs_dir), args.name)
    if args.json:
        _print_json(served)
    else:
        print(f"API of run {args.run} at {served['api_url']}")
        print(f"  curl:   {curl_command(served['api_url'], served['image_url'])}")
        print(f"  newman: {newman_command(served)}   (make newman installs it)")
        print("  stop:   make stop")
    return 0


def cmd_lambda_package(args: argparse.Namespace) -> int:
    import tempfile

    from ..api.lambda_package import build_package, check_options
    from ..serving.quantize import quantize_artifact

    if bool(args.quantize) != bool(args.calibration_data):
        raise ValueError("--quantize int8 and --calibration-data (the data set whose training images calibrate it) "
                         "go together")
    check_options(args.artifact, args.platform, args.python, args.out)  # before the minute quantising takes
    with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
        int8 = quantize_artifact(args.artifact, args.calibration_data, Path(tmp) / "model.onnx") if args.quantize else None
        info = build_package(args.artifact, args.out, arch=args.arch, platform_name=args.platform, python=args.python,
                             make_zip=not args.no_zip, int8_model=int8)
    if args.json:
        _print_json(info.to_dict())
    else:
        print(info.summary())
        if args.platform == "lambda":
            print(f"deploy: sam deploy --guided -t lambda/template.yaml --stack-name cloudalliance --tags "
                  f"cloudalliance:run-id=<run-id> --parameter-overrides InferenceMode=lambda Architecture={info.arch}" + ("" if Path(info.path).resolve() == Path("lambda/package").resolve()
                                                 else f"  (after copying {info.path} to lambda/package)"))
    return 0


def register(sub) -> None:
    """The `api` subcommands, each next to its handler above."""
    gateway = sub.add_parser("api", help="the local API gateway in front of lambda/src/handler.py").add_subparsers(
        dest="action", required=True)
    p = gateway.add_parser("start", help="start the gateway and leave it running")
    p.add_argument("--run", metavar="RUN_ID", help="serve a finished run's model again (runs/RUN_ID: its endpoint, "
                                                   "the gateway on port 8780, the Postman collection's image on 8781) "
                                                   "and print the curl and newman lines")
    p.add_argument("--runs-dir", help="with --run: the folder that holds the runs (default: the repository's runs/)")
    p.add_argument("--mode", choices=["endpoint", "lambda"], default="endpoint",
                   help="endpoint: lambda/src/handler.py forwards to the endpoint; lambda: the model inside the function")
    p.add_argument("--endpoint-url", help="endpoint mode: the local endpoint (cloudalliance endpoint start)")
    p.add_argument("--package", help="lambda mode: a package built with `lambda package --platform local`")
    p.add_argument("--artifact", help="lambda mode: model.tar.gz, packaged for the local gateway first")
    p.add_argument("--name", default=ENDPOINT_NAME, help="endpoint name")
    p.add_argument("--allow-private-hosts", default="", help="e.g. 127.0.0.1 to fetch local test images")
    p.add_argument("--memory-mb", type=_positive_int, default=None,
                   help="lambda mode: the function's memory size (default: the template's InLambdaMemorySize, 1024); "
                        "ONNX Runtime gets one thread per 1,769 MB, as Lambda gives one vCPU")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_api_start)
    lam = sub.add_parser("lambda", help="the in-Lambda inference mode's deployment package").add_subparsers(
        dest="action", required=True)
    p = lam.add_parser("package", help="model.tar.gz -> the in-Lambda function's folder and zip (handlers, model, "
                                       "ONNX Runtime + numpy + Pillow wheels for Lambda)")
    p.add_argument("--artifact", required=True, help="model.tar.gz (cloudalliance package)")
    p.add_argument("--arch", choices=["x86_64", "arm64"], help="Lambda architecture (default x86_64; local: this machine)")
    p.add_argument("--platform", choices=["lambda", "local"], default="lambda",
                   help="lambda: self-contained for the Lambda runtime; local: handlers + model for the local gateway")
    p.add_argument("--python", help="the runtime's Python (default 3.12, Lambda's python3.12; local: this one)")
    p.add_argument("--out", help="the package folder (default lambda/package, the template's CodeUri); "
                                 "its zip is written beside it")
    p.add_argument("--no-zip", action="store_true")
    p.add_argument("--quantize", choices=["int8"], default="",
                   help="serve an int8 model.onnx (about 3.5x smaller and 1.8x as fast; notebook 06 measures "
                        "what it costs in accuracy); needs --calibration-data")
    p.add_argument("--calibration-data", metavar="DIR",
                   help="with --quantize: the data set (any layout the loader takes) whose training images calibrate it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lambda_package)
