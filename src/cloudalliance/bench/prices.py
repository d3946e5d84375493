"""A small price table for cost figures in records and benchmarks.

On-demand list prices in us-east-1, US dollars, as published on the AWS
pricing pages for SageMaker AI, Lambda and API Gateway (recorded on the date
below). Prices change and differ by region: check before you quote them, and
pass your own with ``cost(..., price_per_hour=...)``.
"""

from __future__ import annotations

from ..defaults import REGION as DEFAULT_REGION

PRICES_DATE = "2026-11-24"
PRICES_SOURCE = ("https://aws.amazon.com/sagemaker/pricing/ (Training, Real-Time and Serverless Inference), "
                 "https://aws.amazon.com/lambda/pricing/, https://aws.amazon.com/api-gateway/pricing/")
REGION = DEFAULT_REGION  # the prices below are this region's

# SageMaker training instances, $/hour
TRAINING_PER_HOUR = {
    "ml.m5.large": 0.115,
    "ml.m5.xlarge": 0.23,
    "ml.m5.2xlarge": 0.461,
    "ml.m5.4xlarge": 0.922,
    "ml.c5.xlarge": 0.204,
    "ml.c5.2xlarge": 0.408,
    "ml.c5.4xlarge": 0.816,
    "ml.c5.9xlarge": 1.836,
    "ml.g4dn.xlarge": 0.736,
    "ml.g5.xlarge": 1.408,
    "ml.p3.2xlarge": 3.825,
}

# SageMaker real-time inference instances, $/hour
HOSTING_PER_HOUR = {
    "ml.t2.medium": 0.056,
    "ml.m5.large": 0.115,
    "ml.m5.xlarge": 0.23,
    "ml.c5.large": 0.102,
    "ml.c5.xlarge": 0.204,
    "ml.g4dn.xlarge": 0.736,
}

LAMBDA_PER_GB_SECOND = 0.0000166667  # x86_64
# Lambda's price per GB-second by architecture: arm64 (Graviton) is 20 % below x86_64
# (https://aws.amazon.com/lambda/pricing/, first 6 billion GB-seconds a month).
LAMBDA_PER_GB_SECOND_BY_ARCH = {"x86_64": 0.0000166667, "arm64": 0.0000133334}
LAMBDA_PER_MILLION_REQUESTS = 0.20
HTTP_API_PER_MILLION_REQUESTS = 1.00
# SageMaker Serverless Inference (https://aws.amazon.com/sagemaker/pricing/, "Serverless Inference"): compute by the
# millisecond at the endpoint's memory size (1,024-6,144 MB in 1 GB steps, $0.0000200 per second for each GB), plus
# data processed in and out; no charge between requests. Its payload is at most 4 MB
# (https://docs.aws.amazon.com/sagemaker/latest/dg/serverless-endpoints.html).
SERVERLESS_PER_GB_SECOND = 0.0000200
SERVERLESS_MEMORY_SIZES_MB = (1024, 2048, 3072, 4096, 5120, 6144)
SERVERLESS_PER_GB_DATA = 0.016
HOURS_PER_MONTH = 730  # AWS's pricing pages price a month as 730 hours

# Local instance profiles cost nothing to run here; for comparison each is set
# beside the SageMaker instance it most resembles.
LOCAL_EQUIVALENT = {"local-1cpu": "ml.m5.large", "local-2cpu": "ml.m5.large", "local-2proc": "ml.m5.large",
                    "local-cuda": "ml.g4dn.xlarge"}


def training_cost(instance: str, seconds: float, count: int = 1, price_per_hour: float | None = None) -> dict:
    """Cost of a training run: billable seconds x instances x price; local profiles cost 0 (with an equivalent)."""
    base = {"currency": "USD", "prices_date": PRICES_DATE, "region": REGION}
    if instance.startswith("local"):
        equivalent = LOCAL_EQUIVALENT.get(instance, "ml.m5.large")
        rate = TRAINING_PER_HOUR[equivalent]
        return {**base, "usd": 0.0, "price_per_hour": 0.0, "equivalent_instance": equivalent,
                "equivalent_usd": round(rate * seconds / 3600 * count, 6)}
    rate = price_per_hour if price_per_hour is not None else TRAINING_PER_HOUR.get(instance)
    if rate is None:
        return {**base, "usd": None, "price_per_hour": None,
                "note": f"no price for {instance} in the table; pass price_per_hour"}
    return {**base, "usd": round(rate * seconds / 3600 * count, 6), "price_per_hour": rate}


