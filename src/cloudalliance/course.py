"""The course runner: papermill runs the notebooks in order with parameters from a YAML file.

``params/<backend>.yaml``::

    backend: local            # local | aws
    run_id: null              # null: a timestamp
    runs_dir: runs
    parameters:               # offered to every notebook; each takes those it declares
      DATA_SOURCE: synthetic
    notebooks:
      - 01_data_exploration.ipynb
      - notebook: 03_training.ipynb
        parameters: {EPOCHS: 3}
        foreach: {INSTANCE_TYPE: [local-1cpu, local-2cpu]}   # one run per value

Executed notebooks go to ``runs/<run-id>/notebooks/``, the report to
``runs/<run-id>/report.html``. Local servers started during the run are
stopped at the end, whether it passed or failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import html
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

from .local import services
from .runs import RunContext, new_run_id, open_run
from .errors import CloudallianceError
from . import aws_cleanup

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
_TOP_KEYS = {"backend", "run_id", "runs_dir", "parameters", "notebooks", "kernel"}
_PARAM_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")


class CourseError(CloudallianceError):
    """A course run that could not start or whose notebook failed."""

    exit_code = 1


@dataclasses.dataclass
class Job:
    notebook: str
    output: str
    parameters: dict[str, Any]


@dataclasses.dataclass
class JobResult:
    job: Job
    status: str  # passed | failed | not run
    seconds: float = 0.0
    error: str = ""


@dataclasses.dataclass
class CourseResult:
    run: RunContext
    results: list[JobResult]
    report: Path | None

    @property
    def ok(self) -> bool:
        return all(r.status == "passed" for r in self.results)


def load_params(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CourseError(f"Parameter file {path} not found; see params/local.yaml for the format")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CourseError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise CourseError(f"{path} must be a mapping with keys: {', '.join(sorted(_TOP_KEYS))}")
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise CourseError(f"{path}: unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(_TOP_KEYS))}")
    if doc.get("backend", "local") not in ("local", "aws"):
        raise CourseError(f"{path}: backend {doc.get('backend')!r} unknown; choose one of: local, aws")
    for name in doc.get("parameters") or {}:
        if not _PARAM_RE.match(name):
            raise CourseError(f"{path}: parameter {name!r} must be UPPER_CASE like the notebooks' parameters")
    if not doc.get("notebooks"):
        raise CourseError(f"{path}: 'notebooks' lists no notebook to run")
    return doc


def notebook_parameters(path: Path) -> dict[str, Any]:
    """The parameters a notebook declares in its cell tagged ``parameters``."""
    import papermill

    return dict(papermill.inspect_notebook(str(path)))


def plan(doc: dict[str, Any], notebooks_dir: Path = NOTEBOOKS_DIR, run: RunContext | None = None) -> list[Job]:
    """Expand the notebook list (with ``foreach``) into jobs with their parameters."""
    common = dict(doc.get("parameters") or {})
    if run is not None:
        common.update(RUN_ID=run.run_id, RUNS_DIR=str(run.runs_dir), BACKEND=run.backend)
    jobs: list[Job] = []
    for entry in doc["notebooks"]:
        if isinstance(entry, str):
            entry = {"notebook": entry}
        if not isinstance(entry, dict) or "notebook" not in entry:
            raise CourseError(f"Notebook entry {entry!r} needs a 'notebook' name")
        name = entry["notebook"]
        path = notebooks_dir / name
        if not path.is_file():
            raise CourseError(f"Notebook {name} not found in {notebooks_dir}")
        declared = notebook_parameters(path)
        extra = dict(entry.get("parameters") or {})
        undeclared = sorted(set(extra) - set(declared))
        if undeclared:
            raise CourseError(f"{name} has no parameters {undeclared}; it declares: {', '.join(declared)}")
        foreach = entry.get("foreach") or {}
        if len(foreach) > 1:
            raise CourseError(f"{name}: foreach takes one parameter, got {sorted(foreach)}")
        variants: list[dict[str, Any]] = [{}]
        if foreach:
            (key, values), = foreach.items()
            if key not in declared:
                raise CourseError(f"{name} has no parameter {key!r} to run foreach over")
            if not isinstance(values, list) or not values:
                raise CourseError(f"{name}: foreach {key} needs a non-empty list")
            variants = [{key: v} for v in values]
        for variant in variants:
            params = {k: v for k, v in common.items() if k in declared}
            params.update(extra)
            params.update(variant)
            stem = Path(name).stem
            suffix = "".join(f"-{re.sub(r'[^A-Za-z0-9._-]', '_', str(v))}" for v in variant.values())
            jobs.append(Job(notebook=name, output=f"{stem}{suffix}.ipynb", parameters=params))
    return jobs


COURSE_KERNEL = "cloudalliance"  # environment.yml: python -m ipykernel install --user --name cloudalliance


def default_kernel() -> str:
    """The Jupyter kernel the course runs on: ``cloudalliance`` when installed (the environment that
    environment.yml builds), else ``python3`` (ipykernel's own spec, the Python running this).

    jupyter_client's ``KernelSpecManager.find_kernel_specs`` lists the installed kernels by name
    (jupyter_client/kernelspec.py:213).
    """
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        if COURSE_KERNEL in KernelSpecManager().find_kernel_specs():
            return COURSE_KERNEL
    except Exception:  # noqa: BLE001 - no jupyter_client or a broken kernel folder: the current Python
        pass
    return "python3"


def kernel_manager_class(output: Any = None):
    """The kernels' manager: local sockets (IPC transport) instead of TCP ports on 127.0.0.1, and the kernel
    process's own output (``output``, an open file) kept out of the course's terminal.

    A kernel on TCP without CurveZMQ keys warns "Kernel is running over TCP without encryption" (ipykernel's
    ``IPKernelApp.init_sockets``), because any user of the machine could connect to its ports. IPC sockets are
    files under Jupyter's runtime folder, readable by their owner only: nothing to warn about. (Windows has no
    IPC transport; there the default stays.) What the notebook's cells print reaches the executed notebook
    either way; ``output`` takes what the kernel process and its children write to their terminal (a training
    subprocess's progress bars), which would otherwise flood the course's log.

    Ctrl-C reaches `course run`, not the kernel (its own session). papermill then shuts the kernel down, and
    jupyter_client interrupts it first (jupyter_client/manager.py:634-635), so the running cell gets its
    KeyboardInterrupt and notebook 03 stops its training job; the kernel gets half of ``shutdown_wait_time`` for
    that before SIGTERM (manager.py:566-573), 2.5 s by default, here 10 s. An idle kernel exits at once.
    """
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self) -> str:
            return "tcp" if os.name == "nt" else "ipc"

        @default("shutdown_wait_time")
        def _default_shutdown_wait_time(self) -> float:
            return 20.0

        async def start_kernel(self, **kw: Any) -> None:  # the keywords reach subprocess.Popen
            if output is not None:
                kw.setdefault("stdout", output)
                kw.setdefault("stderr", output)
            await super().start_kernel(**kw)

    return IPCKernelManager


@contextlib.contextmanager
def _environment(**env: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_ADDED_BY_PAPERMILL = ("injected-parameters", "papermill-error-cell-tag")


def _failing_line(traceback: list[str]) -> str:
    """The notebook cell's own line that raised, from IPython's traceback (``----> 7 root = ...``)."""
    for frame in traceback:
        text = re.sub(r"\x1b\[[0-9;]*m", "", frame)
        if text.startswith("Cell In["):
            for line in text.splitlines():
                if line.startswith("---->"):
                    return line[5:].strip().split(" ", 1)[-1].strip()
    return ""


def _describe_failure(exc: Exception, job: Job, output: Path) -> str:
    """'<notebook> failed at cell N (In [k]) `first line`: Error: message'.

    N counts the cells of the source notebook from 1 (papermill's injected
    parameters and error banner are not counted).
    """
    import nbformat

    count = getattr(exc, "exec_count", None)
    ename, evalue = getattr(exc, "ename", type(exc).__name__), getattr(exc, "evalue", str(exc))
    where = "a cell"
    try:
        cells = [c for c in nbformat.read(output, as_version=4).cells
                 if not set(c.metadata.get("tags", [])) & set(_ADDED_BY_PAPERMILL)]
        for position, cell in enumerate(cells, start=1):
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            if errors:
                line = _failing_line(errors[0].get("traceback", [])) or (
                    cell.source.strip().splitlines()[0] if cell.source.strip() else "")
                where = f"cell {position}" + (f" (In [{count}])" if count is not None else "")
                where += f" `{line[:100]}`" if line else ""
                break
    except (OSError, ValueError):
        pass
    message = f"{ename}: {evalue}" if evalue else ename
    return f"{job.notebook} failed at {where}: {message.rstrip('.')}. Executed notebook: {output}"


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["DATA_SOURCE=/data/intel", "EPOCHS=5"]`` (``course run --set``) as parameters; values read as YAML."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not _PARAM_RE.match(name.strip()):
            raise ValueError(f"--set {pair!r}: write NAME=VALUE with an UPPER_CASE name, e.g. --set DATA_SOURCE=/data/intel")
        try:
            out[name.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[name.strip()] = value
    return out


PATH_PARAMETERS = ("DATA_SOURCE",)  # relative paths in these are taken from where the command runs


def resolve_paths(parameters: dict[str, Any], base: Path) -> dict[str, Any]:
    """Parameters with relative folder paths made absolute from ``base`` (where ``make course`` or
    ``cloudalliance course run`` was started), since the notebooks run with ``notebooks/`` as their folder."""
    out = dict(parameters)
    for name in PATH_PARAMETERS:
        value = out.get(name)
        if isinstance(value, str) and value and value != "synthetic" and "://" not in value:
            path = Path(value).expanduser()
            out[name] = str(path if path.is_absolute() else (base / path).resolve())
    return out


def check_overrides(overrides: dict[str, Any], jobs: list[Job], notebooks_dir: Path) -> None:
    """``--set`` names a parameter some notebook declares, and a ``DATA_SOURCE`` folder exists: a typo must not
    run the whole course on the synthetic scenes, nor a missing folder create a run."""
    declared = {name for job in {j.notebook for j in jobs} for name in notebook_parameters(notebooks_dir / job)}
    unknown = sorted(set(overrides) - declared)
    if unknown:
        raise ValueError(f"--set {', '.join(unknown)}: no notebook of this course has such a parameter; "
                         f"they have: {', '.join(sorted(declared))}")
    source = overrides.get("DATA_SOURCE")
    if isinstance(source, str) and source != "synthetic" and "://" not in source and not (
            source.strip() and Path(source).expanduser().is_dir()):
        raise ValueError(f"DATA_SOURCE {source or '(empty)'} is not a folder: give 'synthetic' or the folder of the "
                         "Intel images (seg_train/seg_train/<class>/*.jpg, train/<class>/*.jpg or class folders).")


def run_course(
    params_path: str | os.PathLike,
    run_id: str | None = None,
    only: list[str] | None = None,
    notebooks_dir: str | os.PathLike = NOTEBOOKS_DIR,
    log_output: bool = False,
    overrides: dict[str, Any] | None = None,
) -> CourseResult:
    """Run the course's notebooks in order; raise :class:`CourseError` naming the failing cell.

    ``overrides`` replace the parameter file's ``parameters`` (``course run --set NAME=VALUE``); relative
    paths in ``DATA_SOURCE`` are taken from the current folder. With ``only``, the report still shows every
    notebook's latest result in this run folder.
    """
    doc = load_params(params_path)
    doc["parameters"] = resolve_paths({**(doc.get("parameters") or {}), **(overrides or {})}, Path.cwd())
    notebooks_dir = Path(notebooks_dir).resolve()
    runs_dir = Path(doc.get("runs_dir") or "runs")
    if not runs_dir.is_absolute():
        runs_dir = REPO_ROOT / runs_dir
    check_overrides(overrides or {}, plan(doc, notebooks_dir), notebooks_dir)  # before anything is created
    run = open_run(run_id or doc.get("run_id") or new_run_id(), runs_dir, doc.get("backend", "local"))
    jobs = plan(doc, notebooks_dir, run)
    if only:
        jobs = [j for j in jobs if any(j.notebook.startswith(o) or j.output.startswith(o) for o in only)]
        if not jobs:
            raise CourseError(f"--only {only} matches no notebook")
    (run.path / "params.yaml").write_text(
        yaml.safe_dump({**doc, "run_id": run.run_id, "runs_dir": str(run.runs_dir),
                        "jobs": [dataclasses.asdict(j) for j in jobs]}, sort_keys=False)
    )
    out_dir = run.path / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    state = run.path / "services"
    results = [JobResult(job, "not run") for job in jobs]
    with _environment(**{services.STATE_ENV: str(state)}):
        try:
            for result in results:
                if not run_notebook(result, run, notebooks_dir, out_dir, doc.get("kernel"), log_output):
                    break
        except KeyboardInterrupt:
            if run.backend == "aws":  # the kernel stopped its own job; stop any it could not name (see below)
                _stop_aws_training(run.run_id, doc["parameters"].get("REGION") or None)
            raise
        finally:
            stopped = services.stop_all()
            if stopped:
                print(f"[course] stopped local services: {', '.join(stopped)}", flush=True)
    failure = next((r.error for r in results if r.status == "failed"), None)
    report = write_report(run, remember_results(run, results), Path(params_path))
    course = CourseResult(run, results, report)
    if failure:
        raise CourseError(f"{failure}\nReport: {report}")
    return course


def run_notebook(result: JobResult, run: RunContext, notebooks_dir: Path, out_dir: Path, kernel: str | None,
                 log_output: bool = False) -> bool:
    """Execute one job's notebook with papermill into ``out_dir``; fill in ``result``; True when it passed.

    The kernel's own process output goes to ``runs/<id>/logs/kernel-<notebook>.log`` (see
    :func:`kernel_manager_class`); what its cells print is in the executed notebook."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    job = result.job
    output = out_dir / job.output
    print(f"[course] {job.output} ...", flush=True)
    t0 = time.perf_counter()
    kernel_log = run.path / "logs" / f"kernel-{Path(job.output).stem}.log"
    kernel_log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(kernel_log, "ab") as kernel_output:
            papermill.execute_notebook(
                str(notebooks_dir / job.notebook), str(output), parameters=job.parameters, cwd=str(notebooks_dir),
                kernel_name=kernel or default_kernel(),
                kernel_manager_class=kernel_manager_class(None if log_output else kernel_output),
                progress_bar=False, log_output=log_output)
    except PapermillExecutionError as exc:
        result.status, result.seconds = "failed", time.perf_counter() - t0
        result.error = _describe_failure(exc, job, output)
        return False
    except Exception as exc:  # noqa: BLE001 - kernel died, bad notebook, ...
        result.status, result.seconds = "failed", time.perf_counter() - t0
        result.error = f"{job.notebook} could not run: {type(exc).__name__}: {exc}. The kernel's own output: {kernel_log}"
        return False
    result.status, result.seconds = "passed", time.perf_counter() - t0
    print(f"[course] {job.output} passed in {result.seconds:.1f} s", flush=True)
    return True


