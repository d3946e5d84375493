"""The training set as the trainer takes it, in one call (:func:`prepare_training_data`): the usable files of
the train split (and the test split, or a stratified validation share of train), decoded once per image size.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..presets import DEFAULT_FIT
from .explore import validate_folder
from .folders import ImageFolder, load_image_folder, materialize_shards, stratified_split
from ..presets import load_rgb


def decode_images(files: Sequence[Path], size: int, workers: int = 4, progress: bool = True,
                  desc: str = "decoding", fit: str = DEFAULT_FIT, interpolation: str = "bilinear") -> np.ndarray:
    """Decode every file once into one ``NxHxWx3`` uint8 array (PIL releases the GIL: threads scale)."""
    from tqdm.auto import tqdm

    out = np.empty((len(files), size, size, 3), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = load_rgb(files[i], size, interpolation, fit=fit)

    with cf.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(tqdm(pool.map(work, range(len(files))), total=len(files), desc=desc, unit="img",
                  disable=not progress, mininterval=1.0))
    return out


def usable_files(folder: ImageFolder) -> tuple[list[Path], list[int], list[str]]:
    """Files that decode (unreadable and empty ones are named and left out)."""
    report = validate_folder(folder, expected_size=None, progress=False)
    bad = set(report.problem_paths())
    files = [f for f in folder.files if str(f) not in bad]
    labels = [l for f, l in zip(folder.files, folder.labels) if str(f) not in bad]
    return files, labels, sorted(bad)


@dataclasses.dataclass
class TrainingData:
    """What the trainer trains and validates on, decoded once per image size."""

    classes: list[str]
    train_images: dict[int, np.ndarray]  # size -> N x size x size x 3 uint8
    train_labels: np.ndarray
    val_images: dict[int, np.ndarray]
    val_labels: np.ndarray
    validation: str  # where the validation images come from, in words
    seconds: float  # materialising, loading, checking and decoding
    train_dir: str  # the class folders trained on (a shards channel's unpacked copy)
    test_dir: str | None


def prepare_training_data(train_dir: str | os.PathLike, test_dir: str | os.PathLike | None, sizes: Sequence[int],
                          val_fraction: float = 0.1, seed: int = 0, max_train_images: int = 0, workers: int = 4,
                          progress: bool = True, log: Callable[..., None] = lambda *a: None,
                          fit: str = DEFAULT_FIT) -> TrainingData:
    """The training set in one call: unpack a shards channel (tar files) or take class folders, leave out
    files that do not decode, validate on ``test_dir`` or a stratified ``val_fraction`` of the training
    data (fixed by ``seed``), keep at most ``max_train_images`` (0: all), and decode every image once at
    each of ``sizes`` (PIL's resize and the same ``fit`` of non-square images as evaluation and serving)."""
    t0 = time.perf_counter()
    train_dir = str(materialize_shards(train_dir))
    if test_dir:
        test_dir = str(materialize_shards(test_dir))
    train_folder = load_image_folder(train_dir, "train" if (Path(train_dir) / "seg_train").is_dir() else None)
    classes = train_folder.classes
    if not classes:
        raise SystemExit(f"{train_dir} has no class folders; training needs <class>/*.jpg")
    files, labels, skipped = usable_files(train_folder)
    if skipped:
        log(f"left out {len(skipped)} unreadable files, e.g. {skipped[0]}")
    labels_arr = np.asarray(labels, dtype=np.int64)
    if test_dir:
        test_folder = load_image_folder(test_dir, "test" if (Path(test_dir) / "seg_test").is_dir() else None,
                                        classes=classes)
        val_files, val_labels, _ = usable_files(test_folder)
        train_idx = np.arange(len(files))
        val_labels_arr = np.asarray(val_labels, dtype=np.int64)
        validation = f"test channel {test_dir}"
    else:
        train_idx, val_idx = stratified_split(labels_arr, val_fraction, seed)
        val_files = [files[i] for i in val_idx]
        val_labels_arr = labels_arr[val_idx]
        validation = f"stratified {val_fraction:.0%} of the training data (seed {seed})"
    if max_train_images and len(train_idx) > max_train_images:
        train_idx = np.sort(np.random.default_rng(seed).choice(train_idx, max_train_images, replace=False))
    train_files = [files[i] for i in train_idx]
    train_images = {size: decode_images(train_files, size, workers, progress, f"decoding train {size}px", fit)
                    for size in sizes}
    val_images = {size: decode_images(val_files, size, workers, progress, f"decoding validation {size}px", fit)
                  for size in sizes}
    return TrainingData(classes, train_images, labels_arr[train_idx], val_images, val_labels_arr, validation,
                        time.perf_counter() - t0, train_dir, test_dir)
