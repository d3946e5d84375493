"""The aws backend against moto in SERVER mode: a real HTTP server on 127.0.0.1 that checks every request against
the service models; the code under test only sees ``AWS_ENDPOINT_URL`` (botocore's endpoint setting:
https://docs.aws.amazon.com/sdkref/latest/guide/feature-ss-endpoints.html), as it would see the real AWS.

Where moto 5.2 lacks an API (SageMaker UpdateEndpoint, IAM SimulatePrincipalPolicy, Service Quotas
ListServiceQuotas) the test says so at that point.
"""

import io
import json
import tarfile
import urllib.request

import pytest

moto = pytest.importorskip("moto")
pytest.importorskip("flask")  # moto's server

ACCOUNT = "123456789012"  # moto's account
TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]}


@pytest.fixture(scope="module")
def moto_server():
    from moto.server import ThreadedMotoServer

    from cloudalliance.local.services import free_port

    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws(moto_server, monkeypatch, tmp_path):
    """Fake credentials, the server as every service's endpoint, a clean state."""
    import boto3

    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"), timeout=10).read()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": moto_server,
                       "SAGEMAKER_VALIDATE_ROLE": "false", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    empty = tmp_path / "empty"
    empty.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    session = boto3.Session(region_name="us-east-1")
    # moto answers DescribeEndpoint/DescribeEndpointConfig with empty objects (DataCaptureConfig: {}) that the
    # real service leaves out and sagemaker-core's Endpoint model rejects
    session.events.register("after-call.sagemaker", _drop_empty_fields)
    return session


def _drop_empty_fields(parsed, **kwargs):
    for key in [k for k, v in parsed.items() if v == {}]:
        parsed.pop(key)


def _role(session, name="CourseRole", trust=TRUST):
    return session.client("iam").create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]


def _params_file(tmp_path, **params):
    import yaml

    doc = {"backend": "aws", "run_id": "r1", "parameters": {"REGION": "us-east-1", "PREFIX": "intel", **params},
           "notebooks": [{"notebook": "03_training.ipynb", "foreach": {"INSTANCE_TYPE": ["ml.m5.xlarge", "ml.c5.4xlarge"]}}]}
    path = tmp_path / "aws.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# --------------------------------------------------------------------------- preflight


def test_preflight_table_against_the_emulator(aws, tmp_path, capsys):
    from cloudalliance import aws_preflight
    from cloudalliance.cli import main

    role = _role(aws)
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="course-kms")
    s3.put_bucket_encryption(Bucket="course-kms", ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}}]})
    params = _params_file(tmp_path, BUCKET="course-kms", ROLE_ARN=role, HOSTING_INSTANCE_TYPE="ml.m5.large")
    code = main(["aws", "check", "--params", str(params)])
    out = capsys.readouterr().out
    with capsys.disabled():
        print("\n" + out)
    assert code == 0, out
    rows = {r.check: r for r in aws_preflight.preflight({"REGION": "us-east-1", "BUCKET": "course-kms", "ROLE_ARN": role,
                                                   "INSTANCE_TYPES": ["ml.m5.xlarge"]}, session=aws)}
    assert rows["credentials"].status == "ok" and ACCOUNT in rows["credentials"].detail
    assert rows["bucket"].status == "ok" and "us-east-1" in rows["bucket"].detail
    enc = rows["bucket encryption"]
    assert enc.status == "warn" and "aws:kms" in enc.detail and "not MD5" in enc.detail
    assert rows["role"].status == "ok" and rows["role trust"].status == "ok"
    # moto 5.2: "The simulate_principal_policy action has not been implemented" -> "could not check"
    assert rows["role on bucket"].status == "warn" and "could not check" in rows["role on bucket"].detail
    # moto 5.2 has no ListServiceQuotas and no SageMaker defaults -> not checked, said so, not a failure
    assert rows["quota ml.m5.xlarge for training job usage"].status == "warn"
    assert rows["endpoint name"].status == "ok" and "free" in rows["endpoint name"].detail
    assert "ESTIMATED COST" in out and "training 1 x ml.c5.4xlarge, 30 min" in out


