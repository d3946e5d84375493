"""Data: the synthetic data set, the Kaggle-layout loader, its validation report, and the
training set as the trainer takes it (:func:`prepare_training_data`: one call).

Kaggle's layout is ``seg_train/seg_train/<class>/*.jpg``,
``seg_test/seg_test/<class>/*.jpg`` and ``seg_pred/seg_pred/*.jpg``. The loader
also takes the flat form (``<root>/<class>/*.jpg``) and a split folder given
directly.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import synthetic
from .presets import DEFAULT_FIT

CLASSES = synthetic.CLASSES
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test", "pred")
EXPECTED_SIZE = (150, 150)
KAGGLE_DATASET = "puneet6060/intel-image-classification"


class DataError(RuntimeError):
    """A data folder that cannot be used, with what to do about it."""


# --------------------------------------------------------------------------- synthetic data set


@dataclasses.dataclass
class SyntheticSpec:
    train_per_class: int = 40
    test_per_class: int = 10
    pred: int = 12
    seed: int = 0
    problem_files: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _write_one(job: tuple[str, int, str]) -> None:
    cls, seed, path = job
    data = synthetic.encode_jpeg(synthetic.render(cls, seed), seed)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _seed(base: int, split: str, cls: str, index: int) -> int:
    return (base * 1_000_003 + SPLITS.index(split) * 100_003 + CLASSES.index(cls) * 10_007 + index) % (2**31)


def generate_synthetic(
    dest: str | os.PathLike,
    spec: SyntheticSpec | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write the synthetic data set in Kaggle's layout under ``dest``; return ``dest``.

    Files that already exist are kept (the same seed writes the same bytes),
    so a rerun after an interruption only writes what is missing.
    """
    from tqdm.auto import tqdm

    spec = spec or SyntheticSpec()
    root = Path(dest)
    jobs: list[tuple[str, int, str]] = []
    for split, per_class in (("train", spec.train_per_class), ("test", spec.test_per_class)):
        for cls in CLASSES:
            folder = root / f"seg_{split}" / f"seg_{split}" / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                jobs.append((cls, _seed(spec.seed, split, cls, i), str(folder / f"{i:05d}.jpg")))
    pred_folder = root / "seg_pred" / "seg_pred"
    pred_folder.mkdir(parents=True, exist_ok=True)
    pred_rng = np.random.default_rng(spec.seed + 7)
    for i in range(spec.pred):
        cls = CLASSES[int(pred_rng.integers(len(CLASSES)))]
        jobs.append((cls, _seed(spec.seed, "pred", cls, i), str(pred_folder / f"{i:05d}.jpg")))
    todo = [j for j in jobs if not os.path.exists(j[2])]
    workers = workers or min(4, os.cpu_count() or 1)
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="synthetic scenes", unit="img",
              disable=not progress) as bar:
        if workers > 1 and len(todo) > 50:
            with cf.ProcessPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(_write_one, todo, chunksize=16):
                    bar.update(1)
        else:
            for job in todo:
                _write_one(job)
                bar.update(1)
    if spec.problem_files:
        synthetic.write_problem_files(root / "seg_train" / "seg_train" / CLASSES[0], spec.seed)
    (root / "synthetic.json").write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
    return root


def prepare_dataset(source: str, dest: str | os.PathLike, spec: SyntheticSpec | None = None,
                    progress: bool = True, test_fraction: float = 0.15, seed: int = 0) -> Path:
    """The data set's root folder in Kaggle's layout, whatever layout ``source`` has.

    ``source`` is ``"synthetic"`` (generated into ``dest``) or a folder in any layout the loader takes:
    Kaggle's (``seg_train/seg_train/<class>``, ``seg_test/…``, ``seg_pred/…``, nested or not), ``seg_train``
    alone, class folders directly, or ``train/`` + ``test/`` (``cloudalliance data split``, linked or copied).
    A complete Kaggle folder is used as it is. Any other is laid out in ``dest`` as Kaggle's layout of links
    to the original files, so every later stage (upload, training channels, evaluation) sees one layout;
    with no test split, a stratified ``test_fraction`` of every class is held out (fixed by ``seed``).
    ``dest/layout.json`` says what was done; :func:`layout_note` prints it.
    """
    if source == "synthetic":
        return generate_synthetic(dest, spec, progress=progress)
    if not str(source).strip():
        raise DataError("DATA_SOURCE is empty: give 'synthetic' or the folder of the Intel images.")
    root = Path(source).expanduser()
    if not root.is_dir():
        raise DataError(
            f"Data folder {root} {'is a file' if root.exists() else 'does not exist'}. Pass a folder of the Intel "
            "images (seg_train/seg_train/<class>/*.jpg, train/<class>/*.jpg, or class folders directly), "
            "'synthetic', or run `cloudalliance data fetch`."
        )
    if (root / "seg_train" / "seg_train").is_dir() and (root / "seg_test" / "seg_test").is_dir():
        return root
    return link_kaggle_layout(root, Path(dest), test_fraction, seed)


