"""The model commands: ``train``, ``evaluate``, ``predict`` and ``demo``, as orchestration.

Each ``cmd_*`` takes the parsed arguments (``argparse.Namespace``, options as in
:func:`blendmask_edu.cli.main.build_parser`; ``args.overrides`` holds the
``(dotted key, text)`` config overrides) and returns the exit code 0. The work is done by the
library: :mod:`blendmask_edu.training` trains, :mod:`blendmask_edu.evaluation` predicts and
measures, :mod:`blendmask_edu.visualize` draws. Heavy modules are imported inside the commands.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Union

from blendmask_edu.cli.common import (UsageError, apply_overrides, choose_device, fit_categories,
                                      open_split, preset, print_metrics, split_name,
                                      training_sets)
from blendmask_edu.data.errors import DatasetError

DEFAULT_DATA = "data/shapes"
DEMO_PRESET = "tiny_fast"


# ----------------------------------------------------------------------------- training


def _run_training(args, cfg, data):
    """Train ``cfg`` on ``data`` into ``args.out`` and evaluate on val; returns
    (model, cfg, val set, log of the whole run, metrics, training seconds of the whole run).
    ``args.train_split`` and ``args.val_split`` are replaced by the split names used."""
    from blendmask_edu.config import describe
    from blendmask_edu.evaluation.evaluate import evaluate_coco
    from blendmask_edu.modeling.blendmask import build_model
    from blendmask_edu.training.distributed import get_rank, init_distributed
    from blendmask_edu.training.engine import precision_name, train
    from blendmask_edu.utils import seed_everything

    # Under torchrun every process joins the group and takes its device (cuda:LOCAL_RANK or cpu).
    device = init_distributed(choose_device(args.device).type)
    args.train_split = split_name(data, args.train_split, "train")
    args.val_split = split_name(data, args.val_split, "val")
    train_set, val_set = training_sets(data, cfg, args.train_split, args.val_split)
    cfg = fit_categories(cfg, train_set)
    print(describe(cfg))
    print(f"device {device} ({precision_name(device, cfg.solver.amp)}), {len(train_set)} "
          f"{args.train_split} / {len(val_set)} {args.val_split} images from {data}")
    seed_everything(cfg.seed)
    model = build_model(cfg)
    start = time.perf_counter()
    log = train(model, train_set, cfg, max_iter=args.max_iter, device=device,
                progress=not args.quiet, out_dir=args.out, resume=args.resume,
                checkpoint_period=args.checkpoint_period)
    # A resumed run's log covers the whole run, its "time" the training time of all sessions.
    seconds = next((e["time"] for e in reversed(log) if "time" in e), time.perf_counter() - start)
    if get_rank() != 0:  # one process evaluates and writes the files
        return model, cfg, val_set, log, {}, seconds
    metrics = evaluate_coco(model, val_set, cfg.input.test_short_size, cfg.input.test_max_size,
                            device=device, progress=not args.quiet, out_dir=args.out,
                            split=args.val_split)
    return model, cfg, val_set, log, metrics, seconds


def cmd_train(args) -> int:
    """``train``: a preset with overrides, trained into ``--out`` and evaluated on val."""
    from blendmask_edu.training.engine import CHECKPOINT_FILE

    cfg = apply_overrides(preset(args.preset), args.overrides)
    _, _, _, log, metrics, seconds = _run_training(args, cfg, args.data)
    if not metrics:  # a torchrun process other than the first
        return 0
    if log:
        print(f"trained to iteration {log[-1]['iter']} in {seconds:.0f} s; "
              f"checkpoint {Path(args.out) / CHECKPOINT_FILE}")
    print_metrics(metrics, Path(args.out), cfg, args.val_split)
    return 0


def cmd_demo(args) -> int:
    """``demo``: generate shapes (if missing), train ``tiny_fast``, evaluate, write the report.

    Training resumes from OUT/last.pt when it exists: an interrupted demo continues where it
    stopped, and a finished one is only evaluated and reported again. Delete OUT to start over.
    """
    from blendmask_edu.data.synthetic import ensure_shapes
    from blendmask_edu.evaluation.report import write_report
    from blendmask_edu.training.engine import precision_name

    start = time.perf_counter()
    cfg = apply_overrides(preset(DEMO_PRESET), args.overrides)
    data = ensure_shapes(args.data, num_train=args.train, num_val=args.val, size=args.size,
                         progress=not args.quiet)
    args.resume, args.checkpoint_period = True, None
    model, cfg, val_set, log, metrics, seconds = _run_training(args, cfg, data)
    out = Path(args.out)
    device = next(model.parameters()).device
    notes = [f"device {device}, trained in {precision_name(device, cfg.solver.amp)}; "
             f"data {data} ({args.train} train / {args.val} val images of {args.size} px)"]
    report = write_report(out, model, val_set, log, metrics, cfg, train_seconds=seconds,
                          notes=notes, split=args.val_split)
    print(f"demo finished in {time.perf_counter() - start:.0f} s (training {seconds:.0f} s)")
    print_metrics(metrics, out, cfg, args.val_split)
    print(f"report: {report}")
    return 0


# ----------------------------------------------------------------------------- a checkpoint


def _category_ids(cfg) -> list:
    """The dataset ids the model's classes stand for (1..C when the config names none)."""
    return list(cfg.category_ids) or list(range(1, cfg.num_classes + 1))


