import pytest


@pytest.fixture
def aws(monkeypatch):
    """moto's in-process AWS with test credentials, us-east-1, and the bucket `course-data` (SDK v3's role
    validation off: moto's IAM has no such role). Modules that need more define their own ``aws``."""
    import boto3
    import moto

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "SAGEMAKER_VALIDATE_ROLE": "false"}.items():
        monkeypatch.setenv(key, value)
    with moto.mock_aws():
        session = boto3.Session(region_name="us-east-1")
        session.client("s3").create_bucket(Bucket="course-data")
        yield session
