"""COCO instances (+ panoptic semantic labels) as a torch dataset, and the category map.

Introduced in ``notebooks/00_data.ipynb``. Reads any dataset in COCO's layout (see
:mod:`blendmask_edu.data.files`); :func:`~blendmask_edu.data.check.check_dataset` lists every
defect of one, :func:`~blendmask_edu.data.subset.make_subset` cuts a smaller one.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from blendmask_edu.conventions import IGNORE

from .errors import DatasetError
from .files import (IMAGE_KEYS, TOP_KEYS, DatasetPaths, PathLike, decode_segmentation,
                    index_entries, index_panoptic, load_json, make_coco, missing_files,
                    missing_files_error, panoptic_stuff, read_image, read_panoptic,
                    scan_annotations, skip_summary)
from .transforms import boxes_from_masks
from .validation import panoptic_problems



# ----------------------------------------------------------------------------- categories


class CategoryMap:
    """The one place where dataset category ids become contiguous class indices and back.

    COCO's 80 thing ids run from 1 to 90 with gaps, and stuff ids follow. The network needs
    contiguous indices (a classifier has C outputs, the semantic head 1 + S), while every file
    users exchange (results JSON, panoptic PNG + JSON) must carry the real ids, so that
    pycocotools and panopticapi read them. Convert here, nowhere else.

    Args:
        categories: COCO category dicts (``id``, ``name``, optional ``isthing``; a category
            without ``isthing`` — every one in an instances JSON — is a thing).

    Semantic labels (Panoptic-FPN's semantic head): all things are ONE class 0 "things",
    stuff are 1..S in sorted stuff-id order, void / unknown is ``IGNORE`` (255).
    """

    def __init__(self, categories: Sequence[dict]):
        ids = [int(c["id"]) for c in categories]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate category ids in {sorted(ids)}")
        self.names = {int(c["id"]): str(c["name"]) for c in categories}
        self.thing_ids = sorted(int(c["id"]) for c in categories if c.get("isthing", 1))
        self.stuff_ids = sorted(int(c["id"]) for c in categories if not c.get("isthing", 1))
        self._index = {cat_id: i for i, cat_id in enumerate(self.thing_ids)}
        self._semantic = {cat_id: 0 for cat_id in self.thing_ids}
        self._semantic.update({cat_id: 1 + i for i, cat_id in enumerate(self.stuff_ids)})

    num_things = property(lambda self: len(self.thing_ids), doc="C, the number of thing classes")
    num_stuff = property(lambda self: len(self.stuff_ids), doc="S, the number of stuff classes")
    num_semantic = property(lambda self: 1 + len(self.stuff_ids), doc="1 + S semantic classes")
    thing_names = property(lambda self: [self.names[i] for i in self.thing_ids])
    semantic_names = property(lambda self: ["things"] + [self.names[i] for i in self.stuff_ids])

    def thing_index(self, cat_id: Union[int, torch.Tensor]) -> Union[int, torch.Tensor]:
        """Thing category id → contiguous index 0..C-1 (an int, or a tensor of any shape)."""
        if isinstance(cat_id, torch.Tensor):
            lut = torch.full((max(self.thing_ids, default=0) + 1,), -1, dtype=torch.int64)
            lut[self.thing_ids] = torch.arange(self.num_things)
            ok = (cat_id >= 0) & (cat_id < len(lut))
            out = lut.to(cat_id.device)[cat_id.clamp(0, len(lut) - 1).long()]
            if not bool(((out >= 0) & ok).all()):
                raise ValueError(f"not a thing category id; thing ids are {self.thing_ids}")
            return out
        if int(cat_id) not in self._index:
            raise ValueError(f"{cat_id} is not a thing category id; thing ids are {self.thing_ids}")
        return self._index[int(cat_id)]

    def category_id(self, index: Union[int, torch.Tensor]) -> Union[int, torch.Tensor]:
        """Contiguous thing index 0..C-1 → dataset category id (an int, or a tensor)."""
        if isinstance(index, torch.Tensor):
            ids = torch.tensor(self.thing_ids, dtype=torch.int64, device=index.device)
            return ids[index.long()]
        return self.thing_ids[int(index)]

    def semantic_label(self, cat_id: int) -> int:
        """Category id → semantic label: things 0, stuff 1..S, anything else ``IGNORE``."""
        return self._semantic.get(int(cat_id), IGNORE)

    def semantic_lut(self) -> torch.Tensor:
        """Lookup table [max_id + 1] int64: ``lut[category_ids]`` gives semantic labels at once."""
        lut = torch.full((max(self.names, default=0) + 1,), IGNORE, dtype=torch.int64)
        for cat_id, label in self._semantic.items():
            lut[cat_id] = label
        return lut

    def __repr__(self) -> str:
        return f"CategoryMap(things={self.thing_names}, stuff={self.semantic_names[1:]})"


# ----------------------------------------------------------------------------- the dataset


class CocoInstances(Dataset):
    """COCO instances (and optionally panoptic semantic labels) as ``(image, target)`` pairs.

    Reads any COCO instance JSON — polygons, compressed or uncompressed RLE, ``iscrowd`` —
    via pycocotools. Item ``i``:

    - ``image``: [3, H, W] float32 in 0..1 (grayscale, CMYK, RGBA and palette images become
      RGB; the stored pixels, EXIF orientation ignored, as COCO's sizes and annotations are);
    - ``target``: ``boxes`` [G, 4] float32 xyxy (the tight box of each mask, x1 = last
      pixel + 1), ``labels`` [G] int64 contiguous thing indices (see ``categories``),
      ``masks`` [G, H, W] uint8, ``image_id`` int, and with a panoptic JSON ``sem_seg``
      [H, W] int64 (things 0, stuff 1..S, 255 void). G may be 0.

    Crowd annotations (``iscrowd=1``) are dropped from the targets, as in the official
    training recipe; they stay in ``coco`` so that COCOeval still treats them as ignore regions.

    Annotations are validated once here (:func:`validate_annotation`; about 25 µs per polygon
    annotation, so ~20 s for COCO train2017's 860k, measured on synthetic polygons). ``strict=False``
    skips bad ones, lists them in ``skipped`` and warns once; ``strict=True`` raises
    DatasetError at the first. Image and panoptic PNG problems raise DatasetError when the
    item is loaded. ``include_empty=False`` keeps only images with at least one instance
    (the official recipe's FILTER_EMPTY_ANNOTATIONS). ``transforms(image, target)`` runs last.
    :meth:`check_files` stats every image (and panoptic PNG) once, for a run to call before its
    first step.

    ``cache_mb``: keep every decoded item (image, masks and semantic labels as uint8, before the
    transforms) in memory after its first load, when :meth:`decoded_size_mb` — the JSON's
    estimate of all of them — is at most ``cache_mb``; ``cached`` says whether it is. Decoding
    is then paid once per image instead of once per epoch (a shapes item with its transforms:
    2.1 ms from memory, 7.6 ms decoded). The items are the same with or without it.
    """

    def __init__(self, images_dir: PathLike, instances_json: PathLike,
                 panoptic_json: Optional[PathLike] = None, panoptic_dir: Optional[PathLike] = None,
                 transforms: Optional[Callable] = None, strict: bool = False,
                 include_empty: bool = True, cache_mb: float = 0):
        self.images_dir, self.instances_json = Path(images_dir), Path(instances_json)
        self.transforms = transforms
        data = load_json(self.instances_json, TOP_KEYS)
        images, problems = index_entries(data["images"], "image", IMAGE_KEYS)
        things, more = index_entries(data["categories"], "category", ("id", "name"))
        if problems or more:
            raise DatasetError(self.instances_json, (problems + more)[0])
        categories = [{**c, "isthing": 1} for c in things.values()]

        self.panoptic_json = self.panoptic_dir = pan = None
        if panoptic_json is not None:
            self.panoptic_json = Path(panoptic_json)
            self.panoptic_dir = Path(panoptic_dir) if panoptic_dir else self.panoptic_json.with_suffix("")
            pan = load_json(self.panoptic_json, ("annotations", "categories"))
            stuff, problems = panoptic_stuff(pan["categories"], things)
            if problems:
                raise DatasetError(self.panoptic_json, problems[0])
            categories += stuff
        self.categories = CategoryMap(categories)

        valid, self.skipped = scan_annotations(data["annotations"], images, things)
        if self.skipped and strict:
            ann_id, problem = self.skipped[0]
            raise DatasetError(self.instances_json, problem, ann_id)
        if self.skipped:
            warnings.warn(skip_summary(self.instances_json, self.skipped), stacklevel=2)
        self.coco = make_coco({**data, "annotations": valid})
        self._instances = defaultdict(list)  # image id → its non-crowd annotations
        for ann in valid:
            if not ann.get("iscrowd", 0):
                self._instances[ann["image_id"]].append(ann)
        self.image_ids = sorted(i for i in images if include_empty or self._instances[i])

        self._panoptic = {}
        if pan is not None:
            self._panoptic, problems = index_panoptic(pan, images, self.categories.names)
            lacking = [i for i in self.image_ids if i not in self._panoptic]
            if lacking and not problems:
                problems = [f"no panoptic annotation for image id(s) {lacking[:5]}"]
            if problems:
                raise DatasetError(self.panoptic_json, problems[0])
        self.cached = 0 < self.decoded_size_mb() <= cache_mb
        self._decoded = {}  # i → (image, target) as _decode returns them, when cached

    def decoded_size_mb(self) -> float:
        """The memory all items take decoded, in MB, estimated from the JSON: H × W bytes per
        image for each of its 3 colour channels, its instance masks and (panoptic) its labels."""
        planes = 3 + (self.panoptic_json is not None)
        return sum(self.coco.imgs[i]["height"] * self.coco.imgs[i]["width"]
                   * (planes + len(self._instances.get(i, ()))) for i in self.image_ids) / 2 ** 20

    @classmethod
    def from_paths(cls, paths: DatasetPaths, **kwargs) -> "CocoInstances":
        """The dataset of a :func:`dataset_paths` result (panoptic included when present)."""
        return cls(paths.images_dir, paths.instances, paths.panoptic, paths.panoptic_dir, **kwargs)

    def __len__(self) -> int:
        return len(self.image_ids)

    def missing_images(self) -> list:
        """The image files of this dataset's images that do not exist (Paths, in image-id order;
        a ``stat`` each, no decoding: see :func:`~blendmask_edu.data.files.missing_files`)."""
        return missing_files(self.images_dir, [self.coco.imgs[i]["file_name"] for i in self.image_ids])

    def check_files(self) -> None:
        """Raise one DatasetError if any image file, or with panoptic labels any panoptic PNG,
        is missing: ``DIR: N of M image files (listed in FILE) are missing (first: ...)``.

        One call before the first training or evaluation step, so that a missing file stops the
        run at once instead of when the loader reaches it. Returns None when every file is there.
        """
        if self.image_ids and not self.images_dir.is_dir():
            raise DatasetError(self.images_dir, f"images folder not found; the {len(self.image_ids)} "
                                                f"images of {self.instances_json} go here")
        missing = self.missing_images()
        if missing:
            raise missing_files_error(self.images_dir, missing, len(self.image_ids),
                                      listed_in=self.instances_json)
        if self.panoptic_json is not None:
            names = [self._panoptic[i]["file_name"] for i in self.image_ids]
            missing = missing_files(self.panoptic_dir, names)
            if missing:
                raise missing_files_error(self.panoptic_dir, missing, len(names), "panoptic PNGs",
                                          listed_in=self.panoptic_json)

    def load_image(self, i: int) -> torch.Tensor:
        """Image ``i`` as [3, H, W] float32 in 0..1 (checked: exists, decodes, size as in JSON).

        The stored pixels, EXIF orientation ignored: COCO's JSON ``width``/``height`` and its
        annotations are in the stored pixels' frame, so turning the image would misplace them.
        """
        return self._image_uint8(i).float().div_(255)

    def _image_uint8(self, i: int) -> torch.Tensor:
        """Image ``i`` as [3, H, W] uint8 (what :meth:`load_image` scales to 0..1)."""
        info = self.coco.imgs[self.image_ids[i]]
        rgb = read_image(self.images_dir / info["file_name"], info)
        return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()

    def load_panoptic(self, i: int):
        """Panoptic ground truth of image ``i``: (segment ids [H, W] int64 numpy, 0 = void; its
        ``segments_info``), checked against each other (DatasetError naming the PNG)."""
        image_id = self.image_ids[i]
        info, pan = self.coco.imgs[image_id], self._panoptic[image_id]
        path = self.panoptic_dir / pan["file_name"]
        ids = read_panoptic(path, info)  # [H, W] segment ids
        problems = panoptic_problems(ids, pan["segments_info"])
        if problems:
            raise DatasetError(path, problems[0])
        return ids, pan["segments_info"]

    def load_sem_seg(self, i: int) -> torch.Tensor:
        """Panoptic semantic labels of image ``i``: [H, W] int64, things 0, stuff 1..S, 255 void."""
        ids, segments_info = self.load_panoptic(i)
        uniq, inverse = np.unique(ids, return_inverse=True)
        label_of = {s["id"]: self.categories.semantic_label(s["category_id"]) for s in segments_info}
        labels = np.array([label_of.get(int(u), IGNORE) for u in uniq], dtype=np.int64)
        return torch.from_numpy(labels[inverse.reshape(ids.shape)])  # id 0 (void) → IGNORE

    def __getitem__(self, i: int):
        if not self.cached:
            image, target = self._decode(i)
        else:  # copies, so that nothing downstream can change what is kept
            if i not in self._decoded:
                self._decoded[i] = self._decode(i)
            image, target = self._decoded[i]
            target = {k: v.clone() if torch.is_tensor(v) else v for k, v in target.items()}
        image = image.float().div_(255)
        if "sem_seg" in target:
            target["sem_seg"] = target["sem_seg"].long()
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def _decode(self, i: int):
        """Item ``i`` before the transforms, compact: image [3, H, W] uint8, ``sem_seg`` uint8."""
        image_id = self.image_ids[i]
        info = self.coco.imgs[image_id]
        H, W = info["height"], info["width"]
        image = self._image_uint8(i)
        anns = self._instances.get(image_id, [])
        if anns:
            masks = torch.from_numpy(np.stack([decode_segmentation(a["segmentation"], H, W) for a in anns]))
        else:
            masks = torch.zeros((0, H, W), dtype=torch.uint8)
        target = {
            "boxes": boxes_from_masks(masks),
            "labels": torch.tensor([self.categories.thing_index(a["category_id"]) for a in anns],
                                   dtype=torch.int64),
            "masks": masks,
            "image_id": int(image_id),
        }
        if self.panoptic_json is not None:  # labels ≤ 255 (IGNORE): one byte each
            target["sem_seg"] = self.load_sem_seg(i).to(torch.uint8)
        return image, target

    def __repr__(self) -> str:
        return (f"CocoInstances({len(self)} images from {self.instances_json}, {self.categories}, "
                f"{len(self.skipped)} annotations skipped)")
