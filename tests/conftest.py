"""Shared fixtures: tiny hand-made COCO datasets (instances + panoptic) written into tmp_path.

The expected masks are drawn with numpy slicing, independently of pycocotools, so that tests
can check that each segmentation format decodes to the right pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

H, W = 40, 50  # every tiny image is 40 rows x 50 columns
BLOB, SQUARE = 3, 7  # thing category ids, deliberately not 0..C-1
GROUND, SKY = 15, 20  # stuff category ids
SKY_LABEL, GROUND_LABEL = 2, 1  # semantic labels: stuff sorted by id → ground 1, sky 2
THING_SEG = 1 + 2 * 256 + 3 * 65536  # a segment id that uses all three PNG channels


def rect(y0, y1, x0, x1):
    """Mask [H, W] uint8 of rows y0..y1-1, columns x0..x1-1."""
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def disk(cy, cx, r):
    yy, xx = np.mgrid[:H, :W]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def uncompressed_rle(mask):
    """COCO's uncompressed RLE, written by hand: column-major runs, starting with zeros."""
    flat = mask.T.ravel()  # column-major (Fortran) order
    edges = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def compressed_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def coco_box(mask):
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def edit_json(path, fn):
    """Load a JSON file, let ``fn`` change it in place, write it back."""
    data = json.loads(Path(path).read_text())
    fn(data)
    Path(path).write_text(json.dumps(data))


def find(items, id_):
    return next(x for x in items if x.get("id", x.get("image_id")) == id_)


@dataclass
class TinyCoco:
    root: Path
    images_dir: Path
    instances: Path
    panoptic: Path
    panoptic_dir: Path
    masks: dict = field(default_factory=dict)  # annotation id → expected mask [H, W]
    sem: dict = field(default_factory=dict)  # image id → expected sem_seg [H, W]


def build_tiny_coco(root: Path) -> TinyCoco:
    """Four 40x50 images in COCO's layout, split "val".

    image 1 (RGB):       ann 11 square polygon, ann 12 blob compressed RLE, ann 13 crowd square
                         (uncompressed RLE); panoptic: one thing + sky + ground
    image 2 (grayscale): ann 21 blob uncompressed RLE, ann 22 square triangle polygon
    image 3 (RGBA):      no annotation
    image 4 (palette):   ann 41 blob, a two-part polygon
    """
    rng = np.random.default_rng(0)
    images_dir, ann_dir = root / "val", root / "annotations"
    pan_dir = ann_dir / "panoptic_val"
    for d in (images_dir, pan_dir):
        d.mkdir(parents=True)
    noise = lambda *shape: rng.integers(0, 256, shape, dtype=np.uint8)  # noqa: E731
    Image.fromarray(noise(H, W, 3), "RGB").save(images_dir / "a.png")
    Image.fromarray(noise(H, W), "L").save(images_dir / "b.png")
    Image.fromarray(noise(H, W, 4), "RGBA").save(images_dir / "c.png")
    palette = Image.fromarray(noise(H, W) % 16, "P")
    palette.putpalette(noise(16 * 3).tolist())
    palette.save(images_dir / "d.png")

    masks = {
        11: rect(5, 15, 10, 20),
        12: disk(25, 35, 6),
        13: rect(30, 38, 2, 9),
        21: rect(20, 30, 30, 45) - rect(20, 25, 38, 45),  # an L shape
        22: None,  # a triangle: compared by IoU with a pixel-centre test
        41: rect(2, 8, 2, 8) | rect(30, 38, 40, 48),
    }
    triangle = [5, 35, 25, 35, 15, 20]
    segm = {
        11: [[10, 5, 20, 5, 20, 15, 10, 15]],
        12: compressed_rle(masks[12]),
        13: uncompressed_rle(masks[13]),
        21: uncompressed_rle(masks[21]),
        22: [triangle],
        41: [[2, 2, 8, 2, 8, 8, 2, 8], [40, 30, 48, 30, 48, 38, 40, 38]],
    }
    where = {11: (1, SQUARE), 12: (1, BLOB), 13: (1, SQUARE), 21: (2, BLOB), 22: (2, SQUARE), 41: (4, BLOB)}
    annotations = []
    for ann_id, (image_id, cat) in where.items():
        m = masks[ann_id]
        annotations.append({
            "id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": segm[ann_id],
            "bbox": coco_box(m) if m is not None else [5, 20, 20, 15],
            "area": int(m.sum()) if m is not None else 150, "iscrowd": int(ann_id == 13),
        })
    images = [{"id": i, "file_name": f, "width": W, "height": H}
              for i, f in [(1, "a.png"), (2, "b.png"), (3, "c.png"), (4, "d.png")]]
    things = [{"id": SQUARE, "name": "square", "supercategory": "shape"},
              {"id": BLOB, "name": "blob", "supercategory": "shape"}]
    instances = ann_dir / "instances_val.json"
    instances.write_text(json.dumps({"images": images, "annotations": annotations, "categories": things,
                                     "info": {"description": "tiny"}, "licenses": []}))

    # panoptic: (segment id, category, mask) per image; later segments don't overlap earlier ones
    def band(y0, y1, minus=None):
        m = rect(y0, y1, 0, W)
        return m if minus is None else m & (1 - minus)

    segments = {
        1: [(THING_SEG, SQUARE, masks[11]), (5, SKY, band(0, 10, masks[11])), (300, GROUND, band(32, 40))],
        2: [(70000, BLOB, masks[21]), (5, SKY, band(0, 5)), (300, GROUND, band(36, 40))],
        3: [(5, SKY, band(0, 10)), (300, GROUND, band(30, 40))],
        4: [(5, SKY, band(0, 10, masks[41])), (300, GROUND, band(30, 40, masks[41])),
            (8, BLOB, masks[41])],
    }
    label = {SQUARE: 0, BLOB: 0, SKY: SKY_LABEL, GROUND: GROUND_LABEL}
    pan_annotations, sem = [], {}
    for image_id, segs in segments.items():
        ids = np.zeros((H, W), np.int64)
        sem[image_id] = np.full((H, W), 255, np.int64)
        for seg_id, cat, m in segs:
            ids[m > 0] = seg_id
            sem[image_id][m > 0] = label[cat]
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        name = f"{image_id:03d}.png"
        Image.fromarray(rgb, "RGB").save(pan_dir / name)
        pan_annotations.append({"image_id": image_id, "file_name": name, "segments_info": [
            {"id": seg_id, "category_id": cat, "iscrowd": 0, "area": int(m.sum()), "bbox": coco_box(m)}
            for seg_id, cat, m in segs]})
    pan_categories = [{**c, "isthing": 1, "color": [200, 0, 0]} for c in things] + [
        {"id": GROUND, "name": "ground", "isthing": 0, "color": [0, 200, 0], "supercategory": "stuff"},
        {"id": SKY, "name": "sky", "isthing": 0, "color": [0, 0, 200], "supercategory": "stuff"}]
    panoptic = ann_dir / "panoptic_val.json"
    panoptic.write_text(json.dumps({"images": images, "annotations": pan_annotations,
                                    "categories": pan_categories}))
    return TinyCoco(root, images_dir, instances, panoptic, pan_dir, masks, sem)


