"""Checkpoints: what a run saves to resume exactly, written so that a crash never spoils them.

A checkpoint (``RUN/last.pt``) is one ``torch.save`` file holding plain data only, so that
``torch.load(path, weights_only=True)`` reads it (no pickled Python objects, nothing executed):

    format     "blendmask_edu/1"
    model      the state dict (of the module inside DistributedDataParallel, if wrapped)
    optimizer  the optimizer's state dict (SGD momentum buffers, AdamW moments)
    iteration  the number of finished iterations: training resumes at this iteration index
    config     ``config.to_dict(cfg)``, enough to rebuild the model (:func:`load_model`)
    rng        the random states of torch (CPU and CUDA), NumPy and Python's ``random``
    extra      plain data the engine adds (running loss sums, elapsed time, AMP scaler state)

The learning-rate schedule has no state of its own: it is ``lr_factor(iteration, cfg.solver)``
(``solver.py``), and both arguments are in the file.

Writing is atomic: the file is written under a temporary name in the same folder, flushed to
disk (``fsync``) and renamed over the old one (``os.replace``, atomic on POSIX and Windows). A
run killed at any moment leaves either the previous complete checkpoint or the new one.
Introduced in ``notebooks/04_train.ipynb``.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from blendmask_edu import config as config_lib
from blendmask_edu.modeling.blendmask import build_model
from blendmask_edu.utils import unwrap

FORMAT = "blendmask_edu/1"
REQUIRED_KEYS = ("format", "model", "optimizer", "iteration", "config", "rng")
PathLike = Union[str, Path]


class CheckpointError(Exception):
    """A checkpoint that cannot be used: ``str(error) == f"{path}: {problem}"``."""

    def __init__(self, path: PathLike, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = Path(path), problem


# ----------------------------------------------------------------------------- random states


def capture_rng() -> Dict[str, Any]:
    """The states of every random generator a training step may draw from, as plain data.

    NumPy's and Python's states are tuples of Python/NumPy objects; they are stored as tensors,
    ints and floats so that ``torch.load(weights_only=True)`` accepts them.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def restore_rng(state: Dict[str, Any]) -> None:
    """Set every generator back to a :func:`capture_rng` state. CUDA states are restored for
    as many devices as both the state and this machine have."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        count = min(len(cuda), torch.cuda.device_count())
        for index in range(count):
            torch.cuda.set_rng_state(cuda[index], index)
    saved = state["numpy"]
    np.random.set_state((saved["name"], saved["keys"].numpy().astype(np.uint32), saved["pos"],
                         saved["has_gauss"], saved["cached_gaussian"]))
    saved = state["python"]
    random.setstate((saved["version"], tuple(int(v) for v in saved["internal"].tolist()),
                     saved["gauss_next"]))


# ----------------------------------------------------------------------------- save and load


def save_checkpoint(path: PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    iteration: int, cfg: config_lib.Config,
                    extra: Optional[Dict[str, Any]] = None) -> None:
    """Write a checkpoint atomically (temporary file in the same folder, fsync, rename).

    The random states are captured here, so call it at the point of the loop where a resumed
    run will restart (after an iteration's update, before the next batch is drawn).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "model": unwrap(model).state_dict(),
               "optimizer": optimizer.state_dict(), "iteration": int(iteration),
               "config": config_lib.to_dict(cfg), "rng": capture_rng(), "extra": extra or {}}
    # Same folder: os.replace is only atomic within one file system.
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> Dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``; :class:`CheckpointError` for a
    missing, truncated or corrupt file, or one that is not a blendmask_edu checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, KeyError,
            zipfile.BadZipFile) as error:  # a text file fails inside the loader with a KeyError
        # the weights-only unpickler wraps its reason (kept as the context) in a long advice text
        inner = error.__context__ if isinstance(error, pickle.UnpicklingError) else None
        reason = _first_line(inner or error).split(" Please use")[0]
        if "Unsupported global" in reason:
            raise CheckpointError(path, f"not a blendmask_edu checkpoint: it holds Python objects "
                                        f"that torch.load(weights_only=True) refuses "
                                        f"({reason})") from None
        raise CheckpointError(path, f"cannot be read: truncated, corrupt or not a torch.save "
                                    f"file ({type(error).__name__}: {reason})") from None
    if not isinstance(data, dict):
        raise CheckpointError(path, f"not a blendmask_edu checkpoint: it holds a "
                                    f"{type(data).__name__}, not a dict")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        bare = data and all(torch.is_tensor(v) for v in data.values())
        hint = " (a bare state dict?)" if bare else ""
        raise CheckpointError(path, f"not a blendmask_edu checkpoint{hint}: missing "
                                    f"key(s) {', '.join(missing)}")
    if not str(data["format"]).startswith("blendmask_edu/"):
        raise CheckpointError(path, f"not a blendmask_edu checkpoint: format {data['format']!r}")
    if data["format"] != FORMAT:
        raise CheckpointError(path, f"format {data['format']!r}; this version reads {FORMAT!r}")
    return data


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_state_dict(model: nn.Module, state: Dict[str, torch.Tensor], path: PathLike) -> None:
    """``model.load_state_dict(state)``, with a mismatch reported as a :class:`CheckpointError`
    that counts the missing and unexpected keys and names the first few."""
    own = unwrap(model).state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or reshaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("of another shape (checkpoint vs model)", reshaped)):
            if keys:
                shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
                parts.append(f"{len(keys)} key(s) {label}: {shown}")
        raise CheckpointError(path, "the weights do not fit the model: " + "; ".join(parts))
    unwrap(model).load_state_dict(state)


def load_model(path: PathLike, device: Optional[Union[str, torch.device]] = None,
               preset: Optional[str] = None) -> Tuple[nn.Module, config_lib.Config]:
    """The BlendMask model of a checkpoint, in eval mode, and its config.

    The model is built from the checkpoint's own config without downloading anything
    (``backbone.pretrained`` off: the trained weights replace ImageNet's anyway). ``preset``,
    if given, must be the preset the checkpoint was trained from.
    """
    data = load_checkpoint(path)
    try:
        cfg = config_lib.from_dict(data["config"])
    except (ValueError, TypeError) as error:
        raise CheckpointError(path, f"its config cannot be read: {error}") from None
    if preset is not None and preset != cfg.name:
        raise CheckpointError(path, f"trained with preset {cfg.name!r}, not {preset!r}")
    offline = dataclasses.replace(cfg, backbone=dataclasses.replace(
        cfg.backbone, pretrained=False, weights_path=None))
    model = build_model(offline)
    load_state_dict(model, data["model"], path)
    if device is not None:
        model.to(device)
    return model.eval(), cfg
