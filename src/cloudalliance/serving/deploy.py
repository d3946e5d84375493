"""A SageMaker endpoint with SDK v3: the artifact uploaded to S3, the model, the endpoint configuration and the
endpoint (``deploy_sagemaker``), the ``sagemaker-runtime`` client that calls it (notebook 05 shows
``invoke_endpoint``), and its deletion.
"""

from __future__ import annotations

import os
import time
from typing import Any


from ..defaults import ENDPOINT_NAME, REGION
from .model_artifact import ServingError, sha256_of
from ..aws import ENDPOINT_TAG, tag_list, use_region
from ..bench import prices
from ..records import Record
from ..storage import S3Location


def runtime_client(endpoint_url: str | None = None, region: str | None = None):
    """boto3 ``sagemaker-runtime``; with ``endpoint_url`` it talks to the local endpoint."""
    import boto3
    from botocore.config import Config

    kwargs: dict[str, Any] = {"config": Config(retries={"max_attempts": 2, "mode": "standard"}, read_timeout=30)}
    if endpoint_url:
        kwargs.update(endpoint_url=endpoint_url, aws_access_key_id="local", aws_secret_access_key="local",
                      region_name=region or REGION)
    else:
        kwargs["region_name"] = region
    return boto3.client("sagemaker-runtime", **kwargs)


FRAMEWORK_VERSION = "2.6.0"  # the SageMaker PyTorch inference container


PY_VERSION = "py312"


def upload_artifact(s3_client, artifact: str | os.PathLike, s3_uri: str) -> str:
    """Put ``model.tar.gz`` at ``s3_uri``: that key when it ends in .tar.gz, else ``<prefix>/<digest>/model.tar.gz``.

    The digest (the first 16 hex digits of the file's SHA-256) gives every artifact a key of its own, so a second
    deploy never overwrites the object the live model points at. During an update, and after a rollback, the old
    fleet keeps serving, and an instance it replaces loads the ModelDataUrl again: under one shared key it would
    load the new artifact. The same artifact gets the same key, so a rerun uploads it to where it already is.
    """

    loc = S3Location.parse(s3_uri)
    key = loc.prefix if loc.prefix.endswith(".tar.gz") else loc.key(f"{sha256_of(artifact)[:16]}/model.tar.gz")
    s3_client.upload_file(str(artifact), loc.bucket, key)
    return f"s3://{loc.bucket}/{key}"


def deploy_sagemaker(artifact_s3_uri: str, role: str, instance_type: str = "ml.m5.large",
                     endpoint_name: str = ENDPOINT_NAME, boto_session=None, region: str | None = None,
                     wait: bool = True, run_id: str = "", instance_count: int = 1, kind: str = "realtime",
                     serverless_memory_mb: int = 2048, serverless_max_concurrency: int = 5):
    """A real-time (or serverless) endpoint serving the artifact; safe to run again: a rerun updates it in place.

    ``kind="serverless"``: SageMaker Serverless Inference, billed per millisecond of inference at
    ``serverless_memory_mb`` (1,024-6,144 in 1 GB steps) with at most ``serverless_max_concurrency`` requests at
    once (1-200); no instance type (https://docs.aws.amazon.com/sagemaker/latest/dg/serverless-endpoints.html,
    ProductionVariant ``ServerlessConfig``). A real-time endpoint cannot be updated into a serverless one ("Updating
    a real-time inference endpoint to an on-demand serverless endpoint ... is currently not supported",
    serverless-endpoints-update), so when the kind changes the endpoint is replaced: deleted, then created.

    SDK v3 ``ModelBuilder`` builds the model (PyTorch inference container, the artifact's own
    ``code/inference.py``) under a new unique name. The endpoint config gets that unique name too: ModelBuilder's
    ``deploy`` names the config after the endpoint (sagemaker-core sagemaker/core/helper/session_helper.py:1003-1022,
    ``endpoint_from_production_variants`` -> ``create_endpoint_config(**config_options)`` with ``name``), so a second
    deploy failed with "Cannot create already existing endpoint configuration"; and its ``update_endpoint=True``
    path passes ``create_endpoint_config`` arguments it does not take (sagemaker/serve/model_builder.py:4281-4300
    against session_helper.py:1134). So: model + config by name, then CreateEndpoint, or UpdateEndpoint when the
    endpoint exists; wait for InService; then delete the previous config and model. Every resource is tagged
    ``cloudalliance:run-id`` for ``cloudalliance aws cleanup``. Returns the sagemaker-core ``Endpoint``.
    """
    import uuid

    import boto3

    use_region(region or (boto_session.region_name if boto_session else None))  # before the SDK is imported
    from sagemaker.core import image_uris
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.resources import Endpoint
    from sagemaker.serve.model_builder import ModelBuilder

    boto_session = boto_session or boto3.Session(region_name=region)
    _check_deploy_inputs(boto_session, role, kind, serverless_memory_mb, serverless_max_concurrency)
    sm = boto_session.client("sagemaker")
    tags = tag_list(run_id or "unknown", **{ENDPOINT_TAG: endpoint_name})
    previous = _endpoint_to_update(sm, endpoint_name, kind)
    # names: at most 63 characters, [a-zA-Z0-9-]
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:4]
    unique = f"{endpoint_name[:63 - len(stamp) - 1]}-{stamp}"
    # serverless endpoints run on CPU: the CPU image whatever HOSTING_INSTANCE_TYPE says
    image_instance = instance_type if kind == "realtime" else "ml.m5.large"
    image = image_uris.retrieve("pytorch", boto_session.region_name, version=FRAMEWORK_VERSION, py_version=PY_VERSION,
                                instance_type=image_instance, image_scope="inference")
    builder = ModelBuilder(
        image_uri=image,
        s3_model_data_url=artifact_s3_uri,
        role_arn=role,
        instance_type=image_instance,
        sagemaker_session=Session(boto_session=boto_session),
        # TorchServe starts one worker per vCPU by default, each with its own model_fn; one ONNX Runtime thread each
        # keeps them from oversubscribing the cores (as the local endpoint does: threads = cores / workers)
        env_vars={"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
                  "INFERENCE_THREADS": "1"},
    )
    builder.build(model_name=unique, tags=[{"Key": t["Key"], "Value": t["Value"]} for t in tags])
    variant = ({"VariantName": "AllTraffic", "ModelName": unique,
                "ServerlessConfig": {"MemorySizeInMB": serverless_memory_mb, "MaxConcurrency": serverless_max_concurrency}}
               if kind == "serverless" else
               {"VariantName": "AllTraffic", "ModelName": unique, "InstanceType": instance_type,
                "InitialInstanceCount": instance_count, "InitialVariantWeight": 1.0})
    sm.create_endpoint_config(EndpointConfigName=unique, ProductionVariants=[variant], Tags=tags)
    if previous is None:
        sm.create_endpoint(EndpointName=endpoint_name, EndpointConfigName=unique, Tags=tags)
    else:
        # https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_UpdateEndpoint.html: the endpoint keeps
        # serving the old config until the new one is InService; the old config and model can then go.
        sm.update_endpoint(EndpointName=endpoint_name, EndpointConfigName=unique)
    if wait:
        _wait_in_service(sm, endpoint_name, unique, previous is not None, run_id)
        if previous is not None:
            _retire_previous(sm, previous, unique, tags, run_id)
    return Endpoint.get(endpoint_name=endpoint_name, session=boto_session, region=boto_session.region_name)


