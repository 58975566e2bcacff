"""Assignment 6, panoptic segmentation: the fusion heuristic and PQ's segment matching."""

from __future__ import annotations

from functools import partial
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from blendmask_edu.assignments.checking import Case, Mistake, Task, compare_values, describe, register
from blendmask_edu.conventions import IGNORE
from blendmask_edu.evaluation.panoptic_quality import pq_from_arrays
from blendmask_edu.modeling.panoptic import fuse

ASSIGNMENT = "a6_panoptic"
SEGMENT_KEYS = ("id", "category_id", "isthing", "area")


# ---- fuse -----------------------------------------------------------------------------------

def fuse_reference(masks: Tensor, scores: Tensor, labels: Tensor, sem_seg: Tensor,
                   score_thresh: float, overlap_thresh: float, stuff_area: int):
    """The library's fusion: (ids (H, W) int64, segments) with the stuff category = its label."""
    return fuse(masks, scores, labels, sem_seg, score_thresh, overlap_thresh, stuff_area)


def _fuse(masks, scores, labels, sem_seg, score_thresh, overlap_thresh, stuff_area, *,
          by_score=True, overlap_rule=True, free_stuff=True):
    """A second fusion with one rule switchable (the mistakes)."""
    ids = torch.zeros(sem_seg.shape, dtype=torch.int64)
    taken = torch.zeros(sem_seg.shape, dtype=torch.bool)
    segments = []
    order = torch.sort(scores, descending=True, stable=True).indices.tolist() if by_score \
        else range(len(scores))
    for d in order:
        if float(scores[d]) < score_thresh:
            continue
        mask = masks[d].bool()
        area = int(mask.sum())
        if area == 0 or (overlap_rule and int((mask & taken).sum()) / area > overlap_thresh):
            continue
        visible = mask & ~taken
        if not bool(visible.any()):
            continue
        ids[visible] = len(segments) + 1
        taken |= visible
        segments.append({"id": len(segments) + 1, "category_id": int(labels[d]),
                         "isthing": True, "area": int(visible.sum())})
    for label in sorted(set(sem_seg.unique().tolist()) - {0, IGNORE}):
        free = (sem_seg == label) & ~taken
        area = int(free.sum()) if free_stuff else int((sem_seg == label).sum())
        if not bool(free.any()) or area < stuff_area:
            continue
        ids[free] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "category_id": int(label), "isthing": False,
                         "area": area})
    return ids, segments


def _compare_fusion(expected, got) -> Optional[str]:
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"expected a pair (ids, segments), got {describe(got, 60)}"
    diff = compare_values(expected[0], got[0], where="ids: ")
    if diff:
        return diff
    if not isinstance(got[1], (list, tuple)):
        return f"segments: expected a list of dicts, got {describe(got[1], 60)}"
    try:
        mine = [{k: s[k] for k in SEGMENT_KEYS} for s in got[1]]
    except (TypeError, KeyError, IndexError) as error:
        return f"segments: each must be a dict with keys {SEGMENT_KEYS} ({type(error).__name__}: {error})"
    theirs = [{k: s[k] for k in SEGMENT_KEYS} for s in expected[1]]
    return compare_values(theirs, mine, where="segments")


def _fuse_cases() -> List[Case]:
    def box_mask(height, width, *boxes):
        masks = torch.zeros(len(boxes), height, width, dtype=torch.bool)
        for d, (r0, r1, c0, c1) in enumerate(boxes):
            masks[d, r0:r1, c0:c1] = True
        return masks

    sem = torch.zeros(6, 8, dtype=torch.int64)
    sem[:, 5:] = 1  # stuff 1 on the right
    sem[4:, :3] = 2  # stuff 2 at the bottom left
    sem[0, 0] = IGNORE
    cases = [
        Case("two instances overlapping a little, two stuff regions", (
            box_mask(6, 8, (0, 3, 1, 4), (2, 5, 3, 7)), torch.tensor([0.9, 0.8]),
            torch.tensor([11, 12]), sem, 0.2, 0.4, 4)),
        Case("an instance mostly under a better one is dropped (overlap > 0.4)", (
            box_mask(6, 8, (0, 4, 0, 4), (1, 4, 1, 5)), torch.tensor([0.9, 0.7]),
            torch.tensor([11, 11]), sem, 0.2, 0.4, 4)),
        Case("instances given out of score order", (
            box_mask(6, 8, (1, 4, 2, 6), (0, 4, 0, 4)), torch.tensor([0.3, 0.95]),
            torch.tensor([12, 11]), sem, 0.2, 0.4, 4)),
        Case("an instance below the score threshold, a small stuff region dropped", (
            box_mask(6, 8, (0, 2, 0, 2), (3, 6, 4, 8)), torch.tensor([0.6, 0.1]),
            torch.tensor([11, 12]), sem, 0.2, 0.4, 7)),
        Case("stuff area counts only the pixels no instance took", (
            box_mask(6, 8, (2, 6, 0, 2)), torch.tensor([0.8]), torch.tensor([13]), sem, 0.2,
            0.4, 5)),
        Case("no instance", (torch.zeros(0, 6, 8, dtype=torch.bool), torch.zeros(0),
                             torch.zeros(0, dtype=torch.int64), sem, 0.2, 0.4, 4)),
    ]
    generator = torch.Generator().manual_seed(61)
    for k in range(3):
        height, width = 10, 12
        boxes = []
        for _ in range(4):
            r0, c0 = (int(v) for v in torch.randint(0, 7, (2,), generator=generator))
            boxes.append((r0, r0 + int(torch.randint(2, 5, (1,), generator=generator)),
                          c0, c0 + int(torch.randint(2, 6, (1,), generator=generator))))
        semantic = torch.randint(0, 3, (height, width), generator=generator)
        cases.append(Case(f"random scene {k}", (
            box_mask(height, width, *boxes), torch.rand(4, generator=generator),
            torch.randint(11, 14, (4,), generator=generator), semantic, 0.2, 0.4, 6), hidden=True))
    return cases


