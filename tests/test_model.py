"""The FCOS detector's contract (DESIGN §4): losses in train mode, detections in eval mode."""

import dataclasses

import pytest
import torch

from blendmask_edu.presets import get_config
from blendmask_edu.modeling.detector import build_fcos, normalize_and_pad


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = get_config("tiny")
    cfg = dataclasses.replace(cfg, category_ids=(11, 22, 33, 44, 55),
                              fcos=dataclasses.replace(cfg.fcos, score_thresh=0.0))
    return build_fcos(cfg)


def _target(boxes, labels, size):
    masks = torch.zeros(len(boxes), *size, dtype=torch.uint8)
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64), "masks": masks}


def test_normalize_and_pad():
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1), torch.tensor([0.2, 0.2, 0.2]).view(3, 1, 1)
    images = [torch.rand(3, 200, 249), torch.rand(3, 64, 40)]
    batch, sizes = normalize_and_pad(images, mean, std)
    assert batch.shape == (2, 3, 224, 256) and sizes == [(200, 249), (64, 40)]
    torch.testing.assert_close(batch[0, :, :200, :249], (images[0] - mean) / std)
    assert batch[1, :, 64:].abs().sum() == 0 and batch[1, :, :, 40:].abs().sum() == 0


def test_train_mode_returns_finite_named_losses(model):
    model.train()
    images = [torch.rand(3, 128, 128), torch.rand(3, 96, 160)]
    targets = [_target([[10, 20, 60, 70], [70, 70, 120, 110]], [0, 3], (128, 128)),
               _target([], [], (96, 160))]  # an image without objects
    losses = model(images, targets)
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.head.cls_logits.weight.grad is not None


def test_train_mode_needs_targets(model):
    model.train()
    with pytest.raises(ValueError, match="targets"):
        model([torch.rand(3, 64, 64)])


def test_eval_mode_contract_and_no_resize(model):
    model.eval()
    with torch.no_grad():
        outputs = model([torch.rand(3, 200, 249), torch.rand(3, 64, 64)])
    assert len(outputs) == 2
    for out, (height, width) in zip(outputs, [(200, 249), (64, 64)]):
        count = len(out["scores"])
        assert 0 < count <= 50
        assert out["boxes"].shape == (count, 4) and out["labels"].shape == (count,)
        assert set(out["labels"].tolist()) <= {11, 22, 33, 44, 55}  # the dataset's ids
        assert (out["boxes"][:, 0::2] <= width).all() and (out["boxes"][:, 1::2] <= height).all()
        assert (out["boxes"] >= 0).all()
        assert torch.all(out["scores"][:-1] >= out["scores"][1:])
