"""Size limits, a decompression bomb, and latency under concurrency, measured on the real processes.

RSS growth is read from /proc/<pid>/status (proc(5)): VmHWM is the peak resident set, so its growth over a
request bounds what the request cost at its worst, even if the memory was freed before we looked.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import time

import pytest

from hostile_server import png_bomb
from rel_support import (check_reply, percentile, post_json, record, rss_kib, send, send_large)

GATEWAY_KEYS = {"label", "confidence", "probabilities", "message"}
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def bomb():
    return png_bomb(12000, 12000)


def _peak_growth_mib(pid: int, action):
    before_rss, before_hwm = rss_kib(pid), rss_kib(pid, "VmHWM")
    result = action()
    after_rss, after_hwm = rss_kib(pid), rss_kib(pid, "VmHWM")
    return result, (after_hwm - before_hwm) / 1024, (after_rss - before_rss) / 1024


def test_gateway_refuses_a_100_mb_body(stack):
    """100 MB of JSON to the gateway: 413, and the gateway's peak RSS grows by < 48 MiB (it must not buffer it)."""
    pid = stack.gateway.pid
    block = b'{"image": "' + b"A" * (MIB - 20)
    r, hwm, rss = _peak_growth_mib(pid, lambda: send_large(stack.gateway.endpoint_url, "/predict", 100 * MIB,
                                                           {"Content-Type": "application/json"}, block=block))
    record(gateway_100mb_status=r.status, gateway_100mb_seconds=r.seconds, gateway_100mb_peak_rss_growth_mib=hwm,
           gateway_100mb_rss_growth_mib=rss)
    print(f"\ngateway 100 MB body: HTTP {r.status} in {r.seconds:.2f} s, peak RSS +{hwm:.0f} MiB, RSS +{rss:.0f} MiB")
    assert r.status == 413, f"HTTP {r.status} ({r.error}) {r.body[:200]!r}"
    check_reply(r, what="100 MB body")
    assert hwm < 48, f"the gateway's peak RSS grew by {hwm:.0f} MiB for a refused body"


def test_endpoint_refuses_a_50_mb_body(stack):
    """50 MB to the endpoint: 413, and its peak RSS grows by < 32 MiB."""
    pid = stack.endpoint.pid
    r, hwm, rss = _peak_growth_mib(pid, lambda: send_large(stack.endpoint.endpoint_url, "/invocations", 50 * MIB,
                                                           {"Content-Type": "image/jpeg"},
                                                           block=b"\xff\xd8\xff" + b"\0" * (MIB - 3)))
    record(endpoint_50mb_status=r.status, endpoint_50mb_seconds=r.seconds, endpoint_50mb_peak_rss_growth_mib=hwm,
           endpoint_50mb_rss_growth_mib=rss)
    print(f"\nendpoint 50 MB body: HTTP {r.status} in {r.seconds:.2f} s, peak RSS +{hwm:.0f} MiB, RSS +{rss:.0f} MiB")
    assert r.status == 413, f"HTTP {r.status} ({r.error}) {r.body[:200]!r}"
    check_reply(r, what="50 MB body")
    assert hwm < 32, f"the endpoint's peak RSS grew by {hwm:.0f} MiB for a refused body"


