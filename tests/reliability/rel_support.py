"""The reliability suite's HTTP client, invariants, tally and servers (imported by conftest and the tests).

Every server here is a real process on 127.0.0.1, started in a private state folder (so that nothing else in
the test session can stop or replace it) and stopped by its PID when its module ends. Every request the suite
sends goes through ``send`` and is counted by status in ``TALLY``; the measured numbers go to ``METRICS``.
Both are printed at the end of the session and written to ``runs/reliability/summary-<time>.json`` (and the
pytest tmp folder).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import http.client
import json
import os
import re
import select
import socket
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest


REPO = Path(__file__).resolve().parents[2]
FETCH_TIMEOUT_S = 2.0  # the gateways here run the handler with FETCH_TIMEOUT_S=2 (its default is 5)
ENDPOINT_NAME = "reliability"

TALLY: dict = {"requests": 0, "by_status": collections.Counter(), "by_test": collections.Counter()}
METRICS: dict = {}
_LOCK = threading.Lock()


# --------------------------------------------------------------------------- client


class _RawPathConnection(http.client.HTTPConnection):
    """http.client, but the request line may carry raw UTF-8 (non-ASCII paths are what we fuzz)."""

    def _encode_request(self, request: str) -> bytes:  # http/client.py: request.encode('ascii')
        return request.encode("utf-8", "surrogatepass")

    def _validate_path(self, url: str) -> None:  # the fuzzers choose what to send
        pass


@dataclasses.dataclass
class Reply:
    status: int  # 0 when no HTTP answer came (error says why)
    body: bytes
    headers: dict
    seconds: float
    error: str = ""

    def json(self):
        return json.loads(self.body)


def _count(key: str) -> None:
    m = re.search(r"\.py::([^\[\s]+)", os.environ.get("PYTEST_CURRENT_TEST", ""))
    with _LOCK:
        TALLY["requests"] += 1
        TALLY["by_status"][key] += 1
        TALLY["by_test"][m.group(1) if m else "?"] += 1


def http_path(path: str) -> str:
    """``path`` as a client would send it: non-ASCII, spaces and control characters percent-encoded."""
    return urllib.parse.quote(path, safe="/?=&;%[]:*@!$'()+,~")


def send(base_url: str, method: str = "POST", path: str = "/", body: bytes = b"", headers: dict | None = None,
         timeout: float = 30.0) -> Reply:
    """One HTTP request over a fresh connection; never raises for network trouble (``status`` 0 then)."""
    host, port = base_url.split("//", 1)[1].split(":")
    conn = _RawPathConnection(host, int(port), timeout=timeout)
    t0 = time.perf_counter()
    try:
        conn.request(method, path, body=body if body or method not in ("GET", "HEAD") else None,
                     headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        reply = Reply(resp.status, data, {k.lower(): v for k, v in resp.getheaders()}, time.perf_counter() - t0)
    except (OSError, http.client.HTTPException) as exc:
        reply = Reply(0, b"", {}, time.perf_counter() - t0, type(exc).__name__)
    finally:
        conn.close()
    _count(str(reply.status) if reply.status else f"no answer ({reply.error})")
    return reply


def post_json(base_url: str, payload, path: str = "/predict", timeout: float = 30.0) -> Reply:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return send(base_url, "POST", path, data, {"Content-Type": "application/json"}, timeout)


def send_large(base_url: str, path: str, total: int, headers: dict, timeout: float = 60.0,
               block: bytes = b"") -> Reply:
    """POST ``total`` bytes (``block`` repeated) while watching for an early answer (a 413 before the end).

    A server that refuses a big body may answer and close before reading it all; reading while sending is
    how curl sees that answer instead of a reset.
    """
    host, port = base_url.split("//", 1)[1].split(":")
    block = block or b"a" * (1 << 20)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {total}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    t0 = time.perf_counter()
    raw = b""
    error = ""
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(head.encode())
            sent = 0
            while sent < total:
                r, _, _ = select.select([sock], [], [], 0)
                if r:
                    break  # the server answered early
                piece = block[: total - sent]
                sock.sendall(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError) as exc:
            error = type(exc).__name__
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                raw += chunk
                if b"\r\n\r\n" in raw:
                    head_part, _, rest = raw.partition(b"\r\n\r\n")
                    m = re.search(rb"content-length:\s*(\d+)", head_part, re.I)
                    if m and len(rest) >= int(m.group(1)):
                        break
        except (ConnectionResetError, TimeoutError, OSError) as exc:
            error = error or type(exc).__name__
    seconds = time.perf_counter() - t0
    m = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    status = int(m.group(1)) if m else 0
    body = raw.partition(b"\r\n\r\n")[2]
    _count(str(status) if status else f"no answer ({error or 'closed'})")
    return Reply(status, body, {}, seconds, error)


# --------------------------------------------------------------------------- invariants

_LEAKS = ("Traceback", "site-packages", 'File "', str(REPO), "/tmp/", "/home/", "/work/", "/opt/")
SUCCESS_KEYS = {"label", "confidence", "probabilities"}


def check_reply(reply: Reply, *, allow_5xx: tuple[int, ...] = (), success_keys=SUCCESS_KEYS,
                unknown_route_ok: bool = False, what: str = "") -> dict | None:
    """The suite's invariant for one answer: an HTTP answer, no 5xx for client input (only ``allow_5xx``),
    a JSON body that is the 200 schema or ``{"error": str}``, no traceback, no file path."""
    where = f"{what}: " if what else ""
    assert reply.status, f"{where}no HTTP answer ({reply.error}) after {reply.seconds:.2f} s"
    assert reply.status < 500 or reply.status in allow_5xx, \
        f"{where}HTTP {reply.status} for client input: {reply.body[:300]!r}"
    text = reply.body.decode("utf-8", "replace")
    for leak in _LEAKS:
        assert leak not in text, f"{where}the answer leaks {leak!r}: {text[:300]!r}"
    if not reply.body and reply.status in (204, 304):
        return None
    if reply.status in (307, 308) and reply.headers.get("location"):
        return None  # FastAPI's redirect_slashes: /predict/ -> /predict (Starlette routing.py, Router.app)
    try:
        body = json.loads(reply.body)
    except ValueError:
        raise AssertionError(f"{where}HTTP {reply.status} answered something that is not JSON: "
                             f"{reply.body[:200]!r}") from None
    assert isinstance(body, dict), f"{where}HTTP {reply.status} answered JSON that is not an object: {text[:200]!r}"
    if reply.status == 200:
        assert success_keys <= set(body), f"{where}200 without {sorted(success_keys - set(body))}: {text[:200]!r}"
    elif unknown_route_ok and reply.status in (404, 405) and any(isinstance(body.get(k), str)
                                                                 for k in ("error", "detail", "message")):
        pass  # a route the server does not have: FastAPI's/API Gateway's own short JSON
    else:
        assert isinstance(body.get("error"), str) and body["error"], \
            f"{where}HTTP {reply.status} without a string 'error': {text[:200]!r}"
    return body


def percentile(values, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def record(**numbers) -> None:
    """Add measured numbers to the suite's summary."""
    with _LOCK:
        for k, v in numbers.items():
            METRICS[k] = round(v, 4) if isinstance(v, float) else v


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """``field`` (VmRSS or VmHWM) of ``pid`` in KiB, from /proc/<pid>/status (proc(5))."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class HealthProbe:
    """GET ``url`` every ``interval`` s in a thread while a block runs; ``seconds`` holds each answer's time."""

    def __init__(self, url: str, interval: float = 0.05, timeout: float = 5.0):
        base, _, path = url.partition("//")[2].partition("/")
        self.base, self.path = "http://" + base, "/" + path
        self.interval, self.timeout = interval, timeout
        self.seconds: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            r = send(self.base, "GET", self.path, timeout=self.timeout)
            if r.status == 200:
                self.seconds.append(r.seconds)
            else:
                self.failures.append(f"{r.status} {r.error}")
                self.seconds.append(r.seconds)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=self.timeout + 1)

    def p99(self) -> float:
        return percentile(self.seconds, 99)


