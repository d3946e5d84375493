"""The aws backend's cleanup: what the course created for one run (found by the ``cloudalliance:run-id`` tag)
removed, so the account goes back to zero cost. Each step is isolated: one that fails is reported as NOT
removed and the others go on.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from .aws import AwsError, CREDENTIALS_HELP, ENDPOINT_TAG, RUN_TAG, boto_session
from .aws_preflight import _error_code, _short
from .runs import RunContext


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
             ("stacks", lambda: _delete_stacks(cfn, run_id, removed, not_removed))]
    if delete_data:
        steps.append(("S3 objects", lambda: _delete_objects(session.client("s3"), bucket, prefixes, removed,
                                                             not_removed)))
    for what, step in steps:
        try:
            step()
        except (ClientError, BotoCoreError) as exc:
            not_removed.append(f"{what}: could not list or delete them ({_short(exc)}); check the console")
    for name in list(removed["stack"]) if wait else []:
        try:
            cfn.get_waiter("stack_delete_complete").wait(StackName=name, WaiterConfig={"Delay": 5, "MaxAttempts": 120})
        except Exception as exc:  # noqa: BLE001 - DELETE_FAILED (a resource it could not delete) or still deleting
            removed["stack"].remove(name)
            not_removed.append(f"stack {name}: its deletion did not finish ({_short(exc)}); its events in the "
                               "CloudFormation console say which resource is left")
    if others:
        removed["other_runs_endpoints_still_billing"] = others
    if not_removed:
        removed["not_removed"] = not_removed
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


def _delete_stacks(cfn, run_id: str, removed: dict, not_removed: list) -> None:
    """The run's stacks (``sam deploy --tags cloudalliance:run-id=<run-id>``, whatever their names)."""
    from botocore.exceptions import ClientError

    for stack in _paged(cfn, "describe_stacks", "Stacks"):
        tags = {t["Key"]: t["Value"] for t in stack.get("Tags", [])}
        if tags.get(RUN_TAG) == run_id and stack.get("StackStatus") != "DELETE_COMPLETE":
            try:
                cfn.delete_stack(StackName=stack["StackName"])
                removed["stack"].append(stack["StackName"])
            except ClientError as exc:
                not_removed.append(f"stack {stack['StackName']}: not deleted ({_short(exc)})")


def _delete_objects(s3, bucket: str, prefixes: Iterable[str], removed: dict, not_removed: list) -> None:
    """Each prefix on its own: one that may not be listed keeps none of the others from being deleted."""
    from botocore.exceptions import BotoCoreError, ClientError

    for prefix in prefixes:
        prefix = prefix.strip("/") + "/"
        try:
            _delete_prefix(s3, bucket, prefix, removed, not_removed)
        except (ClientError, BotoCoreError) as exc:
            not_removed.append(f"s3://{bucket}/{prefix}: could not list or delete its objects ({_short(exc)})")


def _delete_prefix(s3, bucket: str, prefix: str, removed: dict, not_removed: list) -> None:
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
    return [prefix, f"{prefix}-compare", *RunContext.s3_prefixes(run_id)]


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
