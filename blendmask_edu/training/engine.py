"""The training loop: batches in, updates out, and the run folder that lets a run resume exactly.

Each iteration sets the learning rate (:mod:`~blendmask_edu.training.solver`), takes the next
batch of the stream (:mod:`~blendmask_edu.training.sampling`), checks the loss is finite,
steps the optimizer (optional gradient clipping, and mixed precision with ``solver.amp``:
``torch.autocast`` in float16 with a gradient scaler on CUDA, in bfloat16 on a CPU that computes
it natively — :func:`autocast_dtype`), and logs. Introduced in ``notebooks/01_fcos.ipynb`` (a
short FCOS training) and explained in ``04_train.ipynb``.

A run with ``out_dir`` writes there ``config.json``, ``metrics.jsonl`` (one JSON line per log
entry), ``last.pt`` (:mod:`blendmask_edu.training.checkpoint`) and ``loss_curve.png``;
``resume=True`` continues from ``last.pt`` and, on the CPU, ends with the same weights as a run
that was never stopped. Three things make that exact: the batch of iteration ``i`` is a pure
function of ``(seed, i)``, every image's random augmentation draws from a generator seeded by
its place in the data stream (both :mod:`~blendmask_edu.training.sampling`), and the checkpoint
holds the optimizer and the random states captured where the loop restarts. Bitwise exact needs
one thread or ``torch.use_deterministic_algorithms(True)``: with several threads, the backward
of an indexing with repeated indices (``crops[gt_index]`` in the mask loss) adds in a varying
order, so even two uninterrupted runs differ slightly.

Ctrl-C (SIGINT) or SIGTERM during a run with ``out_dir`` does not lose the iterations since the
last checkpoint: the iteration under way finishes, ``last.pt`` is written as a periodic one
would be, and :class:`~blendmask_edu.training.interrupt.TrainingInterrupted` (a
KeyboardInterrupt) is raised (:mod:`~blendmask_edu.training.interrupt`).

Under ``torchrun`` (:mod:`~blendmask_edu.training.distributed`) ``train`` wraps the model in
DistributedDataParallel and each process takes its share of every batch
(``cfg.solver.batch_size`` is the total, as in the paper). Only process 0 writes files, prints
and shows the progress bar.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from blendmask_edu.config import Config, save_config
from blendmask_edu.fileio import append_jsonl
from blendmask_edu.plots import save_loss_curve
from blendmask_edu.training import checkpoint as ckpt
from blendmask_edu.training.distributed import get_rank, get_world_size, reduce_mean
from blendmask_edu.training.interrupt import StopRequest, TrainingInterrupted
from blendmask_edu.training.sampling import batches
from blendmask_edu.training.solver import build_optimizer, lr_factor

CHECKPOINT_FILE, LOG_FILE, CONFIG_FILE, CURVE_FILE = (
    "last.pt", "metrics.jsonl", "config.json", "loss_curve.png")


def train(model: nn.Module, dataset: Dataset, cfg: Config, max_iter: Optional[int] = None,
          device: Optional[torch.device] = None, progress: bool = True, log_period: int = 10,
          on_log: Optional[Callable[[Dict], None]] = None, out_dir=None, resume: bool = False,
          checkpoint_period: Optional[int] = None, evaluate_fn: Optional[Callable] = None,
          eval_period: Optional[int] = None) -> List[Dict]:
    """Train ``model`` on ``dataset`` (items already transformed) with ``cfg.solver``.

    Returns the log: one dict per ``log_period`` iterations with ``iter`` (iterations done),
    ``lr``, ``time`` (s), the mean of each ``loss_*`` over the period (and over processes) and
    ``loss`` their sum; ``evaluate_fn(model) -> dict``, called every ``eval_period`` iterations
    and at the end (process 0 only, in eval mode, without touching the training's random
    states), adds ``{"iter", "eval": True, **its dict}``. ``on_log`` is called with each entry
    (on process 0).

    ``out_dir``: write the run files (module docstring), ``last.pt`` every ``checkpoint_period``
    iterations (default ``cfg.solver.checkpoint_period``) and at the end. ``resume``: continue
    from ``out_dir/last.pt`` when it exists; the returned log then covers the whole run.
    A non-finite loss raises FloatingPointError before the update; no checkpoint is written
    after it, so ``last.pt`` stays the last good state. With ``out_dir``, SIGINT or SIGTERM
    (handled in the main thread only) stops after the iteration under way: ``last.pt`` is
    written at it and :class:`TrainingInterrupted` raised (``iteration``, ``path``, ``signum``).
    """
    solver = cfg.solver
    max_iter = solver.max_iter if max_iter is None else max_iter
    period = checkpoint_period or solver.checkpoint_period
    rank, world = get_rank(), get_world_size()
    main = rank == 0
    device = torch.device(device) if device is not None else next(model.parameters()).device
    run = Path(out_dir) if out_dir is not None else None
    path = run / CHECKPOINT_FILE if run is not None else None
    amp_dtype = autocast_dtype(device, solver.amp, note=main)
    amp = amp_dtype is not None
    if world > 1 and device.type == "cuda":  # batch statistics over all processes' images
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device).train()
    optimizer = build_optimizer(model, solver)
    # float16 needs its gradients scaled (they underflow); bfloat16 has float32's exponent range.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    log, start, state = [], 0, {"running": {}, "count": 0, "elapsed": 0.0}
    if run is not None:
        start, log, state = _open_run(run, cfg, resume, model, optimizer, scaler, main)
        if start >= max_iter:
            _note(main, f"{path} is at iteration {start} ≥ max_iter {max_iter}: nothing to train "
                        f"(the model now holds its weights)")
            return log
    saved_at = start if start > 0 else None
    stream = batches(dataset, solver.batch_size, seed=cfg.seed, start_iter=start, rank=rank,
                     world_size=world)
    trainee, previous_reduce = model, getattr(model, "reduce_mean", None)
    if world > 1:
        model.reduce_mean = reduce_mean
        trainee = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    running, count = state["running"], state["count"]
    clock = time.perf_counter() - state["elapsed"]
    bar = tqdm(total=max_iter, initial=start, desc="train", disable=not (progress and main),
               dynamic_ncols=True)
    stop = StopRequest(enabled=run is not None)
    stop.__enter__()  # a `with` would indent the whole loop once more
    try:
        for iteration in range(start, max_iter):
            for group in optimizer.param_groups:
                group["lr"] = solver.base_lr * lr_factor(iteration, solver)
            images, targets = next(stream)
            images = [im.to(device) for im in images]
            targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()}
                       for t in targets]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                losses = trainee(images, targets)
            # The whole batch's loss terms, the same on every process: logs, and the NaN check
            # that all processes pass or fail together (one stopping alone would hang the rest).
            # The last entry is the stop request (> 0 when any process got a signal), so that
            # all processes stop after the same iteration without another exchange.
            reduced = reduce_mean(torch.stack([v.detach().float() for v in losses.values()]
                                              + [_stop_flag(stop, device)]))
            values, numbers = reduced[:-1], reduced.tolist()  # one copy to the host
            if not all(map(math.isfinite, numbers[:-1])):
                raise FloatingPointError(_nan_message(iteration, losses, values, path, saved_at))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(sum(losses.values())).backward()
            if solver.clip_grad_norm:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), solver.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            for key, value in zip(losses, numbers):
                running[key] = running.get(key, 0.0) + value
            count, done = count + 1, iteration + 1
            bar.update(1)
            bar.set_postfix_str(_postfix(running, count), refresh=False)

            entries = []
            if done % log_period == 0 or done == max_iter:
                entry = {"iter": done, "lr": optimizer.param_groups[0]["lr"],
                         "time": time.perf_counter() - clock,
                         **{k: v / count for k, v in running.items()}}
                entry["loss"] = sum(v for k, v in entry.items() if k.startswith("loss_"))
                entries.append(entry)
                running, count = {}, 0
            if evaluate_fn is not None and (done == max_iter
                                            or (eval_period and done % eval_period == 0)):
                entries.append(_evaluate(evaluate_fn, model, done, main, world))
            for entry in entries:
                log.append(entry)
                if main and run is not None:
                    append_jsonl(run / LOG_FILE, entry)
                if on_log is not None and main:
                    on_log(entry)
            # One process reads its own record at once; several use the exchanged one.
            stopping = stop.requested if world == 1 else numbers[-1] > 0
            if run is not None and (done % period == 0 or done == max_iter or stopping):
                if main:
                    extra = {"running": dict(running), "count": count,
                             "elapsed": time.perf_counter() - clock,
                             "scaler": scaler.state_dict() if scaler.is_enabled() else {}}
                    ckpt.save_checkpoint(path, model=model, optimizer=optimizer, iteration=done,
                                         cfg=cfg, extra=extra)
                saved_at = done
            if stopping:
                if world > 1:  # nobody leaves before process 0 has written last.pt
                    dist.barrier()
                raise TrainingInterrupted(done, path, stop.signum or signal.SIGINT)
    finally:
        stop.__exit__()
        bar.close()
        if world > 1:
            model.reduce_mean = previous_reduce
    if main and run is not None:
        save_loss_curve(log, run / CURVE_FILE)
    return log


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX tiles). Without them
    bfloat16 is emulated in float32 arithmetic, and autocast would add its rounding without a
    reason to be faster. Measured with either: a ``tiny_fast`` training step in bfloat16 took
    0.81× its float32 time on an Intel Xeon with both, 0.74× on an AMD EPYC with AVX-512 BF16
    alone (the two taking turns in one process); not run on a CPU with neither."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def autocast_dtype(device: torch.device, amp: bool, note: bool = False) -> Optional[torch.dtype]:
    """The dtype ``solver.amp`` trains in on ``device``, or None for float32: float16 on CUDA,
    bfloat16 on a CPU with :func:`native_bfloat16`, None elsewhere (with ``note``, it says so)."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and native_bfloat16():
        return torch.bfloat16
    _note(note, f"solver.amp: no mixed precision on {device} (CUDA, or a CPU with native "
                f"bfloat16: AVX-512 BF16 or AMX); training in float32")
    return None


