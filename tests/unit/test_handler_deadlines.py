"""The Lambda handler keeps its deadlines, against hostile servers on 127.0.0.1.

The fetch has a TOTAL budget (``FETCH_TIMEOUT_S``, or less when the Lambda context has less left); the endpoint
call gets what remains of ``context.get_remaining_time_in_millis()`` less the safety margin, with no retry. A
server that trickles one byte every 0.5 s or hangs must not hold a request longer than its budget + 0.5 s.
The endpoint is a local HTTP server posing as sagemaker-runtime (``SAGEMAKER_RUNTIME_URL``); its error answers
follow botocore's sagemaker-runtime service model (botocore/data/sagemaker-runtime/2017-05-13/service-2.json:
ModelError is HTTP 424 with OriginalStatusCode, ValidationError 400, ModelNotReadyException 429,
InternalFailure 500) and the rest-json error format (error code in the ``X-Amzn-ErrorType`` header).
"""

from __future__ import annotations

import base64
import http.server
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from cloudalliance.data import synthetic
from cloudalliance.local.gateway import LocalContext, http_api_event, load_handler

HANDLER = Path(__file__).resolve().parents[2] / "lambda" / "src" / "handler.py"
SLACK_S = 0.5  # the brief's tolerance: every call ends within its budget + 0.5 s
SERVER_HOLD_S = 8.0  # the longest a hostile server here holds a connection (bounds the tests on broken code)


@pytest.fixture(scope="module")
def jpeg():
    return synthetic.encode_jpeg(synthetic.render("sea", 1), 1)


@pytest.fixture(scope="module")
def handler_module():
    return load_handler(HANDLER)  # one module, so its endpoint clients are cached across tests as on AWS


@pytest.fixture
def handler(monkeypatch, handler_module):
    monkeypatch.setenv("ENDPOINT_NAME", "test-endpoint")
    monkeypatch.setenv("FETCH_TIMEOUT_S", "1")
    monkeypatch.setenv("ALLOWED_PRIVATE_HOSTS", "127.0.0.1")
    monkeypatch.delenv("MAX_IMAGE_BYTES", raising=False)
    monkeypatch.delenv("SAGEMAKER_RUNTIME_URL", raising=False)
    return handler_module


def timed_call(module, body: dict, context) -> tuple[int, dict, float, dict]:
    event = http_api_event("POST", "/predict", {"content-type": "application/json"}, json.dumps(body).encode())
    started = time.monotonic()
    reply = module.lambda_handler(event, context)
    return reply["statusCode"], json.loads(reply["body"]), time.monotonic() - started, reply["headers"]


def stub_predict(module, monkeypatch):
    monkeypatch.setattr(module, "predict", lambda image, kind, settings: {"label": "sea", "confidence": 1.0})


# --------------------------------------------------------------------------- hostile image servers


