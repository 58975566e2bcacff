"""COCO evaluation: predictions in COCO's results format, AP from pycocotools, files on disk.

``evaluate_coco(model, dataset, ...)`` runs the model over a dataset (resizing each image to the
config's test scale and mapping boxes and masks back to the original pixels), writes the
standard results list (``image_id``, ``category_id`` — real ids —, ``bbox`` [x, y, w, h],
``score``, ``segmentation`` as RLE) and scores it with pycocotools' ``COCOeval`` for boxes and
masks. With ``out_dir`` it also writes, beside each other:

- ``metrics.json``: ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"}, "segm": {...},
  "images": n, "detections": n}``, in percent. A size range without any ground-truth object
  (COCO's "large" on 128 px shapes) has no AP: it is ``null`` there (NaN in Python). Other
  evaluations add their own top-level keys through :func:`write_metrics`, which merges.
- ``coco_instances_results.json``: the results list, readable by ``COCO.loadRes``.
- ``pr_curve.png``: precision against recall (:func:`precision_curves`).

Uses pycocotools for everything it already does well (RLE, matching, AP). Introduced in
``notebooks/01_fcos.ipynb``; explained in ``05_evaluate``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params
from tqdm import tqdm

from blendmask_edu.data.files import load_json
from blendmask_edu.data.transforms import shortest_edge_size
from blendmask_edu.evaluation.panoptic_eval import (TABLE1_COLUMNS, PanopticPredictions, format_table1,
                                         table1_row)
from blendmask_edu.evaluation.panoptic_quality import panoptic_quality  # noqa: F401  (DESIGN §4 contract)

AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = {"bbox": "", "segm": "mask_"}  # COCOeval's iouType → prefix of the flat metric keys
METRICS_FILE = "metrics.json"
RESULTS_FILE = "coco_instances_results.json"
PR_CURVE_FILE = "pr_curve.png"


def resize_for_test(image: torch.Tensor, short_size: int, max_size: int):
    """[3, H, W] → ([3, H', W'], (scale_x, scale_y)) with the shorter side ``short_size``."""
    height, width = image.shape[-2:]
    new_h, new_w = shortest_edge_size(height, width, short_size, max_size)
    if (new_h, new_w) == (height, width):
        return image, (1.0, 1.0)
    resized = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear",
                            align_corners=False, antialias=True)[0]
    return resized, (new_w / width, new_h / height)


@torch.no_grad()
def detect(model, images: Sequence[torch.Tensor], short_size: int, max_size: int,
           device: Optional[torch.device] = None) -> List[Dict[str, torch.Tensor]]:
    """Eval-mode detections of N images [3, H, W], in each image's own pixels, on the CPU.

    Each image is resized to the test scale first (the model never resizes); the outputs are
    mapped back: ``boxes`` [D, 4] xyxy clipped to the image, ``scores`` [D], ``labels`` [D]
    (category ids) and ``masks`` [D, 1, H, W] probabilities; for a panoptic model also
    ``sem_seg`` [1 + S, H, W] probabilities and ``panoptic`` (id map [H, W], segments_info),
    fused at the original size.
    """
    device = device or next(model.parameters()).device
    model.eval()
    resized = [resize_for_test(image, short_size, max_size) for image in images]
    batch = [image.to(device) for image, _ in resized]
    # A panoptic model's fusion is done below, once, at the original size.
    panoptic = getattr(getattr(model, "module", model), "semantic", None) is not None
    outputs = model(batch, panoptic=False) if panoptic else model(batch)
    detections = []
    for image, (_, (sx, sy)), out in zip(images, resized, outputs):
        height, width = image.shape[-2:]
        boxes = out["boxes"].cpu() / torch.tensor([sx, sy, sx, sy])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        det = {"boxes": boxes, "scores": out["scores"].cpu(), "labels": out["labels"].cpu()}
        if "masks" in out:
            masks = out["masks"].cpu().float()  # [D, 1, H', W']
            if len(masks) and tuple(masks.shape[-2:]) != (height, width):
                masks = F.interpolate(masks, size=(height, width), mode="bilinear",
                                      align_corners=False)
            det["masks"] = masks if len(masks) else masks.new_zeros(0, 1, height, width)
        if panoptic:  # the semantic map at the original size, and the fusion there
            sem_seg = out["sem_seg"].cpu()  # [1 + S, H', W'] probabilities
            if tuple(sem_seg.shape[-2:]) != (height, width):
                sem_seg = F.interpolate(sem_seg[None], size=(height, width), mode="bilinear",
                                        align_corners=False)[0]
            det["sem_seg"] = sem_seg
            det["panoptic"] = getattr(model, "module", model).fuse_panoptic(
                det["masks"], det["scores"], det["labels"], sem_seg)
        detections.append(det)
    return detections


def to_coco_results(det: Mapping[str, torch.Tensor], image_id: int) -> List[Dict]:
    """One image's detections (as :func:`detect` returns them) → COCO results dicts, with an
    RLE ``segmentation`` of ``mask ≥ 0.5`` when the detections carry masks."""
    boxes = det["boxes"]
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)  # [D, 4]
    rles = _encode_masks(det["masks"], det["masks"].shape[-2:]) if "masks" in det else None
    results = []
    for k, (box, score, label) in enumerate(zip(xywh.tolist(), det["scores"].tolist(),
                                                det["labels"].tolist())):
        result = {"image_id": int(image_id), "category_id": int(label),
                  "bbox": [round(v, 2) for v in box], "score": round(score, 5)}
        if rles is not None:
            result["segmentation"] = rles[k]
        results.append(result)
    return results


def predict_dataset(model, dataset, short_size: int, max_size: int, batch_size: int = 8,
                    device: Optional[torch.device] = None, progress: bool = True,
                    on_image: Optional[Callable[[Dict, Dict], None]] = None) -> List[Dict]:
    """Detections on every image of ``dataset`` in COCO's results format (one dict each);
    ``on_image(target, detection)`` sees each image's :func:`detect` output as it is made."""
    results = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="predict", disable=not progress):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        detections = detect(model, [image for image, _ in items], short_size, max_size, device)
        for (_, target), det in zip(items, detections):
            results += to_coco_results(det, target["image_id"])
            if on_image is not None:
                on_image(target, det)
    return results


