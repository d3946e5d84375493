"""Local network services (embedded S3, endpoint, gateway) and their state.

Each service is a real process listening on 127.0.0.1. Its state (pid, ports,
endpoint URL, data dir, log file) lives in one JSON file under the state
folder, so any process (a notebook kernel, the CLI, the course runner, the
test session) can find it, health-check it and stop it.

The state folder is ``$CLOUDALLIANCE_STATE_DIR`` or ``~/.cloudalliance/services``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .records import _atomic_write_text

STATE_ENV = "CLOUDALLIANCE_STATE_DIR"


class ServiceError(RuntimeError):
    """A local service that could not be started, reached or stopped."""


def state_dir() -> Path:
    folder = Path(os.environ.get(STATE_ENV) or Path.home() / ".cloudalliance" / "services")
    folder = folder.expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclasses.dataclass
class ServiceInfo:
    name: str
    pid: int
    endpoint_url: str
    ports: dict[str, int]
    data_dir: str
    log_file: str
    cmdline: list[str]
    started_at: float
    cleanup: list[str] = dataclasses.field(default_factory=list)  # files to remove once stopped

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def free_port(avoid: Sequence[int] = ()) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port
    raise ServiceError("no free TCP port found on 127.0.0.1")


def free_ports(n: int, offset: int | None = None) -> list[int]:
    """``n`` distinct free ports; with ``offset``, ``port + offset`` must be free too.

    SeaweedFS listens on ``port + 10000`` for gRPC unless told otherwise, so
    both numbers must be free.
    """
    chosen: list[int] = []
    while len(chosen) < n:
        port = free_port(avoid=chosen)
        if offset is not None:
            if port + offset > 65535 or not port_is_free(port + offset):
                continue
            if any(port + offset == c or port == c + offset for c in chosen):
                continue
        chosen.append(port)
    return chosen


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    return True


def _pid_matches(info: ServiceInfo) -> bool:
    """True when ``info.pid`` is still the process we started (not a reused pid)."""
    if not pid_alive(info.pid):
        return False
    try:
        cmdline = Path(f"/proc/{info.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the pid
    exe = os.path.basename(info.cmdline[0]) if info.cmdline else ""
    return any(exe and os.path.basename(part.decode(errors="replace")) == exe for part in cmdline[:2])


def _state_file(name: str) -> Path:
    return state_dir() / f"{name}.service.json"


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    lock = state_dir() / f".{name}.lock"
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_state(name: str) -> ServiceInfo | None:
    path = _state_file(name)
    try:  # no exists() first: the file can go between the two (a service being stopped or restarted)
        data = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(ServiceInfo)}
        return ServiceInfo(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError):
        return None


def list_services() -> list[ServiceInfo]:
    found = []
    for path in sorted(state_dir().glob("*.service.json")):
        info = read_state(path.name[: -len(".service.json")])
        if info is not None:
            found.append(info)
    return found


def running(name: str) -> ServiceInfo | None:
    """The service's state if its process is still the one we started, else None."""
    info = read_state(name)
    if info is None:
        return None
    if not _pid_matches(info):
        _state_file(name).unlink(missing_ok=True)
        return None
    return info


def tail(path: str | os.PathLike, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def start_service(
    name: str,
    argv: list[str],
    *,
    ports: dict[str, int],
    endpoint_url: str,
    healthy: Callable[[], bool],
    data_dir: str | os.PathLike = "",
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    cwd: str | os.PathLike | None = None,
    cleanup: Sequence[str | os.PathLike] = (),
) -> ServiceInfo:
    """Start ``argv`` as service ``name`` and wait until ``healthy()`` is true.

    The process gets its own session so that the caller's signals do not reach
    it and it can be stopped as a group. On failure the process is stopped and
    the error names the log file and shows its last lines.
    """
    if running(name) is not None:
        stop_service(name)  # one process per service name: never leave an old one behind
    log_file = state_dir() / f"{name}.log"
    with open(log_file, "ab") as log:
        log.write(f"\n--- starting {name} at {time.ctime()}: {' '.join(argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **(env or {})},
                cwd=cwd,
            )
        except OSError as exc:
            raise ServiceError(f"could not start {name} ({argv[0]}): {exc}") from exc
    info = ServiceInfo(
        name=name,
        pid=proc.pid,
        endpoint_url=endpoint_url,
        ports=dict(ports),
        data_dir=str(data_dir),
        log_file=str(log_file),
        cmdline=list(argv),
        started_at=time.time(),
        cleanup=[str(p) for p in cleanup],
    )
    _atomic_write_text(_state_file(name), json.dumps(info.to_dict(), indent=2) + "\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _state_file(name).unlink(missing_ok=True)
            raise ServiceError(
                f"{name} exited with code {proc.returncode} while starting; see its log {log_file}:\n"
                + tail(log_file)
            )
        try:
            if healthy():
                return info
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    stop_service(name)
    raise ServiceError(
        f"{name} did not answer at {endpoint_url} within {timeout:.0f} s; see its log {log_file}:\n"
        + tail(log_file)
    )


def ensure_service(name: str, start: Callable[[], ServiceInfo], healthy: Callable[[ServiceInfo], bool]) -> ServiceInfo:
    """Reuse a running, healthy ``name`` or start it (one starter at a time)."""
    with _locked(name):
        info = running(name)
        if info is not None:
            try:
                if healthy(info):
                    return info
            except Exception:  # noqa: BLE001 - unhealthy: restart below
                pass
            stop_service(name)
        return start()


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop_service(name: str, grace: float = 5.0) -> bool:
    """Stop service ``name`` by its own pid: SIGTERM, then SIGKILL after ``grace`` s.

    Returns True when a process was stopped. The state file goes either way.
    """
    info = read_state(name)
    stopped = False
    if info is not None and _pid_matches(info):
        _signal_group(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            _reap(info.pid)
            if not pid_alive(info.pid):
                break
            time.sleep(0.1)
        else:
            _signal_group(info.pid, signal.SIGKILL)
            for _ in range(50):
                _reap(info.pid)
                if not pid_alive(info.pid):
                    break
                time.sleep(0.1)
        if pid_alive(info.pid):
            raise ServiceError(f"{name} (pid {info.pid}) did not stop, even after SIGKILL")
        stopped = True
    if info is not None:
        for leftover in info.cleanup:
            Path(leftover).unlink(missing_ok=True)
    _state_file(name).unlink(missing_ok=True)
    return stopped


def stop_all(names: Sequence[str] | None = None) -> list[str]:
    """Stop every service in the state folder (or only ``names``); return those stopped."""
    stopped = []
    for info in list_services():
        if names is not None and info.name not in names:
            continue
        if stop_service(info.name):
            stopped.append(info.name)
    return stopped


def wait_port_closed(port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) in (errno.ECONNREFUSED, errno.ECONNRESET):
                return True
        time.sleep(0.1)
    return False


# --------------------------------------------------------------------------- what the local HTTP servers share

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


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


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
