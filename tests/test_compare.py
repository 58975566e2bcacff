"""``blendmask-edu compare`` and its pieces (evaluation.comparison): Figure 1's image rule, the
per-image score, and a whole (tiny) comparison that resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from blendmask_edu.cli.main import main
from blendmask_edu.evaluation.comparison import choose_images, found_percent, per_image_case_iou


def test_choose_images_takes_each_side_then_random():
    first = {1: 0.9, 2: 0.1, 3: 0.5, 4: 0.5, 5: 0.8, 6: 0.2}
    second = {1: 0.2, 2: 0.9, 3: 0.5, 4: 0.6, 5: 0.1, 6: 0.2}
    chosen = choose_images(first, second, per_side=2, random_count=1)
    assert chosen[:2] == [(2, "second wins"), (4, "second wins")]
    assert chosen[2:4] == [(5, "first wins"), (1, "first wins")]
    assert chosen[4][1] == "random" and chosen[4][0] in (3, 6)
    # only images where a model really wins count as a win; ties never do
    assert choose_images({1: 0.5}, {1: 0.5}, random_count=0) == []


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def test_per_image_case_iou_scores_the_tagged_objects_only():
    """Image 1: a tagged 10×10 square found by a 10×5 half (IoU 0.5) of the same class, and an
    untagged object; image 2: a tagged object found only by another class (0) — and a detection
    under the score threshold does not count."""
    square = np.zeros((20, 20), bool)
    square[0:10, 0:10] = True
    half = np.zeros((20, 20), bool)
    half[0:10, 0:5] = True
    other = np.zeros((20, 20), bool)
    other[12:18, 12:18] = True
    gt = {"images": [{"id": 1, "height": 20, "width": 20}, {"id": 2, "height": 20, "width": 20}],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "segmentation": _rle(square),
               "area": 100, "bbox": [0, 0, 10, 10], "iscrowd": 0, "hard_cases": ["split"]},
              {"id": 2, "image_id": 1, "category_id": 2, "segmentation": _rle(other),
               "area": 36, "bbox": [12, 12, 6, 6], "iscrowd": 0, "hard_cases": []},
              {"id": 3, "image_id": 2, "category_id": 1, "segmentation": _rle(square),
               "area": 100, "bbox": [0, 0, 10, 10], "iscrowd": 0, "hard_cases": ["split"]}]}
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    results = [{"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": _rle(half)},
               {"image_id": 1, "category_id": 1, "score": 0.1, "segmentation": _rle(square)},
               {"image_id": 2, "category_id": 2, "score": 0.9, "segmentation": _rle(square)}]
    assert per_image_case_iou(coco, results, "split") == pytest.approx({1: 0.5, 2: 0.0})
    assert per_image_case_iou(coco, results, "split", score_thresh=0.05) == pytest.approx(
        {1: 1.0, 2: 0.0})
    assert per_image_case_iou(coco, results, "overlap") == {}
    # found_percent counts every object: the half covers the square at IoU 0.5 exactly (found),
    # the untagged object and image 2's square have no detection of their class
    assert found_percent(coco, results, score_thresh=0.5) == pytest.approx(100 / 3)
    assert found_percent(coco, results, score_thresh=0.5, iou=0.6) == 0.0
    assert found_percent(coco, results, score_thresh=0.05, iou=0.6) == pytest.approx(100 / 3)


def test_compare_trains_both_models_writes_the_report_and_resumes(tmp_path, capsys):
    data, out = tmp_path / "shapes", tmp_path / "compare"
    args = ["compare", "--data", str(data), "--out", str(out), "--train", "16", "--val", "4",
            "--size", "64", "--max-iter", "2", "--timing-images", "1", "--quiet",
            "--solver.batch_size", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("Panoptic-FPN (ours)") == 2 and printed.count("BlendMask (ours)") == 2
    assert "equal steps" in printed and "equal wall-clock" in printed
    budget = json.loads((out / "compare.json").read_text())
    assert budget["iterations"] >= 1
    report = (out / "report.md").read_text()
    for text in ("Table 1, equal steps", "Table 1, equal wall-clock", "AP per hard case",
                 "Figure 1", "Panoptic-FPN (paper)", "s/iter"):
        assert text in report
    for folder in ("blendmask", "mask_rcnn_steps", "mask_rcnn_time"):
        metrics = json.loads((out / folder / "metrics.json").read_text())
        assert {"PQ", "AP_boundary", "hard_cases"} <= set(metrics)
        # both models in float32, whatever the CPU (tiny_fast alone trains in bfloat16 where
        # the CPU computes it)
        assert json.loads((out / folder / "config.json").read_text())["solver"]["amp"] is False
    # Run again: every training is finished, the budget is read back, not measured anew
    assert main(args) == 0
    assert json.loads((out / "compare.json").read_text()) == budget
    assert capsys.readouterr().out.count("nothing to train") == 3
