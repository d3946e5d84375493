"""The loader on the real Intel images in ../shared (skipped when they are absent)."""

import pytest

from cloudalliance.data.folders import CLASSES, load_image_folder
from cloudalliance.data.explore import validate_folder

pytestmark = pytest.mark.shared_data


def test_real_training_split_loads_and_validates(shared_intel):
    folder = load_image_folder(shared_intel, "train")
    assert folder.classes == list(CLASSES)
    counts = folder.counts()
    assert sum(counts.values()) == len(folder) and len(folder) > 8000
    assert min(counts.values()) > 1000
    report = validate_folder(folder, progress=False)
    assert report.files == len(folder)
    assert report.sizes.get("150x150", 0) > 0.99 * len(folder)
    assert not [p for p in report.problems if p.kind in ("unreadable", "empty")]
    # the real data has a few images that are not 150x150: they are named, not fatal
    odd = [p for p in report.problems if p.kind == "odd-size"]
    assert len(odd) == len(folder) - report.sizes["150x150"]
