"""The named presets: each a function that builds a :class:`~blendmask_edu.config.Config` and
whose docstring lists, with measurements, where it departs from the paper.

``get_config(name)`` returns a fresh copy of one; the defaults themselves live only in the
dataclasses of :mod:`blendmask_edu.config`, so a preset states only what it changes.

- ``coco_r50_3x`` — the paper's setting (docs/model.md §7): R-50, FPN P3–P7, batch 16, LR 0.01,
  270k iterations with steps at 210k / 250k, 1k warm-up, shorter side 640–800, max 1333.
- ``coco_r50_3x_panoptic`` — the same with the panoptic extension (docs/model.md §6).
- ``coco_r50_short`` — the paper's model on one GPU, a short run on a COCO subset: batch 8,
  LR 0.005 (linear scaling), 12k iterations, mixed precision; its docstring lists the departures
  and the expected time and AP (estimates, with their basis; ``make gpu-check`` measures a GPU).
- ``tiny`` — the CPU preset for the shapes dataset (128 px images): every departure from the
  paper is listed in its own docstring below, with the reason. The notebooks train it.
- ``tiny_fast`` — ``make demo``'s: ``tiny`` trained on the same number of images in under half
  the time of ``tiny`` on its own code (batch 16 for 2000 steps, a narrower auxiliary head,
  bfloat16 autocast on a CPU that computes it natively).
"""

from __future__ import annotations

import dataclasses

from blendmask_edu.config import (BackboneConfig, BlendMaskConfig, Config, FCOSConfig,
                                  InputConfig, MaskRCNNConfig, PanopticConfig, SolverConfig)


def _coco_r50_3x() -> Config:
    return Config(name="coco_r50_3x")


def _coco_r50_3x_panoptic() -> Config:
    """The paper's panoptic model (its Appendix A, docs/model.md §6): ``coco_r50_3x`` +
    Panoptic-FPN's semantic head (width 128, GN, ``loss_sem_seg`` weight 0.5) and fusion (overlap
    0.4, stuff regions ≥ 4096 px). The stuff classes come from the data (COCO panoptic: 53).

    The semantic head reads P2–P5, as the official one does (the backbone builds P2 for it
    besides FCOS's P3–P7). Departure: the instance threshold of the fusion is the paper's 0.2,
    where the official config's 0.45 reproduces its README's PQ (``--panoptic.score_thresh 0.45``).
    """
    return Config(name="coco_r50_3x_panoptic", panoptic=PanopticConfig(enabled=True))


