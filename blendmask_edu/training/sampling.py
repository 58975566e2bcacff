"""The training data stream: which images make each batch, and the seed of each image's augmentation.

The stream is a pure function of ``(seed, iteration)``, which is what lets a resumed run (or
another process) pick up exactly where it should without loading an image:

- each epoch is a shuffled order of the dataset (:func:`epoch_order`), cut into
  ``num_items // batch_size`` batches (the rest is dropped);
- process ``rank`` of ``world_size`` takes the ``rank``-th of equal slices of each batch
  (``batch_size`` is the total, as in the paper);
- every image's random augmentation draws from torch's generator seeded by the image's position
  in the stream (not by how long the process has run), so it is the same whether the run was
  interrupted or not, and with one process or several.
"""

from __future__ import annotations

from typing import Iterator, List, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from blendmask_edu.data.transforms import collate


def epoch_order(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order (num_items,) int64 of ``epoch``: the same for a seed, different per
    epoch."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_items, generator=generator)


def batch_indices(num_items: int, batch_size: int, seed: int, iteration: int, rank: int = 0,
                  world_size: int = 1) -> List[Tuple[int, int]]:
    """``(dataset index, sample seed)`` of each of the ``batch_size // world_size`` images
    process ``rank`` takes at ``iteration``.

    The epoch and the offset follow from ``iteration`` alone, so a resumed run skips to its
    batch without loading an image. The sample seed, unique to the image's position in the
    stream, seeds its augmentation: the same with one process or several. ValueError when the
    batch does not split over the processes or the dataset is smaller than one batch.
    """
    epoch, step = divmod(iteration, _steps_per_epoch(num_items, batch_size, world_size))
    return _take(epoch_order(num_items, seed, epoch), seed, epoch, step, batch_size, rank,
                 world_size)


def _steps_per_epoch(num_items: int, batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise ValueError(f"solver.batch_size={batch_size} does not split over {world_size} "
                         f"processes; use a multiple of {world_size}")
    if num_items < batch_size:
        raise ValueError(f"the dataset has {num_items} images, fewer than one batch of "
                         f"{batch_size}")
    return num_items // batch_size


def _take(order: torch.Tensor, seed: int, epoch: int, step: int, batch_size: int, rank: int,
          world_size: int) -> List[Tuple[int, int]]:
    share = batch_size // world_size
    first = step * batch_size + rank * share  # position in the epoch's order
    return [(index, (seed * 1_000_003 + epoch) * 1_000_003 + first + k)
            for k, index in enumerate(order[first:first + share].tolist())]


class _SeededItems(Dataset):
    """``dataset[(index, sample_seed)]``: ``dataset[index]`` with torch's global generator seeded
    by ``sample_seed`` (then put back), so random transforms repeat exactly in any process."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __getitem__(self, item):
        index, sample_seed = item
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only, where the transforms draw: torch.manual_seed would also
            # queue a seed for every CUDA device, capturing a stack trace each time (1.4 ms).
            torch.default_generator.manual_seed(sample_seed)
            return self.dataset[index]


def batches(dataset: Dataset, batch_size: int, seed: int = 0, num_workers: int = 0,
            start_iter: int = 0, rank: int = 0, world_size: int = 1) -> Iterator:
    """An endless stream of ``(images, targets)`` from iteration ``start_iter`` on: process
    ``rank``'s share of each batch of :func:`batch_indices` (``batch_size`` is the total), as
    two lists of ``batch_size // world_size`` items (``data.transforms.collate``)."""
    steps = _steps_per_epoch(len(dataset), batch_size, world_size)
    epoch, step = divmod(start_iter, steps)
    while True:
        order = epoch_order(len(dataset), seed, epoch)
        plan = [_take(order, seed, epoch, s, batch_size, rank, world_size)
                for s in range(step, steps)]
        # Its own generator: a DataLoader otherwise draws a seed from torch's global one.
        loader = DataLoader(_SeededItems(dataset), batch_sampler=plan, num_workers=num_workers,
                            collate_fn=collate, generator=torch.Generator().manual_seed(seed))
        yield from loader
        epoch, step = epoch + 1, 0
