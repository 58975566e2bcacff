"""How fast is BlendMask? Against torchvision's Mask R-CNN and FCOS, on one machine, in one run.

Every model gets the same image size, the same number of detections (score threshold 0, so
random weights still give exactly ``--detections`` boxes), the same threads and the same
synthetic training batch. Measured (``benchmarks/README.md`` explains every number):

  inference latency   one image, ``torch.inference_mode()``, median of ``--repeats`` runs after
                      ``--warmup`` runs; the models take turns, so a change in the machine's load
                      hits all of them alike
  training step       batch 2, forward + backward + SGD step, median the same way
  peak memory         each model in a fresh process (CPU: peak RSS; CUDA: max allocated)
  stages              where BlendMask's inference time goes, stage by stage, by calling the
                      model's own submodules in ``BlendMask.forward``'s order (checked against
                      ``model(images)``); Mask R-CNN's stages for comparison
  per instance        the top module at D locations, the blend, blend + paste
                      (``postprocess_masks``) for D = 10, 100, 1000, against the dense top module

Run ``make bench`` (or ``python benchmarks/speed.py``); ``--quick`` is a seconds-long smoke run
at small sizes; ``--json FILE`` saves every number.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from typing import Callable, Dict, List, Optional

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FCOS as TorchvisionFCOS
from torchvision.models.detection import MaskRCNN, fcos_resnet50_fpn, maskrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from blendmask_edu import build_model, get_config
from blendmask_edu.modeling.blender import blend, postprocess_masks
from blendmask_edu.config import Config, override
from blendmask_edu.modeling.fcos import compute_locations
from blendmask_edu.modeling.model import build_fcos, normalize_and_pad
from blendmask_edu.modeling.panoptic import semantic_inference

GOALS = [  # (name, numerator, denominator, phase, upper bound on the ratio)
    ("inference ≤ 0.5 × Mask R-CNN", "blendmask_r50", "maskrcnn_tv", "inference", 0.5),
    ("inference ≤ 1.15 × FCOS", "blendmask_r50", "fcos_tv", "inference", 1.15),
    ("training step ≤ 0.65 × Mask R-CNN", "blendmask_r50", "maskrcnn_tv", "train", 0.65),
]
NORM_TYPES = (FrozenBatchNorm2d, nn.BatchNorm2d, nn.GroupNorm)


# ---------------------------------------------------------------------------------------------
# models

@dataclasses.dataclass
class Entry:
    """One model of the comparison: how to build it and at which image size to run it."""

    key: str
    title: str
    size: int
    build: Callable[[], nn.Module]
    torchvision: bool  # torchvision's label convention (1..C, 0 = background)


def our_config(preset: str, detections: int) -> Config:
    """A preset with random weights and a score threshold of 0: exactly ``detections`` boxes."""
    cfg = get_config(preset)
    for key, value in [("backbone.pretrained", "false"), ("fcos.score_thresh", "0.0"),
                       ("fcos.max_detections", str(detections))]:
        cfg = override(cfg, key, value)
    return cfg


def torchvision_peer(kind: str, size: int, detections: int, peers: str) -> nn.Module:
    """torchvision's R-50-FPN Mask R-CNN or FCOS with random weights, never resizing ``size``².

    ``peers="matched"`` builds them as torchvision does when it loads ImageNet weights — frozen
    BatchNorm, stem and layer1 frozen — which is coco_r50_3x's backbone. ``"builder"`` calls the
    stock builders with ``weights=None, weights_backbone=None``; without weights they switch to
    plain (trainable) BatchNorm and train all five stages, which makes training slower.
    """
    sizes = dict(min_size=size, max_size=size)
    if kind == "maskrcnn":
        options = dict(box_detections_per_img=detections, box_score_thresh=0.0, **sizes)
        if peers == "builder":
            return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **options)
        backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None,
                                       norm_layer=FrozenBatchNorm2d, trainable_layers=3)
        return MaskRCNN(backbone, num_classes=91, **options)
    options = dict(detections_per_img=detections, score_thresh=0.0, **sizes)
    if peers == "builder":
        return fcos_resnet50_fpn(weights=None, weights_backbone=None, **options)
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None,
                                   norm_layer=FrozenBatchNorm2d, trainable_layers=3,
                                   returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return TorchvisionFCOS(backbone, num_classes=91, **options)


def entries(args) -> List[Entry]:
    size, dets, peers = args.size, args.detections, args.peers
    r50 = our_config("coco_r50_3x", dets)
    tiny = our_config("tiny", dets)
    out = [
        Entry("blendmask_r50", "BlendMask R-50 (ours)", size, lambda: build_model(r50), False),
        Entry("fcos_r50", "FCOS R-50 (ours, no masks)", size, lambda: build_fcos(r50), False),
        Entry("maskrcnn_tv", f"Mask R-CNN R-50 (torchvision, {peers})", size,
              lambda: torchvision_peer("maskrcnn", size, dets, peers), True),
        Entry("fcos_tv", f"FCOS R-50 (torchvision, {peers})", size,
              lambda: torchvision_peer("fcos", size, dets, peers), True),
        Entry("blendmask_tiny", "BlendMask tiny (ours)", args.tiny_size,
              lambda: build_model(tiny), False),
    ]
    if args.tiny_512:
        out.append(Entry("blendmask_tiny_512", "BlendMask tiny (ours)", 512,
                         lambda: build_model(tiny), False))
    return out


def norm_summary(model: nn.Module) -> str:
    """E.g. ``FrozenBatchNorm2d×53 GroupNorm×8``: which norms a model uses, and how many."""
    counts: Dict[str, int] = defaultdict(int)
    for module in model.modules():
        if isinstance(module, NORM_TYPES):
            counts[type(module).__name__] += 1
    return " ".join(f"{name}×{n}" for name, n in sorted(counts.items())) or "none"


def parameters(model: nn.Module) -> str:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{total / 1e6:.1f}M ({trainable / 1e6:.1f}M trainable)"


# ---------------------------------------------------------------------------------------------
# inputs

def make_images(size: int, count: int, device, seed: int = 0) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, size, size, generator=g).to(device) for _ in range(count)]


def make_targets(size: int, count: int, device, torchvision_labels: bool) -> List[Dict]:
    """The same three objects (an ellipse inside each box) in every image of the batch."""
    fractions = torch.tensor([[0.10, 0.10, 0.45, 0.50], [0.50, 0.20, 0.90, 0.60],
                              [0.25, 0.55, 0.70, 0.95]])
    boxes = (fractions * size).round()  # (G, 4) xyxy
    x0, y0, x1, y1 = boxes[:, :, None, None].unbind(1)  # each (G, 1, 1)
    ys = torch.arange(size, dtype=torch.float32)[:, None] + 0.5  # (H, 1) pixel centres
    xs = torch.arange(size, dtype=torch.float32) + 0.5  # (W,)
    inside = ((2 * xs - x0 - x1) / (x1 - x0)) ** 2 + ((2 * ys - y0 - y1) / (y1 - y0)) ** 2 <= 1
    masks = inside.to(torch.uint8)  # (G, H, W)
    labels = torch.tensor([0, 1, 2]) + (1 if torchvision_labels else 0)
    # Panoptic semantic labels (the tiny preset is panoptic): things 0, one stuff class 1.
    sem_seg = (masks.sum(0) == 0).long()  # (H, W)
    return [{"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device),
             "sem_seg": sem_seg.to(device)} for _ in range(count)]


# ---------------------------------------------------------------------------------------------
# timing

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_inference(model: nn.Module, images) -> List[Dict]:
    with torch.inference_mode():
        return model(images)


def make_train_step(model: nn.Module, images, targets) -> Callable[[], None]:
    """One forward + backward + SGD step. The tiny learning rate keeps the weights (and so the
    work of the next step) practically unchanged across repeats."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-6, momentum=0.9, weight_decay=1e-4)

    def step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        losses = model(images, targets)
        sum(losses.values()).backward()
        optimizer.step()
    return step


