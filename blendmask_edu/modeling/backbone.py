"""Backbone: a ResNet and a feature pyramid (FPN), P3–P7, plus P2 for Panoptic-FPN's semantic head.

Introduced in ``notebooks/01_fcos.ipynb``. docs/model.md §1.

``images (N, 3, H, W)`` → ResNet stages C2..C5 (strides 4, 8, 16, 32) → FPN → an ordered dict
``{"p3": (N, fpn_channels, H/8, W/8), ..., "p7": (N, fpn_channels, ceil(H/64), ceil(W/64))}``.

Everything is torchvision's, composed explicitly:

* the ResNet is ``torchvision.models.resnet18/34/50/101`` (its classifier removed), or, for CPU
  presets with a stem narrower than 64 channels (``width``), the same architecture assembled from
  torchvision's ``BasicBlock`` / ``Bottleneck`` (:func:`narrow_resnet`);
* the FPN is ``torchvision.ops.FeaturePyramidNetwork``: a 1×1 lateral conv per input level,
  nearest ×2 top-down upsampling, sum, a 3×3 output conv, no norm. It initialises its convs with
  kaiming-uniform (a = 1) and zero bias, which is detectron2's "c2 xavier fill" that AdelaiDet uses;
* P6 = 3×3 stride-2 conv on **P5** (not C5), P7 = 3×3 stride-2 conv on ReLU(P6):
  ``torchvision.ops.feature_pyramid_network.LastLevelP6P7(c, c)`` (it reads P5 because its
  input and output widths are equal) — and ``LastLevelP6`` below when the levels end at P6.
  Both init their convs the same way as the FPN.

Norm layers (``norm``):

* ``"frozen_bn"`` — ``torchvision.ops.FrozenBatchNorm2d`` everywhere: the paper's setting, right
  for ImageNet weights. From random init it is an identity (mean 0, var 1, scale 1, shift 0), i.e.
  a ResNet *without* normalisation: activations grow with depth (at init the std of P3 is ~2× that
  with BN for R-18, ~10× for R-50) and nothing keeps them in range while training, so it trains
  badly from scratch. From scratch use ``"bn"`` or ``"gn"`` with ``frozen_stages=0``.
  With ``fold_frozen_bn`` (the default) each frozen BatchNorm is folded into the convolution
  before it (:func:`fold_frozen_norms`, ``layers.FrozenBNConv2d``): the same numbers up to float
  rounding and the same state-dict keys, without a pass over the activations per norm.
* ``"bn"`` — trainable ``BatchNorm2d``: from scratch with batches of about 8 or more images.
* ``"gn"`` — ``GroupNorm(32, c)`` (fewer groups when c is not a multiple of 32): from scratch with
  small batches.

Frozen stages (``frozen_stages``, detectron2's ``FREEZE_AT``): 0 = none, 1 = the stem, 2 = stem and
res2 (``layer1``, the paper's setting), ... 5 = the whole ResNet. Frozen parameters have
``requires_grad=False`` and the frozen stages stay in eval mode even after ``model.train()``
(so a frozen ``"bn"`` stage keeps its running statistics).

ImageNet weights and input normalisation. This package uses torchvision's weights
(``ResNet50_Weights.IMAGENET1K_V1`` etc.), which expect **RGB** in 0..1 normalised with
``IMAGENET_MEAN`` / ``IMAGENET_STD`` below. Differs from the official implementation: AdelaiDet
starts from the MSRA caffe2 weights (``R-50.pkl``: BGR, 0..255, mean [103.530, 116.280, 123.675],
std 1, stride in the bottleneck's 1×1 conv, torchvision puts it in the 3×3); the README's AP numbers
assume that recipe. The ``.pkl`` files cannot be loaded here.

``pretrained=True`` reads the file from torch's hub cache, downloading it if absent. When that
fails (offline), :class:`WeightsUnavailable` (a ``RuntimeError``) names the URL and where to put
the file: ``torch.hub.get_dir()/checkpoints/<file name>`` — or pass ``weights_path=``.
"""

from __future__ import annotations

import functools
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision import models
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelP6P7

from blendmask_edu.config import BackboneConfig
from blendmask_edu.modeling.layers import fold_frozen_norm, make_norm

# torchvision's ImageNet weights expect RGB in 0..1 normalised with these (per channel R, G, B).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# depth → (torchvision builder, its weights enum, residual block, blocks per stage)
_RESNETS = {
    18: (models.resnet18, models.ResNet18_Weights, BasicBlock, (2, 2, 2, 2)),
    34: (models.resnet34, models.ResNet34_Weights, BasicBlock, (3, 4, 6, 3)),
    50: (models.resnet50, models.ResNet50_Weights, Bottleneck, (3, 4, 6, 3)),
    101: (models.resnet101, models.ResNet101_Weights, Bottleneck, (3, 4, 23, 3)),
}
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")  # frozen_stages = k freezes the first k


