from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_INTEL = Path(os.environ.get("CLOUDALLIANCE_SHARED_DATA", REPO.parent / "shared" / "data" / "intel"))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic data set in Kaggle's layout, with problem files in seg_train/buildings."""
    from cloudalliance.data import SyntheticSpec, generate_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic(root, SyntheticSpec(8, 3, 5, seed=1, problem_files=True), progress=False)


@pytest.fixture(scope="session")
def shared_intel() -> Path:
    if not (SHARED_INTEL / "seg_train").is_dir():
        pytest.skip(f"real Intel images not present at {SHARED_INTEL}")
    return SHARED_INTEL
