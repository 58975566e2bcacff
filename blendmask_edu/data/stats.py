"""What a dataset holds: class counts, object sizes, hard cases, and a report with pictures.

``make demo`` writes this report for the shapes dataset; ``notebooks/00_data.ipynb`` draws the
same statistics. Works on any dataset in COCO's layout (``ROOT/{split}/``,
``ROOT/annotations/instances_{split}.json`` and, optionally, the panoptic files).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from blendmask_edu.data.coco import CategoryMap, CocoInstances
from blendmask_edu.data.files import dataset_paths, decode_segmentation, make_coco, rgb_to_id
from blendmask_edu.data.synthetic import count_components
from blendmask_edu.fileio import write_json


def dataset_statistics(root: Union[str, Path], split: str) -> dict:
    """Counts and measurements of one split, as a JSON-ready dict.

    Keys: ``images``, ``instances``, ``class_counts`` {thing name: instances},
    ``stuff_fraction`` {stuff name: share of all pixels} (panoptic only), ``sizes`` (longer box
    side of every instance, px), ``size_ratio`` (largest / smallest size), ``split_fraction``
    (share of images holding a thing whose visible mask has ≥ 2 separate parts, measured on the
    pixels), ``hard_case_fraction`` {tag: share of images carrying it}.
    """
    paths = dataset_paths(root, split)
    coco = make_coco(json.loads(Path(paths.instances).read_text()))
    categories = CategoryMap(coco.loadCats(coco.getCatIds()))
    class_counts = Counter({categories.names[i]: 0 for i in categories.thing_ids})
    sizes, split_images, tags = [], 0, Counter()
    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        anns = [a for a in coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        for ann in anns:
            class_counts[categories.names[ann["category_id"]]] += 1
            sizes.append(float(max(ann["bbox"][2], ann["bbox"][3])))
        split_images += any(count_components(decode_segmentation(
            a["segmentation"], info["height"], info["width"]).astype(bool)) >= 2 for a in anns)
        tags.update(set(info.get("hard_cases", [])))
    num_images = len(coco.getImgIds())
    stats = {
        "split": split,
        "images": num_images,
        "instances": len(sizes),
        "class_counts": dict(class_counts),
        "sizes": sizes,
        "size_ratio": (max(sizes) / max(min(sizes), 1e-9)) if sizes else 0.0,
        "split_fraction": split_images / max(num_images, 1),
        "hard_case_fraction": {tag: n / max(num_images, 1) for tag, n in sorted(tags.items())},
    }
    if paths.panoptic is not None:
        stats["stuff_fraction"] = _stuff_fractions(paths)
    return stats


def _stuff_fractions(paths) -> dict:
    panoptic = json.loads(Path(paths.panoptic).read_text())
    categories = CategoryMap(panoptic["categories"])
    sizes = {image["id"]: image["width"] * image["height"] for image in panoptic["images"]}
    pixels, total = Counter(), 0
    for ann in panoptic["annotations"]:
        for segment in ann["segments_info"]:
            if segment["category_id"] in categories.stuff_ids:
                pixels[categories.names[segment["category_id"]]] += segment["area"]
        total += sizes[ann["image_id"]]
    return {name: pixels.get(name, 0) / max(total, 1)
            for name in (categories.names[i] for i in categories.stuff_ids)}


def write_dataset_report(root: Union[str, Path], split: str, out_dir: Union[str, Path],
                         num_pictures: int = 8) -> dict:
    """Write ``out_dir/report.md`` with the statistics, a class-count chart, a size histogram and
    a grid of images, instance masks and panoptic maps; also ``out_dir/dataset_stats.json``.
    Returns the statistics (see :func:`dataset_statistics`)."""
    from blendmask_edu import visualize as vis

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = dataset_statistics(root, split)
    write_json(out / "dataset_stats.json", {k: v for k, v in stats.items() if k != "sizes"},
               indent=2)

    fig, axes = vis.plt.subplots(1, 2, figsize=(10, 3.2))
    vis.plot_counts(stats["class_counts"], ax=axes[0], title=f"thing instances ({split})")
    if "stuff_fraction" in stats:
        vis.plot_counts(stats["stuff_fraction"], ax=axes[1], title="stuff (share of pixels)",
                        ylabel="share")
    else:
        axes[1].set_axis_off()
    fig.tight_layout()
    fig.savefig(out / "class_counts.png", dpi=90)
    vis.plt.close(fig)

    ax = vis.plot_size_histogram(stats["sizes"], bounds=(64, 128))
    ax.figure.tight_layout()
    ax.figure.savefig(out / "sizes.png", dpi=90)
    vis.plt.close(ax.figure)

    draw_sample_grid(root, split, num_pictures).savefig(out / "grid.png", dpi=90)
    vis.plt.close("all")

    lines = [f"# Dataset report: `{root}` ({split})", "",
             "| measure | value |", "|---|---|",
             f"| images | {stats['images']} |", f"| thing instances | {stats['instances']} |",
             f"| object size range (longer box side) | {min(stats['sizes'], default=0):.0f}–"
             f"{max(stats['sizes'], default=0):.0f} px ({stats['size_ratio']:.1f} : 1) |",
             f"| images with a thing split into ≥ 2 parts (pixels) | {stats['split_fraction']:.1%} |"]
    lines += [f"| images tagged `{tag}` | {share:.1%} |"
              for tag, share in stats["hard_case_fraction"].items()]
    lines += ["", "## Classes", "", "![class counts](class_counts.png)", "",
              "## Object sizes", "", "Dashed lines: the FCOS size ranges of P3 | P4 | P5 "
              "at COCO scale (64, 128 px); presets for small images scale them down.", "",
              "![sizes](sizes.png)", "", "## Images, instance masks, panoptic maps", "",
              "![grid](grid.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    return stats


def draw_sample_grid(root: Union[str, Path], split: str, count: int = 8, per_row: int = 2):
    """A figure with ``count`` images of the split, ``per_row`` to a row: each as the image,
    its instance masks and boxes, and (for a panoptic dataset) its panoptic map."""
    from blendmask_edu import visualize as vis

    paths = dataset_paths(root, split)
    dataset = CocoInstances(paths.images_dir, paths.instances, paths.panoptic, paths.panoptic_dir)
    panoptic = json.loads(Path(paths.panoptic).read_text()) if paths.panoptic else None
    categories = CategoryMap(panoptic["categories"]) if panoptic else dataset.categories
    colors = {c["id"]: c.get("color", (200, 200, 200)) for c in
              (panoptic["categories"] if panoptic else dataset.coco.loadCats(dataset.coco.getCatIds()))}
    count = min(count, len(dataset))
    rows = 3 if panoptic else 2
    fig, axes = vis.image_grid(count * rows, ncols=per_row * rows)
    for index in range(count):
        image, target = dataset[index]
        ax_image, ax_inst = axes[rows * index], axes[rows * index + 1]
        info = dataset.coco.imgs[target["image_id"]]
        tags = ",".join(info.get("hard_cases", []))
        vis.draw_instances(image, ax=ax_image, title=f"{info['file_name']}\n{tags}")
        names = [categories.names[categories.category_id(int(i))] for i in target["labels"]]
        vis.draw_instances(image, target["masks"], target["boxes"], names, ax=ax_inst,
                           title="instances")
        if panoptic:
            ann = next(a for a in panoptic["annotations"] if a["image_id"] == target["image_id"])
            ids = rgb_to_id(np.asarray(Image.open(Path(paths.panoptic_dir) / ann["file_name"])
                                       .convert("RGB")))
            vis.draw_panoptic(ids, ann["segments_info"], colors, categories.thing_ids,
                              ax=axes[rows * index + 2], title="panoptic")
    fig.tight_layout()
    return fig
