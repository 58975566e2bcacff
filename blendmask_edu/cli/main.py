"""The ``blendmask-edu`` command (also ``python -m blendmask_edu``).

    blendmask-edu data shapes  --out DIR [--train N] [--val N] [--size PX] [--seed S]
    blendmask-edu data check   --images DIR --instances FILE [--panoptic FILE --panoptic-dir DIR]
    blendmask-edu data subset  --instances FILE [--panoptic FILE] --out DIR [--images N]
                               [--categories a,b,...] [--seed S]
    blendmask-edu data report  --data DIR [--split val] --out DIR
    blendmask-edu train        --preset NAME --data DIR --out RUN [--max-iter N] [--resume]
                               [--checkpoint-period N] [--device cpu|cuda] [--section.key VALUE ...]
    blendmask-edu evaluate     --checkpoint FILE --data DIR [--split val] --out DIR [--preset NAME]
    blendmask-edu predict      --checkpoint FILE IMAGE... --out DIR [--score-thresh 0.3]
                               [--preset NAME]
    blendmask-edu demo         [--data DIR] [--out DIR] [--max-iter N] [--device cpu|cuda]

``train`` and ``demo`` take typed config overrides after the other options, one
``--section.key value`` pair each (``--solver.base_lr 0.01 --blendmask.num_bases 8``): the value
is read as JSON (``[16, 32]``, ``null``, ``true``) or else as text, and must fit the field's type.

Every problem with the user's files or arguments ends in one line that names the file or the
argument and the problem, and exit code 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from blendmask_edu.data.errors import DatasetError

DEFAULT_DATA = "data/shapes"
DEMO_PRESET = "tiny"


class UsageError(Exception):
    """A wrong command-line argument (preset, override, device, ...): reported in one line."""


def _cmd_shapes(args) -> int:
    from blendmask_edu.data.synthetic import generate_shapes

    start = time.perf_counter()
    summary = generate_shapes(args.out, num_train=args.train, num_val=args.val, size=args.size,
                              seed=args.seed, progress=not args.quiet)
    print(f"wrote {args.train} train + {args.val} val images ({args.size} px) to {args.out} "
          f"in {time.perf_counter() - start:.1f} s")
    for split, fractions in summary.get("hard_case_fraction", {}).items():
        print(f"  {split}: " + ", ".join(f"{tag} {share:.0%}" for tag, share in fractions.items()))
    return 0


def _cmd_check(args) -> int:
    from blendmask_edu.data.check import check_dataset

    if (args.panoptic is None) != (args.panoptic_dir is None):
        raise SystemExit("error: --panoptic and --panoptic-dir go together")
    defects = check_dataset(args.images, args.instances, args.panoptic, args.panoptic_dir,
                            progress=not args.quiet)
    for defect in defects:
        print(defect)
    if defects:
        print(f"{len(defects)} defect(s) found", file=sys.stderr)
        return 1
    print("no defects found")
    return 0


def _cmd_subset(args) -> int:
    from blendmask_edu.data.check import check_dataset
    from blendmask_edu.data.subset import make_subset

    categories = [c.strip() for c in args.categories.split(",") if c.strip()] \
        if args.categories else None
    paths = make_subset(args.instances, args.out, panoptic_json=args.panoptic,
                        num_images=args.images, categories=categories, seed=args.seed,
                        images_dir=args.image_dir)
    print(f"wrote {paths.instances}" + (f" and {paths.panoptic}" if paths.panoptic else ""))
    defects = check_dataset(paths.images_dir, paths.instances, paths.panoptic,
                            paths.panoptic_dir, progress=False)
    for defect in defects:
        print(defect)
    return 1 if defects else 0


def _cmd_report(args) -> int:
    from blendmask_edu.data.stats import write_dataset_report

    stats = write_dataset_report(args.data, args.split, args.out)
    print(f"{stats['images']} images, {stats['instances']} instances; "
          f"report in {Path(args.out) / 'report.md'}")
    return 0


# ----------------------------------------------------------------------------- config and data


def _preset(name: str):
    from blendmask_edu.config import get_config

    try:
        return get_config(name)
    except ValueError as error:  # the message lists the presets
        raise UsageError(str(error)) from None


def parse_overrides(extra: Sequence[str]) -> List[Tuple[str, str]]:
    """``["--solver.base_lr", "0.01", "--seed=3"]`` → ``[("solver.base_lr", "0.01"), ("seed", "3")]``;
    dashes in a key become underscores."""
    pairs, i = [], 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or token == "--":
            raise UsageError(f"unexpected argument {token!r}; config overrides are written "
                             f"--section.key value (e.g. --solver.base_lr 0.01)")
        key, has_value, value = token[2:].partition("=")
        if not has_value:
            if i + 1 >= len(extra):
                raise UsageError(f"--{key} needs a value")
            i += 1
            value = extra[i]
        pairs.append((key.replace("-", "_"), value))
        i += 1
    return pairs


def apply_overrides(cfg, pairs: Sequence[Tuple[str, str]]):
    """``cfg`` with each ``(dotted key, text)`` applied by :func:`config.override` (which checks
    the key and the value's type); a wrong one is a UsageError, reported in one line."""
    from blendmask_edu.config import override

    for key, text in pairs:
        try:
            cfg = override(cfg, key, text)
        except ValueError as error:
            raise UsageError(f"--{error}") from None
    return cfg


def _device(name: Optional[str]):
    import torch

    from blendmask_edu.utils import pick_device

    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine; use --device cpu")
    return pick_device(name)


def _open_split(root: Union[str, Path], split: str, transforms=None, include_empty: bool = True,
                panoptic: Optional[bool] = False):
    """The ``split`` of the COCO-layout dataset at ``root``, or DatasetError saying how to make
    or where to put the data. ``panoptic``: False, instances only; True, with the panoptic
    semantic labels, which must be there (UsageError); None, with them if they are there."""
    from blendmask_edu.data.coco import CocoInstances
    from blendmask_edu.data.files import dataset_paths

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, f"data folder not found; make the shapes dataset with "
                                 f"`blendmask-edu data shapes --out {root}`, or put COCO files "
                                 f"there: images in {root / split}/ and "
                                 f"{root / 'annotations'}/instances_{split}.json")
    paths = dataset_paths(root, split)
    if panoptic is None:
        panoptic = paths.panoptic is not None and paths.panoptic_dir is not None
    if panoptic and (paths.panoptic is None or paths.panoptic_dir is None):
        raise UsageError(f"{root}: the model is panoptic, but there is no "
                         f"{root / 'annotations'}/panoptic_{split}.json with its PNG folder "
                         f"panoptic_{split}/; add them, or train with --panoptic.enabled false")
    return CocoInstances(paths.images_dir, paths.instances,
                         paths.panoptic if panoptic else None,
                         paths.panoptic_dir if panoptic else None, transforms=transforms,
                         include_empty=include_empty)


