"""The aws deployment path offline: SDK v3 ModelBuilder against moto's SageMaker and S3.

moto answers some Describe* calls with empty objects (VpcConfig: {}, DataCaptureConfig: {})
that the real service leaves out and sagemaker-core's models reject; the fixture drops
those empty fields from moto's replies. Everything else goes through the real
request models.
"""

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
    from cloudalliance import serving

    artifact = tmp_path / "model.tar.gz"
    artifact.write_bytes(b"stand-in archive")
    uri = serving.upload_artifact(aws.client("s3"), artifact, "s3://course-data/models/run1")
    assert uri == "s3://course-data/models/run1/model.tar.gz"
    endpoint = serving.deploy_sagemaker(uri, ROLE, "ml.c5.large", "course-ep", boto_session=aws, wait=False)
    assert endpoint.endpoint_name == "course-ep"
    sm = aws.client("sagemaker")
    config = sm.describe_endpoint_config(EndpointConfigName=sm.describe_endpoint(EndpointName="course-ep")["EndpointConfigName"])
    variant = config["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.c5.large" and variant["InitialInstanceCount"] == 1
    container = sm.describe_model(ModelName=variant["ModelName"])["PrimaryContainer"]
    assert "pytorch-inference" in container["Image"] and container["ModelDataUrl"] == uri
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert container["Environment"]["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"

    deleted = serving.delete_sagemaker_endpoint("course-ep", sm)
    assert deleted == {"endpoint": ["course-ep"], "endpoint_config": [config["EndpointConfigName"]],
                       "model": [variant["ModelName"]]}
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []
    assert serving.delete_sagemaker_endpoint("course-ep", sm) == {"endpoint": [], "endpoint_config": [], "model": []}


def test_deploy_needs_a_role(aws):
    from cloudalliance import serving

    with pytest.raises(serving.ServingError, match="ROLE_ARN"):
        serving.deploy_sagemaker("s3://course-data/m.tar.gz", "", boto_session=aws)
