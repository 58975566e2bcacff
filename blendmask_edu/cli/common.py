"""What the commands share: the one-line usage error, presets and their overrides, the device,
opening a dataset split, fitting the categories to the data, and printing metrics.

Heavy modules are imported inside the functions that use them, so that ``--help`` and a command
that does not need them start without loading them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from blendmask_edu.data.errors import DatasetError


class UsageError(Exception):
    """A wrong command-line argument (preset, override, device, ...): reported in one line."""


def preset(name: str):
    """The :class:`~blendmask_edu.config.Config` of preset ``name``; UsageError listing the
    presets for an unknown one."""
    from blendmask_edu.presets import get_config

    try:
        return get_config(name)
    except ValueError as error:  # the message lists the presets
        raise UsageError(str(error)) from None


def parse_overrides(extra: Sequence[str]) -> List[Tuple[str, Union[str, Tuple[str, ...]]]]:
    """``["--solver.base_lr", "0.01", "--seed=3"]`` → ``[("solver.base_lr", "0.01"), ("seed", "3")]``;
    dashes in a key become underscores. Every token up to the next ``--`` option is a value:
    ``["--input.train_short_sizes", "320", "352"]`` → ``("input.train_short_sizes", ("320",
    "352"))`` (a tuple when there are several; :func:`config_override.override` reads them, a one-value
    field refuses several). UsageError for a token that is not an override."""
    pairs, i = [], 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or token == "--":
            raise UsageError(f"unexpected argument {token!r}; config overrides are written "
                             f"--section.key value (e.g. --solver.base_lr 0.01)")
        key, has_value, value = token[2:].partition("=")
        values = [value] if has_value else []
        while i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            i += 1
            values.append(extra[i])
        if not values:
            raise UsageError(f"--{key} needs a value")
        pairs.append((key.replace("-", "_"), values[0] if len(values) == 1 else tuple(values)))
        i += 1
    return pairs


def apply_overrides(cfg, pairs: Sequence[Tuple[str, str]]):
    """``cfg`` (a Config) with each ``(dotted key, text)`` applied by :func:`config_override.override`
    (which checks the key and the value's type); a wrong one is a UsageError, reported in one
    line."""
    from blendmask_edu.config_override import override

    for key, text in pairs:
        try:
            cfg = override(cfg, key, text)
        except ValueError as error:
            raise UsageError(f"--{error}") from None
    return cfg


def offline_weights_message(error) -> str:
    """The one line for the backbone's ``WeightsUnavailable`` (``depth``, ``url``, ``target``,
    ``reason``): what failed and the command-line ways out."""
    return (f"the ImageNet weights of ResNet-{error.depth} cannot be downloaded ({error.reason}); "
            f"fetch {error.url} elsewhere and pass --backbone.weights_path FILE (or put it at "
            f"{error.target}), or start from random weights with --backbone.pretrained false")


def choose_device(name: Optional[str]):
    """The ``torch.device`` of ``--device`` (``cpu``, ``cuda`` or None: CUDA when available);
    UsageError for ``cuda`` on a machine without it."""
    import torch

    from blendmask_edu.utils import pick_device

    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine; use --device cpu")
    return pick_device(name)


def _no_data(root: Path, split: str) -> DatasetError:
    return DatasetError(root, f"data folder not found; make the shapes dataset with "
                              f"`blendmask-edu data shapes --out {root}`, or put COCO files "
                              f"there: images in {root / split}/ and "
                              f"{root / 'annotations'}/instances_{split}.json")


def split_name(root: Union[str, Path], split: Optional[str], role: str,
               flag: Optional[str] = None) -> str:
    """The split of the dataset at ``root`` to use as ``role`` ("train" or "val"): ``split``
    (the user's ``--train-split`` / ``--val-split`` / ``--split``, named ``flag`` in errors) if
    given, else ``train`` or ``train2017`` (``val`` or ``val2017``), whichever is there
    (:func:`blendmask_edu.data.files.resolve_split`). DatasetError when the folder is missing
    (saying how to make data) or no split fits (listing those found)."""
    from blendmask_edu.data.files import SPLIT_DEFAULTS, resolve_split

    root = Path(root)
    if not root.is_dir():
        raise _no_data(root, split or SPLIT_DEFAULTS[role][0])
    return resolve_split(root, split, role, flag)


def open_split(root: Union[str, Path], split: str, transforms=None, include_empty: bool = True,
               panoptic: Optional[bool] = False, cache_mb: float = 0):
    """The ``split`` of the COCO-layout dataset at ``root`` as a ``CocoInstances``, or
    DatasetError saying how to make or where to put the data. ``panoptic``: False, instances
    only; True, with the panoptic semantic labels, which must be there (UsageError); None, with
    them if they are there. ``cache_mb``: as ``CocoInstances`` takes it."""
    from blendmask_edu.data.coco import CocoInstances
    from blendmask_edu.data.files import dataset_paths

    root = Path(root)
    if not root.is_dir():
        raise _no_data(root, split)
    paths = dataset_paths(root, split)
    if panoptic is None:
        panoptic = paths.panoptic is not None and paths.panoptic_dir is not None
    if panoptic and (paths.panoptic is None or paths.panoptic_dir is None):
        raise UsageError(f"{root}: the model is panoptic, but there is no "
                         f"{root / 'annotations'}/panoptic_{split}.json with its PNG folder "
                         f"panoptic_{split}/; add them, or train with --panoptic.enabled false")
    return CocoInstances(paths.images_dir, paths.instances,
                         paths.panoptic if panoptic else None,
                         paths.panoptic_dir if panoptic else None, transforms=transforms,
                         include_empty=include_empty, cache_mb=cache_mb)


def training_sets(data, cfg, train_split: str, val_split: str):
    """(train split with the training transforms and only images with objects, val split) of
    the dataset at ``data`` (splits named, e.g. by :func:`split_name`); every image file of
    both is checked to exist (a stat each) before any training step. UsageError when the train
    split has fewer images with objects than one batch."""
    from blendmask_edu.data.transforms import build_train_transforms

    transforms = build_train_transforms(cfg.input.train_short_sizes, cfg.input.train_max_size,
                                        cfg.input.flip_prob)
    # Images without any object teach nothing here (the official recipe drops them too).
    panoptic = cfg.panoptic.enabled
    train_set = open_split(data, train_split, transforms, include_empty=False, panoptic=panoptic,
                           cache_mb=cfg.input.cache_mb)
    if len(train_set) < cfg.solver.batch_size:
        raise UsageError(f"{data}: {len(train_set)} training images with objects, fewer than one "
                         f"batch of {cfg.solver.batch_size}; add images or lower --solver.batch_size")
    val_set = open_split(data, val_split, panoptic=panoptic)
    for dataset in (train_set, val_set):  # hours in is too late to find a missing file
        dataset.check_files()
    return train_set, val_set


def fit_categories(cfg, dataset):
    """``cfg`` (a Config) with the thing (and, for a panoptic model, stuff) categories of
    ``dataset`` (a CocoInstances) when they differ from the preset's: the classifier needs C
    outputs and the results files the dataset's real ids. Each change is printed."""
    categories = dataset.categories
    ids, names = tuple(categories.thing_ids), tuple(categories.thing_names)
    if (cfg.num_classes, tuple(cfg.category_ids), tuple(cfg.class_names)) != (len(ids), ids, names):
        print(f"classes from the data ({len(ids)}): {', '.join(names)}")
        cfg = dataclasses.replace(cfg, num_classes=len(ids), category_ids=ids, class_names=names)
    stuff = tuple(categories.stuff_ids), tuple(categories.semantic_names[1:])
    if cfg.panoptic.enabled and (tuple(cfg.panoptic.stuff_ids), tuple(cfg.panoptic.stuff_names)) != stuff:
        print(f"stuff classes from the data ({len(stuff[0])}): {', '.join(stuff[1])}")
        cfg = dataclasses.replace(cfg, panoptic=dataclasses.replace(
            cfg.panoptic, stuff_ids=stuff[0], stuff_names=stuff[1]))
    return cfg


def backbone_label(cfg) -> str:
    """Table 1's backbone cell of a config: "R-50", or "R-18 (width 16)" for a narrow trunk."""
    width = cfg.backbone.width
    return f"R-{cfg.backbone.depth}" + (f" (width {width})" if width != 64 else "")


def print_metrics(metrics, out: Path, cfg, split: str = "val") -> None:
    """Print the AP table of ``metrics`` (the dict of ``evaluate_coco``), for a panoptic model
    the paper's Table 1 row too, and the files written into ``out``."""
    from blendmask_edu.evaluation.coco import RESULTS_FILE
    from blendmask_edu.evaluation.evaluate import PR_CURVE_FILE
    from blendmask_edu.evaluation.metrics import METRICS_FILE
    from blendmask_edu.evaluation.panoptic_files import prediction_paths
    from blendmask_edu.config import model_name
    from blendmask_edu.evaluation.tables import format_metrics

    print(format_metrics(metrics, method=f"{model_name(cfg)} (ours)",
                         backbone=backbone_label(cfg)))
    files = [out / METRICS_FILE, out / RESULTS_FILE, out / PR_CURVE_FILE]
    if "PQ" in metrics:
        files += list(prediction_paths(out, split))
    print("wrote " + ", ".join(map(str, files)))
