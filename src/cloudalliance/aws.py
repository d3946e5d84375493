"""The aws backend's account side: the region, role and bucket a run uses, a preflight, and cleanup.

``preflight`` checks, in a few seconds and before anything is created, what a
first run on a fresh account trips over: credentials, the region, the
execution role (exists, trusts SageMaker, may read AND write the bucket), the
bucket (there or creatable, its region, its default encryption), the instance
quotas, names already taken, the SAM CLI, and it ESTIMATES the run's cost.
``cleanup`` removes what the course created for one run (found by the
``cloudalliance:run-id`` tag), so the account goes back to zero cost.

Every client comes from boto3 with no endpoint of its own, so botocore's
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_<SERVICE>`` settings apply unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

from .defaults import REGION

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
STATUS_ORDER = ("ok", "warn", "fail", "skip")


class AwsError(RuntimeError):
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


# --------------------------------------------------------------------------- preflight


@dataclasses.dataclass
class Check:
    check: str
    status: str  # ok | warn | fail | skip
    detail: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def _one_try():
    """botocore Config for calls that may be missing or denied: one attempt, so the preflight stays fast
    (https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html, total_max_attempts)."""
    from botocore.config import Config

    return Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=10)


def _error_code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "") if hasattr(exc, "response") else ""


def _short(exc: Exception) -> str:
    code = _error_code(exc)
    return f"{code}: {exc}" if code and code not in str(exc) else str(exc)


def _credentials(session) -> tuple[Check, dict[str, Any] | None]:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        if session.get_credentials() is None:
            raise NoCredentialsError()
        ident = session.client("sts", region_name=session.region_name or REGION).get_caller_identity()
    except NoCredentialsError:
        return Check("credentials", "fail", CREDENTIALS_HELP), None
    except (ClientError, BotoCoreError) as exc:
        return Check("credentials", "fail", f"the credentials were refused ({_short(exc)}); {CREDENTIALS_HELP}"), None
    return Check("credentials", "ok", f"account {ident['Account']} as {ident['Arn']}"), ident


def _role_checks(session, role_arn: str, bucket: str) -> list[Check]:
    from botocore.exceptions import ClientError

    iam = session.client("iam")
    name = role_arn.rsplit("/", 1)[-1]
    try:
        role = iam.get_role(RoleName=name)["Role"]
    except ClientError as exc:
        if _error_code(exc) == "NoSuchEntity":
            return [Check("role", "fail", f"{role_arn} does not exist in this account; {ROLE_HELP}")]
        return [Check("role", "warn", f"could not check {role_arn} ({_short(exc)})")]
    rows = [Check("role", "ok", f"{role['Arn']} exists")]
    trust = role.get("AssumeRolePolicyDocument") or {}
    if isinstance(trust, str):
        import urllib.parse

        trust = json.loads(urllib.parse.unquote(trust))
    services: set[str] = set()
    for st in trust.get("Statement", []):
        if st.get("Effect") == "Allow" and "sts:AssumeRole" in json.dumps(st.get("Action")):
            svc = (st.get("Principal") or {}).get("Service", [])
            services.update([svc] if isinstance(svc, str) else svc)
    rows.append(Check("role trust", "ok" if "sagemaker.amazonaws.com" in services else "fail",
                      "trusts sagemaker.amazonaws.com" if "sagemaker.amazonaws.com" in services else
                      f"does not trust sagemaker.amazonaws.com (trusts: {', '.join(sorted(services)) or 'nobody'}): "
                      "add it to the role's trust policy"))
    # https://docs.aws.amazon.com/IAM/latest/APIReference/API_SimulatePrincipalPolicy.html. Each action is judged
    # against the resource it applies to: with several ResourceArns, every action is evaluated for every ARN and
    # the top-level EvalDecision is the most restrictive across them (botocore's iam service-2.json,
    # SimulatePrincipalPolicyRequest.ResourceArns and EvaluationResult), so GetObject on the *bucket* ARN -- which
    # no sensible policy grants -- would deny a role that may read every object. ListBucket: the bucket;
    # GetObject/PutObject: its objects.
    pairs = ((["s3:ListBucket"], [f"arn:aws:s3:::{bucket}"]),
             (["s3:GetObject", "s3:PutObject"], [f"arn:aws:s3:::{bucket}/*"]))
    try:
        iam = session.client("iam", config=_one_try())
        results = [r for actions, arns in pairs
                   for r in iam.simulate_principal_policy(PolicySourceArn=role["Arn"], ActionNames=actions,
                                                          ResourceArns=arns)["EvaluationResults"]]
    except ClientError as exc:  # AccessDenied: the caller may not simulate
        rows.append(Check("role on bucket", "warn", f"could not check read and write on s3://{bucket} "
                          f"({_error_code(exc) or 'error'}: iam:SimulatePrincipalPolicy); the role needs both"))
        return rows
    except Exception:  # noqa: BLE001 - no parsable answer (an emulator without the API)
        rows.append(Check("role on bucket", "warn", f"could not check read and write on s3://{bucket} "
                          "(iam:SimulatePrincipalPolicy gave no answer); the role needs both"))
        return rows
    denied = sorted({r["EvalActionName"] for r in results if r.get("EvalDecision") != "allowed"})
    rows.append(Check("role on bucket", "fail" if denied else "ok",
                      f"may not {', '.join(denied)} on s3://{bucket}: grant the role read and write on the bucket"
                      if denied else f"may read and write s3://{bucket}"))
    return rows


def _bucket_checks(session, bucket: str, region: str) -> list[Check]:
    from botocore.exceptions import ClientError

    s3 = session.client("s3")
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = _error_code(exc)
        if code in ("404", "NoSuchBucket", "NotFound"):
            return [Check("bucket", "ok", f"s3://{bucket} does not exist yet; notebook 02 creates it in {region}")]
        if code in ("403", "AccessDenied"):
            return [Check("bucket", "fail", f"s3://{bucket} exists but these credentials may not use it "
                          "(another account's name?): choose another BUCKET or leave it empty for "
                          "sagemaker-<region>-<account>")]
        return [Check("bucket", "warn", f"could not check s3://{bucket} ({_short(exc)})")]
    where = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint") or "us-east-1"  # S3 names us-east-1 by no constraint
    rows = [Check("bucket", "ok" if where == region else "warn",
                  f"s3://{bucket} exists in {where}" + ("" if where == region else
                                                          f", not {region}: jobs pay cross-region transfer"))]
    try:
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        algo = rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"]
    except ClientError as exc:
        if _error_code(exc) == "ServerSideEncryptionConfigurationNotFoundError":
            algo = "none"
        else:
            return rows + [Check("bucket encryption", "warn", f"could not read it ({_short(exc)})")]
    if algo.startswith("aws:kms"):
        # https://docs.aws.amazon.com/AmazonS3/latest/API/API_Object.html (ETag): objects encrypted with SSE-C or
        # SSE-KMS have ETags that are not an MD5 digest of their data
        rows.append(Check("bucket encryption", "warn",
                          f"{algo}: object ETags are not MD5s of the content, so an upload cannot be verified by "
                          "ETag; resume and verification compare the MD5 each upload keeps in x-amz-meta-md5 "
                          "instead. The role also needs kms:Decrypt and kms:GenerateDataKey on the key"))
    else:
        rows.append(Check("bucket encryption", "ok", f"{algo} (ETags of single-part uploads are MD5s)"))
    return rows


def _quota_values(session) -> dict[str, tuple[float, str]]:
    """Quota name -> (value, source) for service code "sagemaker": AWS's defaults, with the account's applied values
    on top. ListServiceQuotas leaves out a quota whose applied value is not available
    (https://docs.aws.amazon.com/servicequotas/2019-06-24/apireference/API_ListServiceQuotas.html), so the
    applied list alone can miss the very instance types a run needs."""
    sq = session.client("service-quotas", config=_one_try())
    values: dict[str, tuple[float, str]] = {}
    for method, source in (("list_aws_default_service_quotas", "AWS default"), ("list_service_quotas", "applied")):
        try:
            for page in sq.get_paginator(method).paginate(ServiceCode="sagemaker"):
                for q in page.get("Quotas", []):
                    values[q["QuotaName"]] = (q.get("Value", 0.0), source)
        except Exception:  # noqa: BLE001 - AccessDenied or an API the emulator lacks: the other list may do
            continue
    return values


def _quota_checks(session, needs: Mapping[str, int]) -> list[Check]:
    """``needs``: quota name (e.g. "ml.m5.xlarge for training job usage") -> instances the run uses at once."""
    values = _quota_values(session)
    rows = []
    for name, need in needs.items():
        if name not in values:
            why = "not among the SageMaker quotas listed" if values else "could not read it (Service Quotas)"
            rows.append(Check(f"quota {name}", "warn", f"{why}; a new account often has 0: check the console "
                              f"before the run (need {need})"))
            continue
        have, source = values[name]
        note = "" if source == "applied" else " (AWS default; your account's value may differ)"
        rows.append(Check(f"quota {name}", "ok" if have >= need else "fail",
                          f"{have:g} available, {need} needed{note}" + ("" if have >= need else
                          ": request an increase in the Service Quotas console (service SageMaker)")))
    return rows


def _endpoint_check(session, endpoint: str, run_id: str) -> tuple[Check, str]:
    """The endpoint-name row, and the instance type of the course's endpoint of that name when it is live: an
    update then runs a second fleet beside the first until it is InService ("UpdateEndpoint ... deploys the
    EndpointConfig ... to a new fleet of instances ... then deletes the old instances",
    https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_UpdateEndpoint.html)."""
    from botocore.exceptions import ClientError

    sm = session.client("sagemaker")
    try:
        desc = sm.describe_endpoint(EndpointName=endpoint)
    except ClientError as exc:
        # DescribeEndpoint says "Could not find endpoint" as a ValidationException; anything else (AccessDenied,
        # throttling) tells nothing about the name
        if _error_code(exc) == "ValidationException" and "could not find" in str(exc).lower():
            return Check("endpoint name", "ok", f"{endpoint} is free"), ""
        return Check("endpoint name", "warn", f"could not check {endpoint} ({_short(exc)})"), ""
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=desc["EndpointArn"]).get("Tags", [])}
    if RUN_TAG not in tags:
        return Check("endpoint name", "fail", f"{endpoint} exists and was not created by the course: "
                     "choose another ENDPOINT_NAME"), ""
    live = ""
    if desc.get("EndpointStatus") == "InService":
        try:
            config = sm.describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])
            live = next((v.get("InstanceType") or "" for v in config.get("ProductionVariants", [])), "")
        except ClientError:
            live = ""
    return Check("endpoint name", "ok", f"{endpoint} exists (run {tags[RUN_TAG]}, {desc['EndpointStatus']}): "
                 "notebook 05 updates it in place" + (f", with a second {live} beside the live one until the new "
                                                      "one is InService" if live else "")), live


def _stack_check(session, stack: str) -> Check:
    from botocore.exceptions import ClientError

    try:
        found = session.client("cloudformation").describe_stacks(StackName=stack)["Stacks"][0]
    except ClientError as exc:
        # a missing stack is a ValidationError "Stack with id X does not exist"; AccessDenied or throttling says
        # nothing about the name
        if _error_code(exc) == "ValidationError" and "does not exist" in str(exc):
            return Check("stack name", "ok", f"{stack} is free")
        return Check("stack name", "warn", f"could not check {stack} ({_short(exc)})")
    tags = {t["Key"]: t["Value"] for t in found.get("Tags", [])}
    if RUN_TAG in tags:
        return Check("stack name", "ok", f"{stack} exists ({found['StackStatus']}): `sam deploy` updates it")
    return Check("stack name", "warn", f"{stack} exists ({found['StackStatus']}) without the {RUN_TAG} tag: "
                 "`sam deploy` would change it; choose another STACK_NAME unless it is yours")


def preflight(params: Mapping[str, Any], checks: Iterable[str] = ("all",), session=None) -> list[Check]:
    """Check an account for a course run before anything is created; rows of :class:`Check`.

    ``params``: the notebooks' parameters (REGION, BUCKET, ROLE_ARN, INSTANCE_TYPES or INSTANCE_TYPE,
    INSTANCE_COUNT, HOSTING_INSTANCE_TYPE, ENDPOINT_NAME, STACK_NAME, RUN_ID). ``checks``: any of "all",
    "bucket", "role", "training", "endpoint", "api" (what a notebook needs). Read-only: describes, lists and
    simulates; never creates.
    """
    checks = set(checks)
    want = (lambda k: "all" in checks or k in checks)
    session = session or boto_session(params.get("REGION"))
    rows: list[Check] = []
    cred, ident = _credentials(session)
    rows.append(cred)
    region = session.region_name
    rows.append(Check("region", "ok" if region else "fail",
                      region or "no region: set REGION in params/aws.yaml or AWS_DEFAULT_REGION"))
    if ident is None or not region:
        return rows
    bucket = params.get("BUCKET") or f"sagemaker-{region}-{ident['Account']}"
    rows += _bucket_checks(session, bucket, region)
    if want("role") or want("training") or want("endpoint"):
        try:
            role = resolve_role(params.get("ROLE_ARN") or "", session)
        except AwsError as exc:
            rows.append(Check("role", "fail", str(exc)))
        else:
            rows += _role_checks(session, role, bucket)
    needs: dict[str, int] = {}
    if want("training"):
        count = int(params.get("INSTANCE_COUNT") or 1)
        for instance in training_instances(params):
            needs[f"{instance} for training job usage"] = count
    endpoint_row = None
    if want("endpoint"):
        endpoint_row, live = _endpoint_check(session, params.get("ENDPOINT_NAME") or "cloudalliance",
                                             params.get("RUN_ID", ""))
        if (params.get("ENDPOINT_KIND") or "realtime") != "serverless":  # serverless endpoints use no instance
            hosting = params.get("HOSTING_INSTANCE_TYPE") or "ml.m5.large"
            # an update of a live endpoint runs the new instance beside the old one
            needs[f"{hosting} for endpoint usage"] = 2 if live == hosting else 1
    rows += _quota_checks(session, needs) if needs else []
    if endpoint_row is not None:
        rows.append(endpoint_row)
    if want("api"):
        rows.append(_stack_check(session, params.get("STACK_NAME") or "cloudalliance"))
        sam = shutil.which("sam") or (str(SAM_DIR / "bin" / "sam") if (SAM_DIR / "bin" / "sam").is_file() else None)
        rows.append(Check("SAM CLI", "ok" if sam else "warn", sam or "`sam` not found: notebook 06 needs the API "
                          "deployed with it (`make sam` installs aws-sam-cli into .tools/sam, its own environment; "
                          "or AWS's installer); lambda/README.md"))
    return rows


def training_instances(params: Mapping[str, Any]) -> list[str]:
    found = params.get("INSTANCE_TYPES") or params.get("INSTANCE_TYPE") or "ml.m5.xlarge"
    return [found] if isinstance(found, str) else list(found)


def estimate(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run's ESTIMATED cost from :mod:`cloudalliance.prices` (list prices; see its date and region)."""
    from .bench import prices

    count = int(params.get("INSTANCE_COUNT") or 1)
    return prices.estimate_run([(i, count) for i in training_instances(params)],
                               float(params.get("TRAINING_MINUTES") or 30),
                               params.get("HOSTING_INSTANCE_TYPE") or "ml.m5.large",
                               float(params.get("ENDPOINT_HOURS") or 2), int(params.get("EXPECTED_REQUESTS") or 1000))


