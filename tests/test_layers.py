"""Tests of layers.py: a frozen BatchNorm folded into the convolution before it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from blendmask_edu.modeling.layers import FoldedFrozenBatchNorm2d, FrozenBNConv2d, fold_frozen_norm


def _conv_and_norm(bias: bool, groups: int):
    """A 3×3 conv (8 → 6 channels) and a FrozenBatchNorm2d with statistics and affine far from
    the identity, and the conv → norm reference computed without folding."""
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, stride=2, padding=1, groups=groups, bias=bias)
    norm = FrozenBatchNorm2d(6)
    norm.weight.copy_(torch.rand(6, generator=g) + 0.5)
    norm.bias.copy_(torch.randn(6, generator=g))
    norm.running_mean.copy_(torch.randn(6, generator=g))
    norm.running_var.copy_(torch.rand(6, generator=g) + 0.1)
    return conv, norm, nn.Sequential(copy.deepcopy(conv), copy.deepcopy(norm))


@pytest.mark.parametrize("bias, groups", [(False, 1), (True, 1), (True, 2)])
def test_folded_conv_equals_conv_then_frozen_norm(bias, groups):
    conv, norm, reference = _conv_and_norm(bias, groups)
    folded_conv, folded_norm = fold_frozen_norm(conv, norm)
    assert isinstance(folded_conv, FrozenBNConv2d) and isinstance(folded_norm, FoldedFrozenBatchNorm2d)
    assert folded_conv.weight is conv.weight and folded_norm.running_var is norm.running_var
    assert list(folded_conv.state_dict()) == list(conv.state_dict())
    assert list(folded_norm.state_dict()) == list(norm.state_dict())
    x = torch.randn(2, 8, 9, 7, dtype=torch.float64)
    folded = nn.Sequential(folded_conv, folded_norm).double()
    reference = reference.double()
    with torch.no_grad():
        torch.testing.assert_close(folded(x), reference(x), rtol=1e-12, atol=1e-12)
    # gradients of the conv's weight and bias (the norm has no parameters)
    x.requires_grad_(True)
    grads = []
    for model in (folded, reference):
        model.zero_grad()
        x.grad = None
        (model(x) * torch.linspace(-1, 1, 4, dtype=torch.float64)).sum().backward()
        grads.append([x.grad.clone()] + [p.grad for p in model.parameters()])
    assert len(grads[0]) == (3 if bias else 2)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
