"""The recipe: transfer learning from ImageNet weights with a frozen trunk, AdamW, label smoothing, a
moving average of the weights, and one cosine cycle per image-size stage; the training step and validation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from typing import Any, Sequence

import numpy as np

from .onnxrt import onnx_copy_or_none
from ..presets import Preprocess
from ..stats import format_accuracy
from .config import TrainConfig
from .runtime import Dist, Runtime, batches, rank_batch
from ..presets import normalize


@dataclasses.dataclass
class Stage:
    index: int
    first_epoch: int
    epochs: int
    size: int
    lr: float


def stages(cfg: TrainConfig) -> list[Stage]:
    """The schedule: with ``first_epochs``, a short stage at ``first_size`` that ends annealed (a good
    model early: the ``fast`` preset), then the rest at ``img_size`` from it, with a peak learning rate
    half as high (it starts from a trained model, not from ImageNet's). One stage at ``img_size`` where
    there is no room for two: ``epochs`` not above ``first_epochs``, or ``first_size`` not below ``img_size``."""
    if not 0 < cfg.first_epochs < cfg.epochs or cfg.first_size >= cfg.img_size:
        return [Stage(0, 0, cfg.epochs, cfg.img_size, cfg.lr)]
    return [Stage(0, 0, cfg.first_epochs, cfg.first_size, cfg.lr),
            Stage(1, cfg.first_epochs, cfg.epochs - cfg.first_epochs, cfg.img_size, cfg.lr / 2)]


def stage_of(cfg: TrainConfig, epoch: int) -> Stage:
    return next(st for st in reversed(stages(cfg)) if epoch >= st.first_epoch)


def augment(x, generator):
    """Random horizontal flips and small shifts (reflect-pad 8 % then crop back), on a uint8 NHWC batch."""
    import torch
    import torch.nn.functional as F

    n, h, w, _ = x.shape
    x = x.permute(0, 3, 1, 2).float()
    flip = torch.rand(n, generator=generator) < 0.5
    x[flip] = x[flip].flip(-1)
    pad = max(1, int(round(0.08 * h)))
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=generator))
    return x[:, :, dy:dy + h, dx:dx + w]


def freeze_blocks(model, n: int) -> int:
    """Freeze the stem and the first ``n`` blocks (timm EfficientNet/MobileNet layout); return frozen params."""
    if n <= 0:
        return 0
    parts = [getattr(model, name) for name in ("conv_stem", "bn1") if hasattr(model, name)]
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise SystemExit(f"--freeze-blocks needs a model with .blocks; {type(model).__name__} has none")
    parts += list(blocks[:n])
    frozen = 0
    for part in parts:
        part.eval()
        for p in part.parameters():
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def split_model(model, k: int, engine: str, device, threads: int):
    """``model`` itself when nothing is frozen, else the model as a frozen trunk (stem + first ``k``
    blocks, run without gradients) feeding the trained rest.

    On a CPU the trunk runs in ONNX Runtime (``engine`` auto|onnx; torch keeps it in PyTorch), about
    six times faster than PyTorch's depthwise convolutions there (efficientnet_lite0, 150 px, 2 cores:
    1,160 against 173 images/s for the stem and 2 blocks), so freezing early blocks saves their
    forward pass too, not only their backward one. The saved model is the whole network, unchanged.
    """
    import torch

    if k <= 0 or not hasattr(model, "blocks"):
        return model
    trunk = torch.nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:k])
    fast = onnx_copy_or_none(trunk, 64, engine, device.type, threads, dynamic_size=True)

    class SplitNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.engine = "onnxruntime" if fast is not None else "torch"

        def forward(self, x):
            with torch.no_grad():
                f = trunk(x) if fast is None else fast(x).contiguous(memory_format=torch.channels_last)
            return model.forward_head(model.bn2(model.conv_head(model.blocks[k:](f))))

    return SplitNet()


class WeightEma:
    """An exponential moving average of the model's float state (weights and BatchNorm statistics).

    Validation and the saved model use the average: it is steadier than the last step's weights,
    most of all early on, while the learning rate is still high. The decay ramps up as
    ``(1 + step) / (10 + step)`` so the first steps are not drowned by the initial weights.

    The same idea as timm's ``ModelEmaV3`` and torch's ``swa_utils.AveragedModel``; kept because their
    decay warm-up differs (``ModelEmaV3``: ``1 - (1 + step / gamma) ** -power``), which would change the
    recipe's numbers, and ``swap`` exchanges the average with the live model instead of keeping a second module.
    Measured (efficientnet_lite0, 1 CPU thread, 30 updates): ours 2.1 ms per update, ``ModelEmaV3`` 2.7 ms,
    and the averages differ by up to 0.05 after those 30 steps.
    """

    def __init__(self, model, decay: float):
        self.decay, self.steps = decay, 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.dtype.is_floating_point}

    def update(self, model) -> None:
        import torch

        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        with torch.no_grad():
            state = model.state_dict()
            for k, v in self.shadow.items():
                v.lerp_(state[k], 1.0 - d)

    def swap(self, model) -> None:
        """Exchange the model's float state with the average (call again to swap back)."""
        import torch

        with torch.no_grad():
            state = model.state_dict()
            for k, v in self.shadow.items():
                tmp = state[k].clone()
                state[k].copy_(v)
                v.copy_(tmp)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "steps": self.steps, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay, self.steps = state["decay"], state["steps"]
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


