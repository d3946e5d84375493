"""The one schema for stage records.

Every stage writes a JSON record under ``runs/<run-id>/records/<stage>-<name>.json``.
Notebook 07 reads records only, so everything it compares must be in here.

Version 2 added ``machine`` (what the record was measured on: :func:`cloudalliance.machine.machine_block`) and
``load`` (the load average at the stage's start, when the stage noted it, and at the record's creation).
Version 1 records still load: their machine and load are empty ("unknown").
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import re
import tempfile
from pathlib import Path
from typing import Any

from .errors import CloudallianceError
from . import machine as _machine

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)

STAGES = ("data", "upload", "training", "evaluation", "deployment", "api", "benchmark")
BACKENDS = ("local", "aws")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RecordError(CloudallianceError, ValueError):
    """A record that does not follow the schema."""

@dataclasses.dataclass
class Record:
    """One measurement of one stage.

    ``timings`` are seconds, ``sizes`` are counts and bytes, ``metrics`` are
    derived figures (files/s, accuracy, ...), ``cost`` is in US dollars with the
    price it was computed from, ``config`` is the resolved configuration.
    """

    stage: str
    name: str
    backend: str = "local"
    instance: str = ""
    timings: dict[str, Any] = dataclasses.field(default_factory=dict)
    sizes: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    cost: dict[str, Any] = dataclasses.field(default_factory=dict)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    created: str = ""
    host: str = ""
    machine: dict[str, Any] | None = None
    load: dict[str, Any] | None = None
    version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:

        if self.machine is None:
            self.machine = _machine.machine_block()
        if self.load is None:
            self.load = {"start": _machine.take_start(self.stage), "end": _machine.load_average()}
        if not self.created:
            self.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        if not self.host:
            self.host = platform.node()
        validate(dataclasses.asdict(self))

    @property
    def filename(self) -> str:
        return f"{self.stage}-{self.name}.json"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Record":
        validate(data)
        if data.get("version") == 1:  # before machine blocks: the machine is unknown, never this one
            data = {**data, "machine": data.get("machine") or {}, "load": data.get("load") or {},
                    "version": SCHEMA_VERSION}
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


_DICT_FIELDS = ("timings", "sizes", "metrics", "cost", "config", "machine", "load")


def validate(data: dict[str, Any]) -> None:
    """Raise :class:`RecordError` naming every way ``data`` breaks the schema."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise RecordError("a record is a JSON object")
    version = data.get("version")
    if version not in READABLE_VERSIONS:
        problems.append(f"version is {version!r}; this code reads versions "
                        f"{', '.join(map(str, READABLE_VERSIONS))}")
    if data.get("stage") not in STAGES:
        problems.append(f"stage {data.get('stage')!r} unknown; choose one of: {', '.join(STAGES)}")
    if data.get("backend") not in BACKENDS:
        problems.append(f"backend {data.get('backend')!r} unknown; choose one of: {', '.join(BACKENDS)}")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        problems.append(f"name {name!r} must be letters, digits, '.', '_' or '-'")
    if not isinstance(data.get("instance", ""), str):
        problems.append("instance must be a string")
    for key in _DICT_FIELDS:
        if not isinstance(data.get(key) if data.get(key) is not None else {}, dict):
            problems.append(f"{key} must be an object")
    for key in ("timings", "sizes"):
        for k, v in (data.get(key) or {}).items():
            if isinstance(v, bool) or not isinstance(v, (int, float, list)):
                problems.append(f"{key}.{k} must be a number or a list of numbers, not {v!r}")
    try:
        json.dumps(data)
    except (TypeError, ValueError) as exc:
        problems.append(f"not JSON-serialisable: {exc}")
    if problems:
        raise RecordError("; ".join(problems))


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_record(records_dir: str | os.PathLike, record: Record) -> Path:
    """Write ``record`` atomically; a rerun of the same stage and name replaces it."""
    path = Path(records_dir) / record.filename
    _atomic_write_text(path, json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def read_record(path: str | os.PathLike) -> Record:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: not valid JSON ({exc})") from exc
    try:
        return Record.from_dict(data)
    except RecordError as exc:
        raise RecordError(f"{path}: {exc}") from exc


def load_records(records_dir: str | os.PathLike, stage: str | None = None) -> list[Record]:
    """All records of a run, oldest first; ``stage`` filters."""
    folder = Path(records_dir)
    if not folder.is_dir():
        return []
    records = [read_record(p) for p in sorted(folder.glob("*.json"))]
    if stage is not None:
        records = [r for r in records if r.stage == stage]
    return sorted(records, key=lambda r: (r.created, r.filename))