def precision_name(device: torch.device, amp: bool) -> str:
    """How ``solver.amp`` trains on ``device``, in words: ``"float32"``, ``"bfloat16 autocast"``
    or ``"float16 autocast"`` (for logs and reports; :func:`autocast_dtype` decides)."""
    dtype = autocast_dtype(torch.device(device), amp)
    return "float32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"


def _stop_flag(stop: StopRequest, device: torch.device) -> torch.Tensor:
    """The stop request as a 0-d float tensor on ``device``: 1.0 if a signal arrived, else 0.
    Made by a fill on the device, not a copy from the host, so that it never waits for the GPU."""
    return torch.full((), float(stop.requested), device=device)


def _open_run(run: Path, cfg: Config, resume: bool, model, optimizer, scaler, main: bool):
    """Start or resume the run in ``run``: (start iteration, log so far, loop state)."""
    path = run / CHECKPOINT_FILE
    state = {"running": {}, "count": 0, "elapsed": 0.0}
    if main:
        run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / CONFIG_FILE)
        for stale in run.glob(f".{CHECKPOINT_FILE}.*.tmp"):  # a write cut short by a kill
            stale.unlink(missing_ok=True)
    if not resume or not path.exists():
        if resume:
            _note(main, f"no {path} yet: starting from scratch")
        elif path.exists():
            _note(main, f"starting a new run in {run}: its {CHECKPOINT_FILE} will be replaced "
                        f"(resume=True continues it)")
        if main:
            (run / LOG_FILE).write_text("")
        return 0, [], state
    data = ckpt.load_checkpoint(path)
    ckpt.load_state_dict(model, data["model"], path)
    optimizer.load_state_dict(data["optimizer"])
    extra = data.get("extra") or {}
    if extra.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(extra["scaler"])
    start = int(data["iteration"])
    state = {"running": dict(extra.get("running", {})), "count": int(extra.get("count", 0)),
             "elapsed": float(extra.get("elapsed", 0.0))}
    log, metrics = [], run / LOG_FILE
    if main and metrics.exists():  # drop the lines written after the checkpoint
        log = [entry for entry in map(_parse, metrics.read_text().splitlines())
               if entry is not None and entry["iter"] <= start]
        rewritten = metrics.with_suffix(".jsonl.tmp")  # replaced in one step, like last.pt
        rewritten.write_text("")
        for entry in log:  # the same line writer as the loop's
            append_jsonl(rewritten, entry)
        os.replace(rewritten, metrics)
    ckpt.restore_rng(data["rng"])
    _note(main, f"resuming from {path} at iteration {start}")
    return start, log, state


