import io

import numpy as np
import pytest
from PIL import Image

from cloudalliance.data import synthetic
from cloudalliance.data.folders import CLASSES, load_image_folder
from cloudalliance.data.synthetic import SyntheticSpec, generate_synthetic


def test_render_is_deterministic_and_150px_rgb():
    a = synthetic.encode_jpeg(synthetic.render("sea", 3), 3)
    b = synthetic.encode_jpeg(synthetic.render("sea", 3), 3)
    c = synthetic.encode_jpeg(synthetic.render("sea", 4), 4)
    assert a == b
    assert a != c
    img = Image.open(io.BytesIO(a))
    assert img.size == (150, 150) and img.mode == "RGB"


def test_unknown_class_names_the_choices():
    with pytest.raises(ValueError, match="choose one of: buildings, forest"):
        synthetic.render("desert", 0)


def test_writes_kaggle_layout_and_resumes(tmp_path):
    root = generate_synthetic(tmp_path, SyntheticSpec(3, 2, 4, seed=5), progress=False)
    train = load_image_folder(root, "train")
    assert train.counts() == {c: 3 for c in CLASSES}
    assert load_image_folder(root, "test").counts() == {c: 2 for c in CLASSES}
    assert len(load_image_folder(root, "pred")) == 4
    victim = train.files[4]
    original = victim.read_bytes()
    victim.unlink()
    generate_synthetic(tmp_path, SyntheticSpec(3, 2, 4, seed=5), progress=False)
    assert victim.read_bytes() == original, "a rerun rewrites exactly the missing file"


def _features(path):
    img = Image.open(path).convert("RGB").resize((8, 8), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=float).ravel() / 255.0


def test_classes_are_learnable_but_not_trivial(tmp_path):
    """A nearest-centroid classifier on 8x8 thumbnails must beat chance by far, yet not be perfect."""
    root = generate_synthetic(tmp_path, SyntheticSpec(30, 15, 0, seed=11), progress=False)
    train, test = load_image_folder(root, "train"), load_image_folder(root, "test")
    x = np.stack([_features(p) for p in train.files])
    y = np.array(train.labels)
    centroids = np.stack([x[y == k].mean(0) for k in range(len(CLASSES))])
    xt = np.stack([_features(p) for p in test.files])
    pred = ((xt[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    accuracy = (pred == np.array(test.labels)).mean()
    assert accuracy > 0.5, f"synthetic classes should be learnable from colour layout (got {accuracy:.2f})"
    assert accuracy < 0.99, f"synthetic classes should not be separable by a thumbnail centroid ({accuracy:.2f})"
