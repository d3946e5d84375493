"""The local API gateway and the API's clients.

The gateway is a real HTTP server on 127.0.0.1 that turns each request into an
API Gateway HTTP API (payload format 2.0) event, calls the real Lambda handler
(``lambda/src/handler.py``) in-process, and turns its answer back into HTTP — what
API Gateway + Lambda do on AWS. The handler's endpoint client points at the
local endpoint (``SAGEMAKER_RUNTIME_URL``).
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

from . import services
from .defaults import ENDPOINT_NAME

GATEWAY_SERVICE = "gateway"
MODES = ("endpoint", "lambda")  # the forwarding function (handler.py) or the model inside it (handler_onnx.py)
LAMBDA_GATEWAY_SERVICE = "gateway-lambda"
IMAGES_SERVICE = "images"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_HANDLER = REPO_ROOT / "lambda" / "src" / "handler.py"
ROUTE = "/predict"


class ApiClientError(RuntimeError):
    """The API could not be reached or answered something that is not JSON."""


# --------------------------------------------------------------------------- events


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
FUNCTION_MEMORY_MB = 512  # lambda/template.yaml Globals.Function.MemorySize
IN_LAMBDA_MEMORY_MB = 1024  # lambda/template.yaml Parameters.InLambdaMemorySize.Default: the model-in-Lambda function's
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
    app = services.create_json_app("local API gateway (HTTP API, payload 2.0)")

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
            body = await services.read_body(request, MAX_PAYLOAD_BYTES)
        except services.BodyError as exc:
            return services.json_error(exc.status, exc.message, close=True)
        event = http_api_event(request.method, request.url.path, dict(request.headers), body,
                               request.url.query, request.client.host if request.client else "127.0.0.1")
        if len(event["body"]) + 4096 > LAMBDA_EVENT_BYTES:  # the rest of the event is a few KB
            return services.json_error(413, "The request is over Lambda's 6 MB payload once API Gateway has wrapped "
                                            "it (a form-encoded body is base64-encoded, 4/3 larger): send the image "
                                            "as JSON (-H 'content-type: application/json') or send its URL")
        remaining = context.get_remaining_time_in_millis() / 1000
        try:
            result = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(pool, call, event, context),
                                            timeout=remaining + 0.5)
        except asyncio.TimeoutError:
            return services.json_error(504, f"The function did not answer within {context.timeout_s:g} s")
        except Exception:  # noqa: BLE001 - what API Gateway does when the function itself fails: a 500
            logging.getLogger(__name__).exception("the function failed")
            return services.json_error(500, "The function failed; see the gateway's log")
        payload = result.get("body", "")
        if result.get("isBase64Encoded"):
            payload = base64.b64decode(payload)
        return Response(payload, status_code=int(result.get("statusCode", 200)), headers=result.get("headers") or {})

    # Other methods on the route: the SAM template defines only `POST /predict`, and API Gateway answers a
    # request that matches no route with 404 {"message": "Not Found"}; here the same 404, in the API's
    # {"error": ...} shape, so clients see one error format.
    @app.api_route(ROUTE, methods=["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"], include_in_schema=False)
    async def no_route(request: Request) -> Response:
        return services.json_error(404, f"Not Found: no route {request.method} {ROUTE}; use POST {ROUTE}")

    @app.get("/health")
    async def health() -> Response:
        return Response('{"status": "ok"}', media_type="application/json")

    return app


# --------------------------------------------------------------------------- services


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
    env = {"ALLOWED_PRIVATE_HOSTS": allowed_private_hosts, "POWERTOOLS_SERVICE_NAME": "cloudalliance-predict",
           "POWERTOOLS_LOG_LEVEL": os.environ.get("POWERTOOLS_LOG_LEVEL", "WARNING")}
    follow = None
    if mode == "lambda":
        handler_path = Path(handler_path) if handler_path else _local_package_handler(package)
        env.update(in_lambda_environment(memory_mb))
        env.update({"ENDPOINT_NAME": "", "SAGEMAKER_RUNTIME_URL": ""})
    else:
        handler_path = handler_path or DEFAULT_HANDLER
        env.update({"ENDPOINT_NAME": endpoint_name, "SAGEMAKER_RUNTIME_URL": endpoint_url})
        follow = services.running("endpoint")  # serving.ENDPOINT_SERVICE; not imported (serving pulls numpy)
    argv = [sys.executable, "-m", "cloudalliance.api", "gateway", "--port", str(port), "--handler", str(handler_path)]
    if follow is not None and follow.endpoint_url.rstrip("/") == endpoint_url.rstrip("/"):
        argv += ["--follow-service", follow.name]
    name = service or (GATEWAY_SERVICE if mode == "endpoint" else LAMBDA_GATEWAY_SERVICE)
    return services.start_service(name, argv, ports={"http": port}, endpoint_url=url,
                                  healthy=lambda: _answers(url + "/health"), env=env, timeout=timeout)


LAMBDA_MB_PER_VCPU = 1769  # "At 1,769 MB, a function has the equivalent of one vCPU" (Lambda's configuration-memory)


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


# --------------------------------------------------------------------------- clients


@dataclasses.dataclass
class ApiReply:
    status: int
    body: dict[str, Any]
    seconds: float


def call_api(api_url: str, payload: dict[str, Any] | bytes, timeout: float = 30.0,
             content_type: str = "application/json") -> ApiReply:
    """POST JSON to the API like curl does; returns status, parsed body and latency.

    ``content_type="application/x-www-form-urlencoded"`` sends what ``curl -d '{...}'`` sends.
    """
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(api_url, data=data, method="POST", headers={"Content-Type": content_type})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except OSError as exc:
        raise ApiClientError(f"The API at {api_url} is not reachable: {exc}") from exc
    seconds = time.perf_counter() - t0
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ApiClientError(f"The API answered HTTP {status} with something that is not JSON: {raw[:200]!r}") from exc
    return ApiReply(status, body, seconds)


AWS_URLS_MISSING = ("deploy the SAM stack first (lambda/README.md), then set API_URL to its ApiUrl output and "
                    "IMAGE_URL to a public image")
_DOC_HOSTS = ("example.com", "example.net", "example.org")  # RFC 2606 section 3: reserved for documentation
_PLACEHOLDER_API = "abc123."  # the made-up API id in params/aws.yaml's example ApiUrl


def check_api_urls(backend: str, api_url: str, image_url: str) -> None:
    """On aws, API_URL and IMAGE_URL must be given (and not documentation placeholders); locally both may be empty."""
    import urllib.parse

    if backend != "aws":
        return
    problems = []
    for name, value in (("API_URL", api_url), ("IMAGE_URL", image_url)):
        parts = urllib.parse.urlsplit(value or "")
        host = (parts.hostname or "").lower()
        if not value:
            problems.append(f"{name} is empty")
        elif parts.scheme not in ("http", "https") or not host:
            problems.append(f"{name} {value!r} is not an http(s) URL")
        elif host in _DOC_HOSTS or host.endswith(tuple("." + h for h in _DOC_HOSTS)) or host.startswith(_PLACEHOLDER_API):
            problems.append(f"{name} {value!r} is a placeholder")
    if problems:
        raise ValueError(f"{'; '.join(problems)}: {AWS_URLS_MISSING}")


def image_payload(path: str | os.PathLike) -> dict[str, str]:
    return {"image": base64.b64encode(Path(path).read_bytes()).decode()}


SEED_CURL = "seed"  # the original study's call: curl -i -X POST -d '{"url": ...}' <api> (sent form-encoded)
CURL_STYLES = (SEED_CURL, "json", "binary")


def curl_command(api_url: str, image_url: str, style: str = SEED_CURL, curl: str = "curl") -> str:
    """The curl line a user types, shell-quoted.

    ``seed`` is the original study's call: ``-d`` with no content type, so curl sends
    ``application/x-www-form-urlencoded`` (curl's man page, ``-d/--data``); the API accepts JSON whatever the
    content type. ``json`` adds ``-H 'Content-Type: application/json'``; ``binary`` sends the body with
    ``--data-binary`` (no newline stripping) as JSON.
    """
    import shlex

    if style not in CURL_STYLES:
        raise ValueError(f"Unknown curl style {style!r}; choose one of: {', '.join(CURL_STYLES)}")
    body = shlex.quote(json.dumps({"url": image_url}))
    if style == SEED_CURL:
        return f"{curl} -i -X POST -d {body} {shlex.quote(api_url)}"
    flag = "--data-binary" if style == "binary" else "-d"
    return f"{curl} -i -X POST -H 'Content-Type: application/json' {flag} {body} {shlex.quote(api_url)}"


POSTMAN_SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
NOT_AN_IMAGE_B64 = base64.b64encode(b"hello world").decode()  # valid base64, not an image: 415
PRIVATE_URL = "http://169.254.169.254/latest/meta-data/"  # the cloud metadata address: 403


def _postman_url(api_url: str) -> tuple[str, dict[str, Any]]:
    """``{{baseUrl}}/predict`` as Postman itself stores it: raw plus the parsed host and path.

    Postman's SDK builds a request URL from the object's parts and never reads ``raw`` when ``url`` is an object
    (postman-collection v4.4.0, lib/collection/url.js, ``Url#update``: ``_.isString(url) ? Url.parse(url) : url``,
    then only protocol/host/port/path/query are used), so a ``{"raw": ...}``-only URL runs as an empty URL
    ("runtime:extensions~request: request url is empty", postman-runtime lib/requester/requester.js). The parts
    below are what ``new Url('{{baseUrl}}/predict').toJSON()`` gives (schema: the v2.1 ``url`` definition at
    https://schema.getpostman.com/json/collection/v2.1.0/collection.json).
    """
    base, sep, _ = api_url.rstrip("/").rpartition(ROUTE)
    if sep and base:
        return base, {"raw": "{{baseUrl}}" + ROUTE, "host": ["{{baseUrl}}"], "path": [ROUTE.strip("/")]}
    return api_url, {"raw": "{{baseUrl}}", "host": ["{{baseUrl}}"]}


def _postman_item(title: str, url: dict[str, Any], raw_body: str, status: int, tests: list[str],
                  content_type: str = "application/json", description: str = "") -> dict[str, Any]:
    script = [f'pm.test("HTTP {status}", function () {{ pm.response.to.have.status({status}); }});',
              'pm.test("answers JSON", function () { pm.response.to.be.json; });', *tests]
    return {"name": title,
            "event": [{"listen": "test", "script": {"type": "text/javascript", "exec": script}}],
            "request": {"method": "POST", "description": description,
                        "header": [{"key": "Content-Type", "value": content_type}],
                        "body": {"mode": "raw", "raw": raw_body,
                                 **({"options": {"raw": {"language": "json"}}} if "json" in content_type else {})},
                        "url": dict(url)}}


def postman_collection(api_url: str, image_url: str, example_image: str | os.PathLike | bytes,
                       name: str = "cloudalliance API") -> dict[str, Any]:
    """A Postman v2.1 collection that Postman and newman both run.

    Collection variables ``baseUrl`` (the API without ``/predict``) and ``imageUrl`` hold ``api_url`` and
    ``image_url``; override them with a Postman environment or ``newman run --env-var baseUrl=...``.
    Items: an image URL (JSON, and form-encoded as the seed's ``curl -d`` sends it), a real base64 JPEG
    (``example_image``), and the bad requests with the status each gets (400, 400, 415, 403). Each item's
    ``pm.test`` script checks the status and, on success, ``"Image predicted: <label>"``.
    """
    image = example_image if isinstance(example_image, bytes) else Path(example_image).read_bytes()
    if not image.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")):
        raise ValueError("example_image must be a JPEG or PNG file (it becomes the collection's base64 example)")
    base_url, url = _postman_url(api_url)
    predicted = [
        'pm.test("Image predicted: <label>", function () {',
        "    var body = pm.response.json();",
        '    pm.expect(body.message).to.eql("Image predicted: " + body.label);',
        "    pm.expect(body.probabilities).to.have.property(body.label);",
        "});",
    ]
    refused = ['pm.test("says why", function () {',
               '    pm.expect(pm.response.json().error).to.be.a("string").and.not.empty;',
               "});"]
    url_body = json.dumps({"url": "{{imageUrl}}"}, indent=2)
    items = [
        _postman_item("Predict from an image URL", url, url_body, 200, predicted),
        _postman_item("Predict from an image URL, form-encoded like curl -d", url, url_body, 200, predicted,
                      content_type="application/x-www-form-urlencoded",
                      description="What `curl -X POST -d '{\"url\": ...}'` sends: the JSON body, form content type."),
        _postman_item("Predict from a base64 image", url,
                      json.dumps({"image": base64.b64encode(image).decode()}), 200, predicted,
                      description=f"A real {len(image):,}-byte image, base64-encoded."),
        _postman_item("Bad request: malformed JSON", url, '{"url": ', 400, refused),
        _postman_item("Bad request: neither url nor image", url, json.dumps({"picture": "{{imageUrl}}"}), 400, refused),
        _postman_item("Bad request: not an image", url, json.dumps({"image": NOT_AN_IMAGE_B64}), 415, refused),
        _postman_item("Bad request: a private address", url, json.dumps({"url": PRIVATE_URL}), 403, refused),
    ]
    return {"info": {"name": name, "schema": POSTMAN_SCHEMA,
                     "description": "POST {\"url\": ...} or {\"image\": \"<base64>\"}; set baseUrl and imageUrl."},
            "variable": [{"key": "baseUrl", "value": base_url, "type": "string"},
                         {"key": "imageUrl", "value": image_url, "type": "string"}],
            "item": items}


# --------------------------------------------------------------------------- a run's API, served again

POSTMAN_PORTS = {"api": 8780, "images": 8781}  # where the saved collection's baseUrl and imageUrl point
POSTMAN_IMAGE = "example.jpg"


def postman_defaults() -> tuple[str, str]:
    """The saved collection's ``baseUrl`` and ``imageUrl``: what ``cloudalliance api start --run <id>`` serves."""
    return f"http://127.0.0.1:{POSTMAN_PORTS['api']}", f"http://127.0.0.1:{POSTMAN_PORTS['images']}/{POSTMAN_IMAGE}"


def write_postman_collection(run, url_image: str | os.PathLike, example_image: str | os.PathLike) -> Path:
    """``runs/<id>/postman_collection.json``, whose requests still work after the run has ended.

    The run's own servers are gone then, so the collection points at :func:`postman_defaults`, which
    :func:`serve_run` (``cloudalliance api start --run <id>``) serves again: the run's model behind the gateway,
    and ``url_image`` (copied into ``runs/<id>/postman/``) as the image to fetch.
    """
    import shutil

    folder = run.path / "postman"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(url_image, folder / POSTMAN_IMAGE)
    base_url, image_url = postman_defaults()
    return run.save_json("postman_collection.json", postman_collection(base_url + ROUTE, image_url, example_image))


def serve_run(run, endpoint_name: str = ENDPOINT_NAME) -> dict[str, str]:
    """A finished run's API, up again for Postman, newman or curl: the local endpoint with the run's artifact,
    the gateway on port 8780 and the collection's image on 8781 (other free ports where those are taken; then
    ``newman_command`` names them). Returns the URLs and the collection's path."""
    from .serving import artifact_path, ensure_local_endpoint

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


def newman_command(served: dict[str, str], newman: str = ".tools/node/node_modules/.bin/newman") -> str:
    """The ``newman run`` line for :func:`serve_run`'s URLs: ``--env-var`` only where a port had to change."""
    base_url, image_url = postman_defaults()
    extra = [f"--env-var baseUrl={served['base_url']}" if served["base_url"] != base_url else "",
             f"--env-var imageUrl={served['image_url']}" if served["image_url"] != image_url else ""]
    return " ".join([newman, "run", served["collection"], *filter(None, extra)])


# --------------------------------------------------------------------------- newman (Postman's CLI runner)

NEWMAN_VERSION = "6.2.2"
TOOLS_DIR = REPO_ROOT / ".tools" / "node"


class NewmanUnavailable(RuntimeError):
    """node/npm are not installed, or npm could not install newman."""


def ensure_newman(prefix: str | os.PathLike = TOOLS_DIR, version: str = NEWMAN_VERSION, timeout: float = 300.0) -> Path:
    """The newman executable, installed with npm into ``prefix`` (an ignored folder) the first time."""
    import shutil
    import subprocess

    prefix = Path(prefix)
    exe = prefix / "node_modules" / ".bin" / "newman"
    package = prefix / "node_modules" / "newman" / "package.json"
    if exe.exists() and package.is_file() and json.loads(package.read_text()).get("version") == version:
        return exe
    npm, node = shutil.which("npm"), shutil.which("node")
    if not npm or not node:
        raise NewmanUnavailable("newman needs node and npm on PATH (e.g. apt-get install nodejs npm)")
    prefix.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel=error",
                               f"newman@{version}"], capture_output=True, text=True, timeout=timeout)
    except (subprocess.TimeoutExpired, OSError) as exc:
        raise NewmanUnavailable(f"npm install newman@{version} did not finish: {exc}") from exc
    if proc.returncode != 0 or not exe.exists():
        raise NewmanUnavailable(f"npm install newman@{version} failed ({proc.returncode}): {proc.stderr[-800:]}")
    return exe


@dataclasses.dataclass
class NewmanResult:
    returncode: int
    report: dict[str, Any]  # newman's JSON reporter output
    output: str

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        return self.report.get("run", {}).get("stats", {})

    @property
    def failures(self) -> list[str]:
        return [f"{f.get('source', {}).get('name', '?')}: {f.get('error', {}).get('message', '')}"
                for f in self.report.get("run", {}).get("failures", [])]


def run_newman(collection: str | os.PathLike, report_path: str | os.PathLike, variables: dict[str, str] | None = None,
               newman: str | os.PathLike | None = None, timeout: float = 300.0) -> NewmanResult:
    """``newman run`` a collection with ``--env-var`` overrides and the cli and json reporters."""
    import subprocess

    exe = str(newman or ensure_newman())
    argv = [exe, "run", str(collection), "--reporters", "cli,json", "--reporter-json-export", str(report_path),
            "--timeout-request", "30000", "--color", "off", "--disable-unicode"]
    for key, value in (variables or {}).items():
        argv += ["--env-var", f"{key}={value}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    try:
        report = json.loads(Path(report_path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise NewmanUnavailable(f"newman wrote no JSON report ({exc}); its output:\n{proc.stdout[-2000:]}"
                                f"{proc.stderr[-2000:]}") from exc
    return NewmanResult(proc.returncode, report, proc.stdout + proc.stderr)


@dataclasses.dataclass
class LatencyResult:
    requests: int
    errors: int
    seconds: list[float]

    def percentile(self, q: float) -> float:
        import numpy as np

        return float(np.percentile(self.seconds, q)) if self.seconds else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "p50_ms": 1000 * self.percentile(50),
                "p95_ms": 1000 * self.percentile(95), "p99_ms": 1000 * self.percentile(99),
                "mean_ms": 1000 * (sum(self.seconds) / len(self.seconds)) if self.seconds else float("nan")}


def measure_latency(api_url: str, payloads: Sequence[dict[str, Any]], requests: int = 200, warmup: int = 5,
                    progress: bool = True, max_seconds: float = 600.0) -> LatencyResult:
    """Sequential requests (bounded in count and time), cycling over ``payloads``; latency of each 200."""
    from tqdm.auto import tqdm

    for i in range(warmup):
        call_api(api_url, payloads[i % len(payloads)])
    times, errors = [], 0
    deadline = time.monotonic() + max_seconds
    for i in tqdm(range(requests), desc="API latency", unit="req", disable=not progress):
        if time.monotonic() > deadline:
            break
        reply = call_api(api_url, payloads[i % len(payloads)])
        if reply.status == 200:
            times.append(reply.seconds)
        else:
            errors += 1
    return LatencyResult(len(times) + errors, errors, times)


def api_record(latency: LatencyResult, backend: str, api_url: str, hosting_instance: str = "ml.m5.large",
               lambda_memory_mb: int = 512):
    """The api stage's record: latency percentiles and what 1,000 predictions cost on AWS."""
    from . import prices
    from .records import Record

    d = latency.to_dict()
    mean_s = d["mean_ms"] / 1000 if latency.seconds else 0.0
    per_1000 = prices.cost_per_1000_predictions(mean_s, prices.HOSTING_PER_HOUR[hosting_instance], lambda_memory_mb)
    return Record(
        stage="api", name="predict", backend=backend, instance="local gateway" if backend == "local" else "API Gateway",
        timings={"latencies_ms": [round(1000 * t, 3) for t in latency.seconds], "total_s": round(sum(latency.seconds), 3)},
        sizes={"requests": latency.requests, "errors": latency.errors},
        metrics={k: round(v, 3) for k, v in d.items() if k.endswith("_ms")},
        cost={"currency": "USD", "prices_date": prices.PRICES_DATE, "hosting_instance": hosting_instance,
              "per_1000_predictions_usd": round(per_1000["total_usd"], 6),
              **{k: round(v, 6) for k, v in per_1000.items()}},
        config={"api_url": api_url, "lambda_memory_mb": lambda_memory_mb},
    )


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="cloudalliance.api")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gateway", help="serve the local API gateway")
    g.add_argument("--port", type=int, default=3000)
    g.add_argument("--handler", default=str(DEFAULT_HANDLER))
    g.add_argument("--workers", type=int, default=GATEWAY_WORKERS, help="concurrent handler calls")
    g.add_argument("--follow-service", default="", help="a local service whose URL the handler's endpoint follows")
    args = p.parse_args(argv)
    services.serve(create_gateway_app(args.handler, args.workers, args.follow_service), args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
