"""COCO AP through pycocotools (evaluation.coco), and evaluate_coco's files and numbers."""

import torch
from pycocotools.coco import COCO

from blendmask_edu.evaluation.coco import coco_ap


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


def test_mask_results_round_trip_through_pycocotools():
    import numpy as np
    from pycocotools import mask as mask_utils

    from blendmask_edu.evaluation.coco import encode_masks

    probs = torch.zeros(2, 1, 80, 100)
    probs[0, 0, 10:30, 10:40] = 0.9
    probs[1, 0, 40:70, 50:90] = 0.6
    rles = encode_masks(probs, (80, 100))
    decoded = np.stack([mask_utils.decode(r) for r in rles])
    assert (decoded == (probs[:, 0] >= 0.5).numpy()).all()
    assert encode_masks(torch.zeros(0, 1, 80, 100), (80, 100)) == []
    coco = _coco([[10, 10, 30, 20], [50, 40, 40, 30]])
    for ann, rle in zip(coco.dataset["annotations"], rles):
        ann["segmentation"], ann["area"] = rle, float(mask_utils.area(rle))
    coco.createIndex()
    results = [{"image_id": 1, "category_id": 7, "segmentation": r, "score": 0.9, "bbox": [0, 0, 1, 1]}
               for r in rles]
    assert coco_ap(coco, results, "segm")["AP"] == 100.0


# ----------------------------------------------------------------------------- evaluate_coco


import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402
from torch import nn  # noqa: E402

from blendmask_edu.evaluation.coco import precision_curves, run_cocoeval  # noqa: E402
from blendmask_edu.evaluation.evaluate import evaluate_coco  # noqa: E402
from blendmask_edu.evaluation.inference import predict_dataset  # noqa: E402
from blendmask_edu.evaluation.metrics import read_metrics, write_metrics  # noqa: E402
from conftest import shapes_split  # noqa: E402


class NoisyOracle(nn.Module):
    """A stand-in model that "detects" each image's ground truth, imperfectly: boxes jittered by
    up to 3 px, masks shifted by 1 px, every third object missed, one false positive per image
    and random scores. It answers in the resized image's pixels, as a real model does, so that
    evaluate_coco's mapping back to the original pixels is exercised too."""

    def __init__(self, dataset, seed=0):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))  # evaluate finds the device through it
        self.targets = [dataset[i][1] for i in range(len(dataset))]
        self.category_id = dataset.categories.category_id
        self.generator = torch.Generator().manual_seed(seed)
        self.calls = 0  # evaluate asks for the images in dataset order

    def forward(self, images):
        outputs = []
        for image in images:
            target = self.targets[self.calls]
            self.calls += 1
            height, width = target["masks"].shape[-2:]
            sy, sx = image.shape[-2] / height, image.shape[-1] / width
            keep = torch.arange(len(target["boxes"])) % 3 != 2
            jitter = torch.randint(-3, 4, (int(keep.sum()), 4), generator=self.generator)
            boxes = torch.cat([target["boxes"][keep] + jitter, torch.tensor([[2.0, 2, 20, 14]])])
            boxes = boxes * torch.tensor([sx, sy, sx, sy])
            masks = torch.roll(target["masks"][keep], shifts=1, dims=-1).float()  # [D-1, H, W]
            false = torch.zeros(1, height, width)
            false[0, 2:14, 2:20] = 1.0
            masks = F.interpolate(torch.cat([masks, false])[:, None], size=image.shape[-2:],
                                  mode="nearest") * 0.9  # [D, 1, h, w] probabilities
            labels = torch.cat([self.category_id(target["labels"][keep]), torch.tensor([1])])
            scores = torch.rand(len(boxes), generator=self.generator)
            outputs.append({"boxes": boxes, "scores": scores, "labels": labels, "masks": masks})
        return outputs


@pytest.fixture(scope="module")
def shapes_val(tmp_path_factory):
    return shapes_split(tmp_path_factory, num_train=4, num_val=2, size=64)


