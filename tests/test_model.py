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


def test_channels_last_in_eval_only_and_the_same_detections():
    """``channels_last="eval"`` (the default) turns the weights and the eval batch NHWC and
    back for training; the detections equal those of a model that never does, up to float
    rounding (another order of the sums inside the convolutions)."""
    from blendmask_edu.modeling.blendmask import build_model

    def tiny(layout):
        cfg = get_config("tiny")
        cfg = dataclasses.replace(cfg, fcos=dataclasses.replace(cfg.fcos, score_thresh=0.0,
                                                                channels_last=layout))
        torch.manual_seed(0)
        return build_model(cfg)

    assert get_config("tiny").fcos.channels_last == "eval"
    model, plain = tiny("eval"), tiny("never")
    conv = model.backbone.body.conv1.weight
    images = [torch.rand(3, 128, 128), torch.rand(3, 96, 128)]
    model.train()
    assert model.preprocess(images)[0].is_contiguous() and conv.is_contiguous()
    model.eval()
    batch = model.preprocess(images)[0]
    assert batch.is_contiguous(memory_format=torch.channels_last) and not batch.is_contiguous()
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert model.backbone.body.conv1.weight is conv  # the same parameter, turned in place
    with torch.inference_mode():
        fast, slow = model(images), plain.eval()(images)
    assert plain.backbone.body.conv1.weight.is_contiguous()
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-2, rtol=1e-4)
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["masks"], b["masks"], atol=1e-3, rtol=1e-3)
    assert model.train().backbone.body.conv1.weight.is_contiguous()
    with pytest.raises(ValueError, match="channels_last"):
        tiny("sometimes")
