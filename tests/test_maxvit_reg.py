"""MaxViT with register tokens: parity with vit-pytorch, sizes, variants, what the reference got wrong."""
import copy

import pytest
import torch
import torch.nn.functional as F

import timm
import timm_vitvariants
from timm.layers import freeze_batch_norm_2d
from torchvision.ops.misc import FrozenBatchNorm2d  # what timm freezes BatchNorm2d into
from timm_vitvariants.maxvit_reg import POINTWISE_GEMM_MAX_PIXELS, ConvBn, MaxViTReg, SqueezeExcite

from parity import assert_parity, randomize_

from vit_pytorch.max_vit_with_registers import MaxViT


def tiny(**kwargs) -> MaxViTReg:
    args = dict(embed_dim=32, depths=(1, 1), head_dim=16, window_size=4, num_classes=10)
    return timm.create_model('maxvit_reg_tiny', **dict(args, **kwargs))


@pytest.mark.parametrize('config, size', [
    (dict(dim=32, depth=(1, 2), dim_head=16, window_size=4, num_register_tokens=2), (32, 64)),
    (dict(dim=32, depth=(2, 1, 1), dim_head=8, dim_conv_stem=24, window_size=2, mbconv_expansion_rate=3,
          mbconv_shrinkage_rate=0.5, num_register_tokens=1, channels=1, dropout=0.2), (64, 32)),
    (dict(dim=64, depth=(1, 1, 1, 1), dim_head=32, window_size=7, num_register_tokens=4), (224, 224)),
])
def test_parity_with_vit_pytorch(config, size):
    torch.manual_seed(0)
    ref = randomize_(MaxViT(num_classes=7, **config))
    ours = timm_vitvariants.from_vit_pytorch(ref)
    assert isinstance(ours, MaxViTReg)
    x = torch.randn(2, config.get('channels', 3), *size)
    assert_parity(ref, ours, x)


def test_conversion_keeps_mode_and_config():
    ref = MaxViT(num_classes=5, dim=32, depth=(1, 1), dim_head=16, window_size=4, dim_conv_stem=16)
    ours = timm_vitvariants.from_vit_pytorch(ref.train())
    assert ours.training
    assert ours.model_args['embed_dim'] == (32, 64) and ours.model_args['stem_width'] == 16
    assert ours.num_classes == 5 and ours.in_chans == 3


@pytest.mark.parametrize('name, params_m, gmacs', [
    ('maxvit_reg_tiny', 30.5, 5.7), ('maxvit_reg_small', 67.9, 12.0), ('maxvit_reg_base', 118.5, 24.8)])
def test_variant_size(name, params_m, gmacs):
    from timm_vitvariants.info import variant_info
    info = variant_info(name)
    assert info.params_m == pytest.approx(params_m, rel=0.01)
    assert info.gmacs == pytest.approx(gmacs, rel=0.02)


@pytest.mark.parametrize('size', [(32, 32), (32, 64), (64, 32), (96, 128)])
def test_valid_sizes_give_features_at_strides(size):
    model = tiny(depths=(1, 1, 1), window_size=2).eval()
    features = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    for f, stride in zip(features, (2, 4, 8, 16)):
        assert f.shape[-2:] == (size[0] // stride, size[1] // stride)


def test_window_size_is_per_model():
    model = timm.create_model('maxvit_reg_tiny', window_size=8, depths=(1, 1, 1, 1), num_classes=3).eval()
    table = model.stages[0].blocks[0].block_attn.rel_pos.relative_position_bias_table
    assert table.shape[0] == 15 * 15 + 1  # offsets in an 8x8 window, plus the registers' slot
    with torch.no_grad():
        assert model(torch.randn(1, 3, 256, 256)).shape == (1, 3)  # no padding at 256
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 3)  # padded windows


