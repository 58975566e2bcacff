"""Do two versions of the package give the same detections? Boxes, scores, labels and masks of
the R-50 model on one fixed input, saved by one version and compared by another.

A speed change must not change what the model computes. This script builds ``coco_r50_3x`` with
random weights drawn from seed 0 (score threshold 0, 50 detections: the setting of
``speed.py``), gives its frozen BatchNorms statistics and affines drawn from seed 1 (random init
leaves them the identity, which would hide a wrong fold of a norm into its conv), runs it in
eval mode on ``speed.py``'s fixed 512² image, and either saves the
outputs (``--save FILE``) or compares them with a saved file (``--against FILE``), printing the
largest differences. Run the saving side with the other version first on ``PYTHONPATH``::

    git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before .venv/bin/python benchmarks/same_outputs.py --save before.pt
    .venv/bin/python benchmarks/same_outputs.py --against before.pt

Exit status 1 when the boxes differ by more than ``--box-tol`` px or more than ``--mask-tol`` of
the mask pixels (thresholded at 0.5) differ. Float results can move in the last bits when the
order of a sum changes (another memory layout, another kernel), and a pixel whose probability
sits at 0.5 can then flip; the default tolerances allow for exactly that and nothing more.
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict

import torch

from peers import make_images, our_config

KEYS = ("boxes", "scores", "labels", "masks")


def outputs(size: int, detections: int, threads: int) -> Dict[str, torch.Tensor]:
    """The model's outputs on the fixed image: boxes (D, 4), scores (D,), labels (D,), masks
    (D, 1, size, size) probabilities."""
    from blendmask_edu import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(our_config("coco_r50_3x", detections)).eval()
    model.load_state_dict(frozen_norm_statistics(model.state_dict()))
    with torch.inference_mode():
        out = model(make_images(size, 1, torch.device("cpu")))[0]
    return {key: out[key].clone() for key in KEYS}


def frozen_norm_statistics(state: Dict[str, torch.Tensor], seed: int = 1) -> Dict[str, torch.Tensor]:
    """``state`` with every norm's four tensors (the prefixes of the ``running_var`` keys) drawn
    from ``seed``: scale 0.5–1.5, shift N(0, 0.1²), mean N(0, 0.1²), variance 0.5–2."""
    g = torch.Generator().manual_seed(seed)
    state = dict(state)
    draws = {"weight": lambda n: 0.5 + torch.rand(n, generator=g),
             "bias": lambda n: 0.1 * torch.randn(n, generator=g),
             "running_mean": lambda n: 0.1 * torch.randn(n, generator=g),
             "running_var": lambda n: 0.5 + 1.5 * torch.rand(n, generator=g)}
    for prefix in sorted(k[: -len("running_var")] for k in state if k.endswith("running_var")):
        for name, draw in draws.items():
            state[prefix + name] = draw(state[prefix + name].numel())
    return state


def compare(before: Dict[str, torch.Tensor], after: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """The largest differences: box coordinates (px), scores, labels that differ (count), mask
    probabilities, and the fraction of mask pixels whose 0.5-threshold differs."""
    if before["boxes"].shape != after["boxes"].shape:
        return {"detections_before": len(before["boxes"]), "detections_after": len(after["boxes"])}
    return {
        "box_px": (before["boxes"] - after["boxes"]).abs().max().item(),
        "score": (before["scores"] - after["scores"]).abs().max().item(),
        "labels_differ": int((before["labels"] != after["labels"]).sum()),
        "mask_prob": (before["masks"] - after["masks"]).abs().max().item(),
        "mask_pixels_differ": ((before["masks"] > 0.5) != (after["masks"] > 0.5)).float().mean().item(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    side = p.add_mutually_exclusive_group(required=True)
    side.add_argument("--save", help="write the outputs to this file")
    side.add_argument("--against", help="compare with the outputs saved in this file")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--detections", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--box-tol", type=float, default=1e-2, help="px")
    p.add_argument("--mask-tol", type=float, default=1e-4, help="fraction of mask pixels")
    args = p.parse_args(argv)
    now = outputs(args.size, args.detections, args.threads)
    if args.save:
        torch.save(now, args.save)
        print(f"saved {len(now['boxes'])} detections to {args.save}")
        return 0
    diff = compare(torch.load(args.against, weights_only=True), now)
    for key, value in diff.items():
        print(f"{key:<20} {value:.3g}" if isinstance(value, float) else f"{key:<20} {value}")
    same = ("box_px" in diff and diff["box_px"] <= args.box_tol and diff["labels_differ"] == 0
            and diff["mask_pixels_differ"] <= args.mask_tol)
    print(f"{'same' if same else 'DIFFERENT'} within box {args.box_tol} px and "
          f"{args.mask_tol:.0e} of the mask pixels")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
