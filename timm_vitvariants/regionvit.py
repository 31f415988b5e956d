"""RegionViT: ``regionvit_{tiny,small,base}`` (vit-pytorch's design), ``regionvit_ibm_*`` (IBM's official one)

RegionViT: Regional-to-Local Attention for Vision Transformers -- Chen et al., https://arxiv.org/abs/2106.02689
Behaviour references: vit-pytorch's ``regionvit.RegionViT`` (``from_vit_pytorch`` converts any of its
instances to this model with the same outputs) and IBM's official code, https://github.com/IBM/RegionViT
(``regionvit_ibm_*``; its checkpoints load through ``checkpoint_filter_fn``).

Two token streams: local tokens (stride 4) and regional tokens (one per ``window_size`` x
``window_size`` window of local tokens). Each R2L block runs attention over the regional tokens,
then attention over each window's local tokens with their regional token prepended (same weights,
relative-position bias on local pairs), then a feed-forward. Classification pools the last
regional tokens.

Differences from vit-pytorch:
  * heads and head width are per-stage arguments (the default, 4 x 32 everywhere, is vit-pytorch's;
    the named variants use heads = dim / 32 as the paper).
  * ``in_chans`` is honoured by the local tokenizer too (vit-pytorch hard-codes 3 channels there).
  * any input size >= one region (28 px at the defaults), non-square included, as IBM's official
    code: the image is zero-padded at the bottom/right to a multiple of the region patch (regional
    tokens cover the padding, local tokens stop at ceil(H / 4)). Where a stage's local map does not
    fill ``window_size`` x its regional map (the stride-2 convs round both up), the stage pads it at
    the bottom/right, masks the padded tokens as keys and crops them afterwards: the cost follows the
    real size and padded local tokens reach no real token. vit-pytorch asserts sizes that divide by
    the region patch; at the few of them where a later stage's local map splits evenly into smaller
    windows (at the defaults 560 px, and 28, 56, 112 px where the last stages have one region) each
    region takes its share, as vit-pytorch, so outputs equal vit-pytorch's at every size it accepts.
  * stochastic depth (DropPath), ``qkv_bias``, ``drop_rate``, attention and projection dropout.
  * the named 3-conv variants narrow the tokenizer's first two convs to dim / 4 and dim / 2 as IBM's
    official code (``stem_chs``; vit-pytorch's full width is the default).
  * the regional tokenizer (rearrange + 1x1 conv) is one kernel = stride conv, the same map.
Differences from the paper: in vit-pytorch's design the downsampling conv is full width (no depthwise).
IBM's official design (``regionvit_ibm_{tiny,small,medium,base}``; window 14: ``_small_w14``, ``_base_w14``,
with PEG ``_small_w14_peg``, ``_base_w14_peg``) is vit-pytorch's with these constructor options:
``downsample='norm_act_dwconv'`` (LayerNorm, GELU, depthwise 3x3 stride-2 conv, still shared by both
streams), ``separate_local_norm`` (the local pass has its own pre-norm), ``rel_pos_per_block``,
``qkv_bias``, ``norm_eps=1e-6``, ``norm_before_pool`` (each regional token normalized, then pooled) and
``shrink_windows=False`` (a region always gets a full window); Ti and S take the narrow 3-conv tokenizer, M
and B the 8x8 stride-4 conv; IBM's PEG is ``peg_after_first_block`` (after each stage's first block, on both
streams, bias-free). IBM's relative-position table is indexed differently (the remapping permutes it).
Outputs equal IBM's code (random weights; Ti/S/M/B at 224, 224x448 and 448x224 within 5e-7 relative) at
every multiple of the region patch, except: where a stage pads its windows, IBM's code builds the
bottom-right window's key mask wrongly and most of its padded keys stay visible; here they are masked (IBM's
code with that mask corrected gives our outputs). No stage pads at multiples of 32 x window (224, 448,
224x448 at window 7; 448, 448x896 at window 14, where S-w14 (+PEG) match within 6e-7), but the window-14
variants' last stage does at 224 (7x7 local tokens in a 14x14 window), so there they differ from IBM's code.
Differences from IBM's padding: both tokenizers see the same bottom/right padding (IBM pads the regional
tokenizer's input on all sides and its local tokenizer sees the raw image), so region i and window i cover
the same pixels. Training only (eval outputs are the same): IBM's ``drop_rate`` drops after the tokenizer
and in the blocks, ours before the classifier (``proj_drop_rate`` is the blocks'); IBM's stochastic depth
draws once per window on the window branches, ours once per image.
"""
import argparse
import re
from functools import partial
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

import timm
from timm.layers import ClassifierHead, DropPath, LayerNorm2d, NormMlpClassifierHead
from timm.layers import calculate_drop_path_rates, resample_patch_embed, to_2tuple
from timm.models import checkpoint, generate_default_cfgs, load_state_dict, register_notrace_function
from timm.models import register_notrace_module
from timm.models._manipulate import adapt_input_conv
from timm.models._features import feature_take_indices

from ._factory import base_cfg, build_variant, register_variant
from .base import StageModel, check_common_args, check_output_fmt, check_positive, per_stage, to_format
from .base import windows_for_size
from .convert import copy_linear_mlp, copy_norm_linear_head, register_converter
from .layers import GELU, HeadsAttention, ImageCheck, Linear, Mlp, PosConv, RelPosBias, WindowDropPath
from .layers import pad_image_to_multiple, resample_rel_pos_tables, window_partition, window_reverse

__all__ = ['RegionViT']

LOCAL_STRIDE = 4  # both local tokenizers reduce by 4 (vit-pytorch fixes it whatever local_patch_size says)


