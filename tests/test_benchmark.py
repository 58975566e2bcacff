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
    assert [g["bound"] for g in result["goals"]] == [0.5, 1.15, 0.65]
    assert "top module (at the detections)" in result["stages"]["blendmask_r50"]
    assert [r["instances"] for r in result["per_instance"]["rows"]] == [10, 100]
    assert result["meta"]["threads"] == 1


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
