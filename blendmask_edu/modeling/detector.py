"""FCOS, the detector BlendMask is built on, as named stages (notebook 01); ``build_fcos(cfg)``.

Both detectors of the package follow torchvision's detection convention (DESIGN §4): in train
mode ``model(images, targets)`` returns a dict of scalar losses; in eval mode ``model(images)``
returns one dict per image with ``boxes`` [D, 4] xyxy in the input image's pixels, ``scores``
[D] and ``labels`` [D] (the dataset's category ids). Images are a list of [3, H, W] floats in
0..1 of any sizes: the model normalises and pads them to a multiple of 32 itself, and never
resizes. ``model(images, output_sizes=[(H, W), …])`` answers in the pixels of those sizes
instead (the boxes rescaled, BlendMask's masks pasted there): ``evaluation.inference.detect``
passes the original sizes of images it resized for the test, as torchvision's detectors do with
their ``original_image_sizes``.

The stages are methods, so that a notebook, a test or the benchmark can run them one at a time:

    features(images)            the next three, in order, as one ``Features``:
      preprocess(images)        normalise + pad to a multiple of 32
      backbone(batch)           ResNet-FPN: {"p3": …, …}
      run_head(batch, sizes, pyramid)   the FCOS head on its levels, and their locations
    assign(locations, targets)  FCOS targets of every location (training)
    detector_losses(head, t)    focal + GIoU + centerness losses (training)
    detect(features)            score threshold, top-k, NMS per image (inference)

``build_fcos(cfg)`` and ``blendmask.build_model(cfg)`` are the one place that reads a config.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from blendmask_edu.config import Config
from blendmask_edu.modeling.backbone import IMAGENET_MEAN, IMAGENET_STD, build_resnet_fpn
from blendmask_edu.modeling.blender import scale_boxes
from blendmask_edu.modeling.fcos import (FCOSHead, FCOSTargets, assign_batch_targets,
                                         compute_locations, flatten_predictions,
                                         size_ranges_from_sizes)
from blendmask_edu.modeling.fcos_inference import fcos_postprocess
from blendmask_edu.modeling.fcos_loss import fcos_losses

SIZE_DIVISIBILITY = 32  # the largest backbone stride: padded sizes divide evenly at every level


class Features(NamedTuple):
    """What the trunk and the FCOS head compute for a batch; every later stage reads it."""

    batch: Tensor                    # (N, 3, H, W) normalised, zero-padded to a multiple of 32
    sizes: List[Tuple[int, int]]     # (H_i, W_i) of each image inside the padded batch
    pyramid: Dict[str, Tensor]       # every level the FPN builds: "p2".. → (N, c, H/s, W/s)
    levels: List[Tensor]             # the FCOS levels (P3 … by default), finest first
    head: Dict[str, List[Tensor]]    # per FCOS level: cls_logits, bbox_reg, centerness, box_tower
    locations: List[Tensor]          # per FCOS level (h·w, 2) (x, y) location centres in pixels


def normalize_and_pad(images: Sequence[Tensor], mean: Tensor, std: Tensor,
                      divisor: int = SIZE_DIVISIBILITY) -> Tuple[Tensor, List[Tuple[int, int]]]:
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


def require_targets(targets: Optional[List[Dict]], model: str) -> List[Dict]:
    """``targets``, or a ValueError that says how to predict instead."""
    if targets is None:
        raise ValueError(f"{model} in train mode needs targets; call model.eval() to predict")
    return targets


class FCOS(nn.Module):
    """FCOS (Tian et al., 2019) as BlendMask configures it (docs/model.md §1–2), without a mask
    branch.

    backbone        ``ResNetFPN``; it may build more levels than the head reads (P2 for a
                    semantic head)
    head            ``FCOSHead``, run on the pyramid levels ``levels`` (e.g. (3, 4, 5, 6, 7))
    size_ranges     one (lo, hi] object-size range per level; center_radius in strides
    category_ids    dataset id of each contiguous class 0..C-1
    score_thresh, pre_nms_topk, nms_thresh, max_detections   inference (``FCOSConfig``)
    channels_last   "eval" | "always" | "never": when the weights and the batch are
                    channels-last (NHWC), a layout every later layer then keeps; the weights
                    turn in ``model.train(mode)`` / ``model.eval()``, the batch in
                    ``preprocess`` (``FCOSConfig.channels_last``). The numbers are the same up
                    to float rounding (the sums inside a convolution run in another order).
    """

    def __init__(self, backbone: nn.Module, head: FCOSHead, levels: Sequence[int], size_ranges,
                 center_radius: float, category_ids: Sequence[int], *, score_thresh: float,
                 pre_nms_topk: int, nms_thresh: float, max_detections: int,
                 channels_last: str = "eval"):
        super().__init__()
        if channels_last not in ("eval", "always", "never"):
            raise ValueError(f"channels_last must be 'eval', 'always' or 'never', "
                             f"not {channels_last!r}")
        self.channels_last = channels_last
        self.backbone, self.head = backbone, head
        self.level_names = [f"p{level}" for level in levels]
        missing = sorted(set(self.level_names) - set(backbone.level_names))
        if missing:
            raise ValueError(f"the head reads {missing}, which the backbone "
                             f"({backbone.level_names}) does not build")
        self.strides = [2 ** int(level) for level in levels]
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

    def train(self, mode: bool = True) -> "FCOS":
        """``nn.Module.train``, and the 4-D weights in the layout of the mode: channels-last
        for ``channels_last="always"``, and for ``"eval"`` in eval mode. Returns the model."""
        super().train(mode)
        if self.channels_last != "never":
            nhwc = self.channels_last == "always" or not mode
            self.to(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
        return self

    def forward(self, images: Sequence[Tensor], targets: Optional[List[Dict]] = None,
                output_sizes: Optional[Sequence[Tuple[int, int]]] = None):
        x = self.features(images)
        if self.training:
            fcos_targets = self.assign(x.locations, require_targets(targets, "FCOS"))
            return self.detector_losses(x.head, fcos_targets)[0]
        detections = self.detect(x)
        for i, (det, size) in enumerate(zip(detections, self.output_sizes(x, output_sizes))):
            det["boxes"] = scale_boxes(det["boxes"], x.sizes[i], size)
        return detections

    @staticmethod
    def output_sizes(x: Features, output_sizes: Optional[Sequence[Tuple[int, int]]] = None
                     ) -> List[Tuple[int, int]]:
        """The (H, W) of each image to answer in: ``output_sizes``, or the images' own sizes."""
        if output_sizes is None:
            return list(x.sizes)
        if len(output_sizes) != len(x.sizes):
            raise ValueError(f"{len(output_sizes)} output sizes for {len(x.sizes)} images")
        return [(int(h), int(w)) for h, w in output_sizes]

    def features(self, images: Sequence[Tensor]) -> Features:
        """Stage 1: normalise and pad → ResNet-FPN → the FCOS head on its levels → locations."""
        batch, sizes = self.preprocess(images)
        return self.run_head(batch, sizes, self.backbone(batch))

    def preprocess(self, images: Sequence[Tensor]) -> Tuple[Tensor, List[Tuple[int, int]]]:
        """N × [3, H_i, W_i] in 0..1 → (batch (N, 3, H, W) normalised and padded, sizes); the
        batch channels-last when ``channels_last`` says so in this mode (the same numbers)."""
        batch, sizes = normalize_and_pad(images, self.pixel_mean, self.pixel_std)
        if self.channels_last == "always" or (self.channels_last == "eval" and not self.training):
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch, sizes

    def run_head(self, batch: Tensor, sizes: List[Tuple[int, int]],
                 pyramid: Dict[str, Tensor]) -> Features:
        """The FCOS head on its pyramid levels, and the levels' locations."""
        levels = [pyramid[name] for name in self.level_names]  # (N, c, H/s, W/s) each
        locations = compute_locations([f.shape[-2:] for f in levels], self.strides,
                                      device=batch.device)
        return Features(batch, sizes, pyramid, levels, self.head(levels), locations)

    def assign(self, locations: Sequence[Tensor], targets: List[Dict]) -> FCOSTargets:
        """FCOS targets of the batch, level-major then image (docs/model.md §2, pitfall 15)."""
        return assign_batch_targets(locations, self.strides, self.size_ranges,
                                    [t["boxes"] for t in targets], [t["labels"] for t in targets],
                                    self.center_radius)

    def detector_losses(self, head: Dict[str, List[Tensor]], fcos_targets: FCOSTargets):
        """(the three FCOS losses, extras): the extras (normaliser, positives) are what the
        mask loss reuses; see ``fcos_loss.fcos_losses``."""
        return fcos_losses(flatten_predictions(head["cls_logits"]),
                           flatten_predictions(head["bbox_reg"]),
                           flatten_predictions(head["centerness"]).squeeze(1),
                           fcos_targets, self.num_classes, reduce_mean=self.reduce_mean)

    def detect(self, x: Features) -> List[Dict[str, Tensor]]:
        """Per image: ``boxes`` [D, 4] (clipped), ``scores`` [D], ``labels`` [D] dataset ids,
        ``levels`` [D] and ``locations_index`` [D] (where each detection was predicted)."""
        head = x.head
        detections = fcos_postprocess(head["cls_logits"], head["bbox_reg"], head["centerness"],
                                      x.locations, self.strides, x.sizes, clip=True,
                                      **self.inference)
        for det in detections:
            det["labels"] = self.category_ids[det["labels"]]  # contiguous index → dataset id
        return detections


