"""Reading a data set in Kaggle's layout: the class folders of each split, and the stratified split that holds out a test set.

Kaggle's layout is ``seg_train/seg_train/<class>/*.jpg``, ``seg_test/seg_test/<class>/*.jpg`` and
``seg_pred/seg_pred/*.jpg``. The loader also takes the flat form (``<root>/<class>/*.jpg``) and a split folder
given directly.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from ..errors import CloudallianceError



CLASSES = ("buildings", "forest", "glacier", "mountain", "sea", "street")


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


SPLITS = ("train", "test", "pred")


EXPECTED_SIZE = (150, 150)


KAGGLE_DATASET = "puneet6060/intel-image-classification"


class DataError(CloudallianceError):
    """A data folder that cannot be used, with what to do about it."""


def shard_files(folder: str | os.PathLike) -> list[Path]:
    """Tar shards (``*.tar``) directly in ``folder``: a channel uploaded in shards mode."""
    folder = Path(folder)
    return sorted(p for p in folder.glob("*.tar") if p.is_file()) if folder.is_dir() else []


def materialize_shards(folder: str | os.PathLike, dest: str | os.PathLike | None = None) -> Path:
    """Unpack every tar shard in ``folder`` (into ``dest`` or a temporary folder); return the root.

    A folder without shards is returned as it is, so callers can pass either layout.
    """
    import tarfile
    import tempfile

    shards = shard_files(folder)
    if not shards:
        return Path(folder)
    root = Path(dest) if dest else Path(tempfile.mkdtemp(prefix="cloudalliance-shards-"))
    root.mkdir(parents=True, exist_ok=True)
    for shard in shards:
        with tarfile.open(shard) as tar:
            tar.extractall(root, filter="data")
    return root


@dataclasses.dataclass
class ImageFolder:
    """Image files and their labels (label -1: unlabeled, as in ``seg_pred``)."""

    root: Path
    classes: list[str]
    files: list[Path]
    labels: list[int]
    ignored: list[Path] = dataclasses.field(default_factory=list)  # files that are not images

    def __len__(self) -> int:
        return len(self.files)

    @property
    def labeled(self) -> bool:
        return bool(self.classes)

    def counts(self) -> dict[str, int]:
        c = collections.Counter(self.labels)
        return {cls: c.get(i, 0) for i, cls in enumerate(self.classes)}

    def without(self, paths: Iterable[os.PathLike | str]) -> "ImageFolder":
        drop = {Path(p) for p in paths}
        keep = [(f, l) for f, l in zip(self.files, self.labels) if f not in drop]
        return dataclasses.replace(self, files=[f for f, _ in keep], labels=[l for _, l in keep])


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _visible(entries: Iterable[Path]) -> list[Path]:
    return sorted(p for p in entries if not p.name.startswith("."))


def resolve_split(root: str | os.PathLike, split: str | None = None) -> Path:
    """The folder that holds the class folders (or the images) of ``split``.

    ``root`` may be the data set root (with ``seg_<split>``), a split folder
    (doubly nested or not), or a folder of class folders.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"Data folder {root} does not exist.")
    if not root.is_dir():
        raise DataError(f"{root} is a file; give the folder that holds the class folders.")
    if split is not None:
        if split not in SPLITS:
            raise DataError(f"Unknown split {split!r}; choose one of: {', '.join(SPLITS)}.")
        for candidate in (root / f"seg_{split}" / f"seg_{split}", root / f"seg_{split}", root / split):
            if candidate.is_dir():
                root = candidate
                break
        else:
            raise DataError(
                f"No {split} split under {root}: looked for seg_{split}/seg_{split}, seg_{split} and {split}."
            )
    # doubly nested: seg_train/seg_train
    subdirs = [p for p in _visible(root.iterdir()) if p.is_dir()]
    if len(subdirs) == 1 and subdirs[0].name == root.name:
        root = subdirs[0]
    return root


def load_image_folder(path: str | os.PathLike, split: str | None = None,
                      classes: Sequence[str] | None = None) -> ImageFolder:
    """File list and labels of a Kaggle-layout folder (nested or flat), or of unlabeled images."""
    root = resolve_split(path, split)
    entries = _visible(root.iterdir())
    class_dirs = [p for p in entries if p.is_dir()]
    if not class_dirs:
        images = [p for p in entries if p.is_file() and _is_image(p)]
        if not images:
            raise DataError(f"{root} has no class folders and no images ({', '.join(IMAGE_EXTENSIONS)}).")
        return ImageFolder(root, [], images, [-1] * len(images),
                           ignored=[p for p in entries if p.is_file() and not _is_image(p)])
    names = [p.name for p in class_dirs]
    if classes is None:
        classes = names
    else:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise DataError(f"{root} has class folders {unknown} that are not among: {', '.join(classes)}.")
    files, labels, ignored = [], [], []
    for label, cls in enumerate(classes):
        folder = root / cls
        if not folder.is_dir():
            continue
        for p in _visible(folder.rglob("*")):
            if not p.is_file():
                continue
            if _is_image(p):
                files.append(p)
                labels.append(label)
            else:
                ignored.append(p)
    if not files:
        raise DataError(f"{root} has class folders but no images in them.")
    return ImageFolder(root, list(classes), files, labels, ignored)


def split_folder(src: str | os.PathLike, dest: str | os.PathLike, test_fraction: float = 0.15, seed: int = 0,
                 copy: bool = False) -> dict[str, dict[str, int]]:
    """Split a labeled folder into ``dest/train/<class>`` and ``dest/test/<class>`` (stratified, seeded).

    Files are linked (symlinks) unless ``copy``; an existing split of the same
    files is left as it is, so a rerun changes nothing, and a split made with other
    settings is replaced whole (a test image never stays behind in train/).
    """
    import shutil

    if not 0.0 < test_fraction < 1.0:
        raise DataError("The test fraction must be between 0 and 1.")
    folder = load_image_folder(src, "train" if (Path(src) / "seg_train").is_dir() else None)
    if not folder.classes:
        raise DataError(f"{folder.root} has no class folders to split.")
    train_idx, test_idx = stratified_split(folder.labels, test_fraction, seed)
    dest = Path(dest)
    settings = {"source": str(folder.root), "test_fraction": test_fraction, "seed": seed, "copy": copy}
    done = dest / "split.json"
    if done.is_file():
        if {k: v for k, v in json.loads(done.read_text()).items() if k in settings} != settings:
            for split in ("train", "test"):  # another split into the same folder: never mix the two
                shutil.rmtree(dest / split, ignore_errors=True)
    elif dest.is_dir() and any((dest / split).exists() for split in ("train", "test")):
        raise DataError(f"{dest} already holds train/ or test/ that `data split` did not make; choose an empty folder.")
    counts: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    for split, indices in (("train", train_idx), ("test", test_idx)):
        for i in indices:
            cls = folder.classes[folder.labels[i]]
            source = folder.files[i]
            target = dest / split / cls / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                if copy:
                    shutil.copy2(source, target)
                else:
                    target.symlink_to(source.resolve())
            counts[split][cls] = counts[split].get(cls, 0) + 1
    done.write_text(json.dumps({**settings, "counts": counts}, indent=2) + "\n")
    return counts


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation) with ``fraction`` of every class held out, fixed by ``seed``."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * fraction))
        if fraction > 0 and len(idx) > 1:
            n_val = max(1, n_val)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
