"""The command line: train, evaluate and list the instance profiles (notebooks 03 and 04)."""

from __future__ import annotations

import argparse
import dataclasses

from .common import _print_json


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.launch import run_local
    from ..training.results import training_record
    from ..records import write_record

    hp = hyperparameters(args)
    result = run_local(args.train_dir, args.model_dir, args.profile, hp, test_dir=args.test_dir,
                       checkpoint_dir=args.checkpoint_dir, progress=not args.json)
    record = training_record(result)
    if args.record_dir:
        write_record(args.record_dir, record)
    summary = {"model_dir": str(result.model_dir), "instance": result.instance,
               "wall_seconds": round(result.wall_seconds, 2), "val_accuracy": result.metrics.get("val_accuracy"),
               "images_per_s": round(result.metrics.get("images_per_s", 0.0), 2),
               "data_load_seconds": round(result.metrics.get("data_load_seconds", 0.0), 2),
               "epochs": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()}
                          for h in result.history]}
    if args.json:
        _print_json(summary)
    else:
        print(f"trained on {result.instance} in {result.wall_seconds:.1f} s: validation accuracy "
              f"{summary['val_accuracy']:.4f}, {summary['images_per_s']} images/s; model in {result.model_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate, write_json

    result = evaluate(args.model_dir, args.data_dir, split=None if args.split == "auto" else args.split,
                      device=args.device, progress=not args.quiet, engine=args.engine)
    if args.json:
        write_json(result, args.json)
    print(f"accuracy {result.accuracy_text()} "
          f"(macro F1 {result.macro_f1():.4f}, {len(result.labels) / max(result.predict_seconds, 1e-9):.0f} images/s)")
    for cls, v in result.per_class().items():
        print(f"  {cls:<10} precision {v['precision']:.3f}  recall {v['recall']:.3f}  f1 {v['f1']:.3f}  n={v['support']}")
    if result.skipped:
        print(f"  left out {len(result.skipped)} unreadable files")
    return 0


def cmd_instances(args: argparse.Namespace) -> int:
    from ..training.launch import local_profiles
    from ..bench.prices import TRAINING_PER_HOUR

    for p in local_profiles().values():
        print(f"{p.name:<14} local  {p.description}")
    for name, price in TRAINING_PER_HOUR.items():
        print(f"{name:<14} aws    ${price:.3f}/h (SageMaker training, us-east-1)")
    return 0


def hyperparameters(args: argparse.Namespace) -> dict:
    """The hyperparameter flags given on the command line (the others keep the preset's value)."""
    from ..training.config import TrainConfig

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}


def _add_training_run_args(p: argparse.ArgumentParser) -> None:
    """Where the data and the model are, the local profile, and one flag per hyperparameter (``TrainConfig``)."""
    from ..training.config import add_hyperparameter_flags

    p.add_argument("--train-dir", required=True, help="class folders (Kaggle layout, nested or flat)")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--test-dir", help="labeled folder to validate on (default: a held-out split of --train-dir)")
    p.add_argument("--profile", default="local-2cpu", help="local instance profile (cloudalliance instances)")
    p.add_argument("--checkpoint-dir", help="default: <model-dir>-checkpoints; a rerun resumes from it")
    add_hyperparameter_flags(p)


def register(sub) -> None:
    """The `train` subcommands, each next to its handler above."""
    p = sub.add_parser("train", help="train with the SageMaker entry script in local processes")
    _add_training_run_args(p)
    p.add_argument("--record-dir", help="also write the training record here (runs/<id>/records)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", help="accuracy and per-class figures of a model on labeled images")
    p.add_argument("--model-dir", required=True, help="model folder or model.tar.gz")
    p.add_argument("--data-dir", required=True, help="Kaggle root, seg_test folder, or flat class folders")
    p.add_argument("--split", default="test", choices=["test", "train", "auto"],
                   help="which split of a Kaggle root (auto: DATA_DIR holds the class folders)")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--engine", default="auto", choices=["auto", "onnx", "torch"],
                   help="on a CPU: auto scores with ONNX Runtime where it can (same weights, faster)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("instances", help="local instance profiles and priced SageMaker instance types")
    p.set_defaults(func=cmd_instances)
