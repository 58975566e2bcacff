"""Drawing one random scene of the shapes dataset: its pixels and the full masks of what it holds.

Pure drawing, no annotations: each public function takes a numpy Generator (all randomness comes
from it, in a fixed order) and returns arrays; what is visible, which segment a pixel belongs to
and how the scene is written to COCO files is :mod:`blendmask_edu.data.synthetic`'s job.

A scene (``size`` x ``size``, 128 by default) holds
- stuff: sky above ground, split by an uneven horizon (a sum of random sines), both textured
  (gradient and clouds; furrow stripes and noise) so that stuff is not flat colour
  (:func:`draw_background`);
- 1-6 things (circle, triangle, rotated rectangle, star, ring), each in a random colour so that
  shape, not colour, tells the class; sizes (diameter of the circumscribed circle) are
  log-uniform from 0.08 to 0.85 of the image side, a >10:1 range, so every FPN level gets work;
  sometimes one is placed on top of another on purpose (:func:`draw_scene`);
- thin occluders drawn over the things: poles a few pixels wide, some aimed across a thing, and,
  sometimes, a net-like band of thin crossing lines (:func:`draw_scene`).
:func:`paint` colours the things and occluders over the background, back to front.

Results of transcendental functions are rounded to fixed precision before use, so that the
pixels are the same on every machine.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

CIRCLE, TRIANGLE, RECTANGLE, STAR, RING = 1, 2, 3, 4, 5  # the thing category ids
SIZE_RANGE = (0.08, 0.85)  # thing diameter as a fraction of the image side (log-uniform)
P_OVERLAP = 0.4  # chance that an image places one thing on top of another on purpose
POLE_COUNT_P = (0.7, 0.23, 0.06, 0.01)  # chance of 0, 1, 2, 3 poles
P_POLE_AIMED = 0.5  # chance that a pole is placed across a thing
P_NET = 0.12
_TAU = 2 * np.pi


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


def draw_background(rng: np.random.Generator, size: int):
    """The stuff of a scene: (sky [H, W] bool, background [H, W, 3] float: sky above ground)."""
    sky = _sky_mask(rng, size)
    return sky, np.where(sky[..., None], _sky_texture(rng, size), _ground_texture(rng, size))


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


# ---------------------------------------------------------------------- sizes, places, colours

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


# ---------------------------------------------------------------------------- scene

def draw_scene(rng: np.random.Generator, size: int):
    """The things and occluders of one scene, as full masks (before anything hides them).

    Returns (categories: G thing ids, diameters: G floats in px, full: G x [H, W] bool in
    z-order, back to front, poles: a list of [H, W] bool, net: [H, W] bool, empty if none).
    """
    diameters = _thing_diameters(rng, size)
    centres = _place_centres(rng, size, diameters)
    categories = [int(c) for c in rng.integers(1, 6, len(diameters))]
    full = [_DRAW[c](rng, size, x, y, d / 2)
            for c, d, (x, y) in zip(categories, diameters, centres)]
    poles = _draw_poles(rng, size, list(zip(categories, diameters, centres)))
    net = _draw_net(rng, size) if rng.random() < P_NET else np.zeros((size, size), bool)
    return categories, diameters, full, poles, net


def paint(rng: np.random.Generator, background: np.ndarray, sky: np.ndarray, full: list,
          poles: list, net: np.ndarray) -> np.ndarray:
    """The image [H, W, 3] uint8: ``background`` [H, W, 3] float (painted in place) with the
    things ``full`` (G x [H, W] bool, back to front), the net and the poles on top, plus noise."""
    avoid = [background[sky].mean(0) if sky.any() else background[0, 0],
             background[~sky].mean(0) if (~sky).any() else background[0, 0]]
    image = background
    for m in full:  # each thing in a colour unlike the background and the things before it
        colour = _thing_colour(rng, avoid)
        avoid.append(colour)
        image[m] = colour
    image[net] = rng.uniform(20, 235)
    for m in poles:
        image[m] = rng.uniform(40, 200) + rng.uniform(-15, 15, 3)
    return np.clip(image + rng.integers(-6, 7, image.shape), 0, 255).astype(np.uint8)