def _fit_categories(cfg, dataset):
    """``cfg`` with the dataset's thing categories when they differ from the preset's: the
    classifier needs C outputs and the results files the dataset's real ids."""
    categories = dataset.categories
    ids, names = tuple(categories.thing_ids), tuple(categories.thing_names)
    if (cfg.num_classes, tuple(cfg.category_ids), tuple(cfg.class_names)) != (len(ids), ids, names):
        print(f"classes from the data ({len(ids)}): {', '.join(names)}")
        cfg = dataclasses.replace(cfg, num_classes=len(ids), category_ids=ids, class_names=names)
    stuff = tuple(categories.stuff_ids), tuple(categories.semantic_names[1:])
    if cfg.panoptic.enabled and (tuple(cfg.panoptic.stuff_ids), tuple(cfg.panoptic.stuff_names)) != stuff:
        print(f"stuff classes from the data ({len(stuff[0])}): {', '.join(stuff[1])}")
        cfg = dataclasses.replace(cfg, panoptic=dataclasses.replace(
            cfg.panoptic, stuff_ids=stuff[0], stuff_names=stuff[1]))
    return cfg


def _training_sets(data, cfg):
    from blendmask_edu.data.transforms import build_train_transforms

    transforms = build_train_transforms(cfg.input.train_short_sizes, cfg.input.train_max_size,
                                        cfg.input.flip_prob)
    # Images without any object teach nothing here (the official recipe drops them too).
    panoptic = cfg.panoptic.enabled
    train_set = _open_split(data, "train", transforms, include_empty=False, panoptic=panoptic)
    if len(train_set) < cfg.solver.batch_size:
        raise UsageError(f"{data}: {len(train_set)} training images with objects, fewer than one "
                         f"batch of {cfg.solver.batch_size}; add images or lower --solver.batch_size")
    return train_set, _open_split(data, "val", panoptic=panoptic)


