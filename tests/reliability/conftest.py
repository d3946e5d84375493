"""Fixtures of the reliability suite (servers in a private state folder, stopped by PID) and its summary.

The tally of requests by status and the measured numbers are printed at the end of the session and written to
``runs/reliability/summary-<time>.json`` and ``reliability-summary.json`` in the pytest tmp folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rel_support import METRICS, REPO, TALLY, running_stack  # noqa: E402


@pytest.fixture(scope="session")
def rel_artifact(tiny_artifact):
    """A tiny trained model's model.tar.gz and two real test images (JPEG, PNG)."""
    from PIL import Image

    path, files = tiny_artifact
    jpeg_file = files[0]
    buf = io.BytesIO()
    Image.open(jpeg_file).convert("RGB").save(buf, "PNG")
    return path, jpeg_file.read_bytes(), buf.getvalue()


@pytest.fixture(scope="module")
def stack(rel_artifact, tmp_path_factory):
    with running_stack(rel_artifact, tmp_path_factory.mktemp("reliability-state")) as s:
        yield s


# --------------------------------------------------------------------------- summary


def summary() -> dict:
    return {"requests": TALLY["requests"], "by_status": dict(sorted(TALLY["by_status"].items())),
            "by_test": dict(sorted(TALLY["by_test"].items())), "metrics": dict(sorted(METRICS.items()))}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not TALLY["requests"]:
        return
    data = summary()
    out = REPO / "runs" / "reliability"
    try:
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"summary-{time.strftime('%Y%m%dT%H%M%S')}.json"
        path.write_text(json.dumps(data, indent=2) + "\n")
    except OSError:
        path = None
    with contextlib.suppress(Exception):
        base = config._tmp_path_factory.getbasetemp()  # noqa: SLF001 - pytest's own tmp folder
        (base / "reliability-summary.json").write_text(json.dumps(data, indent=2) + "\n")
    tr = terminalreporter
    tr.section("reliability tally and measurements")
    tr.write_line(f"requests sent: {data['requests']}")
    tr.write_line("by status: " + ", ".join(f"{k}: {v}" for k, v in data["by_status"].items()))
    tr.write_line("by test: " + ", ".join(f"{k}: {v}" for k, v in data["by_test"].items()))
    for k, v in data["metrics"].items():
        tr.write_line(f"  {k}: {v}")
    if path:
        tr.write_line(f"written to {path}")
