"""Faults on the real processes: SIGKILL the endpoint under load, restart it with `cloudalliance endpoint start`,
SIGSTOP it; the gateway must answer 503 promptly, find the endpoint again without a restart, and never hold a
client longer than its endpoint-call budget. Every process is stopped by its PID at the end.

Each test starts its own endpoint and gateways in a private state folder (``running_stack``), so a fault never
reaches another test's servers.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from rel_support import (FETCH_TIMEOUT_S, HealthProbe, check_reply, post_json, private_state, record, running_stack,
                         start_gateway)

GATEWAY_KEYS = {"label", "confidence", "probabilities", "message"}
PROMPT_S = 2.0  # "promptly": a down endpoint is a 503 within this
# The handler must answer before API Gateway's 29 s integration limit (DESIGN.md "Deadlines";
# https://docs.aws.amazon.com/apigateway/latest/developerguide/limits.html); its endpoint call needs a budget below it.
ENDPOINT_BUDGET_S = float(os.environ.get("RELIABILITY_ENDPOINT_BUDGET_S", "29"))
RECOVERY_LIMIT_S = 30.0


class Load:
    """``threads`` clients predicting in a loop until stopped (bounded by ``max_requests``); replies in order."""

    def __init__(self, url: str, payload: dict, threads: int = 4, max_requests: int = 2000):
        self.url, self.payload, self.max = url, payload, max_requests
        self.replies: list[tuple[float, object]] = []  # (monotonic time at the answer, Reply)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        while not self._stop.is_set():
            with self._lock:
                if len(self.replies) >= self.max:
                    return
            r = post_json(self.url, self.payload, timeout=ENDPOINT_BUDGET_S + 30)
            with self._lock:
                self.replies.append((time.monotonic(), r))

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=ENDPOINT_BUDGET_S + 35)

    def after(self, t0: float):
        with self._lock:
            return [(t, r) for t, r in self.replies if t >= t0]


def cli_endpoint_start(artifact, state) -> dict:
    """`cloudalliance endpoint start --json` in the private state folder; returns its JSON."""
    env = {**os.environ, "CLOUDALLIANCE_STATE_DIR": str(state)}
    out = subprocess.run([sys.executable, "-m", "cloudalliance.cli", "endpoint", "start", "--artifact", str(artifact),
                          "--name", "reliability", "--json"], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout[out.stdout.index("{"):])


def _wait_status(load: Load, t0: float, want, limit: float) -> float | None:
    """Seconds from ``t0`` until the load saw a reply whose status is in ``want`` (None if not within ``limit``)."""
    deadline = t0 + limit
    while time.monotonic() < deadline:
        hits = [t for t, r in load.after(t0) if r.status in want]
        if hits:
            return min(hits) - t0
        time.sleep(0.02)
    return None


def _check_all(replies, allow_5xx=(502, 503, 504)) -> list[str]:
    failures = []
    for _, r in replies:
        try:
            check_reply(r, success_keys=GATEWAY_KEYS, allow_5xx=allow_5xx)
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0])
    return failures


def test_kill_gives_503_promptly(rel_artifact, tmp_path):
    """SIGKILL the endpoint under load (4 clients): the gateway answers 503 within 2 s, then keeps answering 503
    (never a 500), each within 2 s."""
    with running_stack(rel_artifact, tmp_path / "state") as s:
        payload = {"image": base64.b64encode(s.jpeg).decode()}
        with Load(s.gateway.endpoint_url, payload, threads=4, max_requests=5000) as load:
            time.sleep(1.0)
            t_kill = time.monotonic()
            os.kill(s.endpoint.pid, signal.SIGKILL)
            first_503 = _wait_status(load, t_kill, {503}, 10.0)
            time.sleep(1.5)
        after = load.after(t_kill + 0.5)
        before = [r for t, r in load.replies if t < t_kill]
    record(kill_first_503_s=first_503 if first_503 is not None else -1.0,
           kill_p99_answer_s=max((r.seconds for _, r in after), default=-1.0), kill_requests=len(load.replies))
    print(f"\nafter SIGKILL: first 503 after {first_503} s; {len(after)} answers since, slowest "
          f"{max((r.seconds for _, r in after), default=0):.2f} s; statuses {sorted({r.status for _, r in after})}")
    assert before and all(r.status == 200 for r in before), sorted({r.status for r in before})
    assert first_503 is not None and first_503 <= PROMPT_S, f"first 503 after {first_503} s"
    failures = _check_all(load.replies)
    assert all(r.status == 503 for _, r in after), sorted({r.status for _, r in after})
    assert max(r.seconds for _, r in after) <= PROMPT_S
    assert not failures, "\n".join(failures[:10])


@pytest.mark.slow
def test_kill_restart_and_stop(rel_artifact, tmp_path):
    """SIGKILL, then `cloudalliance endpoint start` again: the same gateway (not restarted) answers 200 again;
    then SIGSTOP: held clients get an answer within the endpoint-call budget and /health stays fast; SIGCONT:
    200 again. Recovery times are recorded."""
    from cloudalliance.local import services

    state = tmp_path / "state"
    state.mkdir()
    artifact, jpeg = rel_artifact[0], rel_artifact[1]
    with private_state(state, FETCH_TIMEOUT_S=str(FETCH_TIMEOUT_S)):
        try:
            first = cli_endpoint_start(artifact, state)
            gateway = start_gateway(first["endpoint_url"], "127.0.0.1", "gateway")
            payload = {"image": base64.b64encode(jpeg).decode()}
            failures = []
            with Load(gateway.endpoint_url, payload, threads=4, max_requests=3000) as load:
                time.sleep(1.0)
                # -- kill, then restart with the CLI
                t_kill = time.monotonic()
                os.kill(first["pid"], signal.SIGKILL)
                first_503 = _wait_status(load, t_kill, {503}, 10.0)
                t_restart = time.monotonic()
                second = cli_endpoint_start(artifact, state)
                t_up = time.monotonic()
                recovered = _wait_status(load, t_up, {200}, RECOVERY_LIMIT_S)
                record(restart_cli_s=t_up - t_restart, kill_first_503_s_slow=first_503 if first_503 is not None else -1.0,
                       recovery_after_restart_s=recovered if recovered is not None else -1.0,
                       recovery_after_kill_s=(t_up - t_kill + recovered) if recovered is not None else -1.0,
                       restart_same_port=second["endpoint_url"] == first["endpoint_url"])
                print(f"\nSIGKILL -> first 503 after {first_503} s; CLI restart took {t_up - t_restart:.2f} s "
                      f"({first['endpoint_url']} -> {second['endpoint_url']}); gateway 200 again {recovered} s later")
                if first_503 is None or first_503 > PROMPT_S:
                    failures.append(f"first 503 after SIGKILL came after {first_503} s")
                if recovered is None:
                    failures.append(f"the gateway did not find the restarted endpoint within {RECOVERY_LIMIT_S:.0f} s "
                                    f"({first['endpoint_url']} -> {second['endpoint_url']})")
                # -- SIGSTOP the (new, else old) endpoint
                pid = second["pid"]
                t_stop = time.monotonic()
                os.kill(pid, signal.SIGSTOP)
                try:
                    with HealthProbe(gateway.endpoint_url + "/health", interval=0.1) as probe:
                        time.sleep(min(ENDPOINT_BUDGET_S + 2, 12.0) if recovered is None else ENDPOINT_BUDGET_S + 2)
                finally:
                    os.kill(pid, signal.SIGCONT)
                t_cont = time.monotonic()
                held = [r for t, r in load.after(t_stop) if t <= t_cont + ENDPOINT_BUDGET_S]
                back = _wait_status(load, t_cont, {200}, RECOVERY_LIMIT_S)
                record(sigstop_answers=len(held), sigstop_slowest_answer_s=max((r.seconds for r in held), default=-1.0),
                       sigstop_statuses=sorted({r.status for r in held}), health_p99_during_sigstop_ms=1000 * probe.p99(),
                       recovery_after_sigcont_s=back if back is not None else -1.0)
                print(f"SIGSTOP: {len(held)} answers, slowest {max((r.seconds for r in held), default=0):.2f} s, "
                      f"statuses {sorted({r.status for r in held})}; /health p99 {1000 * probe.p99():.0f} ms; "
                      f"200 again {back} s after SIGCONT")
                slow = [r.seconds for r in held if r.seconds > ENDPOINT_BUDGET_S]
                if slow:
                    failures.append(f"{len(slow)} clients held longer than {ENDPOINT_BUDGET_S} s while the endpoint was "
                                    f"stopped (up to {max(slow):.1f} s)")
                if not held and recovered is not None:
                    failures.append("no client got any answer while the endpoint was stopped")
                if probe.p99() > 0.25:
                    failures.append(f"/health p99 {1000 * probe.p99():.0f} ms while the endpoint was stopped")
                if back is None:
                    failures.append("no 200 within 30 s after SIGCONT")
            failures += _check_all(load.replies)
        finally:
            for name in ("gateway", "endpoint"):  # each by the PID in its state file
                info = services.read_state(name)
                if info is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(info.pid, signal.SIGCONT)
                services.stop_service(name)
    assert not failures, "\n".join(dict.fromkeys(failures))
