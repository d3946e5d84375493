"""The guards around the API's Lambda function: what keeps it standing under hostile traffic.

A learner may skip this module. ``handler.py`` is the lesson (route, parse, fetch, predict, answer); this is the
machinery that lets it take any request from the internet without a 500, a hang or a request to a private
address: the deadline budget, the JSON body parser, base64 and image sniffing, and their limits; the URL fetch
(IDNA host, public addresses only after every redirect, a connection pinned to the checked address, a watchdog on
the whole fetch) is ``url_fetch.py`` beside it. Every refusal is an :class:`ApiError` with the HTTP status and the short
message the client gets; ``lambda/README.md`` ("What the handler accepts and refuses", "Deadlines") says why
each limit is what it is.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time

MAX_REDIRECTS = 3
MAX_URL_CHARS = 2048
MAX_REQUEST_BYTES = 8 * 1024 * 1024
# Lambda's synchronous invocation payload is at most 6 MB (request and response;
# https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html). Base64 grows data by 4/3,
# so 4 MiB decoded is 5.33 MiB encoded, which leaves room for the JSON and the event around it.
MAX_BASE64_IMAGE_BYTES = 4 * 1024 * 1024
MAX_JSON_NUMBER_DIGITS = 100
# The function's timeout is 29 s (template.yaml); answer at least this long before the context runs out.
SAFETY_MARGIN_S = 1.0
DEFAULT_REMAINING_S = 29.0  # when there is no Lambda context to ask
# the model's presets.IMAGE_FORMATS reads all of these, as the endpoint does (TIFF little- and big-endian)
IMAGE_SIGNATURES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF87a", "image/gif"),
                    (b"GIF89a", "image/gif"), (b"BM", "image/bmp"), (b"II*\x00", "image/tiff"), (b"MM\x00*", "image/tiff"))
USAGE = 'Send {"url": "https://..."} or {"image": "<base64>"}'


class ApiError(Exception):
    """A refusal: the HTTP status, the short message the client gets as ``{"error": ...}``, extra headers."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Budget:
    """A deadline on the monotonic clock: ``remaining()`` seconds are left, never negative."""

    def __init__(self, seconds: float):
        self.seconds = max(0.0, seconds)
        self.at = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def within(self, seconds: float) -> "Budget":
        """A budget of at most ``seconds`` that ends no later than this one."""
        return Budget(min(seconds, self.remaining()))


def request_budget(context) -> Budget:
    """What the whole request may take: the context's remaining time less the safety margin (29 s without one)."""
    remaining_s = DEFAULT_REMAINING_S
    getter = getattr(context, "get_remaining_time_in_millis", None)
    if callable(getter):
        try:
            remaining_s = float(getter()) / 1000.0
        except (TypeError, ValueError):
            pass
    return Budget(remaining_s - SAFETY_MARGIN_S)


def call_within(budget: Budget, fn, *args):
    """``fn(*args)`` in a daemon thread; its result, or ``TimeoutError`` when the budget ends first.

    For calls that a socket timeout cannot bound (getaddrinfo, a server that trickles): the caller gets its
    answer at the deadline; the abandoned thread ends with its own (bounded) timeouts.
    """
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(budget.remaining())
    if worker.is_alive():
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    return box["value"]


def _json_int(text: str) -> int:
    # Python refuses int() of more than 4,300 digits with a ValueError (sys.set_int_max_str_digits); refuse earlier.
    if len(text.lstrip("-")) > MAX_JSON_NUMBER_DIGITS:
        raise ApiError(400, f"A number in the JSON has more than {MAX_JSON_NUMBER_DIGITS} digits")
    return int(text)


