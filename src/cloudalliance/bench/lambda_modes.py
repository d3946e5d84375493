"""The two ways to serve behind the API, measured side by side (machinery for notebook 06's comparison): the
model inside the Lambda function against a forwarding function and an endpoint, each cold started as Lambda
would, their answers compared, and the memory size recommended.

``measure_cold_starts`` is Lambda's init as this machine can see it: a fresh Python process (no site-packages when
the package carries its own wheels, as on Lambda) imports the handler — ONNX
Runtime's import and the session's creation — and answers its first request; then the same process answers warm
requests, which is the billed duration.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from ..api.calls import call_api, image_payload, measure_latency
from ..api.lambda_package import (FUNCTION_DIR, RUNTIME_PYTHON, PackageError, PackageInfo, _machine_arch,
                                  build_package, find_python, read_manifest)
from ..defaults import ENDPOINT_NAME, FUNCTION_MEMORY_MB
from ..local.gateway import http_api_event, in_lambda_environment
from ..serving.model_artifact import load_handlers
from ..records import Record
from . import prices


# Standard memory sizes to recommend from (MB); Lambda gives a full vCPU at 1,769 MB
# (https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html).
MEMORY_SIZES = (512, 768, 1024, 1536, 1769, 2048, 3008)


_CHILD = r"""
import json, os, resource, sys, time
t0 = time.perf_counter()


def peak_rss_mb():
    # VmHWM: this process's own peak; getrusage's ru_maxrss also keeps the parent's peak across fork + exec
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


folder, module_name, event_path, warm = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path.insert(0, folder)
import importlib
module = importlib.import_module(module_name)
t1 = time.perf_counter()
event = json.load(open(event_path))
first = module.lambda_handler(event, None)
t2 = time.perf_counter()
body = json.loads(first["body"])
print(json.dumps({"import_s": t1 - t0, "first_s": t2 - t1, "status": first["statusCode"], "label": body.get("label"),
                  "error": body.get("error"), "maxrss_mb": peak_rss_mb()}),
      flush=True)
durations = []
for _ in range(warm if first["statusCode"] == 200 else 0):
    s = time.perf_counter()
    r = module.lambda_handler(event, None)
    durations.append(time.perf_counter() - s)
print(json.dumps({"warm_s": durations, "maxrss_mb": peak_rss_mb()}),
      flush=True)
"""


# The bare library, for the ratios: a fresh interpreter that imports numpy and onnxruntime, opens the same
# model.onnx and runs one image; then the same session's warm runs with 1 thread and with the function's threads.
_BARE = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import onnxruntime as ort
model, size, threads, warm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])


def session(n):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = n, 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


image = {"image": np.zeros((1, 3, size, size), np.float32)}
first = session(threads)
first.run(None, image)
print(json.dumps({"inside_s": time.perf_counter() - t0}), flush=True)
rss = max(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024
runs = {}
sessions = {1: session(1) if threads != 1 else first, threads: first} if warm else {}  # one session when equal
for n, s in sessions.items():
    s.run(None, image)
    times = []
    for _ in range(warm):
        t = time.perf_counter()
        s.run(None, image)
        times.append(time.perf_counter() - t)
    runs[str(n)] = sorted(times)[len(times) // 2]
print(json.dumps({"warm_p50_s": runs, "maxrss_mb": rss}), flush=True)
"""


