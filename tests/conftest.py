from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_INTEL = Path(os.environ.get("CLOUDALLIANCE_SHARED_DATA", REPO.parent / "shared" / "data" / "intel"))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic data set in Kaggle's layout, with problem files in seg_train/buildings."""
    from cloudalliance.data.synthetic import SyntheticSpec, generate_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic(root, SyntheticSpec(8, 3, 5, seed=1, problem_files=True), progress=False)


@pytest.fixture(scope="session")
def shared_intel() -> Path:
    if not (SHARED_INTEL / "seg_train").is_dir():
        pytest.skip(f"real Intel images not present at {SHARED_INTEL}")
    return SHARED_INTEL


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory, synthetic_root):
    """``model.tar.gz`` of a one-epoch model at 48 px, built as the course builds it; and the test images."""
    from cloudalliance.serving import model_artifact
    from cloudalliance.training import launch
    from cloudalliance.data.training_set import decode_images

    out = tmp_path_factory.mktemp("tiny-artifact")
    result = launch.run_local(synthetic_root / "seg_train", out / "model", "local-2cpu",
                              {"epochs": 1, "img_size": 48, "batch_size": 8}, test_dir=synthetic_root / "seg_test",
                              progress=False)
    files = sorted((synthetic_root / "seg_test" / "seg_test").rglob("*.jpg"))
    path, _ = model_artifact.package_model(result.model_dir, out / "model.tar.gz",
                                    check_images=decode_images(files, 48, progress=False))
    return path, files