@pytest.fixture
def tiny_coco(tmp_path) -> TinyCoco:
    return build_tiny_coco(tmp_path / "coco")


def shapes_split(tmp_path_factory, split: str = "val", num_train: int = 0, num_val: int = 2,
                 size: int = 64, seed: int = 0):
    """A freshly generated shapes dataset's ``split`` as a CocoInstances (for module fixtures)."""
    from blendmask_edu.data.coco import CocoInstances
    from blendmask_edu.data.files import dataset_paths
    from blendmask_edu.data.synthetic import generate_shapes

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, num_train=num_train, num_val=num_val, size=size, seed=seed, progress=False)
    return CocoInstances.from_paths(dataset_paths(root, split))


# ----------------------------------------------------------------------------- command line runs

# Two steps of batch 4 on the 64 px images at their own size (the preset would resize to 128).
QUICK = ["--max-iter", "2", "--quiet", "--solver.batch_size", "4",
         "--input.train_short_sizes", "[64]", "--input.test_short_size", "64"]
# The scores of a 2-step model are all below the preset's 0.05: keep every candidate, so that
# the files the commands write hold detections.
TINY_RUN = QUICK + ["--fcos.score_thresh", "0.0"]


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory):
    """8 train + 2 val shapes images of 64 px, made by the command line (one per test module)."""
    from blendmask_edu.cli.main import main

    root = tmp_path_factory.mktemp("small") / "shapes"
    assert main(["data", "shapes", "--out", str(root), "--train", "8", "--val", "2",
                 "--size", "64", "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Six 64 px shapes images (three batches of 2 an epoch)."""
    from blendmask_edu.data.synthetic import generate_shapes

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, num_train=6, num_val=2, size=64, seed=0, progress=False)
    return root


def shapes_train_set(root):
    """The train split of ``root`` with the random training transforms: a shorter side of 48
    or 64, flips."""
    from blendmask_edu.data.coco import CocoInstances
    from blendmask_edu.data.files import dataset_paths
    from blendmask_edu.data.transforms import build_train_transforms

    return CocoInstances.from_paths(dataset_paths(root, "train"),
                                    transforms=build_train_transforms((48, 64), 64, 0.5))
