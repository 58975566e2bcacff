"""Tests for blendmask_edu.data.coco on tiny hand-made COCO datasets (see conftest.py)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from blendmask_edu.data.check import Defect, check_dataset, split_findings
from blendmask_edu.conventions import IGNORE
from blendmask_edu.data.coco import CategoryMap, CocoInstances
from blendmask_edu.data.files import dataset_paths, decode_segmentation, id_to_rgb, rgb_to_id
from blendmask_edu.data.subset import make_subset
from blendmask_edu.data.transforms import boxes_from_masks
from blendmask_edu.data.validation import panoptic_problems, validate_annotation
from blendmask_edu.data.errors import DatasetError

from conftest import BLOB, GROUND, H, SKY, SQUARE, W, edit_json, find


def load(t, **kwargs):
    return CocoInstances(t.images_dir, t.instances, t.panoptic, **kwargs)


# ----------------------------------------------------------------------------- the contract


def test_target_contract(tiny_coco):
    ds = load(tiny_coco)
    assert len(ds) == 4 and ds.image_ids == [1, 2, 3, 4] and ds.skipped == []
    expected_g = {1: 2, 2: 2, 3: 0, 4: 1}  # the crowd annotation 13 of image 1 is dropped
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.dtype == torch.float32 and image.shape == (3, H, W)
        assert 0 <= image.min() and image.max() <= 1
        G = expected_g[target["image_id"]]
        assert target["boxes"].shape == (G, 4) and target["boxes"].dtype == torch.float32
        assert target["labels"].shape == (G,) and target["labels"].dtype == torch.int64
        assert target["masks"].shape == (G, H, W) and target["masks"].dtype == torch.uint8
        assert target["sem_seg"].shape == (H, W) and target["sem_seg"].dtype == torch.int64
        assert isinstance(target["image_id"], int)
        torch.testing.assert_close(target["boxes"], boxes_from_masks(target["masks"]))
        assert set(target["labels"].tolist()) <= {0, 1}  # contiguous thing indices
        assert set(target["sem_seg"].unique().tolist()) <= {0, 1, 2, IGNORE}


def test_targets_hold_the_right_objects(tiny_coco):
    ds = load(tiny_coco)
    _, target = ds[0]  # image 1: polygon square (11), RLE blob (12); crowd 13 dropped
    assert target["labels"].tolist() == [ds.categories.thing_index(SQUARE), ds.categories.thing_index(BLOB)]
    assert target["labels"].tolist() == [1, 0]  # ids sorted: blob 3 → 0, square 7 → 1
    np.testing.assert_array_equal(target["masks"][0].numpy(), tiny_coco.masks[11])
    np.testing.assert_array_equal(target["masks"][1].numpy(), tiny_coco.masks[12])
    assert target["boxes"][0].tolist() == [10, 5, 20, 15]  # x1 = last column + 1
    assert 13 in ds.coco.anns and ds.coco.anns[13]["iscrowd"] == 1  # kept for COCOeval


def test_sem_seg_things_zero_stuff_contiguous_void_255(tiny_coco):
    ds = load(tiny_coco)
    for i, image_id in enumerate(ds.image_ids):
        np.testing.assert_array_equal(ds[i][1]["sem_seg"].numpy(), tiny_coco.sem[image_id])
    sem = ds[0][1]["sem_seg"]
    assert (sem[5:15, 10:20] == 0).all() and sem[0, 0] == 2 and sem[39, 0] == 1 and sem[20, 0] == IGNORE


def test_no_panoptic_no_sem_seg(tiny_coco):
    ds = CocoInstances(tiny_coco.images_dir, tiny_coco.instances)
    assert "sem_seg" not in ds[0][1] and ds.categories.stuff_ids == []


def test_empty_image_and_include_empty(tiny_coco):
    ds = load(tiny_coco)
    _, target = ds[ds.image_ids.index(3)]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, H, W)
    assert load(tiny_coco, include_empty=False).image_ids == [1, 2, 4]


def test_grayscale_rgba_palette_become_rgb(tiny_coco):
    ds = load(tiny_coco)
    gray = ds.load_image(1)
    assert gray.shape == (3, H, W) and torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    expected = np.asarray(Image.open(tiny_coco.images_dir / "b.png"), dtype=np.float32) / 255
    np.testing.assert_allclose(gray[0].numpy(), expected)
    assert ds.load_image(2).shape == (3, H, W) and ds.load_image(3).shape == (3, H, W)


def test_cached_items_equal_decoded_ones_and_stay_unchanged(tiny_coco):
    plain, cached = load(tiny_coco), load(tiny_coco, cache_mb=100)
    assert not plain.cached and cached.cached
    # 4 images of H × W: 3 colour planes + 1 label plane each, + one plane per instance (5)
    assert cached.decoded_size_mb() == pytest.approx(H * W * (4 * 4 + 5) / 2 ** 20)
    assert not load(tiny_coco, cache_mb=cached.decoded_size_mb() / 2).cached  # does not fit
    for i in range(len(plain)):
        for _ in range(2):  # the first load fills the cache, the second reads it
            (a, ta), (b, tb) = plain[i], cached[i]
            assert torch.equal(a, b) and a.dtype == b.dtype == torch.float32
            assert ta.keys() == tb.keys()
            for key in ta:
                if torch.is_tensor(ta[key]):
                    assert ta[key].dtype == tb[key].dtype and torch.equal(ta[key], tb[key]), key
                else:
                    assert ta[key] == tb[key]
            tb["masks"].zero_()  # what a caller does to its item does not reach the cache
            b.zero_()
    assert cached[0][1]["masks"].any() and cached[0][0].any()


def test_transforms_run_last(tiny_coco):
    def flip(image, target):
        return image.flip(-1), {**target, "flipped": True}

    image, target = load(tiny_coco, transforms=flip)[0]
    assert target["flipped"] and torch.equal(image, load(tiny_coco).load_image(0).flip(-1))


# ----------------------------------------------------------------------------- pure helpers


def test_decode_polygon_rle_uncompressed(tiny_coco):
    data = json.loads(tiny_coco.instances.read_text())
    for ann_id in (11, 12, 13, 21, 41):  # polygon, RLE, uncompressed RLE (crowd), uncompressed, 2 parts
        m = decode_segmentation(find(data["annotations"], ann_id)["segmentation"], H, W)
        assert m.dtype == np.uint8 and m.shape == (H, W)
        np.testing.assert_array_equal(m, tiny_coco.masks[ann_id])
    # the triangle against a pixel-centre test; boundary pixels may differ
    m = decode_segmentation(find(data["annotations"], 22)["segmentation"], H, W).astype(bool)
    yy, xx = np.mgrid[:H, :W] + 0.5
    inside = (yy <= 35) & (yy >= 20 + np.abs(xx - 15) * 1.5)  # apex (15, 20), base y = 35, x 5..25
    assert (m & inside).sum() / (m | inside).sum() > 0.85


def test_rgb_id_round_trip():
    ids = np.array([[0, 1, 256], [65536, 16777215, 1 + 2 * 256 + 3 * 65536]])
    rgb = id_to_rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3) and rgb[1, 2].tolist() == [1, 2, 3]
    np.testing.assert_array_equal(rgb_to_id(rgb), ids)
    assert torch.equal(rgb_to_id(id_to_rgb(torch.from_numpy(ids))), torch.from_numpy(ids))


def test_category_map_round_trip():
    cats = CategoryMap([{"id": 20, "name": "sky", "isthing": 0}, {"id": 7, "name": "square"},
                        {"id": 3, "name": "blob", "isthing": 1}, {"id": 15, "name": "ground", "isthing": 0}])
    assert cats.thing_ids == [3, 7] and cats.stuff_ids == [15, 20]
    assert cats.num_things == 2 and cats.num_stuff == 2 and cats.num_semantic == 3
    assert cats.names[7] == "square" and cats.thing_names == ["blob", "square"]
    for i, cat_id in enumerate(cats.thing_ids):
        assert cats.thing_index(cat_id) == i and cats.category_id(i) == cat_id
    idx = torch.tensor([[1, 0], [1, 1]])
    assert torch.equal(cats.thing_index(cats.category_id(idx)), idx)
    assert cats.category_id(idx).tolist() == [[7, 3], [7, 7]]
    assert [cats.semantic_label(c) for c in (3, 7, 15, 20, 0, 99)] == [0, 0, 1, 2, IGNORE, IGNORE]
    lut = cats.semantic_lut()
    assert lut[torch.tensor([0, 3, 7, 15, 20])].tolist() == [IGNORE, 0, 0, 1, 2]
    with pytest.raises(ValueError):
        cats.thing_index(15)  # stuff is not a thing
    with pytest.raises(ValueError):
        cats.thing_index(torch.tensor([3, 99]))


def test_validate_annotation_is_pure():
    image = {"id": 1, "height": H, "width": W}
    good = {"id": 5, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5],
            "segmentation": [[1, 1, 6, 1, 6, 6]]}
    assert validate_annotation(good, image, {3}) is None
    assert "unknown image id" in validate_annotation(good, None, {3})
    assert "unknown category" in validate_annotation(good, image, {4})
    assert "cut off" in validate_annotation({**good, "segmentation": {"size": [H, W], "counts": "P"}}, image, {3})
    bad_counts = {"size": [H, W], "counts": [5, 10]}
    assert "not height*width" in validate_annotation({**good, "segmentation": bad_counts}, image, {3})
    assert "odd number" in validate_annotation({**good, "segmentation": [[1, 1, 6, 1, 6, 6, 2]]}, image, {3})


# ----------------------------------------------------------------------------- bad input

BAD_ANNOTATIONS = {  # name → (annotation id, change, words expected in the problem)
    "unknown category": (22, lambda a: a.update(category_id=999), "unknown category id 999"),
    "polygon < 3 points": (22, lambda a: a.update(segmentation=[[1, 1, 5, 5]]), "fewer than 3 points"),
    "zero box": (22, lambda a: a.update(bbox=[1, 1, 0, 5]), "zero or negative box"),
    "negative box": (22, lambda a: a.update(bbox=[1, 1, 5, -2]), "zero or negative box"),
    "negative corner": (22, lambda a: a.update(bbox=[-1, 1, 5, 5]), "negative box corner"),
    "unknown image": (22, lambda a: a.update(image_id=777), "unknown image id 777"),
    "RLE size": (12, lambda a: a["segmentation"].update(size=[41, 50]), "does not match"),
    "empty mask": (21, lambda a: a.update(segmentation={"size": [H, W], "counts": [H * W]}), "decodes empty"),
    **{f"missing {k}": (22, lambda a, k=k: a.pop(k), repr(k))
       for k in ("image_id", "category_id", "bbox", "segmentation")},
}


@pytest.mark.parametrize("case", list(BAD_ANNOTATIONS))
def test_bad_annotation_strict_raises_naming_file_and_id(tiny_coco, case):
    ann_id, change, words = BAD_ANNOTATIONS[case]
    edit_json(tiny_coco.instances, lambda d: change(find(d["annotations"], ann_id)))
    with pytest.raises(DatasetError) as e:
        load(tiny_coco, strict=True)
    assert str(tiny_coco.instances) in str(e.value) and f"annotation {ann_id}" in str(e.value)
    assert words in str(e.value) and e.value.annotation_id == ann_id


def test_annotation_without_id_is_reported_by_position(tiny_coco):
    edit_json(tiny_coco.instances, lambda d: find(d["annotations"], 22).pop("id"))
    with pytest.raises(DatasetError, match=r"missing key\(s\) 'id' \(entry #4\)"):
        load(tiny_coco, strict=True)


def test_non_strict_skips_counts_and_warns_once(tiny_coco):
    def plant(d):
        find(d["annotations"], 22)["category_id"] = 999
        find(d["annotations"], 41)["bbox"] = [0, 0, 0, 0]

    edit_json(tiny_coco.instances, plant)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load(tiny_coco)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "skipped 2 bad annotations" in message and str(tiny_coco.instances) in message
    assert "22: unknown category" in message and "41: zero or negative box" in message
    assert [a for a, _ in ds.skipped] == [22, 41]
    assert ds[1][1]["labels"].tolist() == [0] and ds[3][1]["masks"].shape[0] == 0
    assert 22 not in ds.coco.anns


def test_truncated_image(tiny_coco):
    path = tiny_coco.images_dir / "a.png"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    ds = load(tiny_coco)
    with pytest.raises(DatasetError, match="truncated or corrupt") as e:
        ds[0]
    assert e.value.path == str(path)


def test_missing_image(tiny_coco):
    (tiny_coco.images_dir / "b.png").unlink()
    with pytest.raises(DatasetError, match="image file not found") as e:
        load(tiny_coco)[1]
    assert str(tiny_coco.images_dir / "b.png") in str(e.value)


def test_image_size_differs_from_json(tiny_coco):
    edit_json(tiny_coco.instances, lambda d: find(d["images"], 3).update(width=51))
    with pytest.raises(DatasetError, match=r"50x40 \(width x height\) but the JSON says 51x40") as e:
        load(tiny_coco)[2]
    assert "c.png" in str(e.value)


def test_not_json_missing_file_missing_keys(tiny_coco):
    tiny_coco.instances.write_text("this is { not json")
    with pytest.raises(DatasetError, match="not valid JSON") as e:
        load(tiny_coco)
    assert str(tiny_coco.instances) in str(e.value)
    tiny_coco.instances.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load(tiny_coco)
    tiny_coco.instances.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DatasetError, match=r"missing top-level key\(s\) \['categories'\]"):
        load(tiny_coco)
    tiny_coco.instances.unlink()
    with pytest.raises(DatasetError, match="file not found"):
        load(tiny_coco)


def test_panoptic_missing_png(tiny_coco):
    (tiny_coco.panoptic_dir / "002.png").unlink()
    with pytest.raises(DatasetError, match="panoptic PNG not found") as e:
        load(tiny_coco)[1]
    assert "002.png" in str(e.value)


def test_panoptic_png_size_mismatch(tiny_coco):
    Image.new("RGB", (10, 10)).save(tiny_coco.panoptic_dir / "001.png")
    with pytest.raises(DatasetError, match="panoptic PNG is 10x10") as e:
        load(tiny_coco)[0]
    assert "001.png" in str(e.value)


def test_panoptic_png_id_not_in_segments_info(tiny_coco):
    edit_json(tiny_coco.panoptic, lambda d: find(d["annotations"], 1)["segments_info"].pop(0))
    with pytest.raises(DatasetError, match="PNG holds segment id 197121 that is not in segments_info") as e:
        load(tiny_coco)[0]
    assert "001.png" in str(e.value)


def test_panoptic_segments_info_id_not_in_png(tiny_coco):
    edit_json(tiny_coco.panoptic, lambda d: find(d["annotations"], 1)["segments_info"].append(
        {"id": 999, "category_id": SKY, "iscrowd": 0}))
    with pytest.raises(DatasetError, match="segments_info id 999 does not occur in the PNG"):
        load(tiny_coco)[0]


def test_panoptic_unknown_category(tiny_coco):
    edit_json(tiny_coco.panoptic, lambda d: find(d["annotations"], 3)["segments_info"][0].update(category_id=42))
    with pytest.raises(DatasetError, match="image 3: segment 5: unknown category id 42") as e:
        load(tiny_coco)
    assert str(tiny_coco.panoptic) in str(e.value)


def test_dataset_paths(tiny_coco, tmp_path):
    paths = dataset_paths(tiny_coco.root, "val")
    assert paths.images_dir == tiny_coco.images_dir and paths.instances == tiny_coco.instances
    assert paths.panoptic == tiny_coco.panoptic and paths.panoptic_dir == tiny_coco.panoptic_dir
    assert len(CocoInstances.from_paths(paths)) == 4
    tiny_coco.panoptic.unlink()
    assert dataset_paths(tiny_coco.root, "val").panoptic is None
    with pytest.raises(DatasetError, match="instances_train.json: instances file not found; place"):
        dataset_paths(tiny_coco.root, "train")
    with pytest.raises(DatasetError, match="dataset root not found"):
        dataset_paths(tmp_path / "nowhere", "val")


# ----------------------------------------------------------------------------- check_dataset


def test_check_dataset_clean(tiny_coco):
    assert check_dataset(tiny_coco.images_dir, tiny_coco.instances, tiny_coco.panoptic, progress=False) == []


def test_check_dataset_finds_every_planted_defect(tiny_coco):
    path = tiny_coco.images_dir / "a.png"
    path.write_bytes(path.read_bytes()[:200])
    (tiny_coco.images_dir / "d.png").unlink()

    def plant(d):
        find(d["annotations"], 22)["category_id"] = 999
        find(d["annotations"], 12)["bbox"] = [3, 3, 0, 4]
        find(d["annotations"], 21)["segmentation"] = [[1, 2, 3, 4]]
        d["annotations"].append({**find(d["annotations"], 11), "image_id": 1234})
        d["annotations"].append({**find(d["annotations"], 11)})  # duplicate annotation id
        d["images"].append({**find(d["images"], 3)})  # duplicate image id
        find(d["annotations"], 13)["area"] += 50  # a crowd's area: a note, as in real COCO

    def plant_panoptic(d):
        find(d["annotations"], 2)["segments_info"].pop(0)
        find(d["annotations"], 3)["segments_info"][0]["area"] += 1
        find(d["annotations"], 4)["segments_info"][0]["bbox"][0] += 1

    edit_json(tiny_coco.instances, plant)
    edit_json(tiny_coco.panoptic, plant_panoptic)
    findings = check_dataset(tiny_coco.images_dir, tiny_coco.instances, tiny_coco.panoptic, progress=False)
    assert all(isinstance(d, Defect) for d in findings)
    defects, notes = split_findings(findings)
    expected = {"defect": ["a.png: cannot decode the image", "d.png: image file not found",
                           "annotation 22: unknown category id 999", "annotation 12: zero or negative box",
                           "annotation 21: polygon with fewer than 3 points",
                           "annotation 11: unknown image id 1234",
                           "annotation 11: annotation id 11 is duplicated", "image id 3 is duplicated",
                           "002.png: PNG holds segment id 70000",
                           "003.png: segment 5: area"],  # panopticapi reads the GT's area
                "note": ["annotation 13: crowd area 106 but its RLE mask has 56 pixels",
                         "004.png: segment 5: bbox"]}
    for kind, found in (("defect", defects), ("note", notes)):
        text = "\n".join(map(str, found))
        for words in expected[kind]:
            assert words in text, f"{words!r} not found among the {kind}s:\n{text}"
        assert len(found) == len(expected[kind]) and all(f.kind == kind for f in found)


def test_check_dataset_notes_and_defects_of_rle_geometry(tiny_coco):
    """Crowd area: a note (COCO's own crowd areas differ, nothing reads them); a non-crowd RLE
    area (COCOeval's area ranges) and any RLE box (box AP, crowd ignore regions): defects."""
    def plant(d):
        find(d["annotations"], 13)["area"] = 3  # crowd: 56 pixels
        find(d["annotations"], 12)["area"] += 40  # non-crowd compressed RLE
        find(d["annotations"], 21)["bbox"][0] += 3  # non-crowd uncompressed RLE

    edit_json(tiny_coco.instances, plant)
    findings = check_dataset(tiny_coco.images_dir, tiny_coco.instances, tiny_coco.panoptic, progress=False)
    assert sorted((f.annotation_id, f.kind) for f in findings) == [(12, "defect"), (13, "note"), (21, "defect")]
    edit_json(tiny_coco.instances, lambda d: find(d["annotations"], 13)["bbox"].__setitem__(2, 20))
    findings = check_dataset(tiny_coco.images_dir, tiny_coco.instances, tiny_coco.panoptic, progress=False)
    crowd = [(f.kind, f.problem.split()[0]) for f in findings if f.annotation_id == 13]
    assert sorted(crowd) == [("defect", "bbox"), ("note", "crowd")]


def test_check_dataset_bad_json(tmp_path):
    bad = tmp_path / "instances_x.json"
    bad.write_text("[1, 2")
    (defect,) = check_dataset(tmp_path, bad, progress=False)
    assert defect.path == str(bad) and "not valid JSON" in str(defect)


# ----------------------------------------------------------------------------- make_subset


def test_make_subset_categories_count_and_validity(tiny_coco, tmp_path):
    paths = make_subset(tiny_coco.instances, tmp_path / "sub", tiny_coco.panoptic,
                        num_images=1, categories=["square"], seed=0)
    assert paths.split == "val" and paths.instances == tmp_path / "sub/annotations/instances_val.json"
    assert check_dataset(paths.images_dir, paths.instances, paths.panoptic, progress=False) == []
    coco = COCO(str(paths.instances))
    assert len(coco.getImgIds()) == 1 and coco.getCatIds() == [SQUARE]
    assert {a["category_id"] for a in coco.anns.values()} == {SQUARE}
    assert coco.getImgIds()[0] in (1, 2)  # the images holding a non-crowd square
    pan = json.loads(paths.panoptic.read_text())
    assert {c["id"] for c in pan["categories"]} == {SQUARE, GROUND, SKY}
    assert len(CocoInstances.from_paths(paths)) == 1


def test_make_subset_drops_thing_pixels_from_panoptic(tiny_coco, tmp_path):
    paths = make_subset(tiny_coco.instances, tmp_path / "sub", tiny_coco.panoptic, categories=["square"])
    assert check_dataset(paths.images_dir, paths.instances, paths.panoptic, progress=False) == []
    pan = json.loads(paths.panoptic.read_text())
    assert [a["image_id"] for a in pan["annotations"]] == [1, 2]
    seg2 = find(pan["annotations"], 2)["segments_info"]
    assert {s["category_id"] for s in seg2} == {SKY, GROUND}  # the blob segment is gone
    ids = rgb_to_id(np.asarray(Image.open(paths.panoptic_dir / "002.png").convert("RGB")))
    assert (ids[tiny_coco.masks[21] > 0] == 0).all() and 70000 not in ids
    sem = CocoInstances.from_paths(paths)[1][1]["sem_seg"]
    assert (sem[torch.from_numpy(tiny_coco.masks[21]) > 0] == IGNORE).all()


def test_make_subset_is_deterministic(tiny_coco, tmp_path):
    outputs = []
    for name in ("one", "two"):
        paths = make_subset(tiny_coco.instances, tmp_path / name, tiny_coco.panoptic, num_images=2, seed=3)
        files = sorted(p for p in paths.root.rglob("*") if p.is_file())
        outputs.append({str(p.relative_to(paths.root)): p.read_bytes() for p in files})
    assert outputs[0] == outputs[1] and len(outputs[0]) == 2 + 2 + 2  # 2 JSONs, 2 images, 2 PNGs


def test_make_subset_without_panoptic_and_errors(tiny_coco, tmp_path):
    paths = make_subset(tiny_coco.instances, tmp_path / "sub")
    assert paths.panoptic is None and sorted(COCO(str(paths.instances)).getImgIds()) == [1, 2, 4]
    with pytest.raises(ValueError, match=r"unknown category name\(s\) \['dog'\]; valid names: \['blob', 'square'\]"):
        make_subset(tiny_coco.instances, tmp_path / "other", categories=["dog"])
    with pytest.raises(ValueError, match="would overwrite the source"):
        make_subset(tiny_coco.instances, tiny_coco.root)


def test_panoptic_problems_pure():
    ids = np.zeros((4, 4), np.int64)
    ids[1:3, 1:3] = 9
    good = [{"id": 9, "category_id": 1, "area": 4, "bbox": [1, 1, 2, 2]}]
    assert panoptic_problems(ids, good, check_stats=True) == []
    assert panoptic_problems(ids, [], check_stats=True) == ["PNG holds segment id 9 that is not in segments_info"]
    assert len(panoptic_problems(ids, good + [dict(good[0])])) == 1  # duplicate id
