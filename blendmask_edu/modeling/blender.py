"""The blender: bases + per-instance attentions → instance masks (docs/model.md §5, paper §3.2).

For D instances with boxes, the blender

1. crops the K bases (N, K, H/4, W/4) with each box to R × R by RoIAlign (``crop_bases``),
   the paper's r_d = RoIPool_{R×R}(B, p_d), eq. (1);
2. resizes each instance's M × M attention to R × R (``resize_attentions``), eq. (2);
3. soft-maxes the attention over the K axis — after the resize, not before (docs/model.md
   pitfall 1), eq. (3);
4. sums the crops weighted by those soft-maxed attentions (``merge``), eq. (4).

So every pixel of a mask logit is a convex combination of the K base values at that pixel.
``blend`` runs the four steps; the step functions exist so that notebook 03 can show each
one. No activation or clamp is applied anywhere before the final sigmoid / BCE (docs/model.md
pitfall 2).

Training (``blend_training_loss``, docs/model.md §5) crops with the GT boxes, once per GT, gathers
the crops and targets for every FCOS positive, and applies a per-pixel BCE weighted by the
positive's centerness target and divided by ``loss_denorm`` from ``fcos_loss.fcos_losses``.
Targets come from RoIAlign on the full-image bitmask (``mask_targets``), the route that is
half-pixel aligned like the pooler (docs/model.md pitfall 18).

Inference (``postprocess_masks``, docs/model.md §5) crops with the predicted boxes, applies a
sigmoid and pastes each R × R probability map into the image (``paste_masks``) — into the image the
model was given, or, as the official evaluation does, straight into the original image before
the test-time resize, with the boxes rescaled to it (``scale_boxes``): the masks are never
pasted small and resized afterwards.
Differs from AdelaiDet: boxes are clipped to the image BEFORE pooling at inference, so pooling
and pasting use the same box; AdelaiDet pools with the unclipped box and pastes with the
clipped one, which stretches masks of border-crossing boxes (docs/model.md pitfall 7). This is
deliberate.

RoIAlign / RoIPool are torchvision's (``torchvision.ops``). All arithmetic runs in float32
(float64 stays float64) whatever the autocast state, so outputs are float.
Introduced in notebook 03 (the top module, attentions and the blender).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import clip_boxes_to_image, roi_align, roi_pool

from blendmask_edu.config import BlendMaskConfig
from blendmask_edu.modeling.attention import attention_maps

__all__ = [
    "blend", "blend_training_loss", "crop_bases", "mask_loss", "mask_targets", "merge",
    "paste_masks", "postprocess_masks", "resize_attentions", "scale_boxes",
]

POOLERS = ("roi_align", "roi_pool")
INTERPOLATIONS = ("bilinear", "nearest")
PASTE_CHUNK = 2 ** 22  # paste at most this many D·H·W pixels at once (~30 B each: ~130 MB)
PASTE_ONE_WINDOW = 2 ** 20  # below this many window pixels in all, paste in one window size


def _float(x: Tensor) -> Tensor:
    """``x`` as float32, or float64 if it already is."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def crop_bases(bases: Tensor, rois: Tensor, resolution: int, spatial_scale: float,
               pooler: str = BlendMaskConfig.pooler) -> Tensor:
    """Crop the bases of each instance's image with its box: eq. (1), r_d = RoIPool(B, p_d).

    bases (N, K, h, w) · rois (D, 5) = (batch index, x0, y0, x1, y1) in input pixels
    spatial_scale = bases size / input size (0.25 for bases at stride 4).
    Returns (D, K, R, R) with R = ``resolution``.
    ``pooler="roi_align"``: torchvision RoIAlign, aligned=True, one sample per bin
    (docs/model.md §5);
    ``"roi_pool"``: RoIPool, the paper's Table 6 ablation.
    """
    bases = _float(bases)
    rois = rois.to(bases.dtype)
    if pooler == "roi_align":
        return roi_align(bases, rois, output_size=resolution, spatial_scale=spatial_scale,
                         sampling_ratio=1, aligned=True)
    if pooler == "roi_pool":
        return roi_pool(bases, rois, output_size=resolution, spatial_scale=spatial_scale)
    raise ValueError(f"pooler must be one of {POOLERS}, got {pooler!r}")


