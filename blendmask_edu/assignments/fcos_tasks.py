"""Assignment 2, the FCOS detector: locations, target assignment, centerness, the GIoU loss."""

from __future__ import annotations

import math
from functools import partial
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from blendmask_edu.assignments.checking import Case, Mistake, Task, register
from blendmask_edu.modeling.fcos import (assign_targets, centerness_targets, compute_locations,
                                         size_ranges_from_sizes)
from blendmask_edu.modeling.fcos_loss import giou_loss_ltrb

ASSIGNMENT = "a2_fcos"


# ---- compute_locations ----------------------------------------------------------------------

def _locations(feature_shapes, strides, *, offset=True, xy=True, row_major=True) -> List[Tensor]:
    out = []
    for (h, w), s in zip(feature_shapes, strides):
        xs = torch.arange(w, dtype=torch.float32) * s + (s // 2 if offset else 0)
        ys = torch.arange(h, dtype=torch.float32) * s + (s // 2 if offset else 0)
        y, x = torch.meshgrid(ys, xs, indexing="ij")  # (h, w)
        if not row_major:
            y, x = y.T, x.T
        pair = (x, y) if xy else (y, x)
        out.append(torch.stack([pair[0].reshape(-1), pair[1].reshape(-1)], dim=1))
    return out


def _location_cases() -> List[Case]:
    cases = [
        Case("one level of 2 × 3 cells, stride 8", ([(2, 3)], [8])),
        Case("a single cell at stride 32", ([(1, 1)], [32])),
        Case("three levels, 4 × 6, 2 × 3, 1 × 2 at strides 8, 16, 32",
             ([(4, 6), (2, 3), (1, 2)], [8, 16, 32])),
        Case("a tall level: 3 × 1 at stride 16", ([(3, 1)], [16])),
    ]
    generator = torch.Generator().manual_seed(21)
    for k in range(3):
        shapes = [tuple(int(v) for v in torch.randint(1, 9, (2,), generator=generator))
                  for _ in range(3)]
        cases.append(Case(f"random levels {k}", (shapes, [8, 16, 32]), hidden=True))
    return cases


register(Task(
    name="compute_locations", assignment=ASSIGNMENT, points=2,
    reference=lambda feature_shapes, strides: compute_locations(feature_shapes, strides),
    cases=_location_cases,
    mistakes=(
        Mistake("no_half_stride", "a cell's location is its centre, j·s + ⌊s/2⌋, not its corner "
                                  "j·s.", partial(_locations, offset=False)),
        Mistake("yx_order", "each row is (x, y): the column's coordinate first.",
                partial(_locations, xy=False)),
        Mistake("column_major", "flatten row by row (row-major, as reshape(-1) of an (h, w) map "
                                "does): cell (i, j) is row i·w + j.",
                partial(_locations, row_major=False)),
    )))


# ---- assign_targets -------------------------------------------------------------------------

def assign_targets_reference(locations, strides, size_ranges, boxes, labels,
                             center_radius: float = 1.5) -> Tuple[Tensor, Tensor, Tensor]:
    """The library's targets as (labels (L,), reg_targets (L, 4), gt_index (L,))."""
    t = assign_targets(locations, strides, size_ranges, boxes, labels, center_radius)
    return t.labels, t.reg_targets, t.gt_index


def _assign(locations, strides, size_ranges, boxes, labels, center_radius=1.5, *,
            inclusive=True, clip=True, smallest=True, in_strides=True):
    """A second implementation of the assignment with one rule switchable (the mistakes)."""
    points = torch.cat(list(locations)).float()  # (L, 2)
    counts = [len(p) for p in locations]
    stride = torch.cat([torch.full((n,), float(s)) for n, s in zip(counts, strides)])  # (L,)
    lo = torch.cat([torch.full((n,), float(r[0])) for n, r in zip(counts, size_ranges)])
    hi = torch.cat([torch.full((n,), float(r[1])) for n, r in zip(counts, size_ranges)])
    num = len(points)
    if len(boxes) == 0:
        return (torch.full((num,), -1, dtype=torch.int64), torch.zeros(num, 4),
                torch.full((num,), -1, dtype=torch.int64))
    x, y = points[:, :1], points[:, 1:]  # (L, 1)
    x0, y0, x1, y1 = boxes.float().T[:, None, :]  # (1, G) each
    ltrb = torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=2)  # (L, G, 4)
    radius = center_radius * stride[:, None]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rx0, ry0, rx1, ry1 = cx - radius, cy - radius, cx + radius, cy + radius
    if clip:
        rx0, ry0 = torch.maximum(rx0, x0), torch.maximum(ry0, y0)
        rx1, ry1 = torch.minimum(rx1, x1), torch.minimum(ry1, y1)
    inside = (x > rx0) & (x < rx1) & (y > ry0) & (y < ry1)
    largest = ltrb.amax(dim=2)
    if inclusive:
        in_range = (largest >= lo[:, None]) & (largest <= hi[:, None])
    else:
        in_range = (largest > lo[:, None]) & (largest < hi[:, None])
    candidate = inside & in_range
    area = ((x1 - x0) * (y1 - y0)).expand_as(candidate)
    if smallest:
        best = torch.where(candidate, area, torch.full_like(area, math.inf)).argmin(dim=1)
    else:
        best = torch.where(candidate, area, torch.full_like(area, -math.inf)).argmax(dim=1)
    positive = candidate[torch.arange(num), best]
    chosen = torch.where(positive[:, None], ltrb[torch.arange(num), best], torch.zeros(num, 4))
    if in_strides:
        chosen = chosen / stride[:, None]
    return (torch.where(positive, labels[best], -1), chosen, torch.where(positive, best, -1))


def _assign_cases() -> List[Case]:
    def case(name, size, boxes, labels, hidden=False):
        shapes = [(size // s, size // s) for s in (8, 16, 32)]
        locations = compute_locations(shapes, [8, 16, 32])
        ranges = size_ranges_from_sizes([64, 128])
        return Case(name, (locations, [8, 16, 32], ranges,
                           torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                           torch.tensor(labels, dtype=torch.int64)), hidden=hidden)

    cases = [
        case("one box in the middle of a 128 × 128 image", 128, [[40, 40, 88, 88]], [2]),
        case("a location whose largest distance is exactly 64 px (on P3, the range ends at 64)",
             256, [[36, 80, 164, 120]], [0]),
        case("two nested boxes: the locations on both", 128,
             [[16, 16, 112, 112], [48, 48, 80, 80]], [0, 1]),
        case("a box 6 px wide: the centre region (± 1.5 strides) is wider than the box", 128,
             [[61, 20, 67, 120]], [3]),
        case("no box at all", 128, [], []),
    ]
    generator = torch.Generator().manual_seed(22)
    for k in range(5):
        count = int(torch.randint(1, 7, (1,), generator=generator))
        xy = torch.rand(count, 2, generator=generator) * 100
        wh = 4 + torch.rand(count, 2, generator=generator) * 120
        boxes = torch.cat([xy, (xy + wh).clamp(max=160)], dim=1).round()
        labels = torch.randint(0, 4, (count,), generator=generator)
        cases.append(case(f"random boxes {k}", 160, boxes.tolist(), labels.tolist(), True))
    return cases


register(Task(
    name="assign_targets", assignment=ASSIGNMENT, points=4,
    reference=assign_targets_reference, cases=_assign_cases,
    mistakes=(
        Mistake("exclusive_ranges",
                "both ends of a level's size range are inclusive, lo ≤ max(l, t, r, b) ≤ hi: a "
                "largest distance of exactly 64 px belongs to P3 (and to P4).",
                partial(_assign, inclusive=False)),
        Mistake("centre_region_not_clipped",
                "the centre region (the box centre ± 1.5 strides) must be clipped to the box; "
                "unclipped, a thin box gets positives outside itself (negative distances).",
                partial(_assign, clip=False)),
        Mistake("largest_area_wins",
                "where several boxes qualify, the location goes to the box of SMALLEST area "
                "(FCOS's rule: the small object would otherwise have no location at all).",
                partial(_assign, smallest=False)),
        Mistake("targets_in_pixels",
                "regression targets are in stride units: divide l, t, r, b by the level's "
                "stride.", partial(_assign, in_strides=False)),
    )))


# ---- centerness_targets ---------------------------------------------------------------------

def _centerness_no_sqrt(reg_targets: Tensor) -> Tensor:
    return centerness_targets(reg_targets) ** 2


def _centerness_all_four(reg_targets: Tensor) -> Tensor:
    return (reg_targets.amin(1) / reg_targets.amax(1).clamp_min(1e-12)).sqrt()


def _centerness_plain_ratios(reg_targets: Tensor) -> Tensor:
    l, t, r, b = reg_targets.unbind(1)
    return (l / r.clamp_min(1e-12) * t / b.clamp_min(1e-12)).sqrt()


def _centerness_cases() -> List[Case]:
    cases = [
        Case("the box centre (l = r, t = b)", (torch.tensor([[2.0, 1.0, 2.0, 1.0]]),)),
        Case("off centre, l < r and t < b", (torch.tensor([[1.0, 2.0, 3.0, 4.0]]),)),
        Case("off centre the other way, l > r and t > b", (torch.tensor([[3.0, 4.0, 1.0, 2.0]]),)),
        Case("several locations of one box", (torch.tensor([[4.0, 4.0, 4.0, 4.0],
                                                            [1.0, 4.0, 7.0, 4.0],
                                                            [6.5, 0.5, 1.5, 7.5]]),)),
        Case("no location (P = 0)", (torch.zeros(0, 4),)),
    ]
    generator = torch.Generator().manual_seed(23)
    for k in range(3):
        cases.append(Case(f"random distances {k}", (0.1 + 20 * torch.rand(7, 4, generator=generator),),
                          hidden=True))
    return cases


register(Task(
    name="centerness_targets", assignment=ASSIGNMENT, points=1,
    reference=centerness_targets, cases=_centerness_cases,
    mistakes=(
        Mistake("no_sqrt", "centerness is the SQUARE ROOT of the product of the two ratios (it "
                           "decays more slowly towards the sides).", _centerness_no_sqrt),
        Mistake("min_max_of_all_four",
                "take min/max within each axis, left–right and top–bottom, then multiply; not "
                "the min over the max of all four distances.", _centerness_all_four),
        Mistake("plain_ratios", "use min(l, r)/max(l, r), not l/r: a ratio above 1 is not a "
                                "centerness.", _centerness_plain_ratios),
    )))


# ---- giou_loss ------------------------------------------------------------------------------

def _giou(pred: Tensor, target: Tensor, *, enclose_term=True, smooth=1.0, subtract_inter=True):
    pl, pt, pr, pb = pred.float().unbind(1)
    tl, tt, tr, tb = target.float().unbind(1)
    inter = (torch.minimum(pl, tl) + torch.minimum(pr, tr)) * (torch.minimum(pt, tt)
                                                               + torch.minimum(pb, tb))
    enclose = (torch.maximum(pl, tl) + torch.maximum(pr, tr)) * (torch.maximum(pt, tt)
                                                                 + torch.maximum(pb, tb))
    union = (pl + pr) * (pt + pb) + (tl + tr) * (tt + tb) - (inter if subtract_inter else 0)
    iou = (inter + smooth) / (union + smooth)
    if not enclose_term:
        return 1 - iou
    return 1 - (iou - (enclose - union) / enclose.clamp_min(1e-7))


def _giou_cases() -> List[Case]:
    def case(name, pred, target, hidden=False):
        return Case(name, (torch.tensor(pred), torch.tensor(target)), hidden=hidden)

    cases = [
        case("two equal boxes (loss 0)", [[1.0, 1.0, 1.0, 1.0]], [[1.0, 1.0, 1.0, 1.0]]),
        case("overlapping boxes of other shapes", [[1.0, 2.0, 3.0, 4.0]], [[2.0, 2.0, 2.0, 2.0]]),
        case("the prediction inside the target", [[0.5, 0.5, 0.5, 0.5]], [[3.0, 2.0, 1.0, 4.0]]),
        case("small boxes, a fraction of a stride", [[0.2, 0.1, 0.3, 0.2]],
             [[0.1, 0.3, 0.2, 0.1]]),
        case("a batch of three", [[1.0, 1.0, 1.0, 1.0], [4.0, 0.5, 0.5, 4.0], [2.0, 3.0, 2.0, 3.0]],
             [[2.0, 2.0, 2.0, 2.0], [0.5, 4.0, 4.0, 0.5], [2.0, 3.0, 2.0, 3.0]]),
    ]
    generator = torch.Generator().manual_seed(24)
    for k in range(3):
        cases.append(case(f"random boxes {k}", (10 * torch.rand(6, 4, generator=generator)).tolist(),
                          (10 * torch.rand(6, 4, generator=generator)).tolist(), True))
    return cases


register(Task(
    name="giou_loss", assignment=ASSIGNMENT, points=2,
    reference=lambda pred, target: giou_loss_ltrb(pred, target), cases=_giou_cases,
    mistakes=(
        Mistake("iou_loss", "GIoU subtracts (enclosing area − union) / enclosing area from the "
                            "IoU; without it this is the IoU loss.",
                partial(_giou, enclose_term=False)),
        Mistake("no_smoothing", "the IoU here is (intersection + 1) / (union + 1) (in stride "
                                "units), which keeps tiny boxes stable.", partial(_giou, smooth=0.0)),
        Mistake("union_with_intersection_twice",
                "union = area_pred + area_target − intersection: the overlap is counted once.",
                partial(_giou, subtract_inter=False)),
    )))
