import json

import numpy as np
import pytest

from cloudalliance.bench import prices
from cloudalliance.data import folders
from cloudalliance.training import launch, results
from cloudalliance.training import config, recipe, runtime
from cloudalliance.evaluation import EvaluationResult


def test_stratified_split_holds_out_every_class_reproducibly():
    labels = np.repeat(np.arange(6), [50, 40, 30, 20, 10, 3])
    train, val = folders.stratified_split(labels, 0.1, seed=3)
    assert not set(train) & set(val) and len(train) + len(val) == len(labels)
    assert sorted(np.unique(labels[val])) == list(range(6)), "every class is in the validation split"
    assert [int((labels[val] == k).sum()) for k in range(6)] == [5, 4, 3, 2, 1, 1]
    again = folders.stratified_split(labels, 0.1, seed=3)
    assert (again[1] == val).all()
    assert not (folders.stratified_split(labels, 0.1, seed=4)[1] == val).all()


def test_batches_shard_one_permutation_across_ranks():
    one = [b for b in runtime.batches(20, 4, seed=1, epoch=0, dist=runtime.Dist())]
    assert sorted(np.concatenate(one)) == list(range(20))
    r0 = np.concatenate(list(runtime.batches(20, 4, 1, 0, runtime.Dist(0, 2))))
    r1 = np.concatenate(list(runtime.batches(20, 4, 1, 0, runtime.Dist(1, 2))))
    assert not set(r0) & set(r1) and len(r0) == len(r1) == 8  # 10 each, drop_last to 8
    assert not np.array_equal(np.concatenate(one), np.concatenate(list(runtime.batches(20, 4, 1, 1, runtime.Dist()))))


@pytest.mark.parametrize("env, expected", [
    ({}, (0, 1)),
    ({"SM_HOSTS": '["algo-1","algo-2"]', "SM_CURRENT_HOST": "algo-2"}, (1, 2)),
    ({"SM_HOSTS": '["algo-1"]', "SM_CURRENT_HOST": "algo-1"}, (0, 1)),
    ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}, (3, 4)),
])
def test_rank_and_world_from_the_contract(env, expected):
    d = runtime.dist_from_env(env)
    assert (d.rank, d.world) == expected


def test_sagemaker_style_hyperparameters_parse():
    """SageMaker's v3 driver passes hyperparameters as --name_with_underscores value."""
    from sagemaker.train.container_drivers.common.utils import hyperparameters_to_cli_args

    argv = hyperparameters_to_cli_args({"img_size": "96", "epochs": "2", "freeze_blocks": "1", "tta": "false"})
    cfg = config.config_from_args(config.build_parser().parse_args(argv))
    assert (cfg.img_size, cfg.epochs, cfg.freeze_blocks, cfg.tta) == (96, 2, 1, False)
    assert launch.hyperparameter_flags({"img_size": 96, "tta": True, "skip": None}) == ["--img-size", "96", "--tta", "true"]
    with pytest.raises(SystemExit):
        config.config_from_args(config.build_parser().parse_args(["--epochs", "0"]))


def test_augment_keeps_shape_and_changes_pixels():
    import torch

    x = torch.randint(0, 255, (4, 32, 32, 3), dtype=torch.uint8)
    out = recipe.augment(x, torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 32, 32)
    assert not torch.equal(out, x.permute(0, 3, 1, 2).float())


def test_offline_weights_load_and_unknown_arch_names_choices():
    import torch

    from cloudalliance.training.models import ModelError, _offline_state_dict, create_model

    model, source = create_model("efficientnet_lite0", 6)
    assert "offline" in source and model.classifier.out_features == 6
    stem = next(iter(_offline_state_dict("efficientnet_lite0").values()))
    assert torch.equal(model.conv_stem.weight, stem)
    with pytest.raises(ModelError, match="Unknown arch 'resnet_nope'; choose one of"):
        create_model("resnet_nope", 6)


def test_pretrained_yes_without_network_is_a_clear_error(monkeypatch):
    import timm

    from cloudalliance.training.models import ModelError, create_model

    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("network unreachable")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ModelError, match="need the internet"):
        create_model("mobilenetv3_small_050", 6, pretrained="yes")
    model, source = create_model("mobilenetv3_small_050", 6, pretrained="auto")
    assert source.startswith("random")


def test_costs():
    assert prices.training_cost("ml.m5.xlarge", 3600)["usd"] == pytest.approx(0.23)
    assert prices.training_cost("ml.c5.4xlarge", 1800, count=2)["usd"] == pytest.approx(0.816)
    assert prices.training_cost("ml.x9.huge", 10)["usd"] is None
    local = prices.training_cost("local-2cpu", 3600)
    assert local["usd"] == 0.0 and local["equivalent_usd"] == pytest.approx(0.115)