def measure_bare(folder: str | os.PathLike, runs: int = 10, warm: int = 50, python: str | None = None,
                 threads: int = 1) -> dict[str, float]:
    """Bare ONNX Runtime on the package's ``model/model.onnx``, started as the cold starts are (same interpreter,
    no site-packages for a self-contained package): process start to first answer, and warm p50 with 1 thread and
    with ``threads`` (the function's)."""
    folder = Path(folder)
    size = json.loads((folder / "model" / "preprocess.json").read_text())["size"]
    isolated = (folder / "numpy").is_dir() and (folder / "onnxruntime").is_dir()
    argv = [python or sys.executable] + (["-S"] if isolated else [])
    argv += ["-c", _BARE, str(folder / "model" / "model.onnx"), str(size), str(threads)]
    env = {**os.environ, "PYTHONPATH": str(folder) if isolated else os.environ.get("PYTHONPATH", "")}
    cold, inside, peak, warm_p50 = [], [], [], {}
    for i in range(runs):
        started = time.perf_counter()
        # the warm runs once, in the first process: the others are cold starts only
        proc = subprocess.Popen(argv + [str(warm if i == 0 else 0)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, text=True)
        line = proc.stdout.readline()
        cold.append(time.perf_counter() - started)
        more = proc.stdout.readline()  # not communicate(): readline may already hold this line in its buffer
        err = proc.stderr.read()
        proc.wait(timeout=120)
        proc.stdout.close()
        proc.stderr.close()
        try:
            inside.append(json.loads(line)["inside_s"])
            peak.append(json.loads(more)["maxrss_mb"])
            if i == 0:
                warm_p50 = json.loads(more)["warm_p50_s"]
        except ValueError:
            raise PackageError(f"bare ONNX Runtime on {folder} failed:\n{err.strip()[-2000:]}") from None
    return {"bare_cold_start_median_ms": 1000 * statistics.median(cold),
            "bare_inside_median_ms": 1000 * statistics.median(inside),
            "bare_warm_p50_ms_1_thread": 1000 * warm_p50["1"], "bare_warm_p50_ms": 1000 * warm_p50[str(threads)],
            "bare_threads": threads, "bare_peak_rss_mb": max(peak)}


@dataclasses.dataclass
class ColdStart:
    mode: str
    wall_s: list[float]        # process start to first answer, as the parent saw it
    import_s: list[float]      # the handler module's import (init phase)
    first_s: list[float]       # the first request after init
    warm_s: list[float]        # warm requests in the same process (the billed duration)
    maxrss_mb: list[float]
    isolated: bool             # the child ran without site-packages (a self-contained package)

    def summary(self) -> dict[str, float]:
        return {"cold_start_median_ms": 1000 * statistics.median(self.wall_s),
                "cold_start_max_ms": 1000 * max(self.wall_s),
                "init_median_ms": 1000 * statistics.median(self.import_s),
                "first_request_median_ms": 1000 * statistics.median(self.first_s),
                "handler_warm_p50_ms": 1000 * statistics.median(self.warm_s) if self.warm_s else float("nan"),
                "peak_rss_mb": max(self.maxrss_mb), "cold_starts": len(self.wall_s)}


def image_event(image: bytes) -> dict[str, Any]:
    """A payload-2.0 event carrying ``{"image": <base64>}``, as the local gateway builds it."""

    body = json.dumps({"image": base64.b64encode(image).decode()}).encode()
    return http_api_event("POST", "/predict", {"content-type": "application/json"}, body)


def measure_cold_starts(folder: str | os.PathLike, image: bytes, runs: int = 10, warm: int = 50,
                        module: str = "handler_onnx", env: dict[str, str] | None = None,
                        timeout: float = 120.0, progress: bool = True, python: str | None = None) -> ColdStart:
    """``runs`` fresh processes, each importing ``module`` from ``folder`` and answering one image, then ``warm``
    more. A package with its own wheels runs with ``python -S`` (no site-packages: only what Lambda would have);
    otherwise with this interpreter's packages. ``python``: another
    interpreter for a self-contained package (e.g. a CPython 3.12 for the package built for Lambda's python3.12)."""
    from tqdm.auto import tqdm

    folder = Path(folder)
    isolated = (folder / "numpy").is_dir() and (folder / "onnxruntime").is_dir()
    with tempfile.TemporaryDirectory(prefix="coldstart-") as tmp:
        event_path = Path(tmp) / "event.json"
        event_path.write_text(json.dumps(image_event(image)))
        child_env = {**os.environ, **in_lambda_environment(), **(env or {})}
        argv = [python or sys.executable]
        if isolated:
            argv += ["-S"]
            child_env.pop("PYTHONPATH", None)
            child_env.pop("PYTHONHOME", None)
        argv += ["-c", _CHILD, str(folder), module, str(event_path), str(warm)]
        result = ColdStart(module, [], [], [], [], [], isolated)
        for i in tqdm(range(runs), desc=f"cold starts ({module})", unit="process", disable=not progress):
            started = time.perf_counter()
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env, text=True)
            watchdog = threading.Timer(timeout, proc.kill)  # a hung child is killed, and readline returns
            watchdog.start()
            try:
                line = proc.stdout.readline()
                wall = time.perf_counter() - started
                more = proc.stdout.readline()
                proc.wait(timeout=timeout)
            finally:
                watchdog.cancel()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            err = proc.stderr.read()
            proc.stdout.close()
            proc.stderr.close()
            try:
                data, after = json.loads(line), json.loads(more)
            except ValueError:
                raise PackageError(f"The cold-start process for {folder} failed:\n{err.strip()[-2000:]}") from None
            if data["status"] != 200:
                raise PackageError(f"The first request in {folder} was answered {data['status']}: {data['error']}")
            result.wall_s.append(wall)
            result.import_s.append(data["import_s"])
            result.first_s.append(data["first_s"])
            result.maxrss_mb.append(max(data["maxrss_mb"], after["maxrss_mb"]))
            if i == 0:
                result.warm_s.extend(after["warm_s"])
    return result


