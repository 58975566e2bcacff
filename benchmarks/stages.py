"""Where the inference time goes: BlendMask's forward timed stage by stage through the model's own
stage methods (Mask R-CNN's for comparison), and the work that grows with the instances.

The staged runs are checked against ``model(images)``, so the breakdown cannot drift away from the
model: a stage the model adds or changes shows up here, or the check fails.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import torch
from torch import Tensor

from blendmask_edu.modeling.blender import blend, postprocess_masks
from timing import StageClock, interleaved_medians, run_inference

Staged = Callable[..., List[Dict]]  # (model, images, clock) → the model's eval-mode output


def blendmask_stages(model, images: Sequence[Tensor], clock: StageClock) -> List[Dict]:
    """``BlendMask.forward`` in eval mode, one ``clock`` row per stage method: images N ×
    [3, H, W] → the same per-image dicts as ``model(images)``. The top module and the blender run
    per image, here in two loops to time them apart; the semantic head (which ``forward`` runs
    before ``detect``, and which nothing before the fusion reads) is timed with the fusion."""
    with torch.inference_mode():
        with clock("normalise/pad"):
            batch, sizes = model.preprocess(images)
        with clock("backbone+FPN"):
            pyramid = model.backbone(batch)
        with clock("FCOS head"):
            x = model.run_head(batch, sizes, pyramid)
        with clock("bottom module"):
            bottom = model.basis(x.levels)
        with clock("FCOS post-process (threshold, top-k, NMS)"):
            detections = model.detect(x)
        with clock("top module (at the detections)"):
            for i, det in enumerate(detections):
                det["attentions"] = model.attentions(x, det, i)  # (D, K·M·M)
        with clock("blender + paste"):
            for i, det in enumerate(detections):
                det["masks"] = model.masks(bottom, det, i, x.sizes[i])  # (D, 1, H, W)
        if model.semantic is not None:  # the panoptic extension
            with clock("semantic head + panoptic fusion"):
                sem_seg_logits = model.semantic_logits(x, bottom)  # (N, 1 + S, H/4, W/4)
                for i, det in enumerate(detections):
                    det["sem_seg"] = model.semantic_map(x, sem_seg_logits, i)  # (1 + S, H, W)
                    det["panoptic"] = model.fuse_panoptic(det["masks"], det["scores"],
                                                          det["labels"], det["sem_seg"])
    return detections


def maskrcnn_stages(model, images: Sequence[Tensor], clock: StageClock) -> List[Dict]:
    """torchvision's ``GeneralizedRCNN.forward`` in eval mode, stage by stage: images N ×
    [3, H, W] → the same per-image dicts as ``model(images)``."""
    with torch.inference_mode():
        original_sizes = [tuple(im.shape[-2:]) for im in images]
        with clock("transform (normalise, resize, pad)"):
            batch, _ = model.transform(images)
        with clock("backbone+FPN"):
            features = model.backbone(batch.tensors)
        with clock("RPN"):
            proposals, _ = model.rpn(batch, features)
        with clock("RoI heads (box + mask)"):
            detections, _ = model.roi_heads(features, proposals, batch.image_sizes)
        with clock("post-process (paste masks)"):
            detections = model.transform.postprocess(detections, batch.image_sizes, original_sizes)
    return detections


def staged_breakdown(model, images: Sequence[Tensor], staged: Staged, warmup: int, repeats: int,
                     device) -> Dict[str, Dict[str, float]]:
    """Stage name → {``ms``, ``cpu_ms``}: medians over ``repeats`` staged runs after ``warmup``.
    Asserts that the staged run gives the model's own boxes and masks."""
    reference = run_inference(model, images)
    clock = StageClock(device)
    for round_ in range(warmup + repeats):
        detections = staged(model, images, clock)
        clock.lap(keep=round_ >= warmup)
    for ours, theirs in zip(detections, reference):
        torch.testing.assert_close(ours["boxes"], theirs["boxes"], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(ours["masks"], theirs["masks"], rtol=1e-4, atol=1e-4)
    return clock.medians()


def per_instance_costs(model, images: Sequence[Tensor], instances: Sequence[int], device,
                       warmup: int, repeats: int, seed: int = 0) -> Dict:
    """The work that grows with the number of instances D, on ``model``'s own features of one
    image [3, H, W]: the top module at D random locations, the blend alone, and blend + sigmoid +
    paste (``postprocess_masks``) with D random boxes; plus the dense top module for comparison.

    Returns ``locations`` (L), ``dense_top_ms``, ``bases_shape`` [1, K, H/4, W/4] and ``rows``,
    one {``instances``, ``top_at_locations_ms``, ``blend_ms``, ``blend+paste_ms``,
    ``allocate_ms``} per D. ``allocate`` is ``torch.zeros(D, H, W)`` alone: the floor of any
    paste that returns D full-image float maps (on the CPU mostly the page faults of fresh memory).
    """
    g = torch.Generator().manual_seed(seed)
    size = images[0].shape[-1]
    with torch.inference_mode():
        x = model.features(images)
        bases = model.basis(x.levels)["bases"]  # (1, K, H/4, W/4)
        tower, total = x.head["box_tower"], sum(len(loc) for loc in x.locations)
        dense = interleaved_medians({"dense": lambda: model.top(tower)}, warmup, repeats, device)
    options = model.blend_options
    rows = []
    for count in instances:
        where = torch.randint(0, total, (count,), generator=g).to(device)
        index = torch.zeros(count, dtype=torch.int64, device=device)
        attentions = torch.randn(count, model.top.out_channels, generator=g).to(device)
        corner = torch.rand(count, 2, generator=g) * size * 0.8
        extent = 8 + torch.rand(count, 2, generator=g) * (size / 2 - 8)
        boxes = torch.cat([corner, corner + extent], dim=1).to(device)  # (D, 4)
        rois = torch.cat([index[:, None].float(), boxes], dim=1)  # (D, 5)
        tasks = {
            "top_at_locations": lambda: model.top.at_locations(tower, index, where),
            "blend": lambda: blend(bases, attentions, rois, options["resolution"],
                                   options["spatial_scale"], options["pooler"],
                                   options["interpolation"]),
            "blend+paste": lambda: postprocess_masks(bases, attentions, boxes, index, x.sizes[0],
                                                     **options),
            "allocate": lambda: torch.zeros(count, *x.sizes[0], device=device),
        }
        with torch.inference_mode():
            timed = interleaved_medians(tasks, warmup, repeats, device)
        rows.append({"instances": count, **{f"{k}_ms": v["median_ms"] for k, v in timed.items()}})
    return {"locations": total, "dense_top_ms": dense["dense"]["median_ms"],
            "bases_shape": list(bases.shape), "rows": rows}