def test_evaluation_figures():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    result = EvaluationResult(["a", "b"], ["w", "x", "y", "z"], np.array([0, 1, 1, 0]), probs, 0.1, 0.1, [])
    assert result.accuracy == 0.5
    assert result.confusion().tolist() == [[1, 1], [1, 1]]
    assert result.per_class()["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert [m["file"] for m in result.mistakes()] == ["y", "z"]  # 0.7 before 0.6
    json.dumps(result.to_dict())


def test_time_to_accuracy_reads_the_history():
    metrics = {"history": [{"epoch": 1, "val_accuracy": 0.88, "elapsed_seconds": 170.0, "train_seconds": 150.0,
                            "val_seconds": 10.0},
                           {"epoch": 2, "val_accuracy": 0.925, "elapsed_seconds": 330.0, "train_seconds": 150.0,
                            "val_seconds": 10.0}],
               "val_accuracy": 0.925, "best_val_accuracy": 0.925, "images_per_s": 44.0, "data_load_seconds": 6.0,
               "total_seconds": 335.0}
    got = results.time_to_accuracy(metrics, 0.92)
    assert (got["seconds_to_target"], got["epoch_to_target"], got["train_seconds"]) == (330.0, 2, 300.0)
    assert results.time_to_accuracy(metrics, 0.95)["seconds_to_target"] is None
    metrics["checks"] = [{"epoch": 0.5, "val_accuracy": 0.8, "elapsed_seconds": 90.0},
                         {"epoch": 1.5, "val_accuracy": 0.921, "elapsed_seconds": 250.0}]
    got = results.time_to_accuracy(metrics, 0.92)
    assert (got["seconds_to_target"], got["epoch_to_target"]) == (250.0, 1.5), "a check within an epoch counts"


def test_presets_set_defaults_and_flags_override_them():
    fast = config.config_from_args(config.parse_args(["--preset", "fast"]))
    default = config.config_from_args(config.parse_args([]))
    assert fast.preset == "fast" and default.preset == "default"
    for name, value in config.PRESETS["fast"].items():
        assert getattr(fast, name) == value
    assert fast.to_dict() != default.to_dict() or not config.PRESETS["fast"]
    tuned = config.config_from_args(config.parse_args(["--preset", "fast", "--epochs", "7", "--img_size", "99"]))
    assert (tuned.epochs, tuned.img_size) == (7, 99)
    with pytest.raises(SystemExit, match="Unknown --preset 'huge'"):
        config.parse_args(["--preset", "huge"])


@pytest.mark.parametrize("engine", ["onnx", "torch"])
def test_split_model_matches_the_whole_model_and_trains_only_the_rest(engine):
    import torch

    from cloudalliance.training.models import create_model

    torch.manual_seed(0)
    model, _ = create_model("efficientnet_lite0", 6, pretrained="no")
    with torch.no_grad():  # a non-zero head so the outputs differ between images
        model.classifier.weight.normal_(0, 0.1)
    recipe.freeze_blocks(model, 3)
    net = recipe.split_model(model, 3, engine, torch.device("cpu"), threads=1)
    assert net.engine == ("onnxruntime" if engine == "onnx" else "torch")
    x = torch.randn(3, 3, 64, 64)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-4)
    net.train()
    net(x).sum().backward()
    assert model.blocks[0][0].conv_dw.weight.grad is None, "the trunk is frozen"
    assert model.blocks[3][0].conv_pw.weight.grad is not None and model.classifier.weight.grad is not None
    assert recipe.split_model(model, 0, engine, torch.device("cpu"), 1) is model


def test_weight_ema_follows_the_weights_and_swaps_back():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema = recipe.WeightEma(model, decay=0.9)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    for _ in range(3):
        ema.update(model)
    avg = ema.shadow["0.weight"].clone()
    assert torch.all(avg > start["0.weight"]) and torch.all(avg < model[0].weight), "between start and now"
    assert "1.num_batches_tracked" not in ema.shadow, "integer buffers are not averaged"
    live = model[0].weight.detach().clone()
    ema.swap(model)
    assert torch.equal(model[0].weight, avg) and torch.equal(ema.shadow["0.weight"], live)
    ema.swap(model)
    assert torch.equal(model[0].weight, live)
    again = recipe.WeightEma(model, 0.9)
    again.load_state_dict(ema.state_dict())
    assert again.steps == 3 and torch.equal(again.shadow["0.weight"], ema.shadow["0.weight"])


def test_the_default_schedule_is_the_fast_preset_then_a_larger_size():
    default = config.config_from_args(config.parse_args([]))
    fast = config.config_from_args(config.parse_args(["--preset", "fast"]))
    first, second = recipe.stages(default)
    (only,) = recipe.stages(fast)
    assert (first.epochs, first.size, first.lr) == (only.epochs, only.size, only.lr), "stage 1 is the fast preset"
    assert second.first_epoch == first.epochs and second.size == default.img_size > first.size
    assert first.epochs + second.epochs == default.epochs and second.lr < first.lr
    assert [recipe.stage_of(default, e).index for e in range(default.epochs)] == [0] * first.epochs + [1] * second.epochs
    for flags in (["--epochs", "2"], ["--img-size", "128"], ["--first-epochs", "0"]):  # no room for two stages
        (one,) = recipe.stages(config.config_from_args(config.parse_args(flags)))
        assert one.size == (128 if "128" in flags else default.img_size) and one.lr == default.lr
    with pytest.raises(SystemExit, match="--first-epochs must be at least 0"):
        config.config_from_args(config.parse_args(["--first-epochs", "-1"]))
