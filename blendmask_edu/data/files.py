"""COCO files on disk: the layout, JSON, images, panoptic PNGs and segmentations.

Everything reads and writes COCO's own formats and layout, so the same code serves real COCO,
a COCO subset and the synthetic shapes dataset (which is written in COCO format):

    ROOT/{split}/                               images
    ROOT/annotations/instances_{split}.json     instance annotations (polygons or RLE)
    ROOT/annotations/panoptic_{split}.json      panoptic segments_info, optional
    ROOT/annotations/panoptic_{split}/          panoptic PNGs (id = R + 256·G + 256²·B)

Masks are rasterised by pycocotools (``frPyObjects``, ``merge``, ``decode``): its polygon
rasteriser is the one COCO's ground truth and COCOeval use, so our masks agree with the metric.
Every reader raises :class:`~blendmask_edu.data.errors.DatasetError` naming the file.
Introduced in ``notebooks/00_data.ipynb``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Container, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from .errors import DatasetError
from .validation import validate_annotation

PathLike = Union[str, Path]
TOP_KEYS = ("images", "annotations", "categories")
IMAGE_KEYS = ("id", "file_name", "width", "height")
PANOPTIC_KEYS = ("image_id", "file_name", "segments_info")


# ----------------------------------------------------------------------------- pure helpers


def rgb_to_id(png):
    """Panoptic PNG colours [..., 3] uint8 → segment ids [...] int64 (id = R + 256·G + 256²·B).

    Works on numpy arrays and torch tensors alike; returns the same kind.
    """
    if isinstance(png, torch.Tensor):
        c = png.long()
    else:
        c = np.asarray(png).astype(np.int64)
    return c[..., 0] + 256 * c[..., 1] + 256 * 256 * c[..., 2]


def id_to_rgb(ids):
    """Segment ids [...] int → panoptic PNG colours [..., 3] uint8 (inverse of ``rgb_to_id``)."""
    if isinstance(ids, torch.Tensor):
        ids = ids.long()
        return torch.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1).to(torch.uint8)
    ids = np.asarray(ids).astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1).astype(np.uint8)


def decode_segmentation(segm, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` → binary mask [H, W] uint8 (numpy), via pycocotools.

    Accepts polygons (a list of ``[x0, y0, x1, y1, ...]``, parts are unioned), compressed RLE
    (``counts`` a string) and uncompressed RLE (``counts`` a list, as COCO's crowd regions).
    Expects valid input: check an annotation with :func:`validate_annotation` first.
    """
    if isinstance(segm, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm["counts"], list):
        rle = mask_utils.frPyObjects(segm, height, width)  # uncompressed → compressed
    else:
        rle = segm
    with warnings.catch_warnings():  # pycocotools' Cython decode trips a numpy 2 deprecation
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        mask = mask_utils.decode(rle)
    if mask.shape != (height, width):
        raise ValueError(f"segmentation of size {list(mask.shape)} in a {height}x{width} image")
    return np.ascontiguousarray(mask, dtype=np.uint8)

# ----------------------------------------------------------------------------- files


@dataclass(frozen=True)
class DatasetPaths:
    """Where one split of a dataset in COCO's layout lives (panoptic ones None if absent)."""

    root: Path
    split: str
    images_dir: Path
    instances: Path
    panoptic: Optional[Path] = None
    panoptic_dir: Optional[Path] = None


def dataset_paths(root: PathLike, split: str) -> DatasetPaths:
    """The files of ``split`` under ``root`` in COCO's own layout (see the module docstring).

    Raises DatasetError, saying what to create or place, if the root or the instances file
    is missing.
    """
    root = Path(root)
    instances = root / "annotations" / f"instances_{split}.json"
    if not root.is_dir():
        raise DatasetError(root, f"dataset root not found; create it with COCO's layout: "
                                 f"{root / split}/ for images and {instances}")
    if not instances.is_file():
        raise DatasetError(instances, f"instances file not found; place the COCO instances JSON "
                                      f"of split '{split}' here (images go in {root / split}/)")
    panoptic = root / "annotations" / f"panoptic_{split}.json"
    panoptic_dir = root / "annotations" / f"panoptic_{split}"
    return DatasetPaths(root, split, root / split, instances,
                        panoptic if panoptic.is_file() else None,
                        panoptic_dir if panoptic_dir.is_dir() else None)


SPLIT_DEFAULTS = {"train": ("train", "train2017"), "val": ("val", "val2017")}  # tried in order
SPLIT_FLAGS = {"train": "--train-split", "val": "--val-split"}


def splits_found(root: PathLike) -> list:
    """The split names under ``root``: every ``annotations/instances_{split}.json``, sorted."""
    folder = Path(root) / "annotations"
    names = folder.glob("instances_*.json") if folder.is_dir() else ()
    return sorted(p.name[len("instances_"):-len(".json")] for p in names)


