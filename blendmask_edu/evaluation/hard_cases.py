"""AP per hard case: box, mask and boundary AP over the ground truth that holds one tag.

The shapes dataset tags each thing with the hard cases it is (``"split"``, ``"overlap"``,
``"complex"``, ``"small"``, ``"large"``: :mod:`blendmask_edu.data.synthetic`), in each ground-truth
annotation's ``"hard_cases"`` list. For a tag t, the AP of t is COCO's AP with every other
ground-truth object marked *ignore*, the way COCO ignores crowds and out-of-range sizes: a
detection matched to an ignored object is neither a true nor a false positive, a detection
matched to nothing is a false positive, and only the tagged objects count towards recall. So a
model that finds the split objects as well as the others scores the same on "split" as overall,
and one that misses them scores low there, whatever it does elsewhere.

pycocotools' ``COCOeval._prepare`` sets each ground truth's ``ignore`` from ``iscrowd``, so
:class:`OneCaseCOCOeval` sets its flags after it (on copies: the caller's annotations stay as they
were), and leaves ``iscrowd`` alone: a crowd changes how objects are matched, not only whether
they count. The IoUs do not depend on the flags, so each case reuses those of the full
evaluation (box, mask or boundary) instead of computing them again.
"""

from __future__ import annotations

import contextlib
import io
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from blendmask_edu.evaluation.coco import BOUNDARY, BOUNDARY_SUFFIX, run_cocoeval

# The shapes dataset's tags, in the order its docs list them; other tags follow, sorted.
KNOWN_TAGS = ("split", "overlap", "complex", "small", "large")
CASE_AP_NAMES = ("AP", "AP50", "AP75")
TAG_KEY = "hard_cases"


def case_key(iou_type: str, name: str) -> str:
    """The key of one AP (``name`` in AP, AP50, AP75) of ``iou_type`` (``bbox``, ``segm``,
    ``boundary``) in a case's block: ``box_AP``, ``mask_AP50``, ``AP75_boundary``."""
    if iou_type == BOUNDARY:
        return name + BOUNDARY_SUFFIX
    return {"bbox": "box_", "segm": "mask_"}[iou_type] + name


class OneCaseCOCOeval(COCOeval):
    """``COCOeval`` over the ground truth holding ``tag`` (str) in its ``"hard_cases"``: the rest
    (and crowds, as always) is marked ignore after ``_prepare``.

    ``ious`` ({(image id, category id): [D, G] array or []}, a full evaluator's ``.ious`` after
    its ``evaluate``) replaces ``computeIoU``, which is how boundary AP per case comes for free;
    it must come from an evaluator with the same ground truth, detections, images, categories
    and ``maxDets``. Without it the IoUs of ``iouType`` are computed as usual.
    """

    def __init__(self, cocoGt, cocoDt, iouType: str, tag: str,
                 ious: Optional[Mapping] = None):
        super().__init__(cocoGt, cocoDt, iouType)
        self.tag, self.given_ious = tag, ious

    def _prepare(self):
        super()._prepare()
        for key, gts in self._gts.items():
            self._gts[key] = [dict(g, ignore=int(bool(g["ignore"]) or self.tag not in
                                                 g.get(TAG_KEY, ()))) for g in gts]

    def computeIoU(self, imgId, catId):
        if self.given_ious is None:
            return super().computeIoU(imgId, catId)
        return self.given_ious[imgId, catId]


def has_tags(coco_gt: COCO) -> bool:
    """Whether any ground-truth annotation of ``coco_gt`` carries a ``"hard_cases"`` list."""
    return any(TAG_KEY in a for a in coco_gt.anns.values())


def case_tags(coco_gt: COCO) -> List[str]:
    """The tags to report for ``coco_gt``: :data:`KNOWN_TAGS` (all of them, so that a table
    lists a case even where a subset holds none of it), then any other tag found, sorted."""
    found = {t for a in coco_gt.anns.values() for t in a.get(TAG_KEY, ())}
    return list(KNOWN_TAGS) + sorted(found - set(KNOWN_TAGS))


def count_instances(coco_gt: COCO, tags: Iterable[str],
                    image_ids: Optional[Sequence[int]] = None) -> Dict[str, int]:
    """{tag: number of non-crowd ground-truth objects holding it} in ``image_ids`` (default:
    all images)."""
    anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=list(image_ids) if image_ids is not None
                                              else []))
    return {t: sum(t in a.get(TAG_KEY, ()) and not a.get("iscrowd", 0) for a in anns)
            for t in tags}


