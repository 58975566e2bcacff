"""Dataset statistics against the annotation files read another way."""

import json
from collections import Counter

import pytest

from blendmask_edu.data.stats import dataset_statistics
from blendmask_edu.data.synthetic import generate_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, num_train=2, num_val=40, seed=5, progress=False)
    return root


def test_statistics_match_the_files(shapes):
    stats = dataset_statistics(shapes, "val")
    instances = json.loads((shapes / "annotations" / "instances_val.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    counts = Counter(names[a["category_id"]] for a in instances["annotations"])
    assert stats["images"] == 40 and stats["instances"] == len(instances["annotations"])
    assert stats["class_counts"] == {name: counts.get(name, 0) for name in names.values()}
    sides = [max(a["bbox"][2:]) for a in instances["annotations"]]
    assert stats["size_ratio"] == pytest.approx(max(sides) / min(sides))
    # The generator's "split" tag and the parts counted on the decoded masks agree.
    tagged = sum("split" in image["hard_cases"] for image in instances["images"]) / 40
    assert stats["split_fraction"] == pytest.approx(tagged)
    assert sum(stats["stuff_fraction"].values()) <= 1.0 + 1e-9
    assert stats["stuff_fraction"]["sky"] > 0.05 and stats["stuff_fraction"]["ground"] > 0.05