def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_evaluate_coco_files_match_an_independent_pycocotools_run(shapes_val, tmp_path):
    flat = evaluate_coco(NoisyOracle(shapes_val), shapes_val, short_size=96, max_size=200,
                         batch_size=2, progress=False, out_dir=tmp_path)
    metrics = _strict_json(tmp_path / "metrics.json")
    results = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert metrics["images"] == 2 and metrics["detections"] == len(results) > 0
    assert (tmp_path / "pr_curve.png").stat().st_size > 0

    gt = COCO(str(shapes_val.instances_json))
    for iou_type, prefix in (("bbox", ""), ("segm", "mask_")):
        evaluator = COCOeval(gt, gt.loadRes(str(tmp_path / "coco_instances_results.json")), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        expected = [100.0 * v if v >= 0 else None for v in evaluator.stats[:6]]
        written = [metrics[iou_type][k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
        assert written == pytest.approx(expected, abs=1e-9), iou_type
        assert 10.0 < metrics[iou_type]["AP"] < 95.0, iou_type  # imperfect, not trivial
        assert flat[prefix + "AP"] == pytest.approx(metrics[iou_type]["AP"])
    # 64 px images hold no object above 96² px: COCO's "large" range has no AP.
    assert metrics["bbox"]["APl"] is None and np.isnan(flat["APl"])


def test_results_use_real_category_ids_and_original_pixels(shapes_val, tmp_path):
    evaluate_coco(NoisyOracle(shapes_val), shapes_val, short_size=128, max_size=256,
                  progress=False, out_dir=tmp_path)
    results = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert {r["category_id"] for r in results} <= set(shapes_val.categories.thing_ids)
    assert {r["image_id"] for r in results} == set(shapes_val.image_ids)
    for r in results:
        assert r["segmentation"]["size"] == [64, 64]
        x, y, w, h = r["bbox"]
        assert 0 <= x <= x + w <= 64 and 0 <= y <= y + h <= 64


def test_precision_curves_average_to_ap(shapes_val):
    results = predict_dataset(NoisyOracle(shapes_val), shapes_val, 64, 64, progress=False)
    evaluator = run_cocoeval(shapes_val.coco, results, "bbox", shapes_val.image_ids)
    curves = precision_curves(evaluator)
    assert set(curves) == {"IoU=0.50", "IoU=0.75", "IoU=0.50:0.95"}
    assert all(c.shape == (101,) for c in curves.values())
    # COCO's AP is the mean of precision over the 101 recall points (and categories, IoUs).
    assert curves["IoU=0.50:0.95"].mean() == pytest.approx(evaluator.stats[0], abs=1e-9)
    assert curves["IoU=0.50"].mean() == pytest.approx(evaluator.stats[1], abs=1e-9)
    assert curves["IoU=0.75"].mean() == pytest.approx(evaluator.stats[2], abs=1e-9)


def test_write_metrics_merges_and_writes_nan_as_null(tmp_path):
    write_metrics(tmp_path, {"bbox": {"AP": 12.5, "APl": float("nan")}, "images": 3})
    merged = write_metrics(tmp_path, {"PQ": np.float32(40.0), "images": 4})
    assert merged == {"bbox": {"AP": 12.5, "APl": None}, "images": 4, "PQ": 40.0}
    assert _strict_json(tmp_path / "metrics.json") == merged
    assert (tmp_path / "metrics.json").read_text().startswith('{\n  "bbox": {\n    "AP": 12.5,')
    assert np.isnan(read_metrics(tmp_path)["bbox"]["APl"])
    # keys listed in remove go, even when they came from an earlier evaluation
    assert write_metrics(tmp_path, {}, remove=("PQ",)) == {"bbox": {"AP": 12.5, "APl": None},
                                                         "images": 4}


def test_no_detections_give_zero_ap_and_valid_files(shapes_val, tmp_path):
    class Blind(NoisyOracle):
        def forward(self, images):
            return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                     "labels": torch.zeros(0, dtype=torch.int64),
                     "masks": torch.zeros(0, 1, *im.shape[-2:])} for im in images]

    flat = evaluate_coco(Blind(shapes_val), shapes_val, 64, 64, progress=False, out_dir=tmp_path)
    assert flat["AP"] == 0.0 and flat["mask_AP"] == 0.0 and flat["mask_APs"] == 0.0
    assert np.isnan(flat["APl"]) and np.isnan(flat["mask_APl"])  # no object that large
    assert _strict_json(tmp_path / "metrics.json")["detections"] == 0
    assert json.loads((tmp_path / "coco_instances_results.json").read_text()) == []
    assert (tmp_path / "pr_curve.png").stat().st_size > 0
