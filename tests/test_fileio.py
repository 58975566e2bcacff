"""JSON files written one way (fileio): strict, atomic, and canonical when asked."""

import json
import math

import numpy as np
import pytest
import torch

from blendmask_edu.fileio import append_jsonl, json_ready, write_json


def _strict(text):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_json_ready_makes_plain_strict_data():
    assert json_ready({"a": (1, float("inf"))}) == {"a": [1, None]}
    data = json_ready({3: np.float32(0.5), "t": torch.tensor([1.5, math.nan]),
                       "n": np.int64(7), "nested": [{"x": -math.inf}], "s": "text"})
    assert data == {"3": 0.5, "t": [1.5, None], "n": 7, "nested": [{"x": None}], "s": "text"}
    assert type(data["n"]) is int and type(data["3"]) is float


def test_write_json_strict_atomic_and_indented(tmp_path):
    path = tmp_path / "deep" / "metrics.json"  # the folder is created
    write_json(path, {"b": math.nan, "a": np.float64(2.0)}, indent=2)
    text = path.read_text()
    assert text == '{\n  "b": null,\n  "a": 2.0\n}\n'  # insertion order kept, NaN as null
    assert _strict(text) == {"b": None, "a": 2.0}
    write_json(path, [1, 2])  # replaces the file in one step; no temporary file is left
    assert path.read_text() == "[1, 2]\n"
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_write_json_leaves_the_old_file_when_the_data_is_not_json(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert path.read_text() == '{"ok": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left behind


def test_canonical_bytes_are_sorted_and_compact(tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    write_json(one, {"b": [1, {"d": 2, "c": 3}], "a": math.inf}, canonical=True)
    write_json(two, {"a": math.inf, "b": [1, {"c": 3, "d": 2}]}, canonical=True)
    assert one.read_bytes() == two.read_bytes() == b'{"a":null,"b":[1,{"c":3,"d":2}]}\n'


def test_append_jsonl_one_strict_line_per_entry(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"iter": 1, "loss": torch.tensor(0.25)})
    append_jsonl(path, {"iter": 2, "loss": math.nan})
    lines = path.read_text().splitlines()
    assert [_strict(line) for line in lines] == [{"iter": 1, "loss": 0.25},
                                                 {"iter": 2, "loss": None}]
    assert path.read_text().endswith("}\n")