def build_fcos(cfg: Config, extra_levels: Sequence[int] = ()) -> FCOS:
    """The FCOS detector of a config (``get_config("tiny")`` for the CPU preset); the backbone
    also builds ``extra_levels`` (e.g. P2 for Panoptic-FPN's semantic head)."""
    b, f = cfg.backbone, cfg.fcos
    built = sorted(set(b.levels) | set(extra_levels))
    backbone = build_resnet_fpn(depth=b.depth, pretrained=b.pretrained, weights_path=b.weights_path,
                                frozen_stages=b.frozen_stages, norm=b.norm,
                                fpn_channels=b.fpn_channels, levels=built, width=b.width,
                                fold_frozen_bn=b.fold_frozen_bn)
    size_ranges = size_ranges_from_sizes(f.sizes_of_interest)
    if len(size_ranges) != len(b.levels):
        raise ValueError(f"fcos.sizes_of_interest gives {len(size_ranges)} size ranges for "
                         f"{len(b.levels)} FPN levels {tuple(b.levels)}; give one bound fewer "
                         f"than levels")
    head = FCOSHead(b.fpn_channels, cfg.num_classes, num_convs=f.num_convs,
                    channels=f.head_channels, norm=f.head_norm, prior_prob=f.prior_prob,
                    num_shared_convs=f.num_shared_convs)
    category_ids = cfg.category_ids or tuple(range(1, cfg.num_classes + 1))
    return FCOS(backbone, head, b.levels, size_ranges, f.center_radius, category_ids,
                score_thresh=f.score_thresh, pre_nms_topk=f.pre_nms_topk,
                nms_thresh=f.nms_thresh, max_detections=f.max_detections,
                channels_last=f.channels_last)
