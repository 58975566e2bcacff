"""Top module: the attention conv, its K-major layout, gathering and flattening attentions, and
the conv evaluated at chosen locations only (what inference uses)."""

from __future__ import annotations

import dataclasses

import torch

from blendmask_edu import build_model, get_config
from blendmask_edu.modeling.attention import (TopModule, attentions_at, flatten_attentions,
                                     gather_attentions)
from blendmask_edu.modeling.fcos import FCOSHead, flatten_predictions

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


def test_gather_equals_indexing_the_flattened_image():
    attn = level_maps(n=3, channels=7, seed=1)
    per_image = [torch.cat([a[i].permute(1, 2, 0).reshape(-1, 7) for a in attn])  # (L, KMM)
                 for i in range(3)]
    total = per_image[0].shape[0]
    g = torch.Generator().manual_seed(2)
    image_index = torch.randint(0, 3, (50,), generator=g)
    locations_index = torch.randint(0, total, (50,), generator=g)
    # make sure every level and both ends of the range are hit
    locations_index[:4] = torch.tensor([0, 80, 100, total - 1])
    expected = torch.stack([per_image[i][j] for i, j in zip(image_index.tolist(),
                                                            locations_index.tolist())])
    torch.testing.assert_close(gather_attentions(attn, image_index, locations_index), expected)


def test_gather_no_detections():
    attn = level_maps(channels=4)
    empty = torch.zeros(0, dtype=torch.int64)
    assert gather_attentions(attn, empty, empty).shape == (0, 4)


def test_gather_keeps_the_gradient():
    attn = [a.requires_grad_() for a in level_maps()]
    gather_attentions(attn, torch.tensor([1, 0]), torch.tensor([85, 3])).sum().backward()
    assert attn[0].grad.abs().sum() == 5 and attn[1].grad.abs().sum() == 5
    assert attn[2].grad.abs().sum() == 0


def test_flatten_matches_fcos_order():
    attn = level_maps(n=2, channels=6)
    flat = flatten_attentions(attn)
    torch.testing.assert_close(flat, flatten_predictions(attn))
    # level-major, then image, then row-major (y, x): row of (level 1, image 1, y 2, x 3)
    h0, w0 = SHAPES[0]
    h1, w1 = SHAPES[1]
    row = 2 * h0 * w0 + 1 * h1 * w1 + 2 * w1 + 3
    torch.testing.assert_close(flat[row], attn[1][1, :, 2, 3])
    assert flat.shape == (2 * sum(h * w for h, w in SHAPES), 6)


def test_gather_under_autocast():
    top = TopModule(5, num_bases=2, attn_size=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attn = top(level_maps())
        rows = gather_attentions(attn, torch.tensor([0, 1]), torch.tensor([0, 104]))
    assert rows.shape == (2, 18) and rows.dtype == attn[0].dtype
    torch.testing.assert_close(rows[1], attn[2][1, :, 1, 1])  # 104 = 80 + 20 + 1·3 + 1


def test_attentions_at_equal_the_dense_conv_then_gather():
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
    dense = gather_attentions(top(tower), image_index, locations_index)
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
        out = model(images, return_internals=True)
        head = model.features(images)[3]
        dense = model.top(head["box_tower"])
    for i, det in enumerate(out):
        assert len(det["attentions"]) == cfg.fcos.max_detections
        index = det["locations_index"]
        torch.testing.assert_close(det["attentions"],
                                   gather_attentions(dense, torch.full_like(index, i), index))
