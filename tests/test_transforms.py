"""Tests for blendmask_edu.data.transforms: geometry, box/mask consistency, the sample contract."""

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from hypothesis import given, settings
from hypothesis import strategies as st
import torchvision.transforms.v2 as v2
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes

from blendmask_edu.data import transforms as T


# --- helpers written independently of the module under test ----------------------------


def tight_box_numpy(mask: np.ndarray) -> np.ndarray:
    """COCO-convention box of a nonempty (H, W) mask, via numpy's nonzero."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def resize_nearest(x: torch.Tensor, size) -> torch.Tensor:
    """(..., H, W) integer tensor -> (..., H', W') by pixel-centre nearest neighbour."""
    lead = x.shape[:-2]
    flat = x.reshape(int(np.prod(lead)), 1, *x.shape[-2:]).to(torch.float64)
    out = nnf.interpolate(flat, size=tuple(size), mode="nearest-exact")
    return out.reshape(*lead, *size).to(x.dtype)


def make_sample(height, width, masks, sem_seg=None, image_id=7, seed=0):
    """A contract sample whose labels are 1..G, so each output instance can be traced back."""
    masks = torch.as_tensor(np.asarray(masks, dtype=np.uint8)).reshape(-1, height, width)
    G = masks.shape[0]
    generator = torch.Generator().manual_seed(seed)
    target = {
        "boxes": torch.stack([torch.from_numpy(tight_box_numpy(m.numpy())) for m in masks])
        if G else torch.zeros(0, 4),
        "labels": torch.arange(1, G + 1, dtype=torch.int64),
        "masks": masks,
        "iscrowd": torch.zeros(G, dtype=torch.int64),
        "image_id": image_id,
    }
    if sem_seg is not None:
        target["sem_seg"] = torch.as_tensor(np.asarray(sem_seg), dtype=torch.int64)
    return torch.rand(3, height, width, generator=generator), target


def check_contract(image, target, image_in, target_in):
    """Everything the rest of the package relies on, plus box == tight box of its mask."""
    assert image.dtype == torch.float32 and image.ndim == 3 and image.shape[0] == 3
    assert type(image) is torch.Tensor
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    H, W = image.shape[1:]
    masks, boxes, labels = target["masks"], target["boxes"], target["labels"]
    G = labels.shape[0]
    assert masks.dtype == torch.uint8 and masks.shape == (G, H, W)
    assert boxes.dtype == torch.float32 and boxes.shape == (G, 4)
    assert labels.dtype == torch.int64 and target["iscrowd"].shape == (G,)
    assert target["image_id"] == target_in["image_id"]
    for g in range(G):
        mask = masks[g].numpy()
        assert mask.any(), "an empty instance survived"
        assert np.abs(boxes[g].numpy() - tight_box_numpy(mask)).max() <= 1.0
        # The library's boxes are in fact exact.
        np.testing.assert_array_equal(boxes[g].numpy(), tight_box_numpy(mask))
    # Instances keep their order; each output mask is the input mask moved (same orientation
    # for all), and exactly the instances whose moved mask is empty have gone.
    moved = resize_nearest(target_in["masks"], (H, W))
    for orientation in (moved, moved.flip(-1)):
        expected_labels = target_in["labels"][orientation.flatten(1).ne(0).any(1)]
        if torch.equal(labels, expected_labels) and torch.equal(masks, orientation[labels - 1]):
            break
    else:
        raise AssertionError("masks/labels are not the moved input instances")
    if "sem_seg" in target_in:
        sem = target["sem_seg"]
        assert sem.dtype == torch.int64 and sem.shape == (H, W)
        assert set(sem.unique().tolist()) <= set(target_in["sem_seg"].unique().tolist())
        sem_moved = resize_nearest(target_in["sem_seg"], (H, W))
        assert torch.equal(sem, sem_moved) or torch.equal(sem, sem_moved.flip(-1))
    else:
        assert "sem_seg" not in target


@st.composite
def samples(draw, max_side=40, max_instances=4):
    """Random images with boxes, one-pixel, border-touching and ragged masks, G possibly 0."""
    height, width = draw(st.integers(3, max_side)), draw(st.integers(3, max_side))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    masks = np.zeros((draw(st.integers(0, max_instances)), height, width), np.uint8)
    for mask in masks:
        x0, y0 = draw(st.integers(0, width - 1)), draw(st.integers(0, height - 1))
        x1, y1 = draw(st.integers(x0 + 1, width)), draw(st.integers(y0 + 1, height))
        kind = draw(st.sampled_from(["box", "pixel", "border", "ragged"]))
        if kind == "box":
            mask[y0:y1, x0:x1] = 1
        elif kind == "pixel":
            mask[y0, x0] = 1
        elif kind == "border":
            mask[y0:, x0:] = 1
        else:
            mask[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.3
            mask[y0, x0] = 1
    sem_seg = rng.choice([0, 3, 7, 255], size=(height, width)) if draw(st.booleans()) else None
    return make_sample(height, width, masks, sem_seg, image_id=draw(st.integers(0, 10**6)))


TRANSFORMS = {
    "flip": lambda: T.RandomHorizontalFlip(p=1.0),
    "resize_up": lambda: T.ResizeShortestEdge([80], max_size=200),
    "resize_down": lambda: T.ResizeShortestEdge([6], max_size=12),
    "train": lambda: T.build_train_transforms([8, 16, 48], max_size=64, flip_prob=0.5),
    "test": lambda: T.ResizeShortestEdge(24, max_size=40),
}


# --- tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@settings(max_examples=12, deadline=None, derandomize=True)
@given(sample=samples(), seed=st.integers(0, 1000))
def test_boxes_are_tight_masks_after_any_transform(name, sample, seed):
    image, target = sample
    torch.manual_seed(seed)
    image_out, target_out = TRANSFORMS[name]()(image, target)
    check_contract(image_out, target_out, image, target)


def test_boxes_from_masks_hand_case_and_empty():
    masks = torch.zeros(3, 5, 8, dtype=torch.uint8)
    masks[0, 1:3, 3:6] = 1  # columns 3..5, rows 1..2
    masks[2, 4, 7] = 1  # one pixel in the bottom-right corner
    expected = torch.tensor([[3, 1, 6, 3], [0, 0, 0, 0], [7, 4, 8, 5]], dtype=torch.float32)
    torch.testing.assert_close(T.boxes_from_masks(masks), expected)
    for other in (masks.bool(), masks.float() * -0.5):  # nonzero = inside, whatever the dtype
        torch.testing.assert_close(T.boxes_from_masks(other), expected)
        assert T.drop_empty({"masks": other})["masks"].shape[0] == 2
    assert T.boxes_from_masks(torch.zeros(0, 5, 8, dtype=torch.uint8)).shape == (0, 4)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(sample=samples())
def test_boxes_from_masks_matches_torchvision(sample):
    masks = sample[1]["masks"]
    masks = masks[masks.flatten(1).ne(0).any(1)]
    # torchvision's boxes end at the last pixel; COCO's one past it.
    expected = masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])
    torch.testing.assert_close(T.boxes_from_masks(masks), expected)


def test_flip_twice_is_identity():
    masks = np.zeros((2, 9, 13), np.uint8)
    masks[0, 2:5, 0:4] = 1
    masks[1, 8, 12] = 1
    sem = np.random.default_rng(0).choice([1, 2, 255], size=(9, 13))
    image, target = make_sample(9, 13, masks, sem)
    flip = T.RandomHorizontalFlip(p=1.0)
    once_image, once = flip(image, target)
    torch.testing.assert_close(once_image, image.flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(once["boxes"][0], torch.tensor([9.0, 2.0, 13.0, 5.0]))
    torch.testing.assert_close(once["boxes"][1], torch.tensor([0.0, 8.0, 1.0, 9.0]))
    twice_image, twice = flip(once_image, once)
    assert torch.equal(twice_image, image)
    assert twice.keys() == target.keys()
    for key in ("boxes", "labels", "masks", "sem_seg", "iscrowd"):
        assert torch.equal(twice[key], target[key]), key
    assert twice["image_id"] == target["image_id"]


def _torchvision_flip(image, target, p):
    """The flip as torchvision's v2.RandomHorizontalFlip does it on tv_tensors, then the tight
    boxes of the flipped masks (the module's contract), computed here without the module."""
    height, width = image.shape[-2:]
    wrapped = {k: tv_tensors.Mask(v) if k in ("masks", "sem_seg") else v for k, v in target.items()}
    if "boxes" in target:
        wrapped["boxes"] = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY",
                                                    canvas_size=(height, width))
    image, wrapped = v2.RandomHorizontalFlip(p)(tv_tensors.Image(image), wrapped)
    out = {k: v.as_subclass(torch.Tensor) if isinstance(v, tv_tensors.TVTensor) else v
           for k, v in wrapped.items()}
    if "masks" in out:
        keep = out["masks"].flatten(1).ne(0).any(1)
        out = {k: v[keep] if k in ("boxes", "labels", "masks", "iscrowd") else v
               for k, v in out.items()}
        out["boxes"] = (torch.stack([torch.from_numpy(tight_box_numpy(m.numpy()))
                                     for m in out["masks"]]) if len(out["masks"])
                        else torch.zeros(0, 4))
    return image.as_subclass(torch.Tensor), out


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("masks_too", [True, False])
@settings(max_examples=15, deadline=None, derandomize=True)
@given(sample=samples(), seed=st.integers(0, 1000))
def test_flip_is_torchvisions_bit_for_bit(p, masks_too, sample, seed):
    """The hand-written flip draws what v2.RandomHorizontalFlip draws and gives its sample, bit
    for bit, with and without masks (then the boxes are flipped arithmetically), and leaves the
    global generator where torchvision leaves it."""
    image, target = sample
    if not masks_too:
        target = {k: v for k, v in target.items() if k != "masks"}
    torch.manual_seed(seed)
    expected_image, expected = _torchvision_flip(image, target, p)
    after_expected = torch.rand(1)
    torch.manual_seed(seed)
    got_image, got = T.RandomHorizontalFlip(p)(image, target)
    assert torch.equal(torch.rand(1), after_expected)
    assert torch.equal(got_image, expected_image)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if torch.is_tensor(value):
            assert value.dtype == got[key].dtype and torch.equal(got[key], value), key
        else:
            assert got[key] == value, key


