"""``metrics.json``: the one file every evaluation writes its numbers into, and reads back.

The file is a JSON object, indented for people: ``{"bbox": {"AP", "AP50", "AP75", "APs",
"APm", "APl"}, "segm": {...}, "boundary": {...}, "AP_boundary": x, "images": n,
"detections": n}`` in percent from the COCO evaluation (``boundary``: boundary AP, when the
model predicts masks), for ground truth tagged with hard cases a ``hard_cases`` block
(``{tag: {"instances": n, "box_AP", "box_AP50", "box_AP75", "mask_AP", …, "AP_boundary",
"AP50_boundary", "AP75_boundary"}}``), and for a panoptic evaluation the Table 1 columns and a
``panoptic`` block. Each
evaluation merges its own top-level keys into it (:func:`write_metrics`), so that evaluations
of different kinds share one file. NaN (an AP without ground truth) is written as ``null``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping, Sequence, Union

from blendmask_edu.evaluation.coco import BOUNDARY, BOUNDARY_SUFFIX, IOU_TYPES
from blendmask_edu.fileio import json_ready, write_json

METRICS_FILE = "metrics.json"


def write_metrics(out_dir: Union[str, Path], metrics: Mapping, remove: Sequence[str] = ()) -> Dict:
    """Merge ``metrics`` into ``out_dir/metrics.json`` (top-level keys replace older ones, the
    others stay, except the keys in ``remove``), NaN written as ``null``; returns the merged dict."""
    path = Path(out_dir) / METRICS_FILE
    merged = {}
    if path.is_file():
        try:
            merged = json.loads(path.read_text())
        except ValueError:
            merged = {}  # an unreadable older file is replaced, not merged
    merged.update(json_ready(metrics))
    for key in remove:
        merged.pop(key, None)
    write_json(path, merged, indent=2)
    return merged


def read_metrics(out_dir: Union[str, Path]) -> Dict:
    """``out_dir/metrics.json`` as a dict, with ``null`` read back as NaN in the AP tables
    (``bbox``, ``segm``, ``boundary``, each row of ``hard_cases``) and in ``AP_boundary``."""
    data = json.loads((Path(out_dir) / METRICS_FILE).read_text())
    for iou_type in (*IOU_TYPES, BOUNDARY):
        if isinstance(data.get(iou_type), dict):
            data[iou_type] = _nan_for_null(data[iou_type])
    if isinstance(data.get("hard_cases"), dict):
        data["hard_cases"] = {tag: _nan_for_null(row) for tag, row in data["hard_cases"].items()}
    if "AP" + BOUNDARY_SUFFIX in data and data["AP" + BOUNDARY_SUFFIX] is None:
        data["AP" + BOUNDARY_SUFFIX] = float("nan")
    return data


def _nan_for_null(table: Mapping) -> Dict:
    """A copy of a flat {name: number or None} dict with None as NaN."""
    return {k: float("nan") if v is None else v for k, v in table.items()}