@pytest.mark.parametrize('size', [(256, 256), (320, 480), (375, 500), (32, 32), (100, 36)])
def test_any_size_features_at_ceil_of_strides(size):
    model = tiny(depths=(1, 1, 1, 1), window_size=7).eval()
    with torch.no_grad():
        features = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    for f, stride in zip(features, (2, 4, 8, 16, 32)):
        assert f.shape[-2:] == (-(-size[0] // stride), -(-size[1] // stride))


def test_padding_reaches_no_real_token(monkeypatch):
    """The zeros that pad a map to whole windows are masked keys (for the registers too) and cropped: filling
    them with noise instead changes no output and no feature; at sizes that need none, nothing is padded."""
    import timm_vitvariants.maxvit_reg as maxvit_module
    torch.manual_seed(0)
    model = tiny(depths=(1, 2, 1), window_size=3, num_registers=2).eval()
    x = torch.randn(2, 3, 50, 38)  # maps 13x10, 7x5, 4x3: every stage pads
    with torch.no_grad():
        expected = model.forward_intermediates(x)
    real_pad = maxvit_module.pad_to_multiple
    padded = []

    def noise_pad(t, multiple):
        out = real_pad(t, multiple)
        if out.shape != t.shape:
            padded.append(out.shape)
            noise = torch.randn_like(out) * 100
            noise[:, :t.shape[1], :t.shape[2]] = 0
            out = out + noise
        return out

    monkeypatch.setattr(maxvit_module, 'pad_to_multiple', noise_pad)
    with torch.no_grad():
        actual = model.forward_intermediates(x)
    assert len(padded) == 4  # every block padded
    torch.testing.assert_close(actual[0], expected[0])
    for a, b in zip(actual[1], expected[1]):
        torch.testing.assert_close(a, b)
    padded.clear()
    with torch.no_grad():
        model(torch.randn(1, 3, 48, 48))  # 12, 6, 3: whole windows
    assert not padded


def test_padding_masks_are_built_once_per_stage(monkeypatch):
    """Every block of a stage sees the same padded map: the stage builds the key masks once for all of them."""
    import timm_vitvariants.maxvit_reg as maxvit_module
    torch.manual_seed(0)
    model = tiny(depths=(2, 3, 1), window_size=3, num_registers=2).eval()
    x = torch.randn(2, 3, 50, 38)  # every stage pads
    with torch.no_grad():
        expected = model(x)
    built = []
    real = maxvit_module.padding_key_masks

    def counted(*args):
        built.append(args[0])
        return real(*args)

    monkeypatch.setattr(maxvit_module, 'padding_key_masks', counted)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
    assert built == [(13, 10), (7, 5), (4, 3)]  # one per stage, for the map its blocks see


def test_too_small_names_the_minimum():
    model = timm.create_model('maxvit_reg_tiny', depths=(1, 1, 1, 1)).eval()
    with pytest.raises(ValueError, match='at least 32x32, got 31x64'):
        model(torch.randn(1, 3, 31, 64))


def test_no_dropout_by_default_and_real_drop_path():
    model = tiny().train()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(model(x), model(x))  # deterministic in train mode: no hidden dropout
    model = tiny(drop_path_rate=0.5).train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.allclose(a, b)
    # per-sample masks: each sample's residual branches are dropped together or kept
    drop_path = model.stages[1].blocks[0].drop_path
    out = drop_path(torch.ones(64 * 4, 3, 2), 64)  # 64 images of 4 windows each
    per_sample = out.reshape(64, -1)
    assert set(per_sample.unique().tolist()) <= {0., 1. / (1 - drop_path.drop_prob)}
    assert (per_sample == per_sample[:, :1]).all()


def test_register_tokens_are_learned_and_excluded_from_weight_decay():
    model = tiny()
    names = {n for n, _ in model.named_parameters()}
    tokens = {n for n in names if n.endswith('register_tokens')}
    assert tokens and tokens <= model.no_weight_decay()
    assert any('relative_position_bias_table' in n for n in model.no_weight_decay())


def test_unsupported_vit_pytorch_class():
    from vit_pytorch.max_vit import MaxViT as PlainMaxViT
    ref = PlainMaxViT(num_classes=3, dim=32, depth=(1,), dim_head=16, window_size=4)
    with pytest.raises(TypeError, match='max_vit_with_registers.MaxViT'):
        timm_vitvariants.from_vit_pytorch(ref)
    with pytest.raises(TypeError, match='nn.Module'):
        timm_vitvariants.from_vit_pytorch({'state': 'dict'})


def test_conv_bn_follows_its_batchnorm_s_mode():
    """The BatchNorm is folded only where it uses running statistics: an eval model whose BatchNorms are set
    back to train (BN adaptation) uses and updates batch statistics; frozen BatchNorms (timm's
    freeze_batch_norm_2d) use their statistics in train mode too; without running statistics, batch ones."""
    torch.manual_seed(0)
    conv_bn = ConvBn(4, 6, 3)
    conv_bn.bn.running_mean.normal_()
    conv_bn.bn.running_var.uniform_(0.5, 2.)
    conv_bn.bn.weight.data.normal_()
    conv_bn.bn.bias.data.normal_()
    x = torch.randn(2, 4, 8, 8)
    bn = conv_bn.bn
    with torch.no_grad():
        z = conv_bn.conv(x)
        running = F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0., bn.eps)
        batch = F.batch_norm(z, None, None, bn.weight, bn.bias, True, 0., bn.eps)

        conv_bn.eval()
        torch.testing.assert_close(conv_bn(x), running)  # folded
        bn.train()  # BN adaptation in an eval model
        mean_before = bn.running_mean.clone()
        torch.testing.assert_close(conv_bn(x), batch)
        assert not torch.equal(bn.running_mean, mean_before)  # and the statistics are updated

        frozen = freeze_batch_norm_2d(copy.deepcopy(conv_bn).eval())
        assert isinstance(frozen.bn, FrozenBatchNorm2d)
        expected = F.batch_norm(z, frozen.bn.running_mean, frozen.bn.running_var, frozen.bn.weight,
                                frozen.bn.bias, False, 0., frozen.bn.eps)
        for mode in (False, True):
            torch.testing.assert_close(frozen.train(mode)(x), expected)

        conv_bn.bn = torch.nn.BatchNorm2d(6, track_running_stats=False)
        conv_bn.eval()
        torch.testing.assert_close(conv_bn(x), F.batch_norm(z, None, None, None, None, True, 0., 1e-5))


@pytest.mark.parametrize('size', [7, 14, 28])
def test_conv_bn_trains_small_maps_through_the_gemm(size):
    """In training a 1x1 conv over a map of at most POINTWISE_GEMM_MAX_PIXELS runs as the GEMM of its NHWC
    view (a larger map keeps the conv): the conv's numbers and gradients, the map's channels-last layout kept."""
    torch.manual_seed(0)
    conv_bn = ConvBn(8, 12, act=True).train()
    x = torch.randn(2, 8, size, size).contiguous(memory_format=torch.channels_last)

    def outputs_and_grads(fn):
        x_ = x.detach().requires_grad_()
        y = fn(x_)
        return y, torch.autograd.grad((y * y).sum(), [x_, *conv_bn.parameters()])

    with torch.profiler.profile() as prof:
        y, grads = outputs_and_grads(conv_bn)
    ops = {e.key for e in prof.key_averages()}
    gemm = size * size <= POINTWISE_GEMM_MAX_PIXELS
    linear_ops = {'aten::linear', 'mkldnn::_linear_pointwise'}  # aten's GEMM, or oneDNN's where the host prefers it
    assert ('aten::convolution' not in ops) == gemm and bool(ops & linear_ops) == gemm
    bn = conv_bn.bn
    y_ref, grads_ref = outputs_and_grads(lambda t: F.gelu(F.batch_norm(
        conv_bn.conv(t), None, None, bn.weight, bn.bias, True, 0., bn.eps)))
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref, strict=True):  # sums over up to 2 x 28 x 28 pixels: fp32 rounding
        torch.testing.assert_close(g, g_ref, rtol=1e-3, atol=1e-3)


