"""The panoptic extension (paper Appendix A): a semantic branch, and fusion with the instances.

BlendMask becomes a panoptic segmenter the way Panoptic-FPN does it (docs/model.md §6): a *semantic
head* labels every pixel as one of 1 + S classes — class 0 "things" (all thing pixels merged)
and the S stuff classes 1..S, void = 255 ignored — and a fixed heuristic, ``fuse``, lays the
instances over that map. Introduced in ``notebooks/06_panoptic.ipynb``.

    P2, P3, P4, P5 ─per level: max(1, log2(s) − 2) × [3×3 conv, GN, ReLU, bilinear ×2 (not at
      P2)]─▶ stride 4 ─sum─▶ 1×1 conv → 1 + S                        (N, 1 + S, H/4, W/4)

Training: ``semantic_loss`` (``loss_sem_seg``) = 0.5 · cross-entropy of the logits upsampled ×4,
against ``sem_seg`` targets that ``data.coco.CocoInstances`` makes on the fly from the panoptic
PNGs. Inference: ``semantic_inference`` → per-pixel probabilities at the image size; ``fuse``
turns them and the instance masks into a COCO panoptic id map + ``segments_info``.

The head reads P2–P5 (``SEMANTIC_LEVELS``), as Panoptic-FPN does: a model with its own
semantic head asks the backbone for P2 besides the FCOS levels. ``shared=True`` is an option the
paper only suggests: the head reads the bottom module's fused stride-8 features
(``BasisModule``'s ``fused``) instead of its own per-level stacks, and needs no P2.

The fusion's thresholds default to the config's (``config.PanopticConfig``), their one home.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blendmask_edu.config import PanopticConfig
from blendmask_edu.conventions import IGNORE
from blendmask_edu.modeling.layers import conv_norm_relu

SEMANTIC_LEVELS = (2, 3, 4, 5)  # the FPN levels Panoptic-FPN's semantic head reads
COCO_LONG_SIDE = 640  # the longer side of COCO's images as shipped, where stuff_area is counted

__all__ = ["COCO_LONG_SIDE", "FUSION_KEYS", "PanopticFusion", "SEMANTIC_LEVELS", "SemanticHead",
           "fuse", "pad_semantic_targets", "semantic_inference", "semantic_loss",
           "stuff_area_for"]
FUSION_KEYS = ("score_thresh", "overlap_thresh", "stuff_area")  # a panoptic model's ``fusion``


def _num_blocks(stride: int) -> int:
    """Conv blocks that bring a level at ``stride`` to stride 4: one per ×2, at least one."""
    return max(1, int(math.log2(stride)) - 2)


class SemanticHead(nn.Module):
    """Panoptic-FPN's semantic head: FPN levels → 1 + S semantic logits at stride 4.

    in_channels  channels of the input maps (the FPN's 256, or the bottom module's 128 if shared)
    num_classes  1 + S: "things" + the stuff classes (``CategoryMap.num_semantic``)
    channels     width of the conv blocks (128)
    strides      the input levels' strides, finest first: (4, 8, 16, 32) for P2–P5
                 (Panoptic-FPN's); each must be a power of two ≥ 4
    norm         "GN" (32 groups, fewer if ``channels`` has no 32 divisor) | "BN" | "none"
    shared       False: forward(features), a list of (N, in_channels, h_l, w_l), one per stride
                 (extra levels are ignored). True: forward(fused), one (N, in_channels, H/8, W/8)
                 map, e.g. the bottom module's fused P3..P5 (``BasisModule(...)["fused"]``, its
                 refined levels), at stride 8 whatever ``strides`` says: one conv block + ×2.

    Returns logits (N, num_classes, H/4, W/4), H × W the padded image (``strides[0]`` × the
    first map's size). A level at stride s passes log2(s) − 2 blocks of 3×3 conv → norm → ReLU →
    bilinear ×2; the stride-4 maps are summed and a 1×1 conv predicts the classes. Every conv
    gets kaiming-normal (fan_out) weights and zero bias, the official "MSRA fill".

    Each ×2 resizes to the next finer level's size ⌈H/s⌉ × ⌈W/s⌉. When the padded size is a
    multiple of the coarsest stride that is exactly ×2; with P6/P7 on a multiple of 32 (a 3×5
    P5 gives a 2×3 P6) it keeps the levels aligned where a plain ×2 would not.
    """

    def __init__(self, in_channels: int, num_classes: int,
                 channels: int = PanopticConfig.head_channels,
                 strides: Sequence[int] = tuple(2 ** level for level in SEMANTIC_LEVELS),
                 norm: str = PanopticConfig.head_norm, shared: bool = False):
        super().__init__()
        strides = (8,) if shared else tuple(int(s) for s in strides)
        if not strides or any(s < 4 or s & (s - 1) for s in strides):
            raise ValueError(f"strides={strides}: need powers of two ≥ 4, finest first")
        self.strides, self.shared = strides, shared
        self.stacks = nn.ModuleList()
        for stride in strides:
            blocks = [conv_norm_relu(in_channels if j == 0 else channels, channels, norm)
                      for j in range(_num_blocks(stride))]
            self.stacks.append(nn.ModuleList(blocks))
        self.predictor = nn.Conv2d(channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, features: Union[Tensor, Sequence[Tensor]]) -> Tensor:
        if isinstance(features, Tensor):
            features = [features]
        if len(features) < len(self.strides):
            raise ValueError(f"SemanticHead reads {len(self.strides)} level(s) at strides "
                             f"{self.strides}, got {len(features)}")
        height = features[0].shape[-2] * self.strides[0]  # H, W of the padded batch
        width = features[0].shape[-1] * self.strides[0]
        summed = None
        for stack, stride, x in zip(self.stacks, self.strides, features):
            for j, block in enumerate(stack):
                x = block(x)
                if stride > 4:
                    s = stride >> (j + 1)  # this block's output stride
                    x = F.interpolate(x, size=(-(-height // s), -(-width // s)),
                                      mode="bilinear", align_corners=False)
            summed = x if summed is None else summed + x  # (N, channels, H/4, W/4)
        return self.predictor(summed)  # (N, 1 + S, H/4, W/4)


def pad_semantic_targets(targets: Sequence[Tensor], size: Tuple[int, int],
                         ignore: int = IGNORE) -> Tensor:
    """Per-image semantic maps N × (H_i, W_i) → one batch (N, H, W) int64, padded with ``ignore``.

    ``size`` is the padded batch size (H, W); each map sits at the top left, as its image does.
    """
    height, width = size
    device = targets[0].device if len(targets) else None
    out = torch.full((len(targets), height, width), ignore, dtype=torch.int64, device=device)
    for i, t in enumerate(targets):
        h, w = t.shape[-2:]
        if h > height or w > width:
            raise ValueError(f"semantic target {i} is {h}×{w}, larger than {height}×{width}")
        out[i, :h, :w] = t
    return out


def semantic_loss(logits: Tensor, targets: Tensor, weight: float = PanopticConfig.loss_weight,
                  ignore: int = IGNORE) -> Tensor:
    """``loss_sem_seg`` = weight · mean over labelled pixels of −log softmax(up×4(logits))[target].

    logits   (N, 1 + S, H/4, W/4) from ``SemanticHead``
    targets  (N, H', W') int64, things 0, stuff 1..S, ``ignore`` = void; H' ≤ H, W' ≤ W (they
             are padded with ``ignore`` to the upsampled logits' H × W)
    Returns a scalar. The logits are upsampled bilinearly (align_corners=False) to the target
    resolution, not the target downsampled, as in Panoptic-FPN. A batch without one labelled
    pixel gives 0 (not the NaN of a mean over nothing), still connected to the logits' graph.
    """
    n, _, h, w = logits.shape
    height, width = 4 * h, 4 * w
    th, tw = targets.shape[-2:]
    if targets.shape[0] != n or th > height or tw > width:
        raise ValueError(f"targets {tuple(targets.shape)} do not fit {n} images of "
                         f"{height}×{width} (4 × the logits' {h}×{w})")
    targets = F.pad(targets.to(torch.int64), (0, width - tw, 0, height - th), value=ignore)
    up = F.interpolate(logits.float(), size=(height, width), mode="bilinear",
                       align_corners=False)  # (N, 1 + S, H, W)
    total = F.cross_entropy(up, targets, ignore_index=ignore, reduction="sum")
    labelled = (targets != ignore).sum().clamp(min=1)
    return total / labelled * weight


def semantic_inference(logits: Tensor, image_size: Tuple[int, int], padded_size: Tuple[int, int],
                       output_size: Optional[Tuple[int, int]] = None,
                       labels: bool = False) -> Tensor:
    """One image's semantic logits → probabilities (1 + S, H, W), or labels (H, W) int64.

    logits       (1 + S, h, w): ``logits[i]`` of the batch's (N, 1 + S, H_pad/4, W_pad/4)
    image_size   (H, W) of this image inside the padded batch (its un-padded part)
    padded_size  (H_pad, W_pad) of the batch
    output_size  (H_out, W_out) to resize to, e.g. the original size before a test-time resize;
                 None keeps (H, W)
    The logits are upsampled bilinearly to the padded size, cropped to the image, optionally
    resized bilinearly again, then ``softmax`` (or ``argmax`` with ``labels=True``) over classes.
    """
    height, width = image_size
    up = F.interpolate(logits[None].float(), size=tuple(padded_size), mode="bilinear",
                       align_corners=False)[:, :, :height, :width]  # (1, 1 + S, H, W)
    if output_size is not None and tuple(output_size) != (height, width):
        up = F.interpolate(up, size=tuple(output_size), mode="bilinear", align_corners=False)
    return up[0].argmax(0) if labels else up[0].softmax(0)


def stuff_area_for(image_size: Tuple[int, int], coco_area: int = PanopticConfig.stuff_area,
                   coco_side: int = COCO_LONG_SIDE) -> int:
    """The smallest stuff region the fusion keeps on an image of ``image_size`` (H, W), in px.

    The official rule (Panoptic-FPN, and BlendMask's code after it): stuff regions under
    ``coco_area`` = 4096 px are dropped, counted on the image at its ORIGINAL size — the fusion
    runs after the predictions are mapped back from the test size — whatever that size is. COCO
    ships its images with a longer side of ``coco_side`` = 640 px (4096 px is 1.3 % of a
    640 × 480 image), and this function returns ``coco_area`` unchanged for every image at
    least that large: on COCO, exactly the official rule.

    Departure, on smaller images only: an image whose longer side is under 640 px is taken as
    a COCO image shrunk by s = max(H, W) / 640, and the limit shrinks with its area,
    round(coco_area · s²): 164 px on a 128 × 128 shapes image (s = 0.2), 1475 px at 384 px.
    Unscaled, 4096 px would be a quarter of a 128 × 128 image and drop nearly every stuff region.
    """
    scale = min(1.0, max(image_size) / coco_side)
    return int(round(coco_area * scale * scale))


def fuse(masks: Tensor, scores: Tensor, labels: Tensor, sem_seg: Tensor,
         score_thresh: float = PanopticConfig.score_thresh,
         overlap_thresh: float = PanopticConfig.overlap_thresh,
         stuff_area: Optional[int] = None, *, stuff_ids: Optional[Sequence[int]] = None,
         mask_thresh: float = 0.5, trace: Optional[List[dict]] = None) -> Tuple[Tensor, List[dict]]:
    """Panoptic-FPN's heuristic: instances over stuff → (id map (H, W) int64, segments_info).

    masks       (D, H, W) or (D, 1, H, W) probabilities (binarised ≥ ``mask_thresh``) or bools
    scores      (D,) instance scores;  labels (D,) thing category ids (the dataset's ids)
    sem_seg     (H, W) semantic labels (0 things, 1..S stuff, 255 void) or (1 + S, H, W)
                probabilities (``semantic_inference``), reduced by argmax
    stuff_area  smallest stuff region kept, in pixels; None → ``stuff_area_for((H, W))``, the
                official 4096 px on an original-size COCO image (H × W should be the original
                size: ``BlendMask`` fuses there when asked for ``output_sizes``)
    stuff_ids   stuff category ids, label s → ``stuff_ids[s - 1]`` (``CategoryMap.stuff_ids``);
                None → the category id is the semantic label itself

    1. Instances by descending score; stop at the first score < ``score_thresh``.
    2. Skip an empty instance, or one whose pixels already taken / its area > ``overlap_thresh``;
       otherwise its pixels not yet taken become a new segment.
    3. Each stuff label's pixels that no instance took form one segment if they number
       ≥ ``stuff_area``. Pixels left over (void, or "things" without an instance) stay 0.
    Segment ids are 1, 2, … in placement order; ``segments_info`` has one dict per segment:
    ``id``, ``category_id``, ``isthing``, ``area`` and, for things, ``score`` and
    ``instance_id`` (the index into the D inputs).

    ``trace``, a list, receives one dict per decision, in order, for teaching: instances
    (``instance_id``, ``score``, ``area``, ``overlap`` = fraction already taken, ``decision``
    "kept" | "below score_thresh" | "empty" | "overlap"), then stuff labels (``label``,
    ``area`` = pixels no instance took, ``decision`` "kept" | "below stuff_area").

    Step 2 is sequential — each instance sees what the better ones took — so it is a Python loop
    over at most the kept D instances, each step a few (H, W) boolean operations; step 3 is one
    bincount and one lookup-table pass over the pixels (the Python loop runs over S counts).

    Differs from the official code: ``score_thresh`` defaults to the paper's 0.2 (§4.4); the
    official config uses 0.45 (INSTANCES_CONFIDENCE_THRESH) — pass 0.45 to reproduce its PQ.
    """
    if sem_seg.dim() == 3:
        sem_seg = sem_seg.argmax(0)
    if masks.dim() == 4:
        masks = masks[:, 0]  # (D, H, W)
    height, width = sem_seg.shape
    if masks.shape[-2:] != sem_seg.shape and masks.shape[0] > 0:
        raise ValueError(f"masks are {tuple(masks.shape[-2:])}, sem_seg {(height, width)}")
    if stuff_area is None:
        stuff_area = stuff_area_for((height, width))
    device = sem_seg.device
    binary = masks.to(device) if masks.dtype == torch.bool else masks.to(device) >= mask_thresh
    ids = torch.zeros((height, width), dtype=torch.int64, device=device)
    segments: List[dict] = []

    order = torch.sort(scores, descending=True, stable=True).indices
    num_kept = int((scores >= score_thresh).sum())
    areas = binary.flatten(1).sum(1).tolist() if binary.shape[0] else []
    taken = torch.zeros((height, width), dtype=torch.bool, device=device)
    for rank, d in enumerate(order.tolist()):
        note = {"instance_id": d, "score": float(scores[d]), "area": areas[d]}
        if rank >= num_kept:
            if trace is not None:
                trace.append({**note, "overlap": None, "decision": "below score_thresh"})
            break
        overlap = int((binary[d] & taken).sum())
        fraction = overlap / areas[d] if areas[d] else None
        decision = ("empty" if areas[d] == 0 else "overlap" if fraction > overlap_thresh
                    else "empty" if overlap == areas[d] else "kept")  # the last: threshold ≥ 1
        if trace is not None:
            trace.append({**note, "overlap": fraction, "decision": decision})
        if decision != "kept":
            continue
        visible = binary[d] & ~taken  # (H, W)
        area = areas[d] - overlap
        ids[visible] = len(segments) + 1
        taken |= visible
        segments.append({"id": len(segments) + 1, "category_id": int(labels[d]), "isthing": True,
                         "score": float(scores[d]), "area": area, "instance_id": d})

    sem = sem_seg.to(torch.int64)
    free = sem[~taken]  # labels of the pixels no instance took
    num_labels = int(sem.max()) + 1 if sem.numel() else 1
    counts = torch.bincount(free, minlength=num_labels).tolist()  # (num_labels,)
    lut = torch.zeros(num_labels, dtype=torch.int64, device=device)  # label → new segment id
    for label in range(1, min(num_labels, IGNORE)):
        if counts[label] == 0:
            continue
        kept = counts[label] >= stuff_area
        if trace is not None:
            trace.append({"label": label, "area": counts[label],
                          "decision": "kept" if kept else "below stuff_area"})
        if not kept:
            continue
        if stuff_ids is not None and label > len(stuff_ids):
            raise ValueError(f"semantic label {label} but only {len(stuff_ids)} stuff ids")
        category = label if stuff_ids is None else int(stuff_ids[label - 1])
        lut[label] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "category_id": category, "isthing": False,
                         "area": counts[label]})
    ids = torch.where(taken, ids, lut[sem])
    return ids, segments


class PanopticFusion:
    """What every panoptic model of the package shares (BlendMask's and Panoptic-FPN's): its
    semantic head's classes, its stuff ids and its fusion settings, ``panoptic_semantic_loss``
    and ``fuse_panoptic``.

    A model class lists it among its bases and calls :meth:`set_panoptic` in ``__init__``."""

    def set_panoptic(self, semantic: Optional[SemanticHead], stuff_ids: Sequence[int] = (),
                     sem_seg_weight: float = 0.0,
                     fusion: Optional[Dict[str, float]] = None) -> None:
        """Keep the panoptic settings, checked: ``semantic`` predicts 1 + len(stuff_ids)
        classes (label s ↔ ``stuff_ids[s - 1]``), ``fusion`` holds :data:`FUSION_KEYS`
        (thresholds, and the stuff area in px of a COCO image, ``stuff_area_for``)."""
        if semantic is not None and semantic.predictor.out_channels != 1 + len(stuff_ids):
            raise ValueError(f"the semantic head predicts {semantic.predictor.out_channels} "
                             f"classes; 1 + {len(stuff_ids)} stuff ids expected")
        if semantic is not None and set(fusion or {}) != set(FUSION_KEYS):
            raise ValueError("a panoptic model needs fusion=dict(score_thresh=…, "
                             "overlap_thresh=…, stuff_area=…)")
        self.semantic = semantic
        self.stuff_ids = [int(i) for i in stuff_ids]
        self.sem_seg_weight = sem_seg_weight
        self.fusion = dict(fusion or {})

    def panoptic_semantic_loss(self, sem_seg_logits: Tensor, targets: List[Dict]) -> Tensor:
        """``loss_sem_seg`` of a batch: ``semantic_loss`` of the logits (N, 1 + S, H/4, W/4)
        against the targets' ``sem_seg`` maps, padded with void to the batch's H × W."""
        if any("sem_seg" not in t for t in targets):
            raise ValueError("the panoptic model needs targets with 'sem_seg': open the "
                             "dataset with its panoptic JSON (CocoInstances.from_paths)")
        padded = (4 * sem_seg_logits.shape[-2], 4 * sem_seg_logits.shape[-1])
        sem_targets = pad_semantic_targets([t["sem_seg"] for t in targets], padded)
        return semantic_loss(sem_seg_logits, sem_targets, self.sem_seg_weight)

    def fuse_panoptic(self, masks: Tensor, scores: Tensor, labels: Tensor,
                      sem_seg: Tensor) -> Tuple[Tensor, List[dict]]:
        """One image's instances (``masks`` [D, 1, H, W], ``scores`` [D], ``labels`` [D] category
        ids) over its semantic map (``sem_seg`` [1 + S, H, W] or labels [H, W]) → (id map [H, W],
        segments_info): ``fuse`` with this model's thresholds and stuff ids, the stuff area
        ``stuff_area_for((H, W))`` — H × W being the original image's in an evaluation."""
        area = stuff_area_for(tuple(sem_seg.shape[-2:]), coco_area=self.fusion["stuff_area"])
        return fuse(masks, scores, labels, sem_seg, self.fusion["score_thresh"],
                    self.fusion["overlap_thresh"], area, stuff_ids=self.stuff_ids)