# --------------------------------------------------------------------------- servers


@contextlib.contextmanager
def private_state(folder: Path, **env: str):
    """Point the services module at ``folder`` (and set ``env``) for the block; restore afterwards."""
    saved = {k: os.environ.get(k) for k in ("CLOUDALLIANCE_STATE_DIR", *env)}
    os.environ["CLOUDALLIANCE_STATE_DIR"] = str(folder)
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclasses.dataclass
class Stack:
    endpoint: object  # services.ServiceInfo
    gateway: object
    strict: object  # a second gateway that allows no private host at all
    state: Path
    artifact: Path
    jpeg: bytes
    png: bytes


def start_gateway(endpoint_url: str, allowed: str, service: str):
    """``local_gateway.start_local_gateway`` under another service name (so two gateways can run side by side)."""
    from cloudalliance.local import gateway as local_gateway

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(local_gateway, "GATEWAY_SERVICE", service)
        return local_gateway.start_local_gateway(endpoint_url, ENDPOINT_NAME, allowed_private_hosts=allowed)


@contextlib.contextmanager
def running_stack(artifact, folder: Path):
    """Endpoint + gateway (127.0.0.1 allowed) + strict gateway, in ``folder``; all stopped by PID on exit."""
    from cloudalliance.local import endpoint_server
    from cloudalliance.local import services

    path, jpeg, png = artifact
    folder.mkdir(parents=True, exist_ok=True)
    with private_state(folder, FETCH_TIMEOUT_S=str(FETCH_TIMEOUT_S)):
        started = []
        try:
            endpoint = endpoint_server.start_local_endpoint(path, endpoint_name=ENDPOINT_NAME)
            started.append("endpoint")
            gateway = start_gateway(endpoint.endpoint_url, "127.0.0.1", "gateway")
            started.append("gateway")
            strict = start_gateway(endpoint.endpoint_url, "", "gateway-strict")
            started.append("gateway-strict")
            yield Stack(endpoint, gateway, strict, folder, Path(path), jpeg, png)
        finally:
            for name in reversed(started):
                info = services.read_state(name)
                if info is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(info.pid, 18)  # SIGCONT: a stopped process cannot act on SIGTERM
                services.stop_service(name)
