"""The test-time path: images at their own size in, detections in their own pixels out.

The model never resizes, so :func:`detect` does it around the model: each image is resized to
the test scale (``data.transforms.resize_for_test``), and the model, in eval mode, is asked to
answer at the image's original size (``output_sizes``, the eval contract of
``modeling.detector``): boxes rescaled, masks pasted straight into the original image as the
official evaluation does (never pasted at the test size and resized), the semantic map resized
and a panoptic model's fusion made there, once, so that the id maps line up with the
ground-truth PNGs. :func:`predict_dataset` does this over a dataset and returns COCO's results
list, one image at a time by default: each image's masks are encoded to RLE (and handed to
``on_image``) before the next image is pasted, so memory holds one image's masks, whatever the
dataset's size. Introduced in ``notebooks/01_fcos.ipynb``; explained in ``05_evaluate``.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

from blendmask_edu.data.transforms import resize_for_test
from blendmask_edu.evaluation.coco import to_coco_results

OUTPUT_KEYS = ("boxes", "scores", "labels", "masks", "sem_seg")  # what detect hands back


@torch.no_grad()
def detect(model, images: Sequence[torch.Tensor], short_size: int, max_size: int,
           device: Optional[torch.device] = None) -> List[Dict[str, torch.Tensor]]:
    """Eval-mode detections of N images [3, H, W], in each image's own pixels, on the CPU.

    Each image is resized to the test scale first (the model never resizes) and the model
    answers at the original size (``output_sizes``): ``boxes`` [D, 4] xyxy clipped to the image,
    ``scores`` [D], ``labels`` [D] (category ids) and ``masks`` [D, 1, H, W] float
    probabilities; for a panoptic model also ``sem_seg`` [1 + S, H, W] probabilities and
    ``panoptic`` (id map [H, W], segments_info), fused at the original size. ``device``
    defaults to the model's. All N images' masks are returned at once: for many images use
    :func:`predict_dataset`, which keeps one image's at a time.
    """
    device = device or next(model.parameters()).device
    model.eval()
    resized = [resize_for_test(image, short_size, max_size) for image in images]
    batch = [image.to(device) for image, _ in resized]
    sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
    # Images the resize left alone need no output_sizes: the default is the input's own size.
    same = all(scale == (1.0, 1.0) for _, scale in resized)
    outputs = model(batch) if same else model(batch, output_sizes=sizes)
    detections = []
    for out in outputs:
        det = {key: out[key].cpu() for key in OUTPUT_KEYS if key in out}
        if "masks" in det:
            det["masks"] = det["masks"].float()
        if "panoptic" in out:
            ids, segments = out["panoptic"]
            det["panoptic"] = (ids.cpu(), segments)
        detections.append(det)
    return detections


def predict_dataset(model, dataset, short_size: int, max_size: int, batch_size: int = 1,
                    device: Optional[torch.device] = None, progress: bool = True,
                    on_image: Optional[Callable[[Dict, Dict], None]] = None) -> List[Dict]:
    """Detections on every image of ``dataset`` (items ``(image [3, H, W], target)``) in COCO's
    results format (one dict per detection, :func:`~blendmask_edu.evaluation.coco.to_coco_results`),
    ``batch_size`` images per model call; ``on_image(target, detection)`` sees each image's
    :func:`detect` output as it is made.

    Memory: a call's masks are float [D, 1, H, W] at the original size (100 detections of a
    640 × 480 image: 123 MB), encoded to RLE and dropped before the next call; ``batch_size``
    images hold that much each, hence 1 by default (as detectron2 evaluates).
    """
    results = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="predict", disable=not progress):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        results += _predict_batch(model, items, short_size, max_size, device, on_image)
    return results


def _predict_batch(model, items: Sequence, short_size: int, max_size: int,
                   device: Optional[torch.device],
                   on_image: Optional[Callable[[Dict, Dict], None]]) -> List[Dict]:
    """COCO results of one batch of dataset items; its detections (and their masks) are
    this function's alone, so they are freed when it returns, before the next batch runs."""
    detections = detect(model, [image for image, _ in items], short_size, max_size, device)
    results = []
    for (_, target), det in zip(items, detections):
        results += to_coco_results(det, target["image_id"])
        if on_image is not None:
            on_image(target, det)
    return results
