"""The API's Lambda function: an image URL or base64 image in, the predicted scene class out.

API Gateway (HTTP API, payload 2.0) calls it with ``POST /predict`` and ``{"url": "https://..."}`` or
``{"image": "<base64>"}``; :func:`handle` routes, parses, fetches, predicts and answers::

    200 {"label": "sea", "confidence": 0.97, "probabilities": {...}, "message": "Image predicted: sea"}

or a short ``{"error": ...}``: a 4xx for the client's mistake, 502/503/504 for the endpoint's; never a traceback.
:func:`predict` is the SageMaker endpoint; handler_onnx.py gives :func:`make_handler` a model inside the function.
guards.py (shipped beside this file) keeps it standing under hostile traffic: deadline, body parser, URL fetch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # Lambda puts the function's folder on sys.path; the local gateway imports this file by path
    sys.path.insert(0, HERE)

import guards  # noqa: E402 - lambda/src/guards.py: the machinery a learner may skip
from guards import ApiError, call_within  # noqa: E402

# On Lambda the runtime writes each line as JSON with the request id and the `extra` keys (template.yaml's
# LoggingConfig, LogFormat JSON), so the standard library's logging is all the function needs.
logger = logging.getLogger("cloudalliance-predict")

MIN_ENDPOINT_S = 0.5  # below this there is no point in calling the endpoint
ENDPOINT_CONNECT_TIMEOUT_S = 3.0
ENDPOINT_TYPES = {"image/jpeg": "image/jpeg", "image/png": "image/png"}  # others go as application/x-image


def _settings() -> dict:
    return {
        "endpoint": os.environ.get("ENDPOINT_NAME", ""),
        "runtime_url": os.environ.get("SAGEMAKER_RUNTIME_URL", "") or None,  # a local endpoint; empty on AWS
        "allowed": {h.strip().lower() for h in os.environ.get("ALLOWED_PRIVATE_HOSTS", "").split(",") if h.strip()},
        "max_bytes": int(os.environ.get("MAX_IMAGE_BYTES", str(5 * 1024 * 1024))),  # base64: at most 4 MiB
        "timeout": float(os.environ.get("FETCH_TIMEOUT_S", "5")),  # for the whole fetch, redirects included
    }


def response(status: int, body: dict, headers: dict | None = None) -> dict:
    return {"statusCode": status, "headers": {"content-type": "application/json", **(headers or {})},
            "body": json.dumps(body)}


def route(event) -> None:
    """One route, POST on any path (the template sends /predict, /predict/endpoint and /predict/lambda here)."""
    # Hand-written, not Powertools' APIGatewayHttpResolver: lambda/README.md ("Routing") says why.
    if not isinstance(event, dict):
        raise ApiError(400, "The event is not an API Gateway request")
    http_info = (event.get("requestContext") or {}).get("http") or {}
    if str(http_info.get("method") or "POST").upper() != "POST":
        raise ApiError(405, "Use POST with a JSON body")


def handle(event, context, predict) -> dict:
    """One payload-2.0 event to a response; ``predict(image, kind, settings)`` answers within ``settings["budget"]``
    or raises :class:`ApiError`. Nothing a client sends reaches the last-resort 500."""
    try:
        budget = guards.request_budget(context)  # what the Lambda context has left, less a safety margin
        route(event)
        settings = {**_settings(), "budget": budget}
        data = guards.parse_body(event)  # parse: JSON under any content type, base64-encoded or not
        image = guards.image_from_request(data, settings, budget)  # fetch the URL (guarded), or decode the base64
        kind = guards.sniff_image(image)  # JPEG, PNG, GIF, BMP, WebP or TIFF, from the first bytes
        result = predict(image, kind, settings)  # predict, within settings["budget"]
        label = result.get("label") if isinstance(result, dict) else None
        if not label or not isinstance(label, str):
            raise ApiError(502, "The model gave no label")
        logger.info("predicted", extra={"label": label, "confidence": result.get("confidence"),
                                        "source": "url" if "url" in data else "image", "bytes": len(image)})
        return response(200, {"label": label, "confidence": result.get("confidence"),
                              "probabilities": result.get("probabilities", {}), "message": f"Image predicted: {label}"})
    except ApiError as exc:
        logger.info("refused", extra={"status": exc.status, "reason": exc.message})
        return response(exc.status, {"error": exc.message}, exc.headers)
    except Exception:  # noqa: BLE001 - log it, answer without a traceback
        logger.exception("unexpected error")
        return response(500, {"error": "Internal error; it has been logged"})


_CLIENTS, _CLIENTS_LOCK = {}, threading.Lock()  # sagemaker-runtime clients per (URL, read timeout)


def runtime_client(settings: dict, read_timeout_s: float = 20):
    """A sagemaker-runtime client, ``read_timeout_s`` rounded up to whole seconds: the caller waits no longer than
    its budget (:func:`call_within`). No retries: ``total_max_attempts`` counts the first try, so 1 means none
    (botocore/config.py, ``retries`` in the docstring); a retry after a read timeout would overrun the deadline."""
    read_timeout_s = max(1, math.ceil(read_timeout_s))
    key = (settings["runtime_url"], read_timeout_s)
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            import boto3
            from botocore.config import Config
            config = Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=read_timeout_s,
                            connect_timeout=min(ENDPOINT_CONNECT_TIMEOUT_S, read_timeout_s))
            kwargs = {"config": config}
            if settings["runtime_url"]:
                kwargs.update(endpoint_url=settings["runtime_url"],
                              region_name=os.environ.get("AWS_REGION", "us-east-1"),
                              aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "local"),
                              aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "local"))
            client = _CLIENTS[key] = boto3.client("sagemaker-runtime", **kwargs)
    return client


def model_refused(status) -> ApiError:
    """The model could not take the image (its 413 or 415): the same answer whichever backend ran it."""
    if str(status) == "413":
        return ApiError(413, "The image is too large for the model")
    return ApiError(415, "The model could not read that image")


def endpoint_error(exc: Exception, waited_s: float) -> ApiError:
    """A botocore error from invoke_endpoint as the API's answer. InvokeEndpoint's errors (the service model,
    botocore/data/sagemaker-runtime/2017-05-13/service-2.json): InternalFailure 500, ServiceUnavailable 503,
    ValidationError 400, ModelError 424 (with the container's OriginalStatusCode and OriginalMessage, which botocore
    puts at the top of ``exc.response``: botocore/endpoint.py, ``_add_modeled_error_fields``),
    InternalDependencyException 530, ModelNotReadyException 429. A cold Serverless Inference endpoint has 3 minutes to
    pass /ping, then 1 to answer (https://docs.aws.amazon.com/sagemaker/latest/dg/serverless-endpoints-invoke.html)."""
    from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
    if isinstance(exc, (ReadTimeoutError, ConnectTimeoutError, TimeoutError)):
        return ApiError(504, f"The model endpoint did not answer within {waited_s:.1f} s; one that is starting "
                             "(Serverless Inference after idle time) takes minutes: try again", {"Retry-After": "10"})
    if isinstance(exc, EndpointConnectionError):
        return ApiError(503, "The model endpoint is not reachable; try again later")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {}) or {}
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        original = exc.response.get("OriginalStatusCode") or error.get("OriginalStatusCode")
        message = str(error.get("Message", "")).lower()
        if code == "ValidationError" and ("not found" in message or "could not find" in message):
            return ApiError(503, "The model endpoint does not exist (yet)")
        if code == "ValidationError" and "oversize body" in message:
            # Serverless Inference's 4 MB: "Request <id> has oversize body." (aws/sagemaker-python-sdk issue #4271)
            return ApiError(413, "The image is too large for the model endpoint (Serverless Inference takes at "
                                 "most 4 MB)")
        if code == "ModelError" or original is not None:
            if str(original) in ("413", "415", "400", "422"):
                return model_refused(original)
            return ApiError(502, f"The model failed (HTTP {original or status})")
        # The local endpoint (cloudalliance.local.endpoint_server) answers its container's status without an error code.
        if status in (413, 415):
            return model_refused(status)
        if status == 404:
            return ApiError(503, "The model endpoint does not exist (yet)")
        if code in ("ThrottlingException", "ModelNotReadyException", "ServiceUnavailable") or status in (429, 503):
            return ApiError(503, "The model endpoint is busy or starting; try again", {"Retry-After": "1"})
        return ApiError(502, f"The model endpoint failed ({code or status})")
    return ApiError(502, f"The model endpoint failed ({type(exc).__name__})")


