"""Assignment 5, training and evaluation: the warm-up/step LR schedule, COCO results."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Dict, List, Sequence

import torch
from torch import Tensor

from blendmask_edu.assignments.checking import Case, Mistake, Task, register
from blendmask_edu.config import SolverConfig
from blendmask_edu.evaluation.coco import to_coco_results
from blendmask_edu.training.solver import lr_factor

ASSIGNMENT = "a5_training"


# ---- lr_factor ------------------------------------------------------------------------------

def _lr(iteration: int, solver: SolverConfig, *, from_zero=False, late_steps=False,
        warmup_one_ahead=False) -> float:
    if late_steps:
        decay = solver.gamma ** sum(iteration > s for s in solver.steps)
    else:
        decay = solver.gamma ** sum(iteration >= s for s in solver.steps)
    if iteration < solver.warmup_iters:
        alpha = (iteration + (1 if warmup_one_ahead else 0)) / solver.warmup_iters
        start = 0.0 if from_zero else solver.warmup_factor
        return decay * (start * (1 - alpha) + alpha)
    return decay


def _lr_cases() -> List[Case]:
    solver = replace(SolverConfig(), max_iter=500, steps=(300, 400), gamma=0.1, warmup_iters=100,
                     warmup_factor=0.001)
    short = replace(solver, steps=(50,), warmup_iters=100)
    cases = [Case(f"iteration {i} (warm-up 100 from 0.001, steps at 300 and 400)", (i, solver))
             for i in (0, 1, 50, 99, 100, 299, 300, 301, 400, 499)]
    cases.append(Case("iteration 75, the first step (50) inside the warm-up", (75, short)))
    generator = torch.Generator().manual_seed(51)
    for i in torch.randint(0, 500, (6,), generator=generator).tolist():
        cases.append(Case(f"iteration {i}", (i, replace(solver, warmup_factor=0.01)), hidden=True))
    return cases


register(Task(
    name="lr_factor", assignment=ASSIGNMENT, points=2, reference=lr_factor, cases=_lr_cases,
    atol=1e-9, rtol=1e-6,
    mistakes=(
        Mistake("warmup_from_zero", "the warm-up starts from warmup_factor (0.001 × the LR), not "
                                    "from 0: a zero LR at step 0 wastes the step.",
                partial(_lr, from_zero=True)),
        Mistake("steps_one_late", "the LR drops AT each step: iteration ≥ s, so iteration 300 "
                                  "already runs at gamma × the LR.", partial(_lr, late_steps=True)),
        Mistake("warmup_one_ahead", "iterations count from 0: alpha = iteration / warmup_iters, "
                                    "so iteration 0 runs at exactly warmup_factor.",
                partial(_lr, warmup_one_ahead=True)),
    )))


# ---- coco_results ---------------------------------------------------------------------------

def coco_results_reference(boxes: Tensor, scores: Tensor, labels: Tensor,
                           category_ids: Sequence[int], image_id: int) -> List[Dict]:
    """Detections → COCO results dicts (the library's, with contiguous labels mapped to ids)."""
    ids = torch.as_tensor(list(category_ids), dtype=torch.int64)
    return to_coco_results({"boxes": boxes, "scores": scores, "labels": ids[labels]}, image_id)


def _results(boxes, scores, labels, category_ids, image_id, *, xyxy=False, raw_labels=False,
             centre=False):
    out = []
    for (x0, y0, x1, y1), score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
        if xyxy:
            bbox = [x0, y0, x1, y1]
        elif centre:
            bbox = [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]
        else:
            bbox = [x0, y0, x1 - x0, y1 - y0]
        out.append({"image_id": int(image_id),
                    "category_id": int(label) if raw_labels else int(category_ids[label]),
                    "bbox": bbox, "score": float(score)})
    return out


def _results_cases() -> List[Case]:
    ids = [1, 3, 7]  # dataset ids with gaps, as COCO's
    cases = [
        Case("two detections, category ids 1, 3, 7", (
            torch.tensor([[10.0, 20.0, 50.0, 40.0], [0.0, 5.5, 12.25, 30.0]]),
            torch.tensor([0.9, 0.35]), torch.tensor([1, 2]), ids, 42)),
        Case("one detection of class index 0", (torch.tensor([[3.0, 4.0, 9.0, 6.0]]),
                                                torch.tensor([0.5]), torch.tensor([0]), ids, 7)),
        Case("no detection", (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64),
                              ids, 3)),
    ]
    generator = torch.Generator().manual_seed(52)
    for k in range(2):
        xy = torch.rand(5, 2, generator=generator) * 100
        boxes = torch.cat([xy, xy + 1 + torch.rand(5, 2, generator=generator) * 50], dim=1)
        cases.append(Case(f"random detections {k}", (
            boxes, torch.rand(5, generator=generator), torch.randint(0, 3, (5,), generator=generator),
            ids, 100 + k), hidden=True))
    return cases


register(Task(
    name="coco_results", assignment=ASSIGNMENT, points=2, reference=coco_results_reference,
    cases=_results_cases, atol=0.006, rtol=0.0,  # the library rounds boxes to 0.01 px
    mistakes=(
        Mistake("bbox_xyxy", "a COCO result's bbox is [x, y, width, height]: width = x1 − x0.",
                partial(_results, xyxy=True)),
        Mistake("class_index_as_category_id",
                "category_id is the DATASET's id (category_ids[label]), not the network's "
                "contiguous class index: pycocotools matches detections to ground truth by it.",
                partial(_results, raw_labels=True)),
        Mistake("bbox_from_centre", "COCO's x, y are the box's top-left corner, not its centre.",
                partial(_results, centre=True)),
    )))
