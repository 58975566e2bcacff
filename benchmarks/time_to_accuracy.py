"""Time to accuracy on the CPU: the demo's recipe against the one it replaced, trained one after the other.

The question (issue 16): does the demo's preset, ``tiny_fast``, reach the quality of the demo
as it was (mask AP ≥ 50 and PQ ≥ 55 on shapes val) in at most half its training time? Both are
trained here, in turn, on the same machine, each in a fresh process with the same threads, by
the package's own ``train`` command, then evaluated on val by it:

  today      the ``tiny`` preset run by the package as it was at ``--today-ref`` (the last
             commit before issue 16), extracted from git into a temporary folder and put first
             on ``PYTHONPATH``: today's recipe on today's code
  new        ``tiny_fast`` on the code of this checkout

Outside a git checkout (or with ``--today-ref ""``) "today" is ``tiny`` on this checkout's code
with the image cache off (``--input.cache_mb 0``); the other speed-ups of issue 16 then help it
too, and the script says so.

The training time is the training loop's own clock (``time`` in ``metrics.jsonl``: from the
first step to the last, checkpoints included; without building the data or the model, and
without the evaluation).

``--new-overrides`` passes config overrides to the new run only: ``--new-overrides='--solver.amp
false'`` trains ``tiny_fast`` in float32 where it would train in bfloat16 (a CPU that computes it
natively).

Run it on a quiet machine (``make time-to-accuracy``; about 35 minutes on 2 cores): another
process on the same cores slows the two runs by different amounts. ``--quick`` trains 3 steps of
each on whatever ``--data`` holds, to test the script; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

# speed.py's printing helpers: importable because Python puts this script's folder on sys.path.
from speed import load_average, table

TODAY_REF = "03944ce"  # the last commit before issue 16: the demo trained `tiny` then
MASK_AP_FLOOR, PQ_FLOOR, TIME_RATIO_BOUND = 50.0, 55.0, 0.5
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (``argv``, default ``sys.argv[1:]``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/shapes",
                   help="the shapes dataset (generated there if missing, as make demo does)")
    p.add_argument("--out", default="runs/time_to_accuracy", help="one run folder per preset")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each run")
    p.add_argument("--today-ref", default=TODAY_REF,
                   help=f"the git commit whose package trains today's run (default {TODAY_REF}); "
                        f"'' for this checkout's code with the image cache off")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 3 steps of each preset on --data as it is (tests the "
                        "script, measures nothing)")
    p.add_argument("--new-overrides", default="", metavar="ARGS",
                   help="config overrides for the new run only, as one string, e.g. "
                        "--new-overrides='--solver.amp false' (float32 on a CPU with bfloat16)")
    p.add_argument("--json", help="save every number to this file")
    return p.parse_args(argv)


def package_at(ref: str, folder: Path) -> Optional[Path]:
    """The ``blendmask_edu`` package of git commit ``ref`` extracted into ``folder`` (the folder
    to put on PYTHONPATH), or None when this is not a git checkout that has ``ref``."""
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "blendmask_edu"],
                                 capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        try:
            tar.extractall(folder, filter="data")
        except TypeError:  # Python < 3.9.17 / 3.10.12 / 3.11.4: no filters
            tar.extractall(folder)
    return folder


def train_run(name: str, preset: str, overrides: Sequence[str], args,
              package: Path = REPO) -> Dict:
    """Train ``preset`` into ``args.out/name`` in a fresh process that imports ``blendmask_edu``
    from the folder ``package`` (this checkout by default) and read back what it wrote: the
    iterations, the batch size, the training time and the val metrics.

    The process runs *in* ``package``: ``python -m`` puts its working folder first on
    ``sys.path``, before PYTHONPATH, so from this checkout's root even an older package on
    PYTHONPATH would lose to this one (it did, before this was written so)."""
    out = Path(args.out).resolve() / name
    if out.exists():  # a run that resumed would not time its whole training
        shutil.rmtree(out)
    command = [sys.executable, "-m", "blendmask_edu", "train", "--preset", preset,
               "--data", str(Path(args.data).resolve()), "--out", str(out), "--quiet",
               *overrides]
    if args.quick:
        command += ["--max-iter", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join([str(package), os.environ.get("PYTHONPATH", "")])
           .rstrip(os.pathsep)}
    probe = [sys.executable, "-c", "import blendmask_edu; print(blendmask_edu.__file__)"]
    imported = subprocess.run(probe, cwd=package, env=env, capture_output=True, text=True,
                              check=True).stdout.strip()
    print(f"\n$ cd {package} && {' '.join(command)}\n(blendmask_edu from {imported})", flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=package)
    wall = time.perf_counter() - started
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    steps = [entry for entry in log if "time" in entry]
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    return {"preset": preset, "overrides": list(overrides),
            "code": "this checkout" if package == REPO else str(package),
            "package_file": imported, "iterations": steps[-1]["iter"],
            "batch_size": config["solver"]["batch_size"], "train_s": steps[-1]["time"],
            "process_s": wall, "box_AP": metrics["bbox"]["AP"], "mask_AP": metrics["segm"]["AP"],
            "PQ": metrics.get("PQ")}


def goal_lines(runs: Dict[str, Dict]) -> List[Dict]:
    """The three goals of the new run: its mask AP and PQ floors, its time against today's."""
    new, today = runs["new"], runs["today"]
    ratio = new["train_s"] / today["train_s"]
    return [
        {"goal": f"mask AP ≥ {MASK_AP_FLOOR:g} (new)", "value": new["mask_AP"],
         "met": new["mask_AP"] >= MASK_AP_FLOOR},
        {"goal": f"PQ ≥ {PQ_FLOOR:g} (new)", "value": new["PQ"],
         "met": new["PQ"] is not None and new["PQ"] >= PQ_FLOOR},
        {"goal": f"training time ≤ {TIME_RATIO_BOUND:g} × today's", "value": ratio,
         "met": ratio <= TIME_RATIO_BOUND},
    ]


