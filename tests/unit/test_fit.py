"""How a non-square image becomes the model's square (presets.FITS), shared by training, evaluation and serving."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from cloudalliance.evaluation import rectangular_crop
from cloudalliance.presets import FITS, Preprocess, fit_square, load_rgb


def _striped(width, height):
    """Left third red, middle green, right third blue: where each fit takes its pixels from shows."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 3, 0] = 255
    arr[:, width // 3: 2 * width // 3, 1] = 255
    arr[:, 2 * width // 3:, 2] = 255
    return Image.fromarray(arr)


def test_square_images_are_the_same_in_every_fit():
    img = _striped(150, 150)
    out = [np.asarray(fit_square(img, 96, fit)) for fit in FITS]
    assert all(np.array_equal(out[0], o) for o in out[1:])


def test_crop_keeps_the_centre_squash_keeps_everything_pad_keeps_everything_with_grey_bars():
    img = _striped(300, 100)  # 3:1 landscape
    crop = np.asarray(fit_square(img, 90, "crop"))
    squash = np.asarray(fit_square(img, 90, "squash"))
    pad = np.asarray(fit_square(img, 90, "pad"))
    assert crop.shape == squash.shape == pad.shape == (90, 90, 3)
    # the centred 100x100 square is the green third only
    assert crop[:, :, 1].mean() > 250 and crop[:, :, 0].mean() < 5 and crop[:, :, 2].mean() < 5
    # squashed: all three thirds, side by side
    assert squash[:, 5, 0] .mean() > 250 and squash[:, 45, 1].mean() > 250 and squash[:, 85, 2].mean() > 250
    # padded: the whole strip in the middle 30 rows, mid-grey above and below
    assert (pad[:25] == 127).all() and (pad[-25:] == 127).all()
    assert pad[45, 5, 0] > 250 and pad[45, 85, 2] > 250


def test_load_rgb_applies_the_fit_to_bytes():
    buf = io.BytesIO()
    _striped(300, 100).save(buf, "PNG")
    crop = load_rgb(buf.getvalue(), 64, fit="crop")
    assert crop.shape == (64, 64, 3) and crop[:, :, 1].mean() > 250
    with pytest.raises(ValueError, match="choose one of: squash, crop, pad"):
        load_rgb(buf.getvalue(), 64, fit="stretch")


def test_preprocess_config_carries_the_fit_and_old_configs_squash(tmp_path):
    Preprocess(size=64, fit="crop").save(tmp_path)
    assert Preprocess.load(tmp_path).fit == "crop"
    old = {"size": 64, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}
    (tmp_path / "preprocess.json").write_text(json.dumps(old))
    assert Preprocess.load(tmp_path).fit == "squash"
    (tmp_path / "preprocess.json").write_text(json.dumps({**old, "fit": "zoom"}))
    with pytest.raises(ValueError, match="Unknown fit 'zoom'"):
        Preprocess.load(tmp_path)


@pytest.mark.parametrize("aspect,expected", [(1.78, (150, 84)), (0.75, (112, 150)), (1.0, (150, 150))])
def test_rectangular_crops_keep_the_long_side(aspect, expected):
    crop = rectangular_crop(_striped(150, 150), aspect, np.random.default_rng(0))
    assert crop.size == expected


def test_compare_fits_scores_every_aspect_and_fit_on_the_same_crops(tiny_artifact, synthetic_root):
    from cloudalliance.evaluation import compare_fits, fit_table

    artifact, _ = tiny_artifact
    test_dir = synthetic_root / "seg_test" / "seg_test"
    rows = compare_fits(artifact, test_dir, aspects=(0.75, 1.78), limit=12, progress=False)
    assert [(r["aspect"], r["fit"]) for r in rows] == [(a, f) for a in (0.75, 1.78) for f in FITS]
    assert all(r["images"] == 12 and r["ci95"][0] <= r["accuracy"] <= r["ci95"][1] for r in rows)
    # the same seed gives the same crops, so the same scores
    again = compare_fits(artifact, test_dir, aspects=(0.75, 1.78), limit=12, progress=False)
    assert [r["correct"] for r in again] == [r["correct"] for r in rows]
    table = fit_table(rows)
    assert list(table.columns) == list(FITS) and list(table.index) == [0.75, 1.78]


def test_the_cli_offers_the_fits_presets_knows():
    from cloudalliance import cli

    assert cli._FITS == FITS
    parser = cli.build_parser()
    args = parser.parse_args(["bench", "fit", "--model-dir", "m", "--data-dir", "d", "--fits", "pad", "crop"])
    assert args.fits == ["pad", "crop"]
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "fit", "--model-dir", "m", "--data-dir", "d", "--fits", "zoom"])
