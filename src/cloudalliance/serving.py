"""Serving: the model artifact, the local endpoint server, and SageMaker endpoints.

``model.tar.gz`` holds ``model.pt``, ``model.onnx`` (checked to agree with
PyTorch), ``labels.json``, ``preprocess.json``, ``config.json``, ``metrics.json``
and ``code/inference.py`` (``model_fn``, ``input_fn``, ``predict_fn``,
``output_fn``) with ``code/presets.py`` beside it.

The local endpoint is a real HTTP server on 127.0.0.1 that loads the artifact
through those same four functions and answers ``GET /ping``,
``POST /invocations`` and ``POST /endpoints/<name>/invocations`` (the
SageMaker Runtime path, so boto3's ``sagemaker-runtime`` client with
``endpoint_url=`` works unchanged).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fastapi import Request, Response  # module level: FastAPI reads the annotations

from . import services
from .defaults import ENDPOINT_NAME, REGION

ARTIFACT_FILES = ("model.pt", "labels.json", "preprocess.json", "config.json", "metrics.json")
CODE_DIR = Path(__file__).resolve().parent / "artifact_code"
ENDPOINT_SERVICE = "endpoint"


class ServingError(RuntimeError):
    """An artifact or endpoint problem, with what to do."""


# --------------------------------------------------------------------------- artifact


def export_onnx(model_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Export the model folder's network to ONNX (dynamic batch, NCHW float input)."""
    from .evaluation import load_model
    from .training.onnxrt import export_module

    loaded = load_model(model_dir, "cpu")
    size = loaded.preprocess.size
    return export_module(loaded.model, (1, 3, size, size), out or Path(model_dir) / "model.onnx")


@dataclasses.dataclass
class OnnxCheck:
    images: int
    max_abs_diff: float
    same_label: float
    torch_ms_per_image: float
    onnx_ms_per_image: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_onnx(model_dir: str | os.PathLike, images: np.ndarray, onnx_path: str | os.PathLike | None = None) -> OnnxCheck:
    """Compare ONNX Runtime with PyTorch on real images: probability difference and label agreement."""
    import torch

    from .evaluation import load_model
    from .training.onnxrt import cpu_session
    from .presets import preprocess_numpy, to_tensor_batch

    loaded = load_model(model_dir, "cpu")
    cfg = loaded.preprocess
    onnx_path = onnx_path or Path(model_dir) / "model.onnx"
    session = cpu_session(onnx_path)
    t0 = time.perf_counter()
    with torch.inference_mode():
        ref = loaded.model(to_tensor_batch(images, cfg).contiguous(memory_format=torch.channels_last)).softmax(1).numpy()
    t_torch = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits = session.run(None, {"image": preprocess_numpy(images, cfg)})[0]
    t_onnx = time.perf_counter() - t0
    got = np.exp(logits - logits.max(1, keepdims=True))
    got /= got.sum(1, keepdims=True)
    n = len(images)
    return OnnxCheck(n, float(np.abs(ref - got).max()), float((ref.argmax(1) == got.argmax(1)).mean()),
                     1000 * t_torch / n, 1000 * t_onnx / n)


def package_model(model_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                  check_images: np.ndarray | None = None, tolerance: float = 1e-4) -> tuple[Path, OnnxCheck | None]:
    """Build ``model.tar.gz`` from a model folder (exports ONNX; checks it on ``check_images`` if given)."""
    model_dir = Path(model_dir)
    missing = [f for f in ARTIFACT_FILES if not (model_dir / f).is_file()]
    if missing:
        raise ServingError(f"{model_dir} lacks {', '.join(missing)}: train it with `cloudalliance train` first")
    onnx_path = export_onnx(model_dir)
    check = None
    if check_images is not None and len(check_images):
        check = check_onnx(model_dir, check_images, onnx_path)
        if check.max_abs_diff > tolerance or check.same_label < 1.0:
            raise ServingError(f"ONNX disagrees with PyTorch: max |p diff| {check.max_abs_diff:.2e}, "
                               f"same label on {check.same_label:.1%} of {check.images} images")
    out = Path(out or model_dir.parent / f"{model_dir.name}.tar.gz")
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for name in (*ARTIFACT_FILES, "model.onnx"):
            tar.add(model_dir / name, arcname=name)
        tar.add(CODE_DIR / "inference.py", arcname="code/inference.py")
        tar.add(Path(__file__).resolve().parent / "presets.py", arcname="code/presets.py")
        requirements = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
        # the inference container installs these beside its own torch, pinned to requirements/constraints.txt
        from .training.sagemaker import pinned_requirements

        requirements.write("\n".join(pinned_requirements(SERVING_PACKAGES)) + "\n")
        requirements.close()
        tar.add(requirements.name, arcname="code/requirements.txt")
        os.unlink(requirements.name)
    os.replace(tmp, out)
    return out, check