@pytest.mark.parametrize("size, short, max_size, expected", [
    ((200, 249), 800, 1333, (800, 996)),    # landscape, odd width
    ((249, 200), 800, 1333, (996, 800)),    # portrait
    ((100, 400), 800, 1333, (333, 1333)),   # longer side capped: shorter ends below 800
    ((400, 100), 800, 1333, (1333, 333)),
    ((539, 640), 800, 1333, (800, 950)),    # v2.RandomShortestSize would give (799, 949)
    ((480, 640), 64, 96, (64, 85)),         # downscale
])
def test_resize_output_size(size, short, max_size, expected):
    assert T.shortest_edge_size(*size, short, max_size) == expected
    if max(expected) > 1000:  # the pure function is enough for the big ones
        return
    masks = np.zeros((1, *size), np.uint8)
    masks[0, size[0] // 4: size[0] // 2, size[1] // 4: size[1] // 2] = 1
    image, target = make_sample(*size, masks, np.zeros(size))
    image_out, target_out = T.ResizeShortestEdge(short, max_size)(image, target)
    assert image_out.shape[1:] == expected
    assert target_out["masks"].shape[1:] == expected and target_out["sem_seg"].shape == expected
    check_contract(image_out, target_out, image, target)
    # The test-time resize of the image alone is the same resize, pixel for pixel.
    resized, (sx, sy) = T.resize_for_test(image, short, max_size)
    assert torch.equal(resized, image_out)
    assert (sx, sy) == (expected[1] / size[1], expected[0] / size[0])


def test_resize_for_test_sizes_and_scales():
    image = torch.rand(3, 80, 100)
    same, scale = T.resize_for_test(image, 80, 200)
    assert same is image and scale == (1.0, 1.0)
    bigger, (sx, sy) = T.resize_for_test(image, 160, 400)
    assert bigger.shape == (3, 160, 200) and (sx, sy) == (2.0, 2.0)
    # bilinear with antialiasing, as torch itself does it
    smaller, _ = T.resize_for_test(image, 40, 400)
    expected = nnf.interpolate(image[None], size=(40, 50), mode="bilinear", align_corners=False,
                               antialias=True)[0]
    assert torch.equal(smaller, expected)


def test_resize_short_side_is_drawn_from_short_sizes_and_seeded():
    image, target = make_sample(30, 50, np.ones((1, 30, 50)))
    train = T.build_train_transforms([10, 12, 14], max_size=100)
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        image_a, target_a = train(image, target)
        torch.manual_seed(seed)
        image_b, target_b = train(image, target)
        assert torch.equal(image_a, image_b) and torch.equal(target_a["masks"], target_b["masks"])
        assert min(image_a.shape[1:]) in (10, 12, 14) and max(image_a.shape[1:]) <= 100
        seen.add(min(image_a.shape[1:]))
    assert seen == {10, 12, 14}


def test_sem_seg_after_resize_keeps_values_and_ignore():
    sem = np.random.default_rng(1).choice([0, 4, 9, 255], size=(37, 53))
    image, target = make_sample(37, 53, np.zeros((0, 37, 53)), sem)
    for short in (11, 37, 90):
        _, out = T.ResizeShortestEdge([short], max_size=500)(image, target)
        assert out["sem_seg"].dtype == torch.int64
        values = set(out["sem_seg"].unique().tolist())
        assert values <= {0, 4, 9, 255} and 255 in values


def test_vanished_instances_are_dropped_everywhere():
    masks = np.zeros((3, 60, 90), np.uint8)
    masks[0, 10:40, 10:50] = 1
    masks[1, 31, 47] = 1  # a one-pixel object: gone after a 10x downscale
    masks[2, 50:60, 80:90] = 1
    image, target = make_sample(60, 90, masks)
    target["area"] = torch.tensor([1200.0, 1.0, 100.0])
    target["orig_size"] = torch.tensor([60, 90])  # image-level, must not be filtered
    image_out, out = T.ResizeShortestEdge([6], max_size=1000)(image, target)
    assert image_out.shape[1:] == (6, 9)
    assert out["labels"].tolist() == [1, 3]
    assert out["masks"].shape[0] == out["boxes"].shape[0] == out["iscrowd"].shape[0] == 2
    assert out["area"].tolist() == [1200.0, 100.0]
    assert torch.equal(out["orig_size"], target["orig_size"])
    check_contract(image_out, out, image, target)


def test_drop_empty_direct():
    masks = torch.zeros(3, 4, 4, dtype=torch.uint8)
    masks[1, 2, 2] = 1
    target = {"masks": masks, "labels": torch.tensor([5, 6, 7]), "boxes": torch.zeros(3, 4),
              "sem_seg": torch.zeros(3, 4, dtype=torch.int64), "image_id": 1}
    out = T.drop_empty(target)
    assert out["labels"].tolist() == [6] and out["masks"].shape == (1, 4, 4)
    assert out["boxes"].shape == (1, 4) and out["sem_seg"].shape == (3, 4)
    assert target["labels"].shape == (3,)  # the input is not modified


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_no_instances_and_no_sem_seg(name):
    image, target = make_sample(200, 249, np.zeros((0, 200, 249)))
    torch.manual_seed(0)
    image_out, out = TRANSFORMS[name]()(image, target)
    assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,)
    assert out["masks"].shape == (0, *image_out.shape[1:])
    assert "sem_seg" not in out
    check_contract(image_out, out, image, target)


