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


def test_mask_results_round_trip_through_pycocotools():
    import numpy as np
    from pycocotools import mask as mask_utils

    from blendmask_edu.evaluate import _encode_masks

    probs = torch.zeros(2, 1, 80, 100)
    probs[0, 0, 10:30, 10:40] = 0.9
    probs[1, 0, 40:70, 50:90] = 0.6
    rles = _encode_masks(probs, (80, 100))
    decoded = np.stack([mask_utils.decode(r) for r in rles])
    assert (decoded == (probs[:, 0] >= 0.5).numpy()).all()
    assert _encode_masks(torch.zeros(0, 1, 80, 100), (80, 100)) == []
    coco = _coco([[10, 10, 30, 20], [50, 40, 40, 30]])
    for ann, rle in zip(coco.dataset["annotations"], rles):
        ann["segmentation"], ann["area"] = rle, float(mask_utils.area(rle))
    coco.createIndex()
    results = [{"image_id": 1, "category_id": 7, "segmentation": r, "score": 0.9, "bbox": [0, 0, 1, 1]}
               for r in rles]
    assert coco_ap(coco, results, "segm")["AP"] == 100.0