def test_bomb_png_is_refused_cheaply(stack, bomb):
    """A 12000 x 12000 PNG (144 M pixels, ~140 kB): 413 from the endpoint and through the gateway, with the
    endpoint's peak RSS growing by < 64 MiB (decoding it would take 137 MiB as L, 412 MiB as RGB)."""
    pid = stack.endpoint.pid
    direct, hwm1, _ = _peak_growth_mib(pid, lambda: send(stack.endpoint.endpoint_url, "POST", "/invocations", bomb,
                                                         {"Content-Type": "image/png"}, timeout=60))
    via, hwm2, _ = _peak_growth_mib(pid, lambda: post_json(stack.gateway.endpoint_url,
                                                           {"image": base64.b64encode(bomb).decode()}, timeout=60))
    record(bomb_png_bytes=len(bomb), bomb_endpoint_status=direct.status, bomb_endpoint_seconds=direct.seconds,
           bomb_endpoint_peak_rss_growth_mib=hwm1, bomb_gateway_status=via.status, bomb_gateway_seconds=via.seconds,
           bomb_gateway_endpoint_peak_rss_growth_mib=hwm2)
    print(f"\nbomb PNG ({len(bomb)} bytes): endpoint HTTP {direct.status} in {direct.seconds:.2f} s (peak RSS "
          f"+{hwm1:.0f} MiB); gateway HTTP {via.status} in {via.seconds:.2f} s (endpoint peak RSS +{hwm2:.0f} MiB)")
    failures = []
    for what, r in (("endpoint", direct), ("gateway", via)):
        try:
            check_reply(r, success_keys=GATEWAY_KEYS if what == "gateway" else {"label"}, what=f"bomb via {what}")
            assert r.status == 413, f"bomb via {what}: HTTP {r.status} {r.body[:200]!r}"
        except AssertionError as exc:
            failures.append(str(exc))
    if max(hwm1, hwm2) >= 64:
        failures.append(f"the endpoint's peak RSS grew by {max(hwm1, hwm2):.0f} MiB for the bomb")
    assert not failures, "\n".join(failures)


def _load(url_fn, total: int, concurrency: int):
    """``total`` requests from ``concurrency`` threads; (seconds per request, statuses, wall seconds)."""
    def one(i):
        return url_fn(i)

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        replies = list(pool.map(one, range(total)))
    return [r.seconds for r in replies], [r.status for r in replies], time.perf_counter() - t0


@pytest.mark.parametrize("scale", [pytest.param(1, id="quick"), pytest.param(4, id="full", marks=pytest.mark.slow)])
def test_ping_p99_at_concurrency_16(stack, scale):
    """/ping at concurrency 16 while nothing else runs: p99 <= 250 ms."""
    secs, statuses, wall = _load(lambda i: send(stack.endpoint.endpoint_url, "GET", "/ping", timeout=10),
                                 80 * scale, 16)
    p99 = percentile(secs, 99)
    record(**{f"ping_c16_p99_ms_x{scale}": 1000 * p99, f"ping_c16_req_per_s_x{scale}": len(secs) / wall})
    print(f"\n/ping c16: {len(secs)} requests, p99 {1000 * p99:.0f} ms, {len(secs) / wall:.0f} req/s")
    assert set(statuses) == {200}, statuses
    assert p99 <= 0.25, f"/ping p99 {1000 * p99:.0f} ms at concurrency 16"


@pytest.mark.parametrize("scale", [pytest.param(1, id="quick"), pytest.param(4, id="full", marks=pytest.mark.slow)])
def test_gateway_throughput_and_latency(stack, scale):
    """Base64 image predictions through the gateway at concurrency 1, 4 and 16: all 200; req/s and p99 recorded;
    and /health answers within 250 ms p99 while 16 clients predict."""
    from rel_support import HealthProbe

    payload = {"image": base64.b64encode(stack.jpeg).decode()}
    for conc in (1, 4, 16):
        n = (20 if conc == 1 else 40) * scale
        with HealthProbe(stack.gateway.endpoint_url + "/health", interval=0.1) as probe:
            secs, statuses, wall = _load(lambda i: post_json(stack.gateway.endpoint_url, payload, timeout=60), n, conc)
        record(**{f"gateway_c{conc}_req_per_s_x{scale}": n / wall,
                  f"gateway_c{conc}_p50_ms_x{scale}": 1000 * percentile(secs, 50),
                  f"gateway_c{conc}_p99_ms_x{scale}": 1000 * percentile(secs, 99),
                  f"health_p99_during_c{conc}_ms_x{scale}": 1000 * probe.p99()})
        print(f"\ngateway c{conc}: {n} requests, {n / wall:.1f} req/s, p50 {1000 * percentile(secs, 50):.0f} ms, "
              f"p99 {1000 * percentile(secs, 99):.0f} ms; /health p99 {1000 * probe.p99():.0f} ms")
        assert set(statuses) == {200}, f"c{conc}: statuses {sorted(set(statuses))}"
        if conc == 16:
            assert probe.p99() <= 0.25, f"/health p99 {1000 * probe.p99():.0f} ms while 16 clients predict"