class LastLevelP6(ExtraFPNBlock):
    """P6 only: a 3×3 stride-2 conv on P5, for pyramids that stop at P6 (AdelaiDet's ``LastLevelP6``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)
        nn.init.kaiming_uniform_(self.p6.weight, a=1)
        nn.init.zeros_(self.p6.bias)

    def forward(self, results: List[Tensor], x: List[Tensor], names: List[str]):
        """Append P6 to the FPN's outputs ``results`` (P3..P5); the C features ``x`` are unused."""
        results.append(self.p6(results[-1]))  # results[-1] is P5: (N, c, ceil(h5/2), ceil(w5/2))
        names.append("p6")
        return results, names


class ResNetFPN(nn.Module):
    """A ResNet trunk and an FPN: ``forward(images (N,3,H,W)) → {"p3": (N,C,H/8,W/8), ...}``.

    ``body`` is an ``nn.Sequential`` named like torchvision's ResNet (``conv1``, ``bn1``, ``relu``,
    ``maxpool``, ``layer1`` … ``layer4``), so torchvision's ResNet state-dict keys load into it
    unchanged; ``body_channels`` are the widths of its stage outputs C2..C5. Usually built with
    :func:`build_resnet_fpn`.

    Attributes: ``level_names`` (e.g. ``["p3", …, "p7"]``), ``strides`` (``[8, …, 128]``),
    ``out_channels`` (the FPN width), ``frozen_stages``.
    """

    def __init__(self, body: nn.Sequential, body_channels: Sequence[int],
                 fpn_channels: int = BackboneConfig.fpn_channels,
                 levels: Sequence[int] = BackboneConfig.levels, frozen_stages: int = 0):
        super().__init__()
        levels = check_levels(levels)
        self.body = body
        self.level_names = [f"p{level}" for level in levels]
        self.strides = [2 ** level for level in levels]
        self.out_channels = fpn_channels
        self.frozen_stages = frozen_stages
        self._inputs = [level for level in levels if level <= 5]  # levels fed by a ResNet stage
        extra = (None if levels[-1] == 5 else LastLevelP6(fpn_channels) if levels[-1] == 6
                 else LastLevelP6P7(fpn_channels, fpn_channels))
        self.fpn = FeaturePyramidNetwork([body_channels[level - 2] for level in self._inputs],
                                         fpn_channels, extra_blocks=extra)
        freeze_stages(self.body, frozen_stages)

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        """``images`` (N, 3, H, W) normalised, H and W multiples of 32 → ordered dict of P levels."""
        if images.dim() != 4 or images.shape[-2] % 32 or images.shape[-1] % 32:
            raise ValueError(f"expected (N, 3, H, W) with H, W multiples of 32, got {tuple(images.shape)}")
        # torchvision's FPN names each output after its input, so the C_l inputs are keyed "p{l}".
        features = OrderedDict()
        x = images
        for name, module in self.body.named_children():
            x = module(x)
            if name.startswith("layer") and int(name[-1]) + 1 in self._inputs:
                features[f"p{int(name[-1]) + 1}"] = x  # C_l, (N, body_channels, H/2^l, W/2^l)
        return self.fpn(features)

    def train(self, mode: bool = True) -> "ResNetFPN":
        """Switch to train/eval mode, keeping the frozen stages (and their BN statistics) in eval."""
        super().train(mode)
        for module in frozen_modules(self.body, self.frozen_stages):
            module.eval()
        return self


def check_levels(levels: Sequence[int]) -> List[int]:
    """``levels`` as a list, or ValueError unless it is a contiguous range from 2|3 to 5|6|7."""
    levels = [int(level) for level in levels]
    if not levels or levels[0] not in (2, 3) or levels[-1] not in (5, 6, 7) \
            or levels != list(range(levels[0], levels[-1] + 1)):
        raise ValueError(f"levels={tuple(levels)}: expected a contiguous range starting at 2 or 3 "
                         "and ending at 5, 6 or 7, e.g. (3, 4, 5, 6, 7)")
    return levels


def frozen_modules(body: nn.Sequential, frozen_stages: int) -> List[nn.Module]:
    """The modules of the first ``frozen_stages`` stages (stem = conv1 + bn1, then layer1 …)."""
    stages = [[body.conv1, body.bn1]] + [[getattr(body, f"layer{i}")] for i in range(1, 5)]
    return [module for stage in stages[:frozen_stages] for module in stage]


