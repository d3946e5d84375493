"""The Lambda deployment package, for the forwarding function and for the model inside the function.

``build_package`` turns ``model.tar.gz`` into what Lambda runs: ``handler.py``
(the request side, with ``guards.py`` and ``url_fetch.py``) and ``handler_onnx.py`` (the model backend) from ``lambda/src/``,
the unpacked artifact under ``model/`` (``model.onnx``, labels, preprocessing,
``code/inference.py`` and ``code/presets.py``, so the predictions are the
endpoint's), and, for the Lambda platform, ONNX Runtime, numpy and Pillow as
manylinux wheels for the runtime's Python and the chosen architecture
(``pip install --platform ... --only-binary=:all: --target``; the versions of
``requirements/constraints.txt``). Nothing else: the handlers log with the
standard library (Lambda writes the lines as JSON), so no layer either.

Limits (https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html):
250 MB unzipped; 50 MB zipped for a direct
upload (``sam deploy`` uploads through S3, where the zip may be larger).

Its cold and warm starts are measured in :mod:`cloudalliance.bench.lambda_modes`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Sequence

from ..aws import SAM_DIR
from ..defaults import REGION
from ..errors import CloudallianceError
from ..serving.model_artifact import ServingError, sha256_of, unpack_artifact
from ..training.sagemaker import pinned_requirements


REPO_ROOT = Path(__file__).resolve().parents[3]


LAMBDA_DIR = REPO_ROOT / "lambda"


FUNCTION_DIR = LAMBDA_DIR / "src"  # both handlers; the forwarding function's CodeUri


HANDLER_FILES = ("handler.py", "guards.py", "url_fetch.py", "handler_onnx.py")


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


class PackageError(CloudallianceError, ValueError):
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
    largest: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # the 10 largest files and their bytes
    quantize: str = ""  # "int8": model.onnx quantised (cloudalliance.serving.quantize)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["path"], d["zip_path"] = str(self.path), str(self.zip_path) if self.zip_path else None
        d["unzipped_mb"] = round(self.unzipped_bytes / 1e6, 2)
        d["zipped_mb"] = round(self.zipped_bytes / 1e6, 2) if self.zipped_bytes else None
        return d

    def summary(self) -> str:
        zipped = f", {self.zipped_bytes / 1e6:.1f} MB zipped" if self.zipped_bytes else ""
        text = (f"{self.path}: {self.platform} package for {self.arch} / Python {self.python}"
                f"{', int8 model' if self.quantize else ''}, {self.unzipped_bytes / 1e6:.1f} MB unzipped{zipped}, "
                f"{self.files} files\nthe largest files: " + ", ".join(
                    f"{name} {size / 1e6:.1f} MB" if size >= 100_000 else f"{name} {size / 1e3:.1f} kB"
                    for name, size in self.largest))
        if self.zipped_bytes and self.zipped_bytes > DIRECT_UPLOAD_LIMIT:
            text += (f"\nnote: over Lambda's {DIRECT_UPLOAD_LIMIT / 2**20:.0f} MB limit for a direct zip upload: "
                     "deploy it through S3 (`sam deploy` does; or `aws lambda update-function-code --s3-bucket ...`)")
        return text


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


def check_options(artifact: str | os.PathLike, platform_name: str, python: str | None, out) -> None:
    """What :func:`build_package` refuses, checked before any work (such as quantising the model) is done."""
    if not Path(artifact).is_file():
        raise PackageError(f"No artifact at {artifact}: build one with `cloudalliance package` (or notebook 05)")
    if platform_name not in ("lambda", "local"):
        raise PackageError(f"Unknown platform {platform_name!r}: use lambda or local")
    if platform_name == "local" and python:
        raise PackageError("--python is for the Lambda platform; a local package runs on this Python")
    if platform_name == "local" and not out:
        raise PackageError("A local package needs --out (lambda/package is what `sam deploy` uploads)")


def build_package(artifact: str | os.PathLike, out: str | os.PathLike | None = None, arch: str | None = None,
                  platform_name: str = "lambda", python: str | None = None, make_zip: bool = True,
                  cache: str | os.PathLike = WHEEL_CACHE, int8_model: str | os.PathLike | None = None) -> PackageInfo:
    """The in-Lambda function's package in ``out`` (replaced as a whole, only once it is complete).

    ``platform_name="lambda"``: self-contained, with the manylinux wheels for ``arch`` and ``python``
    (default: Lambda's python3.12), byte-compiled for that Python where this machine has it. ``"local"``:
    handlers and model only, for a gateway on this machine, which brings its own ONNX Runtime, numpy and
    Pillow. ``out`` defaults to ``lambda/package`` (the template's CodeUri) for the Lambda platform; a local
    package needs an ``out`` of its own. ``int8_model``: an int8 ``model.onnx`` to serve instead of the artifact's
    (made by :func:`cloudalliance.serving.quantize.quantize_int8` from it).
    """

    started = time.perf_counter()
    artifact = Path(artifact)
    check_options(artifact, platform_name, python, out)
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
        if int8_model:
            shutil.copyfile(int8_model, staging / "model" / "model.onnx")
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
                    "artifact_sha256": sha256_of(artifact), "bytecode": compiled,
                    "quantize": "int8" if int8_model else "", "model_sha256": sha256_of(staging / "model" / "model.onnx")}
        (staging / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _normalise_modes(staging)
        files = [p for p in staging.rglob("*") if p.is_file()]
        unzipped = sum(p.stat().st_size for p in files)
        largest = sorted(((str(p.relative_to(staging)), p.stat().st_size) for p in files),
                         key=lambda item: -item[1])[:10]  # what a smaller package would have to do without
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
                       time.perf_counter() - started, largest, "int8" if int8_model else "")


def read_manifest(package: str | os.PathLike) -> dict[str, Any]:
    path = Path(package) / "package.json"
    if not path.is_file():
        raise PackageError(f"{package} is not a built package (no package.json): run `cloudalliance lambda package`")
    return json.loads(path.read_text())


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


def build_packages(artifact: str | os.PathLike, folder: str | os.PathLike, arches: Sequence[str],
                   log=print, int8_model: str | os.PathLike | None = None) -> list[PackageInfo]:
    """The Lambda package for each architecture, for its size; one that cannot be built (no PyPI, no cached
    wheels) is reported and left out. The architectures build side by side (pip runs in its own process and
    zlib compresses outside the GIL), in about the time of one on two cores."""
    import concurrent.futures as cf

    def one(arch: str) -> PackageInfo | str:
        try:
            return build_package(artifact, Path(folder) / f"package-{arch}", arch=arch, int8_model=int8_model)
        except PackageError as exc:
            return f"{arch}: not built: {str(exc).splitlines()[0]}"

    built = []
    with cf.ThreadPoolExecutor(max_workers=max(1, len(arches))) as pool:
        for outcome in pool.map(one, arches):
            log(outcome if isinstance(outcome, str) else outcome.summary())
            if not isinstance(outcome, str):
                built.append(outcome)
    return built


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
