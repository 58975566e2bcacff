"""Assignment 4, the blender: crop, resize, softmax over K, weighted sum; and pasting a mask."""

from __future__ import annotations

import math
from functools import partial
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from blendmask_edu.assignments.checking import Case, Mistake, Task, register
from blendmask_edu.modeling.blender import blend, paste_masks

ASSIGNMENT = "a4_blender"


# ---- blend ----------------------------------------------------------------------------------

def _blend(bases: Tensor, attentions: Tensor, rois: Tensor, resolution: int,
           spatial_scale: float, *, softmax_first=False, aligned=True, k_last=False,
           over_pixels=False) -> Tensor:
    """A second blender with one step switchable (the mistakes)."""
    k = bases.shape[1]
    m = math.isqrt(attentions.shape[1] // k)
    crops = roi_align(bases.float(), rois.float(), output_size=resolution,
                      spatial_scale=spatial_scale, sampling_ratio=1, aligned=aligned)
    if k_last:
        maps = attentions.float().reshape(len(attentions), m, m, k).permute(0, 3, 1, 2)
    else:
        maps = attentions.float().reshape(len(attentions), k, m, m)
    if softmax_first:
        maps = maps.softmax(dim=1)
    weights = F.interpolate(maps, size=(resolution, resolution), mode="bilinear",
                            align_corners=False)
    if over_pixels:
        weights = weights.flatten(2).softmax(dim=2).reshape_as(weights)
    elif not softmax_first:
        weights = weights.softmax(dim=1)
    return (crops * weights).sum(dim=1)


def _blend_cases() -> List[Case]:
    generator = torch.Generator().manual_seed(41)

    def case(name, n, k, size, m, rois, resolution, hidden=False):
        bases = torch.randn(n, k, size, size, generator=generator)
        attentions = torch.randn(len(rois), k * m * m, generator=generator)
        return Case(name, (bases, attentions, torch.tensor(rois, dtype=torch.float32),
                           resolution, 0.25), hidden=hidden)

    cases = [
        case("one box, K = 2 bases of 8 × 8 (a 32 px image), M = 2, R = 4", 1, 2, 8, 2,
             [[0, 4.0, 4.0, 20.0, 28.0]], 4),
        case("two images, three boxes, K = 4, M = 3, R = 6", 2, 4, 10, 3,
             [[0, 0.0, 0.0, 40.0, 40.0], [1, 6.0, 10.0, 30.0, 22.0], [1, 13.5, 2.5, 17.5, 38.0]], 6),
        case("a box partly outside the image", 1, 2, 8, 2, [[0, -6.0, 10.0, 14.0, 40.0]], 4),
    ]
    for k in range(2):
        rois = [[0, 2.0 + 3 * k, 5.0, 30.0, 33.0 - k], [0, 11.0, 1.0, 19.0, 25.0]]
        cases.append(case(f"random bases and attentions {k}", 1, 4, 12, 4, rois, 8, True))
    return cases


register(Task(
    name="blend", assignment=ASSIGNMENT, points=4,
    reference=lambda bases, attentions, rois, resolution, spatial_scale: blend(
        bases, attentions, rois, resolution, spatial_scale),
    cases=_blend_cases,
    mistakes=(
        Mistake("softmax_before_resize",
                "resize the attention logits from M × M to R × R FIRST, then take the softmax "
                "over K (the softmax of resized logits is not the resized softmax).",
                partial(_blend, softmax_first=True)),
        Mistake("roi_align_not_aligned",
                "crop with roi_align(..., aligned=True): pixel centres at +½, as the boxes are "
                "in continuous coordinates (torchvision's default aligned=False shifts every "
                "crop by half a pixel).", partial(_blend, aligned=False)),
        Mistake("attention_k_last",
                "the attention vector is K-major: reshape to (D, K, M, M) (channel k·M² + i·M "
                "+ j), not (D, M, M, K).", partial(_blend, k_last=True)),
        Mistake("softmax_over_pixels",
                "the softmax runs over the K bases at each pixel (dim 1), so the K weights of "
                "a pixel sum to 1; not over the pixels of a map.",
                partial(_blend, over_pixels=True)),
    )))


# ---- paste_masks ----------------------------------------------------------------------------

def _paste(mask_probs: Tensor, boxes: Tensor, image_size: Tuple[int, int], *, centres=True,
           align_corners=False) -> Tensor:
    """Sample every image pixel for every mask (the plain version of the library's paste)."""
    height, width = image_size
    count = len(boxes)
    if count == 0:
        return torch.zeros(0, height, width)
    shift = 0.5 if centres else 0.0
    x0, y0, x1, y1 = boxes.float().unbind(1)
    xs = torch.arange(width, dtype=torch.float32) + shift
    ys = torch.arange(height, dtype=torch.float32) + shift
    gx = (xs[None] - x0[:, None]) / (x1 - x0).clamp_min(1e-6)[:, None] * 2 - 1  # (D, W)
    gy = (ys[None] - y0[:, None]) / (y1 - y0).clamp_min(1e-6)[:, None] * 2 - 1  # (D, H)
    grid = torch.stack([gx[:, None, :].expand(count, height, width),
                        gy[:, :, None].expand(count, height, width)], dim=3)
    out = F.grid_sample(mask_probs.float()[:, None], grid, mode="bilinear", padding_mode="zeros",
                        align_corners=align_corners)[:, 0]
    nonempty = ((x1 > x0) & (y1 > y0)).float()
    return out * nonempty[:, None, None]


def _paste_resized(mask_probs: Tensor, boxes: Tensor, image_size: Tuple[int, int]) -> Tensor:
    """Resize each map to its box rounded out to whole pixels and copy it in."""
    height, width = image_size
    out = torch.zeros(len(boxes), height, width)
    for d, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        left, top, right, bottom = math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)
        if right <= left or bottom <= top:
            continue
        resized = F.interpolate(mask_probs[d][None, None].float(), size=(bottom - top, right - left),
                                mode="bilinear", align_corners=False)[0, 0]
        r0, c0 = max(top, 0), max(left, 0)
        r1, c1 = min(bottom, height), min(right, width)
        if r1 > r0 and c1 > c0:
            out[d, r0:r1, c0:c1] = resized[r0 - top:r1 - top, c0 - left:c1 - left]
    return out


