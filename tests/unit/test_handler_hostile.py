"""The Lambda handler under hostile input: every client mistake is a short JSON 4xx, never a 5xx.

Each reproducer below raised an uncaught exception (a 500) in the first version of the handler; real photo
URLs with non-ASCII paths are fetched; transition forms of IPv6 that reach private IPv4 addresses are refused;
base64 comes wrapped, URL-safe, unpadded or as a data URI. The endpoint is stubbed (``predict``) except where
noted; URL fetches go to real servers on 127.0.0.1.
"""

from __future__ import annotations

import base64
import http.server
import importlib
import json
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cloudalliance.data import synthetic  # noqa: E402
from cloudalliance.local.gateway import LocalContext, http_api_event, load_handler  # noqa: E402

HANDLER = Path(__file__).resolve().parents[2] / "lambda" / "src" / "handler.py"


@pytest.fixture(scope="module")
def jpeg():
    return synthetic.encode_jpeg(synthetic.render("sea", 1), 1)


@pytest.fixture
def handler(monkeypatch):
    monkeypatch.setenv("ENDPOINT_NAME", "test-endpoint")
    monkeypatch.setenv("FETCH_TIMEOUT_S", "2")
    monkeypatch.delenv("MAX_IMAGE_BYTES", raising=False)
    monkeypatch.delenv("ALLOWED_PRIVATE_HOSTS", raising=False)
    monkeypatch.delenv("SAGEMAKER_RUNTIME_URL", raising=False)
    module = load_handler(HANDLER)
    calls = []

    def fake_predict(image, kind, settings):
        calls.append(image)
        return {"label": "sea", "confidence": 0.9, "probabilities": {"sea": 0.9}}

    monkeypatch.setattr(module, "predict", fake_predict)
    module.calls = calls
    return module


def call_raw(module, raw: bytes, content_type="application/json", context=None):
    event = http_api_event("POST", "/predict", {"content-type": content_type}, raw)
    reply = module.lambda_handler(event, context if context is not None else LocalContext())
    return reply["statusCode"], json.loads(reply["body"])


def call(module, body, **kwargs):
    return call_raw(module, json.dumps(body).encode(), **kwargs)  # ensure_ascii: lone surrogates travel as \udcxx


# --------------------------------------------------------------------------- reproducers: never a 5xx

DEEP = b"[" * 990 + b"]" * 990
REPRODUCERS = [
    ("data-uri-empty", {"image": "data:"}, 400),
    ("data-uri-no-comma", {"image": "data:image/png;base64"}, 400),
    ("nested-990", DEEP, 400),
    ("nested-100000", b"[" * 100_000 + b"]" * 100_000, 400),
    ("nested-object", b'{"a":' * 5000 + b"1" + b"}" * 5000, 400),
    ("5000-digits", b'{"image": ' + b"9" * 5000 + b"}", 400),
    ("empty-label", {"url": "http://a..b/"}, 400),
    ("64-char-label", {"url": "http://" + "a" * 64 + "/"}, 400),
    ("leading-dot", {"url": "http://.x/"}, 400),
    ("lone-surrogate-host", {"url": "http://\udcff.example.com/"}, 400),
    ("ideographic-dots", {"url": "http://169.254.169.254.\u3002/"}, 400),
    ("open-bracket", {"url": "http://[::1/"}, 400),
    ("bad-bracket", {"url": "http://[zz]/"}, 400),
    ("ipvfuture", {"url": "http://[v1.x]/"}, 400),
    ("lone-surrogate-path", {"url": "http://example.com/\udcff.jpg"}, 400),
    ("circled-loopback", {"url": "http://\u2460\u2461\u2466.0.0.1/"}, 403),
    ("url-not-text", {"url": ["http://example.com"]}, 400),
    ("port-too-big", {"url": "http://example.com:99999/a.jpg"}, 400),
    ("port-zero", {"url": "http://example.com:0/a.jpg"}, 400),
    ("space-in-host", {"url": "http://exa mple.com/a.jpg"}, 400),
    ("percent-in-host", {"url": "http://ex%41mple.com/a.jpg"}, 400),
    ("image-not-base64", {"image": "***"}, 400),
    ("image-bad-length", {"image": "abcde"}, 400),
    ("image-empty", {"image": ""}, 400),
    ("not-utf8-body", b"\xff\xfe{", 400),
]