def passed(rows: Iterable[Check]) -> bool:
    return all(r.status != "fail" for r in rows)


def format_table(rows: Iterable[Check], cost: list[dict[str, Any]] | None = None) -> str:
    rows = list(rows)
    width = max([len(r.check) for r in rows] + [5])
    lines = [f"{'check':<{width}}  status  detail", f"{'-' * width}  ------  ------"]
    lines += [f"{r.check:<{width}}  {r.status:<6}  {r.detail}" for r in rows]
    if cost is not None:
        from .bench import prices

        lines += ["", f"ESTIMATED COST (list prices, {prices.REGION}, {prices.PRICES_DATE}; check before you rely on it)"]
        total = 0.0
        for c in cost:
            usd = c["usd"]
            total += usd or 0.0
            lines.append(f"  {c['item']:<52} " + (f"${usd:>9.2f}" if usd is not None else "  no price"))
        lines.append(f"  {'total':<52} ${total:>9.2f}")
    return "\n".join(lines)


def require(params: Mapping[str, Any], checks: Iterable[str], session=None) -> list[Check]:
    """:func:`preflight` for a notebook's first cell: print the table, raise :class:`AwsError` on a failure."""
    rows = preflight(params, checks, session=session)
    print(format_table(rows))
    if not passed(rows):
        failed = "; ".join(f"{r.check}: {r.detail}" for r in rows if r.status == "fail")
        raise AwsError(f"preflight failed -- {failed}")
    return rows