def train_one_epoch(model, images: np.ndarray, labels: np.ndarray, optimizer, scheduler, criterion, cfg: TrainConfig,
                    prep: Preprocess, device, epoch: int, dist: Dist, frozen: Sequence = (), progress: bool = True,
                    amp_dtype=None, ema: WeightEma | None = None, ema_model=None, checks: int = 1,
                    on_check=None) -> dict[str, float]:
    """One pass over this rank's share of the training images; returns loss and images/s.

    With ``checks`` > 1, ``on_check(fraction_of_epoch)`` runs ``checks - 1`` times at even steps within
    the epoch (the caller validates at its end); the time it takes is not counted as training time.
    """
    import torch
    from tqdm.auto import tqdm

    def train_mode() -> None:
        model.train()
        for part in frozen:  # frozen layers keep their BatchNorm statistics
            part.eval()

    train_mode()
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch * 10 + dist.rank)
    steps = list(batches(len(images), rank_batch(cfg, dist), cfg.seed, epoch, dist))
    total_loss, seen, correct = 0.0, 0, 0
    check_steps = {round(len(steps) * i / checks) for i in range(1, checks)} - {0, len(steps)} if on_check else set()
    t0, paused = time.perf_counter(), 0.0
    # on a terminal the bar redraws every second; into a pipe (a notebook's kernel, a log file) every 30 s, so a
    # saved notebook or log keeps a few lines of it rather than one fragment per batch
    bar = tqdm(steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not (progress and dist.main),
               mininterval=1.0 if sys.stderr.isatty() else 30.0)
    for step, idx in enumerate(bar, 1):
        xb = augment(torch.from_numpy(images[idx]), gen).div_(255.0)
        xb = normalize(xb, prep).to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        yb = torch.from_numpy(labels[idx]).to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(xb)
            loss = criterion(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(ema_model)
        total_loss += float(loss.detach()) * len(idx)
        correct += int((logits.argmax(1) == yb).sum())
        seen += len(idx)
        rate = seen * dist.world / (time.perf_counter() - t0 - paused)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", img_s=f"{rate:.1f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                        refresh=False)  # drawn at the bar's own interval, not once per batch
        if step in check_steps:
            t_check = time.perf_counter()
            on_check(step / len(steps))
            train_mode()
            paused += time.perf_counter() - t_check
    bar.close()
    seconds = time.perf_counter() - t0 - paused
    stats = torch.tensor([total_loss, seen, correct], dtype=torch.float64)
    if dist.world > 1:
        import torch.distributed as td

        td.all_reduce(stats)
    total_loss, seen, correct = (float(v) for v in stats)
    return {"train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1),
            "train_seconds": seconds, "train_images": int(seen), "images_per_s": seen / seconds if seconds else 0.0}


@dataclasses.dataclass
class Predictions:
    probabilities: np.ndarray  # N x classes
    seconds: float

    @property
    def labels(self) -> np.ndarray:
        return self.probabilities.argmax(1)


def predict(model, images: np.ndarray, prep: Preprocess, device, batch_size: int = 128, tta: bool = True,
            amp_dtype=None, progress: bool = False, desc: str = "predicting") -> Predictions:
    """Softmax probabilities for uint8 NHWC images (with a horizontal-flip average when ``tta``)."""
    import torch
    from tqdm.auto import tqdm

    model.eval()
    out = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress):
            xb = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2).float().div_(255.0)
            xb = normalize(xb, prep).to(device).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                probs = model(xb).float().softmax(1)
                if tta:
                    probs = (probs + model(xb.flip(-1)).float().softmax(1)) / 2
            out.append(probs.cpu().numpy())
    probs = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    return Predictions(probs, time.perf_counter() - t0)


def evaluate_split(model, images, labels, prep, device, dist: Dist, cfg: TrainConfig, amp_dtype=None) -> dict[str, float]:
    """Validation loss and accuracy; with several ranks each scores its share and the sums are reduced."""
    import torch

    if len(images) == 0:
        return {}
    share = np.arange(len(images))[dist.rank::dist.world]
    preds = predict(model, images[share], prep, device, tta=cfg.tta, amp_dtype=amp_dtype)
    y = labels[share]
    p = np.clip(preds.probabilities[np.arange(len(y)), y], 1e-9, 1.0)
    stats = torch.tensor([float(-np.log(p).sum()), float((preds.labels == y).sum()), float(len(y)),
                          preds.seconds], dtype=torch.float64)
    if dist.world > 1:
        import torch.distributed as td

        td.all_reduce(stats)
    loss, correct, n, seconds = (float(v) for v in stats)
    return {"val_loss": loss / n, "val_accuracy": correct / n, "val_correct": int(correct), "val_images": int(n),
            "val_seconds": seconds / dist.world}


