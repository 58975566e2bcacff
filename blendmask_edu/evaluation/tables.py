"""The tables of the results: COCO AP (box and mask rows), the paper's Table 1 row and the AP of
several models per hard case.

One formatter per table, each in two layouts: plain text (the command line, the notebooks) and
Markdown (the demo report, ``markdown=True``). Numbers are percent with one decimal; a cell
without a value (an AP without ground truth is NaN or ``null``, a column a row does not have)
is a dash.

Table 1 of the paper compares panoptic models by eight columns (:data:`TABLE1_COLUMNS`): PQ, SQ,
RQ over all classes, PQ of the things and of the stuff, the semantic branch's mIoU, box AP and
the things' mask AP. :func:`table1_row` builds them from an evaluation; :data:`PAPER_TABLE1`
holds the published rows to print ours against. Introduced in ``notebooks/05_evaluate.ipynb``
(AP) and ``06_panoptic`` (Table 1).

:func:`hard_case_table` puts models side by side on the shapes dataset's hard cases (issue 11:
BlendMask against Mask R-CNN): one row per case with its number of objects, mask AP and boundary
AP per model (:mod:`.hard_cases`).
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence

from blendmask_edu.evaluation.coco import AP_NAMES, IOU_TYPES

TABLE1_COLUMNS = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "mIoU", "AP_box", "AP_th")

# COCO val2017, the AdelaiDet README's panoptic table (docs/model.md §10). The cells it does not
# give are None: they are not in the stored copy of the paper either.
PAPER_TABLE1 = (
    {"method": "Panoptic-FPN", "backbone": "R-50 3×", "PQ": 41.5, "PQ_th": 48.3, "PQ_st": 31.2},
    {"method": "BlendMask", "backbone": "R-50 3×", "PQ": 42.5, "PQ_th": 49.5, "PQ_st": 32.0},
    {"method": "Panoptic-FPN", "backbone": "R-101 3×", "PQ": 43.0, "PQ_th": 49.7, "PQ_st": 32.9},
    {"method": "BlendMask", "backbone": "R-101 3×", "PQ": 44.3, "PQ_th": 51.6, "PQ_st": 33.2},
)

LABEL_WIDTHS = {"method": 22, "backbone": 16}  # Table 1's text columns before the numbers


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


CASE_SUFFIXES = ("_box_AP", "_mask_AP", "_AP_boundary")  # the flat per-case keys: {tag}{suffix}
CASE_COLUMNS = (("mask AP", "mask_AP"), ("boundary AP", "AP_boundary"))  # header → row key


def _case_rows(metrics: Mapping) -> Dict[str, Mapping]:
    """{tag: {"instances"?, "box_AP", "mask_AP", "AP_boundary", …}} of one model: the
    ``hard_cases`` block of a metrics.json dict, else gathered from the flat ``{tag}_mask_AP``
    … keys of ``evaluate_coco``'s dict (which have no instance counts)."""
    if isinstance(metrics.get("hard_cases"), Mapping):
        return metrics["hard_cases"]
    rows: Dict[str, Dict] = {}
    for key, value in metrics.items():
        for suffix in CASE_SUFFIXES:
            if key.endswith(suffix) and len(key) > len(suffix):
                rows.setdefault(key[:-len(suffix)], {})[suffix[1:]] = value
    return rows


def hard_case_table(models: Mapping[str, Mapping], markdown: bool = True) -> str:
    """Mask AP and boundary AP per hard case of several models, side by side.

    Takes ``{model name: metrics}``, each metrics a metrics.json dict (``read_metrics``, with its
    ``hard_cases`` block) or the flat dict of ``evaluate_coco`` (``{tag}_mask_AP`` …), in the
    column order wanted. Returns the table as text: a row per case (in the order the first model
    lists them, then any other model's), its number of ground-truth objects (from the first
    model that has it; "–" if none) and per model the two APs, one decimal, "–" for a missing or
    NaN value. Markdown by default, aligned plain text with ``markdown=False``.
    """
    if not models:
        raise ValueError("hard_case_table needs at least one model's metrics")
    tables = {name: _case_rows(metrics) for name, metrics in models.items()}
    tags = list(dict.fromkeys(tag for rows in tables.values() for tag in rows))
    header = ["case", "instances"] + [f"{name} {label}" for name in models
                                      for label, _ in CASE_COLUMNS]
    cells = []
    for tag in tags:
        counts = [rows[tag]["instances"] for rows in tables.values()
                  if "instances" in rows.get(tag, {})]
        row = [tag, str(counts[0]) if counts else "–"]
        for rows in tables.values():
            row += [_cell(rows.get(tag, {}).get(key)) for _, key in CASE_COLUMNS]
        cells.append(row)
    if markdown:
        return "\n".join(_markdown(header, cells))
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(header)]

    def line(row):  # the case name to the left, the numbers right-aligned under their names
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join(line(row) for row in [header, *cells])