# --------------------------------------------------------------------------- cleanup


def _tagged(sm, arn: str, run_id: str) -> bool:
    tags = sm.list_tags(ResourceArn=arn).get("Tags", [])
    return any(t["Key"] == RUN_TAG and t["Value"] == run_id for t in tags)


def _paged(client, method: str, key: str, **kwargs) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    token = None
    while True:
        page = getattr(client, method)(**kwargs, **({"NextToken": token} if token else {}))
        out += page.get(key, [])
        token = page.get("NextToken")
        if not token:
            return out


def cleanup(run_id: str, session=None, region: str | None = None, bucket: str = "", prefixes: Iterable[str] = (),
            delete_data: bool = False, wait: bool = True) -> dict[str, list[str]]:
    """Delete what the course created for ``run_id``: running training jobs (stopped), endpoints, endpoint configs,
    models (tagged ``cloudalliance:run-id``), the SAM stack (deployed with that tag), and with ``delete_data`` the
    run's objects under ``s3://bucket/<prefix>`` for each prefix. Returns what was removed, by kind, with what could
    not be (``not_removed``); running it again removes nothing.

    Each step stands alone: a role that may not list training jobs, or one delete that is refused, does not keep
    the steps after it from removing what bills (endpoints by the hour, the stack, the data)."""
    from botocore.exceptions import BotoCoreError, ClientError

    if not run_id:
        raise AwsError("cleanup needs the run id (--run), the one the course printed and tagged resources with")
    session = session or boto_session(region)
    if session.get_credentials() is None:
        raise AwsError(CREDENTIALS_HELP)
    if not session.region_name:
        raise AwsError("No AWS region: pass --region or set AWS_DEFAULT_REGION")
    if delete_data and not bucket:
        raise AwsError("--delete-data needs the bucket (--bucket or BUCKET in --params)")
    sm, cfn = session.client("sagemaker"), session.client("cloudformation")
    removed: dict[str, list[str]] = {"training_job": [], "endpoint": [], "endpoint_config": [], "model": [],
                                     "stack": [], "s3": []}
    others: list[str] = []
    not_removed: list[str] = []
    steps = [("training jobs", lambda: _stop_training_jobs(sm, run_id, removed, not_removed)),
             ("endpoints", lambda: _delete_endpoints(sm, run_id, removed, others, not_removed)),
             ("endpoint configs", lambda: _delete_tagged(sm, run_id, "endpoint_config", removed, not_removed)),
             ("models", lambda: _delete_tagged(sm, run_id, "model", removed, not_removed)),
             ("stacks", lambda: _delete_stacks(cfn, run_id, removed))]
    if delete_data:
        steps.append(("S3 objects", lambda: _delete_objects(session.client("s3"), bucket, prefixes, removed,
                                                             not_removed)))
    for what, step in steps:
        try:
            step()
        except (ClientError, BotoCoreError) as exc:
            not_removed.append(f"{what}: could not list or delete them ({_short(exc)}); check the console")
    if others:
        removed["other_runs_endpoints_still_billing"] = others
    if not_removed:
        removed["not_removed"] = not_removed
    if wait and removed["stack"]:
        try:
            for name in removed["stack"]:
                cfn.get_waiter("stack_delete_complete").wait(StackName=name, WaiterConfig={"Delay": 5, "MaxAttempts": 120})
        except Exception:  # noqa: BLE001 - reported by the next cleanup or the console; the delete was requested
            pass
    return removed