def _coco_r50_short() -> Config:
    """The paper's model on one GPU, on a COCO subset: a short run, hours rather than days.

    The model is the paper's unchanged: R-50 from ImageNet weights with frozen BN and frozen
    stem + res2, FPN P3–P7, the FCOS head (4 convs, GN), K = 4 bases, attention M = 14,
    blender R = 56; the input recipe too (shorter side 640–800, longer ≤ 1333, flip).
    Departures, each for one GPU and a short budget:
    - batch 8 instead of 16 (4 GPUs × 4 images in the paper): one GPU's memory;
    - base LR 0.005 by the linear scaling rule (Goyal et al., 2017): the LR is proportional to
      the total batch size, 0.01 × 8 / 16 — two SGD steps of 8 images at LR η move the weights
      about as far as one step of 16 images at 2η. The paper's 1000-iteration linear warm-up
      is kept: it absorbs the large, unstable steps of the first iterations;
    - 12,000 iterations (96k images, e.g. about 5 epochs of a 20k-image subset made with
      ``blendmask-edu data subset --images 20000``) instead of 270,000 of batch 16 (4.32M
      images), with the LR steps at 9,000 and 10,800 (75 % and 90 %; the 3× schedule drops at
      78 % and 93 %);
    - mixed precision (``amp``: torch.autocast in float16 and a GradScaler on CUDA; the paper
      trained in fp32): faster and lighter on GPUs with tensor cores; the losses are computed in
      fp32 (on a CPU, ``amp`` is bfloat16 where the CPU has it: ``training.engine``);
    - a checkpoint every 1000 iterations instead of 5000, so that an interrupted short run
      loses only a few minutes.

    What to expect. Published, on COCO val2017 (trained on all of train2017): the official
    implementation's model zoo (AdelaiDet, ``configs/BlendMask/README.md``) gives BlendMask R-50
    box AP 39.9 / mask AP 35.8 after the 1× schedule (90k iterations of 16: 1.44M images) and
    42.7 / 37.8 after 3× (270k: 4.32M images), with its MSRA caffe2 ImageNet weights (this
    package uses torchvision's, see :mod:`~blendmask_edu.modeling.backbone`); its FCOS R-50 1×
    alone reaches box AP 38.7. The paper's own ablations (R-50, 1×, val2017) report lower mask
    AP, about 34 (approximate: not re-checked here). Everything below is an
    **estimate**, not a measurement — no GPU was at hand when this preset was written:
    - AP: this run sees 96k images, 6.7 % of the 1× schedule's and 2.2 % of the 3×'s, and
      from a subset. No published figure exists for a schedule this short; expect it far below
      the 1× numbers — an estimate of mask AP 15–25 on val2017 (box AP a few points higher) for
      a 20k-image subset. Well below 10 after the full run points at a problem (random
      backbone weights, a wrong split, an LR too high for the batch). ``make gpu-check`` (300
      iterations, all inside the warm-up) reports an AP near 0 by design.
    - Time: neither the paper nor the official code publishes BlendMask's training speed. The
      basis: detectron2's model zoo trains Mask R-CNN R50-FPN 3× at 0.261 s per iteration on
      8 V100s with 2 images each (fp32), and BlendMask's official inference is as fast as Mask
      R-CNN's (14 against 13 images/s on a 1080Ti). At that rate batch 8 on one V100 takes
      ≈ 4 × 0.26 ≈ 1.0 s per iteration in fp32: ≈ 3.5 h for 12k iterations; autocast speeds
      that up by a factor not measured here, and a newer GPU (A100, H100) is several times
      faster, so the run takes from about an hour to a few hours. This package's own code,
      plain PyTorch with images loaded in the training process, has never been timed on a GPU:
      ``make gpu-check`` prints the s/iter of yours and the full run's time at that speed.
    - Memory: detectron2's Mask R-CNN above uses 3.4 GB per GPU for 2 images in fp32; 8 images
      need several times that — an estimate of about 8–14 GB. If it does not fit, halve batch
      and LR together: ``--solver.batch_size 4 --solver.base_lr 0.0025``.
    """
    return Config(
        name="coco_r50_short",
        solver=SolverConfig(batch_size=8, base_lr=0.005, max_iter=12_000, steps=(9_000, 10_800),
                            warmup_iters=1000, amp=True, checkpoint_period=1000),
    )


# The shapes dataset's thing classes, in the order of its category ids 1-5
# (``blendmask_edu.data.synthetic.THING_CATEGORIES``; a test checks that the two agree).
SHAPES_CLASSES = ("circle", "triangle", "rectangle", "star", "ring")


