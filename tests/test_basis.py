"""Bottom module: bases shapes, the bilinear fuse, norms, the thing-semantic target and loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from blendmask_edu.modeling.basis import (
    BasisModule,
    basis_semantic_loss,
    fuse_levels,
    thing_semantic_targets,
)

CIN = 16


def pyramid(height, width, n=2, levels=3, channels=CIN, seed=0):
    """Random P3.. of a padded (height, width) batch: level l has stride 8 · 2^l."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, channels, height // (8 * 2 ** k), width // (8 * 2 ** k), generator=g)
            for k in range(levels)]


@pytest.mark.parametrize("size", [(128, 160), (256, 256)])
@pytest.mark.parametrize("num_bases", [4, 2])
def test_bases_shape_stride_4(size, num_bases):
    torch.manual_seed(0)
    module = BasisModule(CIN, num_bases=num_bases, channels=32, semantic_classes=6)
    out = module(pyramid(*size))
    h, w = size
    assert out["bases"].shape == (2, num_bases, h // 4, w // 4)
    assert out["thing_logits"].shape == (2, 6, h // 8, w // 8)


def test_extra_levels_are_ignored_and_too_few_rejected():
    torch.manual_seed(0)
    module = BasisModule(CIN, channels=8, num_convs=1).eval()
    features = pyramid(64, 64, levels=5)
    assert torch.equal(module(features)["bases"], module(features[:3])["bases"])
    with pytest.raises(ValueError):
        module(features[:2])


def test_fuse_is_bilinear_sum_of_refined_levels():
    torch.manual_seed(0)
    module = BasisModule(CIN, channels=8, num_convs=2, norm="GN").eval()
    features = pyramid(64, 96)
    with torch.no_grad():
        refined = [layer(f) for layer, f in zip(module.refine, features)]
        size = refined[0].shape[-2:]
        fused = refined[0] + sum(F.interpolate(r, size=size, mode="bilinear", align_corners=False)
                                 for r in refined[1:])
        torch.testing.assert_close(fuse_levels(refined), fused)
        x = module.tower(fused)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        expected = module.bases(module.after_upsample(x))
        torch.testing.assert_close(module(features)["bases"], expected)
    # not nearest: the resized level differs from its nearest-neighbour version
    nearest = F.interpolate(refined[1], size=size, mode="nearest")
    assert not torch.allclose(nearest, F.interpolate(refined[1], size=size, mode="bilinear",
                                                     align_corners=False))


def test_layers_as_specified():
    module = BasisModule(CIN, channels=32, num_convs=3, semantic_classes=5)
    block = module.refine[0]
    assert block[0].bias is None and isinstance(block[1], torch.nn.BatchNorm2d)
    assert type(block[1]) is torch.nn.BatchNorm2d  # plain BN, not SyncBN (docs/model.md pitfall 14)
    assert len(module.tower) == 3
    assert module.bases.kernel_size == (1, 1) and module.bases.bias is not None
    # kaiming-uniform with a = 1: bound sqrt(3 / fan_in)
    bound = (3 / (CIN * 9)) ** 0.5
    assert block[0].weight.abs().max() <= bound
    assert block[0].weight.abs().max() > 0.9 * bound
    head = module.semantic_head
    assert head[0][0].in_channels == CIN and head[0][0].bias is None
    assert isinstance(head[0][1], torch.nn.BatchNorm2d) and head[2].out_channels == 5
    plain = BasisModule(CIN, channels=8, norm="none")
    assert plain.refine[0][0].bias is not None and isinstance(plain.refine[0][1], torch.nn.Identity)


def test_bases_are_linear_and_bn_runs_on_cpu_train_and_eval():
    torch.manual_seed(0)
    module = BasisModule(CIN, channels=32, semantic_classes=4)
    features = pyramid(128, 128)
    train = module.train()(features)
    assert (train["bases"] < 0).any() and (train["bases"] > 0).any()  # no ReLU/sigmoid at the end
    evaluated = module.eval()(features)
    assert evaluated["thing_logits"] is None  # head runs in training only, unless asked
    assert module(features, with_semantic=True)["thing_logits"].shape == (2, 4, 16, 16)
    assert torch.isfinite(evaluated["bases"]).all()
    assert not torch.allclose(train["bases"], evaluated["bases"])  # running stats vs batch stats


def test_batch_of_one_in_training():
    torch.manual_seed(0)
    out = BasisModule(CIN, channels=8, semantic_classes=3).train()(pyramid(64, 64, n=1))
    assert out["bases"].shape == (1, 4, 16, 16) and out["thing_logits"].shape == (1, 3, 8, 8)


def test_semantic_head_off():
    module = BasisModule(CIN, channels=8, semantic_classes=None)
    assert module.semantic_head is None
    assert module.train()(pyramid(64, 64))["thing_logits"] is None


def test_gradients_reach_every_refine_layer_and_the_semantic_head():
    torch.manual_seed(0)
    module = BasisModule(CIN, channels=8, semantic_classes=3).train()
    out = module(pyramid(64, 64))
    (out["bases"].square().mean() + out["thing_logits"].mean()).backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_thing_semantic_targets_later_annotation_wins_and_padding_is_background():
    a = torch.zeros(6, 7, dtype=torch.uint8)
    a[0:4, 0:4] = 1
    b = torch.zeros(6, 7, dtype=torch.uint8)
    b[2:6, 2:6] = 1
    masks = torch.stack([a, b])
    labels = torch.tensor([3, 0])
    out = thing_semantic_targets([masks, torch.zeros(0, 5, 5, dtype=torch.uint8)],
                                 [labels, torch.zeros(0, dtype=torch.int64)], (8, 8))
    assert out.shape == (2, 8, 8) and out.dtype == torch.int64
    expected = torch.zeros(8, 8, dtype=torch.int64)
    expected[0:4, 0:4] = 4  # label 3 + 1
    expected[2:6, 2:6] = 1  # label 0 + 1, painted later: wins in the overlap
    assert torch.equal(out[0], expected)
    assert (out[0, 6:] == 0).all() and (out[0, :, 7:] == 0).all()  # padding
    assert (out[1] == 0).all()  # an image without instances

    swapped = thing_semantic_targets([masks.flip(0)], [labels.flip(0)], (6, 7))
    assert (swapped[0, 2:4, 2:4] == 4).all()  # the order, not the label, decides


def test_thing_semantic_targets_match_a_painting_loop():
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(9, 20, 24, generator=g) > 0.6).to(torch.uint8)
    labels = torch.randint(0, 5, (9,), generator=g)
    painted = torch.zeros(32, 32, dtype=torch.int64)
    for m, label in zip(masks, labels):
        painted[:20, :24][m.bool()] = label + 1
    assert torch.equal(thing_semantic_targets([masks], [labels], (32, 32))[0], painted)


def test_semantic_loss_samples_top_left_pixel_and_works_for_one_image():
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 5, (1, 32, 48), generator=g)
    logits = torch.randn(1, 5, 4, 6, generator=g)
    expected = F.cross_entropy(logits, targets[:, ::8, ::8]) * 0.3
    torch.testing.assert_close(basis_semantic_loss(logits, targets), expected)
    # the official downsampling picks the same pixels
    official = F.interpolate(targets[:, None].float(), scale_factor=1 / 8, mode="nearest")
    assert torch.equal(official[:, 0].long(), targets[:, ::8, ::8])
    torch.testing.assert_close(basis_semantic_loss(logits, targets, weight=1.0), expected / 0.3)