def _paste_cases() -> List[Case]:
    generator = torch.Generator().manual_seed(42)

    def case(name, boxes, size, resolution=4, hidden=False):
        probs = torch.rand(len(boxes), resolution, resolution, generator=generator)
        return Case(name, (probs, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), size),
                    hidden=hidden)

    cases = [
        case("one 4 × 4 map into the box (2, 2, 6, 6) of an 8 × 8 image", [[2, 2, 6, 6]], (8, 8)),
        case("a box with fractional corners", [[1.3, 0.6, 7.2, 5.9]], (8, 10)),
        case("a box crossing the image border", [[-3, 1, 5, 9]], (8, 8)),
        case("two masks, one box inside the other", [[0, 0, 12, 12], [4, 5, 8, 7]], (12, 12)),
        case("a box of zero width pastes nothing", [[3, 2, 3, 6]], (8, 8)),
        case("no detection (D = 0)", [], (5, 6)),
    ]
    for k in range(2):
        xy = torch.rand(3, 2, generator=generator) * 20
        boxes = torch.cat([xy, xy + 2 + torch.rand(3, 2, generator=generator) * 14], dim=1)
        cases.append(case(f"random boxes {k}", boxes.tolist(), (24, 28), 7, True))
    return cases


register(Task(
    name="paste_masks", assignment=ASSIGNMENT, points=3,
    reference=paste_masks, cases=_paste_cases,
    mistakes=(
        Mistake("pixel_corners", "sample at pixel CENTRES: image pixel x is the point x + ½, so "
                                 "its grid coordinate is ((x + ½ − x0) / (x1 − x0))·2 − 1.",
                partial(_paste, centres=False)),
        Mistake("align_corners", "grid_sample with align_corners=False: −1 and +1 are the outer "
                                 "edges of the map, which lie on the box's edges.",
                partial(_paste, align_corners=True)),
        Mistake("resize_to_rounded_box",
                "resizing the map to the box rounded to whole pixels and copying it moves the "
                "borders by up to a pixel; sample each pixel centre inside the exact box.",
                _paste_resized),
    )))
