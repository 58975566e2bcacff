"""Checks of COCO annotations and panoptic maps: pure functions that name the problem.

Each returns the problem as a sentence (or None / an empty list when the data is fine); the
callers (:class:`~blendmask_edu.data.coco.CocoInstances`, :func:`~blendmask_edu.data.check.check_dataset`)
turn it into a :class:`~blendmask_edu.data.errors.DatasetError` that names the file and the
annotation id. Introduced in ``notebooks/00_data.ipynb``.
"""

from __future__ import annotations

import math
from typing import Container, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils

# The two kinds of finding (``data check``): a defect breaks training or evaluation, a note does not.
DEFECT, NOTE = "defect", "note"
ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox", "segmentation")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _rle_string_counts(s: str) -> Optional[list]:
    """Run lengths of a compressed-RLE string (pycocotools' 6-bit, delta-coded format).

    Checked in Python before the C decoder sees it: that decoder trusts the counts and would
    write past the mask if they sum to more than H·W. None if the string ends mid-number.
    """
    counts, pos = [], 0
    while pos < len(s):
        value, shift, more = 0, 0, True
        while more:
            if pos == len(s):
                return None
            c = ord(s[pos]) - 48
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos, shift = pos + 1, shift + 5
            if not more and c & 0x10:
                value -= 1 << shift  # sign-extend
        if len(counts) > 2:
            value += counts[-2]  # counts after the third are stored as deltas
        counts.append(value)
    return counts


def _segmentation_problem(segm, height: int, width: int) -> Optional[str]:
    if isinstance(segm, list):
        if not segm:
            return "empty segmentation (no polygon)"
        for poly in segm:
            # type() instead of isinstance: excludes bool, and this loop runs per COCO coordinate
            if not isinstance(poly, list) or not all(type(v) in (int, float) for v in poly) \
                    or not math.isfinite(sum(poly)):
                return "polygon must be a list of numbers [x0, y0, x1, y1, ...]"
            if len(poly) < 6:
                return f"polygon with fewer than 3 points ({len(poly)} numbers)"
            if len(poly) % 2:
                return f"polygon with an odd number of coordinates ({len(poly)})"
        area = int(mask_utils.area(mask_utils.frPyObjects(segm, height, width)).sum())
    elif isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            return "RLE segmentation needs 'counts' and 'size'"
        size = segm["size"]
        if not isinstance(size, (list, tuple)) or list(size) != [height, width]:
            return f"RLE size {segm['size']} does not match the image's [height, width] [{height}, {width}]"
        counts = segm["counts"]
        if isinstance(counts, str):
            counts = _rle_string_counts(counts)
            if counts is None:
                return "compressed RLE string is cut off"
        elif not isinstance(counts, list) or not all(isinstance(c, int) for c in counts):
            return "RLE counts must be a string (compressed) or a list of integers (uncompressed)"
        if any(c < 0 for c in counts) or sum(counts) != height * width:
            return f"RLE counts cover {sum(counts)} pixels, not height*width = {height * width}"
        area = sum(counts[1::2])
    else:
        return "segmentation must be polygons (a list) or an RLE (a dict)"
    return "mask decodes empty" if area == 0 else None