@pytest.mark.parametrize("name, body, status", REPRODUCERS, ids=[r[0] for r in REPRODUCERS])
def test_hostile_input_gets_a_short_4xx(handler, name, body, status):
    got, reply = call_raw(handler, body) if isinstance(body, bytes) else call(handler, body)
    assert got == status and got < 500, reply
    assert set(reply) == {"error"} and isinstance(reply["error"], str) and reply["error"]
    assert "Traceback" not in reply["error"] and "/" not in reply["error"], reply["error"]
    assert handler.calls == []


def test_circled_digits_are_checked_as_the_loopback_they_resolve_to(handler):
    status, reply = call(handler, {"url": "http://\u2460\u2461\u2466.0.0.1:9/a.jpg"})
    assert status == 403 and "127.0.0.1" in reply["error"]


# --------------------------------------------------------------------------- non-ASCII URLs are fetched


class _Recorder(http.server.BaseHTTPRequestHandler):
    image = b""
    seen: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        self.seen.append((self.path, self.headers.get("Host")))
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(self.image)))
        self.end_headers()
        self.wfile.write(self.image)


@pytest.fixture
def recorder(monkeypatch, jpeg):
    seen: list = []
    cls = type("Rec", (_Recorder,), {"image": jpeg, "seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), cls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("ALLOWED_PRIVATE_HOSTS", "127.0.0.1")
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("path, sent", [
    ("/café.jpg", "/caf%C3%A9.jpg"),
    ("/photos/東京 タワー.jpg?q=é&size=big", "/photos/%E6%9D%B1%E4%BA%AC%20%E3%82%BF%E3%83%AF%E3%83%BC.jpg"
                                            "?q=%C3%A9&size=big"),
    ("/already%20encoded.jpg?a=%C3%A9", "/already%20encoded.jpg?a=%C3%A9"),
    ("/sea.jpg#fragment", "/sea.jpg"),
])
def test_non_ascii_paths_and_queries_are_percent_encoded_and_fetched(handler, recorder, path, sent):
    base, seen = recorder
    status, reply = call(handler, {"url": base + path})
    assert status == 200, reply
    assert seen == [(sent, base.removeprefix("http://"))]
    assert len(handler.calls) == 1


# --------------------------------------------------------------------------- the address guard


@pytest.mark.parametrize("url", [
    "http://100.100.100.200/latest/meta-data/",          # Alibaba Cloud metadata, carrier-grade NAT 100.64/10
    "http://100.64.0.1/a.jpg",
    "http://198.18.0.1/a.jpg",                            # benchmarking 198.18/15
    "http://192.0.0.9/a.jpg",                             # IETF protocol assignments 192.0.0/24
    "http://[::ffff:169.254.169.254]/",                   # IPv4-mapped
    "http://[::ffff:a9fe:a9fe]/",
    "http://[::169.254.169.254]/",                        # IPv4-compatible
    "http://[::a00:1]/",
    "http://[2002:a9fe:a9fe::1]/",                        # 6to4 of 169.254.169.254
    "http://[2002:7f00:1::]/",                            # 6to4 of 127.0.0.1
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",     # Teredo
    "http://[64:ff9b::a9fe:a9fe]/",                       # NAT64 of 169.254.169.254
    "http://[64:ff9b::7f00:1]/",
    "http://[64:ff9b:1::a9fe:a9fe]/",                     # local-use NAT64
    "http://[fd00::1]/", "http://[fec0::1]/", "http://[100::1]/",
    "http://[::ffff:0:a9fe:a9fe]/",                       # IPv4-translated (SIIT)
    "http://[fd00:ec2::254]/",                            # the EC2 metadata service over IPv6
    "http://2130706433/a.jpg",                            # 127.0.0.1 as one number (resolved, not looked up)
    "http://0x7f.1/a.jpg",
])
def test_non_public_addresses_are_refused(handler, url):
    status, reply = call(handler, {"url": url})
    assert status == 403 and "refused" in reply["error"], reply
    assert handler.calls == []


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("1.1.1.1", True), ("2606:4700:4700::1111", True),
    ("::ffff:8.8.8.8", True), ("64:ff9b::808:808", True),
    ("100.100.100.200", False), ("169.254.169.254", False), ("::ffff:10.0.0.1", False),
    ("2002:a9fe:a9fe::", False), ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False), ("::8.8.8.8", False),
    ("64:ff9b::a00:1", False), ("64:ff9b:1::808:808", False), ("fe80::1", False), ("ff02::1", False),
    ("0.0.0.0", False), ("::", False), ("255.255.255.255", False), ("::ffff:0:a9fe:a9fe", False),
    ("4000::1", False), ("2a00:1450:4001::200e", True),
])
def test_is_public_offline(handler, address, public):
    import ipaddress

    assert importlib.import_module("url_fetch").is_public(ipaddress.ip_address(address)) is public


