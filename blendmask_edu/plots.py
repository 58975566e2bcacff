"""Curves of what a run measured: training losses (after the run and live) and precision–recall;
charts of a dataset's numbers (counts, sizes); and a figure as a JPEG for notebooks.

Like :mod:`blendmask_edu.visualize` (pictures of images, masks and maps), every ``plot_*``
function draws into a matplotlib ``Axes`` (made if not given) and returns it. The ``save_*``
functions write a run's PNGs (``loss_curve.png``, ``pr_curve.png``) on a pyplot-free
``Figure``, so that a notebook's own figures and backend are left alone. :func:`show_jpeg` shows
a grid of images in a notebook as a JPEG: their noisy textures make PNGs of several hundred kB.
Introduced in ``notebooks/00_data.ipynb`` (charts, JPEG), ``01_fcos`` (losses) and
``05_evaluate`` (precision–recall).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple, Union

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


def plot_counts(counts: Mapping[str, float], ax=None, title: str = "", ylabel: str = "count"):
    """A bar chart of ``{name: value}``."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    ax.bar(list(counts.keys()), list(counts.values()), color="#4c72b0")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelrotation=30)
    return ax


def plot_size_histogram(sizes: Sequence[float], ax=None, title: str = "object sizes",
                        bounds: Sequence[float] = ()):
    """A log-scale histogram of object sizes (px); ``bounds`` draws vertical lines (FPN ranges)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    sizes = np.asarray(sizes, dtype=np.float64)
    sizes = sizes[sizes > 0]
    if len(sizes):
        bins = np.geomspace(max(sizes.min(), 1.0), sizes.max() + 1e-9, 30)
        ax.hist(sizes, bins=bins, color="#55a868")
        ax.set_xscale("log")
    for bound in bounds:
        ax.axvline(bound, color="k", linestyle="--", linewidth=0.8)
    ax.set_xlabel("size (px, longer side of the box)")
    ax.set_ylabel("instances")
    ax.set_title(title, fontsize=10)
    return ax


def jpeg_bytes(source, quality: int = 80, dpi: Optional[float] = None) -> bytes:
    """A picture as JPEG bytes, for embedding in a notebook: ``source`` is a saved picture's path
    or a matplotlib figure (drawn at ``dpi``, default its own, cropped as notebooks crop). The
    noisy textures of the shapes images make PNGs of several hundred kB; JPEG keeps them at a
    fraction (``IPython.display.Image(data=..., format="jpeg")`` shows the bytes)."""
    from PIL import Image

    if isinstance(source, Figure):
        png = io.BytesIO()
        source.savefig(png, format="png", dpi=dpi or source.dpi, bbox_inches="tight",
                       facecolor="white")
        source = png
    buffer = io.BytesIO()
    Image.open(source).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def show_jpeg(fig, quality: int = 80, dpi: Optional[float] = None) -> None:
    """Show a figure in a notebook as a JPEG (:func:`jpeg_bytes`) and close it, for photo-like
    grids of images; line plots stay PNG (sharper, and small)."""
    from IPython.display import Image, display

    data = jpeg_bytes(fig, quality, dpi)
    plt.close(fig)
    display(Image(data=data, format="jpeg"))
