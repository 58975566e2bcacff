"""The three FCOS losses, as BlendMask configures them (docs/model.md §2).

* classification: sigmoid focal loss (α = 0.25, γ = 2) over every location × class, / |P|;
* box regression: GIoU loss on the positives, weighted by their centerness target,
  / Σ centerness target (the same normaliser the BlendMask mask loss uses);
* centerness: binary cross-entropy on the positives, / |P|.

"/ |P|" and "/ Σ centerness" use the mean over processes under DDP (``reduce_mean``), so every
GPU divides by the same number. The focal loss is torchvision's; the GIoU loss is written here
because FCOS computes it from the (l, t, r, b) distances, in stride units, with a +1 smoothing.
Introduced in ``notebooks/01_fcos.ipynb``.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from blendmask_edu.modeling.fcos import FCOSTargets

__all__ = ["fcos_losses", "giou_loss_ltrb"]

FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0


def giou_loss_ltrb(pred: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
    """1 − GIoU of two boxes given as distances (l, t, r, b) from the same location.

    pred, target (P, 4) (l, t, r, b), in stride units; weight (P,) or None.
    Returns the per-box losses (P,) when ``weight`` is None, else the scalar Σ loss·weight.

    Both boxes contain the location, so (docs/model.md §2)
      area       = (l + r)(t + b)
      inter      = (min l + min r)(min t + min b)
      enclose    = (max l + max r)(max t + max b)
      union      = area_pred + area_target − inter
      IoU        = (inter + 1) / (union + 1)       (+1 smoothing in stride units)
      GIoU       = IoU − (enclose − union) / enclose
    Differs from AdelaiDet: the enclose = 0 guard is a clamp at 1e-7 instead of adding 1e-7.
    Differs from ``torchvision.ops.generalized_box_iou_loss``: +1 smoothing, not eps.
    """
    pred, target = pred.float(), target.float()
    pl, pt, pr, pb = pred.unbind(1)
    tl, tt, tr, tb = target.unbind(1)
    area_pred = (pl + pr) * (pt + pb)
    area_target = (tl + tr) * (tt + tb)
    inter = ((torch.minimum(pl, tl) + torch.minimum(pr, tr))
             * (torch.minimum(pt, tt) + torch.minimum(pb, tb)))
    enclose = ((torch.maximum(pl, tl) + torch.maximum(pr, tr))
               * (torch.maximum(pt, tt) + torch.maximum(pb, tb)))
    union = area_pred + area_target - inter
    iou = (inter + 1) / (union + 1)
    giou = iou - (enclose - union) / enclose.clamp_min(1e-7)
    loss = 1 - giou  # (P,)
    return loss if weight is None else (loss * weight.float()).sum()


def fcos_losses(cls_logits: Tensor, bbox_reg: Tensor, centerness_logits: Tensor,
                targets: FCOSTargets, num_classes: int,
                reduce_mean: Optional[Callable[[Tensor], Tensor]] = None,
                ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    """FCOS losses of a batch, all predictions and targets flattened in the batch order.

    cls_logits (L, C) · bbox_reg (L, 4) stride units · centerness_logits (L,) or (L, 1)
    targets    batched ``FCOSTargets`` (``assign_batch_targets``), L rows in the same order
    reduce_mean  averages a scalar over processes (DDP); None = a single process.

    With P the positives (labels ≥ 0), c_i their centerness targets,
      num_pos_avg = max(mean over processes of |P|, 1),
      loss_denorm = max(mean over processes of Σ_P c_i, 1e-6),
      loss_fcos_cls = focal(cls_logits, one_hot(labels)) summed over L × C / num_pos_avg,
      loss_fcos_loc = Σ_P (1 − GIoU_i) c_i / loss_denorm,
      loss_fcos_ctr = Σ_P BCE(ctr_logit_i, c_i) / num_pos_avg.

    Returns ``(losses, extras)``: ``losses`` holds the three scalar losses above; ``extras``
    holds what the mask loss reuses: ``loss_denorm`` (scalar), ``num_pos_avg`` (scalar),
    ``pos_mask`` (L,) bool and ``pos_index`` (P,) int64.
    With no positive, the losses are finite and the loc / ctr losses are 0 × Σ predictions, so
    every head parameter still receives a (zero) gradient, as DDP needs.
    """
    cls_logits, bbox_reg = cls_logits.float(), bbox_reg.float()
    centerness_logits = centerness_logits.float().reshape(-1)  # (L,)
    labels = targets.labels
    pos_mask = labels >= 0  # (L,)
    pos_index = pos_mask.nonzero().squeeze(1)  # (P,)

    # both all-reduces run on every process, positives or not, so DDP never waits forever
    num_pos = pos_mask.sum().float()
    ctr_target = targets.centerness[pos_index].float()  # (P,)
    ctr_sum = ctr_target.sum()
    if reduce_mean is not None:
        num_pos, ctr_sum = reduce_mean(num_pos), reduce_mean(ctr_sum)
    num_pos_avg = num_pos.clamp_min(1.0)
    loss_denorm = ctr_sum.clamp_min(1e-6)

    one_hot = F.one_hot(labels.clamp_min(0), num_classes) * pos_mask[:, None]  # (L, C)
    loss_cls = sigmoid_focal_loss(cls_logits, one_hot.to(cls_logits.dtype), alpha=FOCAL_ALPHA,
                                  gamma=FOCAL_GAMMA, reduction="sum") / num_pos_avg

    if pos_index.numel() == 0:
        loss_loc = bbox_reg.sum() * 0
        loss_ctr = centerness_logits.sum() * 0
    else:
        loss_loc = giou_loss_ltrb(bbox_reg[pos_index], targets.reg_targets[pos_index],
                                  ctr_target) / loss_denorm
        loss_ctr = F.binary_cross_entropy_with_logits(
            centerness_logits[pos_index], ctr_target, reduction="sum") / num_pos_avg

    losses = {"loss_fcos_cls": loss_cls, "loss_fcos_loc": loss_loc, "loss_fcos_ctr": loss_ctr}
    extras = {"loss_denorm": loss_denorm, "num_pos_avg": num_pos_avg,
              "pos_mask": pos_mask, "pos_index": pos_index}
    return losses, extras
