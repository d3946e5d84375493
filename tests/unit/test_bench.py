import numpy as np
import pytest

from cloudalliance.bench import charts, comparison, serving_costs
from cloudalliance.bench import prices
from cloudalliance.api.calls import LatencyResult, api_record
from cloudalliance.records import Record
from cloudalliance.runs import open_run


def test_reduction_vs_slowest():
    assert charts.reduction_vs_slowest({"a": 100.0, "b": 25.0, "c": 50.0}) == {"a": 0.0, "b": 75.0, "c": 50.0}
    assert charts.reduction_vs_slowest({}) == {}


def test_cost_per_1000_predictions():
    cost = prices.cost_per_1000_predictions(0.1, 0.115, lambda_memory_mb=1024)
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
    assert charts.upload_seconds(run) == {"objects": 10.0}, "a rerun that sent nothing is not an upload time"
    assert charts.reduction_vs_slowest(charts.training_seconds(run)) == {"local-1cpu": 0.0, "local-2cpu": 40.0}
    table = charts.summary_table(run)
    api_row = "api (cost per 1,000 predictions)"
    assert sorted(table.index) == sorted(["upload (objects)", "upload (objects-rerun)", "training", "training", api_row])
    assert table.loc[api_row, "throughput or latency"].startswith("p50 20.0 / p99")  # milliseconds, said as such
    assert table.loc[api_row, "seconds"] == "" and table.loc["upload (objects)", "seconds"] == 10.0
    for make in (charts.figure_training, charts.figure_upload, charts.figure_combined, charts.figure_latency):
        assert make(run).axes


# --------------------------------------------------------------------------- bench compare (records only)

import json
import tarfile
import zipfile

from cloudalliance.cli import main as cli


def test_reductions_reproduce_the_studys_published_pairs():
    """From the study's relative times, the code's 'vs previous' gives its 56.7 % and ~27 % back."""
    rel = comparison.study_relative_times()
    assert rel == pytest.approx({"PC": 100.0, "ml.m5.xlarge": 81.3, "ml.m5.4xlarge": 35.2, "ml.c5.4xlarge": 25.4})
    cuts = comparison.reductions(rel)
    assert list(cuts) == ["PC", "ml.m5.xlarge", "ml.m5.4xlarge", "ml.c5.4xlarge"], "slowest first"
    assert cuts["ml.m5.4xlarge"]["vs_baseline"] == pytest.approx(64.8)
    assert cuts["ml.m5.4xlarge"]["vs_previous"] == pytest.approx(56.7, abs=0.05)
    assert cuts["ml.c5.4xlarge"]["previous"] == "ml.m5.4xlarge"
    assert round(cuts["ml.c5.4xlarge"]["vs_previous"]) == 28  # the study prints 27 %: its rounding
    other = comparison.reductions(rel, baseline="ml.m5.xlarge")
    assert other["PC"]["vs_baseline"] == pytest.approx(-23.0, abs=0.1), "slower than the baseline: negative"
    with pytest.raises(comparison.CompareError, match="none of"):
        comparison.reductions(rel, baseline="mac")


def _machine(cores, itype="unknown", cpu="Intel(R) Xeon(R) CPU E5-2686"):
    return {"cpu_model": cpu, "logical_cores": cores, "usable_cores": cores, "instance": {"type": itype},
            "host": "h"}


def _run(root, run_id, block, seconds, upload_s=5.0, epochs=3, files=100, load=(1.0, 1.0, 1.0), instance="x"):
    run = open_run(run_id, root)
    run.write_record(Record(stage="upload", name="course-data", timings={"total_s": upload_s},
                            sizes={"files": files, "bytes": files * 1000, "uploaded": files}, machine=block,
                            load={"start": list(load), "end": list(load)}))
    run.write_record(Record(stage="training", name=instance, instance=instance, timings={"total_s": seconds},
                            sizes={"train_images": files}, machine=block, load={"start": None, "end": list(load)},
                            config={"preset": "fast", "arch": "efficientnet_lite0", "img_size": 128,
                                    "epochs": epochs}))
    return run.path


