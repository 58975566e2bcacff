"""The pictures' functions: ground truth beside a prediction, labels that do not hide each other,
legends and colour bars, and figures shown as JPEG.

Pictures are checked through the artists they leave on the axes (texts, patches, legends,
colour bars) and the pixels of the drawn image, never by comparing with saved pictures.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from blendmask_edu import plots, visualize as vis  # noqa: E402
from blendmask_edu.data.coco import CategoryMap  # noqa: E402

BLOB, SQUARE = 3, 7  # category ids, deliberately not 0..C-1
CATEGORIES = CategoryMap([{"id": BLOB, "name": "blob"}, {"id": SQUARE, "name": "square"}])
H = W = 64


def box_mask(x0, y0, x1, y1):
    mask = torch.zeros(H, W, dtype=torch.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def example():
    """An image with two things — a blob (index 0) and a square (index 1) — and a prediction of
    three: the square right (0.9), the blob called a square (0.6), and a low-scoring blob (0.1)."""
    image = torch.full((3, H, W), 0.5)
    masks = torch.stack([box_mask(4, 30, 24, 50), box_mask(36, 8, 60, 28)])
    target = {"masks": masks, "boxes": torch.tensor([[4., 30, 24, 50], [36, 8, 60, 28]]),
              "labels": torch.tensor([0, 1])}
    detection = {"boxes": torch.tensor([[36., 8, 60, 28], [4, 30, 24, 50], [5, 31, 24, 50]]),
                 "scores": torch.tensor([0.9, 0.6, 0.1]),
                 "labels": torch.tensor([SQUARE, SQUARE, BLOB]),
                 "masks": torch.stack([masks[1], masks[0], masks[0]])[:, None].float() * 0.8}
    return image, target, detection


def texts(ax):
    return [t.get_text() for t in ax.texts]


def box_colors(ax):
    """The edge colour (RGB) of each box drawn on ``ax``, in drawing order."""
    return [tuple(np.round(p.get_edgecolor()[:3], 4)) for p in ax.patches
            if isinstance(p, plt.Rectangle)]


def test_truth_beside_prediction_names_classes_and_keeps_scores_above_the_threshold(example):
    image, target, detection = example
    truth, prediction = vis.draw_truth_and_prediction(image, target, detection, CATEGORIES,
                                                      score_thresh=0.3, name="image 5")
    assert truth.figure is prediction.figure and truth is not prediction
    # contiguous target labels 0, 1 → category ids 3, 7 → names; detections by their ids
    assert sorted(texts(truth)) == ["blob", "square"]
    assert sorted(texts(prediction)) == ["square 0.60", "square 0.90"]  # 0.1 < 0.3 left out
    assert truth.get_title() == "image 5: ground truth, 2 things"
    assert prediction.get_title() == "prediction, 2 ≥ 0.3"


def test_truth_and_prediction_colour_each_instance_by_its_class(example):
    image, target, detection = example
    truth, prediction = vis.draw_truth_and_prediction(image, target, detection, CATEGORIES)
    blob, square = box_colors(truth)
    assert blob != square
    # both predictions say "square": both take the square's colour, the misnamed blob too
    assert box_colors(prediction) == [square, square]
    colors = {BLOB: (255, 0, 0), SQUARE: (0, 0, 255)}
    truth, _ = vis.draw_truth_and_prediction(image, target, detection, CATEGORIES, colors=colors,
                                             axes=plt.subplots(1, 2)[1])
    assert box_colors(truth) == [(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)]
    # the masks are tinted with the same colours: the blob's pixels lean to red
    pixels = truth.images[0].get_array()
    assert pixels[40, 10, 0] > 0.7 and pixels[40, 10, 2] < 0.3


def test_truth_and_prediction_take_an_empty_prediction_and_given_axes(example):
    image, target, _ = example
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
             "labels": torch.zeros(0, dtype=torch.int64)}
    fig, axes = plt.subplots(2, 1)
    returned = vis.draw_truth_and_prediction(image, target, empty, CATEGORIES, axes=axes)
    assert list(returned) == list(axes)
    assert texts(axes[1]) == [] and axes[1].get_title() == "prediction, 0 ≥ 0.3"


def extents(ax):
    ax.figure.canvas.draw()
    return [t.get_window_extent() for t in ax.texts]


def test_labels_of_boxes_in_the_same_place_do_not_overlap():
    fig, ax = plt.subplots(figsize=(3, 3))
    boxes = np.array([[20., 20, 44, 44]] * 3)
    vis.draw_instances(torch.zeros(3, H, W), boxes=boxes, labels=["first", "second", "third"],
                       ax=ax)
    first, second, third = extents(ax)
    assert not first.overlaps(second) and not first.overlaps(third)
    assert not second.overlaps(third)


def test_labels_of_many_duplicates_of_a_small_box_are_stacked_apart():
    fig, ax = plt.subplots(figsize=(3, 3))
    labels = [f"class {k} 0.{9 - k}" for k in range(7)]
    vis.draw_instances(torch.zeros(3, H, W), boxes=np.array([[30., 30, 34, 34]] * 7),
                       labels=labels, ax=ax)
    placed = extents(ax)
    assert len(placed) == 7
    assert not any(a.overlaps(b) for k, a in enumerate(placed) for b in placed[k + 1:])


def test_a_label_at_the_image_edge_goes_inside_the_image():
    fig, ax = plt.subplots(figsize=(3, 3))
    vis.draw_instances(torch.zeros(3, H, W), boxes=np.array([[40., 0, 64, 20]]),
                       labels=["a long label"], ax=ax)
    (label,) = extents(ax)
    frame = ax.get_window_extent()
    assert frame.x0 <= label.x0 and label.x1 <= frame.x1 + 1
    assert frame.y0 <= label.y0 and label.y1 <= frame.y1 + 1


def test_label_text_is_dark_on_light_colours_and_light_on_dark():
    _, ax = plt.subplots()
    labels = vis.place_labels(ax, np.array([[0., 10, 20, 30], [30, 10, 50, 30]]), ["a", "b"],
                              [(1.0, 1.0, 0.6), (0.1, 0.1, 0.5)])
    assert [t.get_color() for t in labels] == ["black", "white"]


def test_place_labels_works_on_a_figure_without_pyplot():
    fig = matplotlib.figure.Figure()
    ax = fig.subplots()
    ax.imshow(np.zeros((H, W)))
    (label,) = vis.place_labels(ax, np.array([[5., 5, 20, 20]]), ["x"], [(0.2, 0.4, 0.6)])
    assert label.get_text() == "x"


def legend_names(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_semantic_legend_names_the_classes_drawn_and_void():
    labels = np.zeros((8, 8), dtype=np.int64)
    labels[:, 4:] = 2
    labels[0, 0] = 255
    names = ["things", "sky", "ground"]
    ax = vis.draw_semantic(labels, names)
    assert legend_names(ax) == ["things", "ground", "void (255)"]
    ax = vis.draw_semantic(labels, names, legend="all", ax=plt.subplots()[1])
    assert legend_names(ax) == ["things", "sky", "ground", "void (255)"]
    ax = vis.draw_semantic(labels[:, 1:], names, legend="all", ax=plt.subplots()[1])
    assert legend_names(ax) == names  # no void pixel drawn, no void entry


def test_semantic_legend_outside_sits_right_of_the_map():
    _, ax = plt.subplots()
    vis.draw_semantic(np.zeros((8, 8), dtype=np.int64), ["things"], ax=ax, legend_loc="outside")
    ax.figure.canvas.draw()
    assert ax.get_legend().get_window_extent().x0 > ax.get_window_extent().x1


def test_level_map_colorbar_shows_the_scale_with_its_label():
    fig, ax = plt.subplots()
    values = torch.tensor([[0.2, float("nan")], [1.0, 0.5]])
    vis.draw_level_map(torch.zeros(3, 16, 16), values, 8, ax=ax, vmin=0, vmax=1,
                       colorbar="centerness")
    (bar,) = [other for other in fig.axes if other is not ax]
    assert bar.get_ylabel() == "centerness"
    assert bar.get_ylim() == (0.0, 1.0)
    plain, ax = plt.subplots()  # without colorbar=, nothing is added
    vis.draw_level_map(torch.zeros(3, 16, 16), values, 8, ax=ax)
    assert plain.axes == [ax]


def test_jpeg_bytes_of_a_figure_and_of_a_file(tmp_path):
    fig, ax = plt.subplots(figsize=(2, 1), dpi=50)
    ax.imshow(np.random.default_rng(0).random((16, 32, 3)))
    data = vis.jpeg_bytes(fig, quality=70)
    assert data[:2] == b"\xff\xd8"  # JPEG's start-of-image marker
    assert Image.open(io.BytesIO(data)).format == "JPEG"
    fig.savefig(tmp_path / "picture.png")
    assert Image.open(io.BytesIO(vis.jpeg_bytes(tmp_path / "picture.png"))).format == "JPEG"
    small = Image.open(io.BytesIO(vis.jpeg_bytes(fig, dpi=25))).size
    large = Image.open(io.BytesIO(vis.jpeg_bytes(fig, dpi=100))).size
    assert small[0] < large[0]


def test_show_jpeg_displays_a_jpeg_and_closes_the_figure(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    number = fig.number
    assert vis.show_jpeg(fig) is None
    (picture,) = shown
    assert picture.format == "jpeg" and picture.data[:2] == b"\xff\xd8"
    assert not plt.fignum_exists(number)


def test_charts_and_jpeg_are_the_same_functions_in_visualize_and_plots():
    for name in ("plot_counts", "plot_size_histogram", "jpeg_bytes", "show_jpeg"):
        assert getattr(vis, name) is getattr(plots, name)
