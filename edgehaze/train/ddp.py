"""Distributed data parallel: one process per device, started by ``torchrun``.

Single machine, N GPUs (NCCL) or N CPU processes (gloo)::

    torchrun --nproc_per_node 4 -m edgehaze train --config configs/reside6k-dehazeformer-t.yaml

Several machines (run the same command on every node; node 0's address is
the rendezvous point)::

    torchrun --nnodes 2 --nproc_per_node 8 --node_rank 0 \\
        --rdzv_backend c10d --rdzv_endpoint node0.example:29500 \\
        -m edgehaze train --config ...
    # on node 1: the same with --node_rank 1

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT``; :func:`init_distributed` reads them. Without them the
run is a plain single process. Rank 0 alone logs, shows the progress bar and
writes checkpoints; every rank meets at a barrier around checkpoint writes
so no rank reads a half-written file and nobody races ahead of a save.
``train.batch_size`` is per process: the effective batch is
``batch_size * accumulate * world_size``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Dict

import torch

from edgehaze.errors import ConfigError


@dataclass
class DistContext:
    """Where this process stands: rank, world size, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    """``auto``/``cpu``/``cuda``/``cuda:N`` -> a torch device (local rank's GPU)."""
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={pref} but CUDA is not available here; use train.device=cpu")
        if pref == "cuda":
            return torch.device("cuda", local_rank)
    if pref not in ("cpu",) and not pref.startswith("cuda"):
        raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {pref!r}")
    return torch.device(pref)


def init_distributed(device_pref: str = "auto") -> DistContext:
    """Join the process group torchrun describes (or return a 1-process context)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local_rank)
    if world <= 1:
        return DistContext(device=device)
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def all_reduce_mean(ctx: DistContext, values: Dict[str, float]) -> Dict[str, float]:
    """Average scalar logs over ranks (one small all-reduce)."""
    if not ctx.enabled or not values:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    t /= ctx.world_size
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def broadcast_flag(ctx: DistContext, flag: bool) -> bool:
    """Rank 0's boolean, on every rank."""
    if not ctx.enabled:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=ctx.device)
    dist.broadcast(t, 0)
    return bool(t.item())


def wrap_model(model: torch.nn.Module, ctx: DistContext, find_unused_parameters: bool = False) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``model`` when distributed, else ``model``.

    Only parameters with ``requires_grad`` are synchronised, so a frozen
    depth teacher inside the model costs no communication.
    """
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def cleanup(ctx: DistContext) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
