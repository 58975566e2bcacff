"""Checkpoints: plain data that weights_only loading accepts, atomic writes, clear errors, and
the random states."""

import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from blendmask_edu import build_model, get_config
from blendmask_edu.config import to_dict
from blendmask_edu.config_override import override
from blendmask_edu.training.checkpoint import (FORMAT, CheckpointError, capture_rng,
                                               load_checkpoint, load_model, restore_rng,
                                               save_checkpoint)
from blendmask_edu.training.solver import build_optimizer


def _small_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    optimizer = build_optimizer(model, get_config("tiny").solver)
    model(torch.rand(2, 3, 8, 8)).sum().backward()
    optimizer.step()  # AdamW now holds per-parameter state
    return model, optimizer


def test_saved_file_is_plain_data_that_weights_only_loading_reads(tmp_path):
    model, optimizer = _small_model()
    cfg = get_config("tiny")
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, model=model, optimizer=optimizer, iteration=7, cfg=cfg,
                    extra={"running": {"loss_mask": 0.5}, "count": 3})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["iteration"] == 7 and raw["config"] == to_dict(cfg)
    assert set(raw["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert raw["extra"] == {"running": {"loss_mask": 0.5}, "count": 3}
    for key, value in model.state_dict().items():
        torch.testing.assert_close(raw["model"][key], value, rtol=0, atol=0)
    saved_state = load_checkpoint(path)["optimizer"]["state"]
    assert saved_state.keys() == optimizer.state_dict()["state"].keys() and saved_state
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left


def test_ddp_wrapper_is_unwrapped(tmp_path):
    model, optimizer = _small_model()

    class Wrapped(nn.parallel.DistributedDataParallel):  # a DDP without a process group
        def __init__(self, module):
            nn.Module.__init__(self)
            self.module = module

    save_checkpoint(tmp_path / "last.pt", model=Wrapped(model), optimizer=optimizer, iteration=1,
                    cfg=get_config("tiny"))
    assert set(load_checkpoint(tmp_path / "last.pt")["model"]) == set(model.state_dict())


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer = _small_model()
    path = tmp_path / "last.pt"
    save_checkpoint(path, model=model, optimizer=optimizer, iteration=1, cfg=get_config("tiny"))

    def crash(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=model, optimizer=optimizer, iteration=2, cfg=get_config("tiny"))
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    model, optimizer = _small_model()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    np.random.normal()  # NumPy now holds a cached Gaussian
    save_checkpoint(tmp_path / "last.pt", model=model, optimizer=optimizer, iteration=0,
                    cfg=get_config("tiny"))
    expected = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng(load_checkpoint(tmp_path / "last.pt")["rng"])
    again = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    torch.testing.assert_close(again[0], expected[0], rtol=0, atol=0)
    np.testing.assert_array_equal(again[1], expected[1])
    assert again[2:] == expected[2:]
    state = capture_rng()  # and directly, without a file
    first = torch.rand(2)
    restore_rng(state)
    assert torch.equal(torch.rand(2), first)


class _Foreign:
    """Any class: torch.save pickles it by reference."""


def _problem(path):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path}: {info.value.problem}" and info.value.path == path
    return info.value.problem


def test_unusable_files_raise_checkpoint_errors_naming_the_file(tmp_path):
    model, optimizer = _small_model()
    good = tmp_path / "last.pt"
    save_checkpoint(good, model=model, optimizer=optimizer, iteration=1, cfg=get_config("tiny"))
    data = good.read_bytes()

    assert "not found" in _problem(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    assert "truncated, corrupt" in _problem(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint at all" * 10)
    assert "truncated, corrupt or not a torch.save file" in _problem(garbage)
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    assert "bare state dict" in _problem(bare) and "missing key(s) format" in _problem(bare)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": _Foreign()}, foreign)  # a pickled Python object: refused, never built
    assert "Python objects that torch.load(weights_only=True) refuses" in _problem(foreign)
    assert "_Foreign" in _problem(foreign)
    plain_pickle = tmp_path / "plain.pkl"
    plain_pickle.write_bytes(pickle.dumps({"model": 1}, protocol=2))
    assert "not a torch.save file" in _problem(plain_pickle)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = get_config("tiny")
    model = build_model(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    save_checkpoint(path, model=model, optimizer=build_optimizer(model, cfg.solver),
                    iteration=5, cfg=cfg)
    return path, model, cfg


def test_load_model_rebuilds_the_model_in_eval_mode(tiny_checkpoint):
    path, model, cfg = tiny_checkpoint
    loaded, loaded_cfg = load_model(path, device="cpu", preset="tiny")
    assert loaded_cfg == cfg and not loaded.training
    for (name, a), (_, b) in zip(loaded.state_dict().items(), model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_load_model_errors_name_the_presets_and_the_keys(tiny_checkpoint, tmp_path):
    path, model, cfg = tiny_checkpoint
    with pytest.raises(CheckpointError, match="trained with preset 'tiny', not 'coco_r50_short'"):
        load_model(path, preset="coco_r50_short")
    # a checkpoint whose weights do not fit its config: 3 bases instead of 4, one conv fewer
    other = override(override(cfg, "blendmask.num_bases", "3"), "blendmask.basis_convs", "1")
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, model=model, optimizer=build_optimizer(model, cfg.solver), iteration=5,
                    cfg=other)
    with pytest.raises(CheckpointError) as info:
        load_model(bad)
    problem = info.value.problem
    assert "do not fit" in problem and "key(s) unexpected: basis.tower.1" in problem
    assert "of another shape" in problem and "basis.bases.weight" in problem
