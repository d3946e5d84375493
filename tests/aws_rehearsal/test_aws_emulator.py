"""The rehearsal's emulator (moto's server behind the SageMaker-playing proxy), checked through boto3 as the course
calls it: what it forwards, and where it answers as AWS does rather than as moto does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")
from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aws_emulator import ACCOUNT_ID, Emulator  # noqa: E402

ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/SageMakerExecutionRole"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6.0-cpu-py312"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    em = Emulator(tmp_path_factory.mktemp("emulator"))
    em.start()
    try:
        yield em
    finally:
        stopped = em.stop()
        assert stopped[-2:] == ["proxy", "moto"]


def client(emulator, service):
    """A client through the proxy, as the course's code gets one (AWS_ENDPOINT_URL)."""
    return boto3.client(service, endpoint_url=emulator.endpoint_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(retries={"max_attempts": 1}))


def test_s3_objects_round_trip_through_the_proxy(emulator):
    s3 = client(emulator, "s3")
    s3.create_bucket(Bucket="proxy-test")
    body = bytes(range(256)) * 4096  # 1 MiB: botocore sends it with Expect: 100-continue
    s3.put_object(Bucket="proxy-test", Key="a/b.bin", Body=body)
    assert s3.head_object(Bucket="proxy-test", Key="a/b.bin")["ContentLength"] == len(body)
    assert s3.get_object(Bucket="proxy-test", Key="a/b.bin")["Body"].read() == body
    with pytest.raises(ClientError) as err:
        s3.head_object(Bucket="proxy-test", Key="missing")
    assert err.value.response["Error"]["Code"] == "404"


def _model(sm, name, data="s3://proxy-test/model.tar.gz"):
    return sm.create_model(ModelName=name, ExecutionRoleArn=ROLE_ARN,
                           PrimaryContainer={"Image": IMAGE, "ModelDataUrl": data})


def test_creating_an_existing_model_config_or_endpoint_fails_as_on_aws(emulator):
    """moto replaces a model or endpoint config of the same name; AWS refuses (ValidationException), and a rerun
    of the course must not depend on moto's leniency."""
    sm = client(emulator, "sagemaker")
    _model(sm, "twice")
    with pytest.raises(ClientError) as err:
        _model(sm, "twice")
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "Cannot create already existing model" in err.value.response["Error"]["Message"]
    variants = [{"VariantName": "AllTraffic", "ModelName": "twice", "InitialInstanceCount": 1,
                 "InstanceType": "ml.m5.large"}]
    sm.create_endpoint_config(EndpointConfigName="twice-config", ProductionVariants=variants)
    with pytest.raises(ClientError) as err:
        sm.create_endpoint_config(EndpointConfigName="twice-config", ProductionVariants=variants)
    assert "Cannot create already existing endpoint configuration" in err.value.response["Error"]["Message"]


def test_describe_model_leaves_absent_members_out(emulator):
    """moto answers VpcConfig {} for a model created without one; SDK v3's shapes reject that."""
    sm = client(emulator, "sagemaker")
    _model(sm, "no-vpc")
    reply = sm.describe_model(ModelName="no-vpc")
    assert "VpcConfig" not in reply and reply["PrimaryContainer"]["Image"] == IMAGE


def test_update_endpoint_of_an_unknown_endpoint_or_config(emulator):
    sm = client(emulator, "sagemaker")
    with pytest.raises(ClientError) as err:
        sm.update_endpoint(EndpointName="nowhere", EndpointConfigName="none")
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "Could not find endpoint" in err.value.response["Error"]["Message"]


def test_invoking_an_endpoint_that_does_not_exist(emulator):
    runtime = client(emulator, "sagemaker-runtime")
    with pytest.raises(ClientError) as err:
        runtime.invoke_endpoint(EndpointName="nowhere", Body=b"x", ContentType="image/jpeg")
    assert err.value.response["Error"]["Code"] == "ValidationError"
    assert "Endpoint nowhere of account" in err.value.response["Error"]["Message"]


