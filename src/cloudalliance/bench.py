"""Benchmarks from a run's records only: nothing here re-runs work.

Notebook 07 draws the course's headline figures from these: training time per
instance, S3 upload time, the two combined with each bar's reduction against
the slowest, API latency percentiles, costs, and one summary table.
"""

from __future__ import annotations

import os as _os
from typing import Any, Mapping

import numpy as np

from . import prices
from .records import Record


def _latest(records: list[Record]) -> dict[str, Record]:
    found: dict[str, Record] = {}
    for r in records:  # records come oldest first: later ones win
        found[r.name] = r
    return found


def training_seconds(run) -> dict[str, float]:
    return {name: float(r.timings.get("total_s", 0.0)) for name, r in _latest(run.records("training")).items()}


def upload_seconds(run) -> dict[str, float]:
    """First uploads only (a rerun that skipped everything measures the resume, not the upload)."""
    return {name: float(r.timings.get("total_s", 0.0)) for name, r in _latest(run.records("upload")).items()
            if r.sizes.get("uploaded", 0) > 0}


def reduction_vs_slowest(values: Mapping[str, float]) -> dict[str, float]:
    """Percent less time than the slowest entry (the slowest itself: 0)."""
    if not values:
        return {}
    slowest = max(values.values())
    return {k: (100.0 * (slowest - v) / slowest if slowest > 0 else 0.0) for k, v in values.items()}


