"""The API as a Postman collection (good requests and hostile ones, each with its expected status), and newman,
Postman's command-line runner, to run it.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from pathlib import Path
from typing import Any


from .calls import ROUTE
from .lambda_package import REPO_ROOT
from ..errors import CloudallianceError


POSTMAN_SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"


NOT_AN_IMAGE_B64 = base64.b64encode(b"hello world").decode()  # valid base64, not an image: 415


PRIVATE_URL = "http://169.254.169.254/latest/meta-data/"  # the cloud metadata address: 403


def _postman_url(api_url: str) -> tuple[str, dict[str, Any]]:
    """``{{baseUrl}}/predict`` as Postman itself stores it: raw plus the parsed host and path.

    Postman's SDK builds a request URL from the object's parts and never reads ``raw`` when ``url`` is an object
    (postman-collection v4.4.0, lib/collection/url.js, ``Url#update``: ``_.isString(url) ? Url.parse(url) : url``,
    then only protocol/host/port/path/query are used), so a ``{"raw": ...}``-only URL runs as an empty URL
    ("runtime:extensions~request: request url is empty", postman-runtime lib/requester/requester.js). The parts
    below are what ``new Url('{{baseUrl}}/predict').toJSON()`` gives (schema: the v2.1 ``url`` definition at
    https://schema.getpostman.com/json/collection/v2.1.0/collection.json).
    """
    base, sep, _ = api_url.rstrip("/").rpartition(ROUTE)
    if sep and base:
        return base, {"raw": "{{baseUrl}}" + ROUTE, "host": ["{{baseUrl}}"], "path": [ROUTE.strip("/")]}
    return api_url, {"raw": "{{baseUrl}}", "host": ["{{baseUrl}}"]}


def _postman_item(title: str, url: dict[str, Any], raw_body: str, status: int, tests: list[str],
                  content_type: str = "application/json", description: str = "") -> dict[str, Any]:
    script = [f'pm.test("HTTP {status}", function () {{ pm.response.to.have.status({status}); }});',
              'pm.test("answers JSON", function () { pm.response.to.be.json; });', *tests]
    return {"name": title,
            "event": [{"listen": "test", "script": {"type": "text/javascript", "exec": script}}],
            "request": {"method": "POST", "description": description,
                        "header": [{"key": "Content-Type", "value": content_type}],
                        "body": {"mode": "raw", "raw": raw_body,
                                 **({"options": {"raw": {"language": "json"}}} if "json" in content_type else {})},
                        "url": dict(url)}}


def postman_collection(api_url: str, image_url: str, example_image: str | os.PathLike | bytes,
                       name: str = "cloudalliance API") -> dict[str, Any]:
    """A Postman v2.1 collection that Postman and newman both run.

    Collection variables ``baseUrl`` (the API without ``/predict``) and ``imageUrl`` hold ``api_url`` and
    ``image_url``; override them with a Postman environment or ``newman run --env-var baseUrl=...``.
    Items: an image URL (JSON, and form-encoded as the seed's ``curl -d`` sends it), a real base64 JPEG
    (``example_image``), and the bad requests with the status each gets (400, 400, 415, 403). Each item's
    ``pm.test`` script checks the status and, on success, ``"Image predicted: <label>"``.
    """
    image = example_image if isinstance(example_image, bytes) else Path(example_image).read_bytes()
    if not image.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")):
        raise ValueError("example_image must be a JPEG or PNG file (it becomes the collection's base64 example)")
    base_url, url = _postman_url(api_url)
    predicted = [
        'pm.test("Image predicted: <label>", function () {',
        "    var body = pm.response.json();",
        '    pm.expect(body.message).to.eql("Image predicted: " + body.label);',
        "    pm.expect(body.probabilities).to.have.property(body.label);",
        "});",
    ]
    refused = ['pm.test("says why", function () {',
               '    pm.expect(pm.response.json().error).to.be.a("string").and.not.empty;',
               "});"]
    url_body = json.dumps({"url": "{{imageUrl}}"}, indent=2)
    items = [
        _postman_item("Predict from an image URL", url, url_body, 200, predicted),
        _postman_item("Predict from an image URL, form-encoded like curl -d", url, url_body, 200, predicted,
                      content_type="application/x-www-form-urlencoded",
                      description="What `curl -X POST -d '{\"url\": ...}'` sends: the JSON body, form content type."),
        _postman_item("Predict from a base64 image", url,
                      json.dumps({"image": base64.b64encode(image).decode()}), 200, predicted,
                      description=f"A real {len(image):,}-byte image, base64-encoded."),
        _postman_item("Bad request: malformed JSON", url, '{"url": ', 400, refused),
        _postman_item("Bad request: neither url nor image", url, json.dumps({"picture": "{{imageUrl}}"}), 400, refused),
        _postman_item("Bad request: not an image", url, json.dumps({"image": NOT_AN_IMAGE_B64}), 415, refused),
        _postman_item("Bad request: a private address", url, json.dumps({"url": PRIVATE_URL}), 403, refused),
    ]
    return {"info": {"name": name, "schema": POSTMAN_SCHEMA,
                     "description": "POST {\"url\": ...} or {\"image\": \"<base64>\"}; set baseUrl and imageUrl."},
            "variable": [{"key": "baseUrl", "value": base_url, "type": "string"},
                         {"key": "imageUrl", "value": image_url, "type": "string"}],
            "item": items}


POSTMAN_PORTS = {"api": 8780, "images": 8781}  # where the saved collection's baseUrl and imageUrl point


POSTMAN_IMAGE = "example.jpg"


def postman_defaults() -> tuple[str, str]:
    """The saved collection's ``baseUrl`` and ``imageUrl``: what ``cloudalliance api start --run <id>`` serves."""
    return f"http://127.0.0.1:{POSTMAN_PORTS['api']}", f"http://127.0.0.1:{POSTMAN_PORTS['images']}/{POSTMAN_IMAGE}"


def write_postman_collection(run, url_image: str | os.PathLike, example_image: str | os.PathLike) -> Path:
    """``runs/<id>/postman_collection.json``, whose requests still work after the run has ended.

    The run's own servers are gone then, so the collection points at :func:`postman_defaults`, which
    :func:`serve_run` (``cloudalliance api start --run <id>``) serves again: the run's model behind the gateway,
    and ``url_image`` (copied into ``runs/<id>/postman/``) as the image to fetch.
    """
    import shutil

    folder = run.path / "postman"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(url_image, folder / POSTMAN_IMAGE)
    base_url, image_url = postman_defaults()
    return run.save_json("postman_collection.json", postman_collection(base_url + ROUTE, image_url, example_image))


def newman_command(served: dict[str, str], newman: str = ".tools/node/node_modules/.bin/newman") -> str:
    """The ``newman run`` line for :func:`serve_run`'s URLs: ``--env-var`` only where a port had to change."""
    base_url, image_url = postman_defaults()
    extra = [f"--env-var baseUrl={served['base_url']}" if served["base_url"] != base_url else "",
             f"--env-var imageUrl={served['image_url']}" if served["image_url"] != image_url else ""]
    return " ".join([newman, "run", served["collection"], *filter(None, extra)])


NEWMAN_VERSION = "6.2.2"


TOOLS_DIR = REPO_ROOT / ".tools" / "node"


class NewmanUnavailable(CloudallianceError):
    """node/npm are not installed, or npm could not install newman."""


def ensure_newman(prefix: str | os.PathLike = TOOLS_DIR, version: str = NEWMAN_VERSION, timeout: float = 300.0) -> Path:
    """The newman executable, installed with npm into ``prefix`` (an ignored folder) the first time."""
    import shutil
    import subprocess

    prefix = Path(prefix)
    exe = prefix / "node_modules" / ".bin" / "newman"
    package = prefix / "node_modules" / "newman" / "package.json"
    if exe.exists() and package.is_file() and json.loads(package.read_text()).get("version") == version:
        return exe
    npm, node = shutil.which("npm"), shutil.which("node")
    if not npm or not node:
        raise NewmanUnavailable("newman needs node and npm on PATH (e.g. apt-get install nodejs npm)")
    prefix.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel=error",
                               f"newman@{version}"], capture_output=True, text=True, timeout=timeout)
    except (subprocess.TimeoutExpired, OSError) as exc:
        raise NewmanUnavailable(f"npm install newman@{version} did not finish: {exc}") from exc
    if proc.returncode != 0 or not exe.exists():
        raise NewmanUnavailable(f"npm install newman@{version} failed ({proc.returncode}): {proc.stderr[-800:]}")
    return exe