def _tiny() -> Config:
    """The CPU preset: shapes at 128 px, about 7½ minutes of training on 2 cores.

    Measured on shapes val, 2 threads, on a quiet machine, two runs: 4000 steps in 420 s and
    454 s gave box AP 58.9 / 59.8, mask AP 50.8 / 51.1 and PQ 57.9 / 57.9 (before the panoptic
    head: box 59.8, mask 50.5 in 441 s; 2000 steps of that: box 47.2, mask 38.5). Departures
    from the paper, each for the CPU and the small images:
    - a narrow ResNet-18 (stem width 16 instead of 64: 4× fewer channels everywhere) from
      random weights, with trainable BatchNorm and nothing frozen: there are no ImageNet weights
      offline, frozen BN with identity statistics does not train from scratch, and the narrow
      trunk makes a step several times cheaper (FCOS: 0.13 s vs 0.5 s at batch 8), so the
      minutes hold thousands of steps instead of hundreds (box AP 44 vs 4 for width 64 with
      SGD, 300 steps);
    - FPN and head width 64 and 2 convs per tower instead of 256 and 4;
    - levels P3–P5 only, with the size ranges scaled to the image (P3 ≤ 16 < P4 ≤ 32 < P5 px):
      objects are 8–110 px, so P6/P7 (strides 64/128) would see almost nothing;
    - the blender and bases scaled to the objects: M = 7, R = 28 (objects of 8–110 px; R = 56
      would mostly upsample), a bottom module of width 32 with 2 tower convs;
    - AdamW (lr 2e-3, weight decay 0.05) for 4000 steps of batch 8 with steps at 3000/3600:
      from scratch and this short, SGD at lr 0.02–0.08 reached box AP 3–4 where AdamW reached 7
      (FCOS, 300 steps, width 64); batch 4 for 4000 steps (half the images, 0.054 s against
      0.086 s per step) reached mask AP 40.2;
    - no scale jitter (flip only): a short schedule has no time to benefit from it;
    - panoptic on shapes' 4 stuff classes (sky, ground, pole, net), with a semantic head of
      width 32 instead of 128 that reads the bottom module's fused features instead of its own
      per-level stacks (``share_basis_features``, an option the paper only suggests; the official
      head is separate). Measured at 4000 steps, one seed each: shared PQ 57.9, PQ_th 60.5,
      PQ_st 54.7, mIoU 70.4, mask AP 50.8 in 420 s; own head 54.8 / 57.4 / 51.6 / 68.0 / 48.7,
      with 9 times the parameters (83k against 9k). That own head read P3–P5; it now reads
      P2–P5, as Panoptic-FPN's does, and has not been measured on shapes since.
    """
    return Config(
        name="tiny", num_classes=5, category_ids=(1, 2, 3, 4, 5), class_names=SHAPES_CLASSES,
        backbone=BackboneConfig(depth=18, pretrained=False, frozen_stages=0, norm="bn",
                                fpn_channels=64, levels=(3, 4, 5), width=16),
        fcos=FCOSConfig(num_convs=2, sizes_of_interest=(16, 32), pre_nms_topk=200,
                        max_detections=50),
        blendmask=BlendMaskConfig(attn_size=7, blend_resolution=28, basis_channels=32,
                                  basis_convs=2),
        panoptic=PanopticConfig(enabled=True, stuff_ids=(6, 7, 8, 9),
                                stuff_names=("sky", "ground", "pole", "net"), head_channels=32,
                                share_basis_features=True),
        input=InputConfig(train_short_sizes=(128,), train_max_size=240,
                          test_short_size=128, test_max_size=240),
        solver=SolverConfig(optimizer="adamw", batch_size=8, base_lr=0.002, weight_decay=0.05,
                            max_iter=4000, steps=(3000, 3600), warmup_iters=50,
                            checkpoint_period=500, clip_grad_norm=10.0),
    )


