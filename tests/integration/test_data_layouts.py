"""Every data layout the loader takes runs notebooks 01-04 through the course runner (papermill, the embedded S3,
training in a local process): Kaggle's full layout, seg_train alone, class folders directly, and `data split`'s
train/ + test/ as links and as copies. A layout without a test split gets a stratified held-out one; shards of
linked files carry the files' bytes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from cloudalliance.data import folders, synthetic
from cloudalliance.data import layout as data_layout
from cloudalliance.course import run_course
from cloudalliance.records import load_records

TRAIN_PER_CLASS, TEST_PER_CLASS, PRED = 10, 3, 4


@pytest.fixture(scope="module")
def kaggle_source(tmp_path_factory) -> Path:
    """Real-like JPEGs (150x150 synthetic scenes) in Kaggle's full, doubly nested layout."""
    root = tmp_path_factory.mktemp("kaggle")
    return synthetic.generate_synthetic(root, synthetic.SyntheticSpec(TRAIN_PER_CLASS, TEST_PER_CLASS, PRED, seed=3),
                                   progress=False)


def _layout(name: str, kaggle: Path, dest: Path) -> Path:
    train, test = kaggle / "seg_train" / "seg_train", kaggle / "seg_test" / "seg_test"
    if name == "kaggle":
        return kaggle
    if name == "seg_train only":
        shutil.copytree(train, dest / "seg_train" / "seg_train")
        return dest
    if name == "class folders":
        shutil.copytree(train, dest / "flat")
        return dest / "flat"
    # data split: train/<class> and test/<class>, linked or copied, from a folder of class folders
    folders.split_folder(train, dest / "split", test_fraction=0.3, seed=0, copy=name == "split copies")
    return dest / "split"


@pytest.mark.parametrize("layout", ["kaggle", "seg_train only", "class folders", "split links", "split copies"])
def test_notebooks_01_to_04_run_on_every_layout(layout, kaggle_source, tmp_path, monkeypatch):
    source = _layout(layout, kaggle_source, tmp_path / "source")
    monkeypatch.chdir(tmp_path)  # DATA_SOURCE relative to where the command runs, as `make course DATA=...` gives it
    tag = layout.replace(" ", "-").replace("_", "-")
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({
        "backend": "local",
        "runs_dir": str(tmp_path / "runs"),
        "parameters": {"DATA_SOURCE": os.path.relpath(source, tmp_path), "BUCKET": f"layout-{tag}", "PREFIX": tag,
                       "EPOCHS": 1, "IMG_SIZE": 48, "BATCH_SIZE": 8, "COMPARE_TOOLS": ["shards"], "FIT_IMAGES": 6,
                       "GALLERY_SIZE": 4, "PRED_SAMPLES": 4},
        "notebooks": ["01_data_exploration.ipynb", "02_s3_upload.ipynb",
                      {"notebook": "03_training.ipynb", "foreach": {"INSTANCE_TYPE": ["local-2cpu"]}},
                      "04_evaluation.ipynb"],
    }))
    result = run_course(params, run_id=tag)
    assert result.ok, [(r.job.output, r.status, r.error) for r in result.results]
    run = result.run.path
    records = {(r.stage, r.name): r for r in load_records(run / "records")}

    # the test split: as found, or held out from the training images (stratified, never trained on)
    evaluated = next(r for (stage, _), r in records.items() if stage == "evaluation")
    trained = next(r for (stage, _), r in records.items() if stage == "training")
    total = TRAIN_PER_CLASS * 6 + (TEST_PER_CLASS * 6 if layout == "kaggle" else 0)
    expected_test = {"kaggle": TEST_PER_CLASS * 6, "split links": 18, "split copies": 18}.get(layout, 12)
    assert evaluated.sizes["images"] == expected_test, evaluated.sizes
    assert trained.sizes["train_images"] + expected_test == total, (trained.sizes, expected_test, total)
    if layout != "kaggle":
        laid = run / "data" / "intel"
        assert data_layout.layout_note(laid), "a layout laid out as Kaggle's says what it did"
        train_names = {p.name for p in (laid / "seg_train" / "seg_train").rglob("*.jpg")}
        test_names = {p.name for p in (laid / "seg_test" / "seg_test").rglob("*.jpg")}
        per_class = [len(list(d.iterdir())) for d in (laid / "seg_test" / "seg_test").iterdir()]
        assert len(per_class) == 6 and len(set(per_class)) == 1, f"stratified: {per_class}"
        if layout in ("seg_train only", "class folders"):
            # the same file names recur across classes: compare (class, name) pairs
            pairs = lambda split: {(p.parent.name, p.name) for p in (laid / split / split).rglob("*.jpg")}  # noqa: E731
            assert not pairs("seg_train") & pairs("seg_test"), "held-out images are not trained on"
        assert train_names and test_names

    # the shards hold the files' bytes, not links to them
    shards = records[("upload", "shards")]
    assert shards.sizes["uploaded_bytes"] >= shards.sizes["bytes"] > 100_000, shards.sizes

    # seg_pred: predicted where there is one, skipped (with a sentence) where there is none
    executed = json.loads((run / "notebooks" / "04_evaluation.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    has_pred = layout == "kaggle"
    assert ("no seg_pred folder" in printed) != has_pred
    assert any(p.name.startswith("04_predictions") for p in (run / "figures").iterdir()) == has_pred
