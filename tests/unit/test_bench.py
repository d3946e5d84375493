import pytest

from cloudalliance import bench
from cloudalliance.api import LatencyResult, api_record
from cloudalliance.records import Record
from cloudalliance.runs import open_run


def test_reduction_vs_slowest():
    assert bench.reduction_vs_slowest({"a": 100.0, "b": 25.0, "c": 50.0}) == {"a": 0.0, "b": 75.0, "c": 50.0}
    assert bench.reduction_vs_slowest({}) == {}


def test_cost_per_1000_predictions():
    cost = bench.cost_per_1000_predictions(0.1, 0.115, lambda_memory_mb=1024)
    assert cost["endpoint_usd"] == pytest.approx(0.115 / 3600 * 100)
    assert cost["lambda_usd"] == pytest.approx(0.1 * 0.0000166667 * 1000 + 0.0002)
    assert cost["api_gateway_usd"] == pytest.approx(0.001)
    assert cost["total_usd"] == pytest.approx(sum(v for k, v in cost.items() if k != "total_usd"))


def test_figures_and_summary_come_from_records_only(tmp_path):
    run = open_run("b", tmp_path)
    run.write_record(Record(stage="upload", name="objects", timings={"total_s": 10.0}, sizes={"uploaded": 5},
                            metrics={"files_per_s": 0.5}))
    run.write_record(Record(stage="upload", name="objects-rerun", timings={"total_s": 1.0}, sizes={"uploaded": 0}))
    run.write_record(Record(stage="training", name="local-1cpu", instance="local-1cpu", timings={"total_s": 200.0},
                            metrics={"images_per_s": 10, "val_accuracy": 0.9}, cost={"usd": 0.0, "equivalent_usd": 0.01}))
    run.write_record(Record(stage="training", name="local-2cpu", instance="local-2cpu", timings={"total_s": 120.0},
                            metrics={"images_per_s": 18, "val_accuracy": 0.91}, cost={"usd": 0.0, "equivalent_usd": 0.005}))
    run.write_record(api_record(LatencyResult(3, 0, [0.01, 0.02, 0.03]), "local", "http://x/predict"))
    assert bench.upload_seconds(run) == {"objects": 10.0}, "a rerun that sent nothing is not an upload time"
    assert bench.reduction_vs_slowest(bench.training_seconds(run)) == {"local-1cpu": 0.0, "local-2cpu": 40.0}
    table = bench.summary_table(run)
    assert sorted(table.index) == sorted(["upload (objects)", "upload (objects-rerun)", "training", "training",
                                          "api (p50 / p99 ms)"])
    assert table.loc["api (p50 / p99 ms)", "seconds"] == pytest.approx(0.02)
    for make in (bench.figure_training, bench.figure_upload, bench.figure_combined, bench.figure_latency):
        assert make(run).axes