def test_pass_through_keys_and_input_untouched():
    masks = np.zeros((2, 20, 30), np.uint8)
    masks[0, 2:8, 3:9] = 1
    masks[1, 10:20, 20:30] = 1
    image, target = make_sample(20, 30, masks, np.full((20, 30), 255))
    target["file_name"] = "000001.jpg"
    target["hard_cases"] = ["overlap"]
    before = {k: v.clone() if torch.is_tensor(v) else v for k, v in target.items()}
    image_before = image.clone()
    torch.manual_seed(3)
    _, out = T.build_train_transforms([16, 40], max_size=64)(image, target)
    assert out["file_name"] == "000001.jpg" and out["hard_cases"] is target["hard_cases"]
    assert out["image_id"] == 7
    assert torch.equal(image, image_before)
    for key, value in before.items():
        assert torch.equal(target[key], value) if torch.is_tensor(value) else target[key] == value


def test_collate_keeps_lists():
    batch = [make_sample(10, 12, np.ones((1, 10, 12))), make_sample(8, 6, np.zeros((0, 8, 6)))]
    images, targets = T.collate(batch)
    assert isinstance(images, list) and isinstance(targets, list)
    assert [im.shape for im in images] == [(3, 10, 12), (3, 8, 6)]
    assert targets[1]["masks"].shape == (0, 8, 6)


def test_mismatched_mask_size_is_reported():
    image, target = make_sample(10, 12, np.ones((1, 10, 12)))
    target["masks"] = target["masks"][:, :9]
    with pytest.raises(ValueError, match="masks"):
        T.RandomHorizontalFlip(p=1.0)(image, target)
