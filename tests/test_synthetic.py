"""Tests of the shapes dataset generator (blendmask_edu.data.synthetic, data.shapes_drawing)."""

import hashlib
import json
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from blendmask_edu.data import synthetic
from blendmask_edu.data.shapes_drawing import draw_background, draw_scene, paint
from blendmask_edu.data.synthetic import (STUFF_CATEGORIES, THING_CATEGORIES, SyntheticImage,
                                          generate_shapes, render_image)
from blendmask_edu.presets import get_config

SPLITS = ("train", "val")
# pycocotools' decode under numpy 2 warns on every call; the warning is not about this module.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_small")
    summary = generate_shapes(root, num_train=30, num_val=40, size=128, seed=0, progress=False)
    return root, summary


@pytest.fixture(scope="module")
def big_val(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_val200")
    summary = generate_shapes(root, num_train=5, num_val=200, size=128, seed=0, progress=False)
    return root, summary


def _load(path):
    with open(path) as f:
        return json.load(f)


def _png_ids(path):
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def _components_bfs(mask):
    """8-connected components by breadth-first flood fill, written apart from the library's."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    count = 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        count += 1
        seen[y0, x0] = True
        queue = deque([(y0, x0)])
        while queue:
            y, x = queue.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    v, u = y + dy, x + dx
                    if 0 <= v < h and 0 <= u < w and mask[v, u] and not seen[v, u]:
                        seen[v, u] = True
                        queue.append((v, u))
    return count


def _tree_hashes(root):
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_summary(small):
    root, summary = small
    assert summary["root"] == str(root)
    assert summary["images"] == {"train": 30, "val": 40}
    for split in SPLITS:
        paths = summary["paths"][split]
        assert Path(paths["instances"]).is_file() and Path(paths["panoptic"]).is_file()
        assert len(list(Path(paths["images"]).glob("*.png"))) == summary["images"][split]
        assert len(list(Path(paths["panoptic_dir"]).glob("*.png"))) == summary["images"][split]
        assert set(summary["hard_case_fraction"][split]) == set(synthetic.HARD_CASES)


def test_categories():
    assert [c["id"] for c in THING_CATEGORIES] == [1, 2, 3, 4, 5]
    names = ["circle", "triangle", "rectangle", "star", "ring"]
    assert [c["name"] for c in THING_CATEGORIES] == names
    assert [c["name"] for c in STUFF_CATEGORIES] == ["sky", "ground", "pole", "net"]
    assert all(c["isthing"] == 1 for c in THING_CATEGORIES)
    assert all(c["isthing"] == 0 and c["id"] >= 6 for c in STUFF_CATEGORIES)
    assert all(len(c["color"]) == 3 for c in THING_CATEGORIES + STUFF_CATEGORIES)


def test_tiny_preset_names_the_shapes_categories():
    """The CPU preset states the dataset's classes itself (presets stay free of the data layer)."""
    cfg = get_config("tiny")
    assert cfg.class_names == tuple(c["name"] for c in THING_CATEGORIES)
    assert cfg.category_ids == tuple(c["id"] for c in THING_CATEGORIES)
    assert cfg.panoptic.stuff_ids == tuple(c["id"] for c in STUFF_CATEGORIES)
    assert cfg.panoptic.stuff_names == tuple(c["name"] for c in STUFF_CATEGORIES)


def test_drawing_primitives_contract():
    size = 96
    rng = np.random.default_rng(7)
    sky, background = draw_background(rng, size)
    assert sky.shape == (size, size) and sky.dtype == bool and sky.any() and not sky.all()
    assert background.shape == (size, size, 3) and background.dtype == float
    categories, diameters, full, poles, net = draw_scene(rng, size)
    assert 1 <= len(categories) == len(diameters) == len(full) <= 6
    assert set(categories) <= {c["id"] for c in THING_CATEGORIES}
    assert all(m.shape == (size, size) and m.dtype == bool and m.any() for m in full)
    assert all(p.shape == (size, size) and p.dtype == bool for p in poles)
    assert net.shape == (size, size) and net.dtype == bool
    before = background.copy()
    image = paint(rng, background, sky, full, poles, net)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    untouched = ~np.logical_or.reduce(full + poles + [net])
    # Outside things and occluders only the +-6 noise changes the background.
    assert np.abs(image[untouched] - np.clip(before[untouched], 0, 255)).max() <= 6 + 1


@pytest.mark.parametrize("size", [64, 97, 128, 200])
def test_render_image_contract(size):
    for i in range(5):
        s = render_image(np.random.default_rng(i), size)
        assert isinstance(s, SyntheticImage)
        assert s.image.shape == (size, size, 3) and s.image.dtype == np.uint8
        assert s.panoptic_ids.shape == (size, size) and s.panoptic_ids.dtype == np.int32
        assert len(s.instance_masks) == len(s.instance_categories) == len(s.instance_sizes)
        assert s.hard_cases == sorted(s.hard_cases)
        assert (s.panoptic_ids > 0).all()
        covered = np.zeros((size, size), int)
        for m in s.instance_masks:
            assert m.shape == (size, size) and m.dtype == bool
            assert m.sum() >= synthetic.MIN_VISIBLE_AREA
            covered += m
        assert covered.max() <= 1  # visible parts never overlap
        by_id = {seg["id"]: seg for seg in s.segments}
        assert set(by_id) == set(np.unique(s.panoptic_ids).tolist())
        for g, (m, c) in enumerate(zip(s.instance_masks, s.instance_categories)):
            seg = by_id[g + 1]
            assert seg["category_id"] == c
            np.testing.assert_array_equal(s.panoptic_ids == seg["id"], m)
        for seg in s.segments:
            m = s.panoptic_ids == seg["id"]
            assert seg["area"] == m.sum() and seg["bbox"] == _bbox(m)


def test_pycocotools_loads(small):
    root, summary = small
    for split in SPLITS:
        coco = COCO(str(root / "annotations" / f"instances_{split}.json"))
        assert len(coco.getImgIds()) == summary["images"][split]
        assert sorted(coco.getCatIds()) == [1, 2, 3, 4, 5]
        anns = coco.loadAnns(coco.getAnnIds())
        assert len(anns) == summary["instances"][split] > 0
        for ann in anns:
            m = coco.annToMask(ann)
            img = coco.loadImgs(ann["image_id"])[0]
            assert m.shape == (img["height"], img["width"])
            assert ann["area"] == m.sum() and ann["iscrowd"] == 0
            assert ann["bbox"] == [float(v) for v in _bbox(m)]
            assert isinstance(ann["segmentation"]["counts"], str)
        for img in coco.loadImgs(coco.getImgIds()):
            assert img["file_name"] == f"{img['id']:012d}.png"
            assert (root / split / img["file_name"]).is_file()
            assert isinstance(img["hard_cases"], list)
            with Image.open(root / split / img["file_name"]) as im:
                assert im.mode == "RGB" and im.size == (img["width"], img["height"])


def test_image_ids_unique_across_splits(small):
    root, _ = small
    data = [_load(root / "annotations" / f"instances_{s}.json") for s in SPLITS]
    ids = [i["id"] for d in data for i in d["images"]]
    ann_ids = [a["id"] for d in data for a in d["annotations"]]
    assert len(ids) == len(set(ids)) and len(ann_ids) == len(set(ann_ids))


def test_panoptic_png_and_json_agree(small):
    root, _ = small
    for split in SPLITS:
        pan = _load(root / "annotations" / f"panoptic_{split}.json")
        inst = _load(root / "annotations" / f"instances_{split}.json")
        assert pan["images"] == inst["images"]
        categories = {c["id"]: c for c in pan["categories"]}
        assert len(categories) == 9
        anns_by_image = {}
        for a in inst["annotations"]:
            anns_by_image.setdefault(a["image_id"], []).append(a)
        for entry in pan["annotations"]:
            ids = _png_ids(root / "annotations" / f"panoptic_{split}" / entry["file_name"])
            segs = entry["segments_info"]
            seg_ids = [s["id"] for s in segs]
            assert len(seg_ids) == len(set(seg_ids)) and 0 not in seg_ids
            assert set(np.unique(ids).tolist()) == set(seg_ids)  # both ways; no void pixel
            for s in segs:
                m = ids == s["id"]
                assert s["area"] == m.sum() and s["bbox"] == _bbox(m)
                assert s["iscrowd"] == 0 and s["category_id"] in categories
            stuff = [s["category_id"] for s in segs if not categories[s["category_id"]]["isthing"]]
            assert len(stuff) == len(set(stuff))  # each stuff class present is one segment
            # Each instance mask is exactly one thing segment, and vice versa.
            things = [s for s in segs if categories[s["category_id"]]["isthing"]]
            anns = anns_by_image.get(entry["image_id"], [])
            assert len(things) == len(anns)
            for a in anns:
                m = mask_util.decode(a["segmentation"]).astype(bool)
                (seg_id,) = np.unique(ids[m]).tolist()
                seg = next(s for s in things if s["id"] == seg_id)
                assert seg["category_id"] == a["category_id"]
                np.testing.assert_array_equal(ids == seg_id, m)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kwargs = dict(num_train=8, num_val=6, size=96, progress=False)
    generate_shapes(tmp_path / "a", seed=3, **kwargs)
    generate_shapes(tmp_path / "b", seed=3, **kwargs)
    generate_shapes(tmp_path / "c", seed=4, **kwargs)
    a, b, c = (_tree_hashes(tmp_path / n) for n in "abc")
    assert len(a) == 8 + 6 + 8 + 6 + 4 and a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.startswith(("train/", "val/"))]
    assert all(a[k] != c[k] for k in images)


