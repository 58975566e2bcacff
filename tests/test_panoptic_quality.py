"""Panoptic quality on hand-made maps (expected values worked out in the comments) and mIoU.

Every case is a 10 × 10 image unless said otherwise. Categories: things 1 and 2, stuff 6.
PQ_c = Σ IoU / (TP + ½ FP + ½ FN); scores are in percent.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from blendmask_edu.data.errors import DatasetError
from blendmask_edu.data.files import id_to_rgb
from blendmask_edu.data.synthetic import generate_shapes
from blendmask_edu.evaluation.panoptic_quality import (
    PQCounts,
    confusion_matrix,
    panoptic_quality,
    pq_from_arrays,
    pq_summary,
    semantic_miou,
)
from blendmask_edu.fileio import write_json

CATEGORIES = [{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "b", "isthing": 1},
              {"id": 6, "name": "sky", "isthing": 0}]


def seg(id_, category, crowd=0):
    return {"id": id_, "category_id": category, "iscrowd": crowd}


def grid(*regions, size=(10, 10)):
    """An id map: ``regions`` are (segment id, rows slice, columns slice), later ones on top."""
    ids = np.zeros(size, np.int64)
    for id_, rows, cols in regions:
        ids[rows, cols] = id_
    return ids


def score(gt_ids, gt_segs, pred_ids, pred_segs):
    return pq_summary(pq_from_arrays(gt_ids, gt_segs, pred_ids, pred_segs, CATEGORIES), CATEGORIES)


def first_pixels(ids, segment_id, k, new_id):
    """A map holding ``new_id`` on the first ``k`` pixels (raster order) of ``segment_id``."""
    out = np.zeros_like(ids)
    rows, cols = np.nonzero(ids == segment_id)
    out[rows[:k], cols[:k]] = new_id
    return out


ALL = slice(None)


def test_perfect_prediction_scores_100():
    # thing 1 on rows 0-4, stuff 6 on rows 5-9; the prediction uses other ids: ids do not matter
    gt = grid((1, slice(0, 5), ALL), (2, slice(5, 10), ALL))
    pred = grid((7, slice(0, 5), ALL), (9, slice(5, 10), ALL))
    r = score(gt, [seg(1, 1), seg(2, 6)], pred, [seg(7, 1), seg(9, 6)])
    assert r["All"] == {"pq": 100.0, "sq": 100.0, "rq": 100.0, "n": 2}
    assert r["Things"]["n"] == 1 and r["Stuff"]["n"] == 1
    assert r["per_class"][1] == {"pq": 100.0, "sq": 100.0, "rq": 100.0, "tp": 1, "fp": 0, "fn": 0}
    assert 2 not in r["per_class"]  # a category that never occurs is not averaged


def test_missed_segment_is_a_false_negative():
    # GT: thing 1 rows 0-2, thing 2 rows 3-4, stuff rows 5-9. The prediction leaves thing 2 void.
    # PQ_1 = 100, PQ_6 = 100, PQ_2 = 0 / (0 + ½·1) = 0 → All (100 + 0 + 100) / 3, Things 50.
    gt = grid((1, slice(0, 3), ALL), (2, slice(3, 5), ALL), (3, slice(5, 10), ALL))
    pred = grid((1, slice(0, 3), ALL), (3, slice(5, 10), ALL))
    r = score(gt, [seg(1, 1), seg(2, 2), seg(3, 6)], pred, [seg(1, 1), seg(3, 6)])
    assert r["per_class"][2] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 1}
    assert r["All"]["pq"] == pytest.approx(200 / 3) and r["All"]["n"] == 3
    assert r["Things"]["pq"] == pytest.approx(50.0)


def test_false_positive():
    # GT: stuff everywhere (100 px). Prediction: thing 1 on rows 0-1 (20 px), stuff on the rest.
    # Stuff: IoU 80 / 100 = 0.8 → PQ_6 = 80. Thing 1: FP (its pixels are stuff, not void)
    # → PQ_1 = 0 / ½ = 0. All = (80 + 0) / 2 = 40.
    gt = grid((1, ALL, ALL))
    pred = grid((5, ALL, ALL), (4, slice(0, 2), ALL))
    r = score(gt, [seg(1, 6)], pred, [seg(4, 1), seg(5, 6)])
    assert r["per_class"][1]["fp"] == 1 and r["per_class"][1]["pq"] == 0.0
    assert r["per_class"][6]["pq"] == pytest.approx(80.0)
    assert r["All"]["pq"] == pytest.approx(40.0)
    assert r["Stuff"]["pq"] == pytest.approx(80.0) and r["Things"]["pq"] == 0.0


@pytest.mark.parametrize("gt_cols, covered, matched", [
    (5, 13, True),  # GT 5×5 = 25 px, prediction = 13 of them: IoU 13 / 25 = 0.52 > 0.5
    (5, 12, False),  # IoU 12 / 25 = 0.48
    (6, 12, False),  # GT 4×6 = 24 px: IoU 12 / 24 = 0.5 exactly, not > 0.5
])
def test_iou_must_exceed_one_half(gt_cols, covered, matched):
    # Everything else is void. Matched: TP with IoU 0.52 → PQ 52, SQ 52, RQ 100.
    # Not matched: FN (the GT) + FP (the prediction lies on the GT, not on void) → PQ 0, RQ 0.
    rows = 5 if gt_cols == 5 else 4
    gt = grid((1, slice(0, rows), slice(0, gt_cols)))
    pred = first_pixels(gt, 1, covered, 3)
    r = score(gt, [seg(1, 1)], pred, [seg(3, 1)])
    counts = r["per_class"][1]
    if matched:
        assert (counts["tp"], counts["fp"], counts["fn"]) == (1, 0, 0)
        assert counts["pq"] == pytest.approx(52.0) and counts["sq"] == pytest.approx(52.0)
        assert counts["rq"] == pytest.approx(100.0)
    else:
        assert (counts["tp"], counts["fp"], counts["fn"]) == (0, 1, 1)
        assert counts["pq"] == 0.0 and counts["rq"] == 0.0


def test_void_pixels_do_not_count_against_the_prediction():
    # GT: thing 1 rows 0-1 (20 px), void rows 2-3 (20 px), stuff rows 4-9 (60 px).
    # Prediction: thing 1 on rows 0-3 (40 px), stuff rows 4-9.
    # Plain IoU = 20 / 40 = 0.5 (no match); COCO removes the 20 void pixels from the prediction:
    # IoU = 20 / (20 + 40 − 20 − 20) = 1 → PQ_1 = 100.
    gt = grid((1, slice(0, 2), ALL), (2, slice(4, 10), ALL))
    pred = grid((3, slice(0, 4), ALL), (4, slice(4, 10), ALL))
    r = score(gt, [seg(1, 1), seg(2, 6)], pred, [seg(3, 1), seg(4, 6)])
    assert r["per_class"][1]["tp"] == 1 and r["per_class"][1]["pq"] == pytest.approx(100.0)
    assert r["All"]["pq"] == pytest.approx(100.0)


def test_unmatched_prediction_mostly_on_void_is_not_a_false_positive():
    # GT: void rows 0-4, stuff rows 5-9 (50 px).
    # A (thing 1, 10 px): 6 void (row 4, cols 0-5) + 4 stuff (row 5, cols 0-3) → 6/10 > ½: ignored.
    # B (thing 2, 10 px): 5 void (row 3, cols 5-9) + 5 stuff (row 6, cols 0-4) → 5/10 is not
    # more than ½: FP.
    # Stuff prediction: rows 5-9 minus A and B = 41 px → IoU 41 / 50 = 0.82.
    # Thing 1 has no TP, FP or FN, so it is not averaged: All = (PQ_2 0 + PQ_6 82) / 2 = 41.
    gt = grid((1, slice(5, 10), ALL))
    pred = grid((9, slice(5, 10), ALL), (7, 4, slice(0, 6)), (7, 5, slice(0, 4)),
                (8, 3, slice(5, 10)), (8, 6, slice(0, 5)))
    r = score(gt, [seg(1, 6)], pred, [seg(7, 1), seg(8, 2), seg(9, 6)])
    assert 1 not in r["per_class"]
    assert r["per_class"][2]["fp"] == 1
    assert r["per_class"][6]["pq"] == pytest.approx(82.0)
    assert r["All"]["pq"] == pytest.approx(41.0) and r["All"]["n"] == 2


def test_crowd_absorbs_a_prediction_and_is_not_a_false_negative():
    # GT: crowd of thing 1 rows 0-2 (30 px), thing 1 rows 3-4, stuff rows 5-9.
    # Predictions: thing 1 on rows 0-1 (all crowd of its own category: not FP), thing 2 on row 2
    # (crowd of another category: FP), thing 1 on rows 3-4 (TP), stuff rows 5-9 (TP).
    # The crowd is neither matched nor an FN. PQ_1 = 100, PQ_2 = 0, PQ_6 = 100 → All 200 / 3.
    gt = grid((1, slice(0, 3), ALL), (2, slice(3, 5), ALL), (3, slice(5, 10), ALL))
    pred = grid((10, slice(0, 2), ALL), (11, 2, ALL), (12, slice(3, 5), ALL),
                (13, slice(5, 10), ALL))
    gt_segs = [seg(1, 1, crowd=1), seg(2, 1), seg(3, 6)]
    r = score(gt, gt_segs, pred, [seg(10, 1), seg(11, 2), seg(12, 1), seg(13, 6)])
    assert r["per_class"][1] == {"pq": 100.0, "sq": 100.0, "rq": 100.0, "tp": 1, "fp": 0, "fn": 0}
    assert r["per_class"][2]["fp"] == 1
    assert r["All"]["pq"] == pytest.approx(200 / 3)
    # a prediction that equals the crowd region (IoU 1) is still not a match, nor an FP
    pred = grid((10, slice(0, 3), ALL), (12, slice(3, 5), ALL), (13, slice(5, 10), ALL))
    r = score(gt, gt_segs, pred, [seg(10, 1), seg(12, 1), seg(13, 6)])
    assert r["per_class"][1]["tp"] == 1 and r["per_class"][1]["fp"] == 0
    assert r["All"]["pq"] == pytest.approx(100.0)


@pytest.mark.parametrize("category, is_fp", [(1, False), (2, True)])
def test_void_and_crowd_together_absorb_a_prediction(category, is_fp):
    # GT: void row 0, crowd of thing 1 row 1, stuff rows 2-9 (80 px).
    # The prediction P (10 px): 3 void + 3 crowd + 4 stuff. Neither void (3) nor crowd (3) alone
    # is more than half, their sum (6) is: not an FP when P is thing 1; as thing 2 the crowd
    # is another category's, 3 / 10 remains, so it is an FP.
    # Stuff: 76 of 80 px → IoU 0.95 → PQ_6 = 95.
    gt = grid((1, 1, ALL), (2, slice(2, 10), ALL))
    pred = grid((6, slice(2, 10), ALL), (5, slice(0, 2), slice(0, 3)), (5, 2, slice(0, 4)))
    r = score(gt, [seg(1, 1, crowd=1), seg(2, 6)], pred, [seg(5, category), seg(6, 6)])
    assert r["per_class"][6]["pq"] == pytest.approx(95.0)
    assert (category in r["per_class"]) == is_fp
    assert r["All"]["pq"] == pytest.approx(95.0 / 2 if is_fp else 95.0)


def test_bad_maps_are_refused():
    gt = grid((1, ALL, ALL))
    with pytest.raises(ValueError, match="not in segments_info"):
        pq_from_arrays(gt, [seg(1, 6)], grid((4, ALL, ALL)), [seg(5, 6)], CATEGORIES)
    with pytest.raises(ValueError, match="unknown category"):
        pq_from_arrays(gt, [seg(1, 6)], gt, [seg(1, 3)], CATEGORIES)
    with pytest.raises(ValueError, match="differ in size"):
        pq_from_arrays(gt, [seg(1, 6)], gt[:5], [seg(1, 6)], CATEGORIES)


def test_counts_add_and_empty_summary():
    total = PQCounts(0.5, 1, 0, 2) + PQCounts(0.25, 1, 1, 0)
    assert total == PQCounts(0.75, 2, 1, 2)
    r = pq_summary({}, CATEGORIES)
    assert r["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0} and r["per_class"] == {}


# ----------------------------------------------------------------------------- files


def write_split(folder, maps):
    """PNGs (id_to_rgb) + COCO panoptic ``images``, ``annotations`` of {image id: (ids, segs)}."""
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, (ids, segs) in maps.items():
        name = f"{image_id:04d}.png"
        Image.fromarray(id_to_rgb(ids)).save(folder / name)
        images.append({"id": image_id, "file_name": name, "height": ids.shape[0],
                       "width": ids.shape[1]})
        annotations.append({"image_id": image_id, "file_name": name, "segments_info": segs})
    return images, annotations


def test_panoptic_quality_from_files_accumulates_over_images(tmp_path):
    # image 1 (10 × 10): thing 1 rows 0-4 predicted exactly → TP, IoU 1.
    # image 2 (10 × 12): thing 1 blocks A (rows 0-4, cols 0-4, 25 px) and B (rows 5-9,
    # cols 5-9); the prediction covers 13 px of A (IoU 0.52) and misses B (FN). A segment id
    # above 65535 checks all three PNG channels.
    # Thing 1 over the dataset: TP 2, Σ IoU 1.52, FN 1 → PQ = 1.52 / 2.5 = 60.8, SQ 76, RQ 80
    # (the mean of the per-image PQs, (100 + 34.7) / 2, would differ).
    gt1 = grid((1, slice(0, 5), ALL))
    big = 3 * 65536 + 2 * 256 + 1
    gt2 = grid((big, slice(0, 5), slice(0, 5)), (2, slice(5, 10), slice(5, 10)), size=(10, 12))
    images, gt_anns = write_split(tmp_path / "gt", {
        1: (gt1, [seg(1, 1)]), 2: (gt2, [seg(big, 1), seg(2, 1)])})
    _, pred_anns = write_split(tmp_path / "pred", {
        1: (gt1 * 4, [seg(4, 1)]), 2: (first_pixels(gt2, big, 13, 9), [seg(9, 1)])})
    gt_json = {"images": images, "annotations": gt_anns, "categories": CATEGORIES}
    write_json(tmp_path / "gt.json", gt_json)
    write_json(tmp_path / "pred.json", {"annotations": pred_anns})

    r = panoptic_quality(tmp_path / "gt.json", tmp_path / "gt", tmp_path / "pred.json",
                         tmp_path / "pred")
    c = r["per_class"][1]
    assert (c["tp"], c["fp"], c["fn"]) == (2, 0, 1)
    assert c["pq"] == pytest.approx(60.8) and c["sq"] == pytest.approx(76.0)
    assert c["rq"] == pytest.approx(80.0)
    assert r["All"]["pq"] == pytest.approx(60.8) and r["Stuff"]["n"] == 0
    # dicts instead of paths give the same
    same = panoptic_quality(gt_json, tmp_path / "gt", {"annotations": pred_anns}, tmp_path / "pred")
    assert same == r


def test_panoptic_quality_reports_bad_or_missing_predictions(tmp_path):
    gt = grid((1, ALL, ALL))
    images, gt_anns = write_split(tmp_path / "gt", {1: (gt, [seg(1, 6)]), 2: (gt, [seg(1, 6)])})
    _, pred_anns = write_split(tmp_path / "pred", {1: (gt * 5, [seg(1, 6)])})
    gt_json = {"images": images, "annotations": gt_anns, "categories": CATEGORIES}
    with pytest.raises(DatasetError, match=r"pred.0001\.png.*image 1.*\[5\] not in segments_info"):
        panoptic_quality(gt_json, tmp_path / "gt", {"annotations": pred_anns}, tmp_path / "pred")
    pred_anns[0]["segments_info"] = [seg(5, 6)]
    with pytest.raises(ValueError, match="no prediction for image 2"):
        panoptic_quality(gt_json, tmp_path / "gt", {"annotations": pred_anns}, tmp_path / "pred")


def test_shapes_ground_truth_against_itself_is_perfect(tmp_path):
    summary = generate_shapes(tmp_path, num_train=0, num_val=3, size=64, seed=0, progress=False)
    paths = summary["paths"]["val"]
    r = panoptic_quality(paths["panoptic"], paths["panoptic_dir"], paths["panoptic"],
                         paths["panoptic_dir"])
    with open(paths["panoptic"], encoding="utf-8") as f:
        annotations = json.load(f)["annotations"]
    present = {s["category_id"] for a in annotations for s in a["segments_info"]}
    assert r["All"] == {"pq": 100.0, "sq": 100.0, "rq": 100.0, "n": len(present)}
    assert r["Things"]["n"] > 0 and r["Stuff"]["n"] > 0


# ----------------------------------------------------------------------------- mIoU


def test_semantic_miou_by_hand():
    # image 1: GT [[0, 0], [1, 255]], prediction [[0, 1], [1, 1]]; the 255 pixel is ignored.
    #   class 0: ∩ 1, ∪ 2 (GT 2 + pred 1 − 1) → 50 %; class 1: ∩ 1, ∪ 2 → 50 %; class 2 absent.
    gt1, pred1 = np.array([[0, 0], [1, 255]]), np.array([[0, 1], [1, 1]])
    r = semantic_miou(pred1, gt1, num_classes=3)
    assert r["miou"] == pytest.approx(50.0) and r["n"] == 2
    assert r["per_class"][:2] == pytest.approx([50.0, 50.0]) and np.isnan(r["per_class"][2])
    np.testing.assert_array_equal(confusion_matrix(pred1, gt1, 3),
                                  [[1, 1, 0], [0, 1, 0], [0, 0, 0]])
    # with image 2 (class 2 everywhere, predicted right) the confusion matrix accumulates:
    # class 2 → 100 %, classes 0 and 1 unchanged → mIoU (50 + 50 + 100) / 3
    gt2 = np.full((2, 2), 2)
    r = semantic_miou([pred1, gt2], [gt1, gt2], num_classes=3)
    assert r["miou"] == pytest.approx(200 / 3) and r["n"] == 3
    with pytest.raises(ValueError, match="outside"):
        semantic_miou(np.full((2, 2), 3), gt2, num_classes=3)
    with pytest.raises(ValueError, match="different numbers"):
        semantic_miou([pred1], [gt1, gt2], num_classes=3)
