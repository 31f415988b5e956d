"""MaxViT with register tokens: ``maxvit_reg_{tiny,small,base}``

MaxViT: Multi-Axis Vision Transformer -- Tu et al., https://arxiv.org/abs/2204.01697
Vision Transformers Need Registers -- Darcet et al., https://arxiv.org/abs/2309.16588
Behaviour reference: vit-pytorch's ``max_vit_with_registers.MaxViT`` (``from_vit_pytorch``
converts any of its instances to this model with the same outputs).

Each block is an MBConv, then block attention over non-overlapping windows with the block's
register tokens prepended to every window, then grid attention over dilated grids with those
registers averaged across windows; registers are dropped at the end of the block.

Differences from vit-pytorch:
  * stochastic depth is real DropPath on every residual branch, one draw per image also where the
    branch runs on windows or grid groups (the reference's ``Dropsample`` builds a 4-element tensor
    instead of a per-sample mask) and dropout defaults to 0 (the
    reference silently uses 0.1); ``drop_rate``/``proj_drop_rate``/``attn_drop_rate`` map timm's
    usual arguments explicitly.
  * the MBConv convs that feed a BatchNorm carry no bias (it is folded into the BatchNorm's
    running mean on conversion, exact in eval and a no-op in training).
  * ``in_chans``, ``num_classes``/``global_pool``, ``window_size`` and the squeeze-excitation width
    are arguments; the named variants use an SE width of 1/16 of the expanded width as the paper.
  * any input size from 32 px up (vit-pytorch needs every stage's map to divide into windows): block
    and grid attention zero-pad the map at the bottom/right to the window multiple, mask the padded
    tokens as keys (registers attend to real tokens only) and crop them after the block; the convs
    run on the real map. Sizes that divide need no padding and give vit-pytorch's outputs.
  * bad inputs raise ``ValueError``/``TypeError`` naming the valid sizes.
Differences from the paper: register tokens; a stem of two plain 3x3 convs (no norm/activation in
between) and no MBConv shortcut projection on stage-entry blocks, both as vit-pytorch.
"""
from functools import partial
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

import timm
from timm.layers import DropPath, LayerNorm2d, NormMlpClassifierHead, SqueezeExcite as TimmSqueezeExcite
from timm.layers import calculate_drop_path_rates, to_2tuple, trunc_normal_
from timm.models import checkpoint, generate_default_cfgs, register_notrace_function, register_notrace_module

from ._factory import base_cfg, build_variant, register_variant
from .base import StageModel, check_common_args, check_positive, stage_widths, windows_for_size
from .convert import copy_linear_mlp, copy_norm_linear_head, register_converter
from .layers import (
    HeadsAttention, ImageCheck, Linear, Mlp, RelPosBias, WindowDropPath, conv_gelu, gelu, grid_partition, grid_reverse,
    pad_to_multiple, patch_linear, resample_rel_pos_tables, window_padding_mask, window_partition, window_reverse,
)

__all__ = ['MaxViTReg']


# In training, 1x1 convs over maps of at most this many pixels run as the GEMM over their NHWC view (2-core
# Intel Xeon, batch 8, forward + backward: 7x7 1.3x, 14x14 1.08x the conv's speed; even at 28x28, mixed at 56x56,
# the conv 1.2x ahead at 112x112). Inference keeps the conv, which carries the folded BatchNorm and the GELU.
POINTWISE_GEMM_MAX_PIXELS = 196


