"""The local API gateway (machinery; a learner may skip it): a real HTTP server on 127.0.0.1 that turns each
request into an API Gateway HTTP API (payload format 2.0) event, calls the real Lambda handler
(``lambda/src/handler.py``) in-process, and turns its answer back into HTTP — what API Gateway + Lambda do on
AWS. The handler's endpoint client points at the local endpoint (``SAGEMAKER_RUNTIME_URL``).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import importlib.util
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Sequence

from fastapi import Request, Response  # module level: FastAPI reads the annotations

from . import hardening, services
from ..defaults import ENDPOINT_NAME, FUNCTION_MEMORY_MB, IN_LAMBDA_MEMORY_MB, LAMBDA_MB_PER_VCPU
from ..api.postman import POSTMAN_IMAGE, POSTMAN_PORTS
from ..api.calls import ROUTE
from ..serving.model_artifact import artifact_path
from .endpoint_server import ensure_local_endpoint


GATEWAY_SERVICE = "gateway"


MODES = ("endpoint", "lambda")  # the forwarding function (handler.py) or the model inside it (handler_onnx.py)


LAMBDA_GATEWAY_SERVICE = "gateway-lambda"


IMAGES_SERVICE = "images"


REPO_ROOT = Path(__file__).resolve().parents[3]


DEFAULT_HANDLER = REPO_ROOT / "lambda" / "src" / "handler.py"


def load_handler(path: str | os.PathLike = DEFAULT_HANDLER):
    """Import ``lambda/src/handler.py`` (``lambda`` is a keyword, so not as a package)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Lambda handler {path} not found")
    spec = importlib.util.spec_from_file_location("cloudalliance_lambda_handler", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def http_api_event(method: str, path: str, headers: dict[str, str], body: bytes, query: str = "",
                   source_ip: str = "127.0.0.1") -> dict[str, Any]:
    """An API Gateway HTTP API payload-2.0 event, as AWS builds it."""
    now = _dt.datetime.now(_dt.timezone.utc)
    lowered = {k.lower(): v for k, v in headers.items()}
    content_type = lowered.get("content-type", "")
    textual = content_type.startswith(("application/json", "text/")) or not body
    try:
        text = body.decode("utf-8") if textual else None
    except UnicodeDecodeError:
        text = None
    return {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": query,
        "headers": lowered,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "local",
            "domainName": lowered.get("host", "127.0.0.1"),
            "domainPrefix": "local",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": source_ip,
                     "userAgent": lowered.get("user-agent", "")},
            "requestId": uuid.uuid4().hex,
            "routeKey": f"{method} {path}",
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "body": text if text is not None else base64.b64encode(body).decode(),
        "isBase64Encoded": text is None,
    }


FUNCTION_TIMEOUT_S = 29.0  # lambda/template.yaml Globals.Function.Timeout


# Lambda's synchronous invocation payload (https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html):
# the whole event, so a form-encoded body (which API Gateway hands over base64-encoded, 4/3 larger) hits it first
LAMBDA_EVENT_BYTES = 6 * 1024 * 1024


MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # API Gateway's payload quota (https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-quotas.html)


GATEWAY_WORKERS = 32  # concurrent handler calls: URL fetches and endpoint calls mostly wait on the network


@dataclasses.dataclass
class LocalContext:
    """What the handler may read from the Lambda context: the template's timeout, counted from the request's start."""

    function_name: str = "cloudalliance-predict"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = FUNCTION_MEMORY_MB
    aws_request_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:000000000000:function:cloudalliance-predict"
    timeout_s: float = FUNCTION_TIMEOUT_S
    started: float = dataclasses.field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        return int(max(0.0, self.timeout_s - (time.monotonic() - self.started)) * 1000)


