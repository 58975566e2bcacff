"""FCOS post-processing on hand-made score maps."""

from __future__ import annotations

import math

import pytest
import torch

from blendmask_edu.modeling.fcos import compute_locations
from blendmask_edu.modeling.fcos_inference import fcos_postprocess

SHAPES, STRIDES = [(4, 4), (2, 2)], [8, 16]
LOW = -20.0  # a logit whose sigmoid is ~2e-9


def logit(p):
    return math.log(p / (1 - p))


def blank(num_images=1, num_classes=3):
    """Per-level maps: nothing detected anywhere, regression (1, 1, 1, 1)."""
    cls = [torch.full((num_images, num_classes, h, w), LOW) for h, w in SHAPES]
    reg = [torch.ones(num_images, 4, h, w) for h, w in SHAPES]
    ctr = [torch.full((num_images, 1, h, w), LOW) for h, w in SHAPES]
    return cls, reg, ctr


def run(cls, reg, ctr, **kwargs):
    return fcos_postprocess(cls, reg, ctr, compute_locations(SHAPES, STRIDES), STRIDES,
                            [(32, 32)] * cls[0].shape[0], **kwargs)


def put(cls, reg, ctr, level, i, j, label, p_cls, p_ctr, ltrb=(1, 1, 1, 1), image=0):
    cls[level][image, label, i, j] = logit(p_cls)
    ctr[level][image, 0, i, j] = logit(p_ctr)
    reg[level][image, :, i, j] = torch.tensor(ltrb, dtype=torch.float32)


def test_one_location_gives_one_detection():
    cls, reg, ctr = blank()
    # P4 cell (i=1, j=0): location (8, 24); index 16 (all of P3) + 1·2 + 0 = 18
    put(cls, reg, ctr, level=1, i=1, j=0, label=2, p_cls=0.8, p_ctr=0.5, ltrb=(0.25, 0.5, 2.0, 1.0))
    (det,) = run(cls, reg, ctr)
    assert det["boxes"].tolist() == [[8 - 4, 24 - 8, 8 + 32, 24 + 16]]
    assert det["scores"].item() == pytest.approx(math.sqrt(0.8 * 0.5), rel=1e-5)
    assert det["labels"].tolist() == [2] and det["levels"].tolist() == [1]
    assert det["locations_index"].tolist() == [18]
    assert det["labels"].dtype == det["levels"].dtype == det["locations_index"].dtype == torch.int64


def test_threshold_is_on_the_product_and_multilabel():
    cls, reg, ctr = blank()
    put(cls, reg, ctr, 0, 0, 0, label=0, p_cls=0.9, p_ctr=0.05)  # 0.045 < 0.05: dropped
    put(cls, reg, ctr, 0, 3, 3, label=0, p_cls=0.3, p_ctr=0.5)  # 0.15
    cls[0][0, 1, 3, 3] = logit(0.2)  # same location, class 1: 0.10
    det = run(cls, reg, ctr)[0]
    assert det["labels"].tolist() == [0, 1] and det["locations_index"].tolist() == [15, 15]
    assert det["boxes"][0].tolist() == det["boxes"][1].tolist() == [20.0, 20, 36, 36]
    torch.testing.assert_close(det["scores"], torch.tensor([0.15, 0.10]).sqrt())
    assert run(cls, reg, ctr, score_thresh=0.12)[0]["labels"].tolist() == [0]


def test_nms_is_class_aware():
    cls, reg, ctr = blank()
    put(cls, reg, ctr, 0, 1, 1, label=1, p_cls=0.9, p_ctr=0.9, ltrb=(1, 1, 1, 1))  # (4, 4, 20, 20)
    put(cls, reg, ctr, 0, 1, 2, label=1, p_cls=0.8, p_ctr=0.9, ltrb=(2, 1, 0, 1))  # the same box
    put(cls, reg, ctr, 0, 2, 1, label=0, p_cls=0.7, p_ctr=0.9, ltrb=(1, 2, 1, 0))  # same, class 0
    det = run(cls, reg, ctr)[0]
    assert det["labels"].tolist() == [1, 0]
    assert det["locations_index"].tolist() == [5, 9]
    assert det["boxes"].tolist() == [[4.0, 4, 20, 20]] * 2
    assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_max_detections_and_pre_nms_topk():
    cls, reg, ctr = blank()
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(16, generator=g) * 0.5 + 0.4
    for k in range(16):  # 16 separate boxes of one class on P3, no overlap
        put(cls, reg, ctr, 0, k // 4, k % 4, label=0, p_cls=probs[k].item(), p_ctr=0.9,
            ltrb=(0.4, 0.4, 0.4, 0.4))
    assert len(run(cls, reg, ctr)[0]["scores"]) == 16
    det = run(cls, reg, ctr, max_detections=3)[0]
    torch.testing.assert_close(det["scores"], (probs.sort(descending=True).values[:3] * 0.9).sqrt())
    det = run(cls, reg, ctr, pre_nms_topk=5)[0]
    assert sorted(det["locations_index"].tolist()) == sorted(probs.topk(5).indices.tolist())


def test_no_candidates_gives_empty_tensors():
    cls, reg, ctr = blank(num_images=2)
    for det in run(cls, reg, ctr):
        assert det["boxes"].shape == (0, 4) and det["boxes"].dtype == torch.float32
        for key in ("scores", "labels", "levels", "locations_index"):
            assert det[key].shape == (0,)
        assert det["labels"].dtype == torch.int64


def test_images_are_independent_and_clip_option():
    cls, reg, ctr = blank(num_images=2)
    put(cls, reg, ctr, 0, 0, 0, label=1, p_cls=0.9, p_ctr=0.9, ltrb=(2, 1, 1, 1), image=1)
    first, second = run(cls, reg, ctr)
    assert len(first["scores"]) == 0
    assert second["boxes"].tolist() == [[-12.0, -4, 12, 12]]  # not clipped by default
    clipped = run(cls, reg, ctr, clip=True)[1]
    assert clipped["boxes"].tolist() == [[0.0, 0, 12, 12]]


def test_half_precision_inputs():
    cls, reg, ctr = blank()
    put(cls, reg, ctr, 1, 0, 1, label=0, p_cls=0.9, p_ctr=0.9)
    half = lambda maps: [m.bfloat16() for m in maps]  # noqa: E731
    det = run(half(cls), half(reg), half(ctr))[0]
    assert det["boxes"].dtype == torch.float32 and det["locations_index"].tolist() == [17]