def test_allowed_private_hosts_still_allow_local_tests(handler, monkeypatch):
    monkeypatch.setenv("ALLOWED_PRIVATE_HOSTS", "100.64.0.1")
    status, reply = call(handler, {"url": "http://100.64.0.1:9/a.jpg"}, context=LocalContext(timeout_s=2.5))
    assert status == 422, reply  # allowed, so it was tried (and nothing answers there)


# --------------------------------------------------------------------------- base64


@pytest.mark.parametrize("encode", [
    pytest.param(lambda b: base64.b64encode(b).decode(), id="standard"),
    pytest.param(lambda b: base64.encodebytes(b).decode(), id="gnu-wrapped-76"),
    pytest.param(lambda b: base64.encodebytes(b).decode().replace("\n", "\r\n"), id="crlf-wrapped"),
    pytest.param(lambda b: base64.urlsafe_b64encode(b).decode(), id="urlsafe"),
    pytest.param(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="), id="urlsafe-unpadded"),
    pytest.param(lambda b: base64.b64encode(b).decode().rstrip("="), id="unpadded"),
    pytest.param(lambda b: "data:image/jpeg;base64," + base64.b64encode(b).decode(), id="data-uri"),
    pytest.param(lambda b: "DATA:image/jpeg;name=x.jpg;BASE64," + base64.encodebytes(b).decode(), id="data-uri-2"),
])
def test_base64_variants_are_accepted(handler, jpeg, encode):
    image = jpeg + b"\xfb\xff"  # ends in bytes whose base64 uses + and / (or - and _), and needs padding
    status, reply = call(handler, {"image": encode(image)})
    assert status == 200, reply
    assert handler.calls == [image]


def test_base64_is_capped_to_fit_lambdas_request_limit(handler, monkeypatch, jpeg):
    monkeypatch.setenv("MAX_IMAGE_BYTES", str(8 * 1024 * 1024))  # a URL may be larger; base64 may not
    big = jpeg + b"\0" * (handler.guards.MAX_BASE64_IMAGE_BYTES + 1 - len(jpeg))
    status, reply = call(handler, {"image": base64.b64encode(big).decode()})
    assert status == 413 and "URL" in reply["error"], reply
    fits = big[:-1]
    assert call(handler, {"image": base64.b64encode(fits).decode()})[0] == 200


# --------------------------------------------------------------------------- bodies


@pytest.mark.parametrize("content_type", [
    "application/x-www-form-urlencoded",  # curl -d without -H: API Gateway base64-encodes the body
    "text/plain", "application/octet-stream", "image/jpeg", "",
])
def test_json_body_under_any_content_type(handler, jpeg, content_type):
    raw = json.dumps({"image": base64.b64encode(jpeg).decode()}).encode()
    event = http_api_event("POST", "/predict", {"content-type": content_type}, raw)
    if content_type == "application/x-www-form-urlencoded":
        assert event["isBase64Encoded"] is True
    event_text = dict(event, body=raw.decode(), isBase64Encoded=False)
    for ev in (event, event_text):
        reply = handler.lambda_handler(ev, LocalContext())
        assert reply["statusCode"] == 200, reply


def test_without_a_lambda_context(handler, jpeg):
    event = http_api_event("POST", "/predict", {"content-type": "application/json"},
                           json.dumps({"image": base64.b64encode(jpeg).decode()}).encode())
    assert handler.lambda_handler(event, None)["statusCode"] == 200
    budget = handler.guards.request_budget(None)
    assert budget.seconds == pytest.approx(handler.guards.DEFAULT_REMAINING_S - handler.guards.SAFETY_MARGIN_S)
    assert handler.guards.request_budget(LocalContext(timeout_s=5.0)).seconds == pytest.approx(4.0, abs=0.05)


def test_a_backend_that_returns_no_object_is_a_502(handler, jpeg, monkeypatch):
    monkeypatch.setattr(handler, "predict", lambda image, kind, settings: ["sea"])
    status, reply = call(handler, {"image": base64.b64encode(jpeg).decode()})
    assert status == 502 and set(reply) == {"error"}


def test_make_handler_gives_another_backend_the_same_request_side(handler, jpeg):
    entry = handler.make_handler(lambda image, kind, settings: {"label": "street", "confidence": 0.5})
    ok = http_api_event("POST", "/predict", {}, json.dumps({"image": base64.b64encode(jpeg).decode()}).encode())
    for context in (LocalContext(), None):
        reply = entry(ok, context)
        assert reply["statusCode"] == 200 and json.loads(reply["body"])["message"] == "Image predicted: street"
    bad = http_api_event("POST", "/predict", {}, json.dumps({"url": "http://[::1/"}).encode())
    assert entry(bad, LocalContext())["statusCode"] == 400


def test_handle_takes_any_backend(handler, jpeg):
    seen = []

    def backend(image, kind, settings):
        seen.append((kind, settings["budget"].remaining() > 0))
        return {"label": "glacier", "confidence": 1.0, "probabilities": {"glacier": 1.0}}

    event = http_api_event("POST", "/predict", {}, json.dumps({"image": base64.b64encode(jpeg).decode()}).encode())
    reply = handler.handle(event, LocalContext(), backend)
    assert reply["statusCode"] == 200 and json.loads(reply["body"])["label"] == "glacier"
    assert seen == [("image/jpeg", True)]


# --------------------------------------------------------------------------- seeded fuzzing, offline


TRICKY = ("abcxyzAZ09-._~:/?#[]@!$&'()*+,;=% \t\r\n\\\"<>^`{|}\x00\x7f"
          "\u2460\u3002\uff0e\uff61\uff21\u00e9\u0301\u200b\u202e\ufeff\udc80\ud800\U0001f600xn--")


def _random_text(rng, n):
    return "".join(rng.choice(TRICKY) for _ in range(n))


def test_fuzzed_urls_parse_or_get_a_4xx(handler):
    """3,000 seeded random URLs through the URL parser (no network): a Target or an ApiError below 500."""
    import random

    rng = random.Random(20261125)
    prefixes = ["http://", "https://", "http://[", "http://a.b:", "http://127.0.0.1/", "HTTP://", ""]
    for _ in range(3000):
        url = rng.choice(prefixes) + _random_text(rng, rng.randint(0, 40))
        try:
            target = importlib.import_module("url_fetch").Target(url)
        except handler.guards.ApiError as exc:
            assert 400 <= exc.status < 500, (url, exc.status)
            continue
        target.path.encode("ascii")  # what http.client will send must be ASCII
        target.host_header.encode("ascii")
        assert target.scheme in ("http", "https") and 0 < target.port < 65536


def test_fuzzed_bodies_and_images_get_a_4xx(handler):
    """2,000 seeded random bodies and "image" strings through the full handler: never a 5xx."""
    import random

    rng = random.Random(7)
    for i in range(2000):
        if i % 2:
            body = json.dumps({"image": _random_text(rng, rng.randint(0, 60))}).encode()
        else:
            body = bytes(rng.choice(b'{}[]":,0123456789.eE-+ \\utrnfalsimage') for _ in range(rng.randint(0, 60)))
        status, reply = call_raw(handler, body)
        assert status < 500 and set(reply) == {"error"} or status == 200, (body, status, reply)


@pytest.mark.parametrize("url, host, host_header, path", [
    ("http://Bücher.example:8080/x y", "xn--bcher-kva.example", "xn--bcher-kva.example:8080", "/x%20y"),
    ("https://ÉCOLE.fr/été.jpg?q=né", "xn--cole-9oa.fr", "xn--cole-9oa.fr", "/%C3%A9t%C3%A9.jpg?q=n%C3%A9"),
    ("http://[::1]:8080/a", "::1", "[::1]:8080", "/a"),
    ("http://example.com.", "example.com", "example.com", "/"),
    ("http://\u2460\u2461\u2466.0.0.1/", "127.0.0.1", "127.0.0.1", "/"),
])
def test_targets_are_ascii_what_is_checked_is_what_is_sent(handler, url, host, host_header, path):
    target = importlib.import_module("url_fetch").Target(url)
    assert (target.host, target.host_header, target.path) == (host, host_header, path)


def test_raw_line_breaks_in_the_base64_string_are_taken(handler, jpeg):
    """`base64 FILE` wraps at 76 columns; pasted between quotes, the JSON string holds raw newlines, which
    json.loads refuses unless strict=False."""
    wrapped = base64.encodebytes(jpeg).decode()  # 76-column lines, as GNU base64 writes them
    assert "\n" in wrapped.strip()
    raw = ('{"image": "' + wrapped + '"}').encode()
    with pytest.raises(ValueError):
        json.loads(raw)  # what the handler parsed with before
    status, reply = call_raw(handler, raw)
    assert status == 200, reply


def test_a_tiff_is_an_image_as_the_model_reads_it(handler):
    import io

    from PIL import Image

    from cloudalliance.presets import IMAGE_FORMATS

    assert "TIFF" in IMAGE_FORMATS
    for byte_order in ("<", ">"):
        buf = io.BytesIO()
        Image.new("RGB", (32, 24), (10, 120, 30)).save(buf, "TIFF", tiffinfo={}, **(
            {} if byte_order == "<" else {"big_endian": True}))
        data = buf.getvalue()
        assert handler.guards.sniff_image(data) == "image/tiff", data[:4]
        status, reply = call(handler, {"image": base64.b64encode(data).decode()})
        assert status == 200, reply


def test_a_byte_order_mark_is_taken_and_a_compressed_body_is_a_415(handler, jpeg):
    body = json.dumps({"image": base64.b64encode(jpeg).decode()})
    status, reply = call_raw(handler, ("\ufeff" + body).encode("utf-8"))  # a JSON file saved with a BOM
    assert status == 200, reply
    import gzip

    event = http_api_event("POST", "/predict", {"content-type": "application/json", "Content-Encoding": "gzip"},
                           gzip.compress(body.encode()))
    reply = handler.lambda_handler(event, LocalContext())
    assert reply["statusCode"] == 415 and "Content-Encoding gzip" in json.loads(reply["body"])["error"], reply
