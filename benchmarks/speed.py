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
                      model's own stage methods in ``BlendMask.forward``'s order (checked against
                      ``model(images)``); Mask R-CNN's stages for comparison
  work                GFLOP of one inference and of one training step (``torch.utils.flop_counter``),
                      beside the time: how much of a ratio is the model's arithmetic itself
  per instance        the top module at D locations, the blend, blend + paste
                      (``postprocess_masks``) for D = 10, 100, 1000, against the dense top module,
                      and allocating the D full-image maps alone (the floor of any paste)

This file parses the arguments, runs the measurements, prints the tables and checks the goals; its
siblings do the rest: ``peers.py`` (the models and inputs), ``timing.py`` (the clocks),
``stages.py`` (the stage tables), ``memory.py`` (the fresh-process memory peaks).

Run ``make bench`` (or ``python benchmarks/speed.py``); ``--quick`` is a seconds-long smoke run
at small sizes; ``--json FILE`` saves every number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from typing import Dict, List

import torch
import torchvision

# The sibling modules: importable because Python puts this script's folder first on sys.path.
from memory import measure_memory
from peers import entries, make_images, make_targets, norm_summary, parameters
from stages import blendmask_stages, maskrcnn_stages, per_instance_costs, staged_breakdown
from timing import count_flops, interleaved_medians, make_train_step, run_inference

GOALS = [  # (name, numerator, denominator, phase, upper bound on the ratio) — issue 16's
    ("inference ≤ 0.5 × Mask R-CNN", "blendmask_r50", "maskrcnn_tv", "inference", 0.5),
    ("inference ≤ 1.0 × FCOS (torchvision's)", "blendmask_r50", "fcos_tv", "inference", 1.0),
    ("training step ≤ 0.55 × Mask R-CNN", "blendmask_r50", "maskrcnn_tv", "train", 0.55),
]
MEMORY_BOUND = 1.2  # BlendMask's peak inference memory ≤ this × FCOS's (torchvision's)
BLEND_SHARE_BOUND, BLEND_AT = 0.05, 100  # blender + paste < 5 % of inference at 100 detections
LINEAR_BOUND = 1.5  # per-instance blend + paste cost at the most instances ≤ 1.5 × at the next


# ---------------------------------------------------------------------------------------------
# printing

def table(headers: List[str], rows: List[List[str]], left: int = 1) -> str:
    """A plain-text table: the first ``left`` columns left-aligned, the others right-aligned."""
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i < left else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def cpu_model() -> str:
    """The CPU's model name (Linux), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for text in f:
                if text.startswith("model name"):
                    return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. ``0.52 0.61 0.70``, or ``n/a``."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def section(title: str) -> None:
    """Print a table's heading."""
    print(f"\n## {title}\n")


def blend_goals(rows: List[Dict], inference_ms: float) -> List[Dict]:
    """The blender + paste goals from the per-instance rows: its share of an inference at
    ``BLEND_AT`` detections, and its cost per instance at the most instances against the second
    most (linear: about 1). ``inference_ms`` is the end-to-end median at ``--detections`` (50):
    fewer masks than ``BLEND_AT`` to make, so the share is if anything overstated."""
    by_count = {r["instances"]: r["blend+paste_ms"] for r in rows}
    goals = []
    if BLEND_AT in by_count:
        share = by_count[BLEND_AT] / inference_ms
        goals.append({"goal": f"blender + paste at {BLEND_AT} detections < "
                              f"{BLEND_SHARE_BOUND:.0%} of inference (share)",
                      "ratio": share, "bound": BLEND_SHARE_BOUND, "met": share < BLEND_SHARE_BOUND})
    counts = sorted(by_count)
    if len(counts) >= 2:
        most, next_most = counts[-1], counts[-2]
        growth = (by_count[most] / most) / (by_count[next_most] / next_most)
        goals.append({"goal": f"blender + paste linear: per-instance cost at {most} ≤ "
                              f"{LINEAR_BOUND} × at {next_most} instances",
                      "ratio": growth, "bound": LINEAR_BOUND, "met": growth <= LINEAR_BOUND})
    return goals


