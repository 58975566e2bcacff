"""The training recipe: parameter groups, the learning-rate schedule, the data stream, a loss that
falls; the run files, exact resumption, a non-finite loss, a killed run."""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

from blendmask_edu import build_model
from blendmask_edu.config import SolverConfig, load_config, save_config
from blendmask_edu.modeling.detector import build_fcos
from blendmask_edu.presets import get_config
from blendmask_edu.training.checkpoint import load_checkpoint
from blendmask_edu.training import engine
from blendmask_edu.training.engine import autocast_dtype, precision_name, train
from blendmask_edu.training.sampling import batch_indices, batches
from blendmask_edu.training.solver import build_optimizer, lr_factor
from conftest import shapes_train_set


@pytest.fixture(autouse=True)
def one_thread():
    """Every test here runs torch on one thread, for two reasons. Bitwise repeatability: with
    several threads, the backward of ``crops[gt_index]`` in the mask loss (index_put_ with
    accumulate) adds rows in a varying order, so even two uninterrupted runs differ (~1e-11 in
    a gradient, ~1e-5 in the weights after 6 steps, measured with 2 threads);
    ``torch.use_deterministic_algorithms(True)`` is the other cure. Speed: on a shared CPU,
    one thread ran these tiny steps faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_no_weight_decay_on_norm_parameters():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.Linear(4, 2))
    optimizer = build_optimizer(model, SolverConfig(weight_decay=1e-4, weight_decay_norm=0.0))
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    for module in model:
        for p in module.parameters():
            want = 0.0 if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)) else 1e-4
            assert decay[id(p)] == want


def test_lr_factor_warmup_and_steps():
    solver = SolverConfig(warmup_iters=100, warmup_factor=0.001, steps=(200, 300), gamma=0.1)
    assert lr_factor(0, solver) == pytest.approx(0.001)
    assert lr_factor(50, solver) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(100, solver) == pytest.approx(1.0)
    assert lr_factor(199, solver) == pytest.approx(1.0)
    assert lr_factor(200, solver) == pytest.approx(0.1)
    assert lr_factor(300, solver) == pytest.approx(0.01)


def test_lr_factor_cosine_falls_from_one_to_zero_after_the_warmup():
    solver = SolverConfig(schedule="cosine", warmup_iters=10, warmup_factor=0.001, max_iter=110,
                          steps=(20,))  # steps are ignored by the cosine schedule
    assert lr_factor(0, solver) == pytest.approx(0.001 * (0.5 + 0.5 * math.cos(0)))
    assert lr_factor(55, solver) == pytest.approx(0.5)  # half way: cos(π/2) = 0
    assert lr_factor(110, solver) == pytest.approx(0.0, abs=1e-12)
    values = [lr_factor(i, solver) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # falls every iteration
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, SolverConfig(schedule="linear"))


def test_batches_are_replayable_per_seed():
    data = [(torch.zeros(3, 2, 2), {"image_id": i}) for i in range(10)]

    def ids(seed):  # 4 batches of 3 = more than one epoch of 10 (the last 1 is dropped)
        stream = batches(data, 3, seed=seed)
        return [[t["image_id"] for t in next(stream)[1]] for _ in range(4)]

    first = ids(1)
    assert first == ids(1) and first != ids(2)
    assert sorted(sum(first[:3], [])) == sorted(set(sum(first[:3], [])))  # an epoch has no repeats


class _Boxes(torch.utils.data.Dataset):
    """Four fixed images with one square each, in the model's target format."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        image = torch.zeros(3, 64, 64)
        x0, y0 = 8 + 6 * i, 12 + 4 * i
        image[:, y0:y0 + 24, x0:x0 + 24] = 1.0
        masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
        masks[0, y0:y0 + 24, x0:x0 + 24] = 1
        return image, {"boxes": torch.tensor([[x0, y0, x0 + 24, y0 + 24]], dtype=torch.float32),
                       "labels": torch.tensor([i % 2]), "masks": masks, "image_id": i}


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    cfg = get_config("tiny")
    cfg = dataclasses.replace(cfg, num_classes=2, category_ids=(1, 2), class_names=("a", "b"),
                              solver=dataclasses.replace(cfg.solver, batch_size=4, warmup_iters=5,
                                                         steps=(), max_iter=40))
    log = train(build_fcos(cfg), _Boxes(), cfg, progress=False, log_period=10)
    assert [e["iter"] for e in log] == [10, 20, 30, 40]
    assert log[-1]["loss"] < 0.6 * log[0]["loss"], [round(e["loss"], 3) for e in log]


