"""Ctrl-C and SIGTERM during training: ``last.pt`` at the iteration reached, written atomically,
a resume that ends where an uninterrupted run ends, and the command's one line and exit code."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from blendmask_edu import build_model
from blendmask_edu.presets import get_config
from blendmask_edu.training import checkpoint as ckpt
from blendmask_edu.training.engine import train
from blendmask_edu.training.interrupt import StopRequest, TrainingInterrupted
from conftest import shapes_train_set


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: bitwise repeatable training (see tests/test_engine.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config():
    """Tiny preset, batches of 2, an LR step at 3, checkpoints far apart (only the signal or
    the end writes one)."""
    cfg = get_config("tiny")
    return dataclasses.replace(cfg, solver=dataclasses.replace(
        cfg.solver, batch_size=2, warmup_iters=1, steps=(3,), max_iter=4, checkpoint_period=1000))


def _fresh_model(cfg):
    torch.manual_seed(0)
    return build_model(cfg)


def _signal_at(model, call, signum):
    """Make the model send ``signum`` to this process during its forward number ``call`` (0-based):
    the signal arrives in the middle of iteration ``call``. A hook leaves the state dict as is."""
    calls = []

    def hook(module, inputs):
        if len(calls) == call:
            os.kill(os.getpid(), signum)
        calls.append(1)

    return model.register_forward_pre_hook(hook)


def test_sigint_writes_last_pt_and_resume_ends_where_an_uninterrupted_run_ends(
        shapes, tmp_path, monkeypatch):
    """A signal in the middle of iteration index 1 → last.pt at 2 finished iterations, with
    the running loss sums of an unfinished log period (log_period 3), then a resume to 4.
    A second SIGINT during the write changes nothing. The weights equal bit for bit those of
    4 uninterrupted iterations."""
    cfg, data = _config(), shapes_train_set(shapes)
    whole = _fresh_model(cfg)
    whole_log = train(whole, data, cfg, max_iter=4, progress=False, log_period=3)

    saved = ckpt.save_checkpoint
    def save_while_pressing_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the handler only records it
        saved(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(ckpt, "save_checkpoint", save_while_pressing_ctrl_c)

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    model = _fresh_model(cfg)
    _signal_at(model, 1, signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as info:
        train(model, data, cfg, max_iter=4, progress=False, log_period=3, out_dir=tmp_path)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    error = info.value
    assert isinstance(error, KeyboardInterrupt)
    assert (error.iteration, error.path, error.signal_name, error.exit_code) == (
        2, tmp_path / "last.pt", "SIGINT", 130)
    assert str(error) == f"interrupted at iteration 2 by SIGINT: wrote {tmp_path / 'last.pt'}"
    state = ckpt.load_checkpoint(tmp_path / "last.pt")
    assert state["iteration"] == 2 and state["extra"]["count"] == 2  # mid log period
    assert not list(tmp_path.glob("*.tmp"))
    monkeypatch.setattr(ckpt, "save_checkpoint", saved)

    resumed = _fresh_model(cfg)
    log = train(resumed, data, cfg, max_iter=4, progress=False, log_period=3, out_dir=tmp_path,
                resume=True)
    for name, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    strip = lambda entries: [{k: v for k, v in e.items() if k != "time"} for e in entries]  # noqa: E731
    assert strip(log) == strip(whole_log) and [e["iter"] for e in log] == [3, 4]


def test_sigterm_stops_with_its_own_exit_code(shapes, tmp_path):
    cfg, data = _config(), shapes_train_set(shapes)
    model = _fresh_model(cfg)
    _signal_at(model, 0, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as info:
        train(model, data, cfg, max_iter=4, progress=False, out_dir=tmp_path)
    assert (info.value.iteration, info.value.signal_name, info.value.exit_code) == (1, "SIGTERM", 143)
    assert ckpt.load_checkpoint(tmp_path / "last.pt")["iteration"] == 1


def test_without_a_run_folder_or_outside_the_main_thread_nothing_is_installed(shapes, tmp_path):
    before = signal.getsignal(signal.SIGINT)
    with StopRequest(enabled=False) as stop:
        assert not stop.installed and signal.getsignal(signal.SIGINT) is before
    with StopRequest() as stop:
        assert stop.installed and signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before

    cfg, data, outcome = _config(), shapes_train_set(shapes), {}

    def in_a_thread():
        with StopRequest() as stop:
            outcome["installed"] = stop.installed
        try:  # signal.signal would raise ValueError here: train must not try it
            outcome["log"] = train(_fresh_model(cfg), data, cfg, max_iter=1, progress=False,
                                   out_dir=tmp_path)
        except Exception as error:  # reported to the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join(timeout=120)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["installed"] is False and outcome["log"][-1]["iter"] == 1
    assert signal.getsignal(signal.SIGINT) is before


# ----------------------------------------------------------------------------- the command

def _start_training(data, run):
    """``blendmask-edu train`` of the tiny preset for 10 000 iterations (it never gets there),
    2 images of 64 px a step, a checkpoint every 10 000."""
    command = [sys.executable, "-m", "blendmask_edu", "train", "--preset", "tiny",
               "--data", str(data), "--out", str(run), "--max-iter", "10000",
               "--checkpoint-period", "10000", "--quiet", "--device", "cpu",
               "--solver.batch_size", "2", "--input.train_short_sizes", "64",
               "--input.test_short_size", "64"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for_first_log_line(process, run):
    """Wait until metrics.jsonl holds its first line (iteration 10)."""
    metrics, deadline = run / "metrics.jsonl", time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().strip()):
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no metrics line after 120 s"
        time.sleep(0.05)


def test_the_command_writes_last_pt_on_sigint_and_sigterm(small_shapes, tmp_path):
    """Both signals, to two runs at once: one line naming the iteration and last.pt, exit
    code 130 (SIGINT) or 143 (SIGTERM), and last.pt at the last finished iteration."""
    runs = {signum: tmp_path / signal.Signals(signum).name for signum in (signal.SIGINT,
                                                                          signal.SIGTERM)}
    processes = {signum: _start_training(small_shapes, run) for signum, run in runs.items()}
    try:
        for signum, process in processes.items():
            _wait_for_first_log_line(process, runs[signum])
            process.send_signal(signum)
        for signum, process in processes.items():
            out, err = process.communicate(timeout=120)
            run = runs[signum]
            assert process.returncode == 128 + signum, err[-2000:]
            assert "Traceback" not in err
            lines = err.strip().splitlines()
            iteration = ckpt.load_checkpoint(run / "last.pt")["iteration"]
            assert iteration >= 10
            assert lines[-1] == (f"interrupted at iteration {iteration} by "
                                 f"{signal.Signals(signum).name}: wrote {run / 'last.pt'}; "
                                 f"continue with --resume"), err
            logged = [json.loads(line)["iter"] for line in
                      (run / "metrics.jsonl").read_text().splitlines()]
            assert logged and max(logged) <= iteration < max(logged) + 10  # stopped right away
            assert not list(run.glob("*.tmp")) and not (run / "metrics.json").exists()
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()


def test_the_line_and_exit_code_of_each_command(monkeypatch, tmp_path, capsys):
    """``main`` turns TrainingInterrupted into one line (demo: no --resume to give) and 128 +
    the signal number; under torchrun only process 0 prints it; a plain Ctrl-C stays 130."""
    from blendmask_edu.cli import model_commands
    from blendmask_edu.cli.main import main

    def stopped(args):
        raise TrainingInterrupted(7, tmp_path / "last.pt", signal.SIGTERM)

    monkeypatch.setattr(model_commands, "cmd_demo", stopped)
    monkeypatch.setattr(model_commands, "cmd_train", stopped)
    demo = ["demo", "--out", str(tmp_path)]
    train = ["train", "--preset", "tiny", "--data", str(tmp_path), "--out", str(tmp_path)]
    assert main(demo) == 143
    assert capsys.readouterr().err == (f"interrupted at iteration 7 by SIGTERM: wrote "
                                       f"{tmp_path / 'last.pt'}; run the same command again to "
                                       f"continue\n")
    monkeypatch.setenv("RANK", "1")
    assert main(train) == 143 and capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert main(train) == 143 and capsys.readouterr().err.endswith("; continue with --resume\n")

    def ctrl_c(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_commands, "cmd_train", ctrl_c)
    assert main(train) == 130 and capsys.readouterr().err == "interrupted\n"
