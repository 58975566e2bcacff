"""BlendMask: FCOS + top module + bottom module + blender, as the paper's Fig. 2; ``build_model``.

``BlendMask.forward`` reads like the figure: each line is a named stage, a method that a
notebook, a test or the benchmark can call on its own (notebooks 02 and 03 do):

    features(images)          normalise + pad → ResNet-FPN → FCOS head (+ box tower)  (detector)
    basis(x.levels)           bottom module: K bases at stride 4 (+ thing-semantic logits)
    semantic_logits(x, b)     Panoptic-FPN's semantic head (panoptic models only)
  training:
    losses(x, b, s, targets)  FCOS losses, then the blender at the positives, then the
                              auxiliary semantic losses
  inference, each image at its output size (H, W) (``output_sizes``, default its own size):
    detect(x)                 FCOS post-processing: boxes, scores, labels per image
    attentions(x, det, i)     top module at the kept detections only (D, K·M·M)
    masks(b, det, i, size, out)   blender in the predicted boxes → sigmoid → paste (D, 1, H, W)
    semantic_map(x, s, i, out)    sem_seg (1 + S, H, W) probabilities, then ``fuse_panoptic``

In eval mode each image's dict holds ``boxes``, ``scores``, ``labels`` (dataset ids),
``masks`` [D, 1, H, W] probabilities and ``attentions`` [D, K·M·M] (what the blender used);
a panoptic model adds ``sem_seg`` [1 + S, H, W] and ``panoptic`` (id map [H, W],
``segments_info``). With ``output_sizes`` (the original sizes before a test-time resize, which
``evaluation.inference.detect`` passes) the boxes are rescaled to them and the masks pasted
straight into them, as the official evaluation does; the semantic map is resized there and the
panoptic fusion runs there, once.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from blendmask_edu.config import Config
from blendmask_edu.modeling.attention import TopModule
from blendmask_edu.modeling.basis import (BASES_STRIDE, BasisModule, basis_semantic_loss,
                                          thing_semantic_targets)
from blendmask_edu.modeling.blender import blend_training_loss, postprocess_masks, scale_boxes
from blendmask_edu.modeling.detector import FCOS, Features, build_fcos, require_targets
from blendmask_edu.modeling.fcos import FCOSTargets, split_batch_index
from blendmask_edu.modeling.mask_rcnn import build_mask_rcnn
from blendmask_edu.modeling.panoptic import (SEMANTIC_LEVELS, PanopticFusion, SemanticHead,
                                             semantic_inference)


class BlendMask(FCOS, PanopticFusion):
    """BlendMask (Chen et al., CVPR 2020): FCOS + top module + bottom module + blender.

    top, basis       ``TopModule`` (K·M·M attentions from the box tower) and ``BasisModule``
    blend_resolution R; pooler "roi_align" | "roi_pool"; attn_interpolation "bilinear" | "nearest"
    basis_semantic_weight, mask_loss_weight   weights of ``loss_basis_sem`` and ``loss_mask``
    semantic         Panoptic-FPN's ``SemanticHead`` or None; with it, ``stuff_ids`` (label s ↔
                     ``stuff_ids[s - 1]``), ``sem_seg_weight`` (``loss_sem_seg``), and the
                     fusion's ``score_thresh``, ``overlap_thresh``, ``stuff_area`` (px of a COCO
                     image, ``panoptic.stuff_area_for``). ``share_basis_features``: the head
                     reads the bottom module's fused stride-8 features instead of P2–P5.
    The FCOS arguments are ``detector.FCOS``'s.
    """

    def __init__(self, backbone, head, top: TopModule, basis: BasisModule, levels, size_ranges,
                 center_radius: float, category_ids: Sequence[int], *, blend_resolution: int,
                 pooler: str, attn_interpolation: str, basis_semantic_weight: float,
                 mask_loss_weight: float, semantic: Optional[SemanticHead] = None,
                 stuff_ids: Sequence[int] = (), share_basis_features: bool = False,
                 sem_seg_weight: float = 0.0, fusion: Optional[Dict[str, float]] = None,
                 **inference):
        super().__init__(backbone, head, levels, size_ranges, center_radius, category_ids,
                         **inference)
        self.top, self.basis = top, basis
        self.set_panoptic(semantic, stuff_ids, sem_seg_weight, fusion)
        self.share_basis_features = share_basis_features
        self.blend_options = dict(resolution=blend_resolution, spatial_scale=1.0 / BASES_STRIDE,
                                  pooler=pooler, interpolation=attn_interpolation)
        self.basis_semantic_weight = basis_semantic_weight
        self.mask_loss_weight = mask_loss_weight

    def forward(self, images: Sequence[Tensor], targets: Optional[List[Dict]] = None,
                output_sizes: Optional[Sequence[Tuple[int, int]]] = None):
        """Train mode: the losses. Eval mode: one dict per image (module docstring), in the
        pixels of ``output_sizes`` (one (H, W) per image; default: the images' own sizes)."""
        x = self.features(images)                     # normalise, pad → ResNet-FPN → FCOS head
        bottom = self.basis(x.levels)                 # bottom module: bases (N, K, H/4, W/4)
        sem_seg_logits = self.semantic_logits(x, bottom)  # (N, 1 + S, H/4, W/4) or None
        if self.training:
            return self.losses(x, bottom, sem_seg_logits, require_targets(targets, "BlendMask"))
        detections = self.detect(x)                   # FCOS: threshold, top-k, NMS per image
        for i, (det, size) in enumerate(zip(detections, self.output_sizes(x, output_sizes))):
            det["attentions"] = self.attentions(x, det, i)                # (D, K·M·M)
            det["masks"] = self.masks(bottom, det, i, x.sizes[i], size)   # (D, 1, H, W)
            det["boxes"] = scale_boxes(det["boxes"], x.sizes[i], size)    # the boxes pasted in
            if sem_seg_logits is not None:
                det["sem_seg"] = self.semantic_map(x, sem_seg_logits, i, size)  # (1 + S, H, W)
                det["panoptic"] = self.fuse_panoptic(det["masks"], det["scores"],
                                                     det["labels"], det["sem_seg"])
        return detections

    # ------------------------------------------------------------------ stages, both modes

    def semantic_logits(self, x: Features, bottom: Dict[str, Tensor]) -> Optional[Tensor]:
        """Panoptic-FPN's semantic head on P2–P5 (or on the bottom module's fused features):
        (N, 1 + S, H/4, W/4) logits, or None for a model without the panoptic extension."""
        if self.semantic is None:
            return None
        if self.share_basis_features:
            return self.semantic(bottom["fused"])
        return self.semantic([x.pyramid[f"p{level}"] for level in SEMANTIC_LEVELS])

    # ------------------------------------------------------------------ inference stages

    def attentions(self, x: Features, det: Dict[str, Tensor], i: int) -> Tensor:
        """The top module at image ``i``'s kept detections only, not at every location
        (DESIGN §3): (D, K·M·M), K-major."""
        image_index = torch.full_like(det["locations_index"], i)
        return self.top.at_locations(x.head["box_tower"], image_index, det["locations_index"])

    def masks(self, bottom: Dict[str, Tensor], det: Dict[str, Tensor], i: int,
              size: Tuple[int, int], output_size: Optional[Tuple[int, int]] = None) -> Tensor:
        """The blender: image ``i``'s bases cropped by its boxes (in the pixels of its ``size``,
        clipped), merged by the detections' attentions, sigmoid, pasted into an image of
        ``output_size`` (default ``size``) with the boxes rescaled to it: (D, 1, H, W)."""
        image_index = torch.full_like(det["locations_index"], i)
        return postprocess_masks(bottom["bases"], det["attentions"], det["boxes"], image_index,
                                 size, **self.blend_options, output_size=output_size)

    def semantic_map(self, x: Features, sem_seg_logits: Tensor, i: int,
                     output_size: Optional[Tuple[int, int]] = None) -> Tensor:
        """Image ``i``'s semantic probabilities at its own size, or resized (as logits) to
        ``output_size``: (1 + S, H, W)."""
        return semantic_inference(sem_seg_logits[i], x.sizes[i], x.batch.shape[-2:],
                                  output_size=output_size)

    def bases_of(self, images: Sequence[Tensor]) -> List[Tensor]:
        """Each image's K bases without the batch padding, (K, ⌈H/4⌉, ⌈W/4⌉): the first two
        stages alone, for pictures of what the bottom module learnt."""
        x = self.features(images)
        bases = self.basis(x.levels)["bases"]  # (N, K, H_pad/4, W_pad/4)
        return [bases[i, :, : -(-h // BASES_STRIDE), : -(-w // BASES_STRIDE)]
                for i, (h, w) in enumerate(x.sizes)]

    # ------------------------------------------------------------------ training stages

    def losses(self, x: Features, bottom: Dict[str, Tensor], sem_seg_logits: Optional[Tensor],
               targets: List[Dict]) -> Dict[str, Tensor]:
        """Every training loss of a batch, in the order the paper adds them."""
        fcos_targets = self.assign(x.locations, targets)
        losses, extras = self.detector_losses(x.head, fcos_targets)  # focal, GIoU, centerness
        losses["loss_mask"] = self.mask_loss(x, bottom, fcos_targets, extras, targets)
        if bottom.get("thing_logits") is not None:
            losses["loss_basis_sem"] = self.thing_semantic_loss(x, bottom, targets)
        if sem_seg_logits is not None:
            losses["loss_sem_seg"] = self.panoptic_semantic_loss(sem_seg_logits, targets)
        return losses

    def mask_loss(self, x: Features, bottom: Dict[str, Tensor], fcos_targets: FCOSTargets,
                  extras: Dict[str, Tensor], targets: List[Dict]) -> Tensor:
        """``loss_mask``: every FCOS positive blends the bases cropped by its GT box with its
        own attention (the top module runs at the P positives only)."""
        positives = extras["pos_index"]  # (P,) in the batch order (level, image, location)
        image_index, location_index = split_batch_index(
            positives, [len(loc) for loc in x.locations], len(targets))
        chosen = self.top.at_locations(x.head["box_tower"], image_index, location_index)  # (P, K·M·M)
        all_attentions = sum(p.sum() for p in self.top.parameters())  # a (zero) gradient if P = 0
        return self.mask_loss_weight * blend_training_loss(
            bottom["bases"], chosen, fcos_targets.gt_index[positives],
            [t["boxes"] for t in targets], [t["masks"] for t in targets],
            fcos_targets.centerness[positives], extras["loss_denorm"],
            all_attentions=all_attentions, **self.blend_options)

    def thing_semantic_loss(self, x: Features, bottom: Dict[str, Tensor],
                            targets: List[Dict]) -> Tensor:
        """``loss_basis_sem``: the bottom module's auxiliary thing-semantic head on P3."""
        semantic = thing_semantic_targets([t["masks"] for t in targets],
                                          [t["labels"] for t in targets], x.batch.shape[-2:])
        return basis_semantic_loss(bottom["thing_logits"], semantic, self.basis_semantic_weight)


def build_model(cfg: Config) -> nn.Module:
    """The model of a config: ``build_model(get_config("tiny"))`` for the CPU preset,
    ``build_model(get_config("coco_r50_3x"))`` for the paper's R-50 model. A config with
    ``arch="mask_rcnn"`` gives BlendMask's counterpart instead (``mask_rcnn.build_mask_rcnn``:
    ``get_config("tiny_mask_rcnn")``)."""
    if cfg.arch == "mask_rcnn":
        return build_mask_rcnn(cfg)
    if cfg.arch != "blendmask":
        raise ValueError(f"arch={cfg.arch!r}: expected 'blendmask' or 'mask_rcnn'")
    p, m = cfg.panoptic, cfg.blendmask
    own_semantic_head = p.enabled and not p.share_basis_features
    fcos = build_fcos(cfg, extra_levels=SEMANTIC_LEVELS if own_semantic_head else ())
    top = TopModule(fcos.head.out_channels, num_bases=m.num_bases, attn_size=m.attn_size)
    basis = BasisModule(cfg.backbone.fpn_channels, num_bases=m.num_bases, channels=m.basis_channels,
                        num_convs=m.basis_convs, norm=m.basis_norm,
                        semantic_classes=cfg.num_classes + 1 if m.basis_semantic else None,
                        semantic_channels=m.basis_semantic_channels)
    semantic = None
    if p.enabled:  # built last, so that the other modules' initial weights do not change
        if not p.stuff_ids:
            raise ValueError("panoptic.enabled needs panoptic.stuff_ids, the dataset's stuff "
                             "category ids (train and demo take them from the panoptic JSON)")
        if p.share_basis_features:
            semantic = SemanticHead(m.basis_channels, 1 + len(p.stuff_ids), channels=p.head_channels,
                                    norm=p.head_norm, shared=True)
        else:
            semantic = SemanticHead(cfg.backbone.fpn_channels, 1 + len(p.stuff_ids),
                                    channels=p.head_channels,
                                    strides=[2 ** level for level in SEMANTIC_LEVELS],
                                    norm=p.head_norm)
    return BlendMask(fcos.backbone, fcos.head, top, basis, cfg.backbone.levels, fcos.size_ranges,
                     fcos.center_radius, fcos.category_ids.tolist(),
                     blend_resolution=m.blend_resolution, pooler=m.pooler,
                     attn_interpolation=m.attn_interpolation,
                     basis_semantic_weight=m.basis_semantic_weight,
                     mask_loss_weight=m.mask_loss_weight, semantic=semantic,
                     stuff_ids=p.stuff_ids if p.enabled else (),
                     share_basis_features=p.share_basis_features, sem_seg_weight=p.loss_weight,
                     fusion=dict(score_thresh=p.score_thresh, overlap_thresh=p.overlap_thresh,
                                 stuff_area=p.stuff_area) if p.enabled else None,
                     channels_last=fcos.channels_last, **fcos.inference)
