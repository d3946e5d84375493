"""Rehearsal only: serve a ``model.tar.gz`` as SageMaker's PyTorch 2.6 inference container does, with its own toolkit.

On AWS the endpoint runs ``pytorch-inference:2.6.0-cpu-py312``, whose entry point calls
``sagemaker_pytorch_serving_container.serving.main()`` (sagemaker-pytorch-inference 2.0.25). That writes
``/etc/sagemaker-ts.properties``, pip-installs ``code/requirements.txt`` and starts TorchServe 0.12.0 (a Java frontend
and Python workers, one per GPU or else per CPU), whose workers load ``code/inference.py`` through the toolkit's
handler service. Here the same packages, from PyPI, do the same on this machine:

- ``prepare_image()`` builds the "image" once: a venv (``.tools/inference-image``, gitignored, or
  ``$CLOUDALLIANCE_INFERENCE_IMAGE``) with the image's torchserve, torch-model-archiver and sagemaker-pytorch-inference.
  It installs no torch: a ``.pth`` file shows it the course's ``.venv`` (torch, onnxruntime, pillow), after its own
  packages, so the toolkit's bundled ``sagemaker_inference`` wins over the course's.
- ``start_inference_container()`` unpacks the artifact into the container's ``/opt/ml/model`` (``sandbox.py``), runs
  the entry point in its own PID namespace (the toolkit looks for *the* TorchServe among all processes it can see),
  with ports of its own, and waits for ``GET /ping``.
- ``stop()`` ends it as ``docker stop`` does: SIGTERM to the container's PID 1, SIGKILL after a grace period.

Differences from the image that remain: Python 3.11 and the course's torch instead of 3.12 and torch 2.6.0; TorchServe
listens on 127.0.0.1 and a port of our choosing instead of 0.0.0.0:8080; the entry point exits when TorchServe does
(the image's then idles in ``tail -f /dev/null``).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Mapping

import psutil

from sandbox import container_command

REPO = Path(__file__).resolve().parents[2]
COURSE_VENV = REPO / ".venv"
IMAGE_VENV = Path(os.environ.get("CLOUDALLIANCE_INFERENCE_IMAGE", REPO / ".tools" / "inference-image"))

# What the image installs (requirements/images/inference-2.6.0-py312-cpu.txt): TorchServe and the toolkit at the
# versions of aws/deep-learning-containers pytorch/inference/buildspec-2-6-sm.yml, and "setuptools<82.0.0" because
# the toolkit imports pkg_resources (pytorch/inference/docker/2.6/py3/Dockerfile.cpu @ a70e18c, lines 169 and 260).
IMAGE_PACKAGES = ("torchserve==0.12.0", "torch-model-archiver==0.12.0", "sagemaker-pytorch-inference==2.0.25",
                  "setuptools>=80.10.1,<82.0.0")

# The image's ENV lines that the serving path reads (Dockerfile.cpu lines 58-68 and 255). TEMP is set per container.
IMAGE_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "UTF-8",
             "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "DLC_CONTAINER_TYPE": "inference", "MKL_THREADING_LAYER": "GNU",
             "SAGEMAKER_SERVING_MODULE": "sagemaker_pytorch_serving_container.serving:main"}

# How this machine reaches PyPI and Java; the container's pip may need them if a requirement is not yet satisfied.
HOST_SETTINGS = re.compile(r"^(PIP_.*|.*_PROXY|SSL_CERT_.*|REQUESTS_CA_BUNDLE|JAVA_HOME)$", re.IGNORECASE)

# The image's entry point for `serve`, SageMaker's command (pytorch/inference/docker/build_artifacts/
# torchserve-entrypoint.py @ a70e18c, lines 39-61): reap orphans (it is PID 1), then the toolkit's main(). Left out:
# telemetry, CUDA compat and the final `tail -f /dev/null`, so that here the container ends when TorchServe does.
ENTRYPOINT = """
import os, signal, sys