class RawServer:
    """Accepts on 127.0.0.1 and runs ``behave(conn, stop)`` per connection in a thread; stops them all on exit."""

    def __init__(self, behave, read_request: bool = True):
        self.behave, self.read_request = behave, read_request
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.threads: list[threading.Thread] = []
        self.requests = 0

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            self.requests += 1
            thread = threading.Thread(target=self._one, args=(conn,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _one(self, conn):
        with conn:
            conn.settimeout(SERVER_HOLD_S)
            try:
                data = b""
                while self.read_request and b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                self.behave(conn, self.stop, data)
            except OSError:
                pass

    def __enter__(self):
        self.acceptor = threading.Thread(target=self._serve, daemon=True)
        self.acceptor.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.acceptor.join(5)
        self.listener.close()
        for thread in self.threads:
            thread.join(5)


def trickle(conn, stop, head: bytes, seconds=SERVER_HOLD_S, every=0.5):
    conn.sendall(head)
    ends = time.monotonic() + seconds
    while time.monotonic() < ends and not stop.wait(every):
        conn.sendall(b"x")


def trickle_body(conn, stop, request):
    trickle(conn, stop, b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n\xff\xd8\xff")


def trickle_headers(conn, stop, request):
    trickle(conn, stop, b"HTTP/1.1 200 OK\r\nX-Slow: ")


def trickle_chunked(conn, stop, request):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n")
    ends = time.monotonic() + SERVER_HOLD_S
    while time.monotonic() < ends and not stop.wait(0.5):
        conn.sendall(b"1\r\nx\r\n")


def hang(conn, stop, request):
    stop.wait(SERVER_HOLD_S)


def slow_redirects(conn, stop, request):
    stop.wait(0.4)
    conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: /again\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def length_lie(conn, stop, request):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 5000\r\n\r\n\xff\xd8\xff" + b"0" * 97)


@pytest.mark.parametrize("behave", [trickle_body, trickle_headers, trickle_chunked, hang, slow_redirects],
                         ids=lambda f: f.__name__)
def test_fetch_budget_is_total(handler, monkeypatch, behave):
    stub_predict(handler, monkeypatch)
    with RawServer(behave) as server:
        status, reply, took, _ = timed_call(handler, {"url": server.url + "/a.jpg"}, LocalContext())
    assert status == 422 and "longer than 1.0 s" in reply["error"], reply
    assert took <= 1.0 + SLACK_S, took


def tls_trickle(conn, stop, request):
    """A TLS handshake record that announces 16 KB and then comes one byte every 0.5 s."""
    conn.recv(4096)  # the ClientHello
    trickle(conn, stop, b"\x16\x03\x03\x40\x00\x02")


def test_tls_handshake_trickled_is_cut_at_the_budget(handler, monkeypatch):
    stub_predict(handler, monkeypatch)
    with RawServer(tls_trickle, read_request=False) as server:
        url = server.url.replace("http://", "https://") + "/a.jpg"
        status, reply, took, _ = timed_call(handler, {"url": url}, LocalContext())
    assert status == 422 and "longer than" in reply["error"], reply
    assert took <= 1.0 + SLACK_S, took


def test_tls_handshake_that_never_ends_is_within_the_budget(handler, monkeypatch):
    stub_predict(handler, monkeypatch)
    with RawServer(hang) as server:  # accepts and reads, never says a word of TLS
        url = server.url.replace("http://", "https://") + "/a.jpg"
        status, reply, took, _ = timed_call(handler, {"url": url}, LocalContext())
    assert status == 422 and "longer than" in reply["error"], reply
    assert took <= 1.0 + SLACK_S, took


def test_fetch_budget_shrinks_to_what_the_context_has_left(handler, monkeypatch):
    monkeypatch.setenv("FETCH_TIMEOUT_S", "5")
    stub_predict(handler, monkeypatch)
    with RawServer(trickle_body) as server:  # 2.5 s left - 1 s margin = 1.5 s
        status, reply, took, _ = timed_call(handler, {"url": server.url + "/a.jpg"}, LocalContext(timeout_s=2.5))
    assert status == 422 and took <= 1.5 + SLACK_S, (reply, took)


def test_a_body_shorter_than_its_content_length_is_refused(handler, monkeypatch):
    stub_predict(handler, monkeypatch)
    with RawServer(length_lie) as server:
        status, reply, _, _ = timed_call(handler, {"url": server.url + "/a.jpg"}, LocalContext())
    assert status == 422 and "Content-Length" in reply["error"], reply


# --------------------------------------------------------------------------- a local sagemaker-runtime


class _Runtime(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mode = "ok"
    stop: threading.Event
    seen: list

    def log_message(self, *args):
        pass

    def _reply(self, status, body: bytes, headers=None):
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status, code, **fields):
        self._reply(status, json.dumps({"message": fields.pop("message", code), **fields}).encode(),
                    {"X-Amzn-ErrorType": code})

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append(self.path)
        mode = self.mode
        if mode == "ok":
            self._reply(200, b'{"label": "forest", "confidence": 0.8, "probabilities": {"forest": 0.8}}')
        elif mode == "hang":
            self.stop.wait(SERVER_HOLD_S)
        elif mode == "trickle":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.flush()
            ends = time.monotonic() + SERVER_HOLD_S
            while time.monotonic() < ends and not self.stop.wait(0.5):
                self.wfile.write(b" ")
                self.wfile.flush()
        elif mode.startswith("model-"):
            original = int(mode.split("-")[1])
            self._error(424, "ModelError", message="Received client error from primary", OriginalStatusCode=original,
                        OriginalMessage="cannot decode", LogStreamArn="arn:aws:logs:x")
        elif mode == "not-found":
            self._error(400, "ValidationError", message="Endpoint test-endpoint of account 000000000000 not found.")
        elif mode == "oversize":  # Serverless Inference over its 4 MB (aws/sagemaker-python-sdk#4271)
            self._error(400, "ValidationError", message="Request 3f2c1e0a-1b2c-4d5e-8f90-123456789abc has oversize body.")
        elif mode == "throttled":
            self._error(400, "ThrottlingException", message="Rate exceeded")
        elif mode == "not-ready":
            self._error(429, "ModelNotReadyException", message="still loading")
        elif mode == "internal":
            self._error(500, "InternalFailure", message="boom")
        elif mode.startswith("bare-"):  # the local endpoint's way: a status and {"error"}, no error code
            self._reply(int(mode.split("-")[1]), b'{"error": "The body is not an image PIL can read"}')
        elif mode == "not-json":
            self._reply(200, b"<html>")
        elif mode == "a-list":
            self._reply(200, b'["forest"]')


@pytest.fixture(scope="module")
def runtime_server():
    stop, seen = threading.Event(), []
    cls = type("Runtime", (_Runtime,), {"stop": stop, "seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), cls)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.cls = cls
    try:
        yield server
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def runtime(monkeypatch, handler, runtime_server):
    runtime_server.cls.mode = "ok"
    runtime_server.cls.seen.clear()
    monkeypatch.setenv("SAGEMAKER_RUNTIME_URL", f"http://127.0.0.1:{runtime_server.server_address[1]}")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    return runtime_server


@pytest.fixture
def image_body(jpeg):
    return {"image": base64.b64encode(jpeg).decode()}


def test_endpoint_answers(handler, runtime, image_body):
    status, reply, _, _ = timed_call(handler, image_body, LocalContext())
    assert status == 200 and reply["label"] == "forest"
    assert runtime.cls.seen == ["/endpoints/test-endpoint/invocations"]


@pytest.mark.parametrize("mode", ["hang", "trickle"])
def test_a_hung_endpoint_is_a_504_within_the_budget(handler, runtime, image_body, mode):
    runtime.cls.mode = mode
    status, reply, took, _ = timed_call(handler, image_body, LocalContext(timeout_s=2.0))  # 2 - 1 s margin
    assert status == 504 and "did not answer" in reply["error"], reply
    assert took <= 1.0 + SLACK_S, took
    assert len(runtime.cls.seen) == 1  # no retry


@pytest.mark.parametrize("mode, status, fragment", [
    ("model-415", 415, "could not read"),
    ("model-413", 413, "too large"),
    ("model-500", 502, "model failed"),
    ("not-found", 503, "does not exist"),
    ("oversize", 413, "at most 4 MB"),
    ("throttled", 503, "try again"),
    ("not-ready", 503, "try again"),
    ("internal", 502, "InternalFailure"),
    ("not-json", 502, "not JSON"),
    ("bare-415", 415, "could not read"),
    ("bare-413", 413, "too large"),
    ("bare-404", 503, "does not exist"),
    ("bare-500", 502, "failed"),
    ("a-list", 502, "no label"),
])
def test_endpoint_errors_map_to_statuses(handler, runtime, image_body, mode, status, fragment):
    runtime.cls.mode = mode
    got, reply, _, headers = timed_call(handler, image_body, LocalContext())
    assert got == status and fragment in reply["error"], reply
    assert len(runtime.cls.seen) == 1, runtime.cls.seen  # never retried: a retry could overrun the deadline
    if status == 503 and mode not in ("not-found", "bare-404"):
        assert headers.get("Retry-After") == "1"


def test_endpoint_down_is_a_503(handler, monkeypatch, image_body):
    from cloudalliance.local.services import free_port

    monkeypatch.setenv("SAGEMAKER_RUNTIME_URL", f"http://127.0.0.1:{free_port()}")
    status, reply, _, _ = timed_call(handler, image_body, LocalContext())
    assert status == 503 and "not reachable" in reply["error"]


def test_no_time_left_for_the_endpoint(handler, runtime, image_body):
    status, reply, took, _ = timed_call(handler, image_body, LocalContext(timeout_s=1.2))
    assert status == 504 and took < 0.5 and runtime.cls.seen == []


def test_clients_are_cached_per_whole_second_with_no_retries(handler, runtime):
    settings = handler._settings()
    five = handler.runtime_client(settings, 4.2)  # rounded up: the caller's own wait ends the call on time
    assert handler.runtime_client(settings, 5) is five
    assert handler.runtime_client(settings, 5.01) is not five
    config = five.meta.config
    assert (config.read_timeout, config.connect_timeout) == (5, 3.0)
    assert config.retries["total_max_attempts"] == 1


def test_call_within_bounds_what_no_socket_timeout_can(handler):
    """getaddrinfo has no timeout of its own: the handler runs it (and the endpoint call) through call_within."""
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        handler.guards.call_within(handler.guards.Budget(0.3), time.sleep, 3)
    assert time.monotonic() - started < 0.3 + SLACK_S
    assert handler.guards.call_within(handler.guards.Budget(1.0), sum, [1, 2]) == 3
    with pytest.raises(ZeroDivisionError):
        handler.guards.call_within(handler.guards.Budget(1.0), divmod, 1, 0)
