"""Tests of backbone.py: ResNet + FPN shapes, P6/P7 wiring, freezing, norms, weights loading."""

from __future__ import annotations

import math
import os
import urllib.error

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from blendmask_edu.modeling.backbone import (IMAGENET_MEAN, IMAGENET_STD, LastLevelP6, ResNetFPN,
                                    build_resnet_fpn, fold_frozen_norms, narrow_resnet)
from blendmask_edu.modeling.layers import FoldedFrozenBatchNorm2d, FrozenBNConv2d

LEVELS = [(3, 4, 5, 6, 7), (3, 4, 5), (3, 4, 5, 6), (2, 3, 4, 5, 6, 7)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("levels", LEVELS, ids=lambda lv: f"P{lv[0]}-P{lv[-1]}")
def test_output_keys_shapes_and_strides(depth, levels):
    model = build_resnet_fpn(depth, fpn_channels=64, levels=levels).eval()
    assert isinstance(model, ResNetFPN)
    assert model.level_names == [f"p{lv}" for lv in levels]
    assert model.strides == [2 ** lv for lv in levels]
    assert model.out_channels == 64
    for H, W in [(128, 160), (256, 256)]:
        with torch.no_grad():
            out = model(torch.randn(1, 3, H, W))
        assert list(out) == model.level_names
        h, w = H, W
        for name, stride in zip(model.level_names, model.strides):
            if stride <= 32:
                h, w = H // stride, W // stride
            else:  # P6, P7: stride-2 convs with padding 1 give ceil(previous / 2)
                h, w = math.ceil(h / 2), math.ceil(w / 2)
            assert out[name].shape == (1, 64, h, w), name


def test_spec_shapes_800x1216():
    """A padded 800×1216 input gives P3..P7 of 100×152, 50×76, 25×38, 13×19, 7×10."""
    model = build_resnet_fpn(18, fpn_channels=16, width=16).eval()  # R-50 takes 6 s here
    with torch.no_grad():
        out = model(torch.randn(1, 3, 800, 1216))
    assert [tuple(p.shape[-2:]) for p in out.values()] == [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)]


def test_p6_from_p5_and_p7_from_relu_p6():
    model = build_resnet_fpn(18, fpn_channels=64).eval()
    extra = model.fpn.extra_blocks
    assert isinstance(extra, LastLevelP6P7) and extra.use_P5
    with torch.no_grad():
        out = model(torch.randn(2, 3, 128, 160))
        torch.testing.assert_close(out["p6"], extra.p6(out["p5"]))
        torch.testing.assert_close(out["p7"], extra.p7(F.relu(out["p6"])))
        assert not torch.allclose(out["p7"], extra.p7(out["p6"]))  # the ReLU matters


def test_p6_only_block():
    model = build_resnet_fpn(18, fpn_channels=64, levels=(3, 4, 5, 6)).eval()
    assert isinstance(model.fpn.extra_blocks, LastLevelP6)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
        torch.testing.assert_close(out["p6"], model.fpn.extra_blocks.p6(out["p5"]))
    assert build_resnet_fpn(18, fpn_channels=64, levels=(3, 4, 5)).fpn.extra_blocks is None


@pytest.mark.parametrize("fold", [False, True], ids=["unfolded", "folded"])
def test_parity_with_torchvision_retinanet_backbone(fold):
    """Same weights → same P3..P7 as torchvision's resnet_fpn_backbone + LastLevelP6P7 (RetinaNet):
    exactly unfolded, up to float rounding with the frozen norms folded into the convs."""
    theirs = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3,
                                 returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256)).eval()
    ours = build_resnet_fpn(18, fpn_channels=256, fold_frozen_bn=fold).eval()
    ours.load_state_dict(theirs.state_dict())  # the same key names: body.*, fpn.*
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    tolerance = dict(rtol=1e-4, atol=1e-4) if fold else {}
    for p, key in zip(a.values(), b):
        torch.testing.assert_close(p, b[key], **tolerance)