def stop_training_jobs(run_id: str, session=None, region: str | None = None) -> list[str]:
    """Stop the run's InProgress training jobs (tagged with its id) and say what happened to each: an interrupted
    ``course run`` calls it on the way out, since the notebook's own kernel is stopped before it could."""
    session = session or boto_session(region)
    removed: dict[str, list[str]] = {"training_job": []}
    not_removed: list[str] = []
    _stop_training_jobs(session.client("sagemaker"), run_id, removed, not_removed)
    return [f"training job {name}" for name in removed["training_job"]] + not_removed


def _stop_training_jobs(sm, run_id: str, removed: dict, not_removed: list) -> None:
    """A job whose notebook died mid-wait bills until MaxRuntimeInSeconds: stop the run's running ones."""
    from botocore.exceptions import ClientError

    try:
        jobs = _paged(sm, "list_training_jobs", "TrainingJobSummaries", StatusEquals="InProgress")
    except ClientError as exc:
        not_removed.append(f"training jobs: could not list them ({_short(exc)}); check the console for running ones")
        return
    for job in jobs:
        if _tagged(sm, job["TrainingJobArn"], run_id):
            try:
                sm.stop_training_job(TrainingJobName=job["TrainingJobName"])
                removed["training_job"].append(f"{job['TrainingJobName']} (stopped)")
            except ClientError as exc:  # ValidationException: it ended between the list and the stop
                if _error_code(exc) != "ValidationException":
                    not_removed.append(f"training job {job['TrainingJobName']}: not stopped ({_short(exc)})")