def _check_deploy_inputs(boto_session, role: str, kind: str, memory_mb: int, max_concurrency: int) -> None:

    if not boto_session.region_name:
        raise ServingError("No AWS region: set REGION in params/aws.yaml or AWS_DEFAULT_REGION")
    if not role:
        raise ServingError("Deploying needs ROLE_ARN: an IAM role SageMaker can assume that may read and write "
                           "the bucket (or leave it empty on a SageMaker notebook)")
    if kind not in ("realtime", "serverless"):
        raise ServingError(f"Unknown endpoint kind {kind!r}: realtime or serverless")
    if kind == "serverless" and (memory_mb not in prices.SERVERLESS_MEMORY_SIZES_MB or not 1 <= max_concurrency <= 200):
        raise ServingError(f"Serverless Inference takes a memory size of {prices.SERVERLESS_MEMORY_SIZES_MB} MB and "
                           f"a max concurrency of 1-200 (got {memory_mb} MB, {max_concurrency})")


def _endpoint_to_update(sm, endpoint_name: str, kind: str) -> dict | None:
    """The endpoint to update in place (its description), or None when it is to be created: it does not exist,
    it failed, or it is of the other kind (then it is deleted first)."""
    from botocore.exceptions import ClientError

    try:
        previous = sm.describe_endpoint(EndpointName=endpoint_name)
    except ClientError as exc:
        if "Could not find" not in str(exc) and "ValidationException" not in str(exc):
            raise
        return None
    status = previous["EndpointStatus"]
    if status in ("Creating", "Updating", "SystemUpdating", "Deleting", "RollingBack"):
        raise ServingError(f"Endpoint {endpoint_name} is {status}: wait for it, then run again")
    was_serverless = any("CurrentServerlessConfig" in v for v in previous.get("ProductionVariants", []))
    if status == "InService" and was_serverless != (kind == "serverless"):
        # not updatable across kinds: replaced like a failed endpoint, and its old config and model go
        sm.delete_endpoint(EndpointName=endpoint_name)
        wait_endpoint_deleted(sm, endpoint_name)
        _delete_config_and_models(sm, previous["EndpointConfigName"])
        return None
    if status in ("Failed", "OutOfService"):
        # Failed: "Endpoint could not be created, updated, or re-scaled"; OutOfService: "not available to take
        # incoming requests" (API_EndpointSummary, EndpointStatus): nothing to keep serving, so it is replaced --
        # deleted, then created afresh; its old config and model stay tagged for cleanup
        sm.delete_endpoint(EndpointName=endpoint_name)
        wait_endpoint_deleted(sm, endpoint_name)
        return None
    return previous


