"""Instructor notebooks → student notebooks, the way nbgrader marks them.

In an instructor notebook's code cells:

    ### BEGIN SOLUTION            the solution; released as a stub that raises
    ...                           NotImplementedError (``# YOUR CODE HERE`` above it)
    ### END SOLUTION
    ### BEGIN HIDDEN TESTS        tests the student does not see; removed on release and put
    ...                           back by the grader (``restore_tests``)
    ### END HIDDEN TESTS

Cells carry nbgrader's metadata (``nbgrader.solution`` for a solution cell, ``nbgrader.grade``
with ``points`` and ``grade_id`` for a test cell), so nbgrader can use the same notebooks
directly. Notebooks are read and written as plain JSON (nbformat 4): no Jupyter needed here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Union

PathLike = Union[str, Path]

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")

__all__ = ["BEGIN_HIDDEN", "BEGIN_SOLUTION", "END_HIDDEN", "END_SOLUTION", "NotebookError",
           "assignment_of", "read_notebook", "release", "release_notebook", "restore_tests",
           "write_notebook"]


class NotebookError(ValueError):
    """A notebook that cannot be read or whose markers do not pair up (the message names it)."""


def read_notebook(path: PathLike) -> dict:
    """The notebook at ``path`` as a dict; NotebookError naming the file when it is not one."""
    path = Path(path)
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotebookError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise NotebookError(f"{path}: not a notebook (invalid JSON: {error})") from None
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        raise NotebookError(f"{path}: not a notebook (no 'cells' list)")
    return notebook


def write_notebook(notebook: dict, path: PathLike) -> Path:
    """Write ``notebook`` as JSON (one space indent, as Jupyter does); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _set_source(cell: dict, text: str) -> None:
    cell["source"] = text.splitlines(keepends=True)


def _replace_regions(text: str, begin: str, end: str, stub: Optional[tuple], where: str) -> str:
    """Each ``begin`` … ``end`` region of ``text`` → ``stub`` lines (indented like ``begin``),
    or nothing when ``stub`` is None."""
    out: List[str] = []
    inside = None  # the indentation of the open region
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        stripped = line.strip()
        if stripped == begin:
            if inside is not None:
                raise NotebookError(f"{where}, line {number}: {begin!r} inside another region")
            inside = re.match(r"\s*", line).group(0)
            if stub is not None:
                out.extend(f"{inside}{s}\n" for s in stub)
        elif stripped == end:
            if inside is None:
                raise NotebookError(f"{where}, line {number}: {end!r} without {begin!r}")
            inside = None
        elif inside is None:
            out.append(line)
    if inside is not None:
        raise NotebookError(f"{where}: {begin!r} is never closed by {end!r}")
    return "".join(out)


def release_notebook(notebook: dict, name: str = "notebook") -> dict:
    """The student version of one instructor notebook (a new dict; the input is not changed):
    solution regions → stubs, hidden tests removed, outputs and execution counts cleared."""
    student = json.loads(json.dumps(notebook))
    for index, cell in enumerate(student["cells"]):
        if cell.get("cell_type") != "code":
            continue
        where = f"{name}, cell {index}"
        text = _replace_regions(_source(cell), BEGIN_SOLUTION, END_SOLUTION, STUB, where)
        text = _replace_regions(text, BEGIN_HIDDEN, END_HIDDEN, None, where)
        _set_source(cell, text.rstrip("\n"))
        cell["outputs"], cell["execution_count"] = [], None
    return student


def release(source_dir: PathLike, out_dir: PathLike) -> List[Path]:
    """Write the student version of every ``*.ipynb`` of ``source_dir`` into ``out_dir`` — and
    nothing else. Returns the written paths. NotebookError (naming the notebook and cell) when a
    marker does not pair up; nothing is written then."""
    sources = sorted(Path(source_dir).glob("*.ipynb"))
    if not sources:
        raise NotebookError(f"{source_dir}: no instructor notebooks (*.ipynb) found")
    released = {path.name: release_notebook(read_notebook(path), path.name) for path in sources}
    return [write_notebook(notebook, Path(out_dir) / name) for name, notebook in released.items()]


def assignment_of(notebook: dict) -> Optional[str]:
    """The assignment id a notebook declares in its metadata (``blendmask_edu.assignment``)."""
    return notebook.get("metadata", {}).get("blendmask_edu", {}).get("assignment")


def _grade_cells(notebook: dict) -> Dict[str, int]:
    """grade_id → index of each test cell (nbgrader ``grade: true``)."""
    found = {}
    for index, cell in enumerate(notebook["cells"]):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade") and meta.get("grade_id"):
            found[meta["grade_id"]] = index
    return found


def restore_tests(submission: dict, instructor: dict) -> dict:
    """The submission with every test cell's source taken from the instructor notebook (so the
    hidden tests are back and an edited test is undone); a test cell the student deleted is
    appended at the end. Returns a new dict."""
    restored = json.loads(json.dumps(submission))
    mine = _grade_cells(restored)
    for grade_id, index in _grade_cells(instructor).items():
        cell = json.loads(json.dumps(instructor["cells"][index]))
        cell["outputs"], cell["execution_count"] = [], None
        if grade_id in mine:
            restored["cells"][mine[grade_id]] = cell
        else:
            restored["cells"].append(cell)
    return restored
