"""A small dataset in COCO 2017's layout with real COCO's properties (the ``data coco-like`` command).

No COCO file can be downloaded where this package is built and tested, yet the COCO path must
be exercised end to end. :func:`write_coco_like` draws a few images per split and writes them
exactly as COCO 2017 is laid out and encoded::

    ROOT/{split}/000000xxxxxx.jpg                   JPEG images, 12-digit ids
    ROOT/annotations/instances_{split}.json         80 thing categories, polygons + crowd RLE
    ROOT/annotations/panoptic_{split}.json          133 categories (80 things + 53 stuff)
    ROOT/annotations/panoptic_{split}/*.png         segment id = R + 256·G + 256²·B, void = 0

with COCO's properties, each present in every split (``images_per_split`` ≥ 6):
- the category ids and names of COCO (things 1–90 with gaps, stuff 92–200; see
  :mod:`~blendmask_edu.data.coco_categories`); annotations use ids from both ends (1, 37, 38,
  84, 90; stuff 92 and 200);
- non-crowd objects as polygons (2-decimal coordinates); one object in two polygon parts (a
  car cut by a pole); a crowd region (``iscrowd`` 1, category person) as uncompressed RLE
  (``counts`` a list) whose ``area`` is not its pixel count, as COCO's crowd areas are not, and
  the same region in the panoptic PNG as a segment with ``iscrowd`` 1;
- JPEGs in RGB, grayscale (mode L) and CMYK; one with an EXIF orientation tag 6 (display
  rotated 90°) whose JSON ``width``/``height`` are the stored pixels, as in COCO;
- an image without annotations; very small objects (1×1, 2×2, 3×3 px) and 1-px slivers
  (12 × 1 and 1 × 12 px); landscape, portrait and square images;
- void pixels (id 0) in every panoptic PNG: a band along the horizon between two stuff regions.

Objects are flat-coloured polygons (disks, triangles, rectangles, stars) over textured stuff, so
a model can see them; things never overlap, so each instance mask is also its panoptic segment.
Deterministic: image ``i`` of ``split`` is drawn from ``SeedSequence([seed, crc32(split), i])``,
so the same arguments give the same pixels and JSON (and the same JPEG bytes with the same
Pillow build). About 0.15 s per 640 px image on one CPU core.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from blendmask_edu.fileio import write_json

from .coco_categories import COCO_PANOPTIC_CATEGORIES, COCO_THING_CATEGORIES
from .files import decode_segmentation, id_to_rgb

# The special image of each property, in index order; images after these are "plain".
SCENES = ("crowd", "grayscale", "cmyk", "exif", "empty", "tiny")
ASPECTS = {"crowd": (1.0, 0.75), "grayscale": (0.75, 1.0), "cmyk": (1.0, 1.0), "exif": (1.0, 0.7),
           "empty": (0.68, 1.0), "tiny": (1.0, 0.75)}  # (width, height) / max_side
MIN_IMAGES, MIN_SIDE = len(SCENES), 64  # per split; px
PLAIN_ASPECTS = ((1.0, 0.75), (0.75, 1.0), (1.0, 1.0), (1.0, 0.5625), (0.8, 1.0))
SHAPE_CATEGORY = {"disk": 37, "triangle": 38, "rectangle": 84, "star": 1}  # sports ball, kite, book, person
PERSON, CAR, SPORTS_BALL, TOOTHBRUSH = 1, 3, 37, 90
BANNER, FENCE, UPPER, LOWER = 92, 185, (187, 199, 184), (193, 149, 155, 118, 200)
RUG = 200
_COLOUR = {c["id"]: np.array(c["color"], float) for c in COCO_PANOPTIC_CATEGORIES}


def _polygon(points) -> list:
    """(P, 2) points → one COCO polygon [x0, y0, x1, y1, ...] with 2-decimal coordinates."""
    return [round(float(v), 2) for v in np.asarray(points, float).ravel()]


def _shape(rng, kind: str, cx: float, cy: float, r: float) -> list:
    """One COCO polygon of ``kind`` inscribed in the circle (cx, cy, r)."""
    turn = rng.uniform(0, 2 * np.pi)
    if kind == "disk":
        angles, radii = turn + np.arange(24) * (2 * np.pi / 24), np.full(24, r)
    elif kind == "triangle":
        angles, radii = turn + np.arange(3) * (2 * np.pi / 3) + rng.uniform(-0.3, 0.3, 3), np.full(3, r)
    elif kind == "rectangle":
        half = rng.uniform(0.4, 0.7)
        angles, radii = turn + np.array([half, np.pi - half, np.pi + half, -half]), np.full(4, r)
    else:  # a five-pointed star
        angles = turn + np.arange(10) * (np.pi / 5)
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    return _polygon(np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1))


def _box(x0: int, y0: int, x1: int, y1: int) -> list:
    """The polygon of the pixel rectangle columns x0..x1-1, rows y0..y1-1 (exact when rasterised)."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