def interleaved_medians(tasks: Dict[str, Callable[[], object]], warmup: int, repeats: int,
                        device: torch.device) -> Dict[str, Dict[str, float]]:
    """Run the tasks in turn ``warmup + repeats`` times. Per task: the median and minimum wall
    time, and the median CPU time of the process (all threads), in ms."""
    wall: Dict[str, List[float]] = defaultdict(list)
    cpu: Dict[str, List[float]] = defaultdict(list)
    for round_ in range(warmup + repeats):
        for key, task in tasks.items():
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            task()
            synchronize(device)
            if round_ >= warmup:
                wall[key].append(1000 * (time.perf_counter() - start))
                cpu[key].append(1000 * (time.process_time() - start_cpu))
    return {k: {"median_ms": statistics.median(v), "min_ms": min(v),
                "cpu_median_ms": statistics.median(cpu[k]), "runs": len(v)}
            for k, v in wall.items()}


class StageClock:
    """``with clock("stage"):`` adds the stage's wall and CPU time (synchronised on CUDA)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: Dict[str, List[float]] = defaultdict(list)
        self.cpu_times: Dict[str, List[float]] = defaultdict(list)
        self._current: Dict[str, List[float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        synchronize(self.device)
        start, start_cpu = time.perf_counter(), time.process_time()
        yield
        synchronize(self.device)
        wall, cpu = self._current.setdefault(name, [0.0, 0.0])
        self._current[name] = [wall + 1000 * (time.perf_counter() - start),
                               cpu + 1000 * (time.process_time() - start_cpu)]

    def lap(self, keep: bool = True) -> None:
        """End one run; ``keep=False`` drops it (a warm-up run)."""
        if keep:
            for name, (wall, cpu) in self._current.items():
                self.times[name].append(wall)
                self.cpu_times[name].append(cpu)
        self._current = {}

    def medians(self) -> Dict[str, Dict[str, float]]:
        return {name: {"ms": statistics.median(wall),
                       "cpu_ms": statistics.median(self.cpu_times[name])}
                for name, wall in self.times.items()}


def blendmask_stages(model, images, clock: StageClock) -> List[Dict]:
    """``BlendMask.forward`` in eval mode, stage by stage: the same submodules in the same order
    (the top module and the blender run per image; here in two loops to time them apart)."""
    with torch.inference_mode():
        with clock("normalise/pad"):
            batch, sizes = normalize_and_pad(images, model.pixel_mean, model.pixel_std)
        with clock("backbone+FPN"):
            features = list(model.backbone(batch).values())
        with clock("FCOS head"):
            head = model.head(features)
            locations = compute_locations([f.shape[-2:] for f in features], model.strides,
                                          device=batch.device)
        with clock("bottom module"):
            bottom = model.basis(features)
        with clock("FCOS post-process (threshold, top-k, NMS)"):
            detections = model.postprocess(head, locations, sizes)
        with clock("top module (at the detections)"):
            for i, det in enumerate(detections):
                det["image_index"] = torch.full_like(det["locations_index"], i)
                det["attentions"] = model.top.at_locations(head["box_tower"], det["image_index"],
                                                           det["locations_index"])
        with clock("blender + paste"):
            for i, det in enumerate(detections):
                det["masks"] = postprocess_masks(bottom["bases"], det["attentions"], det["boxes"],
                                                 det["image_index"], sizes[i],
                                                 **model.blend_options)  # (D, 1, H, W)
        if model.semantic is not None:  # the panoptic extension
            with clock("semantic head + panoptic fusion"):
                inputs = bottom["fused"] if model.share_basis_features else features
                sem_logits = model.semantic(inputs)  # (N, 1 + S, H/4, W/4)
                for i, det in enumerate(detections):
                    det["sem_seg"] = semantic_inference(sem_logits[i], sizes[i], batch.shape[-2:])
                    det["panoptic"] = model.fuse_panoptic(det["masks"], det["scores"],
                                                          det["labels"], det["sem_seg"])
    return detections


def maskrcnn_stages(model, images, clock: StageClock) -> List[Dict]:
    """torchvision's ``GeneralizedRCNN.forward`` in eval mode, stage by stage."""
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


