"""The ``blendmask-edu`` command (also ``python -m blendmask_edu``).

    blendmask-edu data shapes  --out DIR [--train N] [--val N] [--size PX] [--seed S]
    blendmask-edu data coco-like --out DIR [--images N] [--max-side PX] [--seed S]
    blendmask-edu data check   --images DIR --instances FILE [--panoptic FILE --panoptic-dir DIR]
                               [--all-notes]
    blendmask-edu data subset  --instances FILE [--panoptic FILE] --out DIR [--images N]
                               [--categories a,b,...] [--seed S]
    blendmask-edu data report  --data DIR [--split NAME] --out DIR
    blendmask-edu train        --preset NAME --data DIR --out RUN [--max-iter N] [--resume]
                               [--checkpoint-period N] [--train-split NAME] [--val-split NAME]
                               [--device cpu|cuda] [--section.key VALUE ...]
    blendmask-edu evaluate     --checkpoint FILE --data DIR [--split NAME] --out DIR [--preset NAME]
                               [--allow-class-mismatch]
    blendmask-edu predict      --checkpoint FILE IMAGE... --out DIR [--score-thresh 0.3]
                               [--preset NAME]
    blendmask-edu demo         [--data DIR] [--out DIR] [--max-iter N] [--device cpu|cuda]
    blendmask-edu compare      [--data DIR] [--out DIR] [--max-iter N] [--device cpu|cuda]
                               [--train-split NAME] [--val-split NAME]
    blendmask-edu assignments list | release --out DIR | grade SUBMISSION.ipynb... [--out DIR]
                               [--timeout S]

``train`` and ``demo`` take typed config overrides after the other options, one
``--section.key value`` pair each (``--solver.base_lr 0.01 --blendmask.num_bases 8``): the value
is read as JSON (``[16, 32]``, ``null``, ``true``) or else as text, and must fit the field's type.
A list field also takes ``320``, ``320,352``, ``"320 352"`` or ``320 352`` (every word up to
the next ``--`` option).

Split names: a dataset root in COCO's layout holds ``annotations/instances_NAME.json`` and the
images in ``NAME/``. ``--train-split`` / ``--val-split`` (``evaluate``: ``--split``, the val
split) choose NAME; by default ``train`` and ``val``, else COCO's ``train2017`` and ``val2017``.
Every image file is checked to exist before the first step.

Exit codes: 0; 1 (defects found, training diverged, some of ``predict``'s images unreadable);
2 (a problem with the user's files or arguments, in one line — also ``predict`` when no image
can be read); 130 (Ctrl-C) and 143 (SIGTERM): a training stopped by either has written
``RUN/last.pt`` at the iteration reached, and ``--resume`` continues it exactly.

Every problem with the user's files or arguments ends in one line that names the file or the
argument and the problem, and exit code 2 — never a traceback.

This module parses the command line and reports errors; the commands are in
:mod:`~blendmask_edu.cli.data_commands`, :mod:`~blendmask_edu.cli.model_commands`,
:mod:`~blendmask_edu.cli.compare_command` and :mod:`~blendmask_edu.cli.assignment_commands`;
what they share in :mod:`~blendmask_edu.cli.common`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from blendmask_edu.cli import (assignment_commands, compare_command, data_commands,
                               model_commands)
from blendmask_edu.cli.common import UsageError, offline_weights_message, parse_overrides
from blendmask_edu.data.errors import DatasetError


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each subcommand sets ``func`` (its ``cmd_*``) and, for
    ``train`` and ``demo``, ``takes_overrides``."""
    from blendmask_edu.presets import PRESETS  # plain dataclasses: cheap to import

    parser = argparse.ArgumentParser(prog="blendmask-edu", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="make, check, subset and describe COCO datasets")
    data_subcommands = data.add_subparsers(dest="data_command", required=True)

    shapes = data_subcommands.add_parser("shapes", help="generate the synthetic shapes dataset")
    shapes.add_argument("--out", required=True, help="output folder (COCO layout)")
    shapes.add_argument("--train", type=int, default=2000, help="train images (2000)")
    shapes.add_argument("--val", type=int, default=200, help="val images (200)")
    shapes.add_argument("--size", type=int, default=128, help="image side in pixels (128)")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--quiet", action="store_true", help="no progress bar")
    shapes.set_defaults(func=data_commands.cmd_shapes)

    coco_like = data_subcommands.add_parser(
        "coco-like", help="write a small dataset in COCO 2017's layout with COCO's properties")
    coco_like.add_argument("--out", required=True, help="output folder (train2017/, val2017/, "
                                                        "annotations/)")
    coco_like.add_argument("--images", type=int, default=8, help="images per split (8; >= 6)")
    coco_like.add_argument("--max-side", type=int, default=160,
                           help="longer image side in px (160; 640 for COCO-sized images)")
    coco_like.add_argument("--seed", type=int, default=0)
    coco_like.set_defaults(func=data_commands.cmd_coco_like)

    check = data_subcommands.add_parser("check", help="list every defect of a COCO dataset")
    check.add_argument("--images", required=True, help="folder of the images")
    check.add_argument("--instances", required=True, help="COCO instances JSON")
    check.add_argument("--panoptic", help="COCO panoptic JSON")
    check.add_argument("--panoptic-dir", help="folder of the panoptic PNGs")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.add_argument("--all-notes", action="store_true",
                       help=f"print every note (default: the first {data_commands.NOTES_SHOWN})")
    check.set_defaults(func=data_commands.cmd_check)

    subset = data_subcommands.add_parser("subset", help="write a smaller COCO-format dataset")
    subset.add_argument("--instances", required=True, help="COCO instances JSON (instances_SPLIT.json)")
    subset.add_argument("--panoptic", help="COCO panoptic JSON of the same split")
    subset.add_argument("--out", required=True, help="output folder (COCO layout)")
    subset.add_argument("--images", type=int, help="number of images to keep (all)")
    subset.add_argument("--categories", help="comma-separated thing category names to keep (all)")
    subset.add_argument("--seed", type=int, default=0)
    subset.add_argument("--image-dir", help="folder of the images (default: ../SPLIT beside "
                                            "the annotations folder)")
    subset.set_defaults(func=data_commands.cmd_subset)

    report = data_subcommands.add_parser("report", help="statistics and pictures of a dataset")
    report.add_argument("--data", required=True, help="dataset root (COCO layout)")
    report.add_argument("--split", help="split name, any instances_NAME.json "
                                        "(default: val, else val2017)")
    report.add_argument("--out", required=True)
    report.set_defaults(func=data_commands.cmd_report)

    def split_options(command):
        command.add_argument("--train-split", help="split to train on, any instances_NAME.json "
                                                   "(default: train, else train2017)")
        command.add_argument("--val-split", help="split to evaluate on "
                                                 "(default: val, else val2017)")

    def device_option(command):
        command.add_argument("--device", choices=("cpu", "cuda"),
                             help="default: cuda if available, else cpu")
        command.add_argument("--quiet", action="store_true", help="no progress bars")

    train = commands.add_parser(
        "train", allow_abbrev=False, help="train a preset, then evaluate on val",
        epilog="Config overrides follow the options: --section.key VALUE, e.g. "
               "--solver.base_lr 0.01 --blendmask.num_bases 8.")
    train.add_argument("--preset", required=True,
                       help=f"one of {', '.join(sorted(PRESETS))} (tiny, tiny_fast: CPU, shapes)")
    train.add_argument("--data", required=True, help="dataset root (COCO layout, train and val)")
    train.add_argument("--out", required=True, help="run folder: config.json, metrics.jsonl, "
                                                    "last.pt, metrics.json, ...")
    train.add_argument("--max-iter", type=int, help="iterations (default: the preset's)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    train.add_argument("--checkpoint-period", type=int, help="iterations between checkpoints "
                                                             "(default: the preset's)")
    split_options(train)
    device_option(train)
    train.set_defaults(func=model_commands.cmd_train, takes_overrides=True)

    def checkpoint_options(command):
        command.add_argument("--checkpoint", required=True, help="a .pt file written by train")
        command.add_argument("--preset", help="fail unless the checkpoint is of this preset")
        device_option(command)

    evaluate = commands.add_parser("evaluate", help="COCO box and mask AP (and PQ, for a panoptic model) of a checkpoint")
    checkpoint_options(evaluate)
    evaluate.add_argument("--data", required=True, help="dataset root (COCO layout)")
    evaluate.add_argument("--split", help="split name, any instances_NAME.json "
                                          "(default: val, else val2017)")
    evaluate.add_argument("--allow-class-mismatch", action="store_true",
                          help="evaluate even if the checkpoint's classes are not the data's")
    evaluate.add_argument("--out", required=True,
                          help="writes metrics.json, coco_instances_results.json, pr_curve.png")
    evaluate.set_defaults(func=model_commands.cmd_evaluate)

    predict = commands.add_parser("predict", help="draw a checkpoint's detections (and panoptic map) on images")
    checkpoint_options(predict)
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--out", required=True, help="one PNG per image + "
                                                      "coco_instances_results.json")
    predict.add_argument("--score-thresh", type=float, default=0.3,
                         help="keep detections scoring at least this (0.3)")
    predict.set_defaults(func=model_commands.cmd_predict)

    demo = commands.add_parser(
        "demo", allow_abbrev=False,
        help="generate shapes, train the tiny_fast preset, evaluate, write OUT/report.md",
        epilog="Resumes from OUT/last.pt when present; delete OUT to start over. Config "
               "overrides (--section.key VALUE) may follow the options.")
    demo.add_argument("--data", default=model_commands.DEFAULT_DATA,
                      help=f"shapes folder ({model_commands.DEFAULT_DATA}); generated when missing")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--max-iter", type=int, help="iterations (default: the preset's)")
    demo.add_argument("--train", type=int, default=2000, help="train images to generate (2000)")
    demo.add_argument("--val", type=int, default=200, help="val images to generate (200)")
    demo.add_argument("--size", type=int, default=128, help="image side in pixels (128)")
    split_options(demo)
    device_option(demo)
    demo.set_defaults(func=model_commands.cmd_demo, takes_overrides=True)

    compare = commands.add_parser(
        "compare", allow_abbrev=False,
        help="train BlendMask (tiny_fast) and its Mask R-CNN counterpart (tiny_mask_rcnn) at "
             "equal steps and equal time, evaluate both, write OUT/report.md",
        epilog="Each training resumes from its last.pt: an interrupted compare continues where "
               "it stopped; delete OUT to start over. Config overrides (--section.key VALUE) "
               "apply to both models.")
    compare.add_argument("--data", default=model_commands.DEFAULT_DATA,
                         help=f"shapes folder ({model_commands.DEFAULT_DATA}); generated when "
                              f"missing")
    compare.add_argument("--out", default="runs/compare")
    compare.add_argument("--max-iter", type=int,
                         help="iterations of BlendMask and of the equal-steps Mask R-CNN "
                              "(default: the presets')")
    compare.add_argument("--timing-images", type=int, default=50,
                         help="val images the inference ms/image is timed on (50)")
    compare.add_argument("--train", type=int, default=2000, help="train images to generate (2000)")
    compare.add_argument("--val", type=int, default=200, help="val images to generate (200)")
    compare.add_argument("--size", type=int, default=128, help="image side in pixels (128)")
    split_options(compare)
    device_option(compare)
    compare.set_defaults(func=compare_command.cmd_compare, takes_overrides=True)

    assignment_commands.add_parser(commands)
    return parser


def _user_error(error: BaseException) -> bool:
    """Errors that are about the user's files or arguments, reported in one line."""
    if isinstance(error, (DatasetError, UsageError)):
        return True
    # Only a command that read a checkpoint has imported the module that defines its error.
    checkpoint = sys.modules.get("blendmask_edu.training.checkpoint")
    return checkpoint is not None and isinstance(error, checkpoint.CheckpointError)


def _weights_unavailable(error: BaseException) -> bool:
    """The backbone's report that the ImageNet weights cannot be had (offline)."""
    backbone = sys.modules.get("blendmask_edu.modeling.backbone")  # imported if a model was built
    return backbone is not None and isinstance(error, backbone.WeightsUnavailable)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command in ``argv`` (default: ``sys.argv[1:]``) and return its exit code: 0, 1
    (defects found, training diverged, some images unreadable), 2 (a problem with the user's
    files or arguments, in one line), 130 (interrupted by Ctrl-C) or 143 (stopped by SIGTERM).
    A training stopped by either signal has written ``RUN/last.pt`` first."""
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
    except KeyboardInterrupt as error:  # the engine's TrainingInterrupted has saved the run
        if getattr(error, "path", None) is None:
            print("interrupted", file=sys.stderr)
        elif os.environ.get("RANK", "0") == "0":  # one line under torchrun, not one per process
            again = ("run the same command again to continue"
                     if args.command in ("demo", "compare")
                     else "continue with --resume")
            print(f"{error}; {again}", file=sys.stderr)
        return getattr(error, "exit_code", 130)
    except Exception as error:
        if _weights_unavailable(error):
            print(f"error: {offline_weights_message(error)}", file=sys.stderr)
            return 2
        if not _user_error(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2

