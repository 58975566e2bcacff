"""benchmarks/gpu_check.py (``make gpu-check``): the no-GPU message, a CPU toy run on a COCO-layout
fixture (train2017/val2017 names) that prints every number, the numbers of ``loss_trend.py``
against sums done by hand, and the one-line errors.

The toy run is R-50 at 128 px, 3 iterations of batch 2, random weights (no ImageNet download),
the quick AP on 2 val images, one thread: about 20 s on a 2-core machine."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blendmask_edu.data.coco_like import write_coco_like
from blendmask_edu.training.engine import native_bfloat16

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_check.py"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


def load(name, monkeypatch):
    """A module of benchmarks/, imported as gpu_check.py imports its sibling: by the folder."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module(name)


def run_script(*args, timeout=240):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@NO_CUDA
def test_without_a_gpu_it_says_so_and_exits_0(monkeypatch, capsys):
    check = load("gpu_check", monkeypatch)
    assert check.main(["--device", "cuda", "--data", "no/such/folder"]) == 0  # before the data
    out, err = capsys.readouterr()
    assert out.strip() == ("no CUDA GPU on this machine: gpu-check needs one; run it with "
                           "--device cpu at a toy size to exercise the script")
    assert err == ""


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_target_runs_the_script_with_the_variables():
    done = subprocess.run(["make", "-n", "gpu-check", "GPU_DATA=d/sub", "GPU_ITERS=7",
                           "GPU_VAL=5", "GPU_ARGS=--device cpu"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    # Under `make test` this make is nested and also prints "Entering/Leaving directory" lines.
    commands = [line for line in done.stdout.splitlines() if "gpu_check.py" in line]
    assert len(commands) == 1 and commands[0].endswith(
        "benchmarks/gpu_check.py --data d/sub --iters 7 --val-images 5 --device cpu"), done.stdout


def test_cpu_toy_run_on_a_coco_layout_prints_every_number(tmp_path):
    write_coco_like(tmp_path / "coco")  # train2017 / val2017, 8 images each, 80 classes
    out = tmp_path / "gpu_check.json"
    done = run_script("--device", "cpu", "--data", str(tmp_path / "coco"), "--iters", "3",
                      "--size", "128", "--val-images", "2", "--threads", "1", "--quiet",
                      "--solver.batch_size", "2", "--backbone.pretrained", "false",
                      "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout
    result = json.loads(out.read_text())
    assert "7 train2017 images with objects, quick AP on 2 val2017 images" in text  # 1 is empty
    assert (result["iterations"], result["warmup"], result["batch_size"]) == (3, 1, 2)
    # the preset's autocast: float16 on CUDA, bfloat16 on a CPU that has it, else float32
    assert result["amp"] is native_bfloat16()
    assert f"autocast {'bfloat16' if result['amp'] else 'off'}" in text

    s_per_iter = float(re.search(r"^s/iter: (\d+\.\d+) \(iterations 2-3;", text, re.M).group(1))
    assert s_per_iter == pytest.approx(result["s_per_iter"], abs=5e-4) and s_per_iter > 0
    images_per_s = float(re.search(r"^images/s: (\d+\.\d+) \(batch 2\)", text, re.M).group(1))
    assert images_per_s == pytest.approx(2 / result["s_per_iter"], abs=0.05)
    assert re.search(r"^peak memory: \d+ MB", text, re.M) and result["peak_rss_mb"] > 100

    # three iterations: windows of one iteration each, the tenths are the first and the last
    windows = result["loss_windows"]
    assert [(w["first"], w["last"]) for w in windows] == [(1, 1), (2, 2), (3, 3)]
    assert result["loss_first_tenth"] == windows[0]["loss"]
    assert result["loss_last_tenth"] == windows[2]["loss"]
    for w in windows:  # the total is the sum of its terms
        terms = [v for k, v in w.items() if k not in ("first", "last", "lr", "loss")]
        assert len(terms) >= 4 and w["loss"] == pytest.approx(sum(terms), rel=1e-6)
    trend = re.search(r"^loss trend: (\d+\.\d+) \(first tenth, iterations 1-1\) -> (\d+\.\d+) "
                      r"\(last tenth, iterations 3-3\)", text, re.M)
    assert float(trend.group(1)) == pytest.approx(result["loss_first_tenth"], abs=5e-4)
    assert re.search(r"^3-3 +\d\.\d{2}e-\d\d +\d+\.\d{3}", text, re.M)  # the table's last row

    box, mask = re.search(r"^quick AP on 2 val2017 images: box AP (\d+\.\d), mask AP (\d+\.\d)",
                          text, re.M).groups()
    assert float(box) == pytest.approx(result["metrics"]["AP"], abs=0.05)
    assert float(mask) == pytest.approx(result["metrics"]["mask_AP"], abs=0.05)
    assert result["val_images"] == 2


def test_loss_trend_numbers_against_hand_sums(monkeypatch):
    trend = load("loss_trend", monkeypatch)
    log = [{"iter": i, "lr": 0.1 * i, "loss_fcos_cls": float(i), "loss_mask": 2.0 * i,
            "loss": 3.0 * i} for i in range(1, 26)] + [{"iter": 25, "eval": True, "AP": 1.0}]
    windows = trend.window_means(log, rows=10)  # 25 iterations → windows of 3, the last of 1
    assert [(w["first"], w["last"]) for w in windows][:2] == [(1, 3), (4, 6)]
    assert (windows[-1]["first"], windows[-1]["last"]) == (25, 25) and len(windows) == 9
    assert windows[1] == pytest.approx({"first": 4, "last": 6, "lr": 0.5, "loss": 15.0,
                                        "cls": 5.0, "mask": 10.0})
    losses = [3.0 * i for i in range(1, 26)]
    assert trend.tenths(losses) == (pytest.approx(4.5), pytest.approx(73.5), 2)  # k = round(2.5)
    assert trend.tenths([5.0]) == (5.0, 5.0, 1)
    assert trend.throughput(10.0, 20, 8) == (0.5, 16.0)
    with pytest.raises(ValueError):
        trend.throughput(0.0, 0, 8)
    table = trend.format_windows(windows).splitlines()
    assert table[0].split() == ["iterations", "lr", "loss", "cls", "mask"]
    assert table[2].split() == ["4-6", "5.00e-01", "15.000", "5.000", "10.000"]


def test_user_errors_are_one_line(tmp_path, monkeypatch, capsys):
    check = load("gpu_check", monkeypatch)
    assert check.main(["--device", "cpu", "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "nowhere") in err
    assert check.main(["--device", "cpu", "--iters", "1"]) == 2
    assert "--iters 1" in capsys.readouterr().err
    assert check.main(["--device", "cpu", "--solver.no_such_key", "1"]) == 2
    assert "solver.no_such_key" in capsys.readouterr().err


def test_missing_imagenet_weights_name_the_cache_file_and_the_option(monkeypatch):
    check = load("gpu_check", monkeypatch)
    from blendmask_edu.cli.common import UsageError
    from blendmask_edu.modeling import backbone

    def offline(depth):  # what the backbone raises when torchvision's download fails
        raise backbone.WeightsUnavailable(depth, "https://host/resnet50-x.pth",
                                          "/hub/checkpoints/resnet50-x.pth", "URLError: no network")

    monkeypatch.setattr(backbone, "imagenet_state_dict", offline)
    with pytest.raises(UsageError) as caught:
        check.build(check.configure([], None))
    message = str(caught.value)
    assert "\n" not in message and "(URLError: no network)" in message
    assert "https://host/resnet50-x.pth" in message and "/hub/checkpoints/resnet50-x.pth" in message
    assert "--backbone.weights_path FILE" in message and "weights_path=" not in message
