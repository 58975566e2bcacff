"""Two CPU processes (torchrun, gloo) give the gradient and the training of one process on the
whole batch: each process takes its half, the loss normalisers are means over processes, and
DDP averages the gradients (docs/model.md §2).

The model has batch-independent norms (GroupNorm everywhere, see ``distributed_worker.py``):
BatchNorm statistics over each half-batch would differ from those of the whole batch by design,
not by a bug.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from blendmask_edu.data.coco_like import write_coco_like
from blendmask_edu.data.synthetic import generate_shapes
from blendmask_edu.training.checkpoint import load_checkpoint
from blendmask_edu.training.distributed import (get_rank, get_world_size, init_distributed,
                                                reduce_mean)
from blendmask_edu.training.engine import train

import distributed_worker as worker

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="this torch build has no torch.distributed with gloo")
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_process_helpers_are_identities(monkeypatch):
    assert (get_rank(), get_world_size()) == (0, 1)
    x = torch.tensor([1.0, 2.0])
    assert reduce_mean(x) is x
    monkeypatch.delenv("WORLD_SIZE", raising=False)  # not under torchrun: no group is joined
    assert init_distributed("cpu") == torch.device("cpu") and not dist.is_initialized()


def test_two_processes_match_one_on_the_whole_batch(tmp_path):
    """One torchrun launch (two processes) checks, in order: the averaged gradient, a 2-step
    training, a signal to one process stopping both, and ``blendmask-edu train`` on a
    COCO-layout dataset (see ``distributed_worker.py``)."""
    shapes, out, coco = tmp_path / "shapes", tmp_path / "out", tmp_path / "coco"
    generate_shapes(shapes, num_train=4, num_val=2, size=64, seed=0, progress=False)
    write_coco_like(coco, images_per_split=6, max_side=96)
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
               "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(Path(worker.__file__)), str(shapes),
               str(out), str(coco)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # the reference: one process, the whole batch of 4, the same model and data
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg, data = worker.worker_config(), worker.dataset(shapes)
        expected = worker.gradients(worker.worker_model(cfg), *worker.first_batch(data, cfg.seed))
        model = worker.worker_model(cfg)
        log = train(model, data, cfg, max_iter=2, progress=False, log_period=1)
    finally:
        torch.set_num_threads(before)

    averaged = torch.load(out / "grads.pt", weights_only=True)
    assert averaged.keys() == expected.keys()
    worst = max((averaged[k] - expected[k]).abs().max().item() for k in expected)
    print(f"largest gradient difference, 2 processes vs 1: {worst:.3g}")
    for name in expected:
        torch.testing.assert_close(averaged[name], expected[name], rtol=1e-4, atol=1e-5,
                                   msg=name)

    # engine.train under torchrun: the same losses (means over processes) and weights
    run = out / "run"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in lines] == [1, 2]
    for entry, reference in zip(lines, log):
        for key in reference:
            if key.startswith("loss"):
                assert entry[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-6), key
    trained = load_checkpoint(run / "last.pt")["model"]
    for name, value in model.state_dict().items():
        torch.testing.assert_close(trained[name], value, rtol=1e-4, atol=1e-6, msg=name)

    # a SIGINT to process 1 alone: both stop after the same iteration, last.pt holds it
    stopped = [json.loads((out / f"stopped_rank{r}.json").read_text())["iteration"] for r in (0, 1)]
    assert stopped == [2, 2]
    assert load_checkpoint(out / "stopped" / "last.pt")["iteration"] == 2

    # the command line under torchrun on train2017/val2017: one run folder, written once
    cli_run = out / "cli_run"
    assert done.stdout.count("train2017 / ") == 2, done.stdout[-3000:]  # each process's data line
    assert sorted(p.name for p in cli_run.iterdir()) == sorted([
        "config.json", "metrics.jsonl", "last.pt", "loss_curve.png", "metrics.json",
        "coco_instances_results.json", "pr_curve.png", "panoptic_val2017.json",
        "panoptic_val2017"])
    assert [json.loads(line)["iter"] for line in
            (cli_run / "metrics.jsonl").read_text().splitlines()] == [2]
    metrics = json.loads((cli_run / "metrics.json").read_text())
    assert metrics["images"] == 6 and "PQ" in metrics
    saved = load_checkpoint(cli_run / "last.pt")
    assert saved["iteration"] == 2 and saved["config"]["num_classes"] == 80
    # the two processes end with the same parameters, those of last.pt (the BatchNorm running
    # statistics are each process's own: DDP broadcasts them before each step, not after)
    first, second = (torch.load(out / f"cli_params_rank{r}.pt", weights_only=True) for r in (0, 1))
    for name, value in first.items():
        assert torch.equal(value, second[name]) and torch.equal(value, saved["model"][name]), name