def find_splits(root: str | os.PathLike) -> dict[str, Path]:
    """The folders of the splits a data set has: ``{"train": …, "test": …, "pred": …}`` (those present).

    Class folders directly under ``root`` (or under a single split folder given as ``root``) are ``train``.
    """
    found = {}
    for split in SPLITS:
        try:
            found[split] = resolve_split(root, split)
        except DataError:
            continue
    if "train" not in found:
        folder = resolve_split(root)
        if any(p.is_dir() for p in _visible(folder.iterdir())):
            found["train"] = folder
    return found


def link_kaggle_layout(source: Path, dest: Path, test_fraction: float = 0.15, seed: int = 0) -> Path:
    """``dest`` as Kaggle's layout of links to ``source``'s images (see :func:`prepare_dataset`).

    The same files, fraction and seed give the same links, so a rerun finds them in place; ``dest`` is laid
    out again when the source's files changed (added, removed, renamed) or it came from something else.
    """
    import shutil

    splits = find_splits(source)
    if "train" not in splits:
        images = [p for p in _visible(source.iterdir()) if p.is_file() and _is_image(p)]
        raise DataError(f"{source} holds {len(images)} images but no class folders: put each class's images in a "
                        "folder named for it (<class>/*.jpg)." if images else
                        f"No training images under {source}: expected seg_train/seg_train/<class>/*.jpg, "
                        "train/<class>/*.jpg or class folders directly.")
    plan, note = _layout_plan(source, splits, test_fraction, seed)
    digest = hashlib.sha256(json.dumps({k: [str(p) for p, _ in v] for k, v in plan.items()}).encode()).hexdigest()
    wanted = {"source": str(source.resolve()), "test_fraction": test_fraction, "seed": seed, "files_sha256": digest}
    done = dest / "layout.json"
    if dest.exists() and not dest.is_dir():
        raise DataError(f"{dest} is a file; the data set is laid out in a folder there.")
    if done.is_file():
        if {k: v for k, v in json.loads(done.read_text()).items() if k in wanted} == wanted:
            return dest  # the same files, split the same way: the links are in place
        shutil.rmtree(dest)  # the source's files changed since (or another source): laid out again
    elif dest.exists():
        if any(dest.iterdir()) and not (dest / "synthetic.json").is_file():
            raise DataError(f"{dest} exists and holds other files; remove it or lay the data out elsewhere.")
        shutil.rmtree(dest)  # empty, or the synthetic set an earlier notebook of this run generated there
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.partial")  # laid out beside, then renamed: a crash leaves no half
    shutil.rmtree(partial, ignore_errors=True)
    for split, files in plan.items():
        folder = partial / f"seg_{split}" / f"seg_{split}"
        for path, cls in files:
            link = folder / cls / path.name if cls else folder / path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():  # the same name twice in one class (nested folders): the first one
                link.symlink_to(path.resolve())
    counts = {split: len(files) for split, files in plan.items()}
    (partial / "layout.json").write_text(json.dumps({**wanted, "counts": counts, "note": note}, indent=2) + "\n")
    os.replace(partial, dest)
    return dest


def _layout_plan(source: Path, splits: dict[str, Path], test_fraction: float, seed: int
                 ) -> tuple[dict[str, list[tuple[Path, str]]], str]:
    """``{split: [(file, class)]}`` for :func:`link_kaggle_layout`, and the sentence that says what was done."""
    train = load_image_folder(splits["train"])
    if not train.classes:
        raise DataError(f"{splits['train']} holds images but no class folders: put each class's images in a folder "
                        "named for it (<class>/*.jpg).")
    plan: dict[str, list[tuple[Path, str]]] = {"train": [], "test": []}
    if "test" in splits:
        test = load_image_folder(splits["test"], classes=train.classes)
        plan["train"] = [(f, train.classes[l]) for f, l in zip(train.files, train.labels)]
        plan["test"] = [(f, test.classes[l]) for f, l in zip(test.files, test.labels)]
        note = f"train and test as found in {source}"
    else:
        keep, held = stratified_split(train.labels, test_fraction, seed)
        plan["train"] = [(train.files[i], train.classes[train.labels[i]]) for i in keep]
        plan["test"] = [(train.files[i], train.classes[train.labels[i]]) for i in held]
        note = (f"no test split in {source}: {len(held)} images ({test_fraction:.0%} of each class, seed {seed}) "
                "held out as the test split, never trained on")
        untested = sorted(set(train.classes) - {cls for _, cls in plan["test"]})
        if untested:
            note += f"; too few images to hold any out for {', '.join(untested)}"
    if "pred" in splits:
        plan["pred"] = [(f, "") for f in load_image_folder(splits["pred"]).files]
    else:
        note += "; no seg_pred folder (notebook 04 skips the unlabeled predictions)"
    return plan, note


