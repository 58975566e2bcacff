"""The blender against plain per-instance loops and hand-computed cases (docs/model.md §5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import roi_align, roi_pool

from blendmask_edu.modeling import blender
from blendmask_edu.modeling.blender import (
    blend,
    blend_training_loss,
    crop_bases,
    mask_loss,
    mask_targets,
    merge,
    paste_masks,
    postprocess_masks,
    resize_attentions,
    scale_boxes,
)

IMAGE_H, IMAGE_W = 64, 80  # input size; bases at stride 4 → 16 × 20
SCALE = 0.25


def random_rois(g, d, num_images=2, degenerate=False):
    """(d, 5) rois (image index, x0, y0, x1, y1) in a 64 × 80 input, some crossing its border."""
    xy = torch.rand(d, 2, generator=g, dtype=torch.float64) * torch.tensor([IMAGE_W, IMAGE_H]) - 8
    size = torch.rand(d, 2, generator=g, dtype=torch.float64) * 40 + (0 if degenerate else 1)
    index = torch.randint(num_images, (d, 1), generator=g).double()
    return torch.cat([index, xy, xy + size], dim=1)


def blend_one_by_one(bases, attentions, rois, r, pooler="roi_align", mode="bilinear"):
    """The blender written plainly, one instance at a time."""
    k = bases.shape[1]
    out = []
    for d in range(rois.shape[0]):
        if pooler == "roi_align":
            crop = roi_align(bases, rois[d:d + 1], output_size=r, spatial_scale=SCALE,
                             sampling_ratio=1, aligned=True)[0]
        else:
            crop = roi_pool(bases, rois[d:d + 1], output_size=r, spatial_scale=SCALE)[0]
        m = round((attentions.shape[1] / k) ** 0.5)
        a = attentions[d].reshape(1, k, m, m)
        if mode == "bilinear":
            a = F.interpolate(a, size=(r, r), mode="bilinear", align_corners=False)
        else:
            a = F.interpolate(a, size=(r, r), mode="nearest")
        weights = torch.softmax(a[0], dim=0)
        out.append((weights * crop).sum(dim=0))
    return torch.stack(out)


@pytest.mark.parametrize("k, m, r, pooler, mode", [
    (4, 14, 56, "roi_align", "bilinear"), (2, 3, 4, "roi_align", "bilinear"),
    (3, 4, 9, "roi_align", "nearest"), (4, 7, 14, "roi_pool", "bilinear"),
    (1, 5, 5, "roi_align", "bilinear"),
])
def test_blend_equals_per_instance_loop(k, m, r, pooler, mode):
    g = torch.Generator().manual_seed(k * 100 + m)
    bases = torch.randn(2, k, IMAGE_H // 4, IMAGE_W // 4, generator=g, dtype=torch.float64)
    attentions = torch.randn(7, k * m * m, generator=g, dtype=torch.float64) * 3
    rois = random_rois(g, 7)
    assert rois[:, 0].unique().numel() == 2  # both images are used
    out = blend(bases, attentions, rois, r, SCALE, pooler=pooler, interpolation=mode)
    assert out.shape == (7, r, r) and out.dtype == torch.float64
    expected = blend_one_by_one(bases, attentions, rois, r, pooler, mode)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # the (D, K, M, M) form of the attentions gives the same result
    torch.testing.assert_close(blend(bases, attentions.reshape(7, k, m, m), rois, r, SCALE,
                                     pooler=pooler, interpolation=mode), out)


def test_blend_step_functions_compose_to_blend():
    g = torch.Generator().manual_seed(1)
    bases = torch.randn(2, 4, 16, 20, generator=g)
    attentions = torch.randn(5, 4 * 7 * 7, generator=g)
    rois = random_rois(g, 5).float()
    crops = crop_bases(bases, rois, 14, SCALE)
    logits = resize_attentions(attentions, 14, num_bases=4)
    assert crops.shape == logits.shape == (5, 4, 14, 14)
    torch.testing.assert_close(merge(crops, logits), blend(bases, attentions, rois, 14, SCALE))


def test_blend_gradcheck():
    g = torch.Generator().manual_seed(2)
    bases = torch.randn(2, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    attentions = torch.randn(2, 2 * 3 * 3, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 2.0, 3.0, 17.0, 20.0], [1, 5.0, 1.0, 26.0, 13.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda b, a: blend(b, a, rois, 4, SCALE), (bases, attentions))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), k=st.integers(1, 5), m=st.integers(1, 6),
       r=st.integers(1, 12))
def test_blend_is_a_convex_combination_of_the_bases(seed, k, m, r):
    g = torch.Generator().manual_seed(seed)
    bases = torch.randn(2, k, 16, 20, generator=g, dtype=torch.float64) * 5
    attentions = torch.randn(6, k * m * m, generator=g, dtype=torch.float64) * 10
    rois = random_rois(g, 6, degenerate=True)
    crops = crop_bases(bases, rois, r, SCALE)
    out = blend(bases, attentions, rois, r, SCALE)
    assert torch.isfinite(out).all()
    assert (out >= crops.amin(dim=1) - 1e-9).all() and (out <= crops.amax(dim=1) + 1e-9).all()


def test_softmax_after_resize_is_not_softmax_before_resize():
    """Gotcha 1: resize then softmax over K (the model) differs from softmax then resize."""
    g = torch.Generator().manual_seed(3)
    bases = torch.randn(1, 4, 16, 20, generator=g, dtype=torch.float64)
    attentions = torch.randn(3, 4, 7, 7, generator=g, dtype=torch.float64) * 3
    rois = random_rois(g, 3, num_images=1)
    crops = crop_bases(bases, rois, 28, SCALE)
    model = blend(bases, attentions, rois, 28, SCALE)
    wrong_weights = F.interpolate(attentions.softmax(dim=1), size=(28, 28), mode="bilinear",
                                  align_corners=False)
    wrong = (crops * wrong_weights).sum(dim=1)
    assert (model - wrong).abs().max() > 1e-3


def test_attention_layout_is_k_major():
    """A large value in channel k·M² + i·M + j makes pixel (i, j) copy base k there."""
    k, m = 3, 4
    g = torch.Generator().manual_seed(4)
    bases = torch.randn(1, k, m, m, generator=g, dtype=torch.float64)
    # the box covers the whole base map at scale 1 and R = M: crops are exactly the bases,
    # and resizing M → R is the identity
    d = k * m * m
    rois = torch.tensor([[0.0, 0.0, 0.0, m, m]], dtype=torch.float64).expand(d, 5)
    attentions = torch.eye(d, dtype=torch.float64) * 60  # instance c: only channel c is hot
    torch.testing.assert_close(crop_bases(bases, rois, m, 1.0)[0], bases[0])
    out = blend(bases, attentions, rois, m, 1.0)  # (d, M, M)
    for c in range(d):
        kk, i, j = c // (m * m), (c // m) % m, c % m
        assert out[c, i, j].item() == pytest.approx(bases[0, kk, i, j].item(), abs=1e-9)
        others = torch.ones(m, m, dtype=torch.bool)
        others[i, j] = False
        torch.testing.assert_close(out[c][others], bases[0].mean(dim=0)[others])


def test_empty_inputs():
    bases = torch.randn(2, 4, 16, 20)
    assert blend(bases, torch.zeros(0, 4 * 49), torch.zeros(0, 5), 14, SCALE).shape == (0, 14, 14)
    assert paste_masks(torch.zeros(0, 14, 14), torch.zeros(0, 4), (IMAGE_H, IMAGE_W)).shape == (
        0, IMAGE_H, IMAGE_W)
    masks = postprocess_masks(bases, torch.zeros(0, 4 * 49), torch.zeros(0, 4),
                              torch.zeros(0, dtype=torch.int64), (IMAGE_H, IMAGE_W), 14, SCALE)
    assert masks.shape == (0, 1, IMAGE_H, IMAGE_W)


def test_training_loss_without_positives_is_zero_with_gradients():
    bases = torch.randn(2, 4, 16, 20, requires_grad=True)
    all_attentions = torch.randn(30, 4 * 49, requires_grad=True)
    loss = blend_training_loss(
        bases, all_attentions[:0], torch.zeros(0, dtype=torch.int64),
        [torch.zeros(0, 4), torch.zeros(0, 4)],
        [torch.zeros(0, IMAGE_H, IMAGE_W, dtype=torch.uint8)] * 2, torch.zeros(0),
        torch.tensor(1e-6), 14, SCALE, all_attentions=all_attentions)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() == 0
    loss.backward()
    assert bases.grad is not None and all_attentions.grad is not None
    assert (bases.grad == 0).all() and (all_attentions.grad == 0).all()


def test_mask_targets_square_and_left_half():
    mask = torch.zeros(2, 40, 50, dtype=torch.uint8)
    mask[0, 10:30, 5:25] = 1  # fills its box exactly
    mask[1, 10:30, 5:15] = 1  # the left half of the same box
    boxes = torch.tensor([[5.0, 10.0, 25.0, 30.0]] * 2)
    t = mask_targets(mask, boxes, 8)
    assert t.shape == (2, 8, 8) and t.dtype == torch.float32
    assert (t[0] == 1).all()
    assert set(t.unique().tolist()) <= {0.0, 1.0}
    assert (t[1, :, :3] == 1).all() and (t[1, :, 5:] == 0).all()  # one column of tolerance
    assert (t[1] == t[1, :1]).all()  # rows are identical
    # a list of images of different sizes (one without objects), bool masks: concatenated
    other = torch.zeros(1, 33, 21, dtype=torch.bool)
    other[0, 3:9, 2:20] = True
    t2 = mask_targets([mask, torch.zeros(0, 10, 10, dtype=torch.uint8), other],
                      [boxes, torch.zeros(0, 4), torch.tensor([[2.0, 3.0, 20.0, 9.0]])], 8)
    assert t2.shape == (3, 8, 8)
    torch.testing.assert_close(t2[:2], t)
    assert (t2[2] == 1).all()


def test_mask_loss_equals_bce_formula():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 2, 2, generator=g, dtype=torch.float64) * 3
    targets = (torch.rand(3, 2, 2, generator=g) > 0.5).double()
    ctr = torch.tensor([0.2, 0.9, 0.5], dtype=torch.float64)
    denorm = torch.tensor(1.3, dtype=torch.float64)
    p = 1 / (1 + torch.exp(-logits))
    bce = -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p))  # (3, 2, 2)
    expected = sum(ctr[i] * bce[i].sum() / 4 for i in range(3)) / denorm
    torch.testing.assert_close(mask_loss(logits, targets, ctr, denorm), expected)
    torch.testing.assert_close(mask_loss(logits.flatten(1), targets.flatten(1), ctr, denorm),
                               expected)


def test_training_loss_crops_once_per_gt_and_gathers():
    g = torch.Generator().manual_seed(6)
    k, m, r = 4, 5, 12
    bases = torch.randn(2, k, 16, 20, generator=g, dtype=torch.float64)
    boxes = [torch.tensor([[4.0, 6.0, 30.0, 40.0], [40.0, 2.0, 70.0, 30.0]]),
             torch.tensor([[10.0, 10.0, 50.0, 60.0]])]
    masks = [torch.zeros(2, IMAGE_H, IMAGE_W, dtype=torch.uint8),
             torch.zeros(1, IMAGE_H, IMAGE_W, dtype=torch.uint8)]
    masks[0][0, 10:30, 5:20] = 1
    masks[0][1, 5:25, 45:70] = 1
    masks[1][0, 20:55, 15:45] = 1
    gt_index = torch.tensor([0, 2, 2, 1, 0])  # batch-wide: GT 2 is image 1's first GT
    attentions = torch.randn(5, k * m * m, generator=g, dtype=torch.float64)
    ctr = torch.rand(5, generator=g, dtype=torch.float64)
    denorm = ctr.sum()
    loss = blend_training_loss(bases, attentions, gt_index, boxes, masks, ctr, denorm, r, SCALE)
    image_of_gt = torch.tensor([0.0, 0.0, 1.0])
    all_boxes = torch.cat(boxes).double()
    rois = torch.cat([image_of_gt[gt_index, None].double(), all_boxes[gt_index]], dim=1)
    mask_of_gt = [m for per_image in masks for m in per_image]
    expected_targets = torch.stack([mask_targets(mask_of_gt[i][None], all_boxes[i:i + 1], r)[0]
                                    for i in gt_index])
    expected = mask_loss(blend(bases, attentions, rois, r, SCALE), expected_targets, ctr, denorm)
    torch.testing.assert_close(loss, expected)
    assert 0 < loss.item() < 10


def tent(u, box_len, size):
    """Bilinear weights (len(u), size) of pixel centres u (relative to the box origin)."""
    src = u[:, None] / box_len * size - 0.5  # continuous index into the R-sized map
    return (1 - (src - torch.arange(size, dtype=torch.float64)).abs()).clamp_min(0)


def test_paste_hand_case_2x2():
    probs = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], dtype=torch.float64)
    out = paste_masks(probs, torch.tensor([[1.0, 2.0, 5.0, 6.0]], dtype=torch.float64), (8, 7))
    assert out.shape == (1, 8, 7)
    wy = tent(torch.arange(8, dtype=torch.float64) + 0.5 - 2, 4, 2)  # (8, 2)
    wx = tent(torch.arange(7, dtype=torch.float64) + 0.5 - 1, 4, 2)  # (7, 2)
    torch.testing.assert_close(out[0], wy @ probs[0] @ wx.T)
    # by hand: the first pixel inside the box is 3/4 of the way to map cell (0, 0)'s centre
    assert out[0, 2, 1].item() == pytest.approx(0.75 * 0.75 * 1.0)
    assert out[0, 3, 2].item() == pytest.approx(0.75 * 0.75 * 1 + 0.75 * 0.25 * 2
                                                + 0.25 * 0.75 * 3 + 0.25 * 0.25 * 4)
    assert out[0, 1, 1].item() == pytest.approx(0.25 * 0.75 * 1.0)  # zero padding bleeds in
    assert out[0, 0].abs().max() == 0 and out[0, :, 6].abs().max() == 0


def within_one_pixel(pred, expected):
    """pred holds expected shrunk by one pixel and lies inside expected grown by one pixel."""
    def grow(m):
        return F.max_pool2d(m.float()[:, None], 3, 1, 1)[:, 0] > 0

    return bool((pred | grow(~expected)).all() and (~pred | grow(expected)).all())


@pytest.mark.parametrize("r", [14, 28, 56])
def test_paste_box_aligned_square(r):
    out = paste_masks(torch.ones(1, r, r), torch.tensor([[10.0, 20.0, 42.0, 52.0]]), (64, 80))
    expected = torch.zeros(1, 64, 80, dtype=torch.bool)
    expected[0, 20:52, 10:42] = True
    assert torch.equal(out >= 0.5, expected)  # exact at these R; coarser maps round the corners
    assert torch.isclose(out[expected], torch.tensor(1.0)).float().mean() > 0.8


def test_paste_box_half_outside_the_image():
    out = paste_masks(torch.ones(2, 14, 14), torch.tensor([[-16.0, -8.0, 16.0, 24.0],
                                                           [60.0, 50.0, 100.0, 90.0]]), (64, 80))
    expected = torch.zeros(2, 64, 80, dtype=torch.bool)
    expected[0, 0:24, 0:16] = True
    expected[1, 50:, 60:] = True
    assert within_one_pixel(out >= 0.5, expected)
    assert ((out >= 0.5) != expected).sum() <= 2  # at most the inner corner pixel of each


def test_paste_in_chunks_and_empty_boxes(monkeypatch):
    g = torch.Generator().manual_seed(9)
    probs = torch.rand(5, 6, 6, generator=g)
    boxes = torch.tensor([[3.0, 4, 30, 20], [10.5, 5, 10.5, 30], [0, 0, 80, 64],
                          [20, 40, 2, 50], [-5, 30, 40, 70]])  # zero-width and inverted boxes
    whole = paste_masks(probs, boxes, (64, 80))
    monkeypatch.setattr(blender, "PASTE_CHUNK", 2 * 64 * 80)  # two instances per chunk
    torch.testing.assert_close(paste_masks(probs, boxes, (64, 80)), whole)
    assert (whole[1] == 0).all() and (whole[3] == 0).all()
    assert (whole[[0, 2, 4]].flatten(1).amax(dim=1) > 0.5).all()


def test_postprocess_clips_boxes_before_pooling():
    g = torch.Generator().manual_seed(7)
    bases = torch.randn(2, 4, 16, 20, generator=g)
    attentions = torch.randn(3, 4 * 49, generator=g)
    boxes = torch.tensor([[-10.0, 5.0, 30.0, 40.0], [50.0, 30.0, 95.0, 70.0], [5, 5, 20, 20]])
    batch_index = torch.tensor([0, 1, 1])
    out = postprocess_masks(bases, attentions, boxes, batch_index, (64, 80), 14, SCALE)
    assert out.shape == (3, 1, 64, 80)
    clipped = torch.tensor([[0.0, 5.0, 30.0, 40.0], [50.0, 30.0, 80.0, 64.0], [5, 5, 20, 20]])
    rois = torch.cat([batch_index[:, None].float(), clipped], dim=1)
    expected = paste_masks(blend(bases, attentions, rois, 14, SCALE).sigmoid(), clipped, (64, 80))
    torch.testing.assert_close(out[:, 0], expected)
    assert (out >= 0).all() and (out <= 1).all()


def test_postprocess_pools_at_the_input_size_and_pastes_at_the_output_size():
    # The test-time resize made a 96 × 120 image 64 × 80 (× 2/3): the boxes pool in the bases of
    # the 64 × 80 input, and the same R × R maps are pasted into the 96 × 120 original.
    g = torch.Generator().manual_seed(8)
    bases = torch.randn(1, 4, 16, 20, generator=g)
    attentions = torch.randn(2, 4 * 49, generator=g)
    boxes = torch.tensor([[-10.0, 5.0, 30.0, 40.0], [50.0, 30.0, 95.0, 70.0]])
    index = torch.zeros(2)
    out = postprocess_masks(bases, attentions, boxes, index, (64, 80), 14, SCALE,
                            output_size=(96, 120))
    assert out.shape == (2, 1, 96, 120)
    clipped = torch.tensor([[0.0, 5.0, 30.0, 40.0], [50.0, 30.0, 80.0, 64.0]])
    probs = blend(bases, attentions, torch.cat([index[:, None], clipped], dim=1), 14,
                  SCALE).sigmoid()
    rescaled = clipped * 1.5  # 96 / 64 = 120 / 80
    torch.testing.assert_close(scale_boxes(clipped, (64, 80), (96, 120)), rescaled)
    torch.testing.assert_close(out[:, 0], paste_masks(probs, rescaled, (96, 120)))
    # without output_size: the input size, as before
    torch.testing.assert_close(postprocess_masks(bases, attentions, boxes, index, (64, 80), 14,
                                                 SCALE)[:, 0], paste_masks(probs, clipped, (64, 80)))


def test_scale_boxes_per_axis_and_clipped():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 40.0], [70.0, 0.0, 80.0, 64.0]])
    out = scale_boxes(boxes, (64, 80), (32, 200))  # × 0.5 vertically, × 2.5 horizontally
    torch.testing.assert_close(out, torch.tensor([[25.0, 10.0, 125.0, 20.0],
                                                  [175.0, 0.0, 200.0, 32.0]]))
    assert torch.equal(scale_boxes(boxes, (64, 80), (64, 80)), boxes)
    assert torch.equal(scale_boxes(torch.tensor([[-3.0, 2.0, 90.0, 70.0]]), (64, 80), (64, 80)),
                       torch.tensor([[0.0, 2.0, 80.0, 64.0]]))
    assert scale_boxes(torch.zeros(0, 4), (64, 80), (32, 40)).shape == (0, 4)


@settings(max_examples=25, deadline=None)
@given(boxes=st.lists(st.tuples(*[st.floats(-50, 150, allow_nan=False)] * 4), min_size=1,
                      max_size=5))
def test_random_boxes_never_give_nan(boxes):
    boxes = torch.tensor(boxes)  # any order of corners: empty and inverted boxes included
    d = boxes.shape[0]
    bases = torch.randn(1, 3, 16, 20)
    masks = postprocess_masks(bases, torch.randn(d, 3 * 16), boxes, torch.zeros(d), (64, 80), 8,
                              SCALE)
    assert torch.isfinite(masks).all()
    pasted = paste_masks(torch.rand(d, 8, 8), boxes, (64, 80))
    assert torch.isfinite(pasted).all()
    empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    assert (pasted[empty] == 0).all()
    x = torch.zeros(1, 64, 80, dtype=torch.uint8)
    x[0, 10:30, 20:40] = 1
    assert torch.isfinite(mask_targets(x.expand(d, -1, -1), boxes, 8)).all()


def test_under_bfloat16_autocast():
    g = torch.Generator().manual_seed(8)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    attn_conv = torch.nn.Conv2d(3, 4 * 16, 1)
    image = torch.randn(2, 3, 16, 20, generator=g)
    gt_boxes = [torch.tensor([[4.0, 6.0, 30.0, 40.0]]), torch.tensor([[10.0, 10.0, 50.0, 60.0]])]
    gt_masks = [torch.ones(1, IMAGE_H, IMAGE_W, dtype=torch.uint8)] * 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bases = conv(image)
        attentions = attn_conv(image)[:, :, 0, :3].permute(0, 2, 1).reshape(6, 64)  # (6, K·M·M)
        assert bases.dtype == torch.bfloat16
        rois = torch.cat([torch.tensor([[0.0], [0], [0], [1], [1], [1]]),
                          torch.tensor([[4.0, 6.0, 30.0, 40.0]]).expand(6, 4)], dim=1)
        logits = blend(bases, attentions, rois, 8, SCALE)
        loss = blend_training_loss(bases, attentions, torch.tensor([0, 0, 1, 1, 1, 0]), gt_boxes,
                                   gt_masks, torch.rand(6), torch.tensor(2.0), 8, SCALE)
        masks = postprocess_masks(bases, attentions, rois[:, 1:], rois[:, 0], (64, 80), 8, SCALE)
        targets = mask_targets(gt_masks, gt_boxes, 8)
    assert logits.dtype == loss.dtype == masks.dtype == targets.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert conv.weight.grad is not None and attn_conv.weight.grad is not None


def test_bad_options_raise():
    bases = torch.randn(1, 4, 16, 20)
    rois = torch.tensor([[0.0, 1, 1, 20, 20]])
    with pytest.raises(ValueError, match="pooler"):
        blend(bases, torch.randn(1, 64), rois, 8, SCALE, pooler="roi_warp")
    with pytest.raises(ValueError, match="interpolation"):
        blend(bases, torch.randn(1, 64), rois, 8, SCALE, interpolation="bicubic")
    with pytest.raises(ValueError, match="K·M·M"):
        blend(bases, torch.randn(1, 63), rois, 8, SCALE)


def _paste_every_pixel(probs, boxes, size):
    """The plain paste: sample every pixel centre of the image for every instance."""
    height, width = size
    out = []
    for p, (x0, y0, x1, y1) in zip(probs.double(), boxes.double().tolist()):
        if x1 <= x0 or y1 <= y0:
            out.append(torch.zeros(height, width, dtype=torch.float64))
            continue
        gx = (torch.arange(width, dtype=torch.float64) + 0.5 - x0) / (x1 - x0) * 2 - 1
        gy = (torch.arange(height, dtype=torch.float64) + 0.5 - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack([gx[None].expand(height, -1), gy[:, None].expand(-1, width)], dim=2)
        out.append(torch.nn.functional.grid_sample(p[None, None], grid[None], mode="bilinear",
                                                   padding_mode="zeros", align_corners=False)[0, 0])
    return torch.stack(out)


def _window_sides(boxes, r, size):
    """(heights, widths, longest) of paste_masks's windows, computed here from its rule: the box
    grown by half a map cell and a pixel, clipped to the image."""
    height, width = size
    x0, y0, x1, y1 = boxes.unbind(1)
    w, h = (x1 - x0).clamp_min(0), (y1 - y0).clamp_min(0)
    left = (x0 - w / (2 * r) - 1).floor().clamp(0, width)
    right = (x1 + w / (2 * r) + 1).ceil().clamp(0, width)
    top = (y0 - h / (2 * r) - 1).floor().clamp(0, height)
    bottom = (y1 + h / (2 * r) + 1).ceil().clamp(0, height)
    return (bottom - top).long(), (right - left).long(), max(size)


@pytest.mark.parametrize("grouped", [False, True], ids=["one window", "size groups"])
@pytest.mark.parametrize("r", [4, 14, 28])
def test_paste_window_equals_sampling_every_pixel(r, grouped, monkeypatch):
    """The windowed paste gives the numbers of the every-pixel paste: big boxes whose fade
    reaches several pixels out, tiny ones, boxes over the image border, empty ones; in one
    window size for all (few pixels) or in groups of similar size (many)."""
    if grouped:
        monkeypatch.setattr(blender, "PASTE_ONE_WINDOW", 0)
    g = torch.Generator().manual_seed(r)
    xy = torch.rand(40, 2, generator=g, dtype=torch.float64) * 120 - 20
    wh = torch.rand(40, 2, generator=g, dtype=torch.float64) ** 2 * 150
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[3, 2] = boxes[3, 0]  # zero width
    boxes[7] = torch.tensor([-30.0, -40.0, 200.0, 170.0], dtype=torch.float64)  # bigger than the image
    probs = torch.rand(40, r, r, generator=g, dtype=torch.float64)
    expected = _paste_every_pixel(probs, boxes, (96, 112))
    torch.testing.assert_close(paste_masks(probs, boxes, (96, 112)), expected, rtol=0, atol=1e-12)
    monkeypatch.setattr(blender, "PASTE_CHUNK", 3000)  # a few instances per chunk
    torch.testing.assert_close(paste_masks(probs, boxes, (96, 112)), expected, rtol=0, atol=1e-12)
    if grouped:  # the groups are what the test meant: several window sizes
        sizes = {(h, w) for _, h, w in blender._size_groups(*_window_sides(boxes, r, (96, 112)))}
        assert len(sizes) >= 5, sizes