class ConvBn(nn.Module):
    """Bias-free conv + BatchNorm (+ GELU with ``act``). Where the BatchNorm uses its running statistics
    (its own eval mode, whatever the model's: BN adaptation sets BatchNorms back to train in an eval model)
    it is folded into the conv's weight and bias on the fly: scaling a small weight saves a full pass over
    the activation, and the GELU then runs inside the conv where oneDNN can (:func:`conv_gelu`)."""
    gemm_max_pixels: torch.jit.Final[int]

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 1,
            stride: int = 1,
            groups: int = 1,
            act: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        self.act = act
        pointwise = kernel_size == 1 and stride == 1 and groups == 1
        self.gemm_max_pixels = POINTWISE_GEMM_MAX_PIXELS if pointwise else 0
        self.stride = stride
        self.padding = kernel_size // 2
        self.groups = groups
        self.conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, self.padding, groups=groups, bias=False, device=device, dtype=dtype)
        self.bn = nn.BatchNorm2d(out_chs, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.bn.running_mean, self.bn.running_var
        if self.bn.training or mean is None or var is None:  # batch statistics (or no running ones)
            x = self.bn(self._conv(x))
            return gelu(x) if self.act else x
        scale = self.bn.weight * torch.rsqrt(var + self.bn.eps)  # (C,)
        weight = self.conv.weight * scale.reshape(-1, 1, 1, 1)
        bias = self.bn.bias - mean * scale
        if self.act:
            return conv_gelu(x, weight, bias, self.stride, self.padding, self.groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, 1, self.groups)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] * x.shape[3] <= self.gemm_max_pixels:
            return patch_linear(x.permute(0, 2, 3, 1), self.conv.weight).permute(0, 3, 1, 2)  # the NHWC view's GEMM
        return self.conv(x)


