"""The local API gateway and the API's clients.

The gateway is a real HTTP server on 127.0.0.1 that turns each request into an
API Gateway HTTP API (payload format 2.0) event, calls the real Lambda handler
(``lambda/handler.py``) in-process, and turns its answer back into HTTP — what
API Gateway + Lambda do on AWS. The handler's endpoint client points at the
local endpoint (``SAGEMAKER_RUNTIME_URL``).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import importlib.util
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Sequence

from fastapi import FastAPI, Request, Response  # module level: FastAPI reads the annotations

from . import services

GATEWAY_SERVICE = "gateway"
IMAGES_SERVICE = "images"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_HANDLER = REPO_ROOT / "lambda" / "handler.py"
ROUTE = "/predict"


class ApiClientError(RuntimeError):
    """The API could not be reached or answered something that is not JSON."""


# --------------------------------------------------------------------------- events


def load_handler(path: str | os.PathLike = DEFAULT_HANDLER):
    """Import ``lambda/handler.py`` (``lambda`` is a keyword, so not as a package)."""
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


@dataclasses.dataclass
class LocalContext:
    """What the handler may read from the Lambda context."""

    function_name: str = "cloudalliance-predict"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 1024
    aws_request_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:000000000000:function:cloudalliance-predict"
    timeout_s: float = 30.0
    started: float = dataclasses.field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        return int(max(0.0, self.timeout_s - (time.monotonic() - self.started)) * 1000)


def create_gateway_app(handler_path: str | os.PathLike = DEFAULT_HANDLER):
    """A FastAPI app: ``POST /predict`` -> payload-2.0 event -> handler -> HTTP response."""

    handler = load_handler(handler_path)
    app = FastAPI(title="local API gateway (HTTP API, payload 2.0)")

    @app.api_route(ROUTE, methods=["POST", "GET", "PUT", "DELETE"])
    async def route(request: Request) -> Response:
        body = await request.body()
        event = http_api_event(request.method, request.url.path, dict(request.headers), body,
                               request.url.query, request.client.host if request.client else "127.0.0.1")
        result = handler.lambda_handler(event, LocalContext())
        payload = result.get("body", "")
        if result.get("isBase64Encoded"):
            payload = base64.b64decode(payload)
        return Response(payload, status_code=int(result.get("statusCode", 200)), headers=result.get("headers") or {})

    @app.get("/health")
    async def health() -> Response:
        return Response('{"status": "ok"}', media_type="application/json")

    return app


# --------------------------------------------------------------------------- services


def _answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status == 200


def start_local_gateway(endpoint_url: str, endpoint_name: str = "cloudalliance", allowed_private_hosts: str = "",
                        handler_path: str | os.PathLike = DEFAULT_HANDLER, timeout: float = 60.0) -> services.ServiceInfo:
    """Start the gateway (a uvicorn process) in front of the handler, whose endpoint is ``endpoint_url``."""
    port = services.free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"ENDPOINT_NAME": endpoint_name, "SAGEMAKER_RUNTIME_URL": endpoint_url,
           "ALLOWED_PRIVATE_HOSTS": allowed_private_hosts, "POWERTOOLS_SERVICE_NAME": "cloudalliance-predict",
           "POWERTOOLS_LOG_LEVEL": os.environ.get("POWERTOOLS_LOG_LEVEL", "WARNING")}
    argv = [sys.executable, "-m", "cloudalliance.api", "gateway", "--port", str(port), "--handler", str(handler_path)]
    return services.start_service(GATEWAY_SERVICE, argv, ports={"http": port}, endpoint_url=url,
                                  healthy=lambda: _answers(url + "/health"), env=env, timeout=timeout)


def start_image_server(folder: str | os.PathLike, timeout: float = 30.0) -> services.ServiceInfo:
    """Serve ``folder`` over HTTP on 127.0.0.1 (for the ``{"url"}`` path in the local course)."""
    port = services.free_port()
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


def call_api(api_url: str, payload: dict[str, Any] | bytes, timeout: float = 30.0) -> ApiReply:
    """POST JSON to the API like curl does; returns status, parsed body and latency."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(api_url, data=data, method="POST", headers={"Content-Type": "application/json"})
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


def image_payload(path: str | os.PathLike) -> dict[str, str]:
    return {"image": base64.b64encode(Path(path).read_bytes()).decode()}


def curl_command(api_url: str, image_url: str) -> str:
    return f"curl -X POST {api_url} -H 'Content-Type: application/json' -d '{json.dumps({'url': image_url})}'"


def postman_collection(api_url: str, image_url: str, name: str = "cloudalliance API") -> dict[str, Any]:
    """A Postman v2.1 collection with the two ways to call the API."""
    def item(title: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"name": title, "request": {"method": "POST", "header": [{"key": "Content-Type", "value": "application/json"}],
                                           "body": {"mode": "raw", "raw": json.dumps(body, indent=2),
                                                    "options": {"raw": {"language": "json"}}},
                                           "url": {"raw": api_url}}}
    return {"info": {"name": name, "schema": "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"},
            "item": [item("Predict from an image URL", {"url": image_url}),
                     item("Predict from a base64 image", {"image": "<base64 of a JPEG or PNG>"})]}


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
    from . import bench, prices
    from .records import Record

    d = latency.to_dict()
    mean_s = d["mean_ms"] / 1000 if latency.seconds else 0.0
    per_1000 = bench.cost_per_1000_predictions(mean_s, prices.HOSTING_PER_HOUR[hosting_instance], lambda_memory_mb)
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

    import uvicorn

    p = argparse.ArgumentParser(prog="cloudalliance.api")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gateway", help="serve the local API gateway")
    g.add_argument("--port", type=int, default=3000)
    g.add_argument("--handler", default=str(DEFAULT_HANDLER))
    args = p.parse_args(argv)
    uvicorn.run(create_gateway_app(args.handler), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
