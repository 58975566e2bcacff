"""The "shapes" dataset: a synthetic panoptic dataset in COCO format, generated from a seed.

Why it exists: nothing can be downloaded on the machines this package is built and tested on,
and a student on a laptop CPU cannot train on COCO. So the package draws its own small panoptic
dataset in seconds, in COCO's own file layout, so that everything that reads COCO (pycocotools,
panopticapi-style tools, ``blendmask_edu.data.coco``) reads it unchanged. It is introduced in
``notebooks/00_data.ipynb``.

An image (``size`` x ``size``, 128 by default) holds
- stuff: sky above ground, split by an uneven horizon (a sum of random sines), both textured
  (gradient and clouds; furrow stripes and noise) so that stuff is not flat colour;
- 1-6 things (circle, triangle, rotated rectangle, star, ring), each in a random colour so that
  shape, not colour, tells the class; sizes (diameter of the circumscribed circle) are
  log-uniform from 0.08 to 0.85 of the image side, a >10:1 range, so every FPN level gets work
  (kept in ``SyntheticImage.instance_sizes`` and summarised by ``generate_shapes``);
- thin occluders drawn over the things: poles a few pixels wide and, sometimes, a net-like band
  of thin crossing lines. Poles and net are stuff classes.

The hard cases of the paper's Appendix B are made on purpose, and each image lists the ones it
holds in ``images[i]["hard_cases"]`` of both JSON files, so notebooks can select them:
- ``"split"``: some thing's visible mask has >= 2 connected components (8-connectivity), e.g.
  because a pole cuts it in two; decided by counting components, not assumed;
- ``"overlap"``: the full shapes of two annotated things overlap, so the one behind is partly
  hidden (things are z-ordered; masks are the visible parts only);
- ``"complex"``: a star (thin sharp points) or a ring (a hole) is present;
- ``"small"`` / ``"large"``: some thing's visible box has a long side < 1/8 / > 1/2 of the image.
On val (200 images, seeds 0-9) 37-46 % of images hold a split thing and 38-44 % overlapping
things; about 40 % hold neither. A thing whose visible part is under 20 px is not drawn at all.

Output layout (COCO's): ``OUT/{train,val}/<12-digit id>.png``,
``OUT/annotations/instances_{split}.json`` (RLE masks, thing categories only),
``OUT/annotations/panoptic_{split}.json`` and ``OUT/annotations/panoptic_{split}/*.png``
(segment id = R + 256 G + 256^2 B; every pixel belongs to a segment). RLE encoding and boxes
come from pycocotools, so they are exactly what COCO tools compute.

Determinism: image ``i`` of a split is drawn from ``SeedSequence([seed, split_code, i])``, so it
does not depend on the other images or on how many are generated; image ids are
``split_offset + i + 1`` (val starts at 1,000,001) for the same reason. Results of
transcendental functions are rounded to fixed precision before use, JSON is written with sorted
keys and fixed separators, PNGs with fixed Pillow settings, and no time stamps are stored.
Pixel values are therefore the same everywhere; PNG bytes also depend on the zlib that Pillow
was built with, so byte-identical files need the same Pillow build (a pinned environment).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_util
from tqdm import tqdm

from .files import id_to_rgb, write_json

CIRCLE, TRIANGLE, RECTANGLE, STAR, RING = 1, 2, 3, 4, 5
SKY, GROUND, POLE, NET = 6, 7, 8, 9

THING_CATEGORIES = [
    {"id": i, "name": name, "supercategory": "shape", "isthing": 1, "color": colour}
    for i, name, colour in [(CIRCLE, "circle", [220, 20, 60]),
                            (TRIANGLE, "triangle", [0, 130, 200]),
                            (RECTANGLE, "rectangle", [255, 180, 0]),
                            (STAR, "star", [145, 30, 180]),
                            (RING, "ring", [60, 180, 75])]
]
STUFF_CATEGORIES = [
    {"id": i, "name": name, "supercategory": group, "isthing": 0, "color": colour}
    for i, name, group, colour in [(SKY, "sky", "background", [135, 206, 235]),
                                   (GROUND, "ground", "background", [120, 90, 50]),
                                   (POLE, "pole", "occluder", [90, 90, 90]),
                                   (NET, "net", "occluder", [200, 200, 200])]
]

MIN_VISIBLE_AREA = 20  # px; a thing with fewer visible pixels is not drawn and not annotated
SIZE_RANGE = (0.08, 0.85)  # thing diameter as a fraction of the image side (log-uniform)
P_OVERLAP = 0.4  # chance that an image places one thing on top of another on purpose
POLE_COUNT_P = (0.7, 0.23, 0.06, 0.01)  # chance of 0, 1, 2, 3 poles
P_POLE_AIMED = 0.5  # chance that a pole is placed across a thing
P_NET = 0.12
SPLIT_CODES = {"train": 0, "val": 1}
ID_OFFSETS = {"train": 0, "val": 1_000_000}
HARD_CASES = ("split", "overlap", "complex", "small", "large")
_TAU = 2 * np.pi


@dataclass
class SyntheticImage:
    """One generated image in memory. G annotated things, S segments, H = W = size.

    image: [H, W, 3] uint8. instance_masks: G x [H, W] bool, the visible parts, in z-order (back
    to front). instance_categories: G thing ids. instance_sizes: G drawn diameters in px.
    panoptic_ids: [H, W] int32 segment ids (things are 1..G in z-order, then stuff).
    segments: S dicts {id, category_id, iscrowd, area, bbox=[x, y, w, h]}. hard_cases: sorted tags.
    """

    image: np.ndarray
    instance_masks: list
    instance_categories: list
    instance_sizes: list
    panoptic_ids: np.ndarray
    segments: list
    hard_cases: list


# ---------------------------------------------------------------------------- stuff

def _smooth_noise(rng, size, cells):
    """[size, size] float noise in [0, 1): a (cells+1)^2 random grid, bilinearly upsampled."""
    grid = rng.random((cells + 1, cells + 1))
    pos = (np.arange(size) + 0.5) * (cells / size)
    i = np.minimum(pos.astype(np.int64), cells - 1)
    t = pos - i
    rows = grid[i] * (1 - t)[:, None] + grid[i + 1] * t[:, None]  # [size, cells+1]
    return rows[:, i] * (1 - t)[None, :] + rows[:, i + 1] * t[None, :]


def _sky_mask(rng, size):
    """[H, W] bool: pixels above an uneven horizon (a base height plus three random sines)."""
    x = np.arange(size) / size
    amplitude = rng.uniform(0.0, 0.05, 3)[:, None] * size
    frequency = rng.uniform(0.5, 3.0, 3)[:, None]
    phase = rng.uniform(0.0, _TAU, 3)[:, None]
    waves = np.round(np.sin(_TAU * frequency * x[None, :] + phase), 4)  # [3, W]
    horizon = rng.uniform(0.3, 0.6) * size + (amplitude * waves).sum(axis=0)
    return (np.arange(size)[:, None] + 0.5) < horizon[None, :]


def _sky_texture(rng, size):
    """[H, W, 3] float: a blue-to-pale vertical gradient with soft clouds."""
    top = rng.uniform((40, 100, 170), (150, 190, 250))
    low = np.minimum(top + rng.uniform(30, 80), 255)
    t = (np.arange(size) / size)[:, None, None]
    sky = top * (1 - t) + low * t + np.zeros((1, size, 1))
    clouds = np.clip(_smooth_noise(rng, size, 5) - 0.5, 0, None) * 1.6  # [H, W] in [0, 0.8]
    return sky + clouds[..., None] * (245 - sky)


def _ground_texture(rng, size):
    """[H, W, 3] float: a green or brown soil colour with furrow stripes and blotches."""
    bases = np.array([(70, 130, 60), (120, 95, 60), (150, 140, 90), (90, 110, 70)], float)
    base = bases[rng.integers(len(bases))] + rng.uniform(-20, 20, 3)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 12)
    y, x = np.mgrid[0:size, 0:size]
    phase = (x * np.round(np.cos(angle), 6) + y * np.round(np.sin(angle), 6)) * (_TAU / period)
    stripes = np.round(np.sin(phase), 4) * rng.uniform(6, 18)
    blotches = (_smooth_noise(rng, size, 8) - 0.5) * 40
    return base + (stripes + blotches)[..., None]


# ---------------------------------------------------------------------------- things

def _polygon_mask(size, points):
    """[H, W] bool: a filled polygon (list of (x, y)) rasterised by Pillow."""
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in np.round(points, 2).tolist()], fill=255)
    return np.asarray(canvas) > 0


def _on_circle(cx, cy, radius, angles):
    """(P, 2) points at the given angles on a circle, rounded to 0.01 px."""
    return np.round(np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1), 2)


def _distance2(size, cx, cy):
    """[H, W] squared distance from each pixel centre (integer coordinates) to (cx, cy)."""
    y, x = np.ogrid[0:size, 0:size]
    return (x - cx) ** 2 + (y - cy) ** 2


# Each _draw_<shape> returns the full shape as an [H, W] bool mask: centre (cx, cy), the
# circumscribed circle of radius r, random proportions and rotation from rng.

def _draw_circle(rng, size, cx, cy, r):
    return _distance2(size, cx, cy) <= r * r


def _draw_ring(rng, size, cx, cy, r):
    inner = r * rng.uniform(0.45, 0.62)  # the hole
    d2 = _distance2(size, cx, cy)
    return (d2 <= r * r) & (d2 > inner * inner)


def _draw_triangle(rng, size, cx, cy, r):
    angles = rng.uniform(0, _TAU) + np.arange(3) * (_TAU / 3) + rng.uniform(-0.4, 0.4, 3)
    return _polygon_mask(size, _on_circle(cx, cy, r, angles))


def _draw_rectangle(rng, size, cx, cy, r):
    half = rng.uniform(0.35, 0.7)  # half the angle a short side subtends: sets the aspect ratio
    angles = rng.uniform(0, np.pi) + np.array([half, np.pi - half, np.pi + half, -half])
    return _polygon_mask(size, _on_circle(cx, cy, r, angles))


def _draw_star(rng, size, cx, cy, r):
    points = int(rng.integers(5, 8))  # thin sharp points: inner radius under half the outer
    angles = rng.uniform(0, _TAU) + np.arange(2 * points) * (np.pi / points)
    radii = np.where(np.arange(2 * points) % 2 == 0, r, r * rng.uniform(0.38, 0.5))
    return _polygon_mask(size, _on_circle(cx, cy, radii, angles))


_DRAW = {CIRCLE: _draw_circle, TRIANGLE: _draw_triangle, RECTANGLE: _draw_rectangle,
         STAR: _draw_star, RING: _draw_ring}


def _thing_diameters(rng, size):
    """1-6 diameters in px, log-uniform over SIZE_RANGE, skipping any that would crowd the image."""
    low, high = np.log(SIZE_RANGE[0] * size), np.log(SIZE_RANGE[1] * size)
    diameters, used = [], 0.0
    for _ in range(int(rng.integers(1, 7))):
        d = float(np.round(np.exp(rng.uniform(low, high)), 2))
        if not diameters or used + d * d <= 0.9 * size * size:
            diameters.append(d)
            used += d * d
    if rng.random() < 0.7:  # usually big things stand behind small ones, as in a photograph
        diameters.sort(reverse=True)
    return diameters


def _place_centres(rng, size, diameters):
    """G (x, y) centres: free spots when possible, and sometimes one overlapping on purpose."""
    overlap_at = -1
    if len(diameters) > 1 and rng.random() < P_OVERLAP:
        overlap_at = int(rng.integers(1, len(diameters)))
    centres = []
    for g, d in enumerate(diameters):
        r = d / 2
        margin = min(0.6 * r, size / 2 - 1)
        if g == overlap_at:  # centre within reach of a placed thing, so that the two overlap
            k = int(rng.integers(g))
            direction = rng.uniform(0, _TAU)
            reach = (diameters[k] / 2 + r) * rng.uniform(0.35, 0.75)
            c = np.array(centres[k]) + reach * np.round([np.cos(direction), np.sin(direction)], 6)
            centres.append(np.round(np.clip(c, margin, size - margin), 2).tolist())
            continue
        for _ in range(12):  # rejection sampling against the circumscribed circles placed so far
            c = np.round(rng.uniform(margin, size - margin, 2), 2).tolist()
            if all((c[0] - o[0]) ** 2 + (c[1] - o[1]) ** 2 > (r + diameters[k] / 2) ** 2
                   for k, o in enumerate(centres)):
                break
        centres.append(c)
    return centres


def _thing_colour(rng, avoid):
    """(3,) colour that differs from every colour in ``avoid`` by >= 90 in L1 (5 tries)."""
    for _ in range(5):
        colour = rng.integers(0, 256, 3).astype(float)
        if all(np.abs(colour - a).sum() >= 90 for a in avoid):
            break
    return colour


# ---------------------------------------------------------------------------- occluders

def _strip_mask(size, top, bottom, width):
    """[H, W] bool: a straight strip of the given width from point ``top`` to point ``bottom``."""
    direction = np.subtract(bottom, top) / np.hypot(*np.subtract(bottom, top))
    normal = np.array([-direction[1], direction[0]]) * (width / 2)
    return _polygon_mask(size, [top + normal, bottom + normal, bottom - normal, top - normal])


def _draw_poles(rng, size, things):
    """List of [H, W] bool poles, vertical or slanted, 2-4 px wide at 128 px, some across things."""
    poles = []
    for _ in range(int(rng.choice(4, p=POLE_COUNT_P))):
        width = float(rng.uniform(max(2.0, size / 64), max(3.0, size / 32)))
        slope = float(np.round(np.tan(rng.uniform(-0.35, 0.35)), 6)) if rng.random() < 0.5 else 0.0
        wide = [t for t in things if t[1] >= 3 * width]
        if wide and rng.random() < P_POLE_AIMED:  # cut a thing: through its centre, give or take
            _, d, (cx, cy) = wide[int(rng.integers(len(wide)))]
            x, y = cx + rng.uniform(-0.25, 0.25) * d / 2, cy
            top_y = min(rng.uniform(-0.1, 0.25) * size, cy - d / 2 - 1)
        else:
            x, y = rng.uniform(0, size), size / 2
            top_y = rng.uniform(-0.1, 0.4) * size
        top = np.array([x + slope * (top_y - y), top_y])
        bottom = np.array([x + slope * (size + 2 - y), size + 2.0])
        poles.append(_strip_mask(size, np.round(top, 2), np.round(bottom, 2), width))
    return poles


def _draw_net(rng, size):
    """[H, W] bool: a rectangular band crossed by two families of 2-px slanted lines."""
    h, w = rng.uniform(0.15, 0.35) * size, rng.uniform(0.4, 1.0) * size
    x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    spacing, reach = rng.uniform(6, 10), size * 1.5
    for angle in np.array([1, -1]) * rng.uniform(0.6, 1.0):
        d = np.round([np.cos(angle), np.sin(angle)], 6)
        n = np.array([-d[1], d[0]])
        for offset in np.arange(-reach, reach, spacing):
            c = np.array([x0 + w / 2, y0 + h / 2]) + offset * n
            ends = np.round(np.concatenate([c - reach * d, c + reach * d]), 2).tolist()
            draw.line(ends, fill=255, width=2)
    band = np.zeros((size, size), bool)
    band[int(round(y0)):int(round(y0 + h)), int(round(x0)):int(round(x0 + w))] = True
    return (np.asarray(canvas) > 0) & band


# ---------------------------------------------------------------------------- masks and tags

def _visible(full, cover):
    """Visible part of each full mask (G x [H, W] bool, back to front): minus cover, minus later."""
    cover, visible = cover.copy(), [None] * len(full)
    for g in reversed(range(len(full))):
        visible[g] = full[g] & ~cover
        cover |= full[g]
    return visible


def count_components(mask: np.ndarray) -> int:
    """Number of 8-connected components of a bool mask [H, W], by union-find over row runs."""
    padded = np.pad(mask, ((0, 0), (1, 1))).astype(np.int8)
    rows, cols = np.nonzero(np.diff(padded, axis=1))  # run starts and ends alternate per row
    row, start, end = rows[0::2].tolist(), cols[0::2].tolist(), cols[1::2].tolist()
    parent = list(range(len(row)))

    def root(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    previous, first = [], 0  # runs of the row above
    for i in range(len(row) + 1):
        if i == len(row) or row[i] != row[first]:
            current = list(range(first, i))
            if previous and row[previous[0]] == row[first] - 1:
                a = b = 0
                while a < len(current) and b < len(previous):
                    p, q = current[a], previous[b]
                    if start[p] <= end[q] and start[q] <= end[p]:  # overlap or touch diagonally
                        parent[root(p)] = root(q)
                    if end[p] < end[q]:
                        a += 1
                    else:
                        b += 1
            previous, first = current, i
    return sum(1 for a in range(len(row)) if root(a) == a)


def _bbox(mask):
    """[x, y, w, h] ints of a non-empty bool mask [H, W]."""
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


def _hard_cases(size, full, visible, categories):
    """Sorted tags (see the module docstring) for the annotated things of one image."""
    tags = set()
    if any(count_components(v) >= 2 for v in visible):
        tags.add("split")
    if any((full[i] & full[j]).any() for j in range(len(full)) for i in range(j)):
        tags.add("overlap")
    if any(c in (STAR, RING) for c in categories):
        tags.add("complex")
    long_sides = [max(_bbox(v)[2:]) for v in visible]
    if any(s < size / 8 for s in long_sides):
        tags.add("small")
    if any(s > size / 2 for s in long_sides):
        tags.add("large")
    return sorted(tags)


def _segments(sky, pole, net, visible, categories):
    """Panoptic id map [H, W] int32 and segments: things 1..G, then each stuff class present."""
    stuff = np.where(sky, SKY, GROUND)
    stuff[net] = NET
    stuff[pole] = POLE
    ids = np.zeros(sky.shape, np.int32)
    masks, cats = list(visible), list(categories)
    for g, m in enumerate(masks):
        ids[m] = g + 1
    for c in (SKY, GROUND, POLE, NET):
        m = (ids == 0) & (stuff == c)
        if m.any():
            masks.append(m)
            cats.append(c)
            ids[m] = len(masks)
    segments = [{"id": s + 1, "category_id": int(c), "iscrowd": 0, "area": int(m.sum()),
                 "bbox": _bbox(m)} for s, (m, c) in enumerate(zip(masks, cats))]
    return ids, segments


def _draw_scene(rng, size):
    """Things (categories, diameters, full masks [H, W]) and occluders (poles, net) of an image."""
    diameters = _thing_diameters(rng, size)
    centres = _place_centres(rng, size, diameters)
    categories = [int(c) for c in rng.integers(1, 6, len(diameters))]
    full = [_DRAW[c](rng, size, x, y, d / 2)
            for c, d, (x, y) in zip(categories, diameters, centres)]
    poles = _draw_poles(rng, size, list(zip(categories, diameters, centres)))
    net = _draw_net(rng, size) if rng.random() < P_NET else np.zeros((size, size), bool)
    return categories, diameters, full, poles, net


def render_image(rng: np.random.Generator, size: int) -> SyntheticImage:
    """Draw one image and its annotations in memory.

    Takes a numpy Generator (all randomness comes from it) and the side ``size`` in px; returns a
    ``SyntheticImage`` with ``image`` [size, size, 3] uint8, G visible ``instance_masks``
    [size, size] bool in z-order, ``panoptic_ids`` [size, size] int32 and its ``segments``.
    """
    sky = _sky_mask(rng, size)
    background = np.where(sky[..., None], _sky_texture(rng, size), _ground_texture(rng, size))
    for _ in range(100):  # redraw in the rare case (~1 image in 2000) that no thing stays visible
        categories, diameters, full, poles, net = _draw_scene(rng, size)
        pole = np.logical_or.reduce(poles) if poles else np.zeros((size, size), bool)
        occluder = pole | net
        # Drop things whose visible part is tiny; the rest can only gain pixels by it, so one
        # pass suffices. Dropped things are not painted, so the pixels show what lies beneath.
        keep = [g for g, v in enumerate(_visible(full, occluder)) if v.sum() >= MIN_VISIBLE_AREA]
        if keep:
            break
    full = [full[g] for g in keep]
    visible = _visible(full, occluder)
    categories, diameters = [categories[g] for g in keep], [diameters[g] for g in keep]

    avoid = [background[sky].mean(0) if sky.any() else background[0, 0],
             background[~sky].mean(0) if (~sky).any() else background[0, 0]]
    image = background  # painted in place, back to front
    for m in full:  # each thing in a colour unlike the background and the things before it
        colour = _thing_colour(rng, avoid)
        avoid.append(colour)
        image[m] = colour
    image[net] = rng.uniform(20, 235)
    for m in poles:
        image[m] = rng.uniform(40, 200) + rng.uniform(-15, 15, 3)
    image = np.clip(image + rng.integers(-6, 7, image.shape), 0, 255).astype(np.uint8)

    ids, segments = _segments(sky, pole, net, visible, categories)
    return SyntheticImage(image, visible, categories, diameters, ids, segments,
                          _hard_cases(size, full, visible, categories))


# ---------------------------------------------------------------------------- files

def _write_png(array, path):
    Image.fromarray(array).save(path, format="PNG", compress_level=6, optimize=False)


def _instance_annotations(sample, image_id):
    """COCO instance annotations of one image; ids are image_id * 100 + g + 1, unique everywhere."""
    annotations = []
    for g, (m, c) in enumerate(zip(sample.instance_masks, sample.instance_categories)):
        rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        segmentation = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()}
        annotations.append({
            "id": image_id * 100 + g + 1, "image_id": image_id, "category_id": c, "iscrowd": 0,
            "segmentation": segmentation, "area": int(m.sum()),
            "bbox": [float(v) for v in mask_util.toBbox(rle)],
        })
    return annotations


def generate_shapes(out_dir: Union[str, Path], num_train: int = 2000, num_val: int = 200,
                    size: int = 128, seed: int = 0, progress: bool = True) -> dict:
    """Write the shapes dataset to ``out_dir`` in COCO layout (see the module docstring).

    Takes image counts per split, the image side ``size`` (images are size x size) and a seed;
    returns a summary dict with ``root``, ``size``, ``seed`` and, each keyed by split: ``paths``
    (images, instances, panoptic, panoptic_dir), ``images`` and ``instances`` (counts),
    ``hard_case_fraction`` ({tag: fraction of images holding it}) and ``thing_sizes`` (min / max
    drawn diameter in px). Existing files with other names in ``out_dir`` are left alone.
    """
    if not 0 <= num_train < ID_OFFSETS["val"] or num_val < 0:
        raise ValueError(f"need 0 <= num_train < {ID_OFFSETS['val']} and num_val >= 0")
    if size < 32:
        raise ValueError(f"size must be >= 32 px, got {size}")
    root = Path(out_dir)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    info = {"description": "blendmask_edu shapes: synthetic panoptic dataset", "seed": seed,
            "size": size, "version": "1.0"}
    jobs = [("train", i) for i in range(num_train)] + [("val", i) for i in range(num_val)]
    records = {s: {"images": [], "annotations": [], "panoptic": [], "sizes": []}
               for s in SPLIT_CODES}
    for split in SPLIT_CODES:
        (root / split).mkdir(exist_ok=True)
        (root / "annotations" / f"panoptic_{split}").mkdir(exist_ok=True)

    for split, index in tqdm(jobs, desc="shapes", unit="img", disable=not progress):
        rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODES[split], index]))
        sample = render_image(rng, size)
        image_id = ID_OFFSETS[split] + index + 1
        file_name = f"{image_id:012d}.png"
        _write_png(sample.image, root / split / file_name)
        _write_png(id_to_rgb(sample.panoptic_ids),
                   root / "annotations" / f"panoptic_{split}" / file_name)
        rec = records[split]
        rec["images"].append({"id": image_id, "file_name": file_name, "width": size, "height": size,
                              "hard_cases": sample.hard_cases})
        rec["annotations"] += _instance_annotations(sample, image_id)
        rec["panoptic"].append({"image_id": image_id, "file_name": file_name,
                                "segments_info": sample.segments})
        rec["sizes"] += sample.instance_sizes

    summary = {"root": str(root), "size": size, "seed": seed, "paths": {}, "images": {},
               "instances": {}, "hard_case_fraction": {}, "thing_sizes": {}}
    for split, rec in records.items():
        annotations = root / "annotations"
        paths = {"images": root / split, "instances": annotations / f"instances_{split}.json",
                 "panoptic": annotations / f"panoptic_{split}.json",
                 "panoptic_dir": annotations / f"panoptic_{split}"}
        common = {"info": info, "licenses": [], "images": rec["images"]}
        write_json(paths["instances"], {**common, "annotations": rec["annotations"],
                                        "categories": THING_CATEGORIES})
        write_json(paths["panoptic"], {**common, "annotations": rec["panoptic"],
                                       "categories": THING_CATEGORIES + STUFF_CATEGORIES})
        n = max(len(rec["images"]), 1)
        summary["paths"][split] = {k: str(v) for k, v in paths.items()}
        summary["images"][split] = len(rec["images"])
        summary["instances"][split] = len(rec["annotations"])
        summary["hard_case_fraction"][split] = {
            t: round(sum(t in im["hard_cases"] for im in rec["images"]) / n, 4) for t in HARD_CASES}
        summary["thing_sizes"][split] = {"min": min(rec["sizes"], default=0.0),
                                         "max": max(rec["sizes"], default=0.0)}
    return summary


def ensure_shapes(out_dir: Union[str, Path], num_train: int = 2000, num_val: int = 200,
                  size: int = 128, seed: int = 0, progress: bool = True) -> Path:
    """The shapes dataset at ``out_dir``, generated only if it is missing or was made with other
    arguments (read back from the JSON files' ``info`` and image counts). Returns the root."""
    root = Path(out_dir)
    try:
        for split, count in (("train", num_train), ("val", num_val)):
            with open(root / "annotations" / f"instances_{split}.json", encoding="utf-8") as f:
                data = json.load(f)
            if (data["info"].get("seed"), data["info"].get("size"), len(data["images"])) != \
                    (seed, size, count):
                raise ValueError("made with other arguments")
    except (OSError, ValueError, KeyError):
        generate_shapes(root, num_train, num_val, size, seed, progress)
    return root