def resolve_split(root: PathLike, split: Optional[str], role: str, flag: Optional[str] = None) -> str:
    """The split name to read for ``role`` ("train" or "val") from the dataset at ``root``.

    Args:
        root: the dataset root in COCO's layout (see the module docstring).
        split: the name the user asked for (``--train-split``, ``--val-split``, ``--split``),
            any ``NAME`` with an ``annotations/instances_{NAME}.json``; None for the default.
        role: "train" or "val": the default is the first of ``SPLIT_DEFAULTS[role]`` present
            (``train`` then ``train2017``; ``val`` then ``val2017``).
        flag: the command-line option to name in the error (default ``SPLIT_FLAGS[role]``).
    Returns:
        the split name (a str), whose instances file exists.
    Raises:
        DatasetError naming the root (missing), or the instances file looked for and every
        split found there, and the flag that chooses one.
    """
    if role not in SPLIT_DEFAULTS:
        raise ValueError(f"role must be one of {sorted(SPLIT_DEFAULTS)}, got {role!r}")
    root, flag = Path(root), flag or SPLIT_FLAGS[role]
    if not root.is_dir():
        raise DatasetError(root, "dataset root not found; create it with COCO's layout: "
                                 "ROOT/SPLIT/ for images and ROOT/annotations/instances_SPLIT.json")
    found = splits_found(root)
    listed = ", ".join(found) if found else "none"
    if split is not None:
        if split in found:
            return split
        raise DatasetError(root / "annotations" / f"instances_{split}.json",
                           f"instances file not found; the splits under {root} are: {listed} "
                           f"(choose one with {flag})")
    for name in SPLIT_DEFAULTS[role]:
        if name in found:
            return name
    tried = " or ".join(f"instances_{name}.json" for name in SPLIT_DEFAULTS[role])
    raise DatasetError(root / "annotations", f"no {role} split: neither {tried} is here; "
                                             f"the splits found are: {listed}; "
                                             f"choose one with {flag} NAME")


def missing_files(folder: PathLike, names: Sequence[str]) -> list:
    """The files ``folder / name`` that do not exist, as Paths, in the order of ``names``.

    One ``stat`` per file, no decoding (2.2 s for 118,287 names, COCO train2017's count,
    measured on a local disk with a warm cache), so that a missing file stops a run before its
    first step, not hours in.
    """
    folder = Path(folder)
    return [folder / name for name in names if not os.path.isfile(folder / name)]


def missing_files_error(folder: PathLike, missing: Sequence[Path], total: int,
                        what: str = "image files", listed_in: Optional[PathLike] = None) -> DatasetError:
    """The one-line DatasetError for :func:`missing_files`' result: ``FOLDER: N of M image
    files (listed in FILE) are missing (first: a.jpg, b.jpg, c.jpg)``."""
    first = ", ".join(str(Path(p).relative_to(folder)) if Path(p).is_relative_to(folder) else str(p)
                      for p in missing[:3])
    where = f" (listed in {listed_in})" if listed_in is not None else ""
    return DatasetError(folder, f"{len(missing)} of {total} {what}{where} are missing (first: {first})")


