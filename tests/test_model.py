import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stages.model import (MAX_PARAMS, NORMS, DownStage, GroupNormFP32, Residual, WSConv2d, build_model,
                          count_params, dirac_init_, make_norm)
from stages.params import load_params
from tests.conftest import ROOT


@pytest.mark.parametrize("norm", NORMS)
def test_committed_params_build_every_norm_under_budget(norm):
    p = load_params(ROOT / "params.yaml").model
    model = build_model(norm, **dataclasses.asdict(p))
    assert count_params(model) < MAX_PARAMS
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_factory_builds_the_right_layers():
    bn = make_norm("bn", 16)
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 16
    gn = make_norm("gn", 16, gn_groups=4)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 4 and gn.num_channels == 16
    ln = make_norm("ln", 16, gn_groups=4)
    assert isinstance(ln, nn.GroupNorm) and ln.num_groups == 1 and ln.num_channels == 16


def test_ln_normalizes_each_sample_over_c_h_w():
    x = torch.randn(3, 4, 5, 5) * 7 + 2
    y = make_norm("ln", 4)(x)
    flat = y.reshape(3, -1)
    assert torch.allclose(flat.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(flat.var(1, unbiased=False), torch.ones(3), atol=1e-3)


@pytest.mark.parametrize("kind", ["batch", "", "LN", "in"])
def test_factory_rejects_unknown_kinds(kind):
    with pytest.raises(ValueError, match="unknown norm"):
        make_norm(kind, 8)


@pytest.mark.parametrize("groups", [0, 3, 5, 32])
def test_factory_rejects_groups_that_do_not_divide(groups):
    with pytest.raises(ValueError, match="divide"):
        make_norm("gn", 16, gn_groups=groups)


def test_only_the_norm_layers_differ_between_models():
    names = {}
    for norm in NORMS:
        model = build_model(norm, (8, 16, 16), (1, 1), 4, head_width=32)
        names[norm] = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    assert names["bn"] == names["gn"] == names["ln"]


def test_budget_is_enforced_with_the_offending_config_named():
    with pytest.raises(ValueError, match=r"model.widths=\[64, 128\] with model.depth=\[1\].*budget"):
        build_model("bn", (64, 128), (1,), 8)


def test_down_stage_is_residual_and_halves_resolution():
    stage = DownStage(8, 16, "bn", 4)
    x = torch.randn(2, 8, 8, 8)
    out = stage(x)
    assert out.shape == (2, 16, 4, 4)
    # with the main branch silenced, the output is exactly the pooled, zero-padded input
    nn.init.zeros_(stage.main[0].weight)
    stage.eval()
    out = stage(x)
    shortcut = nn.functional.max_pool2d(x, 2)
    main = stage.main(x)
    assert torch.allclose(out[:, :8], shortcut + main[:, :8])
    assert torch.allclose(out[:, 8:], main[:, 8:])


def test_stage_without_pool_keeps_the_resolution_with_an_identity_shortcut():
    torch.manual_seed(0)
    stage = DownStage(8, 16, "bn", 4, pool=False).eval()
    x = torch.randn(2, 8, 8, 8)
    out = stage(x)
    assert out.shape == (2, 16, 8, 8)
    main = stage.main(x)
    assert torch.allclose(out[:, :8], x + main[:, :8])
    assert torch.allclose(out[:, 8:], main[:, 8:])


@pytest.mark.parametrize("stem_pool", [False, True])
def test_stem_pool_moves_the_first_halving_into_the_stem(stem_pool):
    model = build_model("bn", (8, 16, 16), (0, 1), 4, stem_pool=stem_pool)
    stem, first = model.features[0], model.features[1]
    x = torch.randn(2, 3, 32, 32)
    assert stem(x).shape == ((2, 8, 16, 16) if stem_pool else (2, 8, 32, 32))
    assert first(stem(x)).shape == (2, 16, 16, 16)  # same resolution after the first stage either way
    assert model.forward_features(x).shape == (2, 16, 8, 8)
    # a pooling stem: conv, max-pool, then norm and GELU on the pooled map
    pool = [nn.MaxPool2d] if stem_pool else []
    assert [type(m) for m in stem] == [nn.Conv2d, *pool, nn.BatchNorm2d, nn.GELU]


@pytest.mark.parametrize("head_width", [0, 24])
def test_head_width_adds_a_1x1_conv_norm_gelu_before_pooling(head_width):
    model = build_model("gn", (8, 16, 16), (0, 1), 4, head_width=head_width)
    x = torch.randn(2, 3, 32, 32)
    assert model.forward_features(x).shape == (2, head_width or 16, 8, 8)
    assert model.head.in_features == (head_width or 16) and model(x).shape == (2, 10)
    last = model.features[-1]
    if head_width:  # 16 * 24 conv weights + 2 * 24 norm parameters, no conv bias
        assert [type(m) for m in last] == [nn.Conv2d, GroupNormFP32, nn.GELU] and last[0].kernel_size == (1, 1)
        assert count_params(last) == 16 * 24 + 2 * 24
    else:
        assert last.inner[0][0].kernel_size == (3, 3)  # the last residual block: no head conv


def test_weight_std_standardizes_every_conv_filter_and_keeps_the_parameters():
    torch.manual_seed(0)
    plain = build_model("ln", (8, 16, 16), (1, 1), 4, head_width=32)
    ws = build_model("ln", (8, 16, 16), (1, 1), 4, head_width=32, weight_std=True)
    ws.load_state_dict(plain.state_dict())  # same parameter names and shapes
    convs = [m for m in ws.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6 and all(isinstance(m, WSConv2d) for m in convs)
    conv = convs[2]
    x = torch.randn(2, conv.in_channels, 6, 6)
    w = conv.weight
    standard = (w - w.mean((1, 2, 3), keepdim=True)) / (w.var((1, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
    assert torch.allclose(conv(x), F.conv2d(x, standard, padding=1), atol=1e-5)
    # the output barely depends on the scale and offset of each filter's weights (exactly, but for eps)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(conv.out_channels, 1, 1, 1) * 5 + 0.5).add_(torch.randn(conv.out_channels, 1, 1, 1))
    assert torch.allclose(conv(x), F.conv2d(x, standard, padding=1), rtol=1e-2, atol=1e-2)


def test_dirac_init_makes_the_convs_after_the_stem_partial_identities():
    torch.manual_seed(0)
    rand = build_model("gn", (8, 16, 16), (1, 1), 4, head_width=32, weight_std=True)
    torch.manual_seed(0)
    model = build_model("gn", (8, 16, 16), (1, 1), 4, head_width=32, weight_std=True)
    dirac_init_(model)
    pairs = [(m, r) for m, r in zip(model.modules(), rand.modules()) if isinstance(m, nn.Conv2d)]
    stem, convs, head = pairs[0], pairs[1:-1], pairs[-1]
    assert [m.kernel_size for m, _ in pairs] == [(3, 3)] * 5 + [(1, 1)]
    assert torch.equal(stem[0].weight, stem[1].weight) and torch.equal(head[0].weight, head[1].weight)
    for m, r in convs:
        k = m.in_channels  # 8 or 16; c_out >= c_in
        eye = torch.zeros(k, k, 3, 3)
        eye[torch.arange(k), torch.arange(k), 1, 1] = 1
        assert torch.equal(m.weight[:k], eye)
        assert torch.equal(m.weight[k:], r.weight[k:])  # the other filters keep their random init
        # weight-standardized, a dirac filter computes its channel minus 1/n of the 3x3 window's sum over
        # all n = 9 * c_in inputs, divided by the filter's std
        x, n = torch.randn(2, k, 5, 5), 9 * k
        window_sum = F.conv2d(x, torch.ones(1, k, 3, 3), padding=1)
        expected = (x - window_sum / n) / (1 / n - 1 / n ** 2 + 1e-5) ** 0.5
        assert torch.allclose(m(x)[:, :k], expected, atol=1e-4)


@pytest.mark.parametrize("depth", [(1,), (0, 1, 0)])
def test_depth_needs_one_entry_per_stage(depth):
    with pytest.raises(ValueError, match="depth"):
        build_model("bn", (8, 16, 16), depth, 4)


def test_fp32_group_norm_matches_pytorch_and_keeps_the_dtype():
    torch.manual_seed(0)
    ours, ref = make_norm("gn", 16, gn_groups=4), nn.GroupNorm(4, 16)
    nn.init.normal_(ref.weight)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 16, 5, 5)
    assert torch.allclose(ours(x), ref(x), atol=1e-6)
    assert ours(x.bfloat16()).dtype == torch.bfloat16


def test_block_convs_groups_each_stages_layers_into_residual_blocks():
    """depth (3, 1) with 2 layers per block: stage 1 gets a 2-layer and a 1-layer block, stage 2 one 1-layer
    block; the same layers and parameters as one-layer blocks, only the skips differ."""
    def blocks(block_convs):
        model = build_model("bn", (8, 16, 16), (3, 1), 4, block_convs=block_convs)
        return model, [len(m.inner) for m in model.features if isinstance(m, Residual)]
    (paired, sizes), (single, ones) = blocks(2), blocks(1)
    assert sizes == [2, 1, 1] and ones == [1, 1, 1, 1]
    assert [p.shape for p in paired.parameters()] == [p.shape for p in single.parameters()]


def test_block_convs_below_one_is_refused():
    with pytest.raises(ValueError, match="block_convs"):
        build_model("bn", (8, 16, 16), (1, 1), 4, block_convs=0)