class SqueezeExcite(TimmSqueezeExcite):
    """timm's SqueezeExcite (same parameters and keys) that squeezes with a sum over H, W scaled by 1 / (H * W):
    bitwise ``mean`` on the CPU (whose kernel is that sum and division), but autograd's gradient of a sum is a
    broadcast view, where mean's is a full-size quotient that is then added into the product's gradient, a
    mixed-layout add on a channels-last map (8x384x56x56 forward + backward: 27.5 -> 15.5 ms)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_se = x.sum((2, 3), keepdim=True) / (x.shape[2] * x.shape[3])  # (B, C, 1, 1)
        if self.add_maxpool:
            x_se = 0.5 * x_se + 0.5 * x.amax((2, 3), keepdim=True)
        x_se = self.fc2(self.act(self.bn(self.fc1(x_se))))
        return x * self.gate(x_se)


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expand -> depthwise 3x3 (stride) -> squeeze-excite -> 1x1 project,
    BatchNorm after every conv, GELU after the first two. Residual only where shapes allow."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            expand_ratio: float = 4.,
            se_ratio: float = 0.25,
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        mid_chs = int(out_chs * expand_ratio)
        self.conv_pw = ConvBn(in_chs, mid_chs, act=True, **dd)
        self.conv_dw = ConvBn(mid_chs, mid_chs, 3, stride=stride, groups=mid_chs, act=True, **dd)
        self.se = SqueezeExcite(mid_chs, rd_channels=int(mid_chs * se_ratio), bias=False, act_layer=nn.SiLU, **dd)
        self.conv_pwl = ConvBn(mid_chs, out_chs, **dd)
        self.has_skip = in_chs == out_chs and stride == 1
        self.drop_path = DropPath(drop_path) if self.has_skip and drop_path > 0. else nn.Identity()

    def output_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        """The (H, W) this block makes of an input map of ``size``: only the depthwise conv strides."""
        k, p, s = self.conv_dw.conv.kernel_size[0], self.conv_dw.padding, self.conv_dw.stride
        return (size[0] + 2 * p - k) // s + 1, (size[1] + 2 * p - k) // s + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(self.conv_pw(x))
        x = self.conv_pwl(self.se(x))
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


class RegisterAttention(HeadsAttention):
    """Multi-head self-attention over one window (or grid group) with register tokens in front,
    plus a relative-position bias whose extra slot covers every pair involving a register."""

    def __init__(
            self,
            dim: int,
            head_dim: int = 32,
            window_size: Tuple[int, int] = (7, 7),
            num_registers: int = 4,
            qkv_bias: bool = False,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__(
            dim, dim // head_dim, head_dim, attn_drop=attn_drop, proj_drop=proj_drop, proj_bias=False, **dd)
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.rel_pos = RelPosBias(window_size, self.num_heads, num_registers, prefix_bias=True, **dd)

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (windows, registers + window tokens, C); ``key_mask`` (windows, 1, 1, same) hides padded keys."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        bias = self.rel_pos()  # (1, heads, N, N)
        if key_mask is not None:
            bias = bias + key_mask  # (windows, heads, N, N)
        return self.proj_drop(self.proj(self.attend(q, k, v, bias)))


KeyMasks = Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]


@register_notrace_function  # FX: masks from concrete sizes
def padding_key_masks(
        size: Tuple[int, int], batch_size: int, window_size: Tuple[int, int], num_registers: int, x: torch.Tensor,
) -> KeyMasks:
    """(block, grid) attention masks for a (H, W) map padded to window multiples: each
    (B * windows, 1, 1, registers + window tokens), -inf on padded keys; None where nothing is padded."""
    block = window_padding_mask(size, window_size, x.device, x.dtype, False, num_registers)  # (windows, 1, N)
    grid = window_padding_mask(size, window_size, x.device, x.dtype, True, num_registers)
    if block is None or grid is None:  # both or neither: the same padding makes both
        return None, None
    return block.repeat(batch_size, 1, 1).unsqueeze(1), grid.repeat(batch_size, 1, 1).unsqueeze(1)


@register_notrace_module  # FX leaf: pads and masks by concrete sizes
class MaxViTRegBlock(nn.Module):
    """MBConv -> block attention (+ registers) -> MLP -> grid attention (+ mean registers) -> MLP."""

    def __init__(
            self,
            in_chs: int,
            dim: int,
            stride: int = 1,
            head_dim: int = 32,
            window_size: Tuple[int, int] = (7, 7),
            num_registers: int = 4,
            mlp_ratio: float = 4.,
            mbconv_ratio: float = 4.,
            se_ratio: float = 0.25,
            qkv_bias: bool = False,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.window_size = window_size
        self.num_registers = num_registers
        self.conv = MBConv(in_chs, dim, stride, mbconv_ratio, se_ratio, drop_path, **dd)
        self.register_tokens = nn.Parameter(torch.zeros(num_registers, dim, **dd))
        attn = partial(
            RegisterAttention, dim, head_dim, window_size, num_registers, qkv_bias, attn_drop, proj_drop, **dd)
        mlp = partial(Mlp, dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop, **dd)
        self.norm1, self.block_attn = nn.LayerNorm(dim, **dd), attn()
        self.norm2, self.block_mlp = nn.LayerNorm(dim, **dd), mlp()
        self.norm3, self.grid_attn = nn.LayerNorm(dim, **dd), attn()
        self.norm4, self.grid_mlp = nn.LayerNorm(dim, **dd), mlp()
        self.drop_path = WindowDropPath(drop_path)  # one draw per image, registers included

    def init_weights(self) -> None:
        trunc_normal_(self.register_tokens, std=.02)

    def forward(self, x: torch.Tensor, key_masks: Optional[KeyMasks] = None) -> torch.Tensor:
        """``key_masks``: :func:`padding_key_masks` for this block's map, built once by the stage for all its
        blocks (built here when not given)."""
        x = self.conv(x)
        B, C, H, W = x.shape
        R = self.num_registers
        window = self.window_size
        # maps that do not divide into windows are zero-padded at the bottom/right, the padded tokens are
        # masked as keys (for the registers too) and cropped at the end; a map that divides needs neither
        x = pad_to_multiple(x.permute(0, 2, 3, 1), window)  # (B, Hp, Wp, C)
        Hp, Wp = x.shape[1], x.shape[2]
        if key_masks is None:
            key_masks = padding_key_masks((H, W), B, window, R, x)
        block_mask, grid_mask = key_masks

        # block attention: every window attends together with its own copy of the registers
        t = window_partition(x, window)  # (B * nW, wh * ww, C)
        t = torch.cat([self.register_tokens.expand(t.shape[0], -1, -1), t], dim=1)
        t = t + self.drop_path(self.block_attn(self.norm1(t), block_mask), B)
        t = t + self.drop_path(self.block_mlp(self.norm2(t)), B)
        # splits, not slices: a split's gradient is one concatenation, a slice's a zero-filled full-size copy
        registers, t = t.split([R, t.shape[1] - R], dim=1)
        registers = registers.reshape(B, -1, R, C).mean(1)  # (B, R, C): averaged over windows
        x = window_reverse(t, window, Hp, Wp)

        # grid attention: dilated groups spanning the map, with the averaged registers
        t = grid_partition(x, window)  # (B * nG, gh * gw, C)
        registers = registers.unsqueeze(1).expand(-1, t.shape[0] // B, -1, -1).reshape(-1, R, C)
        t = torch.cat([registers, t], dim=1)
        t = t + self.drop_path(self.grid_attn(self.norm3(t), grid_mask), B)
        t = t.split([R, t.shape[1] - R], dim=1)[1]  # registers are discarded, the MLP sees the map tokens only
        t = t + self.drop_path(self.grid_mlp(self.norm4(t)), B)
        x = grid_reverse(t, window, Hp, Wp)[:, :H, :W]
        return x.permute(0, 3, 1, 2)

    def set_window_size(self, window_size: Tuple[int, int]) -> None:
        """Windows and grid groups of a new size; the relative-position tables are resampled to it."""
        self.window_size = tuple(window_size)
        self.block_attn.rel_pos.set_window_size(self.window_size)
        self.grid_attn.rel_pos.set_window_size(self.window_size)


class MaxViTRegStage(nn.Module):
    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            depth: int,
            drop_path: List[float],
            device=None,
            dtype=None,
            **block_kwargs,
    ):
        super().__init__()
        self.grad_checkpointing = False
        self.blocks = nn.Sequential(*[
            MaxViTRegBlock(
                in_chs if i == 0 else out_chs, out_chs, stride=2 if i == 0 else 1, drop_path=drop_path[i],
                device=device, dtype=dtype, **block_kwargs)
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.blocks[0]
        size = first.conv.output_size((x.shape[-2], x.shape[-1]))
        key_masks = padding_key_masks(size, x.shape[0], first.window_size, first.num_registers, x)  # once per stage
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, key_masks)
            else:
                x = block(x, key_masks)
        return x


class Stem(nn.Module):
    """Two 3x3 convs, the first with stride 2 (no norm or activation in between, as vit-pytorch)."""

    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1, device=device, dtype=dtype)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last from here on: oneDNN convs are several times faster on it, and the NHWC
        # token views the attention needs are then free (no copies)
        x = x.contiguous(memory_format=torch.channels_last)
        return self.conv2(self.conv1(x))


class MaxViTReg(StageModel):
    """MaxViT with register tokens.

    Args:
        in_chans: Number of input image channels.
        num_classes: Number of classes, 0 for no classifier.
        global_pool: 'avg' or '' (no pooling).
        embed_dim: Width of the first stage, doubled per stage (vit-pytorch ``dim``), or one width per stage.
        depths: Blocks per stage (vit-pytorch ``depth``).
        head_dim: Channels per attention head (vit-pytorch ``dim_head``).
        stem_width: Stem width, defaults to the first stage's (vit-pytorch ``dim_conv_stem``).
        img_size: Nominal input size; sets the windows when ``window_size`` is not given (img_size / 32 per
            side, as timm's maxxvit: 224 -> 7, 384 -> 12, 512 -> 16). Any size runs whatever it is.
        window_size: Side (or (height, width)) of the block windows and of the grid groups; default 7.
        num_registers: Register tokens per block (vit-pytorch ``num_register_tokens``).
        mlp_ratio: MLP hidden width over block width.
        mbconv_ratio: MBConv expansion (vit-pytorch ``mbconv_expansion_rate``).
        se_ratio: Squeeze-excitation width over the expanded width (vit-pytorch ``mbconv_shrinkage_rate``).
        qkv_bias: Bias in the qkv projection.
        drop_rate: Dropout before the classifier.
        proj_drop_rate: Dropout after the attention projection and in the MLPs.
        attn_drop_rate: Dropout on the attention weights.
        drop_path_rate: Stochastic depth, linear over the blocks.
    """
    stem_is_feature = True

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: Union[int, Tuple[int, ...]] = 64,
            depths: Tuple[int, ...] = (2, 2, 5, 2),
            head_dim: int = 32,
            stem_width: Optional[int] = None,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            window_size: Optional[Union[int, Tuple[int, int]]] = None,
            num_registers: int = 4,
            mlp_ratio: float = 4.,
            mbconv_ratio: float = 4.,
            se_ratio: float = 0.25,
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
        check_positive(num_stages=num_stages, depths=depths, embed_dim=embed_dim, head_dim=head_dim,
                       stem_width=1 if stem_width is None else stem_width)  # windows: windows_for_size
        dims = stage_widths(embed_dim, num_stages)
        if any(d % head_dim for d in dims):
            raise ValueError(f'every stage width must be a multiple of head_dim={head_dim}, got {dims}')
        if num_registers < 1:
            raise ValueError(f'num_registers must be at least 1, got {num_registers}')
        stem_width = stem_width or dims[0]
        self.img_size = to_2tuple(img_size or 224)
        window = windows_for_size(self.img_size if img_size is not None else None, window_size)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = dims[-1]

        # any size with at least one token at the last stride: windows pad and mask what they lack
        self.input_check = ImageCheck(type(self).__name__, in_chans, min_size=2 << num_stages)
        self.stem = Stem(in_chans, stem_width, **dd)
        self.feature_info = [dict(num_chs=stem_width, reduction=2, module='stem')]
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=False)
        stages, in_chs, first = [], stem_width, 0
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            stages.append(MaxViTRegStage(
                in_chs, dim, depth, dpr[first:first + depth], head_dim=head_dim,
                window_size=window, num_registers=num_registers, mlp_ratio=mlp_ratio,
                mbconv_ratio=mbconv_ratio, se_ratio=se_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate, **dd))
            self.feature_info.append(dict(num_chs=dim, reduction=2 ** (i + 2), module=f'stages.{i}'))
            in_chs, first = dim, first + depth
        self.stages = nn.Sequential(*stages)
        self.norm = nn.Identity()  # the head normalizes after pooling, as vit-pytorch
        self.head = NormMlpClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate,
            norm_layer=partial(LayerNorm2d, eps=1e-5), **dd)
        self.init_weights()

    @torch.jit.ignore
    def _set_windows(
            self, img_size: Optional[Tuple[int, int]], window_size: Optional[Union[int, Tuple[int, int]]],
    ) -> Tuple[int, int]:
        """``set_input_size``'s windows: img_size / 32 unless ``window_size`` is given, every block's
        relative-position tables resampled in place."""
        window = windows_for_size(img_size, window_size)
        for stage in self.stages:
            for block in stage.blocks:
                block.set_window_size(window)
        return window


# --- vit-pytorch conversion -------------------------------------------------------------------

def _mbconv_net(conv: nn.Module) -> nn.Sequential:
    return conv.fn if hasattr(conv, 'fn') else conv  # MBConvResidual wraps the Sequential


def _config_from_vit_pytorch(ref: nn.Module) -> Dict[str, Any]:
    dims: List[int] = []
    depths: List[int] = []
    for conv, _, _ in ref.layers:
        net = _mbconv_net(conv)
        if net[3].stride[0] == 2:  # depthwise conv with stride 2 opens a stage
            dims.append(net[7].out_channels)
            depths.append(0)
        depths[-1] += 1
    first = _mbconv_net(ref.layers[0][0])
    attn = ref.layers[0][1][0]
    hidden = first[0].out_channels
    return dict(
        in_chans=ref.conv_stem[0].in_channels,
        num_classes=ref.mlp_head[-1].out_features,
        embed_dim=tuple(dims),
        depths=tuple(depths),
        head_dim=dims[0] // attn.heads,
        stem_width=ref.conv_stem[0].out_channels,
        window_size=ref.window_size,
        num_registers=ref.register_tokens[0].shape[0],
        mbconv_ratio=hidden / dims[0],
        se_ratio=first[6].gate[1].out_features / hidden,
        proj_drop_rate=attn.attend[1].p,
        attn_drop_rate=attn.attend[1].p,
    )


def _load_conv_bn(conv_bn: ConvBn, ref_conv: nn.Conv2d, ref_bn: nn.BatchNorm2d) -> None:
    """Copies a biased conv + BatchNorm into a bias-free conv + BatchNorm: BN(z + b) == BN'(z) with
    running_mean' = running_mean - b (and batch statistics cancel b anyway)."""
    conv_bn.conv.weight.copy_(ref_conv.weight)
    conv_bn.bn.load_state_dict(ref_bn.state_dict())
    if ref_conv.bias is not None:
        conv_bn.bn.running_mean.sub_(ref_conv.bias)


@register_converter('vit_pytorch.max_vit_with_registers.MaxViT')
@torch.no_grad()
def _from_vit_pytorch(ref: nn.Module) -> MaxViTReg:
    config = _config_from_vit_pytorch(ref)
    model = timm.create_model('maxvit_reg_tiny', **config)
    model.stem.conv1.load_state_dict(ref.conv_stem[0].state_dict())
    model.stem.conv2.load_state_dict(ref.conv_stem[1].state_dict())
    blocks = [block for stage in model.stages for block in stage.blocks]
    for block, (conv, (block_attn, block_ff), (grid_attn, grid_ff)), registers in zip(
            blocks, ref.layers, ref.register_tokens):
        net = _mbconv_net(conv)
        _load_conv_bn(block.conv.conv_pw, net[0], net[1])
        _load_conv_bn(block.conv.conv_dw, net[3], net[4])
        block.conv.se.fc1.weight.copy_(net[6].gate[1].weight[:, :, None, None])
        block.conv.se.fc2.weight.copy_(net[6].gate[3].weight[:, :, None, None])
        _load_conv_bn(block.conv.conv_pwl, net[7], net[8])
        block.register_tokens.copy_(registers)
        attentions = ((block.norm1, block.block_attn, block_attn), (block.norm3, block.grid_attn, grid_attn))
        for norm, attn, ref_attn in attentions:
            norm.load_state_dict(ref_attn.norm.state_dict())
            attn.qkv.load_state_dict(ref_attn.to_qkv.state_dict())
            attn.rel_pos.relative_position_bias_table.copy_(ref_attn.rel_pos_bias.weight)
            attn.proj.load_state_dict(ref_attn.to_out[0].state_dict())
        copy_linear_mlp(block.norm2, block.block_mlp, block_ff)
        copy_linear_mlp(block.norm4, block.grid_mlp, grid_ff)
    copy_norm_linear_head(model, ref.mlp_head[1], ref.mlp_head[2])
    return model


# --- registry ---------------------------------------------------------------------------------

def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: MaxViTReg) -> Dict[str, torch.Tensor]:
    """Weights of another window size (e.g. 224 weights in a model built for 384): the relative-position
    tables resampled to the model's windows (the registers' slot carried over)."""
    return resample_rel_pos_tables(state_dict, model)