def _stop_aws_training(run_id: str, region: str | None) -> None:
    """Stop the run's running SageMaker training jobs after an interrupt, saying what happened (never raising: the
    interrupt is what the user asked for)."""
    try:
        # the notebook's kernel was interrupted first and stops its own job; this catches one it could not name
        # (a Ctrl-C while the job was being created) or a kernel that died
        stopped = aws_cleanup.stop_training_jobs(run_id, region=region)
        for line in stopped or ["no training job of this run is still InProgress"]:
            print(f"[course] interrupted: {line}", flush=True)
    except Exception as exc:  # noqa: BLE001 - no credentials, no network: say so and what to run
        print(f"[course] interrupted; could not check for running training jobs ({type(exc).__name__}: {exc}): "
              f"run `cloudalliance aws cleanup --run {run_id}`", flush=True)


def remember_results(run: RunContext, results: list[JobResult]) -> list[JobResult]:
    """Every notebook's latest result in this run folder (``course.json``): a rerun with ``--only`` updates
    the notebooks it ran and keeps the others' results, so the report never hides an earlier failure."""
    path = run.path / "course.json"
    try:
        earlier = {r["job"]["output"]: r for r in json.loads(path.read_text())}
    except (OSError, ValueError, KeyError, TypeError):
        earlier = {}
    merged = {out: JobResult(Job(**r["job"]), r["status"], r.get("seconds", 0.0), r.get("error", ""))
              for out, r in earlier.items()}
    for r in results:
        if r.status != "not run" or r.job.output not in merged:
            merged[r.job.output] = r
    ordered = sorted(merged.values(), key=lambda r: r.job.output)
    path.write_text(json.dumps([dataclasses.asdict(r) for r in ordered], indent=2, default=str) + "\n")
    return ordered