def test_semantic_loss_batch_and_background_padding_counts():
    g = torch.Generator().manual_seed(1)
    targets = torch.zeros(2, 16, 16, dtype=torch.int64)
    targets[:, :8, :8] = 2
    logits = torch.randn(2, 3, 2, 2, generator=g, requires_grad=True)
    loss = basis_semantic_loss(logits, targets)
    expected = F.cross_entropy(logits, targets[:, ::8, ::8]) * 0.3
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        basis_semantic_loss(logits, torch.zeros(2, 15, 16, dtype=torch.int64))


def test_runs_under_autocast():
    torch.manual_seed(0)
    module = BasisModule(CIN, channels=8, semantic_classes=3).train()
    targets = thing_semantic_targets([torch.ones(1, 40, 64, dtype=torch.bool)] * 2,
                                     [torch.tensor([1])] * 2, (64, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(pyramid(64, 64))
        loss = basis_semantic_loss(out["thing_logits"], targets)
    assert out["bases"].shape == (2, 4, 16, 16) and loss.dtype == torch.float32
    loss.backward()


def test_basis_roles_reads_hand_made_bases():
    """Four hand-made bases: x, y, the objects' union and an outline; each role finds its basis."""
    from blendmask_edu.modeling.basis import basis_roles

    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 8:40, 8:40] = 1
    masks[1, 44:60, 28:60] = 1
    union = masks.any(dim=0).float()[None, None]
    small = torch.nn.functional.avg_pool2d(union, 4)[0, 0]  # (16, 16)
    inside = (small >= 0.5).float()
    grown = torch.nn.functional.max_pool2d(inside[None, None], 3, 1, 1)[0, 0]
    shrunk = -torch.nn.functional.max_pool2d(-inside[None, None], 3, 1, 1)[0, 0]
    xs = torch.arange(16.0).expand(16, 16)
    bases = torch.stack([xs, xs.T, inside, grown - shrunk])
    roles = basis_roles(bases, masks)
    assert set(roles) == {"objectness", "boundary", "left_right", "top_bottom"}
    assert all(v.shape == (4,) for v in roles.values())
    torch.testing.assert_close(roles["left_right"][0], torch.tensor(1.0))
    torch.testing.assert_close(roles["top_bottom"][1], torch.tensor(1.0))
    torch.testing.assert_close(roles["objectness"][2], torch.tensor(1.0))
    torch.testing.assert_close(roles["boundary"][3], torch.tensor(1.0))
    assert roles["objectness"].argmax() == 2 and roles["boundary"].argmax() == 3
    # no objects: every correlation is defined (zeros), not NaN
    empty = basis_roles(bases, torch.zeros(0, 64, 64, dtype=torch.uint8))
    assert all(torch.isfinite(v).all() for v in empty.values())
