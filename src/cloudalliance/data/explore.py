"""Looking at the data before training on it (notebook 01): every image opened and checked, counts per class
and split, the problems found, and the data record.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .folders import DataError, EXPECTED_SIZE, ImageFolder, load_image_folder
from ..records import Record


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


def data_record(reports: dict[str, ValidationReport], source: str, seconds: float, backend: str = "local"):

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
