import shutil

import pytest

from cloudalliance.data.explore import problems_table, stats_table, validate_dataset, validate_folder
from cloudalliance.data.folders import CLASSES, DataError, load_image_folder, resolve_split


def test_nested_split_and_root_forms_agree(synthetic_root):
    nested = synthetic_root / "seg_train" / "seg_train"
    a = load_image_folder(synthetic_root, "train")
    b = load_image_folder(synthetic_root / "seg_train")
    c = load_image_folder(nested)
    assert a.root == b.root == c.root == nested
    assert a.files == b.files == c.files
    assert a.classes == list(CLASSES)


def test_flat_class_folders(tmp_path, synthetic_root):
    flat = tmp_path / "flat"
    shutil.copytree(synthetic_root / "seg_test" / "seg_test", flat)
    folder = load_image_folder(flat)
    assert folder.counts() == {c: 3 for c in CLASSES}
    assert resolve_split(flat) == flat


def test_unlabeled_pred_folder(synthetic_root):
    pred = load_image_folder(synthetic_root, "pred")
    assert pred.classes == [] and set(pred.labels) == {-1} and len(pred) == 5


def test_problem_files_are_named_not_fatal(synthetic_root, tmp_path):
    train = load_image_folder(synthetic_root, "train")
    report = validate_folder(train, progress=False)
    kinds = {p.path.rsplit("/", 1)[-1]: p.kind for p in report.problems}
    assert kinds == {
        "problem_truncated.jpg": "unreadable",
        "problem_not_a_jpeg.jpg": "unreadable",
        "problem_empty.jpg": "empty",
        "problem_grayscale.jpg": "grayscale",
        "problem_odd_size.jpg": "odd-size",
    }
    assert not report.ok
    assert report.counts["buildings"] == 8 + 5
    assert report.sizes["150x113"] == 1
    unusable = report.problem_paths()
    assert len(unusable) == 3
    assert len(train.without(unusable)) == len(train) - 3


def test_non_image_files_are_reported(tmp_path, synthetic_root):
    flat = tmp_path / "flat"
    shutil.copytree(synthetic_root / "seg_test" / "seg_test", flat)
    (flat / "sea" / "notes.txt").write_text("hello")
    report = validate_folder(load_image_folder(flat), progress=False)
    assert [(p.kind, p.path.endswith("notes.txt")) for p in report.problems] == [("not-an-image", True)]


def test_tables(synthetic_root):
    reports = validate_dataset(synthetic_root, progress=False)
    assert list(reports) == ["train", "test", "pred"]
    stats = stats_table(reports)
    assert stats.loc["train", "problems"] == 5 and stats.loc["test", "files"] == 18
    problems = problems_table(reports)
    assert sorted(problems["kind"].unique()) == ["empty", "grayscale", "odd-size", "unreadable"]


@pytest.mark.parametrize("make", ["missing", "file", "empty", "no_split"])
def test_bad_folders_get_clear_errors(tmp_path, make):
    target = tmp_path / "x"
    if make == "file":
        target.write_text("x")
    elif make in ("empty", "no_split"):
        target.mkdir()
    with pytest.raises(DataError) as info:
        if make == "no_split":
            validate_dataset(target, progress=False)
        else:
            load_image_folder(target)
    assert str(target) in str(info.value)


def test_unknown_class_folder_is_an_error(tmp_path, synthetic_root):
    flat = tmp_path / "flat"
    shutil.copytree(synthetic_root / "seg_test" / "seg_test", flat)
    (flat / "desert").mkdir()
    with pytest.raises(DataError, match="desert"):
        load_image_folder(flat, classes=CLASSES)


def test_split_folder_is_stratified_linked_and_rerunnable(synthetic_root, tmp_path):
    from cloudalliance.data.folders import split_folder

    counts = split_folder(synthetic_root, tmp_path / "split", test_fraction=0.25, seed=0)
    assert counts["test"] == {c: (3 if c == "buildings" else 2) for c in CLASSES}
    assert sum(counts["train"].values()) + sum(counts["test"].values()) == len(load_image_folder(synthetic_root, "train"))
    linked = next((tmp_path / "split" / "test" / "sea").iterdir())
    assert linked.is_symlink() and linked.resolve().is_file()
    again = split_folder(synthetic_root, tmp_path / "split", test_fraction=0.25, seed=0)
    assert again == counts
    train_names = {p.name for p in (tmp_path / "split" / "train" / "sea").iterdir()}
    assert not train_names & {p.name for p in (tmp_path / "split" / "test" / "sea").iterdir()}


