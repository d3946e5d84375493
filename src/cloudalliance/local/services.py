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

from ..records import _atomic_write_text
from ..errors import CloudallianceError


STATE_ENV = "CLOUDALLIANCE_STATE_DIR"


class ServiceError(CloudallianceError):
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


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