def test_fpn_init_is_c2_xavier_fill():
    """kaiming-uniform a=1 → |w| ≤ sqrt(3 / fan_in), bias 0, for laterals, outputs, P6 and P7."""
    for levels in [(3, 4, 5, 6, 7), (3, 4, 5, 6)]:
        model = build_resnet_fpn(18, fpn_channels=64, levels=levels)
        convs = [m for m in model.fpn.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == 6 + levels[-1] - 5
        for conv in convs:
            fan_in = conv.weight[0].numel()
            assert conv.weight.abs().max() <= math.sqrt(3 / fan_in) + 1e-6
            assert conv.weight.std() > 0.5 * math.sqrt(1 / fan_in)  # not left at zero
            assert torch.all(conv.bias == 0)


STEM = ["conv1", "bn1"]


@pytest.mark.parametrize("frozen_stages, frozen", [(0, []), (1, STEM), (2, [*STEM, "layer1"]),
                                                   (5, [*STEM, "layer1", "layer2", "layer3", "layer4"])])
def test_frozen_stages_requires_grad(frozen_stages, frozen):
    model = build_resnet_fpn(18, norm="bn", frozen_stages=frozen_stages, fpn_channels=64)
    for name, p in model.body.named_parameters():
        assert p.requires_grad == (name.split(".")[0] not in frozen), name
    assert all(p.requires_grad for p in model.fpn.parameters())


def test_frozen_bn_stays_frozen_in_train_mode():
    model = build_resnet_fpn(18, norm="bn", frozen_stages=2, fpn_channels=64).train()
    assert not model.body.bn1.training and not model.body.layer1.training
    assert model.body.layer2.training and model.fpn.training
    before = model.body.layer1[0].bn1.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(model.body.layer1[0].bn1.running_mean, before)
    assert not torch.equal(model.body.layer2[0].bn1.running_mean, torch.zeros(128))  # trainable BN updated
    model.eval().train()
    assert not model.body.layer1[0].bn1.training and model.body.layer2[0].bn1.training


@pytest.mark.parametrize("norm, kind", [("frozen_bn", FrozenBatchNorm2d), ("bn", nn.BatchNorm2d),
                                        ("gn", nn.GroupNorm)])
def test_norm_types(norm, kind):
    model = build_resnet_fpn(18, norm=norm, frozen_stages=0, fpn_channels=64)
    kinds = (FrozenBatchNorm2d, nn.BatchNorm2d, nn.GroupNorm)
    norms = [m for m in model.body.modules() if isinstance(m, kinds)]
    assert len(norms) == 20 and all(isinstance(m, kind) for m in norms)  # 1 stem + 16 in blocks + 3 shortcuts
    if norm == "gn":
        assert all(m.num_groups == 32 for m in norms)
    if norm == "frozen_bn":  # buffers only, never updated, whatever the mode
        assert not any(True for m in norms for _ in m.parameters())
        before = [m.running_var.clone() for m in norms]
        model.train()(torch.randn(2, 3, 64, 64))
        assert all(torch.equal(m.running_var, v) for m, v in zip(norms, before))


def test_narrow_resnet_matches_torchvision_at_width_64():
    ours = narrow_resnet(18, 64, nn.BatchNorm2d).state_dict()
    theirs = {k: v for k, v in resnet18().state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize("depth, c5", [(18, 128), (50, 512)])
def test_narrow_width(depth, c5):
    model = build_resnet_fpn(depth, width=16, norm="gn", frozen_stages=0, fpn_channels=32, levels=(3, 4, 5))
    assert model.body.conv1.out_channels == 16 and model.fpn.inner_blocks[-1][0].in_channels == c5
    assert model.body.bn1.num_groups == 16  # GroupNorm(32) needs ≥ 32 channels: gcd(32, 16) groups
    out = model(torch.randn(2, 3, 64, 64))
    assert [tuple(p.shape) for p in out.values()] == [(2, 32, 8, 8), (2, 32, 4, 4), (2, 32, 2, 2)]


def test_gradients_reach_fpn_and_unfrozen_stages():
    model = build_resnet_fpn(18, frozen_stages=2, fpn_channels=64).train()
    out = model(torch.randn(2, 3, 64, 64))
    sum(p.square().mean() for p in out.values()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.body.conv1.weight.grad is None and model.body.layer1[0].conv1.weight.grad is None
    assert model.body.layer2[0].conv1.weight.grad is not None


def test_bfloat16_autocast():
    model = build_resnet_fpn(18, norm="gn", frozen_stages=0, fpn_channels=64).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 64, 64))
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in out.values())
    sum(p.float().mean() for p in out.values()).backward()
    assert model.body.conv1.weight.grad is not None