def freeze_stages(body: nn.Sequential, frozen_stages: int) -> None:
    """Stop gradients in the first ``frozen_stages`` stages and put them in eval mode."""
    if not 0 <= frozen_stages <= len(STAGES):
        raise ValueError(f"frozen_stages={frozen_stages}: expected 0..{len(STAGES)} "
                         f"(the first k of {', '.join(STAGES)})")
    for module in frozen_modules(body, frozen_stages):
        module.eval()
        module.requires_grad_(False)


# The (convolution, norm) pairs of torchvision's ResNet modules, by child name: the stem and the
# blocks (conv1 → bn1, ...) and the shortcut's Sequential (0 → 1).
CONV_NORM_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("0", "1"))


def fold_frozen_norms(body: nn.Module) -> int:
    """Replace every ``FrozenBatchNorm2d`` that follows a convolution in ``body`` (a ResNet
    trunk: the pairs ``CONV_NORM_PAIRS``) by the folded pair of ``layers.fold_frozen_norm``.
    The trunk computes the same numbers (up to float rounding), its state-dict keys unchanged.
    Returns the number of norms folded (R-50: 53)."""
    folded = 0
    for module in list(body.modules()):
        for conv_name, norm_name in CONV_NORM_PAIRS:
            conv, norm = module._modules.get(conv_name), module._modules.get(norm_name)
            if isinstance(conv, nn.Conv2d) and type(norm) is FrozenBatchNorm2d:
                module._modules[conv_name], module._modules[norm_name] = fold_frozen_norm(conv, norm)
                folded += 1
    return folded


def narrow_resnet(depth: int, width: int, norm: Callable[[int], nn.Module]) -> nn.Sequential:
    """A ResNet whose stem has ``width`` channels and stage l has ``width·2^(l-2)·expansion``.

    torchvision's ``ResNet`` class fixes the stem at 64, so this assembles the same architecture
    from torchvision's public ``BasicBlock`` / ``Bottleneck`` with every width scaled by
    ``width / 64``. At width 64 the keys and shapes equal torchvision's (a test checks it).
    Convs get torchvision's init (kaiming-normal, fan-out); norms start at scale 1, shift 0.
    """
    _, _, block, blocks = _RESNETS[depth]
    children = [("conv1", nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)),
                ("bn1", norm(width)), ("relu", nn.ReLU(inplace=True)),
                ("maxpool", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))]
    in_channels = width
    for i, count in enumerate(blocks):
        planes, stride = width * 2 ** i, 1 if i == 0 else 2
        out_channels = planes * block.expansion
        shortcut = None
        if stride != 1 or in_channels != out_channels:
            shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                     norm(out_channels))
        stage = [block(in_channels, planes, stride, shortcut, norm_layer=norm)]
        stage += [block(out_channels, planes, norm_layer=norm) for _ in range(count - 1)]
        children.append((f"layer{i + 1}", nn.Sequential(*stage)))
        in_channels = out_channels
    body = nn.Sequential(OrderedDict(children))
    for module in body.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return body


class WeightsUnavailable(RuntimeError):
    """The ImageNet weights could be neither read from the hub cache nor downloaded.

    ``url`` is where they come from, ``target`` where torch's hub cache expects the file,
    ``reason`` the underlying error in one line; the message says all three, for a caller of
    the library (``weights_path=``). The command line words its own one line from them.
    """

    def __init__(self, depth: int, url: str, target: str, reason: str):
        self.depth, self.url, self.target, self.reason = depth, url, target, reason
        name = os.path.basename(target)
        corrupt = " (the file there now is unreadable: replace it)" if os.path.exists(target) else ""
        super().__init__(
            f"could not get the ImageNet weights of ResNet-{depth} ({reason}).\n"
            f"Without internet, download\n    {url}\non a machine that has it and either "
            f"place the file at\n    {target}{corrupt}\nor pass weights_path='/path/to/{name}'.")


def imagenet_state_dict(depth: int) -> Dict[str, Tensor]:
    """torchvision's ImageNet weights of ResNet-``depth``, from the torch hub cache or the web.

    Offline, raises :class:`WeightsUnavailable`, which says which file to put where.
    """
    weights = _RESNETS[depth][1].IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=True)
    except (URLError, OSError, RuntimeError, pickle.UnpicklingError) as error:
        file_name = os.path.basename(urlparse(weights.url).path)
        target = os.path.join(torch.hub.get_dir(), "checkpoints", file_name)
        reason = " ".join(f"{type(error).__name__}: {error}".split())  # one line
        raise WeightsUnavailable(depth, weights.url, target, reason) from error


