"""Data transforms: scale jitter and horizontal flip, keeping image, boxes and masks together.

Introduced in ``notebooks/00_data.ipynb``.

A sample is ``(image, target)``:

* ``image``  (3, H, W) float32 in 0..1;
* ``target`` a dict with ``boxes`` (G, 4) float32 xyxy pixels (``x1 = last column + 1``),
  ``labels`` (G,) int64, ``masks`` (G, H, W) uint8, optionally ``sem_seg`` (H, W) int64 with
  255 = ignore, and any other keys (``image_id``, ...), which pass through untouched.

Every transform here takes and returns a sample in that form, so they chain freely. The recipe is
the paper's (docs/model.md §7, AdelaiDet's ``R_50_3x``): during training the shorter side is chosen
uniformly from {640, 672, ..., 800} with the longer side capped at 1333, and images are flipped
horizontally with p = 0.5; at test time the shorter side is 800, the longer at most 1333. The sizes
themselves live in the config (``InputConfig``), whose presets scale them down for small images,
e.g. the CPU preset. At test time only the image is resized (:func:`resize_for_test`, the one
test-time resize path), and the predictions are mapped back.

The resize is torchvision's (``transforms.v2`` kernels dispatched on ``tv_tensors`` ``Image``,
``BoundingBoxes`` and ``Mask``); the flip is written out on plain tensors, bit for bit what
``v2.RandomHorizontalFlip`` gives. On top of both, after every geometric step:

* boxes are recomputed as the tight box of each transformed mask (``boxes_from_masks``), so that
  boxes and masks agree exactly even after nearest-neighbour resizing;
* instances whose mask vanished (a tiny object scaled down) are removed (``drop_empty``) from
  every per-instance entry; extras such as ``area`` are filtered, not recomputed.

A target without ``masks`` (detection only) keeps torchvision's own moved boxes.

Differs from AdelaiDet/detectron2: there, masks are polygons and boxes are transformed
arithmetically, so a box can differ from its rasterised mask by about a pixel; here the
masks are bitmaps and the box is always the mask's tight box. Emptied instances are dropped
in both (detectron2's ``filter_empty_instances``).

Normalisation and padding are not done here: the model does both itself (DESIGN §4).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

import torch
import torchvision.transforms.v2.functional as F
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode

Target = Dict[str, Any]
Sample = Tuple[torch.Tensor, Target]

# Target keys that describe the whole image, never one instance, even when their first
# dimension happens to equal G.
IMAGE_LEVEL_KEYS = frozenset({"sem_seg", "orig_size", "size", "image_size"})


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy box of each mask, COCO convention (``x1 = last nonzero column + 1``).

    Args:
        masks: (G, H, W) any dtype; nonzero = inside.
    Returns:
        (G, 4) float32 boxes in pixels. An empty mask gets the box (0, 0, 0, 0).
    """
    _, H, W = masks.shape
    # `any` on the masks' own dtype, not on `masks.ne(0)`: for the uint8 masks of a dataset it
    # is about eight times faster on the CPU (it returns uint8 there, hence `.bool()`).
    cols = masks.any(dim=1).bool()  # (G, W): the column holds a mask pixel
    rows = masks.any(dim=2).bool()  # (G, H)
    xs = torch.arange(W, device=masks.device)
    ys = torch.arange(H, device=masks.device)
    # Start = smallest hit coordinate (a miss counts as W or H); end = largest hit + 1 (a miss, 0).
    x0 = torch.where(cols, xs, W).amin(dim=1)
    y0 = torch.where(rows, ys, H).amin(dim=1)
    x1 = torch.where(cols, xs + 1, 0).amax(dim=1)
    y1 = torch.where(rows, ys + 1, 0).amax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)  # (G, 4)
    empty = x1 == 0
    return boxes.masked_fill(empty[:, None], 0.0)


def drop_empty(target: Target) -> Target:
    """Remove instances whose mask has no pixel left, from every per-instance entry together.

    A per-instance entry is any tensor whose first dimension is G (the number of masks):
    ``boxes`` (G, 4), ``labels`` (G,), ``masks`` (G, H, W), and extras such as ``iscrowd`` or
    ``area``. Keys in ``IMAGE_LEVEL_KEYS`` (``sem_seg``, ...) and non-tensors (``image_id``)
    are left alone. Returns a new dict; the input is not modified.
    """
    masks = target["masks"]
    G = masks.shape[0]
    keep = masks.flatten(1).any(dim=1).bool()  # (G,): as in boxes_from_masks
    if bool(keep.all()):
        return dict(target)
    return {
        key: value[keep] if _is_per_instance(key, value, G) else value
        for key, value in target.items()
    }


