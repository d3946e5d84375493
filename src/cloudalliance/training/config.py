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

# Named recipes; flags given beside --preset override its values. Times are for 2 CPU cores with
# the ~7,900 training images of the Intel set (docs/measurements.md, "Training").
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},  # TrainConfig's: 2 epochs at 150 px (= fast), then 3 at 192 px; first 3 blocks frozen
    "fast": {"img_size": 150, "epochs": 2, "first_epochs": 0},
    "best": {"img_size": 224, "epochs": 7},
}


def _hp(default: Any, help: str = "", choices: Sequence[str] | None = None):
    """A hyperparameter: its default, and its flag's help and choices."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass
class TrainConfig:
    """The hyperparameters, declared once: each field is a flag of the entry script (``--img-size``, or
    ``--img_size`` as SageMaker's drivers pass it) and of ``cloudalliance train``, and a key of ``config.json``."""

    arch: str = _hp("efficientnet_lite0", "timm architecture (efficientnet_lite0 has offline weights)")
    pretrained: str = _hp("auto", "ImageNet weights (auto: where they are installed)", ("auto", "yes", "no"))
    epochs: int = _hp(5)
    img_size: int = _hp(192, "image size of the model (of the last stage)")
    first_epochs: int = _hp(2, "of --epochs, how many train first at --first-size with a schedule of their own: a "
                               "good model early, then the rest at --img-size from it (one stage at --img-size with "
                               "0, or where --epochs is not larger or --first-size not smaller)")
    first_size: int = _hp(150)
    batch_size: int = _hp(48, "images per step, over all processes together")
    lr: float = _hp(2e-3, "peak learning rate")
    weight_decay: float = _hp(0.02)
    label_smoothing: float = _hp(0.1)
    warmup_fraction: float = _hp(0.15)
    preset: str = _hp("default", "a named recipe (on 2 cores and the Intel set: fast ~3.5 min, default ~12 min, "
                                 "best longer); other flags override it", sorted(PRESETS))
    ema: float = _hp(0.998, "decay of the weights' moving average used for validation and the saved model (0: off)")
    freeze_blocks: int = _hp(3, "keep the stem and the first N blocks frozen (faster on CPU)")
    inference_engine: str = _hp("auto", "what runs the frozen layers and validation on a CPU (auto: ONNX Runtime "
                                        "where it can)", ("auto", "onnx", "torch"))
    val_fraction: float = _hp(0.1, "held-out validation share when there is no test channel")
    seed: int = _hp(0)
    threads: int = _hp(0, "torch threads (0: all cores)")
    device: str = _hp("auto", choices=("auto", "cpu", "cuda"))
    amp: str = _hp("auto", "mixed precision (auto: on for cuda)", ("auto", "on", "off"))
    val_checks: int = _hp(2, "validations per epoch, the last at its end (finer learning curves and time to accuracy)")
    tta: bool = _hp(True, "horizontal-flip test-time augmentation at evaluation")
    fit: str = _hp(DEFAULT_FIT, "how a non-square image becomes the model's square, in training, evaluation and "
                                "serving alike (saved in preprocess.json)", FITS)
    max_train_images: int = _hp(0, "train on at most this many images (0: all; for quick runs)")
    workers: int = _hp(4, "decoding threads")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _flags(name: str) -> list[str]:
    """``--img-size`` and ``--img_size``: SageMaker's drivers pass hyperparameters with underscores."""
    return ["--" + name.replace("_", "-")] + (["--" + name] if "_" in name else [])


def add_hyperparameter_flags(parser: argparse.ArgumentParser, defaults: TrainConfig | None = None) -> None:
    """One flag per :class:`TrainConfig` field. Without ``defaults`` every flag defaults to None (not given)."""
    for f in dataclasses.fields(TrainConfig):
        default = getattr(defaults, f.name) if defaults else None
        kind = type(f.default)
        if kind is bool:  # true | false, as a SageMaker hyperparameter arrives
            kind, default = str, None if default is None else str(default).lower()
        choices = ["true", "false"] if isinstance(f.default, bool) else f.metadata["choices"]
        parser.add_argument(*_flags(f.name), type=kind, default=default, choices=choices, help=f.metadata["help"])


def build_parser(preset: str = "default") -> argparse.ArgumentParser:
    """The entry script's flags: the hyperparameters with ``preset``'s values, and the contract's folders."""
    p = argparse.ArgumentParser(prog="cloudalliance.training", description="Train a scene classifier.")
    add_hyperparameter_flags(p, dataclasses.replace(TrainConfig(), preset=preset, **PRESETS[preset]))
    # the folders SageMaker's contract names, overridable for runs outside SageMaker
    for name, env, default in (("train", "SM_CHANNEL_TRAIN", None), ("test", "SM_CHANNEL_TEST", None),
                               ("model_dir", "SM_MODEL_DIR", "/opt/ml/model"),
                               ("output_data_dir", "SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"),
                               ("checkpoint_dir", "SM_CHECKPOINT_DIR", DEFAULT_CHECKPOINT_DIR)):
        p.add_argument(*_flags(name), default=os.environ.get(env, default))
    p.add_argument("--progress", default="true", choices=["true", "false"])
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
