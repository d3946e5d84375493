"""The aws backend's preflight and cleanup against AWS's own semantics where moto does not model them (IAM's policy
simulation, SageMaker's blue/green rollback, DeleteObjects' partial errors), with botocore's Stubber and small fakes of
AWS only; the region the SDK's own clients use; and an interrupted course run stopping its training jobs."""

import fnmatch
import os
import subprocess
import sys

import pytest
from botocore.exceptions import ClientError

from cloudalliance import aws, aws_cleanup, aws_preflight
from cloudalliance.serving import model_artifact


class _FakeIam:
    """IAM for one role with README's bucket policy: ListBucket on the bucket, object actions on bucket/*.

    SimulatePrincipalPolicy as documented (botocore iam service-2.json, SimulatePrincipalPolicyRequest.ResourceArns:
    "Each API in the ActionNames parameter is evaluated for each resource in this list"; EvaluationResult: one
    result per action, the top-level EvalDecision the most restrictive across the resources)."""

    GRANTS = {"s3:ListBucket": "arn:aws:s3:::MY-BUCKET", "s3:GetObject": "arn:aws:s3:::MY-BUCKET/*",
              "s3:PutObject": "arn:aws:s3:::MY-BUCKET/*"}

    def __init__(self):
        self.calls = []

    def get_role(self, RoleName):  # noqa: N803 - boto3's names
        trust = {"Statement": [{"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
                                "Action": "sts:AssumeRole"}]}
        return {"Role": {"Arn": f"arn:aws:iam::123456789012:role/{RoleName}", "AssumeRolePolicyDocument": trust}}

    def simulate_principal_policy(self, PolicySourceArn, ActionNames, ResourceArns):  # noqa: N803
        self.calls.append((tuple(ActionNames), tuple(ResourceArns)))
        results = []
        for action in ActionNames:
            ok = all(fnmatch.fnmatchcase(arn, self.GRANTS.get(action, "")) for arn in ResourceArns)
            results.append({"EvalActionName": action, "EvalResourceName": "*",
                            "EvalDecision": "allowed" if ok else "implicitDeny"})
        return {"EvaluationResults": results}


class _Session:
    def __init__(self, **clients):
        self.clients = clients
        self.region_name = "us-east-1"

    def client(self, name, **kwargs):
        return self.clients[name]


def test_a_role_with_the_readmes_bucket_policy_passes_the_preflight():
    iam = _FakeIam()
    rows = {r.check: r for r in aws_preflight._role_checks(_Session(iam=iam), "arn:aws:iam::123456789012:role/r", "MY-BUCKET")}
    assert rows["role on bucket"].status == "ok", rows["role on bucket"].detail
    # each action asked about the resource it applies to (asking GetObject of the bucket's ARN was the defect)
    assert set(iam.calls) == {(("s3:ListBucket",), ("arn:aws:s3:::MY-BUCKET",)),
                              (("s3:GetObject", "s3:PutObject"), ("arn:aws:s3:::MY-BUCKET/*",))}


def test_a_role_without_write_fails_the_preflight_and_says_what():
    iam = _FakeIam()
    iam.GRANTS = {**iam.GRANTS, "s3:PutObject": "arn:aws:s3:::OTHER/*"}
    rows = {r.check: r for r in aws_preflight._role_checks(_Session(iam=iam), "arn:aws:iam::123456789012:role/r", "MY-BUCKET")}
    assert rows["role on bucket"].status == "fail" and "s3:PutObject" in rows["role on bucket"].detail
    assert "s3:GetObject" not in rows["role on bucket"].detail