def test_squeeze_excite_is_timm_s_with_a_gradient_that_stays_a_view():
    """The squeeze as a sum / (H * W): timm's SqueezeExcite bitwise, forward and input gradient, and
    the squeeze's gradient reaches the map as a broadcast view, not a full-size quotient."""
    torch.manual_seed(0)
    ours = SqueezeExcite(32, rd_channels=8, bias=False, act_layer=torch.nn.SiLU)
    theirs = timm.layers.SqueezeExcite(32, rd_channels=8, bias=False, act_layer=torch.nn.SiLU)
    theirs.load_state_dict(ours.state_dict())  # same keys
    x = torch.randn(2, 32, 7, 9).contiguous(memory_format=torch.channels_last)
    results = []
    for se in (ours, theirs):
        x_ = x.detach().requires_grad_()
        y = se(x_)
        results.append((y, *torch.autograd.grad((y * y).sum(), [x_, *se.parameters()])))
    for mine, timm_s in zip(*results, strict=True):
        assert torch.equal(mine, timm_s)

    def full_size_quotients(se) -> int:
        with torch.profiler.profile(record_shapes=True) as prof:
            se(x.detach().requires_grad_()).sum().backward()
        return sum(e.count for e in prof.key_averages(group_by_input_shape=True)
                   if e.key == 'aten::div' and e.input_shapes and e.input_shapes[0] == list(x.shape))

    assert full_size_quotients(theirs) == 1 and full_size_quotients(ours) == 0