def test_compare_labels_reductions_contention_and_refusals(tmp_path, capsys):
    pc = _run(tmp_path, "pc", _machine(4, cpu="Intel(R) Core(TM) i5"), 1000.0, upload_s=50.0, load=(9, 9, 9))
    m5 = _run(tmp_path, "m5", _machine(4, "ml.m5.xlarge"), 813.0, upload_s=20.0)
    c5 = _run(tmp_path, "c5", _machine(16, "ml.c5.4xlarge"), 254.0, upload_s=10.0)
    result = comparison.compare([str(pc), str(m5), str(c5)], out=tmp_path / "out")
    rows = {r["run"]: r for r in result["rows"]}
    assert rows["m5"]["label"] == "ml.m5.xlarge" and rows["pc"]["label"] == "Intel Core i5 ×4"
    assert rows["pc"]["contended"] and not rows["c5"]["contended"], "load 9 on 4 cores: contended"
    table = result["table"]
    assert table.loc["ml.m5.xlarge", "training -% vs base"] == pytest.approx(18.7)
    assert table.loc["ml.c5.4xlarge", "training -% vs prev"] == pytest.approx(68.8, abs=0.05)
    assert table.loc["ml.c5.4xlarge", "upload -% vs base"] == pytest.approx(80.0)
    assert "Intel Core i5 ×4 *" in table.index
    assert sorted(p.name for p in result["saved"]) == ["compare_combined.png", "compare_training.png",
                                                       "compare_upload.png"]
    base = comparison.compare([str(pc), str(m5), str(c5)], baseline="ml.m5.xlarge")["table"]
    assert base.loc["ml.c5.4xlarge", "training -% vs base"] == pytest.approx(68.8, abs=0.05)

    longer = _run(tmp_path, "longer", _machine(4, "ml.m5.4xlarge"), 400.0, epochs=5, files=90)
    with pytest.raises(comparison.CompareError) as err:
        comparison.compare([str(m5), str(longer)])
    assert "epochs: 3 in m5; 5 in longer" in str(err.value) and "uploaded file count" in str(err.value)
    assert cli(["bench", "compare", str(m5), str(longer), "--out", str(tmp_path / "no")]) == 2
    assert "--force" in capsys.readouterr().err and not (tmp_path / "no").exists()
    assert comparison.compare([str(m5), str(longer)], force=True)["differences"]
    assert cli(["bench", "compare", str(tmp_path / "absent")]) == 2


def test_same_machine_twice_is_told_apart_and_old_records_compare(tmp_path):
    a = _run(tmp_path / "a", "r", _machine(2), 100.0, instance="local-1cpu")
    b = _run(tmp_path / "b", "r", _machine(2), 60.0, instance="local-2cpu")
    old = tmp_path / "old" / "records"
    old.mkdir(parents=True)
    v1 = json.loads((a / "records" / "training-local-1cpu.json").read_text())
    for key in ("machine", "load"):
        v1.pop(key)
    (old / "training-local-1cpu.json").write_text(json.dumps({**v1, "version": 1, "host": "oldpc"}))
    rows = comparison.compare([str(a), str(b), str(old.parent)])["rows"]
    labels = [r["label"] for r in rows]
    assert len(set(labels)) == 3, labels
    assert labels[2] == "oldpc", "a version 1 record: labelled by its host"
    assert [r["run"] for r in rows] == ["r", "r#2", "old"]


def test_pack_round_trip_and_unsafe_archives(tmp_path):
    run = _run(tmp_path, "trip", _machine(2), 10.0)
    (run / "data").mkdir()
    (run / "data" / "big.bin").write_bytes(b"x" * 1000)
    (tmp_path / "carry").mkdir()
    packed = comparison.pack_run(run, tmp_path / "carry")
    assert packed.name == "trip.tar.gz"
    with tarfile.open(packed) as tar:
        assert "trip/records/upload-course-data.json" in tar.getnames()
        assert not any("data" in n.split("/")[1] for n in tar.getnames() if "/" in n)
    back = comparison.compare([str(packed)])["rows"]
    assert back[0]["training_s"] == 10.0 and back[0]["run"] == "trip"
    zipped = tmp_path / "trip.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for p in (run / "records").glob("*.json"):
            zf.write(p, f"trip/records/{p.name}")
    assert comparison.compare([str(zipped)])["rows"][0]["training_s"] == 10.0
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.json", "{}")
    with pytest.raises(comparison.CompareError, match="unsafe"):
        comparison.compare([str(evil)])
    evil_tar = tmp_path / "evil.tar.gz"
    with tarfile.open(evil_tar, "w:gz") as tar:
        tar.add(run / "records" / "upload-course-data.json", arcname="../../escape.json")
    with pytest.raises(comparison.CompareError, match="unsafe"):
        comparison.compare([str(evil_tar)])
    assert not (tmp_path / "escape.json").exists()
    with pytest.raises(comparison.CompareError, match="not a run folder"):
        comparison.pack_run(tmp_path / "carry")


def test_records_command_arguments(tmp_path, capsys):
    run = _run(tmp_path, "cli", _machine(2), 10.0)
    assert cli(["records", str(run), "extra"]) == 2
    assert "records pack" in capsys.readouterr().err
    assert cli(["records", "pack", str(tmp_path / "missing")]) == 2
    assert cli(["records", "pack", str(run), "--out", str(tmp_path / "x.rar")]) == 2
    assert cli(["records", "pack", str(run)]) == 0
    assert (tmp_path / "cli.tar.gz").is_file()
    assert cli(["records", str(run)]) == 0 and "training-x.json" in capsys.readouterr().out


