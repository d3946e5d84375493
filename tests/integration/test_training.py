"""The training entry script and evaluation, for real, on tiny synthetic data (CPU)."""

import json
import signal
import subprocess
import sys
import time

import pytest

from cloudalliance.training import launch
from cloudalliance.cli import main as cli

TINY = {"epochs": 1, "img_size": 48, "batch_size": 8}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_root):
    out = tmp_path_factory.mktemp("trained")
    result = launch.run_local(synthetic_root / "seg_train" / "seg_train", out / "model", "local-2cpu", TINY,
                              test_dir=synthetic_root / "seg_test", progress=False)
    return result


def test_model_folder_follows_the_artifact_contract(trained):
    names = sorted(p.name for p in trained.model_dir.iterdir())
    assert names == ["config.json", "labels.json", "metrics.json", "model.pt", "preprocess.json"]
    assert json.loads((trained.model_dir / "labels.json").read_text())[0] == "buildings"
    prep = json.loads((trained.model_dir / "preprocess.json").read_text())
    assert prep["size"] == 48 and len(prep["mean"]) == 3
    config = json.loads((trained.model_dir / "config.json").read_text())
    assert config["weights"].startswith("imagenet") and config["validation"].startswith("test channel")
    history = trained.metrics["history"]
    assert len(history) == 1 and 0.0 <= history[0]["val_accuracy"] <= 1.0
    assert trained.metrics["data_load_seconds"] > 0 and trained.metrics["images_per_s"] > 0
    # the default recipe: frozen trunk in ONNX Runtime, weight average, a validation within the epoch
    assert config["freeze_blocks"] == 3 and config["frozen_layers_engine"] == "onnxruntime" and config["ema"] > 0
    assert [c["epoch"] for c in trained.metrics["checks"]] == [0.5]
    assert trained.metrics["checks"][0]["elapsed_seconds"] < history[0]["elapsed_seconds"]


def test_saved_model_is_the_validated_weight_average(trained, synthetic_root):
    """evaluate on the test channel must give the accuracy training reported for it (same weights, same TTA)."""
    from cloudalliance.evaluation import evaluate

    result = evaluate(trained.model_dir, synthetic_root / "seg_test", split=None, progress=False)
    # training scored with ONNX Runtime, evaluate with PyTorch: at most one near-tie may fall the other way
    assert result.accuracy == pytest.approx(trained.metrics["val_accuracy"], abs=1.5 / len(result.labels))


def test_training_record(trained):
    rec = launch.training_record(trained)
    assert rec.stage == "training" and rec.instance == "local-2cpu"
    assert rec.timings["epoch_s"] and rec.metrics["history"][0]["epoch"] == 1
    assert rec.cost["usd"] == 0.0 and rec.cost["equivalent_usd"] > 0
    assert len(rec.load["start"]) == 3, "run_local notes the load average as training starts"


def test_evaluate_cli_writes_accuracy_and_per_class(trained, synthetic_root, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert cli(["evaluate", "--model-dir", str(trained.model_dir), "--data-dir", str(synthetic_root),
                "--json", str(out), "--quiet"]) == 0
    figures = json.loads(out.read_text())
    assert 0.0 <= figures["accuracy"] <= 1.0 and figures["images"] == 18
    assert set(figures["per_class"]) == {"buildings", "forest", "glacier", "mountain", "sea", "street"}
    # flat class folders give the same answer
    flat = tmp_path / "flat.json"
    assert cli(["evaluate", "--model-dir", str(trained.model_dir), "--data-dir",
                str(synthetic_root / "seg_test" / "seg_test"), "--split", "auto", "--json", str(flat), "--quiet"]) == 0
    assert json.loads(flat.read_text())["accuracy"] == figures["accuracy"]
    assert "accuracy" in capsys.readouterr().out


def test_train_cli_and_bad_input(synthetic_root, tmp_path, capsys):
    assert cli(["train", "--train-dir", str(synthetic_root / "seg_train"), "--model-dir", str(tmp_path / "m"),
                "--epochs", "1", "--img-size", "32", "--max-train-images", "24", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"][0]["epoch"] == 1 and "val_accuracy" in summary
    assert cli(["train", "--train-dir", str(tmp_path / "nope"), "--model-dir", str(tmp_path / "m2")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli(["train", "--train-dir", str(synthetic_root), "--model-dir", str(tmp_path / "m3"),
                "--profile", "local-64gpu"]) == 1
    assert "choose one of: local-1cpu" in capsys.readouterr().err


def test_a_killed_run_resumes_from_its_checkpoint(synthetic_root, tmp_path):
    ckpt = tmp_path / "ckpt"
    argv = [sys.executable, "-m", "cloudalliance.training", "--train", str(synthetic_root / "seg_train"),
            "--model-dir", str(tmp_path / "model"), "--output-data-dir", str(tmp_path / "out"),
            "--checkpoint-dir", str(ckpt), "--epochs", "3", "--img-size", "32", "--batch-size", "8",
            "--threads", "1", "--progress", "false"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (ckpt / "last.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (ckpt / "last.pt").exists(), "the first epoch wrote a checkpoint"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] >= 1
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert "resumed from" in done.stderr


def test_two_process_distributed_training(synthetic_root, tmp_path):
    """Two local processes under torch.distributed (gloo): both train, rank 0 saves the model."""
    result = launch.run_local(synthetic_root / "seg_train", tmp_path / "model", "local-2proc",
                              {"epochs": 1, "img_size": 32, "batch_size": 4}, progress=False,
                              output_dir=tmp_path / "out")
    ranks = [json.loads((tmp_path / "out" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    assert {r["host"] for r in ranks} == {"algo-1", "algo-2"}
    assert all(r["steps_per_epoch"] > 0 and r["epochs_run"] == 1 for r in ranks)
    assert result.config["world_size"] == 2
    assert (tmp_path / "model" / "model.pt").is_file()
    seen = result.metrics["history"][0]["train_images"]
    assert seen == 2 * ranks[0]["steps_per_epoch"] * 2, "each rank takes half the batch; both are counted"


def test_the_same_seed_gives_the_same_model(synthetic_root, tmp_path):
    """Two runs with one seed: the same validation accuracy and (nearly) the same weights; another seed differs."""
    import torch

    def once(name, seed):
        return launch.run_local(synthetic_root / "seg_train", tmp_path / name, "local-2cpu",
                                {**TINY, "seed": seed, "max_train_images": 96}, progress=False)

    a, b, c = once("a", 1), once("b", 1), once("c", 2)
    assert a.metrics["val_accuracy"] == pytest.approx(b.metrics["val_accuracy"], abs=0.003)
    wa, wb, wc = (torch.load(r.model_dir / "model.pt")["classifier.weight"] for r in (a, b, c))
    assert torch.allclose(wa, wb, atol=1e-5) and not torch.allclose(wa, wc, atol=1e-3)