class _Canvas:
    """One image being drawn: pixels, panoptic segments, instance annotations."""

    def __init__(self, rng, width: int, height: int):
        self.rng, self.w, self.h = rng, width, height
        self.image = np.zeros((height, width, 3), float)
        self.segments = np.zeros((height, width), np.int64)  # panoptic ids; 0 = void
        self.info: list = []  # (segment id, category id, iscrowd)
        self.instances: list = []  # (category id, segmentation, iscrowd, area or None)
        self.occupied = np.zeros((height, width), bool)  # things and crowds, for placement
        self._ids: set = set()

    def _new_id(self) -> int:
        while True:  # random ids use all three PNG channels, like COCO's
            seg_id = int(self.rng.integers(1, 2 ** 24))
            if seg_id not in self._ids:
                self._ids.add(seg_id)
                return seg_id

    def stuff(self, category: int, mask: np.ndarray) -> None:
        """Paint ``mask`` [H, W] bool as textured stuff of ``category`` (things stay on top)."""
        mask = mask & ~self.occupied
        if not mask.any():
            return
        rows = np.nonzero(mask)[0]  # in the order of ``image[mask]``
        shade = (rows / max(self.h - 1, 1) * 50 - 25) * self.rng.choice([-1, 1])  # a vertical gradient
        self.image[mask] = 0.6 * _COLOUR[category] + 50 + shade[:, None] + self.rng.normal(0, 7, (len(rows), 3))
        seg_id = self._new_id()
        self.segments[mask] = seg_id
        self.info.append((seg_id, category, 0))

    def free(self, mask: np.ndarray, margin: int = 2) -> bool:
        """Whether ``mask`` stays ``margin`` px clear of everything placed so far."""
        grown = self.occupied.copy()
        for axis in (0, 1):
            for step in range(1, margin + 1):
                grown |= np.roll(self.occupied, step, axis) | np.roll(self.occupied, -step, axis)
        return bool(mask.any()) and not (mask & grown).any()

    def thing(self, category: int, polygons: list, crowd_area=None, rle=None) -> np.ndarray:
        """Paint one thing (flat colour) from its polygons, or a crowd from ``rle``; annotate it."""
        segm = rle if rle is not None else polygons
        mask = decode_segmentation(segm, self.h, self.w).astype(bool)
        colour = self.rng.permutation([self.rng.integers(190, 256), self.rng.integers(0, 60),
                                       self.rng.integers(0, 256)])
        self.image[mask] = colour
        self.occupied |= mask
        seg_id = self._new_id()
        self.segments[mask] = seg_id
        self.info.append((seg_id, category, int(rle is not None)))
        self.instances.append((category, segm, int(rle is not None), crowd_area))
        return mask

    def place(self, kind: str, size_range=(0.12, 0.42), tries: int = 15) -> bool:
        """A random shape of ``kind`` at a free spot; False if none was found."""
        side = min(self.w, self.h)
        for _ in range(tries):
            r = max(4.0, float(np.exp(self.rng.uniform(*np.log(size_range)))) * side / 2)
            cx, cy = self.rng.uniform(r + 1, self.w - r - 1), self.rng.uniform(r + 1, self.h - r - 1)
            polygon = _shape(self.rng, kind, cx, cy, r)
            if self.free(decode_segmentation([polygon], self.h, self.w).astype(bool)):
                self.thing(SHAPE_CATEGORY[kind], [polygon])
                return True
        return False


def _background(canvas: _Canvas, upper: int, lower: int) -> np.ndarray:
    """Two stuff regions split by an uneven horizon, with a void band (id 0) along it."""
    rng, h, w = canvas.rng, canvas.h, canvas.w
    x = np.arange(w)
    horizon = h * rng.uniform(0.35, 0.55) + h * 0.04 * np.sin(x / w * rng.uniform(2, 6) + rng.uniform(0, 6))
    rows = np.arange(h)[:, None] + 0.5
    void = np.abs(rows - horizon[None, :]) < 1.5
    canvas.stuff(upper, (rows < horizon[None, :]) & ~void)
    canvas.stuff(lower, (rows >= horizon[None, :]) & ~void)
    canvas.image[void] = 35.0
    return void


