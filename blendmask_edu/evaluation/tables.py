"""The tables of the results: COCO AP (box and mask rows) and the paper's Table 1 row.

One formatter per table, each in two layouts: plain text (the command line, the notebooks) and
Markdown (the demo report, ``markdown=True``). Numbers are percent with one decimal; a cell
without a value (an AP without ground truth is NaN or ``null``, a column a row does not have)
is a dash.

Table 1 of the paper compares panoptic models by eight columns (:data:`TABLE1_COLUMNS`): PQ, SQ,
RQ over all classes, PQ of the things and of the stuff, the semantic branch's mIoU, box AP and
the things' mask AP. :func:`table1_row` builds them from an evaluation; :data:`PAPER_TABLE1`
holds the published rows to print ours against. Introduced in ``notebooks/05_evaluate.ipynb``
(AP) and ``06_panoptic`` (Table 1).
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence

from blendmask_edu.evaluation.coco import AP_NAMES, IOU_TYPES

TABLE1_COLUMNS = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "mIoU", "AP_box", "AP_th")

# COCO val2017, the AdelaiDet README's panoptic table (spec §9.1). The cells it does not give
# are None: they are not in the stored copy of the paper either.
PAPER_TABLE1 = (
    {"method": "Panoptic-FPN", "backbone": "R-50 3×", "PQ": 41.5, "PQ_th": 48.3, "PQ_st": 31.2},
    {"method": "BlendMask", "backbone": "R-50 3×", "PQ": 42.5, "PQ_th": 49.5, "PQ_st": 32.0},
    {"method": "Panoptic-FPN", "backbone": "R-101 3×", "PQ": 43.0, "PQ_th": 49.7, "PQ_st": 32.9},
    {"method": "BlendMask", "backbone": "R-101 3×", "PQ": 44.3, "PQ_th": 51.6, "PQ_st": 33.2},
)

LABEL_WIDTHS = {"method": 18, "backbone": 16}  # Table 1's text columns before the numbers


def _cell(value: Optional[float], missing: str = "–") -> str:
    """A number as the tables print it (one decimal), ``missing`` for None or NaN."""
    return missing if value is None or not math.isfinite(value) else f"{value:.1f}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    """Markdown table lines; an empty header cell stays "| |"."""
    def line(cells):
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"
    return [line(header), "|---" * len(header) + "|", *(line(row) for row in rows)]


def format_ap_table(metrics: Mapping[str, Optional[float]], markdown: bool = False) -> str:
    """The flat metrics of ``evaluate_coco`` (``AP`` … ``APl``, and ``mask_AP`` … when the model
    predicts masks) as a table: a header of the six AP names and one row each for box and mask;
    "-" (text) or "–" (Markdown) where a size range holds no ground-truth object."""
    rows = [("box" if iou_type == "bbox" else "mask", [metrics[prefix + name] for name in AP_NAMES])
            for iou_type, prefix in IOU_TYPES.items() if f"{prefix}AP" in metrics]
    if markdown:
        return "\n".join(_markdown(["", *AP_NAMES],
                                   [[label, *(_cell(v) for v in values)] for label, values in rows]))
    lines = [f"{'':<5}" + "".join(f"{name:>7}" for name in AP_NAMES)]
    lines += [f"{label:<5}" + "".join(f"{_cell(v, '-'):>7}" for v in values)
              for label, values in rows]
    return "\n".join(lines)


def table1_row(pq: Mapping, miou: float, ap_box: float, ap_things: float) -> Dict[str, float]:
    """``panoptic_quality``'s dict (``All``/``Things``/``Stuff`` → ``pq``, ``sq``, ``rq``), the
    mIoU and the box and thing-mask AP (percent) → the eight columns ``{TABLE1_COLUMNS: value}``."""
    return {"PQ": pq["All"]["pq"], "SQ": pq["All"]["sq"], "RQ": pq["All"]["rq"],
            "PQ_th": pq["Things"]["pq"], "PQ_st": pq["Stuff"]["pq"], "mIoU": miou,
            "AP_box": ap_box, "AP_th": ap_things}


def format_table1(rows: Sequence[Mapping], markdown: bool = False, labels: bool = True) -> str:
    """Rows with ``method``, ``backbone`` and any of the eight columns → a table in the paper's
    Table 1 layout; "–" for a cell a row does not have. ``labels=False`` leaves out the method
    and backbone columns (the report's one row of our own model)."""
    names = list(LABEL_WIDTHS) if labels else []
    cells = [[str(row.get(name, "")) for name in names] + [_cell(row.get(c)) for c in TABLE1_COLUMNS]
             for row in rows]
    if markdown:
        return "\n".join(_markdown([*names, *TABLE1_COLUMNS], cells))
    widths = [LABEL_WIDTHS[name] for name in names]
    header = "".join(f"{n:<{w}}" for n, w in zip(names, widths)) + "".join(
        f"{c:>8}" for c in TABLE1_COLUMNS)
    lines = [header, "-" * len(header)]
    for row in cells:
        lines.append("".join(f"{c:<{w}}" for c, w in zip(row, widths))
                     + "".join(f"{c:>8}" for c in row[len(names):]))
    return "\n".join(lines)


def format_metrics(metrics: Mapping[str, float], method: str = "BlendMask (ours)",
                   backbone: str = "") -> str:
    """:func:`format_ap_table` (text), and for a panoptic evaluation (the eight Table 1 columns
    present) the Table 1 row of ``method`` / ``backbone`` below it."""
    text = format_ap_table(metrics)
    if all(c in metrics for c in TABLE1_COLUMNS):
        text += "\n\n" + format_table1([{"method": method, "backbone": backbone, **metrics}])
    return text
