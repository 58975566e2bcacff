"""The result tables (evaluation.tables): the AP table and the paper's Table 1, in text for the
command line and in Markdown for the demo report (written end to end in test_cli's demo test)."""

import math

from blendmask_edu.evaluation.tables import (LABEL_WIDTHS, PAPER_TABLE1, TABLE1_COLUMNS, format_ap_table,
                                             format_metrics, format_table1, table1_row)

FLAT = {"AP": 41.25, "AP50": 70.0, "AP75": 40.0, "APs": 30.0, "APm": 50.0, "APl": float("nan"),
        "mask_AP": 45.0, "mask_AP50": 72.0, "mask_AP75": 44.0, "mask_APs": 33.0,
        "mask_APm": 55.5, "mask_APl": None}


def test_ap_table_markdown_rows_and_missing_size_ranges():
    lines = format_ap_table(FLAT, markdown=True).splitlines()
    assert lines[0] == "| | AP | AP50 | AP75 | APs | APm | APl |"
    assert lines[1] == "|---|---|---|---|---|---|---|"
    assert lines[2] == "| box | 41.2 | 70.0 | 40.0 | 30.0 | 50.0 | – |"
    assert lines[3] == "| mask | 45.0 | 72.0 | 44.0 | 33.0 | 55.5 | – |"
    boxes_only = {k: v for k, v in FLAT.items() if not k.startswith("mask")}
    assert len(format_ap_table(boxes_only, markdown=True).splitlines()) == 3


def test_ap_table_text_layout():
    assert format_ap_table(FLAT).splitlines() == [
        "          AP   AP50   AP75    APs    APm    APl",
        "box     41.2   70.0   40.0   30.0   50.0      -",
        "mask    45.0   72.0   44.0   33.0   55.5      -"]


def test_format_table1_layout():
    text = format_table1([{"method": "BlendMask", "backbone": "R-18", "PQ": 12.34, "SQ": 60.0,
                           "AP_box": float("nan")}])
    header, rule, row = text.splitlines()
    names = header.split()
    assert names == ["method", "backbone", *TABLE1_COLUMNS]
    assert set(rule) == {"-"}
    cells = row.split()
    assert cells[:4] == ["BlendMask", "R-18", "12.3", "60.0"]
    assert cells[4:] == ["–"] * 6  # RQ … AP_th missing, AP_box NaN
    paper = format_table1(PAPER_TABLE1)
    assert "42.5" in paper and "44.3" in paper and len(paper.splitlines()) == 2 + 4
    assert table1_row({"All": {"pq": 1, "sq": 2, "rq": 3}, "Things": {"pq": 4},
                       "Stuff": {"pq": 5}}, 6, 7, 8) == dict(zip(TABLE1_COLUMNS, range(1, 9)))


def test_table1_text_columns_line_up():
    header, rule, row = format_table1([{"method": "BlendMask (ours)", "backbone": "R-18",
                                        **dict.fromkeys(TABLE1_COLUMNS, 1.0)}]).splitlines()
    assert len(header) == len(rule) == len(row) == LABEL_WIDTHS["method"] + LABEL_WIDTHS["backbone"] + 8 * len(TABLE1_COLUMNS)
    assert header.index("PQ ") + 2 == row.index("1.0") + 3  # numbers right-aligned under names


def test_table1_markdown_one_row_without_labels():
    metrics = {**dict.fromkeys(TABLE1_COLUMNS, 12.34), "mIoU": math.nan}
    assert format_table1([metrics], markdown=True, labels=False).splitlines() == [
        "| PQ | SQ | RQ | PQ_th | PQ_st | mIoU | AP_box | AP_th |",
        "|---|---|---|---|---|---|---|---|",
        "| 12.3 | 12.3 | 12.3 | 12.3 | 12.3 | – | 12.3 | 12.3 |"]
    with_labels = format_table1([{"method": "m", "backbone": "b", **metrics}], markdown=True)
    assert with_labels.splitlines()[2].startswith("| m | b | 12.3 |")


def test_format_metrics_adds_table1_only_for_a_panoptic_evaluation():
    assert format_metrics(FLAT) == format_ap_table(FLAT)
    panoptic = {**FLAT, **dict.fromkeys(TABLE1_COLUMNS, 5.0)}
    text = format_metrics(panoptic, backbone="R-18")
    assert text.startswith(format_ap_table(FLAT) + "\n\n")
    assert text.splitlines()[-1].startswith("BlendMask (ours)      R-18")


def test_hard_case_table_two_models_from_metrics_json_and_flat_dicts():
    from blendmask_edu.evaluation.tables import hard_case_table

    mask_rcnn = {"segm": {"AP": 40.0}, "hard_cases": {
        "split": {"instances": 12, "box_AP": 30.0, "mask_AP": 21.04, "AP_boundary": 10.0},
        "large": {"instances": 0, "box_AP": None, "mask_AP": None, "AP_boundary": None}}}
    blendmask = {"mask_AP": 45.0, "split_box_AP": 31.0, "split_mask_AP": 25.55,
                 "split_AP_boundary": 18.25, "large_mask_AP": float("nan"),
                 "large_AP_boundary": float("nan"), "AP_boundary": 30.0, "AP50_boundary": 50.0}
    lines = hard_case_table({"Mask R-CNN": mask_rcnn, "BlendMask": blendmask}).splitlines()
    assert lines == [
        "| case | instances | Mask R-CNN mask AP | Mask R-CNN boundary AP | BlendMask mask AP "
        "| BlendMask boundary AP |",
        "|---|---|---|---|---|---|",
        "| split | 12 | 21.0 | 10.0 | 25.6 | 18.2 |",
        "| large | 0 | – | – | – | – |"]
    # the flat dict alone has no instance counts; a case one model lacks is a dash for it
    only_flat = hard_case_table({"BlendMask": blendmask, "other": {"overlap_mask_AP": 5.0}})
    assert only_flat.splitlines()[2] == "| split | – | 25.6 | 18.2 | – | – |"
    assert only_flat.splitlines()[4] == "| overlap | – | – | – | 5.0 | – |"
    text = hard_case_table({"Mask R-CNN": mask_rcnn}, markdown=False).splitlines()
    assert text[0].split() == ["case", "instances", "Mask", "R-CNN", "mask", "AP", "Mask", "R-CNN",
                               "boundary", "AP"]
    assert text[1].split() == ["split", "12", "21.0", "10.0"] and len(set(map(len, text))) == 1
