"""AP per hard case (evaluation.hard_cases) on a hand-made image whose APs are worked out below."""

import contextlib
import copy
import io
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from blendmask_edu.evaluation.boundary import boundary_iou
from blendmask_edu.evaluation.coco import run_cocoeval
from blendmask_edu.evaluation.hard_cases import (KNOWN_TAGS, OneCaseCOCOeval, case_tags,
                                                 flat_case_metrics, hard_case_ap, has_tags)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H = W = 100  # band width d = round(0.02 · 141.4) = 3 px
A_BOX, B_BOX, FP_BOX = [10, 10, 20, 20], [60, 60, 20, 20], [40, 5, 10, 10]


def _mask(box, dx=0):
    x, y, w, h = box
    m = np.zeros((H, W), np.uint8)
    m[y:y + h, x + dx:x + w + dx] = 1
    return m


def _rle(mask):
    r = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode()}


def _ground_truth():
    """One image, two objects of one class: A tagged "split" and "small", B tagged "overlap"."""
    coco = COCO()
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": A_BOX, "area": 400, "iscrowd": 0,
             "segmentation": _rle(_mask(A_BOX)), "hard_cases": ["small", "split"]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": B_BOX, "area": 400, "iscrowd": 0,
             "segmentation": _rle(_mask(B_BOX)), "hard_cases": ["overlap"]}]
    coco.dataset = {"images": [{"id": 1, "width": W, "height": H, "file_name": "a.png"}],
                    "categories": [{"id": 1, "name": "thing"}], "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _results():
    """By falling score: B found exactly (0.9), a false positive (0.8), and A found with its
    box exact but its mask one pixel to the right (0.7)."""
    return [{"image_id": 1, "category_id": 1, "bbox": B_BOX, "score": 0.9,
             "segmentation": _rle(_mask(B_BOX))},
            {"image_id": 1, "category_id": 1, "bbox": FP_BOX, "score": 0.8,
             "segmentation": _rle(_mask(FP_BOX))},
            {"image_id": 1, "category_id": 1, "bbox": A_BOX, "score": 0.7,
             "segmentation": _rle(_mask(A_BOX, dx=1))}]


def test_the_hand_made_ious():
    """A's mask shifted by one pixel: mask IoU 380/420 ≈ 0.905; its bands (20² − 14² = 204 px
    each) share rows 10–12 and 27–29 over the 19 shared columns (114 px) and, on the 14 rows
    between, columns {11, 12, 28, 29} (56 px): boundary IoU 170 / (408 − 170) ≈ 0.714."""
    a, shifted = _mask(A_BOX).astype(bool), _mask(A_BOX, dx=1).astype(bool)
    assert (a & shifted).sum() / (a | shifted).sum() == pytest.approx(380 / 420)
    assert boundary_iou(a, shifted) == pytest.approx(170 / 238)


def test_ap_per_case_by_hand():
    coco = _ground_truth()
    table = hard_case_ap(coco, _results())
    assert list(table) == list(KNOWN_TAGS)
    # "split" holds A only. B is ignored, so the detection on it (0.9) is neither true nor false;
    # then the false positive (0.8), then A (0.7): precision 1/2 at recall 1, AP 50 wherever A
    # is matched. Boxes are exact: 50 at every IoU threshold.
    split = table["split"]
    assert split["instances"] == 1
    assert (split["box_AP"], split["box_AP50"], split["box_AP75"]) == pytest.approx((50, 50, 50))
    # mask IoU 0.905 matches at the thresholds 0.50 … 0.90 (9 of 10), not at 0.95: AP 45
    assert (split["mask_AP"], split["mask_AP50"], split["mask_AP75"]) == pytest.approx((45, 50, 50))
    # min(0.905, 0.714) matches at 0.50 … 0.70 (5 of 10): AP 25, and not at 0.75
    assert (split["AP_boundary"], split["AP50_boundary"], split["AP75_boundary"]) == \
        pytest.approx((25, 50, 0))
    assert table["small"] == {**split, "instances": 1}  # the same object
    # "overlap" holds B only: B found first (precision 1 at recall 1), the false positive comes
    # after all of B is found and the detection on A is ignored: 100 for every kind.
    overlap = table["overlap"]
    assert overlap["instances"] == 1
    assert all(overlap[k] == pytest.approx(100.0) for k in overlap if k != "instances")
    # no object is "complex" or "large": no AP
    for tag in ("complex", "large"):
        assert table[tag]["instances"] == 0
        assert all(math.isnan(v) for k, v in table[tag].items() if k != "instances")
    # the caller's ground truth keeps the ignore flags pycocotools gives it (from iscrowd): the
    # cases mark copies
    assert [a["ignore"] for a in coco.dataset["annotations"]] == [0, 0]


def test_all_objects_together_for_contrast():
    """Over both objects, boxes: B (TP, precision 1, recall 1/2), the FP (1/2), A (TP, 2/3,
    recall 1). Interpolated precision is 1 up to recall 0.5 (51 of COCO's 101 points) and 2/3
    after (50 points): AP = (51 + 50 · 2/3) / 101 ≈ 83.5, between the cases' 50 and 100."""
    evaluator = run_cocoeval(_ground_truth(), _results(), "bbox")
    assert evaluator.stats[0] * 100 == pytest.approx((51 + 50 * 2 / 3) / 101 * 100)


def test_reused_ious_equal_ious_computed_again():
    coco, results = _ground_truth(), _results()
    given = {t: run_cocoeval(coco, results, t) for t in ("bbox", "segm", "boundary")}
    np.testing.assert_equal(hard_case_ap(coco, results, evaluators=given),
                            hard_case_ap(coco, results))  # NaN equal to NaN
    # and OneCaseCOCOeval computes its own IoUs when given none
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = OneCaseCOCOeval(coco, coco.loadRes(copy.deepcopy(results)), "segm", "split")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] * 100 == pytest.approx(45.0)


def test_no_detections_boxes_only_and_flat_keys():
    coco = _ground_truth()
    empty = hard_case_ap(coco, [], tags=["split", "large"])
    assert empty["split"]["mask_AP"] == 0.0 and empty["split"]["AP_boundary"] == 0.0
    assert math.isnan(empty["large"]["box_AP"])
    boxes = [{k: v for k, v in r.items() if k != "segmentation"} for r in _results()]
    boxes_only = hard_case_ap(coco, boxes, tags=["split"])
    assert set(boxes_only["split"]) == {"instances", "box_AP", "box_AP50", "box_AP75"}
    assert flat_case_metrics(boxes_only) == {"split_box_AP": pytest.approx(50.0)}
    no_outline = hard_case_ap(coco, _results(), tags=["split"], boundary=False)
    assert flat_case_metrics(no_outline) == {"split_box_AP": pytest.approx(50.0),
                                             "split_mask_AP": pytest.approx(45.0)}


def test_tags_found_in_the_ground_truth():
    coco = _ground_truth()
    assert has_tags(coco) and case_tags(coco) == list(KNOWN_TAGS)
    coco.dataset["annotations"][0]["hard_cases"].append("blurred")
    coco.createIndex()
    assert case_tags(coco) == [*KNOWN_TAGS, "blurred"]
    for a in coco.dataset["annotations"]:
        del a["hard_cases"]
    coco.createIndex()
    assert not has_tags(coco)