@dataclasses.dataclass
class Recipe:
    """What trains: the model with its frozen trunk, the optimizer, the loss and the weights' average."""

    model: Any  # the timm model: its state is what is checkpointed and saved
    split: Any  # the model with the frozen trunk run apart (by ONNX Runtime on a CPU where it can)
    net: Any  # what the training steps call: ``split``, wrapped in DistributedDataParallel with several processes
    frozen: list  # modules whose parameters are all frozen (they keep their BatchNorm statistics)
    optimizer: Any
    criterion: Any
    ema: WeightEma | None
    steps_per_epoch: int


def create_recipe(model, cfg: TrainConfig, rt: Runtime, train_images: int) -> Recipe:
    """Freeze the stem and the first ``cfg.freeze_blocks`` blocks, AdamW on the rest, label-smoothed
    cross-entropy, and a moving average of the weights (``cfg.ema``, 0: none)."""
    import torch

    frozen_params = freeze_blocks(model, cfg.freeze_blocks)
    frozen = [m for m in model.modules() if not any(p.requires_grad for p in m.parameters(recurse=False))
              and list(m.parameters(recurse=False))] if frozen_params else []
    model = model.to(rt.device).to(memory_format=torch.channels_last)
    split = split_model(model, cfg.freeze_blocks, cfg.inference_engine, rt.device, rt.threads)
    net = split
    if rt.dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(split, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    ema = WeightEma(model, cfg.ema) if cfg.ema > 0 else None
    steps_per_epoch = max(1, (train_images // rt.dist.world) // rank_batch(cfg, rt.dist))
    return Recipe(model, split, net, frozen, optimizer, criterion, ema, steps_per_epoch)


def create_scheduler(optimizer, stage: Stage, steps_per_epoch: int, cfg: TrainConfig):
    """One cosine cycle per stage: warm up to the stage's peak learning rate, then anneal."""
    import torch

    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=stage.lr, total_steps=stage.epochs * steps_per_epoch,
        pct_start=min(max(cfg.warmup_fraction, 0.01), 0.9), anneal_strategy="cos", div_factor=20,
        final_div_factor=200)


def start_stage(recipe: Recipe, stage: Stage, epoch: int, cfg: TrainConfig, state: dict[str, Any] | None, log):
    """The stage's scheduler: continued from the checkpoint ``state`` when the run resumes within the
    stage; otherwise a fresh cycle, and the weights' average starts over with it."""
    scheduler = create_scheduler(recipe.optimizer, stage, recipe.steps_per_epoch, cfg)
    if state is not None and state.get("stage", 0) == stage.index and epoch > stage.first_epoch:
        scheduler.load_state_dict(state["scheduler"])  # resumed within this stage
        for group, lr in zip(recipe.optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = lr
    elif recipe.ema is not None:
        recipe.ema.steps = 0  # the average starts over with the stage
    if len(stages(cfg)) > 1:
        log(f"stage {stage.index + 1}: epochs {stage.first_epoch + 1}-{stage.first_epoch + stage.epochs} "
            f"at {stage.size} px, peak learning rate {stage.lr:g}")
    return scheduler


@contextlib.contextmanager
def averaged_weights(recipe: Recipe):
    """The weights' average in the model for the ``with`` block (the weights themselves without one)."""
    if recipe.ema is not None:
        recipe.ema.swap(recipe.model)
    try:
        yield recipe.model
    finally:
        if recipe.ema is not None:
            recipe.ema.swap(recipe.model)


def evaluate(recipe: Recipe, images: np.ndarray, labels: np.ndarray, prep: Preprocess, size: int,
             cfg: TrainConfig, rt: Runtime) -> dict[str, float]:
    """Validation of the weights' average (or the weights), by ONNX Runtime on a CPU where it can."""
    with averaged_weights(recipe) as model:
        fast = onnx_copy_or_none(model, size, cfg.inference_engine, rt.device.type, rt.threads) if len(images) else None
        return evaluate_split(fast or recipe.split, images, labels, prep, rt.device, rt.dist, cfg, rt.amp_dtype)


def check_within_epoch(fraction: float, *, epoch: int, validate, checks: list[dict[str, Any]], t_start: float,
                       log) -> None:
    """A validation part-way through ``epoch`` (``--val-checks``), appended to ``checks``."""
    result = validate()
    if result:
        checks.append({"epoch": round(epoch + fraction, 3), "elapsed_seconds": time.perf_counter() - t_start,
                       "val_accuracy": result["val_accuracy"], "val_loss": result["val_loss"]})
        accuracy = format_accuracy(result["val_correct"], result["val_images"])
        log(f"epoch {epoch + fraction:.2f}: val accuracy {accuracy}")
