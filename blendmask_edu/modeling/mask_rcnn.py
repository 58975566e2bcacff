"""BlendMask's counterpart: Mask R-CNN, and Panoptic-FPN = Mask R-CNN + the same semantic head.

The paper's appendix compares BlendMask with "its Mask R-CNN counterpart" (Table 1: against
Panoptic-FPN; Figure 1: on hard cases). This module builds that counterpart so that the
comparison runs here, on the same data and budget (``blendmask-edu compare``, notebook 07).

Nothing of Mask R-CNN is re-implemented: the region proposal network, the RoI heads, the box
and mask losses and the mask pasting are torchvision's (``torchvision.models.detection``). What
is this package's is what must be *the same* as in BlendMask, so that the only difference
between the two panoptic models is the instance branch:

    images ─normalise, pad to 32 (no resize)─▶ ResNet-FPN P2–P5 (+ P6 = max-pool of P5)
      ├─ RPN: anchors on P2–P6 ─▶ proposals
      ├─ RoI heads: RoIAlign 7×7 (box) and 14×14 (mask) on P2–P5 ─▶ boxes, classes,
      │             4 × [3×3 conv, ReLU] → 2× deconv → 28×28 mask per class
      └─ (Panoptic-FPN) SemanticHead on P2–P5 ─▶ sem_seg ─fuse─▶ panoptic

Where each mask comes from, against BlendMask: Mask R-CNN predicts each instance's mask on its
own 28 × 28 grid from features pooled in its box (14 × 14 RoIAlign, then four convs and a
deconvolution); BlendMask crops K bases computed once for the whole image at stride 4 (R × R
per instance, R = 56 in the paper) and merges them with the instance's K × M × M attention.

- The backbone is the package's ``ResNetFPN`` built from the same ``BackboneConfig`` as a
  BlendMask preset (depth, stem width, norm, frozen stages, FPN width); the levels are Mask
  R-CNN's, P2–P6, P6 a stride-2 max-pool of P5 (FCOS's P6 is a stride-2 conv).
- torchvision's ``GeneralizedRCNNTransform`` normalises and pads but is told not to resize
  (:class:`FixedSizeTransform`): the package's transforms own resizing, for both models.
- Labels: torchvision's Mask R-CNN counts classes from 1 (0 is background); the package's
  targets count things from 0 and its outputs are dataset ids. :meth:`MaskRCNN.forward`
  translates both ways.

The model honours the package's contract (DESIGN §4), like ``BlendMask``: in train mode
``model(images, targets)`` returns the losses (``loss_objectness``, ``loss_rpn_box_reg``,
``loss_classifier``, ``loss_box_reg``, ``loss_mask``, and ``loss_sem_seg`` for Panoptic-FPN);
in eval mode one dict per image with ``boxes`` [D, 4], ``scores`` [D], ``labels`` [D] (dataset
ids), ``masks`` [D, 1, H, W] probabilities, and for Panoptic-FPN ``sem_seg`` [1 + S, H, W] and
``panoptic`` (id map [H, W], ``segments_info``), in the pixels of ``output_sizes``. So
``engine.train``, ``evaluate_coco``, ``predict``, checkpoints and resume work unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN as TorchvisionMaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from blendmask_edu.config import Config
from blendmask_edu.modeling.backbone import IMAGENET_MEAN, IMAGENET_STD, ResNetFPN, build_resnet_fpn
from blendmask_edu.modeling.detector import SIZE_DIVISIBILITY, require_targets
from blendmask_edu.modeling.panoptic import (SEMANTIC_LEVELS, PanopticFusion, SemanticHead,
                                             semantic_inference)

MASK_RCNN_LEVELS = (2, 3, 4, 5, 6)  # the levels of Mask R-CNN's FPN: anchors on all five
ROI_LEVELS = ("p2", "p3", "p4", "p5")  # the levels RoIAlign reads (P6 only feeds the RPN)

__all__ = ["FixedSizeTransform", "MASK_RCNN_LEVELS", "MaskRCNN", "MaxPoolP6",
           "build_mask_rcnn"]


class MaxPoolP6(nn.Module):
    """Mask R-CNN's pyramid: a ``ResNetFPN`` with P2–P5, and P6 = max-pool(P5, kernel 1,
    stride 2) — a subsampling, not a learnt conv as FCOS's P6 is.

    forward(images (N, 3, H, W)) → OrderedDict p2..p6, each (N, C, ⌈H/s⌉, ⌈W/s⌉), s = 4..64.
    ``out_channels`` is C, as torchvision's detection models ask of a backbone.
    """

    def __init__(self, fpn: ResNetFPN):
        super().__init__()
        if fpn.level_names != list(ROI_LEVELS):
            raise ValueError(f"Mask R-CNN's FPN needs levels p2-p5 (P6 is pooled from P5), "
                             f"got {fpn.level_names}")
        self.fpn = fpn
        self.out_channels = fpn.out_channels

    def forward(self, images: Tensor) -> "OrderedDict[str, Tensor]":
        levels = OrderedDict(self.fpn(images))
        levels["p6"] = F.max_pool2d(levels["p5"], kernel_size=1, stride=2)
        return levels


class FixedSizeTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform without its resize: it normalises (ImageNet mean and
    std, as ``FCOS.preprocess``) and pads the batch to a multiple of 32, and maps the outputs
    back to the requested sizes (boxes scaled, masks pasted), but keeps each image's size —
    the package's data transforms (``data.transforms``) resize, for both models alike."""

    def __init__(self):
        super().__init__(min_size=1, max_size=1, image_mean=list(IMAGENET_MEAN),
                         image_std=list(IMAGENET_STD), size_divisible=SIZE_DIVISIBILITY)

    def resize(self, image: Tensor, target: Optional[Dict[str, Tensor]] = None):
        return image, target


