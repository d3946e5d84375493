"""Evaluation of a trained model folder: accuracy, per-class figures, confusion matrix, mistakes, predictions."""

from __future__ import annotations

import dataclasses
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .presets import Preprocess
from .stats import format_accuracy, wilson_interval
from .data.folders import load_image_folder, resolve_split
from .data.training_set import decode_images, usable_files
from .presets import FITS, _to_rgb, fit_square
from .records import Record
from .training.onnxrt import onnx_copy_or_none
from .training.recipe import predict


@dataclasses.dataclass
class LoadedModel:
    model: Any
    classes: list[str]
    preprocess: Preprocess
    config: dict[str, Any]
    folder: Path


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A model folder, or a ``model.tar.gz`` unpacked next to itself."""
    path = Path(path)
    if path.is_file() and path.name.endswith(".tar.gz"):
        dest = path.parent / path.name[: -len(".tar.gz")]
        if not (dest / "model.pt").exists():
            dest.mkdir(parents=True, exist_ok=True)
            with tarfile.open(path) as tar:
                tar.extractall(dest, filter="data")
        return dest
    if not path.is_dir():
        raise FileNotFoundError(f"Model folder {path} does not exist")
    if not (path / "model.pt").is_file():
        raise FileNotFoundError(f"{path} has no model.pt: is it a folder made by `cloudalliance train`?")
    return path


def load_model(path: str | os.PathLike, device: str = "cpu") -> LoadedModel:
    """The model, class names and preprocessing of a model folder made by the training script."""
    import timm
    import torch

    folder = resolve_model_dir(path)
    classes = json.loads((folder / "labels.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    model = timm.create_model(config["arch"], pretrained=False, num_classes=len(classes))
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    model = model.to(device).eval().to(memory_format=torch.channels_last)
    return LoadedModel(model, classes, Preprocess.load(folder), config, folder)


@dataclasses.dataclass
class EvaluationResult:
    classes: list[str]
    files: list[str]
    labels: np.ndarray
    probabilities: np.ndarray
    decode_seconds: float
    predict_seconds: float
    skipped: list[str]

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(1)

    @property
    def accuracy(self) -> float:
        return self.correct / len(self.labels) if len(self.labels) else 0.0

    @property
    def correct(self) -> int:
        return int((self.predictions == self.labels).sum())

    def accuracy_interval(self) -> tuple[float, float]:
        """The accuracy's 95 % Wilson interval."""
        return wilson_interval(self.correct, len(self.labels))

    def accuracy_text(self) -> str:
        return format_accuracy(self.correct, len(self.labels))

    def confusion(self) -> np.ndarray:
        k = len(self.classes)
        cm = np.zeros((k, k), dtype=np.int64)
        np.add.at(cm, (self.labels, self.predictions), 1)
        return cm

    def per_class(self) -> dict[str, dict[str, float]]:
        cm = self.confusion()
        out = {}
        for i, cls in enumerate(self.classes):
            tp = cm[i, i]
            precision = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
            recall = tp / cm[i, :].sum() if cm[i, :].sum() else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            out[cls] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                        "support": int(cm[i, :].sum())}
        return out

    def macro_f1(self) -> float:
        return float(np.mean([v["f1"] for v in self.per_class().values()]))

    def mistakes(self, top: int = 12) -> list[dict[str, Any]]:
        """The most confident wrong predictions, most confident first."""
        wrong = np.flatnonzero(self.predictions != self.labels)
        conf = self.probabilities[wrong, self.predictions[wrong]]
        order = wrong[np.argsort(-conf)][:top]
        return [{"file": self.files[i], "true": self.classes[self.labels[i]],
                 "predicted": self.classes[self.predictions[i]],
                 "confidence": float(self.probabilities[i, self.predictions[i]])} for i in order]

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "accuracy_ci95": list(self.accuracy_interval()),
            "macro_f1": self.macro_f1(),
            "images": int(len(self.labels)),
            "classes": self.classes,
            "per_class": self.per_class(),
            "confusion_matrix": self.confusion().tolist(),
            "decode_seconds": self.decode_seconds,
            "predict_seconds": self.predict_seconds,
            "images_per_s": len(self.labels) / self.predict_seconds if self.predict_seconds else 0.0,
            "skipped": self.skipped,
            "mistakes": self.mistakes(),
        }


def _device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def evaluate(model_dir: str | os.PathLike, data_dir: str | os.PathLike, split: str | None = "test",
             batch_size: int = 128, tta: bool | None = None, device: str = "auto", workers: int = 4,
             progress: bool = True, engine: str = "auto") -> EvaluationResult:
    """Score a model folder on a labeled folder (Kaggle layout, a split folder, or flat class folders).

    ``engine``: on a CPU, ``auto`` scores with ONNX Runtime (an export of the same weights, several
    times faster than PyTorch there) where it can; ``torch`` keeps PyTorch; ``onnx`` insists."""

    dev = _device(device)
    loaded = load_model(model_dir, str(dev))
    root = Path(data_dir)
    try:
        resolve_split(root, split) if split else None
    except Exception:  # noqa: BLE001 - not a Kaggle root: take the folder itself
        split = None
    folder = load_image_folder(root, split, classes=loaded.classes)
    if not folder.classes:
        raise ValueError(f"{folder.root} has no class folders; evaluation needs labeled images")
    files, labels, skipped = usable_files(folder)
    t0 = time.perf_counter()
    prep = loaded.preprocess
    images = decode_images(files, prep.size, workers, progress, "decoding", prep.fit, prep.interpolation)
    decode_seconds = time.perf_counter() - t0
    use_tta = loaded.config.get("tta", True) if tta is None else tta

    scorer = onnx_copy_or_none(loaded.model, loaded.preprocess.size, engine, dev.type) or loaded.model
    preds = predict(scorer, images, loaded.preprocess, dev, batch_size, use_tta, progress=progress)
    return EvaluationResult(loaded.classes, [str(f) for f in files], np.asarray(labels), preds.probabilities,
                            decode_seconds, preds.seconds, skipped)