def layout_note(root: str | os.PathLike) -> str:
    """What :func:`prepare_dataset` did to lay the data out (empty for a Kaggle folder used as it is)."""
    path = Path(root) / "layout.json"
    return json.loads(path.read_text()).get("note", "") if path.is_file() else ""


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


# --------------------------------------------------------------------------- loader


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


# --------------------------------------------------------------------------- validation


@dataclasses.dataclass
class Problem:
    path: str
    kind: str  # unreadable | empty | grayscale | odd-size | not-an-image
    detail: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ValidationReport:
    root: str
    classes: list[str]
    counts: dict[str, int]
    files: int
    bytes: int
    sizes: dict[str, int]
    modes: dict[str, int]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem_paths(self, kinds: Sequence[str] = ("unreadable", "empty")) -> list[str]:
        return [p.path for p in self.problems if p.kind in kinds]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["problems"] = [p.to_dict() for p in self.problems]
        return data

    def summary(self) -> str:
        kinds = collections.Counter(p.kind for p in self.problems)
        lines = [f"{self.root}: {self.files} images, {self.bytes / 1e6:.1f} MB, {len(self.classes)} classes"]
        for cls, n in self.counts.items():
            lines.append(f"  {cls:<10} {n:>6}")
        lines.append("  sizes: " + ", ".join(f"{k} x{v}" for k, v in list(self.sizes.items())[:6]))
        lines.append("  modes: " + ", ".join(f"{k} x{v}" for k, v in self.modes.items()))
        if kinds:
            lines.append("  problems: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
        else:
            lines.append("  problems: none")
        return "\n".join(lines)


def inspect_image(path: Path, expected_size: tuple[int, int] = EXPECTED_SIZE) -> tuple[str, str, int, list[Problem]]:
    """Decode one file fully; return (size, mode, bytes, problems). Never raises on bad files."""
    from PIL import Image, UnidentifiedImageError

    problems: list[Problem] = []
    try:
        nbytes = path.stat().st_size
    except OSError as exc:
        return "", "", 0, [Problem(str(path), "unreadable", str(exc))]
    if nbytes == 0:
        return "", "", 0, [Problem(str(path), "empty", "0 bytes")]
    try:
        with Image.open(path) as img:
            img.load()
            size, mode = img.size, img.mode
            gray = mode in ("L", "LA", "1", "I", "I;16", "F")
            if not gray and mode == "RGB":
                arr = np.asarray(img)
                gray = bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())
                if gray:
                    mode = "RGB (gray content)"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        return "", "", nbytes, [Problem(str(path), "unreadable", f"{type(exc).__name__}: {exc}")]
    if gray:
        problems.append(Problem(str(path), "grayscale", mode))
    if expected_size and tuple(size) != tuple(expected_size):
        problems.append(Problem(str(path), "odd-size", f"{size[0]}x{size[1]}"))
    return f"{size[0]}x{size[1]}", mode, nbytes, problems


def validate_folder(folder: ImageFolder, expected_size: tuple[int, int] | None = EXPECTED_SIZE,
                    workers: int = 4, progress: bool = True) -> ValidationReport:
    """Counts per class, sizes, modes, and every unreadable, grayscale or odd-sized file by name."""
    from tqdm.auto import tqdm

    sizes: collections.Counter = collections.Counter()
    modes: collections.Counter = collections.Counter()
    problems: list[Problem] = [Problem(str(p), "not-an-image", p.suffix or "no extension") for p in folder.ignored]
    total = 0
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda p: inspect_image(p, expected_size), folder.files)
        for size, mode, nbytes, found in tqdm(results, total=len(folder), desc="checking images",
                                              unit="img", disable=not progress):
            total += nbytes
            if size:
                sizes[size] += 1
                modes[mode] += 1
            problems.extend(found)
    counts = folder.counts() if folder.labeled else {"(unlabeled)": len(folder)}
    return ValidationReport(
        root=str(folder.root),
        classes=list(folder.classes),
        counts=counts,
        files=len(folder),
        bytes=total,
        sizes=dict(sizes.most_common()),
        modes=dict(modes.most_common()),
        problems=problems,
    )


