"""Course assignments: every task's checker against the instructor's solution, the typical
mistakes, a blank stub and values of the wrong kind; the release; grading of submissions."""

from __future__ import annotations

import json
import re

import pytest
import torch

from blendmask_edu.assignments import ASSIGNMENTS, SOURCE_DIR, TASKS, check
from blendmask_edu.assignments.checking import NOT_IMPLEMENTED, compare_values
from blendmask_edu.assignments.notebooks import (BEGIN_HIDDEN, BEGIN_SOLUTION, END_HIDDEN,
                                                 END_SOLUTION, NotebookError, read_notebook,
                                                 release, release_notebook)
from blendmask_edu.cli.main import main


def _source(cell) -> str:
    return "".join(cell["source"])


def _solution(name: str):
    """The instructor notebook's own solution of task ``name``: its setup and solution cells
    executed in a fresh namespace (markers are comments)."""
    notebook = read_notebook(SOURCE_DIR / ASSIGNMENTS[TASKS[name].assignment].notebook)
    namespace: dict = {}
    for cell in notebook["cells"]:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id in ("setup", name):
            exec(compile(_source(cell), f"<{name}>", "exec"), namespace)
    return namespace[name]


def test_fourteen_tasks_in_six_assignments_each_with_two_typical_mistakes_or_more():
    assert len(ASSIGNMENTS) >= 6 and len(TASKS) >= 12
    assert all(len(task.mistakes) >= 2 for task in TASKS.values())
    assert all(a.tasks for a in ASSIGNMENTS.values())
    for a in ASSIGNMENTS.values():  # every task has its solution and check cell in the notebook
        notebook = read_notebook(SOURCE_DIR / a.notebook)
        ids = {c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in notebook["cells"]}
        assert {*a.tasks, *(f"check_{t}" for t in a.tasks)} <= ids, a.id


@pytest.mark.parametrize("name", sorted(TASKS))
def test_the_instructor_solution_gets_full_marks(name):
    report = check(name, _solution(name), hidden=True)
    assert report.full_marks, str(report)
    assert report.score == TASKS[name].points and report.total >= 4


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_typical_mistake_loses_points_and_is_named(name):
    for mistake in TASKS[name].mistakes:
        report = check(name, mistake.fn, hidden=True)
        assert report.score < TASKS[name].points, (mistake.name, str(report))
        assert report.mistake == mistake.name, (mistake.name, str(report))
        assert f"typical mistake: {mistake.message}" in report.messages, str(report)
        assert any(line.startswith("  expected:") for line in report.messages)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_a_blank_task_scores_zero_and_says_not_implemented(name):
    def stub(*args, **kwargs):
        raise NotImplementedError()

    report = check(name, stub, hidden=True)
    assert (report.score, report.status, report.messages) == (0.0, "not implemented",
                                                              [NOT_IMPLEMENTED])
    assert str(report) == f"{name}: 0 / {TASKS[name].points} points, {NOT_IMPLEMENTED}"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_wrong_kinds_of_result_are_reported_not_raised(name):
    for bad in (lambda *a, **k: None, lambda *a, **k: torch.zeros(3, 2, dtype=torch.int64),
                lambda *a, **k: 1 / 0):
        report = check(name, bad)
        assert report.status == "failed" and report.score < TASKS[name].points
        assert report.messages and report.messages[0].startswith("first difference")
    report = check(name, "not a function")
    assert report.score == 0 and "expected a function" in report.messages[0]


def test_feedback_names_the_input_the_expected_and_the_received_value():
    report = check("centerness_targets", lambda reg: reg[:, 0] * 0 + 0.5)
    text = str(report)
    assert "first difference, case 'the box centre (l = r, t = b)'" in text
    assert "expected 1, got 0.5" in text
    assert "input:    tensor(1, 4) float32" in text
    error = check("giou_loss", lambda pred, target: pred.nonexistent)
    assert "raised AttributeError" in error.messages[2] and "of <lambda>)" in error.messages[2]


def test_compare_values_says_what_differs():
    assert compare_values(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.float64)) is None
    assert "expected shape (2, 3), got shape (3, 2)" in compare_values(torch.ones(2, 3),
                                                                       torch.ones(3, 2))
    assert "expected float values" in compare_values(torch.ones(2), torch.ones(2).long())
    assert "first at index (1,)" in compare_values(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 3.0]))
    assert "keys differ" in compare_values({"a": 1}, {"b": 1})
    assert "expected 2 items, got 1" in compare_values([1, 2], [1])
    assert compare_values([1.0, {"x": torch.zeros(1)}], (1.00001, {"x": torch.zeros(1)})) is None


def _solution_lines(notebook) -> set:
    lines = set()
    for cell in notebook["cells"]:
        inside = False
        for line in _source(cell).splitlines():
            if line.strip() in (BEGIN_SOLUTION, BEGIN_HIDDEN):
                inside = True
            elif line.strip() in (END_SOLUTION, END_HIDDEN):
                inside = False
            elif inside and line.strip():
                lines.add(line.strip())
    return lines