def load_json(path: Path, required: Sequence[str]) -> dict:
    """Read a JSON object holding the list-valued keys ``required``, or raise DatasetError."""
    if not path.is_file():
        raise DatasetError(path, "file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as e:  # JSONDecodeError, and UnicodeDecodeError for binary files
        raise DatasetError(path, f"not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DatasetError(path, f"expected a JSON object, got a {type(data).__name__}")
    missing = [k for k in required if not isinstance(data.get(k), list)]
    if missing:
        raise DatasetError(path, f"missing top-level key(s) {missing} (each a list); "
                                 f"a COCO file has {list(required)}")
    return data


def index_entries(entries: list, kind: str, keys: Sequence[str]) -> tuple:
    """``images`` or ``categories`` entries → ({id: entry}, [problem, ...])."""
    table, problems = {}, []
    for k, e in enumerate(entries):
        if not isinstance(e, dict) or any(key not in e for key in keys):
            problems.append(f"{kind} entry #{k} lacks one of the keys {list(keys)}")
        elif not isinstance(e["id"], int) or e["id"] in table:
            problems.append(f"{kind} id {e['id']!r} is duplicated or not an integer")
        elif kind == "image" and not (isinstance(e["file_name"], str) and all(
                isinstance(e[s], int) and e[s] > 0 for s in ("width", "height"))):
            problems.append(f"image {e['id']}: needs a file_name string and positive integer width, height")
        else:
            table[e["id"]] = e
    return table, problems


def scan_annotations(annotations: list, images: dict, category_ids: Container[int]) -> tuple:
    """Validate every annotation once → (valid annotations, [(annotation id, problem), ...])."""
    valid, bad, seen = [], [], set()
    for k, ann in enumerate(annotations):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        problem = validate_annotation(ann, images.get(image_id) if isinstance(image_id, int) else None,
                                      category_ids)
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        if problem is None and (not isinstance(ann_id, int) or ann_id in seen):
            problem = f"annotation id {ann_id!r} is duplicated or not an integer"
        if problem is None:
            seen.add(ann_id)
            valid.append(ann)
        else:
            bad.append((ann_id if isinstance(ann_id, int) else None,
                        problem if isinstance(ann_id, int) else f"{problem} (entry #{k})"))
    return valid, bad


def skip_summary(path: Path, skipped: list, shown: int = 5) -> str:
    listed = "; ".join(f"{ann_id}: {reason}" for ann_id, reason in skipped[:shown])
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return (f"skipped {len(skipped)} bad annotations in {path} (ids {listed}{more}); "
            f"run check_dataset() for the full list, or pass strict=True to stop at the first")


def panoptic_stuff(pan_categories: list, thing_categories: dict) -> tuple:
    """Panoptic categories → (their stuff categories, [problem, ...]).

    Things come from the instances JSON; the panoptic JSON must agree with it about them.
    """
    table, problems = index_entries(pan_categories, "category", ("id", "name"))
    stuff = []
    for cat_id, c in table.items():
        if c.get("isthing", 1) and cat_id not in thing_categories:
            problems.append(f"thing category {cat_id} ({c['name']}) is not in the instances categories")
        elif not c.get("isthing", 1) and cat_id in thing_categories:
            problems.append(f"category {cat_id} ({c['name']}) is stuff here but a thing in the instances JSON")
        elif not c.get("isthing", 1):
            stuff.append(c)
    return stuff, problems


def index_panoptic(pan: dict, images: dict, category_ids: Container[int]) -> tuple:
    """Panoptic ``annotations`` → ({image id: entry}, [problem, ...]) for the JSON side only."""
    table, problems = {}, []
    for k, a in enumerate(pan["annotations"]):
        if not isinstance(a, dict) or any(key not in a for key in PANOPTIC_KEYS) \
                or not isinstance(a["segments_info"], list):
            problems.append(f"annotation entry #{k} lacks one of the keys {list(PANOPTIC_KEYS)}")
            continue
        image_id, ok = a["image_id"], True
        if not isinstance(image_id, int) or image_id not in images or image_id in table:
            problems.append(f"panoptic annotation #{k}: image id {image_id!r} is unknown or duplicated")
            continue
        for j, seg in enumerate(a["segments_info"]):
            if not isinstance(seg, dict) or "id" not in seg or "category_id" not in seg:
                problems.append(f"image {image_id}: segment entry #{j} lacks 'id' or 'category_id'")
                ok = False
            elif seg["category_id"] not in category_ids:
                problems.append(f"image {image_id}: segment {seg['id']}: "
                                f"unknown category id {seg['category_id']!r}")
                ok = False
        if ok:
            table[image_id] = a
    return table, problems


def read_image(path: Path, info: dict) -> Image.Image:
    """Open, fully decode and check one image → RGB PIL image, or raise DatasetError.

    The stored pixels: an EXIF orientation tag is ignored, since COCO's ``width``/``height``
    and annotations describe the stored pixels (``ImageOps.exif_transpose`` would turn them).
    """
    if not path.is_file():
        raise DatasetError(path, f"image file not found (image id {info['id']} in the instances JSON)")
    try:
        with Image.open(path) as img:
            img.load()  # decode every byte now: a truncated file fails here, not in training
            if img.mode == "P":
                img = img.convert("RGBA")  # palette (with transparency) → RGBA → RGB, no warning
            rgb = img.convert("RGB")  # grayscale is repeated, alpha is dropped
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, zlib.error, ...
        raise DatasetError(path, f"cannot decode the image, the file is truncated or corrupt "
                                 f"({type(e).__name__}: {e})") from None
    if rgb.size != (info["width"], info["height"]):
        raise DatasetError(path, f"image is {rgb.width}x{rgb.height} (width x height) but the JSON "
                                 f"says {info['width']}x{info['height']}")
    return rgb


def read_panoptic(path: Path, info: dict) -> np.ndarray:
    """Open and check one panoptic PNG → segment ids [H, W] int64, or raise DatasetError."""
    if not path.is_file():
        raise DatasetError(path, f"panoptic PNG not found (image id {info['id']} in the panoptic JSON)")
    try:
        with Image.open(path) as png:
            rgb = np.asarray(png.convert("RGB"))
    except Exception as e:
        raise DatasetError(path, f"cannot decode the panoptic PNG ({type(e).__name__}: {e})") from None
    if rgb.shape[:2] != (info["height"], info["width"]):
        raise DatasetError(path, f"panoptic PNG is {rgb.shape[1]}x{rgb.shape[0]} (width x height) "
                                 f"but the image is {info['width']}x{info['height']}")
    return rgb_to_id(rgb)


def make_coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        coco.createIndex()
    return coco
