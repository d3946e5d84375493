"""Rehearsal only: a SageMaker training job run the way SageMaker runs it, with the SDK's own container code.

For each host of the job (``algo-1``, ``algo-2``, ...) the container's ``/opt/ml`` is laid out as SageMaker lays
it out (https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-training-algo-running-container.html):

- ``input/config/hyperparameters.json``, ``resourceconfig.json``, ``inputdataconfig.json``;
- ``input/data/<channel>/`` for every channel of the request, downloaded from (emulated) S3 -- the data, and the
  ``code`` and ``sm_drivers`` channels exactly as ``ModelTrainer`` uploaded them;
- ``checkpoints/`` filled from the job's ``CheckpointConfig`` S3 URI before the start, copied back at the end.

Then the request's own ``ContainerEntrypoint`` + ``ContainerArguments`` run -- for ``ModelTrainer`` that is
``/bin/bash -c "chmod +x .../sm_train.sh && .../sm_train.sh"`` (sagemaker/train/constants.py,
``DEFAULT_CONTAINER_ARGUMENTS``), so the SDK's ``sm_train.sh``, ``scripts/environment.py``,
``install_requirements.py`` and the basic-script or torchrun driver run unchanged and start the course's entry
script. ``/opt/ml/model`` comes back as ``model.tar.gz`` and ``/opt/ml/output/data`` as ``output.tar.gz``
(https://docs.aws.amazon.com/sagemaker/latest/dg/model-train-storage.html), ``/opt/ml/output/failure`` as the
job's FailureReason.

The "image" is this machine's Python: a venv of its own (its pip installs ``requirements.txt`` there, never
into the project's environment) that sees the project's packages through a ``.pth`` file, the way the PyTorch
image ships torch before the job's requirements are installed. What differs from the real image (torch 2.14
here, 2.6 there) is checked separately, by the resolver test in tests/unit/test_container_requirements.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import tarfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from sandbox import container_command

# Download (uri, dest) -> files, upload (folder, uri) -> files: the emulator's S3 view.
Download = Callable[[str, Path], int]
Upload = Callable[[Path, str], int]

SCRIPTS = {  # the console scripts the image has on its PATH, for this venv's own Python
    "pip3": "from pip._internal.cli.main import main",
    "torchrun": "from torch.distributed.run import main",
}


def image_python(folder: Path) -> Path:
    """The training image's ``bin`` folder (created once): ``python3``, ``pip3`` and ``torchrun``."""
    bin_dir = folder / "bin"
    if (bin_dir / "torchrun").exists():
        return bin_dir
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    purelib = Path(subprocess.run([bin_dir / "python3", "-c", "import sysconfig; print(sysconfig.get_path("
                                   "'purelib'))"], check=True, capture_output=True, text=True).stdout.strip())
    # after the venv's own site-packages: what pip installs there wins over the project's copy
    (purelib / "zz-project-packages.pth").write_text(sysconfig.get_path("purelib") + "\n")
    for name, line in SCRIPTS.items():
        script = bin_dir / name
        script.write_text(f"#!{bin_dir / 'python3'}\nimport sys\n{line}\nsys.exit(main())\n")
        script.chmod(0o755)
    return bin_dir


def lay_out(root: Path, body: dict[str, Any], host: str, hosts: list[str], download: Download) -> None:
    """``/opt/ml`` of one host before its container starts."""
    ml = root / "ml"
    config = ml / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    resources = body["ResourceConfig"]
    group = {"instance_group_name": "homogeneousCluster", "instance_type": resources["InstanceType"],
             "hosts": hosts}
    (config / "resourceconfig.json").write_text(json.dumps({
        "current_host": host, "current_instance_type": resources["InstanceType"],
        "current_group_name": "homogeneousCluster", "hosts": hosts, "instance_groups": [group],
        "network_interface_name": "eth0"}))
    (config / "hyperparameters.json").write_text(json.dumps(body.get("HyperParameters") or {}))
    channels = {}
    for channel in body.get("InputDataConfig", []):
        name = channel["ChannelName"]
        channels[name] = {"TrainingInputMode": channel.get("InputMode", "File"),
                          "S3DistributionType": channel["DataSource"]["S3DataSource"].get(
                              "S3DataDistributionType", "FullyReplicated"), "RecordWrapperType": "None"}
        download(channel["DataSource"]["S3DataSource"]["S3Uri"], ml / "input" / "data" / name)
    (config / "inputdataconfig.json").write_text(json.dumps(channels))
    for folder in ("model", "output/data", "checkpoints"):
        (ml / folder).mkdir(parents=True, exist_ok=True)
    checkpoints = (body.get("CheckpointConfig") or {}).get("S3Uri")
    if checkpoints:
        download(checkpoints, ml / "checkpoints")


