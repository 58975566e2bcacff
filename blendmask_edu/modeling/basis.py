"""The bottom module: K dense *bases* at stride 4, fused from P3..P5 (docs/model.md §4).

BlendMask predicts a few (K = 4) whole-image score maps, the bases B ∈ (N, K, H/4, W/4), shared
by all instances. The blender later crops them with each instance's box and mixes the K crops
with that instance's attention (top module, ``attention.py``). The bases are linear: no
activation, no norm after the last conv, so they can take any sign and size — confident masks
need large-magnitude bases (docs/model.md §5). Pictures of what they learn (two position-sensitive
maps, an objectness map, a boundary map; paper Fig. 1, 3) squash them first, e.g. tanh(B/8)
(docs/model.md pitfall 20). Introduced in notebook 02 (the bottom module and its bases).

Architecture (the official code's "ProtoNet", docs/model.md §4), H × W the padded input size:

    P3, P4, P5 ─refine (a conv block each)─▶ resize P4', P5' to P3's size, sum  (N, c, H/8, W/8)
      ─tower (num_convs conv blocks)─▶ bilinear ×2 ─conv block─▶ 1×1 conv → K   (N, K, H/4, W/4)

A *conv block* is 3×3 conv (no bias: a norm follows) → norm → ReLU, kaiming-uniform (a = 1).
Every resize is bilinear with ``align_corners=False`` (docs/model.md pitfall 5). Output stride 4
comes from the upsampling inside the tower, not from P2 — hence the blender's pooler scale 1/4
(docs/model.md pitfall 3).

Auxiliary thing-semantic head (docs/model.md §4, training only): on the raw P3 (not the refined
features), two conv blocks with BatchNorm and a 1×1 conv predict C + 1 classes (0 = background)
at stride 8; ``thing_semantic_targets`` paints its target from the instance masks on the fly and
``basis_semantic_loss`` is the cross-entropy × 0.3 that the model reports as ``loss_basis_sem``.

Differs from AdelaiDet: ``norm="BN"`` is plain ``BatchNorm2d``, not SyncBN, so the module runs on a
CPU (docs/model.md pitfall 14; SyncBN fails there, AdelaiDet issue #293) — on one device they are
the same thing; convert with ``nn.SyncBatchNorm.convert_sync_batchnorm`` for multi-GPU training. The
semantic target is rasterised from the instance masks instead of being read from precomputed
``.npz`` files (docs/model.md §9).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blendmask_edu.config import BlendMaskConfig
from blendmask_edu.modeling.layers import conv_norm_relu

__all__ = ["BasisModule", "basis_roles", "basis_semantic_loss", "fuse_levels",
           "thing_semantic_targets"]


# The bases' stride: the tower runs at stride 8 and is upsampled ×2 (docs/model.md §4).
BASES_STRIDE = 4


def _kaiming_uniform(conv: nn.Conv2d) -> None:
    """The official bottom module's conv init: kaiming-uniform (a = 1), zero bias."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _conv_block(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    """3×3 conv → norm → ReLU with the bottom module's init (``layers.conv_norm_relu``)."""
    return conv_norm_relu(in_channels, out_channels, norm, init=_kaiming_uniform)


def fuse_levels(features: Sequence[Tensor]) -> Tensor:
    """Sum of feature maps resized to the first one's size (docs/model.md §4).

    features  list of (N, c, h_l, w_l), the finest level first (refined P3, P4, P5)
    Returns (N, c, h_0, w_0) = F_0 + Σ_{l>0} bilinear(F_l → h_0 × w_0), align_corners=False.
    """
    size = features[0].shape[-2:]
    fused = features[0]
    for feature in features[1:]:
        fused = fused + F.interpolate(feature, size=size, mode="bilinear", align_corners=False)
    return fused


class BasisModule(nn.Module):
    """The bottom module: P3..P(2+in_features) → K bases at stride 4 (+ thing-semantic logits).

    in_channels        channels of the FPN levels (256 in the paper)
    num_bases          K, the number of bases (4)
    channels           width of the refine layers and the tower (128)
    num_convs          conv blocks of the tower at stride 8, before the ×2 upsampling (3)
    in_features        how many FPN levels to fuse, starting at P3: 3 → P3, P4, P5
    norm               "BN" (plain BatchNorm, see the module docstring) | "GN" | "none"
    semantic_classes   C + 1 for the auxiliary thing-semantic head; None turns the head off
    semantic_channels  width of that head (128); its norm is always BatchNorm (docs/model.md §4)

    forward(features, with_semantic=None) with ``features`` the FPN levels (N, c_in, h_l, w_l),
    P3 first (extra levels, e.g. P6, P7, are ignored), returns a dict:
      bases       (N, K, H/4, W/4), twice P3's size
      thing_logits  (N, C + 1, H/8, W/8) on P3, or None when the head is off or not asked for
      fused       (N, c, H/8, W/8), the refined levels summed (the tower's input), which the
                  panoptic semantic head may share (``panoptic.share_basis_features``).
    ``with_semantic=None`` runs the head in training mode only (the official code runs it at
    inference only to visualise it); pass True to get the logits in eval mode too.
    """

    def __init__(self, in_channels: int, num_bases: int = BlendMaskConfig.num_bases,
                 channels: int = BlendMaskConfig.basis_channels,
                 num_convs: int = BlendMaskConfig.basis_convs, in_features: int = 3,
                 norm: str = BlendMaskConfig.basis_norm,
                 semantic_classes: Optional[int] = None, semantic_channels: int = 128):
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features={in_features}: need at least one FPN level")
        self.num_bases, self.in_features = num_bases, in_features
        self.refine = nn.ModuleList(
            [_conv_block(in_channels, channels, norm) for _ in range(in_features)])
        self.tower = nn.Sequential(*[_conv_block(channels, channels, norm)
                                     for _ in range(num_convs)])
        self.after_upsample = _conv_block(channels, channels, norm)
        self.bases = nn.Conv2d(channels, num_bases, 1)  # bias, PyTorch's default init

        self.semantic_head: Optional[nn.Sequential] = None
        if semantic_classes is not None:
            self.semantic_head = nn.Sequential(
                _conv_block(in_channels, semantic_channels, "BN"),
                _conv_block(semantic_channels, semantic_channels, "BN"),
                nn.Conv2d(semantic_channels, semantic_classes, 1))

    def forward(self, features: Sequence[Tensor],
                with_semantic: Optional[bool] = None) -> Dict[str, Optional[Tensor]]:
        if len(features) < self.in_features:
            raise ValueError(f"BasisModule fuses {self.in_features} FPN levels, "
                             f"got {len(features)}")
        refined = [refine(f) for refine, f in zip(self.refine, features)]  # (N, c, h_l, w_l)
        fused = fuse_levels(refined)  # (N, c, H/8, W/8)
        x = self.tower(fused)
        h, w = x.shape[-2:]
        x = F.interpolate(x, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)
        bases = self.bases(self.after_upsample(x))  # (N, K, H/4, W/4)

        if with_semantic is None:
            with_semantic = self.training
        thing_logits = None
        if self.semantic_head is not None and with_semantic:
            thing_logits = self.semantic_head(features[0])  # (N, C + 1, H/8, W/8), raw P3
        return {"bases": bases, "thing_logits": thing_logits, "fused": fused}


def thing_semantic_targets(masks_per_image: Sequence[Tensor], labels_per_image: Sequence[Tensor],
                           padded_size: Tuple[int, int]) -> Tensor:
    """The thing-semantic label map of every image, painted from its instance masks
    (docs/model.md §4).

    masks_per_image   N × (G_i, H_i, W_i) uint8 (or bool) instance masks, H_i ≤ H, W_i ≤ W
    labels_per_image  N × (G_i,) int64 contiguous class indices 0..C-1
    padded_size       (H, W) of the padded batch
    Returns (N, H, W) int64: 0 = background (and padding), label + 1 on things.

    Masks are painted in annotation order, so where masks overlap the last one wins — the rule of
    the official offline script. Per image, without a loop over instances: mask g covers its
    pixels with the number g + 1, and the largest number at a pixel (``amax`` over the stack,
    0 where no mask is) is 1 + the last covering mask, which a lookup table [0, label + 1, …]
    turns into the class. (An ``argmax`` over the flipped stack says the same but is a slow
    reduction on the CPU: 3.3 against 0.2 ms for 8 masks of 128², one image.)
    """
    height, width = padded_size
    device = masks_per_image[0].device if len(masks_per_image) else None
    out = torch.zeros((len(masks_per_image), height, width), dtype=torch.int64, device=device)
    for i, (masks, labels) in enumerate(zip(masks_per_image, labels_per_image)):
        if masks.shape[0] == 0:
            continue
        h, w = masks.shape[-2:]
        if h > height or w > width:
            raise ValueError(f"masks of image {i} are {h}×{w}, larger than the padded "
                             f"{height}×{width}")
        # int16 numbers keep the stack at two bytes per mask pixel (up to 32767 masks)
        numbers = torch.arange(1, masks.shape[0] + 1, dtype=torch.int16, device=device)
        last = ((masks.to(device) != 0) * numbers[:, None, None]).amax(dim=0)  # (h, w) 0..G
        labels = labels.to(device=device, dtype=torch.int64)
        lookup = torch.cat([labels.new_zeros(1), labels + 1])  # (G + 1,): 0 → background
        out[i, :h, :w] = lookup[last.long()]
    return out


def basis_semantic_loss(thing_logits: Tensor, targets: Tensor,
                        weight: float = BlendMaskConfig.basis_semantic_weight) -> Tensor:
    """Auxiliary thing-semantic loss ``loss_basis_sem`` (docs/model.md §4, pitfall 13).

    thing_logits  (N, C + 1, h, w) logits at stride s = H / h (8: P3)
    targets     (N, H, W) int64 from ``thing_semantic_targets``, the padded batch
    Returns weight · mean over all N·h·w pixels of −log softmax(thing_logits)[target].

    The target is downsampled by keeping the top-left pixel of every s × s cell,
    ``targets[:, ::s, ::s]`` — exactly what the official ``F.interpolate(·, scale_factor=1/8,
    mode="nearest")`` samples, without its float round trip and channel squeeze (squeezing every
    dim instead of dim 1 is what broke batch size 1, AdelaiDet issue #52). No ignore index:
    padding counts as background, as in the official code.
    """
    n, _, h, w = thing_logits.shape
    height, width = targets.shape[-2:]
    stride = height // h
    if targets.shape[0] != n or height != h * stride or width != w * stride:
        raise ValueError(f"targets {tuple(targets.shape)} are not the logits' {h}×{w} grid "
                         f"times one integer stride")
    sampled = targets[:, ::stride, ::stride].to(torch.int64)  # (N, h, w) top-left of each cell
    return F.cross_entropy(thing_logits.float(), sampled) * weight


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation along the last dim of ``a`` (K, P) with ``b`` (P,) → (K,); 0 if flat."""
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean()
    denom = a.norm(dim=-1) * b.norm()
    return torch.where(denom > 0, (a * b).sum(dim=-1) / denom.clamp_min(1e-12), torch.zeros_like(denom))


@torch.no_grad()
def basis_roles(bases: Tensor, masks: Tensor, stride: int = BASES_STRIDE) -> Dict[str, Tensor]:
    """What each basis of one image responds to, as Pearson correlations in −1..1 (notebook 02).

    bases  (K, h, w) the bases of one image (its un-padded part)
    masks  (G, H, W) its instance masks, H ≤ h · stride
    Returns a dict of (K,) tensors:
      ``objectness``  correlation with the union of the masks over the whole image;
      ``boundary``    correlation with the masks' outlines (one base pixel wide);
      ``left_right``  inside each object, correlation with x relative to its box
                      (positive: larger on the right), averaged over objects of ≥ 4 base pixels;
      ``top_bottom``  the same with y (positive: larger at the bottom).
    The paper (Fig. 1, 3) reads its four bases as two position-sensitive maps, an objectness map and
    a boundary map; these numbers make that reading measurable. Masks are brought to the bases'
    grid by averaging each stride × stride cell (≥ 0.5 is inside).
    """
    num_bases, h, w = bases.shape
    bases = bases.float()
    padded = masks.new_zeros((masks.shape[0], h * stride, w * stride), dtype=torch.float32)
    padded[:, : masks.shape[1], : masks.shape[2]] = masks.float()
    inside = F.avg_pool2d(padded[:, None], stride)[:, 0] >= 0.5  # (G, h, w)
    union = inside.any(dim=0).float()  # (h, w)
    grown = F.max_pool2d(union[None, None], 3, stride=1, padding=1)[0, 0]
    shrunk = -F.max_pool2d(-union[None, None], 3, stride=1, padding=1)[0, 0]
    outline = grown - shrunk  # (h, w), 1 on the pixels next to an edge
    flat = bases.reshape(num_bases, -1)  # (K, h·w)
    roles = {"objectness": _pearson(flat, union.flatten()),
             "boundary": _pearson(flat, outline.flatten())}
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=bases.device),
                            torch.arange(w, dtype=torch.float32, device=bases.device), indexing="ij")
    horizontal, vertical = [], []
    for region in inside:  # a handful of objects: analysis, not a hot path
        if int(region.sum()) < 4:
            continue
        values = bases[:, region]  # (K, P)
        horizontal.append(_pearson(values, xs[region]))
        vertical.append(_pearson(values, ys[region]))
    zeros = torch.zeros(num_bases, device=bases.device)
    roles["left_right"] = torch.stack(horizontal).mean(dim=0) if horizontal else zeros
    roles["top_bottom"] = torch.stack(vertical).mean(dim=0) if vertical else zeros
    return roles