def staged_breakdown(model, images, staged, warmup: int, repeats: int,
                     device) -> Dict[str, Dict[str, float]]:
    """Median wall and CPU ms per stage; asserts that the staged run gives the model's own boxes
    and masks."""
    reference = run_inference(model, images)
    clock = StageClock(device)
    for round_ in range(warmup + repeats):
        detections = staged(model, images, clock)
        clock.lap(keep=round_ >= warmup)
    for ours, theirs in zip(detections, reference):
        torch.testing.assert_close(ours["boxes"], theirs["boxes"], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(ours["masks"], theirs["masks"], rtol=1e-4, atol=1e-4)
    return clock.medians()


def per_instance_costs(model, images, instances, device, warmup: int, repeats: int,
                       seed: int = 0) -> Dict:
    """The work that grows with the number of instances D, on ``model``'s own features:
    the top module at D random locations, the blend alone, and blend + sigmoid + paste
    (``postprocess_masks``) with D random boxes; plus the dense top module for comparison."""
    g = torch.Generator().manual_seed(seed)
    size = images[0].shape[-1]
    with torch.inference_mode():
        _, sizes, features, head, locations = model.features(images)
        bases = model.basis(features)["bases"]  # (1, K, H/4, W/4)
        tower, total = head["box_tower"], sum(len(loc) for loc in locations)
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
            "blend+paste": lambda: postprocess_masks(bases, attentions, boxes, index, sizes[0],
                                                     **options),
        }
        with torch.inference_mode():
            timed = interleaved_medians(tasks, warmup, repeats, device)
        rows.append({"instances": count, **{f"{k}_ms": v["median_ms"] for k, v in timed.items()}})
    return {"locations": total, "dense_top_ms": dense["dense"]["median_ms"],
            "bases_shape": list(bases.shape), "rows": rows}