# ---------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    """The command line (``argv``, default ``sys.argv[1:]``); ``--quick`` overrides the sizes
    and repeats."""
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
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.tiny_size, args.tiny_512 = 64, 64, False
        args.warmup, args.repeats, args.train_repeats = 0, 1, 1
        args.instances = [10, 100]
    return args


def main(argv=None) -> Dict:
    """Run the benchmark, print every table; returns every number (what ``--json`` saves)."""
    args = parse_args(argv)
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
    flops = {k: {"train": count_flops(steps[k])} for k in models}  # one more step each
    for k, m in models.items():
        m.eval()
        flops[k]["inference"] = count_flops(lambda m=m, x=inputs[k][0]: run_inference(m, x))
    result["inference"], result["train"], result["gflops"] = inference, train, flops
    section("Inference latency (1 image) and training step (batch 2), ms")
    print(table(["model", "input", "inference median", "min", "CPU", "train step median", "min",
                 "CPU"],
                [[info[k]["title"], f"{info[k]['size']}²", f"{inference[k]['median_ms']:.1f}",
                  f"{inference[k]['min_ms']:.1f}", f"{inference[k]['cpu_median_ms']:.0f}",
                  f"{train[k]['median_ms']:.1f}", f"{train[k]['min_ms']:.1f}",
                  f"{train[k]['cpu_median_ms']:.0f}"] for k in models]))
    print("\n(CPU = median CPU time of the process, all threads: about threads × wall on a quiet "
          "machine)")
    section("Work: GFLOP of one inference (1 image) and one training step (batch 2)")
    print(table(["model", "inference GFLOP", "GFLOP/s", "train step GFLOP", "GFLOP/s"],
                [[info[k]["title"], f"{flops[k]['inference']:.1f}",
                  f"{1000 * flops[k]['inference'] / inference[k]['median_ms']:.0f}",
                  f"{flops[k]['train']:.1f}",
                  f"{1000 * flops[k]['train'] / train[k]['median_ms']:.0f}"] for k in models]))
    print("\n(torch.utils.flop_counter: convolutions, matrix products and attention, 2 per "
          "multiply-add; a time ratio below the GFLOP ratio means the model runs its FLOPs faster "
          "than its peer)")

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
                         f"{ratio('blendmask_r50', peer, phase, 'cpu_median_ms'):.2f}",
                         f"{flops['blendmask_r50'][phase] / flops[peer][phase]:.2f}"])
    print(table(["ratio", "wall", "CPU", "GFLOP"], rows))
    print("\n(the goals use wall time; a CPU-time ratio far from it means the machine was busy)")
    for name, a, b, phase, bound in GOALS:
        value = ratio(a, b, phase)
        goals.append({"goal": name, "ratio": value, "bound": bound, "met": value <= bound,
                      "cpu_ratio": ratio(a, b, phase, "cpu_median_ms"),
                      "gflop_ratio": flops[a][phase] / flops[b][phase]})
    if "memory" in result:
        peak = lambda k: result["memory"][k]["peak_inference_mb"]  # noqa: E731
        value = peak("blendmask_r50") / peak("fcos_tv")
        goals.append({"goal": f"peak inference memory ≤ {MEMORY_BOUND} × FCOS (torchvision's)",
                      "ratio": value, "bound": MEMORY_BOUND, "met": value <= MEMORY_BOUND})
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
    print(table(["D", "top module at D locations", "blend", "blend + paste", "per instance",
                 "of which allocating the D maps"],
                [[r["instances"], f"{r['top_at_locations_ms']:.2f}", f"{r['blend_ms']:.2f}",
                  f"{r['blend+paste_ms']:.1f}", f"{r['blend+paste_ms'] / r['instances']:.3f}",
                  f"{r['allocate_ms']:.1f}"]
                 for r in costs["rows"]]))
    floor = {r["instances"]: r["allocate_ms"] for r in costs["rows"]}.get(BLEND_AT)
    if floor is not None:
        print(f"\n(allocating = torch.zeros(D, {args.size}, {args.size}) alone, the floor of "
              f"pasting D full-image float32 maps: at D = {BLEND_AT}, "
              f"{100 * floor / inference[key]['median_ms']:.1f} % of an inference)")
    print(f"\nFor comparison, the dense top module (the conv at every one of the "
          f"{costs['locations']} locations): {costs['dense_top_ms']:.1f} ms")
    goals.extend(blend_goals(costs["rows"], inference[key]["median_ms"]))

    section("Goals (issue 16)")
    for g in goals:
        work = f"   (GFLOP ratio {g['gflop_ratio']:.2f})" if "gflop_ratio" in g else ""
        print(f"{'✓' if g['met'] else '✗'} {g['goal']}: {g['ratio']:.2f}{work}")

    meta["load_average_end"] = load_average()
    print(f"\nload average at the end: {meta['load_average_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"saved {args.json}")
    return result


if __name__ == "__main__":
    main()