def resize_attentions(attentions: Tensor, resolution: int, num_bases: Optional[int] = None,
                      interpolation: str = BlendMaskConfig.attn_interpolation) -> Tensor:
    """Attention logits of each instance at the blender resolution: eq. (2), before the softmax.

    attentions (D, K·M·M) in K-major layout (channel k·M² + i·M + j is (k, i, j), docs/model.md §3),
    or already (D, K, M, M); ``num_bases`` (K) is needed for the flat form.
    Returns (D, K, R, R) logits. ``interpolation``: "bilinear" (align_corners=False, the paper's
    choice) or "nearest" (Table 5 ablation).
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    attentions = _float(attentions)
    if attentions.dim() == 2:
        if num_bases is None:
            raise ValueError("num_bases (K) is required for flat (D, K·M·M) attentions")
        attentions = attention_maps(attentions, num_bases)  # (D, K, M, M)
    elif num_bases is not None and attentions.shape[1] != num_bases:
        raise ValueError(f"attentions have {attentions.shape[1]} maps, expected K = {num_bases}")
    if interpolation == "bilinear":
        return F.interpolate(attentions, size=(resolution, resolution), mode="bilinear",
                             align_corners=False)
    return F.interpolate(attentions, size=(resolution, resolution), mode="nearest")


def merge(crops: Tensor, attention_logits: Tensor) -> Tensor:
    """Eq. (3)–(4): m_d = Σ_k softmax_k(a_d)_k ∘ r_{d,k}.

    crops (D, K, R, R) · attention_logits (D, K, R, R), already at the blender resolution.
    Returns mask logits (D, R, R).
    """
    weights = _float(attention_logits).softmax(dim=1)  # (D, K, R, R), sums to 1 over K
    return (_float(crops) * weights).sum(dim=1)


def blend(bases: Tensor, attentions: Tensor, rois: Tensor, resolution: int,
          spatial_scale: float, pooler: str = BlendMaskConfig.pooler,
          interpolation: str = BlendMaskConfig.attn_interpolation) -> Tensor:
    """Mask logits of D instances: crop, resize the attention, softmax over K, weighted sum.

    bases (N, K, h, w) · attentions (D, K·M·M) K-major, or (D, K, M, M)
    rois (D, 5) = (batch index, x0, y0, x1, y1) in input pixels; spatial_scale = h / H.
    Returns mask logits (D, R, R); D = 0 gives (0, R, R).
    """
    crops = crop_bases(bases, rois, resolution, spatial_scale, pooler)  # (D, K, R, R)
    logits = resize_attentions(attentions, resolution, bases.shape[1], interpolation)
    return merge(crops, logits)


def _rois(boxes_per_image: Sequence[Tensor]) -> Tensor:
    """(ΣG, 5) rois = (image index, box) from one (G_i, 4) box tensor per image."""
    return torch.cat([torch.cat([b.new_full((b.shape[0], 1), i), b], dim=1)
                      for i, b in enumerate(boxes_per_image)])


def mask_targets(gt_masks: Union[Tensor, Sequence[Tensor]],
                 gt_boxes: Union[Tensor, Sequence[Tensor]], resolution: int) -> Tensor:
    """Each GT mask cropped to its own box and resized to R × R (docs/model.md pitfall 18: the
    bitmask route).

    gt_masks (G, H, W) uint8/bool full-image masks and gt_boxes (G, 4) xyxy; or lists of those,
    one per image (sizes may differ). Returns (ΣG, R, R) float in {0, 1}, images concatenated.
    RoIAlign of the float mask (aligned=True, spatial_scale 1, adaptive sampling), then ≥ 0.5.
    Differs from AdelaiDet's default: it rasterises polygons per box (not half-pixel aligned,
    docs/model.md pitfall 18); this bitmask route matches the pooler's alignment.
    """
    if isinstance(gt_masks, Tensor):
        gt_masks, gt_boxes = [gt_masks], [gt_boxes]
    out = []
    for masks, boxes in zip(gt_masks, gt_boxes):  # one RoIAlign per image, G_i masks at once
        masks = masks.float()[:, None]  # (G, 1, H, W): mask g is "image" g of the batch
        index = torch.arange(masks.shape[0], device=masks.device, dtype=masks.dtype)
        boxes = boxes.to(masks.dtype)
        # adaptive sampling needs x1 ≥ x0, y1 ≥ y0 (an inverted box would ask for < 0 samples)
        boxes = torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2])], dim=1)
        rois = torch.cat([index[:, None], boxes], dim=1)  # (G, 5)
        crops = roi_align(masks, rois, output_size=resolution, spatial_scale=1.0,
                          sampling_ratio=0, aligned=True)  # (G, 1, R, R)
        out.append((crops[:, 0] >= 0.5).float())
    if not out:
        raise ValueError("mask_targets needs at least one image")
    return torch.cat(out)


def mask_loss(mask_logits: Tensor, targets: Tensor, centerness: Tensor,
              loss_denorm: Tensor) -> Tensor:
    """Σ_P c_p · mean_pixels BCE(m_p, t_p) / loss_denorm, named ``loss_mask`` (docs/model.md §5).

    mask_logits, targets (P, R, R) or (P, R²) · centerness (P,) the positives' centerness
    targets · loss_denorm the scalar ``extras["loss_denorm"]`` of ``fcos_losses`` (Σ centerness,
    mean over processes). Returns a scalar.
    """
    per_pixel = F.binary_cross_entropy_with_logits(
        _float(mask_logits).flatten(1), targets.flatten(1).to(_float(mask_logits).dtype),
        reduction="none")  # (P, R²)
    per_positive = per_pixel.mean(dim=1)  # (P,)
    return (per_positive * centerness.to(per_positive.dtype)).sum() / loss_denorm


def blend_training_loss(bases: Tensor, attentions: Tensor, gt_index: Tensor,
                        gt_boxes_per_image: Sequence[Tensor],
                        gt_masks_per_image: Sequence[Tensor], centerness: Tensor,
                        loss_denorm: Tensor, resolution: int, spatial_scale: float,
                        all_attentions: Optional[Tensor] = None, pooler: str = BlendMaskConfig.pooler,
                        interpolation: str = BlendMaskConfig.attn_interpolation) -> Tensor:
    """The BlendMask mask loss of a batch, docs/model.md §5 (all positives, no subsampling).

    bases (N, K, h, w) · attentions (P, K·M·M) of the FCOS positives · gt_index (P,) the
    batch-wide index of each positive's GT (``assign_batch_targets``: image 0's GTs first)
    gt_boxes_per_image [(G_i, 4)] · gt_masks_per_image [(G_i, H_i, W_i)] · centerness (P,)
    loss_denorm scalar from ``fcos_losses`` · all_attentions any tensor that depends on every
    top-module parameter (the model passes the sum of them), only used so that a batch without
    positives still gives every parameter a (zero) gradient.
    Crops and targets are made once per GT with the GT boxes (docs/model.md pitfall 6) and
    gathered per positive, so positives of one GT share them. Returns the scalar ``loss_mask`` (the
    instance-loss weight, 1.0, is the caller's). With no positive (P = 0) it returns
    0 × (Σ bases + Σ all_attentions): finite, zero, and connected to every parameter (DDP).
    """
    if gt_index.numel() == 0:  # shapes only, no device sync
        touched = attentions if all_attentions is None else all_attentions
        return 0.0 * (bases.float().sum() + touched.float().sum())
    gt_rois = _rois(gt_boxes_per_image)  # (ΣG, 5)
    crops = crop_bases(bases, gt_rois, resolution, spatial_scale, pooler)  # (ΣG, K, R, R)
    targets = mask_targets(gt_masks_per_image, gt_boxes_per_image, resolution)  # (ΣG, R, R)
    logits = merge(crops[gt_index],  # (P, K, R, R)
                   resize_attentions(attentions, resolution, bases.shape[1], interpolation))
    return mask_loss(logits, targets[gt_index], centerness, loss_denorm)


def paste_masks(mask_probs: Tensor, boxes: Tensor, image_size: Tuple[int, int]) -> Tensor:
    """Put each R × R probability map back into the image inside its box (docs/model.md §5).

    mask_probs (D, R, R) · boxes (D, 4) xyxy in image pixels · image_size (H, W).
    Returns (D, H, W) probabilities (threshold them at 0.5 for binary masks).
    Each image pixel centre (x + ½, y + ½) is placed at ((x + ½ − x0) / (x1 − x0))·2 − 1
    inside the box and sampled bilinearly (``grid_sample``, align_corners=False, zeros outside),
    the detectron2 paste. Zero padding fades the outer half map cell towards the box border, so a
    coarse map (small R for a big box) rounds the box corners off. Boxes of zero width or height
    paste nothing.

    Only a window around each box is sampled — the box grown by the reach of that fade (half a
    map cell, (x1 − x0) / 2R px) and a pixel; beyond it every sample is exactly 0 — and written
    into the zeroed image, all D at once, in groups of similar window size when there are many
    window pixels (``_size_groups``): the same numbers as sampling every pixel of the image for
    every instance, for a fraction of the work (at 512², 100 boxes of 8 to 256 px: 0.6× the
    time of one window size for all, ``benchmarks/README.md``).
    Differs from ``torchvision.ops.paste_masks_in_image``: that one grows the box by a pixel and
    resizes, which moves borders slightly.
    """
    height, width = image_size
    probs = _float(mask_probs)
    boxes = boxes.to(probs.dtype)
    count, resolution = probs.shape[0], probs.shape[-1]
    out = probs.new_zeros(count, height, width)
    if count == 0 or height == 0 or width == 0:
        return out
    x0, y0, x1, y1 = boxes.unbind(1)  # each (D,)
    box_w, box_h = (x1 - x0).clamp_min(0), (y1 - y0).clamp_min(0)
    left = (x0 - box_w / (2 * resolution) - 1).floor().clamp(0, width).long()  # (D,)
    top = (y0 - box_h / (2 * resolution) - 1).floor().clamp(0, height).long()
    right = (x1 + box_w / (2 * resolution) + 1).ceil().clamp(0, width).long()
    bottom = (y1 + box_h / (2 * resolution) + 1).ceil().clamp(0, height).long()
    probs = probs * ((x1 > x0) & (y1 > y0))[:, None, None]  # an empty box pastes zeros
    for index, win_h, win_w in _size_groups(bottom - top, right - left, max(height, width)):
        # The group's window, moved inside the image where it would stick out: it still holds
        # each box's reach (at most win_h × win_w, inside the image), and the pixels it adds
        # sample 0. Within a window every pixel is unique, so each is written once.
        rows = top[index].clamp(max=height - win_h)[:, None] + torch.arange(
            win_h, device=boxes.device)  # (d, h) image rows of each window
        cols = left[index].clamp(max=width - win_w)[:, None] + torch.arange(
            win_w, device=boxes.device)  # (d, w) image columns
        grid = probs.new_empty(len(index), win_h, win_w, 2)  # (d, h, w, 2) = (x, y) in −1..1
        grid[..., 0] = ((cols.to(probs.dtype) + 0.5 - x0[index, None])
                        / box_w[index, None].clamp_min(1e-6) * 2 - 1)[:, None, :]
        grid[..., 1] = ((rows.to(probs.dtype) + 0.5 - y0[index, None])
                        / box_h[index, None].clamp_min(1e-6) * 2 - 1)[:, :, None]
        sampled = F.grid_sample(probs[index, None], grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)[:, 0]  # (d, h, w)
        pixel = (index[:, None, None] * (height * width) + rows[:, :, None] * width
                 + cols[:, None, :])  # (d, h, w) flat index into out
        out.put_(pixel, sampled)
    return out


def _size_groups(heights: Tensor, widths: Tensor, longest: int) -> List[Tuple[Tensor, int, int]]:
    """Instances grouped by window size, for :func:`paste_masks`: ``[(index (d,), h, w), ...]``,
    h × w the largest window height and width in the group (empty windows left out).

    heights, widths (D,) int64 window sizes, none over ``longest`` pixels. A window of h × w
    goes to group (⌈log2 h⌉, ⌈log2 w⌉), so a group's window is under twice each of its members'
    sides; a group is split into chunks of at most ``PASTE_CHUNK`` pixels. One host sync for all
    groups (their sizes).
    """
    bins = math.ceil(math.log2(max(longest, 1))) + 1  # ⌈log2 side⌉ of a side 1..longest
    side_bin = lambda side: side.clamp_min(1).float().log2().ceil().long()  # noqa: E731
    group = torch.where((heights > 0) & (widths > 0),
                        1 + side_bin(heights) * bins + side_bin(widths), 0)  # 0: nothing to paste
    size = 1 + bins * bins
    order = group.argsort()
    counts = torch.bincount(group, minlength=size)  # (G,)
    largest = [torch.zeros(size, dtype=torch.long, device=group.device).scatter_reduce(
        0, group, x, "amax") for x in (heights, widths)]
    counts, win_h, win_w = torch.stack([counts, *largest]).tolist()  # the host sync
    used = [g for g in range(1, size) if counts[g] > 0]
    if not used:
        return []
    # Few or small windows: one window for all, as a group's fixed cost (a dozen small ops)
    # would outweigh the pixels it saves.
    all_h, all_w = max(win_h[g] for g in used), max(win_w[g] for g in used)
    if sum(counts[g] for g in used) * all_h * all_w <= PASTE_ONE_WINDOW:
        parts = [(order[counts[0]:], all_h, all_w)]  # argsort put group 0 first
    else:
        parts = [(index, win_h[g], win_w[g])
                 for g, index in enumerate(torch.split(order, counts)) if g in used]
    return [(chunk, h, w) for index, h, w in parts
            for chunk in torch.split(index, max(1, PASTE_CHUNK // (h * w)))]


def scale_boxes(boxes: Tensor, from_size: Tuple[int, int], to_size: Tuple[int, int]) -> Tensor:
    """Boxes (D, 4) xyxy in the pixels of an image of ``from_size`` (H, W) → the same boxes in the
    pixels of that image resized to ``to_size`` (H', W'): x · W'/W, y · H'/H, clipped to it.

    The map from the test-size image back to the original one (``resize_for_test``'s scales
    inverted); the same sizes give the boxes unchanged (clipped).
    """
    (height, width), (new_h, new_w) = from_size, to_size
    scale = boxes.new_tensor([new_w / width, new_h / height, new_w / width, new_h / height])
    return clip_boxes_to_image(boxes * scale, (new_h, new_w))


def postprocess_masks(bases: Tensor, attentions: Tensor, boxes: Tensor, batch_index: Tensor,
                      image_size: Tuple[int, int], resolution: int, spatial_scale: float,
                      pooler: str = BlendMaskConfig.pooler,
                      interpolation: str = BlendMaskConfig.attn_interpolation,
                      output_size: Optional[Tuple[int, int]] = None) -> Tensor:
    """Masks of D detections as image-sized probabilities (docs/model.md §5).

    bases (N, K, h, w) · attentions (D, K·M·M) · boxes (D, 4) xyxy in input pixels ·
    batch_index (D,) image of each detection · image_size (H, W) of the image(s) the boxes are
    in (one image, or a batch of equally sized images) · output_size (H_out, W_out) of the image
    to paste into, default ``image_size``, e.g. the original image before the test-time resize.
    Returns (D, 1, H_out, W_out) probabilities.

    Boxes are clipped to ``image_size`` first and the clipped box is used both to pool and to
    paste (see the module docstring: a deliberate fix of AdelaiDet's mismatch); with an
    ``output_size`` the R × R maps are pasted with those boxes rescaled to it,
    ``scale_boxes(clipped, image_size, output_size)`` — the boxes the caller should report.
    """
    boxes = clip_boxes_to_image(_float(boxes), image_size)
    rois = torch.cat([batch_index.to(boxes.dtype)[:, None], boxes], dim=1)  # (D, 5)
    logits = blend(bases, attentions, rois, resolution, spatial_scale, pooler, interpolation)
    output_size = tuple(image_size if output_size is None else output_size)
    pasted = scale_boxes(boxes, image_size, output_size)  # the same boxes, in output pixels
    return paste_masks(logits.sigmoid(), pasted, output_size)[:, None]  # (D, 1, H_out, W_out)
