"""The guards around the API's Lambda function: what keeps it standing under hostile traffic.

A learner may skip this module. ``handler.py`` is the lesson (route, parse, fetch, predict, answer); this is the
machinery that lets it take any request from the internet without a 500, a hang or a request to a private
address: the deadline budget, the JSON body parser, base64 and image sniffing, the URL fetch (IDNA host,
public addresses only after every redirect, a connection pinned to the checked address, a watchdog on the
whole fetch) and their limits. Every refusal is an :class:`ApiError` with the HTTP status and the short
message the client gets; ``lambda/README.md`` ("What the handler accepts and refuses", "Deadlines") says why
each limit is what it is.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
import urllib.parse

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


# Not globally reachable, whatever this Python's ipaddress says (its is_global changed between 3.11 and 3.13;
# IANA's special-purpose registries: https://www.iana.org/assignments/iana-ipv4-special-registry and
# https://www.iana.org/assignments/iana-ipv6-special-registry).
_REFUSED_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
    "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
    "224.0.0.0/4", "240.0.0.0/4",
    "::/96", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "2002::/16",
    "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")  # everything else in IPv6 is reserved or special (RFC 4291)
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


def embedded_ipv4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 transition form reaches: mapped, compatible, 6to4, Teredo, NAT64."""
    found = []
    if addr.ipv4_mapped:
        found.append(addr.ipv4_mapped)
    if int(addr) >> 32 == 0:  # IPv4-compatible ::a.b.c.d (deprecated, RFC 4291 2.5.5.1)
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    if addr in _SIX_TO_FOUR:
        found.append(addr.sixtofour)
    if addr.teredo:
        found.extend(addr.teredo)
    if addr in _NAT64:  # RFC 6052 well-known prefix: the IPv4 address is the last 32 bits
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return found


