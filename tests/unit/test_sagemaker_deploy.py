"""The aws deployment path offline: SDK v3 ModelBuilder against moto's SageMaker and S3.

moto answers some Describe* calls with empty objects (VpcConfig: {}, DataCaptureConfig: {})
that the real service leaves out and sagemaker-core's models reject; the fixture drops
those empty fields from moto's replies. Everything else goes through the real
request models.
"""

import re

import pytest

moto = pytest.importorskip("moto")

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


def _drop_empty_fields(parsed, **kwargs):
    for key in [k for k, v in parsed.items() if v == {}]:
        parsed.pop(key)


@pytest.fixture
def aws(monkeypatch, tmp_path):
    import boto3

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "SAGEMAKER_VALIDATE_ROLE": "false"}.items():
        monkeypatch.setenv(key, value)
    with moto.mock_aws():
        session = boto3.Session(region_name="us-east-1")
        session.events.register("after-call.sagemaker", _drop_empty_fields)
        session.client("s3").create_bucket(Bucket="course-data")
        yield session


def test_model_builder_deploys_the_artifact_and_cleanup_deletes_everything(aws, tmp_path):
    from cloudalliance.serving import deploy

    artifact = tmp_path / "model.tar.gz"
    artifact.write_bytes(b"stand-in archive")
    uri = deploy.upload_artifact(aws.client("s3"), artifact, "s3://course-data/models/run1")
    assert re.fullmatch(r"s3://course-data/models/run1/[0-9a-f]{16}/model\.tar\.gz", uri), uri
    endpoint = deploy.deploy_sagemaker(uri, ROLE, "ml.c5.large", "course-ep", boto_session=aws, wait=False)
    assert endpoint.endpoint_name == "course-ep"
    sm = aws.client("sagemaker")
    config = sm.describe_endpoint_config(EndpointConfigName=sm.describe_endpoint(EndpointName="course-ep")["EndpointConfigName"])
    variant = config["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.c5.large" and variant["InitialInstanceCount"] == 1
    container = sm.describe_model(ModelName=variant["ModelName"])["PrimaryContainer"]
    assert "pytorch-inference" in container["Image"] and container["ModelDataUrl"] == uri
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert container["Environment"]["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"

    deleted = deploy.delete_sagemaker_endpoint("course-ep", sm)
    assert deleted == {"endpoint": ["course-ep"], "endpoint_config": [config["EndpointConfigName"]],
                       "model": [variant["ModelName"]]}
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []
    assert deploy.delete_sagemaker_endpoint("course-ep", sm) == {"endpoint": [], "endpoint_config": [], "model": []}


def test_deploy_needs_a_role(aws):
    from cloudalliance.serving import deploy, model_artifact

    with pytest.raises(model_artifact.ServingError, match="ROLE_ARN"):
        deploy.deploy_sagemaker("s3://course-data/m.tar.gz", "", boto_session=aws)


def test_a_rolled_back_update_keeps_the_live_model_and_says_so(aws, tmp_path):
    """UpdateEndpoint is blue/green: when the new fleet fails, SageMaker rolls back and the endpoint is InService
    again on the OLD config, which the InService waiter accepts. The deploy must see that and must not delete the
    config and model the endpoint still serves. (moto has no UpdateEndpoint: a before-call hook answers it as a
    rolled-back update does -- accepted, nothing changed.)"""
    from botocore.awsrequest import AWSResponse

    from cloudalliance.serving import deploy, model_artifact

    artifact = tmp_path / "model.tar.gz"
    artifact.write_bytes(b"stand-in archive")
    uri = deploy.upload_artifact(aws.client("s3"), artifact, "s3://course-data/models/run1")
    deploy.deploy_sagemaker(uri, ROLE, "ml.c5.large", "course-ep", boto_session=aws, wait=False, run_id="r1")
    sm = aws.client("sagemaker")
    live_config = sm.describe_endpoint(EndpointName="course-ep")["EndpointConfigName"]
    live_model = sm.describe_endpoint_config(EndpointConfigName=live_config)["ProductionVariants"][0]["ModelName"]

    def rolled_back(**kwargs):
        return AWSResponse("https://sagemaker", 200, {}, None), {"EndpointArn": "arn"}

    aws.events.register("before-call.sagemaker.UpdateEndpoint", rolled_back)
    with pytest.raises(model_artifact.ServingError, match="did not take the new model") as info:
        deploy.deploy_sagemaker(uri, ROLE, "ml.c5.large", "course-ep", boto_session=aws, wait=True, run_id="r2")
    assert live_config in str(info.value)
    sm = aws.client("sagemaker")
    assert sm.describe_endpoint(EndpointName="course-ep")["EndpointConfigName"] == live_config
    assert sm.describe_endpoint_config(EndpointConfigName=live_config)["ProductionVariants"][0]["ModelName"] == live_model
    assert live_model in [m["ModelName"] for m in sm.list_models()["Models"]]


def test_serverless_endpoint_config_and_a_kind_change_replaces_the_endpoint(aws, tmp_path):
    from cloudalliance.serving import deploy

    artifact = tmp_path / "model.tar.gz"
    artifact.write_bytes(b"stand-in archive")
    uri = deploy.upload_artifact(aws.client("s3"), artifact, "s3://course-data/models/run1")
    deploy.deploy_sagemaker(uri, ROLE, "ml.m5.large", "course-ep", boto_session=aws, wait=False, run_id="r1")
    sm = aws.client("sagemaker")
    first = sm.describe_endpoint(EndpointName="course-ep")["EndpointConfigName"]
    # realtime -> serverless cannot be an UpdateEndpoint (AWS: "not supported"): the endpoint is replaced
    deploy.deploy_sagemaker(uri, ROLE, "ml.m5.large", "course-ep", boto_session=aws, wait=False, run_id="r1",
                             kind="serverless", serverless_memory_mb=3072, serverless_max_concurrency=10)
    config = sm.describe_endpoint_config(EndpointConfigName=sm.describe_endpoint(EndpointName="course-ep")["EndpointConfigName"])
    (variant,) = config["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 10}
    assert "InstanceType" not in variant and "InitialInstanceCount" not in variant
    assert first not in [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]]
    assert len(sm.list_models()["Models"]) == 1  # the replaced endpoint's model went with it
    container = sm.describe_model(ModelName=variant["ModelName"])["PrimaryContainer"]
    assert "-cpu-" in container["Image"]


@pytest.mark.parametrize("memory, concurrency", [(1500, 5), (2048, 0), (2048, 201), (8192, 5)])
def test_serverless_limits_are_checked_before_anything_is_created(aws, memory, concurrency):
    from cloudalliance.serving import deploy, model_artifact

    with pytest.raises(model_artifact.ServingError, match="Serverless Inference takes"):
        deploy.deploy_sagemaker("s3://course-data/m.tar.gz", ROLE, "ml.m5.large", "course-ep", boto_session=aws,
                                 wait=False, kind="serverless", serverless_memory_mb=memory,
                                 serverless_max_concurrency=concurrency)
    assert aws.client("sagemaker").list_models()["Models"] == []


def test_each_artifact_gets_its_own_key_so_the_live_model_keeps_its_own(aws, tmp_path):
    """A second deploy must not overwrite the object the live model (and a rollback) points at."""
    from cloudalliance.serving import deploy

    s3 = aws.client("s3")
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    first.write_bytes(b"first model")
    second.write_bytes(b"second model")
    uri1 = deploy.upload_artifact(s3, first, "s3://course-data/models/run1")
    uri2 = deploy.upload_artifact(s3, second, "s3://course-data/models/run1")
    assert uri1 != uri2 and deploy.upload_artifact(s3, first, "s3://course-data/models/run1") == uri1
    key1 = uri1.split("/", 3)[3]
    assert s3.get_object(Bucket="course-data", Key=key1)["Body"].read() == b"first model"
    assert deploy.upload_artifact(s3, first, "s3://course-data/exact/model.tar.gz") == \
        "s3://course-data/exact/model.tar.gz"  # a key given whole is kept


def test_a_failed_endpoint_being_deleted_is_waited_out_where_botocores_waiter_gives_up():
    """Right after DeleteEndpoint a Failed endpoint still describes as Failed; botocore's EndpointDeleted waiter
    treats that as a failure (waiters-2.json), so the replacement of a Failed endpoint polls on its own."""
    import boto3
    from botocore.exceptions import WaiterError
    from botocore.stub import Stubber

    from cloudalliance.serving import deploy

    def stubbed():
        client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
        stub = Stubber(client)
        stub.add_response("describe_endpoint", {
            "EndpointName": "ep", "EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/ep", "EndpointStatus": "Failed",
            "CreationTime": "2026-12-02T00:00:00Z", "LastModifiedTime": "2026-12-02T00:00:00Z"}, {"EndpointName": "ep"})
        stub.add_client_error("describe_endpoint", "ValidationException", "Could not find endpoint \"ep\".",
                              expected_params={"EndpointName": "ep"})
        stub.activate()
        return client, stub

    client, _ = stubbed()
    with pytest.raises(WaiterError, match="Failed"):
        client.get_waiter("endpoint_deleted").wait(EndpointName="ep", WaiterConfig={"Delay": 0, "MaxAttempts": 2})
    client, stub = stubbed()
    deploy.wait_endpoint_deleted(client, "ep", poll_s=0)
    stub.assert_no_pending_responses()
