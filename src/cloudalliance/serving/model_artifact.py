"""The model artifact, ``model.tar.gz``, as SageMaker's PyTorch inference container takes it: ``model.pt``,
``model.onnx`` (checked to agree with PyTorch), ``labels.json``, ``preprocess.json``, ``config.json``,
``metrics.json`` and ``code/inference.py`` (``model_fn``, ``input_fn``, ``predict_fn``, ``output_fn``) with
``code/presets.py`` beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..data.folders import load_image_folder
from ..data.training_set import decode_images
from ..errors import CloudallianceError
from ..presets import Preprocess, preprocess_numpy, to_tensor_batch
from ..training.onnxrt import cpu_session, export_module

# The training, evaluation and S3 code this module calls is imported in the functions that need it: the local
# endpoint server imports this module for unpack_artifact and load_handlers, and starts 0.3 s faster without them.


# code/requirements.txt of the artifact, installed by the toolkit at container start. protobuf and flatbuffers:
# dependencies of ONNX Runtime that the image lacks, pinned so that pip does not take whatever is newest. Not numpy
# or pillow: the image ships its own numpy (with scipy, pandas and opencv built against it) and pillow (for
# torchserve and torchvision), which a pin would replace (requirements/images/inference-2.6.0-py312-*.txt;
# tests/unit/test_container_requirements.py checks this).
SERVING_PACKAGES = ("onnxruntime", "protobuf", "flatbuffers")


ARTIFACT_FILES = ("model.pt", "labels.json", "preprocess.json", "config.json", "metrics.json")


CODE_DIR = Path(__file__).resolve().parent / "artifact_code"


class ServingError(CloudallianceError):
    """An artifact or endpoint problem, with what to do."""

def export_onnx(model_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Export the model folder's network to ONNX (dynamic batch, NCHW float input)."""
    from ..evaluation import load_model

    loaded = load_model(model_dir, "cpu")
    size = loaded.preprocess.size
    return export_module(loaded.model, (1, 3, size, size), out or Path(model_dir) / "model.onnx")


@dataclasses.dataclass
class OnnxCheck:
    images: int
    max_abs_diff: float
    same_label: float
    torch_ms_per_image: float
    onnx_ms_per_image: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def table(self) -> dict[str, Any]:
        """The check as a reader takes it in: the agreement, and each engine's time per image."""
        return {"images": self.images, "same label": f"{self.same_label:.0%}",
                "largest probability difference": f"{self.max_abs_diff:.1e}",
                "PyTorch (ms per image)": round(self.torch_ms_per_image, 1),
                "ONNX Runtime (ms per image)": round(self.onnx_ms_per_image, 1)}


def check_onnx(model_dir: str | os.PathLike, images: np.ndarray, onnx_path: str | os.PathLike | None = None) -> OnnxCheck:
    """Compare ONNX Runtime with PyTorch on real images: probability difference and label agreement."""
    from ..evaluation import load_model

    import torch

    loaded = load_model(model_dir, "cpu")
    cfg = loaded.preprocess
    onnx_path = onnx_path or Path(model_dir) / "model.onnx"
    session = cpu_session(onnx_path)
    t0 = time.perf_counter()
    with torch.inference_mode():
        ref = loaded.model(to_tensor_batch(images, cfg).contiguous(memory_format=torch.channels_last)).softmax(1).numpy()
    t_torch = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits = session.run(None, {"image": preprocess_numpy(images, cfg)})[0]
    t_onnx = time.perf_counter() - t0
    got = np.exp(logits - logits.max(1, keepdims=True))
    got /= got.sum(1, keepdims=True)
    n = len(images)
    return OnnxCheck(n, float(np.abs(ref - got).max()), float((ref.argmax(1) == got.argmax(1)).mean()),
                     1000 * t_torch / n, 1000 * t_onnx / n)


