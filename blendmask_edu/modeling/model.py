"""The detectors, wired from their parts: ``FCOS`` (notebook 01) and ``BlendMask``.

Both follow torchvision's detection convention (DESIGN §4): in train mode ``model(images,
targets)`` returns a dict of scalar losses; in eval mode ``model(images)`` returns one dict per
image with ``boxes`` [D, 4] xyxy in the input image's pixels, ``scores`` [D] and ``labels`` [D]
(the dataset's category ids); BlendMask adds ``masks`` [D, 1, H, W], and with the panoptic
extension ``sem_seg`` [1 + S, H, W] and ``panoptic`` (an [H, W] id map, its ``segments_info``).
Images are a list of [3, H, W] floats in 0..1 of any sizes: the model normalises and pads them
to a multiple of 32 itself, and never resizes.

``build_fcos(cfg)`` and ``build_model(cfg)`` are the one place that reads a config to build a model.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from blendmask_edu.modeling.attention import TopModule
from blendmask_edu.modeling.backbone import IMAGENET_MEAN, IMAGENET_STD, build_resnet_fpn
from blendmask_edu.modeling.basis import BasisModule, basis_semantic_loss, thing_semantic_targets
from blendmask_edu.modeling.blender import blend_training_loss, postprocess_masks
from blendmask_edu.config import Config
from blendmask_edu.modeling.fcos import (FCOSHead, assign_targets, batch_targets, compute_locations,
                                flatten_predictions, size_ranges_from_sizes, split_batch_index)
from blendmask_edu.modeling.fcos_inference import fcos_postprocess
from blendmask_edu.modeling.fcos_loss import fcos_losses
from blendmask_edu.modeling.panoptic import (SemanticHead, fuse, pad_semantic_targets, semantic_inference,
                                    semantic_loss, stuff_area_for)

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

    Panoptic (``semantic`` given; spec §7, notebook 06): Panoptic-FPN's semantic head labels
    every pixel "things" or one of the S stuff classes (``loss_sem_seg``, from the targets'
    ``sem_seg``); at inference each image also gets ``sem_seg`` [1 + S, H, W] probabilities and
    ``panoptic`` = ``fuse_panoptic`` of its instances and that map. With
    ``share_basis_features`` the head reads the bottom module's fused features instead of the
    FPN levels.
    """

    def __init__(self, backbone, head, top: TopModule, basis: BasisModule, size_ranges,
                 center_radius: float, category_ids: Sequence[int], blend_resolution: int = 56,
                 pooler: str = "roi_align", attn_interpolation: str = "bilinear",
                 basis_semantic_weight: float = 0.3, mask_loss_weight: float = 1.0,
                 semantic: Optional[SemanticHead] = None, stuff_ids: Sequence[int] = (),
                 share_basis_features: bool = False, sem_seg_weight: float = 0.5,
                 fusion: Optional[Dict[str, float]] = None, **inference):
        super().__init__(backbone, head, size_ranges, center_radius, category_ids, **inference)
        self.top, self.basis, self.semantic = top, basis, semantic
        if semantic is not None and semantic.predictor.out_channels != 1 + len(stuff_ids):
            raise ValueError(f"the semantic head predicts {semantic.predictor.out_channels} "
                             f"classes; 1 + {len(stuff_ids)} stuff ids expected")
        self.stuff_ids = [int(i) for i in stuff_ids]
        self.share_basis_features = share_basis_features
        self.sem_seg_weight = sem_seg_weight
        # Panoptic-FPN's fusion: instance score threshold, overlap threshold, and the smallest
        # stuff region in pixels of an 800 × 1200 image (scaled to each image's area).
        self.fusion = {"score_thresh": 0.2, "overlap_thresh": 0.4, "stuff_area": 4096, **(fusion or {})}
        self.blend_options = dict(resolution=blend_resolution, spatial_scale=1.0 / BASES_STRIDE,
                                  pooler=pooler, interpolation=attn_interpolation)
        self.basis_semantic_weight = basis_semantic_weight
        self.mask_loss_weight = mask_loss_weight

    def forward(self, images: Sequence[torch.Tensor], targets: Optional[List[Dict]] = None,
                return_internals: bool = False, panoptic: bool = True):
        """``panoptic=False`` leaves out the eval-mode fusion (``sem_seg`` is still returned):
        ``evaluate.detect`` fuses itself, once, at the original image size."""
        batch, sizes, features, head, locations = self.features(images)
        bottom = self.basis(features)  # bases [N, K, H/4, W/4] (+ thing-semantic logits)
        sem_logits = None  # [N, 1 + S, H/4, W/4] with the panoptic semantic head
        if self.semantic is not None:
            sem_logits = self.semantic(bottom["fused"] if self.share_basis_features else features)
        if self.training:
            if targets is None:
                raise ValueError("BlendMask in train mode needs targets; call model.eval() to predict")
            return self.losses(batch, head, locations, bottom, targets, sem_logits)
        detections = self.postprocess(head, locations, sizes)
        for i, det in enumerate(detections):
            image_index = torch.full_like(det["locations_index"], i)
            # the top module at the kept detections only, not at every location (DESIGN §3)
            chosen = self.top.at_locations(head["box_tower"], image_index,
                                           det["locations_index"])  # [D, K·M·M]
            det["masks"] = postprocess_masks(bottom["bases"], chosen, det["boxes"], image_index,
                                             sizes[i], **self.blend_options)  # [D, 1, H, W]
            if sem_logits is not None:
                det["sem_seg"] = semantic_inference(sem_logits[i], sizes[i],
                                                    batch.shape[-2:])  # [1 + S, H, W]
                if panoptic:
                    det["panoptic"] = self.fuse_panoptic(det["masks"], det["scores"],
                                                         det["labels"], det["sem_seg"])
            if return_internals:
                det["attentions"] = chosen
                det["bases"] = bottom["bases"][i, :, : -(-sizes[i][0] // BASES_STRIDE),
                                               : -(-sizes[i][1] // BASES_STRIDE)]
        return detections

    def fuse_panoptic(self, masks: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                      sem_seg: torch.Tensor) -> Tuple[torch.Tensor, List[dict]]:
        """One image's instances (``masks`` [D, 1, H, W], ``scores`` [D], ``labels`` [D] category
        ids) over its semantic map (``sem_seg`` [1 + S, H, W] or labels [H, W]) → (id map [H, W],
        segments_info): ``panoptic.fuse`` with this model's thresholds and stuff ids, the stuff
        area scaled to H × W."""
        area = stuff_area_for(tuple(sem_seg.shape[-2:]), coco_area=self.fusion["stuff_area"])
        return fuse(masks, scores, labels, sem_seg, self.fusion["score_thresh"],
                    self.fusion["overlap_thresh"], area, stuff_ids=self.stuff_ids)

    def losses(self, batch, head, locations, bottom, targets,
               sem_logits: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
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
        if sem_logits is not None:
            if any("sem_seg" not in t for t in targets):
                raise ValueError("the panoptic model needs targets with 'sem_seg': open the "
                                 "dataset with its panoptic JSON (CocoInstances.from_paths)")
            sem_targets = pad_semantic_targets([t["sem_seg"] for t in targets], batch.shape[-2:])
            losses["loss_sem_seg"] = semantic_loss(sem_logits, sem_targets, self.sem_seg_weight)
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
    p, semantic = cfg.panoptic, None
    if p.enabled:  # built last, so that the other modules' initial weights do not change
        if not p.stuff_ids:
            raise ValueError("panoptic.enabled needs panoptic.stuff_ids, the dataset's stuff "
                             "category ids (train and demo take them from the panoptic JSON)")
        semantic = SemanticHead(m.basis_channels if p.share_basis_features else cfg.backbone.fpn_channels,
                                1 + len(p.stuff_ids), channels=p.head_channels,
                                strides=fcos.strides[:3], norm=p.head_norm,
                                shared=p.share_basis_features)
    return BlendMask(fcos.backbone, fcos.head, top, basis, fcos.size_ranges, fcos.center_radius,
                     fcos.category_ids.tolist(), blend_resolution=m.blend_resolution,
                     pooler=m.pooler, attn_interpolation=m.attn_interpolation,
                     basis_semantic_weight=m.basis_semantic_weight,
                     mask_loss_weight=m.mask_loss_weight, semantic=semantic,
                     stuff_ids=p.stuff_ids if p.enabled else (),
                     share_basis_features=p.share_basis_features, sem_seg_weight=p.loss_weight,
                     fusion=dict(score_thresh=p.score_thresh, overlap_thresh=p.overlap_thresh,
                                 stuff_area=p.stuff_area), **fcos.inference)
