"""The ``cloudalliance`` command: one subcommand per stage.

Exit codes: 0 done, 1 the work failed (a notebook, a check), 2 bad input or
an environment problem (with a message that says what to do).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .defaults import ENDPOINT_NAME


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


# --------------------------------------------------------------------------- data


def cmd_data_synth(args: argparse.Namespace) -> int:
    from .data import SyntheticSpec, generate_synthetic

    spec = SyntheticSpec(args.train_per_class, args.test_per_class, args.pred, args.seed, args.problem_files)
    root = generate_synthetic(args.out, spec, progress=not args.json)
    if args.json:
        _print_json({"root": str(root), **spec.to_dict()})
    else:
        print(f"synthetic data set written to {root}")
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from .data import load_image_folder, validate_dataset, validate_folder

    if args.split == "all":
        reports = validate_dataset(args.path, progress=not args.json)
    else:
        split = None if args.split == "auto" else args.split
        reports = {args.split: validate_folder(load_image_folder(args.path, split), progress=not args.json)}
    if args.json:
        _print_json({k: r.to_dict() for k, r in reports.items()})
    else:
        for split, rep in reports.items():
            print(f"[{split}] {rep.summary()}")
            for p in rep.problems[: args.show]:
                print(f"    {p.kind:<13} {p.path}  ({p.detail})")
            if len(rep.problems) > args.show:
                print(f"    ... and {len(rep.problems) - args.show} more (--show N, or --json)")
    return 0


def cmd_data_split(args: argparse.Namespace) -> int:
    from .data import split_folder

    counts = split_folder(args.src, args.out, args.test_fraction, args.seed, copy=args.copy)
    if args.json:
        _print_json(counts)
    else:
        for split, per_class in counts.items():
            print(f"{split:<5} {sum(per_class.values()):>6}  " + ", ".join(f"{k} {v}" for k, v in per_class.items()))
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from .data import fetch_dataset

    path = fetch_dataset(args.dest)
    print(f"Intel Image Classification data set at {path}")
    return 0


# --------------------------------------------------------------------------- s3


def cmd_s3_start(args: argparse.Namespace) -> int:
    from .storage import ensure_local_s3

    info = ensure_local_s3(args.data_dir)
    if args.json:
        _print_json({"endpoint_url": info.endpoint_url, "pid": info.pid, "data_dir": info.data_dir,
                     "log_file": info.log_file, "ports": info.ports})
    else:
        print(f"embedded S3 (SeaweedFS) at {info.endpoint_url}, pid {info.pid}, data in {info.data_dir}")
    return 0


def cmd_s3_stop(args: argparse.Namespace) -> int:
    from .storage import stop_local_s3

    stopped = stop_local_s3()
    print("embedded S3 stopped" if stopped else "embedded S3 was not running")
    return 0


def cmd_s3_status(args: argparse.Namespace) -> int:
    from .storage import local_s3_status

    info = local_s3_status()
    if args.json:
        _print_json({"running": info is not None, **(info.to_dict() if info else {})})
    else:
        print(f"running at {info.endpoint_url} (pid {info.pid})" if info else "not running")
    return 0 if info else 1


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


def _client(args: argparse.Namespace, workers: int = 32):
    from .storage import create_s3_client

    return create_s3_client(args.backend, endpoint_url=args.endpoint_url, region=args.region,
                            max_pool_connections=max(10, workers))


def cmd_s3_upload(args: argparse.Namespace) -> int:
    from .storage import S3Location, ensure_bucket, upload_folder

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
    from .storage import S3Location, verify_upload

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


# --------------------------------------------------------------------------- training and evaluation


# presets.FITS, written out so that the CLI starts without importing numpy (a test checks they agree)
_FITS = ("squash", "crop", "pad")

_HP_FLAGS = ("preset", "arch", "pretrained", "epochs", "img_size", "first_epochs", "first_size", "batch_size", "lr",
             "freeze_blocks", "ema", "seed",
             "val_fraction", "max_train_images", "fit")


def cmd_train(args: argparse.Namespace) -> int:
    from .launch import run_local, training_record
    from .records import write_record

    hp = {k: getattr(args, k) for k in _HP_FLAGS if getattr(args, k) is not None}
    result = run_local(args.train_dir, args.model_dir, args.profile, hp, test_dir=args.test_dir,
                       checkpoint_dir=args.checkpoint_dir, progress=not args.json)
    record = training_record(result)
    if args.record_dir:
        write_record(args.record_dir, record)
    summary = {"model_dir": str(result.model_dir), "instance": result.instance,
               "wall_seconds": round(result.wall_seconds, 2), "val_accuracy": result.metrics.get("val_accuracy"),
               "images_per_s": round(result.metrics.get("images_per_s", 0.0), 2),
               "data_load_seconds": round(result.metrics.get("data_load_seconds", 0.0), 2),
               "epochs": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()}
                          for h in result.history]}
    if args.json:
        _print_json(summary)
    else:
        print(f"trained on {result.instance} in {result.wall_seconds:.1f} s: validation accuracy "
              f"{summary['val_accuracy']:.4f}, {summary['images_per_s']} images/s; model in {result.model_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate, write_json

    result = evaluate(args.model_dir, args.data_dir, split=None if args.split == "auto" else args.split,
                      device=args.device, progress=not args.quiet, engine=args.engine)
    if args.json:
        write_json(result, args.json)
    print(f"accuracy {result.accuracy_text()} "
          f"(macro F1 {result.macro_f1():.4f}, {len(result.labels) / max(result.predict_seconds, 1e-9):.0f} images/s)")
    for cls, v in result.per_class().items():
        print(f"  {cls:<10} precision {v['precision']:.3f}  recall {v['recall']:.3f}  f1 {v['f1']:.3f}  n={v['support']}")
    if result.skipped:
        print(f"  left out {len(result.skipped)} unreadable files")
    return 0


def cmd_instances(args: argparse.Namespace) -> int:
    from .launch import local_profiles
    from .prices import TRAINING_PER_HOUR

    for p in local_profiles().values():
        print(f"{p.name:<14} local  {p.description}")
    for name, price in TRAINING_PER_HOUR.items():
        print(f"{name:<14} aws    ${price:.3f}/h (SageMaker training, us-east-1)")
    return 0


# --------------------------------------------------------------------------- serving and the API


def cmd_package(args: argparse.Namespace) -> int:
    from .presets import Preprocess
    from .serving import check_images, package_model

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
    from .serving import ensure_local_endpoint

    info = ensure_local_endpoint(args.artifact, args.name)
    if args.json:
        _print_json({"endpoint_url": info.endpoint_url, "endpoint_name": args.name, "pid": info.pid,
                     "log_file": info.log_file})
    else:
        print(f"endpoint {args.name} at {info.endpoint_url} (pid {info.pid}); "
              f"boto3: client('sagemaker-runtime', endpoint_url='{info.endpoint_url}')")
    return 0


def cmd_endpoint_stop(args: argparse.Namespace) -> int:
    from .serving import stop_local_endpoint

    print("endpoint stopped" if stop_local_endpoint() else "endpoint was not running")
    return 0


def cmd_endpoint_delete(args: argparse.Namespace) -> int:
    import boto3

    from .serving import delete_sagemaker_endpoint

    deleted = delete_sagemaker_endpoint(args.name, boto3.client("sagemaker", region_name=args.region))
    print(json.dumps(deleted) if deleted["endpoint"] else f"no endpoint named {args.name}")
    return 0


def cmd_api_start(args: argparse.Namespace) -> int:
    from .api import IN_LAMBDA_MEMORY_MB, ROUTE, in_lambda_environment, start_local_gateway

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
        from .lambda_package import build_package

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
    from .api import curl_command, newman_command, serve_run
    from .runs import RunContext

    from .course import REPO_ROOT

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
    from .lambda_package import build_package

    info = build_package(args.artifact, args.out, arch=args.arch, platform_name=args.platform, python=args.python,
                         make_zip=not args.no_zip)
    if args.json:
        _print_json(info.to_dict())
    else:
        print(info.summary())
        if args.platform == "lambda":
            print(f"deploy: sam deploy --guided -t lambda/template.yaml --stack-name cloudalliance --tags "
                  f"cloudalliance:run-id=<run-id> --parameter-overrides InferenceMode=lambda Architecture={info.arch}" + ("" if Path(info.path).resolve() == Path("lambda/package").resolve()
                                                 else f"  (after copying {info.path} to lambda/package)"))
    return 0


def cmd_bench_lambda(args: argparse.Namespace) -> int:
    from . import api, lambda_package, serving, services
    from .records import write_record

    if args.runs < 1 or args.requests < 1:
        raise ValueError("--runs and --requests must be at least 1")
    from .presets import load_rgb

    try:
        image = Path(args.image).read_bytes()
    except OSError as exc:
        raise ValueError(f"--image {args.image}: {exc.strerror or exc}") from None
    try:
        load_rgb(image, 32)
    except Exception as exc:  # noqa: BLE001 - PIL raises several kinds for a file that is not an image
        raise ValueError(f"--image {args.image} is not an image the model can read ({type(exc).__name__})") from None
    payloads = [api.image_payload(args.image)]
    work = Path(args.out)
    started: list[str] = []
    try:
        sizes = []
        for arch in args.arch:
            try:
                info = lambda_package.build_package(args.artifact, work / f"package-{arch}", arch=arch)
                sizes.append(info)
                print(info.summary(), file=sys.stderr if args.json else sys.stdout)  # --json: JSON alone on stdout
            except lambda_package.PackageError as exc:
                print(f"no {arch} package: {exc}", file=sys.stderr)
        local = lambda_package.build_package(args.artifact, work / "package-local", platform_name="local",
                                             make_zip=False)
        cold_pkg, python, described = lambda_package.cold_start_package(args.artifact, work, sizes, local)
        print(f"cold starts of the model in Lambda: {described}", file=sys.stderr if args.json else sys.stdout)
        was_up = services.running(serving.ENDPOINT_SERVICE) is not None
        endpoint = serving.ensure_local_endpoint(args.artifact, ENDPOINT_NAME)
        if not was_up:
            started.append(serving.ENDPOINT_SERVICE)
        records = []
        for mode in ("endpoint", "lambda"):
            # its own service names: the gateways a user has running are left alone
            service = f"bench-gateway-{mode}"
            gateway = api.start_local_gateway(endpoint.endpoint_url, ENDPOINT_NAME, mode=mode, package=local.path,
                                              service=service)
            started.append(service)
            records.append(lambda_package.measure_mode(
                mode, gateway.endpoint_url + api.ROUTE, image, payloads, runs=args.runs, requests=args.requests,
                package=cold_pkg, endpoint_url=endpoint.endpoint_url, packages=sizes if mode == "lambda" else (),
                progress=not args.json, python=python, cold_start_of=described if mode == "lambda" else ""))
    finally:
        for name in reversed(started):
            services.stop_service(name)
    if args.record_dir:
        for record in records:
            write_record(args.record_dir, record)
    rows = lambda_package.modes_table(records)
    if args.json:
        _print_json(rows)
    else:
        for row in rows:
            print("  ".join(f"{k}: {v:.1f}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items()))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .api import call_api, image_payload

    payload = {"url": args.url} if args.url else image_payload(args.file)
    reply = call_api(args.api, payload)
    print(json.dumps(reply.body, indent=2))
    return 0 if reply.status == 200 else 1


def cmd_services(args: argparse.Namespace) -> int:
    from . import services

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


# --------------------------------------------------------------------------- benchmarks


def cmd_bench_upload(args: argparse.Namespace) -> int:
    from .records import write_record
    from .storage import comparison_table, compare_uploads, ensure_bucket, upload_record
    from .storage.compare import benchmark_files

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
    from .launch import run_local, time_to_accuracy

    hp = {k: getattr(args, k) for k in _HP_FLAGS if getattr(args, k) is not None}
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
    from .evaluation import compare_fits
    from .stats import format_accuracy

    rows = compare_fits(args.model_dir, args.data_dir, args.aspects, args.fits, args.limit, args.seed,
                        progress=not args.json)
    if args.json:
        _print_json(rows)
        return 0
    for row in rows:
        print(f"aspect {row['aspect']:<5g} {row['fit']:<7} {format_accuracy(row['correct'], row['images'])}")
    return 0


def cmd_bench_api(args: argparse.Namespace) -> int:
    from .loadtest import HEADER, load_record, payload_from_args, run_load
    from .records import write_record

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


# --------------------------------------------------------------------------- course and records


def cmd_course_run(args: argparse.Namespace) -> int:
    import signal

    from .course import run_course

    def stop(signum, frame):  # `kill` stops the course like Ctrl-C: its servers are stopped on the way out
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)

    t0 = time.perf_counter()
    from .course import parse_overrides

    result = run_course(args.params, run_id=args.run_id, only=args.only, log_output=args.verbose,
                        overrides=parse_overrides(args.set))
    print(f"[course] {len(result.results)} notebooks passed in {time.perf_counter() - t0:.1f} s")
    print(f"[course] run folder: {result.run.path}")
    print(f"[course] report:     {result.report}")
    return 0


def _aws_params(args: argparse.Namespace) -> dict[str, Any]:
    """The notebooks' parameters from --params, with every training instance type its notebooks name."""
    from .course import load_params

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
    from . import aws

    params = _aws_params(args)
    rows = aws.preflight(params, args.checks)
    cost = aws.estimate(params)
    if args.json:
        _print_json({"checks": [r.to_dict() for r in rows], "estimated_cost": cost, "passed": aws.passed(rows)})
    else:
        print(aws.format_table(rows, cost))
    return 0 if aws.passed(rows) else 2


