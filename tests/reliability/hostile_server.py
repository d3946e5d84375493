"""A hostile image server on 127.0.0.1 (stdlib, one thread per connection) for the handler's URL path.

Every route misbehaves in one way a real server on the internet can: it trickles, hangs, lies about its
Content-Length, sends endless or huge bodies, redirects to private/metadata addresses or other schemes,
loops, sends the wrong content type or a gzip bomb. Every slow route is bounded (``MAX_HOLD_S``) and wakes up
when the server closes, so a test never leaves a thread behind. ``hits`` counts requests per path, so a test
can prove that a URL was *not* fetched.
"""

from __future__ import annotations

import collections
import gzip
import io
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_HOLD_S = 20.0  # no route keeps a connection longer than this


def png_bomb(width: int = 12000, height: int = 12000) -> bytes:
    """A valid 8-bit grayscale PNG of ``width`` x ``height`` zeros (144 M pixels by default), about 140 kB.

    Built row by row so that making it never holds the pixels. Pillow refuses images above
    2 x ``Image.MAX_IMAGE_PIXELS`` (178,956,970) with DecompressionBombError but only *warns* between 1x and
    2x (Pillow ``src/PIL/Image.py``, ``_decompression_bomb_check``), so 144 M pixels decode unless the server
    checks the size itself.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte 0 + one byte per pixel
    parts = [comp.compress(row) for _ in range(height)]
    idat = b"".join(parts) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gzip_bomb(size: int = 200 * 1024 * 1024) -> bytes:
    """``size`` zero bytes, gzip-compressed (about 200 kB for 200 MB)."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz:
        block = b"\x00" * (1 << 20)
        for _ in range(size // len(block)):
            gz.write(block)
    return out.getvalue()


class _Handler(BaseHTTPRequestHandler):
    server: "HostileServer._Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    # -- helpers
    def _hold(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` (bounded); False when the server is closing."""
        return not self.server.closing.wait(min(seconds, MAX_HOLD_S))

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.flush()

    def _send(self, status: int, ctype: str | None, body: bytes, extra: dict[str, str] | None = None) -> None:
        headers = {"Content-Length": str(len(body)), "Connection": "close"}
        if ctype:
            headers["Content-Type"] = ctype
        headers.update(extra or {})
        self._head(status, headers)
        self.wfile.write(body)

    def _redirect(self, location: str, status: int = 302) -> None:
        self._send(status, "text/plain", b"", {"Location": location})

    # -- routes
    def do_GET(self):  # noqa: N802 - http.server's name
        path = self.path.split("?")[0]
        with self.server.lock:
            self.server.hits[path] += 1
        s = self.server
        try:
            if path == "/ok.jpg":
                self._send(200, "image/jpeg", s.jpeg)
            elif path == "/ok.png":
                self._send(200, "image/png", s.png)
            elif path == "/trickle":  # headers at once, then one byte every 0.5 s
                self._head(200, {"Content-Type": "image/jpeg", "Content-Length": str(len(s.jpeg)),
                                 "Connection": "close"})
                for b in s.jpeg:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    if not self._hold(0.5):
                        break
            elif path == "/trickle-headers":  # the status line and headers one byte every 0.5 s
                head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 10\r\n\r\n"
                for b in head:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    if not self._hold(0.5):
                        break
            elif path == "/hang":  # read the request, never answer
                self._hold(MAX_HOLD_S)
            elif path == "/length-longer":  # promises more than it sends, then keeps the socket open
                self._head(200, {"Content-Type": "image/jpeg", "Content-Length": str(len(s.jpeg) * 10)})
                self.wfile.write(s.jpeg)
                self.wfile.flush()
                self._hold(MAX_HOLD_S)
            elif path == "/length-shorter":  # promises 16 bytes, sends the whole image
                self._head(200, {"Content-Type": "image/jpeg", "Content-Length": "16", "Connection": "close"})
                self.wfile.write(s.jpeg)
            elif path == "/length-huge":  # declares 200 MB
                self._head(200, {"Content-Type": "image/jpeg", "Content-Length": str(200 * 1024 * 1024),
                                 "Connection": "close"})
                self._stream_zeros(200 * 1024 * 1024)
            elif path == "/endless":  # no Content-Length, a JPEG header and then zeros until the client stops
                self._head(200, {"Content-Type": "image/jpeg", "Connection": "close"})
                self.wfile.write(b"\xff\xd8\xff\xe0")
                self._stream_zeros(1 << 40)
            elif path == "/chunked-endless":
                self._head(200, {"Content-Type": "image/jpeg", "Transfer-Encoding": "chunked", "Connection": "close"})
                block = b"\x00" * 65536
                deadline = time.monotonic() + MAX_HOLD_S
                while time.monotonic() < deadline and not s.closing.is_set():
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
            elif path == "/gzip-bomb":
                self._send(200, "image/jpeg", s.gzip_bomb, {"Content-Encoding": "gzip"})
            elif path == "/png-bomb":
                self._send(200, "image/png", s.png_bomb)
            elif path == "/html":
                self._send(200, "text/html", b"<html><body>not an image</body></html>")
            elif path == "/html-as-jpeg":
                self._send(200, "image/jpeg", b"<html><body>not an image</body></html>")
            elif path == "/jpeg-as-html":
                self._send(200, "text/html", s.jpeg)
            elif path == "/svg":
                self._send(200, "image/svg+xml", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>')
            elif path == "/no-type":
                self._send(200, None, b"PK\x03\x04 a zip, not an image")
            elif path == "/status-500":
                self._send(500, "text/plain", b"upstream broke")
            elif path.startswith("/redirect/"):
                target = s.redirects.get(path[len("/redirect/"):])
                if target is None:
                    self._send(404, "text/plain", b"no such redirect")
                else:
                    self._redirect(target.replace("{self}", s.url))
            else:
                self._send(404, "text/plain", b"not here")
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError, OSError):
            pass  # the client gave up: that is the point

    def _stream_zeros(self, total: int) -> None:
        block = b"\x00" * 65536
        sent = 0
        deadline = time.monotonic() + MAX_HOLD_S
        while sent < total and time.monotonic() < deadline and not self.server.closing.is_set():
            self.wfile.write(block)
            sent += len(block)


REDIRECTS = {
    "private": "http://10.1.2.3/x.jpg",
    "metadata": "http://169.254.169.254/latest/meta-data/",
    "metadata-decimal": "http://2852039166/latest/meta-data/",
    "metadata-hex": "http://0xa9fea9fe/latest/meta-data/",
    "metadata-mapped": "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "metadata-ipv6": "http://[fd00:ec2::254]/latest/meta-data/",
    "cgnat": "http://100.64.0.1/x.jpg",
    "zero": "http://0.0.0.0/x.jpg",
    "file": "file:///etc/passwd",
    "gopher": "gopher://127.0.0.1:70/_hello",
    "ftp": "ftp://127.0.0.1/x.jpg",
    "loop": "{self}/redirect/loop",
    "ping": "{self}/redirect/pong",
    "pong": "{self}/redirect/ping",
    "chain-to-ok": "{self}/redirect/chain2",
    "chain2": "{self}/ok.jpg",
    "empty": "",
}


class HostileServer:
    """``with HostileServer(jpeg, png) as s: s.url + "/trickle"``; stops its threads on exit."""

    class _Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    def __init__(self, jpeg: bytes, png: bytes = b"", bomb: bytes | None = None):
        self.server = self._Server(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        s = self.server
        s.url, s.jpeg, s.png = self.url, jpeg, png
        s.png_bomb = bomb if bomb is not None else png_bomb()
        s.gzip_bomb = gzip_bomb()
        s.redirects = dict(REDIRECTS)
        s.closing = threading.Event()
        s.lock = threading.Lock()
        s.hits = collections.Counter()
        self.thread = threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def hits(self) -> collections.Counter:
        return self.server.hits

    def __enter__(self) -> "HostileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.closing.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


# what each route must produce: a 4xx (never a 5xx, never a 200 for a refused route)
HOSTILE_ROUTES = [
    "/trickle", "/trickle-headers", "/hang", "/length-longer", "/length-shorter", "/length-huge", "/endless",
    "/chunked-endless", "/gzip-bomb", "/html", "/html-as-jpeg", "/jpeg-as-html", "/svg", "/no-type",
    "/status-500", "/png-bomb",
    *[f"/redirect/{name}" for name in REDIRECTS if not name.startswith("chain")],
]