# --------------------------------------------------------------------------- serving modes by traffic


def _mode(mode: str, handler_ms: float, memory: int | None = None):
    from cloudalliance.records import Record

    return Record(stage="api", name=f"mode-{mode}", backend="local", instance="local gateway",
                  metrics={"handler_warm_p50_ms": handler_ms, "warm_p50_ms": handler_ms + 3},
                  config={"mode": mode, "lambda_memory_mb": memory})


def test_serving_costs_per_request_and_break_even_from_the_price_table():
    from cloudalliance.bench import prices

    modes = {"endpoint": _mode("endpoint", 40.0), "lambda": _mode("lambda", 300.0, 1769)}
    costs = serving_costs.serving_costs(modes, hosting_instance="ml.m5.large")
    endpoint = "endpoint ml.m5.large + forwarding Lambda"
    x86 = "model in Lambda, x86_64, 1769 MB"
    api_usd = prices.HTTP_API_PER_MILLION_REQUESTS / 1e6
    req_usd = prices.LAMBDA_PER_MILLION_REQUESTS / 1e6
    assert costs["flat_usd_per_month"][endpoint] == pytest.approx(0.115 * 730)
    assert costs["per_request_usd"][endpoint] == pytest.approx(0.040 * 0.5 * 0.0000166667 + req_usd + api_usd)
    # at 1,769 MB the function has a full vCPU: the measured 300 ms stands
    assert costs["per_request_usd"][x86] == pytest.approx(0.300 * 1769 / 1024 * 0.0000166667 + req_usd + api_usd)
    arm = costs["per_request_usd"]["model in Lambda, arm64, 1769 MB"]
    assert arm < costs["per_request_usd"][x86]
    extra = costs["per_request_usd"][x86] - costs["per_request_usd"][endpoint]
    expected = 0.115 * 730 / (extra * 730)
    assert costs["break_even_per_hour"][x86] == pytest.approx(expected)
    # on the chart the two lines meet there
    rates = costs["rates"]
    i = int(np.searchsorted(rates, expected))
    assert costs["lines"][x86][i - 1] < costs["lines"][endpoint][i - 1]
    assert costs["lines"][x86][i + 1] > costs["lines"][endpoint][i + 1]


def test_no_break_even_beyond_what_one_instance_can_serve():

    # a 5 ms model: one ml.m5.large (2 vCPUs) serves at most 1.44 M requests an hour, and the in-Lambda
    # function costs only a little more per request, so the endpoint never catches up
    modes = {"endpoint": _mode("endpoint", 9.0), "lambda": _mode("lambda", 5.0, 1024)}
    costs = serving_costs.serving_costs(modes)
    assert costs["instance_capacity_per_hour"] == pytest.approx(2 * 3600 / 0.005)
    label = "model in Lambda, x86_64, 1024 MB"
    assert costs["break_even_per_hour"][label] is None
    table = serving_costs.serving_cost_table(modes)
    assert table.loc[label, "endpoint cheaper above (req/h)"] == "never"
    # below 1,769 MB the function gets a share of a vCPU: the duration grows as memory shrinks
    assert "8.6 ms at 1024 MB" in costs["notes"][label]


def test_serving_cost_figure_without_records_says_so():

    fig = serving_costs.figure_serving_cost({})
    assert "notebook 06" in fig.axes[0].texts[0].get_text()


def test_cold_starts_are_billed_at_low_traffic_and_vanish_at_high():
    from cloudalliance.bench import prices

    inside = _mode("lambda", 5.0, 1024)
    inside.metrics["init_median_ms"] = 400.0
    costs = serving_costs.serving_costs({"endpoint": _mode("endpoint", 9.0), "lambda": inside})
    label = "model in Lambda, x86_64, 1024 MB"
    init_usd = 0.400 * 1024 / 1024 * prices.LAMBDA_PER_GB_SECOND_BY_ARCH["x86_64"]
    assert costs["per_cold_start_usd"][label] == pytest.approx(init_usd)
    rates, line = costs["rates"], costs["lines"][label]
    # one request an hour: nearly every one is cold (no request in the 10 minutes before it)
    at_one = (costs["per_request_usd"][label] + np.exp(-1 / 6) * init_usd) * 730
    assert line[0] == pytest.approx(at_one)
    # at 10,000 an hour the environments stay warm: the line is the warm cost alone
    i = int(np.searchsorted(rates, 10_000))
    assert line[i] == pytest.approx(costs["per_request_usd"][label] * rates[i] * 730, rel=1e-9)
