"""Is this GPU ready for a COCO run? A few hundred iterations of ``coco_r50_short``, measured.

On a COCO subset (``--data``, default ``data/coco_subset``: the README's ``data subset``
commands make it), the script trains the ``coco_r50_short`` preset — the paper's R-50
BlendMask, batch 8, mixed precision (``torch.autocast``: float16 on CUDA) — for ``--iters``
iterations (300) and evaluates it on the first ``--val-images`` (200) val images. It prints:

  s/iter, images/s     wall time of the iterations after the first ``--warmup`` (20), the GPU
                       synchronised at both ends; data loading is included (the engine loads
                       images in the training process)
  data                 the time to load one batch, to tell a data-bound run from a GPU-bound one
  peak GPU memory      ``torch.cuda.max_memory_allocated`` over the training
  loss trend           the mean loss of the first and of the last tenth of the iterations, and
                       a table of the loss and its terms over ten windows
  quick AP             box and mask AP on the val subset, and the inference speed

300 iterations are all inside the preset's 1000-iteration LR warm-up: the loss must fall, but
the AP stays near 0 — this checks the machine and the path, not the accuracy. The full run and
what to expect of it: ``blendmask_edu/presets.py`` (``coco_r50_short``) and the README.

Everything goes through the package's own calls: ``cli.common`` (preset, overrides, the split
names — ``train`` or ``train2017``, ``val`` or ``val2017`` — and opening a split),
``CocoInstances.check_files`` (every image file there before the first step), ``build_model``,
``training.engine.train`` and ``evaluation.evaluate.evaluate_coco``.

Without a CUDA GPU it says so and exits 0. ``--device cpu`` runs the same steps on the CPU so
that CI can exercise the script, at a toy size: ``--iters 3 --size 128 --val-images 2
--solver.batch_size 2 --backbone.pretrained false`` (no ImageNet download). Any config field
can be overridden with ``--section.key value``, as with ``blendmask-edu train``.

    make gpu-check                                   # .venv, then this script with its defaults
    .venv/bin/python benchmarks/gpu_check.py --data data/coco_subset --iters 300 --json runs/gpu_check.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

# The sibling module: importable because Python puts this script's folder first on sys.path.
from loss_trend import format_windows, tenths, throughput, window_means

PRESET = "coco_r50_short"
DEFAULT_DATA = "data/coco_subset"
NO_GPU = ("no CUDA GPU on this machine: gpu-check needs one; run it with --device cpu at a toy "
          "size to exercise the script")


def parse_args(argv: Optional[Sequence[str]] = None):
    """``argv`` → (the options as an ``argparse.Namespace``, the config overrides as
    ``cli.common.parse_overrides`` returns them); a wrong override is a ``UsageError``."""
    from blendmask_edu.cli.common import parse_overrides

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], allow_abbrev=False,
        epilog="Config overrides follow the options: --section.key VALUE, e.g. "
               "--solver.batch_size 4 --solver.base_lr 0.0025 --backbone.weights_path FILE")
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help=f"COCO-layout folder with train/val or train2017/val2017 ({DEFAULT_DATA})")
    parser.add_argument("--train-split", help="training split (the folder's train or train2017)")
    parser.add_argument("--val-split", help="evaluation split (the folder's val or val2017)")
    parser.add_argument("--iters", type=int, default=300, help="training iterations (300)")
    parser.add_argument("--warmup", type=int, default=20,
                        help="first iterations left out of s/iter (20; at most half of --iters)")
    parser.add_argument("--val-images", type=int, default=200,
                        help="val images of the quick AP, the first by id (200)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda (default; without a GPU the script says so and exits 0) or "
                             "cpu, for a toy run that exercises the script")
    parser.add_argument("--size", type=int,
                        help="shorter side for training and test instead of the preset's 640-800 "
                             "(longer side at most 1333/800 of it), e.g. 128 for a toy run")
    parser.add_argument("--threads", type=int, help="torch CPU threads (torch's default)")
    parser.add_argument("--out", help="also write the run files (last.pt, metrics.jsonl, ...) "
                                      "and the evaluation files there")
    parser.add_argument("--json", help="save every number printed to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args, extra = parser.parse_known_args(argv)
    return args, parse_overrides(extra)


def configure(overrides, size: Optional[int]):
    """The ``coco_r50_short`` Config with ``overrides`` applied, then ``size`` (a shorter side
    for training and test; the longer side capped at the preset's 1333/800 ratio)."""
    import dataclasses

    from blendmask_edu.cli.common import apply_overrides, preset

    cfg = apply_overrides(preset(PRESET), overrides)
    if size is not None:
        longest = round(size * cfg.input.train_max_size / max(cfg.input.train_short_sizes))
        cfg = dataclasses.replace(cfg, input=dataclasses.replace(
            cfg.input, train_short_sizes=(size,), train_max_size=longest,
            test_short_size=size, test_max_size=longest))
    return cfg


def open_data(root: str, cfg, val_images: int, train_split: Optional[str] = None,
              val_split: Optional[str] = None):
    """(train set with the training transforms and only images with objects, val set cut to
    its first ``val_images`` images, the two split names) of the dataset at ``root``; a split
    left None is the folder's own (``train`` or ``train2017``, ``val`` or ``val2017``).
    DatasetError when a split, or any image file of the two sets, is missing."""
    from blendmask_edu.cli.common import split_name, training_sets
    from blendmask_edu.data.errors import DatasetError

    if not Path(root).is_dir():
        raise DatasetError(root, f"data folder not found; cut a COCO subset into it with "
                                 f"`blendmask-edu data subset ... --out {root}` (README, section "
                                 f"\"COCO (GPU)\"), or try the script on a dataset made by "
                                 f"`blendmask-edu data coco-like --out DIR`")
    train_split = split_name(root, train_split, "train")
    val_split = split_name(root, val_split, "val")
    train_set, val_set = training_sets(root, cfg, train_split, val_split)
    # The quick AP: the first images by id (CocoInstances keeps its ids sorted); COCOeval and
    # the predictions both follow ``image_ids``, so the cut is the whole evaluation set.
    val_set.image_ids = val_set.image_ids[:val_images]
    return train_set, val_set, train_split, val_split


def build(cfg):
    """``build_model(cfg)``; a backbone whose weights cannot be had is a UsageError in one line
    (for the ImageNet weights: the URL, where torch's hub cache wants the file, and
    ``--backbone.weights_path``)."""
    from blendmask_edu.cli.common import UsageError, offline_weights_message
    from blendmask_edu.modeling.backbone import WeightsUnavailable
    from blendmask_edu.modeling.blendmask import build_model

    try:
        return build_model(cfg)
    except WeightsUnavailable as error:  # offline, and not in torch's hub cache
        raise UsageError(offline_weights_message(error)) from None
    except (OSError, ValueError) as error:  # --backbone.weights_path unreadable or unfit
        raise UsageError(" ".join(str(error).split())) from None


class Clock:
    """Wall time between two iterations of a training, read through the engine's ``on_log``
    (``train(..., log_period=1)``), with the device synchronised before each reading so that
    queued GPU work is counted where it was issued."""

    def __init__(self, device, start_iter: int, end_iter: int):
        self.device, self.start_iter, self.end_iter = device, start_iter, end_iter
        self.start = self.end = None
        self.log: List[Dict] = []

    def __call__(self, entry: Dict) -> None:
        self.log.append(entry)
        if entry.get("iter") in (self.start_iter, self.end_iter):
            _synchronize(self.device)
            if entry["iter"] == self.start_iter:
                self.start = time.perf_counter()
            else:
                self.end = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.end - self.start


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":  # CUDA-only: the CPU has no queue to wait for
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":  # CUDA-only: torch.cuda's allocator statistics
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device) -> Dict:
    """The peak memory of the training: on CUDA ``torch.cuda.max_memory_allocated`` (reset
    before the training), on the CPU the process's peak resident set (Linux, macOS)."""
    import resource

    import torch

    if device.type == "cuda":  # CUDA-only; the CPU branch below is what the tests reach
        return {"peak_gpu_memory_gb": torch.cuda.max_memory_allocated(device) / 2 ** 30}
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_mb": kilobytes / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)}