register(Task(
    name="fuse", assignment=ASSIGNMENT, points=3, reference=fuse_reference, cases=_fuse_cases,
    compare=_compare_fusion,
    mistakes=(
        Mistake("not_by_score", "place the instances by DESCENDING score: a better instance "
                                "claims its pixels first.", partial(_fuse, by_score=False)),
        Mistake("no_overlap_rule",
                "an instance whose pixels are already taken for more than overlap_thresh (0.4) "
                "of its area is dropped, not cut down to what is left.",
                partial(_fuse, overlap_rule=False)),
        Mistake("stuff_area_with_things",
                "a stuff region's area counts only the pixels no instance took: that is the "
                "segment that would be placed.", partial(_fuse, free_stuff=False)),
    )))


# ---- pq_counts ------------------------------------------------------------------------------

def _as_counts(result) -> Dict[int, Tuple[float, int, int, int]]:
    """{category: (iou_sum, tp, fp, fn)} from PQCounts objects, tuples or dicts."""
    out = {}
    for category, c in result.items():
        if hasattr(c, "tp"):
            out[int(category)] = (float(c.iou), int(c.tp), int(c.fp), int(c.fn))
        elif isinstance(c, dict):
            out[int(category)] = (float(c["iou"]), int(c["tp"]), int(c["fp"]), int(c["fn"]))
        else:
            iou, tp, fp, fn = c
            out[int(category)] = (float(iou), int(tp), int(fp), int(fn))
    return out


def pq_counts_reference(gt_ids, gt_segments, pred_ids, pred_segments, categories):
    """The library's tallies as {category id: (iou_sum, tp, fp, fn)}."""
    return _as_counts(pq_from_arrays(gt_ids, gt_segments, pred_ids, pred_segments, categories))


def _pq(gt_ids, gt_segments, pred_ids, pred_segments, categories, *, at_least_half=False,
        void_in_union=False, crowd_is_fp=False):
    """A second PQ matching with one rule switchable (the mistakes)."""
    gt_ids, pred_ids = np.asarray(gt_ids), np.asarray(pred_ids)
    gt = {s["id"]: s for s in gt_segments}
    pred = {s["id"]: s for s in pred_segments}
    area = lambda ids, i: int((ids == i).sum())  # noqa: E731
    counts: Dict[int, List] = {}
    matched_gt, matched_pred = set(), set()
    for g, gs in gt.items():
        if gs.get("iscrowd", 0):
            continue
        for p, ps in pred.items():
            if gs["category_id"] != ps["category_id"]:
                continue
            inter = int(((gt_ids == g) & (pred_ids == p)).sum())
            void = 0 if void_in_union else int(((gt_ids == 0) & (pred_ids == p)).sum())
            union = area(gt_ids, g) + area(pred_ids, p) - inter - void
            iou = inter / union if union else 0.0
            if iou >= 0.5 if at_least_half else iou > 0.5:
                c = counts.setdefault(gs["category_id"], [0.0, 0, 0, 0])
                c[0] += iou
                c[1] += 1
                matched_gt.add(g)
                matched_pred.add(p)
    for g, gs in gt.items():
        if g not in matched_gt and not gs.get("iscrowd", 0):
            counts.setdefault(gs["category_id"], [0.0, 0, 0, 0])[3] += 1
    for p, ps in pred.items():
        if p in matched_pred:
            continue
        ignored = int(((gt_ids == 0) & (pred_ids == p)).sum())
        if not crowd_is_fp:
            ignored += sum(int(((gt_ids == g) & (pred_ids == p)).sum()) for g, gs in gt.items()
                           if gs.get("iscrowd", 0) and gs["category_id"] == ps["category_id"])
        if ignored / area(pred_ids, p) > 0.5:
            continue
        counts.setdefault(ps["category_id"], [0.0, 0, 0, 0])[2] += 1
    return {c: tuple(v) for c, v in counts.items()}


