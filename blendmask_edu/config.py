"""Typed configuration: the dataclass tree that is the one home of every default, and its
JSON round trip.

``build_model(cfg)`` (in :mod:`blendmask_edu.modeling.blendmask`) is the one place that reads a
config; the named presets are in :mod:`blendmask_edu.presets` (``get_config(name)``). Change a
config with ``dataclasses.replace`` or :func:`blendmask_edu.config_override.override` (the CLI's
typed ``--section.key value`` flags). Every checkpoint saves ``to_dict(cfg)`` and loads it
back with :func:`from_dict` (typed: a bool is not an int, a string never a list of characters).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from blendmask_edu.fileio import json_ready, write_json


@dataclass
class BackboneConfig:
    """ResNet + FPN (docs/model.md §1)."""

    depth: int = 50
    pretrained: bool = True                  # ImageNet weights through torchvision's weights API
    weights_path: Optional[str] = None       # a local state-dict file instead of a download
    frozen_stages: int = 2                   # stem + res2, the paper's FREEZE_AT=2
    norm: str = "frozen_bn"                  # "frozen_bn" | "bn" | "gn"
    fpn_channels: int = 256
    levels: Tuple[int, ...] = (3, 4, 5, 6, 7)
    width: int = 64                          # stem width; < 64 only for CPU presets (no weights)
    # "frozen_bn": each frozen BatchNorm folded into the conv before it (modeling/layers.py,
    # FrozenBNConv2d): the same numbers up to rounding; R-50 at 512², 9 % less inference time
    fold_frozen_bn: bool = True


@dataclass
class FCOSConfig:
    """The FCOS head, target assignment and inference (docs/model.md §2)."""

    num_convs: int = 4                       # conv-GN-ReLU blocks in each tower
    num_shared_convs: int = 0                # a shared tower before both (the RT variant)
    head_channels: Optional[int] = None      # None: the FPN width
    head_norm: str = "GN"
    prior_prob: float = 0.01
    # Upper bounds of max(l, t, r, b) (px) for all levels but the last: P3 ≤ 64 < P4 ≤ 128 ...
    sizes_of_interest: Tuple[float, ...] = (64, 128, 256, 512)
    center_radius: float = 1.5
    score_thresh: float = 0.05               # on cls · ctr (THRESH_WITH_CTR)
    pre_nms_topk: int = 1000
    nms_thresh: float = 0.6
    max_detections: int = 100
    # The memory layout of the weights and activations: "eval" runs inference channels-last
    # (NHWC), which oneDNN's CPU convolutions prefer (BlendMask R-50 at 512²: 15 % faster), and
    # trains in the default layout (a training step there was 19 % slower channels-last);
    # "always" | "never".
    channels_last: str = "eval"


@dataclass
class BlendMaskConfig:
    """The bottom module, the top module and the blender (docs/model.md §3–5)."""

    num_bases: int = 4                       # K
    attn_size: int = 14                      # M
    blend_resolution: int = 56               # R
    pooler: str = "roi_align"                # "roi_align" (aligned, sampling 1) | "roi_pool"
    attn_interpolation: str = "bilinear"     # "bilinear" | "nearest"
    basis_channels: int = 128
    basis_convs: int = 3
    basis_norm: str = "BN"
    basis_semantic: bool = True              # the auxiliary thing-semantic head on P3
    basis_semantic_weight: float = 0.3
    basis_semantic_channels: int = 128       # width of that head (the official: the module's 128)
    mask_loss_weight: float = 1.0


@dataclass
class MaskRCNNConfig:
    """The Mask R-CNN counterpart (``arch="mask_rcnn"``, :mod:`~blendmask_edu.modeling.mask_rcnn`):
    torchvision's RPN and RoI heads on the same ResNet-FPN, P2–P6. Defaults: detectron2's
    Mask R-CNN / Panoptic-FPN R-50 FPN recipe."""

    anchor_sizes: Tuple[int, ...] = (32, 64, 128, 256, 512)   # one per level P2..P6 (8 × stride)
    aspect_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_topk_train: int = 2000       # per level
    rpn_pre_nms_topk_test: int = 1000
    rpn_post_nms_topk_train: int = 1000      # per image (detectron2's FPN: 1000)
    rpn_post_nms_topk_test: int = 1000
    rpn_batch_size_per_image: int = 256      # anchors sampled for the RPN loss
    roi_batch_size_per_image: int = 512      # proposals sampled for the box and mask losses
    roi_positive_fraction: float = 0.25
    box_head_dim: int = 1024                 # the two fully connected layers of the box head
    mask_head_channels: int = 256            # the four 3×3 convs of the 14×14 → 28×28 mask head
    mask_head_convs: int = 4
    # RoIs go to level floor(4 + log2(sqrt(area) / canonical_scale)), clamped to P2..P5
    canonical_scale: int = 224
    sampling_ratio: int = 2                  # RoIAlign's sample points per bin side (torchvision's)
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    max_detections: int = 100


@dataclass
class PanopticConfig:
    """The panoptic extension (docs/model.md §6): Panoptic-FPN's semantic head and its fusion."""

    enabled: bool = False
    stuff_ids: Tuple[int, ...] = ()          # the dataset's stuff ids; semantic label s ↔ stuff_ids[s-1]
    stuff_names: Tuple[str, ...] = ()
    head_channels: int = 128
    head_norm: str = "GN"
    share_basis_features: bool = False       # read the bottom module's fused P3–P5, not own stacks
    loss_weight: float = 0.5                 # loss_sem_seg
    score_thresh: float = 0.2                # the paper's; the official config uses 0.45
    overlap_thresh: float = 0.4
    # stuff regions under stuff_area px are dropped, counted at the original image size: the
    # official 4096 on any image with a longer side ≥ 640 px (all of COCO); smaller images get
    # it × (longer side / 640)², e.g. 164 px at 128 px (panoptic.stuff_area_for, the one rule)
    stuff_area: int = 4096


