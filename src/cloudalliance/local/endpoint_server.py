"""The local endpoint (machinery; a learner may skip it): a real HTTP server on 127.0.0.1 that loads the
artifact through its own four functions and answers ``GET /ping``, ``POST /invocations`` and
``POST /endpoints/<name>/invocations`` (the SageMaker Runtime path, so boto3's ``sagemaker-runtime`` client
with ``endpoint_url=`` works unchanged).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path
from typing import Any, Sequence


from fastapi import Request, Response  # module level: FastAPI reads the annotations

from . import hardening, services
from ..defaults import ENDPOINT_NAME
from ..serving.model_artifact import load_handlers, unpack_artifact


ENDPOINT_SERVICE = "endpoint"


def create_endpoint_app(model_dir: str | os.PathLike, endpoint_name: str = ENDPOINT_NAME,
                        workers: int | None = None):
    """A FastAPI app that serves an unpacked artifact through its four handler functions.

    Decoding and inference are CPU-bound, so they run in a pool of ``workers`` threads (default: the cores),
    never on the event loop: ``/ping`` answers at once however many invocations wait (SageMaker's health
    check wants an answer within 2 s). Bodies are read as a stream, refused past ``MAX_IMAGE_BYTES`` (413)
    or past the body deadline (408) before they are held in full.
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    handlers = load_handlers(model_dir)
    model = handlers.model_fn(str(model_dir))
    limit = int(getattr(handlers, "MAX_IMAGE_BYTES", 6 * 1024 * 1024))  # SageMaker's 6 MB invocation payload
    workers = workers or services.cpu_count()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inference")
    app = hardening.create_json_app(f"local SageMaker-style endpoint {endpoint_name}")
    stats = {"invocations": 0, "errors": 0, "workers": workers}

    def infer(body: bytes, content_type: str, accept: str) -> tuple[int, str]:
        try:
            data = handlers.input_fn(body, content_type)
            prediction = handlers.predict_fn(data, model)
            answer = handlers.output_fn(prediction, accept)
            # (body, content type); an artifact built before output_fn said its content type returns the body alone
            return 200, answer[0] if isinstance(answer, tuple) else answer
        except handlers.UnsupportedInput as exc:
            return getattr(exc, "status", 415), json.dumps({"error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - a model failure is a 500 with a short reason
            return 500, json.dumps({"error": f"{type(exc).__name__}: {exc}"})

    async def answer(request: Request) -> tuple[int, str] | hardening.BodyError:
        """The container's (status, body), or the BodyError that refused the request before it got there."""
        try:
            body = await hardening.read_body(request, limit)
        except hardening.BodyError as exc:
            stats["errors"] += 1
            return exc
        content_type = request.headers.get("content-type", "")
        accept = request.headers.get("accept", "application/json")
        status, payload = await asyncio.get_running_loop().run_in_executor(pool, infer, body, content_type, accept)
        stats["invocations" if status == 200 else "errors"] += 1
        return status, payload

    async def invoke(request: Request) -> Response:
        result = await answer(request)
        if isinstance(result, hardening.BodyError):
            return hardening.json_error(result.status, result.message, close=True)
        return Response(result[1], status_code=result[0], media_type="application/json")

    @app.get("/ping")
    async def ping() -> Response:
        return Response(json.dumps({"status": "ok", "endpoint": endpoint_name, **stats}), media_type="application/json")

    app.add_api_route("/invocations", invoke, methods=["POST"])

    @app.post("/endpoints/{name}/invocations")
    async def named(name: str, request: Request) -> Response:
        """The sagemaker-runtime API in front of the container: its errors as InvokeEndpoint's, so botocore raises
        ``client.exceptions.ValidationError`` / ``ModelError`` here as on AWS."""
        if name != endpoint_name:
            stats["errors"] += 1
            return runtime_error(400, "ValidationError", f"Endpoint {name} of account {LOCAL_ACCOUNT} not found.",
                                 close=True)  # its body is left unread: the connection must not be reused
        result = await answer(request)
        if isinstance(result, hardening.BodyError):  # refused before the container saw it
            return runtime_error(result.status, "ValidationError", result.message, close=True)
        status, original = result
        if status == 200:
            return Response(original, status_code=200, media_type="application/json")
        side = "client" if status < 500 else "server"
        return runtime_error(424, "ModelError", f"Received {side} error ({status}) from primary with "
                             f"message \"{original}\". See the endpoint's log for more information.",
                             OriginalStatusCode=status, OriginalMessage=original,
                             LogStreamArn=f"arn:aws:logs:local:{LOCAL_ACCOUNT}:log-group:/aws/sagemaker/Endpoints/"
                                          f"{endpoint_name}")

    return app


LOCAL_ACCOUNT = "000000000000"


def runtime_error(status: int, code: str, message: str, close: bool = False, **members: Any):
    """An InvokeEndpoint error as sagemaker-runtime sends it (rest-json): the code in ``x-amzn-ErrorType``, the
    error shape's members in the body (botocore/data/sagemaker-runtime/2017-05-13/service-2.json: ``ModelError``
    is HTTP 424 with ``Message``, ``OriginalStatusCode``, ``OriginalMessage``, ``LogStreamArn``; an unknown
    endpoint is a 400 ``ValidationError``). ``error`` carries the message too, as every local server's errors do."""
    from fastapi import Response

    headers = {"x-amzn-ErrorType": code, **({"Connection": "close"} if close else {})}
    body = {"__type": code, "Message": message, "error": message, **members}
    return Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _ping(url: str) -> bool:
    with urllib.request.urlopen(url + "/ping", timeout=2) as resp:
        return resp.status == 200


def _last_port_file() -> Path:
    return services.state_dir() / f"{ENDPOINT_SERVICE}.last-port"


def _endpoint_port(port: int | None) -> int:
    """``port`` if given; else the port the endpoint last had, when it is free again; else a free one.

    Reusing the port means a gateway (or a notebook's client) that knew the old URL finds a restarted
    endpoint without being told.
    """
    if port:
        return port
    try:
        last = int(_last_port_file().read_text().strip())
    except (OSError, ValueError):
        last = 0
    return last if last and _can_listen(last) else services.free_port()


def _can_listen(port: int) -> bool:
    """True when a server could listen on ``port`` now. SO_REUSEADDR, as uvicorn's listening socket has it
    (asyncio ``loop.create_server``: reuse_address defaults to True on Unix,
    https://docs.python.org/3/library/asyncio-eventloop.html#asyncio.loop.create_server), binds while the old
    connections of a killed server linger in TIME_WAIT (socket(7), SO_REUSEADDR)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen(1)
        except OSError:
            return False
    return True


def start_local_endpoint(artifact: str | os.PathLike, endpoint_name: str = ENDPOINT_NAME,
                         threads: int = 0, timeout: float = 120.0, port: int | None = None) -> services.ServiceInfo:
    """Unpack ``artifact`` and serve it on 127.0.0.1 (a uvicorn process), waiting for /ping.

    The port is ``port``, else the endpoint's previous port when free, else a free one. ``threads`` is
    ONNX Runtime's intra-op threads per inference (default: cores / concurrent inferences, so that they do
    not oversubscribe the cores).
    """
    if services.running(ENDPOINT_SERVICE) is not None:
        stop_local_endpoint()  # frees the port we may reuse
    root = services.state_dir() / f"{ENDPOINT_SERVICE}-model"
    if root.exists():
        shutil.rmtree(root)
    unpack_artifact(artifact, root)
    port = _endpoint_port(port)
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "cloudalliance.local.endpoint_server", "--model-dir", str(root), "--name", endpoint_name,
            "--port", str(port)]
    env = {"INFERENCE_THREADS": str(threads)} if threads else None
    info = services.start_service(ENDPOINT_SERVICE, argv, ports={"http": port}, endpoint_url=url,
                                  healthy=lambda: _ping(url), data_dir=root, env=env, timeout=timeout)
    _last_port_file().write_text(f"{port}\n")
    return info


def stop_local_endpoint() -> bool:
    return services.stop_service(ENDPOINT_SERVICE)


def ensure_local_endpoint(artifact: str | os.PathLike, endpoint_name: str = ENDPOINT_NAME) -> services.ServiceInfo:
    """The running local endpoint if it serves this artifact, else a fresh one."""
    info = services.running(ENDPOINT_SERVICE)
    if info is not None:
        try:
            same = Path(info.data_dir, ".artifact").read_text() == f"{Path(artifact).resolve()}:{Path(artifact).stat().st_mtime}"
            if same and _ping(info.endpoint_url) and endpoint_name in info.cmdline:
                return info
        except OSError:
            pass
        stop_local_endpoint()
    info = start_local_endpoint(artifact, endpoint_name)
    Path(info.data_dir, ".artifact").write_text(f"{Path(artifact).resolve()}:{Path(artifact).stat().st_mtime}")
    return info


def serve_main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="cloudalliance.local.endpoint_server", description="Serve an unpacked model artifact.")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--name", default=ENDPOINT_NAME)
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--workers", type=int, default=0, help="concurrent inferences (default: the cores)")
    args = p.parse_args(argv)
    workers = args.workers or services.cpu_count()
    # ONNX Runtime's threads per inference: the cores shared by the concurrent inferences (inference.py reads it)
    os.environ.setdefault("INFERENCE_THREADS", str(max(1, services.cpu_count() // workers)))
    app = create_endpoint_app(args.model_dir, args.name, workers)
    hardening.serve(app, args.port, args.host)
    return 0


if __name__ == "__main__":
    sys.exit(serve_main())
