"""training.short_runs: the shortened preset, identical fresh models, and the notebooks' shared
model trained once then read back."""

from __future__ import annotations

import dataclasses

import torch

from blendmask_edu.presets import get_config
from blendmask_edu.training import short_runs
from blendmask_edu.training.checkpoint import load_checkpoint


def test_short_config_scales_the_schedule_and_applies_overrides():
    cfg = short_runs.short_config(400, "tiny", {"blendmask.attn_size": 14, "panoptic.enabled": False},
                                  batch_size=4)
    tiny = get_config("tiny").solver  # 4000 iterations, LR steps at 3000 and 3600
    assert (cfg.solver.max_iter, cfg.solver.steps) == (400, (300, 360))
    assert cfg.solver.warmup_iters == min(tiny.warmup_iters, 200) and cfg.solver.batch_size == 4
    assert cfg.blendmask.attn_size == 14 and cfg.panoptic.enabled is False
    assert cfg.blendmask.blend_resolution == get_config("tiny").blendmask.blend_resolution


def test_fresh_model_is_the_same_model_twice_and_another_with_another_seed():
    cfg = get_config("tiny")
    a, b, c = short_runs.fresh_model(cfg), short_runs.fresh_model(cfg), short_runs.fresh_model(cfg, seed=1)
    pairs = list(zip(a.state_dict().values(), b.state_dict().values(), c.state_dict().values()))
    assert all(torch.equal(x, y) for x, y, _ in pairs)
    assert not all(torch.equal(x, z) for x, _, z in pairs if x.is_floating_point())


def test_notebook_model_trains_once_then_reads_the_checkpoint(small_shapes, tmp_path, monkeypatch):
    tiny = get_config("tiny")
    quick = dataclasses.replace(tiny, solver=dataclasses.replace(tiny.solver, batch_size=4),
                                input=dataclasses.replace(tiny.input, train_short_sizes=(64,)))
    monkeypatch.setattr(short_runs, "NOTEBOOK_MODEL_PRESET", quick)
    monkeypatch.setattr(short_runs, "NOTEBOOK_MODEL_STEPS", {"ci": 2, "full": 3})
    runs = tmp_path / "runs"
    model, cfg, source = short_runs.notebook_model(small_shapes, "ci", runs=runs, progress=False)
    checkpoint = runs / "notebooks" / "model_ci" / "last.pt"
    assert load_checkpoint(checkpoint)["iteration"] == 2 and cfg.solver.max_iter == 2
    assert source.startswith(checkpoint.as_posix()) and "iteration 2" in source
    assert not model.training
    stamp = checkpoint.stat().st_mtime_ns
    again, _, _ = short_runs.notebook_model(small_shapes, "ci", runs=runs, progress=False)
    assert checkpoint.stat().st_mtime_ns == stamp  # read back, not trained again
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), again.state_dict().values()))
    # at the full scale a demo checkpoint, when there is one, is the model
    demo = runs / "demo"
    demo.mkdir()
    (demo / "last.pt").write_bytes(checkpoint.read_bytes())
    _, _, source = short_runs.notebook_model(small_shapes, "full", runs=runs, progress=False)
    assert source.startswith((demo / "last.pt").as_posix()) and "make demo" in source
