"""SageMaker inference handlers for the course's model (``code/inference.py`` in ``model.tar.gz``).

The SageMaker PyTorch serving container and the course's local endpoint both
call these four functions. The model runs on ONNX Runtime; preprocessing comes
from ``preprocess.json`` through ``presets.py`` (the same module training and
evaluation use), shipped next to this file.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from presets import ImageTooLarge, Preprocess, load_rgb, preprocess_numpy  # noqa: E402

IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image", "image/jpg")
MAX_IMAGE_BYTES = 6 * 1024 * 1024  # what a synchronous SageMaker invocation may carry


try:
    # Inside SageMaker's inference toolkit (the PyTorch serving container) only the toolkit's own errors keep
    # their status: sagemaker_inference/transformer.py (aws/sagemaker-inference-toolkit @ f79853d, lines 159-168)
    # answers ``BaseInferenceToolkitError.status_code`` for those and HTTP 500 for any other exception;
    # ``GenericInferenceToolkitError(status_code, message, phrase)`` is in sagemaker_inference/errors.py, lines 54-71.
    from sagemaker_inference.errors import GenericInferenceToolkitError as _ToolkitError
except ImportError:  # the course's local endpoint: no toolkit needed
    _ToolkitError = None

_ERROR_BASES = (_ToolkitError, ValueError) if _ToolkitError is not None else (ValueError,)


class UnsupportedInput(*_ERROR_BASES):
    """A request that is not an image this model can read: 415, or 413 when too large.

    Under the SageMaker inference toolkit it is also the toolkit's ``GenericInferenceToolkitError``, so the
    container answers ``status`` instead of 500; the local endpoint reads ``status`` itself.
    """

    def __init__(self, message, status=415):
        import http

        self.status = status
        self.message = message
        if _ToolkitError is not None:
            _ToolkitError.__init__(self, status, message, http.HTTPStatus(status).phrase)
        else:
            ValueError.__init__(self, message)

    def __str__(self):
        return self.message


def model_fn(model_dir):
    """Load the ONNX graph, the class names and the preprocessing config."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    threads = int(os.environ.get("INFERENCE_THREADS", "0"))  # 0: ONNX Runtime's default (one per core)
    if threads:
        # a server running several inferences at once gives each few threads, so that together they do not
        # oversubscribe the cores; idle threads then sleep instead of spinning
        # (https://onnxruntime.ai/docs/performance/tune-performance/threading.html, "session.intra_op.allow_spinning")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    session = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), options, providers=providers)
    with open(os.path.join(model_dir, "labels.json")) as fh:
        classes = json.load(fh)
    return {"session": session, "classes": classes, "preprocess": Preprocess.load(model_dir),
            "input": session.get_inputs()[0].name}


def input_fn(request_body, content_type="image/jpeg"):
    """Raw image bytes -> one ``HxWx3`` uint8 array (RGB, any mode the file had)."""
    content_type = (content_type or "").split(";")[0].strip().lower()
    if content_type not in IMAGE_TYPES:
        raise UnsupportedInput(f"Content type {content_type or '(none)'!r} is not supported; "
                               f"send raw image bytes as one of: {', '.join(IMAGE_TYPES[:3])}")
    if isinstance(request_body, str):
        request_body = request_body.encode("latin-1")
    if not request_body:
        raise UnsupportedInput("The request body is empty; send the image bytes")
    if len(request_body) > MAX_IMAGE_BYTES:
        raise UnsupportedInput(f"The image is {len(request_body)} bytes; the limit is {MAX_IMAGE_BYTES}", 413)
    return bytes(request_body)


def predict_fn(input_data, model):
    """Class probabilities for one image (bytes) or a batch (``NxHxWx3`` uint8)."""
    cfg = model["preprocess"]
    if isinstance(input_data, (bytes, bytearray)):
        try:
            images = load_rgb(bytes(input_data), cfg.size, cfg.interpolation, fit=cfg.fit)[None]
        except ImageTooLarge as exc:  # refused from the header, before decoding: a decompression bomb
            raise UnsupportedInput(str(exc), 413) from None
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for bad files
            raise UnsupportedInput(f"The body is not an image PIL can read ({type(exc).__name__})") from exc
    else:
        images = np.asarray(input_data, dtype=np.uint8)
    logits = model["session"].run(None, {model["input"]: preprocess_numpy(images, cfg)})[0]
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return {"probabilities": probs / probs.sum(axis=1, keepdims=True), "classes": model["classes"]}


JSON_ACCEPTS = ("application/json", "application/*", "*/*", "")


def output_fn(prediction, accept="application/json"):
    """``(JSON, "application/json")``: label, confidence and every class's probability (the first image of a batch).

    The content type goes with it: the inference toolkit labels the response with ``accept`` unless output_fn
    returns a tuple (sagemaker_inference/transformer.py, ``transform``: ``response_content_type = accept``), so
    JSON would go out as whatever the client asked for. An ``Accept`` that admits no JSON is a 406."""
    wanted = [part.split(";")[0].strip().lower() for part in (accept or "").split(",")]
    if not any(w in JSON_ACCEPTS for w in wanted):
        raise UnsupportedInput(f"Accept {accept!r}: this model answers application/json only", 406)
    probs = prediction["probabilities"][0]
    classes = prediction["classes"]
    best = int(probs.argmax())
    body = {"label": classes[best], "confidence": round(float(probs[best]), 6),
            "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probs)}}
    return json.dumps(body), "application/json"
