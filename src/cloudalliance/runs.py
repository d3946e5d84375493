"""A run's folder: ``runs/<run-id>/`` with records, figures, data and executed notebooks."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
from pathlib import Path
from typing import Any

from . import records as _records

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def new_run_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def check_run_id(run_id: str) -> str:
    if not _RUN_ID_RE.match(run_id or ""):
        raise ValueError(
            f"Run id {run_id!r} is not usable as a folder name; use letters, digits, '.', '_' or '-'"
        )
    return run_id


@dataclasses.dataclass
class RunContext:
    """Where one course run keeps what it makes."""

    run_id: str
    runs_dir: Path
    backend: str = "local"

    def __post_init__(self) -> None:
        check_run_id(self.run_id)
        if self.backend not in _records.BACKENDS:
            raise ValueError(
                f"Unknown backend {self.backend!r}; choose one of: {', '.join(_records.BACKENDS)}"
            )
        self.runs_dir = Path(self.runs_dir).expanduser().resolve()
        for folder in (self.records_dir, self.figures_dir):
            folder.mkdir(parents=True, exist_ok=True)

    @property
    def path(self) -> Path:
        return self.runs_dir / self.run_id

    @property
    def records_dir(self) -> Path:
        return self.path / "records"

    @property
    def figures_dir(self) -> Path:
        return self.path / "figures"

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    # The run in S3, beside the data set's prefix: training jobs' output and the endpoint's artifact under models/,
    # spot checkpoints under checkpoints/ (cleanup removes both)
    @staticmethod
    def s3_prefixes(run_id: str) -> tuple[str, str]:
        return f"models/{run_id}", f"checkpoints/{run_id}"

    def s3_models(self, bucket: str) -> str:
        return f"s3://{bucket}/{self.s3_prefixes(self.run_id)[0]}"

    def s3_checkpoints(self, bucket: str) -> str:
        return f"s3://{bucket}/{self.s3_prefixes(self.run_id)[1]}"

    def write_record(self, record: _records.Record) -> Path:
        if record.backend != self.backend:
            record.backend = self.backend
        return _records.write_record(self.records_dir, record)

    def write_records(self, records) -> list[Path]:
        return [self.write_record(record) for record in records]

    def records(self, stage: str | None = None) -> list[_records.Record]:
        return _records.load_records(self.records_dir, stage)

    def save_figure(self, fig: Any, name: str, dpi: int = 110) -> Path:
        """Save a matplotlib figure as ``figures/<name>.png`` and return its path."""
        path = self.figures_dir / f"{name}.png"
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        return path

    def save_json(self, name: str, data: Any) -> Path:
        path = self.path / name
        _records._atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        return path


def open_run(run_id: str, runs_dir: str | os.PathLike = "runs", backend: str = "local") -> RunContext:
    """Open (creating if needed) the folder of run ``run_id`` under ``runs_dir``."""
    return RunContext(run_id=run_id, runs_dir=Path(runs_dir), backend=backend)
