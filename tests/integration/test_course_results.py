"""The course's results, checked here rather than in the lessons: every notebook runs once through the course
runner (papermill, a real kernel, the embedded S3, the local endpoint and gateway), then each test asserts on what
the run recorded — the records, the model folders, the figures — as computervision-recipes checks its notebooks."""

import json
from pathlib import Path

import pytest
import yaml

from cloudalliance.course import run_course
from cloudalliance.data.folders import CLASSES
from cloudalliance.records import load_records

NOTEBOOKS = ["01_data_exploration.ipynb", "02_s3_upload.ipynb",
             {"notebook": "03_training.ipynb", "foreach": {"INSTANCE_TYPE": ["local-1cpu", "local-2cpu"]}},
             "04_evaluation.ipynb", "05_deployment.ipynb", "06_lambda_api.ipynb", "07_benchmarking.ipynb"]
LOAD_CONCURRENCY = [1, 2]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("course")
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump({
        "backend": "local", "runs_dir": str(tmp / "runs"), "notebooks": NOTEBOOKS,
        "parameters": {"SYNTHETIC_TRAIN_PER_CLASS": 12, "SYNTHETIC_TEST_PER_CLASS": 4, "SYNTHETIC_PRED": 6,
                       "BUCKET": "course-results", "EPOCHS": 1, "IMG_SIZE": 64, "COLD_STARTS": 2,
                       "MODE_REQUESTS": 20, "LATENCY_REQUESTS": 10, "LOAD_SECONDS": 1.0,
                       "LOAD_CONCURRENCY": LOAD_CONCURRENCY, "PACKAGE_ARCHES": []},
    }))
    result = run_course(params, run_id="results")
    assert result.ok, [(r.job, r.error) for r in result.results if r.status != "passed"]
    return result.run.path


def records(run: Path, stage: str) -> dict:
    return {r.name: r for r in load_records(run / "records") if r.stage == stage}


def test_01_sees_the_six_classes_and_counts_every_file(run):
    (data,) = records(run, "data").values()
    for split in ("train", "test"):
        counts = data.metrics[f"{split}_counts"]
        assert list(counts) == list(CLASSES)
        assert sum(counts.values()) == data.sizes[f"{split}_files"]


def test_02_every_tool_uploads_every_file_and_a_rerun_sends_nothing(run):
    upload = records(run, "upload")
    first, again = upload["course-data"], upload["course-data-rerun"]
    assert again.sizes["uploaded"] == 0 and again.sizes["skipped"] == first.sizes["files"]
    tools = [upload[name] for name in ("aws-s3-sync", "s5cmd", "objects", "shards") if name in upload]
    assert len(tools) >= 3 and all(r.sizes["files"] == first.sizes["files"] for r in tools)


def test_03_each_instance_trains_its_epochs_and_writes_a_complete_model_folder(run):
    training = records(run, "training")
    assert set(training) == {"local-1cpu", "local-2cpu"}
    for record in training.values():
        folder = Path(record.config["model_dir"])
        assert {"model.pt", "labels.json", "preprocess.json", "config.json", "metrics.json"} <= \
            {p.name for p in folder.iterdir()}
        assert len(record.metrics["history"]) == record.config["epochs"] == 1
        assert 0.0 <= record.metrics["val_accuracy"] <= 1.0


def test_04_scores_every_test_image_once(run):
    (evaluation,) = records(run, "evaluation").values()
    assert list(evaluation.metrics["per_class"]) == list(CLASSES)
    matrix = evaluation.metrics["confusion_matrix"]
    assert len(matrix) == len(CLASSES) and sum(map(sum, matrix)) == evaluation.sizes["images"] == 4 * len(CLASSES)


def test_05_the_endpoint_serves_the_onnx_model_that_agrees_with_pytorch(run):
    (deployment,) = records(run, "deployment").values()
    assert deployment.metrics["same_label"] == 1.0 and deployment.metrics["max_abs_diff"] < 1e-4
    assert 0.0 <= deployment.metrics["endpoint_accuracy"] <= 1.0
    assert deployment.sizes["invocations"] > 0


def test_06_the_api_answers_refuses_bad_requests_and_both_serving_modes_run_clean(run):
    api = records(run, "api")
    assert api["predict"].sizes["errors"] == 0 and api["predict"].sizes["requests"] == 10
    levels = api["load"].metrics["levels"]
    assert [level["concurrency"] for level in levels] == LOAD_CONCURRENCY
    assert all(level["ok"] > 0 and not level["errors"] for level in levels)
    modes = [api["mode-endpoint"], api["mode-lambda"]]
    assert all(r.sizes["errors"] == 0 and 0 < r.metrics["peak_rss_mb"] < 2048 for r in modes)
    answers = json.loads((run / "api_examples.json").read_text())
    assert answers == {"base64 image": 200, "malformed JSON": 400, "no url or image": 400, "not an image": 415,
                       "cloud metadata address": 403, "ftp URL": 400}


def test_07_draws_the_summary_and_the_study_comparison(run):
    from cloudalliance.bench import charts
    from cloudalliance.runs import open_run

    context = open_run(run.name, run.parent)
    seconds = charts.training_seconds(context)
    assert set(seconds) == {"local-1cpu", "local-2cpu"} and all(v > 0 for v in seconds.values())
    assert all(0 <= v <= 100 for v in charts.reduction_vs_slowest(seconds).values())
    assert len(charts.summary_table(context)) >= 1
    figures = {p.name for p in (run / "figures").iterdir()}
    assert {"07_compare_upload.png", "07_compare_training.png", "07_compare_combined.png", "07_training_time.png"} <= figures
    report = (run / "report.html").read_text()
    assert "07_benchmarking.ipynb" in report
