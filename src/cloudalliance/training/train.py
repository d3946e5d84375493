"""The training entry script, following SageMaker's training contract.

Run it as ``python -m cloudalliance.training [--flags]`` (SageMaker runs the
``train.py`` shim that calls :func:`main`). It reads:

* data from ``SM_CHANNEL_TRAIN`` (class folders, nested or flat) and, if
  given, ``SM_CHANNEL_TEST``; without a test channel it holds out a stratified
  validation split of the training data;
* ``SM_MODEL_DIR`` for the model, ``SM_OUTPUT_DATA_DIR`` for extra outputs,
  ``SM_CHECKPOINT_DIR`` (default ``/opt/ml/checkpoints``) for checkpoints: a
  rerun resumes after the last finished epoch (what spot training needs);
* ``SM_HOSTS`` / ``SM_CURRENT_HOST`` / ``SM_NUM_GPUS`` for torch.distributed
  (gloo on CPU, nccl on GPU), or ``RANK`` / ``WORLD_SIZE`` as torchrun sets them;
* hyperparameters as command-line flags.

The model folder gets ``model.pt``, ``labels.json``, ``preprocess.json``,
``config.json`` (the resolved configuration) and ``metrics.json`` (per epoch).

:func:`run` reads top to bottom: the training set in one call into the data layer
(:func:`cloudalliance.data.training_set.prepare_training_data`), the model and its recipe
(:func:`create_recipe`: frozen trunk, optimizer, loss, weight average; one
:func:`start_stage` per stage of :func:`stages`), :func:`resume` from a checkpoint,
then per epoch :func:`train_one_epoch`, :func:`evaluate` and a checkpoint, and the
model folder last (:func:`write_model_dir`).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


from ..data.training_set import prepare_training_data
from ..presets import Preprocess
from ..stats import format_accuracy
from .config import CHECKPOINT_NAME, TrainConfig, config_from_args, parse_args
from .recipe import Recipe, Stage, check_within_epoch, create_recipe, evaluate, stage_of, stages, start_stage, train_one_epoch
from .runtime import barrier, create_log, setup_runtime
from ..presets import resolve_preprocess
from .models import WEIGHTS_NORMALIZATION, create_model


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT_NAME
    tmp = folder / f".{CHECKPOINT_NAME}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(folder: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The last checkpoint if it was made with the same configuration (else start over)."""
    import torch

    path = folder / CHECKPOINT_NAME
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    keys = ("arch", "img_size", "batch_size", "lr", "epochs", "seed", "freeze_blocks", "val_fraction", "ema",
            "first_epochs", "first_size")
    if any(state.get("config", {}).get(k) != config.get(k) for k in keys):
        print(f"[train] checkpoint {path} was made with another configuration; starting over", file=sys.stderr)
        return None
    return state


def resume(folder: Path, config: dict[str, Any], recipe: Recipe, log) -> dict[str, Any] | None:
    """Load the last checkpoint made with ``config`` into the recipe; return its state (None: start over)."""
    state = load_checkpoint(folder, config)
    if state is not None:
        recipe.model.load_state_dict(state["model"])
        recipe.optimizer.load_state_dict(state["optimizer"])
        if recipe.ema is not None and state.get("ema"):
            recipe.ema.load_state_dict(state["ema"])
        log(f"resumed from {folder / CHECKPOINT_NAME} after epoch {state['epoch'] + 1}")
    return state


def checkpoint_state(recipe: Recipe, scheduler, stage: Stage, epoch: int, history: list, checks: list,
                     config: dict[str, Any]) -> dict[str, Any]:
    return {"model": recipe.model.state_dict(), "optimizer": recipe.optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "stage": stage.index, "epoch": epoch,
            "ema": recipe.ema.state_dict() if recipe.ema is not None else None,
            "history": history, "checks": checks, "config": config}


def summarize(history: list[dict[str, Any]], checks: list, data_seconds: float, total: float,
              start_epoch: int) -> dict[str, Any]:
    """``metrics.json``: the per-epoch history and the run's totals."""
    train_seconds = sum(h["train_seconds"] for h in history)
    return {
        "history": history,
        "data_load_seconds": data_seconds,
        "epoch_seconds": [h["epoch_seconds"] for h in history],
        "total_seconds": total,
        "images_per_s": (sum(h["train_images"] for h in history) / train_seconds) if train_seconds else 0.0,
        "val_accuracy": history[-1].get("val_accuracy") if history else None,
        "best_val_accuracy": max((h.get("val_accuracy", 0.0) for h in history), default=None),
        "checks": checks,
        "resumed_from_epoch": start_epoch,
    }


