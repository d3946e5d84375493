"""`bench compare` on runs whose records the real upload and training code wrote, one process per "machine".

Each run is made in its own Python process (the machine block is per process); one of them is restricted to a
single CPU with os.sched_setaffinity before anything is imported, so its machine block says 1 usable core and
its label differs from the unrestricted run's. The runs are packed with `records pack` and compared from the
archives, as a learner who carried them home would.
"""

import json
import os
import subprocess
import sys
import tarfile

import pytest

from cloudalliance.cli import main as cli

pytestmark = pytest.mark.slow  # three real uploads and trainings in subprocesses (~1 min on 2 cores)

MAKE_RUN = r"""
import os, sys, json
run_dir, data, endpoint, bucket, profile, cores, epochs = sys.argv[1:8]
if cores != "all":
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: int(cores)]))
from pathlib import Path
from cloudalliance import machine, storage
from cloudalliance.training import launch
from cloudalliance.records import write_record
records = Path(run_dir) / "records"
s3 = storage.create_s3_client("local", endpoint_url=endpoint)
storage.ensure_bucket(s3, bucket)
machine.mark_start("upload")
result = storage.upload_folder(Path(data), storage.S3Location(bucket, "intel"), s3, progress=False)
write_record(records, storage.upload_record(result, name="course-data"))
machine.mark_start("training")
trained = launch.run_local(Path(data) / "seg_train" / "seg_train", Path(run_dir) / "model", profile,
                           {"epochs": int(epochs), "img_size": 48, "batch_size": 8},
                           test_dir=Path(data) / "seg_test", progress=False)
write_record(records, launch.training_record(trained))
"""


def _make_run(path, data, endpoint, bucket, profile, cores, epochs=1):
    subprocess.run([sys.executable, "-c", MAKE_RUN, str(path), str(data), endpoint, bucket, profile, str(cores),
                    str(epochs)], check=True, timeout=300, capture_output=True)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_root, s3_server):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to make a one-core run beside a two-core one")
    root = tmp_path_factory.mktemp("machines")
    one = _make_run(root / "pc-1core", synthetic_root, s3_server.endpoint_url, "cmp-one", "local-1cpu", 1)
    two = _make_run(root / "pc-2core", synthetic_root, s3_server.endpoint_url, "cmp-two", "local-2cpu", "all")
    longer = _make_run(root / "pc-2epochs", synthetic_root, s3_server.endpoint_url, "cmp-long", "local-2cpu",
                       "all", epochs=2)
    return {"one": one, "two": two, "longer": longer}


def _records(run, stage):
    return [json.loads(p.read_text()) for p in sorted((run / "records").glob(f"{stage}-*.json"))]


def test_records_carry_each_process_machine_and_load(runs):
    for key, cores in (("one", 1), ("two", len(os.sched_getaffinity(0)))):
        for stage in ("upload", "training"):
            (rec,) = _records(runs[key], stage)
            assert rec["version"] == 2 and rec["machine"]["usable_cores"] == cores
            assert rec["load"]["start"] is not None and len(rec["load"]["end"]) == 3


def test_compare_archives_draws_the_three_figures(runs, tmp_path, capsys):
    archives = []
    for key in ("one", "two"):
        out = tmp_path / f"{key}.tar.gz"
        assert cli(["records", "pack", str(runs[key]), "--out", str(out)]) == 0
        with tarfile.open(out) as tar:
            names = tar.getnames()
        assert f"{runs[key].name}/records/training-{'local-1cpu' if key == 'one' else 'local-2cpu'}.json" in names
        assert not any("/model/" in n for n in names), "the model stays home"
        archives.append(str(out))
    capsys.readouterr()
    assert cli(["bench", "compare", *archives, "--out", str(tmp_path / "fig"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["run"]: r for r in result["rows"]}
    assert set(rows) == {"pc-1core", "pc-2core"}
    assert rows["pc-1core"]["label"] != rows["pc-2core"]["label"]
    assert "×1" in rows["pc-1core"]["label"] and "×1" not in rows["pc-2core"]["label"]
    truth = {_records(runs[k], "training")[0]["timings"]["total_s"] for k in ("one", "two")}
    assert {r["training_s"] for r in rows.values()} == truth
    assert sorted(p.rsplit("/", 1)[-1] for p in result["saved"]) == [
        "compare_combined.png", "compare_training.png", "compare_upload.png"]
    assert all(os.path.getsize(p) > 10_000 for p in result["saved"])

    assert cli(["bench", "compare", *archives, "--out", str(tmp_path / "fig")]) == 0
    table = capsys.readouterr().out
    slow = max(rows.values(), key=lambda r: r["training_s"])
    fast = min(rows.values(), key=lambda r: r["training_s"])
    cut = 100 * (slow["training_s"] - fast["training_s"]) / slow["training_s"]
    assert f"{cut:.1f}" in table and "ml.c5.4xlarge" in table and "74.6" in table


def test_runs_with_another_recipe_are_refused_unless_forced(runs, tmp_path, capsys):
    assert cli(["bench", "compare", str(runs["two"]), str(runs["longer"]), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "epochs: 1 in pc-2core; 2 in pc-2epochs" in err and "--force" in err
    assert not list(tmp_path.glob("*.png"))
    assert cli(["bench", "compare", str(runs["two"]), str(runs["longer"]), "--out", str(tmp_path), "--force"]) == 0
    assert "WARNING (--force)" in capsys.readouterr().err
    assert len(list(tmp_path.glob("*.png"))) == 3