def is_public(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routable, and so is every IPv4 address it embeds."""
    if isinstance(addr, ipaddress.IPv6Address):
        inner = embedded_ipv4(addr)
        if addr.ipv4_mapped:  # ::ffff:a.b.c.d is a.b.c.d on a dual-stack socket: judge that
            return is_public(addr.ipv4_mapped)
        if any(not is_public(v4) for v4 in inner):
            return False
        if addr in _NAT64:
            return True
        if addr not in _GLOBAL_UNICAST_V6:  # ::/8 forms (IPv4-translated ::ffff:0:a.b.c.d, ...), ULA, link-local
            return False
    if not addr.is_global or any(addr in net for net in _REFUSED_NETWORKS if net.version == addr.version):
        return False
    return True


def check_address(host: str, ip: str, allowed: set[str]) -> None:
    """403 unless ``ip`` is public or the host/address is explicitly allowed (local tests)."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    if host.lower() in allowed or str(addr) in allowed:
        return
    if not is_public(addr):
        raise ApiError(403, f"URLs that point to private, loopback, link-local or other non-public addresses "
                            f"are refused ({host})")


def resolve(host: str, port: int, allowed: set[str], budget: Budget) -> str:
    """Resolve ``host`` within the budget and check every address; return the one to connect to."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:  # no lookup for an address
        check_address(host, str(literal), allowed)
        return str(literal)
    try:
        infos = call_within(budget, socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise ApiError(422, f"The URL's host {host!r} does not resolve") from None
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise ApiError(422, f"The URL's host {host!r} does not resolve")
    for ip in addresses:
        check_address(host, ip, allowed)
    return addresses[0]


# What browsers leave alone in a path and a query (WHATWG URL percent-encode sets); the rest is UTF-8 %XX.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"


class Target:
    """One URL, checked and normalised: scheme, the ASCII (IDNA) host, port, Host header and request path."""

    def __init__(self, url):
        if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
            raise ApiError(400, f'"url" must be a string of at most {MAX_URL_CHARS} characters')
        try:
            parts = urllib.parse.urlsplit(url.strip())
            port = parts.port
        except ValueError:  # "http://[::1", "http://[zz]", a bad port
            raise ApiError(400, "The URL is not valid (its host or port)") from None
        if parts.scheme not in ("http", "https"):
            raise ApiError(400, f"Only http and https URLs are fetched, not {parts.scheme or 'no scheme'!r}")
        if port == 0:
            raise ApiError(400, "The URL is not valid (its host or port)")
        if not parts.hostname:
            raise ApiError(400, "The URL has no host")
        if parts.username is not None or parts.password is not None:
            raise ApiError(400, "URLs with credentials are refused")
        self.scheme = parts.scheme
        self.port = port or (443 if parts.scheme == "https" else 80)
        self.host = self._ascii_host(parts.hostname, "[" in parts.netloc)
        self.ipv6 = ":" in self.host
        shown = f"[{self.host}]" if self.ipv6 else self.host
        self.host_header = shown if port is None else f"{shown}:{port}"
        try:
            path = urllib.parse.quote(parts.path or "/", safe=_PATH_SAFE)
            query = urllib.parse.quote(parts.query, safe=_QUERY_SAFE)
        except UnicodeError:
            raise ApiError(400, "The URL's path or query is not valid text") from None
        self.path = path + ("?" + query if query else "")
        self.url = url

    @staticmethod
    def _ascii_host(hostname: str, bracketed: bool) -> str:
        if bracketed:  # an IPv6 literal (urlsplit took the brackets off and checked them)
            try:
                return str(ipaddress.ip_address(hostname.split("%")[0]))
            except ValueError:  # "[v1.x]" (IPvFuture) passes urlsplit
                raise ApiError(400, "The URL's host is not a valid address") from None
        try:
            # IDNA (what getaddrinfo would do), so the name that is checked is the name that is resolved and sent:
            # "①②⑦.0.0.1" becomes "127.0.0.1". Python's codec: encodings/idna.py (nameprep, ToASCII, label lengths).
            ascii_host = hostname.encode("idna").decode("ascii").rstrip(".").lower()
        except UnicodeError:
            raise ApiError(400, "The URL's host is not a valid host name") from None
        if not ascii_host or len(ascii_host) > 253 or not re.fullmatch(r"[a-z0-9._-]+", ascii_host):
            raise ApiError(400, "The URL's host is not a valid host name")
        return ascii_host


class _Watchdog:
    """Shuts a connection's socket down when the budget ends, so no read can outlive it (reads then see EOF)."""

    def __init__(self, budget: Budget):
        self.sock: socket.socket | None = None
        self.fired = False
        self.timer = threading.Timer(budget.remaining(), self._fire)
        self.timer.daemon = True
        self.timer.start()

    def _fire(self) -> None:
        self.fired = True
        sock = self.sock
        if sock is not None:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the base method: for TLS sockets too
            except OSError:
                pass

    def watch(self, sock: socket.socket) -> None:
        self.sock = sock
        if self.fired:
            self._fire()

    def cancel(self) -> None:
        self.timer.cancel()


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to an address resolved and checked beforehand; its socket under a watchdog."""

    def __init__(self, target: Target, ip: str, budget: Budget, watchdog: _Watchdog):
        super().__init__(target.host, target.port, timeout=max(budget.remaining(), 0.001))
        self._ip, self._budget, self._watchdog, self._target = ip, budget, watchdog, target
        self.live_sock: socket.socket | None = None  # http.client drops self.sock on "Connection: close"

    def _open(self) -> socket.socket:
        sock = socket.create_connection((self._ip, self.port), max(self._budget.remaining(), 0.001))
        self._watchdog.watch(sock)
        return sock

    def connect(self) -> None:
        self.live_sock = self.sock = self._open()


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """HTTPS to a checked address, with SNI and certificate checks for the host name."""

    default_port = 443

    def connect(self) -> None:
        raw = self._open()
        # The certificate is checked for the (ASCII) host name, or for the address when the URL names one.
        try:
            # wrap_socket takes over (detaches) the raw socket: watch the TLS socket before its handshake, so a
            # server that trickles the handshake is cut at the deadline too.
            sock = _tls_context().wrap_socket(raw, server_hostname=self._target.host, do_handshake_on_connect=False)
        except BaseException:
            raw.close()  # not yet self.sock, so close() would not reach it
            raise
        self._watchdog.watch(sock)
        self.live_sock = self.sock = sock
        sock.do_handshake()


_TLS: list = []


def _tls_context() -> ssl.SSLContext:
    """One default (verifying) TLS context per process: loading the CA bundle costs milliseconds."""
    if not _TLS:
        _TLS.append(ssl.create_default_context())
    return _TLS[0]


def _redirect(url: str, location: str) -> str:
    try:  # http.client decodes header bytes as latin-1; servers send UTF-8 locations
        location = location.encode("latin-1").decode("utf-8")
    except UnicodeError:
        pass
    return urllib.parse.urljoin(url, location.strip())


def fetch_url(url, settings: dict, budget: Budget | None = None) -> bytes:
    """GET an image with guards: http(s) only, public addresses only (after redirects too), size and time caps.

    ``budget`` bounds the whole fetch (all redirects, DNS, connect, TLS, headers, body); ``FETCH_TIMEOUT_S`` caps it.
    """
    budget = (budget or Budget(settings["timeout"])).within(settings["timeout"])
    took_too_long = ApiError(422, f"Fetching the URL took longer than {budget.seconds:.1f} s")
    max_bytes = settings["max_bytes"]
    watchdog = _Watchdog(budget)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            target = Target(url)
            try:
                ip = resolve(target.host, target.port, settings["allowed"], budget)
            except TimeoutError:
                raise took_too_long from None
            if budget.expired():
                raise took_too_long
            cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
            conn = cls(target, ip, budget, watchdog)
            try:
                conn.request("GET", target.path, headers={"Host": target.host_header,
                                                          "User-Agent": "cloudalliance/1", "Accept": "image/*"})
                resp = conn.getresponse()
                if resp.status in (301, 302, 303, 307, 308):
                    location = resp.getheader("Location")
                    if not location:
                        raise ApiError(422, "The URL redirected without a Location")
                    url = _redirect(target.url, location)
                    continue
                if resp.status != 200:
                    raise ApiError(422, f"The URL answered HTTP {resp.status}")
                kind = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
                if kind and not (kind.startswith("image/") or kind == "application/octet-stream"):
                    raise ApiError(415, f"The URL's content type is {kind}, not an image")
                length = resp.getheader("Content-Length")
                if length and length.strip().isdigit() and int(length) > max_bytes:
                    raise ApiError(413, f"The image is larger than {max_bytes} bytes")
                chunks, size = [], 0
                while size <= max_bytes:
                    if budget.expired():
                        raise took_too_long
                    if conn.live_sock is not None:
                        conn.live_sock.settimeout(max(budget.remaining(), 0.001))
                    chunk = resp.read1(65536)  # whatever one recv gives: the deadline is checked between them
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                if size > max_bytes:
                    raise ApiError(413, f"The image is larger than {max_bytes} bytes")
                if budget.expired():
                    raise took_too_long
                if resp.length:  # fewer bytes than Content-Length said: a cut image
                    raise ApiError(422, "The URL's answer ended before its Content-Length")
                return b"".join(chunks)
            except ApiError:
                raise
            except (socket.timeout, TimeoutError):
                raise took_too_long from None
            except (ssl.SSLError, ssl.CertificateError) as exc:
                if watchdog.fired or budget.expired():
                    raise took_too_long from None
                raise ApiError(422, f"TLS failed for the URL ({getattr(exc, 'reason', None) or 'certificate'})") \
                    from None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if watchdog.fired or budget.expired():
                    raise took_too_long from None
                raise ApiError(422, f"The URL could not be fetched ({type(exc).__name__})") from None
            finally:
                conn.close()
        raise ApiError(422, f"The URL redirected more than {MAX_REDIRECTS} times")
    finally:
        watchdog.cancel()


def image_from_request(data: dict, settings: dict, budget: Budget | None = None) -> bytes:
    if "url" in data and "image" in data:
        raise ApiError(400, 'Send either "url" or "image", not both')
    if "url" in data:
        return fetch_url(data["url"], settings, budget)
    if "image" in data:
        if not isinstance(data["image"], str):
            raise ApiError(400, '"image" must be a base64 string')
        return decode_image(data["image"], settings["max_bytes"])
    raise ApiError(400, USAGE)