def _create_maxvit_reg(variant: str, pretrained: bool = False, **kwargs: Any) -> MaxViTReg:
    return build_variant(
        MaxViTReg, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, num_feature_taps=5, **kwargs)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return base_cfg(
        first_conv='stem.conv1', classifier='head.fc', min_input_size=(3, 32, 32),
        paper_ids=('arXiv:2204.01697', 'arXiv:2309.16588'),
        paper_name='MaxViT: Multi-Axis Vision Transformer (with register tokens)',
        **kwargs)


# Publishing weights adds a tagged entry, e.g. 'maxvit_reg_tiny.in1k': _cfg(hf_hub_id='org/maxvit_reg_tiny.in1k').
default_cfgs = generate_default_cfgs({
    'maxvit_reg_tiny': _cfg(),
    'maxvit_reg_small': _cfg(),
    'maxvit_reg_base': _cfg(),
})


@register_variant
def maxvit_reg_tiny(pretrained: bool = False, **kwargs: Any) -> MaxViTReg:
    model_args = dict(embed_dim=64, depths=(2, 2, 5, 2), stem_width=64, se_ratio=0.0625)
    return _create_maxvit_reg('maxvit_reg_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_variant
def maxvit_reg_small(pretrained: bool = False, **kwargs: Any) -> MaxViTReg:
    model_args = dict(embed_dim=96, depths=(2, 2, 5, 2), stem_width=64, se_ratio=0.0625)
    return _create_maxvit_reg('maxvit_reg_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_variant
def maxvit_reg_base(pretrained: bool = False, **kwargs: Any) -> MaxViTReg:
    model_args = dict(embed_dim=96, depths=(2, 6, 14, 2), stem_width=64, se_ratio=0.0625)
    return _create_maxvit_reg('maxvit_reg_base', pretrained=pretrained, **dict(model_args, **kwargs))
