"""Course assignments: instructor notebooks, their release to students, checkers and grading.

Six assignments follow the notebooks' walk-through; in each, a student writes the paper's
concepts one function at a time, and ``check(task, function)`` compares that function with the
library's own on hand-made edge cases and random inputs and names the first difference — and
the typical mistake, when it recognises one (``checking.py``; the tasks are in
``*_tasks.py``, one module per assignment). The instructor notebooks (``source/``) mark their
solutions and hidden tests the way nbgrader does; ``notebooks.release`` writes the student
versions and ``grading.grade`` executes submissions and tables the points. The instructor guide
is ``docs/teaching.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

from blendmask_edu.assignments import (bases_tasks, blender_tasks, data_tasks,  # noqa: F401
                                       fcos_tasks, panoptic_tasks, training_tasks)
from blendmask_edu.assignments.checking import NOT_IMPLEMENTED, TASKS, Report, check

__all__ = ["ASSIGNMENTS", "Assignment", "NOT_IMPLEMENTED", "Report", "SOURCE_DIR",
           "TASKS", "check"]

SOURCE_DIR = Path(__file__).parent / "source"  # the instructor notebooks


@dataclass(frozen=True)
class Assignment:
    """One assignment: its notebook, the walk-through notebook it follows, its tasks in order."""

    id: str
    title: str
    notebook: str
    follows: str
    minutes: int  # the expected time for a student who has read the walk-through notebook

    @property
    def tasks(self) -> Tuple[str, ...]:
        return tuple(name for name, task in TASKS.items() if task.assignment == self.id)

    @property
    def points(self) -> int:
        return sum(TASKS[name].points for name in self.tasks)


ASSIGNMENTS: Dict[str, Assignment] = {a.id: a for a in (
    Assignment("a1_data", "Data and the COCO format", "a1_data.ipynb", "00_data.ipynb", 40),
    Assignment("a2_fcos", "FCOS: locations, targets and losses", "a2_fcos.ipynb",
               "01_fcos.ipynb", 120),
    Assignment("a3_bases", "Bases and attentions", "a3_bases.ipynb", "02_bases.ipynb", 40),
    Assignment("a4_blender", "The blender", "a4_blender.ipynb", "03_blender.ipynb", 90),
    Assignment("a5_training", "Training and evaluation", "a5_training.ipynb",
               "04_train.ipynb, 05_evaluate.ipynb", 45),
    Assignment("a6_panoptic", "Panoptic fusion and PQ", "a6_panoptic.ipynb", "06_panoptic.ipynb",
               90),
)}
