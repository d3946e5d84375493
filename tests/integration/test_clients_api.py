"""Real clients against the local gateway -> lambda/src/handler.py -> local endpoint, all on 127.0.0.1.

* the Postman collection, run by newman (Postman's own CLI runner, installed with npm into .tools/node);
* the original study's curl (``-d`` with no content type: form-encoded), run by the real curl binary;
* ``cloudalliance bench api``, the closed-loop load benchmark, and its api ``load`` record.
"""

from __future__ import annotations

import base64
import http.server
import json
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from handler_support import ImageServer, routes_for  # noqa: E402

from cloudalliance import cli  # noqa: E402
from cloudalliance.api import calls, postman
from cloudalliance.local import gateway as local_gateway
from cloudalliance.bench import loadtest
from cloudalliance.serving import model_artifact
from cloudalliance.local import endpoint_server
from cloudalliance.local import services
from cloudalliance.records import load_records  # noqa: E402

CURL = shutil.which("curl")


@pytest.fixture(scope="module")
def artifact(tiny_artifact):
    return tiny_artifact


@pytest.fixture(scope="module")
def stack(artifact):
    """Endpoint + gateway (private 127.0.0.1 allowed, as in the local course) + a server of a real JPEG."""
    endpoint = endpoint_server.start_local_endpoint(artifact[0], endpoint_name="clients-test")
    gateway = None
    try:
        gateway = local_gateway.start_local_gateway(endpoint.endpoint_url, "clients-test", allowed_private_hosts="127.0.0.1")
        jpeg = artifact[1][0].read_bytes()
        with ImageServer(routes_for(jpeg, 5_000_000)) as images:
            yield {"api": gateway.endpoint_url + local_gateway.ROUTE, "image_url": images.url + "/sea.jpg",
                   "images": images.url, "files": artifact[1], "log": Path(gateway.log_file)}
    finally:
        if gateway is not None:
            services.stop_service(local_gateway.GATEWAY_SERVICE)
        endpoint_server.stop_local_endpoint()


# --------------------------------------------------------------------------- Postman / newman


