"""The top module: an attention tensor K × M × M per location, from the FCOS box tower
(docs/model.md §3).

The paper's "top layer" is a single 3×3 conv added to the FCOS head. It reads the box-tower
features of every FPN level (the same features that regress the box, after the tower's conv-norm-
ReLU blocks; ``FCOSHead`` returns them as ``box_tower``) with weights shared across levels, and
predicts at every location a vector of K·M·M numbers (4 · 14 · 14 = 784). Reshaped to
(K, M, M) it is a coarse M × M attention map per basis: where, inside the instance's box, each
of the K bases should count. The blender resizes it to R × R and soft-maxes it over K
(docs/model.md §5). Introduced in notebook 03 (the top module, attentions and the blender).

Channel layout is **K-major** (docs/model.md pitfall 16): channel k·M² + i·M + j is basis k,
row i, column j, so ``vector.reshape(K, M, M)`` gives the maps. No activation, no clamp
(docs/model.md pitfall 2).

Two ways to compute the same vectors, and a test (``tests/test_attention.py``) that they agree:
  ``TopModule.forward``        the definition: the dense conv, (N, K·M·M, h, w) at every location
                               of every level — what the paper draws, and what notebook 03 shows;
  ``TopModule.at_locations``   what the model runs (``attentions_at``): the conv evaluated only at
                               chosen locations — the ≤ 100 detections that survive NMS at
                               inference, the positives in training (DESIGN §3, "carry indices,
                               not features").
The dense conv is 784 output channels over every location of every level, at 512² about as much
work as three more convs of the FCOS tower, for vectors that are almost all thrown away.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blendmask_edu.config import BlendMaskConfig

__all__ = ["TopModule", "attention_maps", "attentions_at"]


class TopModule(nn.Module):
    """3×3 conv, stride 1, padding 1, in_channels → K·M·M, with bias; shared by all levels.

    in_channels  channels of the box tower (``FCOSHead.out_channels``; 256 in the paper)
    num_bases    K (4);  attn_size  M (14)
    Weights ~ N(0, 0.01²), bias 0 (docs/model.md §3), like the FCOS head's prediction convs.

    forward(box_tower: list of (N, in_channels, h, w)) → list of (N, K·M·M, h, w), K-major.
    """

    def __init__(self, in_channels: int, num_bases: int = BlendMaskConfig.num_bases,
                 attn_size: int = BlendMaskConfig.attn_size):
        super().__init__()
        self.num_bases, self.attn_size = num_bases, attn_size
        self.out_channels = num_bases * attn_size * attn_size
        self.attn = nn.Conv2d(in_channels, self.out_channels, 3, stride=1, padding=1)
        nn.init.normal_(self.attn.weight, std=0.01)
        nn.init.zeros_(self.attn.bias)

    def forward(self, box_tower: Sequence[Tensor]) -> List[Tensor]:
        return [self.attn(features) for features in box_tower]  # (N, K·M·M, h, w) each

    def at_locations(self, box_tower: Sequence[Tensor], image_index: Tensor,
                     locations_index: Tensor) -> Tensor:
        """(D, K·M·M): the rows of ``self(box_tower)`` at D chosen locations, computed only there
        (see :func:`attentions_at`)."""
        return attentions_at(box_tower, image_index, locations_index, self.attn.weight,
                             self.attn.bias)


def _level_positions(maps: Sequence[Tensor], locations_index: Tensor):
    """Walk the levels of D chosen locations: for each map (N, C, h, w) of the level-major list,
    yield (map, in_level (D,) bool, y (D,), x (D,)). A location of another level gets a clamped,
    valid (y, x), so every row can be read and then kept or dropped with ``torch.where``."""
    start = 0
    for level_map in maps:
        h, w = level_map.shape[-2:]
        local = locations_index - start  # (D,) index inside this level
        in_level = (local >= 0) & (local < h * w)  # (D,)
        local = local.clamp(0, h * w - 1)
        yield level_map, in_level, local // w, local % w
        start += h * w


def attention_maps(attentions: Tensor, num_bases: int) -> Tensor:
    """Each detection's flat attention vector as its K maps of M × M (the K-major layout).

    attentions (D, K·M·M), channel k·M² + i·M + j holding basis k, row i, column j.
    Returns the view (D, K, M, M). ValueError when K·M·M is not the channel count for an
    integer M.
    """
    m = math.isqrt(attentions.shape[1] // num_bases) if num_bases > 0 else 0
    if num_bases <= 0 or num_bases * m * m != attentions.shape[1]:
        raise ValueError(f"{attentions.shape[1]} attention channels are not K·M·M with "
                         f"K = {num_bases}")
    return attentions.reshape(attentions.shape[0], num_bases, m, m)


def attentions_at(box_tower: Sequence[Tensor], image_index: Tensor, locations_index: Tensor,
                  weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """A 3×3 conv (stride 1, zero padding 1) evaluated only at D chosen locations.

    box_tower        list over levels of (N, C_in, h_l, w_l), the conv's input
    image_index      (D,) int64 image of each chosen location
    locations_index  (D,) int64 index in ONE image's level-major flattened locations, as
                     ``fcos_postprocess`` returns it
    weight           (K·M·M, C_in, 3, 3);  bias (K·M·M,) or None
    Returns (D, K·M·M): row d is the dense conv ``conv2d(f, weight, bias, padding=1)`` of
    image ``image_index[d]`` read at its location ``locations_index[d]``.

    The conv's output at one location is a dot product of the weight with the C_in × 3 × 3
    neighbourhood around that location, read from the zero-padded map as the conv reads it.
    Per level the index becomes (y, x) — clamped, so every row reads something valid — and the
    rows belonging to the level are kept with ``torch.where`` (no boolean indexing, no
    host–device synchronisation). Then one matmul, (D, C_in·9) · (C_in·9, K·M·M): D·C_in·9·K·M·M
    multiply-adds instead of N·L·C_in·9·K·M·M for the dense conv (L = 5456 locations at 512²).
    An index ≥ L gives the bias alone.
    """
    first = box_tower[0]
    image_index = image_index.to(device=first.device, dtype=torch.int64)
    locations_index = locations_index.to(device=first.device, dtype=torch.int64)
    count, channels = locations_index.shape[0], first.shape[1]
    offsets = torch.arange(3, device=first.device)  # padded row y + o is the input row y - 1 + o
    patches = first.new_zeros((count, channels * 9))  # (D, C_in·9)
    for features, in_level, y, x in _level_positions(box_tower, locations_index):
        padded = F.pad(features, (1, 1, 1, 1))  # (N, C_in, h + 2, w + 2), the conv's zeros
        rows = y[:, None, None] + offsets[None, :, None]  # (D, 3, 1)
        cols = x[:, None, None] + offsets[None, None, :]  # (D, 1, 3)
        window = padded[image_index[:, None, None], :, rows, cols]  # (D, 3, 3, C_in)
        # (D, C_in·9) in the order of weight.flatten(1): channel, then row, then column
        window = window.permute(0, 3, 1, 2).reshape(count, channels * 9)
        patches = torch.where(in_level[:, None], window.to(patches.dtype), patches)
    return F.linear(patches, weight.flatten(1), bias)  # (D, K·M·M)