def _delete_endpoints(sm, run_id: str, removed: dict, others: list, not_removed: list) -> None:
    from botocore.exceptions import ClientError

    for ep in _paged(sm, "list_endpoints", "Endpoints"):
        tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=ep["EndpointArn"]).get("Tags", [])}
        if tags.get(RUN_TAG) == run_id:
            try:
                sm.delete_endpoint(EndpointName=ep["EndpointName"])
                removed["endpoint"].append(ep["EndpointName"])
            except ClientError as exc:
                not_removed.append(f"endpoint {ep['EndpointName']}: not deleted ({_short(exc)}); it bills by the hour")
        elif RUN_TAG in tags and ENDPOINT_TAG in tags:
            # a later run updated this run's endpoint in place and re-tagged it: it bills on under that run's id
            others.append(f"{ep['EndpointName']} (run {tags[RUN_TAG]}: cloudalliance aws cleanup --run {tags[RUN_TAG]})")


def _delete_tagged(sm, run_id: str, kind: str, removed: dict, not_removed: list) -> None:
    """The run's endpoint configs or models (``kind``: endpoint_config | model)."""
    from botocore.exceptions import ClientError

    title = "".join(part.title() for part in kind.split("_"))  # EndpointConfig, Model
    for item in _paged(sm, f"list_{kind}s", f"{title}s"):
        if _tagged(sm, item[f"{title}Arn"], run_id):
            try:
                getattr(sm, f"delete_{kind}")(**{f"{title}Name": item[f"{title}Name"]})
                removed[kind].append(item[f"{title}Name"])
            except ClientError as exc:
                not_removed.append(f"{kind.replace('_', ' ')} {item[f'{title}Name']}: not deleted ({_short(exc)})")


