"""Panoptic quality (PQ, SQ, RQ) as COCO panoptic defines it, and the semantic branch's mIoU.

Panoptic quality (Kirillov et al., "Panoptic Segmentation", CVPR 2019) scores an image's
non-overlapping segments against the ground truth's, per category c:

    a predicted segment p and a GT segment g of the same category *match* if IoU(p, g) > 0.5
    (unique: two segments of one map cannot both cover more than half of a third one)

    PQ_c = Σ_{(p,g) ∈ TP} IoU(p, g) / (|TP| + ½|FP| + ½|FN|)  =  SQ_c · RQ_c
    SQ_c = Σ_TP IoU / |TP|          (segmentation quality: how well the matches fit)
    RQ_c = |TP| / (|TP| + ½|FP| + ½|FN|)   (recognition quality: an F1 score)

with TP, FP, FN summed over all images before dividing. COCO's rules for unlabelled pixels:
- void pixels (GT id 0) are taken out of the prediction: IoU = |p ∩ g| / (|p ∪ g| − |p ∩ void|);
- a GT crowd segment (``iscrowd`` 1) is never matched and never a false negative;
- an unmatched prediction is not a false positive if more than half of it is void or a crowd
  region of its own category.
PQ, SQ and RQ over a set of categories (All, Things, Stuff) are the means of the per-category
values over the categories that occur (|TP| + |FP| + |FN| > 0); SQ_c counts 0 where |TP| = 0, so
the mean PQ is not the product of the mean SQ and RQ.

All scores are in percent (0..100), as ``coco.coco_ap`` reports AP. Introduced in
``notebooks/06_panoptic.ipynb``.

Differs from COCO's reference tool: it assumes at most one crowd segment per category and image;
here a prediction's overlap with every crowd segment of its category is counted (the same thing
when there is one). It also refuses a GT PNG that disagrees with its JSON, where the reference
tool fails or counts the missing segment as a false negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from itertools import zip_longest
from typing import Dict, Iterable, Mapping, Sequence, Tuple, Union

import numpy as np

from blendmask_edu.data.errors import DatasetError
from blendmask_edu.data.files import load_json, read_panoptic

__all__ = ["PQCounts", "confusion_matrix", "miou_from_confusion", "panoptic_quality",
           "pq_from_arrays", "pq_of_maps", "pq_summary", "semantic_miou"]

VOID = 0  # segment id of unlabelled pixels in a panoptic PNG
OFFSET = 256 ** 3  # ids are < 256³ (three 8-bit channels): g · OFFSET + p is a unique pair key


@dataclass
class PQCounts:
    """One category's tallies: Σ IoU over the matches, |TP|, |FP|, |FN|."""

    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: "PQCounts") -> "PQCounts":
        return PQCounts(self.iou + other.iou, self.tp + other.tp, self.fp + other.fp,
                        self.fn + other.fn)


def _segment_table(segments: Sequence[dict], known: set, which: str) -> Dict[int, dict]:
    table = {}
    for s in segments:
        if int(s["id"]) in table:
            raise ValueError(f"{which} segment id {s['id']} appears twice in segments_info")
        if int(s["category_id"]) not in known:
            raise ValueError(f"{which} segment {s['id']} has unknown category id "
                             f"{s['category_id']}")
        table[int(s["id"])] = s
    return table


