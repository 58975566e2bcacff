"""The ``blendmask-edu`` command (also ``python -m blendmask_edu``).

    blendmask-edu data shapes  --out DIR [--train N] [--val N] [--size PX] [--seed S]
    blendmask-edu data check   --images DIR --instances FILE [--panoptic FILE --panoptic-dir DIR]
    blendmask-edu data subset  --instances FILE [--panoptic FILE] --out DIR [--images N]
                               [--categories a,b,...] [--seed S]
    blendmask-edu data report  --data DIR [--split val] --out DIR
    blendmask-edu demo         [--data DIR] [--out DIR]

Every problem with the user's files ends in one line that names the file and the problem, and
a non-zero exit code — never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from blendmask_edu.data.errors import DatasetError

DEFAULT_DATA = "data/shapes"


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


def _cmd_demo(args) -> int:
    """Generate the shapes dataset if it is not there yet, then write the dataset report."""
    from blendmask_edu.data.stats import write_dataset_report
    from blendmask_edu.data.synthetic import ensure_shapes

    data = ensure_shapes(args.data)
    stats = write_dataset_report(data, "val", args.out)
    print(f"val: {stats['images']} images, {stats['instances']} instances, sizes "
          f"{stats['size_ratio']:.1f}:1, split things in {stats['split_fraction']:.0%} of images, "
          f"overlap in {stats['hard_case_fraction'].get('overlap', 0):.0%}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
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

    demo = commands.add_parser("demo", help="the end-to-end demo on the shapes dataset")
    demo.add_argument("--data", default=DEFAULT_DATA)
    demo.add_argument("--out", default="runs/demo")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"error: {error.filename or error}: file not found", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
