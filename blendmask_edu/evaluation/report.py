"""The demo report: one Markdown page that shows what a training run learned.

``write_report(out_dir, model, val_dataset, log, metrics, cfg)`` writes, into ``out_dir``:

- ``report.md``: the preset, the training time and iterations, the box and mask AP table, and
  the pictures below, with the full config table at the end;
- ``loss_curve.png``: every loss of the training log (log scale);
- ``predictions.png``: a 2 × 4 grid of validation images with the predicted masks, boxes and
  "class score" labels of the detections scoring at least 0.3;
- ``bases.png``: one validation image and its K bases, the bottom module's output that every
  instance mask is blended from;
- for a panoptic model, the paper's Table 1 row and ``panoptic.png``: four validation images
  above their panoptic maps (things and stuff segments after the fusion).

``blendmask-edu demo`` calls it after training and evaluating the ``tiny_fast`` preset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Union

import matplotlib.pyplot as plt
import torch

from blendmask_edu import visualize as vis
from blendmask_edu.config import Config, describe
from blendmask_edu.data.transforms import resize_for_test
from blendmask_edu.evaluation.inference import detect
from blendmask_edu.evaluation.panoptic_files import prediction_paths
from blendmask_edu.evaluation.tables import TABLE1_COLUMNS, format_ap_table, format_table1
from blendmask_edu.plots import save_loss_curve

SCORE_THRESH = 0.3
GRID_ROWS, GRID_COLS = 2, 4


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_predictions(model, dataset, cfg: Config, path: Path,
                     score_thresh: float = SCORE_THRESH) -> int:
    """A 2 × 4 grid of the first validation images with their detections; returns how many
    images it shows. Each title reads "found D / G objects" (D at ``score_thresh``)."""
    count = min(GRID_ROWS * GRID_COLS, len(dataset))
    items = [dataset[i] for i in range(count)]
    images = [image for image, _ in items]
    detections = detect(model, images, cfg.input.test_short_size, cfg.input.test_max_size)
    fig, axes = vis.image_grid(GRID_ROWS * GRID_COLS, ncols=GRID_COLS, size=2.8)
    for ax, (image, target), det in zip(axes, items, detections):
        found = int((det["scores"] >= score_thresh).sum())
        vis.draw_detections(image, det, dataset.categories.names, score_thresh, ax=ax,
                            title=f"found {found} / {len(target['boxes'])} objects")
    for ax in axes[count:]:
        ax.set_axis_off()
    _save(fig, path)
    return count


def save_panoptic(model, dataset, cfg: Config, path: Path, count: int = GRID_COLS) -> int:
    """The first ``count`` validation images above their panoptic maps; returns how many."""
    count = min(count, len(dataset))
    images = [dataset[i][0] for i in range(count)]
    detections = detect(model, images, cfg.input.test_short_size, cfg.input.test_max_size)
    names = dataset.categories.names
    colors = vis.category_colors(sorted(names))
    fig, axes = vis.image_grid(2 * count, ncols=count, size=2.8)
    for k, (image, det) in enumerate(zip(images, detections)):
        ids, segments = det["panoptic"]
        things = sum(s["isthing"] for s in segments)
        vis.draw_instances(image, ax=axes[k], title=f"image {k}")
        vis.draw_panoptic(ids.numpy(), segments, colors, thing_ids=dataset.categories.thing_ids,
                          names=names, ax=axes[count + k],
                          title=f"{things} things, {len(segments) - things} stuff segments")
    _save(fig, path)
    return count


@torch.no_grad()
def save_bases(model, dataset, cfg: Config, path: Path, index: int = 0) -> int:
    """One validation image (at the test size) beside its K bases; returns K."""
    image, _ = dataset[index]
    resized, _ = resize_for_test(image, cfg.input.test_short_size, cfg.input.test_max_size)
    device = next(model.parameters()).device
    model.eval()
    bases = model.bases_of([resized.to(device)])[0].cpu()  # [K, h, w]
    _save(vis.draw_bases(resized, bases), path)
    return len(bases)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def write_report(out_dir: Union[str, Path], model, val_dataset, log: Sequence[Mapping[str, float]],
                 metrics: Mapping[str, float], cfg: Config,
                 train_seconds: Optional[float] = None, notes: Sequence[str] = (),
                 split: str = "val") -> Path:
    """Write ``report.md`` and its pictures into ``out_dir`` (see the module docstring).

    Takes the trained ``model``, the validation dataset (items at their original size), the
    training ``log`` (dicts with ``iter`` and ``loss*``), the flat ``metrics`` of
    ``evaluate_coco``, the ``cfg`` it was trained with, the training wall time (default: the
    log's last ``time``), extra Markdown lines (``notes``) and the name of the validation split
    (``split``: the panoptic files are named after it). Returns the path of report.md.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if train_seconds is None and log:
        train_seconds = log[-1].get("time")
    iterations = log[-1]["iter"] if log else 0

    lines: Dict[str, Sequence[str]] = {}
    lines["head"] = [
        f"# BlendMask on {Path(str(val_dataset.instances_json)).parent.parent.name or 'the data'}"
        f" — preset `{cfg.name}`", "",
        f"- trained for {iterations} iterations (batch {cfg.solver.batch_size})"
        + (f" in {_duration(train_seconds)}" if train_seconds is not None else ""),
        f"- evaluated on {len(val_dataset)} validation images at a shorter side of "
        f"{cfg.input.test_short_size} px",
        *[f"- {note}" for note in notes], "",
        "## COCO AP (percent)", "", format_ap_table(metrics, markdown=True), "",
        "AP is averaged over IoU 0.50:0.95; APs/APm/APl are COCO's small (< 32²), medium and "
        "large (> 96² px) objects, \"–\" where no ground-truth object has that size. "
        "The precision–recall curves are in `pr_curve.png`, the detections in "
        "`coco_instances_results.json`.", ""]
    lines["loss"] = (["## Training losses", "", "![losses](loss_curve.png)", ""]
                     if save_loss_curve(log, out / "loss_curve.png") else [])
    shown = save_predictions(model, val_dataset, cfg, out / "predictions.png")
    lines["predictions"] = [
        "## Predictions on validation images", "",
        f"The first {shown} validation images; detections scoring at least {SCORE_THRESH} are "
        "drawn with their mask, box and \"class score\".", "", "![predictions](predictions.png)", ""]
    num_bases = save_bases(model, val_dataset, cfg, out / "bases.png")
    lines["bases"] = [
        "## The bases of one image", "",
        f"The bottom module's {num_bases} bases (stride 4; red positive, blue negative). Every "
        "instance mask is a per-pixel weighted sum of these, cropped to its box, with weights "
        "from the top module's attention.", "", "![bases](bases.png)", ""]
    if all(c in metrics for c in TABLE1_COLUMNS):
        shown = save_panoptic(model, val_dataset, cfg, out / "panoptic.png")
        pred_json, pred_dir = prediction_paths(out, split)
        lines["panoptic"] = [
            "## Panoptic segmentation (the paper's Table 1 columns, percent)", "",
            format_table1([metrics], markdown=True, labels=False), "",
            "PQ = SQ × RQ per class, averaged over the classes (things: "
            f"{', '.join(val_dataset.categories.thing_names)}; stuff: "
            f"{', '.join(val_dataset.categories.semantic_names[1:])}); mIoU is the semantic "
            "branch's (things as one class); AP_th is the mask AP of the things. The predicted "
            f"PNGs and JSON are in `{pred_dir.name}/` and `{pred_json.name}`.", "",
            f"The first {shown} validation images and their panoptic maps (instances scoring "
            f"≥ {cfg.panoptic.score_thresh}, then stuff):", "", "![panoptic](panoptic.png)", ""]
    lines["config"] = ["## Configuration", "", "```", describe(cfg), "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(line for part in lines.values() for line in part))
    return path
