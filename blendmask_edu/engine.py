"""Training: the optimizer, the learning-rate schedule, the data stream and the loop.

The recipe is the paper's (spec §8): SGD with momentum, weight decay except on norm parameters,
a linear warm-up, then the learning rate × ``gamma`` at each step. Introduced in
``notebooks/01_fcos.ipynb`` (a short FCOS training) and explained in ``04_train.ipynb``.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Dict, Iterator, List, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from blendmask_edu.config import Config, SolverConfig
from blendmask_edu.data.transforms import collate

NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm)


def build_optimizer(model: nn.Module, solver: SolverConfig) -> torch.optim.Optimizer:
    """SGD (or AdamW) over the trainable parameters; norm parameters get ``weight_decay_norm``."""
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
    """Multiplier of ``base_lr`` at ``iteration``: linear warm-up from ``warmup_factor`` to 1
    over ``warmup_iters``, times ``gamma`` for every step already passed."""
    decay = solver.gamma ** sum(iteration >= s for s in solver.steps)
    if iteration < solver.warmup_iters:
        alpha = iteration / solver.warmup_iters
        return decay * (solver.warmup_factor * (1 - alpha) + alpha)
    return decay


def batches(dataset: Dataset, batch_size: int, seed: int = 0, num_workers: int = 0,
            start_epoch: int = 0) -> Iterator:
    """An endless stream of ``(images, targets)`` batches, reshuffled every epoch from ``seed``
    (epoch ``e`` is always the same order, so a run can be replayed)."""
    epoch = start_epoch
    while True:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                            num_workers=num_workers, collate_fn=collate, drop_last=True)
        yield from loader
        epoch += 1


def train(model: nn.Module, dataset: Dataset, cfg: Config, max_iter: Optional[int] = None,
          device: Optional[torch.device] = None, progress: bool = True, log_period: int = 10,
          on_log: Optional[Callable[[Dict], None]] = None) -> List[Dict]:
    """Train ``model`` on ``dataset`` (items already transformed) with ``cfg.solver``.

    Returns the log: one dict per ``log_period`` iterations with ``iter``, ``lr``, ``time`` and
    the mean of each loss over the period. ``on_log`` is called with each entry (a live plot).
    """
    solver = cfg.solver
    max_iter = solver.max_iter if max_iter is None else max_iter
    device = device or next(model.parameters()).device
    model.to(device).train()
    optimizer = build_optimizer(model, solver)
    stream = batches(dataset, solver.batch_size, seed=cfg.seed)
    log, running, start = [], {}, time.perf_counter()
    bar = tqdm(range(max_iter), desc="train", disable=not progress, dynamic_ncols=True)
    for iteration in bar:
        for group in optimizer.param_groups:
            group["lr"] = solver.base_lr * lr_factor(iteration, solver)
        images, targets = next(stream)
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()}
                   for t in targets]
        with torch.autocast(device.type, enabled=solver.amp and device.type == "cuda"):
            losses = model(images, targets)
        total = sum(losses.values())
        if not math.isfinite(float(total.detach())):
            bad = [k for k, v in losses.items() if not math.isfinite(float(v))]
            raise FloatingPointError(f"non-finite loss at iteration {iteration}: {', '.join(bad)}")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if solver.clip_grad_norm:
            nn.utils.clip_grad_norm_(model.parameters(), solver.clip_grad_norm)
        optimizer.step()
        for k, v in losses.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        if (iteration + 1) % log_period == 0 or iteration + 1 == max_iter:
            count = (iteration % log_period) + 1
            entry = {"iter": iteration + 1, "lr": optimizer.param_groups[0]["lr"],
                     "time": time.perf_counter() - start,
                     **{k: v / count for k, v in running.items()}}
            entry["loss"] = sum(v for k, v in entry.items() if k.startswith("loss_"))
            log.append(entry)
            running = {}
            bar.set_postfix(loss=f"{entry['loss']:.3f}")
            if on_log is not None:
                on_log(entry)
    return log