def _print_metrics(metrics, out: Path, cfg, split: str = "val") -> None:
    """The AP table, and for a panoptic model the paper's Table 1 row; the files written."""
    from blendmask_edu.evaluation.evaluate import METRICS_FILE, PR_CURVE_FILE, RESULTS_FILE, format_metrics

    backbone = f"R-{cfg.backbone.depth}" + (f" (width {cfg.backbone.width})"
                                             if cfg.backbone.width != 64 else "")
    print(format_metrics(metrics, backbone=backbone))
    files = [out / METRICS_FILE, out / RESULTS_FILE, out / PR_CURVE_FILE]
    if "PQ" in metrics:
        files += [out / f"panoptic_{split}.json", out / f"panoptic_{split}"]
    print("wrote " + ", ".join(map(str, files)))


def _run_training(args, cfg, data):
    """Train ``cfg`` on ``data`` into ``args.out`` and evaluate on val; returns
    (model, cfg, val set, log of the whole run, metrics, training seconds of the whole run)."""
    from blendmask_edu.config import describe
    from blendmask_edu.training.engine import get_rank, init_distributed, train
    from blendmask_edu.evaluation.evaluate import evaluate_coco
    from blendmask_edu.modeling.model import build_model
    from blendmask_edu.utils import seed_everything

    # Under torchrun every process joins the group and takes its device (cuda:LOCAL_RANK or cpu).
    device = init_distributed(_device(args.device).type)
    train_set, val_set = _training_sets(data, cfg)
    cfg = _fit_categories(cfg, train_set)
    print(describe(cfg))
    print(f"device {device}, {len(train_set)} train / {len(val_set)} val images from {data}")
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
                            device=device, progress=not args.quiet, out_dir=args.out)
    return model, cfg, val_set, log, metrics, seconds


# ----------------------------------------------------------------------------- model commands


def _cmd_train(args) -> int:
    cfg = apply_overrides(_preset(args.preset), args.overrides)
    _, _, _, log, metrics, seconds = _run_training(args, cfg, args.data)
    if not metrics:  # a torchrun process other than the first
        return 0
    if log:
        print(f"trained to iteration {log[-1]['iter']} in {seconds:.0f} s; "
              f"checkpoint {Path(args.out) / 'last.pt'}")
    _print_metrics(metrics, Path(args.out), cfg)
    return 0


def _category_ids(cfg) -> list:
    """The dataset ids the model's classes stand for (1..C when the config names none)."""
    return list(cfg.category_ids) or list(range(1, cfg.num_classes + 1))


def _load(args):
    from blendmask_edu.training.checkpoint import load_model

    if args.preset is not None:
        _preset(args.preset)  # an unknown name is a usage error, before the file is read
    return load_model(args.checkpoint, device=_device(args.device), preset=args.preset)


def _cmd_evaluate(args) -> int:
    from blendmask_edu.evaluation.evaluate import evaluate_coco

    model, cfg = _load(args)
    # A panoptic model gets PQ where the data has panoptic ground truth, AP everywhere.
    dataset = _open_split(args.data, args.split, panoptic=None if cfg.panoptic.enabled else False)
    predicted = _category_ids(cfg)
    if not set(predicted) & set(dataset.categories.thing_ids):
        raise UsageError(f"{args.checkpoint}: the model predicts category ids {predicted}, none "
                         f"of which is in {dataset.instances_json} ({dataset.categories.thing_ids})")
    metrics = evaluate_coco(model, dataset, cfg.input.test_short_size, cfg.input.test_max_size,
                            progress=not args.quiet, out_dir=args.out, split=args.split)
    print(f"{args.checkpoint} (preset {cfg.name}) on {len(dataset)} {args.split} images of {args.data}")
    _print_metrics(metrics, Path(args.out), cfg, args.split)
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


