"""The numbers ``gpu_check.py`` prints about a short training, computed from the engine's log.

Pure functions of plain data, so that a test can check them against sums done by hand:

- :func:`window_means` — the log cut into consecutive windows of iterations, the mean loss and
  learning rate of each (the trend table);
- :func:`tenths` — the mean loss over the first and the last tenth of the iterations;
- :func:`throughput` — seconds per iteration and images per second between two clock readings.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple


def _loss_terms(entry: Dict) -> Dict[str, float]:
    """The ``loss_*`` values of one log entry, keyed by a short name (``loss_fcos_cls`` → ``cls``)."""
    return {key.replace("loss_", "").replace("fcos_", ""): value
            for key, value in entry.items() if key.startswith("loss_")}


def window_means(log: Sequence[Dict], rows: int = 10) -> List[Dict]:
    """The training log of one entry per iteration (``iter``, ``lr``, ``loss``, ``loss_*``; the
    engine's ``train(..., log_period=1)``) cut into at most ``rows`` consecutive windows of
    ``ceil(len / rows)`` iterations → one dict per window: ``first`` and ``last`` iteration,
    the mean ``lr``, ``loss`` and of each loss term (key: its short name). Evaluation entries
    (``eval``) are left out."""
    steps = [entry for entry in log if not entry.get("eval") and "loss" in entry]
    if not steps:
        return []
    size = math.ceil(len(steps) / max(1, rows))
    windows = []
    for start in range(0, len(steps), size):
        chunk = steps[start:start + size]
        mean = lambda values: sum(values) / len(values)  # noqa: E731
        terms = {name: mean([_loss_terms(e)[name] for e in chunk]) for name in _loss_terms(chunk[0])}
        windows.append({"first": chunk[0]["iter"], "last": chunk[-1]["iter"],
                        "lr": mean([e["lr"] for e in chunk]),
                        "loss": mean([e["loss"] for e in chunk]), **terms})
    return windows


def tenths(losses: Sequence[float]) -> Tuple[float, float, int]:
    """Per-iteration losses [N] → (mean of the first tenth, mean of the last tenth, the number of
    iterations in a tenth: ``max(1, round(N / 10))``). ValueError for an empty sequence."""
    if not losses:
        raise ValueError("no losses: the training logged no iteration")
    k = max(1, round(len(losses) / 10))
    return sum(losses[:k]) / k, sum(losses[-k:]) / k, k


def throughput(seconds: float, iterations: int, batch_size: int) -> Tuple[float, float]:
    """``iterations`` of ``batch_size`` images in ``seconds`` → (seconds per iteration,
    images per second). ValueError when nothing was timed."""
    if iterations <= 0 or seconds <= 0:
        raise ValueError(f"{iterations} iterations in {seconds} s: nothing timed")
    return seconds / iterations, iterations * batch_size / seconds


def format_windows(windows: Sequence[Dict]) -> str:
    """The trend table: one line per window of :func:`window_means` (iterations, lr, loss and
    its terms), aligned."""
    if not windows:
        return "(no iterations logged)"
    names = [k for k in windows[0] if k not in ("first", "last", "lr", "loss")]
    header = ["iterations", "lr", "loss"] + names
    lines = [[f"{w['first']}-{w['last']}", f"{w['lr']:.2e}", f"{w['loss']:.3f}"]
             + [f"{w[n]:.3f}" for n in names] for w in windows]
    widths = [max(len(row[i]) for row in [header] + lines) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(header)] + [fmt(row) for row in lines])
