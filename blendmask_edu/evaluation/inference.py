"""The test-time path: images at their own size in, detections in their own pixels out.

The model never resizes, so :func:`detect` does it around the model: each image is resized to
the test scale (``data.transforms.resize_for_test``), the model runs in eval mode, and its
boxes, masks and semantic map are mapped back to the original pixels. A panoptic model's fusion
(``fuse_panoptic``) then runs once, at the original size, so that the id maps line up with the
ground-truth PNGs. :func:`predict_dataset` does this over a dataset in batches and returns
COCO's results list. Introduced in ``notebooks/01_fcos.ipynb``; explained in ``05_evaluate``.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from blendmask_edu.data.transforms import resize_for_test
from blendmask_edu.evaluation.coco import to_coco_results
from blendmask_edu.utils import unwrap


@torch.no_grad()
def detect(model, images: Sequence[torch.Tensor], short_size: int, max_size: int,
           device: Optional[torch.device] = None) -> List[Dict[str, torch.Tensor]]:
    """Eval-mode detections of N images [3, H, W], in each image's own pixels, on the CPU.

    Each image is resized to the test scale first (the model never resizes); the outputs are
    mapped back: ``boxes`` [D, 4] xyxy clipped to the image, ``scores`` [D], ``labels`` [D]
    (category ids) and ``masks`` [D, 1, H, W] probabilities; for a panoptic model also
    ``sem_seg`` [1 + S, H, W] probabilities and ``panoptic`` (id map [H, W], segments_info),
    fused at the original size. ``device`` defaults to the model's.
    """
    device = device or next(model.parameters()).device
    model.eval()
    resized = [resize_for_test(image, short_size, max_size) for image in images]
    batch = [image.to(device) for image, _ in resized]
    # A panoptic model's fusion is done below, once, at the original size.
    panoptic = getattr(unwrap(model), "semantic", None) is not None
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
            det["panoptic"] = unwrap(model).fuse_panoptic(
                det["masks"], det["scores"], det["labels"], sem_seg)
        detections.append(det)
    return detections


def predict_dataset(model, dataset, short_size: int, max_size: int, batch_size: int = 8,
                    device: Optional[torch.device] = None, progress: bool = True,
                    on_image: Optional[Callable[[Dict, Dict], None]] = None) -> List[Dict]:
    """Detections on every image of ``dataset`` (items ``(image [3, H, W], target)``) in COCO's
    results format (one dict per detection, :func:`~blendmask_edu.evaluation.coco.to_coco_results`),
    ``batch_size`` images per model call; ``on_image(target, detection)`` sees each image's
    :func:`detect` output as it is made."""
    results = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="predict", disable=not progress):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        detections = detect(model, [image for image, _ in items], short_size, max_size, device)
        for (_, target), det in zip(items, detections):
            results += to_coco_results(det, target["image_id"])
            if on_image is not None:
                on_image(target, det)
    return results
