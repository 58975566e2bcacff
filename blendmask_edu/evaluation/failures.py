"""Which ground-truth objects a model serves badly: every object's best mask IoU.

COCO AP ranks detections; it does not say *which* objects were missed. For that, each
non-crowd ground-truth object is given the best mask IoU of any detection of its own category
scoring at least ``score_thresh`` (0 when there is none): an object with a low best IoU is a
failure, whatever else the model found. The objects keep their category, area and the
dataset's hard-case tags (``hard_cases`` on each annotation of the shapes dataset), so the
failures can be grouped by what makes an object hard.

Used by notebook 05 (failure cases) and by ``evaluation.comparison`` (Figure 1's per-image
scores).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_utils


class ObjectMatch(NamedTuple):
    """One ground-truth object and how well the model's best same-class detection covers it."""
    image_id: int
    annotation_id: int
    category_id: int
    area: float  # the annotation's pixel area
    tags: Tuple[str, ...]  # its hard-case tags ("split", "overlap", ...); () when none
    best_iou: float  # best mask IoU with a same-category detection scoring ≥ the threshold; 0 if none


def match_objects(coco_gt, results: Sequence[Mapping], score_thresh: float) -> List[ObjectMatch]:
    """An :class:`ObjectMatch` for every non-crowd ground-truth object of ``coco_gt``, by image
    id then annotation order.

    coco_gt       a ``pycocotools.coco.COCO`` (the ground truth the results were made on)
    results       COCO results dicts: ``image_id``, ``category_id``, ``score``, ``segmentation``
                  (RLE); entries without a segmentation or below ``score_thresh`` are ignored
    """
    by_image: Dict[int, List[Mapping]] = {}
    for r in results:
        if r["score"] >= score_thresh and "segmentation" in r:
            by_image.setdefault(int(r["image_id"]), []).append(r)
    matches = []
    for image_id in sorted(coco_gt.getImgIds()):
        for ann in coco_gt.imgToAnns[image_id]:
            if ann.get("iscrowd", 0):
                continue
            dets = [r["segmentation"] for r in by_image.get(image_id, ())
                    if r["category_id"] == ann["category_id"]]
            best = float(np.max(mask_utils.iou(dets, [coco_gt.annToRLE(ann)], [0]))) if dets else 0.0
            matches.append(ObjectMatch(image_id, int(ann["id"]), int(ann["category_id"]),
                                       float(ann["area"]), tuple(ann.get("hard_cases", ())), best))
    return matches


def summarize(matches: Sequence[ObjectMatch], iou: float = 0.5) -> Dict[str, float]:
    """``{"objects", "mean_iou", "found_percent"}`` of ``matches``: how many, their mean best
    IoU, and the percent whose best IoU reaches ``iou``. Zeros for an empty list."""
    values = np.array([m.best_iou for m in matches], dtype=float)
    if not len(values):
        return {"objects": 0, "mean_iou": 0.0, "found_percent": 0.0}
    return {"objects": int(len(values)), "mean_iou": float(values.mean()),
            "found_percent": 100.0 * float((values >= iou).mean())}


def by_tag(matches: Sequence[ObjectMatch], tags: Optional[Sequence[str]] = None,
           iou: float = 0.5) -> Dict[str, Dict[str, float]]:
    """``{tag: summarize(objects with that tag)}`` for each of ``tags`` (every tag present when
    None, sorted), plus ``"untagged"`` (objects with no tag) and ``"all"``. An object with
    several tags counts in each of them."""
    if tags is None:
        tags = sorted({t for m in matches for t in m.tags})
    table = {tag: summarize([m for m in matches if tag in m.tags], iou) for tag in tags}
    table["untagged"] = summarize([m for m in matches if not m.tags], iou)
    table["all"] = summarize(matches, iou)
    return table