class R2LAttention(HeadsAttention):
    """Pre-norm multi-head attention over (B, N, C) tokens with an optional additive bias."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            head_dim: int,
            qkv_bias: bool = False,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            norm_eps: float = 1e-5,
            separate_local_norm: bool = False,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__(dim, num_heads, head_dim, attn_drop=attn_drop, proj_drop=proj_drop, **dd)
        self.norm = nn.LayerNorm(dim, eps=norm_eps, **dd)
        # IBM's official model normalizes the local pass with its own weights (the attention stays shared)
        self.local_norm = nn.LayerNorm(dim, eps=norm_eps, **dd) if separate_local_norm else None
        self.qkv = Linear(dim, 3 * num_heads * head_dim, bias=qkv_bias, **dd)

    def forward(self, x: torch.Tensor, attn_bias: Optional[torch.Tensor] = None, local: bool = False) -> torch.Tensor:
        if local and self.local_norm is not None:
            x = self.local_norm(x)
        else:
            x = self.norm(x)
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # each (B, N, heads * head_dim)
        return self.proj_drop(self.proj(self.attend(q, k, v, attn_bias)))


class R2LBlock(nn.Module):
    """Regional self-attention, then local-with-regional window attention, then the MLP."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            head_dim: int,
            window_size: int,
            mlp_ratio: float = 4.,
            qkv_bias: bool = False,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            norm_eps: float = 1e-5,
            separate_local_norm: bool = False,
            rel_pos_per_block: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.attn = R2LAttention(
            dim, num_heads, head_dim, qkv_bias, attn_drop, proj_drop, norm_eps, separate_local_norm, **dd)
        # IBM's official model: a bias table per block; otherwise the stage's one (vit-pytorch)
        self.rel_pos = RelPosBias(
            (window_size, window_size), num_heads, num_prefix_tokens=1, **dd) if rel_pos_per_block else None
        self.norm = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()  # regional tokens (B, N, C)
        self.drop_path2 = WindowDropPath(drop_path)  # windows: one draw per image, as the regional branch
        self.drop_path3 = WindowDropPath(drop_path)

    def forward(self, tokens: torch.Tensor, batch_size: int, local_bias: torch.Tensor) -> torch.Tensor:
        # the stage's window layout, kept across its blocks: (B * rh * rw, 1 + window ** 2, C), window i's
        # regional token in front of its local tokens, windows of one image consecutive
        BR, N, C = tokens.shape
        # one split, not two slices: its gradient is one concatenation, a slice's a zero-filled full-size copy
        regions, local_tokens = tokens.split([1, N - 1], dim=1)
        regions = regions.reshape(batch_size, BR // batch_size, C)  # a view: (B, rh * rw, C)
        regions = regions + self.drop_path1(self.attn(regions))
        tokens = torch.cat((regions.reshape(BR, 1, C), local_tokens), dim=1)
        tokens = tokens + self.drop_path2(self.attn(tokens, local_bias, local=True), batch_size)
        return tokens + self.drop_path3(self.mlp(self.norm(tokens)), batch_size)


def _square_window(img_size: Optional[Tuple[int, int]], window_size: Optional[int]) -> int:
    """Regions are square: timm maxxvit's rule (``windows_for_size``) on the shorter side; an explicit
    window must be square, never silently cut to its shorter side."""
    window = windows_for_size(img_size, window_size)
    if window_size is not None and window[0] != window[1]:
        raise ValueError(f'RegionViT windows are square: window_size must be one int, got {window_size!r}')
    return min(window)


@register_notrace_function  # FX: one node; branch-free, so it also traces where not wrapped
def splits_evenly(height: int, width: int, region_patch: int, window_size: int, num_stages: int) -> bool:
    """Whether every stage's local map divides evenly among its regional tokens: the sizes vit-pytorch accepts."""
    remainders = 0
    for size in [height, width]:
        remainders = remainders + size % region_patch
        local, regions = size * window_size // region_patch, size // region_patch
        for _ in range(num_stages - 1):
            local, regions = (local + 1) // 2, (regions + 1) // 2  # both streams' stride-2 convs
            remainders = remainders + local % regions
    return remainders == 0


@register_notrace_function  # FX: pads by concrete sizes
def to_region_windows(
        local_tokens: torch.Tensor, regions: Tuple[int, int], window_size: int, even_split: bool,
) -> torch.Tensor:
    """(B, H, W, C) local map -> (B, rh * window, rw * window, C): window (i, j) holds region (i, j)'s tokens.

    A map that fills its windows (H = rh * window, W = rw * window, as at 224 px) is returned as it is.
    Otherwise the missing tokens are zeros, masked as keys by :func:`window_key_mask`:
    ``even_split`` (the sizes vit-pytorch accepts) gives each region H / rh x W / rw tokens at the top-left
    of its window, as vit-pytorch's smaller windows; otherwise each region takes ``window`` tokens per side
    and the map is padded at the bottom/right, which only shortens the last row and column of windows
    (IBM's official code).
    """
    B, H, W, C = local_tokens.shape
    rh, rw = regions
    if H == rh * window_size and W == rw * window_size:
        return local_tokens
    if even_split:
        x = local_tokens.reshape(B, rh, H // rh, rw, W // rw, C)
        x = F.pad(x, (0, 0, 0, window_size - W // rw, 0, 0, 0, window_size - H // rh))
        return x.reshape(B, rh * window_size, rw * window_size, C)
    return F.pad(local_tokens, (0, 0, 0, rw * window_size - W, 0, rh * window_size - H))


@register_notrace_function  # FX: crops by concrete sizes
def from_region_windows(
        windows: torch.Tensor, size: Tuple[int, int], regions: Tuple[int, int], window_size: int, even_split: bool,
) -> torch.Tensor:
    """Inverse of :func:`to_region_windows`: (B, rh * window, rw * window, C) -> the (B, H, W, C) local map."""
    B, Hp, Wp, C = windows.shape
    H, W = size
    rh, rw = regions
    if H == Hp and W == Wp:
        return windows
    if even_split:
        x = windows.reshape(B, rh, window_size, rw, window_size, C)[:, :, :H // rh, :, :W // rw]
        return x.reshape(B, H, W, C)
    return windows[:, :H, :W]


@register_notrace_function  # FX: branches on concrete sizes
def window_key_mask(
        rel_bias: torch.Tensor, size: Tuple[int, int], regions: Tuple[int, int], window_size: int,
        even_split: bool, batch_size: int,
) -> torch.Tensor:
    """The R2L attention bias of a stage whose (H, W) local map goes into windows by :func:`to_region_windows`.

    ``rel_bias`` (1, heads, N, N), N = 1 + window ** 2, is returned as it is when the map fills its windows
    (the fused kernels' fast path); otherwise padded keys get -inf on top of it: (B * rh * rw, heads, N, N)
    in the order of ``window_partition``. Every window keeps its regional token as a key, so no row is
    all -inf.
    """
    H, W = size
    if H == regions[0] * window_size and W == regions[1] * window_size:
        return rel_bias
    real = to_region_windows(rel_bias.new_ones(1, H, W, 1), regions, window_size, even_split)
    real = window_partition(real, (window_size, window_size)).transpose(1, 2)  # (rh * rw, 1, window ** 2)
    real = F.pad(real, (1, 0), value=1.)  # the regional token in front: (rh * rw, 1, N)
    mask = torch.zeros_like(real).masked_fill(real == 0, float('-inf')).unsqueeze(1)  # (rh * rw, 1, 1, N)
    return (rel_bias + mask).repeat(batch_size, 1, 1, 1)


DOWNSAMPLE_TYPES = ('conv', 'norm_act_dwconv')


def make_downsample(in_chs: int, dim: int, downsample: str, device=None, dtype=None) -> nn.Module:
    """The stride-2 3x3 downsampling of a stage (NCHW), one of ``DOWNSAMPLE_TYPES``."""
    dd = {'device': device, 'dtype': dtype}
    if downsample == 'conv':  # vit-pytorch: a full conv
        return nn.Conv2d(in_chs, dim, 3, stride=2, padding=1, **dd)
    # IBM's official model: pre-norm and GELU, then a depthwise conv giving each channel dim / in_chs outputs
    return nn.Sequential(
        LayerNorm2d(in_chs, eps=1e-5, **dd),
        GELU(),
        nn.Conv2d(in_chs, dim, 3, stride=2, padding=1, groups=in_chs, **dd),
    )


class RegionViTStage(nn.Module):
    """Optional stride-2 downsampling (shared by both streams) and PEG, then R2L blocks."""

    def __init__(
            self,
            in_chs: int,
            dim: int,
            depth: int,
            num_heads: int,
            head_dim: int,
            window_size: int,
            downsample: Optional[str],
            use_peg: bool,
            drop_path: List[float],
            rel_pos_per_block: bool = False,
            peg_after_first_block: bool = False,
            device=None,
            dtype=None,
            **block_kwargs: Any,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.grad_checkpointing = False
        self.window_size = window_size
        self.downsample = make_downsample(in_chs, dim, downsample, **dd) if downsample else None
        # vit-pytorch's PEG opens the stage on the local tokens; IBM's (bias-free) follows the first block on both
        self.peg_after_first_block = peg_after_first_block
        self.pos_conv = PosConv(dim, bias=not peg_after_first_block, **dd) if use_peg else None
        # one bias table per stage, shared by its blocks as vit-pytorch, or one per block (IBM);
        # the regional token gets none
        self.rel_pos = None if rel_pos_per_block else RelPosBias(
            (window_size, window_size), num_heads, num_prefix_tokens=1, **dd)
        self.blocks = nn.ModuleList([
            R2LBlock(dim, num_heads, head_dim, window_size, drop_path=drop_path[i],
                     rel_pos_per_block=rel_pos_per_block, **dd, **block_kwargs)
            for i in range(depth)
        ])

    def forward(
            self, x: Tuple[torch.Tensor, torch.Tensor], even_split: bool = False,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        local_tokens, region_tokens = x  # both NHWC, local (B, H, W, C) without padding, region (B, rh, rw, C)
        if self.downsample is not None:
            local_tokens = self.downsample(local_tokens.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            region_tokens = self.downsample(region_tokens.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        if self.pos_conv is not None and not self.peg_after_first_block:
            local_tokens = self.pos_conv(local_tokens)
        size = (local_tokens.shape[1], local_tokens.shape[2])
        regions = (region_tokens.shape[1], region_tokens.shape[2])
        # padded tokens stay masked keys through all blocks; as queries their outputs are cropped below
        local_tokens = to_region_windows(local_tokens, regions, self.window_size, even_split)
        batch_size = local_tokens.shape[0]
        # each (1 or B * rh * rw, heads, 1 + window ** 2, 1 + window ** 2)
        if self.rel_pos is not None:
            biases = [window_key_mask(self.rel_pos(), size, regions, self.window_size, even_split, batch_size)]
            biases = biases * len(self.blocks)
        else:
            biases = [window_key_mask(block.rel_pos(), size, regions, self.window_size, even_split, batch_size)
                      for block in self.blocks]
        tokens = self._to_windows(local_tokens, region_tokens)
        for i, block in enumerate(self.blocks):
            local_bias = biases[i]
            if self.grad_checkpointing and not torch.jit.is_scripting():
                tokens = checkpoint(block, tokens, batch_size, local_bias)
            else:
                tokens = block(tokens, batch_size, local_bias)
            if i == 0 and self.pos_conv is not None and self.peg_after_first_block:
                # on the real local map: its padding is cropped, then re-padded with zeros (as IBM)
                local_map, region_tokens = self._from_windows(tokens, batch_size, regions)
                local_map = from_region_windows(local_map, size, regions, self.window_size, even_split)
                local_tokens = to_region_windows(self.pos_conv(local_map), regions, self.window_size, even_split)
                tokens = self._to_windows(local_tokens, self.pos_conv(region_tokens))
        local_tokens, region_tokens = self._from_windows(tokens, batch_size, regions)
        return from_region_windows(local_tokens, size, regions, self.window_size, even_split), region_tokens

    def _to_windows(self, local_tokens: torch.Tensor, region_tokens: torch.Tensor) -> torch.Tensor:
        """(B, rh * window, rw * window, C) local, (B, rh, rw, C) regional -> the blocks' layout,
        (B * rh * rw, 1 + window ** 2, C): each window with its regional token in front."""
        B, rh, rw, C = region_tokens.shape
        windows = window_partition(local_tokens, (self.window_size, self.window_size))
        return torch.cat((region_tokens.reshape(B * rh * rw, 1, C), windows), dim=1)

    def _from_windows(
            self, tokens: torch.Tensor, batch_size: int, regions: Tuple[int, int],
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Inverse of :meth:`_to_windows`."""
        rh, rw = regions
        C = tokens.shape[-1]
        window = (self.window_size, self.window_size)
        region_tokens, local_tokens = tokens.split([1, tokens.shape[1] - 1], dim=1)
        local_tokens = window_reverse(local_tokens, window, rh * self.window_size, rw * self.window_size)
        return local_tokens, region_tokens.reshape(batch_size, rh, rw, C)


class StageSequence(nn.Sequential):
    """``nn.Sequential`` over stages that pass (local, regional) token pairs (typed for TorchScript)."""

    def forward(
            self, x: Tuple[torch.Tensor, torch.Tensor], even_split: bool = False,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        for stage in self:
            x = stage(x, even_split)
        return x


class Tokenizers(nn.Module):
    """Image -> (local tokens (B, ceil(H/4), ceil(W/4), C), regional tokens (B, ceil(H/p), ceil(W/p), C)).

    p is the region patch; the image is zero-padded at the bottom/right to multiples of it first.
    """

    def __init__(
            self, in_chans: int, dim: int, region_patch: int, three_convs: bool,
            stem_chs: Optional[Tuple[int, int]] = None, device=None, dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.region_patch = region_patch
        if three_convs:
            width1, width2 = stem_chs or (dim, dim)  # vit-pytorch: full width; IBM's: dim / 4, dim / 2
            self.local = nn.Sequential(
                nn.Conv2d(in_chans, width1, 3, stride=2, padding=1, **dd),
                LayerNorm2d(width1, eps=1e-5, **dd),
                GELU(),
                nn.Conv2d(width1, width2, 3, stride=2, padding=1, **dd),
                LayerNorm2d(width2, eps=1e-5, **dd),
                GELU(),
                nn.Conv2d(width2, dim, 3, padding=1, **dd),
            )
        else:
            self.local = nn.Conv2d(in_chans, dim, 8, stride=LOCAL_STRIDE, padding=3, **dd)
        # patchify + linear == a kernel = stride conv
        self.region = nn.Conv2d(in_chans, dim, region_patch, stride=region_patch, **dd)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        height, width = x.shape[-2], x.shape[-1]
        # channels-last: the convs run faster on it, the stem's LayerNorms then see contiguous NHWC views, and the
        # tokens come out NHWC without a copy
        x = pad_image_to_multiple(x, self.region_patch).contiguous(memory_format=torch.channels_last)
        # local tokens that only see padding are dropped (stages re-pad and mask them); regions keep the padding
        local_tokens = self.local(x).permute(0, 2, 3, 1)[:, :(height + 3) // 4, :(width + 3) // 4]  # stride 4
        return local_tokens, self.region(x).permute(0, 2, 3, 1)

    @torch.no_grad()
    def set_region_patch(self, region_patch: int) -> None:
        """A new region patch: the regional tokenizer's kernel resampled by timm's ``resample_patch_embed``."""
        if region_patch == self.region_patch:
            return
        old = self.region
        self.region = nn.Conv2d(
            old.in_channels, old.out_channels, region_patch, stride=region_patch,
            device=old.weight.device, dtype=old.weight.dtype)
        self.region.weight.copy_(resample_patch_embed(old.weight, [region_patch, region_patch]))
        self.region.bias.copy_(old.bias)
        self.region.weight.requires_grad_(old.weight.requires_grad)  # frozen stays frozen
        self.region.bias.requires_grad_(old.bias.requires_grad)
        self.region_patch = region_patch


@register_notrace_module  # FX leaf: it branches on concrete shapes
class RegionCheck(ImageCheck):
    """Each side must be at least one region patch; sizes in between are padded up to whole regions."""

    def check_size(self, height: int, width: int) -> None:
        low = self.min_size
        if height < low or width < low:
            raise ValueError(
                f'{self.model_name} needs images of at least one region, {low}x{low} '
                f'(local patch x window size), got {height}x{width}')


class RegionViT(StageModel):
    """RegionViT.

    Args:
        in_chans: Number of input image channels.
        num_classes: Number of classes, 0 for no classifier.
        global_pool: 'avg' or '' (no pooling).
        embed_dim: Width per stage (vit-pytorch ``dim``).
        depths: R2L blocks per stage (vit-pytorch ``depth``).
        num_heads: Attention heads, one value or one per stage.
        head_dim: Channels per head, one value or one per stage (vit-pytorch ``dim_head``).
        img_size: Nominal input size; sets the window when ``window_size`` is not given: the shorter side
            / 32 (224 -> 7, 384 -> 12), so regions of 4 x window px. Any size runs whatever it is.
        window_size: Local tokens per region side; default 7.
        local_patch_size: Local token stride; must be 4 (the tokenizers are fixed to it).
        tokenize_local_3_conv: Three-conv local tokenizer instead of one 8x8 conv.
        stem_chs: Widths of the 3-conv tokenizer's first two convs, default the first stage's (vit-pytorch).
        use_peg: Position-encoding generator at the start of stages 2-4 on the local tokens (vit-pytorch), or
            with ``peg_after_first_block`` after the first block of every stage on both streams (IBM's ``_peg``).
        peg_after_first_block: IBM's PEG placement (a bias-free depthwise conv); needs ``use_peg``.
        downsample: Stride-2 3x3 downsampling of stages 2-4, shared by both streams: 'conv' (a full conv,
            vit-pytorch) or 'norm_act_dwconv' (LayerNorm, GELU, depthwise conv: IBM's official model).
        separate_local_norm: The local pass of each block has its own pre-norm, the regional pass keeps
            ``attn.norm`` and both share the attention weights (IBM's official model).
        rel_pos_per_block: A relative-position table per block instead of one per stage (IBM's).
        norm_eps: Epsilon of the blocks' LayerNorms and the final norm (IBM's official model: 1e-6).
        norm_before_pool: LayerNorm every final regional token, then pool (IBM's) instead of pool, then
            LayerNorm (vit-pytorch).
        shrink_windows: Where a stage's local map splits evenly among its regional tokens with fewer tokens
            than a window, each region keeps only its share (vit-pytorch); False: every region gets a full
            window and the map is padded at the bottom/right (IBM's official model, at every size).
        mlp_ratio: MLP hidden width over block width.
        qkv_bias: Bias in the qkv projection.
        drop_rate: Dropout before the classifier.
        proj_drop_rate: Dropout after the attention projection and in the MLPs (vit-pytorch ``ff_dropout``).
        attn_drop_rate: Dropout on the attention weights (vit-pytorch ``attn_dropout``).
        drop_path_rate: Stochastic depth, linear over the blocks.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: Tuple[int, ...] = (64, 128, 256, 512),
            depths: Tuple[int, ...] = (2, 2, 8, 2),
            num_heads: Union[int, Tuple[int, ...]] = 4,
            head_dim: Union[int, Tuple[int, ...]] = 32,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            window_size: Optional[int] = None,
            local_patch_size: int = 4,
            tokenize_local_3_conv: bool = False,
            stem_chs: Optional[Tuple[int, int]] = None,
            use_peg: bool = False,
            peg_after_first_block: bool = False,
            downsample: str = 'conv',
            separate_local_norm: bool = False,
            rel_pos_per_block: bool = False,
            norm_eps: float = 1e-5,
            norm_before_pool: bool = False,
            shrink_windows: bool = True,
            mlp_ratio: float = 4.,
            qkv_bias: bool = False,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        check_common_args(
            num_classes, in_chans, global_pool, ('avg', ''), drop_rate=drop_rate, proj_drop_rate=proj_drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)
        num_stages = len(depths)
        dims = per_stage(embed_dim, num_stages, 'embed_dim')
        heads = per_stage(num_heads, num_stages, 'num_heads')
        head_dims = per_stage(head_dim, num_stages, 'head_dim')
        if local_patch_size != LOCAL_STRIDE:
            raise ValueError(f'local_patch_size must be {LOCAL_STRIDE} (the local tokenizers\' stride), '
                             f'got {local_patch_size}')
        self.img_size = to_2tuple(img_size or 224)
        window_size = _square_window(self.img_size if img_size is not None else None, window_size)
        if window_size < 1 or num_stages < 1 or min(depths) < 1:
            raise ValueError(f'window_size, the number of stages and every depth must be >= 1, got '
                             f'window_size={window_size}, depths={depths}')
        check_positive(embed_dim=dims, num_heads=heads, head_dim=head_dims)
        if downsample not in DOWNSAMPLE_TYPES:
            raise ValueError(f'downsample must be one of {DOWNSAMPLE_TYPES}, got {downsample!r}')
        if downsample == 'norm_act_dwconv' and any(b % a for a, b in zip(dims, dims[1:])):
            raise ValueError(f"downsample='norm_act_dwconv' is depthwise: each stage's width must be a multiple "
                             f"of the previous one's, got embed_dim={dims}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = dims[-1]
        region_patch = local_patch_size * window_size

        self.input_check = RegionCheck(type(self).__name__, in_chans, min_size=region_patch)
        self.stem = Tokenizers(in_chans, dims[0], region_patch, tokenize_local_3_conv, stem_chs, **dd)
        self.region_patch = region_patch
        self.window_size = window_size
        self.shrink_windows = shrink_windows
        self.num_stages = num_stages  # kept when pruning: the window split looks at every stage
        self.feature_info = []
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=False)
        stages, in_chs, first = [], dims[0], 0
        for i, depth in enumerate(depths):
            stages.append(RegionViTStage(
                in_chs, dims[i], depth, heads[i], head_dims[i], window_size, downsample=downsample if i > 0 else None,
                use_peg=use_peg and (i > 0 or peg_after_first_block), peg_after_first_block=peg_after_first_block,
                drop_path=dpr[first:first + depth], rel_pos_per_block=rel_pos_per_block,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate, attn_drop=attn_drop_rate,
                norm_eps=norm_eps, separate_local_norm=separate_local_norm, **dd))
            self.feature_info.append(dict(num_chs=dims[i], reduction=LOCAL_STRIDE << i, module=f'stages.{i}'))
            in_chs, first = dims[i], first + depth
        self.stages = StageSequence(*stages)
        if norm_before_pool:  # every regional token normalized, then pooled (IBM's official model)
            self.norm = LayerNorm2d(self.num_features, eps=norm_eps, **dd)
            self.head = ClassifierHead(
                self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        else:  # the head normalizes after pooling, as vit-pytorch
            self.norm = nn.Identity()
            self.head = NormMlpClassifierHead(
                self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate,
                norm_layer=partial(LayerNorm2d, eps=norm_eps), **dd)
        self.local_features = False  # set by prune_intermediate_layers
        self.init_weights()

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Local-token maps of the stages (padding cropped) as intermediates; the final output is what
        ``forward_features`` returns: the regional map, or the last kept local map once pruned."""
        check_output_fmt(output_fmt)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        intermediates: List[torch.Tensor] = []
        x = self.input_check(x)
        even_split = self.shrink_windows and splits_evenly(
            x.shape[-2], x.shape[-1], self.region_patch, self.window_size, self.num_stages)
        tokens = self.stem(x)
        if torch.jit.is_scripting() or not stop_early:  # can't slice stages in torchscript
            stages = self.stages
        else:
            stages = self.stages[:max_index + 1]
        for i, stage in enumerate(stages):
            tokens = stage(tokens, even_split)
            if i in take_indices:  # the stages crop their padding: (B, ceil(H / stride), ceil(W / stride), C)
                intermediates.append(to_format(tokens[0].permute(0, 3, 1, 2), output_fmt))
        if intermediates_only:
            return intermediates
        return self._features_out(tokens), intermediates

    @torch.jit.ignore
    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        num_stages = len(self.stages)
        take_indices = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        # features that end before the last stage are its tap, the local-token map
        self.local_features = self.local_features or len(self.stages) < num_stages
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_check(x)
        even_split = self.shrink_windows and splits_evenly(
            x.shape[-2], x.shape[-1], self.region_patch, self.window_size, self.num_stages)
        return self._features_out(self.stages(self.stem(x), even_split))

    @torch.jit.ignore
    def _set_windows(self, img_size: Optional[Tuple[int, int]], window_size: Optional[int]) -> int:
        """``set_input_size``'s window (shorter side / 32 unless ``window_size`` is given): relative-position
        tables and the regional tokenizer's kernel resampled in place."""
        window = _square_window(img_size, window_size)
        for module in self.modules():
            if isinstance(module, RelPosBias):
                module.set_window_size((window, window))
            elif isinstance(module, RegionViTStage):
                module.window_size = window
        self.window_size, self.region_patch = window, LOCAL_STRIDE * window
        self.stem.set_region_patch(self.region_patch)
        self.input_check.min_size = self.region_patch
        return window

    def _features_out(self, tokens: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        local_tokens, region_tokens = tokens
        if self.local_features:  # pruned: (B, C, ceil(H / stride), ceil(W / stride))
            return self.norm(local_tokens.permute(0, 3, 1, 2))
        return self.norm(region_tokens.permute(0, 3, 1, 2))  # (B, C, ceil(H / 224), ceil(W / 224)) at the defaults

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str) -> None:
        """timm's ``custom_load`` hook (the ``.in1k`` tags): IBM's release files are training checkpoints
        that pickle their argparse arguments beside the weights, which timm's loader refuses. Read with
        ``torch.load(weights_only=True)`` allowing ``argparse.Namespace`` only, taking ``'model'`` (what IBM
        evaluates, not an EMA copy), then as timm's loader:
        another ``num_classes`` starts a fresh classifier, another ``in_chans`` adapts the first convs."""
        with torch.serialization.safe_globals([argparse.Namespace]):
            state_dict = checkpoint_filter_fn(
                load_state_dict(checkpoint_path, use_ema=False, weights_only=True), self)
        fresh = []
        if state_dict['head.fc.weight'].shape[0] != self.num_classes:
            fresh = [k for k in state_dict if k.startswith('head.fc.')]
            for key in fresh:
                del state_dict[key]
        if self.in_chans != 3:
            for name in self.pretrained_cfg['first_conv']:
                state_dict[f'{name}.weight'] = adapt_input_conv(self.in_chans, state_dict[f'{name}.weight'])
        result = self.load_state_dict(state_dict, strict=not fresh)
        if result is not None and (result.unexpected_keys or set(result.missing_keys) - set(fresh)):
            raise RuntimeError(f'{checkpoint_path} does not fit {type(self).__name__}: missing '
                               f'{result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}')


# --- vit-pytorch conversion -------------------------------------------------------------------

def _config_from_vit_pytorch(ref: nn.Module) -> Dict[str, Any]:
    transformers = [layer[2] for layer in ref.layers]
    attns = [t.layers[0][0] for t in transformers]
    region_conv = ref.region_encoder[1]
    return dict(
        in_chans=region_conv.in_channels // ref.region_patch_size ** 2,
        num_classes=ref.to_logits[2].out_features,
        embed_dim=tuple(a.norm.normalized_shape[0] for a in attns),
        depths=tuple(len(t.layers) for t in transformers),
        num_heads=tuple(a.heads for a in attns),
        head_dim=tuple(a.to_qkv.out_features // 3 // a.heads for a in attns),
        window_size=transformers[0].window_size,
        local_patch_size=ref.local_patch_size,
        tokenize_local_3_conv=isinstance(ref.local_encoder, nn.Sequential),
        stem_chs=(attns[0].norm.normalized_shape[0],) * 2,  # full width, not the variants' narrow one
        use_peg=len(ref.layers) > 1 and not isinstance(ref.layers[1][1], nn.Identity),
        proj_drop_rate=transformers[0].layers[0][1][3].p,
        attn_drop_rate=attns[0].dropout.p,
    )


@register_converter('vit_pytorch.regionvit.RegionViT')
@torch.no_grad()
def _from_vit_pytorch(ref: nn.Module) -> RegionViT:
    config = _config_from_vit_pytorch(ref)
    model = timm.create_model('regionvit_tiny', **config)
    if config['tokenize_local_3_conv']:
        for i in (0, 3, 6):
            model.stem.local[i].load_state_dict(ref.local_encoder[i].state_dict())
        for i in (1, 4):
            model.stem.local[i].weight.copy_(ref.local_encoder[i].g.flatten())
            model.stem.local[i].bias.copy_(ref.local_encoder[i].b.flatten())
    else:
        model.stem.local.load_state_dict(ref.local_encoder.state_dict())
    region_conv = ref.region_encoder[1]  # 1x1 conv over (c p1 p2) channels
    model.stem.region.weight.copy_(region_conv.weight.reshape(model.stem.region.weight.shape))
    model.stem.region.bias.copy_(region_conv.bias)
    for stage, (down, peg, transformer) in zip(model.stages, ref.layers):
        if stage.downsample is not None:
            stage.downsample.load_state_dict(down.conv.state_dict())
        if stage.pos_conv is not None:
            stage.pos_conv.proj.load_state_dict(peg.proj.state_dict())
        # vit-pytorch indexes its table by dh + dw * (2w - 1), ours by dh * (2w - 1) + dw
        span = 2 * transformer.window_size - 1
        table = transformer.local_rel_pos_bias.weight
        stage.rel_pos.relative_position_bias_table.copy_(
            table.reshape(span, span, -1).transpose(0, 1).reshape(span * span, -1))
        for block, (attn, ff) in zip(stage.blocks, transformer.layers):
            block.attn.norm.load_state_dict(attn.norm.state_dict())
            block.attn.qkv.weight.copy_(attn.to_qkv.weight)
            block.attn.proj.load_state_dict(attn.to_out[0].state_dict())
            copy_linear_mlp(block.norm, block.mlp, ff)
    copy_norm_linear_head(model, ref.to_logits[1], ref.to_logits[2])
    return model


# --- IBM's official checkpoints ---------------------------------------------------------------

# IBM's R2L block norms (regional pass, local pass, MLP) -> ours; attn.qkv, attn.proj and mlp keep their names
_IBM_BLOCK_NORMS = {'norm0': 'attn.norm', 'norm1': 'attn.local_norm', 'norm2': 'norm'}


def _ibm_rel_pos_table(table: torch.Tensor) -> torch.Tensor:
    """IBM's (heads, span ** 2) table -> ours, (span ** 2, heads), span = 2 * window - 1.

    IBM indexes by (key - query + window // 2) mod span per axis (Python's negative indexing wraps),
    ours by (query - key + window - 1): the same offsets, rows and columns permuted.
    """
    heads, num_offsets = table.shape
    span = int(round(num_offsets ** 0.5))
    window = (span + 1) // 2
    order = [(window - 1 - i + window // 2) % span for i in range(span)]
    table = table.reshape(heads, span, span)[:, order][:, :, order]
    return table.reshape(heads, num_offsets).t().contiguous()


def _remap_ibm_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """IBM's official RegionViT state dict (IBM/RegionViT's ``regionvit.py``, the ``'model'`` entry of its
    checkpoints) in our layout; any other state dict is returned as it is. IBM's layout is told by its
    regional tokenizer, ``cls_token.proj``."""
    if 'cls_token.proj.weight' not in state_dict:
        return state_dict
    out = {}
    for key, value in state_dict.items():
        stage_key = re.match(r'layers\.(\d+)\.block\.(\d+)\.(.+)', key)
        if key.startswith('patch_embed.proj'):  # local tokenizer: one conv, or three with LayerNorm2d between
            key = 'stem.local' + key[len('patch_embed.proj'):]
        elif key.startswith('cls_token.proj.'):
            key = 'stem.region.' + key[len('cls_token.proj.'):]
        elif key.startswith('head.'):
            key = 'head.fc.' + key[len('head.'):]
        elif re.match(r'norm\d', key):  # per-stage norms of IBM's detection backbone
            continue
        elif re.match(r'layers\.\d+\.peg\.', key):  # the _peg variants' position encoding
            key = re.sub(r'layers\.(\d+)\.peg\.', r'stages.\1.pos_conv.proj.', key)
        elif stage_key:
            stage, index, rest = stage_key.groups()
            if index == '0':  # the stage's downsampling; proj_cls is the same module registered twice
                if rest.startswith('proj_cls.'):
                    continue
                key = f'stages.{stage}.downsample.{rest[len("proj."):]}'
            elif rest == 'attn.rel_pos':
                key = f'stages.{stage}.blocks.{int(index) - 1}.rel_pos.relative_position_bias_table'
                value = _ibm_rel_pos_table(value)
            else:
                module, param = rest.rsplit('.', 1)
                key = f'stages.{stage}.blocks.{int(index) - 1}.{_IBM_BLOCK_NORMS.get(module, module)}.{param}'
        if value.ndim == 4 and value.shape[0] == 1 and value.shape[2:] == (1, 1):
            value = value.flatten()  # IBM's LayerNorm2d keeps (1, C, 1, 1) weights, timm's (C,)
        out[key] = value
    return out


# --- registry ---------------------------------------------------------------------------------

def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: RegionViT) -> Dict[str, torch.Tensor]:
    """IBM's official checkpoints remapped to our layout, then weights of another window size (e.g. 224
    weights in a model built for 384, IBM's window-7 weights in a window-14 model): relative-position tables
    resampled to the model's window, the regional tokenizer's kernel (4 x window) to its region patch."""
    state_dict = resample_rel_pos_tables(_remap_ibm_state_dict(state_dict), model)
    kernel = state_dict.get('stem.region.weight')
    target = model.stem.region.weight.shape[-2:]
    if kernel is not None and kernel.ndim == 4 and kernel.shape[-2:] != target:
        state_dict['stem.region.weight'] = resample_patch_embed(kernel, list(target))
    return state_dict


def _create_regionvit(variant: str, pretrained: bool = False, **kwargs: Any) -> RegionViT:
    return build_variant(
        RegionViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, num_feature_taps=4, **kwargs)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return base_cfg(**{
        'first_conv': ['stem.local.0', 'stem.region'], 'min_input_size': (3, 28, 28), **kwargs},
        classifier='head.fc', pool_size=(1, 1), paper_ids=('arXiv:2106.02689',),
        paper_name='RegionViT: Regional-to-Local Attention for Vision Transformers')


IBM_URL = 'https://github.com/IBM/RegionViT'
IBM_RELEASE = f'{IBM_URL}/releases/download/weights-v0.1/'


def _ibm_cfg(file: str, top1: float, **kwargs: Any) -> Dict[str, Any]:
    """IBM's ImageNet-1k weights, read from its GitHub release by ``RegionViT.load_pretrained``; IBM's eval
    preprocessing (bicubic resize to 256, centre crop 224, ImageNet mean/std)."""
    return _cfg(
        url=IBM_RELEASE + file, custom_load=True, crop_pct=0.875, origin_url=IBM_URL,
        notes=(f"IBM's official ImageNet-1k weights (Apache-2.0, {IBM_URL}); top-1 {top1:g}% as reported by IBM, "
               f"not measured here; the download was not exercised on the build machines",), **kwargs)


# Publishing weights adds a tagged entry, e.g. 'regionvit_tiny.in1k': _cfg(hf_hub_id='org/regionvit_tiny.in1k').
default_cfgs = generate_default_cfgs({
    'regionvit_tiny': _cfg(),
    'regionvit_small': _cfg(),
    'regionvit_base': _cfg(first_conv=['stem.local', 'stem.region']),
    'regionvit_ibm_tiny.in1k': _ibm_cfg('RegionViT-Ti.pth', 80.4),
    'regionvit_ibm_small.in1k': _ibm_cfg('RegionViT-S.pth', 82.6),
    # IBM's README links RegionViT-S.pth for M by mistake; the release's naming gives RegionViT-M.pth
    'regionvit_ibm_medium.in1k': _ibm_cfg('RegionViT-M.pth', 83.1, first_conv=['stem.local', 'stem.region']),
    'regionvit_ibm_base.in1k': _ibm_cfg('RegionViT-B.pth', 83.2, first_conv=['stem.local', 'stem.region']),
    # window 14 (+ PEG), the detection backbones (IBM publishes them only inside its COCO detectors)
    'regionvit_ibm_small_w14': _cfg(origin_url=IBM_URL, min_input_size=(3, 56, 56)),
    'regionvit_ibm_small_w14_peg': _cfg(origin_url=IBM_URL, min_input_size=(3, 56, 56)),
    'regionvit_ibm_base_w14': _cfg(
        origin_url=IBM_URL, min_input_size=(3, 56, 56), first_conv=['stem.local', 'stem.region']),
    'regionvit_ibm_base_w14_peg': _cfg(
        origin_url=IBM_URL, min_input_size=(3, 56, 56), first_conv=['stem.local', 'stem.region']),
})


@register_variant
def regionvit_tiny(pretrained: bool = False, **kwargs: Any) -> RegionViT:
    model_args = dict(
        embed_dim=(64, 128, 256, 512), depths=(2, 2, 8, 2), num_heads=(2, 4, 8, 16), tokenize_local_3_conv=True,
        stem_chs=(16, 32))
    return _create_regionvit('regionvit_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_variant
def regionvit_small(pretrained: bool = False, **kwargs: Any) -> RegionViT:
    model_args = dict(
        embed_dim=(96, 192, 384, 768), depths=(2, 2, 8, 2), num_heads=(3, 6, 12, 24), tokenize_local_3_conv=True,
        stem_chs=(24, 48))
    return _create_regionvit('regionvit_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_variant
def regionvit_base(pretrained: bool = False, **kwargs: Any) -> RegionViT:
    model_args = dict(
        embed_dim=(128, 256, 512, 1024), depths=(2, 2, 14, 2), num_heads=(4, 8, 16, 32), tokenize_local_3_conv=False)
    return _create_regionvit('regionvit_base', pretrained=pretrained, **dict(model_args, **kwargs))


# IBM's official design (IBM/RegionViT) where it differs from vit-pytorch's
IBM_DESIGN = dict(
    downsample='norm_act_dwconv', separate_local_norm=True, rel_pos_per_block=True, qkv_bias=True, norm_eps=1e-6,
    norm_before_pool=True, shrink_windows=False)


@register_variant
def regionvit_ibm_tiny(pretrained: bool = False, **kwargs: Any) -> RegionViT:
    model_args = dict(
        embed_dim=(64, 128, 256, 512), depths=(2, 2, 8, 2), num_heads=(2, 4, 8, 16), tokenize_local_3_conv=True,
        stem_chs=(16, 32), **IBM_DESIGN)
    return _create_regionvit('regionvit_ibm_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_variant
def regionvit_ibm_small(pretrained: bool = False, **kwargs: Any) -> RegionViT:
    model_args = dict(
        embed_dim=(96, 192, 384, 768), depths=(2, 2, 8, 2), num_heads=(3, 6, 12, 24), tokenize_local_3_conv=True,
        stem_chs=(24, 48), **IBM_DESIGN)
    return _create_regionvit('regionvit_ibm_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_variant
def regionvit_ibm_medium(pretrained: bool = False, **kwargs: Any) -> RegionViT:
    model_args = dict(
        embed_dim=(96, 192, 384, 768), depths=(2, 2, 14, 2), num_heads=(3, 6, 12, 24), **IBM_DESIGN)
    return _create_regionvit('regionvit_ibm_medium', pretrained=pretrained, **dict(model_args, **kwargs))


@register_variant
def regionvit_ibm_base(pretrained: bool = False, **kwargs: Any) -> RegionViT:
    model_args = dict(
        embed_dim=(128, 256, 512, 1024), depths=(2, 2, 14, 2), num_heads=(4, 8, 16, 32), **IBM_DESIGN)
    return _create_regionvit('regionvit_ibm_base', pretrained=pretrained, **dict(model_args, **kwargs))


@register_variant
def regionvit_ibm_small_w14(pretrained: bool = False, **kwargs: Any) -> RegionViT:
    model_args = dict(
        embed_dim=(96, 192, 384, 768), depths=(2, 2, 8, 2), num_heads=(3, 6, 12, 24), tokenize_local_3_conv=True,
        stem_chs=(24, 48), window_size=14, **IBM_DESIGN)
    return _create_regionvit('regionvit_ibm_small_w14', pretrained=pretrained, **dict(model_args, **kwargs))


@register_variant
def regionvit_ibm_base_w14(pretrained: bool = False, **kwargs: Any) -> RegionViT:
    model_args = dict(
        embed_dim=(128, 256, 512, 1024), depths=(2, 2, 14, 2), num_heads=(4, 8, 16, 32), window_size=14,
        **IBM_DESIGN)
    return _create_regionvit('regionvit_ibm_base_w14', pretrained=pretrained, **dict(model_args, **kwargs))


@register_variant
def regionvit_ibm_small_w14_peg(pretrained: bool = False, **kwargs: Any) -> RegionViT:
    model_args = dict(
        embed_dim=(96, 192, 384, 768), depths=(2, 2, 8, 2), num_heads=(3, 6, 12, 24), tokenize_local_3_conv=True,
        stem_chs=(24, 48), window_size=14, use_peg=True, peg_after_first_block=True, **IBM_DESIGN)
    return _create_regionvit('regionvit_ibm_small_w14_peg', pretrained=pretrained, **dict(model_args, **kwargs))


@register_variant
def regionvit_ibm_base_w14_peg(pretrained: bool = False, **kwargs: Any) -> RegionViT:
    model_args = dict(
        embed_dim=(128, 256, 512, 1024), depths=(2, 2, 14, 2), num_heads=(4, 8, 16, 32), window_size=14,
        use_peg=True, peg_after_first_block=True, **IBM_DESIGN)
    return _create_regionvit('regionvit_ibm_base_w14_peg', pretrained=pretrained, **dict(model_args, **kwargs))
