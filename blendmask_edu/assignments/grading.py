"""Grading: execute submissions, run the checkers and hidden tests, table the points.

For each submitted notebook: find its assignment (its metadata), put the instructor's test cells
back (``notebooks.restore_tests``: hidden tests included), execute it top to bottom in a fresh
kernel with a per-cell timeout, errors allowed (nbclient), and read the checkers' reports, which
each ``check`` call appends to a file as it goes (``checking.REPORTS_FILE_ENV``): a cell that
hangs or a kernel that dies loses only the tasks after it. One submission's failure never
stops the others. A task scores what its last report says (the hidden check, which also runs
the random inputs); a task whose check cell never produced a report scores 0, with the reason.

No server, no database: nbclient and a local kernel, where the package runs.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from blendmask_edu.assignments import ASSIGNMENTS, SOURCE_DIR, TASKS
from blendmask_edu.assignments.checking import REPORTS_FILE_ENV
from blendmask_edu.assignments.notebooks import (NotebookError, assignment_of, read_notebook,
                                                 restore_tests, write_notebook)

__all__ = ["GradeRow", "grade", "grade_submission", "grades_table", "write_grades"]


@dataclass
class GradeRow:
    """One task of one student: points of max, and the feedback line."""

    student: str
    assignment: str
    task: str
    points: float
    max_points: int
    feedback: str

    def to_dict(self) -> dict:
        return {"student": self.student, "assignment": self.assignment, "task": self.task,
                "points": self.points, "max_points": self.max_points, "feedback": self.feedback}


def student_name(path: Path, notebook_name: Optional[str]) -> str:
    """``submitted/alice/a2_fcos.ipynb`` → "alice" (the folder, when the file keeps the
    assignment's name, as nbgrader's layout does); otherwise the file's stem."""
    if notebook_name and path.name == notebook_name and path.parent.name not in ("", "."):
        return path.parent.name
    return path.stem


def _cell_errors(notebook: dict) -> Dict[str, str]:
    """grade_id → "NameError: ..." for each test cell that ended in an error."""
    errors = {}
    for cell in notebook["cells"]:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        for output in cell.get("outputs", []):
            if grade_id and output.get("output_type") == "error":
                errors[grade_id] = f"{output.get('ename')}: {output.get('evalue', '')}".strip()
    return errors


def _execute(notebook: dict, workdir: Path, timeout: int, reports: Path) -> Optional[str]:
    """Run ``notebook`` in place with nbclient; None, or why the run stopped early."""
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError:
        raise RuntimeError("grading executes notebooks with nbclient: "
                           "pip install 'blendmask_edu[course]'") from None
    for index, cell in enumerate(notebook["cells"]):  # nbformat 4.5 wants an id on every cell
        cell.setdefault("id", f"cell-{index}")
    node = nbformat.reads(json.dumps(notebook), as_version=4)  # sources as text, as nbclient reads
    client = NotebookClient(node, timeout=timeout, allow_errors=True, interrupt_on_timeout=True,
                            kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
    previous = os.environ.get(REPORTS_FILE_ENV)
    os.environ[REPORTS_FILE_ENV] = str(reports)  # the kernel inherits the environment
    try:
        client.execute()
        problem = None
    except Exception as error:  # a dead kernel, a timeout nbclient could not interrupt, ...
        first = str(error).splitlines()[0] if str(error) else ""
        problem = f"execution stopped: {type(error).__name__}: {first}"
    finally:
        if previous is None:
            os.environ.pop(REPORTS_FILE_ENV, None)
        else:
            os.environ[REPORTS_FILE_ENV] = previous
    notebook["cells"] = json.loads(nbformat.writes(node))["cells"]
    return problem


def grade_submission(path: Path, timeout: int = 60, source_dir: Path = SOURCE_DIR,
                     feedback_dir: Optional[Path] = None) -> List[GradeRow]:
    """The rows of one submission (one per task of its assignment; one row when it cannot be
    graded at all). Never raises for a bad submission: the row says what was wrong."""
    path = Path(path)
    try:
        submission = read_notebook(path)
    except NotebookError as error:
        return [GradeRow(path.stem, "?", "-", 0.0, 0, str(error))]
    assignment_id = assignment_of(submission)
    if assignment_id not in ASSIGNMENTS:
        return [GradeRow(path.stem, "?", "-", 0.0, 0,
                         f"{path}: not an assignment notebook (no blendmask_edu.assignment in "
                         f"its metadata: {assignment_id!r})")]
    assignment = ASSIGNMENTS[assignment_id]
    student = student_name(path, assignment.notebook)
    notebook = restore_tests(submission, read_notebook(Path(source_dir) / assignment.notebook))
    with tempfile.TemporaryDirectory() as tmp:
        reports_file = Path(tmp) / "reports.jsonl"
        reports_file.touch()
        problem = _execute(notebook, path.parent.resolve(), timeout, reports_file)
        reports = {}
        for line in reports_file.read_text(encoding="utf-8").splitlines():
            report = json.loads(line)
            reports[report["task"]] = report  # the last one of each task counts
    if feedback_dir is not None:
        write_notebook(notebook, Path(feedback_dir) / f"{student}_{assignment.notebook}")
    errors = _cell_errors(notebook)
    rows = []
    for task in assignment.tasks:
        if task in reports:
            report = reports[task]
            rows.append(GradeRow(student, assignment_id, task, report["score"],
                                 TASKS[task].points, report["feedback"]))
            continue
        reason = errors.get(f"check_{task}") or problem or "its check cell did not run"
        rows.append(GradeRow(student, assignment_id, task, 0.0, TASKS[task].points,
                             f"no check ran: {reason}"))
    return rows


def grade(paths: Sequence[Path], timeout: int = 60, source_dir: Path = SOURCE_DIR,
          feedback_dir: Optional[Path] = None, progress=None) -> List[GradeRow]:
    """Rows of every submission, in order; ``progress(path)`` is called before each."""
    rows: List[GradeRow] = []
    for path in paths:
        if progress is not None:
            progress(Path(path))
        rows.extend(grade_submission(Path(path), timeout, source_dir, feedback_dir))
    return rows


def grades_table(rows: Sequence[GradeRow]) -> str:
    """A Markdown table: student, assignment, task, points, feedback; then each student's total."""
    lines = ["| student | assignment | task | points | feedback |", "|---|---|---|---:|---|"]
    for row in rows:
        feedback = row.feedback.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {row.student} | {row.assignment} | {row.task} | "
                     f"{row.points:g} / {row.max_points} | {feedback} |")
    totals: Dict[tuple, List[float]] = {}
    for row in rows:
        total = totals.setdefault((row.student, row.assignment), [0.0, 0])
        total[0] += row.points
        total[1] += row.max_points
    lines += ["", "| student | assignment | total |", "|---|---|---:|"]
    lines += [f"| {student} | {assignment} | {got:g} / {out_of} |"
              for (student, assignment), (got, out_of) in totals.items()]
    return "\n".join(lines)


def write_grades(rows: Sequence[GradeRow], out_dir: Path) -> Dict[str, Path]:
    """``grades.md``, ``grades.csv`` and ``grades.json`` in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "grades.md", "csv": out_dir / "grades.csv",
             "json": out_dir / "grades.json"}
    paths["md"].write_text(grades_table(rows) + "\n", encoding="utf-8")
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(GradeRow.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(row.to_dict() for row in rows)
    paths["json"].write_text(json.dumps([row.to_dict() for row in rows], indent=1) + "\n",
                             encoding="utf-8")
    return paths
