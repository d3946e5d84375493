"""One boto3 S3 client factory for both backends, errors explained, buckets, listings.

local: the embedded server (:mod:`.server`), dummy keys, path-style addressing.
aws: Amazon S3 with the usual credential chain.
"""

from __future__ import annotations

from typing import Any

from .errors import PERMANENT_ERRORS, StorageError, error_code
from .location import S3Location
from .server import ensure_local_s3, local_client, local_s3_capacity_problem
from ..defaults import REGION


def create_s3_client(
    backend: str = "local",
    endpoint_url: str | None = None,
    region: str | None = None,
    max_pool_connections: int = 32,
    retries: int = 5,
    **kwargs: Any,
):
    """One boto3 S3 client factory for both backends.

    local: the embedded server's endpoint (started if needed when no
    ``endpoint_url`` is given), dummy keys, path-style addressing.
    aws: the default credential chain and ``region`` (or the configured one).
    """
    import boto3
    from botocore.config import Config

    config = Config(
        max_pool_connections=max_pool_connections,
        retries={"max_attempts": retries, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        s3={"addressing_style": "path"} if backend == "local" else {},
    )
    if backend == "local":
        if endpoint_url is None:
            endpoint_url = ensure_local_s3().endpoint_url
        return local_client(endpoint_url, config=config, region=region, **kwargs)
    if backend == "aws":
        return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config, **kwargs)
    raise ValueError(f"Unknown backend {backend!r}; choose one of: local, aws")


def explain(exc: BaseException, where: str = "") -> StorageError:
    """Turn a botocore error into a :class:`StorageError` that says what to do."""
    code = error_code(exc)
    hint = PERMANENT_ERRORS.get(code)
    text = f"{where}: " if where else ""
    if hint:
        return StorageError(f"{text}{code}: {hint}")
    if code in ("InternalError", "ServiceUnavailable", "SlowDown", "503", "500"):
        problem = local_s3_capacity_problem()
        if problem:
            return StorageError(f"{text}{code}: {problem}; uploads resume")
        return StorageError(f"{text}{code}: the S3 server kept failing after retries; check it (local backend: "
                            "`cloudalliance s3 status` and its log), then run again: uploads resume")
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return StorageError(f"{text}no AWS credentials: run `aws configure` or set AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE); `cloudalliance aws check` says what else is missing")
    if name in ("EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError"):
        return StorageError(
            f"{text}cannot reach the S3 endpoint ({exc}); is the server running? "
            "For the local backend: `cloudalliance s3 start`"
        )
    return StorageError(f"{text}{name}: {exc}")


def ensure_bucket(client, bucket: str) -> bool:
    """Create ``bucket`` unless it exists; True when it was created."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.head_bucket(Bucket=bucket)
        return False
    except ClientError as exc:
        if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise explain(exc, f"s3://{bucket}") from exc
    except BotoCoreError as exc:  # no credentials, no endpoint: nothing to retry
        raise explain(exc, f"s3://{bucket}") from exc
    region = client.meta.region_name
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region and region != REGION:
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**kwargs)
    except ClientError as exc:
        if error_code(exc) in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            return False
        raise explain(exc, f"s3://{bucket}") from exc
    return True


def list_objects(client, location: S3Location) -> dict[str, tuple[int, str]]:
    """``{key: (size, etag)}`` under the location's prefix."""
    from botocore.exceptions import BotoCoreError, ClientError

    found: dict[str, tuple[int, str]] = {}
    prefix = f"{location.prefix}/" if location.prefix else ""
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                found[obj["Key"]] = (int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))
    except (ClientError, BotoCoreError) as exc:
        raise explain(exc, location.uri) from exc
    return found
