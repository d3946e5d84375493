"""Calling the prediction API as its users do: ``call_api`` (one POST with a JSON body), the curl commands the
notebook prints, latency measured from the client's side, and the API's record.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from ..errors import CloudallianceError
from ..bench import prices
from ..records import Record

ROUTE = "/predict"


class ApiClientError(CloudallianceError):
    """The API could not be reached or answered something that is not JSON."""

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


def warm_up(api_url: str, payload: dict[str, Any], deadline_s: float = 300.0, pause_s: float = 10.0) -> str:
    """Call the API until it answers anything but 503 or 504, for at most ``deadline_s``; say what it took.

    A Serverless Inference endpoint that has been idle starts a container on the next request, whose model must
    download and pass ``/ping`` within 3 minutes, then answer within 1
    (https://docs.aws.amazon.com/sagemaker/latest/dg/serverless-endpoints-invoke.html). The function gives up after
    its 29 s with a 504 (503 while the endpoint is not ready), so the first requests fail until it is warm: notebook
    06 warms it before it checks or times anything.
    """
    t0 = time.monotonic()
    tries = 0
    while True:
        tries += 1
        reply = call_api(api_url, payload, timeout=35.0)  # API Gateway's own limit is 30 s
        waited = time.monotonic() - t0
        if reply.status not in (503, 504):
            return f"HTTP {reply.status} after {tries} request{'s' * (tries > 1)} ({waited:.0f} s)"
        if waited + pause_s > deadline_s:
            raise ApiClientError(f"The API still answers HTTP {reply.status} ({reply.body.get('error') or reply.body}) "
                                 f"after {tries} requests in {waited:.0f} s: the endpoint behind it is not starting; "
                                 "see its status and CloudWatch logs in the SageMaker console")
        time.sleep(pause_s)


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
