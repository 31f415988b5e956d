"""The shared building blocks against direct computations."""
import pytest
import torch
import torch.nn.functional as F

from timm_vitvariants.layers import (
    ReducedKVAttention, RelPosBias, WindowAttention, grid_partition, grid_reverse, scaled_dot_attention,
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


def test_window_attention_global_and_local_conv():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 6, 3, padding=1)
    attn = WindowAttention(8, num_heads=2, head_dim=4, window_size=None, value_dim=3, local_conv=conv).eval()
    x = torch.randn(1, 4, 5, 8)
    q, k, v = attn.qkv(x).flatten(1, 2).split([8, 8, 6], -1)
    heads = [t.unflatten(-1, (2, -1)).transpose(1, 2) for t in (q, k, v)]
    expected = reference_attention(*heads).transpose(1, 2).flatten(2).reshape(1, 4, 5, 6)
    expected = expected + conv(v.reshape(1, 4, 5, 6).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(attn(x), attn.proj(expected))


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