class TrainingContainers:
    """The hosts of one job: start them, wait for them, stop them (by PID), collect what SageMaker uploads."""

    def __init__(self, body: dict[str, Any], job_dir: Path, image_bin: Path, download: Download, region: str):
        self.body = body
        self.region = region
        self.job_dir = job_dir
        self.image_bin = image_bin
        count = int(body["ResourceConfig"].get("InstanceCount", 1))
        self.hosts = [f"algo-{n}" for n in range(1, count + 1)]
        self.procs: list[subprocess.Popen] = []
        self.stopped = threading.Event()
        self._lock = threading.Lock()  # a stop never misses a container that is starting
        for host in self.hosts:
            lay_out(job_dir / host, body, host, self.hosts, download)

    def environment(self, host: str) -> dict[str, str]:
        """What the platform sets in a training container: the job's name and ARN, the request's Environment."""
        name = self.body["TrainingJobName"]
        home = self.job_dir / host / "home"
        home.mkdir(exist_ok=True)
        return {"PATH": f"{self.image_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
                "TRAINING_JOB_NAME": name, "PYTHONUNBUFFERED": "1",
                "TRAINING_JOB_ARN": f"arn:aws:sagemaker:{self.region}:123456789012:training-job/{name.lower()}",
                **(self.body.get("Environment") or {})}

    def log(self, host: str) -> Path:
        """What the host's container prints (SageMaker sends it to CloudWatch Logs, one stream per host)."""
        return self.job_dir / host / "container.log"

    def run(self) -> int:
        """Start every host's container and wait; the first non-zero exit status (0 when all succeeded)."""
        spec = self.body["AlgorithmSpecification"]
        argv = list(spec.get("ContainerEntrypoint") or []) + list(spec.get("ContainerArguments") or [])
        if not argv:
            raise RuntimeError("the job has no ContainerEntrypoint: only ModelTrainer jobs with source_code are "
                               "rehearsed (the image's own entry point is not here)")
        for host in self.hosts:
            root = self.job_dir / host
            with self._lock, open(self.log(host), "ab") as out:
                if self.stopped.is_set():
                    break
                self.procs.append(subprocess.Popen(
                    container_command(argv, root, self.hosts, host), cwd=root, env=self.environment(host),
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        first_failure = 0
        while None in (codes := [proc.poll() for proc in self.procs]):
            if any(codes):  # one host failed: the job has failed, end the others
                first_failure = next(code for code in codes if code)
                self._end_all()
            time.sleep(0.5)
        return first_failure or next((code for code in codes if code), 0 if len(codes) == len(self.hosts) else 1)

    def stop(self) -> None:
        """StopTrainingJob: SIGTERM to every container's process group, as SageMaker's stop does, then SIGKILL."""
        with self._lock:
            self.stopped.set()
        self._end_all()

    def _end_all(self) -> None:
        for proc in self.procs:
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                if proc.poll() is not None:
                    break
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=wait)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass

    def failure(self) -> str:
        """``/opt/ml/output/failure`` of the first host that wrote one (the job's FailureReason on AWS)."""
        for host in self.hosts:
            path = self.job_dir / host / "ml" / "output" / "failure"
            if path.exists() and path.read_text(errors="replace").strip():
                return path.read_text(errors="replace").strip()
        return ""

    def pack(self, what: str, archive: Path) -> Path:
        """``model`` or ``output/data`` of the first host, tarred as SageMaker uploads it."""
        folder = self.job_dir / self.hosts[0] / "ml" / what
        with tarfile.open(archive, "w:gz") as tar:
            for path in sorted(folder.iterdir()):
                tar.add(path, arcname=path.name)
        return archive

    def save_checkpoints(self, upload: Upload) -> int:
        uri = (self.body.get("CheckpointConfig") or {}).get("S3Uri")
        return upload(self.job_dir / self.hosts[0] / "ml" / "checkpoints", uri) if uri else 0
