"""FCOS geometry and head: locations, target assignment, batching, box coding, FCOSHead."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blendmask_edu.assignments.fcos_tasks import _assign as checker_assign
from blendmask_edu.modeling import fcos
from blendmask_edu.modeling.fcos import (
    FCOSHead,
    assign_batch_targets,
    assign_targets,
    centerness_targets,
    compute_locations,
    decode_boxes,
    flatten_predictions,
    location_strides,
    size_ranges_from_sizes,
)

STRIDES = [8, 16, 32]
RANGES = [(-1.0, 64.0), (64.0, 128.0), (128.0, 1e8)]


def levels_for(size, strides=STRIDES):
    shapes = [(math.ceil(size / s), math.ceil(size / s)) for s in strides]
    return shapes, compute_locations(shapes, strides)


def positives_by_level(targets, locations):
    """{level: {(x, y): flat index}} of the positive locations."""
    out, start = {}, 0
    for level, points in enumerate(locations):
        labels = targets.labels[start:start + len(points)]
        out[level] = {tuple(points[i].int().tolist()): start + i
                      for i in (labels >= 0).nonzero().flatten().tolist()}
        start += len(points)
    return out


# ---------------------------------------------------------------- locations

def test_locations_hand_values_2x3_stride_8():
    (loc,) = compute_locations([(2, 3)], [8])
    assert loc.dtype == torch.float32 and loc.shape == (6, 2)
    expected = [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]  # row-major (y, then x)
    assert loc.tolist() == expected


def test_locations_several_levels_and_odd_stride():
    locs = compute_locations([(4, 5), (2, 3), (1, 1)], [8, 16, 3])
    assert [tuple(p.shape) for p in locs] == [(20, 2), (6, 2), (1, 2)]
    assert locs[1][4].tolist() == [1 * 16 + 8, 1 * 16 + 8]
    assert locs[2][0].tolist() == [1.0, 1.0]  # ⌊3/2⌋ = 1


def test_size_ranges_and_location_strides():
    assert size_ranges_from_sizes([64, 128, 256, 512]) == [
        (-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, 1e8)]
    assert location_strides([2, 1], [8, 16]).tolist() == [8.0, 8.0, 16.0]


# ---------------------------------------------------------------- assignment, by hand

def test_one_box_exact_positives_targets_and_centerness():
    _, locs = levels_for(64, [8, 16])
    box = torch.tensor([[10.0, 20.0, 50.0, 44.0]])  # centre (30, 32)
    t = assign_targets(locs, [8, 16], RANGES[:2], box, torch.tensor([3]))
    # P3: region x in (30-12, 30+12) = (18, 42), y in (20, 44) after clipping to the box
    # → x in {20, 28, 36}, y in {28, 36}; all max distances <= 64.
    # P4: region (10, 50) x (20, 44) → x, y in {24, 40}; max distance < 64 → none.
    pos = positives_by_level(t, locs)
    assert set(pos[0]) == {(20, 28), (28, 28), (36, 28), (20, 36), (28, 36), (36, 36)}
    assert pos[1] == {}
    by_hand = {  # (x, y): (l, t, r, b) in pixels, centerness
        (20, 28): ((10, 8, 30, 16), math.sqrt(10 / 30 * 8 / 16)),
        (28, 28): ((18, 8, 22, 16), math.sqrt(18 / 22 * 8 / 16)),
        (36, 28): ((26, 8, 14, 16), math.sqrt(14 / 26 * 8 / 16)),
        (20, 36): ((10, 16, 30, 8), math.sqrt(10 / 30 * 8 / 16)),
        (28, 36): ((18, 16, 22, 8), math.sqrt(18 / 22 * 8 / 16)),
        (36, 36): ((26, 16, 14, 8), math.sqrt(14 / 26 * 8 / 16)),
    }
    for xy, (ltrb, ctr) in by_hand.items():
        i = pos[0][xy]
        assert i == ((xy[1] - 4) // 8) * 8 + (xy[0] - 4) // 8  # row-major index on the 8x8 map
        assert t.labels[i] == 3 and t.gt_index[i] == 0
        torch.testing.assert_close(t.reg_targets[i], torch.tensor(ltrb, dtype=torch.float32) / 8)
        assert t.centerness[i].item() == pytest.approx(ctr, rel=1e-6)
    neg = t.labels < 0
    assert (t.gt_index[neg] == -1).all() and (t.centerness[neg] == 0).all()
    assert (t.reg_targets[neg] == 0).all() and t.num_gts == 1
    assert t.labels.shape == (64 + 16,) and t.reg_targets.shape == (80, 4)


def test_size_range_bounds_are_inclusive_on_both_levels():
    """A box whose largest distance is exactly 64 px at a P3 and at a P4 location."""
    _, locs = levels_for(256)
    box = torch.tensor([[40.0, 8.0, 100.0, 132.0]])  # centre (70, 70)
    t = assign_targets(locs, STRIDES, RANGES, box, torch.tensor([0]))
    pos = positives_by_level(t, locs)
    # P3: region (58, 82)²: y = 60 has b = 72 > 64, y = 76 has t = 68 > 64; y = 68 has t = 60,
    # b = 64 = the upper bound of P3.
    assert set(pos[0]) == {(60, 68), (68, 68), (76, 68)}
    at = lambda level, xy: t.reg_targets[pos[level][xy]]  # noqa: E731
    torch.testing.assert_close(at(0, (68, 68)), torch.tensor([28, 60, 32, 64.0]) / 8)
    # P4: region (46, 94)² → {56, 72, 88}²; at y = 72 the max is t = 64 = the lower bound of P4.
    assert set(pos[1]) == {(x, y) for x in (56, 72, 88) for y in (56, 72, 88)}
    torch.testing.assert_close(at(1, (72, 72)), torch.tensor([32, 64, 28, 60.0]) / 16)
    assert pos[2] == {}  # every P5 max distance < 128


def test_overlapping_boxes_smaller_area_wins_and_ties_go_to_lowest_index():
    _, locs = levels_for(64, [8])
    big, small = [0.0, 0.0, 64.0, 64.0], [16.0, 16.0, 48.0, 48.0]  # same centre (32, 32)
    for boxes, small_index in (([big, small], 1), ([small, big], 0)):
        t = assign_targets(locs, [8], [(-1, 64)], torch.tensor(boxes), torch.tensor([5, 6]))
        pos = positives_by_level(t, locs)[0]
        assert set(pos) == {(28, 28), (36, 28), (28, 36), (36, 36)}  # both qualify there
        assert all(t.gt_index[i] == small_index for i in pos.values())
        assert all(t.labels[i] == [5, 6][small_index] for i in pos.values())
    t = assign_targets(locs, [8], [(-1, 64)], torch.tensor([small, small]), torch.tensor([1, 2]))
    assert (t.gt_index[t.labels >= 0] == 0).all()


def test_no_gt_gives_all_background():
    _, locs = levels_for(64)
    t = assign_targets(locs, STRIDES, RANGES, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    assert (t.labels == -1).all() and (t.gt_index == -1).all() and t.num_gts == 0
    assert (t.reg_targets == 0).all() and (t.centerness == 0).all()
    assert t.labels.dtype == t.gt_index.dtype == torch.int64


def test_degenerate_boxes_get_no_positives():
    _, locs = levels_for(64)
    boxes = torch.tensor([[20.0, 10, 20, 50],  # zero width
                          [10, 28, 50, 28],  # zero height
                          [40, 40, 30, 30]])  # inverted
    t = assign_targets(locs, STRIDES, RANGES, boxes, torch.tensor([0, 1, 2]))
    assert (t.labels == -1).all()
    assert torch.isfinite(t.reg_targets).all() and torch.isfinite(t.centerness).all()


def test_center_radius_none_is_plain_inside_box():
    _, locs = levels_for(64, [8])
    t = assign_targets(locs, [8], [(-1, 64)], torch.tensor([[0.0, 0, 64, 64]]), torch.tensor([0]),
                       center_radius=None)
    assert (t.labels >= 0).sum() == 64  # every P3 location is inside the box


# ---------------------------------------------------------------- assignment, properties

centre = st.floats(-20, 150, allow_nan=False, width=32)
extent = st.one_of(st.floats(4, 200, width=32), st.floats(4, 200, width=32),  # common sizes
                   st.just(0.0), st.floats(0, 2, width=32), st.floats(200, 1e5, width=32))
box_strategy = st.tuples(centre, centre, extent, extent).map(  # partly outside when near -20/150
    lambda b: [b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2])


@settings(max_examples=40, deadline=None)
@given(st.lists(box_strategy, min_size=0, max_size=6), st.sampled_from([1.5, 0.5, 3.0]))
def test_assignment_invariants_on_random_boxes(box_list, radius):
    _, locs = levels_for(128)
    boxes = torch.tensor(box_list, dtype=torch.float32).reshape(-1, 4)
    labels = torch.arange(len(box_list), dtype=torch.int64) % 3
    t = assign_targets(locs, STRIDES, RANGES, boxes, labels, center_radius=radius)
    for value in (t.reg_targets, t.centerness):
        assert torch.isfinite(value).all()
    points = torch.cat(locs).double()
    stride = location_strides([len(p) for p in locs], STRIDES).double()
    level = torch.repeat_interleave(torch.arange(3), torch.tensor([len(p) for p in locs]))
    pos = (t.labels >= 0).nonzero().flatten()
    assert ((t.gt_index >= 0) == (t.labels >= 0)).all()
    assert (t.centerness[t.labels < 0] == 0).all()
    b64 = boxes.double()
    area = (b64[:, 2] - b64[:, 0]) * (b64[:, 3] - b64[:, 1])
    for i in pos.tolist():
        g = t.gt_index[i].item()
        x, y = points[i].tolist()
        x0, y0, x1, y1 = b64[g].tolist()
        s, tol = stride[i].item(), 1e-3
        assert x0 < x < x1 and y0 < y < y1  # inside the GT box
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, radius * s
        assert abs(x - cx) < r + tol and abs(y - cy) < r + tol  # inside the centre region
        ltrb = [x - x0, y - y0, x1 - x, y1 - y]
        lo, hi = RANGES[level[i]]
        assert lo - tol <= max(ltrb) <= hi * (1 + 1e-6) + tol
        assert t.labels[i] == labels[g]
        expected = torch.tensor(ltrb, dtype=torch.float64) / s
        torch.testing.assert_close(t.reg_targets[i].double(), expected, rtol=1e-5, atol=1e-4)
        ctr = math.sqrt((min(ltrb[0], ltrb[2]) * min(ltrb[1], ltrb[3]))
                        / (max(ltrb[0], ltrb[2]) * max(ltrb[1], ltrb[3])))
        assert 0 < t.centerness[i].item() <= 1
        assert t.centerness[i].item() == pytest.approx(ctr, rel=1e-3)
        # no GT that clearly qualifies here (margin tol, against float32 rounding) is smaller
        d = torch.stack([x - b64[:, 0], y - b64[:, 1], b64[:, 2] - x, b64[:, 3] - y], 1)
        centre = (b64[:, :2] + b64[:, 2:]) / 2
        qualifies = ((d.amin(1) > tol) & ((points[i] - centre).abs().amax(1) < r - tol)
                     & (d.amax(1) > lo + tol) & (d.amax(1) < hi - tol))
        if qualifies.any():
            assert area[g] <= area[qualifies].min() * (1 + 1e-6)


# ---------------------------------------------------------------- batching and flattening

def in_batch_order(labels, gt_index, num_gts, sizes):
    """Hand-made per-image fields (N, L) laid out by ``fcos._in_batch_order``: reg_targets and
    centerness are the labels again, to follow the rows."""
    labels, gt_index = torch.tensor(labels), torch.tensor(gt_index)
    return fcos._in_batch_order(labels, labels[..., None].float().expand(*labels.shape, 4),
                                labels.float() / 100, gt_index, num_gts, sizes)


def test_batch_order_and_gt_offsets():
    # two images of 5 locations in levels of 3 and 2; 2 and 3 GTs
    t = in_batch_order([[0, 1, 2, 3, 4], [10, 11, 12, 13, 14]],
                       [[0, -1, 1, -1, 0], [2, -1, 0, 1, -1]], [2, 3], [3, 2])
    assert t.labels.tolist() == [0, 1, 2, 10, 11, 12, 3, 4, 13, 14]
    assert t.gt_index.tolist() == [0, -1, 1, 4, -1, 2, -1, 0, 3, -1]
    assert t.reg_targets[:, 2].tolist() == [float(v) for v in t.labels.tolist()]
    assert t.centerness.tolist() == pytest.approx([v / 100 for v in t.labels.tolist()])
    assert t.num_gts == 5


@pytest.mark.parametrize("seed", range(12))
def test_batch_assignment_equals_an_independent_one_image_at_a_time(seed, monkeypatch):
    """``assign_batch_targets`` (GT lists padded to the longest, images in chunks) gives, row for
    row, what the assignment checker's own implementation gives image by image, laid out by hand
    in the batch order (level, then image) with the GT offsets. Images without GTs, degenerate
    boxes, one to five images, several centre radii; every other seed in chunks of one or two
    images."""
    g = torch.Generator().manual_seed(seed)
    _, locs = levels_for(96)
    sizes = [len(p) for p in locs]
    num_gts = torch.randint(0, 7, (1 + seed % 5,), generator=g).tolist()
    if seed % 4 == 0:
        num_gts[0] = 0
    boxes, labels = [], []
    for n in num_gts:
        xy = torch.rand(n, 2, generator=g) * 96 - 8
        wh = torch.rand(n, 2, generator=g) * 90 * (torch.rand(n, 1, generator=g) > 0.1)
        boxes.append(torch.cat([xy, xy + wh], dim=1))
        labels.append(torch.randint(0, 5, (n,), generator=g))
    radius = (1.5, 0.5, 3.0)[seed % 3]
    if seed % 2:
        monkeypatch.setattr(fcos, "ASSIGN_CHUNK", 2 * sum(sizes) * max(num_gts))
        assert len(fcos._image_chunks(num_gts, sum(sizes))) >= len(num_gts) / 2
    got = assign_batch_targets(locs, STRIDES, RANGES, boxes, labels, radius)

    per_image = [checker_assign(locs, STRIDES, RANGES, b, c, radius) for b, c in zip(boxes, labels)]
    offsets = [sum(num_gts[:i]) for i in range(len(num_gts))]
    expected = {"labels": [], "reg_targets": [], "gt_index": []}
    for start, size in zip([sum(sizes[:k]) for k in range(len(sizes))], sizes):
        for (lab, reg, gt), offset in zip(per_image, offsets):
            rows = slice(start, start + size)
            expected["labels"].append(lab[rows])
            expected["reg_targets"].append(reg[rows])
            expected["gt_index"].append(torch.where(gt[rows] >= 0, gt[rows] + offset, -1))
    for name, parts in expected.items():
        torch.testing.assert_close(getattr(got, name), torch.cat(parts), rtol=1e-6, atol=1e-6)
    positive = got.labels >= 0
    torch.testing.assert_close(got.centerness, torch.where(
        positive, centerness_targets(got.reg_targets), torch.zeros_like(got.centerness)))
    assert got.num_gts == sum(num_gts) and len(got.labels) == len(num_gts) * sum(sizes)
    assert positive.any() or sum(num_gts) == 0


def test_assignment_chunks_stay_within_the_bound(monkeypatch):
    """Runs of consecutive images whose padded location × GT pairs fit ``ASSIGN_CHUNK``; an image
    too big for it alone still gets a run."""
    monkeypatch.setattr(fcos, "ASSIGN_CHUNK", 100)
    assert fcos._image_chunks([3, 5, 0, 2, 9], 10) == [(0, 2), (2, 4), (4, 5)]
    assert fcos._image_chunks([20, 1], 10) == [(0, 1), (1, 2)]
    assert fcos._image_chunks([0, 0, 0], 10) == [(0, 3)]


def test_flatten_predictions_matches_the_targets_batch_order():
    shapes = [(2, 3), (1, 2)]
    sizes = [h * w for h, w in shapes]
    # prediction channel 0 = image index · 100 + location index within the image
    per_level, start = [], 0
    for h, w in shapes:
        loc = torch.arange(start, start + h * w).reshape(1, 1, h, w)
        per_level.append(torch.cat([loc, loc + 100]).expand(2, 3, h, w).float())  # (N=2, X=3, h, w)
        start += h * w
    flat = flatten_predictions(per_level)
    assert flat.shape == (2 * sum(sizes), 3)
    targets = in_batch_order([[i * 100 + j for j in range(sum(sizes))] for i in range(2)],
                             [[-1] * sum(sizes)] * 2, [0, 0], sizes)
    torch.testing.assert_close(flat[:, 0], targets.labels.float())


# ---------------------------------------------------------------- box coding

@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_decode_inverts_the_stride_unit_distances(seed):
    g = torch.Generator().manual_seed(seed)
    n = 50
    locations = torch.rand(n, 2, generator=g) * 800
    ltrb_px = torch.rand(n, 4, generator=g) * 400
    boxes = torch.cat([locations - ltrb_px[:, :2], locations + ltrb_px[:, 2:]], dim=1)
    strides = torch.tensor([8.0, 16, 32, 64, 128])[torch.randint(0, 5, (n,), generator=g)]
    for s in (strides, 16.0, torch.tensor(16.0)):
        column = s[:, None] if torch.is_tensor(s) and s.dim() == 1 else s
        torch.testing.assert_close(decode_boxes(locations, ltrb_px / column, s), boxes,
                                   atol=1e-4, rtol=0)


def test_decode_by_hand():
    box = decode_boxes(torch.tensor([[20.0, 12.0]]), torch.tensor([[1.0, 0.5, 2.0, 1.5]]), 8)
    assert box.tolist() == [[12.0, 8.0, 36.0, 24.0]]


# ---------------------------------------------------------------- head

def test_head_shapes_and_init():
    head = FCOSHead(in_channels=32, num_classes=5, channels=16)
    sizes = [(8, 10), (4, 5), (2, 3)]
    feats = [torch.randn(2, 32, h, w) for h, w in sizes]
    out = head(feats)
    for key, ch in (("cls_logits", 5), ("bbox_reg", 4), ("centerness", 1), ("box_tower", 16)):
        assert [tuple(t.shape) for t in out[key]] == [(2, ch, h, w) for h, w in sizes]
    assert all((t >= 0).all() for t in out["bbox_reg"])
    torch.testing.assert_close(head.cls_logits.bias, torch.full((5,), -math.log(99.0)))
    assert head.cls_logits.bias[0].item() == pytest.approx(-4.595, abs=1e-3)
    assert head.bbox_pred.bias.abs().max() == 0 and head.out_channels == 16
    big = FCOSHead(in_channels=256, num_classes=80)
    weight = big.cls_tower[0].weight
    assert weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert (big.cls_tower[0].bias == 0).all()
    assert sum(isinstance(m, torch.nn.GroupNorm) and m.num_groups == 32 for m in big.modules()) == 8


@pytest.mark.parametrize("channels, groups", [(8, 8), (12, 12), (48, 24), (256, 32)])
def test_head_groupnorm_with_few_channels(channels, groups):
    head = FCOSHead(in_channels=channels, num_classes=3, num_convs=1)
    assert head.cls_tower[1].num_groups == groups
    assert head([torch.randn(1, channels, 4, 4)])["cls_logits"][0].shape == (1, 3, 4, 4)


@pytest.mark.parametrize("norm", ["GN", "BN", "none"])
def test_head_norms_and_gradients(norm):
    head = FCOSHead(in_channels=8, num_classes=2, num_convs=2, norm=norm)
    out = head([torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)])
    total = sum(t.sum() for key in ("cls_logits", "bbox_reg", "centerness") for t in out[key])
    total.backward()
    assert all(p.grad is not None for p in head.parameters())
    with pytest.raises(ValueError):
        FCOSHead(8, 2, norm="LN")


def test_head_shared_tower_variant_and_autocast():
    head = FCOSHead(in_channels=16, num_classes=3, num_convs=0, num_shared_convs=3, channels=8)
    assert len(head.cls_tower) == 0 and len(head.shared_tower) == 9
    out = head([torch.randn(1, 16, 4, 4)])
    assert out["box_tower"][0].shape == (1, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = FCOSHead(16, 3, num_convs=1)([torch.randn(1, 16, 4, 4)])
    assert torch.isfinite(out["cls_logits"][0].float()).all()


def test_split_batch_index_inverts_the_batch_order():
    from blendmask_edu.modeling import fcos

    sizes, num_images = [6, 4, 1], 3
    expected = [(image, sum(sizes[:level]) + loc) for level in range(len(sizes))
                for image in range(num_images) for loc in range(sizes[level])]
    index = torch.arange(len(expected))
    image, local = fcos.split_batch_index(index, sizes, num_images)
    assert list(zip(image.tolist(), local.tolist())) == expected