def test_images_independent_of_count(small, big_val):
    """Val image i is the same file whether 30 or 5 train images (and 40 or 200 val) were made."""
    (a, _), (b, _) = small, big_val
    for name in ("val/000001000001.png", "val/000001000040.png",
                 "annotations/panoptic_val/000001000007.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_size_range_and_hard_case_floors(big_val):
    root, summary = big_val
    fractions, sizes = summary["hard_case_fraction"]["val"], summary["thing_sizes"]["val"]
    print("val hard-case fractions:", fractions, "thing sizes:", sizes)
    assert fractions["split"] >= 0.20
    assert fractions["overlap"] >= 0.30
    images = _load(root / "annotations" / "instances_val.json")["images"]
    measured = {t: np.mean([t in i["hard_cases"] for i in images]) for t in ("split", "overlap")}
    assert measured == pytest.approx({t: fractions[t] for t in measured}, abs=1e-4)
    assert sizes["max"] / sizes["min"] >= 8
    anns = _load(root / "annotations" / "instances_val.json")["annotations"]
    long_sides = [max(a["bbox"][2:]) for a in anns]
    assert max(long_sides) / min(long_sides) >= 8


@pytest.fixture(scope="module")
def val_components(big_val):
    """{annotation id: its 8-connected component count by flood fill} on the 200 val images."""
    root, _ = big_val
    data = _load(root / "annotations" / "instances_val.json")
    return {a["id"]: _components_bfs(mask_util.decode(a["segmentation"]).astype(bool))
            for a in data["annotations"]}


def test_split_tag_iff_two_components(big_val, val_components):
    root, _ = big_val
    data = _load(root / "annotations" / "instances_val.json")
    anns_by_image = {}
    for a in data["annotations"]:
        anns_by_image.setdefault(a["image_id"], []).append(a)
    seen = set()
    for img in data["images"]:
        split = any(val_components[a["id"]] >= 2 for a in anns_by_image.get(img["id"], []))
        assert split == ("split" in img["hard_cases"]), img["id"]
        seen.add(split)
    assert seen == {True, False}


def test_count_components_hand_made():
    m = np.zeros((6, 7), bool)
    assert synthetic.count_components(m) == 0
    m[1, 1] = m[2, 2] = True  # diagonal neighbours: one 8-connected component
    assert synthetic.count_components(m) == 1
    m[0:6, 4] = True  # a separate bar
    assert synthetic.count_components(m) == 2
    m[3, 3] = True  # touches both diagonally -> one
    assert synthetic.count_components(m) == 1
    ring = np.zeros((5, 5), bool)
    ring[0, :] = ring[-1, :] = ring[:, 0] = ring[:, -1] = True
    assert synthetic.count_components(ring) == 1


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_count_components_matches_flood_fill(h, w, density, seed):
    mask = np.random.default_rng(seed).random((h, w)) < density
    assert synthetic.count_components(mask) == _components_bfs(mask)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate_shapes(tmp_path, num_train=-1, progress=False)
    with pytest.raises(ValueError):
        generate_shapes(tmp_path, size=8, progress=False)


def test_ensure_shapes_generates_once(tmp_path):
    root = synthetic.ensure_shapes(tmp_path / "s", num_train=2, num_val=3, size=64, progress=False)
    stamp = (root / "annotations" / "instances_val.json").stat().st_mtime_ns
    synthetic.ensure_shapes(root, num_train=2, num_val=3, size=64, progress=False)
    assert (root / "annotations" / "instances_val.json").stat().st_mtime_ns == stamp
    synthetic.ensure_shapes(root, num_train=2, num_val=4, size=64, progress=False)
    assert len(json.loads((root / "annotations" / "instances_val.json").read_text())["images"]) == 4


# ----------------------------------------------------------------------------- per-thing tags


def _anns_by_image(data):
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    return by_image


def test_per_annotation_tags_agree_with_the_pixels(big_val, val_components):
    """Each thing's own tags, recomputed from its RLE apart from the library: components by
    flood fill (split), the box's long side (small, large), the category (complex)."""
    root, _ = big_val
    data = _load(root / "annotations" / "instances_val.json")
    size = data["images"][0]["width"]
    complex_ids = {c["id"] for c in THING_CATEGORIES if c["name"] in ("star", "ring")}
    counts = dict.fromkeys(synthetic.HARD_CASES, 0)
    for a in data["annotations"]:
        tags = a["hard_cases"]
        assert tags == sorted(set(tags)) and set(tags) <= set(synthetic.HARD_CASES), a["id"]
        mask = mask_util.decode(a["segmentation"]).astype(bool)
        long_side = max(_bbox(mask)[2:])
        expected = {"split": val_components[a["id"]] >= 2, "small": long_side < size / 8,
                    "large": long_side > size / 2, "complex": a["category_id"] in complex_ids}
        assert {t: t in tags for t in expected} == expected, a["id"]
        for t in tags:
            counts[t] += 1
    print("val annotations per tag:", counts)
    assert all(n > 0 for n in counts.values())  # 200 images hold every case


def test_overlap_tags_come_in_pairs_and_images_hold_the_union(big_val):
    root, _ = big_val
    data = _load(root / "annotations" / "instances_val.json")
    by_image = _anns_by_image(data)
    for img in data["images"]:
        anns = by_image.get(img["id"], [])
        union = sorted(set().union(*(a["hard_cases"] for a in anns)))
        assert img["hard_cases"] == union, img["id"]
        tagged = sum("overlap" in a["hard_cases"] for a in anns)
        # full shapes overlap in pairs: an image tagged overlap has both things of a pair tagged
        assert tagged != 1 and (tagged >= 2) == ("overlap" in img["hard_cases"]), img["id"]


def test_panoptic_things_carry_the_same_tags_and_stuff_none(small):
    root, _ = small
    for split in SPLITS:
        pan = _load(root / "annotations" / f"panoptic_{split}.json")
        inst = _load(root / "annotations" / f"instances_{split}.json")
        things = {c["id"] for c in THING_CATEGORIES}
        by_image = _anns_by_image(inst)
        for entry in pan["annotations"]:
            ids = _png_ids(root / "annotations" / f"panoptic_{split}" / entry["file_name"])
            for a in by_image.get(entry["image_id"], []):
                mask = mask_util.decode(a["segmentation"]).astype(bool)
                (seg_id,) = np.unique(ids[mask]).tolist()
                seg = next(s for s in entry["segments_info"] if s["id"] == seg_id)
                assert seg["hard_cases"] == a["hard_cases"]
            for seg in entry["segments_info"]:
                assert ("hard_cases" in seg) == (seg["category_id"] in things)


def test_render_image_tags_each_thing():
    for i in range(10):
        s = render_image(np.random.default_rng(i), 96)
        assert len(s.instance_hard_cases) == len(s.instance_masks)
        assert s.hard_cases == sorted(set().union(*s.instance_hard_cases))
        for seg, tags in zip(s.segments, s.instance_hard_cases):
            assert seg["hard_cases"] == tags


def test_ensure_shapes_regenerates_an_older_version(tmp_path):
    root = synthetic.ensure_shapes(tmp_path / "s", num_train=1, num_val=2, size=64, progress=False)
    path = root / "annotations" / "instances_val.json"
    data = json.loads(path.read_text())
    data["info"]["version"] = "1.0"
    for a in data["annotations"]:
        del a["hard_cases"]
    path.write_text(json.dumps(data))
    synthetic.ensure_shapes(root, num_train=1, num_val=2, size=64, progress=False)
    data = json.loads(path.read_text())
    assert data["info"]["version"] == synthetic.DATASET_VERSION
    assert all("hard_cases" in a for a in data["annotations"])
