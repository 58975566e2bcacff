"""One process of the two-process test in ``test_distributed.py`` (launched by torchrun, gloo, CPU).

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py SHAPES OUT

Every process builds the same model (same seed) and
1. computes, through DistributedDataParallel, the gradient of its half of the first batch
   of 4 images; process 0 saves the averaged gradients to ``OUT/grads.pt``;
2. trains a fresh copy for 2 iterations with ``engine.train`` (which wraps it in DDP itself);
   process 0 writes the run to ``OUT/run``.
The helpers here are also the single-process reference the test compares against.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from torch import nn

from blendmask_edu import build_model, get_config
from blendmask_edu.data.coco import CocoInstances
from blendmask_edu.data.files import dataset_paths
from blendmask_edu.utils import unwrap

BATCH = 4


def worker_config():
    """The tiny preset with batch-independent norms (GroupNorm in the backbone and the bottom
    module; the FCOS head already uses GN) and plain SGD, the paper's optimizer: BatchNorm
    statistics would depend on each process's half-batch, and Adam's normalised update
    would magnify float-rounding differences of near-zero gradients."""
    cfg = get_config("tiny")
    return dataclasses.replace(
        cfg, backbone=dataclasses.replace(cfg.backbone, norm="gn"),
        blendmask=dataclasses.replace(cfg.blendmask, basis_norm="GN"),
        solver=dataclasses.replace(cfg.solver, optimizer="sgd", base_lr=0.01, batch_size=BATCH,
                                   warmup_iters=1, steps=(), max_iter=2))


def worker_model(cfg):
    """The model of ``cfg`` from seed 0, with the auxiliary semantic head's BatchNorms (always
    BN, spec §4.3) swapped for GroupNorm: no norm left that depends on the batch."""
    torch.manual_seed(0)
    model = build_model(cfg)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, nn.GroupNorm(8, child.num_features))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return model


def dataset(root):
    """The shapes train split as it is on disk: no random transform, so both sides see the
    same pixels."""
    return CocoInstances.from_paths(dataset_paths(root, "train"))


def first_batch(data, seed, rank=0, world_size=1):
    """This process's share of the first batch of the training stream."""
    from blendmask_edu.training.sampling import batch_indices

    images, targets = zip(*[data[i] for i, _ in batch_indices(len(data), BATCH, seed, 0, rank,
                                                              world_size)])
    return list(images), list(targets)


def gradients(model, images, targets):
    """{parameter name: gradient} of the summed losses of one batch."""
    model.train()
    model.zero_grad(set_to_none=True)
    sum(model(images, targets).values()).backward()
    return {name: p.grad.detach().clone() for name, p in unwrap(model).named_parameters()
            if p.grad is not None}


def main(shapes: str, out: str) -> None:
    from blendmask_edu.training.distributed import get_rank, get_world_size, init_distributed, reduce_mean
    from blendmask_edu.training.engine import train

    device = init_distributed("cpu")
    rank, world = get_rank(), get_world_size()
    assert world == 2 and device.type == "cpu", (world, device)
    cfg, data = worker_config(), dataset(shapes)

    model = worker_model(cfg)
    model.reduce_mean = reduce_mean  # what train() does: normalisers averaged over processes
    ddp = nn.parallel.DistributedDataParallel(model)
    grads = gradients(ddp, *first_batch(data, cfg.seed, rank, world))
    if rank == 0:
        torch.save(grads, Path(out) / "grads.pt")

    train(worker_model(cfg), data, cfg, max_iter=2, progress=False, log_period=1,
          out_dir=Path(out) / "run")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
