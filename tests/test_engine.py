"""The training recipe: parameter groups, the learning-rate schedule, the data stream, a loss that falls."""

import dataclasses

import pytest
import torch
from torch import nn

from blendmask_edu.config import SolverConfig, get_config
from blendmask_edu.engine import batches, build_optimizer, lr_factor, train
from blendmask_edu.model import build_fcos


def test_no_weight_decay_on_norm_parameters():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.Linear(4, 2))
    optimizer = build_optimizer(model, SolverConfig(weight_decay=1e-4, weight_decay_norm=0.0))
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    for module in model:
        for p in module.parameters():
            want = 0.0 if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)) else 1e-4
            assert decay[id(p)] == want


def test_lr_factor_warmup_and_steps():
    solver = SolverConfig(warmup_iters=100, warmup_factor=0.001, steps=(200, 300), gamma=0.1)
    assert lr_factor(0, solver) == pytest.approx(0.001)
    assert lr_factor(50, solver) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(100, solver) == pytest.approx(1.0)
    assert lr_factor(199, solver) == pytest.approx(1.0)
    assert lr_factor(200, solver) == pytest.approx(0.1)
    assert lr_factor(300, solver) == pytest.approx(0.01)


def test_batches_are_replayable_per_seed():
    data = [(torch.zeros(3, 2, 2), {"image_id": i}) for i in range(10)]

    def ids(seed):  # 4 batches of 3 = more than one epoch of 10 (the last 1 is dropped)
        stream = batches(data, 3, seed=seed)
        return [[t["image_id"] for t in next(stream)[1]] for _ in range(4)]

    first = ids(1)
    assert first == ids(1) and first != ids(2)
    assert sorted(sum(first[:3], [])) == sorted(set(sum(first[:3], [])))  # an epoch has no repeats


class _Boxes(torch.utils.data.Dataset):
    """Four fixed images with one square each, in the model's target format."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        image = torch.zeros(3, 64, 64)
        x0, y0 = 8 + 6 * i, 12 + 4 * i
        image[:, y0:y0 + 24, x0:x0 + 24] = 1.0
        masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
        masks[0, y0:y0 + 24, x0:x0 + 24] = 1
        return image, {"boxes": torch.tensor([[x0, y0, x0 + 24, y0 + 24]], dtype=torch.float32),
                       "labels": torch.tensor([i % 2]), "masks": masks, "image_id": i}


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    cfg = get_config("tiny")
    cfg = dataclasses.replace(cfg, num_classes=2, category_ids=(1, 2), class_names=("a", "b"),
                              solver=dataclasses.replace(cfg.solver, batch_size=4, warmup_iters=5,
                                                         steps=(), max_iter=40))
    log = train(build_fcos(cfg), _Boxes(), cfg, progress=False, log_period=10)
    assert [e["iter"] for e in log] == [10, 20, 30, 40]
    assert log[-1]["loss"] < 0.6 * log[0]["loss"], [round(e["loss"], 3) for e in log]
