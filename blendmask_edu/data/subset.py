"""``make_subset``: a smaller dataset in COCO's layout (the ``data subset`` command).

How a user makes "a COCO subset" for a short GPU run. Introduced in ``notebooks/00_data.ipynb``.
"""

from __future__ import annotations

import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from blendmask_edu.fileio import write_json

from .errors import DatasetError
from .files import (IMAGE_KEYS, TOP_KEYS, DatasetPaths, PathLike, dataset_paths, id_to_rgb,
                    index_entries, index_panoptic, load_json, read_panoptic, scan_annotations,
                    skip_summary)


def make_subset(instances_json: PathLike, out_dir: PathLike, panoptic_json: Optional[PathLike] = None,
                num_images: Optional[int] = None, categories: Optional[Sequence[str]] = None,
                seed: int = 0, images_dir: Optional[PathLike] = None,
                panoptic_dir: Optional[PathLike] = None) -> DatasetPaths:
    """Write a smaller COCO dataset, in COCO's layout under ``out_dir``; return its paths.

    Keeps the thing categories named in ``categories`` (all if None), the images holding at
    least one non-crowd annotation of them, then a ``seed``-ed random sample of
    ``num_images`` of those (sorted by id). Category ids stay the real ones. The split name
    comes from ``instances_{split}.json`` (else "subset"). Images are copied from
    ``images_dir`` (default ``<instances dir>/../{split}``). With a panoptic JSON, all stuff
    and the kept things stay; segments of dropped things leave ``segments_info`` and their
    PNG pixels become 0 (void), so PNG and JSON still agree. Bad annotations are left out
    (with a warning). Same arguments, same bytes.
    """
    instances_json, out_dir = Path(instances_json), Path(out_dir)
    match = re.fullmatch(r"instances_(.+)\.json", instances_json.name)
    split = match.group(1) if match else "subset"
    data = load_json(instances_json, TOP_KEYS)
    images, problems = index_entries(data["images"], "image", IMAGE_KEYS)
    things, more = index_entries(data["categories"], "category", ("id", "name"))
    if problems or more:
        raise DatasetError(instances_json, (problems + more)[0])
    by_name = {c["name"]: cat_id for cat_id, c in things.items()}
    unknown = [n for n in (categories or []) if n not in by_name]
    if unknown:
        raise ValueError(f"unknown category name(s) {unknown}; valid names: {sorted(by_name)}")
    keep = set(things) if categories is None else {by_name[n] for n in categories}

    valid, bad = scan_annotations(data["annotations"], images, things)
    if bad:
        warnings.warn(skip_summary(instances_json, bad) + "; they are left out of the subset", stacklevel=2)
    anns = [a for a in valid if a["category_id"] in keep]
    chosen = sorted({a["image_id"] for a in anns if not a.get("iscrowd", 0)})
    if num_images is not None and num_images < len(chosen):
        chosen = sorted(random.Random(seed).sample(chosen, num_images))
    elif num_images is not None and num_images > len(chosen):
        warnings.warn(f"only {len(chosen)} images hold the chosen categories; keeping all of them",
                      stacklevel=2)
    chosen_set = set(chosen)

    images_dir = Path(images_dir) if images_dir else instances_json.parent.parent / split
    if not images_dir.is_dir():
        raise DatasetError(images_dir, "images folder not found; pass images_dir=")
    out = DatasetPaths(out_dir, split, out_dir / split, out_dir / "annotations" / f"instances_{split}.json",
                       out_dir / "annotations" / f"panoptic_{split}.json",
                       out_dir / "annotations" / f"panoptic_{split}")
    if out.instances.resolve() == instances_json.resolve() or out.images_dir.resolve() == images_dir.resolve():
        raise ValueError(f"out_dir {out_dir} would overwrite the source dataset; choose another folder")

    out.images_dir.mkdir(parents=True, exist_ok=True)
    for image_id in chosen:
        src, dst = images_dir / images[image_id]["file_name"], out.images_dir / images[image_id]["file_name"]
        if not src.is_file():
            raise DatasetError(src, f"image file not found (image id {image_id})")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    write_json(out.instances, {
        **data,
        "images": [images[i] for i in chosen],
        "annotations": sorted((a for a in anns if a["image_id"] in chosen_set), key=lambda a: a["id"]),
        "categories": [things[c] for c in sorted(keep)],
    }, canonical=True)
    if panoptic_json is not None:
        _subset_panoptic(Path(panoptic_json), panoptic_dir, out, images, chosen, keep)
    return dataset_paths(out_dir, split)


def _subset_panoptic(panoptic_json: Path, panoptic_dir: Optional[PathLike], out: DatasetPaths,
                     images: dict, chosen: list, keep: set) -> None:
    """The panoptic half of :func:`make_subset`: filter the JSON, copy or repaint the PNGs."""
    panoptic_dir = Path(panoptic_dir) if panoptic_dir else panoptic_json.with_suffix("")
    pan = load_json(panoptic_json, ("annotations", "categories"))
    cats, problems = index_entries(pan["categories"], "category", ("id", "name"))
    table, more = index_panoptic(pan, images, cats)
    if problems or more:
        raise DatasetError(panoptic_json, (problems + more)[0])
    kept_cats = {c for c, cat in cats.items() if not cat.get("isthing", 1) or c in keep}
    out.panoptic_dir.mkdir(parents=True, exist_ok=True)
    annotations = []
    for image_id in chosen:
        if image_id not in table:
            raise DatasetError(panoptic_json, f"no panoptic annotation for image id {image_id}")
        a = table[image_id]
        src, dst = panoptic_dir / a["file_name"], out.panoptic_dir / a["file_name"]
        dropped = [s["id"] for s in a["segments_info"] if s["category_id"] not in kept_cats]
        if dropped:
            ids = read_panoptic(src, images[image_id])  # [H, W]
            ids[np.isin(ids, dropped)] = 0  # dropped things become void
            Image.fromarray(id_to_rgb(ids)).save(dst)
        elif src.is_file():
            shutil.copyfile(src, dst)
        else:
            raise DatasetError(src, f"panoptic PNG not found (image id {image_id})")
        segments = [s for s in a["segments_info"] if s["category_id"] in kept_cats]
        annotations.append({**a, "segments_info": segments})
    subset = {**pan, "annotations": annotations, "categories": [cats[c] for c in sorted(kept_cats)]}
    if isinstance(pan.get("images"), list):
        chosen_set = set(chosen)
        subset["images"] = sorted((img for img in pan["images"] if isinstance(img, dict)
                                   and img.get("id") in chosen_set), key=lambda img: img["id"])
    write_json(out.panoptic, subset, canonical=True)
