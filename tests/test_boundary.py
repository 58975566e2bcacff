"""Boundary IoU and boundary AP (evaluation.boundary): the band on hand-made masks whose bands are
counted by hand, against the definition's d iterations of a 0-padded 3 × 3 erosion, and boundary
AP against faster-coco-eval's iouType="boundary" on the same hand-made files."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from blendmask_edu.evaluation.boundary import (BoundaryCOCOeval, band_width, boundary_band,
                                               boundary_iou, boundary_rles)
from blendmask_edu.evaluation.coco import coco_ap

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _rect(h, w, y0, x0, y1, x1):
    """[h, w] bool, True on rows y0..y1-1 and columns x0..x1-1 (clipped to the image)."""
    m = np.zeros((h, w), bool)
    m[max(y0, 0):y1, max(x0, 0):x1] = True
    return m


def _disc(h, w, cy, cx, r):
    y, x = np.mgrid[:h, :w]
    return (y - cy) ** 2 + (x - cx) ** 2 <= r * r


def _erode_3x3_zero_padded(mask, times):
    """The definition, pixel by pixel: ``times`` erosions by a 3 × 3 square, each one treating
    the pixels outside the image as background."""
    m = mask.copy()
    for _ in range(times):
        p = np.pad(m, 1, constant_values=False)
        m = np.logical_and.reduce([p[dy:dy + m.shape[0], dx:dx + m.shape[1]]
                                   for dy in range(3) for dx in range(3)])
    return m


# ----------------------------------------------------------------------------- the band


def test_band_width_is_two_percent_of_the_diagonal_at_least_one():
    assert band_width(128, 128) == 4  # 0.02 · 181.0 = 3.62
    assert band_width(64, 64) == 2  # 0.02 · 90.5 = 1.81
    assert band_width(80, 96) == 2  # 0.02 · 124.96 = 2.499
    assert band_width(10, 10) == 1  # 0.02 · 14.1 = 0.28 → 0 → at least 1
    assert band_width(128, 128, dilation_ratio=0.05) == 9
    # Exact halves (diagonals of 75, 175, 425 px) go to the even neighbour, as Python's round in
    # the paper's reference code; faster-coco-eval's C++ rounds them down (1, 3, 8 px).
    assert [band_width(45, 60), band_width(105, 140), band_width(255, 340)] == [2, 4, 8]


def test_band_is_the_mask_minus_d_zero_padded_3x3_erosions():
    rng = np.random.default_rng(0)
    for h, w in [(64, 64), (37, 90), (128, 128), (5, 7)]:
        d = band_width(h, w)
        masks = np.stack([rng.random((h, w)) < p for p in (0.5, 0.8, 0.95, 1.0, 0.0)]
                         + [_disc(h, w, h // 2, 0, min(h, w) // 2)])
        expected = np.stack([m & ~_erode_3x3_zero_padded(m, d) for m in masks])
        np.testing.assert_array_equal(boundary_band(masks), expected)
        # the same on tensors, bool or uint8
        assert torch.equal(boundary_band(torch.from_numpy(masks)), torch.from_numpy(expected))
        assert torch.equal(boundary_band(torch.from_numpy(masks).to(torch.uint8)),
                           torch.from_numpy(expected))


def test_one_max_pool_agrees_only_when_the_complement_is_padded_with_one():
    """The max-pool form of the erosion: pool the complement with a (2d + 1)² kernel. With the
    outside padded as background (1) it is the definition; with max_pool2d's own padding (-inf)
    the outside counts as foreground and a mask touching the edge loses its edge band."""
    h, w = 64, 64
    d = band_width(h, w)
    mask = _rect(h, w, 20, 0, 40, 12)  # touches the left edge
    complement = torch.from_numpy(~mask).float()[None, None]
    padded_one = F.max_pool2d(F.pad(complement, (d,) * 4, value=1.0), 2 * d + 1, stride=1)
    own_padding = F.max_pool2d(complement, 2 * d + 1, stride=1, padding=d)
    definition = mask & ~_erode_3x3_zero_padded(mask, d)
    np.testing.assert_array_equal(mask & (padded_one[0, 0] > 0).numpy(), definition)
    wrong = mask & (own_padding[0, 0] > 0).numpy()
    assert definition[25, :d].all() and not wrong[25, :d].any()


def test_square_shifted_by_one_pixel():
    # 64 × 64 image: d = round(0.02 · sqrt(64² + 64²)) = round(1.81) = 2 px.
    h = w = 64
    a = _rect(h, w, 10, 10, 30, 30)  # a 20 × 20 square, rows and columns 10..29
    b = _rect(h, w, 10, 11, 30, 31)  # the same, one pixel to the right: columns 11..30
    band_a = boundary_band(a[None])[0]
    # Each band: the square minus its 16 × 16 inside, 400 − 256 = 144 px.
    assert band_a.sum() == 144 and (band_a == (a & ~_rect(h, w, 12, 12, 28, 28))).all()
    # Shared: rows 10, 11, 28, 29 over the 19 shared columns 11..29 (4 · 19 = 76), and on the
    # 16 rows between them the columns that are in both bands: {10, 11, 28, 29} ∩ {11, 12, 29,
    # 30} = {11, 29} (16 · 2 = 32). Intersection 108, union 144 + 144 − 108 = 180.
    assert boundary_iou(a, b) == pytest.approx(108 / 180)  # 0.6
    # mask IoU barely notices: 380 / 420 ≈ 0.90
    assert float(mask_utils.iou([_rle(a)], [_rle(b)], [0])[0, 0]) == pytest.approx(380 / 420)


def test_ring_band_is_an_outer_and_an_inner_band():
    h = w = 64  # d = 2
    ring = _rect(h, w, 10, 10, 40, 40) & ~_rect(h, w, 20, 20, 30, 30)  # 30² with a 10² hole
    outer = _rect(h, w, 10, 10, 40, 40) & ~_rect(h, w, 12, 12, 38, 38)  # 900 − 676 = 224 px
    inner = _rect(h, w, 18, 18, 32, 32) & ~_rect(h, w, 20, 20, 30, 30)  # 196 − 100 = 96 px
    band = boundary_band(ring[None])[0]
    np.testing.assert_array_equal(band, outer | inner)
    assert band.sum() == 224 + 96


def test_the_image_edge_is_a_contour():
    h = w = 64  # d = 2
    mask = _rect(h, w, 20, 0, 40, 10)  # rows 20..39, columns 0..9: on the left edge
    inside = _rect(h, w, 22, 2, 38, 8)  # 2 px in from every side, the image's edge included
    np.testing.assert_array_equal(boundary_band(mask[None])[0], mask & ~inside)
    full = np.ones((h, w), bool)  # the whole image: its band is the 2 px frame
    assert boundary_band(full[None])[0].sum() == 64 * 64 - 60 * 60


def test_boundary_iou_edge_cases_and_errors():
    a = _disc(50, 60, 25, 30, 12)
    assert boundary_iou(a, a) == 1.0
    assert boundary_iou(a, torch.from_numpy(np.roll(a, 30, axis=1))) == 0.0
    empty = np.zeros((50, 60), bool)
    assert boundary_iou(empty, empty) == 0.0
    with pytest.raises(ValueError, match="of one size"):
        boundary_iou(a, a[:, :-1])
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        boundary_band(a)
    with pytest.raises(TypeError, match="bool"):
        boundary_band(a[None].astype(np.float32))


def _rle(mask):
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def test_boundary_rles_band_each_size_apart():
    """Masks of two image sizes (one not square) in one list, in any order."""
    rng = np.random.default_rng(1)
    masks = [rng.random((37, 90)) < 0.9, _disc(64, 64, 30, 20, 15), rng.random((37, 90)) < 0.6]
    bands = boundary_rles([_rle(m) for m in masks])
    for m, band in zip(masks, bands):
        assert band["size"] == list(m.shape)
        np.testing.assert_array_equal(mask_utils.decode(band).astype(bool),
                                      boundary_band(m[None])[0])


# ----------------------------------------------------------------------------- boundary AP


S1, S2, S3 = (64, 64), (80, 96), (128, 128)


def _shift(mask, dy, dx):
    return np.roll(mask, (dy, dx), axis=(0, 1))


def _hand_made_files(tmp_path):
    """Ground truth and results files: three images (one 80 × 96), two categories, squares,
    discs (one cut by the image's edge), a ring, an L, a crowd region; detections shifted by
    0–3 px, grown, shrunk, duplicated, of the wrong class, inside the crowd; 13 scores."""
    def rle(mask):
        r = _rle(mask)
        return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode()}

    square, small_disc = _rect(*S1, 10, 10, 30, 30), _disc(*S1, 45, 45, 10)
    ring = _disc(*S1, 20, 48, 12) & ~_disc(*S1, 20, 48, 6)
    ell = _rect(*S2, 10, 10, 50, 25) | _rect(*S2, 35, 10, 50, 50)
    edge_disc, crowd = _disc(*S2, 40, 2, 15), _rect(*S2, 55, 55, 78, 94)
    big_disc, tiny = _disc(*S3, 64, 64, 40), _rect(*S3, 100, 20, 106, 26)
    objects = [(1, 1, square, 0), (1, 1, small_disc, 0), (1, 2, ring, 0), (2, 2, ell, 0),
               (2, 1, edge_disc, 0), (3, 1, big_disc, 0), (3, 2, tiny, 0), (2, 1, crowd, 1)]
    annotations = [{"id": k + 1, "image_id": i, "category_id": c, "iscrowd": crowd_flag,
                    "segmentation": rle(m), "area": int(m.sum()),
                    "bbox": [float(v) for v in mask_utils.toBbox(_rle(m))]}
                   for k, (i, c, m, crowd_flag) in enumerate(objects)]
    detections = [
        (1, 1, _shift(square, 0, 1), .9), (1, 1, _shift(square, 2, 2), .6), (1, 1, small_disc, .8),
        (1, 1, small_disc | _shift(small_disc, 1, 1), .3), (1, 2, _shift(ring, 1, 0), .7),
        (1, 2, _rect(*S1, 50, 5, 60, 20), .95), (2, 2, _shift(ell, 0, 3), .85),
        (2, 1, edge_disc, .75), (2, 1, _rect(*S2, 60, 60, 70, 80), .9),  # inside the crowd
        (2, 1, _rect(*S2, 45, 45, 65, 65), .4), (3, 1, _disc(*S3, 64, 64, 38), .65),
        (3, 2, _shift(tiny, 1, 1), .55), (3, 1, _disc(*S3, 66, 63, 41), .5)]
    results = [{"image_id": i, "category_id": c, "segmentation": rle(m), "score": s}
               for i, c, m, s in detections]
    images = [{"id": k + 1, "height": h, "width": w, "file_name": f"{k}.png"}
              for k, (h, w) in enumerate((S1, S2, S3))]
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    gt_path, results_path = tmp_path / "gt.json", tmp_path / "results.json"
    gt_path.write_text(json.dumps(gt))
    results_path.write_text(json.dumps(results))
    return gt_path, results_path


def _stats(evaluator):
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats)


def test_compute_iou_is_the_min_of_mask_and_boundary_iou_and_crowds_keep_mask_iou(tmp_path):
    gt_path, results_path = _hand_made_files(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(str(results_path))
    evaluator = BoundaryCOCOeval(gt, dt)
    _stats(evaluator)
    checked = 0
    for (image_id, cat_id), ious in evaluator.ious.items():
        if len(ious) == 0:
            continue
        gts = gt.loadAnns(gt.getAnnIds(imgIds=[image_id], catIds=[cat_id]))
        dts = sorted(dt.loadAnns(dt.getAnnIds(imgIds=[image_id], catIds=[cat_id])),
                     key=lambda d: -d["score"])
        for i, d in enumerate(dts):
            dm = mask_utils.decode(d["segmentation"]).astype(bool)
            for j, g in enumerate(gts):
                gm = mask_utils.decode(g["segmentation"]).astype(bool)
                mask_iou = (dm & gm).sum() / ((dm | gm).sum() if not g["iscrowd"] else dm.sum())
                expected = mask_iou if g["iscrowd"] else min(mask_iou, boundary_iou(dm, gm))
                assert ious[i, j] == pytest.approx(expected, abs=1e-12), (image_id, i, j)
                checked += 1
    assert checked >= 15


def test_boundary_ap_is_below_mask_ap_and_coco_ap_takes_it(tmp_path):
    gt_path, results_path = _hand_made_files(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
    results = json.loads(results_path.read_text())
    boundary, mask = coco_ap(gt, results, "boundary"), coco_ap(gt, results, "segm")
    assert 10.0 < boundary["AP"] < mask["AP"] - 20.0  # the 1–3 px offsets cost outlines most
    with pytest.raises(ValueError, match="iouType"):
        BoundaryCOCOeval(gt, gt, iouType="bbox")


def test_boundary_ap_equals_faster_coco_eval(tmp_path):
    """faster-coco-eval (iouType="boundary") takes min(mask IoU, boundary IoU) for non-crowd
    ground truth and the crowd mask IoU for crowds, with the band from the same 0-padded
    erosion by round(0.02 · diagonal) 3 × 3 steps: its 12 COCO numbers equal ours exactly
    (to float rounding) on these files, the crowd and the 80 × 96 image included. (No size
    here has a band width of an exact half, where the two round differently: band_width.)"""
    faster = pytest.importorskip(
        "faster_coco_eval", reason="faster-coco-eval is a test-only dependency (the dev extra)")
    gt_path, results_path = _hand_made_files(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ours = _stats(BoundaryCOCOeval(gt, gt.loadRes(str(results_path))))
        their_gt = faster.COCO(str(gt_path))
        theirs = _stats(faster.COCOeval_faster(their_gt, their_gt.loadRes(str(results_path)),
                                               "boundary"))
    np.testing.assert_allclose(ours[:12], theirs[:12], rtol=0, atol=1e-12)
    assert 0.1 < ours[0] < 0.5 and ours[1] > ours[2]  # neither trivial nor perfect
