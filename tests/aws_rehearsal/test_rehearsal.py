"""The aws branch of notebooks 02, 03, 05 and 06, run twice against the local AWS emulator (rehearse.py).

Slow (about 3-4 minutes on 2 cores): `make test-aws` runs the same script directly; `make test-slow` runs this."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_the_aws_branch_runs_twice_and_cleans_up(tmp_path):
    proc = subprocess.run([sys.executable, str(HERE / "rehearse.py"), "--passes", "2", "--interrupt", "--workdir",
                           str(tmp_path)], capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    print(out)
    assert "[rehearsal] pass 1: passed" in out and "[rehearsal] pass 2: passed" in out, out[-6000:]
    assert "[rehearsal] interrupt: passed" in out, out[-3000:]  # Ctrl-C mid-training stopped the job
    assert "[rehearsal] cleanup: passed" in out, out[-3000:]
    assert "[rehearsal] IAM: " in out and "actions called, all in iam/" in out, out[-3000:]
    assert proc.returncode == 0