def test_preflight_fails_on_an_untrusting_role_a_foreign_endpoint_and_missing_role(aws, tmp_path, capsys):
    from cloudalliance.cli import main

    role = _role(aws, "NotForSageMaker", {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
    sm = aws.client("sagemaker")
    sm.create_model(ModelName="other", ExecutionRoleArn=role, PrimaryContainer={"Image": "img"})
    sm.create_endpoint_config(EndpointConfigName="other", ProductionVariants=[
        {"VariantName": "v", "ModelName": "other", "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}])
    sm.create_endpoint(EndpointName="taken", EndpointConfigName="other")
    params = _params_file(tmp_path, ROLE_ARN=role, ENDPOINT_NAME="taken")
    assert main(["aws", "check", "--params", str(params)]) == 2
    out = capsys.readouterr().out
    assert "does not trust sagemaker.amazonaws.com" in out
    assert "not created by the course" in out
    # the default bucket when BUCKET is empty, and that it does not exist yet is fine
    assert f"s3://sagemaker-us-east-1-{ACCOUNT} does not exist yet" in out
    params = _params_file(tmp_path, ROLE_ARN=f"arn:aws:iam::{ACCOUNT}:role/Missing")
    assert main(["aws", "check", "--params", str(params)]) == 2
    assert "does not exist in this account" in capsys.readouterr().out


def test_no_credentials_is_exit_2_with_how_to_provide_them(monkeypatch, tmp_path, capsys):
    from cloudalliance.cli import main

    for key in [k for k in __import__("os").environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    empty = tmp_path / "empty"
    empty.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role lookup on this machine
    params = _params_file(tmp_path)
    assert main(["aws", "check", "--params", str(params)]) == 2
    out = capsys.readouterr().out
    assert "credentials  fail" in out and "aws configure" in out and "AWS_ACCESS_KEY_ID" in out
    assert main(["aws", "cleanup", "--run", "r1", "--region", "us-east-1"]) == 2
    assert "aws configure" in capsys.readouterr().err


# --------------------------------------------------------------------------- role and bucket


def test_empty_bucket_is_the_sagemaker_default_bucket(aws):
    from cloudalliance import aws as backend

    assert backend.resolve_bucket("", aws) == f"sagemaker-us-east-1-{ACCOUNT}"
    assert backend.resolve_bucket("mine", aws) == "mine"


def test_empty_role_resolves_on_a_notebook_instance_and_is_a_clear_error_elsewhere(aws, monkeypatch, tmp_path):
    """sagemaker-core's get_execution_role reads the notebook's metadata file first
    (sagemaker/core/helper/session_helper.py:317-327)."""
    from sagemaker.core.helper import session_helper

    from cloudalliance import aws as backend

    monkeypatch.setattr(backend, "NOTEBOOK_METADATA_FILE", str(tmp_path / "absent.json"))
    with pytest.raises(backend.AwsError, match="ROLE_ARN is empty and this is not a SageMaker notebook"):
        backend.resolve_role("", aws)
    role = _role(aws)
    metadata = tmp_path / "resource-metadata.json"
    metadata.write_text(json.dumps({"ResourceName": "nb", "ExecutionRoleArn": role}))
    monkeypatch.setattr(backend, "NOTEBOOK_METADATA_FILE", str(metadata))
    monkeypatch.setattr(session_helper, "NOTEBOOK_METADATA_FILE", str(metadata))
    assert backend.resolve_role("", aws) == role
    assert backend.resolve_role("CourseRole", aws) == role  # a name -> its ARN


def test_params_have_no_placeholder_role_or_bucket():
    import yaml

    from cloudalliance.course import REPO_ROOT

    params = yaml.safe_load((REPO_ROOT / "params" / "aws.yaml").read_text())["parameters"]
    assert params["ROLE_ARN"] == "" and params["BUCKET"] == ""
    assert params["INSTANCE_COUNT"] == 1


# --------------------------------------------------------------------------- deploy twice, cleanup twice


UPDATES: list = []


def _answer_update(model, params, **kwargs):
    """moto 5.2 has no UpdateEndpoint ("not implemented"). botocore has serialized and validated the request
    against the service model by ``before-call``; a handler's (http, parsed) answer stands in for the service
    (botocore/client.py ``_make_api_call``). The endpoint then serves the new config, as the service's does once
    the update is InService: https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_UpdateEndpoint.html"""
    if model.name != "UpdateEndpoint":
        return None
    from moto.sagemaker.models import sagemaker_backends

    body = json.loads(params["body"])
    assert set(body) == {"EndpointName", "EndpointConfigName"}
    endpoint = sagemaker_backends[ACCOUNT]["us-east-1"].endpoints[body["EndpointName"]]
    endpoint.endpoint_config_name = body["EndpointConfigName"]
    UPDATES.append(body)
    http = type("Http", (), {"status_code": 200, "headers": {}, "text": "", "content": b"{}"})()
    return http, {"EndpointArn": endpoint.arn, "ResponseMetadata": {"HTTPStatusCode": 200}}


def _artifact(tmp_path):
    path = tmp_path / "model.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        data = b"stand-in"
        info = tarfile.TarInfo("code/inference.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_deploy_twice_updates_the_endpoint_and_cleanup_twice_removes_everything(aws, tmp_path, capsys):
    from cloudalliance import aws as backend
    from cloudalliance.serving import deploy

    UPDATES.clear()
    aws.events.register("before-call.sagemaker.UpdateEndpoint", _answer_update)
    role = _role(aws)
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="course-data")
    uri = deploy.upload_artifact(s3, _artifact(tmp_path), "s3://course-data/models/run1")
    s3.put_object(Bucket="course-data", Key="intel/seg_train/seg_train/sea/1.jpg", Body=b"x")
    sm = aws.client("sagemaker")

    deploy.deploy_sagemaker(uri, role, "ml.m5.large", "course-ep", boto_session=aws, run_id="run1")
    first = sm.describe_endpoint(EndpointName="course-ep")["EndpointConfigName"]
    assert first != "course-ep", "the endpoint config has a name of its own, so a rerun cannot collide"
    endpoint = deploy.deploy_sagemaker(uri, role, "ml.m5.large", "course-ep", boto_session=aws, run_id="run1")
    assert endpoint.endpoint_name == "course-ep"
    second = sm.describe_endpoint(EndpointName="course-ep")["EndpointConfigName"]
    assert [u["EndpointConfigName"] for u in UPDATES] == [second] and second != first
    # the previous config and model are gone; one of each is left, tagged with the run
    configs = [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]]
    models = [m["ModelName"] for m in sm.list_models()["Models"]]
    assert configs == [second] and models == [second]
    tags = sm.list_tags(ResourceArn=sm.describe_model(ModelName=second)["ModelArn"])["Tags"]
    assert {"Key": backend.RUN_TAG, "Value": "run1"} in tags

    cfn = aws.client("cloudformation")
    cfn.create_stack(StackName="cloudalliance", TemplateBody=json.dumps(
        {"Resources": {"H": {"Type": "AWS::CloudFormation::WaitConditionHandle"}}}),
        Tags=[{"Key": backend.RUN_TAG, "Value": "run1"}])
    cfn.create_stack(StackName="someone-else", TemplateBody=json.dumps(
        {"Resources": {"H": {"Type": "AWS::CloudFormation::WaitConditionHandle"}}}))

    from cloudalliance.cli import main

    assert main(["aws", "cleanup", "--run", "run1", "--region", "us-east-1", "--bucket", "course-data",
                 "--delete-data"]) == 0
    out = capsys.readouterr().out
    with capsys.disabled():
        print("\n" + out)
    assert "removed endpoint: course-ep" in out and f"removed model: {second}" in out
    assert "removed stack: cloudalliance" in out and "someone-else" not in out
    assert "s3://course-data/intel/ (1 objects)" in out and "s3://course-data/models/run1/ (1 objects)" in out
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert s3.list_objects_v2(Bucket="course-data").get("KeyCount", 0) == 0
    assert main(["aws", "cleanup", "--run", "run1", "--region", "us-east-1"]) == 0
    assert capsys.readouterr().out.strip() == "nothing to remove"


def test_a_failed_endpoint_is_replaced_and_a_failed_update_says_what_to_do(aws, tmp_path, monkeypatch):
    """moto's endpoints are InService at once; the Failed states are set in moto's own state (server mode runs in
    this process). DescribeEndpoint's FailureReason: API_DescribeEndpoint."""
    from moto.sagemaker.models import sagemaker_backends

    from cloudalliance.serving import deploy, model_artifact

    role = _role(aws)
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="course-data")
    uri = deploy.upload_artifact(s3, _artifact(tmp_path), "s3://course-data/models/run1")
    sm = aws.client("sagemaker")
    deploy.deploy_sagemaker(uri, role, "ml.m5.large", "course-ep", boto_session=aws, run_id="run1")
    endpoint = sagemaker_backends[ACCOUNT]["us-east-1"].endpoints["course-ep"]
    endpoint.endpoint_status = "Failed"
    deploy.deploy_sagemaker(uri, role, "ml.m5.large", "course-ep", boto_session=aws, run_id="run1")
    assert sm.describe_endpoint(EndpointName="course-ep")["EndpointStatus"] == "InService"

    def fail_the_update(model, params, **kwargs):  # the new config never comes InService
        if model.name == "UpdateEndpoint":
            ep = sagemaker_backends[ACCOUNT]["us-east-1"].endpoints["course-ep"]
            ep.endpoint_status, ep.failure_reason = "Failed", "the container did not answer /ping"
            http = type("Http", (), {"status_code": 200, "headers": {}, "text": "", "content": b"{}"})()
            return http, {"EndpointArn": ep.arn, "ResponseMetadata": {"HTTPStatusCode": 200}}
        return None

    aws.events.register("before-call.sagemaker.UpdateEndpoint", fail_the_update)
    with pytest.raises(model_artifact.ServingError, match="did not come InService.*aws cleanup --run run1"):
        deploy.deploy_sagemaker(uri, role, "ml.m5.large", "course-ep", boto_session=aws, run_id="run1")


def test_quotas_value_against_need_from_list_service_quotas():
    """moto 5.2 has no ListServiceQuotas ("not implemented"), so the request's shape is checked with botocore's
    Stubber against the service model, and the reply is the API's: Quotas[].QuotaName/Value
    (https://docs.aws.amazon.com/servicequotas/2019-06-24/apireference/API_ListServiceQuotas.html)."""
    import boto3
    from botocore.stub import Stubber

    from cloudalliance import aws_preflight

    client = boto3.client("service-quotas", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")

    class Session:
        region_name = "us-east-1"

        def client(self, name, **kwargs):
            assert name == "service-quotas"
            return client

    quota = {"ServiceCode": "sagemaker", "QuotaCode": "L-1", "Adjustable": True}
    with Stubber(client) as stub:
        stub.add_response("list_service_quotas", {"Quotas": [
            {**quota, "QuotaName": "ml.m5.xlarge for training job usage", "Value": 0.0},
            {**quota, "QuotaName": "ml.m5.large for endpoint usage", "Value": 2.0}]}, {"ServiceCode": "sagemaker"})
        rows = {r.check: r for r in aws_preflight._quota_checks(Session(), {"ml.m5.xlarge for training job usage": 2,
                                                                       "ml.m5.large for endpoint usage": 1,
                                                                       "ml.p5.48xlarge for training job usage": 1})}
    assert rows["quota ml.m5.xlarge for training job usage"].status == "fail"
    assert "0 available, 2 needed" in rows["quota ml.m5.xlarge for training job usage"].detail
    assert rows["quota ml.m5.large for endpoint usage"].status == "ok"
    assert rows["quota ml.p5.48xlarge for training job usage"].status == "warn"


class _WithQuotas:
    """The emulator's session, but Service Quotas (which moto lacks) from a Stubber: each call checked against
    botocore's service-quotas model. ListServiceQuotas leaves out quotas without an applied value (its API
    reference), so the defaults list must fill them in."""

    def __init__(self, session, defaults, applied):
        import boto3
        from botocore.stub import Stubber

        self._session = session
        self.quotas = boto3.client("service-quotas", region_name="us-east-1")
        self.stub = Stubber(self.quotas)
        for method, values in (("list_aws_default_service_quotas", defaults), ("list_service_quotas", applied)):
            self.stub.add_response(method, {"Quotas": [{"QuotaName": n, "Value": v} for n, v in values.items()]},
                                   {"ServiceCode": "sagemaker"})
        self.stub.activate()

    def client(self, name, **kwargs):
        return self.quotas if name == "service-quotas" else self._session.client(name, **kwargs)

    def __getattr__(self, name):
        return getattr(self._session, name)


def test_quota_for_an_update_counts_the_second_fleet_and_defaults_fill_what_applied_leaves_out(aws):
    """UpdateEndpoint deploys the new config on a new fleet, then deletes the old instances (its API reference):
    a rerun of notebook 05 on a live ml.m5.large endpoint needs 2 of them at once, a quota of 1 fails."""
    from cloudalliance import aws as backend, aws_preflight

    role = _role(aws)
    sm = aws.client("sagemaker")
    tags = [{"Key": backend.RUN_TAG, "Value": "r1"}]
    sm.create_model(ModelName="m1", ExecutionRoleArn=role, PrimaryContainer={"Image": "img"}, Tags=tags)
    sm.create_endpoint_config(EndpointConfigName="c1", Tags=tags, ProductionVariants=[
        {"VariantName": "v", "ModelName": "m1", "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}])
    sm.create_endpoint(EndpointName="cloudalliance", EndpointConfigName="c1", Tags=tags)
    params = {"REGION": "us-east-1", "BUCKET": "course-data", "ROLE_ARN": role, "INSTANCE_TYPES": ["ml.m5.xlarge"],
              "HOSTING_INSTANCE_TYPE": "ml.m5.large", "RUN_ID": "r1"}
    session = _WithQuotas(aws, defaults={"ml.m5.large for endpoint usage": 1.0,
                                         "ml.m5.xlarge for training job usage": 2.0},
                          applied={"ml.m5.large for endpoint usage": 1.0})
    rows = {r.check: r for r in aws_preflight.preflight(params, ("training", "endpoint"), session=session)}
    session.stub.assert_no_pending_responses()
    endpoint_quota = rows["quota ml.m5.large for endpoint usage"]
    assert endpoint_quota.status == "fail" and "2 needed" in endpoint_quota.detail, endpoint_quota
    assert "second ml.m5.large" in rows["endpoint name"].detail
    training = rows["quota ml.m5.xlarge for training job usage"]  # not in the applied list: AWS's default
    assert training.status == "ok" and "AWS default" in training.detail, training
    # another hosting type for the update: the live fleet holds its own type's quota, the new one needs 1
    session = _WithQuotas(aws, defaults={"ml.c5.large for endpoint usage": 1.0}, applied={})
    rows = {r.check: r for r in aws_preflight.preflight({**params, "HOSTING_INSTANCE_TYPE": "ml.c5.large"}, ("endpoint",),
                                                  session=session)}
    assert rows["quota ml.c5.large for endpoint usage"].status == "ok"


def test_a_stack_check_that_is_denied_is_not_called_free(aws):
    from botocore.stub import Stubber

    from cloudalliance import aws_preflight

    assert aws_preflight._stack_check(aws, "cloudalliance").detail == "cloudalliance is free"  # moto: does not exist
    cfn = aws.client("cloudformation")
    stub = Stubber(cfn)
    stub.add_client_error("describe_stacks", "AccessDenied", "not authorized to perform cloudformation:DescribeStacks")
    stub.activate()

    class Denied:
        def client(self, name, **kwargs):
            return cfn

    check = aws_preflight._stack_check(Denied(), "cloudalliance")
    assert check.status == "warn" and "could not check" in check.detail
