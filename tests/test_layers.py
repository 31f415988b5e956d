"""The shared building blocks against direct computations."""
import pytest
import torch
import torch.nn.functional as F

import timm

from timm_vitvariants import layers
from timm_vitvariants.layers import (
    GELU, GluMlp, Linear, Mlp, ReducedKVAttention, RelPosBias, WindowAttention, conv_gelu, gelu, grid_partition,
    grid_reverse, onednn_fusable, onednn_gemm, pad_to_multiple, patch_linear, scaled_dot_attention, set_onednn_gemm,
    window_partition, window_reverse,
)


def reference_attention(q, k, v, bias=None):
    attn = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    if bias is not None:
        attn = attn + bias
    return attn.softmax(-1) @ v


@pytest.mark.parametrize('fused', [True, False])
def test_scaled_dot_attention(fused):
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    bias = torch.randn(3, 5, 7)
    torch.testing.assert_close(scaled_dot_attention(q, k, v, bias, fused=fused), reference_attention(q, k, v, bias))


@pytest.mark.parametrize('key_dim, value_dim', [(8, 5), (5, 8)])
def test_scaled_dot_attention_with_different_key_and_value_widths(key_dim, value_dim):
    """``value_pad`` (key minus value width) zero-pads the narrower side for the flash kernel: same result."""
    q, k, v = torch.randn(2, 3, 5, key_dim), torch.randn(2, 3, 7, key_dim), torch.randn(2, 3, 7, value_dim)
    bias = torch.randn(1, 3, 5, 7)
    out = scaled_dot_attention(q, k, v, bias, value_pad=key_dim - value_dim)
    assert out.shape == (2, 3, 5, value_dim)
    torch.testing.assert_close(out, reference_attention(q, k, v, bias))


def test_partitions_invert():
    x = torch.randn(2, 6, 8, 3)
    torch.testing.assert_close(window_reverse(window_partition(x, (3, 4)), (3, 4), 6, 8), x)
    torch.testing.assert_close(grid_reverse(grid_partition(x, (3, 4)), (3, 4), 6, 8), x)
    windows = window_partition(x, (3, 4))
    torch.testing.assert_close(windows[1], x[0, :3, 4:].reshape(12, 3))  # second window: top right
    groups = grid_partition(x, (3, 4))
    torch.testing.assert_close(groups[0], x[0, ::2, ::2].reshape(12, 3))  # first group: a dilated grid


@pytest.mark.parametrize('size', [(6, 8), (5, 8), (6, 7), (4, 5)])
def test_pad_to_multiple_is_f_pad(size):
    """Without a gradient only the margins are zero-filled (the map is copied into an empty buffer); with one,
    F.pad. Both: F.pad's values on a non-contiguous map, the map itself where nothing pads, a slice as gradient."""
    x = torch.randn(2, 9, 11, 3).transpose(1, 2)[:, :size[0], :size[1]]  # non-contiguous NHWC
    expected = F.pad(x, (0, 0, 0, -size[1] % 4, 0, -size[0] % 3))
    with torch.no_grad():
        padded = pad_to_multiple(x, (3, 4))
        assert torch.equal(padded, expected)
        assert (size[0] % 3 or size[1] % 4) or padded is x
    x = x.detach().requires_grad_()
    padded = pad_to_multiple(x, (3, 4))
    assert torch.equal(padded, expected)
    (padded * torch.arange(padded.numel()).view_as(padded)).sum().backward()
    torch.testing.assert_close(x.grad, torch.arange(padded.numel()).view_as(padded)[:, :size[0], :size[1]].float())


def test_rel_pos_bias_prefix_slots():
    bias = RelPosBias((2, 3), num_heads=2, num_prefix_tokens=1, prefix_bias=True)
    with torch.no_grad():
        bias.relative_position_bias_table.copy_(torch.arange(16.)[:, None].expand(16, 2))
    b = bias()[0]
    assert bias().shape == (1, 2, 7, 7)
    assert (b[:, 0, :] == 15).all() and (b[:, :, 0] == 15).all()  # the extra slot
    assert b[0, 1, 1] == (1 * 5 + 2)  # offset (0, 0) -> index (dh + 1) * 5 + (dw + 2)
    zero = RelPosBias((2, 3), num_heads=2, num_prefix_tokens=1, prefix_bias=False)()[0]
    assert zero.shape == (2, 7, 7) and (zero[:, 0] == 0).all() and (zero[:, :, 0] == 0).all()


