"""Data-parallel training (PyTorch DDP): the process group, each process's rank, reductions and the launcher.

A process belongs to a distributed run when ``RANK`` and ``WORLD_SIZE`` are set, as ``torchrun`` (and
``productrec train --nproc-per-node N``, which launches through ``torch.distributed.run``) sets them for
every worker, on one node or several. As in timm's ``train.py``, the group is initialised from the
environment (``init_method="env://"``: ``MASTER_ADDR``/``MASTER_PORT``), each process uses the GPU of its
``LOCAL_RANK``, and the backend is nccl on CUDA and gloo on the CPU.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.config import ConfigError, OptimConfig

log = logging.getLogger("productrec.distributed")

CLI_MODULE = "app.cli"  # what the launched workers run: ``python -m app.cli train ...``


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the run; ``backend`` None means a single process without a process group."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_primary(self) -> bool:
        """Rank 0: the one process that writes the run directory and logs."""
        return self.rank == 0


@dataclass(frozen=True)
class BatchAndLr:
    """The effective batch of all processes and the learning rates the rule gives for it (config.json's "world")."""

    world_size: int
    backend: str | None
    batch_size_per_process: int
    effective_batch_size: int
    lr_scaling: str
    lr: float
    min_lr: float

    @classmethod
    def resolve(cls, optim: OptimConfig, rule: str, rank: RankInfo) -> "BatchAndLr":
        factor = rank.world_size if rule == "linear" else 1
        return cls(
            rank.world_size, rank.backend, optim.batch_size, optim.batch_size * rank.world_size, rule, optim.lr * factor, optim.min_lr * factor
        )


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def choose_backend(device: torch.device) -> str:
    """nccl on CUDA, gloo on the CPU; gloo also when processes share a GPU, which NCCL refuses ("Duplicate GPU")."""
    if device.type != "cuda":
        return "gloo"
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return "nccl" if local_processes <= torch.cuda.device_count() else "gloo"


def init_distributed(device: torch.device) -> RankInfo:
    """Join the process group torchrun described in the environment; a single process when it described none."""
    if not launched_by_torchrun():
        return RankInfo(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    backend = choose_backend(device)
    dist.init_process_group(backend=backend, init_method="env://")
    rank = RankInfo(device, dist.get_rank(), local_rank, dist.get_world_size(), backend)
    if not rank.is_primary:
        logging.getLogger().setLevel(logging.WARNING)  # one log for the run: rank 0's (and every rank's warnings)
    log.info("process group: %d processes, backend %s", rank.world_size, backend)
    return rank


@contextmanager
def process_group(device: torch.device) -> Iterator[RankInfo]:
    """``init_distributed`` for the duration of a run, then leave the group."""
    rank = init_distributed(device)
    try:
        yield rank
    finally:
        if rank.distributed:
            dist.destroy_process_group()


def check_sync_bn(sync_bn: bool, device: torch.device) -> None:
    if sync_bn and device.type != "cuda":
        raise ConfigError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm does not run on the CPU")


def convert_sync_bn(model: nn.Module, rank: RankInfo, sync_bn: bool) -> nn.Module:
    """BatchNorm -> SyncBatchNorm when asked and distributed (the same parameters: build the optimizer after)."""
    if not (sync_bn and rank.distributed):
        return model
    check_sync_bn(sync_bn, rank.device)
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_ddp(model: nn.Module, rank: RankInfo) -> nn.Module:
    """The model that trains: DDP (broadcasting rank 0's weights) when distributed, ``model`` itself otherwise."""
    if not rank.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[rank.device] if rank.device.type == "cuda" else None)


def uneven_inputs(model: nn.Module) -> ContextManager[Any]:
    """DDP's join: a rank whose shard lost a batch to unreadable images must not leave the others waiting.

    (PyTorch's join does not cover SyncBatchNorm: with --sync-bn, unreadable training images can stall a run.)
    """
    return model.join() if isinstance(model, DistributedDataParallel) else nullcontext()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def sum_over_ranks(values: Sequence[float], device: torch.device) -> list[float]:
    """Each value summed over the ranks (the values themselves in a single process)."""
    if not is_initialized():
        return [float(value) for value in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_over_ranks(value: Any) -> list[Any]:
    """Every rank's (picklable) ``value``, in rank order."""
    if not is_initialized():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def average_buffers(model: nn.Module) -> None:
    """Average the floating buffers (BatchNorm running statistics) over the ranks, as timm's ``distribute_bn``.

    DDP keeps the weights equal but each rank updates its running statistics on its own shard; without this
    the ranks would evaluate, and rank 0 would save, different models.
    """
    if not is_initialized():
        return
    world_size = dist.get_world_size()
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer /= world_size


def launch(nproc_per_node: int, command: Sequence[str]) -> None:
    """Run ``python -m app.cli COMMAND`` in ``nproc_per_node`` processes on this machine (torch.distributed.run,
    standalone rendezvous on a free port); raises ``ChildFailedError`` when a process fails."""
    from torch.distributed.run import main as torchrun

    torchrun(["--standalone", f"--nproc-per-node={nproc_per_node}", "--module", CLI_MODULE, *command])