def rectangular_crop(img, aspect: float, rng: np.random.Generator):
    """A crop of ``img`` with width/height ``aspect`` (landscape above 1, portrait below) whose long side is the
    image's own, at a random position: what a non-square photo of the same scene looks like."""
    width, height = img.size
    if aspect >= 1:
        w, h = width, max(1, round(width / aspect))
        h = min(h, height)
    else:
        w, h = max(1, round(height * aspect)), height
        w = min(w, width)
    left = int(rng.integers(0, width - w + 1))
    top = int(rng.integers(0, height - h + 1))
    return img.crop((left, top, left + w, top + h))


def compare_fits(model_dir: str | os.PathLike, data_dir: str | os.PathLike, aspects: Sequence[float] = (0.75, 1.33, 1.78),
                 fits: Sequence[str] | None = None, limit: int = 0, seed: int = 0, device: str = "auto",
                 engine: str = "auto", progress: bool = True) -> list[dict[str, Any]]:
    """Accuracy of a model on non-square versions of labeled images, per aspect ratio and per way of making
    them square (:data:`cloudalliance.presets.FITS`): the measurement behind the ``fit`` that training,
    evaluation and serving share. Each image gets one random crop per aspect (the same for every fit).
    Returns rows of aspect, fit, accuracy with its 95 % interval and images."""
    from PIL import Image
    from tqdm.auto import tqdm

    dev = _device(device)
    loaded = load_model(model_dir, str(dev))
    folder = load_image_folder(Path(data_dir), None, classes=loaded.classes)
    files, labels, _ = usable_files(folder)
    if limit:
        files, labels = files[:limit], labels[:limit]
    labels = np.asarray(labels)
    prep = loaded.preprocess
    scorer = onnx_copy_or_none(loaded.model, prep.size, engine, dev.type) or loaded.model
    tta = loaded.config.get("tta", True)
    fits = list(fits or FITS)
    rows = []
    for aspect in aspects:
        rng = np.random.default_rng(seed)
        crops = []
        for f in tqdm(files, desc=f"aspect {aspect:g}", unit="img", disable=not progress, mininterval=1.0):
            with Image.open(f) as img:
                crops.append(rectangular_crop(_to_rgb(img), aspect, rng))
        for fit in fits:
            images = np.stack([np.asarray(fit_square(c, prep.size, fit, prep.interpolation)) for c in crops])
            correct = int((predict(scorer, images, prep, dev, tta=tta).labels == labels).sum())
            low, high = wilson_interval(correct, len(labels))
            rows.append({"aspect": aspect, "fit": fit, "accuracy": correct / max(1, len(labels)),
                         "ci95": [low, high], "correct": correct, "images": int(len(labels))})
    return rows


def predict_folder(model_dir: str | os.PathLike, folder: str | os.PathLike, limit: int = 0, device: str = "auto",
                   progress: bool = False) -> list[dict[str, Any]]:
    """Predictions for unlabeled images (``seg_pred``): file, label, confidence."""

    dev = _device(device)
    loaded = load_model(model_dir, str(dev))
    found = load_image_folder(folder)
    files = found.files[:limit] if limit else found.files
    prep = loaded.preprocess
    images = decode_images(files, prep.size, progress=progress, fit=prep.fit, interpolation=prep.interpolation)
    probs = predict(loaded.model, images, loaded.preprocess, dev, tta=loaded.config.get("tta", True)).probabilities
    return [{"file": str(f), "label": loaded.classes[int(p.argmax())], "confidence": float(p.max())}
            for f, p in zip(files, probs)]


def evaluation_record(result: EvaluationResult, name: str, model_dir: str, data_dir: str, backend: str = "local",
                      instance: str = ""):

    d = result.to_dict()
    return Record(
        stage="evaluation",
        name=name,
        backend=backend,
        instance=instance or "localhost",
        timings={"decode_s": round(result.decode_seconds, 3), "predict_s": round(result.predict_seconds, 3),
                 "total_s": round(result.decode_seconds + result.predict_seconds, 3)},
        sizes={"images": d["images"], "skipped": len(result.skipped)},
        metrics={"accuracy": d["accuracy"], "macro_f1": d["macro_f1"], "images_per_s": round(d["images_per_s"], 2),
                 "per_class": d["per_class"], "confusion_matrix": d["confusion_matrix"]},
        config={"model_dir": str(model_dir), "data_dir": str(data_dir)},
    )


def write_json(result: EvaluationResult, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(result.to_dict(), fh, indent=2)
    os.replace(tmp, path)
    return path


def per_class_table(result: EvaluationResult):
    import pandas as pd

    table = pd.DataFrame(result.per_class()).T
    table["support"] = table["support"].astype(int)
    return table.round(3)


def fit_table(rows: Sequence[dict[str, Any]]):
    """:func:`compare_fits` as a table: one row per aspect ratio, one column per fit (accuracy and 95 % interval)."""
    import pandas as pd

    cells = {(r["aspect"], r["fit"]): f"{r['accuracy']:.3f} ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f})" for r in rows}
    aspects = sorted({r["aspect"] for r in rows})
    fits = list(dict.fromkeys(r["fit"] for r in rows))
    table = pd.DataFrame([[cells[(a, f)] for f in fits] for a in aspects], index=aspects, columns=fits)
    table.index.name = "width / height"
    return table


def top_predictions(items: Sequence[dict[str, Any]]):
    import pandas as pd

    return pd.DataFrame(items)
