import json

import pytest

from cloudalliance.records import SCHEMA_VERSION, Record, RecordError, load_records, read_record, write_record
from cloudalliance.runs import open_run


def test_round_trip(tmp_path):
    rec = Record(stage="upload", name="objects", timings={"total_s": 1.5}, sizes={"files": 3},
                 metrics={"files_per_s": 2.0}, config={"workers": 4})
    path = write_record(tmp_path, rec)
    assert path.name == "upload-objects.json"
    back = read_record(path)
    assert back == rec
    assert json.loads(path.read_text())["version"] == SCHEMA_VERSION


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"stage": "nope"}, "stage 'nope' unknown; choose one of"),
        ({"backend": "gcp"}, "backend 'gcp' unknown"),
        ({"name": "has space"}, "name 'has space'"),
        ({"timings": {"total_s": "fast"}}, "timings.total_s must be a number"),
        ({"sizes": {"files": True}}, "sizes.files must be a number"),
        ({"metrics": []}, "metrics must be an object"),
    ],
)
def test_schema_errors_name_the_problem(changes, message):
    with pytest.raises(RecordError, match=message):
        Record(**{"stage": "upload", "name": "x", **changes})


def test_reading_a_record_of_another_version_fails_clearly(tmp_path):
    path = tmp_path / "upload-x.json"
    data = Record(stage="upload", name="x").to_dict()
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError, match="version is 99"):
        read_record(path)
    path.write_text("{not json")
    with pytest.raises(RecordError, match="not valid JSON"):
        read_record(path)


def test_load_filters_and_orders(tmp_path):
    write_record(tmp_path, Record(stage="upload", name="b", created="2026-01-02T00:00:00+00:00"))
    write_record(tmp_path, Record(stage="upload", name="a", created="2026-01-03T00:00:00+00:00"))
    write_record(tmp_path, Record(stage="data", name="exploration", created="2026-01-01T00:00:00+00:00"))
    assert [r.filename for r in load_records(tmp_path)] == ["data-exploration.json", "upload-b.json", "upload-a.json"]
    assert [r.name for r in load_records(tmp_path, "upload")] == ["b", "a"]
    assert not list(tmp_path.glob(".*tmp")), "atomic writes leave no temporary files"


def test_run_context_layout(tmp_path):
    run = open_run("r1", tmp_path, "local")
    assert run.records_dir.is_dir() and run.figures_dir.is_dir()
    run.write_record(Record(stage="upload", name="objects", backend="aws"))
    assert run.records()[0].backend == "local", "the run's backend wins"
    with pytest.raises(ValueError, match="not usable as a folder name"):
        open_run("../escape", tmp_path)
    with pytest.raises(ValueError, match="choose one of: local, aws"):
        open_run("r2", tmp_path, "azure")


# A version 1 record as PR-era code wrote it (no machine, no load): it must still load.
V1_RECORD = {
    "backend": "local", "config": {"preset": "fast"}, "cost": {}, "created": "2026-01-05T10:00:00+00:00",
    "host": "old-pc", "instance": "local-2cpu", "metrics": {"images_per_s": 12.5}, "name": "local-2cpu",
    "notes": [], "sizes": {"train_images": 100}, "stage": "training", "timings": {"total_s": 42.0},
    "version": 1,
}


def test_version_1_records_still_load_with_an_unknown_machine(tmp_path):
    path = tmp_path / "training-local-2cpu.json"
    path.write_text(json.dumps(V1_RECORD))
    rec = read_record(path)
    assert rec.timings["total_s"] == 42.0 and rec.host == "old-pc"
    assert rec.machine == {} and rec.load == {}, "an old record must not take this machine's block"
    assert rec.version == SCHEMA_VERSION >= 2
    write_record(tmp_path, rec)
    assert json.loads(path.read_text())["machine"] == {}


def test_every_new_record_carries_the_machine_and_load(tmp_path):
    from cloudalliance import machine

    machine.mark_start("upload")
    rec = Record(stage="upload", name="objects")
    assert rec.machine["logical_cores"] >= 1 and rec.machine["python"]
    assert rec.machine["libraries"]["torch"], "torch's version from package metadata"
    assert rec.load["start"] is not None and len(rec.load["end"]) == 3
    assert Record(stage="upload", name="again").load["start"] is None, "a start mark is used once"
    back = read_record(write_record(tmp_path, rec))
    assert back.machine == rec.machine and back.load == rec.load


def test_machine_and_load_must_be_objects():
    with pytest.raises(RecordError, match="machine must be an object"):
        Record(stage="upload", name="x", machine=["pc"])
