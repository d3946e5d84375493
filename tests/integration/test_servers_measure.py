"""Measured: the local gateway and endpoint under load, a trickled fetch, bombs, and a kill + restart.

``make test-slow`` runs it (or ``.venv/bin/python -m pytest -q -s -m slow tests/integration/test_servers_measure.py``);
it prints one JSON line of numbers (``SERVER NUMBERS {...}``) and checks the targets: /health and /ping p99
at most 250 ms under load, requests/s at concurrency 16 within 10 % of concurrency 1, bombs 413 with the
endpoint's peak RSS growing < 100 MB. Everything is bounded (clients, seconds) and stopped by pid.
"""

import http.server
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cloudalliance.api import calls
from cloudalliance.local import gateway as local_gateway
from cloudalliance.bench import loadtest
from cloudalliance.serving import model_artifact
from cloudalliance.local import endpoint_server
from cloudalliance.local import services
from cloudalliance.training import launch

from test_servers_hardening import Load, bomb_png, health_times, vm  # noqa: E402 - same folder

pytestmark = pytest.mark.slow

IMG_SIZE = int(os.environ.get("MEASURE_IMG_SIZE", "150"))  # the Intel images' own size
LEVEL_SECONDS = float(os.environ.get("MEASURE_LEVEL_S", "8"))


class _Trickle(http.server.BaseHTTPRequestHandler):
    """An image URL that sends its bytes one every 0.1 s (the fetch budget ends it, not the gateway)."""

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            self.wfile.write(b"\xff\xd8\xff")
            for _ in range(300):  # at most 30 s
                time.sleep(0.1)
                self.wfile.write(b"0")
                self.wfile.flush()
        except OSError:
            pass


@pytest.fixture(scope="module")
def servers(tmp_path_factory, synthetic_root, shared_intel_or_none):
    out = tmp_path_factory.mktemp("measure")
    result = launch.run_local(synthetic_root / "seg_train", out / "model", "local-2cpu",
                              {"epochs": 1, "img_size": IMG_SIZE, "batch_size": 8},
                              test_dir=synthetic_root / "seg_test", progress=False)
    artifact, _ = model_artifact.package_model(result.model_dir, out / "model.tar.gz")
    endpoint = endpoint_server.ensure_local_endpoint(artifact, "measure")
    gateway = local_gateway.start_local_gateway(endpoint.endpoint_url, "measure", allowed_private_hosts="127.0.0.1")
    folder = shared_intel_or_none or synthetic_root / "seg_test"
    image = sorted(folder.rglob("*.jpg"))[0]
    yield {"artifact": artifact, "endpoint": endpoint, "gateway": gateway, "image": image}
    services.stop_service(local_gateway.GATEWAY_SERVICE)
    endpoint_server.stop_local_endpoint()


@pytest.fixture(scope="module")
def shared_intel_or_none():
    """A folder of real Intel images when ../shared has them (as tests/conftest.py finds them), else None."""
    repo = Path(__file__).resolve().parents[2]
    root = Path(os.environ.get("CLOUDALLIANCE_SHARED_DATA", repo.parent / "shared" / "data" / "intel"))
    return next((root / split for split in ("seg_test", "seg_train") if (root / split).is_dir()), None)


