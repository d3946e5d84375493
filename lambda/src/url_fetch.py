"""The URL half of the guards: fetch an image from the internet without reaching a private address.

A learner may skip this module (see ``guards.py``). ``fetch_url`` takes an http(s) URL and returns its bytes, or
refuses with an :class:`ApiError`: the host is resolved once, every address checked to be public (IPv4, IPv6 and
IPv4 inside IPv6), the connection pinned to the checked address, redirects followed and checked again (at most
``MAX_REDIRECTS``), the size and the whole fetch bounded by the request's budget. ``guards.image_from_request``
imports it on the first URL request, so a base64 request's cold start does without ``http.client`` and ``ssl``.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import re
import urllib.parse

from guards import MAX_REDIRECTS, MAX_URL_CHARS, ApiError, Budget, call_within


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
