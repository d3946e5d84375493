"""Ctrl-C on `cloudalliance course run`: the kernel runs in a session of its own, so the interrupt reaches the
runner, and the running cell gets its KeyboardInterrupt only through the kernel's shutdown. Its cleanup (notebook
03 stops its training job there) must have the time to run."""

import os
import signal
import subprocess
import sys
import time

import nbformat
import yaml

CELL = """import pathlib, time
pathlib.Path(MARK + ".started").write_text("")
try:
    time.sleep(120)
except KeyboardInterrupt:
    time.sleep(6)  # a StopTrainingJob that takes its time (throttling, retries)
    pathlib.Path(MARK).write_text("cleaned up")
    raise
"""


def test_ctrl_c_gives_the_running_cell_time_to_clean_up(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('MARK = ""', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(CELL)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, notebooks / "wait.ipynb")
    mark = tmp_path / "mark"
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"backend": "local", "runs_dir": str(tmp_path / "runs"), "kernel": "python3",
                                      "parameters": {"MARK": str(mark)}, "notebooks": ["wait.ipynb"]}))
    code = (f"from cloudalliance import course\n"
            f"course.run_course({str(params)!r}, run_id='r1', notebooks_dir={str(notebooks)!r})")
    # as a terminal's foreground command has it, whatever this test runner inherited (a background job ignores it)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 120
    while not (tmp_path / "mark.started").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (tmp_path / "mark.started").exists(), proc.communicate()[0].decode()[-3000:]
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the runner's process group only
    out = proc.communicate(timeout=120)[0].decode()
    assert "KeyboardInterrupt" in out, out[-3000:]  # the interrupt goes on once the cell has cleaned up
    assert mark.is_file() and mark.read_text() == "cleaned up", out[-3000:]