def cmd_aws_cleanup(args: argparse.Namespace) -> int:
    from . import aws

    params = _aws_params(args)
    session = aws.boto_session(params.get("REGION"))
    bucket = args.bucket or params.get("BUCKET") or ""
    if args.delete_data and not bucket:
        bucket = aws.default_bucket_name(session)
    removed = aws.cleanup(args.run, session=session, bucket=bucket,
                          prefixes=aws.data_prefixes(args.prefix or params.get("PREFIX") or "intel", args.run),
                          delete_data=args.delete_data)
    if args.json:
        _print_json(removed)
    else:
        print(aws.format_removed(removed))
    return 1 if removed.get("not_removed") else 0


def cmd_records(args: argparse.Namespace) -> int:
    from .records import load_records

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
    from .bench import pack_run

    path = pack_run(args.target, args.out)
    print(f"[records] packed {args.target} into {path} ({path.stat().st_size / 1024:.1f} KiB): "
          f"bring it to one machine and run `cloudalliance bench compare` on the archives")
    return 0


def cmd_bench_compare(args: argparse.Namespace) -> int:
    from . import bench

    result = bench.compare(args.runs, out=args.out, baseline=args.baseline, force=args.force)
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


# --------------------------------------------------------------------------- parser


def _add_s3_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="local", choices=["local", "aws"])
    p.add_argument("--endpoint-url", help="S3 endpoint (local: the embedded server, started if needed)")
    p.add_argument("--region")