def _delete_stacks(cfn, run_id: str, removed: dict) -> None:
    for stack in _paged(cfn, "describe_stacks", "Stacks"):
        tags = {t["Key"]: t["Value"] for t in stack.get("Tags", [])}
        if tags.get(RUN_TAG) == run_id and stack.get("StackStatus") != "DELETE_COMPLETE":
            cfn.delete_stack(StackName=stack["StackName"])
            removed["stack"].append(stack["StackName"])


def _delete_objects(s3, bucket: str, prefixes: Iterable[str], removed: dict, not_removed: list) -> None:
    for prefix in prefixes:
        prefix = prefix.strip("/") + "/"
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            failed = []
            for i in range(0, len(keys), 1000):  # DeleteObjects takes up to 1000 keys
                reply = s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[i:i + 1000], "Quiet": True})
                # HTTP 200 with the keys it could not delete in Errors (e.g. AccessDenied): not removed
                failed += reply.get("Errors", [])
            if len(keys) > len(failed):
                removed["s3"].append(f"s3://{bucket}/{prefix} ({len(keys) - len(failed)} objects)")
            if failed:
                codes = sorted({e.get("Code", "?") for e in failed})
                not_removed.append(f"s3://{bucket}/{prefix}: {len(failed)} objects ({', '.join(codes)}), "
                                   f"e.g. {failed[0].get('Key')}")


def data_prefixes(prefix: str, run_id: str) -> list[str]:
    """What a run wrote to S3: the data set (and the tools' comparison copies), the model, the checkpoints."""
    return [prefix, f"{prefix}-compare", f"models/{run_id}", f"checkpoints/{run_id}"]


def format_removed(removed: Mapping[str, list[str]]) -> str:
    others = removed.get("other_runs_endpoints_still_billing", [])
    lines = [f"removed {kind.replace('_', ' ')}: {name}" for kind, names in removed.items() for name in names
             if kind not in ("other_runs_endpoints_still_billing", "not_removed")]
    text = "\n".join(lines) or "nothing to remove"
    if removed.get("not_removed"):
        text += "\nNOT removed (each says why; finish it in the console or with the permission named):\n" + "\n".join(
            f"  {o}" for o in removed["not_removed"])
    if others:
        text += "\nstill running (the course's, another run's; it bills by the hour):\n" + "\n".join(
            f"  endpoint {o}" for o in others)
    return text
