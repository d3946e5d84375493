"""What a training run leaves: :class:`TrainingResult`, its record, and the tables and choices notebook 03
makes from several runs (time to accuracy, the model to serve).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..bench import prices
from ..errors import CloudallianceError
from ..records import Record


class LaunchError(CloudallianceError):
    """A training run that could not start or that failed, with what to look at."""

    exit_code = 1


@dataclasses.dataclass
class TrainingResult:
    instance: str
    backend: str
    model_dir: Path
    metrics: dict[str, Any]
    config: dict[str, Any]
    wall_seconds: float
    billable_seconds: float | None = None
    job_name: str = ""
    artifact: str = ""

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.metrics.get("history", [])


def training_histories(run, with_checks: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Per-epoch history of every training record in the run, by instance; ``with_checks`` adds the
    validations within epochs (``--val-checks``), all in time order (for accuracy over time)."""
    out = {}
    for r in run.records("training"):
        out[r.name] = validations_in_time_order(r.metrics.get("history", []),
                                                r.metrics.get("checks", []) if with_checks else [])
    return out


def validations_in_time_order(history: Sequence[Mapping], checks: Sequence[Mapping] = ()) -> list:
    """End-of-epoch validations and those within epochs, sorted by seconds since the script started."""
    return sorted([*history, *checks], key=lambda h: h.get("elapsed_seconds", 0.0))


def training_table(run):
    """One row per trained instance: time, throughput, accuracy, cost."""
    import pandas as pd

    rows = []
    for r in run.records("training"):
        rows.append({
            "instance": r.name,
            "backend": r.backend,
            "total s": r.timings.get("total_s"),
            "data load s": r.timings.get("data_load_s"),
            "epochs": r.sizes.get("epochs"),
            "images/s": r.metrics.get("images_per_s"),
            "val accuracy": r.metrics.get("val_accuracy"),
            "cost $": r.cost.get("usd"),
            "equivalent $": r.cost.get("equivalent_usd"),
        })
    return pd.DataFrame(rows).set_index("instance") if rows else pd.DataFrame()


def time_to_accuracy(metrics: Mapping[str, Any], target: float = 0.92) -> dict[str, Any]:
    """From a metrics.json: seconds (since the script started) until validation accuracy reached ``target``,
    final and best accuracy, images/s, and where the time went."""
    history = metrics.get("history", [])
    # end-of-epoch validations and those within epochs (--val-checks), in time order
    points = validations_in_time_order(history, metrics.get("checks", []))
    hit = next((h for h in points if (h.get("val_accuracy") or 0.0) >= target), None)
    return {
        "target": target,
        "seconds_to_target": round(hit["elapsed_seconds"], 2) if hit else None,
        "epoch_to_target": hit["epoch"] if hit else None,
        "final_accuracy": metrics.get("val_accuracy"),
        "best_accuracy": metrics.get("best_val_accuracy"),
        "images_per_s": round(metrics.get("images_per_s", 0.0), 2),
        "data_load_seconds": round(metrics.get("data_load_seconds", 0.0), 2),
        "train_seconds": round(sum(h.get("train_seconds", 0.0) for h in history), 2),
        "val_seconds": round(sum(h.get("val_seconds", 0.0) for h in history), 2),
        "total_seconds": round(metrics.get("total_seconds", 0.0), 2),
    }


def training_record(result: TrainingResult, name: str | None = None) -> Record:
    m, c = result.metrics, result.config
    seconds = result.billable_seconds if result.billable_seconds is not None else m.get("total_seconds", result.wall_seconds)
    # instances billed: the processes (world size) over the processes per instance
    count = (max(1, int(c.get("world_size", 1)) // max(1, prices.gpus_per_instance(result.instance)))
             if result.backend == "aws" else 1)
    return Record(
        stage="training",
        name=name or result.instance,
        backend=result.backend,
        instance=result.instance,
        timings={
            "total_s": round(result.wall_seconds, 3),
            "script_s": round(m.get("total_seconds", 0.0), 3),
            "data_load_s": round(m.get("data_load_seconds", 0.0), 3),
            "epoch_s": [round(s, 3) for s in m.get("epoch_seconds", [])],
            **({"billable_s": result.billable_seconds} if result.billable_seconds is not None else {}),
        },
        sizes={"train_images": c.get("train_images", 0), "val_images": c.get("val_images", 0),
               "epochs": len(m.get("history", []))},
        metrics={
            "images_per_s": round(m.get("images_per_s", 0.0), 2),
            "val_accuracy": m.get("val_accuracy"),
            "best_val_accuracy": m.get("best_val_accuracy"),
            "history": m.get("history", []),
            "checks": m.get("checks", []),
            "resumed_from_epoch": m.get("resumed_from_epoch", 0),  # > 0: the epochs before it ran in an earlier run
        },
        cost=prices.training_cost(result.instance, seconds, count),
        config={k: c.get(k) for k in ("preset", "arch", "weights", "epochs", "img_size", "batch_size", "lr",
                                       "freeze_blocks", "ema", "frozen_layers_engine", "threads", "device",
                                       "world_size", "amp", "validation", "seed")}
               | {"model_dir": str(result.model_dir), "job_name": result.job_name, "artifact": result.artifact},
    )
