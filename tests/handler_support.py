"""A tiny local HTTP server of test images (and of bad answers) on 127.0.0.1, for the handler's URL path."""

from __future__ import annotations

import http.server
import threading
import time


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        route = self.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_response(404)
            self.end_headers()
            return
        status, headers, body, delay = route
        if delay:
            time.sleep(delay)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class ImageServer:
    def __init__(self, routes: dict):
        handler = type("Routes", (_Handler,), {"routes": routes})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def routes_for(jpeg: bytes, max_bytes: int) -> dict:
    return {
        "/sea.jpg": (200, {"Content-Type": "image/jpeg"}, jpeg, 0),
        "/octet.jpg": (200, {"Content-Type": "application/octet-stream"}, jpeg, 0),
        "/big.jpg": (200, {"Content-Type": "image/jpeg"}, b"\xff\xd8\xff" + b"0" * (max_bytes + 10), 0),
        "/page.html": (200, {"Content-Type": "text/html"}, b"<html>hello</html>", 0),
        "/fake.jpg": (200, {"Content-Type": "image/jpeg"}, b"just text pretending", 0),
        "/slow.jpg": (200, {"Content-Type": "image/jpeg"}, jpeg, 3.0),
        "/gone.jpg": (404, {"Content-Type": "text/plain"}, b"not here", 0),
        "/to-private": (302, {"Location": "http://10.1.2.3/secret.jpg"}, b"", 0),
        "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b"", 0),
        "/to-sea": (302, {"Location": "/sea.jpg"}, b"", 0),
        "/loop": (302, {"Location": "/loop"}, b"", 0),
    }
