"""The command line: benchmarks that print numbers (notebook 07)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..defaults import ENDPOINT_NAME
from .common import _client, _print_json, _positive_int, _positive_float, _UPLOAD_TOOLS, _FITS, _add_s3_args
from .train import _add_training_run_args, hyperparameters


def cmd_bench_upload(args: argparse.Namespace) -> int:
    from ..records import write_record
    from ..storage import comparison_table, compare_uploads, ensure_bucket, upload_record
    from ..storage.compare import benchmark_files

    benchmark_files(args.src, args.tools or _UPLOAD_TOOLS)  # the folder's checks, before a server or a bucket
    if args.record_dir and Path(args.record_dir).exists() and not Path(args.record_dir).is_dir():
        raise ValueError(f"--record-dir {args.record_dir} is a file, not a folder")
    client = _client(args, args.workers)
    ensure_bucket(client, args.bucket)
    results, notes = compare_uploads(args.src, args.bucket, client, tools=args.tools or _UPLOAD_TOOLS,
                                     workers=args.workers, shard_mb=args.shard_mb, progress=not args.json,
                                     rounds=args.rounds)
    if not results:
        print("no upload tool ran: " + "; ".join(notes), file=sys.stderr)
        return 2
    if args.record_dir:
        for r in results:
            write_record(args.record_dir, upload_record(r, name=r.mode, backend=args.backend))
    if args.json:
        _print_json({"results": [r.to_dict() for r in results], "notes": notes})
    else:
        print(comparison_table(results).to_string())
        for note in notes:
            print("note:", note)
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    from ..training.launch import run_local
    from ..training.results import time_to_accuracy

    hp = hyperparameters(args)
    result = run_local(args.train_dir, args.model_dir, args.profile, hp, test_dir=args.test_dir,
                       checkpoint_dir=args.checkpoint_dir, progress=not args.json)
    summary = time_to_accuracy(result.metrics, args.target)
    summary.update(instance=result.instance, wall_seconds=round(result.wall_seconds, 2),
                   hyperparameters=hp, model_dir=str(result.model_dir))
    if args.json:
        _print_json(summary)
        return 0
    reached = summary["seconds_to_target"]
    print(f"time to {args.target:.0%}: " + (f"{reached:.1f} s (epoch {summary['epoch_to_target']})" if reached
                                            else "not reached"))
    print(f"final validation accuracy {summary['final_accuracy']:.4f} (best {summary['best_accuracy']:.4f}), "
          f"{summary['images_per_s']:.1f} images/s, {result.wall_seconds:.1f} s wall")
    print(f"where the time went: decoding {summary['data_load_seconds']:.1f} s, training "
          f"{summary['train_seconds']:.1f} s, validation {summary['val_seconds']:.1f} s")
    for h in result.history:
        print(f"  epoch {h['epoch']}: {h['elapsed_seconds']:.1f} s, val accuracy {h.get('val_accuracy', float('nan')):.4f}, "
              f"loss {h['train_loss']:.4f}, {h['images_per_s']:.1f} img/s")
    return 0


def cmd_bench_fit(args: argparse.Namespace) -> int:
    from ..evaluation import compare_fits
    from ..stats import format_accuracy

    rows = compare_fits(args.model_dir, args.data_dir, args.aspects, args.fits, args.limit, args.seed,
                        progress=not args.json)
    if args.json:
        _print_json(rows)
        return 0
    for row in rows:
        print(f"aspect {row['aspect']:<5g} {row['fit']:<7} {format_accuracy(row['correct'], row['images'])}")
    return 0


def cmd_bench_api(args: argparse.Namespace) -> int:
    from ..bench.loadtest import HEADER, load_record, payload_from_args, run_load
    from ..records import write_record

    body, described = payload_from_args(args.payload_file, args.image, args.image_url)
    if not args.json:
        print(f"closed loop on {args.api}, {args.seconds:g} s per level, payload {described} ({len(body):,} bytes)")
        print(HEADER)
    results = run_load(args.api, body, args.concurrency, args.seconds, max_requests=args.max_requests,
                       timeout=args.timeout, progress=not args.json)
    record = load_record(results, args.backend, args.api, described, len(body), args.seconds)
    if args.record_dir:
        path = write_record(args.record_dir, record)
        if not args.json:
            print(f"record: {path}")
    if args.json:
        _print_json(record.metrics["levels"])
    return 0


def cmd_bench_lambda(args: argparse.Namespace) -> int:
    from ..api import calls, lambda_package
    from ..bench import lambda_modes
    from ..local import endpoint_server
    from ..local import gateway as local_gateway
    from ..local import services
    from ..records import write_record
    from ..serving.quantize import quantize_artifact

    if args.runs < 1 or args.requests < 1:
        raise ValueError("--runs and --requests must be at least 1")
    from ..presets import load_rgb

    try:
        image = Path(args.image).read_bytes()
    except OSError as exc:
        raise ValueError(f"--image {args.image}: {exc.strerror or exc}") from None
    try:
        load_rgb(image, 32)
    except Exception as exc:  # noqa: BLE001 - PIL raises several kinds for a file that is not an image
        raise ValueError(f"--image {args.image} is not an image the model can read ({type(exc).__name__})") from None
    if bool(args.quantize) != bool(args.calibration_data):
        raise ValueError("--quantize int8 and --calibration-data (the data set whose training images calibrate it) "
                         "go together")
    payloads = [calls.image_payload(args.image)]
    work = Path(args.out)
    int8 = quantize_artifact(args.artifact, args.calibration_data, work / "int8.onnx") if args.quantize else None
    started: list[str] = []
    try:
        sizes = []
        for arch in args.arch:
            try:
                info = lambda_package.build_package(args.artifact, work / f"package-{arch}", arch=arch, int8_model=int8)
                sizes.append(info)
                print(info.summary(), file=sys.stderr if args.json else sys.stdout)  # --json: JSON alone on stdout
            except lambda_package.PackageError as exc:
                print(f"no {arch} package: {exc}", file=sys.stderr)
        local = lambda_package.build_package(args.artifact, work / "package-local", platform_name="local",
                                             make_zip=False, int8_model=int8)
        cold_pkg, python, described = lambda_modes.cold_start_package(args.artifact, work, sizes, local, int8)
        print(f"cold starts of the model in Lambda: {described}", file=sys.stderr if args.json else sys.stdout)
        was_up = services.running(endpoint_server.ENDPOINT_SERVICE) is not None
        endpoint = endpoint_server.ensure_local_endpoint(args.artifact, ENDPOINT_NAME)
        if not was_up:
            started.append(endpoint_server.ENDPOINT_SERVICE)
        records = []
        for mode in ("endpoint", "lambda"):
            # its own service names: the gateways a user has running are left alone
            service = f"bench-gateway-{mode}"
            gateway = local_gateway.start_local_gateway(endpoint.endpoint_url, ENDPOINT_NAME, mode=mode, package=local.path,
                                              service=service)
            started.append(service)
            records.append(lambda_modes.measure_mode(
                mode, gateway.endpoint_url + local_gateway.ROUTE, image, payloads, runs=args.runs, requests=args.requests,
                package=cold_pkg, endpoint_url=endpoint.endpoint_url, packages=sizes if mode == "lambda" else (),
                progress=not args.json, python=python, cold_start_of=described if mode == "lambda" else ""))
    finally:
        for name in reversed(started):
            services.stop_service(name)
    if args.record_dir:
        for record in records:
            write_record(args.record_dir, record)
    rows = lambda_modes.modes_table(records)
    if args.json:
        _print_json(rows)
    else:
        for row in rows:
            print("  ".join(f"{k}: {v:.1f}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items()))
    return 0


def cmd_bench_compare(args: argparse.Namespace) -> int:
    from ..bench import comparison

    result = comparison.compare(args.runs, out=args.out, baseline=args.baseline, force=args.force)
    if result["differences"]:
        print("WARNING (--force): these runs differ, their times do not measure the machines alone:\n  "
              + "\n  ".join(result["differences"]), file=sys.stderr)
    if args.json:
        _print_json({"rows": result["rows"], "differences": result["differences"],
                     "saved": [str(p) for p in result["saved"]]})
        return 0
    print(result["table"].to_string(float_format=lambda v: f"{v:.1f}"))
    if any(r["contended"] for r in result["rows"]):
        print("* contended: the 1-minute load average exceeded the machine's cores at the start or end; "
              "its times include waiting for CPUs")
    print("\nThe original study (the course's source study), training time as % of its PC:")
    print(result["study"].to_string())
    for path in result["saved"]:
        print(f"[compare] saved {path}")
    return 0


def register(sub) -> None:
    """The `bench` subcommands, each next to its handler above."""
    bench = sub.add_parser("bench", help="benchmarks that print numbers").add_subparsers(dest="action", required=True)
    p = bench.add_parser("upload", help="aws s3 sync vs s5cmd vs our objects and shards modes, same files and server")
    p.add_argument("src")
    p.add_argument("--bucket", default="cloudalliance-bench")
    p.add_argument("--tools", nargs="+", action="extend", choices=_UPLOAD_TOOLS,
                   help=f"default: all of {' '.join(_UPLOAD_TOOLS)}; --tools given twice adds up")
    _add_s3_args(p)
    p.add_argument("--workers", type=_positive_int, default=32)
    p.add_argument("--shard-mb", type=_positive_float, default=32)
    p.add_argument("--rounds", type=_positive_int, default=1,
                   help="run every tool this many times, in rotated order; report medians and per-round ratios")
    p.add_argument("--record-dir", help="also write one upload record per tool here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_upload)

    p = bench.add_parser("train", help="run the training recipe and print time-to-accuracy, accuracy, images/s")
    _add_training_run_args(p)
    p.add_argument("--target", type=float, default=0.92, help="validation accuracy to time (default 0.92)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_train)

    p = bench.add_parser("fit", help="accuracy on non-square crops of labeled images: squash vs crop vs pad")
    p.add_argument("--model-dir", required=True, help="model folder or model.tar.gz")
    p.add_argument("--data-dir", required=True, help="labeled class folders")
    p.add_argument("--aspects", type=float, nargs="+", default=[0.75, 1.33, 1.78],
                   help="width / height of the crops (1.78 = 16:9 landscape, 0.75 = 3:4 portrait)")
    p.add_argument("--fits", nargs="+", choices=_FITS, default=None)
    p.add_argument("--limit", type=int, default=0, help="at most this many images (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_fit)

    p = bench.add_parser("api", help="closed-loop load on the prediction API: req/s, p50/p95/p99, errors per status")
    p.add_argument("--api", required=True, help="the API URL, ending in /predict")
    p.add_argument("--payload-file", help="a JSON body to send as is")
    p.add_argument("--image", help="a local image, sent as base64")
    p.add_argument("--image-url", help="an image URL the API fetches on every request")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="clients in flight, one level each")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds per level (at most 600)")
    p.add_argument("--max-requests", type=int, default=100_000, help="cap on requests per level")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds one request may take")
    p.add_argument("--backend", choices=["local", "aws"], default="local", help="what the record says it measured")
    p.add_argument("--record-dir", help="also write the api 'load' record here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_api)

    p = bench.add_parser("lambda", help="the model inside Lambda vs the forwarding function + endpoint: cold start, "
                                        "warm p50/p99, peak RSS, package sizes")
    p.add_argument("--artifact", required=True, help="model.tar.gz")
    p.add_argument("--image", required=True, help="a test image, sent as base64")
    p.add_argument("--runs", type=int, default=10, help="cold starts per mode (fresh processes)")
    p.add_argument("--requests", type=int, default=200, help="warm requests per mode through the local gateway")
    p.add_argument("--arch", nargs="*", default=["x86_64", "arm64"], choices=["x86_64", "arm64"],
                   help="Lambda packages to build for their sizes (none: skip)")
    p.add_argument("--out", default="runs/bench-lambda", help="where the packages are built")
    p.add_argument("--record-dir", help="also write the mode-endpoint and mode-lambda records here")
    p.add_argument("--quantize", choices=["int8"], default="", help="measure the function with an int8 model.onnx")
    p.add_argument("--calibration-data", metavar="DIR", help="with --quantize: the data set whose training images "
                                                            "calibrate it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_lambda)

    p = bench.add_parser("compare", help="the study's figures across machines: upload and training time per run "
                                         "folder or `records pack` archive, reductions vs a baseline")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders or .tar.gz/.zip archives of them")
    p.add_argument("--baseline", help="the machine label to compare against (default: the slowest)")
    p.add_argument("--out", default="compare", help="folder for the PNGs and compare.csv (default: ./compare)")
    p.add_argument("--force", action="store_true", help="compare runs made with different data or recipes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_compare)
