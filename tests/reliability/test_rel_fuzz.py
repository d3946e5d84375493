"""Property-based fuzzing of the local API gateway and the local endpoint over real HTTP.

Invariant for every request (``conftest.check_reply``): an HTTP answer; never a 5xx for client input; a JSON
object that is the 200 schema or ``{"error": str}``; no traceback, no file path. Hypothesis runs a fixed number
of examples with a deadline, derandomized (the same examples every run; no example database), so a failure
reproduces with the same command; it prints the falsifying example.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rel_support import FETCH_TIMEOUT_S, check_reply, http_path, post_json, send

GATEWAY_KEYS = {"label", "confidence", "probabilities", "message"}


def fuzz_settings(examples: int):
    return settings(max_examples=examples, deadline=timedelta(seconds=FETCH_TIMEOUT_S + 8), derandomize=True,
                    database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


# --------------------------------------------------------------------------- JSON bodies

odd_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=4),  # surrogates
    st.sampled_from(["", " ", "\x00", "\u202e", "\ufeff", "𝕦𝕣𝕝", "data:,", "data:image/png;base64,",
                     "http://", "https://", "//example.com/x.jpg"]),
)
huge_ints = st.one_of(st.integers(), st.integers(min_value=10**300, max_value=10**400))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), huge_ints, st.floats(allow_nan=False, allow_infinity=False), odd_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(odd_text, inner, max_size=4)),
    max_leaves=12,
)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"url": json_values}),
    st.fixed_dictionaries({"image": json_values}),
    st.fixed_dictionaries({"image": st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())}),
    st.fixed_dictionaries({"url": json_values, "image": json_values}),
)


@pytest.mark.parametrize("examples", [pytest.param(60, id="quick"),
                                      pytest.param(300, id="full", marks=pytest.mark.slow)])
def test_gateway_json_bodies(stack, examples):
    """Random JSON (nesting, huge ints, odd unicode, lone surrogates) to POST /predict."""
    @fuzz_settings(examples)
    @given(body=bodies)
    def run(body):
        # ensure_ascii keeps lone surrogates as \\udXXX escapes, which json.loads turns back into them
        raw = json.dumps(body).encode()
        check_reply(post_json(stack.strict.endpoint_url, raw), success_keys=GATEWAY_KEYS, what=raw[:120])

    run()


SPECIAL_BODIES = {
    "deep list": b"[" * 100_000 + b"]" * 100_000,
    "deep object": b'{"url":' * 50_000 + b"1" + b"}" * 50_000,
    "huge int": b'{"url": ' + b"9" * 100_000 + b"}",
    "huge int in image": b'{"image": -' + b"1" * 5_000 + b"}",
    "NaN": b'{"url": NaN}',
    "Infinity": b'{"image": Infinity}',
    "lone surrogate url": b'{"url": "http://\\ud800.example/x.jpg"}',
    "lone surrogate key": b'{"\\udfff": 1}',
    "surrogate host": b'{"url": "http://exa\\udc80mple.com/"}',
    "nul in url": b'{"url": "http://example.com\\u0000.evil/x.jpg"}',
    "BOM": b'\xef\xbb\xbf{"url": "http://127.0.0.1:1/x.jpg"}',
    "utf-16": '{"url": "http://127.0.0.1:1/x.jpg"}'.encode("utf-16"),
    "latin-1 bytes": b'{"url": "http://caf\xe9.example/"}',
    "duplicate keys": b'{"url": 1, "url": 2}',
    "empty object": b"{}",
    "array": b"[]",
    "number": b"1e999999",
    "image null": b'{"image": null}',
    "image data url junk": b'{"image": "data:image/png;base64"}',
    "image newline base64": b'{"image": "/9j/\\n/9j/"}',
    "url list": b'{"url": ["http://example.com"]}',
    "url long": b'{"url": "http://example.com/' + b"a" * 100_000 + b'"}',
    "url long host": b'{"url": "http://' + b"a" * 300 + b'.com/"}',
    "url label 64": b'{"url": "http://' + b"a" * 64 + b'.com/"}',
    "url empty label": b'{"url": "http://a..b/"}',
    "url idna bad": b'{"url": "http://xn--/"}',
    "url idna invalid punycode": b'{"url": "http://xn--a.example/"}',
}


@pytest.mark.parametrize("name", list(SPECIAL_BODIES))
def test_gateway_special_bodies(stack, name):
    """Bodies that break naive parsers: 100k-deep nesting, 100k-digit ints, NaN, surrogates, BOM, UTF-16."""
    check_reply(post_json(stack.strict.endpoint_url, SPECIAL_BODIES[name], timeout=FETCH_TIMEOUT_S + 20),
                success_keys=GATEWAY_KEYS, what=name)


# --------------------------------------------------------------------------- raw requests

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "PROPFIND", "post"]
CONTENT_TYPES = ["application/json", "application/json; charset=utf-16", "text/plain",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "image/jpeg",
                 "application/octet-stream", "", "\u00e9/\u00e9", "application/json; charset=\u00ff"]
paths = st.one_of(
    st.sampled_from(["/predict", "/predict/", "/predict?x=1", "//predict", "/PREDICT", "/predict%2F..", "/health",
                     "/%ff", "/\u00e9\u00e8", "/predict?q=\u2603", "/[::1]", "/predict#frag", "/./predict",
                     "/../../etc/passwd", "/predict;jsessionid=1", "*", "http://127.0.0.1/predict"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters=" \r\n\t\x00#?"), max_size=30)
    .map(lambda s: "/" + s),
)


@pytest.mark.parametrize("examples", [pytest.param(60, id="quick"),
                                      pytest.param(300, id="full", marks=pytest.mark.slow)])
def test_gateway_raw_requests(stack, examples):
    """Random bytes, content types, methods and paths to the gateway."""
    @fuzz_settings(examples)
    @given(method=st.sampled_from(METHODS), path=paths, ctype=st.sampled_from(CONTENT_TYPES),
           body=st.one_of(st.binary(max_size=512), st.just("<a JSON body with a real JPEG>")))
    def run(method, path, ctype, body):
        if isinstance(body, str):  # a tag, so that a failing example prints short
            body = b'{"image": "' + base64.b64encode(stack.jpeg) + b'"}'
        headers = {"Content-Type": ctype} if ctype else {}
        r = send(stack.gateway.endpoint_url, method, http_path(path), body if method not in ("GET", "HEAD") else b"", headers)
        if method == "HEAD":
            assert 0 < r.status < 500, f"HEAD {path}: {r.status} {r.error}"
            return
        check_reply(r, success_keys=GATEWAY_KEYS, unknown_route_ok=True, what=f"{method} {path!r} {ctype!r}")

    run()


@pytest.mark.parametrize("examples", [pytest.param(60, id="quick"),
                                      pytest.param(300, id="full", marks=pytest.mark.slow)])
def test_endpoint_raw_requests(stack, examples):
    """Random bytes and content types to the endpoint's two invocation paths (and others)."""
    ep_paths = st.one_of(st.sampled_from(["/invocations", "/endpoints/reliability/invocations",
                                          "/endpoints/other/invocations", "/endpoints//invocations", "/ping",
                                          "/endpoints/\u00e9/invocations", "/invocations/"]), paths)

    @fuzz_settings(examples)
    @given(method=st.sampled_from(["POST", "GET", "PUT"]), path=ep_paths,
           ctype=st.sampled_from(["image/jpeg", "image/png", "application/x-image", "image/jpg", "IMAGE/JPEG",
                                  "image/jpeg; q=1", "text/plain", "", "application/json"]),
           body=st.one_of(st.binary(max_size=2048), st.binary(max_size=64).map(lambda b: b"\xff\xd8\xff" + b),
                          st.binary(max_size=64).map(lambda b: b"\x89PNG\r\n\x1a\n" + b)))
    def run(method, path, ctype, body):
        r = send(stack.endpoint.endpoint_url, method, http_path(path), body if method != "GET" else b"",
                 {"Content-Type": ctype} if ctype else {})
        if path == "/ping" and method == "GET":
            assert r.status == 200
            return
        check_reply(r, unknown_route_ok=True, what=f"{method} {path!r} {ctype!r} {body[:16]!r}")

    run()


