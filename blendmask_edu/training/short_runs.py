"""Short trainings of a preset, and the one trained model the notebooks share.

The notebooks train small models again and again: an ablation row, a variant of the semantic
head, two copies of a run to show that resuming is exact. Each is "the preset, shortened to
``steps`` iterations, with a few fields changed, from the preset's seed". That recipe lives here
(:func:`short_config`, :func:`fresh_model`, :func:`train_short`), so a notebook cell says only
what it changes.

Notebooks 03, 05 and 06 also need *a model that works*: one to follow through the blender, to
evaluate, to fuse. :func:`notebook_model` gives the same one to all of them, found through one
documented path:

1. at the full scale, ``runs/demo/last.pt`` when ``make demo`` has written it;
2. otherwise ``runs/notebooks/model_<scale>/last.pt``, trained the first time a notebook asks
   for it (:data:`NOTEBOOK_MODEL_STEPS` iterations of ``tiny_fast``), then reused. The run is
   an ordinary training folder: interrupted, it resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch
from torch import nn

from .. import utils
from ..config import Config
from ..config_override import override
from ..data.coco import CocoInstances
from ..data.files import dataset_paths
from ..data.transforms import build_train_transforms
from ..modeling.blendmask import build_model
from ..presets import get_config
from .checkpoint import load_checkpoint, load_model
from .engine import train
from .solver import scale_schedule

PathLike = Union[str, Path]

# The shared model's training when ``make demo`` has not run: ``tiny_fast`` (batch 16), this many
# iterations. The full scale is the demo's own schedule. The CI scale is a run short enough for
# CI that still learns: on shapes val, 150 iterations gave mask AP 2.6 and PQ 20.1, 300 gave
# mask AP 8.3 and PQ 26.9 (about two minutes on 2 cores); notebooks 05 and 06 assert floors on it.
NOTEBOOK_MODEL_STEPS = {"ci": 300, "full": 2000}
NOTEBOOK_MODEL_PRESET = "tiny_fast"


class ShortRun(NamedTuple):
    """What :func:`train_short` returns: the trained model (in eval mode), its config, the
    training log (``engine.train``'s) and the wall-clock seconds of the training."""
    model: nn.Module
    cfg: Config
    log: List[Dict]
    seconds: float


def short_config(max_iter: int, preset: Union[str, Config] = "tiny",
                 overrides: Optional[Mapping[str, object]] = None, **solver_changes) -> Config:
    """``preset`` (a name or a Config) trained for ``max_iter`` iterations instead of its own
    schedule.

    The LR steps move in proportion and the warm-up is kept but at most half the run
    (``solver.scale_schedule``). ``overrides`` maps dotted config keys to values, as on the
    command line (``{"blendmask.attn_size": 14, "panoptic.share_basis_features": "true"}``);
    ``solver_changes`` replace solver fields afterwards (e.g. ``batch_size=4``, ``steps=(8,)``).
    """
    cfg = get_config(preset) if isinstance(preset, str) else preset
    for key, value in (overrides or {}).items():
        cfg = override(cfg, key, value if isinstance(value, str) else str(value).lower()
                       if isinstance(value, bool) else str(value))
    solver = dataclasses.replace(scale_schedule(cfg.solver, max_iter), **solver_changes)
    return dataclasses.replace(cfg, solver=solver)


def train_set(root: PathLike, cfg: Config, split: str = "train") -> CocoInstances:
    """The ``split`` of the COCO-layout folder ``root`` as ``blendmask-edu train`` reads it:
    ``cfg``'s training augmentation (random shorter side, flip), only the images with objects,
    the decoded images cached as ``cfg.input.cache_mb`` allows; panoptic labels when present."""
    transforms = build_train_transforms(cfg.input.train_short_sizes, cfg.input.train_max_size,
                                        cfg.input.flip_prob)
    return CocoInstances.from_paths(dataset_paths(root, split), transforms=transforms,
                                    include_empty=False, cache_mb=cfg.input.cache_mb)


def fresh_model(cfg: Config, seed: Optional[int] = None) -> nn.Module:
    """A new model of ``cfg``, its weights drawn after seeding everything with ``seed``
    (``cfg.seed`` by default): two calls give identical models."""
    utils.seed_everything(cfg.seed if seed is None else seed)
    return build_model(cfg)


def train_short(cfg: Config, root: PathLike, seed: Optional[int] = None, **train_args) -> ShortRun:
    """Train :func:`fresh_model` ``(cfg, seed)`` on ``root``'s train split with ``cfg.solver``.

    ``seed`` (``cfg.seed`` by default) sets both the initial weights and the data order, so
    repeating a run over seeds shows how much its result owes to chance. ``train_args`` go to
    ``engine.train`` (``progress``, ``log_period``, ``on_log``, ``out_dir``, ...; ``progress``
    defaults to False here). Returns a :class:`ShortRun`.
    """
    if seed is not None:
        cfg = dataclasses.replace(cfg, seed=seed)
    model = fresh_model(cfg)
    data = train_set(root, cfg)
    train_args.setdefault("progress", False)
    start = time.perf_counter()
    log = train(model, data, cfg, **train_args)
    return ShortRun(model.eval(), cfg, log, time.perf_counter() - start)


def notebook_model(root: PathLike, scale: str, runs: PathLike = "runs",
                   progress: bool = True) -> Tuple[nn.Module, Config, str]:
    """The trained model notebooks 03, 05 and 06 share, in eval mode: ``(model, cfg, source)``
    with ``source`` a sentence saying which checkpoint it is.

    ``scale`` is ``"ci"`` or ``"full"`` (``utils.notebook_scale()``); ``runs`` is the project's
    ``runs/`` folder (``"../runs"`` from ``notebooks/``). At the full scale ``runs/demo/last.pt``
    is used when it exists and holds a panoptic model; otherwise ``runs/notebooks/model_<scale>``
    is trained once (module docstring) and read back on later calls.
    """
    if scale not in NOTEBOOK_MODEL_STEPS:
        raise ValueError(f"scale={scale!r}: expected one of {', '.join(NOTEBOOK_MODEL_STEPS)}")
    runs = Path(runs)
    demo = runs / "demo" / "last.pt"
    if scale == "full" and demo.is_file():
        model, cfg = load_model(demo)
        if cfg.panoptic.enabled:
            return model, cfg, _describe(demo, "written by `make demo`")
    folder = runs / "notebooks" / f"model_{scale}"
    steps = NOTEBOOK_MODEL_STEPS[scale]
    done = folder / "last.pt"
    if not (done.is_file() and load_checkpoint(done)["iteration"] >= steps):
        cfg = short_config(steps, NOTEBOOK_MODEL_PRESET)
        train_short(cfg, root, out_dir=folder, resume=True, progress=progress, log_period=10)
    model, cfg = load_model(done)
    return model, cfg, _describe(done, f"trained by `notebook_model` ({steps} iterations of "
                                       f"{cfg.name}) the first time a notebook asked for it")


def _describe(path: Path, how: str) -> str:
    iteration = load_checkpoint(path)["iteration"]
    return f"{path.as_posix()} (iteration {iteration}), {how}"
