"""A cold endpoint behind the API (Serverless Inference after idle time) must not fail notebook 06: the API is
called until it answers, and the function's 504 says that the endpoint may be starting."""

import http.server
import json
import threading

import pytest

from cloudalliance.api import calls, stack


@pytest.fixture
def api():
    """An API that answers 504 (the function's budget ran out on a cold endpoint) until ``cold`` requests are
    spent, then 200."""

    class Handler(http.server.BaseHTTPRequestHandler):
        cold = 2
        seen = 0

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            Handler.seen += 1
            warm = Handler.seen > Handler.cold
            body = json.dumps({"label": "sea"} if warm else {"error": "did not answer within 28.0 s"}).encode()
            self.send_response(200 if warm else 504)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/predict", Handler
    server.shutdown()
    server.server_close()


def test_a_cold_endpoint_is_waited_for_and_one_that_never_starts_is_named(api):
    url, handler = api
    assert calls.warm_up(url, {"url": "https://images.test/a.jpg"}, pause_s=0) == "HTTP 200 after 3 requests (0 s)"
    handler.seen, handler.cold = 0, 10**6
    with pytest.raises(calls.ApiClientError, match="still answers HTTP 504 .*did not answer.* not starting"):
        calls.warm_up(url, {"url": "https://images.test/a.jpg"}, deadline_s=0.5, pause_s=0.2)


def test_notebook_06_on_aws_is_warm_before_its_checks(api, monkeypatch):
    url, handler = api
    monkeypatch.setattr(calls.time, "sleep", lambda s: None)
    api_stack = stack.start_api("aws", None, "", [], "cloudalliance", url, "https://images.test/a.jpg")
    assert handler.seen == 3 and api_stack.warmup.startswith("HTTP 200 after 3 requests")
    assert calls.call_api(api_stack.url, {"url": api_stack.image_url}).status == 200  # what the first check sees


def test_the_functions_504_says_the_endpoint_may_be_starting():
    from botocore.exceptions import ReadTimeoutError

    from cloudalliance.local.gateway import load_handler

    error = load_handler().endpoint_error(ReadTimeoutError(endpoint_url="https://runtime.sagemaker"), 28.0)
    assert error.status == 504 and error.headers == {"Retry-After": "10"}
    assert "did not answer within 28.0 s" in error.message and "Serverless Inference after idle time" in error.message