def _cmd_predict(args) -> int:
    import matplotlib.pyplot as plt

    from blendmask_edu.evaluation.evaluate import RESULTS_FILE, detect, to_coco_results, write_json
    from blendmask_edu.visualize import category_colors, draw_detections, draw_panoptic

    images = [read_image_file(path) for path in args.images]  # every file checked first
    model, cfg = _load(args)
    names = dict(zip(_category_ids(cfg), cfg.class_names))
    stuff_names = dict(zip(cfg.panoptic.stuff_ids, cfg.panoptic.stuff_names))
    colors = category_colors(list(names) + list(stuff_names))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, used = [], set()
    for index, (path, image) in enumerate(zip(map(Path, args.images), images)):
        image = image.float().div(255)
        det = detect(model, [image], cfg.input.test_short_size, cfg.input.test_max_size)[0]
        panoptic, _ = det.pop("panoptic", None), det.pop("sem_seg", None)
        keep = det["scores"] >= args.score_thresh
        det = {k: v[keep] for k, v in det.items()}
        image_id = int(path.stem) if path.stem.isdigit() else index
        results += to_coco_results(det, image_id)
        height, width = image.shape[-2:]
        panels = 1 if panoptic is None else 2
        fig, axes = plt.subplots(1, panels, figsize=(6.0 * panels, 6.0 * height / width),
                                 squeeze=False)
        draw_detections(image, det, names, args.score_thresh, ax=axes[0, 0],
                        title=f"{path.name}: {len(det['scores'])} detections ≥ {args.score_thresh}")
        if panoptic is not None:  # the fusion keeps instances ≥ its own threshold
            ids, segments = panoptic
            things = sum(s["isthing"] for s in segments)
            draw_panoptic(ids.numpy(), segments, colors, thing_ids=list(names),
                          names={**names, **stuff_names}, ax=axes[0, 1],
                          title=f"panoptic: {things} things, {len(segments) - things} stuff "
                                f"(instances ≥ {cfg.panoptic.score_thresh})")
        name = path.stem if path.stem not in used else f"{path.stem}_{index}"
        used.add(name)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=100)
        plt.close(fig)
        print(f"{path}: {len(det['scores'])} detections"
              + (f", {len(panoptic[1])} panoptic segments" if panoptic is not None else "")
              + f" → {out / (name + '.png')}")
    write_json(out / RESULTS_FILE, results)
    print(f"wrote {out / RESULTS_FILE} ({len(results)} detections)")
    return 0


