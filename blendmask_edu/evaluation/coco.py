"""COCO AP: detections in COCO's results format, scored by pycocotools' ``COCOeval``.

The results format is a list with one dict per detection: ``image_id``, ``category_id`` (real
ids), ``bbox`` [x, y, w, h], ``score`` and, for masks, ``segmentation`` as RLE
(:func:`to_coco_results`); ``coco_instances_results.json`` holds such a list, readable by
``COCO.loadRes``. Scoring it gives AP, AP50, AP75 and APs/m/l in percent for boxes (``bbox``),
masks (``segm``) and mask outlines (``boundary``: boundary AP, :mod:`.boundary`)
(:func:`coco_ap`, :func:`coco_metrics`), and the precision–recall curves that AP is the area
under (:func:`precision_curves`). A size range without any ground-truth
object (COCO's "large" on 128 px shapes) has no AP: NaN.

Uses pycocotools for everything it already does well (RLE, matching, AP). Introduced in
``notebooks/01_fcos.ipynb``; explained in ``05_evaluate``.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from blendmask_edu.evaluation.boundary import BoundaryCOCOeval

AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = {"bbox": "", "segm": "mask_"}  # COCOeval's iouType → prefix of the flat metric keys
BOUNDARY = "boundary"  # run_cocoeval's iou type for boundary AP (masks, BoundaryCOCOeval)
BOUNDARY_SUFFIX = "_boundary"  # its flat metric keys: AP_boundary, AP50_boundary, AP75_boundary
RESULTS_FILE = "coco_instances_results.json"


def to_coco_results(det: Mapping[str, torch.Tensor], image_id: int) -> List[Dict]:
    """One image's detections → COCO results dicts (one per detection).

    ``det`` holds ``boxes`` [D, 4] xyxy, ``scores`` [D], ``labels`` [D] (category ids) and
    optionally ``masks`` [D, 1, H, W] probabilities, all in the image's own pixels (as
    ``inference.detect`` returns them); the masks become an RLE ``segmentation`` of
    ``mask ≥ 0.5``. Boxes are rounded to 0.01 px, scores to 5 digits.
    """
    boxes = det["boxes"]
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)  # [D, 4]
    rles = encode_masks(det["masks"], det["masks"].shape[-2:]) if "masks" in det else None
    results = []
    for k, (box, score, label) in enumerate(zip(xywh.tolist(), det["scores"].tolist(),
                                                det["labels"].tolist())):
        result = {"image_id": int(image_id), "category_id": int(label),
                  "bbox": [round(v, 2) for v in box], "score": round(score, 5)}
        if rles is not None:
            result["segmentation"] = rles[k]
        results.append(result)
    return results


def encode_masks(masks: torch.Tensor, size: Tuple[int, int]) -> List[Dict]:
    """Mask probabilities [D, 1, h, w] → D COCO RLEs of ``mask ≥ 0.5`` at the image ``size``
    (H, W), ``counts`` as text so that the results file is JSON; [] for D = 0."""
    if masks.shape[0] == 0:
        return []
    if tuple(masks.shape[-2:]) != tuple(size):
        masks = F.interpolate(masks.float(), size=tuple(size), mode="bilinear", align_corners=False)
    # [D, W, H] in C order is [H, W, D] in Fortran order, the layout pycocotools reads: one
    # byte per pixel and no further copy
    binary = (masks[:, 0].transpose(1, 2) >= 0.5).contiguous().cpu().numpy().view(np.uint8)
    rles = mask_utils.encode(binary.transpose(2, 1, 0))  # [H, W, D]
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def run_cocoeval(coco_gt: COCO, results: Sequence[Dict], iou_type: str = "bbox",
                 image_ids: Optional[Sequence[int]] = None) -> Optional[COCOeval]:
    """``COCOeval`` of the results list against ``coco_gt`` for ``iou_type`` (``bbox``,
    ``segm`` or ``boundary``: a :class:`~.boundary.BoundaryCOCOeval`), after ``evaluate``,
    ``accumulate`` and ``summarize`` (its printing silenced), on ``image_ids`` (default: all);
    None when there are no results (pycocotools refuses an empty list)."""
    if iou_type not in (*IOU_TYPES, BOUNDARY):
        raise ValueError(f"iou_type must be one of {(*IOU_TYPES, BOUNDARY)}, got {iou_type!r}")
    if not results:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes adds keys to each dict
        evaluator = (BoundaryCOCOeval(coco_gt, coco_dt) if iou_type == BOUNDARY
                     else COCOeval(coco_gt, coco_dt, iou_type))
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _ap_without_detections(coco_gt: COCO, image_ids: Optional[Sequence[int]]) -> Dict[str, float]:
    """0 for every COCO size range that holds a ground-truth object, NaN for the others (as
    pycocotools would say, had it accepted an empty results list)."""
    area_ranges = Params("bbox").areaRng  # COCO's all, small, medium, large (px²)
    anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=list(image_ids) if image_ids is not None else []))
    areas = [a["area"] for a in anns if not a.get("iscrowd", 0)]
    held = [any(low <= area <= high for area in areas) for low, high in area_ranges]
    held = held[:1] * 3 + held[1:]  # AP, AP50, AP75 use the range "all"
    return {name: 0.0 if ok else float("nan") for name, ok in zip(AP_NAMES, held)}


def _ap_from_stats(evaluator: COCOeval) -> Dict[str, float]:
    # pycocotools writes -1 where a size range holds no ground truth: report that as NaN.
    return {name: float(v * 100.0) if v >= 0 else float("nan")
            for name, v in zip(AP_NAMES, evaluator.stats[:6])}


def _ap(evaluator: Optional[COCOeval], coco_gt: COCO,
        image_ids: Optional[Sequence[int]]) -> Dict[str, float]:
    return _ap_without_detections(coco_gt, image_ids) if evaluator is None else _ap_from_stats(evaluator)


def evaluate_ap(coco_gt: COCO, results: Sequence[Dict], iou_type: str = "bbox",
                image_ids: Optional[Sequence[int]] = None
                ) -> Tuple[Dict[str, float], Optional[COCOeval]]:
    """:func:`coco_ap`'s numbers ({AP_NAMES: percent}) and the evaluator they come from (None:
    no detections), for a caller that reads more from it (curves, IoUs)."""
    evaluator = run_cocoeval(coco_gt, results, iou_type, image_ids)
    return _ap(evaluator, coco_gt, image_ids), evaluator


def coco_ap(coco_gt: COCO, results: Sequence[Dict], iou_type: str = "bbox",
            image_ids: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """COCO AP, AP50, AP75, APs/m/l in percent for ``results`` against ``coco_gt``, with
    ``iou_type`` ``bbox``, ``segm`` or ``boundary`` (boundary AP).

    A size range without any ground-truth object (COCO's "large" on 128 px shapes) is NaN.
    ``image_ids`` limits the evaluation to those images (default: all of ``coco_gt``).
    No detections at all gives 0 where there is ground truth (pycocotools itself refuses an
    empty results list).
    """
    return evaluate_ap(coco_gt, results, iou_type, image_ids)[0]


def coco_metrics(coco_gt: COCO, results: Sequence[Dict], image_ids: Optional[Sequence[int]] = None
                 ) -> Tuple[Dict[str, float], Dict[str, Optional[COCOeval]]]:
    """Box AP, and mask AP when the results carry masks, of one results list.

    Returns the flat metrics ``{"AP", …, "APl", "mask_AP", …, "mask_APl"}`` (percent, NaN for an
    empty size range, as :func:`coco_ap`) and the evaluators by iou type (None: no detections),
    whose accumulated precision :func:`precision_curves` reads.
    """
    # Mask AP when the detections carry masks; with no detection at all both are 0.
    iou_types = ["bbox"] + (["segm"] if not results or "segmentation" in results[0] else [])
    evaluators = {t: run_cocoeval(coco_gt, results, t, image_ids) for t in iou_types}
    metrics = {}
    for iou_type, evaluator in evaluators.items():
        ap = _ap(evaluator, coco_gt, image_ids)
        metrics.update({IOU_TYPES[iou_type] + k: v for k, v in ap.items()})
    return metrics, evaluators


def precision_curves(evaluator: COCOeval, max_dets: int = 100) -> Dict[str, np.ndarray]:
    """Precision [R] at COCO's R = 101 recall points (``evaluator.params.recThrs``), from the
    accumulated ``eval["precision"]`` [T, R, K, A, M] (T IoU thresholds, K categories,
    A area ranges, M max-detection settings), area "all", ``max_dets`` detections per image.

    Returns ``{"IoU=0.50": [R], "IoU=0.75": [R], "IoU=0.50:0.95": [R]}``: the mean over the
    categories that have ground truth (pycocotools marks the others −1), and for the last the
    mean over the ten IoU thresholds too. Each curve's mean over the recall points is the
    matching AP (AP50, AP75, AP) as a fraction, which is why COCO's AP is an area under it.
    """
    params = evaluator.params
    m = list(params.maxDets).index(max_dets)
    precision = evaluator.eval["precision"][:, :, :, 0, m].astype(np.float64)  # [T, R, K]
    precision[precision < 0] = np.nan
    t50, t75 = (int(np.argmin(np.abs(params.iouThrs - t))) for t in (0.5, 0.75))
    with warnings.catch_warnings():  # a recall level no category reaches is NaN: expected
        warnings.simplefilter("ignore", RuntimeWarning)
        return {"IoU=0.50": np.nanmean(precision[t50], axis=-1),  # [R]
                "IoU=0.75": np.nanmean(precision[t75], axis=-1),
                "IoU=0.50:0.95": np.nanmean(precision.transpose(1, 0, 2).reshape(
                    precision.shape[1], -1), axis=-1)}  # [R, T·K] → [R]
