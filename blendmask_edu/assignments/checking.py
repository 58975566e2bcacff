"""Checkers: a student's function against the library's, case by case, with feedback.

A *task* (``Task``) is one function a student writes: its name, its points, the library's own
implementation (``reference``), the inputs it is tried on (``cases``: hand-made edge cases,
visible in the notebook, and seeded random ones, ``hidden``, added when grading) and the
*typical mistakes* it recognises (``Mistake``: a short message and a function that makes that
mistake on purpose).

``check(name, fn)`` calls ``fn`` on every case, compares each result with the reference's
(``compare_values``: type, shape, dtype kind, then values) and returns a ``Report``: the score
(points × the fraction of cases passed), and for the first case that differs its input, the
expected and the received value, and — when ``fn``'s output equals a typical mistake's on
that case — the mistake, named. A stub that raises ``NotImplementedError`` scores 0 and reads
"not implemented yet"; any other exception, or a result of the wrong type or shape, is reported
as what it is, never raised. When the grader (``grading.py``) sets ``REPORTS_FILE_ENV``, every
report is also appended to that file.
"""

from __future__ import annotations

import copy
import json
import math
import os
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = ["Case", "Mistake", "NOT_IMPLEMENTED", "REPORTS_FILE_ENV", "Report", "TASKS", "Task",
           "check", "compare_values", "describe", "register"]

NOT_IMPLEMENTED = "not implemented yet"
# When set (by the grader), every report is also appended to this file as a JSON line, so that
# the reports made before a cell that hangs or a kernel that dies are not lost.
REPORTS_FILE_ENV = "BLENDMASK_EDU_REPORTS"
TASKS: Dict[str, "Task"] = {}


@dataclass(frozen=True)
class Case:
    """One input of a task: positional ``args`` (and ``kwargs``), named for the feedback."""

    name: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    hidden: bool = False  # a seeded random input, run by the grader, not in the notebook


@dataclass(frozen=True)
class Mistake:
    """A typical mistake: ``fn`` makes it (same signature as the task), ``message`` explains it."""

    name: str
    message: str
    fn: Callable


@dataclass
class Task:
    """One graded function. ``cases()`` builds the inputs (deterministic: seeded)."""

    name: str
    assignment: str
    points: int
    reference: Callable
    cases: Callable[[], List[Case]]
    mistakes: Sequence[Mistake] = ()
    compare: Optional[Callable[[Any, Any], Optional[str]]] = None  # default compare_values
    atol: float = 1e-4
    rtol: float = 1e-4

    def differ(self, expected: Any, got: Any) -> Optional[str]:
        """None when ``got`` equals ``expected`` for this task, else what differs (one line).
        Never raises: a value too strange to compare is reported as such."""
        try:
            if self.compare is not None:
                return self.compare(expected, got)
            return compare_values(expected, got, atol=self.atol, rtol=self.rtol)
        except Exception as error:  # e.g. a student's object whose == raises
            return f"could not compare {describe(got, 60)} with the expected value ({error})"


