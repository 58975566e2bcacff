"""blendmask_edu: BlendMask (Chen et al., CVPR 2020) and its panoptic extension, step by step.

Shape legend, used in every docstring and shape comment of the package (the paper's letters,
one meaning each):

    N  images in a batch              H, W  image (or padded batch) height and width
    K  number of bases                h, w  height and width of one feature map
    M  attention size (M x M)         L     locations (feature cells) over all levels
    R  blender resolution (R x R)     D     detected instances (inference)
    G  ground-truth objects           P     positive locations (training: FCOS positives)
    C  thing classes                  S     stuff classes (the semantic head predicts 1 + S)

Coordinates are pixels, boxes are ``(x0, y0, x1, y1)`` with ``x1 = last pixel + 1`` (COCO's
convention: the box of a one-pixel mask at column 3 is ``3..4``).

Start with ``notebooks/00_data.ipynb``.
"""

__version__ = "0.1.0"

from blendmask_edu.presets import get_config  # noqa: E402
from blendmask_edu.modeling.blendmask import build_model  # noqa: E402

__all__ = ["build_model", "get_config"]