@pytest.mark.parametrize('size', [(6, 6), (7, 5), (2, 9)])
def test_window_attention_padding_is_invisible(size):
    """Outputs on the real map equal attention within the (clipped) windows of the unpadded map."""
    torch.manual_seed(0)
    attn = WindowAttention(8, num_heads=2, head_dim=4, window_size=3, value_dim=2).eval()
    x = torch.randn(2, *size, 8)
    out = attn(x)
    qkv = attn.qkv(x)
    H, W = size
    for top in range(0, H, 3):
        for left in range(0, W, 3):
            window = qkv[:, top:top + 3, left:left + 3].flatten(1, 2)
            q, k, v = window.split([8, 8, 4], -1)
            heads = [t.unflatten(-1, (2, -1)).transpose(1, 2) for t in (q, k, v)]
            expected = reference_attention(*heads).transpose(1, 2).flatten(2)
            expected = attn.proj(expected)
            torch.testing.assert_close(out[:, top:top + 3, left:left + 3].flatten(1, 2), expected)


def global_attention_with_local_conv(attn: WindowAttention, x: torch.Tensor) -> torch.Tensor:
    """What ``WindowAttention(window_size=None, local_conv=...)`` computes over ``x`` (B, H, W, dim), written out."""
    B, H, W, _ = x.shape
    q, k, v = attn.qkv(x).flatten(1, 2).split([attn.key_width, attn.key_width, attn.value_width], -1)
    heads = [t.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2) for t in (q, k, v)]
    out = reference_attention(*heads).transpose(1, 2).flatten(2).reshape(B, H, W, attn.value_width)
    out = out + attn.local_conv(v.reshape(B, H, W, -1).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return attn.proj(out)


def test_window_attention_global_and_local_conv():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 6, 3, padding=1)
    attn = WindowAttention(8, num_heads=2, head_dim=4, window_size=None, value_dim=3, local_conv=conv).eval()
    x = torch.randn(1, 4, 5, 8)
    torch.testing.assert_close(attn(x), global_attention_with_local_conv(attn, x))


@pytest.mark.parametrize('channels_last_weight', [False, True])
def test_local_conv_runs_in_its_weight_s_format_where_the_weight_is_bigger(channels_last_weight):
    """A full local conv on a small map runs on an NCHW copy of the map (reordering the bigger weight on every
    call costs more), unless the weight itself is channels-last; same outputs and gradients either way."""
    torch.manual_seed(0)
    width = 48  # 48 x 48 x 3 x 3 weight elements against 2 x 48 x 4 x 5 map elements
    conv = torch.nn.Conv2d(width, width, 3, padding=1)
    attn = WindowAttention(16, num_heads=2, head_dim=8, window_size=None, value_dim=24, local_conv=conv)
    if channels_last_weight:
        attn = attn.to(memory_format=torch.channels_last)
    seen = []
    conv.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    x = torch.randn(2, 4, 5, 16, requires_grad=True)
    out = attn(x)
    out.square().sum().backward()
    assert seen == [not channels_last_weight]
    expected_attn = WindowAttention(16, num_heads=2, head_dim=8, window_size=None, value_dim=24,
                                    local_conv=torch.nn.Conv2d(width, width, 3, padding=1))
    expected_attn.load_state_dict(attn.state_dict())
    x2 = x.detach().clone().requires_grad_()
    expected = global_attention_with_local_conv(expected_attn, x2)
    expected.square().sum().backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(conv.weight.grad, expected_attn.local_conv.weight.grad)