def predict(image: bytes, kind: str, settings: dict) -> dict:
    """The SageMaker endpoint as the model: within ``settings["budget"]``, no retry."""
    from botocore.exceptions import BotoCoreError, ClientError
    if not settings["endpoint"]:
        raise ApiError(503, "The API has no endpoint configured (ENDPOINT_NAME)")
    budget = settings.get("budget") or guards.request_budget(None)  # 28 s without a context
    waited = budget.remaining()
    if waited < MIN_ENDPOINT_S:
        raise ApiError(504, "No time was left to call the model endpoint")
    client = runtime_client(settings, waited)

    def invoke() -> bytes:
        reply = client.invoke_endpoint(
            EndpointName=settings["endpoint"], Body=image, ContentType=ENDPOINT_TYPES.get(kind, "application/x-image"),
            Accept="application/json")
        return reply["Body"].read()

    try:
        raw = call_within(budget, invoke)  # also bounds a trickling answer, which read_timeout (per read) does not
    except (BotoCoreError, ClientError, TimeoutError) as exc:
        raise endpoint_error(exc, waited) from None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(502, "The model endpoint's answer is not JSON") from None


def make_handler(predict_fn):
    """The entry point ``(event, context) -> response`` for a backend ``predict_fn``."""

    def entry(event, context) -> dict:
        return handle(event, context, predict_fn)

    return entry


# SAM's entry point (template.yaml ``Handler: handler.lambda_handler``): the SageMaker endpoint backend, looked up
# at call time so that a test can replace ``predict``.
lambda_handler = make_handler(lambda image, kind, settings: predict(image, kind, settings))
