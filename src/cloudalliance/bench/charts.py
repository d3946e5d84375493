"""The benchmark's figures and summary table across the course's records (notebook 07): training and upload
times per machine, API latency and load.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..records import Record


MODE_PREFIX = "mode-"


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
    return {k: (round(100.0 * (slowest - v) / slowest, 1) if slowest > 0 else 0.0) for k, v in values.items()}


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


UPLOAD_RECORD = "course-data"  # notebook 02's first upload of the course's data
