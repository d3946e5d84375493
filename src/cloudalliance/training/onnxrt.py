"""ONNX export and ONNX Runtime sessions, shared by training (frozen layers) and serving."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

ONNX_OPSET = 17


def export_module(module, example_shape: Sequence[int], out: str | os.PathLike, input_name: str = "image",
                  output_name: str = "logits", dynamic_size: bool = False) -> Path:
    """Export ``module`` (in eval mode, NCHW float input of ``example_shape``) to ONNX with a dynamic batch."""
    import torch

    out = Path(out)
    module = module.eval().to(memory_format=torch.contiguous_format)
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript-based exporter: deprecated upstream, but exact for these CNNs and needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(module, (torch.zeros(*example_shape),), str(out), input_names=[input_name],
                          output_names=[output_name], dynamic_axes={input_name: axes, output_name: {0: "batch"}},
                          opset_version=ONNX_OPSET, dynamo=False)
    return out


def cpu_session(path: str | os.PathLike, threads: int = 0):
    """An ONNX Runtime CPU session. ``threads`` > 0 fixes the pool size, and its threads do not spin
    between calls (they would take the cores from PyTorch work interleaved with the session's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_copy(module, example_shape: Sequence[int], threads: int = 0, dynamic_size: bool = False):
    """A frozen copy of ``module`` that runs in ONNX Runtime on the CPU, called like the module
    (a float NCHW tensor in, a tensor out, no gradients). ``module`` itself is left as it was."""
    import copy
    import tempfile

    import torch

    with tempfile.TemporaryDirectory(prefix="cloudalliance-onnx-") as tmp:
        path = export_module(copy.deepcopy(module), example_shape, Path(tmp) / "module.onnx",
                             dynamic_size=dynamic_size)
        session = cpu_session(path, threads)

    class OnnxModule(torch.nn.Module):
        engine = "onnxruntime"

        def forward(self, x):
            out = session.run(None, {"image": x.detach().contiguous().numpy()})[0]
            return torch.from_numpy(out)

    return OnnxModule()


def onnx_copy_or_none(module, size: int, engine: str = "auto", device_type: str = "cpu", threads: int = 0,
                      dynamic_size: bool = False):
    """:func:`onnx_copy` for ``size`` x ``size`` images where ONNX Runtime should run ``module``: on a
    CPU with ``engine`` auto or onnx. None for ``engine`` torch or another device, and (saying why) where
    ONNX Runtime cannot be had, which ``engine`` onnx makes an error instead."""
    import sys

    if engine == "torch" or device_type != "cpu":
        return None
    try:
        return onnx_copy(module, (1, 3, size, size), threads, dynamic_size=dynamic_size)
    except Exception as exc:  # noqa: BLE001 - no onnxruntime, an export the runtime refuses, ...
        if engine == "onnx":
            raise SystemExit(f"ONNX Runtime was asked for but cannot run this model: {type(exc).__name__}: {exc}") from exc
        print(f"ONNX Runtime not used ({type(exc).__name__}: {exc}); PyTorch runs the model", file=sys.stderr)
        return None