def _compare_counts(expected, got) -> Optional[str]:
    if not isinstance(got, dict):
        return f"expected a dict {{category id: (iou_sum, tp, fp, fn)}}, got {describe(got, 60)}"
    try:
        mine = _as_counts(got)
    except (TypeError, ValueError, KeyError) as error:
        return (f"each value must be (iou_sum, tp, fp, fn) ({type(error).__name__}: {error}); "
                f"got {describe(got, 80)}")
    return compare_values(expected, mine, atol=1e-6)


_PQ_CATEGORIES = [{"id": 1, "isthing": 1}, {"id": 2, "isthing": 1}, {"id": 5, "isthing": 0}]


def _pq_cases() -> List[Case]:
    def seg(i, category, crowd=0):
        return {"id": i, "category_id": category, "iscrowd": crowd}

    gt = np.zeros((4, 6), dtype=np.int64)
    gt[0:2, 0:2] = 1  # 4 px
    pred = np.zeros((4, 6), dtype=np.int64)
    pred[0:1, 0:2] = 1  # 2 px inside: IoU exactly 0.5
    half = Case("a prediction covering half of its segment: IoU exactly 0.5", (
        gt, [seg(1, 1)], pred, [seg(1, 1)], _PQ_CATEGORIES))

    gt_void = np.zeros((4, 6), dtype=np.int64)
    gt_void[0:2, 0:3] = 1  # 6 px; the rest is void (0)
    pred_void = np.zeros((4, 6), dtype=np.int64)
    pred_void[0:2, 0:5] = 1  # the 6 px and 4 void px
    void = Case("a prediction spilling onto unlabelled (void) pixels", (
        gt_void, [seg(1, 2)], pred_void, [seg(1, 2)], _PQ_CATEGORIES))

    gt_crowd = np.full((4, 6), 3, dtype=np.int64)  # stuff 5 everywhere ...
    gt_crowd[0:2, 0:3] = 1  # ... a thing ...
    gt_crowd[2:4, 3:6] = 2  # ... and a crowd region of category 1
    pred_crowd = np.full((4, 6), 3, dtype=np.int64)
    pred_crowd[0:2, 0:3] = 1
    pred_crowd[2:4, 3:6] = 2  # a prediction on the crowd region
    crowd = Case("a prediction on a crowd region", (
        gt_crowd, [seg(1, 1), seg(2, 1, crowd=1), seg(3, 5)], pred_crowd,
        [seg(1, 1), seg(2, 1), seg(3, 5)], _PQ_CATEGORIES))

    gt_mix = np.array([[1, 1, 2, 2, 0, 0], [1, 1, 2, 2, 0, 0], [3, 3, 3, 3, 3, 3]])
    pred_mix = np.array([[1, 1, 1, 2, 2, 4], [1, 1, 0, 2, 2, 4], [3, 3, 3, 3, 3, 0]])
    mixed = Case("two things and stuff: a TP, a miss, a false positive", (
        gt_mix, [seg(1, 1), seg(2, 2), seg(3, 5)], pred_mix,
        [seg(1, 1), seg(2, 1), seg(3, 5), seg(4, 2)], _PQ_CATEGORIES))
    cases = [half, void, crowd, mixed]

    generator = np.random.default_rng(62)
    for k in range(3):
        gt_r = np.zeros((8, 8), dtype=np.int64)
        pred_r = np.zeros((8, 8), dtype=np.int64)
        gt_segments, pred_segments = [], []
        for i in range(1, 4):
            r, c = generator.integers(0, 5, 2)
            category = int(generator.choice([1, 2]))
            gt_r[r:r + 3, c:c + 3] = i
            gt_segments.append(seg(i, category))
            dr, dc = generator.integers(-1, 2, 2)
            pred_r[max(r + dr, 0):r + dr + 3, max(c + dc, 0):c + dc + 3] = i
            pred_segments.append(seg(i, category))
        gt_segments = [s for s in gt_segments if (gt_r == s["id"]).any()]
        pred_segments = [s for s in pred_segments if (pred_r == s["id"]).any()]
        cases.append(Case(f"random segments {k}", (gt_r, gt_segments, pred_r, pred_segments,
                                                    _PQ_CATEGORIES), hidden=True))
    return cases


register(Task(
    name="pq_counts", assignment=ASSIGNMENT, points=3, reference=pq_counts_reference,
    cases=_pq_cases, compare=_compare_counts,
    mistakes=(
        Mistake("iou_at_least_half", "a match needs IoU STRICTLY above 0.5 (which is what makes "
                                     "matches unique); IoU = 0.5 is not a match.",
                partial(_pq, at_least_half=True)),
        Mistake("void_in_union", "the predicted pixels on void (unlabelled) ground truth are "
                                 "left out of the union: nobody knows what they are.",
                partial(_pq, void_in_union=True)),
        Mistake("crowd_counted_as_fp",
                "an unmatched prediction lying mostly (> 0.5) on void or on a crowd region of "
                "its own category is not a false positive.", partial(_pq, crowd_is_fp=True)),
    )))
