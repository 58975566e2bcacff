"""Assignment 3, bases and attentions: the attention's layout and the bottom module's fusion."""

from __future__ import annotations

from functools import partial
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from blendmask_edu.assignments.checking import Case, Mistake, Task, register
from blendmask_edu.modeling.attention import attention_maps
from blendmask_edu.modeling.basis import fuse_levels

ASSIGNMENT = "a3_bases"


# ---- attention_maps -------------------------------------------------------------------------

def _maps_k_last(attentions: Tensor, num_bases: int) -> Tensor:
    m = int(round((attentions.shape[1] / num_bases) ** 0.5))
    return attentions.reshape(attentions.shape[0], m, m, num_bases).permute(0, 3, 1, 2)


def _maps_transposed(attentions: Tensor, num_bases: int) -> Tensor:
    return attention_maps(attentions, num_bases).transpose(2, 3)


def _attention_cases() -> List[Case]:
    cases = [
        Case("K = 2 maps of 2 × 2 numbered 0..7", (torch.arange(8.0)[None], 2)),
        Case("two detections, K = 4, M = 3", (torch.arange(72.0).reshape(2, 36), 4)),
        Case("K = 1, M = 4", (torch.arange(16.0)[None] * 0.5, 1)),
        Case("no detection (D = 0), K = 4, M = 7", (torch.zeros(0, 196), 4)),
    ]
    generator = torch.Generator().manual_seed(31)
    for k, (d, kk, m) in enumerate(((3, 4, 14), (5, 2, 5))):
        cases.append(Case(f"random attentions {k}", (torch.randn(d, kk * m * m, generator=generator),
                                                     kk), hidden=True))
    return cases


register(Task(
    name="attention_maps", assignment=ASSIGNMENT, points=1,
    reference=attention_maps, cases=_attention_cases,
    mistakes=(
        Mistake("k_last", "the layout is K-major: channel k·M² + i·M + j is basis k, row i, column "
                          "j, so the first M² channels are basis 0 (reshape to (D, K, M, M), no "
                          "permute).", _maps_k_last),
        Mistake("rows_and_columns_swapped",
                "within a basis the channels run row by row (i·M + j): channel 1 is row 0, "
                "column 1.", _maps_transposed),
    )))


# ---- fuse_levels ----------------------------------------------------------------------------

def _fuse(features: Sequence[Tensor], *, mode="bilinear", align_corners=False) -> Tensor:
    size = features[0].shape[-2:]
    fused = features[0]
    for feature in features[1:]:
        if mode == "nearest":
            fused = fused + F.interpolate(feature, size=size, mode="nearest")
        else:
            fused = fused + F.interpolate(feature, size=size, mode=mode,
                                          align_corners=align_corners)
    return fused


def _fuse_cases() -> List[Case]:
    generator = torch.Generator().manual_seed(32)

    def levels(n, c, h, w, count=3):
        return [torch.randn(n, c, h // 2 ** k, w // 2 ** k, generator=generator)
                for k in range(count)]

    cases = [
        Case("P3 4 × 4 and P4 2 × 2, one channel", ([torch.zeros(1, 1, 4, 4),
                                                    torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])],)),
        Case("three levels of a 2-image batch", (levels(2, 3, 8, 12),)),
        Case("one level only", (levels(1, 2, 5, 5, count=1),)),
    ]
    for k in range(2):
        cases.append(Case(f"random levels {k}", (levels(2, 4, 16, 8),), hidden=True))
    return cases


register(Task(
    name="fuse_levels", assignment=ASSIGNMENT, points=1,
    reference=fuse_levels, cases=_fuse_cases,
    mistakes=(
        Mistake("nearest", "the coarser levels are resized bilinearly (BlendMask's choice), not "
                           "by nearest neighbour.", partial(_fuse, mode="nearest")),
        Mistake("align_corners", "resize with align_corners=False, the convention of every resize "
                                 "in this model (docs/model.md pitfall 5).",
                partial(_fuse, align_corners=True)),
    )))