# ----------------------------------------------------------------------------- the data stream


def test_batch_indices_cover_each_epoch_and_split_over_processes():
    # 10 items, batches of 4: 2 batches an epoch, 2 items dropped
    epoch0 = [batch_indices(10, 4, seed=5, iteration=i) for i in range(2)]
    epoch1 = [batch_indices(10, 4, seed=5, iteration=i) for i in range(2, 4)]
    for epoch in (epoch0, epoch1):
        indices = [index for batch in epoch for index, _ in batch]
        assert len(indices) == len(set(indices)) == 8
    assert epoch0 != epoch1 and batch_indices(10, 4, seed=6, iteration=0) != epoch0[0]
    seeds = [s for batch in epoch0 + epoch1 for _, s in batch]
    assert len(set(seeds)) == len(seeds)  # every position of the stream has its own seed
    for iteration in range(4):  # two processes take the two halves of the same batch
        whole = batch_indices(10, 4, seed=5, iteration=iteration)
        halves = [batch_indices(10, 4, seed=5, iteration=iteration, rank=r, world_size=2)
                  for r in range(2)]
        assert halves[0] + halves[1] == whole
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        batch_indices(10, 4, seed=5, iteration=0, world_size=3)
    with pytest.raises(ValueError, match="fewer than one batch"):
        batch_indices(3, 4, seed=5, iteration=0)


class _Noisy(torch.utils.data.Dataset):
    """Item i: a value drawn from torch's global generator (a random transform) plus i."""

    def __len__(self):
        return 7

    def __getitem__(self, i):
        return torch.rand(2) + i, {"image_id": i}


def test_stream_restarts_anywhere_with_the_same_augmentation():
    def take(count, **kwargs):
        stream = batches(_Noisy(), 2, seed=3, **kwargs)
        return [next(stream) for _ in range(count)]

    torch.manual_seed(0)
    expected_draw = torch.rand(1)
    torch.manual_seed(0)
    whole = take(8)  # 3 batches an epoch: crosses two epoch boundaries
    assert torch.equal(torch.rand(1), expected_draw)  # the stream leaves the global generator alone
    for start in (1, 3, 5):
        restarted = take(8 - start, start_iter=start)
        for (images, targets), (again, again_targets) in zip(whole[start:], restarted):
            assert [t["image_id"] for t in targets] == [t["image_id"] for t in again_targets]
            assert all(torch.equal(a, b) for a, b in zip(images, again))
    for i, (images, _) in enumerate(take(4, rank=1, world_size=2)):  # process 1's half
        assert torch.equal(images[0], whole[i][0][1])


# ----------------------------------------------------------------------------- runs


def _short_config(**solver):
    """The tiny preset with batches of 2, a 1-iteration warm-up and an LR step at 3."""
    cfg = get_config("tiny")
    return dataclasses.replace(cfg, solver=dataclasses.replace(
        cfg.solver, batch_size=2, warmup_iters=1, steps=(3,), max_iter=4, checkpoint_period=2,
        **solver))


def _fresh_model(cfg):
    torch.manual_seed(0)
    return build_model(cfg)


def _losses(log):
    return [{k: v for k, v in e.items() if k != "time"} for e in log if not e.get("eval")]


