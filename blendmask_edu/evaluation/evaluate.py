"""The evaluation of a model on a dataset: every number and file, in one call.

``evaluate_coco(model, dataset, ...)`` puts the pieces of this package together:

    inference.predict_dataset ─▶ COCO results ─coco.coco_metrics─▶ box and mask AP
        ├─ (masks) boundary.BoundaryCOCOeval ─▶ boundary AP
        ├─ (GT tagged with "hard_cases") hard_cases.hard_case_ap ─▶ AP per hard case
        └─ (panoptic model and panoptic GT) panoptic_files ─▶ PQ, SQ, RQ, mIoU ─▶ Table 1 row

and returns the flat metrics (``AP`` … ``APl``, ``mask_AP`` …, ``AP_boundary``,
``AP50_boundary``, ``AP75_boundary``, ``{tag}_box_AP``, ``{tag}_mask_AP``,
``{tag}_AP_boundary``, the Table 1 columns), in percent. With ``out_dir`` it also writes,
beside each other:

- ``metrics.json`` (:mod:`~blendmask_edu.evaluation.metrics`): the AP tables by iou type
  (``bbox``, ``segm``, ``boundary``), ``AP_boundary``, ``images``, ``detections``, for tagged
  ground truth a ``hard_cases`` block, and for a panoptic evaluation the Table 1 columns and a
  ``panoptic`` block (All/Things/Stuff, per class, mIoU per class); merged into what is there;
- ``coco_instances_results.json``: the results list, readable by ``COCO.loadRes``;
- ``pr_curve.png``: precision against recall, one panel for boxes and one for masks;
- for a panoptic evaluation, ``panoptic_{split}.json`` and the PNGs in ``panoptic_{split}/``.

Introduced in ``notebooks/01_fcos.ipynb``; explained in ``05_evaluate``.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import numpy as np
import torch
from pycocotools.cocoeval import COCOeval

from blendmask_edu.data.files import load_json
from blendmask_edu.evaluation.coco import (AP_NAMES, BOUNDARY, BOUNDARY_SUFFIX, IOU_TYPES,
                                           RESULTS_FILE, coco_metrics, evaluate_ap,
                                           precision_curves)
from blendmask_edu.evaluation.hard_cases import flat_case_metrics, hard_case_ap, has_tags
from blendmask_edu.evaluation.inference import predict_dataset
from blendmask_edu.evaluation.metrics import write_metrics
from blendmask_edu.evaluation.panoptic_files import PanopticPredictions, prediction_paths
from blendmask_edu.evaluation.tables import TABLE1_COLUMNS, table1_row
from blendmask_edu.fileio import write_json
from blendmask_edu.plots import save_pr_curves
from blendmask_edu.utils import unwrap

PR_CURVE_FILE = "pr_curve.png"


def evaluate_coco(model, dataset, short_size: int, max_size: int, batch_size: int = 1,
                  device: Optional[torch.device] = None, progress: bool = True,
                  out_dir: Optional[Union[str, Path]] = None, split: str = "val",
                  boundary: bool = True) -> Dict[str, float]:
    """Box AP (and mask AP, keys ``mask_*``, when the model predicts masks), in percent, of
    ``model`` on a :class:`~blendmask_edu.data.coco.CocoInstances`, its images resized to a
    shorter side of ``short_size`` (longer at most ``max_size``), ``batch_size`` at a time, the
    predictions made at each image's original size (``inference.predict_dataset``: boxes
    rescaled, masks pasted there, one image's masks in memory at a time by default).

    With ``out_dir``, also writes ``metrics.json``, ``coco_instances_results.json`` and
    ``pr_curve.png`` there (see the module docstring). A panoptic model on a dataset with panoptic
    ground truth also gets the Table 1 columns (``PQ`` … ``AP_th``, :mod:`.tables`), and
    ``out_dir`` then holds ``panoptic_{split}.json`` and ``panoptic_{split}/`` PNGs too.

    With ``boundary`` (default) and masks, also boundary AP (``AP_boundary``, ``AP50_boundary``,
    ``AP75_boundary``; :mod:`.boundary`). When the ground-truth annotations carry
    ``"hard_cases"`` tags (the shapes dataset), also box, mask and boundary AP per tag
    (``{tag}_box_AP``, ``{tag}_mask_AP``, ``{tag}_AP_boundary``; :mod:`.hard_cases`).
    """
    with contextlib.ExitStack() as stack:
        panoptic, on_image = _panoptic_collector(model, dataset, out_dir, split, stack)
        results = predict_dataset(model, dataset, short_size, max_size, batch_size, device,
                                  progress, on_image)
        metrics, evaluators = coco_metrics(dataset.coco, results, dataset.image_ids)
        started = time.perf_counter()
        outlines = _boundary_metrics(dataset, results, evaluators, metrics, boundary)
        cases = _case_metrics(dataset, results, evaluators, outlines, metrics, boundary)
        if progress and (outlines or cases):
            print(f"boundary AP and AP per hard case: {time.perf_counter() - started:.1f} s")
        details = _panoptic_metrics(panoptic, dataset, metrics, split)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / RESULTS_FILE, results)
        summary = {t: {k: metrics[IOU_TYPES[t] + k] for k in AP_NAMES} for t in evaluators}
        if outlines:
            summary.update({BOUNDARY: outlines["ap"], "AP" + BOUNDARY_SUFFIX: outlines["ap"]["AP"]})
        if cases:
            summary["hard_cases"] = cases
        # An evaluation without panoptic ground truth drops an earlier one's panoptic keys, and
        # likewise for boundary AP and the hard cases.
        stale = ((() if details else (*TABLE1_COLUMNS, "panoptic"))
                 + (() if outlines else (BOUNDARY, "AP" + BOUNDARY_SUFFIX))
                 + (() if cases else ("hard_cases",)))
        write_metrics(out, {**summary, "images": len(dataset), "detections": len(results),
                            **details}, remove=stale)
        save_pr_curves(_pr_panels(evaluators), out / PR_CURVE_FILE)
    return metrics


def _boundary_metrics(dataset, results, evaluators: Mapping[str, Optional[COCOeval]],
                      metrics: Dict, boundary: bool) -> Dict:
    """Boundary AP when asked for and the results have masks (a ``segm`` evaluator): adds
    ``AP_boundary``, ``AP50_boundary``, ``AP75_boundary`` to ``metrics`` and returns
    ``{"ap": {AP_NAMES: percent}, "evaluator": BoundaryCOCOeval or None}``; else {}."""
    if not boundary or "segm" not in evaluators:
        return {}
    ap, evaluator = evaluate_ap(dataset.coco, results, BOUNDARY, dataset.image_ids)
    metrics.update({name + BOUNDARY_SUFFIX: ap[name] for name in ("AP", "AP50", "AP75")})
    return {"ap": ap, "evaluator": evaluator}


def _case_metrics(dataset, results, evaluators: Mapping[str, Optional[COCOeval]],
                  outlines: Mapping, metrics: Dict, boundary: bool) -> Dict:
    """AP per hard case when the ground truth is tagged (reusing the evaluators' IoUs): adds
    the flat ``{tag}_…`` keys to ``metrics`` and returns the table for metrics.json; else {}."""
    if not has_tags(dataset.coco):
        return {}
    done = dict(evaluators)
    if outlines:
        done[BOUNDARY] = outlines["evaluator"]
    table = hard_case_ap(dataset.coco, results, dataset.image_ids, done,
                         boundary=boundary and bool(outlines))
    metrics.update(flat_case_metrics(table))
    return table


def _pr_panels(evaluators: Mapping[str, Optional[COCOeval]]) -> Dict:
    """``plots.save_pr_curves``'s panels: a title → (recall [R], {label: precision [R]}) per
    iou type; an iou type without detections gets an empty panel."""
    panels = {}
    for iou_type, evaluator in evaluators.items():
        title = "box" if iou_type == "bbox" else "mask"
        if evaluator is None:
            panels[f"{title}: no detections"] = (np.linspace(0, 1, 101), {})
        else:
            panels[title] = (evaluator.params.recThrs, precision_curves(evaluator))
    return panels


def _panoptic_collector(model, dataset, out_dir, split: str, stack: contextlib.ExitStack):
    """(PanopticPredictions, on_image callback) for a panoptic model on a dataset with panoptic
    ground truth, else (None, None). Without ``out_dir`` the PNGs go to a temporary folder."""
    model = unwrap(model)
    if getattr(model, "semantic", None) is None or getattr(dataset, "panoptic_json", None) is None:
        return None, None
    root = out_dir if out_dir is not None else stack.enter_context(tempfile.TemporaryDirectory())
    _, folder = prediction_paths(root, split)
    panoptic = PanopticPredictions(folder, 1 + len(model.stuff_ids))

    def on_image(target, det):
        ids, segments = det["panoptic"]
        info = dataset.coco.imgs[target["image_id"]]
        panoptic.add(target["image_id"], info["file_name"], ids, segments,
                     det["sem_seg"].argmax(0), target.get("sem_seg"))

    return panoptic, on_image


def _panoptic_metrics(panoptic: Optional[PanopticPredictions], dataset, metrics: Dict,
                      split: str) -> Dict:
    """Adds the Table 1 columns to ``metrics``; returns what metrics.json gets beyond them."""
    if panoptic is None:
        return {}
    gt = load_json(dataset.panoptic_json, ("images", "annotations", "categories"))
    pred_json, _ = prediction_paths(panoptic.folder.parent, split)
    panoptic.write_json(pred_json, gt["categories"])
    pq = panoptic.score(gt, dataset.panoptic_dir, pred_json)
    miou = panoptic.miou()
    row = table1_row(pq, miou["miou"], metrics["AP"], metrics.get("mask_AP", float("nan")))
    metrics.update(row)
    names = dataset.categories.names
    return {**row, "panoptic": {
        **{k: pq[k] for k in ("All", "Things", "Stuff")},
        "per_class": {names.get(cat, str(cat)): v for cat, v in pq["per_class"].items()},
        "mIoU_per_class": dict(zip(dataset.categories.semantic_names, miou["per_class"]))}}
