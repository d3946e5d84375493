"""The HTTP hardening around uvicorn that the local servers share (machinery; a learner may skip it): deadlines
for a request's headers and body, a size limit read as the body streams in, and JSON errors that close the
connection cleanly, so that hostile or slow clients get a clear 4xx and lose nothing.
"""

from __future__ import annotations

import json
import os


BODY_DEADLINE_ENV = "CLOUDALLIANCE_BODY_DEADLINE_S"


DEFAULT_BODY_DEADLINE_S = 20.0


def body_deadline_s() -> float:
    """How long a server waits for a whole request body: ``$CLOUDALLIANCE_BODY_DEADLINE_S`` or 20 s."""
    return float(os.environ.get(BODY_DEADLINE_ENV) or DEFAULT_BODY_DEADLINE_S)


HEADER_DEADLINE_ENV = "CLOUDALLIANCE_HEADER_DEADLINE_S"


DEFAULT_HEADER_DEADLINE_S = 10.0


def header_deadline_s() -> float:
    """How long a server waits for a request's line and headers: ``$CLOUDALLIANCE_HEADER_DEADLINE_S`` or 10 s."""
    return float(os.environ.get(HEADER_DEADLINE_ENV) or DEFAULT_HEADER_DEADLINE_S)


LINGER_S = 2.0  # how long a connection answered early stays half-open for the client to read the answer


def _raw_json_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


def http_protocol():
    """uvicorn's h11 protocol with a deadline on each request's line and headers, and its own 400 in JSON.

    uvicorn times a body only through the app (``read_body``'s deadline) and an idle keep-alive connection
    (``timeout_keep_alive``); headers sent a byte at a time keep a connection open for ever. Here the clock starts
    when the connection opens and again when a response is complete, and a request whose headers are not all in
    by :func:`header_deadline_s` gets ``408 {"error"}`` and the connection closed. The 400 uvicorn sends for a
    request h11 cannot parse (a bad request line or Content-Length) is ``{"error"}`` JSON like every other error.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        _header_timer = None
        _bytes_since_armed = 0
        _answered_early = False

        def _arm_header_deadline(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._bytes_since_armed = 0
            if not self.transport.is_closing():
                # a new RequestResponseCycle is what h11 makes once a request's headers are complete
                self._header_timer = self.loop.call_later(header_deadline_s(), self._header_deadline, self.cycle)

        def _header_deadline(self, cycle_when_armed) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self.cycle is not cycle_when_armed:
                return  # a request's headers came in since
            self._unset_keepalive_if_required()
            if self.conn.their_state is not h11.IDLE or not self._bytes_since_armed:
                # idle since the last answer, or still sending the body of a request already answered: closed
                # without an answer, as uvicorn's keep-alive timeout does (a pooled client must not read a 408
                # as the answer to a request it sends next)
                self.conn.send(h11.ConnectionClosed())
                self.transport.close()
                return
            self._answer_and_close(408, "Request Timeout",
                                   f"The request's headers did not arrive within {header_deadline_s():g} s")

        def _answer_and_close(self, status: int, reason: str, message: str) -> None:
            """Answer, half-close and linger before closing: closing a socket with unread input (the client is
            still sending) makes the kernel send a reset, which can destroy the answer before it is read."""
            self._answered_early = True
            self.transport.write(_raw_json_response(status, reason, message))
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)

        def data_received(self, data: bytes) -> None:
            if self._answered_early:  # what still trickles in after the answer is dropped
                return
            self._bytes_since_armed += len(data)
            super().data_received(data)

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            self._arm_header_deadline()  # before: the base class may start a pipelined request's cycle at once
            super().on_response_complete()

        def connection_lost(self, exc) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            if self.conn.our_state is not h11.IDLE:  # an answer was already sent on this request: just close
                self.transport.close()
                return
            self._answer_and_close(400, "Bad Request", f"{msg.rstrip('.')}: not a valid HTTP/1.1 request")

    return HeaderDeadlineProtocol


def serve(app, port: int, host: str = "127.0.0.1") -> None:
    """Run ``app`` with uvicorn as every local server does: quiet, no access log, :func:`http_protocol`."""
    import uvicorn

    # ws="none": no WebSocket upgrade hands the connection to another protocol with the header timer still set
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, http=http_protocol(), ws="none")


class BodyError(Exception):
    """A request body refused while reading it (413 too large, 408 too slow, 400 bad length)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(request, limit: int, deadline_s: float | None = None) -> bytes:
    """The request body, read as a stream and stopped at ``limit`` bytes or after ``deadline_s`` in all.

    ``Content-Length`` is checked before a byte is read; a chunked body is counted as it arrives, so neither
    a 100 MB body nor one sent a byte a second costs more than ``limit`` bytes or ``deadline_s``. Starlette's
    ``Request.stream()`` yields the ASGI ``http.request`` messages' bodies as they come (starlette/requests.py,
    ``Request.stream``); ``Request.body()`` would join them all first.
    """
    import asyncio

    deadline_s = body_deadline_s() if deadline_s is None else deadline_s
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise BodyError(400, "The Content-Length header is not a number")
        if int(length) > limit:
            raise BodyError(413, f"The request body is {int(length)} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    total = 0

    async def consume() -> None:
        nonlocal total
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise BodyError(413, f"The request body is larger than {limit} bytes")
            chunks.append(chunk)

    from starlette.requests import ClientDisconnect

    try:
        await asyncio.wait_for(consume(), timeout=deadline_s)
    except ClientDisconnect:
        raise BodyError(400, "The client went away before the body was complete") from None
    except asyncio.TimeoutError:
        raise BodyError(408, f"The request body did not arrive within {deadline_s:g} s") from None
    return b"".join(chunks)


def json_error(status: int, message: str, headers: dict[str, str] | None = None, close: bool = False):
    """``{"error": message}`` with ``status``; ``close`` ends the connection (a body left unread on it)."""
    from fastapi import Response

    headers = dict(headers or {})
    if close:
        headers["Connection"] = "close"
    return Response(json.dumps({"error": message}), status_code=status, media_type="application/json",
                    headers=headers)


def create_json_app(title: str):
    """A FastAPI app for a local server: no /docs, /redoc or /openapi.json, and every error as ``{"error"}``.

    FastAPI serves those three pages unless their URLs are None (fastapi/applications.py, ``FastAPI.__init__``
    ``openapi_url``/``docs_url``/``redoc_url``; https://fastapi.tiangolo.com/how-to/conditional-openapi/).
    Starlette answers an unknown path with ``HTTPException(404)`` and a known path with another method with
    ``HTTPException(405, headers={"Allow": ...})`` (starlette/routing.py, ``Router.not_found`` and
    ``Route.handle``); FastAPI would render both, and validation errors, as ``{"detail": ...}``.
    """
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    # redirect_slashes=False: Starlette would answer "/predict/" with a 307 to "/predict" (starlette/routing.py,
    # Router.app); API Gateway has no such route and answers 404, and so does this server, in {"error"} form.
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        message = {404: f"Not Found: no route {request.method} {request.url.path}",
                   405: f"Method {request.method} is not allowed on {request.url.path}"}.get(exc.status_code,
                                                                                        str(exc.detail))
        return json_error(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        return json_error(422, "The request is not valid: " + "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()[:3]))

    return app
