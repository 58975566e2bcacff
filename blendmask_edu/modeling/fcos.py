"""FCOS, the one-stage anchor-free detector BlendMask is built on (docs/model.md §2).

Every feature cell of every FPN level is a *location*. A location inside an object (near its
centre, on the level matching the object's size) is a *positive*: it predicts the object's
class, the distances (l, t, r, b) from itself to the four box sides, and a "centerness" that
down-weights locations far from the centre. The BlendMask top module later reads the same
box-tower features, so the head exposes them.

This module holds the geometry (locations, target assignment, box coding) as pure functions,
and the head (``FCOSHead``). The losses are in ``fcos_loss.py``, post-processing in
``fcos_inference.py``. Introduced in ``notebooks/01_fcos.ipynb``.

Ordering (docs/model.md §2, pitfall 15): whenever locations of a batch are flattened, the order is
**level-major, then image, then row-major (y, x)**; ``flatten_predictions`` and
``assign_batch_targets`` both produce it, so predictions and targets line up row for row.

Regression is in **stride units**: targets are (l, t, r, b) / s, the head predicts
ReLU(conv(·)) and decoding multiplies by s (docs/model.md §2, pitfall 9).
"""

from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from blendmask_edu.config import FCOSConfig
from blendmask_edu.modeling.layers import conv_norm_relu

__all__ = [
    "FCOSHead", "FCOSTargets", "assign_batch_targets", "assign_targets", "centerness_targets",
    "compute_locations",
    "decode_boxes", "flatten_predictions", "location_strides",
    "size_ranges_from_sizes", "split_batch_index",
]

INF = 1e8  # upper bound of the last level's size range (docs/model.md §2)


class FCOSTargets(NamedTuple):
    """Training targets of FCOS for L locations (one image, or a batch: ``assign_batch_targets``).

    labels       (L,)   int64   class index 0..C-1 for positives, -1 for background
    reg_targets  (L, 4) float32 (l, t, r, b) / stride for positives, 0 for background
    centerness   (L,)   float32 sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) for positives, else 0
    gt_index     (L,)   int64   index of the assigned GT box (per image, or batch-wide), -1 if none
    num_gts      int            number of GT boxes the indices refer to

    Differs from AdelaiDet: background is -1 (not C) so that ``labels >= 0`` is the positive
    mask whatever C is; background regression targets are 0 instead of an arbitrary GT's.
    """

    labels: Tensor
    reg_targets: Tensor
    centerness: Tensor
    gt_index: Tensor
    num_gts: int


def compute_locations(feature_shapes: Sequence[Tuple[int, int]], strides: Sequence[int],
                      device=None) -> List[Tensor]:
    """The (x, y) pixel centre of every feature cell, one tensor per level.

    Cell (i, j) of a level with stride s sits at (j·s + ⌊s/2⌋, i·s + ⌊s/2⌋) in padded-input
    pixels (docs/model.md §2, pitfall 17). Returns per level a float32 tensor (h·w, 2), row-major.
    """
    locations = []
    for (h, w), s in zip(feature_shapes, strides):
        xs = torch.arange(w, dtype=torch.float32, device=device) * s + s // 2
        ys = torch.arange(h, dtype=torch.float32, device=device) * s + s // 2
        y, x = torch.meshgrid(ys, xs, indexing="ij")  # (h, w) each
        locations.append(torch.stack([x.reshape(-1), y.reshape(-1)], dim=1))  # (h·w, 2)
    return locations


def size_ranges_from_sizes(sizes_of_interest: Sequence[float]) -> List[Tuple[float, float]]:
    """Per-level ranges of max(l, t, r, b) from the level boundaries (``SIZES_OF_INTEREST``).

    ``[64, 128, 256, 512]`` → ``[(-1, 64), (64, 128), (128, 256), (256, 512), (512, 1e8)]``.
    """
    bounds = [-1.0, *map(float, sizes_of_interest), INF]
    return list(zip(bounds[:-1], bounds[1:]))