def test_imagenet_constants():
    assert len(IMAGENET_MEAN) == len(IMAGENET_STD) == 3
    assert all(0 < m < 1 for m in IMAGENET_MEAN) and all(0 < s < 1 for s in IMAGENET_STD)


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
def test_weights_from_local_file(tmp_path, norm):
    saved = resnet18()  # random init, classifier included: its fc.* keys are ignored
    path = tmp_path / "r18.pth"
    torch.save(saved.state_dict(), path)
    model = build_resnet_fpn(18, weights_path=str(path), norm=norm, fpn_channels=64)
    torch.testing.assert_close(model.body.conv1.weight, saved.conv1.weight)
    torch.testing.assert_close(model.body.layer4[1].bn2.running_var, saved.layer4[1].bn2.running_var)
    assert not model.body.conv1.weight.requires_grad  # frozen after loading


def test_narrow_trunk_weights_round_trip(tmp_path):
    """``weights_path`` also takes a state dict of a narrow or GN trunk saved from ``model.body``."""
    first = build_resnet_fpn(18, width=16, norm="gn", frozen_stages=0, levels=(3, 4, 5))
    torch.save(first.body.state_dict(), tmp_path / "narrow.pth")
    second = build_resnet_fpn(18, width=16, norm="gn", levels=(3, 4, 5), weights_path=tmp_path / "narrow.pth")
    torch.testing.assert_close(second.body.state_dict(), first.body.state_dict())


def test_weights_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        build_resnet_fpn(18, weights_path=str(tmp_path / "nothing.pth"))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="corrupt.pth"):
        build_resnet_fpn(18, weights_path=str(corrupt))
    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(ValueError, match="list.pth.*not a state dict"):
        build_resnet_fpn(18, weights_path=str(a_list))
    state = resnet18().state_dict()
    state["conv1.weight"] = torch.zeros(32, 3, 7, 7)
    del state["layer4.1.conv2.weight"]
    wrong = tmp_path / "wrong.pth"
    torch.save(state, wrong)
    with pytest.raises(ValueError, match=r"wrong.pth.*missing \(1\): layer4.1.conv2.weight.*conv1.weight"):
        build_resnet_fpn(18, weights_path=str(wrong))
    state = resnet18().state_dict()
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    extra = tmp_path / "extra.pth"
    torch.save(state, extra)
    with pytest.raises(ValueError, match=r"extra.pth.*ResNet-18.*unexpected \(1\): layer5.0.conv1.weight"):
        build_resnet_fpn(18, weights_path=str(extra))
    with pytest.raises(ValueError, match="extra.pth.*ResNet-50.*missing.*shape"):  # wrong depth
        build_resnet_fpn(50, weights_path=str(extra))


def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty hub cache

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


