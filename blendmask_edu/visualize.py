"""Pictures of what the code sees and makes: images with instance masks and detections, panoptic
and semantic maps, FCOS locations, bases and attention maps, dataset statistics.

Every function draws into a matplotlib ``Axes`` (made if not given) and returns it, so notebooks
can lay pictures out in grids and the demo report can save them. Curves of what a run measured
(losses, precision–recall) are in :mod:`blendmask_edu.plots`. Introduced in
``notebooks/00_data.ipynb``.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch


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
                   alpha: float = 0.55, ax=None, title: Optional[str] = None):
    """Draw an image with its instances: masks ``[G, H, W]`` tinted, boxes ``[G, 4]`` xyxy, labels.

    ``labels`` are the texts written at each box's corner (class name, score, ...).
    """
    ax = _axes(ax)
    canvas = to_numpy_image(image).astype(np.float32) / 255.0
    count = len(masks) if masks is not None else (len(boxes) if boxes is not None else 0)
    colors = instance_colors(count)
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
                ax.text(x0 - 0.5, y0 - 1.0, labels[index], fontsize=7, color="white",
                        bbox=dict(facecolor=colors[index], alpha=0.8, pad=0.5, linewidth=0))
    if title:
        ax.set_title(title, fontsize=9)
    return ax


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
                  ax=None, title: Optional[str] = None, ignore: int = 255, legend: bool = True):
    """A semantic label map ``[H, W]`` (0..C-1, ``ignore`` drawn black) in one colour per class,
    with a legend naming ``names[c]``; ``colors`` are C RGB triples in 0..255 (default: fixed
    distinct colours)."""
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
                   for c in range(len(names)) if (labels == c).any()]
        ax.legend(handles=handles, fontsize=6, loc="lower right", framealpha=0.7)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


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
                   cmap: str = "viridis", vmin=None, vmax=None, alpha: float = 0.65):
    """A per-location map [h, w] of one level, stretched over the image it came from."""
    ax = _axes(ax)
    picture = to_numpy_image(image)
    height, width = picture.shape[:2]
    ax.imshow(picture, interpolation="nearest")
    values = values.detach().cpu().float().numpy()
    h, w = values.shape
    ax.imshow(np.ma.masked_where(np.isnan(values), values), cmap=cmap, vmin=vmin, vmax=vmax,
              alpha=alpha, interpolation="nearest", extent=(-0.5, w * stride - 0.5, h * stride - 0.5, -0.5))
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
                    ax=None, title: Optional[str] = None):
    """An image with the detections scoring at least ``score_thresh``: ``detection`` holds
    ``boxes`` [D, 4], ``scores`` [D], ``labels`` [D] (category ids) and optionally ``masks``
    [D, 1, H, W] probabilities at the image's size; labels read "class score"."""
    keep = detection["scores"].detach().cpu() >= score_thresh
    labels = detection["labels"].detach().cpu()[keep].tolist()
    scores = detection["scores"].detach().cpu()[keep].tolist()
    texts = [f"{(names or {}).get(int(c), c)} {s:.2f}" for c, s in zip(labels, scores)]
    masks = detection.get("masks")
    masks = masks.detach().cpu()[keep][:, 0] if masks is not None else None  # [D', H, W]
    return draw_instances(image, masks, detection["boxes"].detach().cpu()[keep], texts, ax=ax,
                          title=title)


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


def jpeg_bytes(path, quality: int = 80) -> bytes:
    """A saved picture re-encoded as JPEG bytes, for embedding in a notebook: the noisy textures
    of the shapes images make PNGs of several hundred kB (``IPython.display.Image(data=...,
    format="jpeg")`` shows them)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
