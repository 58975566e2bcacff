"""``blendmask-edu compare``: BlendMask against its Mask R-CNN counterpart, trained and measured.

Orchestration only, like the other commands: :mod:`blendmask_edu.training` trains,
:func:`~blendmask_edu.evaluation.evaluate.evaluate_coco` measures and
:mod:`blendmask_edu.evaluation.comparison` chooses the Figure 1 images and writes the report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, NamedTuple

from blendmask_edu.cli.common import apply_overrides, backbone_label, preset
from blendmask_edu.cli.model_commands import _run_training

# ``compare``'s two models: (label, preset), the counterpart first as in the paper's Figure 1
COMPARE_MODELS = (("Panoptic-FPN", "tiny_mask_rcnn"), ("BlendMask", "tiny_fast"))
COMPARE_STATE = "compare.json"  # the wall-clock budget, fixed once measured (resume reads it)
COMPARE_SUMMARY = "summary.json"  # what report.md shows, as data (notebook 07 reads it)


class CompareRun(NamedTuple):
    """One training of ``compare``, evaluated."""

    model: Any
    cfg: Any
    val_set: Any
    metrics: dict
    seconds: float       # training time of the whole run (all sessions)
    iterations: int

    @property
    def s_per_iter(self) -> float:
        return self.seconds / max(self.iterations, 1)


def _compare_run(args, cfg, data, folder: str) -> CompareRun:
    """One training of ``compare`` into OUT/folder (resumed when there), evaluated."""
    import argparse

    run_args = argparse.Namespace(**vars(args))
    run_args.out, run_args.resume, run_args.checkpoint_period = Path(args.out) / folder, True, None
    run_args.max_iter = None  # the config carries the iterations
    print(f"\n== {folder}: {cfg.name}, {cfg.solver.max_iter} iterations ==")
    model, cfg, val_set, log, metrics, seconds = _run_training(run_args, cfg, data)
    iterations = max((e["iter"] for e in log if "iter" in e), default=0)
    return CompareRun(model, cfg, val_set, metrics, seconds, iterations)


def cmd_compare(args) -> int:
    """``compare``: BlendMask (``tiny_fast``) against Panoptic-FPN (``tiny_mask_rcnn``) on
    shapes, the paper's Table 1 and Figure 1 measured (:mod:`blendmask_edu.evaluation.comparison`).

    Three trainings, one after the other: BlendMask; Mask R-CNN for the same iterations (equal
    steps: both see the same images); Mask R-CNN for BlendMask's training time (equal
    wall-clock: its iterations = BlendMask's seconds / its own s/iter of the equal-steps run,
    the LR steps scaled with them; fixed in OUT/compare.json once measured). Each run resumes
    from its last.pt. Then both models' inference is timed in turns, Figure 1 is drawn per hard
    case from the equal-steps runs, and OUT/report.md is written.
    """
    import dataclasses

    from blendmask_edu.config import model_name
    from blendmask_edu.data.synthetic import HARD_CASES, ensure_shapes
    from blendmask_edu.evaluation import comparison
    from blendmask_edu.evaluation.coco import RESULTS_FILE
    from blendmask_edu.evaluation.metrics import read_metrics
    from blendmask_edu.evaluation.tables import format_table1
    from blendmask_edu.fileio import write_json
    from blendmask_edu.training.solver import scale_schedule

    start = time.perf_counter()
    out = Path(args.out)
    data = ensure_shapes(args.data, num_train=args.train, num_val=args.val, size=args.size,
                         progress=not args.quiet)
    configs = {}
    for label, name in COMPARE_MODELS:
        # Both train in float32 unless the command line says otherwise (--solver.amp true):
        # whether this CPU computes bfloat16 must not decide the equal-time comparison.
        cfg = preset(name)
        cfg = dataclasses.replace(cfg, solver=dataclasses.replace(cfg.solver, amp=False))
        cfg = apply_overrides(cfg, args.overrides)
        if args.max_iter is not None:
            cfg = dataclasses.replace(cfg, solver=dataclasses.replace(cfg.solver,
                                                                      max_iter=args.max_iter))
        configs[label] = cfg
    (rcnn_label, _), (blend_label, _) = COMPARE_MODELS
    blend = _compare_run(args, configs[blend_label], data, "blendmask")
    steps = _compare_run(args, configs[rcnn_label], data, "mask_rcnn_steps")
    state_path = out / COMPARE_STATE
    if state_path.is_file():
        budget = json.loads(state_path.read_text())
    else:
        budget = {"blendmask_seconds": blend.seconds, "mask_rcnn_s_per_iter": steps.s_per_iter,
                  "iterations": max(1, round(blend.seconds / steps.s_per_iter))}
        write_json(state_path, budget, indent=2)
    timed_cfg = dataclasses.replace(configs[rcnn_label],
                                    solver=scale_schedule(configs[rcnn_label].solver,
                                                          budget["iterations"]))
    timed = _compare_run(args, timed_cfg, data, "mask_rcnn_time")

    val_set = blend.val_set
    images = [val_set[i][0] for i in range(min(args.timing_images, len(val_set)))]
    short, longest = blend.cfg.input.test_short_size, blend.cfg.input.test_max_size
    ms = comparison.inference_ms({rcnn_label: steps.model, blend_label: blend.model}, images, short,
                                 longest)
    budgets = {
        f"equal steps ({blend.iterations} iterations of {blend.cfg.solver.batch_size} images each)":
            {label: read_metrics(out / folder) for label, folder in
             ((f"{model_name(steps.cfg)} (ours)", "mask_rcnn_steps"),
              ("BlendMask (ours)", "blendmask"))},
        f"equal wall-clock ({blend.seconds:.0f} s of training: Mask R-CNN {timed.iterations} iterations)":
            {label: read_metrics(out / folder) for label, folder in
             ((f"{model_name(timed.cfg)} (ours)", "mask_rcnn_time"),
              ("BlendMask (ours)", "blendmask"))},
    }
    timing = {label: {"iterations": run.iterations, "train s": run.seconds,
                      "s/iter": run.s_per_iter, "ms/image": ms[key]}
              for label, run, key in ((f"{model_name(steps.cfg)}, equal steps", steps, rcnn_label),
                                      (f"{model_name(timed.cfg)}, equal time", timed, rcnn_label),
                                      ("BlendMask", blend, blend_label))}

    # Figure 1, from the equal-steps runs (both models trained on the same images)
    results = {label: json.loads((out / folder / RESULTS_FILE).read_text())
               for label, folder in ((rcnn_label, "mask_rcnn_steps"), (blend_label, "blendmask"))}
    figures = {}
    for tag in HARD_CASES:
        scores = {label: comparison.per_image_case_iou(val_set.coco, r, tag)
                  for label, r in results.items()}
        chosen = comparison.choose_images(scores[rcnn_label], scores[blend_label])
        if chosen:
            path = comparison.save_figure1(out / f"figure1_{tag}.png", val_set, chosen, results,
                                           scores, tag)
            figures[tag] = path.name
    rule = (f"Images chosen per hard case, among the val images holding it: the two where "
            f"BlendMask's per-image score exceeds Mask R-CNN's most, the two where Mask R-CNN's "
            f"exceeds BlendMask's most, and one at random (seed 0). A model's per-image score "
            f"is the mean, over the image's objects holding the tag, of the best mask IoU of a "
            f"same-class detection scoring ≥ {comparison.FIGURE_SCORE_THRESH} (0 if none), from "
            f"the equal-steps runs.")
    cases = {f"{model_name(steps.cfg)}": read_metrics(out / "mask_rcnn_steps"),
             "BlendMask": read_metrics(out / "blendmask")}
    backbone = backbone_label(blend.cfg)
    notes = [f"data {data}: {args.train} train / {args.val} val images of {args.size} px",
             f"presets: {configs[blend_label].name} and {configs[rcnn_label].name}, the same "
             f"trunk, data and solver", f"device {next(blend.model.parameters()).device}; "
             f"`blendmask-edu compare` took {time.perf_counter() - start:.0f} s in this session"]
    report = comparison.write_compare_report(out, budgets, timing, cases, figures, rule,
                                             backbone, notes)
    write_json(out / COMPARE_SUMMARY, {"budgets": budgets, "timing": timing, "figures": figures,
                                       "rule": rule, "backbone": backbone, "notes": notes})
    for title, rows in budgets.items():
        print(f"\nTable 1, {title}")
        print(format_table1(comparison.table1_rows(rows, backbone)))
    print(f"\ncompare finished in {time.perf_counter() - start:.0f} s; report: {report}")
    return 0
