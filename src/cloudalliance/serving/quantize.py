"""Int8: a smaller, faster model for the Lambda function, served only when the held-out images allow it.

Static quantisation (ONNX Runtime's ``quantize_static``) stores the weights as 8-bit integers and runs the
convolutions on 8-bit activations. The activations' ranges are measured beforehand by running a hundred
training images through the float model (*calibration*). The model gets about 3.5x smaller and almost twice as
fast on a CPU; what it may lose is accuracy, so :func:`compare` scores the float and the int8 model on the same
held-out images, with their 95 % intervals and the share of images on which both give the same label, and
:func:`passes` applies the course's rule to decide which one the function serves.

Each activation's range comes from entropy calibration (the range that keeps most of the information in its
histogram) rather than its minimum and maximum, which a few outliers stretch (docs/measurements.md, "Int8").
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..data.folders import load_image_folder
from ..data.training_set import decode_images, usable_files
from ..presets import Preprocess, preprocess_numpy
from ..stats import wilson_interval
from .model_artifact import unpack_artifact

CALIBRATION_IMAGES = 100  # 200 gave the same accuracy and labels on the real photos, in twice the time


def _input_name(model_path: Path) -> str:
    import onnx

    return onnx.load(str(model_path), load_external_data=False).graph.input[0].name


def _decoded(files: list[Path], cfg: Preprocess) -> np.ndarray:
    """The images decoded and resized as the served model's preprocessing does (uint8 NHWC; normalised per image
    later, so that a large test set is never held in float32 at once)."""
    return decode_images(files, cfg.size, progress=False, fit=cfg.fit, interpolation=cfg.interpolation)


def quantize_int8(model_dir: str | os.PathLike, data_dir: str | os.PathLike, out: str | os.PathLike,
                  count: int = CALIBRATION_IMAGES, seed: int = 0) -> Path:
    """``model_dir/model.onnx`` quantised to int8 in ``out``, calibrated on ``count`` images drawn from the
    training split of ``data_dir`` (never the images it is scored on)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model_dir, out = Path(model_dir), Path(out)
    folder = load_image_folder(data_dir, "train")
    chosen = random.Random(seed).sample(folder.files, min(count, len(folder.files)))
    files = usable_files(dataclasses.replace(folder, files=chosen, labels=[0] * len(chosen)))[0]  # those that decode
    if not files:
        raise ValueError(f"{data_dir} has no training images to calibrate int8 with")
    cfg = Preprocess.load(model_dir)
    batches = (preprocess_numpy(image[None], cfg) for image in _decoded(files, cfg))  # one image per step
    out.parent.mkdir(parents=True, exist_ok=True)
    input_name = _input_name(model_dir / "model.onnx")

    class Reader(CalibrationDataReader):
        def get_next(self):
            batch = next(batches, None)
            return None if batch is None else {input_name: batch}

    with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"  # shapes inferred and graph optimised, as ONNX Runtime advises
        quant_pre_process(str(model_dir / "model.onnx"), str(prepared))
        with contextlib.redirect_stdout(io.StringIO()):  # its progress lines, which would break --json
            # uint8 activations and int8 weights per channel, the fast pair on x86; reduce_range keeps the weights
            # to 7 bits, which CPUs without VNNI (AVX2, older AVX-512: not every Lambda host has VNNI) need to
            # avoid saturating ("Quantize ONNX models", onnxruntime.ai/docs/performance/model-optimizations)
            quantize_static(prepared, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.Entropy)
    return out


def quantize_artifact(artifact: str | os.PathLike, data_dir: str | os.PathLike, out: str | os.PathLike,
                      count: int = CALIBRATION_IMAGES, seed: int = 0) -> Path:
    """:func:`quantize_int8` of the ``model.onnx`` inside ``model.tar.gz``."""
    with tempfile.TemporaryDirectory(prefix="int8-artifact-") as tmp:
        return quantize_int8(unpack_artifact(artifact, tmp), data_dir, out, count, seed)


def _score(model_path: Path, images: np.ndarray, cfg: Preprocess) -> tuple[np.ndarray, float]:
    """Labels for every image, and the median milliseconds per image (one thread, as a 1,024 MB function)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    labels, times = [], []
    for image in images:
        batch = preprocess_numpy(image[None], cfg)
        started = time.perf_counter()
        labels.append(int(session.run(None, {name: batch})[0].argmax()))
        times.append(time.perf_counter() - started)
    return np.asarray(labels), float(np.median(times) * 1000)


def compare(model_dir: str | os.PathLike, int8_path: str | os.PathLike, data_dir: str | os.PathLike,
            limit: int = 0) -> list[dict[str, Any]]:
    """The float and the int8 model on the same held-out images (the test split of ``data_dir``): accuracy with
    its 95 % interval, agreement with the float model's labels, median ms per image and file size."""
    model_dir = Path(model_dir)
    classes = json.loads((model_dir / "labels.json").read_text())
    files, truth, _ = usable_files(load_image_folder(data_dir, "test", classes=classes))
    files, truth = (files[:limit], truth[:limit]) if limit else (files, truth)
    cfg = Preprocess.load(model_dir)
    images = _decoded(list(files), cfg)
    rows, reference = [], None
    for name, path in (("float32", model_dir / "model.onnx"), ("int8", Path(int8_path))):
        labels, ms = _score(path, images, cfg)
        reference = labels if reference is None else reference
        correct = int((labels == np.asarray(truth)).sum())
        low, high = wilson_interval(correct, len(labels))
        rows.append({"model": name, "images": len(labels), "accuracy": correct / len(labels), "ci95": [low, high],
                     "agreement": float((labels == reference).mean()), "ms_per_image": round(ms, 2),
                     "mb": round(path.stat().st_size / 1e6, 2)})
    return rows


def passes(rows: list[dict[str, Any]]) -> bool:
    """The course's rule: serve int8 only if its accuracy is within the float model's 95 % interval and it gives
    the float model's label on at least 99 % of the images."""
    fp32, int8 = rows
    return fp32["ci95"][0] <= int8["accuracy"] <= fp32["ci95"][1] and int8["agreement"] >= 0.99


def verdict(rows: list[dict[str, Any]]) -> str:
    """:func:`passes`, and why, in one line."""
    fp32, int8 = rows
    within = fp32["ci95"][0] <= int8["accuracy"] <= fp32["ci95"][1]
    serve = passes(rows)
    return (f"int8: {int8['accuracy']:.1%} against {fp32['accuracy']:.1%} "
            f"({'within' if within else 'outside'} the float model's interval), the same label on "
            f"{int8['agreement']:.1%} of {int8['images']} images, {fp32['ms_per_image'] / int8['ms_per_image']:.1f}x "
            f"as fast -> {'serve int8' if serve else 'keep float32 (int8 stays an option: --quantize int8)'}")


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"model": r["model"], "accuracy (95 % interval)": f"{r['accuracy']:.1%} ({r['ci95'][0]:.1%}-{r['ci95'][1]:.1%})",
             "same label as float32": f"{r['agreement']:.1%}", "ms per image": r["ms_per_image"], "MB": r["mb"]}
            for r in rows]
