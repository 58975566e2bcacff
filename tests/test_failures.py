"""evaluation.failures: every ground-truth object's best same-class mask IoU, grouped by the
dataset's hard-case tags. The expected IoUs are counted by hand from the drawn pixels."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from blendmask_edu.evaluation.failures import by_tag, match_objects, summarize


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _box(y0, y1, x0, x1, size=20):
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture
def case():
    """Image 1: a 10×10 square (class 1, tags split + small), found by its left 10×4 part (IoU
    0.4) and, at a low score, by itself (IoU 1); a 4×4 object (class 2, untagged) found exactly.
    Image 2: a crowd region (never an object) and a 6×6 square (class 1, overlap) that only a
    class-2 detection covers."""
    square, part, little = _box(0, 10, 0, 10), _box(0, 10, 0, 4), _box(14, 18, 14, 18)
    anns = [(1, 1, 1, square, ["split", "small"], 0), (2, 1, 2, little, [], 0),
            (3, 2, 1, _box(0, 20, 0, 20), [], 1), (4, 2, 1, _box(2, 8, 2, 8), ["overlap"], 0)]
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "height": 20, "width": 20} for i in (1, 2)],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [{"id": a, "image_id": i, "category_id": c, "segmentation": _rle(m),
                         "area": int(m.sum()), "bbox": [0, 0, 1, 1], "iscrowd": crowd,
                         "hard_cases": tags} for a, i, c, m, tags, crowd in anns]}
    coco.createIndex()
    results = [{"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": _rle(part)},
               {"image_id": 1, "category_id": 1, "score": 0.2, "segmentation": _rle(square)},
               {"image_id": 1, "category_id": 2, "score": 0.8, "segmentation": _rle(little)},
               {"image_id": 2, "category_id": 2, "score": 0.9, "segmentation": _rle(_box(2, 8, 2, 8))},
               {"image_id": 2, "category_id": 1, "score": 0.9, "bbox": [0, 0, 5, 5]}]  # no mask
    return coco, results


def test_match_objects_is_class_aware_skips_crowds_and_respects_the_score(case):
    coco, results = case
    matches = match_objects(coco, results, score_thresh=0.3)
    assert [(m.annotation_id, m.category_id, m.area, m.tags) for m in matches] == [
        (1, 1, 100.0, ("split", "small")), (2, 2, 16.0, ()), (4, 1, 36.0, ("overlap",))]
    assert [m.best_iou for m in matches] == pytest.approx([0.4, 1.0, 0.0])
    # under a lower threshold the exact low-scored detection counts
    assert match_objects(coco, results, score_thresh=0.1)[0].best_iou == pytest.approx(1.0)


def test_summaries_by_tag(case):
    coco, results = case
    table = by_tag(match_objects(coco, results, score_thresh=0.3))
    assert list(table) == ["overlap", "small", "split", "untagged", "all"]
    assert table["split"] == pytest.approx({"objects": 1, "mean_iou": 0.4, "found_percent": 0.0})
    assert table["untagged"] == pytest.approx({"objects": 1, "mean_iou": 1.0, "found_percent": 100.0})
    assert table["all"] == pytest.approx({"objects": 3, "mean_iou": 1.4 / 3, "found_percent": 100 / 3})
    assert by_tag([], tags=["split"])["split"] == {"objects": 0, "mean_iou": 0.0, "found_percent": 0.0}
    assert summarize(match_objects(coco, results, 0.3), iou=0.4)["found_percent"] == pytest.approx(200 / 3)