def create_gateway_app(handler_path: str | os.PathLike = DEFAULT_HANDLER, workers: int = GATEWAY_WORKERS,
                       follow_service: str = ""):
    """A FastAPI app: ``POST /predict`` -> payload-2.0 event -> handler -> HTTP response.

    The handler blocks (it fetches URLs and calls the endpoint), so it runs in a pool of ``workers`` threads,
    never on the event loop: ``/health`` and other requests are answered while slow ones wait. Bodies are
    read as a stream and refused past API Gateway's 10 MB (413) or the body deadline (408). The handler's
    context counts the function's 29 s from the request's arrival; if it has not answered by then the
    gateway answers 504 itself, as Lambda would stop the function.

    With ``follow_service`` (``"endpoint"``), a 503 from the handler makes the gateway look the local
    service up again; if it came back on another URL, the handler is pointed there and called once more.
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    handler = load_handler(handler_path)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lambda")
    app = hardening.create_json_app("local API gateway (HTTP API, payload 2.0)")

    def follow() -> bool:
        """Point the handler at the service's current URL when it moved; True when it did."""
        info = services.running(follow_service) if follow_service else None
        if info is None or info.endpoint_url == os.environ.get("SAGEMAKER_RUNTIME_URL"):
            return False
        os.environ["SAGEMAKER_RUNTIME_URL"] = info.endpoint_url  # read on every call; clients are cached per URL
        return True

    def call(event: dict[str, Any], context: LocalContext) -> dict[str, Any]:
        result = handler.lambda_handler(event, context)
        if int(result.get("statusCode", 200)) == 503 and context.get_remaining_time_in_millis() > 5000:
            try:
                moved = follow()
            except Exception:  # noqa: BLE001 - the gateway's own lookup failing must not turn a 503 into a 500
                logging.getLogger(__name__).exception("could not re-read the %s service's state", follow_service)
                moved = False
            if moved:
                result = handler.lambda_handler(event, context)
        return result

    @app.post(ROUTE)
    async def route(request: Request) -> Response:
        context = LocalContext()  # the function's clock starts when the request arrives
        try:
            body = await hardening.read_body(request, MAX_PAYLOAD_BYTES)
        except hardening.BodyError as exc:
            return hardening.json_error(exc.status, exc.message, close=True)
        event = http_api_event(request.method, request.url.path, dict(request.headers), body,
                               request.url.query, request.client.host if request.client else "127.0.0.1")
        if len(event["body"]) + 4096 > LAMBDA_EVENT_BYTES:  # the rest of the event is a few KB
            return hardening.json_error(413, "The request is over Lambda's 6 MB payload once API Gateway has wrapped "
                                            "it (a form-encoded body is base64-encoded, 4/3 larger): send the image "
                                            "as JSON (-H 'content-type: application/json') or send its URL")
        remaining = context.get_remaining_time_in_millis() / 1000
        try:
            result = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(pool, call, event, context),
                                            timeout=remaining + 0.5)
        except asyncio.TimeoutError:
            return hardening.json_error(504, f"The function did not answer within {context.timeout_s:g} s")
        except Exception:  # noqa: BLE001 - what API Gateway does when the function itself fails: a 500
            logging.getLogger(__name__).exception("the function failed")
            return hardening.json_error(500, "The function failed; see the gateway's log")
        payload = result.get("body", "")
        if result.get("isBase64Encoded"):
            payload = base64.b64decode(payload)
        return Response(payload, status_code=int(result.get("statusCode", 200)), headers=result.get("headers") or {})

    # Other methods on the route: the SAM template defines only `POST /predict`, and API Gateway answers a
    # request that matches no route with 404 {"message": "Not Found"}; here the same 404, in the API's
    # {"error": ...} shape, so clients see one error format.
    @app.api_route(ROUTE, methods=["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"], include_in_schema=False)
    async def no_route(request: Request) -> Response:
        return hardening.json_error(404, f"Not Found: no route {request.method} {ROUTE}; use POST {ROUTE}")

    @app.get("/health")
    async def health() -> Response:
        return Response('{"status": "ok"}', media_type="application/json")

    return app


def _answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status == 200


def start_local_gateway(endpoint_url: str = "", endpoint_name: str = ENDPOINT_NAME, allowed_private_hosts: str = "",
                        handler_path: str | os.PathLike | None = None, timeout: float = 60.0, mode: str = "endpoint",
                        package: str | os.PathLike | None = None, service: str | None = None,
                        memory_mb: int = IN_LAMBDA_MEMORY_MB, port: int | None = None) -> services.ServiceInfo:
    """Start the gateway (a uvicorn process) in front of the handler of ``mode``.

    ``endpoint``: ``lambda/src/handler.py``, whose endpoint is ``endpoint_url``; when that is the running local
    endpoint's, the gateway follows that service, so a restarted endpoint is found again (see
    :func:`create_gateway_app`). ``lambda``: ``handler_onnx.py`` of ``package`` (``cloudalliance lambda package
    --platform local``), with the model inside the function and no endpoint; its service is ``gateway-lambda``,
    so both modes can run side by side (``service`` names it otherwise: a benchmark's own gateways leave the
    user's running). ``memory_mb`` is that function's memory size, as Lambda tells it
    (``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``): ONNX Runtime gets a thread per whole vCPU it buys. ``port``: a fixed
    one (default: any free port).
    """
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}: use one of {', '.join(MODES)}")
    port = port or services.free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"ALLOWED_PRIVATE_HOSTS": allowed_private_hosts}
    follow = None
    if mode == "lambda":
        handler_path = Path(handler_path) if handler_path else _local_package_handler(package)
        env.update(in_lambda_environment(memory_mb))
        env.update({"ENDPOINT_NAME": "", "SAGEMAKER_RUNTIME_URL": ""})
    else:
        handler_path = handler_path or DEFAULT_HANDLER
        env.update({"ENDPOINT_NAME": endpoint_name, "SAGEMAKER_RUNTIME_URL": endpoint_url})
        follow = services.running("endpoint")  # serving.ENDPOINT_SERVICE; not imported (serving pulls numpy)
    argv = [sys.executable, "-m", "cloudalliance.local.gateway", "gateway", "--port", str(port), "--handler", str(handler_path)]
    if follow is not None and follow.endpoint_url.rstrip("/") == endpoint_url.rstrip("/"):
        argv += ["--follow-service", follow.name]
    name = service or (GATEWAY_SERVICE if mode == "endpoint" else LAMBDA_GATEWAY_SERVICE)
    return services.start_service(name, argv, ports={"http": port}, endpoint_url=url,
                                  healthy=lambda: _answers(url + "/health"), env=env, timeout=timeout)


