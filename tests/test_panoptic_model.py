"""The panoptic BlendMask: ``loss_sem_seg``, the shared-features variant, the fusion at inference.

The head, loss and fusion functions themselves are tested in ``test_panoptic.py``; here they are
checked as the model wires them: which features the semantic head reads, what the loss is
computed against (padded batches), that the non-panoptic model is unchanged, and that
``sem_seg`` / ``panoptic`` come out at the image's own size, also through ``evaluation.inference.detect``;
asked for other ``output_sizes`` (the originals of resized images), that the masks are pasted
there directly with the boxes rescaled, and the stuff-area rule at COCO's size and below.
Tiny preset, 64 px shapes images; the whole file runs in a few seconds at one thread.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from blendmask_edu.config_override import override
from blendmask_edu.presets import get_config
from blendmask_edu.data.transforms import boxes_from_masks, resize_for_test
from blendmask_edu.evaluation.inference import detect
from blendmask_edu.modeling.blender import blend, paste_masks
from blendmask_edu.modeling.blendmask import build_model
from blendmask_edu.modeling.panoptic import SemanticHead, fuse, stuff_area_for
from conftest import shapes_split

THING_IDS = {1, 2, 3, 4, 5}
STUFF_IDS = {6, 7, 8, 9}
LEARN_STEPS = 40


def tiny(**overrides):
    """The tiny preset (panoptic, stuff ids 6..9) with ``section.key`` → text overrides."""
    cfg = get_config("tiny")
    for key, value in overrides.items():
        cfg = override(cfg, key.replace("__", "."), value)
    return cfg


def build(seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model(tiny(**overrides))


def crop(image, target, height, width):
    """The top-left height × width of an (image, target) pair; empty instances dropped."""
    masks = target["masks"][:, :height, :width]
    keep = masks.flatten(1).bool().any(1)
    masks = masks[keep]
    cropped = {"boxes": boxes_from_masks(masks), "labels": target["labels"][keep],
               "masks": masks, "image_id": target["image_id"],
               "sem_seg": target["sem_seg"][:height, :width]}
    return image[:, :height, :width], cropped


def segment_checks(ids, segments):
    """Every segment's area is its pixel count in ``ids``; ids hold only 0 and segment ids;
    things have thing ids, stuff stuff ids. Returns (number of things, number of stuff)."""
    seg_ids = [s["id"] for s in segments]
    assert len(set(seg_ids)) == len(seg_ids)
    assert set(ids.unique().tolist()) <= {0, *seg_ids}
    for s in segments:
        assert s["area"] == int((ids == s["id"]).sum()) > 0, s
        assert s["category_id"] in (THING_IDS if s["isthing"] else STUFF_IDS), s
    things = sum(s["isthing"] for s in segments)
    return things, len(segments) - things


@pytest.fixture(scope="module")
def shapes64(tmp_path_factory):
    """Four 64 px shapes val images with their panoptic ``sem_seg`` targets."""
    dataset = shapes_split(tmp_path_factory, num_val=4, size=64, seed=0)
    return [dataset[i] for i in range(len(dataset))]


@pytest.fixture(scope="module")
def big_image(tmp_path_factory):
    """One 128 px shapes image (to crop sizes that are not multiples of 32 from)."""
    dataset = shapes_split(tmp_path_factory, num_val=1, size=128, seed=1)
    return dataset[0][0]


@pytest.fixture(scope="module")
def learned(shapes64):
    """The tiny panoptic model after LEARN_STEPS AdamW steps (lr 2e-3) on the total loss of two
    fixed images, and its loss_sem_seg at every step. Used again for inference: it has
    confident things and stuff to fuse, which a randomly initialised model has not."""
    torch.manual_seed(0)
    model = build_model(get_config("tiny")).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    images, targets = [im for im, _ in shapes64[:2]], [t for _, t in shapes64[:2]]
    history = []
    # One thread: the same sums in the same order on every run of one machine, so every test
    # that reads this model sees the same model (on 2 threads its mask AP moved by 2.5 points
    # between two runs of the same commit). Other CPUs still train a slightly different model.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(LEARN_STEPS):
            losses = model(images, targets)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            history.append(losses["loss_sem_seg"].item())
    finally:
        torch.set_num_threads(threads)
    return model.eval(), history


# ----------------------------------------------------------------------------- training


def test_loss_sem_seg_is_half_the_cross_entropy_of_the_upsampled_logits(shapes64):
    model = build().train()
    assert isinstance(model.semantic, SemanticHead) and model.sem_seg_weight == 0.5
    # sizes that are not multiples of 32: the batch is padded to 64 × 64, the targets with void
    pairs = [crop(*shapes64[0], 56, 60), crop(*shapes64[1], 64, 50)]
    captured = []
    handle = model.semantic.register_forward_hook(lambda m, i, out: captured.append(out))
    losses = model([im for im, _ in pairs], [t for _, t in pairs])
    handle.remove()

    assert {"loss_fcos_cls", "loss_mask", "loss_sem_seg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    (logits,) = captured
    assert logits.shape == (2, 5, 16, 16)  # 1 + 4 stuff classes at stride 4 of 64 × 64
    up = F.interpolate(logits.detach(), scale_factor=4, mode="bilinear", align_corners=False)
    targets = torch.full((2, 64, 64), 255, dtype=torch.int64)
    targets[0, :56, :60] = pairs[0][1]["sem_seg"]
    targets[1, :64, :50] = pairs[1][1]["sem_seg"]
    expected = 0.5 * F.cross_entropy(up, targets, ignore_index=255)
    assert losses["loss_sem_seg"].item() > 0.1
    assert abs(losses["loss_sem_seg"].item() - expected.item()) < 1e-5


def test_targets_without_sem_seg_are_refused(shapes64):
    model = build().train()
    image, target = shapes64[0]
    target = {k: v for k, v in target.items() if k != "sem_seg"}
    with pytest.raises(ValueError, match="sem_seg"):
        model([image], [target])


def test_shared_head_reads_the_bottom_modules_fused_map_and_trains_it(shapes64):
    images, targets = [im for im, _ in shapes64[:2]], [t for _, t in shapes64[:2]]
    refine_grads = {}
    for shared in (True, False):
        model = build(**{"panoptic.share_basis_features": str(shared).lower()}).train()
        assert model.share_basis_features is shared and model.semantic.shared is shared
        seen = {}
        hooks = [model.basis.register_forward_hook(lambda m, i, out: seen.update(fused=out["fused"])),
                 model.semantic.register_forward_hook(lambda m, i, out: seen.update(head_in=i[0]))]
        losses = model(images, targets)
        for hook in hooks:
            hook.remove()
        if shared:
            assert seen["head_in"] is seen["fused"]
            assert seen["head_in"].shape == (2, 32, 8, 8)  # basis_channels, H/8, W/8
        else:
            # Panoptic-FPN's P2–P5: the backbone builds P2 for the head, FCOS still reads P3–P5
            assert isinstance(seen["head_in"], (list, tuple)) and len(seen["head_in"]) == 4
            assert seen["head_in"][0].shape == (2, 64, 16, 16)  # P2 of the FPN (width 64)
            assert model.backbone.level_names == ["p2", "p3", "p4", "p5"]
            assert model.level_names == ["p3", "p4", "p5"]
        model.zero_grad(set_to_none=True)
        losses["loss_sem_seg"].backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for p in model.semantic.predictor.parameters())
        refine_grads[shared] = [p.grad for p in model.basis.refine.parameters()]
    assert refine_grads[True] and all(g is not None and g.abs().sum() > 0 for g in refine_grads[True])
    assert all(g is None or not g.any() for g in refine_grads[False])


def test_the_head_is_built_last_so_the_rest_is_the_plain_model(shapes64):
    panoptic = build(seed=3)
    plain = build(seed=3, **{"panoptic.enabled": "false"})
    assert plain.semantic is None and plain.stuff_ids == []
    ours, theirs = panoptic.state_dict(), plain.state_dict()
    extra = set(ours) - set(theirs)
    assert set(theirs) <= set(ours) and extra and all(k.startswith("semantic.") for k in extra)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key

    images, targets = [im for im, _ in shapes64[:2]], [t for _, t in shapes64[:2]]
    with_head = panoptic.train()(images, targets)
    without = plain.train()(images, targets)
    assert set(with_head) - set(without) == {"loss_sem_seg"}
    for name, value in without.items():  # the same weights compute the same shared losses
        torch.testing.assert_close(with_head[name], value, rtol=0, atol=0)

    for out in plain.eval()(images):
        assert "sem_seg" not in out and "panoptic" not in out and "masks" in out
    for out in panoptic.eval()(images):
        assert "sem_seg" in out and "panoptic" in out


def test_enabled_without_stuff_ids_is_an_error():
    cfg = override(get_config("tiny"), "panoptic.stuff_ids", "[]")
    with pytest.raises(ValueError, match="stuff_ids"):
        build_model(cfg)


# ----------------------------------------------------------------------------- learning


def test_loss_sem_seg_learns(learned):
    # Measured (seeds 0–2 of the weights, 1 thread, ~1.2 s): from 1.9–3.8 down to 0.057–0.078,
    # i.e. to 2–3 % of the first value; a uniform guess over 5 classes would be 0.5 · ln 5 = 0.80.
    _, history = learned
    assert len(history) == LEARN_STEPS
    assert history[-1] <= 0.5 * history[0]
    assert history[-1] <= 0.1 * history[0]
    assert history[-1] < 0.2


# ----------------------------------------------------------------------------- inference


def test_eval_outputs_at_a_size_that_is_not_a_multiple_of_32(learned, big_image):
    model, _ = learned
    assert model.fusion == {"score_thresh": 0.2, "overlap_thresh": 0.4, "stuff_area": 4096}
    image = big_image[:, :72, :100]
    with torch.no_grad():
        (out,) = model([image])
    sem_seg = out["sem_seg"]
    assert sem_seg.shape == (5, 72, 100)
    torch.testing.assert_close(sem_seg.sum(0), torch.ones(72, 100))
    ids, segments = out["panoptic"]
    assert ids.shape == (72, 100) and ids.dtype == torch.int64
    things, stuff = segment_checks(ids, segments)
    assert things >= 2 and stuff >= 1  # measured: 14 things, 3 stuff

    masks, scores, labels = out["masks"], out["scores"], out["labels"]
    again = model.fuse_panoptic(masks, scores, labels, sem_seg)
    explicit = fuse(masks, scores, labels, sem_seg, score_thresh=0.2, overlap_thresh=0.4,
                    stuff_area=stuff_area_for((72, 100)), stuff_ids=[6, 7, 8, 9])
    for ids_b, segments_b in (again, explicit):
        assert torch.equal(ids_b, ids) and segments_b == segments
    assert all(s["score"] >= 0.2 for s in segments if s["isthing"])

    # fuse_panoptic reads model.fusion: a score threshold just above the second thing's score
    # leaves the first thing alone (the fusion is sequential in score order, so the kept prefix
    # decides the same), and a larger stuff area drops the smaller stuff regions
    thresh = sorted((s["score"] for s in segments if s["isthing"]), reverse=True)[1] + 1e-6
    saved = dict(model.fusion)
    try:
        model.fusion.update(score_thresh=thresh, stuff_area=4096 * 30)
        strict = model.fuse_panoptic(masks, scores, labels, sem_seg)
    finally:
        model.fusion.clear()
        model.fusion.update(saved)
    area = stuff_area_for((72, 100), coco_area=4096 * 30)
    # 122880 · (100 / 640)²: between the two stuff regions left beside one thing (2824, 3370 px)
    assert area == 3000
    expected = fuse(masks, scores, labels, sem_seg, thresh, 0.4, area, stuff_ids=[6, 7, 8, 9])
    assert torch.equal(strict[0], expected[0]) and strict[1] == expected[1]
    assert segment_checks(*strict)[0] == 1
    assert 1 <= segment_checks(*strict)[1] < stuff  # the smaller stuff region dropped
    assert all(s["area"] >= 3000 for s in strict[1] if not s["isthing"])


def test_detect_fuses_again_at_the_original_size(learned, shapes64):
    model, _ = learned
    image = shapes64[2][0]  # 64 × 64, not seen in training
    logits = []
    handle = model.semantic.register_forward_hook(lambda m, i, out: logits.append(out))
    (det,) = detect(model, [image], short_size=96, max_size=200)
    handle.remove()
    assert logits[0].shape == (1, 5, 24, 24)  # the model ran at 96 × 96
    assert det["sem_seg"].shape == (5, 64, 64) and det["masks"].shape[-2:] == (64, 64)
    torch.testing.assert_close(det["sem_seg"].sum(0), torch.ones(64, 64))
    ids, segments = det["panoptic"]
    assert ids.shape == (64, 64)
    things, stuff = segment_checks(ids, segments)
    assert things >= 1 and stuff >= 1  # measured: 10 things, 3 stuff
    again_ids, again_segments = model.fuse_panoptic(det["masks"], det["scores"], det["labels"],
                                                    det["sem_seg"])
    assert torch.equal(again_ids, ids) and again_segments == segments


# ----------------------------------------------------------------------------- the original size


def _paste_by_hand(probs, box, points):
    """The value of the R × R map ``probs`` pasted in ``box`` (x0, y0, x1, y1) at each image
    pixel (x, y) of ``points``: the pixel centre's position in map cells, (x + ½ − x0) / (x1 −
    x0) · R − ½, bilinear between the four nearest cells, cells outside the map 0."""
    r = probs.shape[-1]
    x0, y0, x1, y1 = (float(v) for v in box)

    def cell(i, j):
        return float(probs[i, j]) if 0 <= i < r and 0 <= j < r else 0.0

    values = []
    for x, y in points:
        u = (x + 0.5 - x0) / (x1 - x0) * r - 0.5
        v = (y + 0.5 - y0) / (y1 - y0) * r - 0.5
        j, i = math.floor(u), math.floor(v)
        fu, fv = u - j, v - i
        values.append((1 - fv) * ((1 - fu) * cell(i, j) + fu * cell(i, j + 1))
                      + fv * ((1 - fu) * cell(i + 1, j) + fu * cell(i + 1, j + 1)))
    return values


def test_masks_are_pasted_at_the_original_size_with_the_boxes_rescaled(learned, big_image):
    model, _ = learned
    original = big_image[:, :120, :100]  # H × W = 120 × 100, resized ×0.64 for the test
    small, _ = resize_for_test(original, 64, 200)
    h, w = small.shape[-2:]
    assert (h, w) == (77, 64)
    with torch.no_grad():
        (plain,) = model([small])  # the test-size answer
        (out,) = model([small], output_sizes=[(120, 100)])
        x = model.features([small])  # the R × R probabilities, from the stages by hand
        rois = torch.cat([torch.zeros(len(plain["boxes"]), 1), plain["boxes"]], dim=1)
        probs = blend(model.basis(x.levels)["bases"], plain["attentions"], rois,
                      **model.blend_options).sigmoid()  # (D, R, R)
    count = len(out["scores"])
    assert count >= 3 and torch.equal(out["scores"], plain["scores"])
    boxes = plain["boxes"] * torch.tensor([100 / w, 120 / h, 100 / w, 120 / h])
    torch.testing.assert_close(out["boxes"], boxes)  # no box reaches past the border here
    assert out["masks"].shape == (count, 1, 120, 100)
    torch.testing.assert_close(out["masks"][:, 0], paste_masks(probs, boxes, (120, 100)),
                               rtol=0, atol=1e-6)
    for d in range(3):  # a few pixels of each of the best three, in and around the box
        x0, y0, x1, y1 = boxes[d].tolist()
        points = [(int(x0) + dx, int(y0) + dy) for dx in (-1, 0, 3, 9) for dy in (-1, 0, 5)]
        points = [(px, py) for px, py in points if 0 <= px < 100 and 0 <= py < 120]
        expected = _paste_by_hand(probs[d], boxes[d], points)
        got = [float(out["masks"][d, 0, py, px]) for px, py in points]
        assert got == pytest.approx(expected, abs=1e-5)

    # the old path, pasted at the test size then resized: the same masks within interpolation
    old = F.interpolate(plain["masks"], size=(120, 100), mode="bilinear", align_corners=False)
    diff = (out["masks"] - old).abs()
    new_bin, old_bin = out["masks"][:, 0] >= 0.5, old[:, 0] >= 0.5
    iou = (new_bin & old_bin).flatten(1).sum(1) / (new_bin | old_bin).flatten(1).sum(1).clamp(min=1)
    big = new_bin.flatten(1).sum(1) >= 100
    # measured: mean 0.0022, 0.12 % of the pixels more than 0.25 apart (at borders), IoU
    # 0.88–0.99 (the fixture's training is not bit-exact with 2 threads: a soft mask near 0.5
    # binarises differently from run to run, hence the lowest IoU's margin)
    assert diff.mean() < 0.01 and (diff > 0.25).float().mean() < 0.01
    assert big.sum() >= 3 and (iou[big] >= 0.8).all() and iou[big].median() >= 0.93
    assert diff.max() > 0.1  # but not the same: each is sampled at its own pixel grid

    # detect resizes, runs the model at the test size and asks for the original size
    (det,) = detect(model, [original], 64, 200)
    assert torch.equal(det["masks"], out["masks"]) and torch.equal(det["boxes"], out["boxes"])
    # the semantic map and the fusion are made at the original size too, with its stuff area
    assert det["sem_seg"].shape == (5, 120, 100) and det["panoptic"][0].shape == (120, 100)
    ids, segments = fuse(det["masks"], det["scores"], det["labels"], det["sem_seg"], 0.2, 0.4,
                         stuff_area_for((120, 100)), stuff_ids=[6, 7, 8, 9])
    assert torch.equal(det["panoptic"][0], ids) and det["panoptic"][1] == segments
    # at the input's own size, output_sizes change nothing
    with torch.no_grad():
        (same,) = model([small], output_sizes=[(h, w)])
    for key in ("boxes", "masks", "sem_seg"):
        assert torch.equal(same[key], plain[key]), key


def test_stuff_area_is_the_official_4096_px_on_coco_sized_images():
    # Counted at the original size, where the model fuses when evaluated; COCO ships its
    # images with a longer side of 640 px, whatever the aspect ratio.
    for size in ((480, 640), (640, 480), (427, 640), (640, 640), (800, 1200)):
        assert stuff_area_for(size) == 4096, size
    # A smaller image is a COCO image shrunk by s = longer side / 640: the limit is 4096 · s².
    assert stuff_area_for((128, 128)) == 164  # the shapes set: 4096 · 0.2² = 163.84
    assert stuff_area_for((96, 128)) == 164  # the longer side decides
    assert stuff_area_for((384, 384)) == 1475  # 4096 · 0.6² = 1474.56

    # the model's fusion applies it to the map it is given: one pixel short is dropped
    model = build()
    for (height, width), limit in (((480, 640), 4096), ((128, 128), 164)):
        sem = torch.zeros(height * width, dtype=torch.int64)  # "things" without an instance
        sem[: limit - 1] = 1
        sem[limit - 1: 2 * limit - 1] = 2
        _, segments = model.fuse_panoptic(torch.zeros(0, 1, height, width), torch.zeros(0),
                                          torch.zeros(0, dtype=torch.int64),
                                          sem.view(height, width))
        assert [(s["category_id"], s["area"]) for s in segments] == [(7, limit)], limit


def _mask_ap(images, targets, detections) -> float:
    """COCO mask AP (percent) of ``detections`` (``detect``'s dicts) against the ground-truth
    masks of ``targets`` (contiguous labels 0..4 → shapes ids 1..5), by pycocotools."""
    from blendmask_edu.data.files import make_coco
    from blendmask_edu.evaluation.coco import coco_metrics, encode_masks, to_coco_results

    entries, annotations, results = [], [], []
    for image_id, (image, target, det) in enumerate(zip(images, targets, detections), start=1):
        height, width = image.shape[-2:]
        entries.append({"id": image_id, "file_name": f"{image_id}.png", "height": height,
                        "width": width})
        masks = target["masks"]
        rles = encode_masks(masks[:, None].float(), (height, width))
        for rle, label, box, area in zip(rles, target["labels"].tolist(), boxes_from_masks(masks),
                                         masks.flatten(1).sum(1).tolist()):
            x0, y0, x1, y1 = box.tolist()
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": label + 1, "segmentation": rle, "iscrowd": 0,
                                "area": float(area), "bbox": [x0, y0, x1 - x0, y1 - y0]})
        results += to_coco_results(det, image_id)
    gt = make_coco({"images": entries, "annotations": annotations,
                    "categories": [{"id": i, "name": str(i)} for i in sorted(THING_IDS)]})
    return coco_metrics(gt, results)[0]["mask_AP"]


def test_mask_ap_before_and_after_pasting_at_the_original_size(learned, tmp_path_factory):
    """The trained model on images three times their test size: the scenes ``learned`` fitted,
    drawn again by the generator at 192 px (same seed: the same layout, finer edges, its ground
    truth drawn at 192 px; the test resize brings the images back to 64). Before the change:
    masks pasted at 64 px, then resized ×3; after: pasted at 192 px directly. The same boxes, the
    same masks up to resampling, and a mask AP that shows the model works at the original size.

    Which of the two scores more AP here is not asserted: on two images of a 40-step model a
    point or two of AP is one small mask crossing an IoU threshold, and the sign changed between
    machines (before/after 52.9/55.8, 49.6/49.6, 48.1/44.4 were measured). The gain of pasting
    once is asserted against an exact reference in the next test."""
    model, _ = learned
    dataset = shapes_split(tmp_path_factory, num_val=2, size=192, seed=0)
    images, targets = zip(*[dataset[i] for i in range(2)])
    after = detect(model, images, 64, 200)
    before = []
    with torch.no_grad():
        for image, det in zip(images, model([resize_for_test(im, 64, 200)[0] for im in images])):
            before.append({"boxes": det["boxes"] * 3, "scores": det["scores"],
                           "labels": det["labels"],
                           "masks": F.interpolate(det["masks"], size=tuple(image.shape[-2:]),
                                                  mode="bilinear", align_corners=False)})
    for old, new in zip(before, after):
        torch.testing.assert_close(new["boxes"], old["boxes"].clamp(0, 192), rtol=0, atol=1e-3)
        old_bin, new_bin = old["masks"][:, 0] > 0.5, new["masks"][:, 0] > 0.5
        inter = (old_bin & new_bin).flatten(1).sum(1)
        union = (old_bin | new_bin).flatten(1).sum(1)
        kept = union > 0
        # measured: 0.89 for the smallest masks (about 20 px across at 192), 0.96-0.997 otherwise
        assert (inter[kept] / union[kept]).min() >= 0.85, inter / union.clamp_min(1)
    ap_after = _mask_ap(images, targets, after)
    assert ap_after >= 40, (_mask_ap(images, targets, before), ap_after)


@pytest.mark.parametrize("sharpness", [4.0, 10.0, 30.0])
def test_pasting_once_at_the_original_size_draws_the_shape_more_exactly(sharpness):
    """An R × R map whose 0.5 level is an ellipse inscribed in the box at 0.7 of its half-axes,
    with edges from soft (4) to sharp (30); twenty random boxes of 6-26 px in a 64 px image,
    the original image being 192 px. Reference: that ellipse drawn at 192 px from the pixel
    centres. Pasting at 192 px directly matches it closer than pasting at 64 px and resizing ×3,
    on every box (measured mean IoU 0.9996-0.9998 vs 0.972-0.992; worst 0.998 vs 0.915)."""
    generator = torch.Generator().manual_seed(0)
    resolution, radius = 56, 0.7
    centres = (torch.arange(resolution) + 0.5) / resolution * 2 - 1  # cell centres in [-1, 1]
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    probs = torch.sigmoid((radius - (xx ** 2 + yy ** 2).sqrt()) * sharpness)[None]  # (1, R, R)
    pixels = torch.arange(192.0) + 0.5

    def iou(a, b):
        return float((a & b).sum() / (a | b).sum())

    direct_ious, resized_ious = [], []
    for _ in range(20):
        x0, y0 = (torch.rand(2, generator=generator) * 30 + 5).tolist()
        w, h = (torch.rand(2, generator=generator) * 20 + 6).tolist()
        box = torch.tensor([[x0, y0, x0 + w, y0 + h]])
        direct = paste_masks(probs, box * 3, (192, 192))[0] > 0.5
        resized = F.interpolate(paste_masks(probs, box, (64, 64))[None], size=(192, 192),
                                mode="bilinear", align_corners=False)[0, 0] > 0.5
        u = (pixels[None] - 1.5 * (2 * x0 + w)) / (1.5 * w)  # box-centred, half-axis 1
        v = (pixels[:, None] - 1.5 * (2 * y0 + h)) / (1.5 * h)
        reference = u ** 2 + v ** 2 < radius ** 2
        direct_ious.append(iou(direct, reference))
        resized_ious.append(iou(resized, reference))
    assert min(direct_ious) >= 0.99, direct_ious
    assert all(d >= r for d, r in zip(direct_ious, resized_ious)), (direct_ious, resized_ious)
    assert sum(direct_ious) / 20 > sum(resized_ious) / 20 + 0.005, (direct_ious, resized_ious)