def _tiny_fast() -> Config:
    """The demo's CPU preset: ``tiny``'s model and data, the same 32,000 training images in
    under half the time. ``benchmarks/time_to_accuracy.py`` (``make time-to-accuracy``)
    measures it against ``tiny`` on the code it ran on before. On a 2-core AMD EPYC with
    AVX-512 BF16 (2026-12-04, ``847ff2f``, one run after the other): ``tiny`` on the old code
    788 s, box AP 59.7 / mask AP 51.1 / PQ 57.4; this preset in float32 431 s (0.55×), 58.7 /
    51.0 / 57.2; in bfloat16, as it trains now, 378 s (0.48×), 59.4 / 50.8 / 57.3. At ``2ac34d0``
    that evening: ``tiny`` 693 s, 59.1 / 50.8 / 57.3; this preset in bfloat16 281 s (0.41×),
    60.3 / 51.2 / 58.2. (The ratios of 0.56–0.76× printed before ``847ff2f`` compared it with
    ``tiny`` on the new code: the script then imported this checkout's package for both runs.)

    Measured on shapes val, 2 threads (a 2-core AMD EPYC), one seed:
    - quality follows the number of images seen, not the steps: ``tiny``'s recipe at 2000
      steps of 8 (16,000 images) reached mask AP 36.8 / PQ 48.2 with lr 4e-3 and steps at
      1500/1800, 37.2 / 47.9 with a cosine decay (against 48.7–51.1 / 57–58 after 4000 steps);
      so the images stay, and each costs less;
    - batch 16 instead of 8, for 2000 steps with the LR steps at 1500/1800 and 100 warm-up
      steps: 47.4 images/s against 40.9 at batch 8 (a step's fixed costs — optimizer, Python,
      small ops — are shared by twice the images). The LR follows the batch: 4e-3 gave box AP
      58.9, mask AP 51.2, PQ 56.7; 3e-3 gave 58.5 / 49.9 / 56.3 (each run trained with one
      thread beside the other);
    - the bottom module's auxiliary thing-semantic head 32 channels wide, the width of the
      module itself (``basis_channels``), as in the official code (there both are 128); at 128
      it was a quarter of the model's convolution time at this size;
    - the decoded training images kept in memory (``input.cache_mb``, on for every preset where
      they fit): 2 ms an item instead of 8.
    - mixed precision (``solver.amp``): bfloat16 autocast on a CPU that computes it natively
      (AVX-512 BF16 or AMX; :func:`~blendmask_edu.training.engine.autocast_dtype`), float32
      with a note on other CPUs, float16 with a gradient scaler on CUDA. On the AMD EPYC above
      the whole training took 0.88× its float32 time (378 against 431 s, mask AP 50.8 against
      51.0, PQ 57.3 against 57.2); on an Intel Xeon with AMX 0.78× (494 against 635 s, mask AP
      51.7 against 51.1, PQ 57.8 against 57.6). ``--solver.amp false`` trains it in float32;
      ``compare`` does, for both models, unless told otherwise.
    Everything else is ``tiny``'s (see its docstring for the departures from the paper).
    """
    cfg = _tiny()
    return dataclasses.replace(
        cfg, name="tiny_fast",
        blendmask=dataclasses.replace(cfg.blendmask, basis_semantic_channels=32),
        solver=dataclasses.replace(cfg.solver, batch_size=16, base_lr=0.004, max_iter=2000,
                                   steps=(1500, 1800), warmup_iters=100, amp=True))


def _coco_r50_3x_mask_rcnn() -> Config:
    """BlendMask's counterpart in the paper's Table 1: Panoptic-FPN R-50 3× as detectron2's
    model zoo trains it (``panoptic_fpn_R_50_3x``): Mask R-CNN (torchvision's RPN and RoI heads,
    anchors 32–512 on P2–P6, 512 RoIs per image, 1024-wide box head, 4 × 256 convs then a
    14 → 28 mask head) + the semantic head on P2–P5 (width 128, GN, weight 0.5) and the same
    fusion as ``coco_r50_3x_panoptic``. The solver, input recipe and backbone (R-50, frozen BN,
    stem + res2 frozen) are ``coco_r50_3x``'s, which are detectron2's 3× recipe too, except
    the LR: detectron2 trains Mask R-CNN and Panoptic-FPN at 0.02 for batch 16 (FCOS and
    BlendMask at 0.01), and so does this preset. The published rows (the official BlendMask
    README, COCO val2017): this Panoptic-FPN R-50 3× PQ 41.5 / PQ_th 48.3 / PQ_st 31.2 against
    BlendMask's 42.5 / 49.5 / 32.0; the instance models alone, Mask R-CNN R-50 3× box AP 41.0 /
    mask AP 37.2 against BlendMask's 42.7 / 37.8.
    """
    return Config(name="coco_r50_3x_mask_rcnn", arch="mask_rcnn",
                  backbone=BackboneConfig(levels=(2, 3, 4, 5, 6)),
                  panoptic=PanopticConfig(enabled=True),
                  solver=SolverConfig(base_lr=0.02))


