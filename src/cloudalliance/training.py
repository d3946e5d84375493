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
(:func:`cloudalliance.data.prepare_training_data`), the model and its recipe
(:func:`create_recipe`: frozen trunk, optimizer, loss, weight average; one
:func:`start_stage` per stage of :func:`stages`), :func:`resume` from a checkpoint,
then per epoch :func:`train_one_epoch`, :func:`evaluate` and a checkpoint, and the
model folder last (:func:`write_model_dir`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .data import prepare_training_data
from .onnxrt import onnx_copy_or_none
from .presets import DEFAULT_FIT, FITS, Preprocess
from .stats import format_accuracy

DEFAULT_CHECKPOINT_DIR = "/opt/ml/checkpoints"
CHECKPOINT_NAME = "last.pt"


# --------------------------------------------------------------------------- configuration


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


# --------------------------------------------------------------------------- distributed


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_from_env(env: dict[str, str] | None = None) -> Dist:
    """Rank and world size from torchrun's variables or SageMaker's host list."""
    env = dict(os.environ if env is None else env)
    if "WORLD_SIZE" in env and int(env["WORLD_SIZE"]) > 1:
        return Dist(int(env.get("RANK", 0)), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    hosts = json.loads(env.get("SM_HOSTS", "[]") or "[]")
    current = env.get("SM_CURRENT_HOST", "")
    if len(hosts) > 1 and current in hosts:
        return Dist(sorted(hosts).index(current), len(hosts), 0)
    return Dist()


def init_distributed(dist: Dist, device: str) -> None:
    if dist.world <= 1:
        return
    import torch.distributed as td

    hosts = sorted(json.loads(os.environ.get("SM_HOSTS", "[]") or "[]"))
    addr = os.environ.get("MASTER_ADDR") or (hosts[0] if hosts else "127.0.0.1")
    port = os.environ.get("MASTER_PORT", "29500")
    backend = "nccl" if device == "cuda" else "gloo"
    td.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=dist.rank, world_size=dist.world)


# --------------------------------------------------------------------------- batches and stages


def batches(n: int, batch_size: int, seed: int, epoch: int, dist: Dist, drop_last: bool = True) -> Iterator[np.ndarray]:
    """This rank's shuffled batches of ``range(n)`` for ``epoch`` (same permutation on every rank)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    per_rank = n // dist.world
    order = order[dist.rank * per_rank:(dist.rank + 1) * per_rank] if dist.world > 1 else order
    stop = len(order) - (len(order) % batch_size if drop_last and len(order) >= batch_size else 0)
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


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


def rank_batch(cfg: TrainConfig, dist: Dist) -> int:
    """Each rank's share of ``--batch-size``: the batch is global, so the number of steps, the
    learning-rate schedule and the weight average are the same with one process or several."""
    return max(1, cfg.batch_size // dist.world)


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


# --------------------------------------------------------------------------- model and steps


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

    from .presets import normalize

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

    from .presets import normalize

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


# --------------------------------------------------------------------------- checkpoints


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


# --------------------------------------------------------------------------- main


def _resolve_device(cfg: TrainConfig, dist: Dist):
    import torch

    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but no CUDA device is visible")
        torch.cuda.set_device(dist.local_rank % torch.cuda.device_count())
        return torch.device("cuda", dist.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _amp_dtype(cfg: TrainConfig, device):
    import torch

    if cfg.amp == "off" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


@dataclasses.dataclass
class Runtime:
    """Where this process trains: its rank, device, torch threads and mixed-precision type."""

    dist: Dist
    device: Any
    threads: int
    amp_dtype: Any = None


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Rank, device, threads and seed; joins the process group when there are several processes.
    On a GPU with ``--device auto`` the default batch grows to 128 (``cfg`` is changed in place)."""
    import torch

    dist = dist_from_env()
    device = _resolve_device(cfg, dist)
    if cfg.device == "auto" and device.type == "cuda" and cfg.batch_size == TrainConfig.batch_size:
        cfg.batch_size = 128  # a GPU has room for more
    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    init_distributed(dist, device.type)
    return Runtime(dist, device, threads, _amp_dtype(cfg, device))


def create_log(dist: Dist):
    """``log(*parts)``: one ``[train]`` line on stderr from the main rank (tqdm.write keeps it on its own
    line when a progress bar is showing); the other ranks stay quiet."""
    from tqdm.auto import tqdm

    if not dist.main:
        return lambda *a: None
    return lambda *a: tqdm.write(" ".join(["[train]", *map(str, a)]), file=sys.stderr)


def barrier(dist: Dist) -> None:
    if dist.world > 1:
        import torch.distributed as td

        td.barrier()


# --------------------------------------------------------------------------- the recipe


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


# --------------------------------------------------------------------------- main


def run(cfg: TrainConfig, train_dir: str, model_dir: str, output_dir: str, checkpoint_dir: str,
        test_dir: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train, validate each epoch, checkpoint, and write the model folder; return the metrics."""
    from .models import WEIGHTS_NORMALIZATION, create_model
    from .presets import resolve_preprocess

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
    run(cfg, args.train, args.model_dir, args.output_data_dir, args.checkpoint_dir, args.test,
        progress=args.progress == "true" and not in_job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