def read_state_dict(path: Union[str, Path]) -> Dict[str, Tensor]:
    """Read a torchvision ResNet state dict (a ``.pth`` of ``model.state_dict()``) from ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights_path {str(path)!r}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for a file it cannot read
        raise ValueError(f"weights_path {str(path)!r} is not a readable PyTorch state-dict file "
                         f"({type(error).__name__}: {str(error)[:200]}). Expected a torchvision ResNet "
                         "state dict saved with torch.save(model.state_dict(), path); caffe2 .pkl "
                         "weights (detectron2's R-50.pkl) are not supported.") from error
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"weights_path {str(path)!r} holds a {type(state).__name__}, not a state dict "
                         "(a mapping from parameter names to tensors)")
    return dict(state)


def load_trunk(body: nn.Sequential, state: Mapping[str, Tensor], source: str,
               trunk: str = "this ResNet") -> None:
    """Load a torchvision ResNet state dict into ``body`` (the classifier ``fc.*`` is ignored).

    Raises ValueError naming ``source`` and the first offending keys if names or shapes differ.
    """
    own = body.state_dict()

    def optional(key: str) -> bool:  # BatchNorm2d's counter: FrozenBatchNorm2d has none
        return key.endswith("num_batches_tracked")

    state = {k: v for k, v in state.items() if not k.startswith("fc.") and (k in own or not optional(k))}
    missing = [k for k in own if k not in state and not optional(k)]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = [f"{what} ({len(keys)}): {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
                if keys]
    if problems:
        raise ValueError(f"{source} does not fit {trunk}: " + "; ".join(problems))
    body.load_state_dict(state, strict=False)


def build_resnet_fpn(depth: int = BackboneConfig.depth, pretrained: bool = False,
                     weights_path: Optional[str] = None,
                     frozen_stages: int = BackboneConfig.frozen_stages,
                     norm: str = BackboneConfig.norm, fpn_channels: int = BackboneConfig.fpn_channels,
                     levels: Sequence[int] = BackboneConfig.levels,
                     width: int = BackboneConfig.width,
                     fold_frozen_bn: bool = BackboneConfig.fold_frozen_bn) -> ResNetFPN:
    """ResNet-``depth`` + FPN with outputs ``levels`` (``(3..7)`` = the paper's P3–P7).

    ``pretrained`` loads torchvision's ImageNet weights (cache or download); ``weights_path`` loads
    a local state dict of the same trunk instead (a ``.pth`` of a torchvision ResNet, ``fc.*``
    ignored; it wins over ``pretrained``). ``width`` is the stem width; other than 64 it builds a
    proportionally narrower ResNet (:func:`narrow_resnet`) for CPU presets, which has no ImageNet
    weights. See the module docstring for ``norm``, ``frozen_stages`` and ``fold_frozen_bn``.
    """
    if depth not in _RESNETS:
        raise ValueError(f"depth={depth}: expected one of {', '.join(map(str, _RESNETS))}")
    levels = check_levels(levels)
    norm_fn = functools.partial(make_norm, norm)  # channels → norm layer, as torchvision asks
    if width < 1:
        raise ValueError(f"width={width}: expected a positive stem width (64 = torchvision's)")
    imagenet = pretrained and weights_path is None
    if imagenet and width != 64:
        raise ValueError(f"width={width}: ImageNet weights exist only for width 64")
    if imagenet and norm.lower() == "gn":
        raise ValueError("norm='gn' cannot load ImageNet weights (they hold BatchNorm statistics); "
                         "use 'frozen_bn' or 'bn'")
    if width == 64:
        resnet = _RESNETS[depth][0](weights=None, norm_layer=norm_fn)
        body = nn.Sequential(OrderedDict((name, module) for name, module in resnet.named_children()
                                         if name not in ("avgpool", "fc")))
    else:
        body = narrow_resnet(depth, width, norm_fn)
    trunk = f"ResNet-{depth}"
    if weights_path is not None:
        load_trunk(body, read_state_dict(weights_path), f"weights_path {str(weights_path)!r}", trunk)
    elif pretrained:
        load_trunk(body, imagenet_state_dict(depth), "torchvision's ImageNet weights", trunk)
    if fold_frozen_bn:
        fold_frozen_norms(body)
    expansion = _RESNETS[depth][2].expansion
    body_channels = [width * 2 ** i * expansion for i in range(4)]  # C2..C5
    return ResNetFPN(body, body_channels, fpn_channels, levels, frozen_stages)
