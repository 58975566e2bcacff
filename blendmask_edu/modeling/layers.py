"""Building blocks shared by every part of the model: the norm layers and the conv-norm-ReLU block.

One factory for norms serves the ResNet (``backbone.norm``: ``"frozen_bn"`` | ``"bn"`` | ``"gn"``),
the FCOS towers and the bottom module (``"GN"`` | ``"BN"`` | ``"none"``) and the panoptic
semantic head; the names are case-insensitive, so the configs keep the spellings of the papers'
configurations.

A frozen BatchNorm after a convolution is folded into it (:class:`FrozenBNConv2d`): the same
numbers up to float rounding, one pass over the activations fewer.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor, nn
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


class FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A ``FrozenBatchNorm2d`` whose work the convolution before it does (:class:`FrozenBNConv2d`):
    its forward is the identity. It keeps its four buffers, so state-dict keys, checkpoints and
    ImageNet weights load as they would into the unfolded layer."""

    def __init__(self, norm: FrozenBatchNorm2d):
        super().__init__(norm.weight.shape[0], eps=norm.eps)
        for name, buffer in norm.named_buffers(recurse=False):  # shared, not copied
            setattr(self, name, buffer)
        self.train(norm.training)

    def forward(self, x: Tensor) -> Tensor:
        return x


class FrozenBNConv2d(nn.Conv2d):
    """A convolution and the ``FrozenBatchNorm2d`` after it, computed as one convolution.

    A frozen BatchNorm is a fixed per-channel affine map, y = a·x + b with
    a = γ / sqrt(σ² + ε) and b = β − μ·a (μ, σ² the stored statistics, γ, β its weight and bias).
    After a convolution with weight w and bias c it gives the convolution with weight a·w and bias
    a·c + b: the same numbers up to float rounding, without a multiply and an add over every
    activation (BlendMask R-50 at 512²: about a tenth of an inference, ``benchmarks/README.md``).

    ``FrozenBNConv2d(conv, norm)`` shares ``conv``'s parameters and reads ``norm``'s buffers, which
    stay in a :class:`FoldedFrozenBatchNorm2d` where the norm was (:func:`fold_frozen_norm`), so
    state-dict keys do not change. When no gradient is needed (inference, frozen stages) the folded
    weight is computed once and kept until a parameter or a statistic changes (their version
    counters, which an optimizer step or ``load_state_dict`` moves); otherwise it is computed in
    every forward, inside the autograd graph, so the convolution's weight gets the gradient it
    would get unfolded.
    """

    def __init__(self, conv: nn.Conv2d, norm: FoldedFrozenBatchNorm2d):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                         conv.padding_mode, device="meta")  # no memory: the parameters are conv's
        self.weight, self.bias = conv.weight, conv.bias
        self.train(conv.training)
        self._norm = (norm,)  # a tuple: not registered as a child module
        self._cache = None

    @property
    def norm(self) -> FoldedFrozenBatchNorm2d:
        """The folded norm (it stays where the network puts it)."""
        return self._norm[0]

    def forward(self, x: Tensor) -> Tensor:
        """x (N, in_channels, h, w) → (N, out_channels, h', w'), = norm(conv(x))."""
        weight, bias = self.folded()
        return self._conv_forward(x, weight, bias)

    def folded(self) -> Tuple[Tensor, Tensor]:
        """(a·w (out, in/groups, k, k), a·c + b (out,)): the weight and bias of the one convolution."""
        tensors = [self.weight, *([] if self.bias is None else [self.bias]), self.norm.weight,
                   self.norm.bias, self.norm.running_mean, self.norm.running_var]
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return self._fold()  # training: inside the graph
        if any(t.is_inference() for t in tensors):  # no version counter to key a cache on
            return self._fold()
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        if self._cache is None or self._cache[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, no graph
                self._cache = (key, *self._fold())
        return self._cache[1], self._cache[2]

    def _fold(self) -> Tuple[Tensor, Tensor]:
        norm = self.norm
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()  # (out,) = a
        shift = norm.bias - norm.running_mean * scale  # (out,) = b
        weight = self.weight * scale.view(-1, 1, 1, 1)  # keeps the weight's memory format
        bias = shift if self.bias is None else self.bias * scale + shift
        return weight, bias


def fold_frozen_norm(conv: nn.Conv2d, norm: FrozenBatchNorm2d
                     ) -> Tuple[FrozenBNConv2d, FoldedFrozenBatchNorm2d]:
    """What replaces ``conv`` → ``norm`` in a network: ``(FrozenBNConv2d, FoldedFrozenBatchNorm2d)``,
    sharing their parameters and buffers. Put the first where ``conv`` was and the second where
    ``norm`` was; the network computes the same numbers (up to float rounding)."""
    folded_norm = FoldedFrozenBatchNorm2d(norm)
    return FrozenBNConv2d(conv, folded_norm), folded_norm
