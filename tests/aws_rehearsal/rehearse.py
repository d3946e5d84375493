"""Rehearse the course's aws branch (notebooks 02, 03, 05, 06) twice against a local AWS emulator.

    .venv/bin/python tests/aws_rehearsal/rehearse.py [--passes 2] [--new-run-ids] [--interrupt] [--keep] [--verbose]

What a learner does, on a machine that has no AWS: ``cloudalliance course run --params params/aws-rehearsal.yaml``
(papermill, backend aws), then the same command again with the same run id (rerunning the same notebooks must
update, never collide), then, once, a two-instance training job through the library (the SDK's torchrun driver
across two containers), then ``cloudalliance aws cleanup --run <id>``. AWS is moto's server behind the proxy in
aws_emulator.py, reached only through AWS_ENDPOINT_URL; the course's code does not know it is rehearsed.
``--interrupt`` adds a Ctrl-C during a training job (the job must be stopped). Every AWS action the run called must
be in iam/cloudalliance-course-policy.json, the policy the README gives a learner.

Each pass prints ``[rehearsal] pass N: passed in S s`` or ``[rehearsal] pass N: FAILED ...`` with the failing
notebook and cell (from the course runner) and the proxy's view of SageMaker. Exit status: 0 when every pass and
the cleanup passed, 1 otherwise, 2 for bad arguments. Every process it starts (moto and the proxy are threads;
endpoints, gateway, image server, the course run) is stopped by its PID at the end, also on failure.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PARAMS = REPO / "params" / "aws-rehearsal.yaml"
POLICY = REPO / "iam" / "cloudalliance-course-policy.json"
ROLE_NAME = "SageMakerExecutionRole"
RUN_ID = "rehearsal"

sys.path.insert(0, str(HERE))
from aws_emulator import Emulator  # noqa: E402


def isolated_environment(workdir: Path, endpoint_url: str, region: str) -> dict[str, str]:
    """Fake credentials, the emulator as every AWS endpoint, and a HOME of its own (no ~/.aws, no real state)."""
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "SAGEMAKER_", "CLOUDALLIANCE_", "BOTO_")) and k != "HOME"}
    # sitecustomize.py first; a PYTHONPATH the caller set (e.g. another checkout's src) stays after it
    python_path = os.pathsep.join([str(HERE / "site")] + [p for p in [os.environ.get("PYTHONPATH", "")] if p])
    return {
        **keep,
        "HOME": str(home),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_CONFIG_FILE": str(home / ".aws" / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / ".aws" / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": endpoint_url,
        "PYTHONPATH": python_path,  # sitecustomize.py: hard-coded *.amazonaws.com endpoints -> the emulator
        "REHEARSAL_BOTOCORE_CALLS": str(workdir / "botocore-calls.txt"),  # sitecustomize.py: each client's calls
        "CLOUDALLIANCE_STATE_DIR": str(workdir / "harness-services"),
        "TQDM_DISABLE": "1",
        "MPLBACKEND": "Agg",
        "PYTHONUNBUFFERED": "1",
    }


def write_params(workdir: Path, api_url: str, image_url: str) -> Path:
    doc = yaml.safe_load(PARAMS.read_text())
    doc["runs_dir"] = str(workdir / "runs")
    notebooks = []
    for entry in doc["notebooks"]:
        name = entry if isinstance(entry, str) else entry["notebook"]
        if name.startswith("06_"):
            entry = {"notebook": name, "parameters": {"API_URL": api_url, "IMAGE_URL": image_url}}
        notebooks.append(entry)
    doc["notebooks"] = notebooks
    path = workdir / "aws-rehearsal.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_logged(argv: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[int, str]:
    """Run ``argv``, tee its output to ``log``; on timeout stop it (its process group, by PID)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                out.write(line)
                if line.startswith((b"[course]", b"[aws]")) or b"Error" in line:
                    sys.stdout.write("    " + line.decode(errors="replace"))
                    sys.stdout.flush()
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(argv, timeout)
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
            code = 124
    return code, log.read_text(errors="replace")


