"""The course runner, for real: papermill, a kernel, the embedded S3, the HTML report."""

import json
from pathlib import Path

import pytest
import yaml

from cloudalliance.course import CourseError, run_course
from cloudalliance.records import load_records


def test_course_runs_01_and_02_and_stops_its_servers(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({
        "backend": "local",
        "runs_dir": str(tmp_path / "runs"),
        "parameters": {"SYNTHETIC_TRAIN_PER_CLASS": 5, "SYNTHETIC_TEST_PER_CLASS": 2, "SYNTHETIC_PRED": 3,
                       "BUCKET": "course-test"},
        "notebooks": ["01_data_exploration.ipynb", "02_s3_upload.ipynb"],
    }))
    result = run_course(params, run_id="t1")
    run = result.run.path
    assert result.ok
    assert sorted(p.name for p in (run / "notebooks").iterdir()) == ["01_data_exploration.ipynb", "02_s3_upload.ipynb"]
    names = {r.filename for r in load_records(run / "records")}
    assert {"data-exploration.json", "upload-course-data.json", "upload-course-data-rerun.json",
            "upload-aws-s3-sync.json", "upload-s5cmd.json", "upload-objects.json", "upload-shards.json"} <= names
    upload = json.loads((run / "records" / "upload-course-data.json").read_text())
    assert upload["sizes"]["files"] == 5 * 6 + 2 * 6 + 3 + 1  # images + synthetic.json
    assert {"01_class_counts.png", "01_samples.png", "02_upload.png"} <= {p.name for p in (run / "figures").iterdir()}
    report = (run / "report.html").read_text()
    assert "Course run" in report and "02_s3_upload.ipynb" in report and "data:image/png;base64" in report
    # the runner's own state folder has no server left running
    state = run / "services"
    assert not list(state.glob("*.service.json")), "servers started by the course are stopped"


def _failing_notebook(folder: Path):
    nb = {
        "cells": [
            {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "RUN_ID = 'x'\n",
             "outputs": [], "execution_count": None, "id": "p"},
            {"cell_type": "code", "metadata": {}, "source": "x = 1", "outputs": [], "execution_count": None,
             "id": "a"},
            {"cell_type": "code", "metadata": {}, "source": "raise ValueError('boom in cell two')", "outputs": [],
             "execution_count": None, "id": "b"},
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    (folder / "01_fails.ipynb").write_text(json.dumps(nb))


def test_a_failing_notebook_names_the_notebook_and_cell(tmp_path):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _failing_notebook(nbdir)
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"runs_dir": str(tmp_path / "runs"), "notebooks": ["01_fails.ipynb"]}))
    with pytest.raises(CourseError) as info:
        run_course(params, run_id="bad", notebooks_dir=nbdir)
    message = str(info.value)
    assert "01_fails.ipynb failed at cell 3 (In [4]) `raise ValueError" in message
    assert "ValueError: boom in cell two" in message
    assert (tmp_path / "runs" / "bad" / "report.html").exists()
    assert (tmp_path / "runs" / "bad" / "notebooks" / "01_fails.ipynb").exists()


def test_cli_exit_code_on_failure(tmp_path):
    import subprocess
    import sys

    params = tmp_path / "p.yaml"
    params.write_text(f"runs_dir: {tmp_path / 'runs'}\nnotebooks: [09_nothing.ipynb]\n")
    proc = subprocess.run([sys.executable, "-m", "cloudalliance", "course", "run", "--params", str(params)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "09_nothing.ipynb not found" in proc.stderr
    assert not (tmp_path / "runs").exists(), "a bad params file creates no run folder"
