"""Panoptic evaluation: predictions in COCO's panoptic format, PQ through ``evaluate_coco``, the
Table 1 row, and the panoptic side of the command line (train / evaluate / predict).

``panoptic_quality`` itself is tested in ``test_panoptic_quality.py``; here it is the reference
that ``evaluate_coco``'s numbers must match. 64 px shapes images and the tiny preset throughout.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from blendmask_edu.cli.main import main
from blendmask_edu.presets import get_config
from blendmask_edu.data.files import read_panoptic, rgb_to_id
from blendmask_edu.evaluation.evaluate import evaluate_coco
from blendmask_edu.evaluation.inference import detect
from blendmask_edu.modeling.blendmask import build_model
from blendmask_edu.modeling.panoptic import fuse
from blendmask_edu.evaluation.panoptic_files import PanopticPredictions, segments_to_coco
from blendmask_edu.evaluation.panoptic_quality import panoptic_quality, semantic_miou
from blendmask_edu.evaluation.tables import TABLE1_COLUMNS, format_metrics
from conftest import TINY_RUN, shapes_split

STUFF_IDS = (6, 7, 8, 9)
PQ_KEYS = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")


def hand_made_ids():
    """A 6 × 8 id map: segment 3 an L shape, segment 7 a single pixel, segment 12 a block,
    the rest void (0)."""
    ids = torch.zeros(6, 8, dtype=torch.int64)
    ids[1:5, 1] = 3
    ids[4, 1:4] = 3  # L: column 1 rows 1..4, row 4 columns 1..3 → 6 pixels, box x 1..3, y 1..4
    ids[0, 7] = 7
    ids[2:6, 5:7] = 12  # rows 2..5, columns 5..6 → 8 pixels
    segments = [{"id": 3, "category_id": 2, "isthing": True, "score": 0.9, "area": 6},
                {"id": 7, "category_id": 4, "isthing": True, "score": 0.5, "area": 1},
                {"id": 12, "category_id": 6, "isthing": False, "area": 8}]
    return ids, segments


def same_number(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


# ----------------------------------------------------------------------------- COCO format


def test_segments_to_coco_counts_area_and_box_from_the_map():
    ids, segments = hand_made_ids()
    coco = segments_to_coco(ids.numpy(), segments)
    assert coco == [
        {"id": 3, "category_id": 2, "iscrowd": 0, "area": 6, "bbox": [1, 1, 3, 4]},
        {"id": 7, "category_id": 4, "iscrowd": 0, "area": 1, "bbox": [7, 0, 1, 1]},
        {"id": 12, "category_id": 6, "iscrowd": 0, "area": 8, "bbox": [5, 2, 2, 4]},
    ]


def test_panoptic_predictions_write_png_json_and_miou(tmp_path):
    ids, segments = hand_made_ids()
    ids = ids * 1000  # ids that need two PNG channels: 3000, 7000, 12000
    segments = [{**s, "id": s["id"] * 1000} for s in segments]
    predictions = PanopticPredictions(tmp_path / "panoptic_val", num_semantic=3)
    g = torch.Generator().manual_seed(0)
    sem = torch.randint(0, 3, (6, 8), generator=g)
    gt = torch.randint(0, 3, (6, 8), generator=g)
    gt[0] = 255  # void row
    predictions.add(1000001, "000001000001.jpg", ids, segments, sem, gt)
    predictions.add(1000002, "sub/000001000002.png", torch.zeros(6, 8, dtype=torch.int64), [],
                    sem.flip(0), gt.flip(1))

    png = tmp_path / "panoptic_val" / "000001000001.png"
    back = read_panoptic(png, {"id": 1000001, "height": 6, "width": 8})
    np.testing.assert_array_equal(back, ids.numpy())
    np.testing.assert_array_equal(rgb_to_id(np.asarray(Image.open(png).convert("RGB"))), ids.numpy())
    assert not read_panoptic(tmp_path / "panoptic_val" / "000001000002.png",
                             {"id": 1000002, "height": 6, "width": 8}).any()

    categories = [{"id": i, "name": str(i), "isthing": int(i < 6)} for i in (2, 4, 6)]
    written = predictions.write_json(tmp_path / "panoptic_val.json", categories)
    data = json.loads((tmp_path / "panoptic_val.json").read_text())
    assert data == written and data["categories"] == categories
    first, second = data["annotations"]
    assert (first["image_id"], first["file_name"]) == (1000001, "000001000001.png")
    assert (second["image_id"], second["file_name"]) == (1000002, "000001000002.png")
    assert second["segments_info"] == []
    assert [s["id"] for s in first["segments_info"]] == [3000, 7000, 12000]
    for s in first["segments_info"]:
        assert set(s) == {"id", "category_id", "iscrowd", "area", "bbox"}
    assert first["segments_info"][0] == {"id": 3000, "category_id": 2, "iscrowd": 0, "area": 6,
                                         "bbox": [1, 1, 3, 4]}

    expected = semantic_miou([sem, sem.flip(0)], [gt, gt.flip(1)], 3)
    got = predictions.miou()
    assert got["miou"] == pytest.approx(expected["miou"], abs=1e-12) and 0 < got["miou"] < 100
    np.testing.assert_allclose(got["per_class"], expected["per_class"])
    assert got["n"] == expected["n"] == 3


# ----------------------------------------------------------------------------- evaluate_coco


class PerfectModel(nn.Module):
    """A stand-in "panoptic model" whose eval outputs are the ground truth of the image it is
    given (found by equality among the dataset's images): boxes, masks and labels of every
    instance with score 1, ``sem_seg`` one-hot of the GT semantic labels (void → things) and
    ``panoptic`` fused from them with no stuff area limit."""

    def __init__(self, dataset):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # detect() asks for the device
        self.semantic = nn.Identity()  # evaluate_coco looks for a semantic head
        self.stuff_ids = list(dataset.categories.stuff_ids)
        self.categories = dataset.categories
        self.items = [dataset[i] for i in range(len(dataset))]
        self.calls = 0

    def fuse_panoptic(self, masks, scores, labels, sem_seg):
        return fuse(masks, scores, labels, sem_seg, 0.2, 0.4, 0, stuff_ids=self.stuff_ids)

    def forward(self, images, panoptic=True):  # BlendMask's eval signature
        assert not self.training
        outputs = []
        for image in images:
            found = [t for im, t in self.items if im.shape == image.shape and torch.equal(im, image)]
            assert len(found) == 1
            target = found[0]
            masks = target["masks"].float()[:, None]  # [G, 1, H, W]
            scores = torch.ones(len(masks))
            labels = self.categories.category_id(target["labels"])
            semantic = target["sem_seg"].clone()
            semantic[semantic == 255] = 0
            sem_seg = F.one_hot(semantic, 1 + len(self.stuff_ids)).permute(2, 0, 1).float()
            outputs.append({"boxes": target["boxes"].clone(), "scores": scores, "labels": labels,
                            "masks": masks, "sem_seg": sem_seg})
            if panoptic:
                outputs[-1]["panoptic"] = self.fuse_panoptic(masks, scores, labels, sem_seg)
            self.calls += 1
        return outputs


@pytest.fixture(scope="module")
def shapes_val(tmp_path_factory):
    """Six 64 px shapes val images with panoptic ground truth."""
    return shapes_split(tmp_path_factory, num_val=6, size=64, seed=0)


def test_the_ground_truth_scores_100(shapes_val, tmp_path):
    # The premise: every shapes pixel is labelled (no void) and each image has at most one
    # segment per stuff category, so fusing the GT masks over the GT semantic map with no
    # stuff area limit rebuilds the GT segments exactly.
    gt = json.loads(shapes_val.panoptic_json.read_text())
    images = {im["id"]: im for im in gt["images"]}
    for ann in gt["annotations"]:
        ids = read_panoptic(shapes_val.panoptic_dir / ann["file_name"], images[ann["image_id"]])
        assert ids.min() > 0
        stuff = [s["category_id"] for s in ann["segments_info"] if s["category_id"] in STUFF_IDS]
        assert len(stuff) == len(set(stuff)) >= 1

    model = PerfectModel(shapes_val)
    metrics = evaluate_coco(model, shapes_val, 64, 64, progress=False, out_dir=tmp_path)
    assert model.calls == len(shapes_val) == 6
    for key in PQ_KEYS + ("mIoU",):
        assert metrics[key] == pytest.approx(100.0, abs=1e-6), key
    for key in ("AP", "mask_AP", "AP_box", "AP_th"):
        assert metrics[key] == pytest.approx(100.0, abs=1e-6), key
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["panoptic"]["Things"]["n"] >= 1 and written["panoptic"]["Stuff"]["n"] >= 2
    assert all(v["pq"] == pytest.approx(100.0) and v["fp"] == v["fn"] == 0
               for v in written["panoptic"]["per_class"].values())
    assert written["panoptic"]["mIoU_per_class"]["things"] == pytest.approx(100.0)


@pytest.fixture(scope="module")
def trained(shapes_val):
    """The tiny panoptic model after 30 AdamW steps on two of the images: confident enough to
    put thing and stuff segments in every image, far from perfect."""
    torch.manual_seed(0)
    model = build_model(get_config("tiny")).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    items = [shapes_val[i] for i in range(2)]
    for _ in range(30):
        losses = model([im for im, _ in items], [t for _, t in items])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    return model.eval()


def test_evaluate_coco_writes_the_panoptic_files_and_the_table1_row(trained, shapes_val, tmp_path,
                                                                    monkeypatch):
    out = tmp_path / "out"
    metrics = evaluate_coco(trained, shapes_val, 64, 64, progress=False, out_dir=out)
    written = json.loads((out / "metrics.json").read_text())
    for column in TABLE1_COLUMNS:
        assert column in metrics and column in written, column
        assert same_number(written[column], metrics[column]), column
    assert set(written["panoptic"]) == {"All", "Things", "Stuff", "per_class", "mIoU_per_class"}

    pngs = sorted((out / "panoptic_val").glob("*.png"))
    assert len(pngs) == len(shapes_val) == 6
    predictions = json.loads((out / "panoptic_val.json").read_text())
    assert len(predictions["annotations"]) == 6
    assert sum(len(a["segments_info"]) for a in predictions["annotations"]) > 12

    reference = panoptic_quality(shapes_val.panoptic_json, shapes_val.panoptic_dir,
                                 out / "panoptic_val.json", out / "panoptic_val")
    assert metrics["PQ"] == reference["All"]["pq"] and metrics["SQ"] == reference["All"]["sq"]
    assert metrics["RQ"] == reference["All"]["rq"]
    assert metrics["PQ_th"] == reference["Things"]["pq"]
    assert metrics["PQ_st"] == reference["Stuff"]["pq"]
    assert 0 < metrics["PQ"] < 100 and 0 < metrics["PQ_st"] < 100  # measured: see the report
    assert written["AP_box"] == written["bbox"]["AP"] == metrics["AP"]
    assert written["AP_th"] == written["segm"]["AP"] == metrics["mask_AP"]

    # mIoU: the argmax of the semantic probabilities against the GT labels, computed here
    dets = detect(trained, [shapes_val[i][0] for i in range(6)], 64, 64)
    miou = semantic_miou([d["sem_seg"].argmax(0) for d in dets],
                         [shapes_val[i][1]["sem_seg"] for i in range(6)], 5)
    assert metrics["mIoU"] == pytest.approx(miou["miou"], abs=1e-9) and 0 < metrics["mIoU"] < 100

    assert "PQ_th" in format_metrics(metrics)

    # without out_dir: the same numbers, and nothing left in the working directory, nor in
    # the temporary folder that held the PNGs
    cwd, temporary = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    temporary.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    again = evaluate_coco(trained, shapes_val, 64, 64, progress=False)
    assert set(again) == set(metrics)
    assert all(same_number(again[k], metrics[k]) for k in metrics)
    assert list(cwd.iterdir()) == [] and list(temporary.iterdir()) == []


# ----------------------------------------------------------------------------- command line

@pytest.fixture(scope="module")
def instances_only(small_shapes, tmp_path_factory):
    """A copy of small_shapes without annotations/panoptic_*."""
    root = tmp_path_factory.mktemp("nopan") / "shapes"
    shutil.copytree(small_shapes, root)
    for path in (root / "annotations").glob("panoptic_*"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert sorted(p.name for p in (root / "annotations").iterdir()) == [
        "instances_train.json", "instances_val.json"]
    return root


@pytest.fixture(scope="module")
def panoptic_run(small_shapes, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    assert main(["train", "--preset", "tiny", "--data", str(small_shapes), "--out", str(run),
                 *TINY_RUN]) == 0
    return run


def test_cli_evaluate_prints_table1_and_writes_panoptic_files(panoptic_run, small_shapes,
                                                              tmp_path, capsys):
    capsys.readouterr()
    code = main(["evaluate", "--checkpoint", str(panoptic_run / "last.pt"), "--data",
                 str(small_shapes), "--out", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    headers = [line for line in out.splitlines() if "PQ_th" in line]
    assert len(headers) == 1 and headers[0].split()[2:] == list(TABLE1_COLUMNS)
    assert str(tmp_path / "panoptic_val.json") in out
    predictions = json.loads((tmp_path / "panoptic_val.json").read_text())
    assert len(predictions["annotations"]) == 2
    assert len(list((tmp_path / "panoptic_val").glob("*.png"))) == 2
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert all(c in metrics for c in TABLE1_COLUMNS)
    trained = json.loads((panoptic_run / "metrics.json").read_text())
    assert metrics == trained  # the training run's own evaluation is the same evaluation


def test_cli_predict_draws_two_panels(panoptic_run, small_shapes, tmp_path, capsys):
    image = sorted((small_shapes / "val").glob("*.png"))[0]
    out = tmp_path / "pred"
    capsys.readouterr()
    code = main(["predict", "--checkpoint", str(panoptic_run / "last.pt"), str(image),
                 "--out", str(out), "--score-thresh", "0.0"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "panoptic segments" in printed
    with Image.open(out / image.name) as picture:
        width, height = picture.size
    assert abs(width / height - 2.0) < 0.1, (width, height)


def test_cli_evaluate_without_panoptic_ground_truth_gives_ap_only(panoptic_run, instances_only,
                                                                  tmp_path, capsys):
    code = main(["evaluate", "--checkpoint", str(panoptic_run / "last.pt"), "--data",
                 str(instances_only), "--out", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "PQ_th" not in out and "mask" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "AP" in metrics["bbox"] and "AP" in metrics["segm"]
    assert not any(c in metrics for c in TABLE1_COLUMNS) and "panoptic" not in metrics
    assert not (tmp_path / "panoptic_val.json").exists()


def test_cli_train_panoptic_preset_needs_panoptic_files(instances_only, tmp_path, capsys):
    capsys.readouterr()
    code = main(["train", "--preset", "tiny", "--data", str(instances_only),
                 "--out", str(tmp_path / "run"), *TINY_RUN])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "panoptic" in lines[0] and "panoptic.enabled false" in lines[0]
    assert not (tmp_path / "run" / "last.pt").exists()


def test_cli_ap_only_evaluation_drops_an_earlier_panoptic_result(panoptic_run, small_shapes,
                                                                 instances_only, tmp_path):
    argv = ["evaluate", "--checkpoint", str(panoptic_run / "last.pt"), "--out", str(tmp_path),
            "--quiet", "--data"]
    assert main(argv + [str(small_shapes)]) == 0
    assert "PQ" in json.loads((tmp_path / "metrics.json").read_text())
    assert main(argv + [str(instances_only)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert not any(c in metrics for c in TABLE1_COLUMNS) and "panoptic" not in metrics
    assert "AP" in metrics["segm"]
