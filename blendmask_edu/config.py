"""Typed configuration: the dataclass tree that is the one home of every default, and its
JSON round trip.

``build_model(cfg)`` (in :mod:`blendmask_edu.modeling.blendmask`) is the one place that reads a
config; the named presets are in :mod:`blendmask_edu.presets` (``get_config(name)``). Change a
config with ``dataclasses.replace`` or :func:`override` (the CLI's typed ``--section.key value``
flags). Every checkpoint saves ``to_dict(cfg)`` and loads it back with :func:`from_dict`.

The typed coercion (:func:`from_dict`, :func:`override`) is written here rather than taken from a
library such as ``dacite``: the messages name the section and the known keys, a bool is not an
int, and a string is never read as a list of characters.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from blendmask_edu.fileio import json_ready, write_json


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
    # The memory layout of the weights and activations: "eval" runs inference channels-last
    # (NHWC), which oneDNN's CPU convolutions prefer (BlendMask R-50 at 512²: 15 % faster), and
    # trains in the default layout (a training step there was 19 % slower channels-last);
    # "always" | "never".
    channels_last: str = "eval"


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
    basis_semantic_channels: int = 128       # width of that head (the official: the module's 128)
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
    # stuff regions under stuff_area px are dropped, counted at the original image size: the
    # official 4096 on any image with a longer side ≥ 640 px (all of COCO); smaller images get
    # it × (longer side / 640)², e.g. 164 px at 128 px (panoptic.stuff_area_for, the one rule)
    stuff_area: int = 4096


@dataclass
class InputConfig:
    """Resizing and augmentation (spec §8); the model itself never resizes."""

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
    """SGD with linear warm-up and a step schedule (spec §8)."""

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
    """``Optional[float]`` → "float or null", ``Tuple[int, ...]`` → "a list of int, e.g. 1,2"."""
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    if typing.get_origin(tp) is Union:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if typing.get_origin(tp) is tuple:
        inner = args[0] if args else None
        example = "a,b" if inner is str else "1,2 or 1 2"
        return f"a list of {_type_name(inner) if inner else 'values'}, e.g. {example} or [...]"
    return getattr(tp, "__name__", str(tp))


def _element_type(tp):
    """The element type of a list field (``Tuple[int, ...]`` → int, through Optional), or None
    for a field that holds one value."""
    if typing.get_origin(tp) is Union:
        inner = [_element_type(a) for a in typing.get_args(tp) if a is not type(None)]
        return inner[0] if len(inner) == 1 else None
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        return args[0] if args else Any
    return None


def _parse_one(tp, text: str):
    """One command-line text as a value of type ``tp``: JSON if it reads as JSON and fits,
    else the text itself (``"3"`` for a text field stays text). May not fit ``tp``."""
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text
    try:
        coerced = _coerce(tp, parsed)
    except (TypeError, ValueError):
        coerced = parsed
    return text if not _fits(tp, coerced) and _fits(tp, text) else coerced


def _parse_list(tp, inner, text: str):
    """One text for a list field: JSON (``[320, 352]``, ``null``), or the elements separated by
    commas — and, for numbers, by spaces too (``320,352``, ``"320 352"``, ``320``). Names are
    split at commas only: ``traffic light`` is one name."""
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text
    if parsed is None or isinstance(parsed, list):
        return _parse_one(tp, text)
    separators = r"," if inner is str else r"[,\s]+"
    parts = [part.strip() for part in re.split(separators, text.strip())]
    return tuple(_parse_one(inner, part) for part in parts if part)


def _replace(cfg, parts, value):
    """``cfg`` with the field at the key ``parts`` (["solver", "base_lr"]) set, sections copied."""
    head, rest = parts[0], parts[1:]
    if rest:
        return dataclasses.replace(cfg, **{head: _replace(getattr(cfg, head), rest, value)})
    return dataclasses.replace(cfg, **{head: value})


def override(cfg: Config, key: str, value: Union[str, Sequence[str]]) -> Config:
    """``override(cfg, "solver.base_lr", "0.01")`` → a new config; the one parser of the
    command line's values. ``value`` is one text or, for a list field, several (the tokens a
    user typed, one element each). A text is read as JSON (``[16, 32]``, ``null``, ``true``),
    else as plain text; a list field also takes ``320``, ``320,352`` and ``"320 352"``
    (:func:`_parse_list`). The result must fit the field's type; an unknown key, a value of the
    wrong type or several values for a one-value field is a ValueError saying what is expected."""
    tp = _field_type(cfg, key)
    texts = [value] if isinstance(value, str) else list(value)
    shown, inner = " ".join(texts), _element_type(tp)
    if inner is None and len(texts) != 1:
        raise ValueError(f"{key} {shown}: takes one value, not {len(texts)}; expected "
                         f"{_type_name(tp)}")
    if inner is None:
        coerced = _parse_one(tp, texts[0])
    elif len(texts) == 1:
        coerced = _parse_list(tp, inner, texts[0])
    else:
        coerced = tuple(_parse_one(inner, text) for text in texts)
    if not _fits(tp, coerced):
        raise ValueError(f"{key} {shown}: expected {_type_name(tp)}")
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