class MaskRCNN(TorchvisionMaskRCNN, PanopticFusion):
    """torchvision's Mask R-CNN in the package's contract; Panoptic-FPN with a ``semantic`` head.

    backbone      ``MaxPoolP6`` (P2–P6); the other parts are torchvision's, given as keyword
                  arguments of ``torchvision.models.detection.MaskRCNN`` (``build_mask_rcnn``
                  gives them from a config)
    category_ids  dataset id of each thing class 0..C-1 (torchvision's label c + 1)
    semantic      Panoptic-FPN's ``SemanticHead`` on P2–P5, or None; with it ``stuff_ids``,
                  ``sem_seg_weight`` and ``fusion`` as ``BlendMask`` takes them
    """

    def __init__(self, backbone: MaxPoolP6, category_ids: Sequence[int], *,
                 semantic: Optional[SemanticHead] = None, stuff_ids: Sequence[int] = (),
                 sem_seg_weight: float = 0.0, fusion: Optional[Dict[str, float]] = None,
                 **torchvision_options):
        super().__init__(backbone, num_classes=None, **torchvision_options)  # the predictors know C + 1
        self.transform = FixedSizeTransform()
        self.set_panoptic(semantic, stuff_ids, sem_seg_weight, fusion)
        self.num_classes = len(category_ids)
        self.register_buffer("category_ids", torch.tensor(list(category_ids), dtype=torch.int64),
                             persistent=False)

    def forward(self, images: Sequence[Tensor], targets: Optional[List[Dict]] = None,
                output_sizes: Optional[Sequence[Tuple[int, int]]] = None):
        """Train mode: the losses. Eval mode: one dict per image (module docstring), in the
        pixels of ``output_sizes`` (one (H, W) per image; default: the images' own sizes)."""
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        rcnn_targets = (self.rcnn_targets(require_targets(targets, "Mask R-CNN"))
                        if self.training else None)
        batch, rcnn_targets = self.transform(list(images), rcnn_targets)  # ImageList, padded
        features = self.backbone(batch.tensors)                # p2..p6
        proposals, rpn_losses = self.rpn(batch, features, rcnn_targets)
        detections, roi_losses = self.roi_heads(features, proposals, batch.image_sizes,
                                                rcnn_targets)
        sem_seg_logits = (self.semantic([features[f"p{level}"] for level in SEMANTIC_LEVELS])
                          if self.semantic is not None else None)  # (N, 1 + S, H/4, W/4)
        if self.training:
            losses = {**rpn_losses, **roi_losses}
            if sem_seg_logits is not None:
                losses["loss_sem_seg"] = self.panoptic_semantic_loss(sem_seg_logits, targets)
            return losses
        if output_sizes is None:
            output_sizes = sizes
        elif len(output_sizes) != len(sizes):
            raise ValueError(f"{len(output_sizes)} output sizes for {len(sizes)} images")
        output_sizes = [(int(h), int(w)) for h, w in output_sizes]
        # torchvision's postprocess: boxes scaled from each image's size to its output size,
        # each 28×28 mask pasted into its box there (probabilities, [D, 1, H, W])
        detections = self.transform.postprocess(detections, batch.image_sizes, output_sizes)
        for i, det in enumerate(detections):
            det["labels"] = self.category_ids[det["labels"] - 1]  # 1..C → dataset ids
            if sem_seg_logits is not None:
                det["sem_seg"] = semantic_inference(sem_seg_logits[i], sizes[i],
                                                    tuple(batch.tensors.shape[-2:]),
                                                    output_size=output_sizes[i])
                det["panoptic"] = self.fuse_panoptic(det["masks"], det["scores"],
                                                     det["labels"], det["sem_seg"])
        return detections

    @torch.no_grad()
    def roi_masks(self, image: Tensor, boxes: Tensor, labels: Tensor) -> Tensor:
        """The mask head's own output before pasting: for boxes [D, 4] (xyxy, pixels of
        ``image`` [3, H, W]) and their dataset ids ``labels`` [D], the 28 × 28 probabilities of
        each box's class, (D, 28, 28) — the grid every Mask R-CNN mask is drawn from."""
        batch, _ = self.transform([image])
        features = self.backbone(batch.tensors)
        pooled = self.roi_heads.mask_roi_pool(features, [boxes.float()], batch.image_sizes)
        logits = self.roi_heads.mask_predictor(self.roi_heads.mask_head(pooled))  # (D, C+1, 28, 28)
        classes = torch.searchsorted(self.category_ids, labels.to(self.category_ids)) + 1
        return logits[torch.arange(len(boxes)), classes].sigmoid()

    @staticmethod
    def rcnn_targets(targets: List[Dict]) -> List[Dict[str, Tensor]]:
        """The package's targets (``labels`` 0..C-1, ``masks`` [G, H, W]) → torchvision's
        (``labels`` 1..C, 0 being background; boxes float xyxy)."""
        return [{"boxes": t["boxes"].float(), "labels": t["labels"].long() + 1,
                 "masks": t["masks"]} for t in targets]