def _load(args):
    """(model in eval mode, its Config) of ``--checkpoint`` on ``--device``."""
    from blendmask_edu.training.checkpoint import load_model

    if args.preset is not None:
        preset(args.preset)  # an unknown name is a usage error, before the file is read
    return load_model(args.checkpoint, device=choose_device(args.device), preset=args.preset)


def _classes(ids, names) -> str:
    """``5 classes (1 circle, 2 triangle, 3 rectangle, ...)``: a count and the first few
    (ids alone when ``names`` is empty)."""
    shown = [f"{i} {n}" for i, n in zip(ids, names)] if names else [str(i) for i in ids]
    return f"{len(ids)} classes ({', '.join(shown[:3])}{', ...' if len(ids) > 3 else ''})"


def _check_classes(checkpoint, cfg, dataset) -> None:
    """UsageError unless the model's classes (ids, and names when the config has them) are
    the thing categories of ``dataset``: scoring a model's ids as other classes gives a
    meaningless AP (a shapes model on COCO would score its circles as persons)."""
    ids, names = _category_ids(cfg), list(cfg.class_names)
    data_ids, data_names = list(dataset.categories.thing_ids), dataset.categories.thing_names
    if ids == data_ids and (not names or names == data_names):
        return
    raise UsageError(f"{checkpoint}: the model's {_classes(ids, names)} are not the "
                     f"{_classes(data_ids, data_names)} of {dataset.instances_json}; evaluate "
                     f"on data with the model's classes, or pass --allow-class-mismatch to "
                     f"score it anyway")


def cmd_evaluate(args) -> int:
    """``evaluate``: a checkpoint's AP (and PQ, for a panoptic model) on a split (``--split``,
    default the val split). The model's classes must be the split's thing categories unless
    ``--allow-class-mismatch``; every image file is checked to exist before the first."""
    from blendmask_edu.evaluation.evaluate import evaluate_coco

    split = split_name(args.data, args.split, "val", flag="--split")
    model, cfg = _load(args)
    # A panoptic model gets PQ where the data has panoptic ground truth, AP everywhere.
    dataset = open_split(args.data, split, panoptic=None if cfg.panoptic.enabled else False)
    predicted = _category_ids(cfg)
    if not args.allow_class_mismatch:
        _check_classes(args.checkpoint, cfg, dataset)
    if not set(predicted) & set(dataset.categories.thing_ids):
        raise UsageError(f"{args.checkpoint}: the model predicts category ids {predicted}, none "
                         f"of which is in {dataset.instances_json} ({dataset.categories.thing_ids})")
    dataset.check_files()
    metrics = evaluate_coco(model, dataset, cfg.input.test_short_size, cfg.input.test_max_size,
                            progress=not args.quiet, out_dir=args.out, split=split)
    print(f"{args.checkpoint} (preset {cfg.name}) on {len(dataset)} {split} images of {args.data}")
    print_metrics(metrics, Path(args.out), cfg, split)
    return 0