def test_resume_equals_an_uninterrupted_run(shapes, tmp_path):
    """On the CPU, 4 iterations in one go and 2 + 2 resumed end with the same weights. The resume
    is mid-epoch (3 batches an epoch) and the second half crosses an epoch and the LR step;
    sizes and flips are random."""
    cfg, data = _short_config(), shapes_train_set(shapes)
    whole = _fresh_model(cfg)
    whole_log = train(whole, data, cfg, max_iter=4, progress=False, log_period=1)
    first = train(_fresh_model(cfg), data, cfg, max_iter=2, progress=False, log_period=1,
                  out_dir=tmp_path)
    assert [e["iter"] for e in first] == [1, 2]
    written = (tmp_path / "metrics.jsonl").read_text()
    resumed = _fresh_model(cfg)  # fresh weights: all of the state comes from last.pt
    log = train(resumed, data, cfg, max_iter=4, progress=False, log_period=1, out_dir=tmp_path,
                resume=True)
    difference = max((a - b).abs().max().item() for a, b in
                     zip(whole.state_dict().values(), resumed.state_dict().values())
                     if a.is_floating_point())
    print(f"largest weight difference, resumed vs uninterrupted: {difference:.3g}")
    assert difference <= 1e-6
    assert len(log) == len(whole_log) == 4
    for entry, expected in zip(_losses(log), _losses(whole_log)):
        assert entry == pytest.approx(expected, rel=1e-6)
    text = (tmp_path / "metrics.jsonl").read_text()
    assert text.startswith(written)  # the lines kept on resume are rewritten byte for byte
    assert [json.loads(line)["iter"] for line in text.splitlines()] == [1, 2, 3, 4]


def test_run_files_evaluation_and_resume_notes(shapes, tmp_path, capsys):
    cfg, data = _short_config(amp=True), shapes_train_set(shapes)  # bfloat16 if the CPU has it
    model, calls = _fresh_model(cfg), []

    def evaluate(m):
        calls.append(m.training)
        return {"mask_AP": 12.5, "APl": float("nan")}

    log = train(model, data, cfg, max_iter=3, progress=False, log_period=2, out_dir=tmp_path,
                evaluate_fn=evaluate, eval_period=2)
    assert calls == [False, False] and model.training  # eval mode inside, train mode after
    assert [(e["iter"], bool(e.get("eval"))) for e in log] == [(2, False), (2, True), (3, False),
                                                                (3, True)]
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "metrics.jsonl", "last.pt",
                                                    "loss_curve.png"}
    assert load_config(tmp_path / "config.json") == cfg
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[1] == {"iter": 2, "eval": True, "mask_AP": 12.5, "APl": None}  # NaN → null
    assert set(lines[0]) >= {"iter", "lr", "time", "loss", "loss_mask", "loss_fcos_cls"}
    terms = [v for k, v in lines[0].items() if k.startswith("loss_")]
    assert len(terms) == 6 and lines[0]["loss"] == pytest.approx(sum(terms))  # 5 + loss_sem_seg
    assert torch.load(tmp_path / "last.pt", weights_only=True)["iteration"] == 3

    capsys.readouterr()
    again = train(_fresh_model(cfg), data, cfg, max_iter=3, progress=False, out_dir=tmp_path,
                  resume=True)
    assert "nothing to train" in capsys.readouterr().out
    assert again == lines  # the log of the finished run, read back from metrics.jsonl
    fresh = tmp_path / "fresh"
    log = train(_fresh_model(cfg), data, cfg, max_iter=1, progress=False, out_dir=fresh,
                resume=True)
    assert "starting from scratch" in capsys.readouterr().out and log[-1]["iter"] == 1


def test_autocast_dtype_per_device(monkeypatch, capsys):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(cpu, False) is None and autocast_dtype(cuda, False) is None
    assert autocast_dtype(cuda, True) == torch.float16
    monkeypatch.setattr(engine, "native_bfloat16", lambda: True)
    assert autocast_dtype(cpu, True) == torch.bfloat16
    monkeypatch.setattr(engine, "native_bfloat16", lambda: False)
    capsys.readouterr()
    assert autocast_dtype(cpu, True, note=True) is None
    assert "training in float32" in capsys.readouterr().out
    # the same decision in words, for logs and reports
    assert precision_name(cpu, True) == precision_name(cpu, False) == "float32"
    assert precision_name(cuda, True) == "float16 autocast"
    monkeypatch.setattr(engine, "native_bfloat16", lambda: True)
    assert precision_name(cpu, True) == "bfloat16 autocast"