MIN_RECOMMENDED_MB = 1024


def recommend_memory(peak_rss_mb: float, headroom: float = 1.3) -> int:
    """The smallest standard memory size with ``headroom`` over the peak RSS (Lambda stops a function at its
    limit), and at least 1,024 MB: Lambda's CPU share grows with memory (a full vCPU at 1,769 MB), so below that
    the model and the cold start run on a fraction of a core while the cost per request stays about the same
    (GB-seconds = memory x a duration that shrinks as memory grows)."""
    need = max(peak_rss_mb * headroom, MIN_RECOMMENDED_MB)
    for size in MEMORY_SIZES:
        if size >= need:
            return size
    return MEMORY_SIZES[-1]


def mode_record(mode: str, backend: str, cold: ColdStart | None, latency, api_url: str,
                packages: Sequence[PackageInfo] = (), memory_mb: int | None = None, bare: dict | None = None):
    """The api stage's record of one way to serve (``mode-endpoint`` / ``mode-lambda``): cold start, warm
    latency through the gateway, the handler's own warm duration, peak RSS and package sizes."""

    metrics: dict[str, Any] = {k: round(v, 3) for k, v in latency.to_dict().items() if k.endswith("_ms")}
    metrics = {f"warm_{k}": v for k, v in metrics.items()}
    timings: dict[str, Any] = {"latencies_ms": [round(1000 * t, 3) for t in latency.seconds]}
    if cold is not None:
        metrics.update({k: round(v, 3) for k, v in cold.summary().items()})
        timings.update({"cold_start_ms": [round(1000 * t, 1) for t in cold.wall_s],
                        "init_ms": [round(1000 * t, 1) for t in cold.import_s],
                        "handler_warm_ms": [round(1000 * t, 3) for t in cold.warm_s]})
        memory_mb = memory_mb or (recommend_memory(max(cold.maxrss_mb)) if mode == "lambda" else FUNCTION_MEMORY_MB)
        # what the local gateway and the HTTP round trip add to the function's own warm time (measurement equipment)
        metrics["gateway_adds_p50_ms"] = round(metrics["warm_p50_ms"] - metrics["handler_warm_p50_ms"], 3)
    if cold is not None and bare:  # ours divided by the bare library's, measured in the same run
        metrics.update({k: round(v, 3) for k, v in bare.items()})
        metrics["cold_start_vs_bare"] = round(metrics["cold_start_median_ms"] / bare["bare_cold_start_median_ms"], 2)
        metrics["handler_warm_vs_bare"] = round(metrics["handler_warm_p50_ms"] / bare["bare_warm_p50_ms"], 2)
        metrics["peak_rss_vs_bare"] = round(metrics["peak_rss_mb"] / bare["bare_peak_rss_mb"], 2)
    sizes: dict[str, Any] = {"requests": latency.requests, "errors": latency.errors}
    for info in packages:
        sizes[f"package_{info.arch}_unzipped_mb"] = round(info.unzipped_bytes / 1e6, 2)
        if info.zipped_bytes:
            sizes[f"package_{info.arch}_zipped_mb"] = round(info.zipped_bytes / 1e6, 2)
    return Record(stage="api", name=f"mode-{mode}", backend=backend,
                  instance="local gateway" if backend == "local" else "API Gateway",
                  timings=timings, sizes=sizes, metrics=metrics,
                  cost={"currency": "USD", "prices_date": prices.PRICES_DATE},
                  config={"mode": mode, "api_url": api_url, "lambda_memory_mb": memory_mb,
                          "isolated": bool(cold and cold.isolated),
                          "architectures": [info.arch for info in packages]})


