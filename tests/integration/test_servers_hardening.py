"""The local endpoint and gateway under load, bombs, huge or slow bodies, odd methods and restarts.

Real servers on 127.0.0.1 (uvicorn processes started through ``services`` and stopped by their pid);
every load is bounded in clients, requests and seconds. Memory is read from /proc/<pid>/status (proc(5):
VmRSS now, VmHWM the peak since the process started).
"""

import http.client
import io
import json
import os
import signal
import struct
import sys
import threading
import time
import urllib.parse
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from handler_support import ImageServer  # noqa: E402

from cloudalliance.api import calls
from cloudalliance.local import gateway as local_gateway
from cloudalliance.local import endpoint_server
from cloudalliance.local import hardening, services

BODY_DEADLINE_S = 2.0  # the servers' body deadline in this module (the default is 20 s)


# --------------------------------------------------------------------------- helpers


def bomb_png(side: int = 12000) -> bytes:
    """A real grey PNG of ``side`` x ``side`` zeros (~140 KB for 12000 px): decoding it costs side² bytes+."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    idat = b"".join(comp.compress(row * 500) for _ in range(side // 500)) + comp.compress(row * (side % 500))
    idat += comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def scene(w: int = 96, h: int = 48) -> np.ndarray:
    """A picture whose rotations look different: a gradient sky over green, a red block on the left."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2] = np.linspace(90, 250, w, dtype=np.uint8)[None, :, None]
    a[h // 2:] = (30, 160, 40)
    a[h // 4: 3 * h // 4, : w // 5] = (220, 20, 20)
    return a


class Reply:
    def __init__(self, status, headers, raw, seconds):
        self.status, self.headers, self.raw, self.seconds = status, headers, raw, seconds

    def json(self):
        return json.loads(self.raw)


def call(base_url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 20.0) -> Reply:
    u = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    t0 = time.perf_counter()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, raw, time.perf_counter() - t0)
    finally:
        conn.close()


def vm(pid: int, field: str) -> int:
    """``VmRSS``/``VmHWM`` of ``pid`` in KiB (proc(5))."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class Load:
    """``clients`` threads, each on its own keep-alive connection, POSTing ``body`` until stopped (bounded)."""

    def __init__(self, base_url: str, path: str, body: bytes, content_type: str, clients: int,
                 max_seconds: float = 30.0):
        self.u = urllib.parse.urlsplit(base_url)
        self.path, self.body, self.ctype = path, body, content_type
        self.stop_at = time.monotonic() + max_seconds
        self.stopped = threading.Event()
        self.statuses: list[int] = []
        self.latencies: list[float] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self):
        conn = http.client.HTTPConnection(self.u.hostname, self.u.port, timeout=30)
        while not self.stopped.is_set() and time.monotonic() < self.stop_at:
            t0 = time.perf_counter()
            try:
                conn.request("POST", self.path, body=self.body, headers={"Content-Type": self.ctype})
                resp = conn.getresponse()
                resp.read()
                status = resp.status
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
            with self.lock:
                self.statuses.append(status)
                self.latencies.append(time.perf_counter() - t0)
        conn.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        for t in self.threads:
            t.join(35)


def health_times(url: str, seconds: float, interval: float = 0.02, max_calls: int = 400) -> list[float]:
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(times) < max_calls:
        r = call(url, "GET", urllib.parse.urlsplit(url).path or "/", timeout=10)
        assert r.status == 200
        times.append(r.seconds)
        time.sleep(interval)
    return times


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def short_body_deadline():
    """The body and header deadlines at BODY_DEADLINE_S for the servers started below (they inherit them)."""
    names = (hardening.BODY_DEADLINE_ENV, hardening.HEADER_DEADLINE_ENV)
    old = {name: os.environ.get(name) for name in names}
    os.environ.update({name: str(BODY_DEADLINE_S) for name in names})
    yield BODY_DEADLINE_S
    for name, value in old.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def artifact(tiny_artifact):
    return tiny_artifact


@pytest.fixture(scope="module")
def endpoint(artifact, short_body_deadline):
    info = endpoint_server.ensure_local_endpoint(artifact[0], "hardening")
    yield info
    endpoint_server.stop_local_endpoint()


@pytest.fixture(scope="module")
def gateway(endpoint):
    info = local_gateway.start_local_gateway(endpoint.endpoint_url, "hardening", allowed_private_hosts="127.0.0.1")
    yield info
    services.stop_service(local_gateway.GATEWAY_SERVICE)


def current_endpoint() -> services.ServiceInfo:
    info = services.running(endpoint_server.ENDPOINT_SERVICE)
    assert info is not None
    return info


# --------------------------------------------------------------------------- docs and method errors


def test_docs_are_off_and_every_error_is_the_apis_json(endpoint, gateway):
    for base in (endpoint.endpoint_url, gateway.endpoint_url):
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/nope"):
            r = call(base, "GET", path)
            assert r.status == 404 and isinstance(r.json()["error"], str) and "detail" not in r.json(), (base, path)
    ep = endpoint.endpoint_url
    for method in ("GET", "PUT", "PATCH", "DELETE", "OPTIONS"):
        r = call(ep, method, "/invocations")
        assert r.status == 405 and "POST" in r.headers["allow"] and r.json()["error"].startswith("Method"), method
    r = call(ep, "POST", "/ping")
    assert r.status == 405 and "GET" in r.headers["allow"] and "error" in r.json()
    assert call(ep, "HEAD", "/invocations").status == 405
    gw = gateway.endpoint_url
    # API Gateway answers a method with no route with 404; the gateway does too, in {"error"} form
    for method in ("GET", "PUT", "PATCH", "DELETE", "OPTIONS"):
        r = call(gw, method, local_gateway.ROUTE)
        assert r.status == 404 and "POST /predict" in r.json()["error"], method
    assert call(gw, "HEAD", local_gateway.ROUTE).status == 404
    r = call(gw, "PATCH", "/health")
    assert r.status == 405 and "error" in r.json()


def test_validation_errors_are_the_apis_json():
    from fastapi.testclient import TestClient

    app = hardening.create_json_app("t")

    @app.get("/items/{n}")
    async def item(n: int):
        return {"n": n}

    r = TestClient(app).get("/items/notanumber")
    assert r.status_code == 422 and "detail" not in r.json() and "n" in r.json()["error"]
    # a trailing slash is another route (as on API Gateway), not a 307 redirect without a JSON body
    r = TestClient(app, follow_redirects=False).get("/items/3/")
    assert r.status_code == 404 and "error" in r.json()


# --------------------------------------------------------------------------- head-of-line blocking


def test_gateway_health_and_predictions_are_not_held_by_slow_fetches(gateway, artifact):
    jpeg = artifact[1][0].read_bytes()
    routes = {"/slow.jpg": (200, {"Content-Type": "image/jpeg"}, jpeg, 3.0)}  # answers after 3 s
    with ImageServer(routes) as images:
        slow_body = json.dumps({"url": images.url + "/slow.jpg"}).encode()
        with Load(gateway.endpoint_url, local_gateway.ROUTE, slow_body, "application/json", clients=6, max_seconds=8) as load:
            time.sleep(0.3)
            health = health_times(gateway.endpoint_url + "/health", 2.0)
            predict = calls.call_api(gateway.endpoint_url + local_gateway.ROUTE, calls.image_payload(artifact[1][0]))
        assert load.statuses and set(load.statuses) == {200}, load.statuses
    p99 = float(np.percentile(health, 99))
    assert p99 < 0.25, f"/health p99 {p99 * 1000:.0f} ms while 6 fetches wait 3 s each"
    assert predict.status == 200 and predict.seconds < 2.0, (predict.status, predict.seconds)


def test_endpoint_ping_stays_fast_under_16_clients_and_bombs_are_413_without_memory(endpoint, artifact):
    jpeg = artifact[1][0].read_bytes()
    bomb = bomb_png()
    pid = endpoint.pid
    call(endpoint.endpoint_url, "POST", "/invocations", jpeg, {"Content-Type": "image/jpeg"})
    hwm0 = vm(pid, "VmHWM")
    with Load(endpoint.endpoint_url, "/invocations", jpeg, "image/jpeg", clients=12, max_seconds=10) as ok_load, \
            Load(endpoint.endpoint_url, "/invocations", bomb, "image/png", clients=4, max_seconds=10) as bombs:
        time.sleep(0.3)
        pings = health_times(endpoint.endpoint_url + "/ping", 3.0)
    assert ok_load.statuses and set(ok_load.statuses) == {200}
    assert bombs.statuses and set(bombs.statuses) == {413}, set(bombs.statuses)
    p99 = float(np.percentile(pings, 99))
    assert p99 < 0.25, f"/ping p99 {p99 * 1000:.0f} ms under 12 clients + 4 bomb posters"
    growth_mb = (vm(pid, "VmHWM") - hwm0) / 1024
    assert growth_mb < 100, f"the endpoint's peak RSS grew {growth_mb:.0f} MB under bombs (a decoded one is 432 MB)"
    r = call(endpoint.endpoint_url, "POST", "/invocations", bomb, {"Content-Type": "image/png"})
    assert r.status == 413 and "12000x12000" in r.json()["error"]


# --------------------------------------------------------------------------- bodies


def _stream_chunked(base_url: str, path: str, total: int, chunk: int = 1 << 20, content_type="application/json"):
    """POST ``total`` bytes chunked (no Content-Length); stop when the server hangs up. Returns (status, sent)."""
    u = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
    sent = 0
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", content_type)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        piece = b"%x\r\n" % chunk + b"7" * chunk + b"\r\n"
        try:
            while sent < total:
                conn.send(piece)
                sent += chunk
            conn.send(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed: what we want
        try:
            resp = conn.getresponse()
            return resp.status, sent
        except (OSError, http.client.HTTPException):
            return 0, sent  # the answer was lost in the reset; the memory check below still decides
    finally:
        conn.close()


@pytest.mark.parametrize("which, limit", [("gateway", local_gateway.MAX_PAYLOAD_BYTES), ("endpoint", 6 * 1024 * 1024)])
def test_huge_bodies_are_413_before_they_are_read(which, limit, gateway, endpoint):
    info = current_endpoint() if which == "endpoint" else gateway
    path = "/invocations" if which == "endpoint" else local_gateway.ROUTE
    u = urllib.parse.urlsplit(info.endpoint_url)
    # 1. a declared Content-Length over the cap: refused from the header, no byte of the body sent
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", "image/jpeg")
        conn.putheader("Content-Length", str(100 * 1024 * 1024))
        conn.endheaders()
        t0 = time.perf_counter()
        resp = conn.getresponse()
        assert resp.status == 413 and "limit" in json.loads(resp.read())["error"]
        assert time.perf_counter() - t0 < 2.0
    finally:
        conn.close()
    # 2. a chunked body with no length: counted as it comes, cut at the cap; memory stays flat
    hwm0 = vm(info.pid, "VmHWM")
    status, sent = _stream_chunked(info.endpoint_url, path, 100 * 1024 * 1024, content_type="image/jpeg")
    assert status in (413, 0)
    assert sent < 100 * 1024 * 1024, "the server read the whole 100 MB"
    growth_mb = (vm(info.pid, "VmHWM") - hwm0) / 1024
    assert growth_mb < 3 * limit / 2**20, f"{which}: peak RSS grew {growth_mb:.0f} MB for a 100 MB body"
    assert call(info.endpoint_url, "GET", "/ping" if which == "endpoint" else "/health").status == 200


@pytest.mark.parametrize("which", ["gateway", "endpoint"])
def test_a_trickled_body_is_408_after_the_body_deadline(which, gateway, endpoint, short_body_deadline):
    info = current_endpoint() if which == "endpoint" else gateway
    path = "/invocations" if which == "endpoint" else local_gateway.ROUTE
    u = urllib.parse.urlsplit(info.endpoint_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", "image/jpeg")
        conn.putheader("Content-Length", "1000")
        conn.endheaders()
        conn.send(b"\xff\xd8\xff" + b"0" * 7)  # 10 of 1000 bytes, then nothing
        t0 = time.perf_counter()
        resp = conn.getresponse()
        took = time.perf_counter() - t0
        assert resp.status == 408 and "within" in json.loads(resp.read())["error"]
        assert short_body_deadline - 0.5 < took < short_body_deadline + 3
    finally:
        conn.close()


def _trickle_headers(url: str, path: str, seconds: float) -> tuple[bytes, float]:
    """A request line and headers sent a byte every 0.2 s (never finished); what came back and when."""
    import socket

    u = urllib.parse.urlsplit(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=5)
    sock.settimeout(0.2)
    t0 = time.perf_counter()
    reply = b""
    try:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode())
        while time.perf_counter() - t0 < seconds:
            try:
                sock.send(b"a")
            except OSError:  # closed by the server
                break
            try:
                chunk = sock.recv(4096)
            except socket.timeout:
                continue
            except ConnectionResetError:  # after the answer: the server closed with our bytes unread
                break
            if not chunk:
                break
            reply += chunk
        return reply, time.perf_counter() - t0
    finally:
        sock.close()


@pytest.mark.parametrize("which", ["gateway", "endpoint"])
def test_headers_sent_a_byte_at_a_time_are_408_after_the_header_deadline(which, gateway, endpoint,
                                                                          short_body_deadline):
    """uvicorn times bodies (through the app) and idle keep-alive connections, not headers that trickle in:
    hardening.http_protocol closes them after the header deadline, with the API's JSON."""
    info = current_endpoint() if which == "endpoint" else gateway
    reply, took = _trickle_headers(info.endpoint_url, "/invocations" if which == "endpoint" else local_gateway.ROUTE,
                                   short_body_deadline + 6)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), reply[:200]
    assert "headers did not arrive" in json.loads(body)["error"]
    assert short_body_deadline - 0.5 < took < short_body_deadline + 2, took
    assert call(info.endpoint_url, "GET", "/ping" if which == "endpoint" else "/health").status == 200


