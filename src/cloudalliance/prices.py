"""A small price table for cost figures in records and benchmarks.

On-demand list prices in us-east-1, US dollars, as published on the AWS
pricing pages for SageMaker AI, Lambda and API Gateway (recorded on the date
below). Prices change and differ by region: check before you quote them, and
pass your own with ``cost(..., price_per_hour=...)``.
"""

from __future__ import annotations

PRICES_DATE = "2026-11-24"
PRICES_SOURCE = ("https://aws.amazon.com/sagemaker/pricing/ (Training, Real-Time Inference), "
                 "https://aws.amazon.com/lambda/pricing/, https://aws.amazon.com/api-gateway/pricing/")
REGION = "us-east-1"

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

LAMBDA_PER_GB_SECOND = 0.0000166667
LAMBDA_PER_MILLION_REQUESTS = 0.20
HTTP_API_PER_MILLION_REQUESTS = 1.00
S3_PUT_PER_THOUSAND = 0.005

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