# ---------------------------------------------------------------------------------------------
# memory, in a fresh process per model

def _proc_status_mb(field: str) -> Optional[float]:
    """A ``/proc/self/status`` memory field (Linux) in MiB, or None."""
    try:
        with open("/proc/self/status") as f:
            for text in f:
                if text.startswith(field + ":"):
                    return int(text.split()[1]) / 2 ** 10  # kB
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """The current resident set size (Linux; elsewhere the peak so far)."""
    current = _proc_status_mb("VmRSS")
    return peak_rss_mb() if current is None else current


def peak_rss_mb() -> float:
    """The peak resident set size of this process.

    On Linux ``VmHWM``, the same number as ``getrusage(RUSAGE_SELF).ru_maxrss`` except that
    ru_maxrss survives ``exec``: a worker started by a parent that already holds 2 GB would report
    the parent's 2 GB. Elsewhere ru_maxrss (bytes on macOS, KiB on other systems).
    """
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10


def memory_worker(args) -> None:
    """Build one model, run inference twice then two training steps; print the peaks as JSON."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    entry = next(e for e in entries(args) if e.key == args.worker)
    torch.manual_seed(0)
    model = entry.build().to(device).eval()
    images = make_images(entry.size, 1, device)
    batch = make_images(entry.size, 2, device, seed=1)
    targets = make_targets(entry.size, 2, device, entry.torchvision)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        built = torch.cuda.memory_allocated(device) / 2 ** 20
    else:
        built = rss_mb()
    for _ in range(2):
        run_inference(model, images)
    inference = torch.cuda.max_memory_allocated(device) / 2 ** 20 if cuda else peak_rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    step = make_train_step(model, batch, targets)
    for _ in range(2):
        step()
    train = torch.cuda.max_memory_allocated(device) / 2 ** 20 if cuda else peak_rss_mb()
    print(json.dumps({"after_build_mb": built, "peak_inference_mb": inference,
                      "peak_train_mb": train}))


def measure_memory(args, keys) -> Dict[str, Dict[str, float]]:
    out = {}
    for key in keys:
        command = [sys.executable, os.path.abspath(__file__), "--worker", key,
                   "--device", args.device, "--threads", str(args.threads),
                   "--size", str(args.size), "--tiny-size", str(args.tiny_size),
                   "--detections", str(args.detections), "--peers", args.peers]
        if args.tiny_512:
            command.append("--tiny-512")
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"memory worker {key} failed:\n{done.stderr}")
        out[key] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


# ---------------------------------------------------------------------------------------------
# printing

def table(headers: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for text in f:
                if text.startswith("model name"):
                    return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def section(title: str) -> None:
    print(f"\n## {title}\n")


# ---------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--size", type=int, default=512, help="square image size of the R-50 models")
    p.add_argument("--tiny-size", type=int, default=128, help="image size of the tiny preset")
    p.add_argument("--tiny-512", action="store_true", help="also run the tiny preset at 512²")
    p.add_argument("--detections", type=int, default=50, help="detections per image")
    p.add_argument("--peers", choices=("matched", "builder"), default="matched",
                   help="torchvision peers with coco_r50_3x's frozen-BN backbone (matched), "
                        "or torchvision's stock random-weight builders (trainable BN)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10, help="timed inference runs per model")
    p.add_argument("--train-repeats", type=int, default=5, help="timed training steps per model")
    p.add_argument("--instances", type=int, nargs="+", default=[10, 100, 1000],
                   help="instance counts of the blender benchmark")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 64² images, no warm-up, one repeat, blender at 10 and 100 "
                        "instances (tests the script, measures nothing)")
    p.add_argument("--json", help="save every number to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one model's memory, as JSON
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.tiny_size, args.tiny_512 = 64, 64, False
        args.warmup, args.repeats, args.train_repeats = 0, 1, 1
        args.instances = [10, 100]
    return args


def main(argv=None) -> Dict:
    args = parse_args(argv)
    if args.worker:
        memory_worker(args)
        return {}
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    result: Dict = {"meta": {
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "device": str(device), "threads": torch.get_num_threads(), "cpu": cpu_model(),
        "python": platform.python_version(), "load_average_start": load_average(),
        "size": args.size, "tiny_size": args.tiny_size, "detections": args.detections,
        "peers": args.peers, "warmup": args.warmup, "repeats": args.repeats,
        "train_repeats": args.train_repeats, "quick": args.quick}}
    meta = result["meta"]
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    print("# BlendMask speed benchmark\n")
    for key in ("torch", "torchvision", "device", "gpu", "threads", "cpu", "load_average_start"):
        if key in meta:
            print(f"{key:<19} {meta[key]}")
    print(f"{'setting':<19} R-50 at {args.size}², tiny at {args.tiny_size}², {args.detections} "
          f"detections/image, random weights, score threshold 0; medians of {args.repeats} "
          f"inference runs after {args.warmup} warm-up, of {args.train_repeats} training steps "
          f"after {min(args.warmup, 1)}")

    # build every model, check the detections it gives
    torch.manual_seed(0)
    models, inputs, info = {}, {}, {}
    for entry in entries(args):
        model = entry.build().to(device).eval()
        images = make_images(entry.size, 1, device)
        out = run_inference(model, images)[0]
        models[entry.key] = model
        inputs[entry.key] = (images, make_images(entry.size, 2, device, seed=1),
                             make_targets(entry.size, 2, device, entry.torchvision))
        masks = tuple(out["masks"].shape) if "masks" in out else None
        info[entry.key] = {"title": entry.title, "size": entry.size, "norms": norm_summary(model),
                           "parameters": parameters(model), "detections": len(out["boxes"]),
                           "masks_shape": masks}
    result["models"] = info
    section("Models (detections = boxes returned for one image)")
    print(table(["model", "input", "detections", "masks", "parameters", "norms"],
                [[v["title"], f"{v['size']}²", v["detections"], "×".join(map(str, v["masks_shape"]))
                  if v["masks_shape"] else "-", v["parameters"], v["norms"]]
                 for v in info.values()]))
    wrong = [k for k, v in info.items() if v["detections"] != args.detections]
    if wrong:
        print(f"WARNING: not {args.detections} detections: {', '.join(wrong)}")

    # latency, stages, training step. The stages are timed right after the latency, before any
    # training step: training leaves the allocator holding more memory (glibc raises its mmap
    # threshold), which makes later inference runs faster than the latency table's.
    inference = interleaved_medians({k: (lambda m=m, x=inputs[k][0]: run_inference(m, x))
                                     for k, m in models.items()}, args.warmup, args.repeats, device)
    stage_repeats = max(1, args.repeats // 2)
    staged_keys = [k for k in ("blendmask_r50", "blendmask_tiny", "blendmask_tiny_512",
                               "maskrcnn_tv") if k in models]
    result["stages"] = {
        k: staged_breakdown(models[k], inputs[k][0],
                            maskrcnn_stages if k == "maskrcnn_tv" else blendmask_stages,
                            min(args.warmup, 1), stage_repeats, device) for k in staged_keys}
    steps = {k: make_train_step(m, inputs[k][1], inputs[k][2]) for k, m in models.items()}
    train = interleaved_medians(steps, min(args.warmup, 1), args.train_repeats, device)
    for m in models.values():
        m.eval()
    result["inference"], result["train"] = inference, train
    section("Inference latency (1 image) and training step (batch 2), ms")
    print(table(["model", "input", "inference median", "min", "CPU", "train step median", "min",
                 "CPU"],
                [[info[k]["title"], f"{info[k]['size']}²", f"{inference[k]['median_ms']:.1f}",
                  f"{inference[k]['min_ms']:.1f}", f"{inference[k]['cpu_median_ms']:.0f}",
                  f"{train[k]['median_ms']:.1f}", f"{train[k]['min_ms']:.1f}",
                  f"{train[k]['cpu_median_ms']:.0f}"] for k in models]))
    print("\n(CPU = median CPU time of the process, all threads: about threads × wall on a quiet "
          "machine)")

    if not args.no_memory:
        memory = measure_memory(args, list(models))
        result["memory"] = memory
        unit = "CUDA max allocated" if device.type == "cuda" else "RSS"
        section(f"Peak memory, MB ({unit}; each model in a fresh process)")
        print(table(["model", "after build", "peak inference", "(+ over build)", "peak train",
                     "(+ over build)"],
                    [[info[k]["title"], f"{v['after_build_mb']:.0f}",
                      f"{v['peak_inference_mb']:.0f}",
                      f"+{v['peak_inference_mb'] - v['after_build_mb']:.0f}",
                      f"{v['peak_train_mb']:.0f}",
                      f"+{v['peak_train_mb'] - v['after_build_mb']:.0f}"]
                     for k, v in memory.items()]))

    # ratios and goals
    def ratio(a, b, phase, field="median_ms"):
        numbers = inference if phase == "inference" else train
        return numbers[a][field] / numbers[b][field]

    section("Ratios (of medians) and goals")
    rows, goals = [], []
    for phase in ("inference", "train"):
        for peer in ("maskrcnn_tv", "fcos_tv", "fcos_r50"):
            rows.append([f"{phase}: BlendMask R-50 / {info[peer]['title']}",
                         f"{ratio('blendmask_r50', peer, phase):.2f}",
                         f"{ratio('blendmask_r50', peer, phase, 'cpu_median_ms'):.2f}"])
    print(table(["ratio", "wall", "CPU"], rows))
    print("\n(the goals use wall time; a CPU-time ratio far from it means the machine was busy)\n")
    for name, a, b, phase, bound in GOALS:
        value = ratio(a, b, phase)
        goals.append({"goal": name, "ratio": value, "bound": bound, "met": value <= bound,
                      "cpu_ratio": ratio(a, b, phase, "cpu_median_ms")})
        print(f"{'✓' if value <= bound else '✗'} {name}: {value:.2f}")
    result["goals"] = goals

    # where the time goes
    for key, stages in result["stages"].items():
        total = sum(v["ms"] for v in stages.values())
        section(f"Stages of {info[key]['title']} at {info[key]['size']}², inference, ms "
                f"(median of {stage_repeats}; end-to-end median {inference[key]['median_ms']:.1f})")
        print(table(["stage", "ms", "share", "CPU ms"],
                    [[name, f"{v['ms']:.1f}", f"{100 * v['ms'] / total:.0f} %",
                      f"{v['cpu_ms']:.0f}"] for name, v in stages.items()]
                    + [["sum", f"{total:.1f}", "100 %",
                        f"{sum(v['cpu_ms'] for v in stages.values()):.0f}"]]))

    # the work that grows with the number of instances
    key = "blendmask_r50"
    costs = per_instance_costs(models[key], inputs[key][0], args.instances, device,
                               min(args.warmup, 1), max(1, min(args.repeats, 5)))
    result["per_instance"] = costs
    k, h, w = costs["bases_shape"][1:]
    section(f"Per-instance work vs D instances, {info[key]['title']} at {args.size}², ms "
            f"(bases 1×{k}×{h}×{w}, R={models[key].blend_options['resolution']}, "
            f"M={models[key].top.attn_size})")
    print(table(["D", "top module at D locations", "blend", "blend + paste", "per instance"],
                [[r["instances"], f"{r['top_at_locations_ms']:.2f}", f"{r['blend_ms']:.2f}",
                  f"{r['blend+paste_ms']:.1f}", f"{r['blend+paste_ms'] / r['instances']:.3f}"]
                 for r in costs["rows"]]))
    print(f"\nFor comparison, the dense top module (the conv at every one of the "
          f"{costs['locations']} locations): {costs['dense_top_ms']:.1f} ms")

    meta["load_average_end"] = load_average()
    print(f"\nload average at the end: {meta['load_average_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"saved {args.json}")
    return result


if __name__ == "__main__":
    main()