def batch_seconds(dataset, batch_size: int, repeats: int = 2) -> float:
    """Seconds to load one batch of ``dataset`` (items ``(image, target)``, transforms
    included), the mean over ``repeats`` batches of its first images."""
    count = min(len(dataset), batch_size * repeats)
    start = time.perf_counter()
    for i in range(count):
        dataset[i]
    return (time.perf_counter() - start) * batch_size / count


def run(args, overrides) -> Dict:
    """Train, time, measure and evaluate as the module docstring says; print each number as it
    comes and return them all (JSON-ready). UsageError / DatasetError for the user's arguments
    and files, FloatingPointError when the loss diverges."""
    import torch

    from blendmask_edu.cli.common import UsageError, fit_categories
    from blendmask_edu.evaluation.evaluate import evaluate_coco
    from blendmask_edu.evaluation.tables import format_ap_table
    from blendmask_edu.training.engine import autocast_dtype, train
    from blendmask_edu.utils import seed_everything

    if args.iters < 2 or args.val_images < 1:
        raise UsageError(f"--iters {args.iters} --val-images {args.val_images}: need at least 2 "
                         f"iterations (one warm-up, one timed) and 1 val image")
    warmup = max(1, min(args.warmup, args.iters // 2))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = configure(overrides, args.size)
    train_set, val_set, train_split, val_split = open_data(args.data, cfg, args.val_images,
                                                              args.train_split, args.val_split)
    cfg = fit_categories(cfg, train_set)
    solver, sizes = cfg.solver, cfg.input.train_short_sizes
    amp_dtype = autocast_dtype(device, solver.amp)
    amp = amp_dtype is not None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"  # CUDA-only call
    print(f"gpu-check: preset {PRESET} on {args.data} ({len(train_set)} {train_split} images with "
          f"objects, quick AP on {len(val_set)} {val_split} images); device {device} ({name}), "
          f"torch {torch.__version__}, "
          f"autocast {str(amp_dtype).removeprefix('torch.') if amp else 'off'}")
    inside = " (all inside it)" if args.iters <= solver.warmup_iters else ""
    shorter = f"{min(sizes)}-{max(sizes)}" if len(sizes) > 1 else f"{sizes[0]}"
    print(f"training {args.iters} iterations of batch {solver.batch_size}, shorter side "
          f"{shorter} (longer <= {cfg.input.train_max_size}), base LR "
          f"{solver.base_lr:g} with a {solver.warmup_iters}-iteration warm-up{inside}")

    seed_everything(cfg.seed)
    model = build(cfg)
    clock = Clock(device, warmup, args.iters)
    _reset_peak(device)
    train(model, train_set, cfg, max_iter=args.iters, device=device, progress=not args.quiet,
          log_period=1, on_log=clock, out_dir=args.out)
    result = {"preset": PRESET, "data": str(args.data), "device": str(device), "device_name": name,
              "amp": amp, "batch_size": solver.batch_size, "iterations": args.iters,
              "warmup": warmup, **peak_memory(device)}
    seconds_per_iter, images_per_s = throughput(clock.seconds, args.iters - warmup,
                                                solver.batch_size)
    result.update(s_per_iter=seconds_per_iter, images_per_s=images_per_s,
                  data_s_per_batch=batch_seconds(train_set, solver.batch_size))
    print(f"s/iter: {seconds_per_iter:.3f} (iterations {warmup + 1}-{args.iters}; {warmup} "
          f"warm-up iteration{'s' if warmup > 1 else ''} left out)")
    print(f"images/s: {images_per_s:.1f} (batch {solver.batch_size})")
    print(f"data: {result['data_s_per_batch']:.3f} s to load a batch of {solver.batch_size} "
          f"(in the training process: part of s/iter)")
    if "peak_gpu_memory_gb" in result:
        print(f"peak GPU memory: {result['peak_gpu_memory_gb']:.2f} GB "
              f"(torch.cuda.max_memory_allocated during training)")
    else:
        print(f"peak memory: {result['peak_rss_mb']:.0f} MB (CPU run: the process's peak resident "
              f"set; on CUDA this line is the peak GPU memory)")
    hours = seconds_per_iter * solver.max_iter / 3600
    print(f"this configuration's full run at this speed: {solver.max_iter} iterations x "
          f"{seconds_per_iter:.3f} s = {hours:.1f} h")

    losses = [entry["loss"] for entry in clock.log if "loss" in entry]
    first, last, k = tenths(losses)
    windows = window_means(clock.log)
    result.update(loss_first_tenth=first, loss_last_tenth=last, loss_windows=windows)
    print(f"loss trend: {first:.3f} (first tenth, iterations 1-{k}) -> {last:.3f} (last tenth, "
          f"iterations {len(losses) - k + 1}-{len(losses)}): {100 * (last - first) / first:+.1f} %")
    print(format_windows(windows))

    _synchronize(device)
    start = time.perf_counter()
    metrics = evaluate_coco(model, val_set, cfg.input.test_short_size, cfg.input.test_max_size,
                            device=device, progress=not args.quiet, out_dir=args.out,
                            split=val_split)
    _synchronize(device)
    eval_seconds = time.perf_counter() - start
    result.update(val_images=len(val_set), eval_images_per_s=len(val_set) / eval_seconds,
                  metrics=metrics)
    print(f"quick AP on {len(val_set)} {val_split} images: box AP {metrics['AP']:.1f}, mask AP "
          f"{metrics.get('mask_AP', float('nan')):.1f} (inference {result['eval_images_per_s']:.1f} "
          f"images/s at shorter side {cfg.input.test_short_size})")
    print(format_ap_table(metrics))
    if args.iters <= solver.warmup_iters:
        print(f"(after {args.iters} iterations, inside the LR warm-up, an AP near 0 is expected: "
              f"this run checks the machine and the path; what the full run should reach is in "
              f"the docstring of {PRESET} in blendmask_edu/presets.py)")
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the check; the exit code: 0 (done, or no GPU to check), 1 (the loss diverged), 2 (a
    problem with the arguments or the data, in one line) or 130 (interrupted)."""
    import torch

    from blendmask_edu.cli.common import UsageError
    from blendmask_edu.data.errors import DatasetError
    from blendmask_edu.fileio import write_json

    try:
        args, overrides = parse_args(argv)
        if args.device == "cuda" and not torch.cuda.is_available():
            print(NO_GPU)
            return 0
        result = run(args, overrides)
    except (UsageError, DatasetError) as error:
        print(f"gpu-check: error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:  # the engine's report of a diverged training
        print(f"gpu-check: training diverged: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gpu-check: interrupted", file=sys.stderr)
        return 130
    if args.json:
        write_json(args.json, result, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