def _tiny_mask_rcnn() -> Config:
    """The Mask R-CNN counterpart of ``tiny_fast`` on shapes: Panoptic-FPN on the same trunk.

    The same as ``tiny_fast``: the narrow ResNet-18 (stem 16, trainable BN, nothing frozen),
    FPN width 64, the data (128 px, flip only), the solver (AdamW, batch 16, 2000 steps, steps
    at 1500/1800, 100 warm-up steps, gradient clipping at 10, ``amp``; ``compare`` trains both
    in float32) and the panoptic fusion. What
    belongs to Mask R-CNN is scaled the way ``tiny`` scales FCOS:
    - levels P2–P6 (Mask R-CNN's), anchors 8–128 px (2 × stride where the paper's are
      8 × stride on 800 px images: shapes' objects are 8–110 px);
    - RoIs go to P2–P5 by size with a canonical scale of 36 px (224 × 128/800) instead of 224,
      so that the largest shapes read P5, as COCO's largest objects do;
    - a box head 256 wide (1024 in the paper's, as the FPN is 4 × narrower) and a mask head of
      four 64-wide convs (the FPN width, 256 in the paper's);
    - the semantic head on P2–P5, width 32 (``tiny``'s): Panoptic-FPN's own, as BlendMask's
      ``tiny`` shares its bottom module's features instead (it has no bottom module here);
    - at most 50 detections per image, as ``tiny``.
    Measured (2 cores, batch 16, one step, the same 16 shapes images, side by side with
    ``tiny_fast``'s 0.30–0.35 s): torchvision's defaults for the RoI heads and the RPN took
    1.7–5 s per step, mostly in RoIAlign's backward pass on the CPU (0.6 s for 8 calls at 512
    RoIs per image) and the RPN's NMS (0.33 s). Scaled to 128 px images holding 1–6 objects:
    128 RoIs per image instead of 512 (a quarter of the box-head work), one RoIAlign sample per
    bin side instead of two (a 7 × 7 bin over a 20 px box on P2 is under one feature pixel),
    the RPN keeping 500 boxes per level before NMS and 200 after (2000 / 1000 on COCO, where
    images have 30 times the area): 1.0 s per step in the same measurement, still about 3 ×
    ``tiny_fast``'s. The LR: AdamW at ``tiny_fast``'s 4e-3 against 2e-3, two runs side by
    side with one thread each, no decay yet: total loss 1.13 against 1.22 at step 330 (the
    runs were stopped there for time; their AP was not measured), so 4e-3 stays — the same LR
    as BlendMask's. Not tuned further (anchors, RoI sizes, mask head width): ``tiny`` had more
    runs than this preset, which a student may want to give it.
    """
    tiny = _tiny_fast()
    return dataclasses.replace(
        tiny, name="tiny_mask_rcnn", arch="mask_rcnn",
        backbone=dataclasses.replace(tiny.backbone, levels=(2, 3, 4, 5, 6)),
        mask_rcnn=MaskRCNNConfig(anchor_sizes=(8, 16, 32, 64, 128), canonical_scale=36,
                                 sampling_ratio=1, rpn_pre_nms_topk_train=500,
                                 rpn_pre_nms_topk_test=500, rpn_post_nms_topk_train=200,
                                 rpn_post_nms_topk_test=200, roi_batch_size_per_image=128,
                                 box_head_dim=256, mask_head_channels=64, max_detections=50),
        panoptic=dataclasses.replace(tiny.panoptic, share_basis_features=False))


PRESETS = {"coco_r50_3x": _coco_r50_3x, "coco_r50_3x_panoptic": _coco_r50_3x_panoptic,
           "coco_r50_3x_mask_rcnn": _coco_r50_3x_mask_rcnn, "coco_r50_short": _coco_r50_short,
           "tiny": _tiny, "tiny_fast": _tiny_fast, "tiny_mask_rcnn": _tiny_mask_rcnn}


def get_config(name: str) -> Config:
    """A fresh copy of the named preset (one of :data:`PRESETS`); ValueError for another name."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()

