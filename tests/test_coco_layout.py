"""COCO's own layout on disk: split names, ``data subset`` output, ``data check`` notes against
defects, ``data report``'s default split, and the missing-file check before the first step."""

from __future__ import annotations

import json
import shutil

import pytest

from blendmask_edu.cli.main import main
from blendmask_edu.data.coco import CocoInstances
from blendmask_edu.data.coco_like import write_coco_like
from blendmask_edu.data.errors import DatasetError
from blendmask_edu.data.files import dataset_paths, missing_files, resolve_split, splits_found


@pytest.fixture(scope="module")
def coco_like(tmp_path_factory):
    """A COCO-like dataset (train2017 + val2017, 6 images each) written by the command line."""
    root = tmp_path_factory.mktemp("coco_like") / "coco"
    assert main(["data", "coco-like", "--out", str(root), "--images", "6"]) == 0
    return root


def layout(root, *splits):
    """A dataset root holding only ``annotations/instances_{split}.json`` files."""
    (root / "annotations").mkdir(parents=True)
    for split in splits:
        (root / "annotations" / f"instances_{split}.json").write_text("{}")
    return root


def check_args(root, split, *extra):
    ann = root / "annotations"
    return ["data", "check", "--images", str(root / split), "--instances", str(ann / f"instances_{split}.json"),
            "--panoptic", str(ann / f"panoptic_{split}.json"), "--panoptic-dir", str(ann / f"panoptic_{split}"),
            "--quiet", *extra]


# ----------------------------------------------------------------------------- split names


@pytest.mark.parametrize("splits, train, val", [
    (("train", "val"), "train", "val"),
    (("train2017", "val2017"), "train2017", "val2017"),
    (("train", "val", "train2017", "val2017"), "train", "val"),  # the plain names first
    (("train2017", "val"), "train2017", "val"),
])
def test_default_splits(tmp_path, splits, train, val):
    root = layout(tmp_path / "d", *splits)
    assert resolve_split(root, None, "train") == train and resolve_split(root, None, "val") == val
    assert splits_found(root) == sorted(splits)


def test_any_instances_name_is_a_split_and_unknown_names_list_the_found_ones(tmp_path):
    root = layout(tmp_path / "d", "minival2014", "train2017")
    assert resolve_split(root, "minival2014", "val") == "minival2014"
    assert resolve_split(root, "train2017", "train") == "train2017"
    with pytest.raises(DatasetError) as error:
        resolve_split(root, "val2017", "val")
    assert str(error.value) == (f"{root / 'annotations' / 'instances_val2017.json'}: instances file not "
                                f"found; the splits under {root} are: minival2014, train2017 "
                                f"(choose one with --val-split)")
    with pytest.raises(DatasetError, match=r"\(choose one with --split\)"):
        resolve_split(root, "test2017", "val", flag="--split")


def test_neither_default_names_the_splits_found_and_the_flag(tmp_path):
    root = layout(tmp_path / "d", "minival2014", "trainval35k")
    with pytest.raises(DatasetError) as error:
        resolve_split(root, None, "val")
    message = str(error.value)
    assert message.startswith(f"{root / 'annotations'}: no val split: neither instances_val.json "
                              f"or instances_val2017.json is here")
    assert "the splits found are: minival2014, trainval35k; choose one with --val-split NAME" in message
    with pytest.raises(DatasetError, match="no train split.*--train-split NAME"):
        resolve_split(root, None, "train")
    with pytest.raises(DatasetError, match="the splits found are: none"):
        resolve_split(layout(tmp_path / "empty"), None, "train")
    with pytest.raises(DatasetError, match="dataset root not found"):
        resolve_split(tmp_path / "nowhere", None, "train")
    with pytest.raises(ValueError, match="role must be one of"):
        resolve_split(root, None, "test")


# ----------------------------------------------------------------------------- data subset


def test_subsets_of_train2017_and_val2017_in_one_folder_train_directly(coco_like, tmp_path, capsys):
    out = tmp_path / "subset"
    for split in ("train2017", "val2017"):
        ann = coco_like / "annotations"
        assert main(["data", "subset", "--instances", str(ann / f"instances_{split}.json"),
                     "--panoptic", str(ann / f"panoptic_{split}.json"), "--out", str(out),
                     "--images", "3"]) == 0
        printed = capsys.readouterr().out
        assert f"instances_{split}.json" in printed and "no defects found" in printed
    assert resolve_split(out, None, "train") == "train2017" and resolve_split(out, None, "val") == "val2017"
    for role in ("train", "val"):
        paths = dataset_paths(out, resolve_split(out, None, role))
        dataset = CocoInstances.from_paths(paths, include_empty=role == "val")
        assert len(dataset) == 3 and dataset.categories.num_things == 80 and dataset.categories.num_stuff == 53
        assert dataset.missing_images() == [] and dataset.check_files() is None