def register(task: Task) -> Task:
    """Add ``task`` to ``TASKS`` (each name once)."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is registered twice")
    TASKS[task.name] = task
    return task


@dataclass
class Report:
    """What ``check`` found: ``score`` of ``points``, ``passed`` of ``total`` cases, feedback.

    ``status``: "passed" (every case), "failed" (some case differs or raised) or
    "not implemented" (the stub's ``NotImplementedError``). ``messages``: lines for the student,
    the first difference first.
    """

    task: str
    points: int
    score: float
    passed: int
    total: int
    status: str
    messages: List[str] = field(default_factory=list)
    mistake: Optional[str] = None  # the name of the typical mistake recognised, if any

    @property
    def full_marks(self) -> bool:
        return self.status == "passed"

    def summary(self) -> str:
        """One line: task, score, cases."""
        if self.status == "not implemented":
            return f"{self.task}: 0 / {self.points} points, {NOT_IMPLEMENTED}"
        return (f"{self.task}: {self.score:g} / {self.points} points "
                f"({self.passed} of {self.total} cases passed)")

    def __str__(self) -> str:
        if self.status == "not implemented":
            return self.summary()
        return "\n".join([self.summary(), *("  " + line for line in self.messages)])

    def _repr_pretty_(self, printer, cycle) -> None:  # IPython shows str(), not a repr
        printer.text(str(self))

    def short_feedback(self) -> str:
        """One line for a grades table: the case, what differs, the typical mistake if named
        (the input, expected and received values are in the notebook's own output)."""
        if self.status == "passed":
            return f"all {self.total} cases pass"
        keep = [m.strip() for m in self.messages
                if not m.startswith(("  input:", "  expected:", "  got:"))]
        return " ".join(keep)

    def to_dict(self) -> dict:
        return {"task": self.task, "points": self.points, "score": self.score,
                "passed": self.passed, "total": self.total, "status": self.status,
                "mistake": self.mistake, "feedback": self.short_feedback()}


def describe(value: Any, limit: int = 160) -> str:
    """A short, readable description of any value: type, shape and dtype, then the values."""
    if isinstance(value, torch.Tensor):
        head = f"tensor{tuple(value.shape)} {str(value.dtype).replace('torch.', '')}"
        body = np.array2string(value.detach().cpu().numpy(), precision=4, separator=", ",
                               threshold=12, edgeitems=3)
    elif isinstance(value, np.ndarray):
        head = f"ndarray{value.shape} {value.dtype}"
        body = np.array2string(value, precision=4, separator=", ", threshold=12, edgeitems=3)
    elif isinstance(value, float):
        head, body = "float", f"{value:.6g}"
    else:
        head, body = type(value).__name__, repr(value)
    body = " ".join(body.split())
    if len(body) > limit:
        body = body[:limit - 1] + "…"
    return f"{head} {body}"


def _kind(dtype) -> str:
    if dtype == torch.bool or dtype == np.bool_:
        return "bool"
    if (isinstance(dtype, torch.dtype) and dtype.is_floating_point) or (
            isinstance(dtype, np.dtype) and np.issubdtype(dtype, np.floating)):
        return "float"
    return "int"


def _compare_arrays(expected, got, atol: float, rtol: float, where: str) -> Optional[str]:
    exp_np = expected.detach().cpu().numpy() if isinstance(expected, torch.Tensor) else expected
    if isinstance(got, torch.Tensor):
        got_np = got.detach().cpu().numpy()
    elif isinstance(got, np.ndarray):
        got_np = got
    else:
        return f"{where}expected {describe(expected, 60)}, got {describe(got, 60)}"
    if tuple(exp_np.shape) != tuple(got_np.shape):
        return (f"{where}expected shape {tuple(exp_np.shape)}, got shape {tuple(got_np.shape)} "
                f"({describe(got, 80)})")
    if _kind(exp_np.dtype) != _kind(got_np.dtype):
        return (f"{where}expected {_kind(exp_np.dtype)} values ({exp_np.dtype}), got "
                f"{got_np.dtype}")
    if _kind(exp_np.dtype) == "float":
        e, g = exp_np.astype(np.float64), got_np.astype(np.float64)
        bad = ~np.isclose(g, e, atol=atol, rtol=rtol, equal_nan=True)
    else:
        bad = exp_np != got_np
    if not bad.any():
        return None
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    show = lambda v: f"{v:.6g}" if isinstance(v, float) else repr(v)  # noqa: E731
    return (f"{where}{int(bad.sum())} of {bad.size} values differ; first at index {index}: "
            f"expected {show(exp_np[index].item())}, got {show(got_np[index].item())}")


def compare_values(expected: Any, got: Any, atol: float = 1e-4, rtol: float = 1e-4,
                   where: str = "") -> Optional[str]:
    """None when ``got`` matches ``expected``, else one line saying where and how they differ.

    Tensors and arrays: the same shape and the same kind of dtype (bool, integer or floating;
    float32 against float64 is fine), values within ``atol + rtol·|expected|``. Numbers: the
    same within the tolerance. Lists and tuples element by element, dicts key by key. Never
    raises on a value of the wrong type: it says what it got.
    """
    if isinstance(expected, (torch.Tensor, np.ndarray)):
        return _compare_arrays(expected, got, atol, rtol, where)
    if isinstance(expected, bool) or expected is None:
        return None if got is expected or got == expected else \
            f"{where}expected {expected!r}, got {describe(got, 60)}"
    if isinstance(expected, (int, float)):
        if isinstance(got, (torch.Tensor, np.ndarray)) and np.size(got) == 1:
            got = float(got.item() if isinstance(got, torch.Tensor) else got.reshape(-1)[0])
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            return f"{where}expected a number ({expected!r}), got {describe(got, 60)}"
        if math.isclose(float(got), float(expected), abs_tol=atol, rel_tol=rtol):
            return None
        return f"{where}expected {expected!r}, got {got!r}"
    if isinstance(expected, (list, tuple)):
        if not isinstance(got, (list, tuple)):
            return f"{where}expected a {type(expected).__name__} of {len(expected)}, got " \
                   f"{describe(got, 60)}"
        if len(got) != len(expected):
            return f"{where}expected {len(expected)} items, got {len(got)}"
        for i, (e, g) in enumerate(zip(expected, got)):
            diff = compare_values(e, g, atol, rtol, f"{where}[{i}]: ")
            if diff:
                return diff
        return None
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return f"{where}expected a dict, got {describe(got, 60)}"
        if set(got) != set(expected):
            missing, extra = sorted(set(expected) - set(got), key=str), \
                sorted(set(got) - set(expected), key=str)
            return f"{where}keys differ: missing {missing}, unexpected {extra}"
        for key in expected:
            diff = compare_values(expected[key], got[key], atol, rtol, f"{where}[{key!r}]: ")
            if diff:
                return diff
        return None
    return None if got == expected else f"{where}expected {expected!r}, got {describe(got, 60)}"


def _record(report: Report) -> Report:
    path = os.environ.get(REPORTS_FILE_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(report.to_dict()) + "\n")
    return report


def _call(fn: Callable, case: Case):
    """(result, None) or (None, exception) of ``fn`` on a private copy of the case's input."""
    try:
        return fn(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs)), None
    except Exception as error:  # the student's code: any exception is feedback, not a crash
        return None, error


def _error_line(error: BaseException) -> str:
    """``TypeError: ... (line 12 of compute_locations)``: the exception and where it was."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (line {frames[-1].lineno} of {frames[-1].name})" if len(frames) > 1 else ""
    text = str(error).splitlines()[0] if str(error) else ""
    return f"raised {type(error).__name__}{': ' + text if text else ''}{where}"


def _recognise(task: Task, case: Case, expected: Any, got: Any) -> Optional[Mistake]:
    """The first typical mistake whose output on ``case`` is ``got`` (and is not correct)."""
    for mistake in task.mistakes:
        out, error = _call(mistake.fn, case)
        if error is None and task.differ(out, expected) and task.differ(out, got) is None:
            return mistake
    return None


def check(name: str, fn: Callable, hidden: bool = False) -> Report:
    """Try ``fn`` as task ``name`` on its cases (``hidden=True``: the grader's random ones too).

    Returns a ``Report``; never raises because of ``fn``.
    """
    if name not in TASKS:
        raise KeyError(f"no task named {name!r}; the tasks are {sorted(TASKS)}")
    task = TASKS[name]
    cases = [c for c in task.cases() if hidden or not c.hidden]
    if not callable(fn):
        return _record(Report(name, task.points, 0.0, 0, len(cases), "failed",
                              [f"expected a function, got {describe(fn, 60)}"]))
    passed, messages, mistake = 0, [], None
    for case in cases:
        expected = task.reference(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))
        got, error = _call(fn, case)
        if isinstance(error, NotImplementedError):
            return _record(Report(name, task.points, 0.0, 0, len(cases), "not implemented",
                                  [NOT_IMPLEMENTED]))
        diff = _error_line(error) if error is not None else task.differ(expected, got)
        if diff is None:
            passed += 1
            continue
        if messages:
            continue
        messages = [f"first difference, case {case.name!r}:",
                    "  input:    " + ", ".join(describe(a, 90) for a in case.args)
                    + "".join(f", {k}={describe(v, 40)}" for k, v in case.kwargs.items()),
                    f"  {diff}"]
        if error is None:
            messages.append("  expected: " + describe(expected))
            messages.append("  got:      " + describe(got))
            found = _recognise(task, case, expected, got)
            if found is not None:
                mistake = found.name
                messages.append(f"typical mistake: {found.message}")
    status = "passed" if passed == len(cases) else "failed"
    score = round(task.points * passed / max(len(cases), 1), 2)
    return _record(Report(name, task.points, score, passed, len(cases), status, messages,
                          mistake))
