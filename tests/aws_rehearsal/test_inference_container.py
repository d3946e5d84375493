"""The course's ``model.tar.gz`` served by SageMaker's own inference toolkit and TorchServe (inference_container.py).

Slow (about two minutes on 2 cores, half a minute more the first time, when the image's venv is built from PyPI):
run with ``.venv/bin/python -m pytest -s tests/aws_rehearsal/test_inference_container.py``. Needs Java and util-linux's
``unshare`` (Linux).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_container import container_processes, free_port, start_inference_container, stop  # noqa: E402

from cloudalliance.data.folders import CLASSES  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("java") is None or shutil.which("unshare") is None,
                       reason="TorchServe needs Java, the sandbox util-linux's unshare"),
]

# The model's Environment as the course deploys it (serving/deploy.py), and PIP_NO_INDEX: the toolkit's pip must
# find code/requirements.txt satisfied by what the course's venv has, so that the rehearsal needs no network.
MODEL_ENV = {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
             "INFERENCE_THREADS": "1", "PIP_NO_INDEX": "1"}


def _start(artifact: Path, folder: Path, **env) -> SimpleNamespace:
    port, log = free_port(), folder.parent / f"{folder.name}.log"
    started = time.monotonic()
    proc = start_inference_container(artifact, folder, port, log, {**MODEL_ENV, **env})
    print(f"\n[{folder.name}] first /ping 200 after {time.monotonic() - started:.1f} s")
    return SimpleNamespace(proc=proc, url=f"http://127.0.0.1:{port}", root=folder, log=log)


def _post(url: str, body: bytes, content_type: str) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url + "/invocations", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, reply.headers.get("Content-Type", ""), reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


def _roles(procs) -> Counter:
    """What each process of a container is, from its command line."""
    roles = Counter()
    for p in procs:
        cmd = " ".join(p.cmdline())
        if p.name() == "java" and "org.pytorch.serve.ModelServer" in cmd:
            roles["torchserve frontend"] += 1
        elif p.name().startswith("python") and "ts/model_service_worker.py" in cmd:
            roles["torchserve worker"] += 1
        elif p.name().startswith("python") and "serving.main()" in cmd:
            roles["toolkit entry point"] += 1
    return roles


def _stop_and_check(proc) -> None:
    stopped = stop(proc)
    left = [p.pid for p in stopped if p.is_running()]
    assert not left, f"processes of the container still running: {left}"
    assert proc.returncode is not None


@pytest.fixture(scope="module")
def container(tiny_artifact, tmp_path_factory):
    c = _start(tiny_artifact[0], tmp_path_factory.mktemp("inference") / "container")
    yield c
    _stop_and_check(c.proc)


def test_ping_and_a_jpeg_prediction(container, tiny_artifact):
    with urllib.request.urlopen(container.url + "/ping", timeout=10) as reply:
        assert reply.status == 200 and json.loads(reply.read()) == {"status": "Healthy"}
    image = tiny_artifact[1][0].read_bytes()
    started = time.monotonic()
    status, content_type, body = _post(container.url, image, "image/jpeg")
    first = time.monotonic() - started
    assert status == 200, body[:2000]
    assert content_type == "application/json"  # output_fn's tuple, not the request's Accept
    reply = json.loads(body)
    assert reply["label"] in CLASSES and set(reply["probabilities"]) == set(CLASSES)
    started = time.monotonic()
    assert _post(container.url, image, "image/jpeg")[0] == 200
    print(f"\n[container] first invocation {first * 1000:.0f} ms (workers still loading), "
          f"then {(time.monotonic() - started) * 1000:.0f} ms")


def test_a_text_body_is_the_handlers_415(container):
    """inference.py raises UnsupportedInput, a GenericInferenceToolkitError(415): the toolkit sets that status
    (sagemaker_inference/transformer.py in sagemaker-pytorch-inference 2.0.25, lines 109-113 and 169-170) and
    answers the message, then the traceback."""
    status, _, body = _post(container.url, b"not an image", "text/plain")
    assert status == 415, body[:2000]
    assert body.decode().startswith("Content type 'text/plain' is not supported")


def test_the_toolkit_ran_torchserve_in_the_sandbox(container):
    log = container.log.read_text(errors="replace")
    # TorchServe's default: one worker per GPU, else per CPU (ConfigManager.java, getDefaultWorkers, lines 564-578)
    workers = int(re.search(r"Default workers per model: (\d+)", log).group(1))
    roles = _roles(container_processes(container.proc))
    assert roles == {"toolkit entry point": 1, "torchserve frontend": 1, "torchserve worker": workers}, roles
    # the toolkit's own properties file, written to the container's /etc (the overlay), not this machine's
    props = (container.root / "etc-upper" / "sagemaker-ts.properties").read_text()
    assert "sagemaker_pytorch_serving_container/handler_service.py:handle" in props
    assert not Path("/etc/sagemaker-ts.properties").exists()
    assert "Requirement already satisfied: onnxruntime==" in log  # the toolkit's pip install -r requirements.txt
    assert f"Inference address: {container.url}" in log


def test_a_second_container_beside_the_first_and_its_stop(container, tiny_artifact, tmp_path):
    """As UpdateEndpoint runs the new fleet beside the old: own port, own TorchServe; stopping it leaves no
    process of it and does not touch the first. SAGEMAKER_MODEL_SERVER_WORKERS is the toolkit's worker count."""
    second = _start(tiny_artifact[0], tmp_path / "second", SAGEMAKER_MODEL_SERVER_WORKERS="1")
    try:
        assert _post(second.url, tiny_artifact[1][1].read_bytes(), "image/jpeg")[0] == 200
        procs = container_processes(second.proc)
        assert _roles(procs) == {"toolkit entry point": 1, "torchserve frontend": 1, "torchserve worker": 1}
    finally:
        _stop_and_check(second.proc)
    assert not any(p.is_running() for p in procs)
    with pytest.raises(OSError):
        urllib.request.urlopen(second.url + "/ping", timeout=5)
    with urllib.request.urlopen(container.url + "/ping", timeout=10) as reply:
        assert reply.status == 200