def _add_training_run_args(p: argparse.ArgumentParser) -> None:
    """Where the data and the model are, the local profile, and the hyperparameters (``_HP_FLAGS``)."""
    from .training import PRESETS

    p.add_argument("--train-dir", required=True, help="class folders (Kaggle layout, nested or flat)")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--test-dir", help="labeled folder to validate on (default: a held-out split of --train-dir)")
    p.add_argument("--profile", default="local-2cpu", help="local instance profile (cloudalliance instances)")
    p.add_argument("--checkpoint-dir", help="default: <model-dir>-checkpoints; a rerun resumes from it")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="a named recipe (on 2 cores and the Intel set: fast ~3.5 min, default ~12 min, best longer); "
                        "the flags below override it")
    p.add_argument("--arch")
    p.add_argument("--pretrained", choices=["auto", "yes", "no"])
    p.add_argument("--epochs", type=int)
    p.add_argument("--img-size", type=int)
    p.add_argument("--first-epochs", type=int, help="of --epochs, how many run first at --first-size (0: none)")
    p.add_argument("--first-size", type=int)
    p.add_argument("--batch-size", type=int, help="images per step over all processes")
    p.add_argument("--lr", type=float)
    p.add_argument("--freeze-blocks", type=int, help="keep the stem and the first N blocks frozen")
    p.add_argument("--ema", type=float, help="decay of the weights' moving average (0: off)")
    p.add_argument("--seed", type=int)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--max-train-images", type=int)
    p.add_argument("--fit", choices=_FITS,
                   help="how non-square images become the model's square (training, evaluation and serving)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloudalliance", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The course's command line: one subcommand per stage (data, s3, train, endpoint, api, bench, aws), "
                    "and `course run` for the notebooks.",
        epilog="Exit codes: 0 done, 1 the work failed (a notebook, a check), 2 bad input or an environment problem "
               "(with a message that says what to do).")
    parser.add_argument("--version", action="version", version=f"cloudalliance {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="make, check or fetch the image data set").add_subparsers(
        dest="action", required=True)
    p = data.add_parser("synth", help="write the synthetic data set in Kaggle's layout")
    p.add_argument("--out", required=True, help="destination folder")
    p.add_argument("--train-per-class", type=int, default=40)
    p.add_argument("--test-per-class", type=int, default=10)
    p.add_argument("--pred", type=int, default=12, help="unlabeled images in seg_pred")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--problem-files", action="store_true", help="also write broken files (for tests)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_synth)
    p = data.add_parser("validate", help="counts, sizes, modes and problem files of a data folder")
    p.add_argument("path")
    p.add_argument("--split", default="all", choices=["all", "auto", "train", "test", "pred"],
                   help="all: every seg_* split found; auto: PATH holds the class folders")
    p.add_argument("--show", type=int, default=20, help="problems to list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_validate)
    p = data.add_parser("split", help="stratified train/test split of a labeled folder (links, or --copy)")
    p.add_argument("src", help="Kaggle root, seg_train folder or flat class folders")
    p.add_argument("--out", required=True, help="writes OUT/train/<class> and OUT/test/<class>")
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--copy", action="store_true", help="copy the files instead of linking them")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_split)
    p = data.add_parser("fetch", help="download the real data set with kagglehub (needs internet)")
    p.add_argument("--dest", help="link the download here")
    p.set_defaults(func=cmd_data_fetch)

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

    course = sub.add_parser("course", help="run the notebooks with papermill").add_subparsers(
        dest="action", required=True)
    p = course.add_parser("run", help="run the course's notebooks in order")
    p.add_argument("--params", default="params/local.yaml",
                   help="the parameter file (default: params/local.yaml; params/aws.yaml for a real AWS run)")
    p.add_argument("--run-id", help="the run's folder under runs/ (default: the file's run_id, else a timestamp); "
                                    "an existing one is continued")
    p.add_argument("--only", nargs="+", metavar="PREFIX",
                   help="run only notebooks whose name starts with these (e.g. --only 05 06); default: all")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="a notebook parameter for this run, e.g. --set DATA_SOURCE=/data/intel (relative paths "
                        "are taken from the current folder); repeat for several")
    p.add_argument("--verbose", action="store_true", help="show the notebooks' output as they run")
    p.set_defaults(func=cmd_course_run)

    p = sub.add_parser("train", help="train with the SageMaker entry script in local processes")
    _add_training_run_args(p)
    p.add_argument("--record-dir", help="also write the training record here (runs/<id>/records)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy and per-class figures of a model on labeled images")
    p.add_argument("--model-dir", required=True, help="model folder or model.tar.gz")
    p.add_argument("--data-dir", required=True, help="Kaggle root, seg_test folder, or flat class folders")
    p.add_argument("--split", default="test", choices=["test", "train", "auto"],
                   help="which split of a Kaggle root (auto: DATA_DIR holds the class folders)")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--engine", default="auto", choices=["auto", "onnx", "torch"],
                   help="on a CPU: auto scores with ONNX Runtime where it can (same weights, faster)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("instances", help="local instance profiles and priced SageMaker instance types")
    p.set_defaults(func=cmd_instances)

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
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lambda_package)

    p = sub.add_parser("predict", help="call the API like curl: an image URL or a local file")
    p.add_argument("--api", required=True, help="the API URL, ending in /predict")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="an image URL the API fetches")
    source.add_argument("--file", help="a local image, sent as base64")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("services", help="local servers (S3, endpoint, gateway, images)")
    p.add_argument("action", choices=["list", "stop"])
    p.set_defaults(func=cmd_services)

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

    aws_cmd = sub.add_parser("aws", help="the aws backend's account: preflight and cleanup").add_subparsers(
        dest="action", required=True)
    p = aws_cmd.add_parser("check", help="preflight: credentials, role, bucket, quotas, names, SAM; estimated cost "
                                         "(exit 0 all pass, 2 a failure); creates nothing")
    p.add_argument("--params", default="params/aws.yaml", help="the course's parameter file")
    p.add_argument("--region", help="overrides REGION")
    p.add_argument("--checks", nargs="+", default=["all"], choices=["all", "bucket", "role", "training", "endpoint", "api"])
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

    p = sub.add_parser("records", help="list the records of a run")
    p.add_argument("run_dir", help="runs/<run-id> (or its records folder); `records pack RUN` packs a run")
    p.add_argument("target", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--out", help="records pack: the archive (default: runs/<run-id>.tar.gz)")
    p.add_argument("--stage")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_records)
    return parser


def _known_errors() -> tuple[type[BaseException], ...]:
    from .course import CourseError
    from .data import DataError
    from .api import ApiClientError
    from .aws import AwsError
    from .launch import LaunchError
    from .models import ModelError
    from .serving import ServingError
    from .records import RecordError
    from .services import ServiceError
    from .storage import StorageError

    return (DataError, StorageError, ServiceError, RecordError, CourseError, LaunchError, ModelError,
            ServingError, ApiClientError, AwsError, FileNotFoundError, ValueError)


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
    except _known_errors() as exc:
        from .course import CourseError

        print(f"error: {exc}", file=sys.stderr)
        from .launch import LaunchError

        return 1 if isinstance(exc, (CourseError, LaunchError)) else 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
