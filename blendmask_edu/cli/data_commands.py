"""The ``data`` commands: make the shapes dataset, check, subset and describe COCO datasets.

Each ``cmd_*`` takes the parsed arguments (``argparse.Namespace``, options as in
:func:`blendmask_edu.cli.main.build_parser`) and returns the exit code: 0, or 1 when a check
found defects. The work itself is in :mod:`blendmask_edu.data`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def cmd_shapes(args) -> int:
    """``data shapes``: generate the synthetic shapes dataset and print its hard-case shares."""
    from blendmask_edu.data.synthetic import generate_shapes

    start = time.perf_counter()
    summary = generate_shapes(args.out, num_train=args.train, num_val=args.val, size=args.size,
                              seed=args.seed, progress=not args.quiet)
    print(f"wrote {args.train} train + {args.val} val images ({args.size} px) to {args.out} "
          f"in {time.perf_counter() - start:.1f} s")
    for split, fractions in summary.get("hard_case_fraction", {}).items():
        print(f"  {split}: " + ", ".join(f"{tag} {share:.0%}" for tag, share in fractions.items()))
    return 0


def cmd_check(args) -> int:
    """``data check``: print every defect of a dataset; 1 if there is any."""
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


def cmd_subset(args) -> int:
    """``data subset``: write a smaller dataset, then check it (1 if it has defects)."""
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


def cmd_report(args) -> int:
    """``data report``: statistics and pictures of a split, with ``report.md``."""
    from blendmask_edu.data.stats import write_dataset_report

    stats = write_dataset_report(args.data, args.split, args.out)
    print(f"{stats['images']} images, {stats['instances']} instances; "
          f"report in {Path(args.out) / 'report.md'}")
    return 0