def measure_mode(mode: str, api_url: str, image: bytes, payloads: Sequence[dict[str, Any]], runs: int = 10,
                 requests: int = 200, package: str | os.PathLike | None = None, endpoint_url: str = "",
                 endpoint_name: str = ENDPOINT_NAME, packages: Sequence[PackageInfo] = (), backend: str = "local",
                 progress: bool = True, python: str | None = None, cold_start_of: str = ""):
    """One way to serve, measured: ``runs`` cold starts of its function (local only) and ``requests`` warm
    requests through ``api_url``; returns its ``mode-<mode>`` record.

    ``lambda``: ``handler_onnx`` from ``package``. ``endpoint``: the forwarding ``handler`` from ``lambda/src/``,
    calling the endpoint at ``endpoint_url`` (its cold start is the function's: boto3's import and client, then
    one endpoint call; the endpoint itself is already up, as on AWS).
    """

    cold = bare = None
    if runs and backend == "local":
        if mode == "lambda":
            cold = measure_cold_starts(package, image, runs, module="handler_onnx", progress=progress, python=python)
            threads = int(in_lambda_environment()["INFERENCE_THREADS"])
            bare = measure_bare(package, runs, python=python, threads=threads)
        else:
            cold = measure_cold_starts(FUNCTION_DIR, image, runs, module="handler", progress=progress,
                                       env={"ENDPOINT_NAME": endpoint_name, "SAGEMAKER_RUNTIME_URL": endpoint_url})
    latency = measure_latency(api_url, payloads, requests=requests, progress=progress)
    record = mode_record(mode, backend, cold, latency, api_url, packages, bare=bare)
    # which model answered: the endpoint serves the artifact's float32 model; the function, what its package holds
    built = package and (Path(package) / "package.json").is_file()
    record.config["model"] = ("float32" if mode == "endpoint" else
                              (read_manifest(package).get("quantize") or "float32") if built else "")
    if cold is not None:
        record.config["cold_start_of"] = cold_start_of or ("lambda/src/handler.py with this environment's boto3"
                                                           if mode == "endpoint" else str(package))
    return record


def cold_start_package(artifact: str | os.PathLike, work: str | os.PathLike, built: Sequence[PackageInfo],
                       local: PackageInfo, int8_model: str | os.PathLike | None = None) -> tuple[Path, str | None, str]:
    """What to cold-start, best first: the package built for Lambda (this machine's architecture) run by a
    CPython 3.12 with no site-packages; else the same layout built for this interpreter; else the local package.
    Returns (folder, interpreter, description)."""
    arch = _machine_arch()
    python = find_python(RUNTIME_PYTHON)
    for info in built:
        if info.arch == arch and info.python == RUNTIME_PYTHON and python:
            return info.path, python, f"the Lambda package ({arch}, CPython {RUNTIME_PYTHON}, no site-packages)"
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    try:
        info = build_package(artifact, Path(work) / "package-isolated", arch=arch, python=here, make_zip=False,
                             int8_model=int8_model)
        return info.path, None, f"the Lambda layout built for CPython {here} ({arch}, no site-packages)"
    except PackageError as exc:
        return local.path, None, f"the local package with this environment's packages ({str(exc).splitlines()[0]})"


