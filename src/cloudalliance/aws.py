"""The aws backend's account side: the region, the role and the bucket a run uses, and the tags that find what a
run created. Its preflight is :mod:`cloudalliance.aws_preflight`, its cleanup :mod:`cloudalliance.aws_cleanup`.

Every client comes from boto3 with no endpoint of its own, so botocore's ``AWS_ENDPOINT_URL`` /
``AWS_ENDPOINT_URL_<SERVICE>`` settings apply unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from .errors import CloudallianceError


RUN_TAG = "cloudalliance:run-id"


ENDPOINT_TAG = "cloudalliance:endpoint"


SAM_DIR = Path(__file__).resolve().parents[2] / ".tools" / "sam"  # `make sam` installs the SAM CLI here


# SageMaker notebook instances and Studio write this file (sagemaker-core
# sagemaker/core/helper/session_helper.py:317, Session.get_caller_identity_arn reads it)
NOTEBOOK_METADATA_FILE = "/opt/ml/metadata/resource-metadata.json"


CREDENTIALS_HELP = ("no AWS credentials found: run `aws configure` (or `aws configure sso` then `aws sso login`), "
                    "or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or run on an instance "
                    "with a role attached")


ROLE_HELP = ("set ROLE_ARN in params/aws.yaml to an IAM role that trusts sagemaker.amazonaws.com, has "
             "AmazonSageMakerFullAccess and may read and write the bucket (README, 'On AWS')")


class AwsError(CloudallianceError):
    """A setting or an account resource the aws backend cannot use, with what to do."""


def use_region(region: str | None) -> str | None:
    """Make ``region`` this process's default AWS region (``AWS_DEFAULT_REGION`` and ``AWS_REGION``).

    SDK v3 makes clients on boto3's default session where the course cannot pass its own:
    ``sagemaker/ai_registry/air_hub.py:36`` (``boto3.client("sagemaker")`` at import, which
    ``sagemaker.serve.model_builder`` reaches) and ``sagemaker/core/utils/logs.py:17-24`` (the
    ``CloudWatchLogsClient`` singleton on a plain ``Session()``, used by ``TrainingJob.wait(logs=True)``). With no
    default region configured that is ``NoRegionError`` -- after the training job has started and is billing --
    and with another default region the job's logs are looked up there and never found. REGION from the params
    therefore becomes the default before anything of the SDK is imported.
    """
    if region:
        os.environ["AWS_DEFAULT_REGION"] = region
        os.environ["AWS_REGION"] = region
    return region


def boto_session(region: str | None = None):
    import boto3

    use_region(region)
    return boto3.Session(region_name=region or None)


def tag_list(run_id: str, **extra: str) -> list[dict[str, str]]:
    """SageMaker-style tags ``[{"Key": ..., "Value": ...}]`` marking what a run created."""
    tags = [{"Key": RUN_TAG, "Value": run_id}]
    tags += [{"Key": k, "Value": v} for k, v in extra.items()]
    return tags


def default_bucket_name(session) -> str:
    """``sagemaker-<region>-<account>``: SageMaker's default bucket, the name AmazonSageMakerFullAccess may use.

    Same name as sagemaker-core's ``Session.generate_default_sagemaker_bucket_name``
    (sagemaker/core/helper/session_helper.py:821-831). That one pins STS's regional endpoint URL, which
    overrides ``AWS_ENDPOINT_URL``, so the account id is read here with a plain STS client.
    """
    if not session.region_name:
        raise AwsError("No AWS region: set REGION in params/aws.yaml or AWS_DEFAULT_REGION")
    account = session.client("sts").get_caller_identity()["Account"]
    return f"sagemaker-{session.region_name}-{account}"


def resolve_bucket(bucket: str, session) -> str:
    """``bucket``, or the account's SageMaker default bucket when empty.

    AmazonSageMakerFullAccess grants S3 only on buckets and objects with "sagemaker" in the name (or tagged
    for SageMaker): https://docs.aws.amazon.com/aws-managed-policy/latest/reference/AmazonSageMakerFullAccess.html
    -- the default bucket needs no extra policy; any other bucket needs one that grants the role read AND write
    (the job writes checkpoints and the model, the endpoint reads the model).
    """
    return bucket or default_bucket_name(session)


def on_sagemaker_notebook() -> bool:
    return Path(NOTEBOOK_METADATA_FILE).is_file()


def resolve_role(role: str, session) -> str:
    """``role`` (an ARN or a role name), or -- when empty -- the notebook's own execution role.

    On a SageMaker notebook instance or in Studio, SDK v3's ``get_execution_role`` (sagemaker-core
    sagemaker/core/helper/session_helper.py:2311) returns the role the notebook runs as. Elsewhere an empty
    ROLE_ARN is an error that says what to set: the caller's own identity is usually a user, which SageMaker
    cannot assume.
    """
    if role:
        if role.startswith("arn:"):
            return role
        try:
            return session.client("iam").get_role(RoleName=role)["Role"]["Arn"]
        except Exception as exc:  # noqa: BLE001 - any failure: say which role and why
            raise AwsError(f"ROLE_ARN {role!r} is not a role ARN and no role has that name ({exc}); {ROLE_HELP}") from exc
    if on_sagemaker_notebook():
        from sagemaker.core.helper.session_helper import Session, get_execution_role

        try:
            return get_execution_role(Session(boto_session=session))
        except ValueError as exc:
            raise AwsError(f"ROLE_ARN is empty and this notebook's role could not be found ({exc}); {ROLE_HELP}") from exc
    raise AwsError(f"ROLE_ARN is empty and this is not a SageMaker notebook; {ROLE_HELP}")
