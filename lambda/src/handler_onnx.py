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
``handler.py`` and its ``guards.py``, the unpacked artifact under ``model/`` and
the ONNX Runtime, numpy and Pillow wheels for the Lambda platform side by side;
SAM's ``Handler: handler_onnx.lambda_handler``.

Environment:
  MODEL_DIR               the unpacked artifact (default: ``model/`` next to this file)
  INFERENCE_THREADS       ONNX Runtime threads; unset (the template) or ``auto``: one per whole vCPU the
                          function's memory buys (Lambda gives one vCPU per 1,769 MB; at least 1), so a
                          function given more memory also uses the cores it pays for
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

import handler as request_side  # noqa: E402 - lambda/src/handler.py (and its guards.py), shipped beside this file

MODEL_DIR = os.environ.get("MODEL_DIR") or os.path.join(HERE, "model")

# "At 1,769 MB, a function has the equivalent of one vCPU (one vCPU-second of credits per second)"
# (https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html). os.cpu_count() says 2 from 128 MB
# up, but below 3,538 MB the credits are for less than two, so a second thread would only wait for its share.
MB_PER_VCPU = 1769


def inference_threads(env=None) -> int:
    """ONNX Runtime's thread count: ``INFERENCE_THREADS`` when it is a number (0: ONNX Runtime's default), else
    the whole vCPUs that ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE`` (set by Lambda) buys, at least 1 and at most the
    cores this process sees; outside Lambda, without that variable, 0. (The local gateway passes the same count
    as a number: ``cloudalliance.local.gateway.in_lambda_environment``.)"""
    env = os.environ if env is None else env
    given = (env.get("INFERENCE_THREADS") or "auto").strip().lower()
    if given != "auto":
        try:
            threads = int(given)
        except ValueError:
            raise RuntimeError(f"INFERENCE_THREADS={given!r}: give a number of threads or 'auto'") from None
        if threads < 0:
            raise RuntimeError(f"INFERENCE_THREADS={given!r}: give a number of threads (0: all cores) or 'auto'")
        return threads
    try:
        memory_mb = int(env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", ""))
    except ValueError:
        return 0
    try:
        cores = len(os.sched_getaffinity(0))  # the cores this process may run on
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(memory_mb // MB_PER_VCPU, cores))


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
THREADS = inference_threads()
os.environ["INFERENCE_THREADS"] = str(THREADS)  # what the artifact's model_fn reads
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
    answer = inference.output_fn(prediction, "application/json")
    # (body, content type); an artifact built before output_fn said its content type returns the body alone
    return json.loads(answer[0] if isinstance(answer, tuple) else answer)


lambda_handler = request_side.make_handler(predict)
