"""Where notebook 06's requests go, chosen once.

On aws the API is what ``sam deploy`` created: notebook 06 is given its URL (``API_URL``), a public image
(``IMAGE_URL``) and, optionally, the model-in-Lambda API (``LAMBDA_API_URL``). Locally the same API is played on
127.0.0.1 by :mod:`cloudalliance.local` — the endpoint serving ``model.tar.gz``, a gateway calling the real
``lambda/src/handler.py``, a server for test images — and :class:`ApiStack` holds the same three URLs. Every cell
after it calls ``api.url`` the same way on both backends.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

from .calls import ROUTE, check_api_urls, warm_up
from ..data.folders import resolve_split
from ..local.endpoint_server import ensure_local_endpoint
from ..local.gateway import start_image_server, start_local_gateway
from ..serving.model_artifact import ensure_artifact
from .lambda_package import build_package


@dataclasses.dataclass
class ApiStack:
    backend: str
    url: str  # POST {"url": ...} or {"image": ...} here
    image_url: str  # an image the API can fetch
    endpoint_url: str = ""  # local: the endpoint behind the API (on aws it is SageMaker's)
    artifact: Path | None = None  # local: the model.tar.gz the endpoint serves
    lambda_url: str | None = None  # the model-in-Lambda API, once :func:`add_model_in_lambda` has run
    local_package: object = None  # local: the model-in-Lambda package it serves
    warmup: str = ""  # aws: what warming the endpoint behind the API took (calls.warm_up)

    @property
    def local(self) -> bool:
        return self.backend == "local"


def start_api(backend: str, run, root: str | os.PathLike, files: Sequence[Path], endpoint_name: str,
              api_url: str = "", image_url: str = "") -> ApiStack:
    """The API notebook 06 calls: on aws the given URLs (checked first), called until the endpoint behind them is
    warm; locally the endpoint, the gateway and an image server started (or found running) on 127.0.0.1, with
    ``files[0]`` as the test image."""
    check_api_urls(backend, api_url, image_url)
    if backend != "local":
        return ApiStack(backend, api_url, image_url, warmup=warm_up(api_url, {"url": image_url}))

    artifact, _ = ensure_artifact(run, root)
    endpoint = ensure_local_endpoint(artifact, endpoint_name)
    gateway = start_local_gateway(endpoint.endpoint_url, endpoint_name, allowed_private_hosts="127.0.0.1")
    if not image_url:
        test_root = resolve_split(root, "test")
        image_url = f"{start_image_server(test_root).endpoint_url}/{Path(files[0]).relative_to(test_root).as_posix()}"
    return ApiStack(backend, api_url or gateway.endpoint_url + ROUTE, image_url, endpoint.endpoint_url, artifact)


def add_model_in_lambda(stack: ApiStack, lambda_dir: str | os.PathLike, lambda_api_url: str = "",
                        int8_model: str | os.PathLike | None = None) -> str | None:
    """The second way to serve: the model inside the Lambda function. On aws, ``lambda_api_url`` (a stack deployed
    with ``InferenceMode: both``), or None; locally its package (with ``int8_model`` in place of the artifact's
    model, if given) is built and served by a second gateway."""
    if not stack.local:
        stack.lambda_url = lambda_api_url or None
        return stack.lambda_url

    stack.local_package = build_package(stack.artifact, Path(lambda_dir) / "package-local", platform_name="local",
                                        int8_model=int8_model)
    inside = start_local_gateway(allowed_private_hosts="127.0.0.1", mode="lambda", package=stack.local_package.path)
    stack.lambda_url = inside.endpoint_url + ROUTE
    return stack.lambda_url