def notebook_errors(folder: Path) -> list[str]:
    """'<notebook> cell N: Error: message (at file:line)' for every error output in the executed notebooks
    (N counts code and markdown cells from 1, papermill's injected cells excluded)."""
    import re

    import nbformat

    found = []
    for path in sorted(folder.glob("*.ipynb")):
        cells = [c for c in nbformat.read(path, as_version=4).cells
                 if not set(c.metadata.get("tags", [])) & {"injected-parameters", "papermill-error-cell-tag"}]
        for n, cell in enumerate(cells, start=1):
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    frames = [re.sub(r"\x1b\[[0-9;]*m", "", t) for t in out.get("traceback", [])]
                    ours = [line for t in frames for line in t.splitlines()
                            if line.startswith("File ") and ("/src/cloudalliance/" in line or "/lambda/" in line)]
                    first = cell.source.strip().splitlines()[0][:70] if cell.source.strip() else ""
                    where = f" (last course frame: {ours[-1].split(',')[0][5:]})" if ours else ""
                    found.append(f"{path.name} cell {n} `{first}`: {out['ename']}: {out['evalue'][:600]}{where}")
    return found


def sagemaker_state(emulator: Emulator) -> dict[str, list[str]]:
    sm = emulator.client("sagemaker")
    return {
        "endpoints": [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]],
        "endpoint_configs": [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]],
        "models": [m["ModelName"] for m in sm.list_models()["Models"]],
        "training_jobs": [j["TrainingJobName"] for j in sm.list_training_jobs()["TrainingJobSummaries"]],
    }


def aws_command_exists(env: dict[str, str], command: str) -> bool:
    probe = subprocess.run([str(Path(sys.executable).parent / "cloudalliance"), "aws", command, "--help"], env=env,
                           cwd=REPO, capture_output=True, timeout=120)
    return probe.returncode == 0


def s3_state(emulator: Emulator) -> dict[str, int]:
    """Objects left per bucket (what still costs money after a cleanup)."""
    s3 = emulator.client("s3")
    left = {}
    for bucket in s3.list_buckets().get("Buckets", []):
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"])
        left[bucket["Name"]] = sum(len(page.get("Contents", [])) for page in pages)
    return left


TWO_INSTANCE_JOB = """
import json, sys
from cloudalliance.training.sagemaker import run_sagemaker
bucket, prefix, run_id, role, model_dir = sys.argv[1:6]
result = run_sagemaker(f"s3://{bucket}/{prefix}/seg_train/seg_train", model_dir, "ml.m5.xlarge", role,
                       {"preset": "fast", "epochs": 1, "img_size": 64, "batch_size": 8},
                       test_s3_uri=f"s3://{bucket}/{prefix}/seg_test/seg_test", instance_count=2,
                       output_path=f"s3://{bucket}/models/{run_id}/two-instance",
                       checkpoint_s3_uri=f"s3://{bucket}/checkpoints/{run_id}/two-instance",
                       staging_s3_uri=f"s3://{bucket}/models/{run_id}", run_id=run_id, logs=False)
print("two-instance job", result.job_name, json.dumps(result.metrics.get("val_accuracy")))
"""


def two_instance_job(emulator: Emulator, env: dict[str, str], workdir: Path, run_id: str) -> tuple[int, str]:
    """Once, the library's aws training with ``instance_count=2`` on the data pass 1 uploaded: the SDK's torchrun
    driver starts ``torchrun --nnodes=2 --node_rank=N`` in two containers, algo-1 and algo-2, which train
    together over gloo. Passes when the job completed and each host's rank file says its rank of two."""
    parameters = yaml.safe_load(PARAMS.read_text())["parameters"]
    role = parameters["ROLE_ARN"]
    code, output = run_logged([sys.executable, "-c", TWO_INSTANCE_JOB, parameters["BUCKET"], parameters["PREFIX"],
                               run_id, role, str(workdir / "two-instance-model")], env,
                              workdir / "two-instance.log", 600)
    # each rank writes /opt/ml/output/data/rank-<N>.json (cloudalliance/training/train.py) in its own container
    ranks = sorted((doc["host"], doc["rank"], doc["world_size"]) for path in
                   (emulator.workdir / "training-jobs").glob("*/algo-*/ml/output/data/rank-*.json")
                   if (path.parents[3].parent / "algo-2").is_dir()
                   for doc in [json.loads(path.read_text())])
    ok = code == 0 and ranks == [("algo-1", 0, 2), ("algo-2", 1, 2)]
    return (0 if ok else (code or 1)), f"{output.strip()[-1500:]}\n(host, rank, world size) seen: {ranks}"


