"""Peak memory of ``predict_dataset`` on COCO-sized images: how much the evaluation path holds.

A stand-in model answers as a real one does (the eval contract of ``modeling.detector``): D
detections per image whose R × R mask probabilities are pasted by ``blender.paste_masks`` into
the image at ``output_sizes`` (the original sizes ``detect`` asks for) or, when not asked, at the
size it was given. No network runs, so the number measured is what the path after the model
holds: pasted masks, their resize, their encoding to RLE. Run it in a fresh process (a peak
cannot be reset):

    .venv/bin/python benchmarks/eval_memory.py                  # 8 images 640 × 480, 100 each
    .venv/bin/python benchmarks/eval_memory.py --batch-size 8   # 8 images per model call

Prints the resident set size before, the peak during ``predict_dataset`` and the difference
(MiB), the results count and the wall time, as one line of text and one of JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from blendmask_edu.evaluation.inference import predict_dataset
from blendmask_edu.modeling.blender import paste_masks
from memory import peak_rss_mb, rss_mb


class PastingStub(nn.Module):
    """``detections`` random boxes per image (up to half the image wide and high) with random
    ``resolution`` × ``resolution`` probabilities, pasted at ``output_sizes`` (default: the input
    sizes); ``boxes``, ``scores``, ``labels`` and ``masks`` [D, 1, H, W] as the contract says."""

    def __init__(self, detections: int, resolution: int = 28, seed: int = 0):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # detect() finds the device through it
        self.detections, self.resolution = detections, resolution
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, images: Sequence[torch.Tensor],
                output_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[dict]:
        sizes = output_sizes or [tuple(image.shape[-2:]) for image in images]
        outputs = []
        for height, width in sizes:
            d, g = self.detections, self.generator
            scale = torch.tensor([width, height, width, height], dtype=torch.float32)
            corner = torch.rand(d, 2, generator=g) * 0.5
            extent = torch.rand(d, 2, generator=g) * 0.5 + 0.05
            boxes = torch.cat([corner, corner + extent], dim=1) * scale  # (D, 4)
            probs = torch.rand(d, self.resolution, self.resolution, generator=g)
            outputs.append({"boxes": boxes, "scores": torch.rand(d, generator=g),
                            "labels": torch.ones(d, dtype=torch.int64),
                            "masks": paste_masks(probs, boxes, (height, width))[:, None]})
        return outputs


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--short-size", type=int, default=800, help="test short side (800)")
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per model call (default: predict_dataset's)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    dataset = [(torch.rand(3, args.height, args.width), {"image_id": i})
               for i in range(args.images)]
    model = PastingStub(args.detections)
    options = {} if args.batch_size is None else {"batch_size": args.batch_size}
    before = rss_mb()
    start = time.perf_counter()
    results = predict_dataset(model, dataset, args.short_size, args.max_size, progress=False,
                              **options)
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    row = {"images": args.images, "detections": args.detections,
           "size": [args.height, args.width], "short_size": args.short_size,
           "batch_size": args.batch_size, "rss_before_mb": round(before, 1),
           "peak_mb": round(peak, 1), "peak_growth_mb": round(peak - before, 1),
           "results": len(results), "seconds": round(seconds, 2)}
    print(f"{args.images} images {args.height}×{args.width}, {args.detections} detections each, "
          f"test size {args.short_size}: RSS {before:.0f} MiB before, peak {peak:.0f} MiB "
          f"(+{peak - before:.0f} MiB), {len(results)} results in {seconds:.1f} s")
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
