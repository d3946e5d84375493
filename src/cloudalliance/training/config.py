"""The hyperparameters: :class:`TrainConfig` is their one declaration, and the script's flags are built from it.

Each field is a flag of the entry script, ``--img-size`` or, as SageMaker's drivers pass them, ``--img_size``;
its ``help`` lives in the field's metadata. ``--preset`` picks a named recipe whose values the other flags override.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Sequence


from ..presets import DEFAULT_FIT, FITS


DEFAULT_CHECKPOINT_DIR = "/opt/ml/checkpoints"


CHECKPOINT_NAME = "last.pt"


@dataclasses.dataclass
class TrainConfig:
    arch: str = "efficientnet_lite0"
    pretrained: str = "auto"
    epochs: int = 5
    img_size: int = 192
    first_epochs: int = 2  # the first N epochs train at first_size with their own schedule (0: one stage)
    first_size: int = 150
    batch_size: int = 48
    lr: float = 2e-3
    weight_decay: float = 0.02
    label_smoothing: float = 0.1
    warmup_fraction: float = 0.15
    preset: str = "default"
    ema: float = 0.998  # weight moving-average decay (0: off); validation and the saved model use the average
    freeze_blocks: int = 3
    inference_engine: str = "auto"  # runs frozen layers and validation on a CPU: auto (ONNX Runtime) | onnx | torch
    val_fraction: float = 0.1
    seed: int = 0
    threads: int = 0  # 0: all cores
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto (on for cuda) | on | off
    val_checks: int = 2  # validations per epoch (the last at its end): finer learning curves, time to accuracy
    tta: bool = True  # horizontal-flip test-time augmentation at evaluation
    fit: str = DEFAULT_FIT  # non-square images: squash | crop | pad (presets.FITS); saved in preprocess.json
    max_train_images: int = 0  # 0: all (for quick runs)
    workers: int = 4  # decoding threads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Named recipes; flags given beside --preset override its values. Times are for 2 CPU cores with
# the ~7,900 training images of the Intel set (see the README's training section).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},  # TrainConfig's: 2 epochs at 150 px (= fast), then 3 at 192 px; first 3 blocks frozen
    "fast": {"img_size": 150, "epochs": 2, "first_epochs": 0},
    "best": {"img_size": 224, "epochs": 7},
}


def build_parser(preset: str = "default") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloudalliance.training", description="Train a scene classifier.")

    def add(flag: str, **kwargs):
        # SageMaker's drivers pass hyperparameters as --name_with_underscores: accept both spellings
        underscored = "--" + flag[2:].replace("-", "_")
        return p.add_argument(*([flag, underscored] if underscored != flag else [flag]), **kwargs)

    d = dataclasses.replace(TrainConfig(), **PRESETS[preset])
    add("--preset", default=preset, choices=sorted(PRESETS),
        help="a named recipe (on 2 cores and the Intel set: fast ~3.5 min, default ~12 min, best longer); "
             "other flags override it")
    add("--arch", default=d.arch, help="timm architecture (efficientnet_lite0 has offline weights)")
    add("--pretrained", default=d.pretrained, choices=["auto", "yes", "no"])
    add("--epochs", type=int, default=d.epochs)
    add("--img-size", type=int, default=d.img_size, help="image size of the model (of the last stage)")
    add("--first-epochs", type=int, default=d.first_epochs,
        help="of --epochs, how many train first at --first-size with a schedule of their own: a good model "
             "early, then the rest at --img-size from it (one stage at --img-size with 0, or where --epochs "
             "is not larger or --first-size not smaller)")
    add("--first-size", type=int, default=d.first_size)
    add("--batch-size", type=int, default=d.batch_size, help="images per step, over all processes together")
    add("--lr", type=float, default=d.lr)
    add("--weight-decay", type=float, default=d.weight_decay)
    add("--label-smoothing", type=float, default=d.label_smoothing)
    add("--warmup-fraction", type=float, default=d.warmup_fraction)
    add("--ema", type=float, default=d.ema,
        help="decay of the weights' moving average used for validation and the saved model (0: off)")
    add("--freeze-blocks", type=int, default=d.freeze_blocks,
                   help="keep the stem and the first N blocks frozen (faster on CPU)")
    add("--inference-engine", default=d.inference_engine, choices=["auto", "onnx", "torch"],
        help="what runs the frozen layers and validation on a CPU (auto: ONNX Runtime where it can)")
    add("--val-fraction", type=float, default=d.val_fraction,
                   help="held-out validation share when there is no test channel")
    add("--seed", type=int, default=d.seed)
    add("--threads", type=int, default=d.threads, help="torch threads (0: all cores)")
    add("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    add("--amp", default=d.amp, choices=["auto", "on", "off"])
    add("--val-checks", type=int, default=d.val_checks,
        help="validations per epoch, the last at its end (finer learning curves and time to accuracy)")
    add("--tta", default=str(d.tta).lower(), choices=["true", "false"])
    add("--fit", default=d.fit, choices=list(FITS),
        help="how a non-square image becomes the model's square, in training, evaluation and serving alike")
    add("--max-train-images", type=int, default=d.max_train_images)
    add("--workers", type=int, default=d.workers)
    # the contract's folders, overridable for runs outside SageMaker
    add("--train", default=os.environ.get("SM_CHANNEL_TRAIN"))
    add("--test", default=os.environ.get("SM_CHANNEL_TEST"))
    add("--model-dir", default=os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    add("--output-data-dir", default=os.environ.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"))
    add("--checkpoint-dir", default=os.environ.get("SM_CHECKPOINT_DIR", DEFAULT_CHECKPOINT_DIR))
    add("--progress", default="true", choices=["true", "false"])
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the flags, with the defaults of the ``--preset`` they name."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--preset", default="default")
    preset = first.parse_known_args(argv)[0].preset
    if preset not in PRESETS:
        raise SystemExit(f"Unknown --preset {preset!r}; choose one of: {', '.join(sorted(PRESETS))}")
    return build_parser(preset).parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["tta"] = str(values.get("tta", "true")).lower() == "true"
    cfg = TrainConfig(**values)
    for name in ("epochs", "img_size", "batch_size", "val_checks"):
        if getattr(cfg, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.first_epochs < 0 or cfg.first_size < 1:
        raise SystemExit("--first-epochs must be at least 0 and --first-size at least 1")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise SystemExit("--val-fraction must be in [0, 1)")
    return cfg