def reap_zombies(signum, frame):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
        except ChildProcessError:
            break

signal.signal(signal.SIGCHLD, reap_zombies)
if sys.argv[1] == "serve":
    from sagemaker_pytorch_serving_container import serving
    serving.main()
"""


def _purelib(python: Path) -> str:
    return subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()


def prepare_image(venv: Path = IMAGE_VENV, base: Path = COURSE_VENV) -> Path:
    """The image's venv, built the first time (about half a minute) and reused after; returns its ``python``."""
    venv, base = Path(venv), Path(base)
    python = venv / "bin" / "python"
    wanted = json.dumps({"packages": IMAGE_PACKAGES, "base": str(base.resolve())})
    stamp = venv / ".image-ready"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # endpoints that start at once build it once
        if stamp.is_file() and stamp.read_text() == wanted:
            return python
        started = time.monotonic()
        # the course venv's interpreter, so that its torch (built for that Python) imports in the new venv too
        subprocess.run([str(base / "bin" / "python"), "-m", "venv", "--clear", str(venv)], check=True)
        # a .pth line is appended to sys.path after the site-packages folder that holds it: own packages first
        Path(_purelib(python), "course-venv.pth").write_text(_purelib(base / "bin" / "python") + "\n")
        subprocess.run([str(python), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                        "--progress-bar", "off", "-q", *IMAGE_PACKAGES], check=True)
        torch_at = subprocess.run([str(python), "-c", "import torch; print(torch.__file__)"],
                                  check=True, capture_output=True, text=True).stdout.strip()
        if not torch_at.startswith(str(base.resolve())):
            raise RuntimeError(f"the inference image got its own torch ({torch_at}); it must use {base}'s")
        stamp.write_text(wanted)
        print(f"[inference image] {venv} prepared in {time.monotonic() - started:.1f} s", file=sys.stderr)
        return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.is_file() else "(no log)"


