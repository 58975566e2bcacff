"""Building blocks shared by every part of the model: the norm layers and the conv-norm-ReLU block.

One factory for norms serves the ResNet (``backbone.norm``: ``"frozen_bn"`` | ``"bn"`` | ``"gn"``),
the FCOS towers and the bottom module (``"GN"`` | ``"BN"`` | ``"none"``) and the panoptic
semantic head; the names are case-insensitive, so the configs keep the spellings of the papers'
configurations.
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

NORMS = ("frozen_bn", "bn", "gn", "none")
GN_GROUPS = 32  # GroupNorm's groups in the paper's heads (and detectron2's GN ResNets)


def make_norm(kind: str, channels: int) -> nn.Module:
    """A norm layer over ``channels`` feature channels (input and output (N, channels, h, w)).

    ``"frozen_bn"``  torchvision's ``FrozenBatchNorm2d``: fixed statistics and affine parameters
    ``"bn"``         trainable ``BatchNorm2d``, one over all FPN levels when a head is shared
    ``"gn"``         ``GroupNorm`` with 32 groups, or, when ``channels`` has no divisor 32, the
                     largest group count ≤ 32 that divides it (16 for a 16-channel CPU stem)
    ``"none"``       the identity
    """
    key = kind.lower()
    if key == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if key == "bn":
        return nn.BatchNorm2d(channels)
    if key == "gn":
        groups = max(g for g in range(1, min(GN_GROUPS, channels) + 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if key == "none":
        return nn.Identity()
    raise ValueError(f"norm={kind!r}: expected one of {', '.join(NORMS)} (any case)")


def conv_norm_relu(in_channels: int, out_channels: int, norm: str, bias: Optional[bool] = None,
                   init: Optional[Callable[[nn.Conv2d], None]] = None) -> nn.Sequential:
    """3×3 conv (stride 1, padding 1) → :func:`make_norm` → ReLU: (N, in, h, w) → (N, out, h, w).

    ``bias`` None gives the conv a bias only where no norm follows to absorb it; ``init``, if
    given, re-initialises the conv as soon as it is made (the caller's recipe, e.g. the FCOS
    head's N(0, 0.01²) or the bottom module's kaiming-uniform).
    """
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1,
                     bias=norm.lower() == "none" if bias is None else bias)
    if init is not None:
        init(conv)
    return nn.Sequential(conv, make_norm(norm, out_channels), nn.ReLU(inplace=True))
