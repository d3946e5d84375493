"""The API's Lambda function: an image URL or base64 image in, the predicted scene class out.

API Gateway HTTP API (payload format 2.0) calls it with
``POST /predict`` and a JSON body, either ``{"url": "https://..."}`` or
``{"image": "<base64>"}``. It fetches the URL itself (with guards), sends the
bytes to the SageMaker endpoint, and answers::

    200 {"label": "sea", "confidence": 0.97, "probabilities": {...}, "message": "Image predicted: sea"}

Bad input gets a 4xx with ``{"error": "<short reason>"}``; endpoint trouble a
502 or 503. Never a traceback.

Environment:
  ENDPOINT_NAME           the SageMaker endpoint (required)
  SAGEMAKER_RUNTIME_URL   a local endpoint's URL (local course only; empty on AWS)
  ALLOWED_PRIVATE_HOSTS   hosts or IPs that may be private/loopback (local tests only; empty on AWS)
  MAX_IMAGE_BYTES         default 5 MiB
  FETCH_TIMEOUT_S         default 5
"""

from __future__ import annotations

import base64
import binascii
import http.client
import ipaddress
import json
import os
import socket
import ssl
import time
import urllib.parse

from aws_lambda_powertools import Logger

logger = Logger(service="cloudalliance-predict")

MAX_REDIRECTS = 3
MAX_REQUEST_BYTES = 8 * 1024 * 1024
IMAGE_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)
ENDPOINT_TYPES = {"image/jpeg": "image/jpeg", "image/png": "image/png"}  # others go as application/x-image


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _settings() -> dict:
    return {
        "endpoint": os.environ.get("ENDPOINT_NAME", ""),
        "runtime_url": os.environ.get("SAGEMAKER_RUNTIME_URL", "") or None,
        "allowed": {h.strip().lower() for h in os.environ.get("ALLOWED_PRIVATE_HOSTS", "").split(",") if h.strip()},
        "max_bytes": int(os.environ.get("MAX_IMAGE_BYTES", str(5 * 1024 * 1024))),
        "timeout": float(os.environ.get("FETCH_TIMEOUT_S", "5")),
    }


def response(status: int, body: dict) -> dict:
    return {"statusCode": status, "headers": {"content-type": "application/json"}, "body": json.dumps(body)}


# --------------------------------------------------------------------------- request parsing


def parse_body(event: dict) -> dict:
    body = event.get("body")
    if body is None or body == "":
        raise ApiError(400, 'Send a JSON body: {"url": "https://..."} or {"image": "<base64>"}')
    if event.get("isBase64Encoded"):
        try:
            body = base64.b64decode(body, validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError(400, "The body is not UTF-8 JSON") from None
    if len(body) > MAX_REQUEST_BYTES:
        raise ApiError(413, f"The request is larger than {MAX_REQUEST_BYTES} bytes")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, TypeError):
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
    raise ApiError(415, "That is not an image (JPEG, PNG, GIF, BMP or WebP)")


# --------------------------------------------------------------------------- URL fetching with guards


def _check_address(host: str, ip: str, allowed: set[str]) -> None:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    risky = (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast or addr.is_reserved
             or addr.is_unspecified)
    if risky and host.lower() not in allowed and str(addr) not in allowed:
        raise ApiError(403, f"URLs that point to private, loopback or link-local addresses are refused ({host})")


