"""The models the benchmark compares, and the synthetic inputs they all get.

Ours (BlendMask R-50, its FCOS, BlendMask tiny) are built from presets with random weights and a
score threshold of 0; torchvision's Mask R-CNN and FCOS are built with the same backbone setting
(``--peers matched``) or with torchvision's stock builders (``--peers builder``).
``benchmarks/README.md`` (*The models*) explains the choices.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Callable, Dict, List

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS as TorchvisionFCOS
from torchvision.models.detection import MaskRCNN, fcos_resnet50_fpn, maskrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from blendmask_edu import build_model, get_config
from blendmask_edu.config import Config
from blendmask_edu.config_override import override
from blendmask_edu.modeling.detector import build_fcos

NORM_TYPES = (FrozenBatchNorm2d, nn.BatchNorm2d, nn.GroupNorm)


@dataclasses.dataclass
class Entry:
    """One model of the comparison: how to build it and at which image size to run it."""

    key: str
    title: str
    size: int
    build: Callable[[], nn.Module]
    torchvision: bool  # torchvision's label convention (1..C, 0 = background)


def our_config(preset: str, detections: int) -> Config:
    """A preset with random weights and a score threshold of 0: exactly ``detections`` boxes."""
    cfg = get_config(preset)
    for key, value in [("backbone.pretrained", "false"), ("fcos.score_thresh", "0.0"),
                       ("fcos.max_detections", str(detections))]:
        cfg = override(cfg, key, value)
    return cfg


def torchvision_peer(kind: str, size: int, detections: int, peers: str) -> nn.Module:
    """torchvision's R-50-FPN Mask R-CNN (``kind="maskrcnn"``) or FCOS (``"fcos"``) with random
    weights, never resizing ``size``².

    ``peers="matched"`` builds them as torchvision does when it loads ImageNet weights — frozen
    BatchNorm, stem and layer1 frozen — which is coco_r50_3x's backbone. ``"builder"`` calls the
    stock builders with ``weights=None, weights_backbone=None``; without weights they switch to
    plain (trainable) BatchNorm and train all five stages, which makes training slower.
    """
    sizes = dict(min_size=size, max_size=size)
    if kind == "maskrcnn":
        options = dict(box_detections_per_img=detections, box_score_thresh=0.0, **sizes)
        if peers == "builder":
            return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **options)
        backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None,
                                       norm_layer=FrozenBatchNorm2d, trainable_layers=3)
        return MaskRCNN(backbone, num_classes=91, **options)
    options = dict(detections_per_img=detections, score_thresh=0.0, **sizes)
    if peers == "builder":
        return fcos_resnet50_fpn(weights=None, weights_backbone=None, **options)
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None,
                                   norm_layer=FrozenBatchNorm2d, trainable_layers=3,
                                   returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return TorchvisionFCOS(backbone, num_classes=91, **options)


def entries(args) -> List[Entry]:
    """Every model of the run, in table order. ``args`` has ``size``, ``tiny_size``,
    ``detections``, ``peers`` and ``tiny_512`` (``speed.parse_args``'s names)."""
    size, dets, peers = args.size, args.detections, args.peers
    r50 = our_config("coco_r50_3x", dets)
    tiny = our_config("tiny", dets)
    out = [
        Entry("blendmask_r50", "BlendMask R-50 (ours)", size, lambda: build_model(r50), False),
        Entry("fcos_r50", "FCOS R-50 (ours, no masks)", size, lambda: build_fcos(r50), False),
        Entry("maskrcnn_tv", f"Mask R-CNN R-50 (torchvision, {peers})", size,
              lambda: torchvision_peer("maskrcnn", size, dets, peers), True),
        Entry("fcos_tv", f"FCOS R-50 (torchvision, {peers})", size,
              lambda: torchvision_peer("fcos", size, dets, peers), True),
        Entry("blendmask_tiny", "BlendMask tiny (ours)", args.tiny_size,
              lambda: build_model(tiny), False),
    ]
    if args.tiny_512:
        out.append(Entry("blendmask_tiny_512", "BlendMask tiny (ours)", 512,
                         lambda: build_model(tiny), False))
    return out


def norm_summary(model: nn.Module) -> str:
    """E.g. ``FrozenBatchNorm2d×53 GroupNorm×8``: which norms a model uses, and how many."""
    counts: Dict[str, int] = defaultdict(int)
    for module in model.modules():
        if isinstance(module, NORM_TYPES):
            counts[type(module).__name__] += 1
    return " ".join(f"{name}×{n}" for name, n in sorted(counts.items())) or "none"


def parameters(model: nn.Module) -> str:
    """E.g. ``35.2M (12.0M trainable)``: the model's parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{total / 1e6:.1f}M ({trainable / 1e6:.1f}M trainable)"


def make_images(size: int, count: int, device, seed: int = 0) -> List[Tensor]:
    """``count`` random images [3, size, size] in 0..1 on ``device``, the same for a seed."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, size, size, generator=g).to(device) for _ in range(count)]


def make_targets(size: int, count: int, device, torchvision_labels: bool) -> List[Dict]:
    """The same three objects (an ellipse inside each box) in every image of the batch: per image
    ``boxes`` [3, 4] xyxy, ``labels`` [3] (0..2, or 1..3 in torchvision's convention),
    ``masks`` [3, size, size] uint8 and ``sem_seg`` [size, size] int64."""
    fractions = torch.tensor([[0.10, 0.10, 0.45, 0.50], [0.50, 0.20, 0.90, 0.60],
                              [0.25, 0.55, 0.70, 0.95]])
    boxes = (fractions * size).round()  # (G, 4) xyxy
    x0, y0, x1, y1 = boxes[:, :, None, None].unbind(1)  # each (G, 1, 1)
    ys = torch.arange(size, dtype=torch.float32)[:, None] + 0.5  # (H, 1) pixel centres
    xs = torch.arange(size, dtype=torch.float32) + 0.5  # (W,)
    inside = ((2 * xs - x0 - x1) / (x1 - x0)) ** 2 + ((2 * ys - y0 - y1) / (y1 - y0)) ** 2 <= 1
    masks = inside.to(torch.uint8)  # (G, H, W)
    labels = torch.tensor([0, 1, 2]) + (1 if torchvision_labels else 0)
    # Panoptic semantic labels (the tiny preset is panoptic): things 0, one stuff class 1.
    sem_seg = (masks.sum(0) == 0).long()  # (H, W)
    return [{"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device),
             "sem_seg": sem_seg.to(device)} for _ in range(count)]