def unpack_artifact(artifact: str | os.PathLike, dest: str | os.PathLike) -> Path:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(artifact) as tar:
        tar.extractall(dest, filter="data")
    if not (dest / "code" / "inference.py").is_file():
        raise ServingError(f"{artifact} has no code/inference.py: build it with serving.package_model")
    return dest


def load_handlers(model_dir: str | os.PathLike):
    """Import ``code/inference.py`` of an unpacked artifact as its own module."""
    path = Path(model_dir) / "code" / "inference.py"
    spec = importlib.util.spec_from_file_location(f"inference_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- local endpoint


def create_endpoint_app(model_dir: str | os.PathLike, endpoint_name: str = ENDPOINT_NAME,
                        workers: int | None = None):
    """A FastAPI app that serves an unpacked artifact through its four handler functions.

    Decoding and inference are CPU-bound, so they run in a pool of ``workers`` threads (default: the cores),
    never on the event loop: ``/ping`` answers at once however many invocations wait (SageMaker's health
    check wants an answer within 2 s). Bodies are read as a stream, refused past ``MAX_IMAGE_BYTES`` (413)
    or past the body deadline (408) before they are held in full.
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    handlers = load_handlers(model_dir)
    model = handlers.model_fn(str(model_dir))
    limit = int(getattr(handlers, "MAX_IMAGE_BYTES", 6 * 1024 * 1024))  # SageMaker's 6 MB invocation payload
    workers = workers or services.cpu_count()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inference")
    app = services.create_json_app(f"local SageMaker-style endpoint {endpoint_name}")
    stats = {"invocations": 0, "errors": 0, "workers": workers}

    def infer(body: bytes, content_type: str, accept: str) -> tuple[int, str]:
        try:
            data = handlers.input_fn(body, content_type)
            prediction = handlers.predict_fn(data, model)
            answer = handlers.output_fn(prediction, accept)
            # (body, content type); an artifact built before output_fn said its content type returns the body alone
            return 200, answer[0] if isinstance(answer, tuple) else answer
        except handlers.UnsupportedInput as exc:
            return getattr(exc, "status", 415), json.dumps({"error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - a model failure is a 500 with a short reason
            return 500, json.dumps({"error": f"{type(exc).__name__}: {exc}"})

    async def answer(request: Request) -> tuple[int, str] | services.BodyError:
        """The container's (status, body), or the BodyError that refused the request before it got there."""
        try:
            body = await services.read_body(request, limit)
        except services.BodyError as exc:
            stats["errors"] += 1
            return exc
        content_type = request.headers.get("content-type", "")
        accept = request.headers.get("accept", "application/json")
        status, payload = await asyncio.get_running_loop().run_in_executor(pool, infer, body, content_type, accept)
        stats["invocations" if status == 200 else "errors"] += 1
        return status, payload

    async def invoke(request: Request) -> Response:
        result = await answer(request)
        if isinstance(result, services.BodyError):
            return services.json_error(result.status, result.message, close=True)
        return Response(result[1], status_code=result[0], media_type="application/json")

    @app.get("/ping")
    async def ping() -> Response:
        return Response(json.dumps({"status": "ok", "endpoint": endpoint_name, **stats}), media_type="application/json")

    app.add_api_route("/invocations", invoke, methods=["POST"])

    @app.post("/endpoints/{name}/invocations")
    async def named(name: str, request: Request) -> Response:
        """The sagemaker-runtime API in front of the container: its errors as InvokeEndpoint's, so botocore raises
        ``client.exceptions.ValidationError`` / ``ModelError`` here as on AWS."""
        if name != endpoint_name:
            stats["errors"] += 1
            return runtime_error(400, "ValidationError", f"Endpoint {name} of account {LOCAL_ACCOUNT} not found.",
                                 close=True)  # its body is left unread: the connection must not be reused
        result = await answer(request)
        if isinstance(result, services.BodyError):  # refused before the container saw it
            return runtime_error(result.status, "ValidationError", result.message, close=True)
        status, original = result
        if status == 200:
            return Response(original, status_code=200, media_type="application/json")
        side = "client" if status < 500 else "server"
        return runtime_error(424, "ModelError", f"Received {side} error ({status}) from primary with "
                             f"message \"{original}\". See the endpoint's log for more information.",
                             OriginalStatusCode=status, OriginalMessage=original,
                             LogStreamArn=f"arn:aws:logs:local:{LOCAL_ACCOUNT}:log-group:/aws/sagemaker/Endpoints/"
                                          f"{endpoint_name}")

    return app


LOCAL_ACCOUNT = "000000000000"


def runtime_error(status: int, code: str, message: str, close: bool = False, **members: Any):
    """An InvokeEndpoint error as sagemaker-runtime sends it (rest-json): the code in ``x-amzn-ErrorType``, the
    error shape's members in the body (botocore/data/sagemaker-runtime/2017-05-13/service-2.json: ``ModelError``
    is HTTP 424 with ``Message``, ``OriginalStatusCode``, ``OriginalMessage``, ``LogStreamArn``; an unknown
    endpoint is a 400 ``ValidationError``). ``error`` carries the message too, as every local server's errors do."""
    from fastapi import Response

    headers = {"x-amzn-ErrorType": code, **({"Connection": "close"} if close else {})}
    body = {"__type": code, "Message": message, "error": message, **members}
    return Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _ping(url: str) -> bool:
    with urllib.request.urlopen(url + "/ping", timeout=2) as resp:
        return resp.status == 200


def _last_port_file() -> Path:
    return services.state_dir() / f"{ENDPOINT_SERVICE}.last-port"


def _endpoint_port(port: int | None) -> int:
    """``port`` if given; else the port the endpoint last had, when it is free again; else a free one.

    Reusing the port means a gateway (or a notebook's client) that knew the old URL finds a restarted
    endpoint without being told.
    """
    if port:
        return port
    try:
        last = int(_last_port_file().read_text().strip())
    except (OSError, ValueError):
        last = 0
    return last if last and _can_listen(last) else services.free_port()


def _can_listen(port: int) -> bool:
    """True when a server could listen on ``port`` now. SO_REUSEADDR, as uvicorn's listening socket has it
    (asyncio ``loop.create_server``: reuse_address defaults to True on Unix,
    https://docs.python.org/3/library/asyncio-eventloop.html#asyncio.loop.create_server), binds while the old
    connections of a killed server linger in TIME_WAIT (socket(7), SO_REUSEADDR)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen(1)
        except OSError:
            return False
    return True


def start_local_endpoint(artifact: str | os.PathLike, endpoint_name: str = ENDPOINT_NAME,
                         threads: int = 0, timeout: float = 120.0, port: int | None = None) -> services.ServiceInfo:
    """Unpack ``artifact`` and serve it on 127.0.0.1 (a uvicorn process), waiting for /ping.

    The port is ``port``, else the endpoint's previous port when free, else a free one. ``threads`` is
    ONNX Runtime's intra-op threads per inference (default: cores / concurrent inferences, so that they do
    not oversubscribe the cores).
    """
    if services.running(ENDPOINT_SERVICE) is not None:
        stop_local_endpoint()  # frees the port we may reuse
    root = services.state_dir() / f"{ENDPOINT_SERVICE}-model"
    if root.exists():
        shutil.rmtree(root)
    unpack_artifact(artifact, root)
    port = _endpoint_port(port)
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "cloudalliance.serving", "--model-dir", str(root), "--name", endpoint_name,
            "--port", str(port)]
    env = {"INFERENCE_THREADS": str(threads)} if threads else None
    info = services.start_service(ENDPOINT_SERVICE, argv, ports={"http": port}, endpoint_url=url,
                                  healthy=lambda: _ping(url), data_dir=root, env=env, timeout=timeout)
    _last_port_file().write_text(f"{port}\n")
    return info


def stop_local_endpoint() -> bool:
    return services.stop_service(ENDPOINT_SERVICE)


def runtime_client(endpoint_url: str | None = None, region: str | None = None):
    """boto3 ``sagemaker-runtime``; with ``endpoint_url`` it talks to the local endpoint."""
    import boto3
    from botocore.config import Config

    kwargs: dict[str, Any] = {"config": Config(retries={"max_attempts": 2, "mode": "standard"}, read_timeout=30)}
    if endpoint_url:
        kwargs.update(endpoint_url=endpoint_url, aws_access_key_id="local", aws_secret_access_key="local",
                      region_name=region or REGION)
    else:
        kwargs["region_name"] = region
    return boto3.client("sagemaker-runtime", **kwargs)


def invoke(client, endpoint_name: str, image: bytes, content_type: str = "image/jpeg") -> dict[str, Any]:
    response = client.invoke_endpoint(EndpointName=endpoint_name, Body=image, ContentType=content_type,
                                      Accept="application/json")
    return json.loads(response["Body"].read())


def check_images(data_root: str | os.PathLike, count: int, size: int) -> tuple[list[Path], np.ndarray]:
    """The first ``count`` test images (spread over the classes), decoded at ``size``."""
    from .data.training_set import decode_images
    from .data.folders import load_image_folder

    folder = load_image_folder(data_root, "test")
    order = np.argsort(np.arange(len(folder)) % max(1, len(folder.classes)), kind="stable")  # round-robin
    files = [folder.files[i] for i in order[:count]]
    return files, decode_images(files, size, progress=False)


def artifact_path(run) -> Path:
    return run.path / "artifacts" / "model.tar.gz"


def ensure_artifact(run, data_root: str | os.PathLike, model_instance: str = "", check_count: int = 32,
                    fallback: dict[str, Any] | None = None) -> tuple[Path, OnnxCheck | None]:
    """The run's ``model.tar.gz``: packaged now (ONNX checked on real test images) unless it exists."""
    from .training.launch import pick_model
    from .presets import Preprocess

    path = artifact_path(run)
    model_dir = pick_model(run, model_instance, data_root, fallback=fallback or {"epochs": 1, "img_size": 64})
    if path.exists() and path.stat().st_mtime >= (model_dir / "model.pt").stat().st_mtime:
        return path, None
    path.parent.mkdir(parents=True, exist_ok=True)
    _, images = check_images(data_root, check_count, Preprocess.load(model_dir).size)
    return package_model(model_dir, path, check_images=images)


