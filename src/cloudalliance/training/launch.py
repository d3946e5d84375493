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
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from ..machine import mark_start
from .results import LaunchError, TrainingResult, training_record
from .sagemaker import run_sagemaker
from ..aws import AwsError, boto_session, resolve_role
from ..data.folders import resolve_split
from ..local.services import free_port
from ..storage import S3Location, download_prefix


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


def _free_port() -> int:

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


def train_instance(backend: str, instance: str, run, hyperparameters: Mapping[str, Any], *, s3=None, location=None,
                   role: str = "", region: str | None = None, use_spot: bool = False, progress: bool = True,
                   instance_count: int = 1):
    """What notebook 03 runs for one instance type: the channel from S3, training, the record.

    local: the uploaded prefix is copied into ``runs/<id>/channels`` (as SageMaker's
    File mode does) and the script runs under the local profile ``instance``.
    aws: a SageMaker training job on ``instance`` reads the same prefix.
    Returns ``(TrainingResult, Record)``; the record is written to the run.
    """

    if location is None:
        raise LaunchError("train_instance needs the S3 location the data was uploaded to")
    location = location if isinstance(location, S3Location) else S3Location.parse(location)
    train_loc = S3Location(location.bucket, location.key("seg_train/seg_train"))
    test_loc = S3Location(location.bucket, location.key("seg_test/seg_test"))
    model_dir = run.path / "models" / instance
    channel_seconds = 0.0
    if backend == "local":
        channels = run.path / "channels"
        got = download_prefix(s3, train_loc, channels / "train", progress=False)  # no bar at 0 % in a notebook
        got_test = download_prefix(s3, test_loc, channels / "test", progress=False)
        channel_seconds = got["seconds"] + got_test["seconds"]
        result = run_local(channels / "train", model_dir, instance, hyperparameters, test_dir=channels / "test",
                           checkpoint_dir=run.path / "checkpoints" / instance, progress=progress,
                           log_file=run.path / "logs" / f"training-{instance}.log" if not progress else None)
    elif backend == "aws":

        session = boto_session(region)
        try:
            role = resolve_role(role, session)
        except AwsError as exc:
            raise LaunchError(f"The aws backend needs ROLE_ARN: {exc}") from None
        result = run_sagemaker(train_loc.uri, model_dir, instance, role, hyperparameters, test_s3_uri=test_loc.uri,
                               region=region, use_spot=use_spot, instance_count=instance_count,
                               output_path=f"{run.s3_models(location.bucket)}/training",
                               # one prefix per job: SageMaker restores a spot job's checkpoints from it within the
                               # job, while a rerun of the notebook starts afresh instead of "resuming" a finished
                               # run after its last epoch (a job that trains nothing and still bills)
                               checkpoint_s3_uri=f"{run.s3_checkpoints(location.bucket)}/{instance}/"
                                                 f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}",
                               staging_s3_uri=run.s3_models(location.bucket),
                               boto_session=session, run_id=run.run_id)
    else:
        raise LaunchError(f"Unknown backend {backend!r}; choose one of: local, aws")
    record = training_record(result)
    record.timings["channel_download_s"] = round(channel_seconds, 3)
    run.write_record(record)
    return result, record


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

    result = run_local(resolve_split(data_root, "train"), run.path / "models" / "local-2cpu", "local-2cpu",
                       dict(fallback), test_dir=resolve_split(data_root, "test"),
                       checkpoint_dir=run.path / "checkpoints" / "local-2cpu", progress=False)
    run.write_record(training_record(result))
    return result.model_dir
