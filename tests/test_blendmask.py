"""The whole BlendMask model: its contract (DESIGN §4), and that it can learn two images by heart."""

import dataclasses

import pytest
import torch

from blendmask_edu import build_model, get_config
from blendmask_edu.config_override import override
from blendmask_edu.data.coco import CocoInstances
from blendmask_edu.data.files import dataset_paths
from blendmask_edu.data.synthetic import generate_shapes
from blendmask_edu.modeling.detector import build_fcos
from blendmask_edu.training.engine import train


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, num_train=2, num_val=1, seed=11, progress=False)
    data = CocoInstances.from_paths(dataset_paths(root, "train"))
    return torch.utils.data.Subset(data, [0, 1]), data


def test_contract_losses_and_predictions(two_images):
    subset, _ = two_images
    torch.manual_seed(0)
    model = build_model(get_config("tiny"))
    images, targets = zip(*[subset[i] for i in range(2)])
    model.train()
    losses = model(list(images), list(targets))
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask",
                           "loss_basis_sem", "loss_sem_seg"}  # the tiny preset is panoptic
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        out = model([images[0], torch.rand(3, 200, 249)])
        bases = model.bases_of([images[0], torch.rand(3, 200, 249)])
    for det, image_bases, (height, width) in zip(out, bases, [(128, 128), (200, 249)]):
        count = len(det["scores"])
        assert det["masks"].shape == (count, 1, height, width)
        assert det["attentions"].shape == (count, 4 * 7 * 7)
        assert image_bases.shape == (4, -(-height // 4), -(-width // 4))


def test_output_sizes_give_every_output_in_those_pixels():
    # The eval contract of both detectors: asked for other sizes (the originals of resized
    # images), boxes come back scaled to them, masks, semantic map and id map at them.
    cfg = override(override(get_config("tiny"), "fcos.score_thresh", "0"),
                   "fcos.max_detections", "10")
    image = torch.rand(3, 64, 96)
    scale = torch.tensor([120 / 96, 128 / 64] * 2)  # × 1.25 across, × 2 down: exact in float
    for model in (build_fcos(cfg), build_model(cfg)):
        model.eval()
        with torch.no_grad():
            (plain,), (out,) = model([image]), model([image], output_sizes=[(128, 120)])
        assert len(out["boxes"]) == 10
        torch.testing.assert_close(out["boxes"], plain["boxes"] * scale, rtol=0, atol=0)
        assert torch.equal(out["scores"], plain["scores"])
        assert torch.equal(out["labels"], plain["labels"])
        with pytest.raises(ValueError, match="2 output sizes for 1 images"):
            model([image], output_sizes=[(128, 120), (64, 96)])
    assert out["masks"].shape == (10, 1, 128, 120) and out["sem_seg"].shape == (5, 128, 120)
    assert out["panoptic"][0].shape == (128, 120)


def _mask_iou(pred, gt):
    inter = (pred & gt).sum().item()
    return inter / max((pred | gt).sum().item(), 1)


def test_overfits_two_images(two_images):
    subset, data = two_images
    torch.manual_seed(0)
    cfg = get_config("tiny")
    cfg = dataclasses.replace(cfg, solver=dataclasses.replace(
        cfg.solver, batch_size=2, max_iter=300, steps=(250,), warmup_iters=10, weight_decay=0.0))
    model = build_model(cfg)
    images, targets = zip(*[subset[i] for i in range(2)])
    with torch.no_grad():
        start = sum(model.train()(list(images), list(targets)).values()).item()
    log = train(model, subset, cfg, progress=False, log_period=20)
    # The centerness BCE cannot fall below the entropy of its soft targets (≈ 0.5 here), so this
    # asks the other four losses to fall almost to zero.
    assert log[-1]["loss"] <= 0.2 * start, (start, [round(e["loss"], 3) for e in log])
    model.eval()
    ious = []
    with torch.no_grad():
        for i in range(2):
            image, target = subset[i]
            det = model([image])[0]
            ids = data.categories.category_id(target["labels"])
            for gt_mask, category in zip(target["masks"].bool(), ids.tolist()):
                same = det["labels"] == category
                best = max((_mask_iou(m[0] >= 0.5, gt_mask) for m in det["masks"][same]), default=0.0)
                ious.append(best)
    print(f"loss {start:.3f} -> {log[-1]['loss']:.3f}; mask IoU per object {[round(v, 2) for v in ious]}")
    assert sum(ious) / len(ious) >= 0.8, [round(v, 2) for v in ious]