def ensure_local_endpoint(artifact: str | os.PathLike, endpoint_name: str = ENDPOINT_NAME) -> services.ServiceInfo:
    """The running local endpoint if it serves this artifact, else a fresh one."""
    info = services.running(ENDPOINT_SERVICE)
    if info is not None:
        try:
            same = Path(info.data_dir, ".artifact").read_text() == f"{Path(artifact).resolve()}:{Path(artifact).stat().st_mtime}"
            if same and _ping(info.endpoint_url) and endpoint_name in info.cmdline:
                return info
        except OSError:
            pass
        stop_local_endpoint()
    info = start_local_endpoint(artifact, endpoint_name)
    Path(info.data_dir, ".artifact").write_text(f"{Path(artifact).resolve()}:{Path(artifact).stat().st_mtime}")
    return info


# --------------------------------------------------------------------------- SageMaker endpoints

FRAMEWORK_VERSION = "2.6.0"  # the SageMaker PyTorch inference container
PY_VERSION = "py312"
# code/requirements.txt of the artifact, installed by the toolkit at container start. Not numpy: the container
# ships its own (with scipy, pandas and opencv built against it), and ONNX Runtime and Pillow work with it.
SERVING_PACKAGES = ("onnxruntime", "pillow")


def sha256_of(path: str | os.PathLike) -> str:
    """A file's SHA-256 (hex): an artifact's identity in its S3 key and in a Lambda package's manifest."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def upload_artifact(s3_client, artifact: str | os.PathLike, s3_uri: str) -> str:
    """Put ``model.tar.gz`` at ``s3_uri``: that key when it ends in .tar.gz, else ``<prefix>/<digest>/model.tar.gz``.

    The digest (the first 16 hex digits of the file's SHA-256) gives every artifact a key of its own, so a second
    deploy never overwrites the object the live model points at. During an update, and after a rollback, the old
    fleet keeps serving, and an instance it replaces loads the ModelDataUrl again: under one shared key it would
    load the new artifact. The same artifact gets the same key, so a rerun uploads it to where it already is.
    """
    from .storage import S3Location

    loc = S3Location.parse(s3_uri)
    key = loc.prefix if loc.prefix.endswith(".tar.gz") else loc.key(f"{sha256_of(artifact)[:16]}/model.tar.gz")
    s3_client.upload_file(str(artifact), loc.bucket, key)
    return f"s3://{loc.bucket}/{key}"


def deploy_sagemaker(artifact_s3_uri: str, role: str, instance_type: str = "ml.m5.large",
                     endpoint_name: str = ENDPOINT_NAME, boto_session=None, region: str | None = None,
                     wait: bool = True, run_id: str = "", instance_count: int = 1, kind: str = "realtime",
                     serverless_memory_mb: int = 2048, serverless_max_concurrency: int = 5):
    """A real-time (or serverless) endpoint serving the artifact; safe to run again: a rerun updates it in place.

    ``kind="serverless"``: SageMaker Serverless Inference, billed per millisecond of inference at
    ``serverless_memory_mb`` (1,024-6,144 in 1 GB steps) with at most ``serverless_max_concurrency`` requests at
    once (1-200); no instance type (https://docs.aws.amazon.com/sagemaker/latest/dg/serverless-endpoints.html,
    ProductionVariant ``ServerlessConfig``). A real-time endpoint cannot be updated into a serverless one ("Updating
    a real-time inference endpoint to an on-demand serverless endpoint ... is currently not supported",
    serverless-endpoints-update), so when the kind changes the endpoint is replaced: deleted, then created.

    SDK v3 ``ModelBuilder`` builds the model (PyTorch inference container, the artifact's own
    ``code/inference.py``) under a new unique name. The endpoint config gets that unique name too: ModelBuilder's
    ``deploy`` names the config after the endpoint (sagemaker-core sagemaker/core/helper/session_helper.py:1003-1022,
    ``endpoint_from_production_variants`` -> ``create_endpoint_config(**config_options)`` with ``name``), so a second
    deploy failed with "Cannot create already existing endpoint configuration"; and its ``update_endpoint=True``
    path passes ``create_endpoint_config`` arguments it does not take (sagemaker/serve/model_builder.py:4281-4300
    against session_helper.py:1134). So: model + config by name, then CreateEndpoint, or UpdateEndpoint when the
    endpoint exists; wait for InService; then delete the previous config and model. Every resource is tagged
    ``cloudalliance:run-id`` for ``cloudalliance aws cleanup``. Returns the sagemaker-core ``Endpoint``.
    """
    import uuid

    import boto3
    from botocore.exceptions import ClientError

    from .aws import use_region

    use_region(region or (boto_session.region_name if boto_session else None))  # before the SDK is imported
    from sagemaker.core import image_uris
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.resources import Endpoint
    from sagemaker.serve.model_builder import ModelBuilder

    from .aws import ENDPOINT_TAG, tag_list

    boto_session = boto_session or boto3.Session(region_name=region)
    if not boto_session.region_name:
        raise ServingError("No AWS region: set REGION in params/aws.yaml or AWS_DEFAULT_REGION")
    if not role:
        raise ServingError("Deploying needs ROLE_ARN: an IAM role SageMaker can assume that may read and write "
                           "the bucket (or leave it empty on a SageMaker notebook)")
    sm = boto_session.client("sagemaker")
    tags = tag_list(run_id or "unknown", **{ENDPOINT_TAG: endpoint_name})
    try:
        previous = sm.describe_endpoint(EndpointName=endpoint_name)
    except ClientError as exc:
        if "Could not find" not in str(exc) and "ValidationException" not in str(exc):
            raise
        previous = None
    if previous is not None and previous["EndpointStatus"] in ("Creating", "Updating", "SystemUpdating", "Deleting",
                                                               "RollingBack"):
        raise ServingError(f"Endpoint {endpoint_name} is {previous['EndpointStatus']}: wait for it, then run again")
    from . import prices

    if kind not in ("realtime", "serverless"):
        raise ServingError(f"Unknown endpoint kind {kind!r}: realtime or serverless")
    if kind == "serverless" and (serverless_memory_mb not in prices.SERVERLESS_MEMORY_SIZES_MB
                                 or not 1 <= serverless_max_concurrency <= 200):
        raise ServingError(f"Serverless Inference takes a memory size of {prices.SERVERLESS_MEMORY_SIZES_MB} MB and "
                           f"a max concurrency of 1-200 (got {serverless_memory_mb} MB, {serverless_max_concurrency})")
    if previous is not None and previous["EndpointStatus"] == "InService":
        was_serverless = any("CurrentServerlessConfig" in v for v in previous.get("ProductionVariants", []))
        if was_serverless != (kind == "serverless"):
            # not updatable across kinds: replaced below like a failed endpoint, and its old config and model go
            old_config = previous["EndpointConfigName"]
            old_models = [v["ModelName"] for v in
                          sm.describe_endpoint_config(EndpointConfigName=old_config).get("ProductionVariants", [])]
            sm.delete_endpoint(EndpointName=endpoint_name)
            wait_endpoint_deleted(sm, endpoint_name)
            sm.delete_endpoint_config(EndpointConfigName=old_config)
            for model in old_models:
                sm.delete_model(ModelName=model)
            previous = None
    if previous is not None and previous["EndpointStatus"] in ("Failed", "OutOfService"):
        # Failed: "Endpoint could not be created, updated, or re-scaled"; OutOfService: "not available to take
        # incoming requests" (API_EndpointSummary, EndpointStatus): nothing to keep serving, so it is replaced --
        # deleted, then created afresh below; its old config and model stay tagged for cleanup
        sm.delete_endpoint(EndpointName=endpoint_name)
        wait_endpoint_deleted(sm, endpoint_name)
        previous = None
    # names: at most 63 characters, [a-zA-Z0-9-]
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:4]
    unique = f"{endpoint_name[:63 - len(stamp) - 1]}-{stamp}"
    image = image_uris.retrieve("pytorch", boto_session.region_name, version=FRAMEWORK_VERSION, py_version=PY_VERSION,
                                # serverless endpoints run on CPU: the CPU image whatever HOSTING_INSTANCE_TYPE says
                                instance_type=instance_type if kind == "realtime" else "ml.m5.large",
                                image_scope="inference")
    builder = ModelBuilder(
        image_uri=image,
        s3_model_data_url=artifact_s3_uri,
        role_arn=role,
        instance_type=instance_type if kind == "realtime" else "ml.m5.large",
        sagemaker_session=Session(boto_session=boto_session),
        # TorchServe starts one worker per vCPU by default, each with its own model_fn; one ONNX Runtime thread each
        # keeps them from oversubscribing the cores (as the local endpoint does: threads = cores / workers)
        env_vars={"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
                  "INFERENCE_THREADS": "1"},
    )
    builder.build(model_name=unique, tags=[{"Key": t["Key"], "Value": t["Value"]} for t in tags])
    variant = ({"VariantName": "AllTraffic", "ModelName": unique,
                "ServerlessConfig": {"MemorySizeInMB": serverless_memory_mb, "MaxConcurrency": serverless_max_concurrency}}
               if kind == "serverless" else
               {"VariantName": "AllTraffic", "ModelName": unique, "InstanceType": instance_type,
                "InitialInstanceCount": instance_count, "InitialVariantWeight": 1.0})
    sm.create_endpoint_config(EndpointConfigName=unique, ProductionVariants=[variant], Tags=tags)
    if previous is None:
        sm.create_endpoint(EndpointName=endpoint_name, EndpointConfigName=unique, Tags=tags)
    else:
        # https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_UpdateEndpoint.html: the endpoint keeps
        # serving the old config until the new one is InService; the old config and model can then go.
        sm.update_endpoint(EndpointName=endpoint_name, EndpointConfigName=unique)
    if wait:
        from botocore.exceptions import WaiterError

        try:
            sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint_name,
                                                       WaiterConfig={"Delay": 15, "MaxAttempts": 120})
        except WaiterError as exc:
            reason = (exc.last_response or {}).get("FailureReason", str(exc))
            raise ServingError(f"Endpoint {endpoint_name} did not come InService with {unique}: {reason}. "
                               + ("It still serves the previous model. " if previous is not None else "")
                               + f"`cloudalliance aws cleanup --run {run_id or 'unknown'}` removes what this "
                               "deploy created; the endpoint's CloudWatch logs say why") from None
    if previous is not None and wait:
        # InService is also where a failed blue/green update ends: SageMaker rolls back and the endpoint serves the
        # old config again (the waiter only fails on "Failed", botocore's sagemaker waiters-2.json
        # EndpointInService). Only an endpoint that now runs the new config may lose the old one: "You must not
        # delete an EndpointConfig in use by an endpoint that is live"
        # (https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_UpdateEndpoint.html).
        now = sm.describe_endpoint(EndpointName=endpoint_name)
        if now.get("EndpointConfigName") != unique:
            raise ServingError(f"Endpoint {endpoint_name} did not take the new model {unique}: it still serves "
                               f"{now.get('EndpointConfigName')} ({now.get('FailureReason') or 'the update was rolled back'}). "
                               "The previous model is kept; the endpoint's CloudWatch logs say why the new one failed. "
                               f"`cloudalliance aws cleanup --run {run_id or 'unknown'}` removes the new config and model")
        sm.add_tags(ResourceArn=previous["EndpointArn"], Tags=tags)  # cleanup of this run finds it
        old_config = previous["EndpointConfigName"]
        old_models = [v["ModelName"] for v in
                      sm.describe_endpoint_config(EndpointConfigName=old_config).get("ProductionVariants", [])]
        sm.delete_endpoint_config(EndpointConfigName=old_config)
        for model in old_models:
            sm.delete_model(ModelName=model)
    return Endpoint.get(endpoint_name=endpoint_name, session=boto_session, region=boto_session.region_name)


def delete_sagemaker_endpoint(endpoint_name: str, sagemaker_client) -> dict[str, list[str]]:
    """Delete the endpoint, its endpoint config and its models (what stops the hourly charge)."""
    from botocore.exceptions import ClientError

    deleted: dict[str, list[str]] = {"endpoint": [], "endpoint_config": [], "model": []}
    try:
        desc = sagemaker_client.describe_endpoint(EndpointName=endpoint_name)
    except ClientError as exc:
        if "Could not find" in str(exc) or "ValidationException" in str(exc):
            return deleted
        raise
    config_name = desc["EndpointConfigName"]
    config = sagemaker_client.describe_endpoint_config(EndpointConfigName=config_name)
    sagemaker_client.delete_endpoint(EndpointName=endpoint_name)
    deleted["endpoint"].append(endpoint_name)
    sagemaker_client.delete_endpoint_config(EndpointConfigName=config_name)
    deleted["endpoint_config"].append(config_name)
    for variant in config.get("ProductionVariants", []):
        sagemaker_client.delete_model(ModelName=variant["ModelName"])
        deleted["model"].append(variant["ModelName"])
    return deleted


def wait_endpoint_deleted(sm, endpoint_name: str, timeout_s: float = 600.0, poll_s: float = 10.0) -> None:
    """Poll DescribeEndpoint until the endpoint is gone. Not botocore's ``endpoint_deleted`` waiter: it fails on
    ``EndpointStatus == "Failed"`` (botocore/data/sagemaker/2017-07-24/waiters-2.json, EndpointDeleted), which is
    what a Failed endpoint still says for a moment after DeleteEndpoint."""
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status = sm.describe_endpoint(EndpointName=endpoint_name)["EndpointStatus"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ValidationException":
                return  # "Could not find endpoint"
            raise
        if time.monotonic() > deadline:
            raise ServingError(f"Endpoint {endpoint_name} is still {status} {timeout_s:.0f} s after it was deleted; "
                               "run again once it is gone")
        time.sleep(poll_s)


def deployment_record(name: str, backend: str, instance: str, timings: dict[str, float], sizes: dict[str, Any],
                      metrics: dict[str, Any], config: dict[str, Any]):
    from . import prices
    from .records import Record

    rate = prices.HOSTING_PER_HOUR.get(instance, 0.0 if backend == "local" else None)
    cost = {"currency": "USD", "prices_date": prices.PRICES_DATE, "price_per_hour": rate,
            "equivalent_instance": "ml.m5.large" if backend == "local" else instance,
            "equivalent_price_per_hour": prices.HOSTING_PER_HOUR["ml.m5.large"] if backend == "local" else rate}
    return Record(stage="deployment", name=name, backend=backend, instance=instance, timings=timings, sizes=sizes,
                  metrics=metrics, cost=cost, config=config)


def serve_main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="cloudalliance.serving", description="Serve an unpacked model artifact.")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--name", default=ENDPOINT_NAME)
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--workers", type=int, default=0, help="concurrent inferences (default: the cores)")
    args = p.parse_args(argv)
    workers = args.workers or services.cpu_count()
    # ONNX Runtime's threads per inference: the cores shared by the concurrent inferences (inference.py reads it)
    os.environ.setdefault("INFERENCE_THREADS", str(max(1, services.cpu_count() // workers)))
    app = create_endpoint_app(args.model_dir, args.name, workers)
    services.serve(app, args.port, args.host)
    return 0


if __name__ == "__main__":
    sys.exit(serve_main())
