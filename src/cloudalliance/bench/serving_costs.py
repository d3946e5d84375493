"""What serving costs by traffic: the endpoint's hours against the Lambda function's requests and duration, at
AWS list prices (:mod:`cloudalliance.bench.prices`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import prices
from ..records import Record
from .charts import _latest
from .charts import MODE_PREFIX
from ..defaults import FUNCTION_MEMORY_MB, LAMBDA_MB_PER_VCPU


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
        per_request[label] = lambda_request_usd(forwarding_ms, FUNCTION_MEMORY_MB) + api_usd
        per_cold_start[label] = _init_usd(endpoint, FUNCTION_MEMORY_MB, "x86_64")
        notes[label] = f"${hourly}/h x {prices.HOURS_PER_MONTH} h; function {forwarding_ms:.1f} ms at 512 MB"
    inside = modes.get("lambda")
    if inside is not None:
        memory = int(inside.config.get("lambda_memory_mb") or 1024)
        model_ms = _duration_ms(inside)
        at_memory = model_ms * max(1.0, LAMBDA_MB_PER_VCPU / memory)
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
                                  + lambda_request_usd(forwarding_ms, FUNCTION_MEMORY_MB) + api_usd)
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
        # where the endpoint becomes the cheaper way: a rate, "never" (Lambda stays cheaper), or a dash (the endpoint)
        crosses = label in costs["break_even_per_hour"]
        row["endpoint cheaper above (req/h)"] = f"{round(be):,}" if be else "never" if crosses else "–"
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
        ax.axvline(capacity, color="grey", linestyle=":", linewidth=1,
                   label=f"one {costs['hosting_instance']}'s capacity (the endpoint adds instances past it)")
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
