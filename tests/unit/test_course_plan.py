import json
from pathlib import Path

import pytest

from cloudalliance.course import CourseError, load_params, plan

REPO = Path(__file__).resolve().parents[2]


def _notebook(path: Path, params: str, body: str = "print('ok')"):
    nb = {
        "cells": [
            {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": params, "outputs": [],
             "execution_count": None, "id": "p"},
            {"cell_type": "code", "metadata": {}, "source": body, "outputs": [], "execution_count": None, "id": "b"},
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb))


@pytest.fixture
def nbdir(tmp_path):
    _notebook(tmp_path / "01_a.ipynb", "RUN_ID = 'x'\nSEED = 0\n")
    _notebook(tmp_path / "03_b.ipynb", "RUN_ID = 'x'\nINSTANCE_TYPE = 'local-1cpu'\nEPOCHS = 1\n")
    return tmp_path


def test_each_notebook_gets_only_what_it_declares(nbdir):
    doc = {"parameters": {"SEED": 3, "EPOCHS": 2},
           "notebooks": ["01_a.ipynb", {"notebook": "03_b.ipynb", "parameters": {"EPOCHS": 5},
                                         "foreach": {"INSTANCE_TYPE": ["local-1cpu", "local-2cpu"]}}]}
    jobs = plan(doc, nbdir)
    assert [(j.output, j.parameters) for j in jobs] == [
        ("01_a.ipynb", {"SEED": 3}),
        ("03_b-local-1cpu.ipynb", {"EPOCHS": 5, "INSTANCE_TYPE": "local-1cpu"}),
        ("03_b-local-2cpu.ipynb", {"EPOCHS": 5, "INSTANCE_TYPE": "local-2cpu"}),
    ]


@pytest.mark.parametrize("entry, message", [
    ({"notebook": "01_a.ipynb", "parameters": {"NOPE": 1}}, r"has no parameters \['NOPE'\]"),
    ({"notebook": "03_b.ipynb", "foreach": {"NOPE": [1]}}, "no parameter 'NOPE'"),
    ({"notebook": "03_b.ipynb", "foreach": {"EPOCHS": []}}, "non-empty list"),
    ({"notebook": "09_missing.ipynb"}, "not found"),
])
def test_plan_errors(nbdir, entry, message):
    with pytest.raises(CourseError, match=message):
        plan({"notebooks": [entry]}, nbdir)


@pytest.mark.parametrize("text, message", [
    ("backend: gcp\nnotebooks: [a]", "choose one of: local, aws"),
    ("notebooks: []", "lists no notebook"),
    ("colour: red\nnotebooks: [a]", "unknown keys"),
    ("parameters: {seed: 1}\nnotebooks: [a]", "UPPER_CASE"),
    ("notebooks: [a", "not valid YAML"),
])
def test_params_file_errors(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(CourseError, match=message):
        load_params(path)


@pytest.mark.parametrize("name", ["local.yaml", "aws.yaml"])
def test_shipped_params_files_plan_cleanly(name):
    jobs = plan(load_params(REPO / "params" / name))
    assert [j.notebook for j in jobs][:2] == ["01_data_exploration.ipynb", "02_s3_upload.ipynb"]


def test_set_overrides_and_relative_data_paths_are_taken_from_where_the_command_runs(tmp_path):
    from cloudalliance.course import parse_overrides, resolve_paths

    got = parse_overrides(["DATA_SOURCE=../shared/data/intel", "EPOCHS=5", "COMPARE_TOOLS=[shards]"])
    assert got == {"DATA_SOURCE": "../shared/data/intel", "EPOCHS": 5, "COMPARE_TOOLS": ["shards"]}
    resolved = resolve_paths(got, tmp_path / "repo")
    assert resolved["DATA_SOURCE"] == str((tmp_path / "shared" / "data" / "intel").resolve())
    assert resolve_paths({"DATA_SOURCE": "synthetic"}, tmp_path) == {"DATA_SOURCE": "synthetic"}
    assert resolve_paths({"DATA_SOURCE": "/abs/intel"}, tmp_path) == {"DATA_SOURCE": "/abs/intel"}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_overrides(["data_source"])


def test_a_partial_rerun_keeps_every_notebooks_latest_result_in_the_report(tmp_path):
    from cloudalliance import course
    from cloudalliance.runs import open_run

    run = open_run("r", tmp_path, "local")
    job = lambda name: course.Job(f"{name}.ipynb", f"{name}.ipynb", {})  # noqa: E731
    first = [course.JobResult(job("01_a"), "passed", 1.0), course.JobResult(job("04_d"), "failed", 2.0, "boom"),
             course.JobResult(job("05_e"), "not run")]
    assert [r.status for r in course.remember_results(run, first)] == ["passed", "failed", "not run"]
    again = [course.JobResult(job("05_e"), "passed", 3.0)]  # course run --only 05
    merged = course.remember_results(run, again)
    assert [(r.job.output, r.status) for r in merged] == [("01_a.ipynb", "passed"), ("04_d.ipynb", "failed"),
                                                        ("05_e.ipynb", "passed")]
    assert merged[1].error == "boom"


def test_an_unknown_set_name_or_a_missing_data_folder_stops_before_a_run_exists(tmp_path):
    from cloudalliance import cli

    params = tmp_path / "p.yaml"
    params.write_text(f"runs_dir: {tmp_path / 'runs'}\nnotebooks: [01_data_exploration.ipynb]\n")
    for bad in ("DATA_SOURSE=/data/intel", "DATA_SOURCE=does/not/exist", "DATA_SOURCE="):
        assert cli.main(["course", "run", "--params", str(params), "--set", bad]) == 2, bad
    assert not (tmp_path / "runs").exists()


def test_a_failure_names_the_cells_line_that_raised():
    from cloudalliance.course import _failing_line

    traceback = ["\x1b[0;31m----\x1b[0m", "DataError   Traceback (most recent call last)",
                 "Cell \x1b[0;32mIn[3], line 7\x1b[0m\n      5 run = x\n\x1b[0;32m----> 7\x1b[0m root = data.prepare_dataset(A)\n"
                 "      8 print(root)\n", "File /x/data.py:134, in prepare_dataset()\n--> 134 return y\n"]
    assert _failing_line(traceback) == "root = data.prepare_dataset(A)"
    assert _failing_line([]) == ""