def read_image_file(path: Union[str, Path]):
    """An image file → uint8 tensor [3, H, W] (grayscale, palette and RGBA become RGB), or
    DatasetError naming the file."""
    import numpy as np
    import torch
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "image file not found")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "P":
                image = image.convert("RGBA")
            rgb = np.array(image.convert("RGB"), dtype=np.uint8)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise DatasetError(path, f"cannot read the image ({type(error).__name__}: {error})") from None
    return torch.from_numpy(rgb).permute(2, 0, 1)


def cmd_predict(args) -> int:
    """``predict``: one PNG per image with its detections (and panoptic map), and the
    detections above ``--score-thresh`` in ``coco_instances_results.json``.

    An image that cannot be read is skipped with a one-line warning and the others are done;
    the exit code is then 1 and the last line says how many were skipped. When none can be
    read nothing is loaded or written: one line per image and exit code 2 (like any problem
    with the user's files).
    """
    from blendmask_edu.evaluation.coco import RESULTS_FILE, to_coco_results
    from blendmask_edu.evaluation.inference import detect
    from blendmask_edu.fileio import write_json
    from blendmask_edu.visualize import category_colors, save_prediction

    model, out, results, used, unreadable = None, Path(args.out), [], set(), []
    for index, path in enumerate(map(Path, args.images)):
        try:
            image = read_image_file(path).float().div(255)
        except DatasetError as error:  # read one at a time: the images may not fit in memory
            print(f"warning: {error}; skipped", file=sys.stderr)
            unreadable.append(path)
            continue
        if model is None:  # the first readable image: only now is there work for the model
            model, cfg = _load(args)
            names = dict(zip(_category_ids(cfg), cfg.class_names))
            stuff_names = dict(zip(cfg.panoptic.stuff_ids, cfg.panoptic.stuff_names))
            colors = category_colors(list(names) + list(stuff_names))
            out.mkdir(parents=True, exist_ok=True)
        det = detect(model, [image], cfg.input.test_short_size, cfg.input.test_max_size)[0]
        panoptic, _ = det.pop("panoptic", None), det.pop("sem_seg", None)
        keep = det["scores"] >= args.score_thresh
        det = {k: v[keep] for k, v in det.items()}
        image_id = int(path.stem) if path.stem.isdigit() else index
        results += to_coco_results(det, image_id)
        name = path.stem if path.stem not in used else f"{path.stem}_{index}"
        used.add(name)
        save_prediction(out / f"{name}.png", path.name, image, det, panoptic, names,
                        stuff_names, colors, args.score_thresh, cfg.panoptic.score_thresh)
        print(f"{path}: {len(det['scores'])} detections"
              + (f", {len(panoptic[1])} panoptic segments" if panoptic is not None else "")
              + f" → {out / (name + '.png')}")
    total = len(args.images)
    if model is None:
        print(f"error: none of the {total} image(s) could be read; nothing written",
              file=sys.stderr)
        return 2
    write_json(out / RESULTS_FILE, results)
    print(f"wrote {out / RESULTS_FILE} ({len(results)} detections)")
    if unreadable:
        print(f"error: {len(unreadable)} of {total} images could not be read (skipped: "
              f"{', '.join(map(str, unreadable[:3]))}{', ...' if len(unreadable) > 3 else ''})",
              file=sys.stderr)
        return 1
    return 0
