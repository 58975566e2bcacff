"""The Mask R-CNN / Panoptic-FPN counterpart (modeling.mask_rcnn): the package's model contract,
the configs that build it, and a resumed training of it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from blendmask_edu import build_model, get_config
from blendmask_edu.config import model_name
from blendmask_edu.modeling.mask_rcnn import MASK_RCNN_LEVELS, MaskRCNN
from blendmask_edu.training.engine import train
from blendmask_edu.training.solver import lr_factor, scale_schedule

from conftest import shapes_train_set

CATEGORY_IDS = (11, 12, 13, 14, 15)  # dataset ids deliberately not 1..C
STUFF_IDS = (21, 22)


def _config(panoptic: bool = True, **solver):
    cfg = get_config("tiny_mask_rcnn")
    return dataclasses.replace(
        cfg, category_ids=CATEGORY_IDS,
        panoptic=dataclasses.replace(cfg.panoptic, enabled=panoptic, stuff_ids=STUFF_IDS,
                                     stuff_names=("a", "b")),
        solver=dataclasses.replace(cfg.solver, batch_size=2, warmup_iters=1, steps=(3,),
                                   max_iter=4, checkpoint_period=2, **solver))


def _batch():
    """Two 64 × 96 images, three objects, semantic targets (things 0, stuff 1..2, void 255)."""
    torch.manual_seed(1)
    images = [torch.rand(3, 64, 96) for _ in range(2)]
    masks0 = torch.zeros(2, 64, 96, dtype=torch.uint8)
    masks0[0, 5:30, 10:40] = 1
    masks0[1, 35:60, 50:90] = 1
    masks1 = torch.zeros(1, 64, 96, dtype=torch.uint8)
    masks1[0, 10:50, 20:70] = 1
    sem = torch.ones(64, 96, dtype=torch.long)
    sem[:5] = 255
    targets = [{"boxes": torch.tensor([[10., 5, 40, 30], [50, 35, 90, 60]]),
                "labels": torch.tensor([0, 4]), "masks": masks0, "sem_seg": sem},
               {"boxes": torch.tensor([[20., 10, 70, 50]]), "labels": torch.tensor([2]),
                "masks": masks1, "sem_seg": sem.clone()}]
    return images, targets


def test_train_mode_returns_the_losses_of_mask_rcnn_and_panoptic_fpn():
    torch.manual_seed(0)
    model = build_model(_config()).train()
    assert isinstance(model, MaskRCNN) and model_name(_config()) == "Panoptic-FPN"
    images, targets = _batch()
    losses = model(images, targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                           "loss_box_reg", "loss_mask", "loss_sem_seg"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    # at initialisation the classifier is near uniform over C + 1 classes: −log(1/6) ≈ 1.79
    assert losses["loss_classifier"].item() == pytest.approx(1.79, abs=0.3)
    sum(losses.values()).backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.grad is not None and p.grad.abs().sum() > 0 for p in trained) > 0.9 * len(trained)
    with pytest.raises(ValueError, match="needs targets"):
        model(images)


def test_train_mode_without_semantic_targets_says_what_is_missing():
    model = build_model(_config()).train()
    images, targets = _batch()
    for t in targets:
        del t["sem_seg"]
    with pytest.raises(ValueError, match="sem_seg"):
        model(images, targets)


def test_eval_mode_answers_in_the_package_contract():
    """Boxes, scores, labels as dataset ids, masks [D, 1, H, W] probabilities at the output
    size, sem_seg [1 + S, H, W] and a panoptic id map of that size, as BlendMask answers."""
    torch.manual_seed(0)
    cfg = _config()
    cfg = dataclasses.replace(cfg, mask_rcnn=dataclasses.replace(cfg.mask_rcnn, score_thresh=0.0))
    model = build_model(cfg).eval()
    images, _ = _batch()
    with torch.no_grad():
        outputs = model(images, output_sizes=[(128, 192), (64, 96)])
    for det, (h, w) in zip(outputs, [(128, 192), (64, 96)]):
        d = len(det["scores"])
        assert 0 < d <= cfg.mask_rcnn.max_detections
        assert det["boxes"].shape == (d, 4) and det["labels"].shape == (d,)
        assert set(det["labels"].tolist()) <= set(CATEGORY_IDS)
        assert det["masks"].shape == (d, 1, h, w)
        assert 0 <= det["masks"].min() and det["masks"].max() <= 1
        assert det["boxes"][:, 2].max() <= w and det["boxes"][:, 3].max() <= h
        assert det["sem_seg"].shape == (1 + len(STUFF_IDS), h, w)
        ids, segments = det["panoptic"]
        assert ids.shape == (h, w)
        assert {s["category_id"] for s in segments} <= set(CATEGORY_IDS) | set(STUFF_IDS)
    # The same images answered at their own size: the boxes are half the doubled ones
    with torch.no_grad():
        own = model(images[:1])[0]
    assert torch.allclose(own["boxes"] * 2, outputs[0]["boxes"], atol=1e-3)


def test_mask_rcnn_without_the_panoptic_head():
    cfg = _config(panoptic=False)
    model = build_model(cfg).eval()
    assert model_name(cfg) == "Mask R-CNN" and model.semantic is None
    with torch.no_grad():
        det = model(_batch()[0])[0]
    assert "sem_seg" not in det and "panoptic" not in det and "masks" in det


def test_the_config_is_checked():
    cfg = _config()
    with pytest.raises(ValueError, match="P2-P6"):
        build_model(dataclasses.replace(cfg, backbone=dataclasses.replace(
            cfg.backbone, levels=(3, 4, 5))))
    with pytest.raises(ValueError, match="share_basis_features"):
        build_model(dataclasses.replace(cfg, panoptic=dataclasses.replace(
            cfg.panoptic, share_basis_features=True)))
    with pytest.raises(ValueError, match="arch"):
        build_model(dataclasses.replace(cfg, arch="yolact"))


def test_tiny_mask_rcnn_shares_the_trunk_data_and_solver_of_tiny_fast():
    ours, theirs = get_config("tiny_mask_rcnn"), get_config("tiny_fast")
    assert ours.arch == "mask_rcnn" and tuple(ours.backbone.levels) == MASK_RCNN_LEVELS
    for field in ("depth", "width", "norm", "frozen_stages", "fpn_channels", "pretrained"):
        assert getattr(ours.backbone, field) == getattr(theirs.backbone, field)
    assert ours.solver == theirs.solver and ours.input == theirs.input
    assert ours.panoptic.stuff_ids == theirs.panoptic.stuff_ids
    cfg = get_config("coco_r50_3x_mask_rcnn")
    model = build_model(dataclasses.replace(cfg, backbone=dataclasses.replace(
        cfg.backbone, pretrained=False), panoptic=dataclasses.replace(
        cfg.panoptic, stuff_ids=tuple(range(81, 134)))))
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 81
    assert model.semantic.predictor.out_channels == 54


def test_scale_schedule_moves_the_lr_steps_in_proportion():
    solver = get_config("tiny_fast").solver  # 2000 iterations, steps 1500/1800, warm-up 100
    short = scale_schedule(solver, 550)
    assert (short.max_iter, short.steps, short.warmup_iters) == (550, (413, 495), 100)
    assert lr_factor(549, short) == pytest.approx(0.01)
    assert scale_schedule(solver, 10).warmup_iters == 5
    with pytest.raises(ValueError):
        scale_schedule(solver, 0)


def test_a_mask_rcnn_run_resumes_to_the_same_weights(shapes, tmp_path):
    """4 iterations in one go and 2 + 2 resumed from last.pt end with the same weights: the
    RPN's and RoI heads' random sampling is restored with the rest of the RNG state."""
    cfg = dataclasses.replace(_config(), category_ids=(1, 2, 3, 4, 5),
                              panoptic=get_config("tiny_mask_rcnn").panoptic)
    data = shapes_train_set(shapes)
    torch.manual_seed(0)
    whole = build_model(cfg)
    whole_log = train(whole, data, cfg, max_iter=4, progress=False, log_period=1)
    torch.manual_seed(0)
    train(build_model(cfg), data, cfg, max_iter=2, progress=False, log_period=1,
          out_dir=tmp_path)
    torch.manual_seed(5)
    resumed = build_model(cfg)  # other weights: all of the state comes from last.pt
    log = train(resumed, data, cfg, max_iter=4, progress=False, log_period=1, out_dir=tmp_path,
                resume=True)
    difference = max((a - b).abs().max().item() for a, b in
                     zip(whole.state_dict().values(), resumed.state_dict().values())
                     if a.is_floating_point())
    print(f"largest weight difference, resumed vs uninterrupted: {difference:.3g}")
    assert difference <= 1e-6
    assert [e["loss"] for e in log] == pytest.approx([e["loss"] for e in whole_log], rel=1e-6)


def test_the_results_file_scores_the_same_ap_when_pycocotools_recomputes_it(shapes, tmp_path):
    """evaluate_coco on a Mask R-CNN model trained 60 steps on six images and scored on them:
    the box and mask AP (above 0) are what pycocotools' own COCOeval gives for the
    coco_instances_results.json it wrote."""
    import json

    from pycocotools.cocoeval import COCOeval

    from blendmask_edu.data.coco import CocoInstances
    from blendmask_edu.data.files import dataset_paths
    from blendmask_edu.evaluation.evaluate import evaluate_coco
    from blendmask_edu.evaluation.metrics import read_metrics

    cfg = get_config("tiny_mask_rcnn")
    cfg = dataclasses.replace(cfg, panoptic=dataclasses.replace(cfg.panoptic, enabled=False),
                              mask_rcnn=dataclasses.replace(cfg.mask_rcnn, score_thresh=0.0),
                              solver=dataclasses.replace(cfg.solver, batch_size=2, max_iter=60,
                                                         warmup_iters=5, steps=(50,)))
    torch.manual_seed(0)
    model = build_model(cfg)
    train(model, shapes_train_set(shapes), cfg, progress=False)
    val = CocoInstances.from_paths(dataset_paths(shapes, "train"))
    metrics = evaluate_coco(model, val, 64, 64, progress=False, out_dir=tmp_path)
    results = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert len(results) > 0
    for iou_type, key in (("bbox", "AP"), ("segm", "mask_AP")):
        evaluator = COCOeval(val.coco, val.coco.loadRes(results), iou_type)
        evaluator.params.imgIds = list(val.image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        print(iou_type, metrics[key], 100 * evaluator.stats[0])
        assert metrics[key] > 0
        assert metrics[key] == pytest.approx(100 * evaluator.stats[0], abs=1e-9)
    written = read_metrics(tmp_path)
    assert written["segm"]["AP"] == pytest.approx(metrics["mask_AP"])
    assert "AP_boundary" in written and set(written["hard_cases"]) >= {"split", "overlap"}


def test_roi_masks_are_the_grids_the_pasted_masks_come_from():
    """roi_masks at a detection's box and class, pasted with torchvision's paste, gives the
    mask the model returned for that detection."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    cfg = _config(panoptic=False)
    cfg = dataclasses.replace(cfg, mask_rcnn=dataclasses.replace(cfg.mask_rcnn, score_thresh=0.0))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = _batch()[0][0]
    with torch.no_grad():
        det = model([image])[0]
    grids = model.roi_masks(image, det["boxes"][:3], det["labels"][:3])
    assert grids.shape == (3, 28, 28)
    pasted = paste_masks_in_image(grids[:, None], det["boxes"][:3], image.shape[-2:])
    assert torch.allclose(pasted, det["masks"][:3], atol=1e-5)
