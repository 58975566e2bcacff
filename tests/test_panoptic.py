"""Panoptic extension: semantic head shapes, semantic loss and inference, the fusion heuristic."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from blendmask_edu.modeling.basis import fuse_levels
from blendmask_edu.data.files import id_to_rgb
from blendmask_edu.fileio import write_json
from blendmask_edu.modeling.panoptic import (
    SemanticHead,
    fuse,
    pad_semantic_targets,
    semantic_inference,
    semantic_loss,
    stuff_area_for,
)
from blendmask_edu.evaluation.panoptic_quality import panoptic_quality
from conftest import shapes_split

CIN = 8


def pyramid(height, width, strides, n=2, channels=CIN, seed=0):
    """Random FPN levels of a padded (height, width) batch, sized as stride-2 convs make them:
    P3 = H/8, then each level ⌈previous / 2⌉ (a 3 × 5 P5 gives a 2 × 3 P6)."""
    g = torch.Generator().manual_seed(seed)
    h, w = height // strides[0], width // strides[0]
    levels = []
    for _ in strides:
        levels.append(torch.randn(n, channels, h, w, generator=g))
        h, w = -(-h // 2), -(-w // 2)
    return levels


@pytest.fixture(scope="module")
def shapes_val(tmp_path_factory):
    return shapes_split(tmp_path_factory, num_train=0, num_val=2, size=128)


# ----------------------------------------------------------------------------- semantic head


@pytest.mark.parametrize("strides", [(4, 8, 16, 32), (8, 16, 32), (8, 16, 32, 64, 128)])
@pytest.mark.parametrize("size", [(96, 160), (128, 128), (200, 248)])
def test_semantic_head_reaches_stride_4(strides, size):
    torch.manual_seed(0)
    head = SemanticHead(CIN, 5, channels=16, strides=strides)
    logits = head(pyramid(*size, strides))
    assert logits.shape == (2, 5, size[0] // 4, size[1] // 4)
    # log2(s) − 2 conv blocks per level, at least one: P2 1, P3 1, P4 2, P5 3 (, P6 4, P7 5)
    assert [len(stack) for stack in head.stacks] == [max(1, int(math.log2(s)) - 2) for s in strides]


def test_semantic_head_ignores_extra_levels_and_rejects_too_few():
    torch.manual_seed(0)
    head = SemanticHead(CIN, 3, channels=16).eval()  # P2–P5, Panoptic-FPN's levels
    assert head.strides == (4, 8, 16, 32)
    levels = pyramid(64, 64, (4, 8, 16, 32, 64))
    torch.testing.assert_close(head(levels), head(levels[:4]))
    with pytest.raises(ValueError, match="4 level"):
        head(levels[:3])
    with pytest.raises(ValueError, match="powers of two"):
        SemanticHead(CIN, 3, strides=(8, 12))


def test_semantic_head_norm_and_init():
    head = SemanticHead(CIN, 3, channels=8)
    norms = [m for m in head.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == 8 for m in norms)  # 32 groups need ≥ 32 channels
    assert all(m.num_groups == 32 for m in SemanticHead(CIN, 3).modules()
               if isinstance(m, torch.nn.GroupNorm))
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.bias is None or not m.bias.any() for m in convs)
    assert all(m.bias is None for m in convs[:-1])  # a norm follows every 3×3 conv


def test_shared_head_reads_the_fused_stride_8_map():
    torch.manual_seed(0)
    head = SemanticHead(CIN, 4, channels=16, shared=True)
    assert [len(stack) for stack in head.stacks] == [1]  # one block + ×2
    fused = fuse_levels(pyramid(96, 160, (8, 16, 32)))  # (2, CIN, 12, 20), as the bottom module
    assert head(fused).shape == (2, 4, 24, 40)
    assert head([fused]).shape == (2, 4, 24, 40)


# ----------------------------------------------------------------------------- loss, inference


def test_semantic_loss_matches_a_hand_computed_cross_entropy():
    # A 1×1 logit map upsamples ×4 to a constant 4×4 map: softmax(0, log 3) = (1/4, 3/4).
    # The 2×2 target is padded with 255 to 4×4, leaving 3 labelled pixels: 0, 1, 1.
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    targets = torch.tensor([[[0, 1], [255, 1]]])
    expected = 0.5 * (math.log(4.0) + 2 * math.log(4.0 / 3.0)) / 3
    assert semantic_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    unweighted = semantic_loss(logits, targets, weight=1.0).item()
    assert unweighted == pytest.approx(2 * expected, rel=1e-6)


def test_semantic_loss_equals_torch_mean_cross_entropy_on_a_full_target():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 5)
    targets = torch.randint(0, 4, (2, 24, 20))
    targets[0, :3] = 255
    up = F.interpolate(logits, size=(24, 20), mode="bilinear", align_corners=False)
    expected = 0.5 * F.cross_entropy(up, targets, ignore_index=255)
    torch.testing.assert_close(semantic_loss(logits, targets), expected)


def test_semantic_loss_all_ignored_is_zero_with_a_gradient():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = semantic_loss(logits, torch.full((2, 16, 16), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert not logits.grad.any()
    with pytest.raises(ValueError, match="do not fit"):
        semantic_loss(logits, torch.zeros(2, 20, 16, dtype=torch.int64))


def test_pad_semantic_targets_puts_maps_top_left_and_pads_with_255():
    a = torch.zeros(3, 4, dtype=torch.int64)
    b = torch.ones(5, 2, dtype=torch.int64)
    out = pad_semantic_targets([a, b], (5, 6))
    assert out.shape == (2, 5, 6) and out.dtype == torch.int64
    assert (out[0, :3, :4] == 0).all()
    assert (out[0, 3:] == 255).all() and (out[0, :, 4:] == 255).all()
    assert (out[1, :, :2] == 1).all() and (out[1, :, 2:] == 255).all()
    with pytest.raises(ValueError, match="larger"):
        pad_semantic_targets([torch.zeros(6, 6, dtype=torch.int64)], (5, 6))


def test_semantic_inference_crops_the_padding_and_resizes():
    torch.manual_seed(0)
    logits = torch.randn(3, 24, 40)  # one image of a batch padded to 96 × 160
    probs = semantic_inference(logits, (90, 150), (96, 160))
    assert probs.shape == (3, 90, 150)
    torch.testing.assert_close(probs.sum(0), torch.ones(90, 150))
    up = F.interpolate(logits[None], size=(96, 160), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(probs, up[:, :90, :150].softmax(0))
    labels = semantic_inference(logits, (90, 150), (96, 160), labels=True)
    assert labels.dtype == torch.int64 and torch.equal(labels, probs.argmax(0))
    resized = semantic_inference(logits, (90, 150), (96, 160), output_size=(45, 75))
    assert resized.shape == (3, 45, 75)


def test_stuff_area_scales_below_cocos_image_size():
    assert stuff_area_for((800, 1200)) == 4096
    assert stuff_area_for((480, 640)) == 4096  # a COCO image: the official value as it is
    assert stuff_area_for((128, 128)) == 164  # 4096 · (128 / 640)² = 163.8


def test_head_overfits_one_shapes_image(shapes_val):
    """The head alone, on fixed features (the image average-pooled to strides 4, 8, 16, 32), learns
    one image's semantic map: the loss falls by ≥ 50 % and ends below the loss of predicting
    the class frequencies everywhere (so it learned where, not only how much)."""
    torch.manual_seed(0)
    image, target = shapes_val[0]
    sem = target["sem_seg"][None]  # (1, 128, 128)
    features = [F.avg_pool2d(image[None], s) for s in (4, 8, 16, 32)]  # P2–P5 sizes
    head = SemanticHead(3, shapes_val.categories.num_semantic, channels=16)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(24):
        loss = semantic_loss(head(features), sem)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    freq = torch.bincount(sem[sem != 255]).double()
    freq = freq[freq > 0] / freq.sum()
    prior_loss = 0.5 * float(-(freq * freq.log()).sum())
    assert losses[-1] <= 0.5 * losses[0]
    assert losses[-1] < prior_loss


# ----------------------------------------------------------------------------- fuse


def box(y0, y1, x0, x1, size=(20, 20)):
    m = torch.zeros(size, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def check_segments(ids, segments):
    """segments_info ids are unique, 1..n, and each matches its pixels in the id map."""
    seg_ids = [s["id"] for s in segments]
    assert seg_ids == list(range(1, len(segments) + 1))
    assert set(ids.unique().tolist()) - {0} == set(seg_ids)
    for s in segments:
        assert int((ids == s["id"]).sum()) == s["area"] > 0


def test_fuse_drops_instances_under_the_score_threshold():
    masks = torch.stack([box(0, 5, 0, 5), box(10, 15, 10, 15)])
    scores, labels = torch.tensor([0.1, 0.9]), torch.tensor([3, 4])
    sem = torch.zeros(20, 20, dtype=torch.int64)
    ids, segments = fuse(masks, scores, labels, sem, stuff_area=0)
    assert [(s["category_id"], s["instance_id"]) for s in segments] == [(4, 1)]
    assert not ids[0:5, 0:5].any()
    check_segments(ids, segments)
    ids, segments = fuse(masks, scores, labels, sem, score_thresh=0.1, stuff_area=0)
    assert [s["category_id"] for s in segments] == [4, 3]  # by score; 0.1 = threshold is kept
    check_segments(ids, segments)


def test_fuse_skips_covered_instances_and_keeps_only_visible_pixels():
    # A (score 0.9) is 10 × 10. B (0.8) is 10 × 10 with 50 of its pixels under A: 0.5 > 0.4,
    # skipped. C (0.7) is 10 × 10 with 40 under A: 0.4 is not > 0.4, kept with 60 pixels.
    a, b, c = box(0, 10, 0, 10), box(5, 15, 0, 10), box(0, 10, 6, 16)
    masks = torch.stack([c, a, b]).float() * 0.9  # probabilities, binarised at 0.5
    scores, labels = torch.tensor([0.7, 0.9, 0.8]), torch.tensor([1, 2, 3])
    sem = torch.zeros(20, 20, dtype=torch.int64)
    ids, segments = fuse(masks, scores, labels, sem, stuff_area=0)
    assert [(s["category_id"], s["area"]) for s in segments] == [(2, 100), (1, 60)]
    assert (ids[a] == 1).all()
    assert torch.equal(ids == 2, c & ~a)
    check_segments(ids, segments)
    _, segments = fuse(masks, scores, labels, sem, overlap_thresh=0.3, stuff_area=0)
    assert [s["category_id"] for s in segments] == [2]


def test_fuse_trace_records_every_decision_in_order():
    # A 0.9 kept; B 0.8 half under A → overlap; C 0.7 kept (40 % under A); D 0.1 stops the walk;
    # E 0.05 is never looked at. Stuff: label 1 has 168 free px (kept), label 2 has 60 (< 70).
    a, b, c, d, e = (box(0, 10, 0, 10), box(5, 15, 0, 10), box(0, 10, 6, 16),
                     box(15, 20, 15, 20), box(15, 20, 0, 5))
    masks = torch.stack([a, b, c, d, e])
    scores, labels = torch.tensor([0.9, 0.8, 0.7, 0.1, 0.05]), torch.tensor([1, 2, 3, 4, 5])
    sem = torch.zeros(20, 20, dtype=torch.int64)
    sem[:, 16:] = 1  # 80 px, none under an instance
    sem[15:, :15] = 2  # 75 px, 0 under kept instances (D is dropped): 75 ≥ 70 kept
    trace = []
    ids, segments = fuse(masks, scores, labels, sem, stuff_area=70, trace=trace)
    assert [(t.get("instance_id"), t["decision"]) for t in trace] == [
        (0, "kept"), (1, "overlap"), (2, "kept"), (3, "below score_thresh"),
        (None, "kept"), (None, "kept")]
    assert trace[1]["overlap"] == 0.5 and trace[2]["overlap"] == 0.4 and trace[3]["overlap"] is None
    assert [(t["label"], t["area"]) for t in trace[4:]] == [(1, 80), (2, 75)]
    # the trace changes nothing
    assert torch.equal(ids, fuse(masks, scores, labels, sem, stuff_area=70)[0])
    trace = []
    fuse(masks, scores, labels, sem, stuff_area=78, trace=trace)
    assert [t["decision"] for t in trace[4:]] == ["kept", "below stuff_area"]


def test_fuse_places_stuff_of_at_least_stuff_area_on_free_pixels():
    sem = torch.full((20, 20), 255, dtype=torch.int64)
    sem[:10] = 1  # 200 px, 32 of them under the instance → 168 free: kept
    sem[10:13] = 2  # 60 px < 70: dropped
    sem[13:15] = 0  # "things" with no instance: stays void
    sem[15:] = 3  # 100 px, but 40 under the instance → 60 free < 70: dropped
    instance = box(6, 20, 0, 8)  # 14 × 8 = 112 px
    ids, segments = fuse(instance[None], torch.tensor([0.9]), torch.tensor([5]), sem,
                         stuff_area=70, stuff_ids=[16, 17, 18])
    assert [(s["category_id"], s["isthing"], s["area"]) for s in segments] == \
        [(5, True, 112), (16, False, 168)]
    assert "score" in segments[0] and "score" not in segments[1]
    assert (ids[10:, 8:] == 0).all()  # dropped stuff, things without an instance
    check_segments(ids, segments)
    # the default limit is scaled to the image (stuff_area_for((20, 20)) = 4 px): all kept
    _, segments = fuse(instance[None], torch.tensor([0.9]), torch.tensor([5]), sem)
    assert [s["category_id"] for s in segments] == [5, 1, 2, 3]


def test_fuse_takes_model_outputs_and_empty_detections():
    sem_probs = torch.zeros(3, 20, 20)
    sem_probs[2, :, :] = 1.0  # argmax → label 2 everywhere
    ids, segments = fuse(torch.zeros(0, 1, 20, 20), torch.zeros(0), torch.zeros(0), sem_probs,
                         stuff_area=0, stuff_ids=[10, 11])
    assert segments == [{"id": 1, "category_id": 11, "isthing": False, "area": 400}]
    assert (ids == 1).all() and ids.dtype == torch.int64


def test_fuse_of_the_ground_truth_scores_pq_100(shapes_val, tmp_path):
    """GT instances (score 1) + the GT semantic map through ``fuse`` rebuild the GT panoptic
    map up to segment ids: PQ 100 (fuse, the PNG/JSON writing and panoptic_quality together)."""
    cats = shapes_val.categories
    with open(shapes_val.panoptic_json, encoding="utf-8") as f:
        gt_json = json.load(f)
    annotations = []
    for i in range(len(shapes_val)):
        _, target = shapes_val[i]
        labels = cats.category_id(target["labels"])
        ids, segments = fuse(target["masks"], torch.ones(len(labels)), labels, target["sem_seg"],
                             stuff_area=0, stuff_ids=cats.stuff_ids)
        check_segments(ids, segments)
        name = f"{target['image_id']}.png"
        Image.fromarray(id_to_rgb(ids.numpy())).save(tmp_path / name)
        annotations.append({"image_id": target["image_id"], "file_name": name,
                            "segments_info": segments})
    write_json(tmp_path / "pred.json", {"annotations": annotations})
    result = panoptic_quality(gt_json, shapes_val.panoptic_dir, tmp_path / "pred.json", tmp_path)
    assert result["All"]["pq"] == pytest.approx(100.0)
    assert result["Things"]["n"] > 0 and result["Stuff"]["n"] > 0


def test_fuse_ids_are_consistent_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(30, 24, 32, generator=g) > 0.7
    scores = torch.rand(30, generator=g)
    sem = torch.randint(0, 5, (24, 32), generator=g)
    ids, segments = fuse(masks, scores, torch.arange(30), sem, stuff_area=10)
    check_segments(ids, segments)
    things = [s for s in segments if s["isthing"]]
    assert things and all(s["score"] >= 0.2 for s in things)
    assert len({s["instance_id"] for s in things}) == len(things)