@pytest.fixture(scope="module")
def newman():
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are not installed; newman (Postman's CLI runner) needs them")
    try:
        return postman.ensure_newman()
    except postman.NewmanUnavailable as exc:
        pytest.skip(f"newman could not be installed: {exc}")


def _collection_file(tmp_path, collection) -> Path:
    path = tmp_path / "collection.json"
    path.write_text(json.dumps(collection))
    return path


def test_postman_collection_shape(stack):
    """v2.1 shape Postman's importer and newman need: variables, url with host/path, a real base64 JPEG."""
    c = postman.postman_collection(stack["api"], stack["image_url"], stack["files"][1])
    assert c["info"]["schema"] == postman.POSTMAN_SCHEMA
    assert {v["key"]: v["value"] for v in c["variable"]} == {"baseUrl": stack["api"][: -len(local_gateway.ROUTE)],
                                                             "imageUrl": stack["image_url"]}
    for item in c["item"]:
        assert item["request"]["url"] == {"raw": "{{baseUrl}}/predict", "host": ["{{baseUrl}}"], "path": ["predict"]}
        assert any("pm.response.to.have.status" in line for line in item["event"][0]["script"]["exec"])
    b64 = next(i for i in c["item"] if "base64" in i["name"])["request"]["body"]["raw"]
    assert base64.b64decode(json.loads(b64)["image"]) == stack["files"][1].read_bytes()
    with pytest.raises(ValueError, match="JPEG or PNG"):
        postman.postman_collection(stack["api"], stack["image_url"], b"not an image")


def test_newman_runs_every_request_and_assertion(stack, newman, tmp_path):
    """newman's JSON report (run.stats, run.failures): 7 requests, 21 assertions, none failed.

    The collection is written with a dead base URL and an image URL that 404s; ``--env-var`` overrides both,
    so the run also proves the requests go through the ``{{baseUrl}}``/``{{imageUrl}}`` variables.
    """
    collection = postman.postman_collection("http://127.0.0.1:9/predict", stack["images"] + "/gone.jpg",
                                        stack["files"][1])
    result = postman.run_newman(_collection_file(tmp_path, collection), tmp_path / "report.json",
                            {"baseUrl": stack["api"][: -len(local_gateway.ROUTE)], "imageUrl": stack["image_url"]},
                            newman=newman)
    stats = result.stats
    assert result.failures == [] and result.returncode == 0, result.output[-3000:] + stack["log"].read_text()[-3000:]
    assert stats["requests"] == {"total": 7, "pending": 0, "failed": 0}
    assert stats["assertions"]["total"] == 21 and stats["assertions"]["failed"] == 0
    assert stats["testScripts"]["failed"] == 0
    codes = [e["response"]["code"] for e in result.report["run"]["executions"]]
    assert codes == [200, 200, 200, 400, 400, 415, 403]
    assert "Image predicted: " in result.output  # the cli reporter names the passing pm.test


def test_newman_reports_failures(stack, newman, tmp_path):
    """The scripts can fail: an image URL that 404s gets a 422 from the API, so the two URL items fail."""
    collection = postman.postman_collection(stack["api"], stack["images"] + "/gone.jpg", stack["files"][1])
    result = postman.run_newman(_collection_file(tmp_path, collection), tmp_path / "report.json", newman=newman)
    assert result.returncode == 1
    assert result.stats["assertions"]["failed"] == 4  # status and "Image predicted" on each of the two URL items
    assert [e["response"]["code"] for e in result.report["run"]["executions"]][:2] == [422, 422]


def test_a_raw_only_url_is_empty_to_newman(stack, newman, tmp_path):
    """The old collection's url ({"raw": ...} only) runs as an empty URL: why host and path are written out."""
    collection = postman.postman_collection(stack["api"], stack["image_url"], stack["files"][1])
    for item in collection["item"]:
        item["request"]["url"] = {"raw": stack["api"]}
    result = postman.run_newman(_collection_file(tmp_path, collection), tmp_path / "report.json", newman=newman)
    assert result.returncode == 1 and result.stats["requests"]["failed"] == 7
    assert any("request url is empty" in f for f in result.failures)


# --------------------------------------------------------------------------- curl


def _curl(argv: list[str]) -> tuple[int, dict]:
    """Run the real curl with -i; the status from its status line, the JSON body after the blank line."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    head, _, body = proc.stdout.replace("\r\n", "\n").partition("\n\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@pytest.mark.parametrize("style", calls.CURL_STYLES)
def test_curl_commands_as_printed(stack, style):
    """The lines ``curl_command`` prints, run as printed. ``seed`` is the study's ``curl -i -X POST -d '{...}'``,
    which curl sends as application/x-www-form-urlencoded (curl man page, -d/--data:
    https://curl.se/docs/manpage.html#-d); the gateway hands it to the handler base64-encoded, as API Gateway does
    for a non-text body, and the handler still reads the JSON."""
    command = calls.curl_command(stack["api"], stack["image_url"], style, curl=CURL)
    status, body = _curl(shlex.split(command))
    assert status == 200, body
    assert body["message"] == "Image predicted: " + body["label"] and body["label"] in body["probabilities"]


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_base64_from_a_file_and_bad_requests(stack, tmp_path):
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps(calls.image_payload(stack["files"][2])))
    status, body = _curl([CURL, "-s", "-i", "-X", "POST", "-d", f"@{payload}", stack["api"]])  # form-encoded
    assert status == 200 and body["message"] == "Image predicted: " + body["label"]
    json_status, json_body = _curl([CURL, "-s", "-i", "-X", "POST", "-H", "Content-Type: application/json",
                                    "--data-binary", f"@{payload}", stack["api"]])
    assert json_status == 200 and json_body["label"] == body["label"]
    assert _curl([CURL, "-s", "-i", "-X", "POST", "-d", '{"url": ', stack["api"]])[0] == 400
    assert _curl([CURL, "-s", "-i", "-X", "POST", "-d", json.dumps({"url": postman.PRIVATE_URL}), stack["api"]])[0] == 403
    assert _curl([CURL, "-s", "-i", "-X", "POST", "-d",
                  json.dumps({"image": postman.NOT_AN_IMAGE_B64}), stack["api"]])[0] == 415


# --------------------------------------------------------------------------- bench api


def test_bench_api_on_the_local_gateway(stack, tmp_path, capsys):
    code = cli.main(["bench", "api", "--api", stack["api"], "--image", str(stack["files"][0]),
                     "--concurrency", "1", "3", "--seconds", "2", "--record-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "req/s" in out and "p99 ms" in out
    (record,) = load_records(tmp_path, "api")
    assert record.name == "load" and record.sizes["concurrency"] == [1, 3]
    for level in record.metrics["levels"]:
        assert level["ok"] == level["requests"] > 0 and level["errors"] == {}
        assert level["requests_per_s"] == pytest.approx(level["ok"] / level["elapsed_s"], rel=0.01)
        assert 0 < level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"]
        assert 1.9 < level["elapsed_s"] < 2 + 30  # bounded by --seconds (plus at most one request's timeout)


def test_bench_api_bad_arguments_exit_2(stack, tmp_path, capsys):
    image = str(stack["files"][0])
    dead = f"http://127.0.0.1:{services.free_port()}/predict"
    assert cli.main(["bench", "api", "--api", dead, "--image", image, "--seconds", "1"]) == 2
    assert "not reachable" in capsys.readouterr().err
    assert cli.main(["bench", "api", "--api", stack["api"], "--seconds", "1"]) == 2  # no payload
    assert cli.main(["bench", "api", "--api", stack["api"], "--image", image, "--image-url", "http://x/a.jpg"]) == 2
    assert cli.main(["bench", "api", "--api", stack["api"], "--image", str(tmp_path / "missing.jpg")]) == 2
    assert cli.main(["bench", "api", "--api", stack["api"], "--image", image, "--concurrency", "0"]) == 2
    assert cli.main(["bench", "api", "--api", stack["api"], "--image", image, "--seconds", "0"]) == 2
    assert cli.main(["bench", "api", "--api", "ftp://127.0.0.1/predict", "--image", image]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"image": postman.NOT_AN_IMAGE_B64}))
    assert cli.main(["bench", "api", "--api", stack["api"], "--payload-file", str(bad), "--seconds", "1"]) == 2
    assert "HTTP 415" in capsys.readouterr().err


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Every second POST answers 503; HTTP/1.1 keep-alive unless the class says HTTP/1.0 (close each time)."""

    protocol_version = "HTTP/1.1"
    lock = threading.Lock()
    count = 0

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            type(self).count += 1
            n = type(self).count
        body = b'{"label": "sea"}' if n % 2 else b'{"error": "busy"}'
        self.send_response(200 if n % 2 else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/1.0"])
def test_load_counts_errors_per_status_and_stops_at_the_request_cap(protocol):
    handler = type("Flaky", (_Flaky,), {"protocol_version": protocol, "count": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/predict"
        (level,) = loadtest.run_load(url, b'{"image": "x"}', [4], seconds=20, max_requests=60, warmup=1,
                                     progress=False)
    finally:
        server.shutdown()
        server.server_close()
    d = level.to_dict()
    assert d["requests"] == 60 and level.elapsed_s < 20  # the count cap ended it, not the clock
    assert set(d["errors"]) == {"503"} and d["ok"] + d["errors"]["503"] == 60 and 25 <= d["ok"] <= 35
    assert handler.count == 61  # the probe and the 60 requests, every one answered


def test_load_runs_inside_a_running_event_loop():
    """A Jupyter kernel runs an event loop, where asyncio.run refuses; run_load still works there."""
    import asyncio

    handler = type("Flaky", (_Flaky,), {"count": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    async def from_a_loop():
        return loadtest.run_load(f"http://127.0.0.1:{server.server_address[1]}/predict", b"{}", [2], seconds=5,
                                 max_requests=10, warmup=1, progress=False)

    try:
        (level,) = asyncio.run(from_a_loop())
    finally:
        server.shutdown()
        server.server_close()
    assert level.requests == 10 and level.ok == 5


def test_a_runs_saved_collection_works_after_the_run_through_api_start(artifact, newman, tmp_path, capsys):
    """The collection a run writes points at 8780/8781, which `cloudalliance api start --run <id>` serves again
    (the run's own servers are gone by then); the printed newman line runs every request and test script."""
    import shlex

    from cloudalliance.runs import open_run

    run = open_run("served", tmp_path / "runs", "local")
    (run.path / "artifacts").mkdir()
    shutil.copyfile(artifact[0], model_artifact.artifact_path(run))
    path = postman.write_postman_collection(run, artifact[1][0], artifact[1][1])
    saved = json.loads(path.read_text())
    assert {v["key"]: v["value"] for v in saved["variable"]} == dict(zip(("baseUrl", "imageUrl"), postman.postman_defaults()))
    try:
        assert cli.main(["api", "start", "--run", "served", "--runs-dir", str(tmp_path / "runs")]) == 0
        printed = capsys.readouterr().out
        line = next(l for l in printed.splitlines() if "newman:" in l).split("newman:", 1)[1].split("(make")[0]
        argv = shlex.split(line)
        argv[0] = str(newman)
        report = tmp_path / "report.json"
        proc = subprocess.run([*argv, "--reporters", "cli,json", "--reporter-json-export", str(report)],
                              capture_output=True, text=True, timeout=180)
        stats = json.loads(report.read_text())["run"]["stats"]
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert stats["requests"]["failed"] == 0 and stats["assertions"]["failed"] == 0, stats
        assert stats["requests"]["total"] == 7
    finally:
        services.stop_service(local_gateway.GATEWAY_SERVICE)
        services.stop_service(local_gateway.IMAGES_SERVICE)
        endpoint_server.stop_local_endpoint()


def test_api_start_run_names_what_is_missing(tmp_path):
    assert cli.main(["api", "start", "--run", "nothing", "--runs-dir", str(tmp_path)]) == 2
