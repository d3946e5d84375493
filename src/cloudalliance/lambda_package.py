"""The in-Lambda inference mode: its deployment package, and its cold and warm start measured.

``build_package`` turns ``model.tar.gz`` into what Lambda runs: ``handler.py``
(the request side) and ``handler_onnx.py`` (the model backend) from ``lambda/src/``,
the unpacked artifact under ``model/`` (``model.onnx``, labels, preprocessing,
``code/inference.py`` and ``code/presets.py``, so the predictions are the
endpoint's), and, for the Lambda platform, ONNX Runtime, numpy and Pillow as
manylinux wheels for the runtime's Python and the chosen architecture
(``pip install --platform ... --only-binary=:all: --target``; the versions of
``requirements/constraints.txt``). ``aws_lambda_powertools`` is not packaged:
the function uses AWS's public Powertools layer, as the forwarding function does.

Limits (https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html):
250 MB unzipped, function and layers together; 50 MB zipped for a direct
upload (``sam deploy`` uploads through S3, where the zip may be larger).

``measure_cold_starts`` is Lambda's init as this machine can see it: a fresh
Python process (no site-packages when the package carries its own wheels, the
Powertools package standing in for its layer) imports the handler — ONNX
Runtime's import and the session's creation — and answers its first request;
then the same process answers warm requests, which is the billed duration.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Sequence

from .aws import SAM_DIR
from .defaults import ENDPOINT_NAME, REGION

REPO_ROOT = Path(__file__).resolve().parents[2]
LAMBDA_DIR = REPO_ROOT / "lambda"
FUNCTION_DIR = LAMBDA_DIR / "src"  # both handlers; the forwarding function's CodeUri
HANDLER_FILES = ("handler.py", "guards.py", "handler_onnx.py")
HANDLER = "handler_onnx.lambda_handler"  # template.yaml's Handler for the in-Lambda function
RUNTIME = "python3.12"  # template.yaml's Runtime
RUNTIME_PYTHON = "3.12"
RUNTIME_PACKAGES = ("onnxruntime", "numpy", "pillow")
# Lambda's architectures and the manylinux platform tags pip may take for them: the python3.12 runtime is Amazon
# Linux 2023 (glibc 2.34), so wheels up to manylinux_2_34 run there.
ARCHITECTURES = {"x86_64": "x86_64", "arm64": "aarch64"}
MANYLINUX = ("manylinux2014", "manylinux_2_27", "manylinux_2_28", "manylinux_2_34")
UNZIPPED_LIMIT = 250 * 1024 * 1024
DIRECT_UPLOAD_LIMIT = 50 * 1024 * 1024
WHEEL_CACHE = REPO_ROOT / ".tools" / "wheels"
DEFAULT_OUT = LAMBDA_DIR / "package"  # template.yaml's CodeUri for the in-Lambda function
# What the function never runs: test suites, C headers, type stubs, byte-code caches, and ONNX Runtime's
# Python tools (transformer optimisation, quantisation, model conversion), which inference does not import.
TRIM_DIRS = ("tests", "test", "include", "__pycache__", "onnxruntime/tools", "onnxruntime/transformers",
             "onnxruntime/quantization", "onnxruntime/datasets", "numpy/f2py", "numpy/_pyinstaller", "bin/")
TRIM_SUFFIXES = (".pyc", ".pyi", ".h", ".hpp", ".pxd", ".c", ".cpp")
ARTIFACT_DROPPED = ("model.pt",)  # PyTorch weights: the function runs model.onnx
# Standard memory sizes to recommend from (MB); Lambda gives a full vCPU at 1,769 MB
# (https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html).
MEMORY_SIZES = (512, 768, 1024, 1536, 1769, 2048, 3008)
FULL_VCPU_MB = 1769


class PackageError(ValueError):
    """The package cannot be built (bad input, a wheel that does not exist, a limit passed)."""


@dataclasses.dataclass
class PackageInfo:
    path: Path
    zip_path: Path | None
    platform: str
    arch: str
    python: str
    unzipped_bytes: int
    zipped_bytes: int | None
    files: int
    packages: dict[str, str]
    seconds: float

    @property
    def self_contained(self) -> bool:
        return self.platform == "lambda"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["path"], d["zip_path"] = str(self.path), str(self.zip_path) if self.zip_path else None
        d["unzipped_mb"] = round(self.unzipped_bytes / 1e6, 2)
        d["zipped_mb"] = round(self.zipped_bytes / 1e6, 2) if self.zipped_bytes else None
        return d

    def summary(self) -> str:
        zipped = f", {self.zipped_bytes / 1e6:.1f} MB zipped" if self.zipped_bytes else ""
        text = (f"{self.path}: {self.platform} package for {self.arch} / Python {self.python}, "
                f"{self.unzipped_bytes / 1e6:.1f} MB unzipped{zipped}, {self.files} files")
        if self.zipped_bytes and self.zipped_bytes > DIRECT_UPLOAD_LIMIT:
            text += (f"\nnote: over Lambda's {DIRECT_UPLOAD_LIMIT / 2**20:.0f} MB limit for a direct zip upload: "
                     "deploy it through S3 (`sam deploy` does; or `aws lambda update-function-code --s3-bucket ...`)")
        return text


# --------------------------------------------------------------------------- building


def _machine_arch() -> str:
    machine = platform.machine().lower()
    return "arm64" if machine in ("aarch64", "arm64") else "x86_64"


def pip_platforms(arch: str) -> list[str]:
    if arch not in ARCHITECTURES:
        raise PackageError(f"Unknown architecture {arch!r}: use one of {', '.join(ARCHITECTURES)}")
    return [f"{tag}_{ARCHITECTURES[arch]}" for tag in MANYLINUX]


def _pip_target_args(arch: str, python: str) -> list[str]:
    args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python, "--no-deps"]
    for tag in pip_platforms(arch):
        args += ["--platform", tag]
    return args


def install_wheels(target: Path, arch: str, python: str = RUNTIME_PYTHON, cache: Path = WHEEL_CACHE,
                   timeout: float = 600.0) -> dict[str, str]:
    """ONNX Runtime, numpy and Pillow for ``arch``/``python`` into ``target``: from the wheel cache, else PyPI.

    ``--no-deps``: ONNX Runtime's other requirements (protobuf, sympy, flatbuffers, coloredlogs, packaging) serve
    its model tools, not ``InferenceSession`` (checked by importing the package with no site-packages).
    """
    from .training.sagemaker import pinned_requirements

    pins = pinned_requirements(RUNTIME_PACKAGES)
    cache = Path(cache) / f"cp{python.replace('.', '')}-{arch}"
    cache.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    common = _pip_target_args(arch, python)
    offline = subprocess.run([*pip, "install", "-q", "--no-index", "--find-links", str(cache), *common,
                              "--target", str(target), *pins], capture_output=True, text=True, timeout=timeout)
    if offline.returncode != 0:
        fetched = subprocess.run([*pip, "download", "-q", "-d", str(cache), *common, *pins],
                                 capture_output=True, text=True, timeout=timeout)
        if fetched.returncode != 0:
            if not any(cache.iterdir()):
                cache.rmdir()
            raise PackageError(f"pip could not get {' '.join(pins)} as wheels for {arch} / CPython {python} "
                               f"(is PyPI reachable? are there wheels for that platform?):\n"
                               f"{(fetched.stderr or fetched.stdout).strip()[-1500:]}")
        done = subprocess.run([*pip, "install", "-q", "--no-index", "--find-links", str(cache), *common,
                               "--target", str(target), *pins], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise PackageError(f"pip install --target failed:\n{(done.stderr or done.stdout).strip()[-1500:]}")
    return dict(pin.split("==", 1) for pin in pins)


def trim(root: Path) -> int:
    """Remove what the function never runs; returns the bytes removed. The model and handlers are kept."""
    removed = 0
    keep = {root / "model", *(root / name for name in HANDLER_FILES)}

    def size(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size

    for rel in TRIM_DIRS:
        if "/" in rel:
            candidates = [root / rel]
        else:
            candidates = [p for p in root.rglob(rel) if p.is_dir()]
        for path in candidates:
            if path.is_dir() and not any(path == k or k in path.parents for k in keep):
                removed += size(path)
                shutil.rmtree(path)
    for path in list(root.rglob("*")):
        if path.is_file() and path.suffix in TRIM_SUFFIXES and not any(k in path.parents for k in keep):
            removed += path.stat().st_size
            path.unlink()
    return removed


def _write_zip(folder: Path, zip_path: Path, exclude: set[str] = frozenset()) -> int:
    """A deterministic zip (sorted names, fixed times), written atomically; returns its size."""
    tmp = zip_path.with_name(f".{zip_path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() not in exclude):
            info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as fh:
                zf.writestr(info, fh.read())
    os.replace(tmp, zip_path)
    return zip_path.stat().st_size


def _check_out(out: Path) -> None:
    """``out`` may be replaced only when it is missing, empty, or a package this command built."""
    if out.exists() and not out.is_dir():
        raise PackageError(f"--out {out} is a file; give a folder for the package")
    if out.is_dir():
        kept = {p.name for p in out.iterdir()} - {"README.md"}
        if kept and not (out / "package.json").is_file():
            raise PackageError(f"--out {out} holds other files ({', '.join(sorted(kept)[:3])}...): give an empty "
                               "or new folder, or one an earlier `lambda package` built (it has package.json)")


def _compile(folder: Path, python: str | None) -> bool:
    """Byte-code for the runtime's Python, checked by hash: Lambda's /var/task is read-only, so without .pyc files
    every cold start compiles numpy's and ONNX Runtime's Python from source (~0.2 s more); zip timestamps differ
    from the sources', hence ``unchecked-hash`` (PEP 552). Needs that Python on this machine; else skipped."""
    if not python:
        return False
    proc = subprocess.run([python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
                           str(folder)], capture_output=True, text=True, timeout=600)
    return proc.returncode == 0