def pq_from_arrays(gt_ids, gt_segments: Sequence[dict], pred_ids, pred_segments: Sequence[dict],
                   categories: Sequence[dict]) -> Dict[int, PQCounts]:
    """One image's tallies {category id: PQCounts} (add them up over a dataset).

    gt_ids, pred_ids  (H, W) segment ids (numpy or CPU torch), 0 = void
    gt_segments       GT ``segments_info``: ``id``, ``category_id``, optional ``iscrowd``
    pred_segments     predicted ``segments_info``: ``id``, ``category_id``
    categories        the dataset's categories (``id``; ``isthing`` is read by ``pq_summary``)
    Raises ValueError when a map and its segments_info disagree (an id drawn but not described
    or described but not drawn) or a category is unknown. Only categories with a TP, FP or FN
    appear in the result.
    """
    gt_ids, pred_ids = np.asarray(gt_ids, dtype=np.int64), np.asarray(pred_ids, dtype=np.int64)
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(f"GT map {gt_ids.shape} and predicted map {pred_ids.shape} differ in size")
    known = {int(c["id"]) for c in categories}
    gt = _segment_table(gt_segments, known, "GT")
    pred = _segment_table(pred_segments, known, "predicted")

    keys, pixels = np.unique(gt_ids.ravel() * OFFSET + pred_ids.ravel(), return_counts=True)
    overlap = {(int(k // OFFSET), int(k % OFFSET)): int(n) for k, n in zip(keys, pixels)}
    gt_area: Dict[int, int] = {}
    pred_area: Dict[int, int] = {}
    for (g, p), n in overlap.items():
        gt_area[g] = gt_area.get(g, 0) + n
        pred_area[p] = pred_area.get(p, 0) + n
    for which, table, area in (("GT", gt, gt_area), ("predicted", pred, pred_area)):
        undescribed = sorted(set(area) - set(table) - {VOID})
        undrawn = sorted(set(table) - set(area))
        if undescribed:
            raise ValueError(f"{which} map holds segment id(s) {undescribed} not in segments_info")
        if undrawn:
            raise ValueError(f"{which} segments_info id(s) {undrawn} do not occur in the map")

    counts: Dict[int, PQCounts] = {}
    matched_gt, matched_pred = set(), set()
    for (g, p), inter in overlap.items():
        if g == VOID or p == VOID or gt[g].get("iscrowd", 0):
            continue
        if gt[g]["category_id"] != pred[p]["category_id"]:
            continue
        union = gt_area[g] + pred_area[p] - inter - overlap.get((VOID, p), 0)
        iou = inter / union
        if iou > 0.5:
            c = counts.setdefault(int(gt[g]["category_id"]), PQCounts())
            c.tp += 1
            c.iou += iou
            matched_gt.add(g)
            matched_pred.add(p)

    crowd = {g: int(s["category_id"]) for g, s in gt.items() if s.get("iscrowd", 0)}
    for g, s in gt.items():
        if g not in matched_gt and g not in crowd:
            counts.setdefault(int(s["category_id"]), PQCounts()).fn += 1
    for p, s in pred.items():
        if p in matched_pred:
            continue
        category = int(s["category_id"])
        ignored = overlap.get((VOID, p), 0) + sum(
            overlap.get((g, p), 0) for g, c in crowd.items() if c == category)
        if ignored / pred_area[p] > 0.5:
            continue  # mostly void or crowd: COCO does not count it as a false positive
        counts.setdefault(category, PQCounts()).fp += 1
    return counts


def pq_summary(counts: Mapping[int, PQCounts], categories: Sequence[dict]) -> dict:
    """Dataset tallies → ``{"All", "Things", "Stuff": {"pq", "sq", "rq", "n"}, "per_class"}``.

    ``n`` is the number of categories averaged (those with |TP| + |FP| + |FN| > 0); a set with
    none scores 0. ``per_class`` maps each such category id to its ``pq``, ``sq``, ``rq`` and
    ``tp``, ``fp``, ``fn``. Scores in percent. ``isthing`` missing from a category means thing.
    """
    isthing = {int(c["id"]): bool(c.get("isthing", 1)) for c in categories}
    per_class = {}
    for cat in sorted(counts):
        c = counts[cat]
        denominator = c.tp + 0.5 * c.fp + 0.5 * c.fn
        if denominator == 0:
            continue
        per_class[cat] = {"pq": 100.0 * c.iou / denominator,
                          "sq": 100.0 * c.iou / c.tp if c.tp else 0.0,
                          "rq": 100.0 * c.tp / denominator, "tp": c.tp, "fp": c.fp, "fn": c.fn}

    def average(keep) -> dict:
        rows = [r for cat, r in per_class.items() if keep(isthing.get(cat, True))]
        n = len(rows)
        means = {k: sum(r[k] for r in rows) / n if n else 0.0 for k in ("pq", "sq", "rq")}
        return {**means, "n": n}

    return {"All": average(lambda thing: True), "Things": average(lambda thing: thing),
            "Stuff": average(lambda thing: not thing), "per_class": per_class}


def pq_of_maps(images: Iterable[Tuple], categories: Sequence[dict]) -> dict:
    """``pq_summary`` over in-memory maps: ``images`` yields (gt_ids, gt_segments, pred_ids,
    pred_segments) per image, as :func:`pq_from_arrays` takes them (e.g. to sweep the fusion's
    thresholds without writing PNGs)."""
    totals: Dict[int, PQCounts] = {}
    for gt_ids, gt_segments, pred_ids, pred_segments in images:
        for cat, c in pq_from_arrays(gt_ids, gt_segments, pred_ids, pred_segments,
                                     categories).items():
            totals[cat] = totals.get(cat, PQCounts()) + c
    return pq_summary(totals, categories)


def _load(source: Union[str, Path, Mapping], required: Sequence[str]) -> Mapping:
    return source if isinstance(source, Mapping) else load_json(Path(source), required)


def panoptic_quality(gt_json, gt_folder, pred_json, pred_folder) -> dict:
    """PQ, SQ, RQ in percent for All, Things, Stuff and per class (``pq_summary``'s dict).

    gt_json      COCO panoptic JSON (a path, or the loaded dict): ``images``, ``annotations``
                 (``image_id``, ``file_name``, ``segments_info``), ``categories`` (``isthing``)
    gt_folder    folder of the GT PNGs (id = R + 256·G + 256²·B)
    pred_json    predictions in the same format (``annotations`` only; the GT's categories count)
    pred_folder  folder of the predicted PNGs
    Every GT image needs a prediction (an image with nothing predicted has an all-zero PNG and
    empty segments_info); predictions for images outside the GT are ignored. A PNG that cannot
    be read, has the wrong size or disagrees with its segments_info raises DatasetError.
    """
    gt = _load(gt_json, ("images", "annotations", "categories"))
    pred = _load(pred_json, ("annotations",))
    images = {im["id"]: im for im in gt["images"]}
    predictions = {a["image_id"]: a for a in pred["annotations"]}
    totals: Dict[int, PQCounts] = {}
    for ann in gt["annotations"]:
        image_id = ann["image_id"]
        if image_id not in predictions:
            raise ValueError(f"no prediction for image {image_id} ({ann['file_name']})")
        found = predictions[image_id]
        gt_path = Path(gt_folder) / ann["file_name"]
        pred_path = Path(pred_folder) / found["file_name"]
        gt_ids = read_panoptic(gt_path, images[image_id])  # (H, W)
        pred_ids = read_panoptic(pred_path, images[image_id])  # (H, W)
        try:
            counts = pq_from_arrays(gt_ids, ann["segments_info"], pred_ids,
                                    found["segments_info"], gt["categories"])
        except ValueError as e:
            # every message of pq_from_arrays names its side first: "GT …" or "predicted …"
            blame = gt_path if str(e).startswith("GT") else pred_path
            raise DatasetError(blame, f"image {image_id}: {e}") from None
        for cat, c in counts.items():
            totals[cat] = totals.get(cat, PQCounts()) + c
    return pq_summary(totals, gt["categories"])


def confusion_matrix(pred_labels, gt_labels, num_classes: int, ignore: int = 255) -> np.ndarray:
    """(num_classes, num_classes) int64 pixel counts, rows = GT class, columns = prediction.

    pred_labels, gt_labels  (H, W) int label maps (numpy or CPU torch); GT pixels equal to
    ``ignore`` are left out. A predicted label outside 0..num_classes-1 raises ValueError.
    """
    pred = np.asarray(pred_labels, dtype=np.int64).ravel()
    gt = np.asarray(gt_labels, dtype=np.int64).ravel()
    if pred.shape != gt.shape:
        raise ValueError(f"prediction has {pred.size} pixels, GT {gt.size}")
    labelled = gt != ignore
    pred, gt = pred[labelled], gt[labelled]
    for name, x in (("predicted", pred), ("GT", gt)):
        if x.size and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"{name} labels outside 0..{num_classes - 1}")
    return np.bincount(gt * num_classes + pred, minlength=num_classes ** 2).reshape(
        num_classes, num_classes)


def semantic_miou(pred_labels, gt_labels, num_classes: int, ignore: int = 255) -> dict:
    """Mean IoU (percent) of semantic label maps over a dataset: things-as-one + stuff.

    pred_labels, gt_labels  one (H, W) map each, or matching iterables of maps (a list, a
    generator over a dataset, an (N, H, W) array); one confusion matrix is accumulated.
    IoU_c = |pred c ∩ GT c| / |pred c ∪ GT c| over labelled pixels. Returns ``miou`` (mean over
    the classes present in the GT or the prediction), ``per_class`` (num_classes values, NaN for
    a class in neither) and ``n`` (the classes averaged).
    """
    if getattr(pred_labels, "ndim", None) == 2:
        pred_labels, gt_labels = [pred_labels], [gt_labels]
    total = np.zeros((num_classes, num_classes), dtype=np.int64)
    for pred, gt in zip_longest(pred_labels, gt_labels):
        if pred is None or gt is None:
            raise ValueError("pred_labels and gt_labels hold different numbers of maps")
        total += confusion_matrix(pred, gt, num_classes, ignore)
    return miou_from_confusion(total)


def miou_from_confusion(confusion: np.ndarray) -> dict:
    """A (C, C) confusion matrix (rows GT, columns prediction) → ``semantic_miou``'s dict."""
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    per_class = np.full(len(confusion), np.nan)
    present = union > 0
    per_class[present] = 100.0 * inter[present] / union[present]
    n = int(present.sum())
    return {"miou": float(per_class[present].mean()) if n else 0.0,
            "per_class": per_class.tolist(), "n": n}