def _delete_config_and_models(sm, config_name: str) -> None:
    models = [v["ModelName"] for v in
              sm.describe_endpoint_config(EndpointConfigName=config_name).get("ProductionVariants", [])]
    sm.delete_endpoint_config(EndpointConfigName=config_name)
    for model in models:
        sm.delete_model(ModelName=model)


def _wait_in_service(sm, endpoint_name: str, unique: str, updating: bool, run_id: str) -> None:
    from botocore.exceptions import WaiterError

    try:
        sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint_name,
                                                   WaiterConfig={"Delay": 15, "MaxAttempts": 120})
    except WaiterError as exc:
        reason = (exc.last_response or {}).get("FailureReason", str(exc))
        raise ServingError(f"Endpoint {endpoint_name} did not come InService with {unique}: {reason}. "
                           + ("It still serves the previous model. " if updating else "")
                           + f"`cloudalliance aws cleanup --run {run_id or 'unknown'}` removes what this "
                           "deploy created; the endpoint's CloudWatch logs say why") from None


def _retire_previous(sm, previous: dict, unique: str, tags: list, run_id: str) -> None:
    """After an update: the old config and model go, once the endpoint runs the new config.

    InService is also where a failed blue/green update ends: SageMaker rolls back and the endpoint serves the old
    config again (the waiter only fails on "Failed", botocore's sagemaker waiters-2.json EndpointInService). Only an
    endpoint that now runs the new config may lose the old one: "You must not delete an EndpointConfig in use by an
    endpoint that is live" (https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_UpdateEndpoint.html).
    """
    endpoint_name = previous["EndpointName"]
    now = sm.describe_endpoint(EndpointName=endpoint_name)
    if now.get("EndpointConfigName") != unique:
        raise ServingError(f"Endpoint {endpoint_name} did not take the new model {unique}: it still serves "
                           f"{now.get('EndpointConfigName')} ({now.get('FailureReason') or 'the update was rolled back'}). "
                           "The previous model is kept; the endpoint's CloudWatch logs say why the new one failed. "
                           f"`cloudalliance aws cleanup --run {run_id or 'unknown'}` removes the new config and model")
    sm.add_tags(ResourceArn=previous["EndpointArn"], Tags=tags)  # cleanup of this run finds it
    _delete_config_and_models(sm, previous["EndpointConfigName"])


def delete_sagemaker_endpoint(endpoint_name: str, sagemaker_client) -> dict[str, list[str]]:
    """Delete the endpoint, its endpoint config and its models (what stops the hourly charge)."""
    from botocore.exceptions import ClientError

    deleted: dict[str, list[str]] = {"endpoint": [], "endpoint_config": [], "model": []}
    try:
        desc = sagemaker_client.describe_endpoint(EndpointName=endpoint_name)
    except ClientError as exc:
        if "Could not find" in str(exc) or "ValidationException" in str(exc):
            return deleted
        raise
    config_name = desc["EndpointConfigName"]
    config = sagemaker_client.describe_endpoint_config(EndpointConfigName=config_name)
    sagemaker_client.delete_endpoint(EndpointName=endpoint_name)
    deleted["endpoint"].append(endpoint_name)
    sagemaker_client.delete_endpoint_config(EndpointConfigName=config_name)
    deleted["endpoint_config"].append(config_name)
    for variant in config.get("ProductionVariants", []):
        sagemaker_client.delete_model(ModelName=variant["ModelName"])
        deleted["model"].append(variant["ModelName"])
    return deleted


def wait_endpoint_deleted(sm, endpoint_name: str, timeout_s: float = 600.0, poll_s: float = 10.0) -> None:
    """Poll DescribeEndpoint until the endpoint is gone. Not botocore's ``endpoint_deleted`` waiter: it fails on
    ``EndpointStatus == "Failed"`` (botocore/data/sagemaker/2017-07-24/waiters-2.json, EndpointDeleted), which is
    what a Failed endpoint still says for a moment after DeleteEndpoint."""
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status = sm.describe_endpoint(EndpointName=endpoint_name)["EndpointStatus"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ValidationException":
                return  # "Could not find endpoint"
            raise
        if time.monotonic() > deadline:
            raise ServingError(f"Endpoint {endpoint_name} is still {status} {timeout_s:.0f} s after it was deleted; "
                               "run again once it is gone")
        time.sleep(poll_s)


def deployment_record(name: str, backend: str, instance: str, timings: dict[str, float], sizes: dict[str, Any],
                      metrics: dict[str, Any], config: dict[str, Any]):

    rate = prices.HOSTING_PER_HOUR.get(instance, 0.0 if backend == "local" else None)
    cost = {"currency": "USD", "prices_date": prices.PRICES_DATE, "price_per_hour": rate,
            "equivalent_instance": "ml.m5.large" if backend == "local" else instance,
            "equivalent_price_per_hour": prices.HOSTING_PER_HOUR["ml.m5.large"] if backend == "local" else rate}
    return Record(stage="deployment", name=name, backend=backend, instance=instance, timings=timings, sizes=sizes,
                  metrics=metrics, cost=cost, config=config)