def _encode_masks(masks: torch.Tensor, size) -> List[Dict]:
    """Mask probabilities [D, 1, h, w] → COCO RLEs of ``mask ≥ 0.5`` at the image ``size``
    (H, W), ``counts`` as text so that the results file is JSON."""
    if masks.shape[0] == 0:
        return []
    if tuple(masks.shape[-2:]) != tuple(size):
        masks = F.interpolate(masks.float(), size=tuple(size), mode="bilinear", align_corners=False)
    binary = (masks[:, 0] >= 0.5).cpu().numpy().astype(np.uint8)  # [D, H, W]
    rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def run_cocoeval(coco_gt: COCO, results: Sequence[Dict], iou_type: str = "bbox",
                 image_ids: Optional[Sequence[int]] = None) -> Optional[COCOeval]:
    """``COCOeval`` after ``evaluate``, ``accumulate`` and ``summarize`` (its printing silenced),
    or None when there are no results (pycocotools refuses an empty list)."""
    if not results:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes adds keys to each dict
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
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


def coco_ap(coco_gt: COCO, results: Sequence[Dict], iou_type: str = "bbox",
            image_ids: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """COCO AP, AP50, AP75, APs/m/l in percent for ``results`` against ``coco_gt``.

    A size range without any ground-truth object (COCO's "large" on 128 px shapes) is NaN.
    ``image_ids`` limits the evaluation to those images (default: all of ``coco_gt``).
    No detections at all gives 0 where there is ground truth (pycocotools itself refuses an
    empty results list).
    """
    evaluator = run_cocoeval(coco_gt, results, iou_type, image_ids)
    return _ap_without_detections(coco_gt, image_ids) if evaluator is None else _ap_from_stats(evaluator)


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


def json_ready(value):
    """Metrics as strict JSON data: NaN and infinities become ``None`` (``null``), NumPy and
    torch scalars become Python numbers, tuples become lists; nested dicts and lists too."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data, indent: Optional[int] = None) -> None:
    """Write strict JSON through a temporary file, so a reader never sees half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=indent, allow_nan=False) + "\n")
    os.replace(temporary, path)


