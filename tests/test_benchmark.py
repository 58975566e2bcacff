"""benchmarks/speed.py runs end to end: a smoke test of ``--quick`` (64² images, one repeat —
it exercises every section of the script and measures nothing worth reading); the memory worker
process and the stage table of the model's own stage methods, on their own.

One thread: two threads on a machine whose cores are busy with other work can make every small
op wait for a time slice (R-50 at 64² took 2.9 s instead of 60 ms that way)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import torch

from blendmask_edu import build_model

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SPEED = BENCHMARKS / "speed.py"
MODELS = {"blendmask_r50", "fcos_r50", "maskrcnn_tv", "fcos_tv", "blendmask_tiny"}
BLENDMASK_STAGES = ["normalise/pad", "backbone+FPN", "FCOS head", "bottom module",
                    "FCOS post-process (threshold, top-k, NMS)", "top module (at the detections)",
                    "blender + paste", "semantic head + panoptic fusion"]


def load(name, monkeypatch):
    """A module of benchmarks/, imported as speed.py imports its siblings: by their folder on
    sys.path."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module(name)


def test_quick_run_prints_and_saves_every_section(tmp_path):
    out = tmp_path / "speed.json"
    done = subprocess.run([sys.executable, str(SPEED), "--quick", "--threads", "1", "--no-memory",
                           "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for heading in ("Models", "Inference latency", "Ratios", "Stages of BlendMask R-50",
                    "Stages of Mask R-CNN", "Per-instance work"):
        assert heading in done.stdout
    result = json.loads(out.read_text())
    assert set(result["models"]) == MODELS
    assert all(m["detections"] == 50 for m in result["models"].values())
    assert set(result["inference"]) == set(result["train"]) == MODELS
    assert all(v["median_ms"] > 0 for v in result["inference"].values())
    # issue 16's goals; no memory goal with --no-memory; the blender's at 100 and linearity
    assert [g["bound"] for g in result["goals"]] == [0.5, 1.0, 0.55, 0.05, 1.5]
    assert "Goals (issue 16)" in done.stdout
    assert "top module (at the detections)" in result["stages"]["blendmask_r50"]
    assert [r["instances"] for r in result["per_instance"]["rows"]] == [10, 100]
    assert all(r["allocate_ms"] > 0 for r in result["per_instance"]["rows"])
    assert result["meta"]["threads"] == 1
    # The arithmetic: our FCOS and torchvision's are the same network (R-50-FPN, P3-P7, the
    # head of 4 + 4 convs of 256), so the counter must find the same GFLOP in both; BlendMask
    # adds its bottom module, top module and blender to our FCOS.
    assert "Work: GFLOP" in done.stdout and set(result["gflops"]) == MODELS
    flops = result["gflops"]
    for phase in ("inference", "train"):
        assert abs(flops["fcos_r50"][phase] / flops["fcos_tv"][phase] - 1) < 0.02, phase
        assert flops["blendmask_r50"][phase] > flops["fcos_r50"][phase] > 0, phase
    assert all(g["gflop_ratio"] > 0 for g in result["goals"][:3])


def test_memory_worker_reports_peaks(monkeypatch):
    speed, memory = load("speed", monkeypatch), load("memory", monkeypatch)
    args = speed.parse_args(["--quick", "--threads", "1"])
    peaks = memory.measure_memory(args, ["blendmask_tiny"])["blendmask_tiny"]
    assert 0 < peaks["after_build_mb"] <= peaks["peak_inference_mb"] <= peaks["peak_train_mb"]


def test_stage_table_runs_the_models_own_stages(monkeypatch):
    """Every row of the panoptic tiny model, in forward's order; ``staged_breakdown`` asserts
    that the staged run gives ``model(images)``'s boxes and masks."""
    peers, stages = load("peers", monkeypatch), load("stages", monkeypatch)
    torch.manual_seed(0)
    model = build_model(peers.our_config("tiny", 5)).eval()
    images = peers.make_images(64, 1, "cpu")
    table = stages.staged_breakdown(model, images, stages.blendmask_stages, 0, 1,
                                    torch.device("cpu"))
    assert list(table) == BLENDMASK_STAGES
    assert all(v["ms"] >= 0 and v["cpu_ms"] >= 0 for v in table.values())


def test_package_at_extracts_the_package_of_a_commit(tmp_path, monkeypatch):
    tta = load("time_to_accuracy", monkeypatch)
    folder = tta.package_at(tta.TODAY_REF, tmp_path / "today")
    if folder is None:  # not a git checkout with that commit (e.g. a source archive)
        assert tta.package_at("no-such-ref", tmp_path / "none") is None
        return
    assert (folder / "blendmask_edu" / "presets.py").is_file()
    # that commit had no tiny_fast: the package is the old one, not this checkout's
    assert "tiny_fast" not in (folder / "blendmask_edu" / "presets.py").read_text()
    assert tta.package_at("no-such-ref", tmp_path / "none") is None


def test_time_to_accuracy_trains_both_presets_and_prints_the_ratio(tmp_path):
    """``--quick`` (3 steps of each preset on a small shapes set): every number of the table
    comes from the run folders the two ``train`` processes wrote."""
    from blendmask_edu.data.synthetic import generate_shapes

    data = tmp_path / "shapes"
    generate_shapes(data, num_train=20, num_val=3, size=64, seed=0, progress=False)
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "time_to_accuracy.py"), "--quick",
                           "--data", str(data), "--out", str(tmp_path / "runs"), "--threads", "1",
                           "--new-overrides", "--solver.checkpoint_period 7",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert [runs[name]["preset"] for name in ("today", "new")] == ["tiny", "tiny_fast"]
    # --new-overrides reach the new run only
    assert runs["new"]["overrides"] == ["--solver.checkpoint_period", "7"]
    periods = {name: json.loads((tmp_path / "runs" / name / "config.json").read_text())
               ["solver"]["checkpoint_period"] for name in runs}
    assert periods == {"today": 500, "new": 7}
    for name, run in runs.items():
        written = json.loads((tmp_path / "runs" / name / "metrics.json").read_text())
        assert run["iterations"] == 3 and run["mask_AP"] == written["segm"]["AP"]
        assert run["PQ"] == written["PQ"] and 0 < run["train_s"] < run["process_s"]
    # today's run trains `tiny` with the package of TODAY_REF from git (a clone has it), else
    # with this code and the image cache off
    configs = {name: json.loads((tmp_path / "runs" / name / "config.json").read_text())
               for name in runs}
    assert Path(runs["new"]["package_file"]) == BENCHMARKS.parent / "blendmask_edu" / "__init__.py"
    assert "cache_mb" in configs["new"]["input"]
    if runs["today"]["code"] == "this checkout":
        assert runs["today"]["overrides"] == ["--input.cache_mb", "0"]
    else:
        assert runs["today"]["overrides"] == [] and "today_ref" in result
        # the old package really ran: its config had no image cache yet (run from the
        # checkout's root, `python -m` imported this checkout's package instead)
        assert "cache_mb" not in configs["today"]["input"]
        assert runs["today"]["package_file"].startswith(runs["today"]["code"])
    ratio = result["goals"][-1]["value"]
    assert ratio == runs["new"]["train_s"] / runs["today"]["train_s"]
    assert f"training time ratio (new / today): {ratio:.2f}" in done.stdout
    assert [g["met"] for g in result["goals"][:2]] == [False, False]  # 3 steps learn nothing


def test_same_outputs_saves_then_finds_the_same_and_a_difference(tmp_path, monkeypatch):
    saved = tmp_path / "before.pt"
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, str(BENCHMARKS / "same_outputs.py"), "--size", "64", "--detections", "5",
         "--threads", "1", *args], capture_output=True, text=True, timeout=300)
    assert run("--save", str(saved)).returncode == 0
    done = run("--against", str(saved))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "labels_differ        0" in done.stdout and "same within" in done.stdout
    same_outputs = load("same_outputs", monkeypatch)
    before = torch.load(saved, weights_only=True)
    moved = {**before, "boxes": before["boxes"] + 0.5}
    diff = same_outputs.compare(before, moved)
    assert diff["box_px"] == 0.5 and diff["mask_pixels_differ"] == 0
    torch.save(moved, saved)
    assert run("--against", str(saved)).returncode == 1  # half a pixel is not the same
