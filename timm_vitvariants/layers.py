"""Building blocks shared by every family: written once, used everywhere.

Tensor layouts are named in the signatures: NCHW for conv-style maps, NHWC for token maps kept
spatial, (B, N, C) for token sequences and (B, heads, N, head_dim) for attention operands.
Everything takes ``device``/``dtype`` so a model can be built on the meta device.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import trunc_normal_
from timm.models import register_notrace_function, register_notrace_module

__all__ = [
    'scaled_dot_attention', 'split_heads', 'merge_heads', 'RelPosBias', 'PosConv',
    'window_partition', 'window_reverse', 'grid_partition', 'grid_reverse', 'pad_to_multiple', 'window_padding_mask',
    'ImageCheck', 'nearest_multiples', 'init_weights',
]


# --- attention core ---------------------------------------------------------------------------

def scaled_dot_attention(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_bias: Optional[torch.Tensor] = None,
        dropout_p: float = 0.,
        fused: bool = True,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v for q (B, h, N, d), k (B, h, M, d), v (B, h, M, dv).

    ``attn_bias`` is an additive bias broadcastable to (B, h, N, M): relative-position biases and
    padding masks (-inf) both travel as the attention mask of ``F.scaled_dot_product_attention``.
    ``fused=False`` is the explicit reference path (timm's ``use_fused_attn`` switch).
    """
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout_p)
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if attn_bias is not None:
        attn = attn + attn_bias
    attn = attn.softmax(dim=-1)
    if dropout_p > 0.:
        attn = F.dropout(attn, p=dropout_p)
    return attn @ v


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, heads * d) -> (B, heads, N, d)"""
    B, N, C = x.shape
    return x.reshape(B, N, num_heads, C // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)"""
    B, h, N, d = x.shape
    return x.transpose(1, 2).reshape(B, N, h * d)


# --- relative position bias -------------------------------------------------------------------

class RelPosBias(nn.Module):
    """Learned relative-position bias for a window of ``window_size`` tokens, one value per head.

    ``num_prefix_tokens`` tokens (registers, a regional token) are prepended to the window. With
    ``prefix_bias=True`` every pair involving one of them shares one extra learned slot (MaxViT
    with registers); otherwise they get no bias at all (RegionViT's regional token).
    The table is indexed by ``dh * (2 * ww - 1) + dw`` with offsets shifted to be >= 0.
    """

    def __init__(
            self,
            window_size: Tuple[int, int],
            num_heads: int,
            num_prefix_tokens: int = 0,
            prefix_bias: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        wh, ww = window_size
        self.window_size = (wh, ww)
        self.num_heads = num_heads
        self.num_prefix_tokens = num_prefix_tokens
        self.prefix_bias = prefix_bias
        num_offsets = (2 * wh - 1) * (2 * ww - 1)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(num_offsets + int(prefix_bias), num_heads, device=device, dtype=dtype))

        # (N, N) table index for the window tokens, N = wh * ww
        coords = torch.stack(torch.meshgrid(
            torch.arange(wh, device=device), torch.arange(ww, device=device), indexing='ij')).flatten(1)
        rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
        index = (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)
        if num_prefix_tokens and prefix_bias:
            index = F.pad(index, (num_prefix_tokens, 0, num_prefix_tokens, 0), value=num_offsets)
        self.register_buffer('relative_position_index', index, persistent=False)

    def init_weights(self) -> None:
        trunc_normal_(self.relative_position_bias_table, std=.02)

    def forward(self) -> torch.Tensor:
        """Returns the bias as (heads, N, N), N counting the prefix tokens."""
        bias = self.relative_position_bias_table[self.relative_position_index]  # (N, N, heads)
        bias = bias.permute(2, 0, 1)
        if self.num_prefix_tokens and not self.prefix_bias:
            p = self.num_prefix_tokens
            bias = F.pad(bias, (p, 0, p, 0))
        return bias


# --- position-encoding generator --------------------------------------------------------------