@dataclasses.dataclass
class NewmanResult:
    returncode: int
    report: dict[str, Any]  # newman's JSON reporter output
    output: str

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        return self.report.get("run", {}).get("stats", {})

    @property
    def failures(self) -> list[str]:
        return [f"{f.get('source', {}).get('name', '?')}: {f.get('error', {}).get('message', '')}"
                for f in self.report.get("run", {}).get("failures", [])]


def run_newman(collection: str | os.PathLike, report_path: str | os.PathLike, variables: dict[str, str] | None = None,
               newman: str | os.PathLike | None = None, timeout: float = 300.0) -> NewmanResult:
    """``newman run`` a collection with ``--env-var`` overrides and the cli and json reporters."""
    import subprocess

    exe = str(newman or ensure_newman())
    argv = [exe, "run", str(collection), "--reporters", "cli,json", "--reporter-json-export", str(report_path),
            "--timeout-request", "30000", "--color", "off", "--disable-unicode"]
    for key, value in (variables or {}).items():
        argv += ["--env-var", f"{key}={value}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    try:
        report = json.loads(Path(report_path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise NewmanUnavailable(f"newman wrote no JSON report ({exc}); its output:\n{proc.stdout[-2000:]}"
                                f"{proc.stderr[-2000:]}") from exc
    return NewmanResult(proc.returncode, report, proc.stdout + proc.stderr)