def _draw_scene(canvas: _Canvas, scene: str) -> None:
    rng, h, w = canvas.rng, canvas.h, canvas.w
    rows, cols = np.mgrid[0:h, 0:w]
    if scene == "crowd":  # a crowd of people (uncompressed RLE, area not its pixel count)
        crowd = np.zeros((h, w), bool)
        x0, y0 = rng.uniform(0.05, 0.45) * w, rng.uniform(0.6, 0.7) * h
        for _ in range(int(rng.integers(6, 10))):
            cx, cy = x0 + rng.uniform(0, 0.4) * w, y0 + rng.uniform(0, 0.15) * h
            ax, ay = rng.uniform(0.03, 0.06) * w, rng.uniform(0.08, 0.14) * h
            crowd |= ((cols - cx) / ax) ** 2 + ((rows - cy) / ay) ** 2 <= 1
        crowd &= ~canvas.occupied  # off the void band
        rle = _uncompressed_rle(crowd)
        canvas.thing(PERSON, [], crowd_area=round(float(crowd.sum()) * rng.uniform(0.75, 0.9), 2), rle=rle)
    if scene == "grayscale" or (scene == "plain" and rng.random() < 0.3):  # a car cut by a pole
        for _ in range(15):
            cw, ch = int(rng.uniform(0.3, 0.5) * w), int(rng.uniform(0.12, 0.2) * h)
            x0, y0 = int(rng.integers(1, w - cw - 1)), int(rng.integers(1, h - ch - 1))
            p0 = x0 + cw // 2 - max(1, w // 80)
            p1 = x0 + cw // 2 + max(1, w // 80)
            parts = [_box(x0, y0, p0, y0 + ch), _box(p1, y0, x0 + cw, y0 + ch)]
            pole = (cols >= p0) & (cols < p1)
            if canvas.free(decode_segmentation([_box(x0, y0, x0 + cw, y0 + ch)], h, w).astype(bool)):
                canvas.thing(CAR, parts)
                canvas.stuff(FENCE, pole)
                canvas.occupied |= pole
                break
    if scene == "tiny":  # 1×1, 2×2, 3×3 px balls and two 1-px slivers (toothbrushes)
        length = max(12, h // 12)
        for category, (dx, dy) in [(SPORTS_BALL, (1, 1)), (SPORTS_BALL, (2, 2)), (SPORTS_BALL, (3, 3)),
                                   (TOOTHBRUSH, (1, length)), (TOOTHBRUSH, (length, 1))]:
            for _ in range(30):
                x0, y0 = int(rng.integers(2, w - dx - 2)), int(rng.integers(2, h - dy - 2))
                polygon = _box(x0, y0, x0 + dx, y0 + dy)
                if canvas.free(decode_segmentation([polygon], h, w).astype(bool)):
                    canvas.thing(category, [polygon])
                    break
    count = {"empty": 0, "tiny": 1, "exif": 2, "crowd": int(rng.integers(1, 3))}.get(scene, int(rng.integers(2, 5)))
    kinds = list(SHAPE_CATEGORY)
    for _ in range(count):
        canvas.place(kinds[int(rng.integers(len(kinds)))], (0.3, 0.5) if scene == "exif" else (0.12, 0.42))


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a bool mask [H, W]: column-major run lengths, zeros first."""
    flat = np.asfortranarray(mask).ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return {"size": [int(mask.shape[0]), int(mask.shape[1])],
            "counts": ([0] if flat[0] else []) + [int(c) for c in counts]}


def _save_jpeg(pixels: np.ndarray, path: Path, scene: str) -> None:
    image = Image.fromarray(pixels)
    options = {"format": "JPEG", "quality": 90}
    if scene == "grayscale":
        image = image.convert("L")
    elif scene == "cmyk":
        image = image.convert("CMYK")
    elif scene == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: the viewer turns it 90° clockwise; COCO's JSON does not
        options["exif"] = exif
    image.save(path, **options)


def _annotations(canvas: _Canvas, image_id: int) -> tuple:
    """(instance annotations, panoptic segments_info) of a drawn canvas."""
    annotations = []
    for k, (category, segm, crowd, area) in enumerate(canvas.instances):
        rle = mask_utils.frPyObjects(segm, canvas.h, canvas.w)
        rle = rle if crowd else mask_utils.merge(rle)
        annotations.append({
            "id": (900_000_000_000 if crowd else 0) + image_id * 100 + k + 1, "image_id": image_id,
            "category_id": category, "iscrowd": crowd, "segmentation": segm,
            "area": area if crowd else float(mask_utils.area(rle)),
            "bbox": [round(float(v), 2) for v in mask_utils.toBbox(rle)]})
    uniq, counts = np.unique(canvas.segments, return_counts=True)
    pixels = dict(zip(uniq.tolist(), counts.tolist()))
    segments_info = []
    for seg_id, category, crowd in canvas.info:
        if seg_id not in pixels:  # stuff wholly covered by things
            continue
        ys, xs = np.nonzero(canvas.segments == seg_id)
        segments_info.append({"id": seg_id, "category_id": category, "iscrowd": crowd,
                              "area": pixels[seg_id], "bbox": [int(xs.min()), int(ys.min()),
                              int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]})
    return annotations, segments_info


def write_coco_like(root: Union[str, Path], splits: Sequence[str] = ("train2017", "val2017"),
                    images_per_split: int = 8, seed: int = 0, max_side: int = 160) -> dict:
    """Write a small dataset in COCO 2017's layout with COCO's properties (see the module doc).

    Args:
        root: output folder (created; other files in it are left alone).
        splits: split names, each written as ``ROOT/{split}/`` + ``instances_{split}.json`` + ...
        images_per_split: images per split, ≥ 6 (one per property in ``SCENES``, then plain ones).
        seed: all randomness; same arguments, same pixels and JSON.
        max_side: the longer image side in px (160: test-sized; 640: COCO-sized, e.g. 640×480).
    Returns:
        a summary dict: ``root``, ``seed``, ``max_side``; per split ``splits[split]`` with
        ``paths`` (images, instances, panoptic, panoptic_dir as str), ``images``, ``instances``
        (non-crowd) and ``crowd`` counts, and ``scene_image_ids`` {scene: image id}.
    """
    if images_per_split < MIN_IMAGES:
        raise ValueError(f"images_per_split must be >= {MIN_IMAGES} (one per property), got {images_per_split}")
    if max_side < MIN_SIDE:
        raise ValueError(f"max_side must be >= {MIN_SIDE} px, got {max_side}")
    root = Path(root)
    summary = {"root": str(root), "seed": seed, "max_side": max_side, "splits": {}}
    info = {"description": "blendmask_edu coco-like: synthetic images in COCO 2017's layout",
            "version": "1.0", "year": 2017, "seed": seed, "max_side": max_side}
    licenses = [{"id": 1, "name": "synthetic, drawn by blendmask_edu", "url": ""}]
    for split in splits:
        images_dir, ann_dir = root / split, root / "annotations"
        pan_dir = ann_dir / f"panoptic_{split}"
        for folder in (images_dir, pan_dir):
            folder.mkdir(parents=True, exist_ok=True)
        images, annotations, panoptic, scenes = [], [], [], {}
        for i in range(images_per_split):
            rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode()), i]))
            scene = SCENES[i] if i < len(SCENES) else "plain"
            fw, fh = ASPECTS.get(scene) or PLAIN_ASPECTS[int(rng.integers(len(PLAIN_ASPECTS)))]
            canvas = _Canvas(rng, int(round(max_side * fw)), int(round(max_side * fh)))
            upper = int(rng.choice(UPPER))
            lower = RUG if scene == "crowd" else int(rng.choice(LOWER))
            void = _background(canvas, upper, lower)
            canvas.occupied |= void  # things stay off the void band, so every PNG keeps void
            _draw_scene(canvas, scene)
            if scene == "crowd":  # a banner: the lowest stuff id
                banner = np.zeros((canvas.h, canvas.w), bool)
                banner[2:max(6, canvas.h // 8), canvas.w // 2:canvas.w - 2] = True
                canvas.stuff(BANNER, banner)
            image_id = (1 + zlib.crc32(split.encode()) % 997) * 1_000_000 + 13 * i + 7
            name = f"{image_id:012d}"
            pixels = np.clip(np.round(canvas.image), 0, 255).astype(np.uint8)
            _save_jpeg(pixels, images_dir / f"{name}.jpg", scene)
            Image.fromarray(id_to_rgb(canvas.segments)).save(pan_dir / f"{name}.png", compress_level=6)
            anns, segments_info = _annotations(canvas, image_id)
            images.append({"id": image_id, "file_name": f"{name}.jpg", "width": canvas.w,
                           "height": canvas.h, "license": 1, "date_captured": "2017-01-01 00:00:00"})
            annotations += anns
            panoptic.append({"image_id": image_id, "file_name": f"{name}.png", "segments_info": segments_info})
            scenes.setdefault(scene, image_id)
        paths = {"images": images_dir, "instances": ann_dir / f"instances_{split}.json",
                 "panoptic": ann_dir / f"panoptic_{split}.json", "panoptic_dir": pan_dir}
        common = {"info": info, "licenses": licenses, "images": images}
        write_json(paths["instances"], {**common, "annotations": annotations,
                                        "categories": COCO_THING_CATEGORIES}, canonical=True)
        write_json(paths["panoptic"], {**common, "annotations": panoptic,
                                       "categories": COCO_PANOPTIC_CATEGORIES}, canonical=True)
        summary["splits"][split] = {
            "paths": {k: str(v) for k, v in paths.items()}, "images": len(images),
            "instances": sum(1 for a in annotations if not a["iscrowd"]),
            "crowd": sum(1 for a in annotations if a["iscrowd"]), "scene_image_ids": scenes}
    return summary
