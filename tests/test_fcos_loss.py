"""FCOS losses against their formulas, written another way (absolute boxes, explicit focal)."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from blendmask_edu.modeling.fcos import (
    FCOSHead,
    assign_batch_targets,
    compute_locations,
    flatten_predictions,
)
from blendmask_edu.modeling.fcos_loss import fcos_losses, giou_loss_ltrb


def giou_from_absolute_boxes(pred_ltrb, target_ltrb):
    """1 − GIoU with +1 smoothing, from explicit xyxy corners around a location at (5, 7)."""
    out = []
    for p, t in zip(pred_ltrb.tolist(), target_ltrb.tolist()):
        a = (5 - p[0], 7 - p[1], 5 + p[2], 7 + p[3])
        b = (5 - t[0], 7 - t[1], 5 + t[2], 7 + t[3])
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        enclose = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
        iou = (inter + 1) / (union + 1)
        out.append(1 - (iou - (enclose - union) / enclose))
    return torch.tensor(out, dtype=torch.float64)


def test_giou_ltrb_equals_absolute_box_computation():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(20, 4, generator=g) * 5 + 0.1
    target = torch.rand(20, 4, generator=g) * 5 + 0.1
    pred[0] = target[0]  # identical boxes: IoU = 1, GIoU = 1, loss 0
    losses = giou_loss_ltrb(pred, target)
    assert losses.shape == (20,)
    expected = giou_from_absolute_boxes(pred, target)
    torch.testing.assert_close(losses.double(), expected, rtol=1e-5, atol=1e-6)
    assert losses[0].abs() < 1e-6
    weight = torch.rand(20, generator=g)
    torch.testing.assert_close(giou_loss_ltrb(pred, target, weight), (losses * weight).sum())


def test_giou_ltrb_is_close_to_torchvision_for_large_boxes():
    """The +1 smoothing is negligible when boxes are large (in stride units)."""
    g = torch.Generator().manual_seed(1)
    pred = torch.rand(10, 4, generator=g) * 1e3 + 50
    target = torch.rand(10, 4, generator=g) * 1e3 + 50

    def as_boxes(d):  # distances from a location at the origin → xyxy
        return torch.stack([-d[:, 0], -d[:, 1], d[:, 2], d[:, 3]], 1)

    ours = giou_loss_ltrb(pred, target)
    theirs = generalized_box_iou_loss(as_boxes(pred), as_boxes(target))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_giou_zero_boxes_are_finite():
    zero = torch.zeros(3, 4, requires_grad=True)
    loss = giou_loss_ltrb(zero, torch.zeros(3, 4))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(zero.grad).all()


def explicit_focal(logits, targets, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(logits.double())
    pt = torch.where(targets > 0, p, 1 - p)
    alpha_t = torch.where(targets > 0, torch.full_like(p, alpha), torch.full_like(p, 1 - alpha))
    return (-alpha_t * (1 - pt) ** gamma * torch.log(pt)).sum()


def small_batch(seed=0):
    """Two 32x32 images, levels of stride 8 and 16, three classes; real assigned targets."""
    shapes, strides, ranges = [(4, 4), (2, 2)], [8, 16], [(-1, 24), (24, 1e8)]
    locs = compute_locations(shapes, strides)
    targets = assign_batch_targets(
        locs, strides, ranges, [torch.tensor([[2.0, 3, 30, 29], [4, 4, 20, 14]]),
                                torch.tensor([[8.0, 6, 26, 30]])],
        [torch.tensor([2, 0]), torch.tensor([1])])
    g = torch.Generator().manual_seed(seed)
    total = targets.labels.numel()
    return (targets, torch.randn(total, 3, generator=g), torch.rand(total, 4, generator=g) * 3,
            torch.randn(total, generator=g))


def test_losses_equal_their_formulas():
    targets, cls, reg, ctr = small_batch()
    losses, extras = fcos_losses(cls, reg, ctr, targets, num_classes=3)
    pos = (targets.labels >= 0).nonzero().flatten()
    assert len(pos) >= 3
    one_hot = torch.zeros(len(cls), 3)
    one_hot[pos, targets.labels[pos]] = 1
    num_pos = float(len(pos))
    torch.testing.assert_close(losses["loss_fcos_cls"].double(),
                               explicit_focal(cls, one_hot) / num_pos)
    torch.testing.assert_close(losses["loss_fcos_cls"],
                               sigmoid_focal_loss(cls, one_hot, reduction="sum") / num_pos)
    c = targets.centerness[pos].double()
    giou = giou_from_absolute_boxes(reg[pos], targets.reg_targets[pos])
    torch.testing.assert_close(losses["loss_fcos_loc"].double(), (giou * c).sum() / c.sum(),
                               rtol=1e-5, atol=1e-6)
    z = ctr[pos].double()
    bce = -(c * torch.log(torch.sigmoid(z)) + (1 - c) * torch.log(1 - torch.sigmoid(z)))
    torch.testing.assert_close(losses["loss_fcos_ctr"].double(), bce.sum() / num_pos)
    assert extras["loss_denorm"].item() == pytest.approx(c.sum().item(), rel=1e-6)
    assert extras["num_pos_avg"].item() == num_pos
    assert extras["pos_mask"].tolist() == (targets.labels >= 0).tolist()
    assert extras["pos_index"].tolist() == pos.tolist()
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}


def test_centerness_targets_agree_with_area_form():
    """sqrt(min(l,r)/max(l,r) · min(t,b)/max(t,b)) = sqrt(area of the 'inner' / 'outer' box)."""
    targets, *_ = small_batch()
    pos = (targets.labels >= 0).nonzero().flatten()
    for i in pos.tolist():
        l, t, r, b = targets.reg_targets[i].tolist()
        inner, outer = min(l, r) * min(t, b), max(l, r) * max(t, b)
        assert targets.centerness[i].item() == pytest.approx(math.sqrt(inner / outer), rel=1e-5)


def test_reduce_mean_normalisers():
    """A fake 2-process mean where the other process has nothing: both normalisers halve."""
    targets, cls, reg, ctr = small_batch()
    single, extras1 = fcos_losses(cls, reg, ctr, targets, 3)
    halved, extras2 = fcos_losses(cls, reg, ctr, targets, 3, reduce_mean=lambda x: x / 2)
    n = extras1["num_pos_avg"].item()
    assert extras2["num_pos_avg"].item() == max(n / 2, 1.0)
    torch.testing.assert_close(extras2["loss_denorm"], extras1["loss_denorm"] / 2)
    torch.testing.assert_close(halved["loss_fcos_loc"], single["loss_fcos_loc"] * 2)
    ratio = n / max(n / 2, 1.0)
    torch.testing.assert_close(halved["loss_fcos_cls"], single["loss_fcos_cls"] * ratio)


def test_empty_batch_losses_are_finite_and_reach_every_head_parameter():
    shapes, strides = [(4, 4), (2, 2)], [8, 16]
    locs = compute_locations(shapes, strides)
    targets = assign_batch_targets(locs, strides, [(-1, 24), (24, 1e8)], [torch.zeros(0, 4)] * 2,
                                   [torch.zeros(0, dtype=torch.int64)] * 2)
    head = FCOSHead(in_channels=8, num_classes=3, num_convs=1)
    out = head([torch.randn(2, 8, h, w) for h, w in shapes])
    losses, extras = fcos_losses(flatten_predictions(out["cls_logits"]),
                                 flatten_predictions(out["bbox_reg"]),
                                 flatten_predictions(out["centerness"]), targets, 3)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_fcos_loc"] == 0 and losses["loss_fcos_ctr"] == 0
    assert extras["num_pos_avg"] == 1 and extras["loss_denorm"].item() == pytest.approx(1e-6)
    assert extras["pos_index"].shape == (0,)
    sum(losses.values()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_losses_under_autocast_and_with_head_gradients():
    targets, *_ = small_batch()
    head = FCOSHead(in_channels=8, num_classes=3, num_convs=1)
    feats = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(feats)
        losses, _ = fcos_losses(flatten_predictions(out["cls_logits"]),
                                flatten_predictions(out["bbox_reg"]),
                                flatten_predictions(out["centerness"]), targets, 3)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert head.bbox_pred.weight.grad.abs().sum() > 0 and head.cls_logits.bias.grad.abs().sum() > 0