def main(argv=None) -> Dict:
    """Train both runs, print the table and the goals; returns every number."""
    args = parse_args(argv)
    if not args.quick:
        from blendmask_edu.data.synthetic import ensure_shapes
        ensure_shapes(args.data)
    with tempfile.TemporaryDirectory() as folder:
        package = package_at(args.today_ref, Path(folder)) if args.today_ref else None
        if package is not None:
            today = ("tiny", [], f"tiny on the code of {args.today_ref} (the demo before "
                                 f"tiny_fast)")
        else:
            if args.today_ref:
                print(f"no git commit {args.today_ref} here: today's run uses this checkout's "
                      f"code with the image cache off, so this code's other speed-ups help it too")
            today = ("tiny", ["--input.cache_mb", "0"], "tiny, this code, no image cache")
        extra = shlex.split(args.new_overrides)
        plan = [("today", *today),
                ("new", "tiny_fast", extra, " ".join(["tiny_fast, the demo's preset", *extra]))]
        runs = {name: train_run(name, preset, overrides, args,
                                package if name == "today" and package is not None else REPO)
                for name, preset, overrides, _ in plan}
    print("\n# Time to accuracy on shapes val\n")
    print(f"threads {args.threads}, load average at the end {load_average()}\n")
    rows = [[name, what, r["iterations"], r["batch_size"], f"{r['train_s']:.0f}",
             f"{r['train_s'] / r['iterations']:.3f}", f"{r['box_AP']:.1f}", f"{r['mask_AP']:.1f}",
             "-" if r["PQ"] is None else f"{r['PQ']:.1f}"]
            for name, _, _, what in plan for r in [runs[name]]]
    print(table(["run", "what", "iterations", "batch", "training s", "s/iter", "box AP", "mask AP",
                 "PQ"], rows, left=2))
    goals = goal_lines(runs)
    print(f"\ntraining time ratio (new / today): {goals[-1]['value']:.2f}\n")
    for g, digits in zip(goals, (1, 1, 2)):
        value = "-" if g["value"] is None else f"{g['value']:.{digits}f}"
        print(f"{'✓' if g['met'] else '✗'} {g['goal']}: {value}")
    result = {"threads": args.threads, "quick": args.quick, "today_ref": args.today_ref,
              "runs": runs, "goals": goals}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"saved {args.json}")
    return result


if __name__ == "__main__":
    main()
