"""Long tests on the real Intel images in ../shared (make test-slow; skipped when the images are absent)."""

import json

import pytest

from cloudalliance import storage
from cloudalliance.training import launch
from cloudalliance.cli import main as cli
from cloudalliance.data.folders import split_folder

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]


def test_train_and_evaluate_on_real_images(shared_intel, tmp_path):
    """A short real run must be far better than chance (1/6) on held-out real images."""
    split_folder(shared_intel, tmp_path / "split", test_fraction=0.1, seed=0)
    result = launch.run_local(tmp_path / "split" / "train", tmp_path / "model", "local-2cpu",
                              {"epochs": 1, "img_size": 96, "batch_size": 32, "max_train_images": 1500},
                              progress=False)
    assert result.metrics["val_accuracy"] > 0.6
    out = tmp_path / "eval.json"
    assert cli(["evaluate", "--model-dir", str(result.model_dir), "--data-dir", str(tmp_path / "split" / "test"),
                "--split", "auto", "--json", str(out), "--quiet"]) == 0
    figures = json.loads(out.read_text())
    assert figures["images"] == 874 and figures["accuracy"] > 0.6


@pytest.mark.parametrize("mode", ["objects", "shards"])
def test_upload_and_verify_all_real_images(shared_intel, s3, bucket, mode):
    loc = storage.S3Location(bucket, mode)
    result = storage.upload_folder(shared_intel, loc, s3, mode=mode, progress=False)
    print(f"\n{mode}: {result.files} files in {result.seconds:.2f} s ({result.files_per_s:.0f} files/s, {result.engine})")
    assert result.files == 8741 and result.uploaded == 8741
    assert storage.verify_upload(shared_intel, loc, s3).ok
