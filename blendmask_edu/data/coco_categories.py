"""COCO 2017's categories as data: the 80 thing categories and the 53 panoptic stuff categories.

The ids are COCO's own: things 1–90 with ten gaps (12, 26, 29, 30, 45, 66, 68, 69, 71, 83 were
dropped from the 91 planned), stuff 92–200 with gaps (COCO-Stuff's 91 classes, merged into 53 for
COCO panoptic: the ``-merged`` names). An instances JSON holds the 80 things; a panoptic JSON
the 133 together, each with ``isthing`` 1 or 0. Used by :mod:`blendmask_edu.data.coco_like` to
write files with COCO's properties; :class:`~blendmask_edu.data.coco.CategoryMap` turns these ids
into contiguous indices. The ``color`` of each panoptic category here is our own, drawn from a
fixed seed (the official panoptic file has its own colours; nothing depends on them).
"""

from __future__ import annotations

import numpy as np

# (supercategory, [(id, name), ...]) in id order
_THINGS = [
    ("person", [(1, "person")]),
    ("vehicle", [(2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
                 (7, "train"), (8, "truck"), (9, "boat")]),
    ("outdoor", [(10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
                 (14, "parking meter"), (15, "bench")]),
    ("animal", [(16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"),
                (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe")]),
    ("accessory", [(27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"),
                   (33, "suitcase")]),
    ("sports", [(34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports ball"), (38, "kite"),
                (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"), (42, "surfboard"),
                (43, "tennis racket")]),
    ("kitchen", [(44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"), (49, "knife"),
                 (50, "spoon"), (51, "bowl")]),
    ("food", [(52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"), (56, "broccoli"),
              (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake")]),
    ("furniture", [(62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
                   (67, "dining table"), (70, "toilet")]),
    ("electronic", [(72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"),
                    (77, "cell phone")]),
    ("appliance", [(78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
                   (82, "refrigerator")]),
    ("indoor", [(84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
                (89, "hair drier"), (90, "toothbrush")]),
]

_STUFF = [  # (id, name, supercategory)
    (92, "banner", "textile"), (93, "blanket", "textile"), (95, "bridge", "building"),
    (100, "cardboard", "raw-material"), (107, "counter", "furniture-stuff"),
    (109, "curtain", "textile"), (112, "door-stuff", "furniture-stuff"),
    (118, "floor-wood", "floor"), (119, "flower", "plant"), (122, "fruit", "food-stuff"),
    (125, "gravel", "ground"), (128, "house", "building"), (130, "light", "furniture-stuff"),
    (133, "mirror-stuff", "furniture-stuff"), (138, "net", "structural"),
    (141, "pillow", "textile"), (144, "platform", "ground"), (145, "playingfield", "ground"),
    (147, "railroad", "ground"), (148, "river", "water"), (149, "road", "ground"),
    (151, "roof", "building"), (154, "sand", "ground"), (155, "sea", "water"),
    (156, "shelf", "furniture-stuff"), (159, "snow", "ground"), (161, "stairs", "furniture-stuff"),
    (166, "tent", "building"), (168, "towel", "textile"), (171, "wall-brick", "wall"),
    (175, "wall-stone", "wall"), (176, "wall-tile", "wall"), (177, "wall-wood", "wall"),
    (178, "water-other", "water"), (180, "window-blind", "window"), (181, "window-other", "window"),
    (184, "tree-merged", "plant"), (185, "fence-merged", "structural"),
    (186, "ceiling-merged", "ceiling"), (187, "sky-other-merged", "sky"),
    (188, "cabinet-merged", "furniture-stuff"), (189, "table-merged", "furniture-stuff"),
    (190, "floor-other-merged", "floor"), (191, "pavement-merged", "ground"),
    (192, "mountain-merged", "solid"), (193, "grass-merged", "plant"),
    (194, "dirt-merged", "ground"), (195, "paper-merged", "raw-material"),
    (196, "food-other-merged", "food-stuff"), (197, "building-other-merged", "building"),
    (198, "rock-merged", "solid"), (199, "wall-other-merged", "wall"), (200, "rug-merged", "textile"),
]

# The instances JSON's ``categories``: 80 dicts {supercategory, id, name}.
COCO_THING_CATEGORIES = [{"supercategory": group, "id": i, "name": name}
                         for group, members in _THINGS for i, name in members]


def _panoptic_categories() -> list:
    colours = np.random.default_rng(2017).integers(0, 256, (len(COCO_THING_CATEGORIES) + len(_STUFF), 3))
    things = [{**c, "isthing": 1} for c in COCO_THING_CATEGORIES]
    stuff = [{"supercategory": group, "id": i, "name": name, "isthing": 0} for i, name, group in _STUFF]
    return [{**c, "color": [int(v) for v in colour]} for c, colour in zip(things + stuff, colours)]


# The panoptic JSON's ``categories``: 133 dicts {supercategory, id, name, isthing, color}.
COCO_PANOPTIC_CATEGORIES = _panoptic_categories()
COCO_STUFF_CATEGORIES = [c for c in COCO_PANOPTIC_CATEGORIES if not c["isthing"]]
