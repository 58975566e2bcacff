"""COCO evaluation: predictions in COCO's results format, and AP from pycocotools.

``evaluate_coco(model, dataset)`` runs the model over a dataset (resizing each image as the
config's test scale says and mapping boxes back to the original pixels), writes the standard
results list (``image_id``, ``category_id`` — real ids —, ``bbox`` [x, y, w, h], ``score``) and
scores it with ``COCOeval``. Introduced in ``notebooks/01_fcos.ipynb``; explained in ``05_evaluate``.
"""

from __future__ import annotations

import contextlib
import io
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from blendmask_edu.data.transforms import shortest_edge_size

AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


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
def predict_dataset(model, dataset, short_size: int, max_size: int, batch_size: int = 8,
                    device: Optional[torch.device] = None, progress: bool = True) -> List[Dict]:
    """Detections on every image of ``dataset`` in COCO's results format (one dict each)."""
    device = device or next(model.parameters()).device
    model.eval()
    results = []
    indices = list(range(len(dataset)))
    for start in tqdm(range(0, len(indices), batch_size), desc="predict", disable=not progress):
        items = [dataset[i] for i in indices[start:start + batch_size]]
        resized = [resize_for_test(image, short_size, max_size) for image, _ in items]
        outputs = model([image.to(device) for image, _ in resized])
        for (image, target), (_, (sx, sy)), out in zip(items, resized, outputs):
            boxes = out["boxes"].cpu() / torch.tensor([sx, sy, sx, sy])
            height, width = image.shape[-2:]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
            rles = _encode_masks(out["masks"], (height, width)) if "masks" in out else None
            for k, (box, score, label) in enumerate(zip(xywh.tolist(), out["scores"].tolist(),
                                                        out["labels"].tolist())):
                result = {"image_id": int(target["image_id"]), "category_id": int(label),
                          "bbox": [round(v, 2) for v in box], "score": round(score, 5)}
                if rles is not None:
                    result["segmentation"] = rles[k]
                results.append(result)
    return results


def _encode_masks(masks: torch.Tensor, size) -> List[Dict]:
    """Mask probabilities [D, 1, h, w] (at the test size) → COCO RLEs of ``mask ≥ 0.5`` at the
    original image ``size`` (H, W), ``counts`` as text so the results file is JSON."""
    if masks.shape[0] == 0:
        return []
    if tuple(masks.shape[-2:]) != tuple(size):
        masks = F.interpolate(masks.float(), size=tuple(size), mode="bilinear", align_corners=False)
    binary = (masks[:, 0] >= 0.5).cpu().numpy().astype(np.uint8)  # [D, H, W]
    rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def coco_ap(coco_gt: COCO, results: Sequence[Dict], iou_type: str = "bbox",
            image_ids: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """COCO AP, AP50, AP75, APs/m/l in percent for ``results`` against ``coco_gt``.

    A size range without any ground-truth object (COCO's "large" on 128 px shapes) is NaN.
    ``image_ids`` limits the evaluation to those images (default: all of ``coco_gt``).
    No detections at all gives zeros (pycocotools itself refuses an empty results list).
    """
    if not results:
        return {name: 0.0 for name in AP_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(list(results))
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # pycocotools writes -1 where a size range holds no ground truth: report that as NaN.
    return {name: float(v * 100.0) if v >= 0 else float("nan")
            for name, v in zip(AP_NAMES, evaluator.stats[:6])}


def evaluate_coco(model, dataset, short_size: int, max_size: int, batch_size: int = 8,
                  device: Optional[torch.device] = None, progress: bool = True) -> Dict[str, float]:
    """Box AP (and mask AP, keys ``mask_*``, when the model predicts masks), in percent, of
    ``model`` on a :class:`~blendmask_edu.data.coco.CocoInstances`."""
    results = predict_dataset(model, dataset, short_size, max_size, batch_size, device, progress)
    metrics = coco_ap(dataset.coco, results, "bbox", image_ids=dataset.image_ids)
    if results and "segmentation" in results[0]:
        segm = coco_ap(dataset.coco, results, "segm", image_ids=dataset.image_ids)
        metrics.update({f"mask_{k}": v for k, v in segm.items()})
    return metrics
