"""Test session set-up shared by tests/ and the notebooks run under nbval.

Local servers started by tests or notebooks keep their state in a private
folder for this session, and every one of them is stopped when it ends.
"""

import os
import shutil
import tempfile

_STATE = tempfile.mkdtemp(prefix="cloudalliance-test-state-")
os.environ["CLOUDALLIANCE_STATE_DIR"] = _STATE
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_sessionfinish(session, exitstatus):
    from cloudalliance.local import services

    stopped = services.stop_all()
    if stopped:
        print(f"\n[cloudalliance] stopped local services left running: {', '.join(stopped)}")
    shutil.rmtree(_STATE, ignore_errors=True)
