"""Presets, the JSON round trip and typed overrides."""

import dataclasses

import pytest

from blendmask_edu.config import describe, from_dict, load_config, save_config, to_dict
from blendmask_edu.config_override import override
from blendmask_edu.presets import PRESETS, get_config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_round_trip_is_exact(name, tmp_path):
    cfg = get_config(name)
    assert from_dict(to_dict(cfg)) == cfg
    save_config(cfg, tmp_path / "cfg.json")
    assert load_config(tmp_path / "cfg.json") == cfg
    assert isinstance(load_config(tmp_path / "cfg.json").backbone.levels, tuple)


def test_paper_preset_values():
    cfg = get_config("coco_r50_3x")
    assert (cfg.solver.batch_size, cfg.solver.base_lr, cfg.solver.max_iter) == (16, 0.01, 270_000)
    assert cfg.solver.steps == (210_000, 250_000) and cfg.solver.warmup_iters == 1000
    assert cfg.input.train_short_sizes == (640, 672, 704, 736, 768, 800)
    assert cfg.backbone.levels == (3, 4, 5, 6, 7) and cfg.fcos.sizes_of_interest == (64, 128, 256, 512)


def test_override_parses_types_and_rejects_unknown_keys():
    cfg = get_config("tiny")
    assert override(cfg, "solver.base_lr", "0.05").solver.base_lr == 0.05
    assert override(cfg, "solver.base_lr", "1").solver.base_lr == 1.0
    assert override(cfg, "backbone.levels", "[3, 4]").backbone.levels == (3, 4)
    assert override(cfg, "solver.clip_grad_norm", "null").solver.clip_grad_norm is None
    assert cfg.solver.base_lr != 0.05  # the original is untouched
    with pytest.raises(ValueError, match="unknown config key"):
        override(cfg, "solver.learning_rate", "0.1")
    with pytest.raises(ValueError, match="expected float"):
        override(cfg, "solver.base_lr", "fast")
    with pytest.raises(ValueError, match="expected int"):
        override(cfg, "blendmask.num_bases", "2.5")
    assert override(cfg, "blendmask.pooler", "roi_pool").blendmask.pooler == "roi_pool"
    with pytest.raises(ValueError, match="unknown Config key"):
        from_dict({**to_dict(cfg), "typo": 1})


def test_override_reads_a_name_as_one_name_and_rejects_a_bool_for_a_number():
    cfg = get_config("tiny")
    assert override(cfg, "panoptic.stuff_names", "sky").panoptic.stuff_names == ("sky",)  # not s, k, y
    with pytest.raises(ValueError, match="expected a list of str"):
        override(cfg, "panoptic.stuff_names", "[1, 2]")
    with pytest.raises(ValueError, match="expected float"):
        override(cfg, "solver.base_lr", "true")  # not 1.0
    with pytest.raises(ValueError, match="expected a list of float"):
        override(cfg, "fcos.sizes_of_interest", "[true, 2]")
    assert override(cfg, "panoptic.stuff_names", '["sky"]').panoptic.stuff_names == ("sky",)


@pytest.mark.parametrize("value", ["320", "320,352", "320 352", " 320 , 352 ", "[320, 352]",
                                   ("320", "352"), ("320",)])
def test_list_overrides_take_the_forms_a_user_types(value):
    """One number, commas, spaces (a quoted value), JSON, or several tokens (an unquoted
    ``--input.train_short_sizes 320 352``, handed over as a tuple)."""
    sizes = override(get_config("tiny"), "input.train_short_sizes", value).input.train_short_sizes
    texts = [value] if isinstance(value, str) else value
    expected = tuple(int(t) for text in texts for t in text.strip("[] ").replace(",", " ").split())
    assert sizes == expected and all(type(s) is int for s in sizes)


def test_list_overrides_split_names_at_commas_only_and_scalars_take_one_value():
    cfg = get_config("tiny")
    names = override(cfg, "panoptic.stuff_names", "sky,traffic light").panoptic.stuff_names
    assert names == ("sky", "traffic light")
    assert override(cfg, "panoptic.stuff_names", ("sky", "traffic light")).panoptic.stuff_names == names
    assert override(cfg, "fcos.sizes_of_interest", "16").fcos.sizes_of_interest == (16.0,)
    assert override(cfg, "solver.steps", "").solver.steps == ()
    assert override(cfg, "solver.base_lr", ("0.5",)).solver.base_lr == 0.5
    with pytest.raises(ValueError, match=r"solver.base_lr 0.1 0.2: takes one value, not 2; "
                                         r"expected float"):
        override(cfg, "solver.base_lr", ("0.1", "0.2"))
    with pytest.raises(ValueError, match=r"input.train_short_sizes 320,x: expected a list of int"):
        override(cfg, "input.train_short_sizes", "320,x")
    with pytest.raises(ValueError, match=r"expected a list of int"):
        override(cfg, "input.train_short_sizes", ("320", "3.5"))


def test_get_config_unknown_and_fresh_copies():
    with pytest.raises(ValueError, match="presets"):
        get_config("huge")
    a, b = get_config("tiny"), get_config("tiny")
    assert a == b and a is not b and dataclasses.replace(a, seed=1) != b


def test_describe_lists_every_leaf():
    text = describe(get_config("tiny"))
    assert "solver.base_lr" in text and "backbone.depth" in text and "fcos.nms_thresh" in text


def test_short_preset_is_the_paper_model_with_a_scaled_schedule(tmp_path):
    short, paper = get_config("coco_r50_short"), get_config("coco_r50_3x")
    for section in ("backbone", "fcos", "blendmask", "input"):  # the paper's model and inputs
        assert getattr(short, section) == getattr(paper, section), section
    assert short.backbone.pretrained and short.blendmask.num_bases == 4
    solver = short.solver
    # the linear scaling rule: LR ∝ total batch size
    assert solver.base_lr == pytest.approx(paper.solver.base_lr * solver.batch_size / 16)
    assert (solver.batch_size, solver.amp, solver.checkpoint_period) == (8, True, 1000)
    assert [s / solver.max_iter for s in solver.steps] == [0.75, 0.9]
    assert solver.warmup_iters == 1000
    assert from_dict(to_dict(short)) == short
    save_config(short, tmp_path / "short.json")
    assert load_config(tmp_path / "short.json") == short