def _normalise_modes(folder: Path) -> None:
    """Readable by anyone (Lambda runs the code as a non-root user); executables stay executable."""
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
        elif path.is_file():
            path.chmod(0o755 if os.access(path, os.X_OK) else 0o644)


def build_package(artifact: str | os.PathLike, out: str | os.PathLike | None = None, arch: str | None = None,
                  platform_name: str = "lambda", python: str | None = None, make_zip: bool = True,
                  cache: str | os.PathLike = WHEEL_CACHE) -> PackageInfo:
    """The in-Lambda function's package in ``out`` (replaced as a whole, only once it is complete).

    ``platform_name="lambda"``: self-contained, with the manylinux wheels for ``arch`` and ``python``
    (default: Lambda's python3.12), byte-compiled for that Python where this machine has it. ``"local"``:
    handlers and model only, for a gateway on this machine, which brings its own ONNX Runtime, numpy and
    Pillow. ``out`` defaults to ``lambda/package`` (the template's CodeUri) for the Lambda platform; a local
    package needs an ``out`` of its own.
    """
    from .serving import ServingError, sha256_of, unpack_artifact

    started = time.perf_counter()
    artifact = Path(artifact)
    if not artifact.is_file():
        raise PackageError(f"No artifact at {artifact}: build one with `cloudalliance package` (or notebook 05)")
    if platform_name not in ("lambda", "local"):
        raise PackageError(f"Unknown platform {platform_name!r}: use lambda or local")
    if platform_name == "local" and python:
        raise PackageError("--python is for the Lambda platform; a local package runs on this Python")
    if platform_name == "local" and not out:
        raise PackageError("A local package needs --out (lambda/package is what `sam deploy` uploads)")
    arch = arch or ("x86_64" if platform_name == "lambda" else _machine_arch())
    pip_platforms(arch)  # validates it
    python = python or (RUNTIME_PYTHON if platform_name == "lambda" else f"{sys.version_info[0]}.{sys.version_info[1]}")
    out = Path(out) if out else DEFAULT_OUT
    _check_out(out)
    readme = (out / "README.md").read_bytes() if (out / "README.md").is_file() else None  # lambda/package's, in git
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise PackageError(f"Cannot write the package beside {out}: {exc.strerror}") from None
    try:
        try:
            unpack_artifact(artifact, staging / "model")
        except (ServingError, OSError, EOFError, Exception) as exc:  # noqa: BLE001 - tarfile raises several kinds
            raise PackageError(f"{artifact} is not a model artifact this course built: {exc}") from None
        for name in ARTIFACT_DROPPED:
            (staging / "model" / name).unlink(missing_ok=True)
        for name in HANDLER_FILES:
            shutil.copy2(FUNCTION_DIR / name, staging / name)
        packages = {}
        if platform_name == "lambda":
            packages = install_wheels(staging, arch, python, Path(cache))
        trim(staging)
        compiled = platform_name == "lambda" and _compile(staging, find_python(python))
        # no build time and no local path: the same artifact gives the same package, byte for byte
        manifest = {"platform": platform_name, "arch": arch, "python": python, "runtime": RUNTIME,
                    "handler": HANDLER, "packages": packages, "artifact": artifact.name,
                    "artifact_sha256": sha256_of(artifact), "bytecode": compiled}
        (staging / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _normalise_modes(staging)
        files = [p for p in staging.rglob("*") if p.is_file()]
        unzipped = sum(p.stat().st_size for p in files)
        if unzipped > UNZIPPED_LIMIT:
            raise PackageError(f"The package is {unzipped / 2**20:.0f} MiB unzipped; Lambda allows "
                               f"{UNZIPPED_LIMIT / 2**20:.0f} MiB with its layers: use a smaller model, "
                               "or a container image function")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
        if readme is not None:
            (out / "README.md").write_bytes(readme)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    zip_path, zipped = None, None
    if make_zip:
        zip_path = out.with_name(out.name + ".zip")
        zipped = _write_zip(out, zip_path, exclude={"README.md"} if readme is not None else set())
    return PackageInfo(out, zip_path, platform_name, arch, python, unzipped, zipped, len(files), packages,
                       time.perf_counter() - started)


def read_manifest(package: str | os.PathLike) -> dict[str, Any]:
    path = Path(package) / "package.json"
    if not path.is_file():
        raise PackageError(f"{package} is not a built package (no package.json): run `cloudalliance lambda package`")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- cold and warm starts


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


def layer_stand_in(dest: Path) -> Path:
    """A folder standing in for the Powertools layer (its package and what it imports), by symbolic links."""
    import importlib.util

    dest.mkdir(parents=True, exist_ok=True)
    for name in ("aws_lambda_powertools", "jmespath", "typing_extensions"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            continue
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        link = dest / source.name
        if not link.exists():
            link.symlink_to(source)
    return dest


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
    from .api import http_api_event

    body = json.dumps({"image": base64.b64encode(image).decode()}).encode()
    return http_api_event("POST", "/predict", {"content-type": "application/json"}, body)


def measure_cold_starts(folder: str | os.PathLike, image: bytes, runs: int = 10, warm: int = 50,
                        module: str = "handler_onnx", env: dict[str, str] | None = None,
                        timeout: float = 120.0, progress: bool = True, python: str | None = None) -> ColdStart:
    """``runs`` fresh processes, each importing ``module`` from ``folder`` and answering one image, then ``warm``
    more. A package with its own wheels runs with ``python -S`` (no site-packages: only what Lambda would have,
    plus a stand-in for the Powertools layer); otherwise with this interpreter's packages. ``python``: another
    interpreter for a self-contained package (e.g. a CPython 3.12 for the package built for Lambda's python3.12)."""
    from tqdm.auto import tqdm

    from .api import in_lambda_environment

    folder = Path(folder)
    isolated = (folder / "numpy").is_dir() and (folder / "onnxruntime").is_dir()
    with tempfile.TemporaryDirectory(prefix="coldstart-") as tmp:
        event_path = Path(tmp) / "event.json"
        event_path.write_text(json.dumps(image_event(image)))
        child_env = {**os.environ, **in_lambda_environment(), "POWERTOOLS_LOG_LEVEL": "WARNING", **(env or {})}
        argv = [python or sys.executable]
        if isolated:
            layer = layer_stand_in(Path(tmp) / "layer")
            argv += ["-S"]
            child_env["PYTHONPATH"] = str(layer)
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


def find_python(version: str = RUNTIME_PYTHON) -> str | None:
    """A CPython ``version`` interpreter on this machine (PATH, or pyenv's versions), to run the Lambda package."""
    candidates = [shutil.which(f"python{version}")]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv.is_dir():
        candidates += sorted((str(p / "bin" / f"python{version}") for p in pyenv.glob(f"{version}.*")), reverse=True)
    for candidate in candidates:
        if not candidate:
            continue
        try:
            out = subprocess.run([candidate, "-S", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return candidate
    return None


MIN_RECOMMENDED_MB = 1024
FORWARDING_MEMORY_MB = 512  # template.yaml's Globals MemorySize: the forwarding function's


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
                packages: Sequence[PackageInfo] = (), memory_mb: int | None = None):
    """The api stage's record of one way to serve (``mode-endpoint`` / ``mode-lambda``): cold start, warm
    latency through the gateway, the handler's own warm duration, peak RSS and package sizes."""
    from . import prices
    from .records import Record

    metrics: dict[str, Any] = {k: round(v, 3) for k, v in latency.to_dict().items() if k.endswith("_ms")}
    metrics = {f"warm_{k}": v for k, v in metrics.items()}
    timings: dict[str, Any] = {"latencies_ms": [round(1000 * t, 3) for t in latency.seconds]}
    if cold is not None:
        metrics.update({k: round(v, 3) for k, v in cold.summary().items()})
        timings.update({"cold_start_ms": [round(1000 * t, 1) for t in cold.wall_s],
                        "init_ms": [round(1000 * t, 1) for t in cold.import_s],
                        "handler_warm_ms": [round(1000 * t, 3) for t in cold.warm_s]})
        memory_mb = memory_mb or (recommend_memory(max(cold.maxrss_mb)) if mode == "lambda" else FORWARDING_MEMORY_MB)
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
    from .api import measure_latency

    cold = None
    if runs and backend == "local":
        if mode == "lambda":
            cold = measure_cold_starts(package, image, runs, module="handler_onnx", progress=progress, python=python)
        else:
            cold = measure_cold_starts(FUNCTION_DIR, image, runs, module="handler", progress=progress,
                                       env={"ENDPOINT_NAME": endpoint_name, "SAGEMAKER_RUNTIME_URL": endpoint_url})
    latency = measure_latency(api_url, payloads, requests=requests, progress=progress)
    record = mode_record(mode, backend, cold, latency, api_url, packages)
    if cold is not None:
        record.config["cold_start_of"] = cold_start_of or ("lambda/src/handler.py with this environment's boto3"
                                                           if mode == "endpoint" else str(package))
    return record


def cold_start_package(artifact: str | os.PathLike, work: str | os.PathLike, built: Sequence[PackageInfo],
                       local: PackageInfo) -> tuple[Path, str | None, str]:
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
        info = build_package(artifact, Path(work) / "package-isolated", arch=arch, python=here, make_zip=False)
        return info.path, None, f"the Lambda layout built for CPython {here} ({arch}, no site-packages)"
    except PackageError as exc:
        return local.path, None, f"the local package with this environment's packages ({str(exc).splitlines()[0]})"


def modes_table(records) -> list[dict[str, Any]]:
    """One row per serving mode from its record: what the comparison in notebooks 06 and 07 shows."""
    rows = []
    for r in records:
        m, s = r.metrics, r.sizes
        rows.append({"mode": r.config.get("mode", r.name), "cold start median (ms)": m.get("cold_start_median_ms"),
                     "cold start max (ms)": m.get("cold_start_max_ms"), "warm p50 (ms)": m.get("warm_p50_ms"),
                     "warm p99 (ms)": m.get("warm_p99_ms"), "handler warm p50 (ms)": m.get("handler_warm_p50_ms"),
                     "peak RSS (MB)": m.get("peak_rss_mb"), "memory (MB)": r.config.get("lambda_memory_mb"),
                     **{k.replace("package_", "package ").replace("_mb", " (MB)"): v for k, v in s.items()
                        if k.startswith("package_")}})
    return rows


# --------------------------------------------------------------------------- the SAM CLI, in its own environment
# aws-sam-cli pins its own click, pydantic (through aws-sam-translator) and more, so it cannot share the course's
# environment (`pip install -c requirements/constraints.txt aws-sam-cli` has no solution); AWS's installer or a
# separate virtual environment is what AWS recommends
# (https://docs.aws.amazon.com/serverless-application-model/latest/developerguide/install-sam-cli.html).

SAM_CLI_VERSION = "1.170.0"


def ensure_sam(prefix: str | os.PathLike = SAM_DIR, version: str = SAM_CLI_VERSION, timeout: float = 900.0) -> Path:
    """The ``sam`` executable: on PATH if there is one, else installed once into its own venv under ``prefix``."""
    found = shutil.which("sam")
    if found:
        return Path(found)
    prefix = Path(prefix)
    sam = prefix / "bin" / "sam"
    stamp = prefix / f".installed-{version}"
    if sam.is_file() and stamp.is_file():
        return sam
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(prefix)], check=True, capture_output=True, timeout=120)
        subprocess.run([str(prefix / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "install", "-q",
                        f"aws-sam-cli=={version}"], check=True, capture_output=True, text=True, timeout=timeout)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise PackageError(f"Could not install aws-sam-cli {version} into {prefix}: {str(detail).strip()[-800:]}; "
                           "install it with AWS's installer instead") from None
    stamp.touch()
    return sam


def sam_validate(template: str | os.PathLike = LAMBDA_DIR / "template.yaml", sam: str | os.PathLike | None = None,
                 timeout: float = 300.0) -> subprocess.CompletedProcess:
    """``sam validate --lint``: the template through the SAM translator and cfn-lint, no AWS account needed."""
    sam = sam or ensure_sam()
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", REGION)}
    return subprocess.run([str(sam), "validate", "--lint", "-t", str(template)], capture_output=True, text=True,
                          timeout=timeout, env=env)


# --------------------------------------------------------------------------- what notebook 06 calls


def compare_answers(endpoint_api: str, lambda_api: str, files: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Each image through both APIs: the two labels and the largest probability difference."""
    from .api import call_api, image_payload

    rows = []
    for path in files:
        a, b = call_api(endpoint_api, image_payload(path)), call_api(lambda_api, image_payload(path))
        pa, pb = a.body.get("probabilities") or {}, b.body.get("probabilities") or {}
        diff = max((abs(p - pb[c]) for c, p in pa.items() if c in pb), default=float("inf"))
        rows.append({"image": Path(path).name, "endpoint": a.body.get("label"), "in Lambda": b.body.get("label"),
                     "max |p diff|": diff if pa.keys() == pb.keys() else float("inf")})
    return rows


BAD_REQUESTS = {"malformed JSON": b"{not json", "not an image": {"image": "aGVsbG8gd29ybGQ="},
                "cloud metadata address": {"url": "http://169.254.169.254/latest/meta-data/"},
                "neither url nor image": {"picture": "x"}}


def compare_refusals(endpoint_api: str, lambda_api: str) -> dict[str, tuple[int, int]]:
    """The statuses both APIs answer to :data:`BAD_REQUESTS`: (endpoint mode, in Lambda)."""
    from .api import call_api

    return {name: (call_api(endpoint_api, body).status, call_api(lambda_api, body).status)
            for name, body in BAD_REQUESTS.items()}


def build_packages(artifact: str | os.PathLike, folder: str | os.PathLike, arches: Sequence[str],
                   log=print) -> list[PackageInfo]:
    """The Lambda package for each architecture, for its size; one that cannot be built (no PyPI, no cached
    wheels) is reported and left out. The architectures build side by side (pip runs in its own process and
    zlib compresses outside the GIL), in about the time of one on two cores."""
    import concurrent.futures as cf

    def one(arch: str) -> PackageInfo | str:
        try:
            return build_package(artifact, Path(folder) / f"package-{arch}", arch=arch)
        except PackageError as exc:
            return f"{arch}: not built: {str(exc).splitlines()[0]}"

    built = []
    with cf.ThreadPoolExecutor(max_workers=max(1, len(arches))) as pool:
        for outcome in pool.map(one, arches):
            log(outcome if isinstance(outcome, str) else outcome.summary())
            if not isinstance(outcome, str):
                built.append(outcome)
    return built


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
