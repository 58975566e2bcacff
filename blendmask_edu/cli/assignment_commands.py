"""The ``assignments`` commands: list the tasks, release the student notebooks, grade submissions.

Each ``cmd_*`` takes the parsed arguments and returns the exit code (0; 2 for a problem with the
user's files, raised as ``UsageError``). The work is in :mod:`blendmask_edu.assignments`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from blendmask_edu.cli.common import UsageError


def cmd_list(args) -> int:
    """``assignments list``: each assignment, its notebook, minutes, tasks and points."""
    from blendmask_edu.assignments import ASSIGNMENTS, TASKS

    for a in ASSIGNMENTS.values():
        print(f"{a.id:<13} {a.title} ({a.notebook}, after {a.follows}; about {a.minutes} min, "
              f"{a.points} points)")
        for name in a.tasks:
            task = TASKS[name]
            print(f"    {name:<20} {task.points} points, {len(task.mistakes)} typical mistakes "
                  f"recognised")
    return 0


def cmd_release(args) -> int:
    """``assignments release``: the student notebooks (stubs, no hidden tests) into --out."""
    from blendmask_edu.assignments import SOURCE_DIR
    from blendmask_edu.assignments.notebooks import NotebookError, release

    source = Path(args.source) if args.source else SOURCE_DIR
    try:
        written = release(source, args.out)
    except NotebookError as error:
        raise UsageError(str(error)) from None
    for path in written:
        print(f"released {path}")
    return 0


def cmd_grade(args) -> int:
    """``assignments grade``: execute each submission, check, print and write the table."""
    from blendmask_edu.assignments import SOURCE_DIR
    from blendmask_edu.assignments.grading import grade, grades_table, write_grades

    paths = [Path(p) for p in args.submissions]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UsageError(f"submission(s) not found: {', '.join(missing)}")
    out = Path(args.out)
    source = Path(args.source) if args.source else SOURCE_DIR
    rows = grade(paths, timeout=args.timeout, source_dir=source, feedback_dir=out / "feedback",
                 progress=lambda p: print(f"grading {p} ...", file=sys.stderr, flush=True))
    print(grades_table(rows))
    written = write_grades(rows, out)
    print(f"\nwrote {', '.join(str(p) for p in written.values())} and the executed notebooks in "
          f"{out / 'feedback'}")
    return 0


def add_parser(commands) -> None:
    """The ``assignments`` command and its subcommands, on ``commands`` (the subparsers)."""
    parser = commands.add_parser("assignments", help="course assignments: list, release, grade")
    sub = parser.add_subparsers(dest="assignments_command", required=True)

    listing = sub.add_parser("list", help="the assignments and their tasks")
    listing.set_defaults(func=cmd_list)

    release = sub.add_parser("release", help="write the student notebooks")
    release.add_argument("--out", required=True, help="folder for the student notebooks")
    release.add_argument("--source", help="instructor notebooks (default: the package's)")
    release.set_defaults(func=cmd_release)

    grade = sub.add_parser("grade", help="execute and grade submitted notebooks")
    grade.add_argument("submissions", nargs="+", help="submitted notebooks (.ipynb)")
    grade.add_argument("--out", default="grades", help="folder for grades.md/.csv/.json (grades)")
    grade.add_argument("--timeout", type=int, default=60, help="seconds per cell (60)")
    grade.add_argument("--source", help="instructor notebooks (default: the package's)")
    grade.set_defaults(func=cmd_grade)
