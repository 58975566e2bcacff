"""``check_dataset``: every defect (and note) of a COCO dataset at once (the ``data check`` command).

A **defect** is what breaks training or evaluation, or changes what they compute: a file that
is missing or does not decode, an annotation the loader must skip, a size, id, area or box
that disagrees with the pixels where the metric reads it. A **note** is a difference that is
not one: what genuine COCO data has (a crowd region's ``area`` is not its mask's pixel count),
or a value that nothing reads (a panoptic segment's ``bbox``). ``data check`` prints both and fails only on defects. Which check gives which is
listed in :func:`~blendmask_edu.data.validation.rle_geometry_findings` and
:func:`~blendmask_edu.data.validation.panoptic_stats_findings`.

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
from .validation import (DEFECT, NOTE, panoptic_problems, panoptic_stats_findings,
                         rle_geometry_findings)



@dataclass(frozen=True)
class Defect:
    """One finding of :func:`check_dataset`; prints like the DatasetError it would raise.

    ``kind`` is ``"defect"`` (breaks training or evaluation) or ``"note"`` (a difference that
    does not; see the module docstring).
    """

    path: str
    problem: str
    annotation_id: Optional[int] = None
    kind: str = DEFECT

    @property
    def is_note(self) -> bool:
        return self.kind == NOTE

    def __str__(self) -> str:
        return str(DatasetError(self.path, self.problem, self.annotation_id))


def check_dataset(images_dir: PathLike, instances_json: PathLike, panoptic_json: Optional[PathLike] = None,
                  panoptic_dir: Optional[PathLike] = None, progress: bool = True) -> list:
    """Every defect and note of a dataset at once → list of :class:`Defect`, each with its
    ``kind`` ("defect" or "note"; empty list if the data is clean; :func:`split_findings`
    separates them).

    Checks the JSON structure, duplicate ids, every annotation (:func:`validate_annotation`;
    for RLE masks also ``area`` and ``bbox`` against the mask), every image (present, fully
    decodable, size as in the JSON) and, with a panoptic JSON, its categories, each PNG
    (present, size) and each ``segments_info`` against the PNG's pixels both ways, with areas
    and boxes. Grayscale, CMYK or RGBA images are fine. Notes: crowd ``area`` against the mask,
    panoptic segment ``area``/``bbox``; everything else is a defect. Shows a tqdm bar.
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
        for kind, problem in rle_geometry_findings(ann, images[ann["image_id"]]):
            defects.append(Defect(str(instances_json), problem, ann["id"], kind))

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
            segments_info = panoptic[image_id]["segments_info"]
            defects += [Defect(str(path), p) for p in panoptic_problems(ids, segments_info)]
            defects += [Defect(str(path), p, kind=kind)
                        for kind, p in panoptic_stats_findings(ids, segments_info)]
    return defects


def split_findings(findings: list) -> tuple:
    """:func:`check_dataset`'s list → (defects, notes), two lists of :class:`Defect`."""
    return [f for f in findings if not f.is_note], [f for f in findings if f.is_note]