def location_strides(num_locations_per_level: Sequence[int], strides: Sequence[int],
                     device=None) -> Tensor:
    """The stride of every location of one image, level-major: float32 (L,)."""
    counts = torch.as_tensor(list(num_locations_per_level), device=device)
    values = torch.as_tensor([float(s) for s in strides], device=device)
    return values.repeat_interleave(counts)


def assign_targets(locations: Sequence[Tensor], strides: Sequence[int],
                   size_ranges: Sequence[Tuple[float, float]], boxes: Tensor, labels: Tensor,
                   center_radius: Optional[float] = 1.5) -> FCOSTargets:
    """FCOS targets of ONE image (docs/model.md §2), vectorised over locations × GTs.

    locations   list over levels of (L_l, 2) (x, y), from ``compute_locations``
    strides     stride s_k of each level
    size_ranges (lo_k, hi_k) of each level, in pixels (``size_ranges_from_sizes``)
    boxes       (G, 4) xyxy pixels;  labels (G,) int64 class indices 0..C-1
    Returns ``FCOSTargets`` over L = Σ L_l locations, level-major.

    For location (x, y) and GT box (x0, y0, x1, y1):
      1. l = x − x0, t = y − y0, r = x1 − x, b = y1 − y;
      2. centre sampling: the GT's region on level k is [cx ± ρ·s_k] × [cy ± ρ·s_k] around the
         box centre, clipped to the box; the location must be strictly inside it (all four
         distances to the region's sides > 0). ``center_radius=None`` turns it off (the FCOS
         paper's original rule: strictly inside the box);
      3. lo_k ≤ max(l, t, r, b) ≤ hi_k (both bounds inclusive, so a location whose largest
         distance is exactly 64 px qualifies on P3 and on P4);
      4. among the GTs that qualify, the smallest box area wins (equal areas: lowest index).
    Regression targets are (l, t, r, b) / s_k; centerness = sqrt(min(l,r)/max(l,r) ·
    min(t,b)/max(t,b)). Empty or inverted boxes have an empty region and never get positives.

    Differs from AdelaiDet: background is -1 (not C); gt_index is per image; the official
    helper's quirk (no positive at all when the first object's centre x is exactly 0) is not
    reproduced. Computed by :func:`assign_batch_targets` for a batch of one image (whose batch
    order is the image's own).
    """
    return assign_batch_targets(locations, strides, size_ranges, [boxes], [labels], center_radius)


ASSIGN_CHUNK = 2 ** 22  # at most this many location × GT pairs at once (a dozen (n, L, G) tensors)


def assign_batch_targets(locations: Sequence[Tensor], strides: Sequence[int],
                         size_ranges: Sequence[Tuple[float, float]],
                         boxes_per_image: Sequence[Tensor], labels_per_image: Sequence[Tensor],
                         center_radius: Optional[float] = 1.5) -> FCOSTargets:
    """FCOS targets of a batch in the batch order: :func:`assign_targets` of every image, laid
    out level by level, then image by image, computed for many images at once.

    locations, strides, size_ranges as for :func:`assign_targets` (one padded size per batch)
    boxes_per_image   N × (G_i, 4) xyxy pixels;  labels_per_image  N × (G_i,) int64
    Returns ``FCOSTargets`` over N·L locations, level-major, then image; ``gt_index`` indexes
    the batch-wide concatenation of the GT lists.

    The images' GT lists are padded to the longest, G, and the rules of :func:`assign_targets`
    run on (n, L, G) tensors, padding never a candidate: the same numbers as image by image,
    with a dozen tensor operations per batch instead of per image. Images go in chunks of at
    most ``ASSIGN_CHUNK`` location × GT pairs, so a COCO batch (L ≈ 20 000 at 800 × 1333, G up
    to a hundred) stays within a few hundred MB.
    """
    device = locations[0].device
    points = torch.cat(list(locations), dim=0).float()  # (L, 2)
    counts = [len(p) for p in locations]
    stride = location_strides(counts, strides, device)  # (L,)
    ranges = torch.as_tensor([[float(lo), float(hi)] for lo, hi in size_ranges], device=device)
    lo, hi = ranges.repeat_interleave(torch.as_tensor(counts, device=device), dim=0).unbind(1)
    boxes = [b.to(device=device, dtype=torch.float32).reshape(-1, 4) for b in boxes_per_image]
    labels = [c.to(device=device, dtype=torch.int64).reshape(-1) for c in labels_per_image]
    num_gts = [len(b) for b in boxes]
    chunks = [_assign_chunk(points, stride, lo, hi, boxes[i:j], labels[i:j], center_radius)
              for i, j in _image_chunks(num_gts, len(points))]
    fields = [torch.cat(field) for field in zip(*chunks)]  # (N, L), (N, L, 4), (N, L), (N, L)
    return _in_batch_order(*fields, num_gts, counts)


