"""The Lambda handler's parsing and guards, against a real local HTTP server (endpoint stubbed)."""

import base64
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from handler_support import ImageServer, routes_for  # noqa: E402

from cloudalliance.data import synthetic  # noqa: E402
from cloudalliance.local.gateway import LocalContext, http_api_event, load_handler  # noqa: E402

MAX = 200_000


@pytest.fixture(scope="module")
def jpeg():
    return synthetic.encode_jpeg(synthetic.render("sea", 1), 1)


@pytest.fixture
def handler(monkeypatch):
    monkeypatch.setenv("ENDPOINT_NAME", "test-endpoint")
    monkeypatch.setenv("MAX_IMAGE_BYTES", str(MAX))
    monkeypatch.setenv("FETCH_TIMEOUT_S", "1")
    monkeypatch.delenv("ALLOWED_PRIVATE_HOSTS", raising=False)
    module = load_handler()
    calls = []

    def fake_predict(image, kind, settings):
        calls.append((len(image), kind))
        return {"label": "sea", "confidence": 0.9, "probabilities": {"sea": 0.9, "glacier": 0.1}}

    monkeypatch.setattr(module, "predict", fake_predict)
    module.calls = calls
    return module


def call(module, body, method="POST", b64=False):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    event = http_api_event(method, "/predict", {"content-type": "application/json"}, raw)
    if b64:
        event["body"], event["isBase64Encoded"] = base64.b64encode(raw).decode(), True
    reply = module.lambda_handler(event, LocalContext())
    return reply["statusCode"], json.loads(reply["body"])


def test_base64_image_is_predicted(handler, jpeg):
    status, body = call(handler, {"image": base64.b64encode(jpeg).decode()})
    assert status == 200
    assert body == {"label": "sea", "confidence": 0.9, "probabilities": {"sea": 0.9, "glacier": 0.1},
                    "message": "Image predicted: sea"}
    assert handler.calls == [(len(jpeg), "image/jpeg")]
    assert call(handler, {"image": base64.b64encode(jpeg).decode()}, b64=True)[0] == 200


@pytest.mark.parametrize("body, status, fragment", [
    (b"{not json", 400, "Malformed JSON"),
    (b"", 400, "Send a JSON body"),
    (b"[1, 2]", 400, "must be an object"),
    ({"picture": "x"}, 400, 'Send {"url"'),
    ({"image": 42}, 400, "base64 string"),
    ({"image": "***"}, 400, "not valid base64"),
    ({"image": base64.b64encode(b"plain text").decode()}, 415, "not an image"),
    ({"image": base64.b64encode(b"\xff\xd8\xff" + b"0" * MAX).decode()}, 413, "larger than"),
    ({"url": "x", "image": "y"}, 400, "not both"),
    ({"url": 5}, 400, "must be a string"),
    ({"url": "ftp://example.com/a.jpg"}, 400, "Only http and https"),
    ({"url": "file:///etc/passwd"}, 400, "Only http and https"),
    ({"url": "http://user:pw@example.com/a.jpg"}, 400, "credentials"),
    ({"url": "http://"}, 400, "no host"),
])
def test_bad_input_gets_a_short_4xx(handler, body, status, fragment):
    got, reply = call(handler, body)
    assert got == status and fragment in reply["error"]
    assert set(reply) == {"error"} and "Traceback" not in reply["error"]
    assert handler.calls == []


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/a.jpg", "http://localhost/a.jpg", "http://10.0.0.1/a.jpg", "http://192.168.1.20/a.jpg",
    "http://172.16.5.4/a.jpg", "http://169.254.169.254/latest/meta-data/", "http://[::1]/a.jpg",
    "http://[::ffff:127.0.0.1]/a.jpg", "http://0.0.0.0/a.jpg", "http://[fe80::1]/a.jpg", "http://224.0.0.1/a.jpg",
])
def test_private_loopback_and_link_local_urls_are_refused(handler, url):
    status, reply = call(handler, {"url": url})
    assert status == 403 and "refused" in reply["error"]


def test_method_other_than_post(handler):
    assert call(handler, {"url": "http://example.com"}, method="GET")[0] == 405


@pytest.fixture
def served(monkeypatch, jpeg):
    with ImageServer(routes_for(jpeg, MAX)) as server:
        monkeypatch.setenv("ALLOWED_PRIVATE_HOSTS", "127.0.0.1")
        yield server


@pytest.mark.parametrize("path, status, fragment", [
    ("/sea.jpg", 200, None),
    ("/octet.jpg", 200, None),
    ("/to-sea", 200, None),
    ("/big.jpg", 413, "larger than"),
    ("/page.html", 415, "text/html"),
    ("/fake.jpg", 415, "not an image"),
    ("/slow.jpg", 422, "longer than"),
    ("/gone.jpg", 422, "HTTP 404"),
    ("/to-private", 403, "refused"),
    ("/to-metadata", 403, "refused"),
    ("/loop", 422, "redirected more than"),
])
def test_url_fetching_with_guards(handler, served, path, status, fragment):
    got, reply = call(handler, {"url": served.url + path})
    assert got == status, reply
    if fragment:
        assert fragment in reply["error"]
    else:
        assert reply["message"] == "Image predicted: sea"


def test_unresolvable_and_closed_hosts(handler, monkeypatch):
    monkeypatch.setenv("ALLOWED_PRIVATE_HOSTS", "127.0.0.1")
    from cloudalliance.local.services import free_port

    assert call(handler, {"url": "http://no-such-host.invalid/a.jpg"})[0] == 422
    status, reply = call(handler, {"url": f"http://127.0.0.1:{free_port()}/a.jpg"})
    assert status == 422 and "could not be fetched" in reply["error"]