def shortest_edge_size(height: int, width: int, short_size: int,
                       max_size: int) -> Tuple[int, int]:
    """Output (H', W') for an (H, W) image: shorter side ``short_size``, longer <= ``max_size``.

    detectron2's ``ResizeShortestEdge.get_output_shape``: scale the shorter side to
    ``short_size``; if the longer side would then exceed ``max_size``, scale both down so the
    longer side is ``max_size`` (the shorter side then ends below ``short_size``); round half up.
    """
    scale = short_size / min(height, width)
    new_h, new_w = height * scale, width * scale
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_for_test(image: torch.Tensor, short_size: int,
                    max_size: int) -> Tuple[torch.Tensor, Tuple[float, float]]:
    """The test-time resize of an image alone: (3, H, W) -> ((3, H', W'), (scale_x, scale_y)).

    ``(H', W')`` is ``shortest_edge_size``'s, the image resized bilinearly with antialiasing as
    in ``ResizeShortestEdge``; the scales ``W'/W`` and ``H'/H`` map predictions back to the
    original pixels (a box divided by them). An image already at that size is returned as is.
    """
    height, width = image.shape[-2:]
    new_h, new_w = shortest_edge_size(height, width, short_size, max_size)
    if (new_h, new_w) == (height, width):
        return image, (1.0, 1.0)
    resized = F.resize(image, [new_h, new_w], interpolation=InterpolationMode.BILINEAR,
                       antialias=True)
    return resized, (new_w / width, new_h / height)


class ResizeShortestEdge:
    """Resize to a shorter side drawn uniformly from ``short_sizes``, the longer <= ``max_size``.

    ``(image (3, H, W), target) -> (image (3, H', W'), target)`` with ``(H', W')`` from
    ``shortest_edge_size``. The image is resized bilinearly with antialiasing, ``masks`` and
    ``sem_seg`` by nearest neighbour (pixel-centre "nearest-exact", like PIL's nearest used by
    detectron2; torchvision's default for masks, legacy "nearest", shifts masks by up to half
    an output pixel against the image when downscaling). Boxes are then the masks' tight boxes.
    The size is drawn from torch's global generator, so ``torch.manual_seed`` fixes it.

    Why not ``v2.RandomShortestSize``: same idea, but it truncates instead of rounding, so the
    shorter side can miss the requested size (539x640 asked for 800 gives 799x949, not
    detectron2's 800x950), and it resizes masks with legacy nearest.
    """

    def __init__(self, short_sizes: Union[int, Sequence[int]], max_size: int):
        self.short_sizes = (short_sizes,) if isinstance(short_sizes, int) else tuple(short_sizes)
        if not self.short_sizes or min(self.short_sizes) < 1 or max_size < 1:
            raise ValueError(f"need short sizes >= 1 and max_size >= 1, "
                             f"got {short_sizes} and {max_size}")
        self.max_size = max_size

    def __call__(self, image: torch.Tensor, target: Target) -> Sample:
        index = int(torch.randint(len(self.short_sizes), ())) if len(self.short_sizes) > 1 else 0
        height, width = image.shape[-2:]
        size = list(shortest_edge_size(height, width, self.short_sizes[index], self.max_size))
        if size == [height, width]:  # nothing to resize (the shapes set at 128 px)
            return _finish(image, target)
        image, target = _wrap(image, target)
        image = F.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        target = {key: _resize(value, size) for key, value in target.items()}
        return _finish(image, target)

    def __repr__(self) -> str:
        return f"ResizeShortestEdge(short_sizes={self.short_sizes}, max_size={self.max_size})"