# S3 operations whose IAM action has another name ("Required permissions for Amazon S3 API operations",
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/using-with-s3-policy-actions.html); the others are s3:<same>
S3_OPERATIONS = {"ListObjectsV2": "s3:ListBucket", "ListObjects": "s3:ListBucket", "HeadBucket": "s3:ListBucket",
                 "HeadObject": "s3:GetObject", "ListBuckets": "s3:ListAllMyBuckets",
                 "GetBucketEncryption": "s3:GetEncryptionConfiguration", "DeleteObjects": "s3:DeleteObject",
                 "CreateMultipartUpload": "s3:PutObject", "UploadPart": "s3:PutObject",
                 "CompleteMultipartUpload": "s3:PutObject", "ListMultipartUploads": "s3:ListBucketMultipartUploads",
                 "ListParts": "s3:ListMultipartUploadParts"}
# S3 requests as the proxy records them ("METHOD /bucket[/key]", no query string), by method and bucket or object
S3_REQUESTS = {("GET", False): "s3:ListBucket", ("HEAD", False): "s3:ListBucket", ("PUT", False): "s3:CreateBucket",
               ("POST", False): "s3:DeleteObject", ("DELETE", False): "s3:DeleteBucket", ("GET", True): "s3:GetObject",
               ("HEAD", True): "s3:GetObject", ("PUT", True): "s3:PutObject", ("POST", True): "s3:PutObject",
               ("DELETE", True): "s3:DeleteObject"}
# JSON-protocol services as X-Amz-Target names them, by IAM prefix
TARGETS = {"SageMaker": "sagemaker", "ServiceQuotasV20190624": "servicequotas", "Logs_20140328": "logs", "iam": "iam"}


def iam_actions(proxy_calls: list[str], client_calls: list[str]) -> dict[str, str]:
    """IAM action -> one call that needs it, from the proxy's record (``emulator.calls``: "SageMaker.X", "iam.X",
    "METHOD /path") and the botocore clients' ("<signing name>:<operation>", written by sitecustomize.py).

    The proxy sees every client (s5cmd too) but not an S3 request's query string (``?location``, ``?uploads``) nor
    the Action of a query-protocol call (STS, CloudFormation: "POST /"), which the botocore record names. S3
    requests in the proxy's record are mapped by method, on a bucket or an object (``S3_REQUESTS``): GET or HEAD on
    a bucket is s3:ListBucket (ListObjectsV2, HeadBucket), on an object s3:GetObject (GetObject, HeadObject); PUT on
    a bucket s3:CreateBucket; PUT or POST on an object s3:PutObject (PutObject, the multipart calls); POST on a bucket
    (DeleteObjects) and DELETE on an object s3:DeleteObject; GET / is ListBuckets, s3:ListAllMyBuckets.
    """
    found: dict[str, str] = {}
    for call in client_calls:
        prefix, _, operation = call.partition(":")
        found.setdefault(S3_OPERATIONS.get(operation, call) if prefix == "s3" else call, call)
    for call in proxy_calls:
        method, _, path = call.removeprefix("s3 ").partition(" ")
        target, _, operation = call.partition(".")
        if not path.startswith("/"):  # "SageMaker.CreateTrainingJob", "iam.GetRole"
            found.setdefault(f"{TARGETS.get(target, target.lower())}:{operation}", call)
        elif path.startswith("/endpoints/") and path.endswith("/invocations"):
            found.setdefault("sagemaker:InvokeEndpoint", call)
        elif path == "/":
            if method == "GET":
                found.setdefault("s3:ListAllMyBuckets", call)
            # "POST /": STS, IAM or CloudFormation (query protocol), named in the botocore record
        else:
            found.setdefault(S3_REQUESTS.get((method, "/" in path.strip("/")), f"s3:{method}"), call)
    return found


def policy_actions(path: Path = POLICY) -> set[str]:
    """The actions the policy allows, lower case (IAM compares action names case-insensitively)."""
    statements = json.loads(path.read_text())["Statement"]
    return {a.lower() for st in statements if st["Effect"] == "Allow"
            for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])}


# Actions a real account needs that no call here shows: a request's implied permissions (a job or model passes
# the execution role; a Create* with Tags also needs AddTags), the log the SDK reads while a job runs on AWS, and
# the notebook instance the SDK asks about when the course runs on one (get_execution_role)
IMPLIED = {"iam:PassRole": "CreateTrainingJob and CreateModel pass the execution role",
           "sagemaker:AddTags": "Create* requests with Tags",
           "logs:GetLogEvents": "TrainingJob.wait(logs=True) on AWS",
           "sagemaker:DescribeNotebookInstance": "get_execution_role on a notebook instance"}