def test_a_kept_alive_connection_is_not_cut_by_the_header_deadline(gateway, short_body_deadline):
    """Requests on one connection with pauses between them; an answer that takes long (the stopped endpoint
    below, 28 s) is not cut either: its headers were in."""
    u = urllib.parse.urlsplit(gateway.endpoint_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
    try:
        for pause in (0.0, short_body_deadline / 2, short_body_deadline / 2):  # 3 requests, one connection
            time.sleep(pause)
            conn.request("GET", "/health")
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["status"] == "ok"
    finally:
        conn.close()


def test_an_idle_kept_alive_connection_is_closed_without_an_answer_nobody_asked_for(gateway, short_body_deadline):
    """A pooled client that sends its next request just as the deadline passes must not read a 408 as its answer:
    an idle connection is closed silently, as uvicorn's keep-alive timeout closes it."""
    u = urllib.parse.urlsplit(gateway.endpoint_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=short_body_deadline + 5)
    try:
        conn.request("GET", "/health")
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["status"] == "ok"
        t0 = time.perf_counter()
        rest = b""
        while chunk := conn.sock.recv(4096):  # the same kept-alive socket; nothing more is sent: the server closes
            rest += chunk
        took = time.perf_counter() - t0
        print(f"idle connection closed after {took:.2f} s")
        assert rest == b"", rest[:200]
        assert took < short_body_deadline + 2.5  # ours, before uvicorn's 5 s keep-alive
    finally:
        conn.close()


def test_a_request_http_cannot_parse_gets_the_apis_json_400(gateway):
    import socket

    u = urllib.parse.urlsplit(gateway.endpoint_url)
    with socket.create_connection((u.hostname, u.port), timeout=5) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head.lower()
    assert "not a valid HTTP/1.1 request" in json.loads(body)["error"]


# --------------------------------------------------------------------------- images


ODD_IMAGES = {
    "cmyk jpeg": (lambda: encode(Image.fromarray(scene()).convert("CMYK"), "JPEG"), "image/jpeg", 200),
    "16-bit grey png": (lambda: encode(Image.fromarray((scene()[..., 0].astype(np.uint16) * 257)), "PNG"),
                        "image/png", 200),
    "palette + alpha png": (lambda: encode(Image.fromarray(scene()).convert("P"), "PNG", transparency=0),
                            "image/png", 200),
    "LA png": (lambda: encode(Image.fromarray(scene()).convert("LA"), "PNG"), "image/png", 200),
    "animated gif": (lambda: encode(Image.fromarray(scene()).convert("P"), "GIF", save_all=True,
                                    append_images=[Image.new("P", (96, 48), 2)], duration=40),
                     "application/x-image", 200),
    "truncated jpeg": (lambda: encode(Image.fromarray(scene()), "JPEG")[:300], "image/jpeg", 415),
    "bomb png": (bomb_png, "image/png", 413),
}


@pytest.mark.parametrize("name", list(ODD_IMAGES))
def test_odd_images_are_rgb_or_a_4xx_never_a_500(name, endpoint):
    make, ctype, expected = ODD_IMAGES[name]
    r = call(current_endpoint().endpoint_url, "POST", "/invocations", make(), {"Content-Type": ctype})
    assert r.status == expected, (name, r.status, r.raw[:200])
    body = r.json()
    assert ("label" in body) if expected == 200 else isinstance(body["error"], str)


def test_exif_orientation_is_applied_by_the_endpoint(endpoint):
    """A photo stored landscape with EXIF Orientation=6 is classified as the upright (rotated) picture."""
    src = scene(96, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    tagged = encode(Image.fromarray(src), "PNG", exif=exif)
    upright = encode(Image.fromarray(np.ascontiguousarray(np.rot90(src, -1))), "PNG")
    as_stored = encode(Image.fromarray(src), "PNG")
    url = current_endpoint().endpoint_url

    def probs(data):
        r = call(url, "POST", "/invocations", data, {"Content-Type": "image/png"})
        assert r.status == 200
        return np.array(sorted(r.json()["probabilities"].items()))[:, 1].astype(float)

    p_tagged, p_upright, p_stored = probs(tagged), probs(upright), probs(as_stored)
    assert np.abs(p_tagged - p_upright).max() < 1e-5
    assert np.abs(p_tagged - p_stored).max() > 1e-5  # the model does see a different picture unrotated


# --------------------------------------------------------------------------- recovery (last: restarts the endpoint)


def _first_200(url: str, payload: dict, within: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        if calls.call_api(url, payload, timeout=35).status == 200:
            return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"no 200 within {within} s")


def test_a_killed_and_restarted_endpoint_is_found_by_the_running_gateway(gateway, artifact):
    payload = calls.image_payload(artifact[1][0])
    predict = gateway.endpoint_url + local_gateway.ROUTE
    assert calls.call_api(predict, payload).status == 200
    old = current_endpoint()
    os.kill(old.pid, signal.SIGKILL)
    assert services.wait_port_closed(old.ports["http"], 10)
    down = calls.call_api(predict, payload)
    assert down.status == 503 and "error" in down.body
    # what `cloudalliance endpoint start` does: the same port when it is free again
    t0 = time.monotonic()
    new = endpoint_server.ensure_local_endpoint(artifact[0], "hardening")
    assert new.pid != old.pid and new.ports["http"] == old.ports["http"]
    recovery = time.monotonic() - t0 + _first_200(predict, payload, 10)
    print(f"\nrecovery (restart + first 200 through the gateway): {recovery:.2f} s")
    # and an endpoint that comes back on another port is followed through the service state
    services.stop_service(endpoint_server.ENDPOINT_SERVICE)
    moved = endpoint_server.start_local_endpoint(artifact[0], "hardening", port=services.free_port(avoid=[old.ports["http"]]))
    Path(moved.data_dir, ".artifact").write_text(f"{Path(artifact[0]).resolve()}:{Path(artifact[0]).stat().st_mtime}")
    assert moved.ports["http"] != old.ports["http"]
    assert _first_200(predict, payload, 10) < 5


@pytest.mark.slow
def test_a_stopped_endpoint_does_not_hold_clients_past_the_function_timeout(gateway, artifact):
    """SIGSTOP: the endpoint accepts connections (the kernel does) but never answers."""
    payload = calls.image_payload(artifact[1][0])
    info = current_endpoint()
    os.kill(info.pid, signal.SIGSTOP)
    try:
        result = {}
        t = threading.Thread(target=lambda: result.update(r=calls.call_api(gateway.endpoint_url + local_gateway.ROUTE, payload,
                                                                          timeout=60)))
        t.start()
        health = health_times(gateway.endpoint_url + "/health", 3.0)
        t.join(60)
        reply = result["r"]
        print(f"\nSIGSTOPped endpoint: HTTP {reply.status} after {reply.seconds:.1f} s; /health p99 "
              f"{1000 * float(np.percentile(health, 99)):.0f} ms meanwhile")
        assert reply.status >= 500 and isinstance(reply.body.get("error"), str)
        assert reply.seconds <= local_gateway.FUNCTION_TIMEOUT_S + 1.5, reply.seconds
        assert float(np.percentile(health, 99)) < 0.25
    finally:
        os.kill(info.pid, signal.SIGCONT)


def test_the_local_context_is_the_templates_function():
    """The handler's deadline comes from the context: the SAM template's Timeout and MemorySize, counted down."""
    import re

    template = (local_gateway.REPO_ROOT / "lambda" / "template.yaml").read_text()
    timeout = float(re.search(r"(?m)^\s+Timeout:\s*(\d+)", template).group(1))
    memory = int(re.search(r"(?m)^\s+MemorySize:\s*(\d+)", template).group(1))
    context = local_gateway.LocalContext()
    assert context.timeout_s == timeout and context.memory_limit_in_mb == memory
    assert timeout * 1000 - 100 <= context.get_remaining_time_in_millis() <= timeout * 1000
    context.started -= 10
    assert abs(context.get_remaining_time_in_millis() - (timeout - 10) * 1000) < 100