def test_spot_training_is_checked_against_the_spot_quotas_and_the_data_row_says_where_the_images_come_from(
        monkeypatch, tmp_path):
    """With USE_SPOT the jobs count against "<type> for spot training job usage", not the on-demand quota; and the
    preflight says, before notebook 01 needs them, whether DATA_SOURCE holds images and how to get them there."""
    monkeypatch.setattr(aws_preflight, "_credentials", lambda session: (aws_preflight.Check("credentials", "ok", ""),
                                                                        {"Account": "123456789012"}))
    monkeypatch.setattr(aws_preflight, "_bucket_checks", lambda *args: [])
    monkeypatch.setattr(aws_preflight, "_quota_values", lambda session: {
        "ml.m5.xlarge for training job usage": (2.0, "applied"),
        "ml.m5.xlarge for spot training job usage": (0.0, "applied")})

    def rows(**params):
        params = {"INSTANCE_TYPES": ["ml.m5.xlarge"], "BUCKET": "course-data", **params}
        return {r.check: r for r in aws_preflight.preflight(params, ["data", "training"], session=_Session())}

    spot = rows(USE_SPOT=True, DATA_SOURCE=str(tmp_path / "intel"))
    assert spot["quota ml.m5.xlarge for spot training job usage"].status == "fail"
    assert "quota ml.m5.xlarge for training job usage" not in spot
    assert rows(USE_SPOT=False)["quota ml.m5.xlarge for training job usage"].status == "ok"

    missing = spot["data"]
    assert missing.status == "fail" and "does not exist" in missing.detail
    assert "cloudalliance data fetch --dest data/intel" in missing.detail
    assert "aws s3 sync s3://course-data/intel data/intel" in missing.detail
    assert rows()["data"].status == "warn"  # synthetic scenes: fine for a rehearsal, not a model of real photos
    (tmp_path / "intel" / "forest").mkdir(parents=True)
    (tmp_path / "intel" / "forest" / "1.jpg").write_bytes(b"")
    assert rows(DATA_SOURCE=str(tmp_path / "intel"))["data"].status == "ok"


def test_the_aws_params_read_the_images_where_the_readme_downloads_them():
    """`course run` takes a relative DATA_SOURCE from where it runs (course.resolve_paths), the README's commands
    run from the repository's root, and `cloudalliance data fetch --dest data/intel` puts the images there."""
    import yaml

    from cloudalliance import course

    root = course.REPO_ROOT
    params = yaml.safe_load((root / "params" / "aws.yaml").read_text())["parameters"]
    assert course.resolve_paths(params, root)["DATA_SOURCE"] == str(root / "data" / "intel")


class _FakeSageMaker:
    """DescribeEndpoint after a rolled-back update: InService, still on the old config."""

    def __init__(self, error_code=None):
        self.error_code = error_code

    def describe_endpoint(self, EndpointName):  # noqa: N803
        if self.error_code:
            raise ClientError({"Error": {"Code": self.error_code, "Message": "User is not authorized"}},
                              "DescribeEndpoint")
        return {"EndpointArn": "arn", "EndpointStatus": "InService", "EndpointConfigName": "old"}

    def list_tags(self, ResourceArn):  # noqa: N803
        return {"Tags": []}


def test_an_endpoint_check_that_is_denied_is_not_called_free():
    check, live = aws_preflight._endpoint_check(_Session(sagemaker=_FakeSageMaker("AccessDeniedException")), "cloudalliance", "r1")
    assert live == ""
    assert check.status == "warn" and "could not check" in check.detail