def write_metrics(out_dir: Union[str, Path], metrics: Mapping, remove: Sequence[str] = ()) -> Dict:
    """Merge ``metrics`` into ``out_dir/metrics.json`` (top-level keys replace older ones, the
    others stay, except the keys in ``remove``), NaN written as ``null``; returns the merged dict."""
    path = Path(out_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
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
    """``out_dir/metrics.json`` with ``null`` read back as NaN in the AP tables."""
    data = json.loads((Path(out_dir) / METRICS_FILE).read_text())
    for iou_type in IOU_TYPES:
        if isinstance(data.get(iou_type), dict):
            data[iou_type] = {k: float("nan") if v is None else v for k, v in data[iou_type].items()}
    return data


def format_ap_table(metrics: Mapping[str, float]) -> str:
    """The flat metrics of :func:`evaluate_coco` as a small text table (box and mask rows)."""
    lines = [f"{'':<5}" + "".join(f"{name:>7}" for name in AP_NAMES)]
    for iou_type, prefix in IOU_TYPES.items():
        if f"{prefix}AP" in metrics:
            row = "".join(f"{metrics[prefix + name]:>7.1f}" if math.isfinite(metrics[prefix + name])
                          else f"{'-':>7}" for name in AP_NAMES)
            lines.append(f"{'box' if iou_type == 'bbox' else 'mask':<5}{row}")
    return "\n".join(lines)


def evaluate_coco(model, dataset, short_size: int, max_size: int, batch_size: int = 8,
                  device: Optional[torch.device] = None, progress: bool = True,
                  out_dir: Optional[Union[str, Path]] = None, split: str = "val") -> Dict[str, float]:
    """Box AP (and mask AP, keys ``mask_*``, when the model predicts masks), in percent, of
    ``model`` on a :class:`~blendmask_edu.data.coco.CocoInstances`.

    With ``out_dir``, also writes ``metrics.json``, ``coco_instances_results.json`` and
    ``pr_curve.png`` there (see the module docstring). A panoptic model on a dataset with panoptic
    ground truth also gets the Table 1 columns (``PQ`` … ``AP_th``, :mod:`panoptic_eval`), and
    ``out_dir`` then holds ``panoptic_{split}.json`` and ``panoptic_{split}/`` PNGs too.
    """
    with contextlib.ExitStack() as stack:
        panoptic, on_image = _panoptic_collector(model, dataset, out_dir, split, stack)
        results = predict_dataset(model, dataset, short_size, max_size, batch_size, device,
                                  progress, on_image)
        metrics, evaluators = _coco_metrics(dataset, results)
        details = _panoptic_metrics(panoptic, dataset, metrics, split)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / RESULTS_FILE, results)
        summary = {t: {k: metrics[IOU_TYPES[t] + k] for k in AP_NAMES} for t in evaluators}
        # An evaluation without panoptic ground truth drops an earlier one's panoptic keys.
        stale = () if details else (*TABLE1_COLUMNS, "panoptic")
        write_metrics(out, {**summary, "images": len(dataset), "detections": len(results),
                            **details}, remove=stale)
        save_pr_curves(evaluators, out / PR_CURVE_FILE)
    return metrics


def _coco_metrics(dataset, results):
    """COCOeval of the results for boxes (and masks): the flat metrics and the evaluators."""
    # Mask AP when the detections carry masks; with no detection at all both are 0.
    iou_types = ["bbox"] + (["segm"] if not results or "segmentation" in results[0] else [])
    evaluators = {t: run_cocoeval(dataset.coco, results, t, dataset.image_ids) for t in iou_types}
    metrics = {}
    for iou_type, evaluator in evaluators.items():
        ap = (_ap_from_stats(evaluator) if evaluator is not None
              else _ap_without_detections(dataset.coco, dataset.image_ids))
        metrics.update({IOU_TYPES[iou_type] + k: v for k, v in ap.items()})
    return metrics, evaluators


def _panoptic_collector(model, dataset, out_dir, split: str, stack: contextlib.ExitStack):
    """(PanopticPredictions, on_image callback) for a panoptic model on a dataset with panoptic
    ground truth, else (None, None). Without ``out_dir`` the PNGs go to a temporary folder."""
    model = getattr(model, "module", model)
    if getattr(model, "semantic", None) is None or getattr(dataset, "panoptic_json", None) is None:
        return None, None
    if out_dir is not None:
        folder = Path(out_dir) / f"panoptic_{split}"
    else:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory())) / f"panoptic_{split}"
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
    pred_json = panoptic.folder.with_name(f"panoptic_{split}.json")
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


def format_metrics(metrics: Mapping[str, float], method: str = "BlendMask (ours)",
                   backbone: str = "") -> str:
    """:func:`format_ap_table`, and for a panoptic evaluation the Table 1 row below it."""
    text = format_ap_table(metrics)
    if all(c in metrics for c in TABLE1_COLUMNS):
        text += "\n\n" + format_table1([{"method": method, "backbone": backbone, **metrics}])
    return text


def save_pr_curves(evaluators: Mapping[str, Optional[COCOeval]], path: Union[str, Path]) -> None:
    """One precision–recall panel per iou type (box, mask) in a PNG."""
    import matplotlib.pyplot as plt

    from blendmask_edu.visualize import plot_precision_recall

    fig, axes = plt.subplots(1, len(evaluators), figsize=(4.2 * len(evaluators), 3.6), squeeze=False)
    for ax, (iou_type, evaluator) in zip(axes[0], evaluators.items()):
        title = "box" if iou_type == "bbox" else "mask"
        if evaluator is None:
            plot_precision_recall(np.linspace(0, 1, 101), {}, ax=ax, title=f"{title}: no detections")
        else:
            plot_precision_recall(evaluator.params.recThrs, precision_curves(evaluator), ax=ax,
                                  title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