def validate_dataset(root: str | os.PathLike, splits: Sequence[str] = ("train", "test", "pred"),
                     progress: bool = True) -> dict[str, ValidationReport]:
    """Validation reports for every split of a Kaggle-layout data set that is present.

    A folder with no ``seg_*`` split but class folders (the flat form) gives one
    report under the key ``"folder"``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"Data folder {root} does not exist." if not root.exists()
                        else f"{root} is a file; give the data set's folder.")
    reports = {}
    for split in splits:
        try:
            folder = load_image_folder(root, split)
        except DataError:
            continue
        reports[split] = validate_folder(folder, progress=progress)
    if not reports:
        try:
            reports["folder"] = validate_folder(load_image_folder(root), progress=progress)
        except DataError:
            pass
    if not reports:
        raise DataError(
            f"No split found under {root}; expected seg_train/seg_train/<class>/*.jpg "
            "(or seg_test, seg_pred), or class folders directly."
        )
    return reports


def counts_by_split(reports: dict[str, ValidationReport]) -> dict[str, dict[str, int]]:
    return {split: dict(rep.counts) for split, rep in reports.items()}


def stats_table(reports: dict[str, ValidationReport]):
    """One row per split: files, MB, classes, the most common size and mode, problems."""
    import pandas as pd

    rows = []
    for split, rep in reports.items():
        rows.append({
            "split": split,
            "files": rep.files,
            "MB": round(rep.bytes / 1e6, 2),
            "classes": len(rep.classes),
            "sizes": ", ".join(f"{k} ({v})" for k, v in list(rep.sizes.items())[:3]),
            "modes": ", ".join(f"{k} ({v})" for k, v in rep.modes.items()),
            "problems": len(rep.problems),
        })
    return pd.DataFrame(rows).set_index("split")


def problems_table(reports: dict[str, ValidationReport]):
    """Every problem file by name, with its split, kind and detail."""
    import pandas as pd

    rows = [{"split": split, **p.to_dict()} for split, rep in reports.items() for p in rep.problems]
    return pd.DataFrame(rows, columns=["split", "kind", "path", "detail"])


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


# --------------------------------------------------------------------------- the training set


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


def decode_images(files: Sequence[Path], size: int, workers: int = 4, progress: bool = True,
                  desc: str = "decoding", fit: str = DEFAULT_FIT, interpolation: str = "bilinear") -> np.ndarray:
    """Decode every file once into one ``NxHxWx3`` uint8 array (PIL releases the GIL: threads scale)."""
    from tqdm.auto import tqdm

    from .presets import load_rgb

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


# --------------------------------------------------------------------------- fetch


def _online(host: str = "www.kaggle.com", port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def fetch_dataset(dest: str | os.PathLike | None = None) -> Path:
    """Download the real Intel data set with kagglehub; clear error when offline."""
    if not _online():
        raise DataError(
            "Kaggle is not reachable from this machine, so the real data set cannot be downloaded here. "
            f"Download '{KAGGLE_DATASET}' on a machine with internet (kagglehub or the Kaggle web page), "
            "copy the unpacked folder here and run the course on it: make course DATA=/path/to/intel "
            "(or DATA_SOURCE under parameters in params/*.yaml, or in a notebook's parameters cell). "
            "Without it the course runs on its synthetic scenes (DATA_SOURCE: synthetic)."
        )
    try:
        import kagglehub
    except ImportError as exc:  # pragma: no cover - kagglehub is a dependency
        raise DataError("kagglehub is not installed: pip install kagglehub") from exc
    try:
        path = Path(kagglehub.dataset_download(KAGGLE_DATASET))
    except Exception as exc:  # noqa: BLE001 - kagglehub raises many kinds
        raise DataError(
            f"kagglehub could not download {KAGGLE_DATASET}: {exc}. "
            "Check your Kaggle credentials (~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY)."
        ) from exc
    if dest is None:
        return path
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise DataError(f"{dest} exists and is not empty; choose an empty folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(path, dest, target_is_directory=True)
    return dest


# --------------------------------------------------------------------------- records


def data_record(reports: dict[str, ValidationReport], source: str, seconds: float, backend: str = "local"):
    from .records import Record

    sizes: dict[str, Any] = {}
    for split, rep in reports.items():
        sizes[f"{split}_files"] = rep.files
        sizes[f"{split}_bytes"] = rep.bytes
        sizes[f"{split}_problems"] = len(rep.problems)
    return Record(
        stage="data",
        name="exploration",
        backend=backend,
        instance="localhost" if backend == "local" else "",
        timings={"validate_s": round(seconds, 3)},
        sizes=sizes,
        metrics={f"{split}_counts": rep.counts for split, rep in reports.items()},
        config={"source": source},
    )