def _resolve(host: str, port: int, allowed: set[str]) -> str:
    """Resolve ``host`` and check every address; return the one to connect to (no second lookup)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise ApiError(422, f"The URL's host {host!r} does not resolve") from None
    addresses = [info[4][0] for info in infos]
    for ip in addresses:
        _check_address(host, ip, allowed)
    return addresses[0]


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address resolved and checked beforehand, with SNI and certificate checks for the host."""

    def __init__(self, host: str, ip: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def fetch_url(url: str, settings: dict) -> bytes:
    """GET an image with guards: http(s) only, no private addresses (also after redirects), size and time caps."""
    deadline = time.monotonic() + settings["timeout"]
    for _ in range(MAX_REDIRECTS + 1):
        if not isinstance(url, str) or len(url) > 2048:
            raise ApiError(400, '"url" must be a string of at most 2048 characters')
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ApiError(400, f"Only http and https URLs are fetched, not {parts.scheme or 'no scheme'!r}")
        if not parts.hostname:
            raise ApiError(400, "The URL has no host")
        if parts.username or parts.password:
            raise ApiError(400, "URLs with credentials are refused")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ApiError(400, "The URL's port is not valid") from None
        ip = _resolve(parts.hostname, port, settings["allowed"])
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ApiError(422, f"Fetching the URL took longer than {settings['timeout']:.0f} s")
        if parts.scheme == "https":
            conn: http.client.HTTPConnection = _PinnedHTTPSConnection(parts.hostname, ip, port, remaining)
        else:
            conn = http.client.HTTPConnection(ip, port, timeout=remaining)
        path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        try:
            conn.request("GET", path, headers={"Host": parts.netloc.rsplit("@", 1)[-1], "User-Agent": "cloudalliance/1",
                                               "Accept": "image/*"})
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                if not location:
                    raise ApiError(422, "The URL redirected without a Location")
                url = urllib.parse.urljoin(url, location)
                continue
            if resp.status != 200:
                raise ApiError(422, f"The URL answered HTTP {resp.status}")
            kind = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
            if kind and not (kind.startswith("image/") or kind == "application/octet-stream"):
                raise ApiError(415, f"The URL's content type is {kind}, not an image")
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > settings["max_bytes"]:
                raise ApiError(413, f"The image is larger than {settings['max_bytes']} bytes")
            data = b""
            while len(data) <= settings["max_bytes"]:
                if time.monotonic() > deadline:
                    raise ApiError(422, f"Fetching the URL took longer than {settings['timeout']:.0f} s")
                chunk = resp.read(65536)
                if not chunk:
                    break
                data += chunk
            if len(data) > settings["max_bytes"]:
                raise ApiError(413, f"The image is larger than {settings['max_bytes']} bytes")
            return data
        except (socket.timeout, TimeoutError):
            raise ApiError(422, f"Fetching the URL took longer than {settings['timeout']:.0f} s") from None
        except ssl.SSLError as exc:
            raise ApiError(422, f"TLS failed for the URL ({exc.reason})") from None
        except (ConnectionError, OSError, http.client.HTTPException) as exc:
            raise ApiError(422, f"The URL could not be fetched ({type(exc).__name__})") from None
        finally:
            conn.close()
    raise ApiError(422, f"The URL redirected more than {MAX_REDIRECTS} times")


def image_from_request(data: dict, settings: dict) -> bytes:
    if "url" in data and "image" in data:
        raise ApiError(400, 'Send either "url" or "image", not both')
    if "url" in data:
        return fetch_url(data["url"], settings)
    if "image" in data:
        if not isinstance(data["image"], str):
            raise ApiError(400, '"image" must be a base64 string')
        raw = data["image"].split(",", 1)[1] if data["image"].startswith("data:") else data["image"]
        try:
            image = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, '"image" is not valid base64') from None
        if len(image) > settings["max_bytes"]:
            raise ApiError(413, f"The image is larger than {settings['max_bytes']} bytes")
        return image
    raise ApiError(400, 'Send {"url": "https://..."} or {"image": "<base64>"}')


# --------------------------------------------------------------------------- the endpoint


_CLIENT = None


def runtime_client(settings: dict):
    global _CLIENT
    if _CLIENT is None:
        import boto3
        from botocore.config import Config

        config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=3, read_timeout=20)
        kwargs = {"config": config}
        if settings["runtime_url"]:
            kwargs.update(endpoint_url=settings["runtime_url"], region_name=os.environ.get("AWS_REGION", "us-east-1"),
                          aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "local"),
                          aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "local"))
        _CLIENT = boto3.client("sagemaker-runtime", **kwargs)
    return _CLIENT


def predict(image: bytes, kind: str, settings: dict) -> dict:
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    if not settings["endpoint"]:
        raise ApiError(503, "The API has no endpoint configured (ENDPOINT_NAME)")
    try:
        reply = runtime_client(settings).invoke_endpoint(
            EndpointName=settings["endpoint"], Body=image, ContentType=ENDPOINT_TYPES.get(kind, "application/x-image"),
            Accept="application/json")
        return json.loads(reply["Body"].read())
    except EndpointConnectionError:
        raise ApiError(503, "The model endpoint is not reachable; try again later") from None
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        original = exc.response.get("OriginalStatusCode") or exc.response.get("Error", {}).get("OriginalStatusCode")
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("ValidationError",) and "not found" in str(exc).lower():
            raise ApiError(503, "The model endpoint does not exist (yet)") from None
        if status in (413, 415) or str(original) in ("413", "415"):
            raise ApiError(415, "The model could not read that image") from None
        if status in (429, 503) or code in ("ThrottlingException", "ServiceUnavailable"):
            raise ApiError(503, "The model endpoint is busy; try again") from None
        raise ApiError(502, f"The model endpoint failed ({code or status})") from None
    except (BotoCoreError, ValueError) as exc:
        raise ApiError(502, f"The model endpoint failed ({type(exc).__name__})") from None


# --------------------------------------------------------------------------- handler


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict, context) -> dict:
    settings = _settings()
    method = (event.get("requestContext", {}).get("http", {}).get("method") or "POST").upper()
    try:
        if method != "POST":
            raise ApiError(405, "Use POST with a JSON body")
        data = parse_body(event)
        image = image_from_request(data, settings)
        kind = sniff_image(image)
        result = predict(image, kind, settings)
        label = result.get("label")
        if not label:
            raise ApiError(502, "The model endpoint gave no label")
        logger.info("predicted", extra={"label": label, "confidence": result.get("confidence"),
                                        "source": "url" if "url" in data else "image", "bytes": len(image)})
        return response(200, {"label": label, "confidence": result.get("confidence"),
                              "probabilities": result.get("probabilities", {}), "message": f"Image predicted: {label}"})
    except ApiError as exc:
        logger.info("refused", extra={"status": exc.status, "reason": exc.message})
        return response(exc.status, {"error": exc.message})
    except Exception:  # noqa: BLE001 - log it, answer without a traceback
        logger.exception("unexpected error")
        return response(500, {"error": "Internal error; it has been logged"})
