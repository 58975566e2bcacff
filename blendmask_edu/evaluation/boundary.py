"""Boundary IoU and boundary AP (Cheng et al., "Boundary IoU: Improving Object-Centric Image
Segmentation Evaluation", CVPR 2021).

Why: mask IoU is dominated by a large object's interior, so a mask whose outline is off by a few
pixels still scores high; BlendMask's claim is sharper outlines than Mask R-CNN's 28 × 28 masks,
which mask AP barely sees. Boundary IoU only looks at a band along each outline.

Definitions, for a binary mask of an H × W image:

- the band width ``d = max(1, round(dilation_ratio · sqrt(H² + W²)))``, 0.02 of the diagonal
  (4 px at 128 × 128, :func:`band_width`);
- the mask's boundary band: its pixels within ``d`` px of its contour, that is the mask minus its
  erosion by ``d`` iterations of a 3 × 3 square, pixels outside the image counting as background
  (so where a mask touches the image's edge, that edge is part of its contour)
  (:func:`boundary_band`);
- the boundary IoU of two masks: ``|band_a ∩ band_b| / |band_a ∪ band_b|`` (:func:`boundary_iou`);
- boundary AP: COCO's AP with ``min(mask IoU, boundary IoU)`` as the IoU that matches a detection
  to a ground-truth object (:class:`BoundaryCOCOeval`); the min keeps a detection from scoring on
  its outline alone while missing the interior (a thin ring around the right object). A crowd
  ground truth keeps COCO's mask IoU for crowds (intersection over the detection's area).

Bands are computed with torch, a batch of masks at a time, from the RLEs pycocotools holds, and
encoded back to RLE so that pycocotools' ``maskUtils.iou`` computes the overlaps. Boundary AP
equals faster-coco-eval's ``iouType="boundary"`` exactly (``tests/test_boundary.py``), except on
image sizes whose band width is an exact half, which the two round differently
(:func:`band_width`).
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, List, Sequence, Union

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

DILATION_RATIO = 0.02  # the paper's band width: 2 % of the image diagonal
BATCH = 256  # masks eroded at a time: 256 × 136² bool ≈ 5 MB at 128 px

ArrayLike = Union[np.ndarray, torch.Tensor]


def band_width(height: int, width: int, dilation_ratio: float = DILATION_RATIO) -> int:
    """The band width ``d`` in px (int ≥ 1) for an image of ``height`` × ``width`` px.

    Rounded with Python's ``round`` (an exact half to the even neighbour), as the paper's
    reference code does. An exact half needs a whole diagonal of 25, 75, 125 … px (15 × 20,
    45 × 60, 105 × 140 images): there faster-coco-eval's C++ rounds down instead (45 × 60: 1 px
    there, 2 here; 105 × 140: 3 there, 4 here), and only there do the two differ."""
    return max(1, int(round(dilation_ratio * math.hypot(height, width))))


def _erode(masks: torch.Tensor, d: int) -> torch.Tensor:
    """Erosion of bool masks [N, H, W] by a (2d + 1)² square, outside the image being
    background; returns [N, H, W] bool.

    One square is ``d`` 3 × 3 erosions in a row (the sum of d 3 × 3 squares is the (2d + 1)²
    one), and a square's minimum is a row minimum then a column minimum. Each is an AND of
    2d + 1 shifted views of the zero-padded masks: on bool tensors this is ~30× faster than
    ``max_pool2d`` on the float complement, whose own -inf padding would moreover make the
    outside foreground (the complement has to be padded with 1 by hand there).
    """
    n, h, w = masks.shape
    padded = torch.zeros((n, h + 2 * d, w + 2 * d), dtype=torch.bool)
    padded[:, d:d + h, d:d + w] = masks  # the outside is background: the edge erodes
    rows = padded[:, :, :w].clone()
    for k in range(1, 2 * d + 1):
        rows &= padded[:, :, k:k + w]  # [N, H + 2d, W]: all 2d + 1 pixels of the row
    eroded = rows[:, :h].clone()
    for k in range(1, 2 * d + 1):
        eroded &= rows[:, k:k + h]  # [N, H, W]: all pixels of the square
    return eroded


def boundary_band(masks: ArrayLike, dilation_ratio: float = DILATION_RATIO) -> ArrayLike:
    """The boundary bands of binary masks.

    Takes masks [N, H, W] (bool, or 0/1 integers; a torch tensor or a numpy array) of one
    H × W image size; returns [N, H, W] bool of the same kind (tensor or array): each mask minus
    its erosion by ``band_width(H, W, dilation_ratio)`` 3 × 3 steps, the image's edge counting as
    contour. Computed ``BATCH`` masks at a time.
    """
    is_numpy = isinstance(masks, np.ndarray)
    tensor = torch.from_numpy(np.ascontiguousarray(masks)) if is_numpy else masks
    if tensor.dim() != 3:
        raise ValueError(f"boundary_band takes masks [N, H, W], got shape {tuple(tensor.shape)}")
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex:
        raise TypeError(f"boundary_band takes bool or 0/1 integer masks, got {tensor.dtype}")
    d = band_width(tensor.shape[1], tensor.shape[2], dilation_ratio)
    binary = tensor != 0
    bands = torch.empty_like(binary)
    for start in range(0, binary.shape[0], BATCH):
        chunk = binary[start:start + BATCH]
        bands[start:start + BATCH] = chunk & ~_erode(chunk, d)
    return bands.numpy() if is_numpy else bands


def boundary_iou(a: ArrayLike, b: ArrayLike, dilation_ratio: float = DILATION_RATIO) -> float:
    """Boundary IoU of two binary masks [H, W] (bool or 0/1, tensor or array) of the same image:
    |band_a ∩ band_b| / |band_a ∪ band_b| as a float; 0.0 when both masks are empty (as
    pycocotools' mask IoU)."""
    a, b = (torch.as_tensor(np.asarray(m)) if isinstance(m, np.ndarray) else m for m in (a, b))
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"boundary_iou takes two masks [H, W] of one size, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    bands = boundary_band(torch.stack([a != 0, b != 0]), dilation_ratio)
    union = int((bands[0] | bands[1]).sum())
    return int((bands[0] & bands[1]).sum()) / union if union else 0.0


def _decode(rles: Sequence[Dict]) -> np.ndarray:
    """pycocotools' decode of RLEs of one size → [H, W, n] uint8 in Fortran order."""
    with warnings.catch_warnings():
        # pycocotools' RLE object predates numpy 2's __array__(copy=...) and numpy warns on
        # every call; the warning is about pycocotools, not about this module's use of it
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        return mask_utils.decode(list(rles))


def boundary_rles(rles: Sequence[Dict], dilation_ratio: float = DILATION_RATIO) -> List[Dict]:
    """The boundary bands of COCO RLEs (dicts with ``size`` [H, W] and ``counts``), as RLEs in
    the same order; masks of one size are decoded and banded together, ``BATCH`` at a time."""
    out: List[Dict] = [None] * len(rles)
    by_size: Dict[tuple, List[int]] = {}
    for i, rle in enumerate(rles):
        by_size.setdefault(tuple(rle["size"]), []).append(i)
    for indices in by_size.values():
        for start in range(0, len(indices), BATCH):
            chunk = indices[start:start + BATCH]
            decoded = _decode([rles[i] for i in chunk])  # [H, W, n] Fortran order
            # [H, W, n] in Fortran order is [n, W, H] in C order: banded as it is (the square
            # kernel does not care which axis is which), handed back without a copy
            bands = boundary_band(decoded.transpose(2, 1, 0), dilation_ratio)  # [n, W, H]
            for i, rle in zip(chunk, mask_utils.encode(
                    np.ascontiguousarray(bands, dtype=np.uint8).transpose(2, 1, 0))):
                out[i] = rle
    return out


class BoundaryCOCOeval(COCOeval):
    """pycocotools' ``COCOeval`` for masks (iouType ``"segm"``) whose matching IoU is
    min(mask IoU, boundary IoU): boundary AP. Used like ``COCOeval`` (``evaluate``,
    ``accumulate``, ``summarize``, ``stats``); ``dilation_ratio`` sets the band width.

    The bands of every ground-truth and detected mask under evaluation are computed once, in
    ``_prepare`` (after pycocotools has turned every segmentation into an RLE), and kept by
    annotation id; crowd ground truth gets none, as its IoU stays pycocotools' crowd mask IoU.
    """

    def __init__(self, cocoGt=None, cocoDt=None, iouType: str = "segm",
                 dilation_ratio: float = DILATION_RATIO):
        if iouType != "segm":
            raise ValueError(f"boundary AP compares masks: iouType must be 'segm', got {iouType!r}")
        super().__init__(cocoGt, cocoDt, iouType)
        self.dilation_ratio = dilation_ratio
        self.bands: Dict[str, Dict[int, Dict]] = {"gt": {}, "dt": {}}

    def _prepare(self):
        super()._prepare()
        gts = [g for anns in self._gts.values() for g in anns if not g.get("iscrowd", 0)]
        dts = [d for anns in self._dts.values() for d in anns]
        for kind, anns in (("gt", gts), ("dt", dts)):
            rles = boundary_rles([a["segmentation"] for a in anns], self.dilation_ratio)
            self.bands[kind] = {a["id"]: rle for a, rle in zip(anns, rles)}

    def _instances(self, imgId, catId):
        """(ground truth, detections) lists of one image and category, or of all categories
        when ``params.useCats`` is 0, as pycocotools pairs them."""
        p = self.params
        cats = [catId] if p.useCats else p.catIds
        return ([g for c in cats for g in self._gts[imgId, c]],
                [d for c in cats for d in self._dts[imgId, c]])

    def computeIoU(self, imgId, catId):
        """[D, G] min(mask IoU, boundary IoU) of one image's detections (by falling score, at most
        ``maxDets[-1]``) and ground truth; crowd columns keep the crowd mask IoU; [] when either
        side is empty (pycocotools' convention)."""
        gts, dts = self._instances(imgId, catId)
        if not gts or not dts:
            return []
        order = np.argsort([-d["score"] for d in dts], kind="mergesort")  # as pycocotools
        dts = [dts[i] for i in order[:self.params.maxDets[-1]]]
        crowd = [int(g.get("iscrowd", 0)) for g in gts]
        ious = np.asarray(mask_utils.iou([d["segmentation"] for d in dts],
                                         [g["segmentation"] for g in gts], crowd))
        plain = [j for j, c in enumerate(crowd) if not c]
        if plain:
            band_ious = mask_utils.iou([self.bands["dt"][d["id"]] for d in dts],
                                       [self.bands["gt"][gts[j]["id"]] for j in plain],
                                       [0] * len(plain))
            ious[:, plain] = np.minimum(ious[:, plain], band_ious)
        return ious