def _cmd_demo(args) -> int:
    """Generate shapes (if missing), train the tiny preset, evaluate, write the report.

    Training resumes from OUT/last.pt when it exists: an interrupted demo continues where it
    stopped, and a finished one is only evaluated and reported again. Delete OUT to start over.
    """
    from blendmask_edu.data.synthetic import ensure_shapes
    from blendmask_edu.evaluation.report import write_report

    start = time.perf_counter()
    cfg = apply_overrides(_preset(DEMO_PRESET), args.overrides)
    data = ensure_shapes(args.data, num_train=args.train, num_val=args.val, size=args.size,
                         progress=not args.quiet)
    args.resume, args.checkpoint_period = True, None
    model, cfg, val_set, log, metrics, seconds = _run_training(args, cfg, data)
    out = Path(args.out)
    notes = [f"device {next(model.parameters()).device}; data {data} "
             f"({args.train} train / {args.val} val images of {args.size} px)"]
    report = write_report(out, model, val_set, log, metrics, cfg, train_seconds=seconds,
                          notes=notes)
    print(f"demo finished in {time.perf_counter() - start:.0f} s (training {seconds:.0f} s)")
    _print_metrics(metrics, out, cfg)
    print(f"report: {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from blendmask_edu.config import PRESETS  # plain dataclasses: cheap to import

    parser = argparse.ArgumentParser(prog="blendmask-edu", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="make, check, subset and describe COCO datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)

    shapes = data_commands.add_parser("shapes", help="generate the synthetic shapes dataset")
    shapes.add_argument("--out", required=True, help="output folder (COCO layout)")
    shapes.add_argument("--train", type=int, default=2000, help="train images (2000)")
    shapes.add_argument("--val", type=int, default=200, help="val images (200)")
    shapes.add_argument("--size", type=int, default=128, help="image side in pixels (128)")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--quiet", action="store_true", help="no progress bar")
    shapes.set_defaults(func=_cmd_shapes)

    check = data_commands.add_parser("check", help="list every defect of a COCO dataset")
    check.add_argument("--images", required=True, help="folder of the images")
    check.add_argument("--instances", required=True, help="COCO instances JSON")
    check.add_argument("--panoptic", help="COCO panoptic JSON")
    check.add_argument("--panoptic-dir", help="folder of the panoptic PNGs")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.set_defaults(func=_cmd_check)

    subset = data_commands.add_parser("subset", help="write a smaller COCO-format dataset")
    subset.add_argument("--instances", required=True, help="COCO instances JSON (instances_SPLIT.json)")
    subset.add_argument("--panoptic", help="COCO panoptic JSON of the same split")
    subset.add_argument("--out", required=True, help="output folder (COCO layout)")
    subset.add_argument("--images", type=int, help="number of images to keep (all)")
    subset.add_argument("--categories", help="comma-separated thing category names to keep (all)")
    subset.add_argument("--seed", type=int, default=0)
    subset.add_argument("--image-dir", help="folder of the images (default: ../SPLIT beside "
                                            "the annotations folder)")
    subset.set_defaults(func=_cmd_subset)

    report = data_commands.add_parser("report", help="statistics and pictures of a dataset")
    report.add_argument("--data", required=True, help="dataset root (COCO layout)")
    report.add_argument("--split", default="val")
    report.add_argument("--out", required=True)
    report.set_defaults(func=_cmd_report)

    def device_option(command):
        command.add_argument("--device", choices=("cpu", "cuda"),
                             help="default: cuda if available, else cpu")
        command.add_argument("--quiet", action="store_true", help="no progress bars")

    train = commands.add_parser(
        "train", allow_abbrev=False, help="train a preset, then evaluate on val",
        epilog="Config overrides follow the options: --section.key VALUE, e.g. "
               "--solver.base_lr 0.01 --blendmask.num_bases 8.")
    train.add_argument("--preset", required=True,
                       help=f"one of {', '.join(sorted(PRESETS))} (tiny: CPU, shapes)")
    train.add_argument("--data", required=True, help="dataset root (COCO layout, train and val)")
    train.add_argument("--out", required=True, help="run folder: config.json, metrics.jsonl, "
                                                    "last.pt, metrics.json, ...")
    train.add_argument("--max-iter", type=int, help="iterations (default: the preset's)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    train.add_argument("--checkpoint-period", type=int, help="iterations between checkpoints "
                                                             "(default: the preset's)")
    device_option(train)
    train.set_defaults(func=_cmd_train, takes_overrides=True)

    def checkpoint_options(command):
        command.add_argument("--checkpoint", required=True, help="a .pt file written by train")
        command.add_argument("--preset", help="fail unless the checkpoint is of this preset")
        device_option(command)

    evaluate = commands.add_parser("evaluate", help="COCO box and mask AP (and PQ, for a panoptic model) of a checkpoint")
    checkpoint_options(evaluate)
    evaluate.add_argument("--data", required=True, help="dataset root (COCO layout)")
    evaluate.add_argument("--split", default="val")
    evaluate.add_argument("--out", required=True,
                          help="writes metrics.json, coco_instances_results.json, pr_curve.png")
    evaluate.set_defaults(func=_cmd_evaluate)

    predict = commands.add_parser("predict", help="draw a checkpoint's detections (and panoptic map) on images")
    checkpoint_options(predict)
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--out", required=True, help="one PNG per image + "
                                                      "coco_instances_results.json")
    predict.add_argument("--score-thresh", type=float, default=0.3,
                         help="keep detections scoring at least this (0.3)")
    predict.set_defaults(func=_cmd_predict)

    demo = commands.add_parser(
        "demo", allow_abbrev=False,
        help="generate shapes, train the tiny preset, evaluate, write OUT/report.md",
        epilog="Resumes from OUT/last.pt when present; delete OUT to start over. Config "
               "overrides (--section.key VALUE) may follow the options.")
    demo.add_argument("--data", default=DEFAULT_DATA, help=f"shapes folder ({DEFAULT_DATA}); "
                                                           "generated when missing")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--max-iter", type=int, help="iterations (default: the preset's)")
    demo.add_argument("--train", type=int, default=2000, help="train images to generate (2000)")
    demo.add_argument("--val", type=int, default=200, help="val images to generate (200)")
    demo.add_argument("--size", type=int, default=128, help="image side in pixels (128)")
    device_option(demo)
    demo.set_defaults(func=_cmd_demo, takes_overrides=True)
    return parser


def _user_error(error: BaseException) -> bool:
    """Errors that are about the user's files or arguments, reported in one line."""
    if isinstance(error, (DatasetError, UsageError)):
        return True
    # Only a command that read a checkpoint has imported the module that defines its error.
    checkpoint = sys.modules.get("blendmask_edu.training.checkpoint")
    return checkpoint is not None and isinstance(error, checkpoint.CheckpointError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.overrides = parse_overrides(extra)
        return args.func(args)
    except FileNotFoundError as error:
        print(f"error: {error.filename or error}: file not found", file=sys.stderr)
        return 2
    except FloatingPointError as error:  # the engine's report of a diverged training
        print(f"error: training diverged: {error}; try a lower --solver.base_lr", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if not _user_error(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
