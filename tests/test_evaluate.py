"""COCO AP through pycocotools, and the test-time resize."""

import torch
from pycocotools.coco import COCO

from blendmask_edu.evaluate import coco_ap, resize_for_test


def _coco(boxes):
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "width": 100, "height": 80, "file_name": "a.png"}],
        "categories": [{"id": 7, "name": "thing"}],
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": 7, "bbox": b,
                         "area": b[2] * b[3], "iscrowd": 0} for i, b in enumerate(boxes)]}
    coco.createIndex()
    return coco


def test_perfect_detections_score_100_and_none_score_0():
    boxes = [[10, 10, 30, 20], [50, 40, 40, 30]]
    coco = _coco(boxes)
    perfect = [{"image_id": 1, "category_id": 7, "bbox": b, "score": 0.9} for b in boxes]
    assert coco_ap(coco, perfect)["AP"] == 100.0
    assert coco_ap(coco, [])["AP"] == 0.0


def test_half_the_objects_found():
    boxes = [[10, 10, 30, 20], [50, 40, 40, 30]]
    found = [{"image_id": 1, "category_id": 7, "bbox": boxes[0], "score": 0.9}]
    assert abs(coco_ap(_coco(boxes), found)["AP50"] - 50.0) < 1.0


def test_resize_for_test_sizes_and_scales():
    image = torch.rand(3, 80, 100)
    same, scale = resize_for_test(image, 80, 200)
    assert same is image and scale == (1.0, 1.0)
    bigger, (sx, sy) = resize_for_test(image, 160, 400)
    assert bigger.shape == (3, 160, 200) and (sx, sy) == (2.0, 2.0)
