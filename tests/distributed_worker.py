"""One process of the two-process test in ``test_distributed.py`` (launched by torchrun, gloo, CPU).

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py SHAPES OUT COCO

Every process builds the same model (same seed) and
1. computes, through DistributedDataParallel, the gradient of its half of the first batch
   of 4 images; process 0 saves the averaged gradients to ``OUT/grads.pt``;
2. trains a fresh copy for 2 iterations with ``engine.train`` (which wraps it in DDP itself);
   process 0 writes the run to ``OUT/run``;
3. trains a fresh copy into ``OUT/stopped`` while process 1 alone gets a SIGINT in the middle
   of iteration index 1: both must stop after 2 iterations; each writes the iteration its
   ``TrainingInterrupted`` reports to ``OUT/stopped_rank{r}.json``;
4. runs the command line, ``blendmask-edu train`` of the tiny preset for 2 iterations on the
   COCO-layout dataset ``COCO`` (``train2017``/``val2017``, found without split options) into
   ``OUT/cli_run``, and saves its trained parameters to ``OUT/cli_params_rank{r}.pt``.
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
    BN, docs/model.md §4) swapped for GroupNorm: no norm left that depends on the batch."""
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


def interrupted_run(data, cfg, out: Path, rank: int) -> None:
    """Phase 3: a SIGINT to process 1 only, during its forward of iteration index 1."""
    import json
    import os
    import signal

    from blendmask_edu.training.interrupt import TrainingInterrupted
    from blendmask_edu.training.engine import train

    model, calls = worker_model(cfg), []

    def hook(module, inputs):
        if rank == 1 and len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        calls.append(1)

    model.register_forward_pre_hook(hook)
    try:
        train(model, data, cfg, max_iter=4, progress=False, log_period=1, out_dir=out / "stopped")
        stopped = None
    except TrainingInterrupted as error:
        stopped = error.iteration
    (out / f"stopped_rank{rank}.json").write_text(json.dumps({"iteration": stopped}))


CLI_ARGS = ["--preset", "tiny", "--max-iter", "2", "--quiet", "--device", "cpu",
            "--solver.batch_size", "2", "--input.train_short_sizes", "64",
            "--input.train_max_size", "96", "--input.test_short_size", "64",
            "--input.test_max_size", "96"]


def command_line_run(coco: str, out: Path, rank: int) -> None:
    """Phase 4: ``blendmask-edu train`` itself; the trained parameters of this process are
    caught on their way through ``engine.train`` and saved for the test to compare."""
    from blendmask_edu.cli.main import main as cli_main
    from blendmask_edu.training import engine

    trained, original = [], engine.train

    def recording_train(model, *args, **kwargs):
        trained.append(model)
        return original(model, *args, **kwargs)

    engine.train = recording_train
    try:
        code = cli_main(["train", "--data", coco, "--out", str(out / "cli_run"), *CLI_ARGS])
    finally:
        engine.train = original
    assert code == 0, f"process {rank}: the command returned {code}"
    torch.save({name: p.detach().clone() for name, p in unwrap(trained[0]).named_parameters()},
               out / f"cli_params_rank{rank}.pt")


def main(shapes: str, out: str, coco: str) -> None:
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
    interrupted_run(data, cfg, Path(out), rank)
    command_line_run(coco, Path(out), rank)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
