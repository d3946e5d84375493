"""Processes and devices for the training script: ranks from SageMaker's or torchrun's variables, the
device and threads, each rank's batches. Machinery the lesson relies on; a first reading may skip it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Iterator

import numpy as np

from .config import TrainConfig


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


def batches(n: int, batch_size: int, seed: int, epoch: int, dist: Dist, drop_last: bool = True) -> Iterator[np.ndarray]:
    """This rank's shuffled batches of ``range(n)`` for ``epoch`` (same permutation on every rank)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    per_rank = n // dist.world
    order = order[dist.rank * per_rank:(dist.rank + 1) * per_rank] if dist.world > 1 else order
    stop = len(order) - (len(order) % batch_size if drop_last and len(order) >= batch_size else 0)
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def rank_batch(cfg: TrainConfig, dist: Dist) -> int:
    """Each rank's share of ``--batch-size``: the batch is global, so the number of steps, the
    learning-rate schedule and the weight average are the same with one process or several."""
    return max(1, cfg.batch_size // dist.world)


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
