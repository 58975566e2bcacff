"""Top module: the attention conv (the definition), its K-major layout, and the conv evaluated at
chosen locations only (what the model runs), checked against the dense conv read at those
locations by a plain loop."""

from __future__ import annotations

import dataclasses

import torch

from blendmask_edu import build_model, get_config
from blendmask_edu.modeling.attention import TopModule, attentions_at
from blendmask_edu.modeling.fcos import FCOSHead

SHAPES = [(8, 10), (4, 5), (2, 3)]  # three levels of a padded 64 × 80 batch


def level_maps(n=2, channels=5, shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, channels, h, w, generator=g) for h, w in shapes]


def test_channels_and_init():
    torch.manual_seed(0)
    top = TopModule(64, num_bases=4, attn_size=14)
    assert top.out_channels == 784 and top.attn.out_channels == 784
    assert top.attn.kernel_size == (3, 3) and top.attn.stride == (1, 1)
    assert top.attn.padding == (1, 1)
    assert abs(top.attn.weight.std().item() - 0.01) < 5e-4
    assert abs(top.attn.weight.mean().item()) < 5e-4
    assert (top.attn.bias == 0).all()
    assert sum(1 for m in top.modules() if isinstance(m, torch.nn.Conv2d)) == 1


def test_shared_weights_on_every_level_and_no_activation():
    torch.manual_seed(0)
    top = TopModule(5, num_bases=2, attn_size=3)
    features = level_maps()
    outputs = top(features)
    assert [o.shape for o in outputs] == [(2, 18, h, w) for h, w in SHAPES]
    for f, o in zip(features, outputs):
        torch.testing.assert_close(o, torch.nn.functional.conv2d(
            f, top.attn.weight, top.attn.bias, padding=1))
    assert (outputs[0] < 0).any()


def test_reads_the_fcos_box_tower():
    torch.manual_seed(0)
    head = FCOSHead(8, num_classes=3, num_convs=1, channels=6, norm="GN")
    top = TopModule(head.out_channels, num_bases=2, attn_size=2)
    tower = head(level_maps(channels=8))["box_tower"]
    assert [a.shape[1] for a in top(tower)] == [8] * 3


def test_k_major_layout():
    top = TopModule(1, num_bases=2, attn_size=3)
    with torch.no_grad():
        top.attn.weight.zero_()
        top.attn.bias.copy_(torch.arange(18.0))
    vector = top([torch.zeros(1, 1, 1, 1)])[0][0, :, 0, 0]  # (K·M·M,)
    maps = vector.reshape(2, 3, 3)
    k, i, j = 1, 2, 0
    assert maps[k, i, j] == k * 9 + i * 3 + j


def read_at(maps, image_index, locations_index):
    """The reference: each image's per-level maps (N, X, h, w) flattened level-major, then row
    locations_index[d] of image image_index[d] — a plain loop, no clamping or masking."""
    per_image = [torch.cat([m[i].permute(1, 2, 0).reshape(-1, m.shape[1]) for m in maps])
                 for i in range(maps[0].shape[0])]  # N × (L, X)
    rows = [per_image[i][j] for i, j in zip(image_index.tolist(), locations_index.tolist())]
    return torch.stack(rows) if rows else maps[0].new_zeros((0, maps[0].shape[1]))


def test_attentions_at_keep_the_gradient_of_the_features_and_the_weight():
    top = TopModule(5, num_bases=2, attn_size=3)
    tower = [f.requires_grad_() for f in level_maps()]
    top.at_locations(tower, torch.tensor([1, 0]), torch.tensor([85, 3])).sum().backward()
    assert tower[0].grad.abs().sum() > 0 and tower[1].grad.abs().sum() > 0  # 3 in P3, 85 in P4
    assert tower[2].grad.abs().sum() == 0 and top.attn.weight.grad.abs().sum() > 0


def test_attentions_at_under_autocast():
    top = TopModule(5, num_bases=2, attn_size=3)
    tower = level_maps()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rows = top.at_locations(tower, torch.tensor([0, 1]), torch.tensor([0, 104]))
        dense = top(tower)
    assert rows.shape == (2, 18) and rows.dtype == dense[0].dtype
    torch.testing.assert_close(rows[1].float(), dense[2][1, :, 1, 1].float(), rtol=0.02, atol=0.02)


def test_attentions_at_equal_the_dense_conv_read_at_the_locations():
    torch.manual_seed(0)
    top = TopModule(5, num_bases=2, attn_size=3).double()
    with torch.no_grad():
        top.attn.bias.normal_()  # a non-zero bias, to check it is added once
    tower = [f.double() for f in level_maps(n=3, channels=5, seed=3)]
    g = torch.Generator().manual_seed(4)
    total = sum(h * w for h, w in SHAPES)
    image_index = torch.randint(0, 3, (40,), generator=g)
    locations_index = torch.randint(0, total, (40,), generator=g)
    # corners and edges of every level (the zero padding), first and last location of each
    locations_index[:12] = torch.tensor([0, 9, 70, 79, 35, 80, 84, 95, 99, 100, 102, 105])
    dense = read_at(top(tower), image_index, locations_index)
    sparse = top.at_locations(tower, image_index, locations_index)
    assert sparse.shape == (40, 18) and sparse.dtype == torch.float64
    torch.testing.assert_close(sparse, dense, rtol=0, atol=1e-10)


def test_attentions_at_one_level_and_no_bias():
    g = torch.Generator().manual_seed(5)
    features = torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(7, 3, 3, 3, generator=g, dtype=torch.float64)
    image_index, locations_index = torch.tensor([1, 0, 1]), torch.tensor([0, 23, 9])
    expected = torch.nn.functional.conv2d(features, weight, padding=1)  # (2, 7, 4, 6)
    rows = attentions_at([features], image_index, locations_index, weight)
    torch.testing.assert_close(rows, torch.stack([expected[1, :, 0, 0], expected[0, :, 3, 5],
                                                  expected[1, :, 1, 3]]), rtol=0, atol=1e-10)


def test_attentions_at_no_detections():
    top = TopModule(5, num_bases=2, attn_size=3)
    empty = torch.zeros(0, dtype=torch.int64)
    assert top.at_locations(level_maps(), empty, empty).shape == (0, 18)


def test_blendmask_inference_attentions_are_the_dense_ones():
    torch.manual_seed(0)
    cfg = get_config("tiny")
    cfg = dataclasses.replace(cfg, fcos=dataclasses.replace(cfg.fcos, score_thresh=0.0))
    model = build_model(cfg).eval()
    images = [torch.rand(3, 96, 128), torch.rand(3, 64, 80)]
    with torch.no_grad():
        out = model(images)
        dense = model.top(model.features(images).head["box_tower"])
    for i, det in enumerate(out):
        assert len(det["attentions"]) == cfg.fcos.max_detections
        index = det["locations_index"]
        torch.testing.assert_close(det["attentions"],
                                   read_at(dense, torch.full_like(index, i), index))