def _bar_panel(ax, values: Mapping[str, float], title: str, unit: str = "s") -> None:
    names = list(values)
    if not names:
        ax.text(0.5, 0.5, "no records of this stage in the run", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title)
        return
    cuts = reduction_vs_slowest(values)
    drawn = ax.bar(names, [values[n] for n in names])
    ax.bar_label(drawn, labels=[f"{values[n]:.1f} {unit}" + (f"\n-{cuts[n]:.0f}%" if cuts[n] > 0.5 else "")
                                for n in names], fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(unit)
    ax.margins(y=0.25)
    ax.tick_params(axis="x", labelrotation=15)


def figure_training(run):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    _bar_panel(ax, training_seconds(run), "Training time per instance (and reduction vs the slowest)")
    fig.tight_layout()
    return fig


def figure_upload(run):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    _bar_panel(ax, upload_seconds(run), "S3 upload time (and reduction vs the slowest)")
    fig.tight_layout()
    return fig


def figure_combined(run):
    """Upload and training side by side, as the original study's third figure."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    _bar_panel(a, upload_seconds(run), "S3 upload")
    _bar_panel(b, training_seconds(run), "Training")
    fig.suptitle("Where the time goes")
    fig.tight_layout()
    return fig


def api_latency(run) -> dict[str, Any]:
    records = {name: r for name, r in _latest(run.records("api")).items() if name != LOAD_RECORD}
    if not records:
        return {}
    rec = records.get("predict") or next(iter(records.values()))
    return {**rec.metrics, "latencies_ms": rec.timings.get("latencies_ms", [])}


LOAD_RECORD = "load"  # the api record of `cloudalliance bench api` (loadtest.load_record)


def api_load(run) -> list[dict[str, Any]]:
    """The levels of the latest api load record: concurrency, requests_per_s, p50/p95/p99_ms, errors."""
    rec = _latest(run.records("api")).get(LOAD_RECORD)
    return list(rec.metrics.get("levels", [])) if rec else []


def figure_api_load(run):
    """Requests/s and p99 latency against the number of clients in flight (closed loop)."""
    import matplotlib.pyplot as plt

    levels = api_load(run)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    if levels:
        x = [str(level["concurrency"]) for level in levels]
        left.bar(x, [level["requests_per_s"] for level in levels], color="#4C72B0")
        right.plot(x, [level["p99_ms"] for level in levels], "o-", color="#C44E52", label="p99")
        right.plot(x, [level["p50_ms"] for level in levels], "s--", color="#55A868", label="p50")
        right.legend()
        for i, level in enumerate(levels):
            errors = sum(level.get("errors", {}).values())
            if errors:
                left.annotate(f"{errors} errors", (i, level["requests_per_s"]), ha="center", va="bottom",
                              color="#C44E52")
    left.set_title("Throughput")
    left.set_ylabel("successful requests / s")
    right.set_title("Latency")
    right.set_ylabel("ms")
    for ax in (left, right):
        ax.set_xlabel("concurrent clients (closed loop)")
    fig.suptitle("API under load")
    fig.tight_layout()
    return fig


def figure_latency(run):
    import matplotlib.pyplot as plt

    lat = api_latency(run)
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    values = lat.get("latencies_ms", [])
    if values:
        ax.hist(values, bins=min(40, max(5, len(values) // 5)))
        for q, style in (("p50_ms", "-"), ("p95_ms", "--"), ("p99_ms", ":")):
            ax.axvline(lat[q], color="k", linestyle=style, label=f"{q[:-3]} {lat[q]:.1f} ms")
        ax.legend()
    ax.set_xlabel("ms per request (gateway → handler → endpoint)")
    ax.set_ylabel("requests")
    ax.set_title(f"API latency over {len(values)} requests")
    fig.tight_layout()
    return fig


def summary_table(run):
    """One row per measured step: what, where, seconds, throughput, accuracy, cost."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for rec in _latest(run.records("upload")).values():
        rows.append({"step": f"upload ({rec.name})", "instance": rec.instance, "seconds": rec.timings.get("total_s"),
                     "throughput": f"{rec.metrics.get('files_per_s', 0):.0f} files/s", "accuracy": None,
                     "cost $": None})
    for rec in _latest(run.records("training")).values():
        usd = rec.cost.get("usd")
        rows.append({"step": "training", "instance": rec.instance, "seconds": rec.timings.get("total_s"),
                     "throughput": f"{rec.metrics.get('images_per_s', 0):.1f} img/s",
                     "accuracy": rec.metrics.get("val_accuracy"),
                     "cost $": usd if usd else rec.cost.get("equivalent_usd")})
    for rec in _latest(run.records("evaluation")).values():
        rows.append({"step": f"evaluation ({rec.name})", "instance": rec.instance,
                     "seconds": rec.timings.get("total_s"),
                     "throughput": f"{rec.metrics.get('images_per_s', 0):.0f} img/s",
                     "accuracy": rec.metrics.get("accuracy"), "cost $": None})
    for rec in _latest(run.records("deployment")).values():
        rows.append({"step": "deployment", "instance": rec.instance, "seconds": rec.timings.get("total_s"),
                     "throughput": None, "accuracy": rec.metrics.get("endpoint_accuracy"),
                     "cost $": rec.cost.get("equivalent_price_per_hour")})
    for rec in _latest(run.records("api")).values():
        if rec.name == LOAD_RECORD:
            best = max(rec.metrics.get("levels", []), key=lambda level: level["requests_per_s"], default=None)
            if best:
                rows.append({"step": "api load (best level)", "instance": rec.instance, "seconds": None,
                             "throughput": f"{best['requests_per_s']:.1f} req/s at {best['concurrency']} clients, "
                                           f"p99 {best['p99_ms']:.1f} ms", "accuracy": None, "cost $": None})
            continue
        if rec.name.startswith(MODE_PREFIX):
            m = rec.metrics
            cold = f", cold start {m['cold_start_median_ms']:.0f} ms" if "cold_start_median_ms" in m else ""
            rows.append({"step": f"api, {rec.name[len(MODE_PREFIX):]} mode", "instance": rec.instance,
                         "seconds": None,
                         "throughput": f"warm p50 {m.get('warm_p50_ms', np.nan):.1f} / p99 "
                                       f"{m.get('warm_p99_ms', np.nan):.1f} ms{cold}", "accuracy": None, "cost $": None})
            continue
        per_1000 = rec.cost.get("per_1000_predictions_usd")
        rows.append({"step": "api (cost per 1,000 predictions)", "instance": rec.instance, "seconds": None,
                     "throughput": f"p50 {rec.metrics.get('p50_ms', np.nan):.1f} / p99 {rec.metrics.get('p99_ms', np.nan):.1f} ms",
                     "accuracy": None, "cost $": per_1000})
    table = pd.DataFrame(rows, columns=["step", "instance", "seconds", "throughput", "accuracy", "cost $"])
    for column, digits in (("seconds", 1), ("accuracy", 4), ("cost $", 6)):  # rounded to what they mean; blank, not NaN
        table[column] = [("" if v is None or v != v else round(float(v), digits)) for v in table[column]]
    return table.set_index("step").rename(columns={"throughput": "throughput or latency"})


# --------------------------------------------------------------------------- runs of several machines
# `cloudalliance bench compare`: the original study's Figures 2-4 (upload time, training time, both) with one
# bar per machine, from run folders or archives of them (`cloudalliance records pack`).

import dataclasses as _dc
import json as _json
import shutil as _shutil
import tarfile as _tarfile
import tempfile as _tempfile
import zipfile as _zipfile
from pathlib import Path as _Path

from . import machine as _machine
from .records import load_records as _load_records

UPLOAD_RECORD = "course-data"  # notebook 02's first upload of the course's data
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
PACKED = ("records", "figures")  # what `records pack` carries: no data, models or checkpoints


class CompareError(ValueError):
    """Runs that cannot be compared (exit 2 on the CLI)."""


def study_reference() -> dict[str, Any]:
    """The original study's published reductions (src/cloudalliance/data_files/study.json)."""
    return _json.loads((_Path(__file__).parent / "data_files" / "study.json").read_text(encoding="utf-8"))


def study_relative_times() -> dict[str, float]:
    """Execution time per machine as % of the study's baseline (PC = 100), from its reductions against it."""
    ref = study_reference()
    out = {ref["baseline"]: 100.0}
    for name in ref["machines"]:
        cut = ref["reductions_percent"].get(name)
        if cut and cut["vs"] == ref["baseline"]:
            out[name] = 100.0 - cut["percent"]
    return out


def pack_run(run_dir: str | _os.PathLike, out: str | _os.PathLike | None = None) -> _Path:
    """``<run-id>.tar.gz`` of a run's records and figures (what `bench compare` needs; no data or models)."""
    run = _Path(run_dir).resolve()
    if not (run / "records").is_dir():
        raise CompareError(f"{run_dir}: not a run folder (no records/ in it)")
    target = _Path(out) if out else run.parent / f"{run.name}.tar.gz"
    if target.is_dir():
        target = target / f"{run.name}.tar.gz"
    if not target.name.endswith((".tar.gz", ".tgz")):
        raise CompareError(f"{target}: the archive's name must end in .tar.gz or .tgz")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _tarfile.open(target, "w:gz") as tar:
        for part in PACKED:
            if (run / part).is_dir():
                tar.add(run / part, arcname=f"{run.name}/{part}")
        for extra in sorted(run.glob("*.json")) + sorted(run.glob("*.md")) + sorted(run.glob("*.html")):
            tar.add(extra, arcname=f"{run.name}/{extra.name}")
    return target


def _unpack(archive: _Path, dest: _Path) -> None:
    """Extract refusing absolute paths, '..', links out of the tree and devices."""
    if archive.name.endswith(".zip"):
        with _zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                parts = _Path(name).parts
                if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise CompareError(f"{archive}: unsafe path in the archive: {name!r}")
            zf.extractall(dest)
        return
    try:
        with _tarfile.open(archive, "r:*") as tar:
            # the 'data' filter refuses absolute names, '..', links pointing outside and special files
            # (https://docs.python.org/3/library/tarfile.html#tarfile.data_filter)
            tar.extractall(dest, filter="data")
    except _tarfile.FilterError as exc:
        raise CompareError(f"{archive}: unsafe entry in the archive: {exc}") from exc
    except (_tarfile.TarError, OSError, EOFError) as exc:
        raise CompareError(f"{archive}: not a readable archive ({exc})") from exc


def _find_records_dir(root: _Path) -> _Path:
    if (root / "records").is_dir():
        return root / "records"
    if root.name == "records" or any(root.glob("*.json")) and not any(root.glob("*/records")):
        return root
    found = sorted(p for p in root.glob("*/records") if p.is_dir())
    if len(found) == 1:
        return found[0]
    raise CompareError(f"{root}: {'no' if not found else 'more than one'} run (records/ folder) in it")


@_dc.dataclass
class ComparedRun:
    source: str          # what the user named
    run_id: str
    records: list[Record]

    def latest(self, stage: str) -> dict[str, Record]:
        return _latest([r for r in self.records if r.stage == stage])

    def upload(self, name: str = UPLOAD_RECORD) -> Record | None:
        found = {k: r for k, r in self.latest("upload").items() if r.sizes.get("uploaded", 0) > 0}
        return found.get(name) or next(iter(found.values()), None)

    def machine(self) -> dict[str, Any]:
        """The notebook machine's block: the upload's, else any record's (the newest with one)."""
        up = self.upload()
        if up is not None and up.machine:
            return up.machine
        return next((r.machine for r in reversed(self.records) if r.machine), {})

    def host(self) -> str:
        return next((r.host for r in reversed(self.records) if r.host), "")


def open_runs(sources: list[str], workdir: str | _os.PathLike) -> list[ComparedRun]:
    """Run folders, records folders or archives of them; archives are unpacked under ``workdir``."""
    runs: list[ComparedRun] = []
    for i, source in enumerate(sources):
        path = _Path(source)
        if not path.exists():
            raise CompareError(f"{source}: no such run folder or archive")
        if path.is_file():
            if not path.name.endswith(ARCHIVE_SUFFIXES):
                raise CompareError(f"{source}: give a run folder or a .tar.gz/.tgz/.zip made by `records pack`")
            dest = _Path(workdir) / f"{i}"
            dest.mkdir(parents=True, exist_ok=True)
            _unpack(path, dest)
            path = dest
        records_dir = _find_records_dir(path)
        records = _load_records(records_dir)
        if not records:
            raise CompareError(f"{source}: the run has no records")
        run_id = records_dir.parent.name if records_dir.name == "records" else records_dir.name
        taken = {r.run_id for r in runs}
        if run_id in taken:  # the same run twice, or two machines' runs with the same id
            run_id = next(f"{run_id}#{n}" for n in range(2, len(runs) + 3) if f"{run_id}#{n}" not in taken)
        runs.append(ComparedRun(source=source, run_id=run_id, records=records))
    return runs


_CONFIG_KEYS = ("preset", "arch", "img_size", "epochs")


def differences(runs: list[ComparedRun]) -> list[str]:
    """What differs between the runs' data and recipes (empty: comparable)."""
    seen: dict[str, dict[str, set]] = {}

    def note(what: str, value: Any, run: ComparedRun) -> None:
        seen.setdefault(what, {}).setdefault(_json.dumps(value, sort_keys=True), set()).add(run.run_id)

    for run in runs:
        up = run.upload()
        if up is not None:
            note("uploaded file count", up.sizes.get("files"), run)
            note("uploaded bytes", up.sizes.get("bytes"), run)
        for rec in run.latest("training").values():
            note("training images", rec.sizes.get("train_images"), run)
            note("validation images", rec.sizes.get("val_images"), run)
            for key in _CONFIG_KEYS:
                note(key, rec.config.get(key), run)
    out = []
    for what, values in seen.items():
        if len(values) > 1:
            parts = [f"{v} in {', '.join(sorted(ids))}" for v, ids in sorted(values.items())]
            out.append(f"{what}: {'; '.join(parts)}")
    return out


def _unique(labels: list[str]) -> list[str]:
    counts: dict[str, int] = {}
    out = []
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
        out.append(lab if counts[lab] == 1 else f"{lab} #{counts[lab]}")
    return out


def comparison_rows(runs: list[ComparedRun]) -> list[dict[str, Any]]:
    """One row per (run, training record): the machine's label, upload and training seconds, load, contention.

    A local training runs on the notebook's machine, restricted to its profile's cores (local-1cpu, ...), so
    the profile joins the label; an aws training runs on its SageMaker instance, which is then the label.
    Duplicate labels get the run id, then a number.
    """
    rows: list[dict[str, Any]] = []
    for run in runs:
        block = run.machine()
        base = _machine.label(block, run.host())
        up = run.upload()
        trainings = list(run.latest("training").values()) or [None]
        for rec in trainings:
            label = base
            if rec is not None:
                label = rec.instance if rec.backend == "aws" else (
                    f"{base} · {rec.instance}" if rec.instance and len(trainings) > 1 else base)
            loads = [r.load for r in (up, rec) if r is not None and r.load]
            rows.append({
                "label": label, "run": run.run_id, "instance": rec.instance if rec else "",
                "upload_s": float(up.timings["total_s"]) if up is not None else None,
                "training_s": float(rec.timings["total_s"]) if rec is not None else None,
                "load_end": [ld.get("end") for ld in loads],
                "contended": any(_machine.contended(r.machine or block, r.load) for r in (up, rec)
                                 if r is not None),
            })
    for use_run in (False, True):
        labels = [r["label"] for r in rows]
        dupes = {lab for lab in labels if labels.count(lab) > 1}
        for r in rows:
            if r["label"] in dupes:
                suffix = r["run"] if use_run or not r["instance"] or r["instance"] in r["label"] else r["instance"]
                r["label"] = f"{r['label']} ({suffix})"
    for r, lab in zip(rows, _unique([r["label"] for r in rows])):
        r["label"] = lab
    for r in rows:
        parts = [v for v in (r["upload_s"], r["training_s"]) if v is not None]
        r["total_s"] = sum(parts) if len(parts) == 2 else None
    return rows


def reductions(values: Mapping[str, float], baseline: str | None = None) -> dict[str, dict[str, Any]]:
    """Bars slowest first; each with % less time than the baseline (default: the slowest) and than the bar
    before it (the next slower machine), as the study reports them ("56.7 % against ml.m5.xlarge")."""
    order = sorted(values, key=lambda k: -values[k])
    if not order:
        return {}
    if baseline is not None and baseline not in values:
        raise CompareError(f"--baseline {baseline!r} is none of: {', '.join(order)}")
    base = baseline or order[0]
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(order):
        prev = order[i - 1] if i else None
        out[name] = {
            "seconds": values[name],
            "vs_baseline": 100.0 * (values[base] - values[name]) / values[base] if values[base] > 0 else 0.0,
            "previous": prev,
            "vs_previous": (100.0 * (values[prev] - values[name]) / values[prev]) if prev and values[prev] > 0
            else None,
        }
    return out


def _cut_label(cut: dict[str, Any], baseline: str) -> str:
    lines = [f"{cut['seconds']:.1f} s"]
    if cut["vs_baseline"] and abs(cut["vs_baseline"]) >= 0.05:
        lines.append(f"{-cut['vs_baseline']:+.1f}% vs {baseline}")
    if cut["vs_previous"] is not None and cut["previous"] != baseline:
        lines.append(f"{-cut['vs_previous']:+.1f}% vs prev")
    return "\n".join(lines)


def _compare_panel(ax, values: Mapping[str, float], title: str, baseline: str | None, contended: set[str]) -> str:
    cuts = reductions(values, baseline)
    if not cuts:
        ax.text(0.5, 0.5, "no records of this stage in these runs", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        return ""
    base = baseline or next(iter(cuts))
    names = list(cuts)
    bars = ax.bar(names, [cuts[n]["seconds"] for n in names],
                  color=["#C44E52" if n in contended else "#4C72B0" for n in names])
    ax.bar_label(bars, labels=[_cut_label(cuts[n], base) + ("\n(contended)" if n in contended else "")
                               for n in names], fontsize=7)
    ax.set_title(title)
    ax.set_ylabel("seconds")
    ax.margins(y=0.35)
    ax.tick_params(axis="x", labelrotation=15, labelsize=7)
    return base


def _study_panel(ax, values: Mapping[str, float], baseline: str | None) -> None:
    """The learner's machines and the study's, as % of each one's baseline (the study has no seconds)."""
    cuts = reductions(values, baseline) if values else {}
    names = [f"{n}" for n in cuts]
    mine = [100.0 - c["vs_baseline"] for c in cuts.values()]
    study = study_relative_times()
    mine_bars = ax.bar(names, mine, color="#4C72B0", label="your machines")
    ax.bar_label(mine_bars, labels=[f"{v:.1f}%" for v in mine], fontsize=7)
    bars = ax.bar([f"study: {n}" for n in study], list(study.values()), color="#999999", hatch="//",
                  label=study_reference()["source"].split(":")[0])
    ax.bar_label(bars, labels=[f"{v:.1f}%" for v in study.values()], fontsize=7)
    ax.set_ylabel("% of the baseline's time")
    ax.set_title("Relative to each baseline (=100 %)")
    ax.set_ylim(0, 135)
    for tick in ax.get_xticklabels():
        tick.set(rotation=30, ha="right", fontsize=7)
    ax.legend(fontsize=7, loc="upper right")


def _values(rows, key: str, per_run: bool = False) -> dict[str, float]:
    out: dict[str, float] = {}
    seen_runs: set[str] = set()
    for r in rows:
        if r[key] is None or (per_run and r["run"] in seen_runs):
            continue
        seen_runs.add(r["run"])
        out[r["label"] if not per_run else _run_label(rows, r)] = r[key]
    return out


def _run_label(rows, row) -> str:
    """Uploads happen once per run: label by the run's machine without the training profile."""
    same_run = [r for r in rows if r["run"] == row["run"]]
    if len(same_run) == 1:
        return row["label"]
    return row["label"].split(" · ")[0] if " · " in row["label"] else f"{row['label']} ({row['run']})"


def figures_compare(rows: list[dict[str, Any]], baseline: str | None = None) -> dict[str, Any]:
    """The study's three figures across machines: upload, training (with the study beside), both combined."""
    import matplotlib.pyplot as plt

    hot = {r["label"] for r in rows if r["contended"]}
    upload = _values(rows, "upload_s", per_run=True)
    training = _values(rows, "training_s")
    total = _values(rows, "total_s")
    figs = {}
    fig, ax = plt.subplots(figsize=(7.5, 4))
    _compare_panel(ax, upload, "S3 upload time per machine", baseline if baseline in upload else None, hot)
    fig.tight_layout()
    figs["compare_upload"] = fig
    fig, (ax, ref) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    _compare_panel(ax, training, "Training (execution) time per machine", baseline, hot)
    _study_panel(ref, training, baseline)
    fig.tight_layout()
    figs["compare_training"] = fig
    fig, ax = plt.subplots(figsize=(8, 4.2))
    if total:
        order = list(reductions(total, baseline if baseline in total else None))
        by_label = {r["label"]: r for r in rows}
        ax.bar(order, [by_label[n]["upload_s"] for n in order], color="#55A868", label="S3 upload")
        bars = ax.bar(order, [by_label[n]["training_s"] for n in order],
                      bottom=[by_label[n]["upload_s"] for n in order], color="#4C72B0", label="training")
        cuts = reductions(total, baseline if baseline in total else None)
        base = baseline if baseline in total else order[0]
        ax.bar_label(bars, labels=[_cut_label(cuts[n], base) for n in order], fontsize=7)
        ax.legend(fontsize=7)
        ax.margins(y=0.35)
        ax.tick_params(axis="x", labelrotation=15, labelsize=7)
    ax.set_title("Upload + training per machine")
    ax.set_ylabel("seconds")
    fig.tight_layout()
    figs["compare_combined"] = fig
    return figs


def compare_table(rows: list[dict[str, Any]], baseline: str | None = None):
    """The printed table: seconds and reductions per machine, slowest training first; contended runs marked."""
    import pandas as pd

    up = reductions(_values(rows, "upload_s", per_run=True), None)
    tr = reductions(_values(rows, "training_s"), baseline)
    out = []
    for r in sorted(rows, key=lambda r: -(r["training_s"] or 0)):
        u = up.get(_run_label(rows, r), {})
        t = tr.get(r["label"], {})
        out.append({
            "machine": r["label"] + (" *" if r["contended"] else ""), "run": r["run"],
            "upload s": r["upload_s"], "upload -% vs base": round(u["vs_baseline"], 1) if u else None,
            "training s": r["training_s"],
            "training -% vs base": round(t["vs_baseline"], 1) if t else None,
            "training -% vs prev": round(t["vs_previous"], 1) if t and t["vs_previous"] is not None else None,
            "load 1m (end)": ", ".join(f"{ld[0]:.1f}" for ld in r["load_end"] if ld) or None,
        })
    return pd.DataFrame(out).set_index("machine")


def study_table():
    import pandas as pd

    ref = study_reference()
    rel = study_relative_times()
    rows = [{"machine": n, "time % of PC": round(rel[n], 1),
             "-% vs PC": ref["reductions_percent"].get(n, {}).get("percent"),
             "-% vs prev": (ref["reductions_percent"].get(n, {}).get("also") or {}).get("percent")}
            for n in ref["machines"]]
    return pd.DataFrame(rows).set_index("machine")


def compare(sources: list[str], out: str | _os.PathLike | None = None, baseline: str | None = None,
            force: bool = False) -> dict[str, Any]:
    """Open the runs, refuse mismatched ones unless ``force``, draw and save the figures, return the tables."""
    import matplotlib.pyplot as plt

    work = _tempfile.mkdtemp(prefix="cloudalliance-compare-")
    try:
        runs = open_runs(sources, work)
        diffs = differences(runs)
        if diffs and not force:
            raise CompareError("the runs were made with different data or recipes, so their times do not compare:\n  "
                               + "\n  ".join(diffs) + "\n(--force compares them anyway)")
        rows = comparison_rows(runs)
        if baseline is not None and baseline not in {r["label"] for r in rows}:
            raise CompareError(f"--baseline {baseline!r} is none of: {', '.join(r['label'] for r in rows)}")
        table = compare_table(rows, baseline)
        saved = []
        if out is not None:
            folder = _Path(out)
            folder.mkdir(parents=True, exist_ok=True)
            for name, fig in figures_compare(rows, baseline).items():
                fig.savefig(folder / f"{name}.png", dpi=110, bbox_inches="tight")
                plt.close(fig)
                saved.append(folder / f"{name}.png")
            table.to_csv(folder / "compare.csv")
        return {"rows": rows, "table": table, "study": study_table(), "differences": diffs, "saved": saved}
    finally:
        _shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- three ways to serve, by traffic
# The forwarding function + a real-time endpoint, the model inside the function (issue: the study's "use Lambda for
# inference"), and SageMaker Serverless Inference: what a month costs against requests per hour, from the api
# records `mode-endpoint` and `mode-lambda` (lambda_package.mode_record) and the price table.

MODE_PREFIX = "mode-"
FORWARDING_MEMORY_MB = 512  # lambda/template.yaml: the forwarding function's MemorySize


def serving_modes(run) -> dict[str, Record]:
    """The latest ``mode-*`` api record of each serving mode, keyed by mode (``endpoint``, ``lambda``)."""
    return {name[len(MODE_PREFIX):]: r for name, r in _latest(run.records("api")).items() if name.startswith(MODE_PREFIX)}


def _duration_ms(record: Record) -> float:
    """The function's billed duration per request: its own warm handler time, else the warm API latency."""
    m = record.metrics
    value = m.get("handler_warm_p50_ms")
    if value is None or not np.isfinite(value):
        value = m.get("warm_p50_ms", np.nan)
    return float(value)


def lambda_request_usd(duration_ms: float, memory_mb: int, arch: str = "x86_64") -> float:
    """One Lambda invocation: GB-seconds (billed per 1 ms) + the request charge."""
    billed_s = np.ceil(duration_ms) / 1000
    return (billed_s * memory_mb / 1024 * prices.LAMBDA_PER_GB_SECOND_BY_ARCH[arch]
            + prices.LAMBDA_PER_MILLION_REQUESTS / 1e6)


IDLE_KEPT_MINUTES = 10.0  # how long Lambda keeps an idle execution environment: not documented; 5-15 min is usual


def cold_fraction(rates_per_hour):
    """The share of requests that meet a cold start at a steady (Poisson) rate: those with no request in the
    IDLE_KEPT_MINUTES before them. Since 2025-08-01 Lambda bills the INIT phase of on-demand functions
    (https://aws.amazon.com/blogs/compute/aws-lambda-standardizes-billing-for-init-phase/)."""
    return np.exp(-np.asarray(rates_per_hour, dtype=float) * IDLE_KEPT_MINUTES / 60)


def _init_usd(record: Record, memory_mb: int, arch: str) -> float:
    init_ms = record.metrics.get("init_median_ms")
    if init_ms is None or not np.isfinite(init_ms):
        return 0.0
    return np.ceil(init_ms) / 1000 * memory_mb / 1024 * prices.LAMBDA_PER_GB_SECOND_BY_ARCH[arch]


def serving_costs(run_or_modes, hosting_instance: str = "ml.m5.large", serverless_memory_mb: int = 2048,
                  image_kb: float = 30.0, max_rate: float = 100_000) -> dict[str, Any]:
    """Monthly cost against requests per hour (1 ... ``max_rate``, extended to show every break-even up to 10^7).

    * real-time endpoint: ``hosting_instance`` around the clock, plus per request the forwarding function
      (512 MB, its measured duration) and the HTTP API;
    * in-Lambda, x86_64 and arm64: the function at the memory its record recommends, its measured duration scaled
      by the CPU share Lambda gives below 1,769 MB (a full vCPU there, proportionally less below;
      https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html), plus the HTTP API;
    * serverless inference (an ESTIMATE until measured on aws): the model's measured time at
      ``serverless_memory_mb``, ``image_kb`` in and ~1 KB out, plus the forwarding function and the HTTP API.

    ``break_even`` is where each line crosses the endpoint's (requests per hour), None when it never does.
    """
    from .lambda_package import FULL_VCPU_MB

    modes = serving_modes(run_or_modes) if hasattr(run_or_modes, "records") else dict(run_or_modes)
    api_usd = prices.HTTP_API_PER_MILLION_REQUESTS / 1e6
    flat: dict[str, float] = {}
    per_request: dict[str, float] = {}
    per_cold_start: dict[str, float] = {}  # the INIT phase, billed like the handler's time
    notes: dict[str, str] = {}
    endpoint = modes.get("endpoint")
    forwarding_ms = _duration_ms(endpoint) if endpoint else np.nan
    hourly = prices.HOSTING_PER_HOUR[hosting_instance]
    if endpoint is not None:
        label = f"endpoint {hosting_instance} + forwarding Lambda"
        flat[label] = hourly * prices.HOURS_PER_MONTH
        per_request[label] = lambda_request_usd(forwarding_ms, FORWARDING_MEMORY_MB) + api_usd
        per_cold_start[label] = _init_usd(endpoint, FORWARDING_MEMORY_MB, "x86_64")
        notes[label] = f"${hourly}/h x {prices.HOURS_PER_MONTH} h; function {forwarding_ms:.1f} ms at 512 MB"
    inside = modes.get("lambda")
    if inside is not None:
        memory = int(inside.config.get("lambda_memory_mb") or 1024)
        model_ms = _duration_ms(inside)
        at_memory = model_ms * max(1.0, FULL_VCPU_MB / memory)
        for arch in ("x86_64", "arm64"):
            label = f"model in Lambda, {arch}, {memory} MB"
            flat[label] = 0.0
            per_request[label] = lambda_request_usd(at_memory, memory, arch) + api_usd
            per_cold_start[label] = _init_usd(inside, memory, arch)
            notes[label] = f"{model_ms:.1f} ms on one core -> {at_memory:.1f} ms at {memory} MB"
        if endpoint is not None:
            label = f"serverless inference, {serverless_memory_mb} MB (estimate)"
            data_gb = (image_kb + 1) / 1024 / 1024
            flat[label] = 0.0
            per_request[label] = (np.ceil(model_ms) / 1000 * serverless_memory_mb / 1024 * prices.SERVERLESS_PER_GB_SECOND
                                  + data_gb * prices.SERVERLESS_PER_GB_DATA
                                  + lambda_request_usd(forwarding_ms, FORWARDING_MEMORY_MB) + api_usd)
            notes[label] = f"{model_ms:.1f} ms of model time at {serverless_memory_mb} MB + forwarding Lambda"
    # One instance serves at most vCPUs / (model time) requests; past that the endpoint needs another instance
    # (an optimistic bound: decoding and HTTP are not counted).
    model_ms = _duration_ms(inside) if inside is not None else forwarding_ms
    capacity = (prices.HOSTING_VCPUS.get(hosting_instance, 2) * 3600 / (model_ms / 1000)
                if np.isfinite(model_ms) and model_ms > 0 else np.inf)
    break_even: dict[str, float | None] = {}
    base = next((k for k in flat if flat[k] > 0), None)
    for label in per_request:
        if base is None or label == base:
            continue
        extra = per_request[label] - per_request[base]
        # with n instances the lines cross at n x flat / (extra x 730); that is a break-even only within what n
        # instances can serve, and if one instance cannot reach it, n cannot either (both sides scale with n)
        first = flat[base] / (extra * prices.HOURS_PER_MONTH) if extra > 0 else None
        break_even[label] = first if first is not None and first <= capacity else None
    top = max([max_rate] + [min(r * 3, 1e7) for r in break_even.values() if r])
    rates = np.logspace(0, np.log10(top), 240)
    instances = np.maximum(1, np.ceil(rates / capacity)) if np.isfinite(capacity) else np.ones_like(rates)
    cold = cold_fraction(rates)
    lines = {label: flat[label] * (instances if flat[label] else 1)
             + (per_request[label] + cold * per_cold_start.get(label, 0.0)) * rates * prices.HOURS_PER_MONTH
             for label in per_request}
    return {"rates": rates, "lines": lines, "flat_usd_per_month": flat, "per_request_usd": per_request,
            "per_cold_start_usd": per_cold_start,
            "break_even_per_hour": break_even, "baseline": base, "notes": notes, "instance_capacity_per_hour": capacity,
            "prices_date": prices.PRICES_DATE, "hosting_instance": hosting_instance}


def serving_cost_table(run_or_modes, **kwargs):
    """The comparison as a table: per request, per month at 1 / 100 / 10,000 requests an hour, break-even."""
    import pandas as pd

    costs = serving_costs(run_or_modes, **kwargs)
    rows = []
    for label, per in costs["per_request_usd"].items():
        flat = costs["flat_usd_per_month"][label]
        row = {"way to serve": label, "$ per 1M requests": round(per * 1e6, 2), "$ / month fixed": round(flat, 2)}
        for rate in (1, 100, 10_000):
            row[f"$ / month at {rate:,}/h"] = round(flat + per * rate * prices.HOURS_PER_MONTH, 2)
        be = costs["break_even_per_hour"].get(label)
        row["break-even vs endpoint (req/h)"] = (round(be) if be else "never" if label in costs["break_even_per_hour"]
                                                 else None)
        rows.append(row)
    return pd.DataFrame(rows).set_index("way to serve") if rows else pd.DataFrame()


def figure_serving_cost(run_or_modes, **kwargs):
    """Cost per month against traffic (log-log), one line per way to serve, break-even points marked."""
    import matplotlib.pyplot as plt

    costs = serving_costs(run_or_modes, **kwargs)
    fig, ax = plt.subplots(figsize=(8.5, 4.6))
    colours = ["#4C72B0", "#55A868", "#8172B2", "#C44E52", "#CCB974"]
    rates = costs["rates"]
    styles = ["-", "-", "--", "-.", ":"]
    for (label, values), colour, style in zip(costs["lines"].items(), colours, styles):
        ax.plot(rates, values, label=label, color=colour, linewidth=2, linestyle=style)
    base = costs["baseline"]
    for label, rate in costs["break_even_per_hour"].items():
        if rate and base:
            y = costs["flat_usd_per_month"][base] + costs["per_request_usd"][base] * rate * prices.HOURS_PER_MONTH
            ax.plot([rate], [y], "ko")
            ax.annotate(f"break-even\n{rate:,.0f} req/h", (rate, y), textcoords="offset points", xytext=(-10, 12),
                        ha="right", fontsize=8)
    capacity = costs["instance_capacity_per_hour"]
    if base and np.isfinite(capacity) and capacity <= rates[-1]:
        ax.axvline(capacity, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"one {costs['hosting_instance']} at most\n~{capacity:,.0f} req/h", (capacity, ax.get_ylim()[0]),
                    textcoords="offset points", xytext=(4, 8), fontsize=8, color="grey")
    if not costs["lines"]:
        ax.text(0.5, 0.5, "no mode-endpoint / mode-lambda records yet (notebook 06)", ha="center",
                transform=ax.transAxes)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("requests per hour (steady)")
    ax.set_ylabel("US$ per month")
    ax.set_title(f"What serving costs by traffic (list prices {costs['prices_date']}, us-east-1)")
    ax.grid(True, which="major", alpha=0.3)
    if costs["lines"]:
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig
