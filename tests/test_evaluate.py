"""COCO AP through pycocotools (evaluation.coco), and evaluate_coco's files and numbers: in the
original pixels, one image's masks in memory at a time, COCO's own category ids (things up to 90,
53 stuff) on a COCO-like fixture."""

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

from blendmask_edu.evaluation.coco import (AP_NAMES, RESULTS_FILE, precision_curves,  # noqa: E402
                                           run_cocoeval)
from blendmask_edu.evaluation.evaluate import evaluate_coco  # noqa: E402
from blendmask_edu.evaluation.inference import predict_dataset  # noqa: E402
from blendmask_edu.evaluation.metrics import read_metrics, write_metrics  # noqa: E402
from blendmask_edu.modeling.panoptic import fuse  # noqa: E402
from conftest import shapes_split  # noqa: E402


class NoisyOracle(nn.Module):
    """A stand-in model that "detects" each image's ground truth, imperfectly: boxes jittered by
    up to 3 px, masks shifted by 1 px, every third object missed, one false positive per image
    and random scores. It answers at ``output_sizes`` when asked (evaluate asks for the original
    sizes of the images it resized), else at the size of the image it is given, as the eval
    contract says; ``sizes_seen`` records the (input, output) sizes of each call."""

    def __init__(self, dataset, seed=0):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))  # evaluate finds the device through it
        self.targets = [dataset[i][1] for i in range(len(dataset))]
        self.category_id = dataset.categories.category_id
        self.generator = torch.Generator().manual_seed(seed)
        self.calls = 0  # evaluate asks for the images in dataset order
        self.sizes_seen = []

    def forward(self, images, output_sizes=None):
        outputs = []
        for k, image in enumerate(images):
            size = tuple(image.shape[-2:]) if output_sizes is None else tuple(output_sizes[k])
            self.sizes_seen.append((tuple(image.shape[-2:]), size))
            target = self.targets[self.calls]
            self.calls += 1
            height, width = target["masks"].shape[-2:]
            sy, sx = size[0] / height, size[1] / width
            keep = torch.arange(len(target["boxes"])) % 3 != 2
            jitter = torch.randint(-3, 4, (int(keep.sum()), 4), generator=self.generator)
            boxes = torch.cat([target["boxes"][keep] + jitter, torch.tensor([[2.0, 2, 20, 14]])])
            boxes = boxes * torch.tensor([sx, sy, sx, sy])
            masks = torch.roll(target["masks"][keep], shifts=1, dims=-1).float()  # [D-1, H, W]
            false = torch.zeros(1, height, width)
            false[0, 2:14, 2:20] = 1.0
            masks = F.interpolate(torch.cat([masks, false])[:, None], size=size,
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
    model = NoisyOracle(shapes_val)
    evaluate_coco(model, shapes_val, short_size=128, max_size=256, progress=False, out_dir=tmp_path)
    # run at the test size, asked for the original size, one image per call
    assert model.sizes_seen == [((128, 128), (64, 64))] * 2
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
        def forward(self, images, output_sizes=None):
            sizes = output_sizes or [im.shape[-2:] for im in images]
            return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                     "labels": torch.zeros(0, dtype=torch.int64),
                     "masks": torch.zeros(0, 1, *size)} for size in sizes]

    flat = evaluate_coco(Blind(shapes_val), shapes_val, 64, 64, progress=False, out_dir=tmp_path)
    assert flat["AP"] == 0.0 and flat["mask_AP"] == 0.0 and flat["mask_APs"] == 0.0
    assert flat["AP_boundary"] == 0.0
    per_case = [v for k, v in flat.items() if k.endswith(("_box_AP", "_mask_AP", "_AP_boundary"))
                and k not in ("mask_AP", "AP_boundary")]  # 0 for a case held, NaN for another
    assert len(per_case) == 15 and 0.0 in per_case
    assert all(v == 0.0 or np.isnan(v) for v in per_case)
    assert np.isnan(flat["APl"]) and np.isnan(flat["mask_APl"])  # no object that large
    assert _strict_json(tmp_path / "metrics.json")["detections"] == 0
    assert json.loads((tmp_path / "coco_instances_results.json").read_text()) == []
    assert (tmp_path / "pr_curve.png").stat().st_size > 0


# ----------------------------------------------------------------------------- memory


import weakref  # noqa: E402


class TrackedMasks(nn.Module):
    """A stand-in model whose every ``masks`` tensor is watched through a weak reference, so that
    a test can count how many images' masks are still alive."""

    def __init__(self, detections=5):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.detections, self.made = detections, []

    def forward(self, images, output_sizes=None):
        sizes = output_sizes or [im.shape[-2:] for im in images]
        outputs = []
        for height, width in sizes:
            d = self.detections
            masks = torch.zeros(d, 1, height, width)
            masks[:, :, 2:10, 3:12] = 0.9
            self.made.append(weakref.ref(masks))
            outputs.append({"boxes": torch.tensor([[3.0, 2, 12, 10]] * d), "scores": torch.ones(d),
                            "labels": torch.ones(d, dtype=torch.int64), "masks": masks})
        return outputs


def _alive_while_predicting(batch_size):
    """For each image, how many images' masks are alive when ``on_image`` sees it, predicting
    six 40 × 48 images resized to 80 × 96 for the model."""
    model, seen, alive = TrackedMasks(), [], []

    def on_image(target, det):
        seen.append(weakref.ref(det["masks"]))
        tensors = (ref() for ref in model.made + seen)  # detect may hand on the model's own
        alive.append(len({id(t) for t in tensors if t is not None}))

    dataset = [(torch.rand(3, 40, 48), {"image_id": i}) for i in range(6)]
    results = predict_dataset(model, dataset, 80, 200, batch_size=batch_size, progress=False,
                              on_image=on_image)
    assert len(results) == 6 * 5 and all(r["segmentation"]["size"] == [40, 48] for r in results)
    assert all(ref() is None for ref in model.made + seen)  # nothing kept once done
    return alive


def test_predict_dataset_keeps_one_images_masks_at_a_time():
    # The masks of an image are encoded and dropped before the next image is pasted.
    assert _alive_while_predicting(batch_size=1) == [1] * 6
    # The check sees it when they are not: a batch of three holds three images' masks.
    assert _alive_while_predicting(batch_size=3) == [3] * 6


# ----------------------------------------------------------------------------- COCO's ids


def test_results_carry_cocos_own_category_ids_up_to_90(tmp_path):
    from blendmask_edu.data.coco import CocoInstances
    from blendmask_edu.data.coco_like import write_coco_like
    from blendmask_edu.data.files import dataset_paths

    write_coco_like(tmp_path / "coco", splits=("val2017",), images_per_split=6, max_side=96)
    dataset = CocoInstances.from_paths(dataset_paths(tmp_path / "coco", "val2017"))
    assert max(dataset.categories.thing_ids) == 90 and len(dataset.categories.thing_ids) == 80
    out = tmp_path / "eval"
    write_metrics(out, {"hard_cases": {"split": {"instances": 3}}})  # an earlier shapes run's
    flat = evaluate_coco(NoisyOracle(dataset), dataset, short_size=64, max_size=200,
                         progress=False, out_dir=out)
    # COCO's annotations carry no hard-case tags: no per-case block (the stale one goes), but
    # boundary AP like any evaluation with masks
    written = _strict_json(out / "metrics.json")
    assert "hard_cases" not in written and not any(k.startswith("split_") for k in flat)
    assert written["AP_boundary"] == written["boundary"]["AP"] == pytest.approx(flat["AP_boundary"])
    results = json.loads((out / RESULTS_FILE).read_text())
    annotated = {a["category_id"] for a in dataset.coco.dataset["annotations"]}
    found = {r["category_id"] for r in results}
    # ids as the dataset writes them, not contiguous indices 0..79 nor 1..80
    assert found <= annotated | {1} and max(found) > 80
    metrics = _strict_json(out / "metrics.json")
    gt = COCO(str(dataset.instances_json))
    for iou_type, prefix in (("bbox", ""), ("segm", "mask_")):
        evaluator = COCOeval(gt, gt.loadRes(str(out / RESULTS_FILE)), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        expected = [100.0 * v if v >= 0 else None for v in evaluator.stats[:6]]
        assert [metrics[iou_type][k] for k in AP_NAMES] == pytest.approx(expected, abs=1e-9)
        assert 10.0 < flat[prefix + "AP"] < 95.0, iou_type


class PanopticOracle(nn.Module):
    """A stand-in panoptic model that answers each image (in dataset order) with its ground
    truth at the size asked for: every non-crowd instance with score 1, ``sem_seg`` one-hot of
    the GT semantic labels (void → "things"), fused with the model's rule as BlendMask does."""

    def __init__(self, dataset):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.semantic = nn.Identity()  # evaluate_coco looks for a semantic head
        self.stuff_ids = list(dataset.categories.stuff_ids)
        self.items = [dataset[i] for i in range(len(dataset))]
        self.category_id = dataset.categories.category_id
        self.calls = 0

    def forward(self, images, output_sizes=None):
        outputs = []
        for k, image in enumerate(images):
            _, target = self.items[self.calls]
            self.calls += 1
            size = tuple(image.shape[-2:]) if output_sizes is None else tuple(output_sizes[k])
            assert tuple(target["masks"].shape[-2:]) == size  # asked for the original size
            semantic = target["sem_seg"].clone()
            semantic[semantic == 255] = 0
            sem_seg = F.one_hot(semantic, 1 + len(self.stuff_ids)).permute(2, 0, 1).float()
            masks, scores = target["masks"].float()[:, None], torch.ones(len(target["masks"]))
            labels = self.category_id(target["labels"])
            outputs.append({"boxes": target["boxes"], "scores": scores, "labels": labels,
                            "masks": masks, "sem_seg": sem_seg,
                            "panoptic": fuse(masks, scores, labels, sem_seg, 0.2, 0.4, 0,
                                             stuff_ids=self.stuff_ids)})
        return outputs


def test_panoptic_evaluation_with_cocos_133_categories(tmp_path):
    # COCO's panoptic side: 80 things and 53 stuff (ids 92–200), void 0, a crowd region, images
    # resized for the test and answered at their original size. The ground truth scores 100.
    from blendmask_edu.data.coco import CocoInstances
    from blendmask_edu.data.coco_like import write_coco_like
    from blendmask_edu.data.files import dataset_paths

    write_coco_like(tmp_path / "coco", splits=("val2017",), images_per_split=6, max_side=96)
    dataset = CocoInstances.from_paths(dataset_paths(tmp_path / "coco", "val2017"))
    assert len(dataset.categories.stuff_ids) == 53 and dataset.categories.stuff_ids[-1] == 200
    out = tmp_path / "eval"
    metrics = evaluate_coco(PanopticOracle(dataset), dataset, short_size=64, max_size=200,
                            progress=False, out_dir=out, split="val2017")
    assert metrics["PQ"] == metrics["PQ_th"] == metrics["PQ_st"] == 100.0
    assert metrics["mIoU"] == pytest.approx(100.0) and metrics["mask_AP"] == pytest.approx(100.0)
    written = json.loads((out / "panoptic_val2017.json").read_text())
    assert len(written["categories"]) == 133
    found = {s["category_id"] for a in written["annotations"] for s in a["segments_info"]}
    assert min(found) <= 90 and max(found) >= 92  # things and stuff under their COCO ids
    assert len(list((out / "panoptic_val2017").glob("*.png"))) == len(dataset)


# ----------------------------------------------------------------------------- boundary AP, cases


def test_boundary_ap_and_hard_cases_in_the_flat_metrics_and_metrics_json(shapes_val, tmp_path):
    from blendmask_edu.evaluation.coco import coco_ap
    from blendmask_edu.evaluation.hard_cases import KNOWN_TAGS, count_instances, hard_case_ap

    flat = evaluate_coco(NoisyOracle(shapes_val), shapes_val, short_size=96, max_size=200,
                         progress=False, out_dir=tmp_path)
    metrics = _strict_json(tmp_path / "metrics.json")
    results = json.loads((tmp_path / RESULTS_FILE).read_text())
    gt = COCO(str(shapes_val.instances_json))
    # boundary AP: an independent run on the written files; the NoisyOracle's masks are one
    # pixel off, which costs outlines (d = 2 px at 64 px) more than masks
    expected = coco_ap(gt, results, "boundary")
    assert [metrics["boundary"][k] for k in AP_NAMES] == pytest.approx(
        [None if np.isnan(v) else v for v in expected.values()], abs=1e-9)
    assert metrics["AP_boundary"] == pytest.approx(metrics["boundary"]["AP"])
    for name in ("AP", "AP50", "AP75"):
        assert flat[name + "_boundary"] == pytest.approx(expected[name])
    assert flat["AP_boundary"] < flat["mask_AP"]
    # per hard case: every tag, its instance count from the ground truth file, the APs of an
    # independent run, and the flat keys
    cases = metrics["hard_cases"]
    assert list(cases) == list(KNOWN_TAGS)
    assert {t: row["instances"] for t, row in cases.items()} == count_instances(gt, KNOWN_TAGS)
    assert sum(row["instances"] for row in cases.values()) > 0
    again = hard_case_ap(gt, results)
    for tag, row in cases.items():
        assert set(row) == {"instances", "box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50",
                            "mask_AP75", "AP_boundary", "AP50_boundary", "AP75_boundary"}
        for key, value in row.items():
            assert value == (None if np.isnan(again[tag][key]) else pytest.approx(again[tag][key]))
        for key in ("box_AP", "mask_AP", "AP_boundary"):
            assert np.isnan(flat[f"{tag}_{key}"]) if row[key] is None else \
                flat[f"{tag}_{key}"] == pytest.approx(row[key])
    np.testing.assert_equal(read_metrics(tmp_path)["hard_cases"],  # null read back as NaN
                            {t: {k: np.nan if v is None else v for k, v in row.items()}
                             for t, row in cases.items()})
    # without boundary AP the boundary keys go, also from the file
    flat = evaluate_coco(NoisyOracle(shapes_val), shapes_val, short_size=96, max_size=200,
                         progress=False, out_dir=tmp_path, boundary=False)
    metrics = _strict_json(tmp_path / "metrics.json")
    assert "boundary" not in metrics and "AP_boundary" not in metrics
    assert not any(k.endswith("_boundary") for k in flat)
    assert "AP_boundary" not in metrics["hard_cases"]["split"] and "split_mask_AP" in flat