# GPUs per instance type (AWS's instance pages: https://aws.amazon.com/sagemaker/pricing/ lists vCPUs, memory and
# GPUs per type); a type not listed here is taken to have none. Used to choose one process per GPU (Torchrun).
GPUS_PER_INSTANCE = {
    "ml.g4dn.xlarge": 1, "ml.g4dn.2xlarge": 1, "ml.g4dn.4xlarge": 1, "ml.g4dn.8xlarge": 1, "ml.g4dn.12xlarge": 4,
    "ml.g4dn.16xlarge": 1, "ml.g5.xlarge": 1, "ml.g5.2xlarge": 1, "ml.g5.4xlarge": 1, "ml.g5.8xlarge": 1,
    "ml.g5.12xlarge": 4, "ml.g5.16xlarge": 1, "ml.g5.24xlarge": 4, "ml.g5.48xlarge": 8,
    "ml.p3.2xlarge": 1, "ml.p3.8xlarge": 4, "ml.p3.16xlarge": 8, "ml.p4d.24xlarge": 8, "ml.p5.48xlarge": 8,
}


def gpus_per_instance(instance_type: str) -> int:
    return GPUS_PER_INSTANCE.get(instance_type, 0)


# vCPUs of the hosting instance types above (https://aws.amazon.com/sagemaker/pricing/ lists them): with the model's
# measured time per image on one core, what one instance can serve at most.
HOSTING_VCPUS = {"ml.t2.medium": 2, "ml.m5.large": 2, "ml.m5.xlarge": 4, "ml.c5.large": 2, "ml.c5.xlarge": 4,
                 "ml.g4dn.xlarge": 4}


def hosting_cost(instance: str, hours: float, count: int = 1) -> float | None:
    rate = HOSTING_PER_HOUR.get(instance)
    return None if rate is None else round(rate * hours * count, 6)


def estimate_run(training: list[tuple[str, int]], training_minutes: float, hosting_instance: str,
                 endpoint_hours: float, requests: int, lambda_memory_mb: int = 1024,
                 lambda_ms_per_request: float = 300.0) -> list[dict]:
    """An ESTIMATE of a course run on AWS, one row per item: each training job (instances x minutes x list
    price), the endpoint (hours x price), Lambda and the HTTP API (requests). ``usd`` is None where the
    table has no price for the type. List prices of :data:`REGION` on :data:`PRICES_DATE`."""
    rows = []
    for instance, count in training:
        cost = training_cost(instance, training_minutes * 60, count)
        rows.append({"item": f"training {count} x {instance}, {training_minutes:g} min",
                     "usd": cost["usd"], "price_per_hour": cost["price_per_hour"]})
    rows.append({"item": f"endpoint {hosting_instance}, {endpoint_hours:g} h",
                 "usd": hosting_cost(hosting_instance, endpoint_hours),
                 "price_per_hour": HOSTING_PER_HOUR.get(hosting_instance)})
    gb_seconds = requests * lambda_memory_mb / 1024 * lambda_ms_per_request / 1000
    rows.append({"item": f"Lambda + HTTP API, {requests} requests",
                 "usd": round(gb_seconds * LAMBDA_PER_GB_SECOND
                              + requests / 1e6 * (LAMBDA_PER_MILLION_REQUESTS + HTTP_API_PER_MILLION_REQUESTS), 6),
                 "price_per_hour": None})
    return rows


def cost_per_1000_predictions(mean_latency_s: float, hosting_price_per_hour: float, lambda_memory_mb: int = 512) -> dict[str, float]:
    """What 1,000 sequential predictions cost on AWS: endpoint time + Lambda + API Gateway requests."""
    endpoint = hosting_price_per_hour / 3600.0 * mean_latency_s * 1000
    lam = (mean_latency_s * lambda_memory_mb / 1024.0 * LAMBDA_PER_GB_SECOND * 1000
           + LAMBDA_PER_MILLION_REQUESTS / 1000)
    gateway = HTTP_API_PER_MILLION_REQUESTS / 1000
    return {"endpoint_usd": endpoint, "lambda_usd": lam, "api_gateway_usd": gateway,
            "total_usd": endpoint + lam + gateway}