@pytest.mark.parametrize("native", [True, False])
def test_amp_on_the_cpu_trains_in_bfloat16_where_the_cpu_has_it(shapes, tmp_path, monkeypatch,
                                                                 native):
    """``solver.amp`` on the CPU: the convolutions compute in bfloat16 where the CPU has it
    (forced here both ways: autocast emulates bfloat16 on any CPU, slowly), in float32 where it
    does not. The weights stay float32, no gradient scaler is saved, the losses of the first
    step are within bfloat16's rounding of float32's, and the run resumes."""
    monkeypatch.setattr(engine, "native_bfloat16", lambda: native)
    cfg, data = _short_config(amp=True), shapes_train_set(shapes)
    reference = train(_fresh_model(cfg), data, _short_config(), max_iter=1, progress=False,
                      log_period=1)
    model, seen = _fresh_model(cfg), set()
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
    log = train(model, data, cfg, max_iter=2, progress=False, log_period=1, out_dir=tmp_path)
    assert seen == {torch.bfloat16 if native else torch.float32}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    first, expected = _losses(log)[0], _losses(reference)[0]
    assert first.keys() == expected.keys()
    for key in first:
        assert first[key] == pytest.approx(expected[key], rel=0.03 if native else 1e-6), key
    assert load_checkpoint(tmp_path / "last.pt")["extra"]["scaler"] == {}
    log = train(_fresh_model(cfg), data, cfg, max_iter=3, progress=False, log_period=1,
                out_dir=tmp_path, resume=True)
    assert [e["iter"] for e in log] == [1, 2, 3]
    assert all(math.isfinite(e["loss"]) for e in log)


class _NaNAt(nn.Module):
    """A model whose ``loss_mask`` turns NaN at one call: a diverging run."""

    def __init__(self, model, at):
        super().__init__()
        self.model, self.at, self.calls = model, at, 0

    def forward(self, images, targets):
        losses = self.model(images, targets)
        if self.calls == self.at:
            losses["loss_mask"] = losses["loss_mask"] * float("nan")
        self.calls += 1
        return losses


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(shapes, tmp_path):
    cfg, data = _short_config(), shapes_train_set(shapes)
    model = _NaNAt(_fresh_model(cfg), at=3)
    path = tmp_path / "last.pt"
    with pytest.raises(FloatingPointError) as info:
        train(model, data, cfg, max_iter=4, progress=False, log_period=1, out_dir=tmp_path)
    message = str(info.value)
    assert "non-finite loss at iteration 3: loss_mask=nan" in message
    assert f"the last good checkpoint {path} (iteration 2) is kept" in message
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["iteration"] == 2 < 3
    weights = [v for v in checkpoint["model"].values() if v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in weights)


KILLED_RUN = textwrap.dedent("""
    import sys, time, torch
    from blendmask_edu import build_model
    from blendmask_edu.config import load_config
    from blendmask_edu.data.coco import CocoInstances
    from blendmask_edu.data.files import dataset_paths
    from blendmask_edu.data.transforms import build_train_transforms
    from blendmask_edu.training.engine import train
    torch.set_num_threads(1)
    cfg = load_config(sys.argv[1])
    data = CocoInstances.from_paths(dataset_paths(sys.argv[2], "train"),
                                    transforms=build_train_transforms((48, 64), 64, 0.5))
    torch.manual_seed(0)
    # the sleep only makes the run last long enough to be killed in the middle
    train(build_model(cfg), data, cfg, max_iter=5, progress=False, log_period=1,
          on_log=lambda entry: time.sleep(0.5), out_dir=sys.argv[3], checkpoint_period=2)
""")


def test_a_killed_run_leaves_a_loadable_checkpoint_and_resumes(shapes, tmp_path):
    """SIGKILL a training process just after its first checkpoint: last.pt loads with
    weights_only, and resuming finishes the run with one metrics line per iteration."""
    cfg, run = _short_config(), tmp_path / "run"
    save_config(cfg, tmp_path / "cfg.json")
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp_path / "cfg.json"),
                                str(shapes), str(run)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (run / "last.pt").exists() and process.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint after 60 s"
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    killed_at = torch.load(run / "last.pt", weights_only=True)["iteration"]
    assert killed_at in (2, 4)
    (run / ".last.pt.x1y2.tmp").write_bytes(b"half")  # what a kill during a write would leave
    log = train(_fresh_model(cfg), shapes_train_set(shapes), cfg, max_iter=5, progress=False,
                log_period=1, out_dir=run, resume=True)
    assert log[-1]["iter"] == 5 and load_checkpoint(run / "last.pt")["iteration"] == 5
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iter"] for line in lines] == [1, 2, 3, 4, 5]
    assert not list(run.glob("*.tmp"))
