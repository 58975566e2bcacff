"""The command line: each data subcommand end to end, and one-line errors instead of tracebacks."""

import json
import subprocess
import sys

import pytest
from pycocotools.coco import COCO

from blendmask_edu.cli.main import main
from blendmask_edu.training.engine import native_bfloat16
from conftest import QUICK, TINY_RUN


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


# ----------------------------------------------------------------------------- model commands

@pytest.fixture(scope="module")
def trained_run(small_shapes, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    code = main(["train", "--preset", "tiny", "--data", str(small_shapes), "--out", str(run),
                 *TINY_RUN, "--blendmask.num_bases", "3"])
    assert code == 0
    return run


def _one_error_line(capsys):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


def test_train_applies_overrides_and_writes_the_run(trained_run):
    config = json.loads((trained_run / "config.json").read_text())
    assert config["name"] == "tiny" and config["blendmask"]["num_bases"] == 3
    assert config["solver"]["batch_size"] == 4
    for name in ("last.pt", "metrics.jsonl", "coco_instances_results.json", "pr_curve.png"):
        assert (trained_run / name).stat().st_size > 0, name
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert set(metrics["bbox"]) == set(metrics["segm"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert metrics["images"] == 2 and metrics["detections"] > 0


def test_evaluate_reproduces_the_training_run_metrics(trained_run, small_shapes, tmp_path, capsys):
    code = main(["evaluate", "--checkpoint", str(trained_run / "last.pt"), "--data",
                 str(small_shapes), "--out", str(tmp_path), "--preset", "tiny", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "AP   AP50   AP75" in out and "mask" in out
    evaluated = json.loads((tmp_path / "metrics.json").read_text())
    trained = json.loads((trained_run / "metrics.json").read_text())
    assert evaluated == trained  # the checkpoint holds the model that was evaluated after training
    assert (tmp_path / "pr_curve.png").stat().st_size > 0
    results = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert results and {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(results[0])


def test_predict_draws_each_image_and_names_results_by_stem(trained_run, small_shapes, tmp_path):
    import shutil

    source = sorted((small_shapes / "val").glob("*.png"))[0]
    numbered, named = tmp_path / "000000000042.png", tmp_path / "photo.png"
    shutil.copy(source, numbered)
    shutil.copy(source, named)
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(trained_run / "last.pt"), str(numbered),
                 str(named), "--out", str(out), "--score-thresh", "0.0"])
    assert code == 0
    assert (out / "000000000042.png").stat().st_size > 0 and (out / "photo.png").stat().st_size > 0
    results = json.loads((out / "coco_instances_results.json").read_text())
    assert {r["image_id"] for r in results} == {42, 1}  # the stem when numeric, else the index


def test_checkpoint_errors_are_one_line(trained_run, small_shapes, tmp_path, capsys):
    checkpoint = trained_run / "last.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("not a checkpoint")
    cases = [(truncated, [], "truncated"), (not_a_checkpoint, [], str(not_a_checkpoint)),
             (tmp_path / "missing.pt", [], "not found"),
             (checkpoint, ["--preset", "coco_r50_3x"], "preset 'tiny', not 'coco_r50_3x'"),
             (checkpoint, ["--preset", "nope"], "presets: coco_r50_3x")]
    for path, extra, expected in cases:
        code = main(["evaluate", "--checkpoint", str(path), "--data", str(small_shapes),
                     "--out", str(tmp_path / "eval"), "--quiet", *extra])
        line = _one_error_line(capsys)
        assert code == 2 and expected in line, line
        if "preset" not in expected:
            assert str(path) in line


def test_argument_and_data_errors_are_one_line(trained_run, small_shapes, tmp_path, capsys):
    missing = tmp_path / "no_data"
    train = ["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--quiet"]
    cases = [
        (train + ["--data", str(missing)], [str(missing), "blendmask-edu data shapes --out"]),
        (["train", "--preset", "small", "--data", str(small_shapes), "--out", str(tmp_path)],
         ["unknown preset 'small'", "presets: coco_r50_3x", "tiny"]),
        (train + ["--data", str(small_shapes), "--solver.base_lrr", "0.1"],
         ["--solver.base_lrr", "solver.base_lr"]),
        (train + ["--data", str(small_shapes), "--solver.base_lr", "fast"],
         ["--solver.base_lr fast", "expected float"]),
        (train + ["--data", str(small_shapes), "--solver.base_lr", "0.1", "0.2"],
         ["--solver.base_lr 0.1 0.2: takes one value, not 2"]),
        (train + ["--data", str(small_shapes), "--train-split", "train2017"],
         ["instances_train2017.json", "the splits under", "train, val", "--train-split"]),
        (["evaluate", "--checkpoint", str(trained_run / "last.pt"), "--data", str(small_shapes),
          "--split", "test", "--out", str(tmp_path / "eval")],
         ["instances_test.json", "train, val", "--split"]),
    ]
    for argv, expected in cases:
        code = main(argv)
        line = _one_error_line(capsys)
        assert code == 2 and all(e in line for e in expected), line


def _broken_image(folder):
    path = folder / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)  # a PNG signature, then nothing
    return path


def test_predict_skips_unreadable_images_and_exits_1(trained_run, small_shapes, tmp_path, capsys):
    import shutil

    good = sorted((small_shapes / "val").glob("*.png"))
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    shutil.copy(good[0], first)
    shutil.copy(good[1], second)
    broken, absent = _broken_image(tmp_path), tmp_path / "absent.png"
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(trained_run / "last.pt"), str(first), str(broken),
                 str(absent), str(second), "--out", str(out), "--score-thresh", "0.0"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 1, captured.err
    assert len(lines) == 3, captured.err  # one per unreadable image, then the summary
    assert lines[0].startswith(f"warning: {broken}: cannot read the image") and "skipped" in lines[0]
    assert lines[1].startswith(f"warning: {absent}: image file not found")
    assert lines[2] == (f"error: 2 of 4 images could not be read (skipped: {broken}, {absent})")
    assert {p.name for p in out.glob("*.png")} == {"first.png", "second.png"}
    results = json.loads((out / "coco_instances_results.json").read_text())
    assert {r["image_id"] for r in results} == {0, 3}  # the places of the readable images


def test_predict_with_no_readable_image_loads_nothing(tmp_path, capsys):
    """Nothing to do: exit 2 before the checkpoint is even read (this one does not exist)."""
    broken, out = _broken_image(tmp_path), tmp_path / "out"
    code = main(["predict", "--checkpoint", str(tmp_path / "absent.pt"), str(broken),
                 str(tmp_path / "absent.png"), "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 3
    assert lines[-1] == "error: none of the 2 image(s) could be read; nothing written"
    assert not out.exists()


def _renamed_copy(source, root, names, categories=None):
    """A copy of the dataset at ``source`` with its splits renamed (``names``: old → new) and,
    if given, its thing categories replaced by ``categories`` (annotations keep their ids)."""
    import shutil

    (root / "annotations").mkdir(parents=True)
    for old, new in names.items():
        shutil.copytree(source / old, root / new)
        instances = json.loads((source / "annotations" / f"instances_{old}.json").read_text())
        if categories is not None:
            instances["categories"] = categories
        (root / "annotations" / f"instances_{new}.json").write_text(json.dumps(instances))
        panoptic = source / "annotations" / f"panoptic_{old}.json"
        if panoptic.exists() and categories is None:
            shutil.copy(panoptic, root / "annotations" / f"panoptic_{new}.json")
            shutil.copytree(source / "annotations" / f"panoptic_{old}",
                            root / "annotations" / f"panoptic_{new}")
    return root


def test_evaluate_finds_coco_split_names(trained_run, small_shapes, tmp_path, capsys):
    """A root with val2017 only: ``evaluate`` without --split reads it, names it and writes
    the panoptic predictions under COCO's name; the metrics are those of the training run."""
    data = _renamed_copy(small_shapes, tmp_path / "coco", {"val": "val2017"})
    out = tmp_path / "eval"
    code = main(["evaluate", "--checkpoint", str(trained_run / "last.pt"), "--data", str(data),
                 "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"on 2 val2017 images of {data}" in printed and str(out / "panoptic_val2017.json") in printed
    assert (out / "panoptic_val2017.json").is_file() and (out / "panoptic_val2017").is_dir()
    assert json.loads((out / "metrics.json").read_text()) == json.loads(
        (trained_run / "metrics.json").read_text())


def test_a_missing_image_stops_before_the_first_step(trained_run, small_shapes, tmp_path, capsys):
    data = _renamed_copy(small_shapes, tmp_path / "data", {"train": "train", "val": "val"})
    for name in sorted(p.name for p in (data / "train").glob("*.png"))[:2]:
        (data / "train" / name).unlink()
    (sorted((data / "val").glob("*.png"))[0]).unlink()
    run = tmp_path / "run"
    code = main(["train", "--preset", "tiny", "--data", str(data), "--out", str(run), *QUICK])
    line = _one_error_line(capsys)
    assert code == 2 and not (run / "last.pt").exists()
    assert line.startswith(f"error: {data / 'train'}: 2 of ") and "image files" in line
    assert "missing" in line and "instances_train.json" in line
    code = main(["evaluate", "--checkpoint", str(trained_run / "last.pt"), "--data", str(data),
                 "--out", str(tmp_path / "eval"), "--quiet"])
    line = _one_error_line(capsys)
    assert code == 2 and line.startswith(f"error: {data / 'val'}: 1 of 2 image files")


def test_evaluate_refuses_a_checkpoint_of_other_classes(trained_run, small_shapes, tmp_path,
                                                        capsys):
    """The 5-class shapes model on data whose ids 1..5 are COCO's person, bicycle, car, ...:
    one line naming both class lists and the flag; with the flag it runs."""
    from blendmask_edu.data.coco_categories import COCO_THING_CATEGORIES

    data = _renamed_copy(small_shapes, tmp_path / "coco", {"val": "val"},
                         categories=[dict(c) for c in COCO_THING_CATEGORIES])
    argv = ["evaluate", "--checkpoint", str(trained_run / "last.pt"), "--data", str(data),
            "--out", str(tmp_path / "eval"), "--quiet"]
    code = main(argv)
    line = _one_error_line(capsys)
    assert code == 2 and not (tmp_path / "eval").exists()
    for part in (str(trained_run / "last.pt"), "model's 5 classes (1 circle,",
                 "80 classes (1 person, 2 bicycle, 3 car, ...)", "--allow-class-mismatch"):
        assert part in line, line
    assert main(argv + ["--allow-class-mismatch"]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["images"] == 2


def test_offline_imagenet_weights_name_the_command_line_options(small_shapes, tmp_path,
                                                                 monkeypatch, capsys):
    """No network (the download is replaced by one that fails) and an empty hub cache: one
    line naming the URL, --backbone.weights_path and --backbone.pretrained false; exit 2."""
    import urllib.error

    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    code = main(["train", "--preset", "tiny", "--data", str(small_shapes), "--out",
                 str(tmp_path / "run"), *QUICK, "--backbone.width", "64",
                 "--backbone.pretrained", "true"])
    line = _one_error_line(capsys)
    assert code == 2
    for part in ("ImageNet weights of ResNet-18", "offline",
                 "https://download.pytorch.org/models/resnet18-f37072fd.pth",
                 "--backbone.weights_path FILE", "--backbone.pretrained false",
                 str(tmp_path / "torch_home")):
        assert part in line, line


def test_bad_checkpoint_from_the_shell_has_no_traceback(small_shapes, tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"PK\x03\x04 half a zip file")
    result = subprocess.run([sys.executable, "-m", "blendmask_edu", "evaluate", "--checkpoint",
                             str(bad), "--data", str(small_shapes), "--out", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and str(bad) in result.stderr


def test_overrides_parse_and_type_check():
    from blendmask_edu.cli.common import UsageError, apply_overrides, parse_overrides
    from blendmask_edu.presets import get_config

    pairs = parse_overrides(["--solver.base_lr", "0.01", "--blendmask.num-bases=8",
                             "--fcos.sizes_of_interest", "[16, 40]", "--solver.clip_grad_norm", "null"])
    assert pairs[1] == ("blendmask.num_bases", "8")
    cfg = apply_overrides(get_config("tiny"), pairs)
    assert (cfg.solver.base_lr, cfg.blendmask.num_bases) == (0.01, 8)
    assert cfg.fcos.sizes_of_interest == (16.0, 40.0) and cfg.solver.clip_grad_norm is None
    for bad in (["--solver", "3"], ["--blendmask.num_bases", "2.5"], ["--solver.amp", "yes"],
                ["--solver.base_lr", "0.1", "0.2"], ["--nope.key", "1"], ["stray"], ["--seed"]):
        with pytest.raises(UsageError):
            apply_overrides(get_config("tiny"), parse_overrides(bad))


def test_list_overrides_as_typed_on_the_command_line():
    """``--input.train_short_sizes 320 352`` (unquoted: several tokens up to the next option),
    ``320,352``, ``"320 352"``, ``320`` and JSON, through the real argument parser."""
    from blendmask_edu.cli.common import apply_overrides, parse_overrides
    from blendmask_edu.cli.main import build_parser
    from blendmask_edu.presets import get_config

    head = ["train", "--preset", "tiny", "--data", "D", "--out", "R"]
    for typed, expected in ([["320", "352"], (320, 352)], [["320,352"], (320, 352)],
                            [["320 352"], (320, 352)], [["320"], (320,)],
                            [["[320, 352]"], (320, 352)]):
        args, extra = build_parser().parse_known_args(
            head + ["--input.train_short_sizes", *typed, "--max-iter", "3", "--seed=4"])
        assert args.max_iter == 3  # the option after the values is still an option
        cfg = apply_overrides(get_config("tiny"), parse_overrides(extra))
        assert (cfg.input.train_short_sizes, cfg.seed) == (expected, 4), typed
    assert parse_overrides(["--input.train_short_sizes", "320", "352", "--seed", "1"]) == [
        ("input.train_short_sizes", ("320", "352")), ("seed", "1")]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A finished demo (tiny_fast): (its argv, what it printed, its output folder)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("demo")
    argv = ["demo", "--data", str(root / "shapes"), "--out", str(root / "demo"), "--train", "8",
            "--val", "2", "--size", "64", *QUICK]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return argv, printed.getvalue(), root / "demo"


def test_demo_writes_the_report_and_metrics(demo_run):
    _, printed, out = demo_run
    assert "demo finished in" in printed and f"report: {out / 'report.md'}" in printed
    for name in ("report.md", "metrics.json", "loss_curve.png", "predictions.png", "bases.png",
                 "pr_curve.png", "coco_instances_results.json", "last.pt"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 2 and "AP" in metrics["segm"]
    report = (out / "report.md").read_text()
    assert "| box |" in report and "| mask |" in report and "preset `tiny_fast`" in report
    # tiny_fast trains in bfloat16 autocast where the CPU computes it natively
    precision = "bfloat16 autocast" if native_bfloat16() else "float32"
    assert "trained for 2 iterations" in report and f"trained in {precision};" in report
    for picture in ("loss_curve.png", "predictions.png", "bases.png", "panoptic.png"):
        assert f"({picture})" in report
    # the tiny preset is panoptic: the Table 1 row, with the values of metrics.json
    assert "| PQ | SQ | RQ | PQ_th | PQ_st | mIoU | AP_box | AP_th |" in report
    assert f"| {metrics['PQ']:.1f} | {metrics['SQ']:.1f} |" in report
    assert (out / "panoptic.png").stat().st_size > 0 and (out / "panoptic_val.json").is_file()


def test_demo_rerun_resumes_the_finished_run(demo_run, capsys):
    argv, _, out = demo_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert main(argv) == 0
    rerun = capsys.readouterr()
    assert "nothing to train" in rerun.out + rerun.err
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert "trained for 2 iterations" in (out / "report.md").read_text()