def test_simulate_principal_policy_for_a_known_and_an_unknown_role(emulator):
    iam = client(emulator, "iam")
    iam.create_role(RoleName="SageMakerExecutionRole", AssumeRolePolicyDocument="{}")
    reply = iam.simulate_principal_policy(PolicySourceArn=ROLE_ARN,
                                          ActionNames=["sagemaker:CreateTrainingJob", "s3:GetObject"])
    assert [(r["EvalActionName"], r["EvalDecision"]) for r in reply["EvaluationResults"]] == [
        ("sagemaker:CreateTrainingJob", "allowed"), ("s3:GetObject", "allowed")]
    with pytest.raises(ClientError) as err:
        iam.simulate_principal_policy(PolicySourceArn=f"arn:aws:iam::{ACCOUNT_ID}:role/Nobody",
                                      ActionNames=["s3:GetObject"])
    assert err.value.response["Error"]["Code"] == "NoSuchEntity"


def start_job(sm, name: str, script: str, **extra) -> None:
    """A training job whose container runs ``script`` in bash, as ModelTrainer's jobs run sm_train.sh."""
    sm.create_training_job(
        TrainingJobName=name, RoleArn=ROLE_ARN,
        AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File",
                                "ContainerEntrypoint": ["/bin/bash", "-c"], "ContainerArguments": [script]},
        OutputDataConfig={"S3OutputPath": "s3://proxy-test/out"},
        ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
        StoppingCondition={"MaxRuntimeInSeconds": 600}, **extra)


def wait_job(sm, name: str, seconds: float = 60) -> dict:
    import time

    deadline = time.monotonic() + seconds
    while (job := sm.describe_training_job(TrainingJobName=name))["TrainingJobStatus"] in ("InProgress", "Stopping"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


def members(s3, key: str) -> dict[str, bytes]:
    import io
    import tarfile

    data = s3.get_object(Bucket="proxy-test", Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_a_training_container_gets_sagemakers_layout_and_its_model_comes_back_as_model_tar_gz(emulator):
    """/opt/ml as SageMaker lays it out (input/config/*.json, input/data/<channel>); /opt/ml/model and
    /opt/ml/output/data come back as model.tar.gz and output.tar.gz beside each other; moto alone would say
    Completed at once and run nothing."""
    import json

    sm, s3 = client(emulator, "sagemaker"), client(emulator, "s3")
    if "proxy-test" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket="proxy-test")
    s3.put_object(Bucket="proxy-test", Key="train-data/cat/1.jpg", Body=b"jpeg")
    start_job(sm, "layout", "echo started on $(hostname) && cp /opt/ml/input/config/*.json /opt/ml/model/ && cp -r "
                            "/opt/ml/input/data/train /opt/ml/model/ && echo $TRAINING_JOB_NAME > /opt/ml/output/data/name",
              HyperParameters={"epochs": "1"},
              InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {
                  "S3DataType": "S3Prefix", "S3Uri": "s3://proxy-test/train-data"}}}])
    job = wait_job(sm, "layout")
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    key = job["ModelArtifacts"]["S3ModelArtifacts"].removeprefix("s3://proxy-test/")
    model = members(s3, key)
    assert json.loads(model["hyperparameters.json"]) == {"epochs": "1"}
    resources = json.loads(model["resourceconfig.json"])
    assert (resources["current_host"], resources["hosts"]) == ("algo-1", ["algo-1"])
    assert "train" in json.loads(model["inputdataconfig.json"]) and model["train/cat/1.jpg"] == b"jpeg"
    assert members(s3, key.replace("model.tar.gz", "output.tar.gz")) == {"name": b"layout\n"}
    assert not Path("/opt/ml/model/hyperparameters.json").exists()  # the container's /opt/ml was its own
    # what the container printed is in CloudWatch Logs where the SDK's TrainingJob.wait(logs=True) looks for it
    logs = client(emulator, "logs")
    streams = logs.describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix="layout/")
    [stream] = [s["logStreamName"] for s in streams["logStreams"]]
    assert stream.startswith("layout/algo-1-")
    events = logs.get_log_events(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream)["events"]
    assert [e["message"] for e in events] == ["started on algo-1"]


