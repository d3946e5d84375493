"""Getting the photos into Kaggle's layout, whatever folder they came in: :func:`prepare_dataset` lays any
layout out once as Kaggle's (symbolic links, a stratified held-out test split when there is none), and
:func:`fetch_dataset` downloads the Kaggle data set where the internet allows.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path


from .synthetic import SyntheticSpec, generate_synthetic
from .folders import DataError, KAGGLE_DATASET, SPLITS, _is_image, _visible, load_image_folder, resolve_split, stratified_split


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
