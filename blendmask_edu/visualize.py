"""Pictures of what the code sees and makes: images with instance masks and detections (beside
their ground truth), panoptic and semantic maps, FCOS locations, bases and attention maps.

Every function draws into a matplotlib ``Axes`` (made if not given) and returns it, so notebooks
can lay pictures out in grids and the demo report can save them. Curves and charts of numbers
(losses, precision–recall, a dataset's counts and sizes) and ``show_jpeg``, which shows a grid of
images as a JPEG, are in :mod:`blendmask_edu.plots`. Introduced in ``notebooks/00_data.ipynb``.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.transforms import offset_copy

# Defined in plots (charts of numbers, a figure as JPEG); importable from here too.
from blendmask_edu.plots import jpeg_bytes, plot_counts, plot_size_histogram, show_jpeg  # noqa


def to_numpy_image(image) -> np.ndarray:
    """An image as uint8 ``[H, W, 3]``: accepts float ``[3, H, W]`` in 0..1 or uint8 ``[H, W, 3]``."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image


def instance_colors(count: int, seed: int = 3) -> np.ndarray:
    """``count`` distinct, bright colours as float ``[count, 3]`` in 0..1 (fixed for a seed)."""
    hues = (np.arange(count) * 0.618033988749895 + np.random.default_rng(seed).random()) % 1.0
    hsv = np.stack([hues, np.full(count, 0.75), np.full(count, 0.95)], axis=1)
    return matplotlib.colors.hsv_to_rgb(hsv) if count else np.zeros((0, 3))


def category_colors(category_ids: Sequence[int], seed: int = 7) -> Dict[int, Tuple[int, int, int]]:
    """A fixed, distinct colour (0..255 RGB) per category id, for :func:`draw_panoptic` when the
    data gives none (a COCO panoptic JSON's categories carry their own ``color``)."""
    colors = instance_colors(len(category_ids), seed=seed)
    return {int(c): tuple(int(round(255 * v)) for v in color)
            for c, color in zip(category_ids, colors)}


def _axes(ax):
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    ax.set_axis_off()
    return ax


def draw_instances(image, masks=None, boxes=None, labels: Optional[Sequence[str]] = None,
                   alpha: float = 0.55, ax=None, title: Optional[str] = None,
                   colors: Optional[Sequence] = None, fontsize: float = 7):
    """Draw an image with its instances: masks ``[G, H, W]`` tinted, boxes ``[G, 4]`` xyxy, labels.

    ``labels`` are the texts written at a corner of each box (class name, score, ...), each where
    it hides no earlier label (see :func:`place_labels`). ``colors``: G RGB triples in 0..1 (e.g.
    one per class); by default each instance its own (:func:`instance_colors`).
    """
    ax = _axes(ax)
    canvas = to_numpy_image(image).astype(np.float32) / 255.0
    count = len(masks) if masks is not None else (len(boxes) if boxes is not None else 0)
    colors = instance_colors(count) if colors is None else np.asarray(colors, dtype=np.float64)
    if masks is not None and count:
        masks = np.asarray(masks.detach().cpu() if isinstance(masks, torch.Tensor) else masks) > 0.5
        for mask, color in zip(masks, colors):
            canvas[mask] = (1 - alpha) * canvas[mask] + alpha * color
    ax.imshow(canvas, interpolation="nearest")
    if boxes is not None:
        boxes = np.asarray(boxes.detach().cpu() if isinstance(boxes, torch.Tensor) else boxes)
        for index, (x0, y0, x1, y1) in enumerate(boxes):
            # A box x0..x1 covers pixel columns x0..x1-1, whose edges in imshow are at -0.5 offsets.
            ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                       edgecolor=colors[index], linewidth=1.2))
        if labels is not None:
            place_labels(ax, boxes, labels, colors, fontsize)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def place_labels(ax, boxes: np.ndarray, texts: Sequence[str], colors, fontsize: float = 7) -> list:
    """Write ``texts[g]`` at box g (``[G, 4]`` xyxy) on ``colors[g]`` (RGB 0..1), in order, at the
    first place where it overlaps no earlier label and stays inside the axes (above the top edge,
    inside it, below the bottom edge, inside it; left-, then right-aligned; then stacked 1-3 label
    heights further out), else where it overlaps least. Returns the G ``Text`` artists."""
    step = 1.6 * fontsize  # a label's height, in points
    anchors = [(i, ha, j, va, 0.0) for i, ha in ((0, "left"), (2, "right"))
               for j, va in ((1, "bottom"), (1, "top"), (3, "top"), (3, "bottom"))]
    anchors += [(0, "left", j, va, k * step * sign) for k in (1, 2, 3)
                for j, va, sign in ((1, "bottom", 1), (3, "top", -1))]
    frame, written, placed = ax.get_window_extent(), [], []  # in display pixels

    def overlap(a, b):  # area shared by two display-space boxes
        return (max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
                * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0)))

    for box, text, color in zip(boxes, texts, colors):
        ink = "black" if np.dot(color, (0.299, 0.587, 0.114)) > 0.6 else "white"  # luminance
        tried = []  # (cost, order, label, extent) of each place tried
        for i, ha, j, va, dy in anchors:
            label = ax.text(box[i] - 0.5, box[j] - 0.5, text, fontsize=fontsize, color=ink, ha=ha,
                            va=va, bbox=dict(facecolor=color, alpha=0.85, pad=0.6, linewidth=0),
                            transform=offset_copy(ax.transData, ax.figure, y=dy, units="points"))
            extent = label.get_window_extent().expanded(1.1, 1.3)
            label.remove()
            cost = sum(overlap(extent, other) for other in written)
            cost += extent.width * extent.height - overlap(extent, frame)  # outside the axes
            tried.append((cost, len(tried), label, extent))
            if cost == 0:
                break
        _, _, label, extent = min(tried)
        placed.append(ax.add_artist(label))
        written.append(extent)
    return placed