def test_a_failed_container_makes_the_job_failed_with_its_failure_file(emulator):
    sm = client(emulator, "sagemaker")
    start_job(sm, "fails", "echo 'no images in the train channel' > /opt/ml/output/failure; exit 3")
    job = wait_job(sm, "fails")
    # as on AWS: the failure file and the exit status, not the log (which is in CloudWatch Logs)
    assert (job["TrainingJobStatus"], job["FailureReason"]) == (
        "Failed", "AlgorithmError: no images in the train channel, exit code: 3")
    with pytest.raises(ClientError) as err:  # a second job of that name: AWS refuses, moto would replace it
        start_job(sm, "fails", "true")
    assert err.value.response["Error"]["Code"] == "ResourceInUse"


def test_a_host_that_fails_fails_the_job_and_ends_the_other_hosts(emulator):
    """Two hosts: algo-2 fails at once while algo-1 would wait for it (as torchrun waits for a peer)."""
    sm = client(emulator, "sagemaker")
    sm.create_training_job(
        TrainingJobName="two-hosts", RoleArn=ROLE_ARN,
        AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File",
                                "ContainerEntrypoint": ["/bin/bash", "-c"],
                                "ContainerArguments": ['[ "$(hostname)" = algo-2 ] && exit 4; sleep 300']},
        OutputDataConfig={"S3OutputPath": "s3://proxy-test/out"},
        ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 2, "VolumeSizeInGB": 10},
        StoppingCondition={"MaxRuntimeInSeconds": 600})
    job = wait_job(sm, "two-hosts", 40)
    assert (job["TrainingJobStatus"], job["FailureReason"]) == ("Failed", "AlgorithmError: , exit code: 4")
    assert all(proc.poll() is not None for proc in emulator.trainings["two-hosts"].containers.procs)


def test_stop_training_job_stops_the_container_by_its_pid(emulator):
    """StopTrainingJob (not in moto): Stopping, then Stopped once the container's processes are gone; a job that
    ended cannot be stopped."""
    import time

    sm = client(emulator, "sagemaker")
    start_job(sm, "stopped", "sleep 300")
    while emulator.trainings["stopped"].containers is None or not emulator.trainings["stopped"].containers.procs:
        time.sleep(0.1)
    sm.stop_training_job(TrainingJobName="stopped")
    job = wait_job(sm, "stopped", 30)
    assert job["TrainingJobStatus"] == "Stopped"
    assert all(proc.poll() is not None for proc in emulator.trainings["stopped"].containers.procs)
    with pytest.raises(ClientError) as err:
        sm.stop_training_job(TrainingJobName="stopped")
    assert err.value.response["Error"]["Code"] == "ValidationException"


def test_sagemaker_quotas_are_listed_by_name(emulator):
    sq = client(emulator, "service-quotas")
    quotas = {q["QuotaName"]: q["Value"] for page in sq.get_paginator("list_service_quotas").paginate(
        ServiceCode="sagemaker") for q in page["Quotas"]}
    assert quotas == emulator.quotas and quotas["ml.m5.xlarge for training job usage"] == 1.0


def test_an_endpoint_whose_model_cannot_be_served_goes_creating_then_failed(emulator):
    """CreateEndpoint answers at once; DescribeEndpoint says Creating (too briefly to see here), then Failed with a
    reason (moto alone says InService at once, whatever the model)."""
    import time

    sm = client(emulator, "sagemaker")
    _model(sm, "missing-data", data="s3://proxy-test/no-such-model.tar.gz")
    sm.create_endpoint_config(EndpointConfigName="missing-data", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "missing-data", "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.large"}])
    sm.create_endpoint(EndpointName="missing-data", EndpointConfigName="missing-data")
    deadline = time.monotonic() + 30
    while (status := sm.describe_endpoint(EndpointName="missing-data")["EndpointStatus"]) != "Failed":
        assert status == "Creating" and time.monotonic() < deadline
        time.sleep(0.05)
    assert "no-such-model.tar.gz" in sm.describe_endpoint(EndpointName="missing-data")["FailureReason"]
    sm.delete_endpoint(EndpointName="missing-data")
