"""The top module: an attention tensor K × M × M per location, from the FCOS box tower (spec §3).

The paper's "top layer" is a single 3×3 conv added to the FCOS head. It reads the box-tower
features of every FPN level (the same features that regress the box, after the tower's conv-norm-
ReLU blocks; ``FCOSHead`` returns them as ``box_tower``) with weights shared across levels, and
predicts at every location a vector of K·M·M numbers (4 · 14 · 14 = 784). Reshaped to
(K, M, M) it is a coarse M × M attention map per basis: where, inside the instance's box, each
of the K bases should count. The blender resizes it to R × R and soft-maxes it over K
(spec §5.2). Introduced in notebook 03 (the top module, attentions and the blender).

Channel layout is **K-major** (gotcha 16): channel k·M² + i·M + j is basis k, row i, column j,
so ``vector.reshape(K, M, M)`` gives the maps. No activation, no clamp (gotcha 2).

Two ways to read the per-level maps (N, K·M·M, h, w):
  ``flatten_attentions``  every location, in the FCOS batch order (training: the positives);
  ``gather_attentions``   only chosen locations (inference: the detections that survive NMS,
                          DESIGN §3 "carry indices, not features").
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor, nn

from .fcos import flatten_predictions

__all__ = ["TopModule", "flatten_attentions", "gather_attentions"]


class TopModule(nn.Module):
    """3×3 conv, stride 1, padding 1, in_channels → K·M·M, with bias; shared by all levels.

    in_channels  channels of the box tower (``FCOSHead.out_channels``; 256 in the paper)
    num_bases    K (4);  attn_size  M (14)
    Weights ~ N(0, 0.01²), bias 0 (spec §3), like the FCOS head's prediction convs.

    forward(box_tower: list of (N, in_channels, h, w)) → list of (N, K·M·M, h, w), K-major.
    """

    def __init__(self, in_channels: int, num_bases: int = 4, attn_size: int = 14):
        super().__init__()
        self.num_bases, self.attn_size = num_bases, attn_size
        self.out_channels = num_bases * attn_size * attn_size
        self.attn = nn.Conv2d(in_channels, self.out_channels, 3, stride=1, padding=1)
        nn.init.normal_(self.attn.weight, std=0.01)
        nn.init.zeros_(self.attn.bias)

    def forward(self, box_tower: Sequence[Tensor]) -> List[Tensor]:
        return [self.attn(features) for features in box_tower]  # (N, K·M·M, h, w) each


def flatten_attentions(attn_per_level: Sequence[Tensor]) -> Tensor:
    """Per-level maps (N, K·M·M, h, w) → (N·L, K·M·M) in the FCOS batch order (level, image, y, x).

    The same order as ``fcos.flatten_predictions`` and ``fcos.batch_targets`` (gotcha 15), so row
    p is the attention of the location whose targets are row p.
    """
    return flatten_predictions(attn_per_level)


def gather_attentions(attn_per_level: Sequence[Tensor], image_index: Tensor,
                      locations_index: Tensor) -> Tensor:
    """The attention vectors of D chosen locations, read straight from the per-level maps.

    attn_per_level   list over levels of (N, K·M·M, h_l, w_l)
    image_index      (D,) int64 image of each chosen location
    locations_index  (D,) int64 index in ONE image's level-major flattened locations
                     (0 ≤ index < L = Σ h_l·w_l), as ``fcos_postprocess`` returns it
    Returns (D, K·M·M), row d = ``flatten(image image_index[d])[locations_index[d]]``.

    Only D vectors per level are read (D·levels·K·M·M values), never all L·K·M·M: per level the
    index is turned into (y, x) — clamped so that every row reads something valid — and the
    rows that belong to the level are kept with ``torch.where``. No boolean indexing, hence no
    host–device synchronisation. An index ≥ L gives a row of zeros.
    """
    first = attn_per_level[0]
    image_index = image_index.to(device=first.device, dtype=torch.int64)
    locations_index = locations_index.to(device=first.device, dtype=torch.int64)
    out = first.new_zeros((locations_index.shape[0], first.shape[1]))  # (D, K·M·M)
    start = 0
    for attn in attn_per_level:
        h, w = attn.shape[-2:]
        local = locations_index - start  # (D,) index inside this level
        in_level = (local >= 0) & (local < h * w)  # (D,)
        local = local.clamp(0, h * w - 1)
        rows = attn[image_index, :, local // w, local % w]  # (D, K·M·M)
        out = torch.where(in_level[:, None], rows.to(out.dtype), out)
        start += h * w
    return out
