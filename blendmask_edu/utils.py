"""Small helpers every notebook and command shares: the seed, the scale switch, the device,
and the model inside a DistributedDataParallel wrapper.

The scale switch is the one place that decides how big a notebook's work is:
``BLENDMASK_EDU_SCALE=ci`` (short, for CI and quick checks) or ``full`` (what the committed
notebook outputs come from). When unset it is ``ci`` if the ``CI`` environment variable is set,
else ``full``.
"""

from __future__ import annotations

import os
import random
from typing import Optional

import numpy as np
import torch
from torch import nn

SCALE_VARIABLE = "BLENDMASK_EDU_SCALE"
SCALES = ("ci", "full")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def notebook_scale() -> str:
    """Return ``"ci"`` or ``"full"`` from ``BLENDMASK_EDU_SCALE`` (default: ``ci`` under CI)."""
    value = os.environ.get(SCALE_VARIABLE, "").strip().lower()
    if not value:
        return "ci" if os.environ.get("CI", "").lower() not in ("", "0", "false") else "full"
    if value not in SCALES:
        raise ValueError(f"{SCALE_VARIABLE}={value!r}: expected one of {', '.join(SCALES)}")
    return value


def pick_device(device: Optional[str] = None) -> torch.device:
    """``device`` if given, else CUDA when available, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself, whether or not ``DistributedDataParallel`` (or ``DataParallel``) wraps it:
    its parameters, ``state_dict`` and methods are the wrapped module's."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def setup(seed: int = 0, threads: int = 2, device: Optional[str] = None) -> dict:
    """The setup cell of every notebook: seed, threads, device and scale, printed and returned."""
    seed_everything(seed)
    torch.set_num_threads(threads)
    info = {
        "scale": notebook_scale(),
        "device": str(pick_device(device)),
        "threads": torch.get_num_threads(),
        "seed": seed,
        "torch": torch.__version__.split("+")[0],
    }
    print("  ".join(f"{k}={v}" for k, v in info.items()))
    return info