def test_report_defaults_to_the_val_split(coco_like, tmp_path, capsys, monkeypatch):
    import blendmask_edu.data.stats as stats

    asked = []  # the split the report is made of (its pictures are tested in test_cli.py)
    monkeypatch.setattr(stats, "write_dataset_report",
                        lambda root, split, out: asked.append(split) or stats.dataset_statistics(root, split))
    assert main(["data", "report", "--data", str(coco_like), "--out", str(tmp_path / "r")]) == 0
    assert asked == ["val2017"] and "6 images" in capsys.readouterr().out
    assert main(["data", "report", "--data", str(coco_like), "--split", "train2017", "--out", str(tmp_path)]) == 0
    assert asked[-1] == "train2017"
    assert main(["data", "report", "--data", str(coco_like), "--split", "val", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "instances_val.json: instances file not found" in err and "train2017, val2017 (choose one with --split)" in err


# ----------------------------------------------------------------------------- data check


def test_check_passes_on_coco_like_printing_the_crowd_note(coco_like, capsys):
    assert main(check_args(coco_like, "val2017")) == 0
    out = capsys.readouterr().out
    note_lines = [line for line in out.splitlines() if line.startswith("note: ")]
    assert len(note_lines) == 1 and "crowd area" in note_lines[0] and "(as in COCO" in note_lines[0]
    assert "1 note(s): differences real COCO has" in out and "no defects found" in out


def test_check_fails_on_a_broken_copy_and_still_prints_notes_apart(coco_like, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(coco_like, broken)
    data = json.loads((broken / "annotations" / "instances_val2017.json").read_text())
    victim = next(a for a in data["annotations"] if not a["iscrowd"])
    victim["category_id"] = 12  # one of COCO's unused ids
    (broken / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    (broken / "val2017" / data["images"][1]["file_name"]).unlink()
    assert main(check_args(broken, "val2017")) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert f"annotation {victim['id']}: unknown category id 12" in lines[0]
    assert f"{data['images'][1]['file_name']}: image file not found" in captured.out
    assert lines[-2].startswith("note: ") and lines[-1].startswith("1 note(s)")
    assert "defect(s) found" in captured.err and "no defects found" not in captured.out


def test_notes_beyond_ten_are_counted_and_listed_on_request(coco_like, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(coco_like, copy)
    path = copy / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    (crowd,) = [a for a in data["annotations"] if a["iscrowd"]]
    data["annotations"] += [{**crowd, "id": crowd["id"] + k} for k in range(1, 12)]  # 12 crowd notes
    path.write_text(json.dumps(data))
    assert main(check_args(copy, "val2017")) == 0
    out = capsys.readouterr().out
    assert out.count("note: ") == 10 and "12 note(s)" in out and "2 more not shown; --all-notes" in out
    assert main(check_args(copy, "val2017", "--all-notes")) == 0
    assert capsys.readouterr().out.count("note: ") == 12


# ----------------------------------------------------------------------------- files present


def test_missing_images_are_counted_before_any_decode(coco_like, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(coco_like, copy)
    dataset = CocoInstances.from_paths(dataset_paths(copy, "val2017"))
    names = [dataset.coco.imgs[i]["file_name"] for i in dataset.image_ids]
    assert dataset.missing_images() == [] and dataset.check_files() is None
    (copy / "val2017" / names[4]).unlink()
    (copy / "val2017" / names[1]).unlink()
    truncated = copy / "val2017" / names[2]
    truncated.write_bytes(truncated.read_bytes()[:50])  # present: a stat does not decode
    assert dataset.missing_images() == [copy / "val2017" / names[1], copy / "val2017" / names[4]]
    assert missing_files(copy / "val2017", names) == dataset.missing_images()
    with pytest.raises(DatasetError) as error:
        dataset.check_files()
    assert str(error.value) == (f"{copy / 'val2017'}: 2 of 6 image files (listed in "
                                f"{copy / 'annotations' / 'instances_val2017.json'}) are missing "
                                f"(first: {names[1]}, {names[4]})")


def test_missing_images_folder_is_named(coco_like, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(coco_like, copy)
    shutil.rmtree(copy / "val2017")
    with pytest.raises(DatasetError) as error:
        CocoInstances.from_paths(dataset_paths(copy, "val2017")).check_files()
    assert str(error.value) == (f"{copy / 'val2017'}: images folder not found; the 6 images of "
                                f"{copy / 'annotations' / 'instances_val2017.json'} go here")


def test_missing_panoptic_pngs_are_counted_too(coco_like, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(coco_like, copy)
    dataset = CocoInstances.from_paths(dataset_paths(copy, "train2017"), include_empty=False)
    pngs = sorted((copy / "annotations" / "panoptic_train2017").iterdir())
    pngs[0].unlink()
    with pytest.raises(DatasetError, match=r"panoptic_train2017: 1 of 5 panoptic PNGs \(listed in .*"
                                           r"panoptic_train2017.json\) are missing \(first: "
                                           + pngs[0].name):
        dataset.check_files()


# ----------------------------------------------------------------------------- data coco-like


def test_coco_like_command_writes_coco_2017_layout(coco_like):
    for split in ("train2017", "val2017"):
        assert len(list((coco_like / split).glob("000*.jpg"))) == 6
        assert len(list((coco_like / "annotations" / f"panoptic_{split}").glob("*.png"))) == 6
        for kind in ("instances", "panoptic"):
            assert (coco_like / "annotations" / f"{kind}_{split}.json").is_file()


def test_coco_like_command_refuses_bad_sizes_in_one_line(tmp_path, capsys):
    assert main(["data", "coco-like", "--out", str(tmp_path / "c"), "--images", "3"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --images 3: need at least 6 per split, one for "
                                               "each COCO property the dataset holds")
    assert main(["data", "coco-like", "--out", str(tmp_path / "c"), "--max-side", "32"]) == 2
    assert capsys.readouterr().err.strip() == "error: --max-side 32: need at least 64 px"
    assert not (tmp_path / "c").exists()
