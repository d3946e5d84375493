"""The aws backend's preflight: in a few seconds and before anything is created, what a first run on a fresh
account trips over — credentials, the region, the images notebook 01 reads, the execution role (exists, trusts
SageMaker, may read AND write the bucket), the bucket (there or creatable, its region, its default encryption), the
instance quotas (spot ones with USE_SPOT), names already taken, the SAM CLI — and an ESTIMATE of the run's cost.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

from .defaults import ENDPOINT_NAME, REGION, STACK_NAME
from .aws import AwsError, CREDENTIALS_HELP, ROLE_HELP, RUN_TAG, SAM_DIR, boto_session, resolve_role
from .bench import prices


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
    where = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint") or REGION  # S3 names us-east-1 (our REGION) by no constraint
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


def _data_check(params: Mapping[str, Any]) -> Check:
    """Where notebook 01 finds the images: DATA_SOURCE, "synthetic" or a folder on this machine (relative: from
    where the command runs, as `course run` takes it). Checked before any notebook needs it."""
    source = str(params.get("DATA_SOURCE") or "synthetic")
    bucket, prefix = params.get("BUCKET") or "<bucket>", params.get("PREFIX") or "intel"
    how = ("`cloudalliance data fetch --dest data/intel` downloads them from Kaggle (with a Kaggle API token in "
           f"~/.kaggle/kaggle.json), or `aws s3 sync s3://{bucket}/{prefix} data/intel` copies them from an S3 prefix "
           "that holds them one object per image; then DATA_SOURCE: data/intel")
    if source == "synthetic":
        return Check("data", "warn", f"DATA_SOURCE is synthetic: the run proves the pipeline, not a model of real "
                                     f"photos. For the real images: {how}")
    folder = Path(source).expanduser().resolve()
    if folder.is_dir() and next(folder.rglob("*.jpg"), None) is not None:
        return Check("data", "ok", f"images in {folder}")
    return Check("data", "fail", f"DATA_SOURCE {folder} {'holds no .jpg' if folder.is_dir() else 'does not exist'}: "
                                 f"{how}")


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

    ``params``: the notebooks' parameters (REGION, DATA_SOURCE, BUCKET, PREFIX, ROLE_ARN, INSTANCE_TYPES or
    INSTANCE_TYPE, INSTANCE_COUNT, USE_SPOT, HOSTING_INSTANCE_TYPE, ENDPOINT_NAME, STACK_NAME, RUN_ID). ``checks``:
    any of "all", "data", "bucket", "role", "training", "endpoint", "api" (what a notebook needs). Read-only:
    describes, lists and simulates; never creates.
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
    if want("data"):
        rows.append(_data_check({**params, "BUCKET": bucket}))
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
        # spot jobs count against quotas of their own ("ml.m5.xlarge for spot training job usage"; Service Quotas,
        # https://docs.aws.amazon.com/general/latest/gr/sagemaker.html), often 0 on a new account
        usage = "spot training job usage" if str(params.get("USE_SPOT")).lower() == "true" else "training job usage"
        for instance in training_instances(params):
            needs[f"{instance} for {usage}"] = count
    endpoint_row = None
    if want("endpoint"):
        endpoint_row, live = _endpoint_check(session, params.get("ENDPOINT_NAME") or ENDPOINT_NAME,
                                             params.get("RUN_ID", ""))
        if (params.get("ENDPOINT_KIND") or "realtime") != "serverless":  # serverless endpoints use no instance
            hosting = params.get("HOSTING_INSTANCE_TYPE") or "ml.m5.large"
            # an update of a live endpoint runs the new instance beside the old one
            needs[f"{hosting} for endpoint usage"] = 2 if live == hosting else 1
    rows += _quota_checks(session, needs) if needs else []
    if endpoint_row is not None:
        rows.append(endpoint_row)
    if want("api"):
        rows.append(_stack_check(session, params.get("STACK_NAME") or STACK_NAME))
        sam = shutil.which("sam") or (str(SAM_DIR / "bin" / "sam") if (SAM_DIR / "bin" / "sam").is_file() else None)
        rows.append(Check("SAM CLI", "ok" if sam else "warn", sam or "`sam` not found: notebook 06 needs the API "
                          "deployed with it (`make sam` installs aws-sam-cli into .tools/sam, its own environment; "
                          "or AWS's installer); lambda/README.md"))
    return rows


def training_instances(params: Mapping[str, Any]) -> list[str]:
    found = params.get("INSTANCE_TYPES") or params.get("INSTANCE_TYPE") or "ml.m5.xlarge"
    return [found] if isinstance(found, str) else list(found)


def estimate(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run's ESTIMATED cost from :mod:`cloudalliance.bench.prices` (list prices; see its date and region)."""

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
