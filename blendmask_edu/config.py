"""Typed configuration: a dataclass tree, named presets, and a JSON round trip.

``get_config(name)`` returns a preset; ``build_model(cfg)`` (in :mod:`blendmask_edu.modeling.model`) is the
one place that reads it. Override with ``dataclasses.replace`` or :func:`override` (the CLI's
typed ``--section.key value`` flags). Every checkpoint saves ``to_dict(cfg)``.

Presets:

- ``coco_r50_3x`` — the paper's setting (spec §8): R-50, FPN P3–P7, batch 16, LR 0.01,
  270k iterations with steps at 210k / 250k, 1k warm-up, shorter side 640–800, max 1333.
- ``coco_r50_3x_panoptic`` — the same with the panoptic extension (spec §7).
- ``coco_r50_short`` — the paper's model on one GPU for about an hour on a COCO subset: batch 8,
  LR 0.005 (linear scaling), 12k iterations, mixed precision; departures in its docstring.
- ``tiny`` — the CPU preset for the shapes dataset (128 px images): every departure from the
  paper is listed in its own docstring below, with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union


@dataclass
class BackboneConfig:
    """ResNet + FPN (spec §1)."""

    depth: int = 50
    pretrained: bool = True                  # ImageNet weights through torchvision's weights API
    weights_path: Optional[str] = None       # a local state-dict file instead of a download
    frozen_stages: int = 2                   # stem + res2, the paper's FREEZE_AT=2
    norm: str = "frozen_bn"                  # "frozen_bn" | "bn" | "gn"
    fpn_channels: int = 256
    levels: Tuple[int, ...] = (3, 4, 5, 6, 7)
    width: int = 64                          # stem width; < 64 only for CPU presets (no weights)


@dataclass
class FCOSConfig:
    """The FCOS head, target assignment and inference (spec §2)."""

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


@dataclass
class BlendMaskConfig:
    """The bottom module, the top module and the blender (spec §3–5)."""

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
    mask_loss_weight: float = 1.0


@dataclass
class PanopticConfig:
    """The panoptic extension (spec §7): Panoptic-FPN's semantic head and its fusion."""

    enabled: bool = False
    stuff_ids: Tuple[int, ...] = ()          # the dataset's stuff ids; semantic label s ↔ stuff_ids[s-1]
    stuff_names: Tuple[str, ...] = ()
    head_channels: int = 128
    head_norm: str = "GN"
    share_basis_features: bool = False       # read the bottom module's fused P3–P5, not own stacks
    loss_weight: float = 0.5                 # loss_sem_seg
    score_thresh: float = 0.2                # the paper's; the official config uses 0.45
    overlap_thresh: float = 0.4
    stuff_area: int = 4096                   # px on an 800×1200 image; scaled to each image's area


@dataclass
class InputConfig:
    """Resizing and augmentation (spec §8); the model itself never resizes."""

    train_short_sizes: Tuple[int, ...] = (640, 672, 704, 736, 768, 800)
    train_max_size: int = 1333
    test_short_size: int = 800
    test_max_size: int = 1333
    flip_prob: float = 0.5


@dataclass
class SolverConfig:
    """SGD with linear warm-up and a step schedule (spec §8)."""

    optimizer: str = "sgd"                   # "sgd" (the paper) | "adamw"
    batch_size: int = 16
    base_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0           # no weight decay on norm parameters
    max_iter: int = 270_000
    steps: Tuple[int, ...] = (210_000, 250_000)
    gamma: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    clip_grad_norm: Optional[float] = None
    amp: bool = False                        # torch.autocast on CUDA
    checkpoint_period: int = 5000