@pytest.mark.parametrize("path", ["/predict\x1f", "/pr\u00e9dict", "/predict\x00", "/ /predict", "/predict\x7f"])
def test_requests_that_are_not_http(stack, path):
    """Raw control characters or UTF-8 in the request line are not HTTP (RFC 9112 section 3.2: the request-target
    is ASCII without controls); uvicorn's protocol layer answers 400 before any app code runs, in plain text,
    so here only the status is checked: a 4xx (or a closed connection), never a 5xx."""
    for base in (stack.gateway.endpoint_url, stack.endpoint.endpoint_url):
        r = send(base, "POST", path, b"{}", {"Content-Type": "application/json"})
        assert r.status == 0 or 400 <= r.status < 500, f"{base} {path!r}: HTTP {r.status} {r.body[:200]!r}"
        assert b"Traceback" not in r.body


# --------------------------------------------------------------------------- URL shapes

# every way to write a loopback, private, link-local, CGNAT or metadata address that we know of
PRIVATE_HOSTS = [
    "127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f000001", "0x7f.0.0.1", "0177.0.0.1", "017700000001",
    "0x7f.1", "127.0.0.1.", "localhost", "localhost.", "LOCALHOST", "127。0。0。1", "127．0．0．1",
    "[::1]", "[0:0:0:0:0:0:0:1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:127.0.0.1]",
    "[::127.0.0.1]", "0", "0.0.0.0", "[::]",
    "10.0.0.1", "10.255.255.254", "172.16.0.1", "172.31.255.1", "192.168.0.1", "192.168.1.1.",
    "169.254.169.254", "2852039166", "0xa9fea9fe", "0xa9.0xfe.0xa9.0xfe", "0251.0376.0251.0376", "169.254.43518",
    "[::ffff:169.254.169.254]", "[::ffff:a9fe:a9fe]", "[fd00:ec2::254]", "[fe80::1]", "[fc00::1]",
    "100.64.0.1", "100.127.255.254",  # CGNAT (RFC 6598)
    "[2002:7f00:1::]", "[2002:a9fe:a9fe::]",  # 6to4 of 127.0.0.1 / the metadata address
    "[2001:0:4136:e378:8000:63bf:80ff:fffe]",  # Teredo (client 127.0.0.1 once un-obfuscated)
    "[64:ff9b::7f00:1]", "[64:ff9b::a9fe:a9fe]", "[64:ff9b:1::a9fe:a9fe]",  # NAT64 of loopback / metadata
    "[::ffff:10.0.0.1]", "[::ffff:0:a9fe:a9fe]", "224.0.0.1", "255.255.255.255", "240.0.0.1", "198.18.0.1",
]


