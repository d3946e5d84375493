"""The api ``load`` record that ``cloudalliance bench api`` writes, and what bench draws from it (no servers)."""

import pytest

from cloudalliance.bench import charts
from cloudalliance.bench import loadtest
from cloudalliance.api.calls import LatencyResult, api_record
from cloudalliance.records import load_records
from cloudalliance.runs import open_run


def _levels():
    return [loadtest.LevelResult(1, 2.0, [0.010, 0.012, 0.011, 0.050], ["200", "200", "200", "200"]),
            loadtest.LevelResult(4, 2.0, [0.020, 0.030, 0.040, 0.5, 0.1], ["200", "200", "503", "timeout", "200"])]


def test_level_summary_counts_errors_per_status_and_times_successes_only():
    one, four = (r.to_dict() for r in _levels())
    assert one["requests_per_s"] == 2.0 and one["errors"] == {} and one["p50_ms"] == pytest.approx(11.5)
    assert four["requests"] == 5 and four["ok"] == 3 and four["requests_per_s"] == 1.5
    assert four["errors"] == {"503": 1, "timeout": 1}
    # 20, 30, 100 ms (the 503 and the timeout are not latencies); linear interpolation: 30 + 0.98 * 70
    assert four["p99_ms"] == pytest.approx(98.6)


def test_load_record_round_trips_and_is_charted(tmp_path):
    run = open_run("load", tmp_path)
    # the sequential record first, the load record after: the latency histogram must still use "predict"
    run.write_record(api_record(LatencyResult(3, 0, [0.01, 0.02, 0.03]), "local", "http://x/predict"))
    run.write_record(loadtest.load_record(_levels(), "local", "http://x/predict", "base64 of a.jpg", 1234, 2.0))
    (rec,) = [r for r in load_records(run.records_dir, "api") if r.name == "load"]
    assert rec.sizes == {"concurrency": [1, 4], "requests": [4, 5], "ok": [4, 3], "payload_bytes": 1234}
    assert rec.metrics["best_requests_per_s"] == 2.0
    assert [level["concurrency"] for level in charts.api_load(run)] == [1, 4]
    assert charts.api_latency(run)["p50_ms"] == pytest.approx(20.0)
    fig = charts.figure_api_load(run)
    left, right = fig.axes
    assert [p.get_height() for p in left.patches] == [2.0, 1.5]
    assert list(right.lines[0].get_ydata()) == [rec.metrics["levels"][0]["p99_ms"], rec.metrics["levels"][1]["p99_ms"]]
    table = charts.summary_table(run)
    assert "api load (best level)" in table.index and "2.0 req/s at 1 clients" in table.loc["api load (best level)",
                                                                                          "throughput or latency"]
    assert table.loc["api (cost per 1,000 predictions)", "throughput or latency"].startswith("p50 20.0")


def test_no_load_record_draws_an_empty_chart(tmp_path):
    run = open_run("empty", tmp_path)
    assert charts.api_load(run) == []
    assert len(charts.figure_api_load(run).axes) == 2


def test_aws_needs_api_and_image_urls():
    """Notebook 06 on aws: no placeholder or empty URL gets as far as an HTTP call."""
    from cloudalliance.api.calls import check_api_urls

    check_api_urls("local", "", "")  # the local course starts its own gateway and image server
    check_api_urls("aws", "https://q1w2e3.execute-api.eu-west-1.amazonaws.com/predict", "https://images.test/a.jpg")
    for api_url, image_url, problem in [
        ("", "", "API_URL is empty; IMAGE_URL is empty"),
        ("https://abc123.execute-api.us-east-1.amazonaws.com/predict", "https://example.com/street.jpg",
         "is a placeholder"),
        ("execute-api/predict", "https://images.test/a.jpg", "is not an http(s) URL"),
    ]:
        with pytest.raises(ValueError, match="deploy the SAM stack first") as err:
            check_api_urls("aws", api_url, image_url)
        assert problem in str(err.value)
        assert "set API_URL to its ApiUrl output and IMAGE_URL to a public image" in str(err.value)


def test_newman_without_node_is_a_clear_error(tmp_path, monkeypatch):
    """Where node/npm are absent the newman tests skip with this reason instead of failing."""
    from cloudalliance.api.postman import NewmanUnavailable, ensure_newman

    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no node, no npm
    with pytest.raises(NewmanUnavailable, match="needs node and npm"):
        ensure_newman(tmp_path / "tools")
