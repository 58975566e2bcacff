"""``check_dataset``: every defect of a COCO dataset at once (the ``data check`` command).

Introduced in ``notebooks/00_data.ipynb``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from .errors import DatasetError
from .files import (IMAGE_KEYS, TOP_KEYS, PathLike, index_entries, index_panoptic, load_json,
                    panoptic_stuff, read_image, read_panoptic, scan_annotations)
from .validation import panoptic_problems, rle_geometry_problem


@dataclass(frozen=True)
class Defect:
    """One defect found by :func:`check_dataset`; prints like the DatasetError it would raise."""

    path: str
    problem: str
    annotation_id: Optional[int] = None

    def __str__(self) -> str:
        return str(DatasetError(self.path, self.problem, self.annotation_id))


def check_dataset(images_dir: PathLike, instances_json: PathLike, panoptic_json: Optional[PathLike] = None,
                  panoptic_dir: Optional[PathLike] = None, progress: bool = True) -> list:
    """Every defect of a dataset at once → list of :class:`Defect` (empty if the data is clean).

    Checks the JSON structure, duplicate ids, every annotation (:func:`validate_annotation`;
    for RLE masks also ``area`` and ``bbox`` against the mask), every image (present, fully decodable, size as in the JSON) and, with a panoptic JSON, its
    categories, each PNG (present, size) and each ``segments_info`` against the PNG's pixels
    both ways, with areas and boxes. Grayscale or RGBA images are fine. Shows a tqdm bar.
    """
    images_dir, instances_json = Path(images_dir), Path(instances_json)
    try:
        data = load_json(instances_json, TOP_KEYS)
    except DatasetError as e:
        return [Defect(e.path, e.problem)]
    images, problems = index_entries(data["images"], "image", IMAGE_KEYS)
    things, more = index_entries(data["categories"], "category", ("id", "name"))
    defects = [Defect(str(instances_json), p) for p in problems + more]
    valid, bad = scan_annotations(data["annotations"], images, things)
    defects += [Defect(str(instances_json), problem, ann_id) for ann_id, problem in bad]
    for ann in valid:
        problem = rle_geometry_problem(ann, images[ann["image_id"]])
        if problem:
            defects.append(Defect(str(instances_json), problem, ann["id"]))

    panoptic = {}
    if panoptic_json is not None:
        panoptic_json = Path(panoptic_json)
        panoptic_dir = Path(panoptic_dir) if panoptic_dir else panoptic_json.with_suffix("")
        try:
            pan = load_json(panoptic_json, ("annotations", "categories"))
            stuff, problems = panoptic_stuff(pan["categories"], things)
            known = set(things) | {c["id"] for c in stuff}
            panoptic, more = index_panoptic(pan, images, known)
            problems += more
            described = {a.get("image_id") for a in pan["annotations"] if isinstance(a, dict)}
            problems += [f"no panoptic annotation for image id {i}" for i in images if i not in described]
        except DatasetError as e:
            problems = [e.problem]
        defects += [Defect(str(panoptic_json), p) for p in problems]

    for image_id, info in tqdm(images.items(), desc="checking images", disable=not progress):
        try:
            read_image(images_dir / info["file_name"], info)
        except DatasetError as e:
            defects.append(Defect(e.path, e.problem))
        if image_id in panoptic:
            path = panoptic_dir / panoptic[image_id]["file_name"]
            try:
                ids = read_panoptic(path, info)
            except DatasetError as e:
                defects.append(Defect(e.path, e.problem))
                continue
            problems = panoptic_problems(ids, panoptic[image_id]["segments_info"], check_stats=True)
            defects += [Defect(str(path), p) for p in problems]
    return defects
