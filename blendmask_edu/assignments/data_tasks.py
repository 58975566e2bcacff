"""Assignment 1, data and the COCO format: a mask's COCO box, and semantic labels from ids.

Each task: the library's answer (``reference``), hand-made cases that each isolate one rule,
seeded random cases for grading, and the typical mistakes the checker recognises.
"""

from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import masks_to_boxes

from blendmask_edu.assignments.checking import Case, Mistake, Task, compare_values, register
from blendmask_edu.conventions import IGNORE
from blendmask_edu.data.coco import CategoryMap

ASSIGNMENT = "a1_data"


# ---- mask_to_bbox ---------------------------------------------------------------------------

def mask_to_bbox_reference(mask: Tensor) -> List[int]:
    """(H, W) bool mask → its COCO box [x, y, w, h] in whole pixels; [0, 0, 0, 0] when empty."""
    if not bool(mask.any()):
        return [0, 0, 0, 0]
    x0, y0, x1, y1 = (int(v) for v in masks_to_boxes(mask[None].to(torch.uint8))[0])
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]  # masks_to_boxes gives the last pixel's index


def _corners(mask: Tensor) -> List[int]:
    if not bool(mask.any()):
        return [0, 0, 0, 0]
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())]


def _bbox_xyxy(mask: Tensor) -> List[int]:
    x0, y0, x1, y1 = _corners(mask)
    return [x0, y0, x1 + 1, y1 + 1] if bool(mask.any()) else [0, 0, 0, 0]


def _bbox_without_last_pixel(mask: Tensor) -> List[int]:
    x0, y0, x1, y1 = _corners(mask)
    return [x0, y0, x1 - x0, y1 - y0]


def _bbox_rows_for_x(mask: Tensor) -> List[int]:
    x, y, w, h = mask_to_bbox_reference(mask)
    return [y, x, h, w]


def _mask(height: int, width: int, *spans) -> Tensor:
    mask = torch.zeros(height, width, dtype=torch.bool)
    for r0, r1, c0, c1 in spans:  # inclusive row and column ranges
        mask[r0:r1 + 1, c0:c1 + 1] = True
    return mask


def _mask_cases() -> List[Case]:
    cases = [
        Case("one pixel at row 2, column 5 of an 8 × 10 image", (_mask(8, 10, (2, 2, 5, 5)),)),
        Case("a rectangle over rows 1–3 and columns 2–6", (_mask(8, 10, (1, 3, 2, 6)),)),
        Case("an L shape", (_mask(12, 9, (2, 9, 1, 2), (8, 9, 1, 7)),)),
        Case("two separate blobs: one box around both", (_mask(10, 16, (1, 2, 1, 2),
                                                              (6, 8, 11, 14)),)),
        Case("an empty mask", (torch.zeros(6, 7, dtype=torch.bool),)),
    ]
    generator = torch.Generator().manual_seed(11)
    for k in range(6):
        height, width = (int(v) for v in torch.randint(4, 40, (2,), generator=generator))
        mask = torch.rand(height, width, generator=generator) < 0.03 * (k + 1)
        cases.append(Case(f"random mask {k}", (mask,), hidden=True))
    return cases


def _as_list(expected, got):
    if isinstance(got, (Tensor, np.ndarray)):
        got = got.tolist()
    if isinstance(got, tuple):
        got = list(got)
    return compare_values(expected, got)


register(Task(
    name="mask_to_bbox", assignment=ASSIGNMENT, points=2, reference=mask_to_bbox_reference,
    cases=_mask_cases, compare=_as_list,
    mistakes=(
        Mistake("xyxy", "a COCO box is [x, y, width, height]; this returns the corners "
                        "[x0, y0, x1, y1].", _bbox_xyxy),
        Mistake("width_without_last_pixel",
                "the width counts pixels: a mask in columns 2..6 is 5 wide (6 − 2 + 1), and a "
                "one-pixel mask is 1 × 1, not 0 × 0.", _bbox_without_last_pixel),
        Mistake("rows_for_x", "x is the column and y the row: torch.nonzero gives (row, column), "
                              "in that order.", _bbox_rows_for_x),
    )))


# ---- semantic_labels ------------------------------------------------------------------------

def semantic_labels_reference(category_ids: Tensor, categories: Sequence[dict]) -> Tensor:
    """(H, W) int64 dataset category ids (0 = unlabelled) → semantic labels (H, W) int64:
    every thing 0, the stuff 1..S in increasing id order, anything else 255."""
    mapping = CategoryMap(categories)
    out = torch.full_like(category_ids, IGNORE)
    for cat_id in category_ids.unique().tolist():
        out[category_ids == cat_id] = mapping.semantic_label(cat_id)
    return out


def _stuff_in_file_order(category_ids: Tensor, categories: Sequence[dict]) -> Tensor:
    out = torch.full_like(category_ids, IGNORE)
    stuff = [c["id"] for c in categories if not c.get("isthing", 1)]
    for c in categories:
        label = 0 if c.get("isthing", 1) else 1 + stuff.index(c["id"])
        out[category_ids == c["id"]] = label
    return out


def _void_as_zero(category_ids: Tensor, categories: Sequence[dict]) -> Tensor:
    out = semantic_labels_reference(category_ids, categories)
    return torch.where(out == IGNORE, torch.zeros_like(out), out)


def _stuff_from_zero(category_ids: Tensor, categories: Sequence[dict]) -> Tensor:
    out = semantic_labels_reference(category_ids, categories)
    return torch.where((out > 0) & (out != IGNORE), out - 1, out)


_CATEGORIES = [  # out of id order on purpose, as files may list them
    {"id": 1, "name": "circle", "isthing": 1}, {"id": 40, "name": "sky", "isthing": 0},
    {"id": 3, "name": "square", "isthing": 1}, {"id": 31, "name": "grass", "isthing": 0},
    {"id": 35, "name": "road", "isthing": 0},
]


def _semantic_cases() -> List[Case]:
    ids = torch.tensor([[1, 1, 40, 40], [3, 0, 31, 35], [31, 31, 35, 40]])
    cases = [
        Case("things and stuff (categories listed out of id order)", (ids, _CATEGORIES)),
        Case("only things", (torch.tensor([[1, 3], [3, 1]]), _CATEGORIES[:1] + _CATEGORIES[2:3])),
        Case("an unlabelled pixel (0) and an unknown id (7)",
             (torch.tensor([[0, 7, 40], [1, 35, 31]]), _CATEGORIES)),
    ]
    generator = torch.Generator().manual_seed(12)
    known = torch.tensor([0, 1, 3, 31, 35, 40, 99])
    for k in range(4):
        pick = torch.randint(0, len(known), (6, 9), generator=generator)
        cases.append(Case(f"random map {k}", (known[pick], _CATEGORIES), hidden=True))
    return cases


register(Task(
    name="semantic_labels", assignment=ASSIGNMENT, points=2,
    reference=semantic_labels_reference, cases=_semantic_cases,
    mistakes=(
        Mistake("stuff_in_file_order",
                "stuff labels follow the stuff ids in increasing order, not the order the file "
                "lists the categories in (sort the ids first).", _stuff_in_file_order),
        Mistake("void_as_zero", "a pixel without a known category is void, 255, which the loss "
                                "ignores; 0 is the 'things' class.", _void_as_zero),
        Mistake("stuff_from_zero", "label 0 is every thing, so the stuff start at 1 "
                                   "(1 + S semantic classes).", _stuff_from_zero),
    )))