def modes_table(records) -> list[dict[str, Any]]:
    """One row per serving mode from its record: what the comparison in notebooks 06 and 07 shows (rounded; a
    dash where a mode has no such figure)."""
    def shown(value, digits: int = 1):
        return "–" if value is None else round(value, digits) if isinstance(value, float) else value

    rows = []
    for r in records:
        m, s = r.metrics, r.sizes
        row = {"mode": r.config.get("mode", r.name), "model": r.config.get("model") or None,
               "cold start median (ms)": m.get("cold_start_median_ms"),
               "cold start max (ms)": m.get("cold_start_max_ms"), "warm p50 (ms)": m.get("warm_p50_ms"),
               "warm p99 (ms)": m.get("warm_p99_ms"), "handler warm p50 (ms)": m.get("handler_warm_p50_ms"),
               "gateway adds p50 (ms)": m.get("gateway_adds_p50_ms"),
               "peak RSS (MB)": m.get("peak_rss_mb"), "memory (MB)": r.config.get("lambda_memory_mb"),
               **{k.replace("package_", "package ").replace("_mb", " (MB)"): v for k, v in s.items()
                  if k.startswith("package_")}}
        ratios = {"cold start ÷ bare ONNX Runtime": m.get("cold_start_vs_bare"),
                  "handler warm ÷ bare": m.get("handler_warm_vs_bare"), "peak RSS ÷ bare": m.get("peak_rss_vs_bare")}
        rows.append({**{k: shown(v) for k, v in row.items()}, **{k: shown(v, 2) for k, v in ratios.items()}})
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return [{k: row.get(k, "–") for k in keys} for row in rows]


def compare_answers(endpoint_api: str, lambda_api: str, files: Sequence[str | os.PathLike],
                    lambda_model: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Each image through both APIs: the two labels and the largest probability difference; with ``lambda_model``
    (the model folder the function serves), also the label that model gives when run here, in this process."""

    own = None
    if lambda_model:
        handlers = load_handlers(lambda_model)
        own = (handlers, handlers.model_fn(str(lambda_model)))
    rows = []
    for path in files:
        a, b = call_api(endpoint_api, image_payload(path)), call_api(lambda_api, image_payload(path))
        pa, pb = a.body.get("probabilities") or {}, b.body.get("probabilities") or {}
        diff = max((abs(p - pb[c]) for c, p in pa.items() if c in pb), default=float("inf"))
        rows.append({"image": Path(path).name, "endpoint": a.body.get("label"), "in Lambda": b.body.get("label"),
                     "max |p diff|": diff if pa.keys() == pb.keys() else float("inf")})
        if own:
            answer = own[0].output_fn(own[0].predict_fn(Path(path).read_bytes(), own[1]))
            rows[-1]["its model, here"] = json.loads(answer[0])["label"]
    return rows


BAD_REQUESTS = {"malformed JSON": b"{not json", "not an image": {"image": "aGVsbG8gd29ybGQ="},
                "cloud metadata address": {"url": "http://169.254.169.254/latest/meta-data/"},
                "neither url nor image": {"picture": "x"}}


def compare_refusals(endpoint_api: str, lambda_api: str) -> dict[str, tuple[int, int]]:
    """The statuses both APIs answer to :data:`BAD_REQUESTS`: (endpoint mode, in Lambda)."""

    return {name: (call_api(endpoint_api, body).status, call_api(lambda_api, body).status)
            for name, body in BAD_REQUESTS.items()}


def measure_modes(apis: dict[str, str | None], image: bytes, payloads: Sequence[dict[str, Any]], runs: int = 10,
                  requests: int = 200, cold: tuple[Path | None, str | None, str] = (None, None, ""),
                  endpoint_url: str = "", endpoint_name: str = ENDPOINT_NAME, packages: Sequence[PackageInfo] = (),
                  backend: str = "local", progress: bool = False) -> list:
    """:func:`measure_mode` for each mode whose API URL is given (``{"endpoint": url, "lambda": url}``)."""
    package, python, described = cold
    return [measure_mode(mode, url, image, payloads, runs=runs, requests=requests, package=package,
                         endpoint_url=endpoint_url, endpoint_name=endpoint_name,
                         packages=packages if mode == "lambda" else (), backend=backend, progress=progress,
                         python=python, cold_start_of=described if mode == "lambda" else "")
            for mode, url in apis.items() if url]
