"""The demo report's AP table (the whole report is written end to end in test_cli's demo test)."""

from blendmask_edu.evaluation.report import metrics_table


def test_metrics_table_rows_and_missing_size_ranges():
    flat = {"AP": 41.25, "AP50": 70.0, "AP75": 40.0, "APs": 30.0, "APm": 50.0, "APl": float("nan"),
            "mask_AP": 45.0, "mask_AP50": 72.0, "mask_AP75": 44.0, "mask_APs": 33.0,
            "mask_APm": 55.5, "mask_APl": None}
    lines = metrics_table(flat).splitlines()
    assert lines[0] == "| | AP | AP50 | AP75 | APs | APm | APl |"
    assert lines[2] == "| box | 41.2 | 70.0 | 40.0 | 30.0 | 50.0 | – |"
    assert lines[3] == "| mask | 45.0 | 72.0 | 44.0 | 33.0 | 55.5 | – |"
    assert len(metrics_table({k: v for k, v in flat.items() if not k.startswith("mask")}).splitlines()) == 3