def test_offline_download_says_where_to_put_the_file(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    with pytest.raises(RuntimeError) as info:
        build_resnet_fpn(18, pretrained=True)
    message = str(info.value)
    checkpoints = os.path.join(torch.hub.get_dir(), "checkpoints")
    assert checkpoints.startswith(str(tmp_path))
    assert os.path.join(checkpoints, "resnet18-f37072fd.pth") in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "weights_path" in message and "offline" in message


def test_pretrained_from_hub_cache_without_network(monkeypatch, tmp_path):
    """Placing the file where the offline error says makes ``pretrained=True`` work offline."""
    _offline(monkeypatch, tmp_path)
    saved = resnet18()
    checkpoints = os.path.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(checkpoints)
    torch.save(saved.state_dict(), os.path.join(checkpoints, "resnet18-f37072fd.pth"))
    model = build_resnet_fpn(18, pretrained=True, fpn_channels=64)
    torch.testing.assert_close(model.body.layer3[0].conv1.weight, saved.layer3[0].conv1.weight)


@pytest.mark.parametrize("kwargs, match", [
    (dict(depth=152), "18, 34, 50, 101"), (dict(levels=(4, 5, 6)), "levels"),
    (dict(levels=(3, 5, 7)), "contiguous"), (dict(levels=(3, 4)), "levels"),
    (dict(norm="sync_bn"), "frozen_bn, bn, gn"), (dict(frozen_stages=6), "frozen_stages"),
    (dict(pretrained=True, norm="gn"), "gn"), (dict(pretrained=True, width=32), "width"),
    (dict(width=0), "width"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_resnet_fpn(**{"depth": 18, **kwargs})


def test_input_must_be_padded_to_32():
    model = build_resnet_fpn(18, fpn_channels=64)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 100, 128))


def _frozen_pair(frozen_stages=2):
    """(folded, unfolded): two R-18 FPNs with the same weights and the same frozen-BN statistics
    and affines, taken from a BatchNorm trunk that measured them on random images (from random
    init frozen BN is the identity, which folding leaves alone; statistics measured keep the
    activations near 1, so float rounding stays small)."""
    measured = build_resnet_fpn(18, norm="bn", frozen_stages=0, fpn_channels=32, levels=(3, 4, 5))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in measured.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = None  # the running statistics = the average over batches
                module.weight.uniform_(0.5, 1.5, generator=g)
                module.bias.normal_(0.0, 0.2, generator=g)
        for _ in range(3):
            measured.train()(torch.rand(4, 3, 64, 64, generator=g))
    state = {k: v for k, v in measured.state_dict().items() if "num_batches_tracked" not in k}
    pair = []
    for fold in (True, False):
        model = build_resnet_fpn(18, frozen_stages=frozen_stages, fpn_channels=32,
                                 levels=(3, 4, 5), fold_frozen_bn=fold)
        model.load_state_dict(state)
        pair.append(model)
    return tuple(pair)


def _close(a, b, what=""):
    """Equal up to float rounding: max |a − b| ≤ 1e-5 · max |b| (the outputs reach ~150)."""
    error, scale = (a - b).abs().max().item(), b.abs().max().item()
    assert error <= 1e-5 * scale, f"{what}: max difference {error:.3g} at scale {scale:.3g}"


@pytest.mark.parametrize("depth, norms", [(18, 20), (50, 53)])
def test_fold_frozen_norms_folds_every_norm_after_a_conv(depth, norms):
    """Stem + every block's norms + the shortcuts' norms; the keys stay torchvision's."""
    model = build_resnet_fpn(depth, fpn_channels=32, fold_frozen_bn=False)
    keys = list(model.state_dict())
    assert fold_frozen_norms(model.body) == norms
    assert list(model.state_dict()) == keys
    kinds = [type(m) for m in model.body.modules()]
    assert kinds.count(FoldedFrozenBatchNorm2d) == kinds.count(FrozenBNConv2d) == norms
    assert FrozenBatchNorm2d not in kinds  # none left unfolded
    assert fold_frozen_norms(model.body) == 0  # folding twice changes nothing


def test_folded_trunk_computes_the_unfolded_numbers_and_gradients():
    folded, unfolded = _frozen_pair()
    x = torch.randn(2, 3, 96, 64)
    with torch.inference_mode():  # the cached folded weights
        for a, b in zip(folded.eval()(x).values(), unfolded.eval()(x).values()):
            _close(a, b, "inference")
    grads = []  # in float64: in float32 a ReLU whose input rounds to the other side of 0
    for model in (folded, unfolded):  # moves gradients by ~1e-3; training folds inside the graph
        model.double().train().zero_grad()
        weights = torch.linspace(-1, 1, 8, dtype=torch.float64)
        sum((p * weights[: p.shape[-1]]).sum() for p in model(x.double()).values()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and "body.layer2.0.conv1.weight" in grads[0]
    for name in grads[0]:
        _close(grads[0][name], grads[1][name], name)


def test_the_kept_folded_weight_follows_every_change():
    """The cache is keyed on versions: an in-place weight update, a new state dict and a move to
    channels-last all give the numbers of the unfolded trunk changed the same way."""
    folded, unfolded = _frozen_pair(frozen_stages=0)
    x = torch.randn(1, 3, 64, 64)

    def same():
        with torch.no_grad():
            for a, b in zip(folded.eval()(x).values(), unfolded.eval()(x).values()):
                _close(a, b)

    same()  # fills the cache
    with torch.no_grad():  # as an optimizer step does
        for model in (folded, unfolded):
            model.body.layer1[0].conv1.weight.mul_(-2.0)
            model.body.conv1.weight.add_(0.1)
    same()
    state = unfolded.state_dict()
    state["body.layer3.1.bn2.running_var"] = state["body.layer3.1.bn2.running_var"] * 3
    state["body.bn1.running_mean"] = state["body.bn1.running_mean"] + 1
    for model in (folded, unfolded):
        model.load_state_dict(state)
    same()
    for model in (folded, unfolded):
        model.to(memory_format=torch.channels_last)
    same()