def test_region_from_the_params_is_the_default_for_the_sdks_own_clients(tmp_path):
    """sagemaker/core/utils/logs.py's CloudWatchLogsClient is made on a plain boto3.Session(): with no region
    configured that is NoRegionError (it runs inside TrainingJob.wait, after the job started)."""
    code = ("import os\nfrom cloudalliance import aws\naws.boto_session('eu-west-1')\n"
            "from sagemaker.core.utils.logs import CloudWatchLogsClient\n"
            "print(CloudWatchLogsClient().client.meta.region_name)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(tmp_path), AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "eu-west-1", out.stderr[-1500:]
    bare = subprocess.run([sys.executable, "-c", code.replace("aws.boto_session('eu-west-1')\n", "")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert bare.returncode != 0 and "NoRegionError" in bare.stderr  # what the course met without it


def test_the_serving_requirements_leave_the_containers_numpy_alone():
    assert "numpy" not in model_artifact.SERVING_PACKAGES and "onnxruntime" in model_artifact.SERVING_PACKAGES


class _StubbedSession:
    """A boto3 session whose clients are real botocore clients behind Stubbers: each call and its parameters
    are checked against the service's model, and each reply is one AWS documents."""

    region_name = "us-east-1"

    def __init__(self):
        import boto3
        from botocore.stub import Stubber

        self.clients, self.stubs = {}, {}
        for name in ("sagemaker", "cloudformation", "s3"):
            client = boto3.client(name, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
            self.clients[name], self.stubs[name] = client, Stubber(client)
            self.stubs[name].activate()

    def get_credentials(self):
        return object()

    def client(self, name):
        return self.clients[name]


def test_cleanup_stops_the_runs_running_training_job_and_reports_objects_it_could_not_delete(capsys):
    """A notebook that died mid-wait leaves its job billing until MaxRuntimeInSeconds: cleanup stops the run's
    InProgress jobs (ListTrainingJobs StatusEquals, StopTrainingJob). DeleteObjects answers HTTP 200 with the
    keys it did not delete in ``Errors``: those are reported as not removed, and the command exits 1."""

    session = _StubbedSession()
    sm, cfn, s3 = (session.stubs[n] for n in ("sagemaker", "cloudformation", "s3"))
    mine = "arn:aws:sagemaker:us-east-1:1:training-job/mine"
    sm.add_response("list_training_jobs", {"TrainingJobSummaries": [
        {"TrainingJobName": "mine", "TrainingJobArn": mine, "CreationTime": "2026-12-02T00:00:00Z",
         "TrainingJobStatus": "InProgress"},
        {"TrainingJobName": "theirs", "TrainingJobArn": mine.replace("mine", "theirs"),
         "CreationTime": "2026-12-02T00:00:00Z", "TrainingJobStatus": "InProgress"}]}, {"StatusEquals": "InProgress"})
    sm.add_response("list_tags", {"Tags": [{"Key": aws.RUN_TAG, "Value": "run1"}]}, {"ResourceArn": mine})
    sm.add_response("stop_training_job", {}, {"TrainingJobName": "mine"})
    sm.add_response("list_tags", {"Tags": [{"Key": aws.RUN_TAG, "Value": "run2"}]},
                    {"ResourceArn": mine.replace("mine", "theirs")})
    for method, key in (("list_endpoints", "Endpoints"), ("list_endpoint_configs", "EndpointConfigs"),
                        ("list_models", "Models")):
        sm.add_response(method, {key: []}, {})
    cfn.add_response("describe_stacks", {"Stacks": []}, {})
    s3.add_response("list_objects_v2", {"Contents": [{"Key": "models/run1/a"}, {"Key": "models/run1/b"}],
                                        "IsTruncated": False}, {"Bucket": "course-data", "Prefix": "models/run1/"})
    s3.add_response("delete_objects", {"Errors": [{"Key": "models/run1/b", "Code": "AccessDenied",
                                                   "Message": "Access Denied"}]},
                    {"Bucket": "course-data", "Delete": {"Objects": [{"Key": "models/run1/a"}, {"Key": "models/run1/b"}],
                                                         "Quiet": True}})
    removed = aws_cleanup.cleanup("run1", session=session, bucket="course-data", prefixes=["models/run1"], delete_data=True)
    for stub in session.stubs.values():
        stub.assert_no_pending_responses()
    assert removed["training_job"] == ["mine (stopped)"]
    assert removed["s3"] == ["s3://course-data/models/run1/ (1 objects)"]
    assert removed["not_removed"] == ["s3://course-data/models/run1/: 1 objects (AccessDenied), e.g. models/run1/b"]
    text = aws_cleanup.format_removed(removed)
    assert "removed training job: mine (stopped)" in text and "NOT removed" in text


def test_a_role_that_may_not_list_training_jobs_still_gets_its_endpoints_removed():
    session = _StubbedSession()
    sm, cfn = session.stubs["sagemaker"], session.stubs["cloudformation"]
    sm.add_client_error("list_training_jobs", "AccessDeniedException", "not authorized to perform "
                        "sagemaker:ListTrainingJobs", expected_params={"StatusEquals": "InProgress"})
    arn = "arn:aws:sagemaker:us-east-1:1:endpoint/course-ep"
    sm.add_response("list_endpoints", {"Endpoints": [{"EndpointName": "course-ep", "EndpointArn": arn,
                                                      "CreationTime": "2026-12-02T00:00:00Z",
                                                      "LastModifiedTime": "2026-12-02T00:00:00Z",
                                                      "EndpointStatus": "InService"}]}, {})
    sm.add_response("list_tags", {"Tags": [{"Key": aws.RUN_TAG, "Value": "run1"}]}, {"ResourceArn": arn})
    sm.add_response("delete_endpoint", {}, {"EndpointName": "course-ep"})
    sm.add_response("list_endpoint_configs", {"EndpointConfigs": []}, {})
    sm.add_response("list_models", {"Models": []}, {})
    cfn.add_response("describe_stacks", {"Stacks": []}, {})
    removed = aws_cleanup.cleanup("run1", session=session)
    for stub in session.stubs.values():
        stub.assert_no_pending_responses()
    assert removed["endpoint"] == ["course-ep"]
    assert removed["not_removed"][0].startswith("training jobs: could not list them")


def test_a_refused_step_of_cleanup_leaves_the_others_to_run_and_is_reported():
    """ListEndpoints denied and a model whose DeleteModel is refused: the stack and the S3 data still go, and
    each failure is listed under not_removed (cleanup then exits 1)."""
    session = _StubbedSession()
    sm, cfn, s3 = (session.stubs[n] for n in ("sagemaker", "cloudformation", "s3"))
    sm.add_response("list_training_jobs", {"TrainingJobSummaries": []}, {"StatusEquals": "InProgress"})
    sm.add_client_error("list_endpoints", "AccessDeniedException", "not authorized to perform sagemaker:ListEndpoints",
                        expected_params={})
    sm.add_response("list_endpoint_configs", {"EndpointConfigs": []}, {})
    model_arn = "arn:aws:sagemaker:us-east-1:1:model/course-model"
    sm.add_response("list_models", {"Models": [{"ModelName": "course-model", "ModelArn": model_arn,
                                                "CreationTime": "2026-12-02T00:00:00Z"}]}, {})
    sm.add_response("list_tags", {"Tags": [{"Key": aws.RUN_TAG, "Value": "run1"}]}, {"ResourceArn": model_arn})
    sm.add_client_error("delete_model", "AccessDeniedException", "not authorized to perform sagemaker:DeleteModel",
                        expected_params={"ModelName": "course-model"})
    cfn.add_response("describe_stacks", {"Stacks": [{"StackName": "cloudalliance", "CreationTime": "2026-12-02T00:00:00Z",
                                                     "StackStatus": "CREATE_COMPLETE",
                                                     "Tags": [{"Key": aws.RUN_TAG, "Value": "run1"}]}]}, {})
    cfn.add_response("delete_stack", {}, {"StackName": "cloudalliance"})
    s3.add_response("list_objects_v2", {"Contents": [{"Key": "models/run1/a"}], "IsTruncated": False},
                    {"Bucket": "course-data", "Prefix": "models/run1/"})
    s3.add_response("delete_objects", {}, {"Bucket": "course-data",
                                           "Delete": {"Objects": [{"Key": "models/run1/a"}], "Quiet": True}})
    removed = aws_cleanup.cleanup("run1", session=session, bucket="course-data", prefixes=["models/run1"], delete_data=True,
                          wait=False)
    for stub in session.stubs.values():
        stub.assert_no_pending_responses()
    assert removed["stack"] == ["cloudalliance"] and removed["s3"] == ["s3://course-data/models/run1/ (1 objects)"]
    assert [line.split(":")[0] for line in removed["not_removed"]] == ["endpoints", "model course-model"]


def test_a_refused_stack_or_prefix_leaves_the_others_to_go_and_the_command_exits_1(monkeypatch, capsys):
    """Within a step, each item stands alone too: a DeleteStack that is refused, a stack whose deletion ends
    DELETE_FAILED (the waiter's failure state, botocore's cloudformation waiters-2.json) and a prefix that may not
    be listed are each reported, while the next stack and prefix still go. `aws cleanup` then exits 1."""
    from cloudalliance.cli import main

    session = _StubbedSession()
    sm, cfn, s3 = (session.stubs[n] for n in ("sagemaker", "cloudformation", "s3"))
    sm.add_response("list_training_jobs", {"TrainingJobSummaries": []}, {"StatusEquals": "InProgress"})
    for method, key in (("list_endpoints", "Endpoints"), ("list_endpoint_configs", "EndpointConfigs"),
                        ("list_models", "Models")):
        sm.add_response(method, {key: []}, {})
    tagged = [{"Key": aws.RUN_TAG, "Value": "run1"}]
    cfn.add_response("describe_stacks", {"Stacks": [
        {"StackName": name, "CreationTime": "2026-12-02T00:00:00Z", "StackStatus": "CREATE_COMPLETE", "Tags": tagged}
        for name in ("api-a", "api-b")]}, {})
    cfn.add_client_error("delete_stack", "AccessDenied", "not authorized to perform cloudformation:DeleteStack",
                         expected_params={"StackName": "api-a"})
    cfn.add_response("delete_stack", {}, {"StackName": "api-b"})
    cfn.add_response("describe_stacks", {"Stacks": [{"StackName": "api-b", "CreationTime": "2026-12-02T00:00:00Z",
                                                     "StackStatus": "DELETE_FAILED"}]}, {"StackName": "api-b"})
    s3.add_client_error("list_objects_v2", "AccessDenied", "Access Denied",
                        expected_params={"Bucket": "course-data", "Prefix": "intel/"})
    s3.add_response("list_objects_v2", {"KeyCount": 0}, {"Bucket": "course-data", "Prefix": "intel-compare/"})
    s3.add_response("list_objects_v2", {"Contents": [{"Key": "models/run1/a"}]},
                    {"Bucket": "course-data", "Prefix": "models/run1/"})
    s3.add_response("delete_objects", {}, {"Bucket": "course-data", "Delete": {"Objects": [{"Key": "models/run1/a"}],
                                                                               "Quiet": True}})
    s3.add_response("list_objects_v2", {"KeyCount": 0}, {"Bucket": "course-data", "Prefix": "checkpoints/run1/"})
    monkeypatch.setattr(aws, "boto_session", lambda region=None: session)
    code = main(["aws", "cleanup", "--run", "run1", "--bucket", "course-data", "--prefix", "intel", "--delete-data"])
    for stub in session.stubs.values():
        stub.assert_no_pending_responses()
    out = capsys.readouterr().out
    assert code == 1, out
    assert "removed s3: s3://course-data/models/run1/ (1 objects)" in out and "removed stack" not in out
    not_removed = out.split("NOT removed", 1)[1].splitlines()[1:]
    assert [line.split(":")[0].strip() for line in not_removed] == ["stack api-a", "s3", "stack api-b"], out


def test_an_interrupted_aws_course_run_stops_the_runs_training_jobs(tmp_path, monkeypatch, capsys):
    """Ctrl-C reaches `course run`, not the kernel (its own session), so the notebook's StopTrainingJob never runs:
    the runner stops the run's InProgress jobs itself on the way out, then lets the interrupt go on."""
    import papermill
    import yaml

    from cloudalliance import course

    session = _StubbedSession()
    sm = session.stubs["sagemaker"]
    arn = "arn:aws:sagemaker:us-east-1:1:training-job/job-1"
    sm.add_response("list_training_jobs", {"TrainingJobSummaries": [
        {"TrainingJobName": "job-1", "TrainingJobArn": arn, "CreationTime": "2026-12-02T00:00:00Z",
         "TrainingJobStatus": "InProgress"}]}, {"StatusEquals": "InProgress"})
    sm.add_response("list_tags", {"Tags": [{"Key": aws.RUN_TAG, "Value": "r1"}]}, {"ResourceArn": arn})
    sm.add_response("stop_training_job", {}, {"TrainingJobName": "job-1"})
    regions = []
    monkeypatch.setattr(aws_cleanup, "boto_session", lambda region=None: regions.append(region) or session)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    params = tmp_path / "aws.yaml"
    params.write_text(yaml.safe_dump({"backend": "aws", "runs_dir": str(tmp_path / "runs"),
                                      "parameters": {"REGION": "eu-west-1"}, "notebooks": ["07_benchmarking.ipynb"]}))
    with pytest.raises(KeyboardInterrupt):
        course.run_course(params, run_id="r1")
    sm.assert_no_pending_responses()
    assert regions == ["eu-west-1"] and "interrupted: training job job-1 (stopped)" in capsys.readouterr().out
