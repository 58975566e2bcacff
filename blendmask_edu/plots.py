"""Curves of what a run measured: training losses (after the run and live) and precision–recall.

Like :mod:`blendmask_edu.visualize` (pictures of images, masks and maps), every ``plot_*``
function draws into a matplotlib ``Axes`` (made if not given) and returns it. The ``save_*``
functions write a run's PNGs (``loss_curve.png``, ``pr_curve.png``) on a pyplot-free
``Figure``, so that a notebook's own figures and backend are left alone. Introduced in
``notebooks/01_fcos.ipynb`` (losses) and ``05_evaluate`` (precision–recall).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence, Tuple, Union

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def plot_losses(log: Sequence[Mapping[str, float]], ax=None, title: str = "training losses"):
    """Each ``loss_*`` of a training log (list of dicts with ``iter``) and their sum, log scale."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    iters = [entry["iter"] for entry in log]
    for key in sorted(k for k in log[0] if k.startswith("loss")):
        ax.plot(iters, [entry[key] for entry in log], label=key,
                linewidth=2.0 if key == "loss" else 1.2)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    return ax


def save_loss_curve(log: Sequence[Mapping[str, float]], path: Union[str, Path]) -> bool:
    """The training entries of a run's log (those with ``loss``) drawn by :func:`plot_losses`
    into a PNG at ``path`` (a run's ``loss_curve.png``); False, and nothing written, when there
    are none. Drawn on a pyplot-free ``Figure``, so a notebook's own figures are left alone."""
    entries = [entry for entry in log if "loss" in entry and not entry.get("eval")]
    if not entries:
        return False
    figure = Figure(figsize=(6, 3.2))
    plot_losses(entries, ax=figure.subplots())
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return True


def plot_precision_recall(recall: Sequence[float], curves: Mapping[str, Sequence[float]],
                          ax=None, title: str = "precision–recall"):
    """Precision against recall, one line per ``{label: precision [R]}`` at the R ``recall``
    points (see :func:`blendmask_edu.evaluation.coco.precision_curves`); each label shows the
    curve's mean (its AP, in percent). NaN (a recall never reached) leaves a gap."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 3.6))
    recall = np.asarray(recall, dtype=np.float64)
    for label, precision in curves.items():
        precision = np.asarray(precision, dtype=np.float64)
        area = 100.0 * np.nan_to_num(precision, nan=0.0).mean()
        ax.plot(recall, precision, label=f"{label}  AP {area:.1f}", linewidth=1.5)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=7, loc="lower left")
    ax.set_title(title, fontsize=10)
    return ax


def save_pr_curves(panels: Mapping[str, Tuple[Sequence[float], Mapping[str, Sequence[float]]]],
                   path: Union[str, Path]) -> None:
    """A PNG at ``path`` (a run's ``pr_curve.png``) with one :func:`plot_precision_recall`
    panel per entry ``{title: (recall [R], {label: precision [R]})}``, side by side (an empty
    curves dict gives an empty panel, e.g. "box: no detections")."""
    figure = Figure(figsize=(4.2 * len(panels), 3.6))
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, (recall, curves)) in zip(axes, panels.items()):
        plot_precision_recall(recall, curves, ax=ax, title=title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


class LiveLossPlot:
    """A loss plot that redraws in place while training runs (Jupyter), for ``train(on_log=…)``.

    ``plot = LiveLossPlot(every=50)``, then ``train(..., on_log=plot.update)``; ``plot.close()``
    at the end leaves the final picture in the notebook. Outside IPython it only collects.
    """

    def __init__(self, every: int = 50, title: str = "training losses (live)"):
        self.every, self.title, self.log = every, title, []
        self.fig, self.ax = plt.subplots(figsize=(6, 3.2))
        self.handle = None
        try:
            from IPython.display import display
            self.handle = display(self.fig, display_id=True)
        except ImportError:  # plain Python: nothing to show
            pass

    def update(self, entry: Mapping[str, float]) -> None:
        self.log.append(dict(entry))
        if entry["iter"] % self.every == 0:
            self._draw()

    def _draw(self) -> None:
        self.ax.clear()
        plot_losses(self.log, ax=self.ax, title=f"{self.title}: iteration {self.log[-1]['iter']}")
        if self.handle is not None:
            self.handle.update(self.fig)

    def close(self) -> None:
        if self.log:
            self._draw()
        plt.close(self.fig)
