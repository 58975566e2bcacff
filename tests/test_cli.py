"""The command line: each data subcommand end to end, and one-line errors instead of tracebacks."""

import json
import subprocess
import sys

import pytest
from pycocotools.coco import COCO

from blendmask_edu.cli import main


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    assert main(["data", "shapes", "--out", str(root), "--train", "6", "--val", "8",
                 "--seed", "3", "--quiet"]) == 0
    return root


def test_shapes_then_check_passes(shapes_root, capsys):
    ann = shapes_root / "annotations"
    code = main(["data", "check", "--images", str(shapes_root / "val"),
                 "--instances", str(ann / "instances_val.json"),
                 "--panoptic", str(ann / "panoptic_val.json"),
                 "--panoptic-dir", str(ann / "panoptic_val"), "--quiet"])
    assert code == 0
    assert "no defects found" in capsys.readouterr().out


def test_subset_loads_and_checks(shapes_root, tmp_path):
    ann = shapes_root / "annotations"
    out = tmp_path / "subset"
    code = main(["data", "subset", "--instances", str(ann / "instances_train.json"),
                 "--panoptic", str(ann / "panoptic_train.json"), "--out", str(out),
                 "--images", "3", "--categories", "circle,star", "--seed", "1"])
    assert code == 0
    coco = COCO(str(out / "annotations" / "instances_train.json"))
    assert len(coco.getImgIds()) <= 3
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == {"circle", "star"}


def test_check_reports_defects_and_fails(shapes_root, tmp_path, capsys):
    instances = json.loads((shapes_root / "annotations" / "instances_val.json").read_text())
    instances["annotations"][0]["category_id"] = 999
    bad = tmp_path / "instances_bad.json"
    bad.write_text(json.dumps(instances))
    code = main(["data", "check", "--images", str(shapes_root / "val"), "--instances", str(bad),
                 "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    assert str(bad) in out and str(instances["annotations"][0]["id"]) in out


def test_report_writes_pictures(shapes_root, tmp_path):
    assert main(["data", "report", "--data", str(shapes_root), "--split", "val",
                 "--out", str(tmp_path)]) == 0
    for name in ("report.md", "class_counts.png", "sizes.png", "grid.png", "dataset_stats.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    stats = json.loads((tmp_path / "dataset_stats.json").read_text())
    assert stats["images"] == 8


def test_not_json_is_one_line_error_without_traceback(tmp_path):
    bad = tmp_path / "instances_val.json"
    bad.write_text("this is not JSON {")
    result = subprocess.run([sys.executable, "-m", "blendmask_edu", "data", "check",
                             "--images", str(tmp_path), "--instances", str(bad), "--quiet"],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert str(bad) in result.stdout + result.stderr
    assert "JSON" in result.stdout + result.stderr
