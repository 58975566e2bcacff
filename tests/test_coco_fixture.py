"""Real COCO's properties (issue 15, item 2), each tested on a fixture that has it.

The fixture is ``write_coco_like``'s dataset (COCO 2017's layout, categories, encodings and
image kinds); each expected value is computed another way: from the files with PIL and
pycocotools directly, or from hand-drawn pixels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from blendmask_edu.conventions import IGNORE
from blendmask_edu.data.check import check_dataset, split_findings
from blendmask_edu.data.coco import CocoInstances
from blendmask_edu.data.coco_categories import COCO_STUFF_CATEGORIES, COCO_THING_CATEGORIES
from blendmask_edu.data.coco_like import SCENES, write_coco_like
from blendmask_edu.data.files import dataset_paths
from blendmask_edu.data.synthetic import count_components
from blendmask_edu.data.transforms import boxes_from_masks, build_train_transforms

SPLITS = ("train2017", "val2017")
MISSING_THING_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}  # COCO's gaps in 1..90
# pycocotools' Cython decode trips a numpy 2 deprecation (as in blendmask_edu.data.files)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def coco_like(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco_like")
    return write_coco_like(root, SPLITS, images_per_split=8, seed=0)


def load(summary, split="val2017", **kwargs):
    return CocoInstances.from_paths(dataset_paths(summary["root"], split), **kwargs)


def read(path):
    return json.loads(open(path, encoding="utf-8").read())


def scene(summary, name, split="val2017"):
    return summary["splits"][split]["scene_image_ids"][name]


def index_of(ds, image_id):
    return ds.image_ids.index(image_id)


def rle_mask(segm, h, w):
    """A segmentation decoded by pycocotools directly (each polygon part on its own, then OR)."""
    if isinstance(segm, list):
        return np.any([mask_utils.decode(r) for r in mask_utils.frPyObjects(segm, h, w)], axis=0)
    return mask_utils.decode(mask_utils.frPyObjects(segm, h, w)).astype(bool)


def panoptic_ids(path):
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


# ----------------------------------------------------------------------------- the files


@pytest.mark.parametrize("split", SPLITS)
def test_every_split_loads_strictly_and_checks_with_notes_only(coco_like, split):
    paths = dataset_paths(coco_like["root"], split)
    ds = CocoInstances.from_paths(paths, strict=True)
    assert len(ds) == 8 and ds.skipped == [] and ds.panoptic_json == paths.panoptic
    assert set(coco_like["splits"][split]["scene_image_ids"]) == set(SCENES) | {"plain"}
    defects, notes = split_findings(check_dataset(paths.images_dir, paths.instances, paths.panoptic,
                                                  paths.panoptic_dir, progress=False))
    assert defects == []
    crowd = [a for a in read(paths.instances)["annotations"] if a["iscrowd"]]
    assert [n.annotation_id for n in notes] == [a["id"] for a in crowd] and len(crowd) == 1
    assert "crowd area" in notes[0].problem


def test_same_seed_same_bytes_other_seed_other_pixels(tmp_path):
    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_coco_like(tmp_path / name, ("val2017",), images_per_split=6, seed=seed, max_side=64)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b and len(a) == 2 + 6 + 6  # two JSON files, 6 JPEGs, 6 PNGs
    assert a.keys() == c.keys() and a != c
    with pytest.raises(ValueError, match="images_per_split must be >= 6"):
        write_coco_like(tmp_path / "d", images_per_split=5)


def test_coco_sized_images(tmp_path):
    summary = write_coco_like(tmp_path, ("val2017",), images_per_split=6, max_side=640)
    sizes = {im["id"]: (im["width"], im["height"]) for im in read(summary["splits"]["val2017"]["paths"]["instances"])["images"]}
    assert sizes[scene(summary, "crowd")] == (640, 480) and sizes[scene(summary, "grayscale")] == (480, 640)
    assert sizes[scene(summary, "cmyk")] == (640, 640) and max(max(s) for s in sizes.values()) == 640
    for image_id, (w, h) in sizes.items():
        with Image.open(tmp_path / "val2017" / f"{image_id:012d}.jpg") as im:
            assert im.size == (w, h)


# ----------------------------------------------------------------------------- categories


def test_80_things_with_real_ids_map_to_contiguous_indices_and_back(coco_like):
    paths = dataset_paths(coco_like["root"], "val2017")
    things = read(paths.instances)["categories"]
    ids = [c["id"] for c in things]
    assert len(ids) == 80 and set(range(1, 91)) - set(ids) == MISSING_THING_IDS
    assert {c["name"] for c in things} >= {"person", "sports ball", "kite", "book", "toothbrush"}
    ds = load(coco_like)
    cats = ds.categories
    assert cats.thing_ids == sorted(ids) and cats.num_things == 80
    assert (cats.thing_index(1), cats.thing_index(11), cats.thing_index(13), cats.thing_index(90)) == (0, 10, 11, 79)
    assert [cats.category_id(i) for i in range(80)] == sorted(ids)
    with pytest.raises(ValueError):
        cats.thing_index(12)  # a gap in COCO's ids
    # every target label maps back to the category id of its annotation in the JSON
    anns = read(paths.instances)["annotations"]
    for i, image_id in enumerate(ds.image_ids):
        expected = [a["category_id"] for a in anns if a["image_id"] == image_id and not a["iscrowd"]]
        assert cats.category_id(ds[i][1]["labels"]).tolist() == expected
    used = {a["category_id"] for a in anns}
    assert {1, 37, 84, 90} <= used  # both ends of the id range and ids past the gaps


def test_133_panoptic_categories_give_things_0_stuff_1_to_53_void_255(coco_like):
    paths = dataset_paths(coco_like["root"], "val2017")
    pan = read(paths.panoptic)
    assert len(pan["categories"]) == 133
    stuff = sorted(c["id"] for c in pan["categories"] if not c["isthing"])
    assert len(stuff) == 53 and stuff[0] == 92 and stuff[-1] == 200
    assert {c["id"] for c in pan["categories"] if c["isthing"]} == {c["id"] for c in COCO_THING_CATEGORIES}
    assert stuff == [c["id"] for c in COCO_STUFF_CATEGORIES]
    ds = load(coco_like)
    assert ds.categories.num_semantic == 54 and ds.categories.semantic_names[1] == "banner"
    seen = set()
    for ann in pan["annotations"]:  # expected labels: by hand from the PNG and the JSON
        ids = panoptic_ids(paths.panoptic_dir / ann["file_name"])
        expected = np.full(ids.shape, 255)
        for s in ann["segments_info"]:
            expected[ids == s["id"]] = 0 if s["category_id"] <= 90 else 1 + stuff.index(s["category_id"])
        assert (ids == 0).any()  # every PNG holds void
        sem = ds.load_sem_seg(index_of(ds, ann["image_id"])).numpy()
        np.testing.assert_array_equal(sem, expected)
        seen |= set(np.unique(sem).tolist())
    assert {0, 1, 53, IGNORE} <= seen  # banner (92) is label 1, rug-merged (200) label 53


# ----------------------------------------------------------------------------- crowd regions


def test_crowd_uncompressed_rle_dropped_from_targets_kept_for_cocoeval(coco_like):
    paths = dataset_paths(coco_like["root"], "val2017")
    data, pan = read(paths.instances), read(paths.panoptic)
    image_id = scene(coco_like, "crowd")
    info = next(im for im in data["images"] if im["id"] == image_id)
    h, w = info["height"], info["width"]
    (crowd,) = [a for a in data["annotations"] if a["iscrowd"]]
    assert crowd["image_id"] == image_id and isinstance(crowd["segmentation"]["counts"], list)
    pixels = rle_mask(crowd["segmentation"], h, w)
    assert abs(crowd["area"] - pixels.sum()) > 0.05 * pixels.sum()  # as COCO's crowd areas
    # the same region in the panoptic PNG, as a crowd segment
    entry = next(a for a in pan["annotations"] if a["image_id"] == image_id)
    (segment,) = [s for s in entry["segments_info"] if s["iscrowd"]]
    assert segment["category_id"] == crowd["category_id"] == 1
    np.testing.assert_array_equal(panoptic_ids(paths.panoptic_dir / entry["file_name"]) == segment["id"], pixels)

    ds = load(coco_like)
    i = index_of(ds, image_id)
    _, target = ds[i]
    non_crowd = [a for a in data["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
    assert target["masks"].shape[0] == len(non_crowd) >= 1
    assert not any(torch.equal(m.bool(), torch.from_numpy(pixels)) for m in target["masks"])
    assert ds.coco.anns[crowd["id"]]["iscrowd"] == 1
    assert (ds.load_sem_seg(i).numpy()[pixels] == 0).all()  # crowd pixels are "things"

    # COCOeval on the loader's coco: the ground truth itself as detections scores AP 1, the
    # crowd region being an ignore region, not a missed object
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
                "segmentation": mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], ds.coco.imgs[a["image_id"]]["height"],
                                                                        ds.coco.imgs[a["image_id"]]["width"]))}
               for a in ds.coco.anns.values() if not a["iscrowd"]]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(ds.coco, ds.coco.loadRes(results), "segm")
        evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- polygons


def test_two_part_polygon_decodes_to_the_union(coco_like):
    paths = dataset_paths(coco_like["root"], "val2017")
    data = read(paths.instances)
    image_id = scene(coco_like, "grayscale")
    (car,) = [a for a in data["annotations"] if a["image_id"] == image_id and a["category_id"] == 3]
    assert len(car["segmentation"]) == 2
    info = next(im for im in data["images"] if im["id"] == image_id)
    hand = np.zeros((info["height"], info["width"]), bool)  # rectangles with integer corners
    for part in car["segmentation"]:
        xs, ys = part[0::2], part[1::2]
        hand[int(min(ys)):int(max(ys)), int(min(xs)):int(max(xs))] = True
    np.testing.assert_array_equal(rle_mask(car["segmentation"], *hand.shape), hand)
    ds = load(coco_like)
    _, target = ds[index_of(ds, image_id)]
    labels = ds.categories.category_id(target["labels"]).tolist()
    mask = target["masks"][labels.index(3)].numpy().astype(bool)
    np.testing.assert_array_equal(mask, hand)
    assert count_components(mask) == 2 and car["area"] == hand.sum()


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize("name, mode", [("grayscale", "L"), ("cmyk", "CMYK")])
def test_grayscale_and_cmyk_jpegs_load_as_rgb(coco_like, name, mode):
    ds = load(coco_like)
    i = index_of(ds, scene(coco_like, name))
    path = ds.images_dir / ds.coco.imgs[ds.image_ids[i]]["file_name"]
    with Image.open(path) as raw:
        assert raw.format == "JPEG" and raw.mode == mode
        expected = np.asarray(raw.convert("RGB"), dtype=np.float32) / 255
    image = ds.load_image(i)
    assert image.shape == (3, *expected.shape[:2]) and image.dtype == torch.float32
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), expected, atol=1e-6)
    if mode == "L":
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    else:
        assert (image[0] - image[1]).abs().max() > 0.2  # colour survived the CMYK round trip


def test_exif_orientation_is_ignored_sizes_and_annotations_are_the_stored_pixels(coco_like):
    ds = load(coco_like)
    image_id = scene(coco_like, "exif")
    i, info = index_of(ds, image_id), ds.coco.imgs[image_id]
    with Image.open(ds.images_dir / info["file_name"]) as raw:
        assert raw.getexif()[0x0112] == 6
        assert raw.size == (info["width"], info["height"])  # the JSON holds the stored size
        assert ImageOps.exif_transpose(raw).size == (info["height"], info["width"])  # turned: not it
    image, target = ds[i]
    assert image.shape == (3, info["height"], info["width"]) and info["width"] > info["height"]
    assert target["masks"].shape[0] == 2
    pixels = (image * 255).permute(1, 2, 0).numpy()
    for mask in target["masks"].numpy().astype(bool):
        inner = mask.copy()  # the mask shrunk by 2 px: away from JPEG-blurred edges
        for axis in (0, 1):
            for step in (1, 2, -1, -2):
                inner &= np.roll(mask, step, axis)
        ring = np.zeros_like(mask)
        ys, xs = np.nonzero(mask)
        ring[max(ys.min() - 6, 0):ys.max() + 7, max(xs.min() - 6, 0):xs.max() + 7] = True
        ring &= ~mask
        for axis in (0, 1):
            for step in (1, 2, 3, -1, -2, -3):
                ring &= ~np.roll(mask, step, axis)
        inside = pixels[inner]
        assert inside.std(0).max() < 8  # a flat-coloured object fills the mask
        assert np.abs(inside.mean(0) - pixels[ring].mean(0)).max() > 40  # and stands out


def test_image_without_annotations_kept_for_val_dropped_for_train(coco_like):
    image_id = scene(coco_like, "empty")
    ds = load(coco_like)
    assert image_id in ds.image_ids
    image, target = ds[index_of(ds, image_id)]
    H, W = image.shape[1:]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, H, W) and target["masks"].dtype == torch.uint8
    assert set(target["sem_seg"].unique().tolist()) <= set(range(1, 54)) | {IGNORE}
    assert image_id not in load(coco_like, include_empty=False).image_ids
    train_empty = scene(coco_like, "empty", "train2017")
    assert train_empty not in load(coco_like, "train2017", include_empty=False).image_ids


def test_tiny_and_sliver_objects_load_and_vanishing_ones_are_dropped_by_resizing(coco_like):
    ds = load(coco_like)
    image_id = scene(coco_like, "tiny")
    _, target = ds[index_of(ds, image_id)]
    areas = target["masks"].flatten(1).sum(1).tolist()
    boxes = target["boxes"]
    widths, heights = (boxes[:, 2] - boxes[:, 0]).tolist(), (boxes[:, 3] - boxes[:, 1]).tolist()
    length = max(12, ds.coco.imgs[image_id]["height"] // 12)
    sizes = sorted(zip(widths, heights, areas))
    assert sizes[:5] == sorted([(1, 1, 1), (2, 2, 4), (3, 3, 9), (1, length, length), (length, 1, length)])
    assert len(sizes) == 6  # and one ordinary object
    # the JSON's boxes agree with the masks (COCO's x, y, w, h)
    for ann in ds._instances[image_id]:
        if ann["area"] <= 3 * 3 or min(ann["bbox"][2:]) == 1:
            x, y, w, h = ann["bbox"]
            assert [x, y, x + w, y + h] in boxes.tolist()
    # the training resize to a quarter: an object none of whose pixels is sampled by the
    # nearest-exact resize (source pixel floor((i + 0.5) * 4)) vanishes and is dropped
    image, target = ds[index_of(ds, image_id)]
    H, W = image.shape[1:]
    rows, cols = (np.arange(H // 4) + 0.5) * 4, (np.arange(W // 4) + 0.5) * 4
    sampled = target["masks"].numpy()[:, rows.astype(int)][:, :, cols.astype(int)]
    survives = sampled.reshape(len(sampled), -1).any(1)
    assert 0 < survives.sum() < 6  # with this seed some tiny objects fall between samples
    small, resized = build_train_transforms(H // 4, 1000, flip_prob=0.0)(image, target)
    assert small.shape[1:] == (H // 4, W // 4)
    assert resized["labels"].tolist() == target["labels"][torch.from_numpy(survives)].tolist()
    np.testing.assert_array_equal(resized["masks"].numpy(), sampled[survives])
    torch.testing.assert_close(resized["boxes"], boxes_from_masks(resized["masks"]))


def test_degenerate_annotation_is_skipped_with_a_warning_and_is_a_defect(coco_like, tmp_path):
    """A polygon of zero width (COCO has a few such) decodes empty: the loader skips it with one
    warning, ``data check`` calls it a defect; the 1-px sliver next to it loads."""
    paths = dataset_paths(coco_like["root"], "val2017")
    data = read(paths.instances)
    image_id = scene(coco_like, "tiny")
    flat = {"id": 1, "image_id": image_id, "category_id": 90, "iscrowd": 0, "area": 0.0,
            "bbox": [5.5, 5.0, 0.01, 10.0], "segmentation": [[5.5, 5.0, 5.51, 15.0, 5.5, 15.0]]}
    broken = tmp_path / "instances_val2017.json"
    broken.write_text(json.dumps({**data, "annotations": data["annotations"] + [flat]}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoInstances(paths.images_dir, broken)
    assert len(caught) == 1 and "1: mask decodes empty" in str(caught[0].message)
    assert ds.skipped == [(1, "mask decodes empty")] and 1 not in ds.coco.anns
    defects, _ = split_findings(check_dataset(paths.images_dir, broken, progress=False))
    assert [(d.annotation_id, d.problem) for d in defects] == [(1, "mask decodes empty")]


# ----------------------------------------------------------------------------- batching


def test_landscape_portrait_square_in_one_batch_through_transforms_and_model(coco_like, capsys):
    from blendmask_edu.cli.common import fit_categories
    from blendmask_edu.modeling.blendmask import build_model
    from blendmask_edu.modeling.detector import normalize_and_pad
    from blendmask_edu.presets import get_config
    from blendmask_edu.training.sampling import batches

    transforms = build_train_transforms((64, 72), 120, flip_prob=0.5)
    ds = load(coco_like, "train2017", transforms=transforms, include_empty=False)
    shapes = {(im["width"] > im["height"]) - (im["width"] < im["height"]) for im in ds.coco.imgs.values()}
    assert shapes == {-1, 0, 1}  # portrait, square and landscape images
    images, targets = next(batches(ds, batch_size=len(ds), seed=0))
    assert len({tuple(im.shape) for im in images}) >= 3
    for image, target in zip(images, targets):
        assert target["masks"].shape[1:] == image.shape[1:] == target["sem_seg"].shape
    batch, sizes = normalize_and_pad(images, torch.zeros(3, 1, 1), torch.ones(3, 1, 1))
    assert batch.shape[2] % 32 == 0 and batch.shape[3] % 32 == 0
    for k, (h, w) in enumerate(sizes):
        torch.testing.assert_close(batch[k, :, :h, :w], images[k])
        assert (batch[k, :, h:, :] == 0).all() and (batch[k, :, :, w:] == 0).all()
    cfg = fit_categories(get_config("tiny"), ds)  # 80 things, 53 stuff
    cfg = dataclasses.replace(cfg, input=dataclasses.replace(cfg.input, train_short_sizes=(64, 72)))
    torch.manual_seed(0)
    losses = build_model(cfg).train()(images[:4], targets[:4])
    assert losses and all(torch.isfinite(v) for v in losses.values())
    assert "classes from the data (80)" in capsys.readouterr().out