def test_data_does_not_import_training():
    """Data flows one way: the data layer never reaches back into the trainer."""
    import subprocess
    import sys

    code = "import sys, cloudalliance.data; print('cloudalliance.training' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_prepare_training_data_splits_and_decodes_each_size_once(synthetic_root):
    import numpy as np

    from cloudalliance.data.training_set import prepare_training_data, usable_files
    from cloudalliance.data.folders import stratified_split

    lines = []
    data = prepare_training_data(synthetic_root, None, [32, 48], val_fraction=0.25, seed=3, workers=2,
                                 progress=False, log=lambda *a: lines.append(" ".join(map(str, a))))
    assert data.classes == list(CLASSES)
    assert sorted(data.train_images) == sorted(data.val_images) == [32, 48]
    assert data.train_images[32].shape[1:] == (32, 32, 3) and data.val_images[48].shape[1:] == (48, 48, 3)
    assert data.train_images[32].dtype == np.uint8
    files, labels, skipped = usable_files(load_image_folder(synthetic_root, "train"))
    assert skipped and any("left out" in line for line in lines), "unreadable files are named and left out"
    train_idx, val_idx = stratified_split(np.asarray(labels), 0.25, 3)
    assert len(data.train_labels) == len(data.train_images[48]) == len(train_idx)
    assert (data.val_labels == np.asarray(labels)[val_idx]).all()
    assert "stratified 25%" in data.validation and data.seconds > 0
    assert data.test_dir is None

    capped = prepare_training_data(synthetic_root, synthetic_root, [32], max_train_images=10, progress=False)
    assert len(capped.train_labels) == 10 and len(capped.val_labels) == 3 * len(CLASSES)
    assert capped.validation.startswith("test channel")


def test_a_folder_without_a_test_split_is_laid_out_once_with_a_stratified_held_out_split(synthetic_root, tmp_path):
    from cloudalliance.data.folders import DataError
    from cloudalliance.data.layout import layout_note, prepare_dataset

    only_train = tmp_path / "download"
    shutil.copytree(synthetic_root / "seg_train", only_train / "seg_train")
    dest = tmp_path / "run" / "intel"
    root = prepare_dataset(str(only_train), dest, test_fraction=0.25, seed=1)
    assert root == dest and "held out" in layout_note(root) and "no seg_pred" in layout_note(root)
    train = {(p.parent.name, p.name) for p in (root / "seg_train" / "seg_train").rglob("*") if p.is_symlink()}
    test = {(p.parent.name, p.name) for p in (root / "seg_test" / "seg_test").rglob("*") if p.is_symlink()}
    assert train and test and not train & test
    assert len(train) + len(test) == sum(1 for p in (only_train / "seg_train").rglob("*") if p.is_file())
    stamp = (root / "layout.json").stat().st_mtime_ns
    assert prepare_dataset(str(only_train), dest, test_fraction=0.25, seed=1) == dest
    assert (root / "layout.json").stat().st_mtime_ns == stamp, "a rerun reuses the links"
    prepare_dataset(str(only_train), dest, test_fraction=0.5, seed=1)
    assert len(list((root / "seg_test" / "seg_test").rglob("*.jpg"))) > len({n for n in test if n[1].endswith(".jpg")})
    foreign = tmp_path / "foreign"
    (foreign / "notes").mkdir(parents=True)
    with pytest.raises(DataError, match="holds other files"):
        prepare_dataset(str(only_train), foreign)
    # a complete Kaggle folder is used as it is
    assert prepare_dataset(str(synthetic_root), tmp_path / "unused") == synthetic_root


def test_a_layout_follows_its_source_and_odd_sources_say_what_to_do(synthetic_root, tmp_path):
    from cloudalliance.data.folders import DataError
    from cloudalliance.data.layout import prepare_dataset

    src = tmp_path / "flat"
    shutil.copytree(synthetic_root / "seg_train" / "seg_train", src)
    dest = tmp_path / "laid" / "intel"
    prepare_dataset(str(src), dest)
    before = sum(1 for _ in dest.rglob("*.jpg"))
    extra = src / "sea" / "added.jpg"
    shutil.copyfile(next((src / "sea").glob("*.jpg")), extra)
    prepare_dataset(str(src), dest)
    assert sum(1 for _ in dest.rglob("*.jpg")) == before + 1, "an added image is laid out on the rerun"
    extra.unlink()
    prepare_dataset(str(src), dest)
    assert all(p.exists() for p in dest.rglob("*.jpg")), "no link to a removed image stays behind"

    with pytest.raises(DataError, match="empty"):
        prepare_dataset("", tmp_path / "x")
    with pytest.raises(DataError, match="is a file"):
        prepare_dataset(str(extra.parent / next((src / "sea").iterdir()).name), tmp_path / "x")
    loose = tmp_path / "loose"
    loose.mkdir()
    for p in list((src / "forest").glob("*.jpg"))[:3]:
        shutil.copyfile(p, loose / p.name)
    with pytest.raises(DataError, match="3 images but no class folders"):
        prepare_dataset(str(loose), tmp_path / "x")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        prepare_dataset(str(src), tmp_path / "afile")


def test_data_split_again_with_other_settings_never_mixes_two_splits(synthetic_root, tmp_path):
    from cloudalliance.data.folders import split_folder

    out = tmp_path / "split"
    split_folder(synthetic_root / "seg_train", out, test_fraction=0.3, seed=0)
    split_folder(synthetic_root / "seg_train", out, test_fraction=0.3, seed=1, copy=True)
    pairs = lambda split: {(p.parent.name, p.name) for p in (out / split).rglob("*") if p.is_file()}  # noqa: E731
    assert not pairs("train") & pairs("test")
    assert not any(p.is_symlink() for p in out.rglob("*")), "--copy over a linked split copies every file"
