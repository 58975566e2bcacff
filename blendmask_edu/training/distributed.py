"""Multi-process training (``torchrun``): joining the process group, and this process's place in it.

:func:`init_distributed` joins the group when ``torchrun`` started several processes; the
engine then wraps the model in DistributedDataParallel. The loss normalisers (number of
positives, Σ centerness) are means over processes (:func:`reduce_mean`, docs/model.md §2), so each
process's loss is its own terms over the shared normaliser and DDP's averaged gradient equals
the one-process gradient of the whole batch. With one process every function here is a no-op
(rank 0 of a world of 1), so the same code runs with or without ``torchrun``.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist

from blendmask_edu.utils import pick_device


def get_world_size() -> int:
    """The number of training processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    """This process's rank, 0..world size - 1 (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` (any shape, kept) over processes (all-reduce sum / world size),
    without gradient; the tensor itself with one process."""
    world = get_world_size()
    if world == 1:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total / world


def init_distributed(device: Optional[str] = None) -> torch.device:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1) and return this
    process's device: ``cuda:LOCAL_RANK`` with NCCL, or the CPU with gloo. One process: the
    ``device`` asked for, else CUDA when available, else the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return pick_device(device)
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if use_cuda:
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(local)
    else:
        local = torch.device("cpu")
    if not dist.is_initialized():  # rank, world size and address come from torchrun's variables
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return local