@dataclass
class InputConfig:
    """Resizing and augmentation (docs/model.md §7); the model itself never resizes."""

    train_short_sizes: Tuple[int, ...] = (640, 672, 704, 736, 768, 800)
    train_max_size: int = 1333
    test_short_size: int = 800
    test_max_size: int = 1333
    flip_prob: float = 0.5
    # Keep the decoded training images in memory when all of them fit in this many MB (their
    # size estimated from the JSON; the shapes set: about 230 MB); 0 turns it off.
    cache_mb: float = 2048


@dataclass
class SolverConfig:
    """SGD with linear warm-up and a step schedule (docs/model.md §7)."""

    optimizer: str = "sgd"                   # "sgd" (the paper) | "adamw"
    batch_size: int = 16
    base_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0           # no weight decay on norm parameters
    max_iter: int = 270_000
    schedule: str = "step"                   # "step": × gamma at each of `steps` | "cosine"
    steps: Tuple[int, ...] = (210_000, 250_000)
    gamma: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    clip_grad_norm: Optional[float] = None
    amp: bool = False                        # autocast: fp16 on CUDA, bf16 on CPUs with it
    checkpoint_period: int = 5000


@dataclass
class Config:
    """The whole configuration. ``category_ids``/``class_names`` describe the dataset's things."""

    name: str = "coco_r50_3x"
    arch: str = "blendmask"                   # "blendmask" | "mask_rcnn" (its counterpart)
    num_classes: int = 80
    category_ids: Tuple[int, ...] = ()
    class_names: Tuple[str, ...] = ()
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fcos: FCOSConfig = field(default_factory=FCOSConfig)
    blendmask: BlendMaskConfig = field(default_factory=BlendMaskConfig)
    mask_rcnn: MaskRCNNConfig = field(default_factory=MaskRCNNConfig)
    panoptic: PanopticConfig = field(default_factory=PanopticConfig)
    input: InputConfig = field(default_factory=InputConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    seed: int = 0


def model_name(cfg: Config) -> str:
    """What the config builds, as the paper names it: "BlendMask", or for ``arch="mask_rcnn"``
    "Mask R-CNN" (instances only) / "Panoptic-FPN" (with the panoptic head)."""
    if cfg.arch == "mask_rcnn":
        return "Panoptic-FPN" if cfg.panoptic.enabled else "Mask R-CNN"
    return "BlendMask"


def to_dict(cfg: Config) -> Dict[str, Any]:
    """The config as plain JSON-ready data (tuples become lists)."""
    return json_ready(dataclasses.asdict(cfg))


def _coerce(tp, value):
    """Turn JSON data back into the annotated type ``tp`` (dataclasses, tuples, Optional)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(value, tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(args[0], value)
    if origin in (tuple, Tuple) and not isinstance(value, str):  # "sky" is not ("s", "k", "y")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):  # true is not 1.0
        return float(value)
    return value


def from_dict(data: Dict[str, Any], cls: type = Config):
    """Inverse of :func:`to_dict`; unknown keys are an error naming them."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; known: {sorted(names)}")
    return cls(**{k: _coerce(hints[k], v) for k, v in data.items()})


def save_config(cfg: Config, path: Union[str, Path]) -> None:
    """Write ``to_dict(cfg)`` to ``path`` as indented JSON (what ``config.json`` of a run holds)."""
    write_json(path, to_dict(cfg), indent=2)


def load_config(path: Union[str, Path]) -> Config:
    """The :class:`Config` saved at ``path`` by :func:`save_config`."""
    return from_dict(json.loads(Path(path).read_text()))


def describe(cfg: Config) -> str:
    """A small two-column table of every field, for the top of notebooks and logs."""
    rows = []

    def walk(prefix, obj):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(f"{prefix}{f.name}.", value)
            else:
                rows.append((f"{prefix}{f.name}", str(value)))

    walk("", cfg)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