def start_inference_container(model_tar: str | os.PathLike, workdir: str | os.PathLike, port: int,
                              log: str | os.PathLike, env: Mapping[str, str] | None = None,
                              timeout: float = 300.0) -> subprocess.Popen:
    """Serve ``model_tar`` on ``http://127.0.0.1:<port>`` (``/ping``, ``/invocations``) as the container does.

    ``workdir`` is the container's scratch folder: ``ml/model`` (``/opt/ml/model``), ``cwd`` (the image's working
    directory ``/``, where TorchServe writes ``logs/`` and the toolkit its model store ``.sagemaker/ts/models``),
    ``tmp`` (``$TEMP``: TorchServe's pid file, worker sockets, model links) and the overlays' writes, such as
    ``etc-upper/sagemaker-ts.properties``. ``env`` is the model's Environment (CreateModel); the container's
    output goes to ``log``. Returns once ``/ping`` answers 200, as SageMaker then marks the endpoint InService;
    raises with the log's tail if it never does within ``timeout`` seconds. TorchServe 0.12.0 answers 200 once each
    worker it started is not failing (InferenceRequestHandler.java lines 68-79, ApiUtils.java 382-397,
    WorkerThread.java 575-582), before the workers have loaded the model: the first invocation waits for that.
    """
    python = prepare_image()
    workdir, log = Path(workdir).resolve(), Path(log)
    model_dir = workdir / "ml" / "model"
    model_dir.mkdir(parents=True)  # a fresh folder, as SageMaker gives each container
    with tarfile.open(model_tar) as tar:
        tar.extractall(model_dir, filter="data")
    for name in ("cwd", "tmp", "home"):
        (workdir / name).mkdir(exist_ok=True)

    address = f"http://127.0.0.1:{port}"
    container_env = {
        **{k: v for k, v in os.environ.items() if HOST_SETTINGS.match(k)},
        **IMAGE_ENV,
        "PATH": f"{python.parent}:/usr/local/bin:/usr/bin:/bin",  # the toolkit runs `torchserve` from PATH
        "HOME": str(workdir / "home"),
        # TorchServe puts its pid file, worker sockets and model links under $TEMP (ts/model_server.py lines 29
        # and 88-98; Connector.java line 49); one folder per container lets several run side by side
        "TEMP": str(workdir / "tmp"),
        # the toolkit's port knob (sagemaker_inference/environment.py lines 76-77): it writes inference_address and
        # management_address as http://0.0.0.0:<port> (sagemaker_pytorch_serving_container/torchserve.py, 131-132)
        "SAGEMAKER_BIND_TO_PORT": str(port),
        # the toolkit's properties set enable_envvars_config=true, so TorchServe lets TS_* variables override
        # them (ConfigManager.java lines 293-295, 336-359): loopback only, and ports of its own for the servers
        # it also starts, which would collide with another container's (metrics on 8082, line 389;
        # gRPC on 7070 and 7071, lines 409-418 and ModelServer.java 126 and 448-450)
        "TS_INFERENCE_ADDRESS": address,
        "TS_MANAGEMENT_ADDRESS": address,
        "TS_METRICS_ADDRESS": f"http://127.0.0.1:{free_port()}",
        "TS_GRPC_INFERENCE_PORT": str(free_port()),
        "TS_GRPC_MANAGEMENT_PORT": str(free_port()),
        **(env or {}),
    }
    # Own PID namespace (and /proc): the toolkit takes the process whose command line names TorchServe's main class,
    # among all it can see, for its own, and forwards SIGTERM to it (torchserve.py lines 171-199). Without one, a
    # second container took the first one's TorchServe, so that stopping the second stopped the first and left
    # its own running. --kill-child: should this unshare die, PID 1 gets SIGKILL, which ends the namespace.
    argv = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", str(python), "-c", ENTRYPOINT, "serve"]
    log_start = log.stat().st_size if log.is_file() else 0
    with open(log, "ab") as out:
        proc = subprocess.Popen(container_command(argv, workdir), cwd=workdir / "cwd", env=container_env,
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(address + "/ping", timeout=2) as reply:
                # /ping answers before TorchServe starts its gRPC servers, which can still fail (a port in use):
                # it prints this line once they are up too (ModelServer.java, startAndWait, lines 124-133)
                if reply.status == 200 and b"Model server started." in log.read_bytes()[log_start:]:
                    return proc
        except OSError:  # not listening yet, or 500 "Unhealthy" while the workers load the model
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            why = f"exited with {proc.returncode}" if proc.poll() is not None else f"no /ping 200 in {timeout:.0f} s"
            stop(proc)
            raise RuntimeError(f"the inference container {why}; see {log}:\n{_tail(log)}")
        time.sleep(0.5)


def container_processes(proc: subprocess.Popen) -> list[psutil.Process]:
    """``proc`` and every process under it: the toolkit's entry point, TorchServe's Java frontend, its workers."""
    try:
        top = psutil.Process(proc.pid)
        return [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop(proc: subprocess.Popen, grace: float = 30.0) -> list[psutil.Process]:
    """Stop the container as ``docker stop`` does; returns the processes it had, none of which is left running.

    SIGTERM goes to the namespace's PID 1, the entry point: the toolkit passes it on to TorchServe and returns when
    TorchServe has exited (torchserve.py, ``_add_sigterm_handler`` and ``ts_process.wait()``), and when PID 1 ends
    the kernel ends every other process of its namespace. SIGKILL to PID 1 after ``grace`` seconds.
    """
    everything = container_processes(proc)
    try:
        init = psutil.Process(proc.pid).children()  # unshare's one child: PID 1 in the namespace
    except psutil.NoSuchProcess:
        init = []
    for p in init or everything[:1]:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        for p in init or everything[:1]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait(30)
    _, alive = psutil.wait_procs(everything, timeout=10)
    for p in alive:  # not expected: a process that left the namespace's tree
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(alive, timeout=10)
    return everything