def test_measure_the_local_servers(servers):
    numbers: dict = {"img_size": IMG_SIZE, "image": servers["image"].name, "cores": services.cpu_count()}
    gw, ep = servers["gateway"].endpoint_url, servers["endpoint"].endpoint_url
    jpeg = servers["image"].read_bytes()
    payload = json.dumps(calls.image_payload(servers["image"])).encode()

    # 1. requests/s and p99 through the gateway at concurrency 1, 4, 16 (closed loop, bench api's client)
    levels = loadtest.run_load(gw + local_gateway.ROUTE, payload, (1, 4, 16), seconds=LEVEL_SECONDS, progress=False)
    for level in levels:
        d = level.to_dict()
        numbers[f"gateway_c{d['concurrency']}"] = {"req_s": round(d["requests_per_s"], 1),
                                                  "p50_ms": round(d["p50_ms"], 1), "p99_ms": round(d["p99_ms"], 1),
                                                  "errors": d["errors"]}

    # 2. endpoint /ping p99 while 16 clients invoke it
    with Load(ep, "/invocations", jpeg, "image/jpeg", clients=16, max_seconds=15) as load:
        time.sleep(0.5)
        pings = health_times(ep + "/ping", 5.0)
    numbers["endpoint_ping_c16"] = {"p50_ms": round(1000 * float(np.percentile(pings, 50)), 1),
                                    "p99_ms": round(1000 * float(np.percentile(pings, 99)), 1),
                                    "invocations": len(load.statuses), "statuses": sorted(set(load.statuses))}

    # 3. gateway /health p99 while 4 fetches of a trickling URL run
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        body = json.dumps({"url": f"http://127.0.0.1:{server.server_address[1]}/trickle.jpg"}).encode()
        with Load(gw, local_gateway.ROUTE, body, "application/json", clients=4, max_seconds=12) as trickle:
            time.sleep(0.5)
            health = health_times(gw + "/health", 4.0)
            predict = calls.call_api(gw + local_gateway.ROUTE, calls.image_payload(servers["image"]))
    finally:
        server.shutdown()
        server.server_close()
    numbers["gateway_health_during_trickle"] = {
        "p50_ms": round(1000 * float(np.percentile(health, 50)), 1),
        "p99_ms": round(1000 * float(np.percentile(health, 99)), 1),
        "valid_predict_ms": round(1000 * predict.seconds, 1), "valid_predict_status": predict.status,
        "trickle_statuses": sorted(set(trickle.statuses)),
        "trickle_max_s": round(max(trickle.latencies), 2) if trickle.latencies else None}

    # 4. bombs: 4 clients posting a 12000x12000 PNG
    bomb = bomb_png()
    pid = servers["endpoint"].pid
    rss0, hwm0 = vm(pid, "VmRSS"), vm(pid, "VmHWM")
    with Load(ep, "/invocations", bomb, "image/png", clients=4, max_seconds=5) as bombs:
        time.sleep(0.5)
        pings_bombs = health_times(ep + "/ping", 4.0)
    numbers["bombs"] = {"png_bytes": len(bomb), "requests": len(bombs.statuses), "statuses": sorted(set(bombs.statuses)),
                        "p99_ms": round(1000 * float(np.percentile(bombs.latencies, 99)), 1),
                        "rss_before_mb": round(rss0 / 1024, 1), "rss_after_mb": round(vm(pid, "VmRSS") / 1024, 1),
                        "peak_rss_growth_mb": round((vm(pid, "VmHWM") - hwm0) / 1024, 1),
                        "ping_p99_ms": round(1000 * float(np.percentile(pings_bombs, 99)), 1)}

    # 5. recovery: SIGKILL the endpoint, restart it as `cloudalliance endpoint start` does, first 200 via the gateway
    old = services.running(endpoint_server.ENDPOINT_SERVICE)
    os.kill(old.pid, signal.SIGKILL)
    services.wait_port_closed(old.ports["http"], 10)
    t0 = time.monotonic()
    new = endpoint_server.ensure_local_endpoint(servers["artifact"], "measure")
    restarted = time.monotonic() - t0
    while calls.call_api(gw + local_gateway.ROUTE, calls.image_payload(servers["image"])).status != 200:
        assert time.monotonic() - t0 < 60
        time.sleep(0.05)
    numbers["recovery"] = {"restart_s": round(restarted, 2), "first_200_s": round(time.monotonic() - t0, 2),
                           "same_port": new.ports["http"] == old.ports["http"]}

    print("\nSERVER NUMBERS " + json.dumps(numbers))
    c1, c16 = numbers["gateway_c1"], numbers["gateway_c16"]
    assert not c1["errors"] and not c16["errors"] and not numbers["gateway_c4"]["errors"]
    assert numbers["endpoint_ping_c16"]["p99_ms"] <= 250
    assert numbers["gateway_health_during_trickle"]["p99_ms"] <= 250
    assert numbers["bombs"]["statuses"] == [413] and numbers["bombs"]["peak_rss_growth_mb"] < 100
    assert numbers["recovery"]["same_port"]
    assert c16["req_s"] >= 0.9 * c1["req_s"], f"c16 {c16['req_s']} req/s vs c1 {c1['req_s']}"