def test_release_leaves_no_line_of_any_solution_or_hidden_test(tmp_path):
    written = release(SOURCE_DIR, tmp_path)
    assert sorted(p.name for p in written) == sorted(a.notebook for a in ASSIGNMENTS.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)
    for path in written:
        instructor = read_notebook(SOURCE_DIR / path.name)
        secret = _solution_lines(instructor)
        assert len(secret) > 10
        student = json.loads(path.read_text())
        released_lines = {line.strip() for c in student["cells"] for line in _source(c).splitlines()}
        assert not secret & released_lines, (path.name, sorted(secret & released_lines)[:5])
        text = path.read_text()
        for marker in ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS"):
            assert marker not in text
        tasks = ASSIGNMENTS[student["metadata"]["blendmask_edu"]["assignment"]].tasks
        code = "".join(_source(c) for c in student["cells"] if c["cell_type"] == "code")
        assert code.count("raise NotImplementedError()") == len(tasks)
        assert all(c.get("outputs", []) == [] for c in student["cells"])


def test_release_names_the_notebook_and_cell_of_an_unclosed_region(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    cell = {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
            "source": ["x = 1\n", "### BEGIN SOLUTION\n", "y = 2\n"]}
    (source / "broken.ipynb").write_text(json.dumps({"cells": [cell], "metadata": {}}))
    with pytest.raises(NotebookError, match=r"broken.ipynb, cell 0: '### BEGIN SOLUTION' is "
                                            r"never closed"):
        release(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    stub = release_notebook({"cells": [dict(cell, source=cell["source"] + ["    ### END SOLUTION"])]})
    assert _source(stub["cells"][0]) == "x = 1\n# YOUR CODE HERE\nraise NotImplementedError()"


def test_cli_lists_and_releases(tmp_path, capsys):
    assert main(["assignments", "list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in TASKS)
    assert main(["assignments", "release", "--out", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("*.ipynb"))) == len(ASSIGNMENTS)
    assert main(["assignments", "release", "--out", str(tmp_path / "x"),
                 "--source", str(tmp_path / "nothing")]) == 2
    assert "no instructor notebooks" in capsys.readouterr().err


# Planted mistakes, written into the solution code the way a student would make them.
PLANTED = {
    "compute_locations": ("torch.arange(h) * s + s // 2, torch.arange(w) * s + s // 2",
                          "torch.arange(h) * s, torch.arange(w) * s"),
    "assign_targets": ("(largest >= lo[:, None]) & (largest <= hi[:, None])",
                       "(largest > lo[:, None]) & (largest < hi[:, None])"),
    "centerness_targets": ("return torch.sqrt(left_right * top_bottom)",
                           "return left_right * top_bottom"),
}


def _submission(kind: str) -> dict:
    instructor = read_notebook(SOURCE_DIR / "a2_fcos.ipynb")
    if kind == "blank":
        return release_notebook(instructor)
    notebook = json.loads(json.dumps(instructor))
    if kind == "planted":
        for cell in notebook["cells"]:
            text = _source(cell)
            for old, new in PLANTED.values():
                text = text.replace(old, new)
            cell["source"] = text.splitlines(keepends=True)
    if kind == "hangs":  # giou_loss never returns; the other tasks are still graded
        for cell in notebook["cells"]:
            if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "giou_loss":
                cell["source"] = ["def giou_loss(pred, target):\n", "    while True:\n",
                                  "        pass\n"]
    return notebook


def test_grade_three_submissions_reference_planted_mistakes_blank(tmp_path, capsys):
    paths = []
    for student in ("reference", "planted", "blank"):
        path = tmp_path / "submitted" / student / "a2_fcos.ipynb"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(_submission(student)))
        paths.append(str(path))
    (tmp_path / "junk.ipynb").write_text("not json")
    out = tmp_path / "grades"
    assert main(["assignments", "grade", *paths, str(tmp_path / "junk.ipynb"),
                 "--out", str(out), "--timeout", "60"]) == 0
    table = capsys.readouterr().out
    print(table)
    rows = json.loads((out / "grades.json").read_text())
    by = {(r["student"], r["task"]): r for r in rows}
    tasks = ASSIGNMENTS["a2_fcos"].tasks
    for task in tasks:
        assert by["reference", task]["points"] == TASKS[task].points, by["reference", task]
        assert by["blank", task]["points"] == 0
        assert by["blank", task]["feedback"] == NOT_IMPLEMENTED
    for task in PLANTED:
        planted = by["planted", task]
        assert planted["points"] < TASKS[task].points, planted
        assert "typical mistake:" in planted["feedback"], planted
    assert "centre, j·s + ⌊s/2⌋" in by["planted", "compute_locations"]["feedback"]
    assert "both ends of a level's size range are inclusive" in by["planted", "assign_targets"]["feedback"]
    assert by["planted", "giou_loss"]["points"] == TASKS["giou_loss"].points
    assert by["junk", "-"]["points"] == 0 and "not a notebook" in by["junk", "-"]["feedback"]
    assert "| reference | a2_fcos | 9 / 9 |" in table and "| blank | a2_fcos | 0 / 9 |" in table
    assert (out / "grades.csv").read_text().startswith("student,assignment,task,points")
    assert len(list((out / "feedback").glob("*.ipynb"))) == 3


def test_grade_survives_a_cell_that_never_ends(tmp_path):
    from blendmask_edu.assignments.grading import grade

    path = tmp_path / "hangs.ipynb"
    path.write_text(json.dumps(_submission("hangs")))
    rows = {r.task: r for r in grade([path], timeout=15)}
    assert rows["giou_loss"].points == 0 and "no check ran" in rows["giou_loss"].feedback
    assert re.search(r"Timeout|KeyboardInterrupt|interrupt", rows["giou_loss"].feedback)
    assert rows["compute_locations"].points == TASKS["compute_locations"].points
