"""The ``data`` commands: make the shapes or a COCO-like dataset, check, subset and describe COCO
datasets.

Each ``cmd_*`` takes the parsed arguments (``argparse.Namespace``, options as in
:func:`blendmask_edu.cli.main.build_parser`) and returns the exit code: 0, or 1 when a check
found defects (notes, differences that real COCO has, never fail a check). The work itself is
in :mod:`blendmask_edu.data`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from blendmask_edu.cli.common import UsageError


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


NOTES_SHOWN = 10  # notes printed by ``data check`` without --all-notes


def cmd_coco_like(args) -> int:
    """``data coco-like``: write a small dataset in COCO 2017's layout with COCO's properties."""
    from blendmask_edu.data.coco_like import MIN_IMAGES, MIN_SIDE, write_coco_like

    if args.images < MIN_IMAGES:
        raise UsageError(f"--images {args.images}: need at least {MIN_IMAGES} per split, "
                         f"one for each COCO property the dataset holds")
    if args.max_side < MIN_SIDE:
        raise UsageError(f"--max-side {args.max_side}: need at least {MIN_SIDE} px")
    summary = write_coco_like(args.out, images_per_split=args.images, seed=args.seed,
                              max_side=args.max_side)
    for split, done in summary["splits"].items():
        print(f"{split}: {done['images']} images, {done['instances']} instances + "
              f"{done['crowd']} crowd region(s) -> {done['paths']['instances']}")
    print(f"wrote a COCO-like dataset to {args.out}; try: blendmask-edu data check "
          f"--images {Path(args.out) / 'val2017'} --instances "
          f"{Path(args.out) / 'annotations' / 'instances_val2017.json'}")
    return 0


def report_findings(findings, all_notes: bool = False) -> int:
    """Print :func:`~blendmask_edu.data.check.check_dataset`'s findings: each defect, then the
    notes apart (the first ``NOTES_SHOWN`` unless ``all_notes``), and a count line. Returns the
    exit code: 1 if there is a defect, else 0."""
    from blendmask_edu.data.check import split_findings

    defects, notes = split_findings(findings)
    for defect in defects:
        print(defect)
    for note in notes if all_notes else notes[:NOTES_SHOWN]:
        print(f"note: {note}")
    if notes:
        more = "" if all_notes or len(notes) <= NOTES_SHOWN else \
            f" ({len(notes) - NOTES_SHOWN} more not shown; --all-notes lists them)"
        print(f"{len(notes)} note(s): differences real COCO has, or values nothing reads; "
              f"not defects{more}")
    if defects:
        print(f"{len(defects)} defect(s) found", file=sys.stderr)
        return 1
    print("no defects found")
    return 0


def cmd_check(args) -> int:
    """``data check``: print every defect (and the notes) of a dataset; 1 if there is a defect."""
    from blendmask_edu.data.check import check_dataset

    if (args.panoptic is None) != (args.panoptic_dir is None):
        raise SystemExit("error: --panoptic and --panoptic-dir go together")
    findings = check_dataset(args.images, args.instances, args.panoptic, args.panoptic_dir,
                             progress=not args.quiet)
    return report_findings(findings, args.all_notes)


def cmd_subset(args) -> int:
    """``data subset``: write a smaller dataset, then check it (1 if it has defects). The
    split name is the source's (``instances_train2017.json`` → ``OUT/train2017/``), so that
    subsets of train2017 and val2017 written to one OUT make a dataset ``train`` reads."""
    from blendmask_edu.data.check import check_dataset
    from blendmask_edu.data.subset import make_subset

    categories = [c.strip() for c in args.categories.split(",") if c.strip()] \
        if args.categories else None
    paths = make_subset(args.instances, args.out, panoptic_json=args.panoptic,
                        num_images=args.images, categories=categories, seed=args.seed,
                        images_dir=args.image_dir)
    print(f"wrote {paths.instances}" + (f" and {paths.panoptic}" if paths.panoptic else ""))
    findings = check_dataset(paths.images_dir, paths.instances, paths.panoptic,
                             paths.panoptic_dir, progress=False)
    return report_findings(findings)


def cmd_report(args) -> int:
    """``data report``: statistics and pictures of a split (default: the val split, ``val`` or
    ``val2017``), with ``report.md``."""
    from blendmask_edu.data.files import resolve_split
    from blendmask_edu.data.stats import write_dataset_report

    split = resolve_split(args.data, args.split, "val", flag="--split")
    stats = write_dataset_report(args.data, split, args.out)
    print(f"{stats['images']} images, {stats['instances']} instances; "
          f"report in {Path(args.out) / 'report.md'}")
    return 0