def _image_chunks(num_gts: Sequence[int], num_locations: int) -> List[Tuple[int, int]]:
    """[(first, end), ...] runs of images whose padded (n, L, G) pairs stay within
    ``ASSIGN_CHUNK`` (at least one image per run)."""
    runs, first, longest = [], 0, 0
    for i, g in enumerate(num_gts):
        longest = max(longest, g)
        if i > first and (i + 1 - first) * num_locations * longest > ASSIGN_CHUNK:
            runs.append((first, i))
            first, longest = i, g
    return runs + [(first, len(num_gts))]


def _assign_chunk(points: Tensor, stride: Tensor, lo: Tensor, hi: Tensor,
                  boxes: Sequence[Tensor], labels: Sequence[Tensor],
                  center_radius: Optional[float]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The rules of :func:`assign_targets` for n images at once: points (L, 2), stride, lo, hi
    (L,), n × (G_i, 4) boxes and (G_i,) labels → per image labels (n, L), reg_targets
    (n, L, 4), centerness (n, L) and gt_index (n, L) within the image."""
    count, num_locs = len(boxes), points.shape[0]
    longest = max(len(b) for b in boxes)
    if longest == 0:
        return (torch.full((count, num_locs), -1, dtype=torch.int64, device=points.device),
                points.new_zeros(count, num_locs, 4), points.new_zeros(count, num_locs),
                torch.full((count, num_locs), -1, dtype=torch.int64, device=points.device))
    # padded with the box (0, 0, 0, 0): its region is empty, so it is never a candidate
    padded = pad_sequence(list(boxes), batch_first=True)  # (n, G, 4)
    padded_labels = pad_sequence(list(labels), batch_first=True, padding_value=-1)  # (n, G)

    x, y = points[None, :, 0:1], points[None, :, 1:2]  # (1, L, 1) each
    x0, y0, x1, y1 = padded[:, None, :, :].unbind(3)  # (n, 1, G) each
    l, t, r, b = x - x0, y - y0, x1 - x, y1 - y  # (n, L, G) each

    if center_radius is None:
        inside = (x > x0) & (x < x1) & (y > y0) & (y < y1)  # (n, L, G)
    else:
        radius = center_radius * stride[None, :, None]  # (1, L, 1)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2  # (n, 1, G)
        rx0, ry0 = torch.maximum(cx - radius, x0), torch.maximum(cy - radius, y0)  # (n, L, G)
        rx1, ry1 = torch.minimum(cx + radius, x1), torch.minimum(cy + radius, y1)
        # all four distances to the region > 0; the region lies inside the box, so this also
        # means "strictly inside the box"
        inside = (x > rx0) & (x < rx1) & (y > ry0) & (y < ry1)  # (n, L, G)

    max_dist = torch.maximum(torch.maximum(l, t), torch.maximum(r, b))  # (n, L, G)
    in_range = (max_dist >= lo[None, :, None]) & (max_dist <= hi[None, :, None])
    candidate = inside & in_range  # (n, L, G)

    # finite for every box, so that a candidate always beats a non-candidate (+inf)
    area = ((x1 - x0) * (y1 - y0)).clamp(max=torch.finfo(torch.float32).max)  # (n, 1, G)
    area = torch.where(candidate, area, torch.full_like(max_dist, math.inf))  # (n, L, G)
    best = area.argmin(dim=2, keepdim=True)  # (n, L, 1) first index among equal areas
    positive = candidate.gather(2, best).squeeze(2)  # (n, L)

    chosen = torch.cat([d.gather(2, best) for d in (l, t, r, b)], dim=2)  # (n, L, 4)
    chosen = torch.where(positive[..., None], chosen, torch.zeros_like(chosen))
    centerness = centerness_targets(chosen.reshape(-1, 4)).view(count, num_locs)
    centerness = torch.where(positive, centerness, torch.zeros_like(centerness))
    best = best.squeeze(2)  # (n, L)
    background = torch.full_like(best, -1)
    return (torch.where(positive, padded_labels.gather(1, best), background),
            chosen / stride[None, :, None], centerness,
            torch.where(positive, best, background))


def centerness_targets(reg_targets: Tensor) -> Tensor:
    """FCOS's centerness of each location from its distances to the box sides.

    reg_targets (P, 4) = (l, t, r, b), ≥ 0, in any one unit (pixels or strides: the ratio is
    the same). Returns (P,) sqrt(min(l, r)/max(l, r) · min(t, b)/max(t, b)) in 0..1: 1 at the
    box centre, falling to 0 at its sides; 0 for an all-zero row.
    """
    left_right, top_bottom = reg_targets[:, [0, 2]], reg_targets[:, [1, 3]]  # (P, 2) each
    ratio = (left_right.amin(1) / left_right.amax(1).clamp_min(1e-12)
             * top_bottom.amin(1) / top_bottom.amax(1).clamp_min(1e-12))  # (P,)
    return ratio.clamp_min(0).sqrt()


def _in_batch_order(labels: Tensor, reg_targets: Tensor, centerness: Tensor, gt_index: Tensor,
                    num_gts: Sequence[int], num_locations_per_level: Sequence[int]) -> FCOSTargets:
    """Per-image fields (N, L) / (N, L, 4), ``gt_index`` within each image → ``FCOSTargets``
    over N·L rows in the batch order, ``gt_index`` shifted by the GTs of the images before."""
    offsets = torch.as_tensor([0, *num_gts[:-1]], device=gt_index.device).cumsum(0)  # (N,)
    gt_index = torch.where(gt_index >= 0, gt_index + offsets[:, None], gt_index)
    sizes = list(num_locations_per_level)

    def ordered(field: Tensor) -> Tensor:  # (N, L, …) → (N·L, …): level, then image
        return torch.cat([part.reshape(-1, *field.shape[2:]) for part in field.split(sizes, 1)])

    return FCOSTargets(ordered(labels), ordered(reg_targets), ordered(centerness),
                       ordered(gt_index), num_gts=sum(num_gts))


def split_batch_index(index: Tensor, num_locations_per_level: Sequence[int],
                      num_images: int) -> Tuple[Tensor, Tensor]:
    """Batch-order location indices (level, image, y, x) → (image index, index in that image's
    own level-major locations), both (P,) int64 — the inverse of the batch order."""
    sizes = torch.as_tensor(list(num_locations_per_level), device=index.device)  # (levels,)
    starts = torch.cumsum(sizes, 0) - sizes  # first location of each level in one image
    batch_starts = starts * num_images  # first location of each level in the batch order
    level = torch.searchsorted(batch_starts, index, right=True) - 1  # (P,)
    within = index - batch_starts[level]
    image = within // sizes[level]
    return image, starts[level] + within % sizes[level]


def flatten_predictions(per_level: Sequence[Tensor]) -> Tensor:
    """Per-level maps (N, X, h, w) → (N·L, X) in the batch order (level, image, y, x)."""
    return torch.cat([p.permute(0, 2, 3, 1).reshape(-1, p.shape[1]) for p in per_level], dim=0)


def _stride_column(strides: Union[Tensor, float], like: Tensor) -> Tensor:
    s = torch.as_tensor(strides, dtype=like.dtype, device=like.device)
    return s[:, None] if s.dim() == 1 else s


def decode_boxes(locations: Tensor, ltrb: Tensor, strides: Union[Tensor, float]) -> Tensor:
    """(l, t, r, b) in stride units (L, 4) at locations (L, 2) → xyxy boxes (L, 4).

    Box = (x − l·s, y − t·s, x + r·s, y + b·s) (docs/model.md §2). ``strides`` is (L,) or a scalar.
    """
    dist = ltrb * _stride_column(strides, ltrb)
    x, y = locations[:, 0].to(dist.dtype), locations[:, 1].to(dist.dtype)
    return torch.stack([x - dist[:, 0], y - dist[:, 1], x + dist[:, 2], y + dist[:, 3]], dim=1)


def _tower(num_convs: int, in_channels: int, channels: int, norm: str) -> nn.Sequential:
    """``num_convs`` conv-norm-ReLU blocks as one flat Sequential (conv, norm, ReLU, conv, …),
    the layout the checkpoints' parameter names follow (``cls_tower.0.weight``, …)."""
    blocks = [conv_norm_relu(in_channels if i == 0 else channels, channels, norm, bias=True)
              for i in range(num_convs)]
    return nn.Sequential(*[layer for block in blocks for layer in block])


class FCOSHead(nn.Module):
    """The FCOS head, shared by all FPN levels (docs/model.md §2).

    shared tower (``num_shared_convs`` blocks, 0 by default; the RT variant's merged tower)
    then cls tower → cls_logits (C) and box tower → bbox_pred (4, ReLU) and centerness (1).
    A block is 3×3 conv (with bias) → norm → ReLU. All convs ~ N(0, 0.01²), bias 0; the
    classification bias is −log((1 − π)/π) so that every location starts at p = π (≈ −4.595 for
    π = 0.01). No per-level Scale and no exp: BlendMask sets ``USE_SCALE=False``.

    forward(features: list of (N, C_in, h, w)) → dict of per-level lists:
      cls_logits (N, C, h, w) · bbox_reg (N, 4, h, w) in stride units, ≥ 0 ·
      centerness (N, 1, h, w) logits · box_tower (N, channels, h, w), the features the
      BlendMask top module reads.

    Differs from AdelaiDet: with ``norm="BN"`` one BatchNorm is shared by all levels; with GN,
    the group count falls to a divisor of the channels when 32 does not divide them
    (``layers.make_norm``).
    """

    def __init__(self, in_channels: int, num_classes: int, num_convs: int = FCOSConfig.num_convs,
                 channels: Optional[int] = None, norm: str = FCOSConfig.head_norm,
                 prior_prob: float = FCOSConfig.prior_prob, num_shared_convs: int = 0):
        super().__init__()
        channels = in_channels if channels is None else channels
        self.num_classes = num_classes
        self.shared_tower = _tower(num_shared_convs, in_channels, channels, norm)
        tower_in = channels if num_shared_convs > 0 else in_channels
        self.cls_tower = _tower(num_convs, tower_in, channels, norm)
        self.box_tower = _tower(num_convs, tower_in, channels, norm)
        out = channels if num_convs > 0 else tower_in
        self.out_channels = out  # channels of the box tower output
        self.cls_logits = nn.Conv2d(out, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(out, 4, 3, padding=1)
        self.centerness = nn.Conv2d(out, 1, 3, padding=1)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: Sequence[Tensor]) -> Dict[str, List[Tensor]]:
        out: Dict[str, List[Tensor]] = {"cls_logits": [], "bbox_reg": [], "centerness": [],
                                        "box_tower": []}
        for feature in features:
            shared = self.shared_tower(feature)
            cls_features, box_features = self.cls_tower(shared), self.box_tower(shared)
            out["cls_logits"].append(self.cls_logits(cls_features))  # (N, C, h, w)
            out["bbox_reg"].append(torch.relu(self.bbox_pred(box_features)))  # (N, 4, h, w)
            out["centerness"].append(self.centerness(box_features))  # (N, 1, h, w)
            out["box_tower"].append(box_features)  # (N, channels, h, w)
        return out
