"""The "shapes" dataset: a synthetic panoptic dataset in COCO format, generated from a seed.

Why it exists: nothing can be downloaded on the machines this package is built and tested on,
and a student on a laptop CPU cannot train on COCO. So the package draws its own small panoptic
dataset in seconds, in COCO's own file layout, so that everything that reads COCO (pycocotools,
panopticapi-style tools, ``blendmask_edu.data.coco``) reads it unchanged. It is introduced in
``notebooks/00_data.ipynb``.

An image (``size`` x ``size``, 128 by default) holds sky and ground (stuff), 1-6 things (circle,
triangle, rotated rectangle, star, ring; sizes over a >10:1 range, kept in
``SyntheticImage.instance_sizes`` and summarised by ``generate_shapes``), and thin occluders over
them: poles and, sometimes, a net (stuff too). How each is drawn is
:mod:`blendmask_edu.data.shapes_drawing`'s job; this module turns a drawn scene into what is
visible, its panoptic segments, its hard-case tags and COCO files.

The hard cases of the paper's Appendix B are made on purpose and tagged per thing: every thing
annotation (``instances_{split}.json``) and every thing segment of the panoptic JSON's
``segments_info`` has its own sorted list ``"hard_cases"`` (stuff segments have none), and each
image lists the union of its things' tags in ``images[i]["hard_cases"]`` of both JSON files, so
notebooks can select images and the evaluation can score each case apart
(:mod:`blendmask_edu.evaluation.hard_cases`). A thing is tagged
- ``"split"``: its visible mask has >= 2 connected components (8-connectivity), e.g. because a
  pole cuts it in two; decided by counting components, not assumed;
- ``"overlap"``: its full (unoccluded) shape overlaps another annotated thing's, whether it lies
  in front or behind (things are z-ordered; masks are the visible parts only);
- ``"complex"``: it is a star (thin sharp points) or a ring (a hole);
- ``"small"`` / ``"large"``: its visible box has a long side < 1/8 / > 1/2 of the image.
On val (200 images, seeds 0-9) 37-46 % of images hold a split thing and 38-44 % overlapping
things; about 40 % hold neither. A thing whose visible part is under 20 px is not drawn at all.

Output layout (COCO's): ``OUT/{train,val}/<12-digit id>.png``,
``OUT/annotations/instances_{split}.json`` (RLE masks, thing categories only),
``OUT/annotations/panoptic_{split}.json`` and ``OUT/annotations/panoptic_{split}/*.png``
(segment id = R + 256 G + 256^2 B; every pixel belongs to a segment). RLE encoding and boxes
come from pycocotools, so they are exactly what COCO tools compute.

Determinism: image ``i`` of a split is drawn from ``SeedSequence([seed, split_code, i])``, so it
does not depend on the other images or on how many are generated; image ids are
``split_offset + i + 1`` (val starts at 1,000,001) for the same reason. Results of
transcendental functions are rounded to fixed precision before use, JSON is written with sorted
keys and fixed separators, PNGs with fixed Pillow settings, and no time stamps are stored.
Pixel values are therefore the same everywhere; PNG bytes also depend on the zlib that Pillow
was built with, so byte-identical files need the same Pillow build (a pinned environment).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
from tqdm import tqdm

from blendmask_edu.fileio import write_json

from .files import id_to_rgb
from .shapes_drawing import (CIRCLE, RECTANGLE, RING, STAR, TRIANGLE, draw_background, draw_scene,
                             paint)

SKY, GROUND, POLE, NET = 6, 7, 8, 9  # the stuff category ids (things: 1-5, see shapes_drawing)

THING_CATEGORIES = [
    {"id": i, "name": name, "supercategory": "shape", "isthing": 1, "color": colour}
    for i, name, colour in [(CIRCLE, "circle", [220, 20, 60]),
                            (TRIANGLE, "triangle", [0, 130, 200]),
                            (RECTANGLE, "rectangle", [255, 180, 0]),
                            (STAR, "star", [145, 30, 180]),
                            (RING, "ring", [60, 180, 75])]
]
STUFF_CATEGORIES = [
    {"id": i, "name": name, "supercategory": group, "isthing": 0, "color": colour}
    for i, name, group, colour in [(SKY, "sky", "background", [135, 206, 235]),
                                   (GROUND, "ground", "background", [120, 90, 50]),
                                   (POLE, "pole", "occluder", [90, 90, 90]),
                                   (NET, "net", "occluder", [200, 200, 200])]
]

MIN_VISIBLE_AREA = 20  # px; a thing with fewer visible pixels is not drawn and not annotated
SPLIT_CODES = {"train": 0, "val": 1}
ID_OFFSETS = {"train": 0, "val": 1_000_000}
HARD_CASES = ("split", "overlap", "complex", "small", "large")
# Written to info["version"]; 1.1 added the per-thing "hard_cases". ensure_shapes regenerates a
# dataset of another version, so that older files on disk gain what the evaluation now reads.
DATASET_VERSION = "1.1"


@dataclass
class SyntheticImage:
    """One generated image in memory. G annotated things, S segments, H = W = size.

    image: [H, W, 3] uint8. instance_masks: G x [H, W] bool, the visible parts, in z-order (back
    to front). instance_categories: G thing ids. instance_sizes: G drawn diameters in px.
    panoptic_ids: [H, W] int32 segment ids (things are 1..G in z-order, then stuff).
    segments: S dicts {id, category_id, iscrowd, area, bbox=[x, y, w, h]}, the G thing segments
    with their ``hard_cases`` too. instance_hard_cases: G sorted tag lists, one per thing.
    hard_cases: the image's sorted tags, the union of ``instance_hard_cases``.
    """

    image: np.ndarray
    instance_masks: list
    instance_categories: list
    instance_sizes: list
    panoptic_ids: np.ndarray
    segments: list
    hard_cases: list
    instance_hard_cases: list


# ---------------------------------------------------------------------------- masks and tags

def _visible(full, cover):
    """Visible part of each full mask (G x [H, W] bool, back to front): minus cover, minus later."""
    cover, visible = cover.copy(), [None] * len(full)
    for g in reversed(range(len(full))):
        visible[g] = full[g] & ~cover
        cover |= full[g]
    return visible


def count_components(mask: np.ndarray) -> int:
    """Number of 8-connected components of a bool mask [H, W], by union-find over row runs."""
    padded = np.pad(mask, ((0, 0), (1, 1))).astype(np.int8)
    rows, cols = np.nonzero(np.diff(padded, axis=1))  # run starts and ends alternate per row
    row, start, end = rows[0::2].tolist(), cols[0::2].tolist(), cols[1::2].tolist()
    parent = list(range(len(row)))

    def root(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    previous, first = [], 0  # runs of the row above
    for i in range(len(row) + 1):
        if i == len(row) or row[i] != row[first]:
            current = list(range(first, i))
            if previous and row[previous[0]] == row[first] - 1:
                a = b = 0
                while a < len(current) and b < len(previous):
                    p, q = current[a], previous[b]
                    if start[p] <= end[q] and start[q] <= end[p]:  # overlap or touch diagonally
                        parent[root(p)] = root(q)
                    if end[p] < end[q]:
                        a += 1
                    else:
                        b += 1
            previous, first = current, i
    return sum(1 for a in range(len(row)) if root(a) == a)


def _bbox(mask):
    """[x, y, w, h] ints of a non-empty bool mask [H, W]."""
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


def _instance_hard_cases(size, full, visible, categories):
    """Sorted tags (see the module docstring) of each annotated thing of one image.

    Takes the side ``size``, the G full and visible masks ([H, W] bool, z-order) and the G
    category ids; returns G sorted lists of tags. The one place that decides a tag: the image's
    tags are derived from these (:func:`_image_hard_cases`).
    """
    tags = [set() for _ in full]
    for g, (f, v, c) in enumerate(zip(full, visible, categories)):
        if count_components(v) >= 2:
            tags[g].add("split")
        # Both things of an overlapping pair are tagged: the one behind is hidden, and the one in
        # front has a neighbour whose pixels touch its own, so both are hard to separate.
        if any((f & other).any() for h, other in enumerate(full) if h != g):
            tags[g].add("overlap")
        if c in (STAR, RING):
            tags[g].add("complex")
        long_side = max(_bbox(v)[2:])
        if long_side < size / 8:
            tags[g].add("small")
        if long_side > size / 2:
            tags[g].add("large")
    return [sorted(t) for t in tags]


def _image_hard_cases(instance_tags):
    """An image's sorted tags: the union of its things' tag lists (list of lists of str)."""
    return sorted(set().union(*instance_tags))


def _segments(sky, pole, net, visible, categories, instance_tags):
    """Panoptic id map [H, W] int32 and segments: things 1..G (each with its ``hard_cases`` from
    ``instance_tags``, G lists), then each stuff class present (no ``hard_cases``)."""
    stuff = np.where(sky, SKY, GROUND)
    stuff[net] = NET
    stuff[pole] = POLE
    ids = np.zeros(sky.shape, np.int32)
    masks, cats = list(visible), list(categories)
    for g, m in enumerate(masks):
        ids[m] = g + 1
    for c in (SKY, GROUND, POLE, NET):
        m = (ids == 0) & (stuff == c)
        if m.any():
            masks.append(m)
            cats.append(c)
            ids[m] = len(masks)
    segments = [{"id": s + 1, "category_id": int(c), "iscrowd": 0, "area": int(m.sum()),
                 "bbox": _bbox(m)} for s, (m, c) in enumerate(zip(masks, cats))]
    for segment, tags in zip(segments, instance_tags):  # the things come first
        segment["hard_cases"] = list(tags)
    return ids, segments


def render_image(rng: np.random.Generator, size: int) -> SyntheticImage:
    """Draw one image and its annotations in memory.

    Takes a numpy Generator (all randomness comes from it) and the side ``size`` in px; returns a
    ``SyntheticImage`` with ``image`` [size, size, 3] uint8, G visible ``instance_masks``
    [size, size] bool in z-order, ``panoptic_ids`` [size, size] int32, its ``segments`` and the
    hard-case tags of each thing and of the image.
    """
    sky, background = draw_background(rng, size)
    for _ in range(100):  # redraw in the rare case (~1 image in 2000) that no thing stays visible
        categories, diameters, full, poles, net = draw_scene(rng, size)
        pole = np.logical_or.reduce(poles) if poles else np.zeros((size, size), bool)
        occluder = pole | net
        # Drop things whose visible part is tiny; the rest can only gain pixels by it, so one
        # pass suffices. Dropped things are not painted, so the pixels show what lies beneath.
        keep = [g for g, v in enumerate(_visible(full, occluder)) if v.sum() >= MIN_VISIBLE_AREA]
        if keep:
            break
    full = [full[g] for g in keep]
    visible = _visible(full, occluder)
    categories, diameters = [categories[g] for g in keep], [diameters[g] for g in keep]
    image = paint(rng, background, sky, full, poles, net)
    instance_tags = _instance_hard_cases(size, full, visible, categories)
    ids, segments = _segments(sky, pole, net, visible, categories, instance_tags)
    return SyntheticImage(image, visible, categories, diameters, ids, segments,
                          _image_hard_cases(instance_tags), instance_tags)


# ---------------------------------------------------------------------------- files

def _write_png(array, path):
    Image.fromarray(array).save(path, format="PNG", compress_level=6, optimize=False)


def _instance_annotations(sample, image_id):
    """COCO instance annotations of one image, each with its ``hard_cases``; ids are
    image_id * 100 + g + 1, unique everywhere."""
    annotations = []
    for g, (m, c, tags) in enumerate(zip(sample.instance_masks, sample.instance_categories,
                                         sample.instance_hard_cases)):
        rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        segmentation = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()}
        annotations.append({
            "id": image_id * 100 + g + 1, "image_id": image_id, "category_id": c, "iscrowd": 0,
            "segmentation": segmentation, "area": int(m.sum()),
            "bbox": [float(v) for v in mask_util.toBbox(rle)], "hard_cases": list(tags),
        })
    return annotations


def generate_shapes(out_dir: Union[str, Path], num_train: int = 2000, num_val: int = 200,
                    size: int = 128, seed: int = 0, progress: bool = True) -> dict:
    """Write the shapes dataset to ``out_dir`` in COCO layout (see the module docstring).

    Takes image counts per split, the image side ``size`` (images are size x size) and a seed;
    returns a summary dict with ``root``, ``size``, ``seed`` and, each keyed by split: ``paths``
    (images, instances, panoptic, panoptic_dir), ``images`` and ``instances`` (counts),
    ``hard_case_fraction`` ({tag: fraction of images holding it}) and ``thing_sizes`` (min / max
    drawn diameter in px). Existing files with other names in ``out_dir`` are left alone.
    """
    if not 0 <= num_train < ID_OFFSETS["val"] or num_val < 0:
        raise ValueError(f"need 0 <= num_train < {ID_OFFSETS['val']} and num_val >= 0")
    if size < 32:
        raise ValueError(f"size must be >= 32 px, got {size}")
    root = Path(out_dir)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    info = {"description": "blendmask_edu shapes: synthetic panoptic dataset", "seed": seed,
            "size": size, "version": DATASET_VERSION}
    jobs = [("train", i) for i in range(num_train)] + [("val", i) for i in range(num_val)]
    records = {s: {"images": [], "annotations": [], "panoptic": [], "sizes": []}
               for s in SPLIT_CODES}
    for split in SPLIT_CODES:
        (root / split).mkdir(exist_ok=True)
        (root / "annotations" / f"panoptic_{split}").mkdir(exist_ok=True)

    for split, index in tqdm(jobs, desc="shapes", unit="img", disable=not progress):
        rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODES[split], index]))
        sample = render_image(rng, size)
        image_id = ID_OFFSETS[split] + index + 1
        file_name = f"{image_id:012d}.png"
        _write_png(sample.image, root / split / file_name)
        _write_png(id_to_rgb(sample.panoptic_ids),
                   root / "annotations" / f"panoptic_{split}" / file_name)
        rec = records[split]
        rec["images"].append({"id": image_id, "file_name": file_name, "width": size, "height": size,
                              "hard_cases": sample.hard_cases})
        rec["annotations"] += _instance_annotations(sample, image_id)
        rec["panoptic"].append({"image_id": image_id, "file_name": file_name,
                                "segments_info": sample.segments})
        rec["sizes"] += sample.instance_sizes

    summary = {"root": str(root), "size": size, "seed": seed, "paths": {}, "images": {},
               "instances": {}, "hard_case_fraction": {}, "thing_sizes": {}}
    for split, rec in records.items():
        annotations = root / "annotations"
        paths = {"images": root / split, "instances": annotations / f"instances_{split}.json",
                 "panoptic": annotations / f"panoptic_{split}.json",
                 "panoptic_dir": annotations / f"panoptic_{split}"}
        common = {"info": info, "licenses": [], "images": rec["images"]}
        write_json(paths["instances"], {**common, "annotations": rec["annotations"],
                                        "categories": THING_CATEGORIES}, canonical=True)
        write_json(paths["panoptic"], {**common, "annotations": rec["panoptic"],
                                       "categories": THING_CATEGORIES + STUFF_CATEGORIES},
                   canonical=True)
        n = max(len(rec["images"]), 1)
        summary["paths"][split] = {k: str(v) for k, v in paths.items()}
        summary["images"][split] = len(rec["images"])
        summary["instances"][split] = len(rec["annotations"])
        summary["hard_case_fraction"][split] = {
            t: round(sum(t in im["hard_cases"] for im in rec["images"]) / n, 4) for t in HARD_CASES}
        summary["thing_sizes"][split] = {"min": min(rec["sizes"], default=0.0),
                                         "max": max(rec["sizes"], default=0.0)}
    return summary


def ensure_shapes(out_dir: Union[str, Path], num_train: int = 2000, num_val: int = 200,
                  size: int = 128, seed: int = 0, progress: bool = True) -> Path:
    """The shapes dataset at ``out_dir``, generated only if it is missing, was made with other
    arguments (read back from the JSON files' ``info`` and image counts) or by another version
    of this generator (``info["version"]``, :data:`DATASET_VERSION`). Returns the root."""
    root = Path(out_dir)
    try:
        for split, count in (("train", num_train), ("val", num_val)):
            with open(root / "annotations" / f"instances_{split}.json", encoding="utf-8") as f:
                data = json.load(f)
            info = data["info"]
            if (info.get("seed"), info.get("size"), info.get("version"), len(data["images"])) != \
                    (seed, size, DATASET_VERSION, count):
                raise ValueError("made with other arguments")
    except (OSError, ValueError, KeyError):
        generate_shapes(root, num_train, num_val, size, seed, progress)
    return root