def build_mask_rcnn(cfg: Config) -> MaskRCNN:
    """The Mask R-CNN (Panoptic-FPN with ``cfg.panoptic.enabled``) of a config whose ``arch``
    is ``"mask_rcnn"``: ``cfg.backbone`` (levels must be P2–P6), ``cfg.mask_rcnn``, the
    thing classes, and the panoptic head and fusion as for BlendMask."""
    b, r, p = cfg.backbone, cfg.mask_rcnn, cfg.panoptic
    if tuple(b.levels) != MASK_RCNN_LEVELS:
        raise ValueError(f"backbone.levels={tuple(b.levels)}: Mask R-CNN reads P2-P6, "
                         f"give backbone.levels={MASK_RCNN_LEVELS}")
    if len(r.anchor_sizes) != len(MASK_RCNN_LEVELS):
        raise ValueError(f"mask_rcnn.anchor_sizes gives {len(r.anchor_sizes)} sizes: one per "
                         f"level P2-P6 expected")
    fpn = build_resnet_fpn(depth=b.depth, pretrained=b.pretrained, weights_path=b.weights_path,
                           frozen_stages=b.frozen_stages, norm=b.norm,
                           fpn_channels=b.fpn_channels, levels=(2, 3, 4, 5), width=b.width,
                           fold_frozen_bn=b.fold_frozen_bn)
    backbone = MaxPoolP6(fpn)
    c = b.fpn_channels
    anchors = AnchorGenerator(tuple((int(s),) for s in r.anchor_sizes),
                              (tuple(float(a) for a in r.aspect_ratios),) * len(r.anchor_sizes))
    box_pool = MultiScaleRoIAlign(list(ROI_LEVELS), output_size=7,
                                  sampling_ratio=r.sampling_ratio,
                                  canonical_scale=r.canonical_scale)
    mask_pool = MultiScaleRoIAlign(list(ROI_LEVELS), output_size=14,
                                   sampling_ratio=r.sampling_ratio,
                                   canonical_scale=r.canonical_scale)
    num_classes = cfg.num_classes + 1  # torchvision's class 0 is background
    mask_layers = (r.mask_head_channels,) * r.mask_head_convs
    semantic = None
    if p.enabled:
        if p.share_basis_features:
            raise ValueError("panoptic.share_basis_features reads BlendMask's bottom module, "
                             "which Mask R-CNN has not: set it to false")
        if not p.stuff_ids:
            raise ValueError("panoptic.enabled needs panoptic.stuff_ids, the dataset's stuff "
                             "category ids (train and demo take them from the panoptic JSON)")
        semantic = SemanticHead(c, 1 + len(p.stuff_ids), channels=p.head_channels,
                                strides=[2 ** level for level in SEMANTIC_LEVELS],
                                norm=p.head_norm)
    category_ids = cfg.category_ids or tuple(range(1, cfg.num_classes + 1))
    return MaskRCNN(
        backbone, category_ids, semantic=semantic, stuff_ids=p.stuff_ids if p.enabled else (),
        sem_seg_weight=p.loss_weight,
        fusion=dict(score_thresh=p.score_thresh, overlap_thresh=p.overlap_thresh,
                    stuff_area=p.stuff_area) if p.enabled else None,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=r.rpn_pre_nms_topk_train,
        rpn_pre_nms_top_n_test=r.rpn_pre_nms_topk_test,
        rpn_post_nms_top_n_train=r.rpn_post_nms_topk_train,
        rpn_post_nms_top_n_test=r.rpn_post_nms_topk_test,
        rpn_batch_size_per_image=r.rpn_batch_size_per_image,
        box_roi_pool=box_pool, box_head=TwoMLPHead(c * 7 * 7, r.box_head_dim),
        box_predictor=FastRCNNPredictor(r.box_head_dim, num_classes),
        box_batch_size_per_image=r.roi_batch_size_per_image,
        box_positive_fraction=r.roi_positive_fraction,
        box_score_thresh=r.score_thresh, box_nms_thresh=r.nms_thresh,
        box_detections_per_img=r.max_detections,
        mask_roi_pool=mask_pool, mask_head=MaskRCNNHeads(c, mask_layers, dilation=1),
        mask_predictor=MaskRCNNPredictor(r.mask_head_channels, r.mask_head_channels,
                                         num_classes))