class RandomHorizontalFlip:
    """Flip image, boxes, masks and ``sem_seg`` left-right together with probability ``p``.

    ``(image (3, H, W), target) -> (image (3, H, W), target)``: a box ``x0..x1`` becomes
    ``W - x1 .. W - x0``, then boxes are re-tightened to the flipped masks. Draws from torch's
    global generator exactly as torchvision's ``v2.RandomHorizontalFlip`` does (one
    ``torch.rand(1)``, flip when it is below ``p``), and gives the same sample as it, bit for bit
    (``tests/test_transforms.py``), without wrapping every tensor into ``tv_tensors`` first:
    the flip is three ``Tensor.flip`` calls and a subtraction, where the wrapping took most of an
    item's time on the shapes set (``benchmarks/README.md``).
    """

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: torch.Tensor, target: Target) -> Sample:
        _check_sizes(image, target)
        if torch.rand(1) >= self.p:
            return _finish(image, target)
        width = image.shape[-1]
        flipped = dict(target)
        for key in ("masks", "sem_seg"):
            if key in flipped:
                flipped[key] = flipped[key].flip(-1)
        if "boxes" in flipped:
            x0, y0, x1, y1 = flipped["boxes"].reshape(-1, 4).unbind(1)
            flipped["boxes"] = torch.stack([width - x1, y0, width - x0, y1], dim=1)
        return _finish(image.flip(-1), flipped)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply sample transforms in order: ``(image, target) -> (image, target)``."""

    def __init__(self, transforms: Sequence[Callable[[torch.Tensor, Target], Sample]]):
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: Target) -> Sample:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        inner = ",\n    ".join(repr(t) for t in self.transforms)
        return f"Compose([\n    {inner},\n])"


def build_train_transforms(short_sizes: Union[int, Sequence[int]], max_size: int,
                           flip_prob: float = 0.5) -> Compose:
    """Training pipeline: shorter side drawn from ``short_sizes`` (longer <= ``max_size``), flip.

    The paper: ``build_train_transforms((640, 672, ..., 800), 1333, 0.5)``, the sizes of the
    config's ``InputConfig``. Returns a callable
    ``(image (3, H, W), target) -> (image (3, H', W'), target)``.
    """
    return Compose([ResizeShortestEdge(short_sizes, max_size), RandomHorizontalFlip(flip_prob)])


def collate(batch: Sequence[Sample]) -> Tuple[List[torch.Tensor], List[Target]]:
    """``DataLoader`` collate: N samples -> (N images (3, H_i, W_i), N targets), as lists.

    torchvision's detection convention: images of different sizes are not stacked; the model
    normalises, pads to a multiple of 32 and batches them itself.
    """
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets


# --- wrapping into tv_tensors and back ---------------------------------------------------


def _is_per_instance(key: str, value: Any, num_instances: int) -> bool:
    return (isinstance(value, torch.Tensor) and value.ndim >= 1
            and value.shape[0] == num_instances and key not in IMAGE_LEVEL_KEYS)


def _wrap(image: torch.Tensor, target: Target) -> Tuple[tv_tensors.Image, Target]:
    """Tag the tensors with their tv_tensors type so that v2 kernels know how to move them."""
    height, width = _check_sizes(image, target)
    wrapped = dict(target)
    for key in ("masks", "sem_seg"):
        if key in wrapped:
            wrapped[key] = tv_tensors.Mask(wrapped[key])
    if "boxes" in wrapped:
        wrapped["boxes"] = tv_tensors.BoundingBoxes(wrapped["boxes"], format="XYXY",
                                                    canvas_size=(height, width))
    return tv_tensors.Image(image), wrapped


def _resize(value: Any, size: List[int]) -> Any:
    if isinstance(value, tv_tensors.Mask):
        return F.resize(value, size, interpolation=InterpolationMode.NEAREST_EXACT)
    if isinstance(value, tv_tensors.BoundingBoxes):
        return F.resize(value, size)
    return value


def _check_sizes(image: torch.Tensor, target: Target) -> Tuple[int, int]:
    """(H, W) of the image; ValueError when ``masks`` or ``sem_seg`` has another size."""
    height, width = image.shape[-2:]
    for key in ("masks", "sem_seg"):
        if key in target and tuple(target[key].shape[-2:]) != (height, width):
            raise ValueError(f"target[{key!r}] has size {tuple(target[key].shape[-2:])}, "
                             f"the image {(height, width)}")
    return height, width


def _finish(image: torch.Tensor, target: Target) -> Sample:
    """Back to plain tensors; boxes = tight boxes of the masks; drop emptied instances."""
    plain = {key: value.as_subclass(torch.Tensor) if isinstance(value, tv_tensors.TVTensor)
             else value for key, value in target.items()}
    if "masks" in plain:
        plain["boxes"] = boxes_from_masks(plain["masks"])
        plain = drop_empty(plain)
    return image.as_subclass(torch.Tensor), plain