@pytest.mark.parametrize('size, reduction', [((8, 8), 4), ((9, 7), 2), ((3, 2), 4), ((5, 5), 1)])
def test_reduced_kv_attention(size, reduction):
    torch.manual_seed(0)
    attn = ReducedKVAttention(8, num_heads=2, head_dim=4, reduction=reduction, value_dim=3).eval()
    x = torch.randn(2, *size, 8)
    H, W = size
    nchw = x.permute(0, 3, 1, 2)
    if H < reduction or W < reduction:
        nchw = F.pad(nchw, (0, max(reduction - W, 0), 0, max(reduction - H, 0)))
    kv = F.conv2d(nchw, attn.kv.weight, stride=reduction).flatten(2).transpose(1, 2)
    k, v = kv.split([8, 6], -1)
    q = attn.q(x).flatten(1, 2)
    heads = [t.unflatten(-1, (2, -1)).transpose(1, 2) for t in (q, k, v)]
    expected = attn.proj(reference_attention(*heads).transpose(1, 2).flatten(2)).reshape(2, H, W, 8)
    torch.testing.assert_close(attn(x), expected)


@pytest.fixture
def host_gemm():
    """Restores the host's GEMM choice after a test that sets it."""
    yield
    set_onednn_gemm(None)


def ops_run(fn) -> set:
    """The names of the ops that ``fn()`` runs."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def onednn_fused_ops(fn) -> set:
    """The oneDNN fused ops (``mkldnn::*_pointwise``) that ``fn()`` runs."""
    return {op for op in ops_run(fn) if op.startswith('mkldnn::')}


@pytest.mark.parametrize('make, op', [
    (lambda: Mlp(64, 256, act_layer=torch.nn.GELU), 'mkldnn::_linear_pointwise'),
    (lambda: GluMlp(64, 512, act_layer=torch.nn.GELU, gate_last=True), 'mkldnn::_linear_pointwise'),
    (lambda: GluMlp(64, 512, act_layer=torch.nn.GELU, gate_last=False), 'mkldnn::_linear_pointwise'),
])
def test_fused_mlps_are_timm_s_mlps_with_the_same_numbers(make, op):
    """In eager fp32 CPU inference fc1 and its GELU (and a GLU's product) run fused: the same outputs as the
    plain ops (oneDNN switched off), the same state-dict keys as timm's layers."""
    torch.manual_seed(0)
    mlp = make().eval()
    for p in mlp.parameters():
        p.data.normal_(0, 0.2)
    x = torch.randn(2, 5, 7, 64)
    with torch.no_grad():
        assert op in onednn_fused_ops(lambda: mlp(x))
        fused = mlp(x)
        with torch.backends.mkldnn.flags(enabled=False):
            assert not onednn_fused_ops(lambda: mlp(x))
            plain = mlp(x)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    timm_cls = {Mlp: timm.layers.Mlp, GluMlp: timm.layers.GluMlp}[type(mlp)]
    assert isinstance(mlp, timm_cls)
    assert mlp.state_dict().keys() == timm_cls(64, mlp.fc1.out_features).state_dict().keys()


def test_fusion_only_in_eager_fp32_inference(host_gemm):
    """Anything the fused ops cannot serve takes the plain ops: gradients (no autograd formula), training
    mode (dropout), bf16, autocast, tensor subclasses, and TorchScript. (The linears' own oneDNN GEMMs,
    tested below, are switched off here: every oneDNN op seen is then a fusion.)"""
    set_onednn_gemm(False)
    torch.manual_seed(0)
    mlp = Mlp(64, 256, act_layer=torch.nn.GELU, drop=0.5).eval()
    x = torch.randn(2, 9, 64)
    assert not onednn_fused_ops(lambda: mlp(x))  # grad enabled
    assert mlp(x).grad_fn is not None
    with torch.no_grad():
        assert onednn_fusable(x)
        assert not onednn_fusable(x.bfloat16()) and not onednn_fusable(torch.nn.Parameter(x))
        assert not onednn_fused_ops(lambda: mlp.train()(x))  # dropout active: the plain path
        mlp.eval()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert not onednn_fusable(x) and not onednn_fused_ops(lambda: mlp(x))
        scripted = torch.jit.script(mlp)
        torch.testing.assert_close(scripted(x), mlp(x), rtol=1e-5, atol=1e-5)
    assert not Mlp(64, 256, act_layer=lambda: torch.nn.GELU(approximate='tanh')).fuse_gelu  # exact GELU only


def test_wide_mlps_fuse_only_where_the_linears_run_on_onednn(host_gemm):
    """Where aten's GEMM (MKL's) is the faster one, a wide fc1 keeps it and its GELU runs apart, in place
    over fc1's output: bitwise the plain forward's numbers."""
    mlp = Mlp(512, 2048, act_layer=torch.nn.GELU).eval()
    x = torch.randn(2, 9, 512)
    with torch.no_grad():
        set_onednn_gemm(False)
        ops = ops_run(lambda: mlp(x))
        assert 'aten::gelu_' in ops and not {op for op in ops if op.startswith('mkldnn::')}
        in_place = mlp(x)
        mlp.train()  # timm's forward (no dropout set): the same GEMMs, the GELU into a new buffer
        assert 'aten::gelu_' not in ops_run(lambda: mlp(x))
        assert torch.equal(mlp(x), in_place)
        mlp.eval()
        set_onednn_gemm(True)
        assert onednn_fused_ops(lambda: mlp(x)) == {'mkldnn::_linear_pointwise'}
        torch.testing.assert_close(mlp(x), in_place, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('gate_last', [True, False])
def test_wide_glu_mlps_run_the_gate_in_place_where_aten_s_gemm_runs(host_gemm, gate_last):
    """A GluMlp wider than FUSE_GLU_MAX_IN_FEATURES: MKL's GEMMs with the GELU and the product in place where
    aten's GEMM is MKL's, both halves fused on oneDNN where the host's linears run there; the plain forward's
    numbers either way."""
    torch.manual_seed(0)
    mlp = GluMlp(512, 1024, act_layer=torch.nn.GELU, gate_last=gate_last).eval()
    assert not mlp.narrow and GluMlp(384, 1024, act_layer=torch.nn.GELU).narrow
    x = torch.randn(2, 9, 512)
    with torch.no_grad():
        plain = mlp.train()(x)  # timm's forward (no dropout set)
        mlp.eval()
        set_onednn_gemm(False)
        ops = ops_run(lambda: mlp(x))
        assert {'aten::gelu_', 'aten::mul_'} <= ops and not {op for op in ops if op.startswith('mkldnn::')}
        torch.testing.assert_close(mlp(x), plain, rtol=1e-5, atol=1e-5)
        set_onednn_gemm(True)
        assert onednn_fused_ops(lambda: mlp(x)) == {'mkldnn::_linear_pointwise'}
        torch.testing.assert_close(mlp(x), plain, rtol=1e-5, atol=1e-5)


def linear_and_grads(linear, x, create_graph=False):
    x = x.detach().requires_grad_()
    y = linear(x)
    grads = torch.autograd.grad((y * y).sum(), [x, *linear.parameters()], create_graph=create_graph)
    return y, grads


@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('features, map_size, weight_grad_op', [
    ((24, 40), (7, 5), 'aten::mm'),  # few tokens: the weight gradient as aten's mm
    ((40, 24), (70, 30), 'aten::convolution_backward'),  # 4200 tokens into a narrowing layer: as a 1x1 conv's
])
def test_onednn_linear_forward_and_backward_match_nn_linear(host_gemm, bias, features, map_size, weight_grad_op):
    """The forward and input gradient on oneDNN, the weight gradient on the GEMM that wins at its shape, with
    nn.Linear's numbers, for non-contiguous inputs (a cropped NHWC map) too."""
    torch.manual_seed(0)
    linear = Linear(*features, bias=bias)
    x = torch.randn(2, map_size[0] + 2, map_size[1] + 3, features[0])[:, :map_size[0], :map_size[1]]
    set_onednn_gemm(True)
    assert onednn_gemm(x)
    ops = ops_run(lambda: linear_and_grads(linear, x))
    assert {'mkldnn::_linear_pointwise', weight_grad_op} <= ops
    assert not ops & {'aten::addmm', 'aten::linear', 'aten::mm', 'aten::convolution_backward'} - {weight_grad_op}
    y, grads = linear_and_grads(linear, x)
    set_onednn_gemm(False)
    assert not onednn_gemm(x) and not onednn_fused_ops(lambda: linear_and_grads(linear, x))
    y_ref, grads_ref = linear_and_grads(linear, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('kernel, size', [(1, (5, 6)), (2, (6, 4)), (2, (7, 5)), (3, (7, 8))])
@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('onednn', [True, False])
def test_patch_linear_is_the_strided_conv(host_gemm, kernel, size, bias, onednn):
    """A kernel = stride conv as one GEMM over the NHWC map's patches: the conv's outputs and gradients, on
    either GEMM, the remainder rows and columns dropped as the conv drops them."""
    torch.manual_seed(0)
    set_onednn_gemm(onednn)
    conv = torch.nn.Conv2d(6, 10, kernel, stride=kernel, bias=bias)
    x = torch.randn(2, *size, 6)

    def outputs_and_grads(fn):
        x_ = x.detach().requires_grad_()
        y = fn(x_)
        return y, torch.autograd.grad((y * y).sum(), [x_, *conv.parameters()])

    y, grads = outputs_and_grads(lambda t: patch_linear(t, conv.weight, conv.bias))
    y_ref, grads_ref = outputs_and_grads(lambda t: conv(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
    assert y.shape == (2, size[0] // kernel, size[1] // kernel, 10)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-4)


def test_onednn_linear_second_order_gradients_and_frozen_weights(host_gemm):
    torch.manual_seed(0)
    linear = Linear(16, 8)
    x = torch.randn(3, 16)
    results = []
    for enabled in (True, False):
        set_onednn_gemm(enabled)
        _, (grad_x, *_) = linear_and_grads(linear, x, create_graph=True)
        results.append(torch.autograd.grad(grad_x.square().sum(), linear.weight))  # e.g. a gradient penalty
    torch.testing.assert_close(*results, rtol=1e-5, atol=1e-5)
    set_onednn_gemm(True)
    linear.requires_grad_(False)  # a frozen layer still passes the input's gradient
    x = x.requires_grad_()
    linear(x).sum().backward()
    torch.testing.assert_close(x.grad, linear.weight.sum(0).expand(3, 16))


def test_onednn_linear_takes_an_empty_batch(host_gemm):
    """A detector's image with no proposals: zero tokens go through (and back) as with nn.Linear."""
    set_onednn_gemm(True)
    linear = Linear(16, 8)
    x = torch.randn(2, 0, 16, requires_grad=True)
    y = linear(x)
    y.sum().backward()
    assert y.shape == (2, 0, 8) and x.grad.shape == x.shape
    assert not linear.weight.grad.any() and not linear.bias.grad.any()


def test_onednn_linear_is_only_taken_in_eager_fp32(host_gemm):
    """TorchScript, FX, bf16 and autocast get F.linear, with the same state dict as nn.Linear."""
    set_onednn_gemm(True)
    torch.manual_seed(0)
    linear = Linear(16, 8)
    x = torch.randn(3, 16)
    assert linear.state_dict().keys() == torch.nn.Linear(16, 8).state_dict().keys()
    assert not onednn_gemm(x.bfloat16()) and not onednn_gemm(torch.nn.Parameter(x))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert not onednn_gemm(x)
    expected = F.linear(x, linear.weight, linear.bias)
    torch.testing.assert_close(torch.jit.script(linear)(x), expected)
    traced = torch.fx.symbolic_trace(linear)
    assert 'mkldnn' not in traced.code
    torch.testing.assert_close(traced(x), expected)


def test_onednn_gemm_host_default_and_environment_override(host_gemm, monkeypatch):
    avx512 = torch.backends.cpu.get_cpu_capability().startswith('AVX512')
    amd_avx512 = avx512 and layers._cpu_vendor() == 'AuthenticAMD'
    monkeypatch.delenv('TIMM_VITVARIANTS_ONEDNN_GEMM', raising=False)  # the host's own default, whatever the shell sets
    set_onednn_gemm(None)
    assert layers._ONEDNN_GEMM == (amd_avx512 and torch.backends.mkldnn.is_available())
    assert layers._ONEDNN_NARROW == (avx512 and torch.backends.mkldnn.is_available())
    monkeypatch.setenv('TIMM_VITVARIANTS_ONEDNN_GEMM', '0')
    set_onednn_gemm(None)
    assert not onednn_gemm(torch.randn(2, 3))
    monkeypatch.setenv('TIMM_VITVARIANTS_ONEDNN_GEMM', '1')
    set_onednn_gemm(None)
    assert onednn_gemm(torch.randn(2, 3)) == torch.backends.mkldnn.is_available()


def test_narrow_linears_take_onednn_in_inference_only(host_gemm, monkeypatch):
    """Where only the narrow GEMMs prefer oneDNN (AVX-512 Intel): a layer with <= 96 features on a side takes
    it in inference, with nn.Linear's numbers; wider layers, gradients and set_onednn_gemm(False) keep F.linear."""
    monkeypatch.setattr(layers, '_ONEDNN_GEMM', False)
    monkeypatch.setattr(layers, '_ONEDNN_NARROW', True)
    torch.manual_seed(0)
    narrow_in, narrow_out, wide = Linear(64, 192), Linear(256, 96), Linear(128, 512)
    assert narrow_in.narrow and narrow_out.narrow and not wide.narrow
    for linear in (narrow_in, narrow_out, wide):
        x = torch.randn(2, 7, 5, linear.in_features)
        with torch.no_grad():
            expected = F.linear(x, linear.weight, linear.bias)
            assert bool(onednn_fused_ops(lambda: linear(x))) == linear.narrow
            torch.testing.assert_close(linear(x), expected, rtol=1e-5, atol=1e-5)
            assert linear(x[:, :0]).shape == (2, 0, 5, linear.out_features)  # an empty batch: F.linear
        assert not onednn_fused_ops(lambda: linear_and_grads(linear, x))  # training: aten's GEMM
    set_onednn_gemm(False)
    with torch.no_grad():
        assert not onednn_fused_ops(lambda: narrow_in(torch.randn(3, 64)))


def test_mlps_share_timm_s_linear_parameters():
    """fc1/fc2 are :class:`Linear` over the very parameters timm's Mlp built (its init, its keys)."""
    torch.manual_seed(0)
    mlp = Mlp(8, 32)
    torch.manual_seed(0)
    timm_mlp = timm.layers.Mlp(8, 32)
    assert type(mlp.fc1) is Linear and type(mlp.fc2) is Linear
    assert [n for n, _ in mlp.named_parameters()] == [n for n, _ in timm_mlp.named_parameters()]
    for p, q in zip(mlp.parameters(), timm_mlp.parameters(), strict=True):
        assert torch.equal(p, q)
    assert type(Mlp(8, 32, use_conv=True).fc1) is torch.nn.Conv2d


@pytest.mark.parametrize('stride, groups, padding', [(1, 1, 0), (2, 16, 1), (1, 16, 1)])
def test_conv_gelu(stride, groups, padding):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 9, 11).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(32, 16 // groups, 2 * padding + 1, 2 * padding + 1) * 0.3, torch.randn(32)
    with torch.no_grad():
        assert onednn_fused_ops(lambda: conv_gelu(x, weight, bias, stride, padding, groups))
        expected = F.gelu(F.conv2d(x, weight, bias, stride, padding, 1, groups))
        torch.testing.assert_close(conv_gelu(x, weight, bias, stride, padding, groups), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv_gelu(x, weight, bias, stride, padding, groups), expected)  # the plain ops


def test_gelu_on_channels_last_maps_is_bitwise_the_nchw_result_and_keeps_the_layout():
    torch.manual_seed(0)
    x = (torch.randn(2, 64, 9, 11) * 3).requires_grad_()
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    y, y_cl = F.gelu(x), gelu(x_cl)
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y_cl, y)  # the NCHW (vectorised) numbers, which the channels-last strides alone do not give
    grad = torch.randn_like(y)
    y.backward(grad)
    y_cl.backward(grad.contiguous(memory_format=torch.channels_last))
    assert torch.equal(x_cl.grad, x.grad)
    tokens = torch.randn(2, 5, 8)
    assert torch.equal(gelu(tokens), F.gelu(tokens))  # anything else is plain F.gelu
    assert torch.equal(GELU()(x_cl), y)
    assert torch.equal(GELU(approximate='tanh')(x_cl), F.gelu(x_cl, approximate='tanh'))
    assert torch.equal(torch.jit.script(GELU())(x_cl), y)