def check_policy(proxy_calls: list[str], client_calls: list[str], path: Path = POLICY) -> list[str]:
    """'action (e.g. the call that needed it)' for every action called, or implied, that the policy does not
    allow."""
    allowed = policy_actions(path)
    needed = {**IMPLIED, **iam_actions(proxy_calls, client_calls)}
    return [f"{action} (e.g. {call})" for action, call in sorted(needed.items()) if action.lower() not in allowed]


def interrupted_training(cli: str, params: Path, run_id: str, env: dict[str, str], emulator: Emulator, log: Path,
                         timeout: float) -> tuple[int, str]:
    """Ctrl-C while notebook 03 waits for its training job: ``course run --only 03``, then SIGINT to its process
    group, as a terminal sends it (the notebook's kernel runs in a session of its own). The job must be stopped:
    the proxy must see StopTrainingJob. Returns (0 or 1, what happened)."""
    seen = len(emulator.calls)
    # a shell leaves SIGINT ignored in the background jobs it starts, and children inherit that; a terminal's
    # foreground command has SIGINT's default, which Python turns into KeyboardInterrupt: give the run that
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    with open(log, "wb") as out:
        try:  # EPOCHS: a job still running when the interrupt lands (the passes' one epoch takes seconds)
            proc = subprocess.Popen([cli, "course", "run", "--params", str(params), "--run-id", run_id, "--only",
                                     "03", "--set", "EPOCHS=200"], env=env, cwd=REPO, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            signal.signal(signal.SIGINT, previous)
        deadline = time.monotonic() + timeout
        calls: list[str] = []
        # the SDK waits for the job once two DescribeTrainingJob follow its CreateTrainingJob (TrainingJob.create's
        # own, then the wait's first): the trainer knows the job by then (sagemaker/train/model_trainer.py:977)
        while proc.poll() is None and time.monotonic() < deadline and (calls[calls.index(
                "SageMaker.CreateTrainingJob"):] if "SageMaker.CreateTrainingJob" in calls else []).count(
                "SageMaker.DescribeTrainingJob") < 2:
            time.sleep(0.5)
            calls = emulator.calls[seen:]
        if proc.poll() is not None or time.monotonic() >= deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return 1, f"no training job was waited for (exit {proc.returncode}); log {log}"
        os.killpg(proc.pid, signal.SIGINT)
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
    after = emulator.calls[seen:]
    # the kernel's own StopTrainingJob, before the runner's fallback lists the run's jobs (course.py,
    # _stop_aws_training: ListTrainingJobs, then a stop for each one still InProgress)
    stopped = "SageMaker.StopTrainingJob" in after and after.index("SageMaker.StopTrainingJob") < (
        after.index("SageMaker.ListTrainingJobs") if "SageMaker.ListTrainingJobs" in after else len(after))
    return (0 if stopped and code == 130 else 1), (f"exit {code} after Ctrl-C (130: interrupted); StopTrainingJob "
                                                   f"{'seen' if stopped else 'NOT seen'} from the notebook's kernel; "
                                                   f"log {log}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--passes", type=int, default=2, help="how many times to run the notebooks (default 2)")
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed for each pass (default 600)")
    p.add_argument("--workdir", help="keep everything here (default: a temporary folder, removed unless --keep)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (executed notebooks, logs)")
    p.add_argument("--verbose", action="store_true", help="print the emulator's SageMaker events")
    p.add_argument("--new-run-ids", action="store_true",
                   help="a new run id per pass (a course rerun from the top) instead of the same one (notebooks "
                        "rerun); the cleanup then removes every pass's run")
    p.add_argument("--skip-two-instance", action="store_true",
                   help="leave out the two-instance training job that runs once after the passes")
    p.add_argument("--interrupt", action="store_true",
                   help="after the passes, Ctrl-C a rerun of notebook 03 mid-training: its job must be stopped")
    args = p.parse_args(argv)
    if args.passes < 1 or args.timeout <= 0:
        p.error("--passes must be >= 1 and --timeout > 0")

    t_start = time.perf_counter()
    workdir = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="aws-rehearsal-"))
    workdir.mkdir(parents=True, exist_ok=True)
    region = yaml.safe_load(PARAMS.read_text())["parameters"].get("REGION", "us-east-1")
    emulator = Emulator(workdir / "emulator", region=region, verbose=args.verbose)
    results: list[tuple[str, int, float]] = []
    saved_env = dict(os.environ)
    services = None
    try:
        emulator.start()
        env = isolated_environment(workdir, emulator.endpoint_url, region)
        os.environ.clear()
        os.environ.update(env)  # the gateway and image server started below inherit it
        print(f"[rehearsal] moto {emulator.moto_url}, proxy (AWS_ENDPOINT_URL) {emulator.endpoint_url}, "
              f"work folder {workdir}; moto's errors go to {emulator.log_file}", flush=True)
        # the learner's account already has the execution role (the course's README asks for it)
        emulator.client("iam").create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=(
            '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"sagemaker.amazonaws.com"},'
            '"Action":"sts:AssumeRole"}]}'))

        t0 = time.perf_counter()
        from inference_container import prepare_image

        print(f"[rehearsal] inference image (toolkit + TorchServe): {prepare_image()} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        from cloudalliance.local import gateway as local_gateway
        from cloudalliance.data import folders, layout, synthetic
        from cloudalliance.local import services as _services

        services = _services
        images_root = layout.prepare_dataset("synthetic", workdir / "images", synthetic.SyntheticSpec(1, 1, 1, 0),
                                           progress=False)
        test_root = folders.resolve_split(images_root, "test")
        image = sorted(test_root.rglob("*.jpg"))[0]
        images = local_gateway.start_image_server(test_root)
        # no SAGEMAKER_RUNTIME_URL: the handler builds its sagemaker-runtime client as on AWS, and that client
        # finds the emulator through AWS_ENDPOINT_URL
        gateway = local_gateway.start_local_gateway("", "cloudalliance", allowed_private_hosts="127.0.0.1")
        api_url = gateway.endpoint_url + local_gateway.ROUTE
        image_url = f"{images.endpoint_url}/{image.relative_to(test_root).as_posix()}"
        params = write_params(workdir, api_url, image_url)
        print(f"[rehearsal] API_URL {api_url} (local gateway, pid {gateway.pid}); IMAGE_URL {image_url}", flush=True)

        cli = str(Path(sys.executable).parent / "cloudalliance")
        if aws_command_exists(env, "check"):
            # the learner's first step on an account (README "On AWS"): exit 0 when every check passed
            t0 = time.perf_counter()
            code, output = run_logged([cli, "aws", "check", "--params", str(params)], env, workdir / "check.log", 300)
            results.append(("preflight", code, time.perf_counter() - t0))
            print(f"[rehearsal] preflight (cloudalliance aws check): {'passed' if code == 0 else 'FAILED'} "
                  f"(exit {code})", flush=True)
            print("\n".join("    | " + line for line in output.strip().splitlines()[-30:]), flush=True)
        else:
            print("[rehearsal] preflight: SKIPPED -- `cloudalliance aws check` does not exist", flush=True)
        run_ids = [f"{RUN_ID}-{n}" if args.new_run_ids else RUN_ID for n in range(1, args.passes + 1)]
        for n, run_id in enumerate(run_ids, start=1):
            print(f"[rehearsal] pass {n}: cloudalliance course run --params {params} --run-id {run_id}", flush=True)
            t0 = time.perf_counter()
            code, output = run_logged([cli, "course", "run", "--params", str(params), "--run-id", run_id], env,
                                      workdir / f"pass-{n}.log", args.timeout)
            seconds = time.perf_counter() - t0
            results.append((f"pass {n}", code, seconds))
            if code == 0:
                print(f"[rehearsal] pass {n}: passed in {seconds:.1f} s", flush=True)
            else:
                print(f"[rehearsal] pass {n}: FAILED (exit {code}) after {seconds:.1f} s; log {workdir}/pass-{n}.log",
                      flush=True)
                errors = notebook_errors(workdir / "runs" / run_id / "notebooks")
                for line in errors:
                    print(f"[rehearsal] pass {n}: {line}", flush=True)
                if not errors:
                    print("\n".join("    | " + line for line in output.strip().splitlines()[-25:]), flush=True)
            print(f"[rehearsal] SageMaker after pass {n}: {sagemaker_state(emulator)}", flush=True)
            for name, run in emulator.trainings.items():
                if run.status != "Completed":
                    print(f"[rehearsal] training job {name}: {run.status} {run.failure[:1500]}", flush=True)

        if results[-1][1] == 0 and not args.skip_two_instance:
            t0 = time.perf_counter()
            code, output = two_instance_job(emulator, env, workdir, run_ids[0])
            results.append(("two-instance job", code, time.perf_counter() - t0))
            print(f"[rehearsal] two-instance training job (SDK torchrun driver, algo-1 + algo-2): "
                  f"{'passed' if code == 0 else 'FAILED'}", flush=True)
            print("\n".join("    | " + line for line in output.strip().splitlines()[-8:]), flush=True)

        if args.interrupt:
            t0 = time.perf_counter()
            code, what = interrupted_training(cli, params, run_ids[-1], env, emulator, workdir / "interrupt.log",
                                              args.timeout)
            results.append(("interrupt", code, time.perf_counter() - t0))
            print(f"[rehearsal] interrupt: {'passed' if code == 0 else 'FAILED'} ({what})", flush=True)
            deadline = time.monotonic() + 300  # the stopped job saves its checkpoints: before cleanup counts objects
            while time.monotonic() < deadline and any(
                    r.status in ("InProgress", "Stopping") for r in emulator.trainings.values()):
                time.sleep(1)

        if aws_command_exists(env, "cleanup"):
            t0 = time.perf_counter()
            code, output = 0, ""
            for run_id in dict.fromkeys(run_ids):
                one, out = run_logged([cli, "aws", "cleanup", "--run", run_id, "--params", str(params),
                                       "--delete-data"], env, workdir / f"cleanup-{run_id}.log", 300)
                code, output = code or one, output + out
            state = sagemaker_state(emulator)
            left = {k: v for k, v in state.items() if v and k != "training_jobs"}
            objects_left = s3_state(emulator)
            ok = code == 0 and not left and not emulator.endpoints and not any(objects_left.values())
            results.append(("cleanup", 0 if ok else (code or 1), time.perf_counter() - t0))
            print(f"[rehearsal] cleanup: {'passed' if ok else 'FAILED'} (exit {code}); left in SageMaker: "
                  f"{left or 'nothing'}; local endpoints still served: {sorted(emulator.endpoints) or 'none'}",
                  flush=True)
            print("\n".join("    | " + line for line in output.strip().splitlines()[-15:]), flush=True)
            print(f"[rehearsal] S3 objects left after cleanup --delete-data: {objects_left} (0 for the pass to count)",
                  flush=True)
        else:
            print("[rehearsal] cleanup: SKIPPED -- `cloudalliance aws cleanup` does not exist yet "
                  "(src/cloudalliance/aws.py); the endpoint is left in the emulator only", flush=True)
        calls_file = Path(env["REHEARSAL_BOTOCORE_CALLS"])
        client_calls = calls_file.read_text().split() if calls_file.is_file() else []
        missing = check_policy(emulator.calls, client_calls)
        results.append(("iam policy", 1 if missing else 0, 0.0))
        called = sorted(iam_actions(emulator.calls, client_calls))
        print(f"[rehearsal] IAM: {len(called)} actions called, "
              + (f"NOT in {POLICY.relative_to(REPO)}: {'; '.join(missing)}" if missing else
                 f"all in {POLICY.relative_to(REPO)}") + f": {', '.join(called)}", flush=True)
        counts = collections.Counter(c for c in emulator.calls if c.startswith("SageMaker."))
        counts["InvokeEndpoint (runtime, served by TorchServe)"] = sum(
            1 for c in emulator.calls if c.startswith("POST /endpoints/"))
        print("[rehearsal] SageMaker calls seen by the proxy: "
              + ", ".join(f"{k.removeprefix('SageMaker.')} x{v}" for k, v in sorted(counts.items())), flush=True)
    finally:
        if services is not None:
            for name in ("gateway", "images"):
                services.stop_service(name)
        stopped = emulator.stop()
        os.environ.clear()
        os.environ.update(saved_env)
        print(f"[rehearsal] stopped: {', '.join(stopped)}, gateway, image server", flush=True)
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.perf_counter() - t_start
    failed = [name for name, code, _ in results if code != 0]
    summary = "; ".join(f"{name} {'passed' if code == 0 else 'FAILED'} ({s:.0f} s)" for name, code, s in results)
    print(f"[rehearsal] {'PASSED' if not failed and len(results) >= args.passes else 'FAILED'}: {summary}; "
          f"total {total:.0f} s", flush=True)
    return 0 if not failed and len(results) >= args.passes else 1


if __name__ == "__main__":
    sys.exit(main())
