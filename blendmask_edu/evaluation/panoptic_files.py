"""Panoptic predictions on disk, in COCO's panoptic format, scored against the ground truth.

``evaluate.evaluate_coco`` uses this when the model is panoptic and the dataset has panoptic
ground truth. Each image's fused id map (``BlendMask.fuse_panoptic``) becomes a PNG (id =
R + 256·G + 256²·B, the format of panopticapi and of the dataset's own PNGs) and an entry of the
JSON, and its semantic labels are compared with the ground truth's for mIoU. Then

    OUT/panoptic_{split}/*.png, OUT/panoptic_{split}.json ─panoptic_quality─▶ PQ, SQ, RQ (All,
    Things, Stuff, per class)

which ``tables.table1_row`` turns into the paper's Table 1 columns. Introduced in
``notebooks/06_panoptic.ipynb``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from blendmask_edu.data.files import id_to_rgb, load_json
from blendmask_edu.evaluation.panoptic_quality import confusion_matrix, miou_from_confusion, panoptic_quality
from blendmask_edu.fileio import write_json


def prediction_paths(out_dir: Union[str, Path], split: str) -> Tuple[Path, Path]:
    """Where an evaluation of ``split`` writes its panoptic predictions, in COCO's own naming:
    (``out_dir/panoptic_{split}.json``, the PNG folder ``out_dir/panoptic_{split}/``)."""
    folder = Path(out_dir) / f"panoptic_{split}"
    return folder.with_name(folder.name + ".json"), folder


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
        """The predictions' JSON (``annotations`` as added, ``categories``) written to ``path``
        (compact strict JSON, atomically) and returned."""
        data = {"annotations": self.annotations, "categories": [dict(c) for c in categories]}
        write_json(Path(path), data)
        return data

    def score(self, gt_json: Union[str, Path, Mapping], gt_folder: Union[str, Path],
              pred_json: Union[str, Path, Mapping]) -> Dict:
        """``panoptic_quality`` of these predictions against the GT (only the images added)."""
        gt = gt_json
        if not isinstance(gt, Mapping):
            gt = load_json(Path(gt), ("images", "annotations", "categories"))
        added = {a["image_id"] for a in self.annotations}
        gt = {**gt, "images": [im for im in gt["images"] if im["id"] in added],
              "annotations": [a for a in gt["annotations"] if a["image_id"] in added]}
        return panoptic_quality(gt, gt_folder, pred_json, self.folder)
