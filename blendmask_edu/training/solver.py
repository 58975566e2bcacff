"""The solver: which parameters the optimizer decays, and the learning rate at each iteration.

The recipe is the paper's (spec §8): SGD with momentum, weight decay except on norm parameters,
a linear warm-up, then the learning rate × ``gamma`` at each step. The schedule has no state of
its own (``lr_factor(iteration, solver)``), so a resumed run needs only the iteration to be
back on it. Explained in ``notebooks/04_train.ipynb``.
"""

from __future__ import annotations

import torch
from torch import nn

from blendmask_edu.config import SolverConfig

# Their scale and shift are not weights to shrink: they get ``weight_decay_norm`` (0 by default).
NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm)


def build_optimizer(model: nn.Module, solver: SolverConfig) -> torch.optim.Optimizer:
    """SGD (or AdamW) over the trainable parameters of ``model``, in two groups: the parameters
    of :data:`NORM_TYPES` modules with ``solver.weight_decay_norm``, all others with
    ``solver.weight_decay``. ValueError for an unknown ``solver.optimizer``."""
    norm_params, other_params = [], []
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if param.requires_grad:
                (norm_params if isinstance(module, NORM_TYPES) else other_params).append(param)
    groups = [{"params": other_params, "weight_decay": solver.weight_decay},
              {"params": norm_params, "weight_decay": solver.weight_decay_norm}]
    groups = [g for g in groups if g["params"]]
    if solver.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=solver.base_lr)
    if solver.optimizer != "sgd":
        raise ValueError(f"solver.optimizer must be 'sgd' or 'adamw', not {solver.optimizer!r}")
    return torch.optim.SGD(groups, lr=solver.base_lr, momentum=solver.momentum)


def lr_factor(iteration: int, solver: SolverConfig) -> float:
    """Multiplier (a float) of ``base_lr`` at ``iteration`` (0-based): linear warm-up from
    ``warmup_factor`` to 1 over ``warmup_iters``, times ``gamma`` for every step already passed."""
    decay = solver.gamma ** sum(iteration >= s for s in solver.steps)
    if iteration < solver.warmup_iters:
        alpha = iteration / solver.warmup_iters
        return decay * (solver.warmup_factor * (1 - alpha) + alpha)
    return decay
