"""The API's Lambda function with the model inside it: no SageMaker endpoint.

The same API as ``handler.py`` — ``POST {"url": ...}`` or ``{"image": <base64>}``
→ ``200 {"label", "confidence", "probabilities", "message"}``, the same guards
and the same 4xx/5xx answers, because the request side *is* ``handler.py``'s
(:func:`handler.make_handler`); only the backend differs. Where ``handler.py``
calls ``sagemaker-runtime``, this one runs the artifact's ``model.onnx`` with
ONNX Runtime through the artifact's own ``code/inference.py`` (``input_fn``,
``predict_fn``, ``output_fn``) and ``code/presets.py``, so its predictions are
the endpoint's.

The model is loaded once per execution environment, when Lambda imports this
module (its "init" phase), not per request.

The deployment package (``cloudalliance lambda package``) puts this file,
``handler.py``, the unpacked artifact under ``model/`` and the ONNX Runtime,
numpy and Pillow wheels for the Lambda platform side by side; SAM's
``Handler: handler_onnx.lambda_handler``.

Environment:
  MODEL_DIR               the unpacked artifact (default: ``model/`` next to this file)
  INFERENCE_THREADS       ONNX Runtime threads (template: 1; a Lambda below 1,769 MB has less than one vCPU)
  ALLOWED_PRIVATE_HOSTS, MAX_IMAGE_BYTES, FETCH_TIMEOUT_S   as for ``handler.py``
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # Lambda puts the function's folder on sys.path; a local gateway imports by file path
    sys.path.insert(0, HERE)

import handler as request_side  # noqa: E402 - lambda/src/handler.py, shipped beside this file

MODEL_DIR = os.environ.get("MODEL_DIR") or os.path.join(HERE, "model")


def _load_inference(model_dir: str):
    """The artifact's ``code/inference.py`` as a module (it puts its own folder on sys.path for ``presets``)."""
    path = os.path.join(model_dir, "code", "inference.py")
    if not os.path.isfile(path):
        raise RuntimeError(f"{path} is missing: build the package with `cloudalliance lambda package`")
    spec = importlib.util.spec_from_file_location("cloudalliance_artifact_inference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Lambda runs one request at a time per execution environment; a local gateway calls this module from many
# threads at once. Decoding and the model run for at most one request per core, so a burst of large images
# cannot hold N decoded copies at once (it queues instead).
_RUNNING = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))

_started = time.perf_counter()
inference = _load_inference(MODEL_DIR)
MODEL = inference.model_fn(MODEL_DIR)  # ONNX Runtime session, labels, preprocessing: once per environment
INIT_SECONDS = time.perf_counter() - _started


def predict(image: bytes, kind: str, settings: dict) -> dict:
    """The model in this process as the backend of :func:`handler.handle`."""
    budget = settings.get("budget")
    if budget is not None and budget.remaining() <= 0:
        raise request_side.ApiError(504, "No time was left to run the model")
    try:
        with _RUNNING:
            data = inference.input_fn(image, request_side.ENDPOINT_TYPES.get(kind, "application/x-image"))
            prediction = inference.predict_fn(data, MODEL)
    except inference.UnsupportedInput as exc:
        raise request_side.model_refused(getattr(exc, "status", 415)) from None
    except Exception as exc:  # noqa: BLE001 - as the endpoint's own failure: a 502 with the kind, no traceback
        request_side.logger.exception("the model failed")
        raise request_side.ApiError(502, f"The model failed ({type(exc).__name__})") from None
    return json.loads(inference.output_fn(prediction, "application/json"))


lambda_handler = request_side.make_handler(predict)
