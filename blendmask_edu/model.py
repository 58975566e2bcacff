"""The detectors, wired from their parts: ``FCOS`` (notebook 01) and ``BlendMask``.

Both follow torchvision's detection convention (DESIGN §4): in train mode ``model(images,
targets)`` returns a dict of scalar losses; in eval mode ``model(images)`` returns one dict per
image with ``boxes`` [D, 4] xyxy in the input image's pixels, ``scores`` [D] and ``labels`` [D]
(the dataset's category ids). Images are a list of [3, H, W] floats in 0..1 of any sizes: the
model normalises and pads them to a multiple of 32 itself, and never resizes.

``build_fcos(cfg)`` and ``build_model(cfg)`` are the one place that reads a config to build a model.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from blendmask_edu.attention import TopModule
from blendmask_edu.backbone import IMAGENET_MEAN, IMAGENET_STD, build_resnet_fpn
from blendmask_edu.basis import BasisModule, basis_semantic_loss, thing_semantic_targets
from blendmask_edu.blender import blend_training_loss, postprocess_masks
from blendmask_edu.config import Config
from blendmask_edu.fcos import (FCOSHead, assign_targets, batch_targets, compute_locations,
                                flatten_predictions, size_ranges_from_sizes, split_batch_index)
from blendmask_edu.fcos_inference import fcos_postprocess
from blendmask_edu.fcos_loss import fcos_losses

SIZE_DIVISIBILITY = 32  # the largest backbone stride: padded sizes divide evenly at every level
BASES_STRIDE = 4  # the bottom module's output stride (spec §4.1: upsampled inside the tower)


def normalize_and_pad(images: Sequence[torch.Tensor], mean: torch.Tensor, std: torch.Tensor,
                      divisor: int = SIZE_DIVISIBILITY) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
    """Images N × [3, H_i, W_i] in 0..1 → a batch [N, 3, H, W] and the sizes (H_i, W_i).

    Each image is normalised by ``(x − mean) / std`` and zero-padded at the bottom and right to a
    common size divisible by ``divisor`` (after normalisation, so padding is the mean colour).
    """
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    height = -(-max(h for h, _ in sizes) // divisor) * divisor
    width = -(-max(w for _, w in sizes) // divisor) * divisor
    batch = images[0].new_zeros((len(images), 3, height, width))
    for i, image in enumerate(images):
        batch[i, :, : sizes[i][0], : sizes[i][1]] = (image - mean) / std
    return batch, sizes


class FCOS(nn.Module):
    """FCOS (Tian et al., 2019) as BlendMask configures it (spec §1–2), without a mask branch.

    Stages: normalise/pad → ResNet-FPN → shared head (cls, box, centerness) → training: assign
    targets, focal + GIoU + centerness losses; inference: threshold, top-k, NMS.
    """

    def __init__(self, backbone: nn.Module, head: FCOSHead, size_ranges, center_radius: float,
                 category_ids: Sequence[int], score_thresh: float = 0.05, pre_nms_topk: int = 1000,
                 nms_thresh: float = 0.6, max_detections: int = 100):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.strides = list(backbone.strides)
        self.size_ranges = [tuple(r) for r in size_ranges]
        self.center_radius = center_radius
        self.num_classes = len(category_ids)
        self.inference = dict(score_thresh=score_thresh, pre_nms_topk=pre_nms_topk,
                              nms_thresh=nms_thresh, max_detections=max_detections)
        self.register_buffer("category_ids", torch.tensor(list(category_ids), dtype=torch.int64),
                             persistent=False)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)
        self.reduce_mean = None  # set by the engine for multi-process training

    def features(self, images: Sequence[torch.Tensor]):
        """Images → (batch [N,3,H,W], sizes, FPN features per level, head outputs, locations)."""
        batch, sizes = normalize_and_pad(images, self.pixel_mean, self.pixel_std)
        features = list(self.backbone(batch).values())  # P3.. [N, ch, H/s, W/s]
        head = self.head(features)
        locations = compute_locations([f.shape[-2:] for f in features], self.strides,
                                      device=batch.device)
        return batch, sizes, features, head, locations

    def forward(self, images: Sequence[torch.Tensor], targets: Optional[List[Dict]] = None):
        _, sizes, _, head, locations = self.features(images)
        if self.training:
            if targets is None:
                raise ValueError("FCOS in train mode needs targets; call model.eval() to predict")
            fcos_targets = self.assign(locations, targets)
            losses, _ = self.fcos_losses(head, fcos_targets)
            return losses
        return self.postprocess(head, locations, sizes)

    def assign(self, locations, targets):
        """FCOS targets of the batch, level-major then image (spec §2.3, gotcha 15)."""
        per_image = [assign_targets(locations, self.strides, self.size_ranges, t["boxes"],
                                    t["labels"], self.center_radius) for t in targets]
        return batch_targets(per_image, [len(loc) for loc in locations])

    def fcos_losses(self, head, fcos_targets):
        """The three FCOS losses and the extras (normaliser, positives) the mask loss reuses."""
        return fcos_losses(flatten_predictions(head["cls_logits"]),
                           flatten_predictions(head["bbox_reg"]),
                           flatten_predictions(head["centerness"]).squeeze(1),
                           fcos_targets, self.num_classes, reduce_mean=self.reduce_mean)

    def postprocess(self, head, locations, sizes) -> List[Dict[str, torch.Tensor]]:
        detections = fcos_postprocess(head["cls_logits"], head["bbox_reg"], head["centerness"],
                                      locations, self.strides, sizes, clip=True, **self.inference)
        for det in detections:
            det["labels"] = self.category_ids[det["labels"]]  # contiguous index → dataset id
        return detections


def build_fcos(cfg: Config) -> FCOS:
    """The FCOS detector of a config (``get_config("tiny")`` for the CPU preset)."""
    b, f = cfg.backbone, cfg.fcos
    backbone = build_resnet_fpn(depth=b.depth, pretrained=b.pretrained, weights_path=b.weights_path,
                                frozen_stages=b.frozen_stages, norm=b.norm,
                                fpn_channels=b.fpn_channels, levels=b.levels, width=b.width)
    size_ranges = size_ranges_from_sizes(f.sizes_of_interest)
    if len(size_ranges) != len(backbone.strides):
        raise ValueError(f"fcos.sizes_of_interest gives {len(size_ranges)} size ranges for "
                         f"{len(backbone.strides)} FPN levels {tuple(b.levels)}; give one bound fewer "
                         f"than levels")
    head = FCOSHead(b.fpn_channels, cfg.num_classes, num_convs=f.num_convs,
                    channels=f.head_channels, norm=f.head_norm, prior_prob=f.prior_prob,
                    num_shared_convs=f.num_shared_convs)
    category_ids = cfg.category_ids or tuple(range(1, cfg.num_classes + 1))
    return FCOS(backbone, head, size_ranges, f.center_radius, category_ids,
                score_thresh=f.score_thresh, pre_nms_topk=f.pre_nms_topk,
                nms_thresh=f.nms_thresh, max_detections=f.max_detections)


class BlendMask(FCOS):
    """BlendMask (Chen et al., CVPR 2020): FCOS + top module + bottom module + blender.

    Stages (the paper's Fig. 2): normalise/pad → ResNet-FPN → FCOS head; the top module turns
    the box tower into K·M·M attentions per location; the bottom module turns P3–P5 into K
    bases at stride 4. Training: FCOS losses, then every positive location blends the bases
    cropped by its GT box with its attention (``loss_mask``; the top module runs at the
    positives only, ``TopModule.at_locations``), plus the auxiliary
    thing-semantic loss (``loss_basis_sem``). Inference: FCOS detections → the top module at
    the kept detections only → blend in the (clipped) predicted boxes → sigmoid →
    paste into the image (``masks`` [D, 1, H, W] probabilities).
    """

    def __init__(self, backbone, head, top: TopModule, basis: BasisModule, size_ranges,
                 center_radius: float, category_ids: Sequence[int], blend_resolution: int = 56,
                 pooler: str = "roi_align", attn_interpolation: str = "bilinear",
                 basis_semantic_weight: float = 0.3, mask_loss_weight: float = 1.0, **inference):
        super().__init__(backbone, head, size_ranges, center_radius, category_ids, **inference)
        self.top, self.basis = top, basis
        self.blend_options = dict(resolution=blend_resolution, spatial_scale=1.0 / BASES_STRIDE,
                                  pooler=pooler, interpolation=attn_interpolation)
        self.basis_semantic_weight = basis_semantic_weight
        self.mask_loss_weight = mask_loss_weight

    def forward(self, images: Sequence[torch.Tensor], targets: Optional[List[Dict]] = None,
                return_internals: bool = False):
        batch, sizes, features, head, locations = self.features(images)
        bottom = self.basis(features)  # bases [N, K, H/4, W/4] (+ thing-semantic logits)
        if self.training:
            if targets is None:
                raise ValueError("BlendMask in train mode needs targets; call model.eval() to predict")
            return self.losses(batch, head, locations, bottom, targets)
        detections = self.postprocess(head, locations, sizes)
        for i, det in enumerate(detections):
            image_index = torch.full_like(det["locations_index"], i)
            # the top module at the kept detections only, not at every location (DESIGN §3)
            chosen = self.top.at_locations(head["box_tower"], image_index,
                                           det["locations_index"])  # [D, K·M·M]
            det["masks"] = postprocess_masks(bottom["bases"], chosen, det["boxes"], image_index,
                                             sizes[i], **self.blend_options)  # [D, 1, H, W]
            if return_internals:
                det["attentions"] = chosen
                det["bases"] = bottom["bases"][i, :, : -(-sizes[i][0] // BASES_STRIDE),
                                               : -(-sizes[i][1] // BASES_STRIDE)]
        return detections

    def losses(self, batch, head, locations, bottom, targets) -> Dict[str, torch.Tensor]:
        fcos_targets = self.assign(locations, targets)
        losses, extras = self.fcos_losses(head, fcos_targets)
        positives = extras["pos_index"]  # [P] in the batch order (level, image, location)
        image_index, location_index = split_batch_index(
            positives, [len(loc) for loc in locations], len(targets))
        # the top module at the positives only: the same rows as the dense conv + gather
        chosen = self.top.at_locations(head["box_tower"], image_index, location_index)  # [P, K·M·M]
        all_attentions = sum(p.sum() for p in self.top.parameters())  # a (zero) gradient if P = 0
        losses["loss_mask"] = self.mask_loss_weight * blend_training_loss(
            bottom["bases"], chosen, fcos_targets.gt_index[positives],
            [t["boxes"] for t in targets], [t["masks"] for t in targets],
            fcos_targets.centerness[positives], extras["loss_denorm"],
            all_attentions=all_attentions, **self.blend_options)
        if bottom.get("sem_logits") is not None:
            semantic = thing_semantic_targets([t["masks"] for t in targets],
                                              [t["labels"] for t in targets], batch.shape[-2:])
            losses["loss_basis_sem"] = basis_semantic_loss(bottom["sem_logits"], semantic,
                                                           self.basis_semantic_weight)
        return losses


def build_model(cfg: Config) -> BlendMask:
    """The BlendMask model of a config: ``build_model(get_config("tiny"))`` for the CPU preset,
    ``build_model(get_config("coco_r50_3x"))`` for the paper's R-50 model."""
    fcos = build_fcos(cfg)
    m = cfg.blendmask
    top = TopModule(fcos.head.out_channels, num_bases=m.num_bases, attn_size=m.attn_size)
    basis = BasisModule(cfg.backbone.fpn_channels, num_bases=m.num_bases, channels=m.basis_channels,
                        num_convs=m.basis_convs, norm=m.basis_norm,
                        semantic_classes=cfg.num_classes + 1 if m.basis_semantic else None)
    return BlendMask(fcos.backbone, fcos.head, top, basis, fcos.size_ranges, fcos.center_radius,
                     fcos.category_ids.tolist(), blend_resolution=m.blend_resolution,
                     pooler=m.pooler, attn_interpolation=m.attn_interpolation,
                     basis_semantic_weight=m.basis_semantic_weight,
                     mask_loss_weight=m.mask_loss_weight, **fcos.inference)