def _case_ap(evaluator: COCOeval) -> Dict[str, float]:
    """AP, AP50, AP75 in percent from an accumulated evaluator's ``eval["precision"]``
    [T, R, K, A, M], area range "all", the most detections: the mean over the entries that
    have ground truth (pycocotools marks the others −1), NaN when none has."""
    params = evaluator.params
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [T, R, K]
    t50, t75 = (int(np.argmin(np.abs(params.iouThrs - t))) for t in (0.5, 0.75))

    def mean(values):
        values = values[values > -1]
        return float(values.mean() * 100.0) if values.size else float("nan")

    return {"AP": mean(precision), "AP50": mean(precision[t50]), "AP75": mean(precision[t75])}


def _one_case(base: COCOeval, tag: str) -> Dict[str, float]:
    """AP, AP50, AP75 (percent) of ``tag`` with the IoUs, images, categories and detections of
    ``base``, an evaluated ``COCOeval``. Only COCO's area range "all" is evaluated: the size
    ranges are not reported per case, and they would cost three times as long."""
    iou_type = "segm" if base.params.iouType == "segm" else "bbox"
    evaluator = OneCaseCOCOeval(base.cocoGt, base.cocoDt, iou_type, tag, ious=base.ious)
    p, q = evaluator.params, base.params
    p.imgIds, p.catIds, p.maxDets = list(q.imgIds), list(q.catIds), list(q.maxDets)
    p.useCats = q.useCats
    p.areaRng, p.areaRngLbl = [q.areaRng[0]], [q.areaRngLbl[0]]  # "all"
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        evaluator.evaluate()
        evaluator.accumulate()
    return _case_ap(evaluator)


def hard_case_ap(coco_gt: COCO, results: Sequence[Dict],
                 image_ids: Optional[Sequence[int]] = None,
                 evaluators: Optional[Mapping[str, Optional[COCOeval]]] = None,
                 boundary: bool = True, tags: Optional[Sequence[str]] = None
                 ) -> Dict[str, Dict[str, float]]:
    """Box, mask and boundary AP per hard case.

    Takes the ground truth (annotations with ``"hard_cases"`` lists), the COCO results list,
    the images to evaluate (default: all), optionally the evaluated full evaluators by iou type
    (``bbox``, ``segm``, ``boundary``; None for one without detections) whose IoUs are reused
    (any missing is run here), whether to score boundary AP, and the tags (default
    :func:`case_tags`). Mask and boundary AP need results with masks.

    Returns ``{tag: {"instances": n, "box_AP", "box_AP50", "box_AP75", "mask_AP", …,
    "AP_boundary", "AP50_boundary", "AP75_boundary"}}`` in percent: NaN where no object holds
    the tag, 0 where there are objects but no detections.
    """
    tags = list(tags) if tags is not None else case_tags(coco_gt)
    has_masks = not results or "segmentation" in results[0]
    iou_types = ["bbox"] + (["segm"] + ([BOUNDARY] if boundary else []) if has_masks else [])
    evaluators = dict(evaluators or {})
    for iou_type in iou_types:
        if iou_type not in evaluators:
            evaluators[iou_type] = run_cocoeval(coco_gt, results, iou_type, image_ids)
    counts = count_instances(coco_gt, tags, image_ids)
    table = {}
    for tag in tags:
        row: Dict[str, float] = {"instances": counts[tag]}
        for iou_type in iou_types:
            base = evaluators[iou_type]
            if base is None:  # no detections: 0 where there is something to find
                ap = dict.fromkeys(CASE_AP_NAMES, 0.0 if counts[tag] else float("nan"))
            else:
                ap = _one_case(base, tag)
            row.update({case_key(iou_type, name): ap[name] for name in CASE_AP_NAMES})
        table[tag] = row
    return table


def flat_case_metrics(table: Mapping[str, Mapping[str, float]]) -> Dict[str, float]:
    """The flat metrics of :func:`hard_case_ap`'s table: ``{tag}_box_AP``, ``{tag}_mask_AP``
    and ``{tag}_AP_boundary`` (percent) for each tag, those its rows have."""
    keys = ("box_AP", "mask_AP", "AP" + BOUNDARY_SUFFIX)
    return {f"{tag}_{key}": row[key] for tag, row in table.items() for key in keys if key in row}