def package_model(model_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                  check_images: np.ndarray | None = None, tolerance: float = 1e-4) -> tuple[Path, OnnxCheck | None]:
    """Build ``model.tar.gz`` from a model folder (exports ONNX; checks it on ``check_images`` if given)."""
    from ..training.sagemaker import pinned_requirements

    model_dir = Path(model_dir)
    missing = [f for f in ARTIFACT_FILES if not (model_dir / f).is_file()]
    if missing:
        raise ServingError(f"{model_dir} lacks {', '.join(missing)}: train it with `cloudalliance train` first")
    onnx_path = export_onnx(model_dir)
    check = None
    if check_images is not None and len(check_images):
        check = check_onnx(model_dir, check_images, onnx_path)
        if check.max_abs_diff > tolerance or check.same_label < 1.0:
            raise ServingError(f"ONNX disagrees with PyTorch: max |p diff| {check.max_abs_diff:.2e}, "
                               f"same label on {check.same_label:.1%} of {check.images} images")
    out = Path(out or model_dir.parent / f"{model_dir.name}.tar.gz")
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for name in (*ARTIFACT_FILES, "model.onnx"):
            tar.add(model_dir / name, arcname=name)
        tar.add(CODE_DIR / "inference.py", arcname="code/inference.py")
        tar.add(Path(__file__).resolve().parents[1] / "presets.py", arcname="code/presets.py")
        requirements = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
        # the inference container installs these beside its own torch, pinned to requirements/constraints.txt

        requirements.write("\n".join(pinned_requirements(SERVING_PACKAGES)) + "\n")
        requirements.close()
        tar.add(requirements.name, arcname="code/requirements.txt")
        os.unlink(requirements.name)
    os.replace(tmp, out)
    return out, check


def unpack_artifact(artifact: str | os.PathLike, dest: str | os.PathLike) -> Path:
    if not Path(artifact).is_file():
        raise ServingError(f"No artifact at {artifact}: build it first (notebook 05, or `cloudalliance package`)")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(artifact) as tar:
        tar.extractall(dest, filter="data")
    if not (dest / "code" / "inference.py").is_file():
        raise ServingError(f"{artifact} has no code/inference.py: build it with serving.package_model")
    return dest


def load_handlers(model_dir: str | os.PathLike):
    """Import ``code/inference.py`` of an unpacked artifact as its own module."""
    path = Path(model_dir) / "code" / "inference.py"
    spec = importlib.util.spec_from_file_location(f"inference_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def check_images(data_root: str | os.PathLike, count: int, size: int) -> tuple[list[Path], np.ndarray]:
    """The first ``count`` test images (spread over the classes), decoded at ``size``."""

    folder = load_image_folder(data_root, "test")
    order = np.argsort(np.arange(len(folder)) % max(1, len(folder.classes)), kind="stable")  # round-robin
    files = [folder.files[i] for i in order[:count]]
    return files, decode_images(files, size, progress=False)


def artifact_path(run) -> Path:
    return run.path / "artifacts" / "model.tar.gz"


def ensure_artifact(run, data_root: str | os.PathLike, model_instance: str = "", check_count: int = 32,
                    fallback: dict[str, Any] | None = None) -> tuple[Path, OnnxCheck | None]:
    """The run's ``model.tar.gz``: packaged now (ONNX checked on real test images) unless it exists."""
    from ..training.launch import pick_model

    path = artifact_path(run)
    model_dir = pick_model(run, model_instance, data_root, fallback=fallback or {"epochs": 1, "img_size": 64})
    if path.exists() and path.stat().st_mtime >= (model_dir / "model.pt").stat().st_mtime:
        return path, None
    path.parent.mkdir(parents=True, exist_ok=True)
    _, images = check_images(data_root, check_count, Preprocess.load(model_dir).size)
    return package_model(model_dir, path, check_images=images)


def sha256_of(path: str | os.PathLike) -> str:
    """A file's SHA-256 (hex): an artifact's identity in its S3 key and in a Lambda package's manifest."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