def run(cfg: TrainConfig, train_dir: str, model_dir: str, output_dir: str, checkpoint_dir: str,
        test_dir: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train, validate each epoch, checkpoint, and write the model folder; return the metrics."""

    t_start = time.perf_counter()
    rt = setup_runtime(cfg)
    dist, log = rt.dist, create_log(rt.dist)
    if not train_dir:
        raise SystemExit("No training data: set SM_CHANNEL_TRAIN or pass --train DIR")
    data = prepare_training_data(train_dir, test_dir, sorted({st.size for st in stages(cfg)}), cfg.val_fraction,
                                 cfg.seed, cfg.max_train_images, cfg.workers, progress and dist.main, log, cfg.fit)
    n_train, n_val = len(data.train_images[cfg.img_size]), len(data.val_images[cfg.img_size])
    log(f"{n_train} training and {n_val} validation images ({data.validation}), "
        f"decoded in {data.seconds:.1f} s; device {rt.device}, {rt.threads} threads, world size {dist.world}")

    model, weights = create_model(cfg.arch, len(data.classes), cfg.pretrained)
    prep = resolve_preprocess(model, cfg.img_size, normalization=WEIGHTS_NORMALIZATION.get(cfg.arch)
                              if weights.startswith("imagenet (offline") else None, fit=cfg.fit)
    recipe = create_recipe(model, cfg, rt, n_train)
    config = {**cfg.to_dict(), "classes": data.classes, "weights": weights, "preprocess": prep.to_dict(),
              "world_size": dist.world, "device": str(rt.device), "threads": rt.threads,
              "train_images": n_train, "val_images": n_val, "validation": data.validation,
              "amp": str(rt.amp_dtype).replace("torch.", "") if rt.amp_dtype else "off",
              "frozen_layers_engine": getattr(recipe.split, "engine", "none"),
              "train_dir": str(data.train_dir), "test_dir": str(data.test_dir or "")}
    checkpoint_path = Path(checkpoint_dir)
    state = resume(checkpoint_path, config, recipe, log)
    history, checks, start_epoch = (state["history"], state.get("checks", []), state["epoch"] + 1) if state else ([], [], 0)

    scheduler, stage = None, None
    for epoch in range(start_epoch, cfg.epochs):
        if stage is None or stage_of(cfg, epoch).index != stage.index:
            stage = stage_of(cfg, epoch)
            scheduler = start_stage(recipe, stage, epoch, cfg, state, log)
        val_images = data.val_images[stage.size]
        validate = functools.partial(evaluate, recipe, val_images, data.val_labels, prep, stage.size, cfg, rt)
        on_check = functools.partial(check_within_epoch, epoch=epoch, validate=validate, checks=checks,
                                     t_start=t_start, log=log) if len(val_images) else None
        stats = train_one_epoch(recipe.net, data.train_images[stage.size], data.train_labels, recipe.optimizer,
                                scheduler, recipe.criterion, cfg, prep, rt.device, epoch, dist, recipe.frozen, progress,
                                rt.amp_dtype, recipe.ema, recipe.model, cfg.val_checks, on_check)
        stats.update(validate())
        stats.update(epoch=epoch + 1, img_size=stage.size, stage=stage.index)
        stats["epoch_seconds"] = stats["train_seconds"] + stats.get("val_seconds", 0.0)
        stats["elapsed_seconds"] = time.perf_counter() - t_start
        history.append(stats)
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {stats['train_loss']:.4f}, "
            f"val accuracy {format_accuracy(stats.get('val_correct', 0), stats.get('val_images', 0))}, "
            f"{stats['images_per_s']:.1f} img/s, "
            f"{stats['epoch_seconds']:.1f} s")
        if dist.main:
            save_checkpoint(checkpoint_path, checkpoint_state(recipe, scheduler, stage, epoch, history, checks, config))
        barrier(dist)

    total = time.perf_counter() - t_start
    metrics = summarize(history, checks, data.seconds, total, start_epoch)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # every rank says what it trained on (evidence that all of them took part)
    (out / f"rank-{dist.rank}.json").write_text(json.dumps(
        {"rank": dist.rank, "world_size": dist.world, "host": os.environ.get("SM_CURRENT_HOST", ""),
         "steps_per_epoch": recipe.steps_per_epoch,
         "epochs_run": len(history) - len(state["history"] if state else [])}) + "\n")
    if recipe.ema is not None:
        recipe.ema.swap(recipe.model)  # the average is what was validated: save it
    if dist.main:
        write_model_dir(Path(model_dir), recipe.model, data.classes, prep, config, metrics)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log(f"model written to {model_dir} in {total:.1f} s")
    if dist.world > 1:
        import torch.distributed as td

        td.barrier()
        td.destroy_process_group()
    return metrics


def write_model_dir(folder: Path, model, classes: list[str], prep: Preprocess, config: dict[str, Any],
                    metrics: dict[str, Any]) -> None:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, folder / ".model.pt.tmp")
    os.replace(folder / ".model.pt.tmp", folder / "model.pt")
    (folder / "labels.json").write_text(json.dumps(classes) + "\n")
    prep.save(folder)
    (folder / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_from_args(args)
    # inside a SageMaker job (the toolkit sets SM_TRAINING_ENV, the platform TRAINING_JOB_NAME) a progress bar
    # only floods CloudWatch with carriage-return lines
    in_job = bool(os.environ.get("SM_TRAINING_ENV") or os.environ.get("TRAINING_JOB_NAME"))
    try:
        run(cfg, args.train, args.model_dir, args.output_data_dir, args.checkpoint_dir, args.test,
            progress=args.progress == "true" and not in_job)
    except (Exception, SystemExit) as exc:
        # SageMaker reports this file as the job's FailureReason; without it the SDK's driver writes its own, which
        # names only the command that failed (sagemaker/train/container_drivers/common/utils.py, write_failure_file)
        failure = os.environ.get("SM_OUTPUT_FAILURE")
        if failure and in_job:
            Path(failure).write_text(f"{type(exc).__name__}: {exc}"[:900])
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