def parse_body(event: dict) -> dict:
    """The JSON object in the body, whatever its content type (curl -d sends form-encoded JSON, base64 from AWS)."""
    body = event.get("body")
    if body is None or body == "":
        raise ApiError(400, 'Send a JSON body: {"url": "https://..."} or {"image": "<base64>"}')
    if not isinstance(body, str):
        raise ApiError(400, "The body is not text")
    given = event.get("headers")
    headers = {str(k).lower(): str(v) for k, v in given.items() if v is not None} if isinstance(given, dict) else {}
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # API Gateway hands the body over as sent; a compressed body is bytes, not JSON
        raise ApiError(415, f"Content-Encoding {encoding} is not supported: send the JSON uncompressed")
    if len(body) > MAX_REQUEST_BYTES * 4 // 3 + 4:
        raise ApiError(413, f"The request is larger than {MAX_REQUEST_BYTES} bytes")
    if event.get("isBase64Encoded"):
        # API Gateway base64-encodes bodies it does not take for text (e.g. application/x-www-form-urlencoded)
        # https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-develop-integrations-lambda.html
        try:
            body = base64.b64decode(body, validate=False).decode("utf-8")
        except (binascii.Error, ValueError):
            raise ApiError(400, "The body is not UTF-8 JSON") from None
    if len(body) > MAX_REQUEST_BYTES:
        raise ApiError(413, f"The request is larger than {MAX_REQUEST_BYTES} bytes")
    body = body.removeprefix("\ufeff")  # a byte-order mark, as editors on Windows save JSON files (curl -d @file)
    try:
        # strict=False: a string may hold raw line breaks, as `base64 FILE` (76-column lines) pasted into JSON does
        data = json.loads(body, parse_int=_json_int, strict=False)
    except RecursionError:
        raise ApiError(400, "The JSON is nested too deeply") from None
    except (ValueError, TypeError):  # JSONDecodeError is a ValueError
        raise ApiError(400, 'Malformed JSON; send {"url": "https://..."} or {"image": "<base64>"}') from None
    if not isinstance(data, dict):
        raise ApiError(400, 'The JSON body must be an object with "url" or "image"')
    return data


def sniff_image(data: bytes) -> str:
    """The image type from the first bytes, or a 415."""
    for signature, kind in IMAGE_SIGNATURES:
        if data.startswith(signature):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise ApiError(415, "That is not an image (JPEG, PNG, GIF, BMP, WebP or TIFF)")


_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")
_DATA_URI = re.compile(r"data:[^,;]*(?:;[^,;]*)*;base64,", re.IGNORECASE)


def decode_image(text: str, max_bytes: int) -> bytes:
    """Base64 (standard or URL-safe, padded or not, wrapped or not, or a data: URI) to bytes, capped."""
    if text[:5].lower() == "data:":
        match = _DATA_URI.match(text[:256])
        if not match:
            raise ApiError(400, '"image" is a data URI without ";base64," and data')
        text = text[match.end():]
    limit = min(max_bytes, MAX_BASE64_IMAGE_BYTES)
    # Line breaks (GNU base64 wraps at 76) and other white space are not data; cap before any copy of a huge string.
    if len(text) > (limit + 2) // 3 * 4 * 80 // 76 + 16:
        raise _too_big_for_base64(limit)
    compact = "".join(text.split()).translate(_URLSAFE).rstrip("=")
    if not compact:
        raise ApiError(400, '"image" is empty')
    if _NOT_BASE64.search(compact) or len(compact) % 4 == 1:
        raise ApiError(400, '"image" is not valid base64')
    if len(compact) * 3 // 4 > limit:
        raise _too_big_for_base64(limit)
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, '"image" is not valid base64') from None


_URLSAFE = str.maketrans("-_", "+/")


def _too_big_for_base64(limit: int) -> ApiError:
    return ApiError(413, f"The image is larger than {limit} bytes, the most a base64 request can carry; "
                         "send its URL instead")


def image_from_request(data: dict, settings: dict, budget: Budget | None = None) -> bytes:
    if "url" in data and "image" in data:
        raise ApiError(400, 'Send either "url" or "image", not both')
    if "url" in data:
        # imported here, on the first URL request: http.client and ssl are about 17 ms of a cold start that a
        # base64 request never needs (docs/measurements.md, "Next to the bare library")
        from url_fetch import fetch_url

        return fetch_url(data["url"], settings, budget)
    if "image" in data:
        if not isinstance(data["image"], str):
            raise ApiError(400, '"image" must be a base64 string')
        return decode_image(data["image"], settings["max_bytes"])
    raise ApiError(400, USAGE)
