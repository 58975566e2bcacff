"""Panoptic evaluation on disk: predictions in COCO's panoptic format, and the Table 1 row.

``evaluate.evaluate_coco`` uses this when the model is panoptic and the dataset has panoptic
ground truth. Each image's fused id map (``BlendMask.fuse_panoptic``) becomes a PNG (id =
R + 256·G + 256²·B, the format of panopticapi and of the dataset's own PNGs) and an entry of the
JSON, and its semantic labels are compared with the ground truth's for mIoU. Then

    OUT/panoptic_{split}/*.png, OUT/panoptic_{split}.json ─panoptic_quality─▶ PQ, SQ, RQ (All,
    Things, Stuff, per class)

and the row of the paper's Table 1: ``PQ``, ``SQ``, ``RQ``, ``PQ_th``, ``PQ_st``, ``mIoU``,
``AP_box``, ``AP_th`` (box AP, and mask AP of the things), in percent. Introduced in
``notebooks/06_panoptic.ipynb``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from blendmask_edu.data.files import id_to_rgb
from blendmask_edu.evaluation.panoptic_quality import confusion_matrix, miou_from_confusion, panoptic_quality

__all__ = ["PAPER_TABLE1", "TABLE1_COLUMNS", "PanopticPredictions", "format_table1",
           "segments_to_coco", "table1_row"]

TABLE1_COLUMNS = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "mIoU", "AP_box", "AP_th")

# COCO val2017, the AdelaiDet README's panoptic table (spec §9.1). The cells it does not give
# are None: they are not in the stored copy of the paper either.
PAPER_TABLE1 = (
    {"method": "Panoptic-FPN", "backbone": "R-50 3×", "PQ": 41.5, "PQ_th": 48.3, "PQ_st": 31.2},
    {"method": "BlendMask", "backbone": "R-50 3×", "PQ": 42.5, "PQ_th": 49.5, "PQ_st": 32.0},
    {"method": "Panoptic-FPN", "backbone": "R-101 3×", "PQ": 43.0, "PQ_th": 49.7, "PQ_st": 32.9},
    {"method": "BlendMask", "backbone": "R-101 3×", "PQ": 44.3, "PQ_th": 51.6, "PQ_st": 33.2},
)


def segments_to_coco(ids: np.ndarray, segments_info: Sequence[Mapping]) -> List[Dict]:
    """``fuse``'s segments → COCO panoptic ``segments_info``: ``id``, ``category_id``,
    ``iscrowd`` 0, ``area`` and ``bbox`` [x, y, w, h] counted from the id map ``ids`` [H, W]."""
    out = []
    for segment in segments_info:
        ys, xs = np.nonzero(ids == segment["id"])
        bbox = ([int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                 int(ys.max() - ys.min() + 1)] if len(xs) else [0, 0, 0, 0])
        out.append({"id": int(segment["id"]), "category_id": int(segment["category_id"]),
                    "iscrowd": 0, "area": int(len(xs)), "bbox": bbox})
    return out


class PanopticPredictions:
    """Collects a dataset's panoptic predictions, one image at a time, in COCO's format.

    folder        where the PNGs go (created; PNGs already there are deleted), e.g. OUT/panoptic_val
    num_semantic  1 + S, the semantic classes, for the mIoU's confusion matrix

    ``add(image_id, file_name, ids, segments_info, sem_labels, gt_sem_seg)`` writes
    ``folder/<file_name stem>.png`` and keeps the JSON entry; with ``sem_labels`` (H, W) and the
    GT ``gt_sem_seg`` (H, W, 255 = void) it accumulates their confusion matrix.
    ``write_json(path, categories)`` writes the predictions' JSON and returns it.
    """

    def __init__(self, folder: Union[str, Path], num_semantic: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob("*.png"):  # an earlier evaluation's, maybe of other images
            stale.unlink()
        self.annotations: List[Dict] = []
        self.confusion = np.zeros((num_semantic, num_semantic), dtype=np.int64)

    def add(self, image_id: int, file_name: str, ids: torch.Tensor,
            segments_info: Sequence[Mapping], sem_labels: Optional[torch.Tensor] = None,
            gt_sem_seg: Optional[torch.Tensor] = None) -> None:
        ids = ids.cpu().numpy().astype(np.int64)
        png = Path(file_name).with_suffix(".png").name
        Image.fromarray(id_to_rgb(ids)).save(self.folder / png)
        self.annotations.append({"image_id": int(image_id), "file_name": png,
                                 "segments_info": segments_to_coco(ids, segments_info)})
        if sem_labels is not None and gt_sem_seg is not None:
            self.confusion += confusion_matrix(sem_labels.cpu(), gt_sem_seg.cpu(),
                                               len(self.confusion))

    def miou(self) -> Dict:
        """``semantic_miou``'s dict (``miou`` in percent, ``per_class``, ``n``) so far."""
        return miou_from_confusion(self.confusion)

    def write_json(self, path: Union[str, Path], categories: Sequence[Mapping]) -> Dict:
        from blendmask_edu.evaluation.evaluate import write_json  # strict JSON, written atomically

        data = {"annotations": self.annotations, "categories": [dict(c) for c in categories]}
        write_json(Path(path), data)
        return data

    def score(self, gt_json: Union[str, Path, Mapping], gt_folder: Union[str, Path],
              pred_json: Union[str, Path, Mapping]) -> Dict:
        """``panoptic_quality`` of these predictions against the GT (only the images added)."""
        gt = gt_json
        if not isinstance(gt, Mapping):
            from blendmask_edu.data.files import load_json
            gt = load_json(Path(gt), ("images", "annotations", "categories"))
        added = {a["image_id"] for a in self.annotations}
        gt = {**gt, "images": [im for im in gt["images"] if im["id"] in added],
              "annotations": [a for a in gt["annotations"] if a["image_id"] in added]}
        return panoptic_quality(gt, gt_folder, pred_json, self.folder)


def table1_row(pq: Mapping, miou: float, ap_box: float, ap_things: float) -> Dict[str, float]:
    """``panoptic_quality``'s dict, the mIoU and the box and thing-mask AP → the eight columns."""
    return {"PQ": pq["All"]["pq"], "SQ": pq["All"]["sq"], "RQ": pq["All"]["rq"],
            "PQ_th": pq["Things"]["pq"], "PQ_st": pq["Stuff"]["pq"], "mIoU": miou,
            "AP_box": ap_box, "AP_th": ap_things}


def format_table1(rows: Sequence[Mapping]) -> str:
    """Rows with ``method``, ``backbone`` and any of the eight columns → a text table in the
    paper's Table 1 layout; "–" for a cell a row does not have."""
    header = f"{'method':<18}{'backbone':<16}" + "".join(f"{c:>8}" for c in TABLE1_COLUMNS)
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = []
        for column in TABLE1_COLUMNS:
            value = row.get(column)
            ok = value is not None and math.isfinite(value)
            cells.append(f"{value:>8.1f}" if ok else f"{'–':>8}")
        lines.append(f"{row.get('method', ''):<18}{row.get('backbone', ''):<16}" + "".join(cells))
    return "\n".join(lines)
