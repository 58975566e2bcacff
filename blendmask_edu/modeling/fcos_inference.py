"""FCOS post-processing: from dense per-level maps to at most ``max_detections`` boxes per image.

Per image and level (docs/model.md §2, pitfall 11): p = sigmoid(cls) · sigmoid(ctr) for every
location × class; keep the (location, class) pairs with p > ``score_thresh`` (thresholding on the
product: BlendMask's ``THRESH_WITH_CTR=True``), at most ``pre_nms_topk`` of them; decode their
boxes; score = sqrt(p). Then, per image over all levels: class-aware NMS and the top
``max_detections``.

Detections carry ``locations_index``, the index of their source location in the image's own
level-major flattened locations, so that the next stage gathers the K·M·M attention of the kept
detections only (DESIGN §3: carry indices, not features).
Introduced in ``notebooks/01_fcos.ipynb``.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

from blendmask_edu.config import FCOSConfig
from blendmask_edu.modeling.fcos import decode_boxes

__all__ = ["fcos_postprocess"]


def fcos_postprocess(cls_logits: Sequence[Tensor], bbox_reg: Sequence[Tensor],
                     centerness: Sequence[Tensor], locations: Sequence[Tensor],
                     strides: Sequence[int], image_sizes: Sequence[Tuple[int, int]],
                     score_thresh: float = FCOSConfig.score_thresh,
                     pre_nms_topk: int = FCOSConfig.pre_nms_topk,
                     nms_thresh: float = FCOSConfig.nms_thresh,
                     max_detections: int = FCOSConfig.max_detections,
                     clip: bool = False) -> List[Dict[str, Tensor]]:
    """Detections of every image of a batch.

    cls_logits (N, C, h, w) · bbox_reg (N, 4, h, w) stride units · centerness (N, 1, h, w)
    logits, one of each per level; locations (h·w, 2) per level; strides per level;
    image_sizes (H, W) per image (used only when ``clip``).
    Returns one dict per image, sorted by decreasing score:
      boxes (D, 4) xyxy, = (x − l·s, y − t·s, x + r·s, y + b·s), not clipped unless ``clip``
      scores (D,) = sqrt(p_cls · p_ctr) · labels (D,) int64 class indices 0..C-1
      levels (D,) int64 FPN level index (0 = first level given)
      locations_index (D,) int64 source location, in this image's level-major order
    A location may give several detections of different classes (multi-label).

    Differs from AdelaiDet: exactly ``max_detections`` at most (the official k-th-value cut can
    keep more on ties); ``clip=True`` clips after NMS, so it changes coordinates, not which
    boxes are kept.
    """
    num_images = cls_logits[0].shape[0]
    candidates: List[List[Tuple[Tensor, ...]]] = [[] for _ in range(num_images)]
    offset = 0  # index of the level's first location in one image's level-major order
    for level, (cls, reg, ctr, points, stride) in enumerate(
            zip(cls_logits, bbox_reg, centerness, locations, strides)):
        n, c, h, w = cls.shape
        prob = cls.float().sigmoid() * ctr.float().sigmoid()  # (N, C, h, w)
        prob = prob.permute(0, 2, 3, 1).reshape(n, h * w, c)  # (N, h·w, C)
        reg = reg.float().permute(0, 2, 3, 1).reshape(n, h * w, 4)  # (N, h·w, 4)
        for i in range(n):
            pairs = (prob[i] > score_thresh).nonzero()  # (k, 2) rows (location, class)
            score = prob[i][pairs[:, 0], pairs[:, 1]]  # (k,)
            if score.numel() > pre_nms_topk:
                score, top = score.topk(pre_nms_topk)
                pairs = pairs[top]
            where, label = pairs.unbind(1)
            boxes = decode_boxes(points[where].float(), reg[i][where], float(stride))  # (k, 4)
            candidates[i].append((boxes, score.sqrt(), label, torch.full_like(label, level),
                                  where + offset))
        offset += h * w

    results = []
    for i in range(num_images):
        boxes, scores, labels, levels, index = (torch.cat(parts) for parts in zip(*candidates[i]))
        keep = batched_nms(boxes, scores, labels, nms_thresh)[:max_detections]  # by score
        boxes = boxes[keep]
        if clip:
            boxes = clip_boxes_to_image(boxes, tuple(image_sizes[i]))
        results.append({"boxes": boxes, "scores": scores[keep], "labels": labels[keep],
                        "levels": levels[keep], "locations_index": index[keep]})
    return results
