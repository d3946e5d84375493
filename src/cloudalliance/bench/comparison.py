"""Comparing runs (several machines, or this course against the study it reproduces): runs packed as archives,
opened again, their differences, and the figures and tables side by side.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

from .. import machine
from ..records import load_records

import os as _os
from typing import Any, Mapping


from ..records import Record
from .charts import UPLOAD_RECORD, _latest
from ..errors import CloudallianceError


ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")


PACKED = ("records", "figures")  # what `records pack` carries: no data, models or checkpoints


class CompareError(CloudallianceError, ValueError):
    """Runs that cannot be compared (exit 2 on the CLI)."""


def study_reference() -> dict[str, Any]:
    """The original study's published reductions (src/cloudalliance/data_files/study.json)."""
    return json.loads((Path(__file__).resolve().parents[1] / "data_files" / "study.json").read_text(encoding="utf-8"))


def study_relative_times() -> dict[str, float]:
    """Execution time per machine as % of the study's baseline (PC = 100), from its reductions against it."""
    ref = study_reference()
    out = {ref["baseline"]: 100.0}
    for name in ref["machines"]:
        cut = ref["reductions_percent"].get(name)
        if cut and cut["vs"] == ref["baseline"]:
            out[name] = 100.0 - cut["percent"]
    return out


def pack_run(run_dir: str | _os.PathLike, out: str | _os.PathLike | None = None) -> Path:
    """``<run-id>.tar.gz`` of a run's records and figures (what `bench compare` needs; no data or models)."""
    run = Path(run_dir).resolve()
    if not (run / "records").is_dir():
        raise CompareError(f"{run_dir}: not a run folder (no records/ in it)")
    target = Path(out) if out else run.parent / f"{run.name}.tar.gz"
    if target.is_dir():
        target = target / f"{run.name}.tar.gz"
    if not target.name.endswith((".tar.gz", ".tgz")):
        raise CompareError(f"{target}: the archive's name must end in .tar.gz or .tgz")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as tar:
        for part in PACKED:
            if (run / part).is_dir():
                tar.add(run / part, arcname=f"{run.name}/{part}")
        for extra in sorted(run.glob("*.json")) + sorted(run.glob("*.md")) + sorted(run.glob("*.html")):
            tar.add(extra, arcname=f"{run.name}/{extra.name}")
    return target


def _unpack(archive: Path, dest: Path) -> None:
    """Extract refusing absolute paths, '..', links out of the tree and devices."""
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                parts = Path(name).parts
                if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise CompareError(f"{archive}: unsafe path in the archive: {name!r}")
            zf.extractall(dest)
        return
    try:
        with tarfile.open(archive, "r:*") as tar:
            # the 'data' filter refuses absolute names, '..', links pointing outside and special files
            # (https://docs.python.org/3/library/tarfile.html#tarfile.data_filter)
            tar.extractall(dest, filter="data")
    except tarfile.FilterError as exc:
        raise CompareError(f"{archive}: unsafe entry in the archive: {exc}") from exc
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise CompareError(f"{archive}: not a readable archive ({exc})") from exc


def _find_records_dir(root: Path) -> Path:
    if (root / "records").is_dir():
        return root / "records"
    if root.name == "records" or any(root.glob("*.json")) and not any(root.glob("*/records")):
        return root
    found = sorted(p for p in root.glob("*/records") if p.is_dir())
    if len(found) == 1:
        return found[0]
    raise CompareError(f"{root}: {'no' if not found else 'more than one'} run (records/ folder) in it")


@dataclasses.dataclass
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
        path = Path(source)
        if not path.exists():
            raise CompareError(f"{source}: no such run folder or archive")
        if path.is_file():
            if not path.name.endswith(ARCHIVE_SUFFIXES):
                raise CompareError(f"{source}: give a run folder or a .tar.gz/.tgz/.zip made by `records pack`")
            dest = Path(workdir) / f"{i}"
            dest.mkdir(parents=True, exist_ok=True)
            _unpack(path, dest)
            path = dest
        records_dir = _find_records_dir(path)
        records = load_records(records_dir)
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
        seen.setdefault(what, {}).setdefault(json.dumps(value, sort_keys=True), set()).add(run.run_id)

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
        base = machine.label(block, run.host())
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
                "contended": any(machine.contended(r.machine or block, r.load) for r in (up, rec)
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

    work = tempfile.mkdtemp(prefix="cloudalliance-compare-")
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
            folder = Path(out)
            folder.mkdir(parents=True, exist_ok=True)
            for name, fig in figures_compare(rows, baseline).items():
                fig.savefig(folder / f"{name}.png", dpi=110, bbox_inches="tight")
                plt.close(fig)
                saved.append(folder / f"{name}.png")
            table.to_csv(folder / "compare.csv")
        return {"rows": rows, "table": table, "study": study_table(), "differences": diffs, "saved": saved}
    finally:
        shutil.rmtree(work, ignore_errors=True)