@pytest.mark.parametrize("host", PRIVATE_HOSTS)
def test_private_address_encodings_are_refused(stack, host):
    """The strict gateway (no allowed private hosts) refuses each encoding without connecting: 400 or 403.

    A 422 means it tried to connect (the guard let the address through and only the network stopped it).
    """
    r = post_json(stack.strict.endpoint_url, {"url": f"http://{host}/latest/meta-data/x.jpg"},
                  timeout=FETCH_TIMEOUT_S + 10)
    body = check_reply(r, success_keys=GATEWAY_KEYS, what=host)
    assert r.status in (400, 403), f"{host}: HTTP {r.status} {body}"


schemes = st.sampled_from(["http", "https", "HTTP", "HtTpS", "file", "gopher", "ftp", "dict", "ldap", "javascript",
                           "data", "jar", "", "http\u0130", "ht\ttp"])
userinfo = st.sampled_from(["", "user@", "user:pass@", "127.0.0.1@", "@", "a%40b@", "evil.com@", ":@"])
hosts = st.one_of(st.sampled_from(PRIVATE_HOSTS),
                  st.sampled_from(["example.com", "xn--nxasmq6b.com", "münchen.de", "例え.テスト", "a.b.c.d.e",
                                   "[::1%25eth0]", "[v1.x]", "[", "]", "[::ffff:127.0.0.1", "ex ample.com",
                                   "exa%6dple.com", "%31%32%37.0.0.1", "127.0.0.1%00.example.com", "…", "ß.de"]),
                  st.text(alphabet=st.characters(codec="utf-8", exclude_characters="/?#@"), max_size=20))
ports = st.sampled_from(["", ":", ":0", ":1", ":80", ":443", ":65535", ":65536", ":-1", ":abc", ":8080:80",
                         ":99999999999999999999", ":\u0661\u0662"])
url_paths = st.one_of(st.sampled_from(["", "/", "/x.jpg", "/%2e%2e/%2e%2e/etc/passwd", "/\u00e9.jpg", "/a?b=c#d",
                                       "/?" + "q" * 3000, "/%zz", "\\\\x.jpg"]),
                      st.text(alphabet=st.characters(codec="utf-8"), max_size=20).map(lambda s: "/" + s))


@pytest.mark.parametrize("examples", [pytest.param(60, id="quick"),
                                      pytest.param(300, id="full", marks=pytest.mark.slow)])
def test_gateway_url_shapes(stack, examples):
    """Random URLs (schemes, userinfo, IDNA, brackets, ports, percent-encoding, private encodings): always a
    4xx from the strict gateway, which can reach nothing (every host here is private, bogus or offline)."""
    @fuzz_settings(examples)
    @given(scheme=schemes, sep=st.sampled_from(["://", ":/", ":", "://///", ":\\\\"]), user=userinfo, host=hosts,
           port=ports, path=url_paths)
    def run(scheme, sep, user, host, port, path):
        url = f"{scheme}{sep}{user}{host}{port}{path}"
        r = post_json(stack.strict.endpoint_url, {"url": url}, timeout=FETCH_TIMEOUT_S + 10)
        body = check_reply(r, success_keys=GATEWAY_KEYS, what=repr(url))
        assert 400 <= r.status < 500, f"{url!r}: HTTP {r.status} {body}"

    run()


# --------------------------------------------------------------------------- image formats


def _images(jpeg: bytes) -> dict[str, tuple[bytes, str, set[int]]]:
    """name -> (bytes, content type for the endpoint, acceptable statuses)."""
    from PIL import Image

    base = Image.open(io.BytesIO(jpeg)).convert("RGB")

    def save(img, fmt, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        return buf.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90
    frames = [base.rotate(a) for a in (0, 90, 180)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    pal = base.convert("P")
    pal.info["transparency"] = 0
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("a.jpg", jpeg)
    ok, bad = {200}, {400, 413, 415, 422}
    return {
        "jpeg": (jpeg, "image/jpeg", ok),
        "truncated jpeg": (jpeg[: len(jpeg) // 2], "image/jpeg", ok | bad),
        "jpeg header only": (jpeg[:20], "image/jpeg", bad),
        "cmyk jpeg": (save(base.convert("CMYK"), "JPEG"), "image/jpeg", ok),
        "grayscale jpeg": (save(base.convert("L"), "JPEG"), "image/jpeg", ok),
        "progressive jpeg": (save(base, "JPEG", progressive=True), "image/jpeg", ok),
        "exif-rotated jpeg": (save(base, "JPEG", exif=exif), "image/jpeg", ok),
        "16-bit png": (save(base.convert("L").convert("I;16"), "PNG"), "image/png", ok),
        "palette+alpha png": (save(pal, "PNG"), "image/png", ok),
        "rgba png": (save(base.convert("RGBA"), "PNG"), "image/png", ok),
        "LA png": (save(base.convert("LA"), "PNG"), "image/png", ok),
        "1-bit png": (save(base.convert("1"), "PNG"), "image/png", ok),
        "animated gif": (gif.getvalue(), "application/x-image", ok),
        "bmp": (save(base, "BMP"), "application/x-image", ok),
        "webp": (save(base, "WEBP"), "application/x-image", ok),
        "1x1 png": (save(base.resize((1, 1)), "PNG"), "image/png", ok),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "image/png", bad),
        "html": (b"<!doctype html><html><body>hi</body></html>", "image/jpeg", bad),
        "zip": (zipped.getvalue(), "application/x-image", bad),
        "png as jpeg": (save(base, "PNG"), "image/jpeg", ok | bad),
        "empty": (b"", "image/jpeg", bad),
    }


def test_image_formats_endpoint_and_gateway(stack):
    """Every format straight to the endpoint and as base64 through the gateway: readable ones give 200,
    the rest a 4xx; never a 5xx."""
    failures = []
    for name, (data, ctype, allowed) in _images(stack.jpeg).items():
        r = send(stack.endpoint.endpoint_url, "POST", "/invocations", data, {"Content-Type": ctype})
        try:
            check_reply(r, what=f"endpoint {name}")
            assert r.status in allowed, f"endpoint {name}: HTTP {r.status} {r.body[:200]!r}"
        except AssertionError as exc:
            failures.append(str(exc))
        r = post_json(stack.gateway.endpoint_url, {"image": base64.b64encode(data).decode()})
        try:
            check_reply(r, success_keys=GATEWAY_KEYS, what=f"gateway {name}")
            assert r.status in allowed, f"gateway {name}: HTTP {r.status} {r.body[:200]!r}"
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n".join(failures)