@dataclass
class Config:
    """The whole configuration. ``category_ids``/``class_names`` describe the dataset's things."""

    name: str = "coco_r50_3x"
    num_classes: int = 80
    category_ids: Tuple[int, ...] = ()
    class_names: Tuple[str, ...] = ()
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fcos: FCOSConfig = field(default_factory=FCOSConfig)
    blendmask: BlendMaskConfig = field(default_factory=BlendMaskConfig)
    panoptic: PanopticConfig = field(default_factory=PanopticConfig)
    input: InputConfig = field(default_factory=InputConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    seed: int = 0


def _coco_r50_3x() -> Config:
    return Config(name="coco_r50_3x")


def _coco_r50_3x_panoptic() -> Config:
    """The paper's panoptic model (its Appendix A, spec §7): ``coco_r50_3x`` + Panoptic-FPN's
    semantic head (width 128, GN, ``loss_sem_seg`` weight 0.5) and fusion (overlap 0.4, stuff
    regions ≥ 4096 px). The stuff classes come from the data (COCO panoptic: 53).

    Departures: the semantic head reads P3–P5 (the official one also reads P2, which this
    package's FPN does not build); the instance threshold of the fusion is the paper's 0.2,
    where the official config's 0.45 reproduces its README's PQ (``--panoptic.score_thresh 0.45``).
    """
    return Config(name="coco_r50_3x_panoptic", panoptic=PanopticConfig(enabled=True))


def _coco_r50_short() -> Config:
    """The paper's model on one GPU, on a COCO subset, aimed at about an hour of training.

    The model is the paper's unchanged: R-50 from ImageNet weights with frozen BN and frozen
    stem + res2, FPN P3–P7, the FCOS head (4 convs, GN), K = 4 bases, attention M = 14,
    blender R = 56; the input recipe too (shorter side 640–800, longer ≤ 1333, flip).
    Departures, each for one GPU and a short budget (the hour is the target, not a measurement:
    the step time depends on the GPU):
    - batch 8 instead of 16 (4 GPUs × 4 images in the paper): one GPU's memory;
    - base LR 0.005 by the linear scaling rule (Goyal et al., 2017): the LR is proportional to
      the total batch size, 0.01 × 8 / 16 — two SGD steps of 8 images at LR η move the weights
      about as far as one step of 16 images at 2η. The paper's 1000-iteration linear warm-up
      is kept: it absorbs the large, unstable steps of the first iterations;
    - 12,000 iterations (96k images, e.g. about 5 epochs of a 20k-image subset made with
      ``blendmask-edu data subset --images 20000``) instead of 270,000 of batch 16 (4.3M
      images), with the LR steps at 9,000 and 10,800 (75 % and 90 %; the 3× schedule drops at
      78 % and 93 %): expect a mask AP far below the paper's;
    - mixed precision (``amp``: torch.autocast and a GradScaler, CUDA only; the paper trained in
      fp32): faster and lighter on GPUs with tensor cores; the losses are computed in fp32;
    - a checkpoint every 1000 iterations instead of 5000, so that an interrupted short run
      loses only a few minutes.
    """
    return Config(
        name="coco_r50_short",
        solver=SolverConfig(batch_size=8, base_lr=0.005, max_iter=12_000, steps=(9_000, 10_800),
                            warmup_iters=1000, amp=True, checkpoint_period=1000),
    )


SHAPES_CLASSES = ("circle", "triangle", "rectangle", "star", "ring")


def _tiny() -> Config:
    """The CPU preset: shapes at 128 px, about 7½ minutes of training on 2 cores.

    Measured on shapes val, 2 threads, on a quiet machine, two runs: 4000 steps in 420 s and
    454 s gave box AP 58.9 / 59.8, mask AP 50.8 / 51.1 and PQ 57.9 / 57.9 (before the panoptic
    head: box 59.8, mask 50.5 in 441 s; 2000 steps of that: box 47.2, mask 38.5). Departures
    from the paper, each for the CPU and the small images:
    - a narrow ResNet-18 (stem width 16 instead of 64: 4× fewer channels everywhere) from
      random weights, with trainable BatchNorm and nothing frozen: there are no ImageNet weights
      offline, frozen BN with identity statistics does not train from scratch, and the narrow
      trunk makes a step several times cheaper (FCOS: 0.13 s vs 0.5 s at batch 8), so the
      minutes hold thousands of steps instead of hundreds (box AP 44 vs 4 for width 64 with
      SGD, 300 steps);
    - FPN and head width 64 and 2 convs per tower instead of 256 and 4;
    - levels P3–P5 only, with the size ranges scaled to the image (P3 ≤ 16 < P4 ≤ 32 < P5 px):
      objects are 8–110 px, so P6/P7 (strides 64/128) would see almost nothing;
    - the blender and bases scaled to the objects: M = 7, R = 28 (objects of 8–110 px; R = 56
      would mostly upsample), a bottom module of width 32 with 2 tower convs;
    - AdamW (lr 2e-3, weight decay 0.05) for 4000 steps of batch 8 with steps at 3000/3600:
      from scratch and this short, SGD at lr 0.02–0.08 reached box AP 3–4 where AdamW reached 7
      (FCOS, 300 steps, width 64); batch 4 for 4000 steps (half the images, 0.054 s against
      0.086 s per step) reached mask AP 40.2;
    - no scale jitter (flip only): a short schedule has no time to benefit from it;
    - panoptic on shapes' 4 stuff classes (sky, ground, pole, net), with a semantic head of
      width 32 instead of 128 that reads the bottom module's fused features instead of its own
      P3–P5 stacks (``share_basis_features``, an option the paper only suggests; the official
      head is separate). Measured at 4000 steps, one seed each: shared PQ 57.9, PQ_th 60.5,
      PQ_st 54.7, mIoU 70.4, mask AP 50.8 in 420 s; own head 54.8 / 57.4 / 51.6 / 68.0 / 48.7,
      with 9 times the parameters (83k against 9k).
    """
    return Config(
        name="tiny", num_classes=5, category_ids=(1, 2, 3, 4, 5), class_names=SHAPES_CLASSES,
        backbone=BackboneConfig(depth=18, pretrained=False, frozen_stages=0, norm="bn",
                                fpn_channels=64, levels=(3, 4, 5), width=16),
        fcos=FCOSConfig(num_convs=2, sizes_of_interest=(16, 32), pre_nms_topk=200,
                        max_detections=50),
        blendmask=BlendMaskConfig(attn_size=7, blend_resolution=28, basis_channels=32,
                                  basis_convs=2),
        panoptic=PanopticConfig(enabled=True, stuff_ids=(6, 7, 8, 9),
                                stuff_names=("sky", "ground", "pole", "net"), head_channels=32,
                                share_basis_features=True),
        input=InputConfig(train_short_sizes=(128,), train_max_size=240,
                          test_short_size=128, test_max_size=240),
        solver=SolverConfig(optimizer="adamw", batch_size=8, base_lr=0.002, weight_decay=0.05,
                            max_iter=4000, steps=(3000, 3600), warmup_iters=50,
                            checkpoint_period=500, clip_grad_norm=10.0),
    )


PRESETS = {"coco_r50_3x": _coco_r50_3x, "coco_r50_3x_panoptic": _coco_r50_3x_panoptic,
           "coco_r50_short": _coco_r50_short, "tiny": _tiny}


def get_config(name: str) -> Config:
    """A fresh copy of the named preset (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


def to_dict(cfg: Config) -> Dict[str, Any]:
    """The config as plain JSON-ready data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _coerce(tp, value):
    """Turn JSON data back into the annotated type ``tp`` (dataclasses, tuples, Optional)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(value, tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(args[0], value)
    if origin in (tuple, Tuple):
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v) for v in value)
    if tp is float and isinstance(value, int):
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
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2) + "\n")


def load_config(path: Union[str, Path]) -> Config:
    return from_dict(json.loads(Path(path).read_text()))


def _field_type(cfg: Config, key: str):
    """The annotated type of the field at the dotted ``key``; ValueError naming the known keys
    at the level where ``key`` went wrong."""
    parts, node = key.split("."), cfg
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(node)]
        where = ".".join(parts[:depth])
        if part not in names:
            known = ", ".join(f"{where}.{n}" if where else n for n in names)
            raise ValueError(f"{key}: unknown config key; known {'keys of ' + where if where else 'keys'}: "
                             f"{known}")
        value = getattr(node, part)
        if depth < len(parts) - 1:
            if not dataclasses.is_dataclass(value):
                raise ValueError(f"{key}: unknown config key; {'.'.join(parts[:depth + 1])} is a "
                                 f"value, not a section")
            node = value
        elif dataclasses.is_dataclass(value):
            first = dataclasses.fields(value)[0].name
            raise ValueError(f"{key} is a config section; set one of its keys, e.g. {key}.{first}")
    return typing.get_type_hints(type(node))[parts[-1]]


def _fits(tp, value) -> bool:
    """Whether ``value`` is of the annotated type ``tp`` (the types configs use)."""
    origin = typing.get_origin(tp)
    if origin is Union:
        return any(_fits(arg, value) for arg in typing.get_args(tp))
    if origin is tuple:
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else Any
        return isinstance(value, tuple) and all(_fits(inner, v) for v in value)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return True


def _type_name(tp) -> str:
    """``Optional[float]`` → "float or null", ``Tuple[int, ...]`` → "a list of int, e.g. [1, 2]"."""
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    if typing.get_origin(tp) is Union:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if typing.get_origin(tp) is tuple:
        return f"a list of {_type_name(args[0]) if args else 'values'}, e.g. [1, 2]"
    return getattr(tp, "__name__", str(tp))


def _replace(cfg, parts, value):
    head, rest = parts[0], parts[1:]
    if rest:
        return dataclasses.replace(cfg, **{head: _replace(getattr(cfg, head), rest, value)})
    return dataclasses.replace(cfg, **{head: value})


def override(cfg: Config, key: str, value: str) -> Config:
    """``override(cfg, "solver.base_lr", "0.01")`` → a new config. The text is read as JSON
    (``[16, 32]``, ``null``, ``true``), else as plain text, and must fit the field's type; an
    unknown key or a value of the wrong type is a ValueError that says what is expected."""
    tp = _field_type(cfg, key)
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    try:
        coerced = _coerce(tp, parsed)
    except (TypeError, ValueError):
        coerced = parsed
    if not _fits(tp, coerced) and _fits(tp, value):
        coerced = value  # "3" for a text field stays text
    if not _fits(tp, coerced):
        raise ValueError(f"{key} {value}: expected {_type_name(tp)}")
    return _replace(cfg, key.split("."), coerced)


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