def validate_annotation(ann, image_info: Optional[dict], category_ids: Container[int]) -> Optional[str]:
    """The problem with one COCO instance annotation, or None if it is usable.

    Args:
        ann: the annotation dict as read from the JSON.
        image_info: the ``images`` entry it refers to (needs ``height``, ``width``), or None
            when its ``image_id`` is not in the file.
        category_ids: the valid category ids.

    Checks keys, image and category ids, the box (w, h > 0, x, y ≥ 0) and the segmentation
    (polygons of ≥ 3 points, RLE size = image size, counts covering H·W, mask not empty).
    Pure: reads nothing but its arguments (a polygon is rasterised to measure its area).
    """
    if not isinstance(ann, dict):
        return "annotation is not a JSON object"
    missing = [k for k in ANNOTATION_KEYS if k not in ann]
    if missing:
        return f"missing key(s) {', '.join(repr(k) for k in missing)}"
    if image_info is None:
        return f"unknown image id {ann['image_id']!r}"
    if not isinstance(ann["category_id"], int) or ann["category_id"] not in category_ids:
        return f"unknown category id {ann['category_id']!r}"
    box = ann["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
        return f"bbox must be 4 numbers [x, y, w, h], got {box!r}"
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return f"zero or negative box size (w={w}, h={h})"
    if x < 0 or y < 0:
        return f"negative box corner (x={x}, y={y})"
    return _segmentation_problem(ann["segmentation"], image_info["height"], image_info["width"])


def rle_geometry_findings(ann: dict, image_info: dict) -> list:
    """For a valid RLE annotation: do its ``area`` and ``bbox`` agree with its mask?

    Returns a list of ``(kind, problem)``, kind ``"defect"`` or ``"note"`` (empty when they
    agree). An RLE mask defines its pixels exactly, so ``area`` should be its pixel count (within
    1 %) and ``bbox`` its tight box (within 1 px). Which disagreement is which:

    - ``area`` of a crowd region (``iscrowd`` 1): a note. Real COCO's crowd areas are not their
      masks' pixel counts, and nothing reads them: training drops crowd regions, COCOeval
      ignores them in every area range whatever their area.
    - ``area`` of any other annotation: a defect. COCOeval sorts ground truth into its small /
      medium / large ranges by ``area``, so a wrong one moves AP_S, AP_M, AP_L.
    - ``bbox`` (crowd or not): a defect. Box AP matches detections to it, and a crowd box is
      the region within which COCOeval ignores detections.

    Polygons are not checked: COCO computes their area and box from the polygon, which differ
    from the rasterised mask by design.
    """
    segm = ann["segmentation"]
    if not isinstance(segm, dict):
        return []
    height, width = image_info["height"], image_info["width"]
    rle = mask_utils.frPyObjects(segm, height, width) if isinstance(segm["counts"], list) else segm
    area, box = float(mask_utils.area(rle)), mask_utils.toBbox(rle).tolist()
    found = []
    if "area" in ann and abs(float(ann["area"]) - area) > 0.01 * area + 1:
        if ann.get("iscrowd", 0):
            found.append((NOTE, f"crowd area {ann['area']} but its RLE mask has {area:.0f} pixels "
                                  f"(as in COCO; crowd areas are read by nothing)"))
        else:
            found.append((DEFECT, f"area {ann['area']} but its RLE mask has {area:.0f} pixels"))
    if max(abs(a - b) for a, b in zip(ann["bbox"], box)) > 1:
        found.append((DEFECT, f"bbox {ann['bbox']} but its RLE mask spans {[round(v) for v in box]}"))
    return found


def panoptic_problems(ids: np.ndarray, segments_info: Sequence[dict], check_stats: bool = False) -> list:
    """Disagreements between a panoptic id map [H, W] and its ``segments_info`` (problem strings).

    Checks ids both ways (every non-zero PNG id is described, every described id is drawn)
    and duplicate segment ids; with ``check_stats`` also :func:`panoptic_stats_findings`.
    """
    problems, seen = [], set()
    for seg in segments_info:
        if seg["id"] in seen:
            problems.append(f"duplicate segment id {seg['id']} in segments_info")
        seen.add(seg["id"])
    drawn = {int(u) for u in np.unique(ids) if u != 0}
    problems += [f"PNG holds segment id {i} that is not in segments_info" for i in sorted(drawn - seen)]
    problems += [f"segments_info id {i} does not occur in the PNG" for i in sorted(seen - drawn, key=str)]
    stats = panoptic_stats_findings(ids, segments_info) if check_stats else []
    return problems + [problem for _, problem in stats]


def panoptic_stats_findings(ids: np.ndarray, segments_info: Sequence[dict]) -> list:
    """Each drawn segment's ``area`` and ``bbox`` ([x, y, w, h], w = last column − first column
    + 1) against its pixels in the id map [H, W] → ``(kind, problem)`` pairs:

    - ``area``: a defect. panopticapi recounts a *predicted* segment's area from its PNG but
      takes the *ground truth*'s from the JSON, for the union of every IoU; a wrong one changes
      the official PQ (this package's PQ counts pixels, but a user may score with panopticapi).
    - ``bbox``: a note. No metric reads a panoptic segment's box.
    """
    found = []
    uniq, counts = np.unique(ids, return_counts=True)
    area = dict(zip(uniq.tolist(), counts.tolist()))
    for seg in segments_info:
        if seg["id"] == 0 or seg["id"] not in area:
            continue
        if "area" in seg and seg["area"] != area[seg["id"]]:
            found.append((DEFECT, f"segment {seg['id']}: area {seg['area']} but "
                                    f"{area[seg['id']]} pixels"))
        if "bbox" in seg:
            ys, xs = np.nonzero(ids == seg["id"])
            box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            if list(seg["bbox"]) != box:
                found.append((NOTE, f"segment {seg['id']}: bbox {seg['bbox']} but its pixels span {box}"))
    return found