def in_lambda_environment(memory_mb: int = IN_LAMBDA_MEMORY_MB) -> dict[str, str]:
    """What Lambda tells the model-in-Lambda function of its size (``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``) and the
    ONNX Runtime threads ``handler_onnx.inference_threads`` derives from it (a whole vCPU each, at least 1). The
    count is given as a number, so a package built before the handler derived it runs the same."""
    if not 128 <= int(memory_mb) <= 10240:
        raise ValueError(f"memory size {memory_mb} MB: Lambda takes 128 to 10,240 MB")
    threads = max(1, min(int(memory_mb) // LAMBDA_MB_PER_VCPU, services.cpu_count()))
    return {"INFERENCE_THREADS": str(threads), "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(int(memory_mb))}


def _local_package_handler(package: str | os.PathLike | None) -> Path:
    """``handler_onnx.py`` of a package this interpreter can run (its own wheels must be for this Python)."""
    if not package:
        raise ValueError("The lambda mode needs a package: `cloudalliance lambda package --platform local --artifact "
                         "model.tar.gz --out DIR`, then --package DIR")
    package = Path(package)
    manifest_path = package / "package.json"
    if not manifest_path.is_file() or not (package / "handler_onnx.py").is_file():
        raise FileNotFoundError(f"{package} is not a built in-Lambda package: run `cloudalliance lambda package "
                                f"--platform local --artifact model.tar.gz --out {package}`")
    manifest = json.loads(manifest_path.read_text())
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if manifest.get("platform") != "local" and manifest.get("python") != here:
        raise ValueError(f"{package} carries wheels for Python {manifest.get('python')} ({manifest.get('arch')}), "
                         f"this gateway is Python {here}: build one with --platform local for the local gateway")
    return package / "handler_onnx.py"


def start_image_server(folder: str | os.PathLike, timeout: float = 30.0, port: int | None = None) -> services.ServiceInfo:
    """Serve ``folder`` over HTTP on 127.0.0.1 (for the ``{"url"}`` path in the local course)."""
    port = port or services.free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)]
    return services.start_service(IMAGES_SERVICE, argv, ports={"http": port}, endpoint_url=url,
                                  healthy=lambda: _answers(url + "/"), data_dir=folder, timeout=timeout)


def serve_run(run, endpoint_name: str = ENDPOINT_NAME) -> dict[str, str]:
    """A finished run's API, up again for Postman, newman or curl: the local endpoint with the run's artifact,
    the gateway on port 8780 and the collection's image on 8781 (other free ports where those are taken; then
    ``newman_command`` names them). Returns the URLs and the collection's path."""

    artifact, images = artifact_path(run), run.path / "postman"
    if not artifact.is_file():
        raise FileNotFoundError(f"Run {run.run_id} has no model artifact ({artifact}): run notebook 05 first")
    if not (images / POSTMAN_IMAGE).is_file():
        raise FileNotFoundError(f"Run {run.run_id} has no Postman collection yet: run notebook 06 first")
    for name in (GATEWAY_SERVICE, IMAGES_SERVICE):  # the ports they hold may be the ones wanted below
        if services.running(name) is not None:
            services.stop_service(name)
    endpoint = ensure_local_endpoint(artifact, endpoint_name)
    api_port, image_port = (p if services.port_is_free(p) else None for p in POSTMAN_PORTS.values())
    gateway = start_local_gateway(endpoint.endpoint_url, endpoint_name, allowed_private_hosts="127.0.0.1", port=api_port)
    server = start_image_server(images, port=image_port)
    return {"api_url": gateway.endpoint_url + ROUTE, "base_url": gateway.endpoint_url,
            "image_url": f"{server.endpoint_url}/{POSTMAN_IMAGE}", "collection": str(run.path / "postman_collection.json")}


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="cloudalliance.local.gateway")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gateway", help="serve the local API gateway")
    g.add_argument("--port", type=int, default=3000)
    g.add_argument("--handler", default=str(DEFAULT_HANDLER))
    g.add_argument("--workers", type=int, default=GATEWAY_WORKERS, help="concurrent handler calls")
    g.add_argument("--follow-service", default="", help="a local service whose URL the handler's endpoint follows")
    args = p.parse_args(argv)
    hardening.serve(create_gateway_app(args.handler, args.workers, args.follow_service), args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
