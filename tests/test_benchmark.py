"""benchmarks/speed.py runs end to end: a smoke test of ``--quick`` (64² images, one repeat —
it exercises every section of the script and measures nothing worth reading).

One thread: two threads on a machine whose cores are busy with other work can make every small
op wait for a time slice (R-50 at 64² took 2.9 s instead of 60 ms that way)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

SPEED = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"
MODELS = {"blendmask_r50", "fcos_r50", "maskrcnn_tv", "fcos_tv", "blendmask_tiny"}


def load_speed():
    spec = importlib.util.spec_from_file_location("speed", SPEED)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


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


def test_memory_worker_reports_peaks():
    speed = load_speed()
    args = speed.parse_args(["--quick", "--threads", "1"])
    memory = speed.measure_memory(args, ["blendmask_tiny"])
    peaks = memory["blendmask_tiny"]
    assert 0 < peaks["after_build_mb"] <= peaks["peak_inference_mb"] <= peaks["peak_train_mb"]