class PosConv(nn.Module):
    """Position-encoding generator (PEG, Chu et al. 2102.10882): x + depthwise_conv(x), NCHW."""

    def __init__(self, dim: int, kernel_size: int = 3, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Conv2d(
            dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(x)


# --- window / grid partitioning (NHWC) --------------------------------------------------------

def window_partition(x: torch.Tensor, window_size: Tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/wh * W/ww, wh * ww, C): contiguous wh x ww blocks."""
    B, H, W, C = x.shape
    wh, ww = window_size
    x = x.reshape(B, H // wh, wh, W // ww, ww, C).transpose(2, 3)
    return x.reshape(-1, wh * ww, C)


def window_reverse(windows: torch.Tensor, window_size: Tuple[int, int], H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nh * nw, wh * ww, C) -> (B, H, W, C)."""
    wh, ww = window_size
    C = windows.shape[-1]
    x = windows.reshape(-1, H // wh, W // ww, wh, ww, C).transpose(2, 3)
    return x.reshape(-1, H, W, C)


def grid_partition(x: torch.Tensor, grid_size: Tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/gh * W/gw, gh * gw, C): each group takes every (H/gh)-th row and
    (W/gw)-th column, i.e. a dilated gh x gw grid spanning the whole map (MaxViT's grid attention)."""
    B, H, W, C = x.shape
    gh, gw = grid_size
    x = x.reshape(B, gh, H // gh, gw, W // gw, C).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, gh * gw, C)


def grid_reverse(windows: torch.Tensor, grid_size: Tuple[int, int], H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`grid_partition`: (B * nh * nw, gh * gw, C) -> (B, H, W, C)."""
    gh, gw = grid_size
    C = windows.shape[-1]
    x = windows.reshape(-1, H // gh, W // gw, gh, gw, C).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(-1, H, W, C)


@register_notrace_function  # FX: branches on concrete sizes
def pad_to_multiple(x: torch.Tensor, multiple: Tuple[int, int]) -> torch.Tensor:
    """Zero-pads an NHWC map at the bottom and right up to multiples of ``multiple``."""
    H, W = x.shape[1], x.shape[2]
    pad_h = (multiple[0] - H % multiple[0]) % multiple[0]
    pad_w = (multiple[1] - W % multiple[1]) % multiple[1]
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x


@register_notrace_function  # FX: branches on concrete sizes
def window_padding_mask(
        size: Tuple[int, int],
        window_size: Tuple[int, int],
        device: Optional[torch.device] = None,
        dtype: torch.dtype = torch.float32,
) -> Optional[torch.Tensor]:
    """Additive key mask for the windows of a (H, W) map zero-padded to multiples of ``window_size``.

    Returns (num_windows, 1, wh * ww) with -inf on padded keys and 0 elsewhere, in the order of
    :func:`window_partition`, or None when no padding is needed. Padding is at the bottom and right
    and shorter than a window, so every window keeps at least one real key.
    """
    H, W = size
    wh, ww = window_size
    pad_h, pad_w = (wh - H % wh) % wh, (ww - W % ww) % ww
    if not pad_h and not pad_w:
        return None
    padded = F.pad(torch.zeros(1, H, W, 1, device=device, dtype=dtype), (0, 0, 0, pad_w, 0, pad_h), value=1.)
    padded = window_partition(padded, window_size)  # (num_windows, wh * ww, 1)
    return padded.transpose(1, 2).masked_fill(padded.transpose(1, 2) > 0, float('-inf'))


# --- input validation -------------------------------------------------------------------------

@register_notrace_module  # FX leaf: it branches on concrete shapes
class ImageCheck(nn.Module):
    """Validates the image batch a model receives and returns it unchanged.

    A non-empty floating-point (B, in_chans, H, W) batch with H, W >= ``min_size`` and, if
    ``multiple`` > 1, multiples of it. Families with further size rules override ``check_size``.
    """

    def __init__(self, model_name: str, in_chans: int, min_size: int = 1, multiple: int = 1):
        super().__init__()
        self.model_name = model_name
        self.in_chans = in_chans
        self.min_size = min_size
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name, chans = self.model_name, self.in_chans
        if x.dim() != 4:
            raise ValueError(
                f'{name} expects a 4-D image batch (B, {chans}, H, W), '
                f'got a {x.dim()}-D tensor of shape {list(x.shape)}')
        if not torch.is_floating_point(x):
            raise TypeError(
                f'{name} expects a floating point image batch (float32, float16 or bfloat16), got {x.dtype}; '
                f'convert and normalize it first')
        if x.shape[0] == 0:
            raise ValueError(f'{name} got an empty batch (B=0), pass at least one image')
        if x.shape[1] != chans:
            raise ValueError(
                f'{name} was built for {chans} input channels, got {x.shape[1]} (input shape {list(x.shape)}); '
                f'create it with in_chans={x.shape[1]} for such images')
        self.check_size(x.shape[2], x.shape[3])
        return x

    def check_size(self, height: int, width: int) -> None:
        name, low, m = self.model_name, self.min_size, self.multiple
        if height < low or width < low:
            raise ValueError(f'{name} needs images of at least {low}x{low}, got {height}x{width}')
        if height % m or width % m:
            raise ValueError(
                f'{name} needs a height and width that are multiples of {m}, got {height}x{width}; '
                f'the nearest valid sizes are height {nearest_multiples(height, m)}, '
                f'width {nearest_multiples(width, m)}')


def nearest_multiples(size: int, multiple: int) -> str:
    """The multiples of ``multiple`` just below and above ``size`` (at least ``multiple``), as text."""
    below = max(multiple, size // multiple * multiple)
    if below >= size:
        return str(below)
    return f'{below} or {below + multiple}'


# --- weight init ------------------------------------------------------------------------------

def init_weights(module: nn.Module, name: str = '') -> None:
    """timm's transformer init: trunc-normal(0.02) linears, zero biases; blocks with their own
    ``init_weights`` (bias tables, tokens) do theirs. Convs keep PyTorch's default (kaiming)."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif hasattr(module, 'init_weights'):
        module.init_weights()