def colorize_panoptic(segment_ids: np.ndarray, segments_info: Sequence[Mapping],
                      category_colors: Mapping[int, Sequence[int]],
                      thing_ids: Sequence[int] = ()) -> np.ndarray:
    """Colour a panoptic id map ``[H, W]`` as uint8 ``[H, W, 3]``.

    Stuff segments take their category's colour; each thing segment takes its category's colour
    shifted a little per instance, so that two touching circles stay apart. Id 0 (void) is black.
    """
    out = np.zeros(segment_ids.shape + (3,), dtype=np.uint8)
    things = set(thing_ids)
    rng = np.random.default_rng(0)
    for segment in segments_info:
        color = np.asarray(category_colors.get(segment["category_id"], (200, 200, 200)), dtype=np.int32)
        if segment["category_id"] in things:
            color = np.clip(color + rng.integers(-60, 61, size=3), 0, 255)
        out[segment_ids == segment["id"]] = color.astype(np.uint8)
    return out


def draw_panoptic(segment_ids, segments_info, category_colors, thing_ids=(), names=None,
                  ax=None, title: Optional[str] = None):
    """Draw a panoptic id map ``[H, W]``; with ``names`` ({category id: name}), label each thing."""
    ax = _axes(ax)
    segment_ids = np.asarray(segment_ids)
    ax.imshow(colorize_panoptic(segment_ids, segments_info, category_colors, thing_ids),
              interpolation="nearest")
    if names is not None:
        for segment in segments_info:
            if segment["category_id"] in set(thing_ids):
                ys, xs = np.nonzero(segment_ids == segment["id"])
                if len(xs):
                    ax.text(xs.mean(), ys.mean(), names[segment["category_id"]], fontsize=6,
                            ha="center", va="center", color="white")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def draw_semantic(labels, names: Sequence[str], colors: Optional[Sequence[Sequence[int]]] = None,
                  ax=None, title: Optional[str] = None, ignore: int = 255,
                  legend: Union[bool, str] = True, legend_loc: str = "lower right"):
    """A semantic label map ``[H, W]`` (0..C-1, ``ignore`` drawn black) in one colour per class,
    with a legend naming ``names[c]`` of the classes present (``legend="all"``: of every class;
    a black "void" entry when ``ignore`` pixels are drawn); ``colors`` are C RGB triples in
    0..255 (default: fixed distinct colours). ``legend_loc="outside"`` puts it right of the map."""
    ax = _axes(ax)
    labels = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels)
    palette = (np.asarray(colors, dtype=np.float64) / 255.0 if colors is not None
               else instance_colors(len(names), seed=11))
    canvas = np.zeros(labels.shape + (3,))
    for c in range(len(names)):
        canvas[labels == c] = palette[c]
    ax.imshow(canvas, interpolation="nearest")
    if legend:
        handles = [matplotlib.patches.Patch(color=palette[c], label=names[c])
                   for c in range(len(names)) if legend == "all" or (labels == c).any()]
        if (labels == ignore).any():
            handles.append(matplotlib.patches.Patch(color="black", label=f"void ({ignore})"))
        outside = legend_loc == "outside"
        ax.legend(handles=handles, fontsize=7, framealpha=0.7, loc="upper left" if outside else
                  legend_loc, bbox_to_anchor=(1.02, 1.0) if outside else None)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def image_grid(count: int, ncols: int = 4, size: float = 2.6):
    """A figure with ``count`` empty axes in rows of ``ncols``; returns ``(figure, axes list)``."""
    nrows = max(1, -(-count // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    axes = list(axes.ravel())
    for ax in axes[count:]:
        ax.set_axis_off()
    return fig, axes[:count]


def draw_locations(image, locations: Sequence[torch.Tensor], strides: Sequence[int], ax=None,
                   title: str = "locations"):
    """The FCOS locations of each level (list of [L_l, 2] (x, y)) as dots over the image."""
    ax = _axes(ax)
    ax.imshow(to_numpy_image(image), interpolation="nearest")
    colors = instance_colors(len(locations), seed=1)
    for points, stride, color in zip(locations, strides, colors):
        points = points.detach().cpu()
        ax.scatter(points[:, 0] - 0.5, points[:, 1] - 0.5, s=max(2.0, stride / 2), color=color,
                   label=f"stride {stride}", edgecolors="none")
    ax.legend(loc="lower right", fontsize=7, markerscale=1.5)
    ax.set_title(title, fontsize=9)
    return ax


def draw_level_map(image, values: torch.Tensor, stride: int, ax=None, title: str = "",
                   cmap: str = "viridis", vmin=None, vmax=None, alpha: float = 0.65,
                   colorbar: Union[bool, str] = False):
    """A per-location map [h, w] of one level, stretched over the image it came from (NaN cells
    left clear); ``colorbar`` (True, or its label) adds the colour scale beside it."""
    ax = _axes(ax)
    picture = to_numpy_image(image)
    height, width = picture.shape[:2]
    ax.imshow(picture, interpolation="nearest")
    values = values.detach().cpu().float().numpy()
    h, w = values.shape
    overlay = ax.imshow(np.ma.masked_where(np.isnan(values), values), cmap=cmap, vmin=vmin,
                        vmax=vmax, alpha=alpha, interpolation="nearest",
                        extent=(-0.5, w * stride - 0.5, h * stride - 0.5, -0.5))
    if colorbar:
        ax.figure.colorbar(overlay, ax=ax, fraction=0.046, pad=0.03,
                           label=colorbar if isinstance(colorbar, str) else None)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_title(title, fontsize=9)
    return ax


def draw_map(values: torch.Tensor, ax=None, title: str = "", cmap: str = "RdBu_r",
             symmetric: bool = True, colorbar: bool = False):
    """One real-valued map ``[h, w]`` (a basis, an attention, a blended mask) as a heat map;
    ``symmetric`` centres the colour scale on zero (bases and attentions are signed logits)."""
    ax = _axes(ax)
    values = values.detach().cpu().float().numpy()
    if symmetric:
        bound = float(np.abs(values).max()) or 1.0
        picture = ax.imshow(values, cmap=cmap, vmin=-bound, vmax=bound, interpolation="nearest")
    else:
        picture = ax.imshow(values, cmap=cmap, interpolation="nearest")
    if colorbar:
        ax.figure.colorbar(picture, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def draw_bases(image, bases: torch.Tensor, axes: Optional[Sequence] = None,
               size: float = 2.6):
    """An image and its K bases ``[K, h, w]`` (stride 4) side by side; returns the figure.

    Each basis gets its own symmetric colour scale: red positive, blue negative."""
    if axes is None:
        _, axes = image_grid(len(bases) + 1, ncols=len(bases) + 1, size=size)
    axes[0].imshow(to_numpy_image(image), interpolation="nearest")
    axes[0].set_title("image", fontsize=9)
    axes[0].set_axis_off()
    for k, (ax, basis) in enumerate(zip(axes[1:], bases)):
        draw_map(basis, ax=ax, title=f"basis {k}")
    return axes[0].figure


def draw_detections(image, detection: Mapping[str, torch.Tensor],
                    names: Optional[Mapping[int, str]] = None, score_thresh: float = 0.3,
                    ax=None, title: Optional[str] = None,
                    class_colors: Optional[Mapping[int, Sequence[int]]] = None,
                    fontsize: float = 7):
    """An image with the detections scoring at least ``score_thresh``: ``detection`` holds
    ``boxes`` [D, 4], ``scores`` [D], ``labels`` [D] (category ids) and optionally ``masks``
    [D, 1, H, W] probabilities at the image's size (drawn above 0.5); labels read "class
    score", ``names`` being {category id: name}. ``class_colors`` ({category id: RGB 0..255})
    colours each detection by its class instead of one colour per detection."""
    keep = detection["scores"].detach().cpu() >= score_thresh
    labels = detection["labels"].detach().cpu()[keep].tolist()
    scores = detection["scores"].detach().cpu()[keep].tolist()
    texts = [f"{(names or {}).get(int(c), c)} {s:.2f}" for c, s in zip(labels, scores)]
    masks = detection.get("masks")
    masks = masks.detach().cpu()[keep][:, 0] if masks is not None else None  # [D', H, W]
    colors = None if class_colors is None else [np.asarray(class_colors[c]) / 255.0 for c in labels]
    return draw_instances(image, masks, detection["boxes"].detach().cpu()[keep], texts, ax=ax,
                          title=title, colors=colors, fontsize=fontsize)


def draw_truth_and_prediction(image, target: Mapping[str, torch.Tensor],
                              detection: Mapping[str, torch.Tensor], categories,
                              score_thresh: float = 0.3, axes: Optional[Sequence] = None,
                              name: str = "", colors: Optional[Mapping[int, Sequence[int]]] = None,
                              fontsize: float = 8):
    """One image's ground truth and a model's prediction in two panels ``axes`` (made side by side
    if not given); returns them. Instances are tinted in their class's colour (a wrong class shows
    as a change of colour) and labelled with the class (and score).

    image: float [3, H, W] in 0..1 or uint8 [H, W, 3]. target: the dataset's dict, ``masks``
    [G, H, W], ``boxes`` [G, 4] xyxy, ``labels`` [G] contiguous thing indices. detection: the
    model's, ``boxes`` [D, 4] xyxy, ``scores`` [D], ``labels`` [D] category ids, optionally
    ``masks`` [D, 1, H, W] probabilities; drawn if scoring ≥ ``score_thresh``. categories: the
    dataset's ``CategoryMap`` (``names``, ``thing_ids``). name: before the first title (e.g. the
    image id). colors: {category id: RGB 0..255}, default :func:`category_colors` of thing ids."""
    if axes is None:
        _, axes = image_grid(2, ncols=2, size=4.0)
    colors = colors or category_colors(categories.thing_ids)
    ids = [int(categories.category_id(int(i))) for i in target["labels"]]
    title = (f"{name}: " if name else "") + f"ground truth, {len(ids)} things"
    draw_instances(image, target["masks"], target["boxes"], [categories.names[c] for c in ids],
                   ax=axes[0], title=title, colors=[np.asarray(colors[c]) / 255.0 for c in ids],
                   fontsize=fontsize)
    shown = int((detection["scores"] >= score_thresh).sum())
    draw_detections(image, detection, categories.names, score_thresh, ax=axes[1], fontsize=fontsize,
                    title=f"prediction, {shown} ≥ {score_thresh:g}", class_colors=colors)
    return axes


def save_prediction(target, title: str, image, det, panoptic, names, stuff_names, colors,
                     score_thresh: float, fusion_thresh: float) -> None:
    """The detections ``det`` on ``image`` (float [3, H, W]) and, beside them, the panoptic map
    ``(segment ids [H, W], segments info)`` if there is one, saved as one PNG at ``target``
    (what ``blendmask-edu predict`` writes per image). ``names`` / ``stuff_names`` map category
    ids to names, ``colors`` ids to RGB; the thresholds are only printed in the titles."""
    height, width = image.shape[-2:]
    panels = 1 if panoptic is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(6.0 * panels, 6.0 * height / width),
                             squeeze=False)
    draw_detections(image, det, names, score_thresh, ax=axes[0, 0],
                    title=f"{title}: {len(det['scores'])} detections ≥ {score_thresh}")
    if panoptic is not None:  # the fusion keeps instances ≥ its own threshold
        ids, segments = panoptic
        things = sum(s["isthing"] for s in segments)
        draw_panoptic(ids.numpy(), segments, colors, thing_ids=list(names),
                      names={**names, **stuff_names}, ax=axes[0, 1],
                      title=f"panoptic: {things} things, {len(segments) - things} stuff "
                            f"(instances ≥ {fusion_thresh})")
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