def _summary_markdown(run: RunContext, results: list[JobResult], params_path: Path) -> str:
    lines = [
        f"# Course run `{run.run_id}`",
        "",
        f"Backend **{run.backend}**, parameters from `{params_path}`, "
        f"finished {_dt.datetime.now().isoformat(timespec='seconds')}.",
        "",
        "| notebook | status | seconds |",
        "|---|---|---:|",
    ]
    for r in results:
        lines.append(f"| {r.job.output} | {r.status} | {r.seconds:.1f} |")
    failed = [r for r in results if r.error]
    if failed:
        lines += ["", "**Failure:** " + html.escape(failed[0].error)]
    records = run.records()
    if records:
        lines += ["", "## Records", "", "| record | backend | instance | total s | key figures |", "|---|---|---|---:|---|"]
        for rec in records:
            total = rec.timings.get("total_s", "")
            numbers = [(k, v) for k, v in rec.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
            figures = ", ".join(f"{k} {v:.4g}" for k, v in numbers[:3])
            total = f"{total:.1f}" if isinstance(total, (int, float)) else total
            lines.append(f"| {rec.filename} | {rec.backend} | {rec.instance} | {total} | {figures} |")
    return "\n".join(lines)


def write_report(run: RunContext, results: list[JobResult], params_path: Path) -> Path:
    """One self-contained ``report.html``: the run summary, then every executed notebook."""
    import nbformat
    from nbconvert import HTMLExporter

    combined = nbformat.v4.new_notebook()
    combined.cells.append(nbformat.v4.new_markdown_cell(_summary_markdown(run, results, params_path)))
    for r in results:
        path = run.path / "notebooks" / r.job.output
        if r.status == "not run" or not path.exists():
            continue
        nb = nbformat.read(path, as_version=4)
        combined.cells.append(nbformat.v4.new_markdown_cell(f"---\n# {r.job.output} ({r.status})"))
        for i, cell in enumerate(nb.cells):
            # nbformat's cell ids: ^[a-zA-Z0-9-_]+$ (an aws instance type in the name brings dots)
            cell["id"] = re.sub(r"[^A-Za-z0-9_-]", "-", f"{Path(r.job.output).stem[:40]}-{i}")
            combined.cells.append(cell)
        if not combined.metadata and nb.metadata:
            combined.metadata = nb.metadata
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(combined)
    path = run.path / "report.html"
    path.write_text(body, encoding="utf-8")
    return path