def _parse(line: str) -> Optional[Dict]:
    """A metrics.jsonl line, or None for a blank or torn one (a run killed while writing it)."""
    try:
        return json.loads(line)
    except ValueError:
        return None


def _evaluate(evaluate_fn, model: nn.Module, done: int, main: bool, world: int) -> Dict:
    """Run ``evaluate_fn`` on process 0 (the others wait) in eval mode; the random states are
    put back afterwards so that evaluating never changes what the training draws next."""
    result = {}
    if main:
        rng = ckpt.capture_rng()
        model.eval()
        try:
            with torch.no_grad():
                result = dict(evaluate_fn(model) or {})
        finally:
            model.train()
            ckpt.restore_rng(rng)
    if world > 1:
        dist.barrier()
    return {"iter": done, "eval": True, **result}


def _nan_message(iteration: int, losses: Dict, values: torch.Tensor, path, saved_at) -> str:
    bad = [f"{key}={value:g}" for key, value in zip(losses, values.tolist())
           if not math.isfinite(value)]
    if path is None:
        kept = "no checkpoint is written without out_dir"
    elif saved_at is None:
        kept = f"no checkpoint was written yet, so {path} does not hold this run"
    else:
        kept = f"the last good checkpoint {path} (iteration {saved_at}) is kept"
    return (f"non-finite loss at iteration {iteration}: {', '.join(bad)}; training stopped "
            f"before the update, {kept}")


def _postfix(running: Dict[str, float], count: int) -> str:
    """``loss 1.234 | cls 0.5 loc 0.3 ...``: the running means of the current log period."""
    terms = {k.replace("loss_", "").replace("fcos_", ""): v / count for k, v in running.items()}
    return f"loss {sum(terms.values()):.3f} | " + " ".join(f"{k} {v:.3f}" for k, v in terms.items())


def _note(main: bool, message: str) -> None:
    if main:
        tqdm.write(message)
