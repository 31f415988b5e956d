"""Twins-SVT in vit-pytorch's design: ``twinssvt_{tiny,small,base}``

Twins: Revisiting the Design of Spatial Attention in Vision Transformers -- Chu et al.,
https://arxiv.org/abs/2104.13840
Behaviour reference: vit-pytorch's ``twins_svt.TwinsSVT`` (``from_vit_pytorch`` converts any of its
instances to this model with the same eval outputs).

Each stage: a patch embedding (pixel-unshuffle, LayerNorm, linear, LayerNorm), one unit, a
position-encoding generator (PEG), then more units. A unit is locally-grouped attention in
``window_size`` windows + MLP, then global attention whose keys/values come from a k x k stride-k
conv (``global_k``) + MLP; the last stage has no local half. Average pool + linear head.

Differences from vit-pytorch:
  * tokens stay NHWC and the 1x1 convs / channel LayerNorms are ``nn.Linear`` / ``nn.LayerNorm``
    (same maths; conversion reshapes the weights); local q and kv projections are one fused linear.
  * heads and head width are per-stage arguments (the reference always uses 8 x 64); defaults
    keep the reference's, the named variants use head width 32 (heads = dim / 32) as the paper.
  * ``global_k`` is per stage; the named variants use the paper's (8, 4, 2, 1) (the reference's 7
    everywhere collapses the last stage to one key and makes a "small" model ~198M parameters).
  * ``in_chans`` (hard-coded 3 there), ``drop_path_rate`` (real DropPath per block),
    ``drop_rate`` (before the classifier), ``proj_drop_rate``, ``attn_drop_rate`` (local attention
    too) are arguments.
  * any input size >= 32, non-square included: the patch embedding zero-pads to a multiple of its
    patch, local windows are zero-padded and padded keys masked (the reference needs multiples of
    the patch and window), global reduction floors like the reference (one padded cell if the map
    is smaller than k). At sizes the reference accepts the outputs are equal.
  * ``depths`` counts units per stage, i.e. the reference's ``s*_depth`` + 1.
Differences from the paper: the vit-pytorch design (pixel-unshuffle + norms instead of a strided
conv patch embedding, the PEG after the first unit rather than after the first block, no final
norm, local q/k/v without bias, no conditional position encoding in the last stage's first block).
Block counts equal the paper's (S: 2, 2, 10, 4; B: 2, 2, 18, 2). The extra parameters (S: +1.1M, all
in attention; MLPs, embeddings, PEGs and head match timm's ``twins_svt_small`` to within 4k) come
from vit-pytorch's global attention: its k x k stride-k conv maps straight to keys and values
(2 * dim^2 * k^2 weights) where the official model uses a dim -> dim k x k conv, a LayerNorm and a
dim -> 2 * dim linear (dim^2 * k^2 + 2 * dim^2).
"""
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

import timm
from timm.layers import ClassifierHead, calculate_drop_path_rates, to_2tuple
from timm.models import checkpoint, generate_default_cfgs
from timm.models._manipulate import adapt_input_conv

from ._factory import base_cfg, build_variant, register_variant
from .base import StageModel, check_common_args, check_positive, per_stage
from .convert import copy_channel_norm, copy_conv1x1, copy_conv_mlp, register_converter
from .layers import (
    ImageCheck, Linear, PosConv, PreNormBlock, ReducedKVAttention, WindowAttention, pad_image_to_multiple,
)

__all__ = ['TwinsSVT']

IntOrTuple = Union[int, Tuple[int, ...]]


class PatchEmbed(nn.Module):
    """Pixel-unshuffle by ``patch_size``, LayerNorm, linear, LayerNorm: NCHW in, NHWC out."""

    def __init__(self, in_chs: int, out_chs: int, patch_size: int, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.patch_size = patch_size
        patch_chs = in_chs * patch_size * patch_size
        self.norm_in = nn.LayerNorm(patch_chs, **dd)
        self.proj = Linear(patch_chs, out_chs, **dd)
        self.norm_out = nn.LayerNorm(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_image_to_multiple(x, self.patch_size)
        # (B, C, H*p, W*p) -> (B, C*p*p, H, W), channel order (c p1 p2) as the reference's rearrange
        x = F.pixel_unshuffle(x, self.patch_size).permute(0, 2, 3, 1)  # (B, H, W, C*p*p)
        return self.norm_out(self.proj(self.norm_in(x)))


class TwinsStage(nn.Module):
    """Patch embedding, then ``depth`` units with the PEG after the first; NCHW in and out."""

    def __init__(
            self,
            in_chs: int,
            dim: int,
            depth: int,
            patch_size: int,
            has_local: bool,
            window_size: int,
            global_k: int,
            num_heads: int,
            head_dim: int,
            pos_kernel_size: int,
            drop_path: List[float],
            mlp_ratio: float = 4.,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.grad_checkpointing = False
        self.downsample = PatchEmbed(in_chs, dim, patch_size, **dd)
        kinds: List[Optional[int]] = [window_size, None] if has_local else [None]  # one unit
        blocks: List[nn.Module] = []
        for unit in range(depth):
            for kind in kinds:
                if kind is not None:  # locally-grouped self-attention
                    attn = WindowAttention(
                        dim, num_heads, head_dim, kind, attn_drop=attn_drop, proj_drop=proj_drop, **dd)
                else:  # global sub-sampled attention
                    attn = ReducedKVAttention(
                        dim, num_heads, head_dim, global_k, attn_drop=attn_drop, proj_drop=proj_drop, **dd)
                blocks.append(PreNormBlock(
                    dim, attn, mlp_ratio, proj_drop, drop_path=drop_path[len(blocks)], **dd))
        self.pos_block = PosConv(dim, pos_kernel_size, **dd)
        self.first_unit = len(kinds)  # the PEG follows the first unit's blocks
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)  # (B, H, W, dim)
        for i, block in enumerate(self.blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x)
            else:
                x = block(x)
            if i == self.first_unit - 1:
                x = self.pos_block(x)
        return x.permute(0, 3, 1, 2)  # (B, dim, H, W), channels-last in memory


class TwinsSVT(StageModel):
    """Twins-SVT in vit-pytorch's design.

    Args:
        in_chans: Number of input image channels.
        img_size: Nominal input size, recorded for data configs (every size from the minimum runs).
        num_classes: Number of classes, 0 for no classifier.
        global_pool: 'avg' or '' (no pooling).
        embed_dims: Width per stage (vit-pytorch ``s*_emb_dim``).
        depths: Units per stage (vit-pytorch ``s*_depth`` + 1).
        num_heads: Heads per stage (vit-pytorch: always 8).
        head_dim: Channels per head, per stage (vit-pytorch: always 64).
        patch_sizes: Patch-embedding downsampling per stage (vit-pytorch ``s*_patch_size``).
        window_size: Local attention window side (vit-pytorch ``s*_local_patch_size``), per stage.
        global_k: Key/value reduction of the global attention (vit-pytorch ``s*_global_k``), per stage.
        pos_kernel_size: Depthwise kernel of the position-encoding generator (vit-pytorch ``peg_kernel_size``).
        mlp_ratio: MLP hidden width over stage width.
        drop_rate: Dropout before the classifier.
        proj_drop_rate: Dropout after the attention projections and in the MLPs (vit-pytorch ``dropout``).
        attn_drop_rate: Dropout on the attention weights.
        drop_path_rate: Stochastic depth, linear over the blocks.
    """

    def __init__(
            self,
            in_chans: int = 3,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Tuple[int, ...] = (64, 128, 256, 512),
            depths: Tuple[int, ...] = (2, 2, 6, 5),
            num_heads: IntOrTuple = 8,
            head_dim: IntOrTuple = 64,
            patch_sizes: IntOrTuple = (4, 2, 2, 2),
            window_size: IntOrTuple = 7,
            global_k: IntOrTuple = 7,
            pos_kernel_size: int = 3,
            mlp_ratio: float = 4.,
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
        num_stages = len(embed_dims)
        if num_stages < 1 or len(depths) != num_stages:
            raise ValueError(f'embed_dims and depths need one value per stage, got {embed_dims} and {depths}')
        if any(d < 1 for d in depths):
            raise ValueError(f'every stage needs at least one unit (depths >= 1), got {depths}')
        heads = per_stage(num_heads, num_stages, 'num_heads')
        head_dims = per_stage(head_dim, num_stages, 'head_dim')
        patches = per_stage(patch_sizes, num_stages, 'patch_sizes')
        windows = per_stage(window_size, num_stages, 'window_size')
        reductions = per_stage(global_k, num_stages, 'global_k')
        check_positive(embed_dims=embed_dims, num_heads=heads, head_dim=head_dims, patch_sizes=patches,
                       window_size=windows, global_k=reductions)
        if pos_kernel_size < 1 or pos_kernel_size % 2 == 0:
            raise ValueError(f'pos_kernel_size must be a positive odd integer, got {pos_kernel_size}')
        self.in_chans = in_chans
        self.img_size = to_2tuple(img_size or 224)  # nominal only: nothing here depends on the input size
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dims[-1]

        total_stride = 1
        for p in patches:
            total_stride *= p
        self.input_check = ImageCheck(type(self).__name__, in_chans, min_size=total_stride)
        self.stem = nn.Identity()  # the first stage's patch embedding is the stem
        # blocks per stage: two per unit (local + global), one in the last stage
        num_blocks = [d * (1 if i == num_stages - 1 else 2) for i, d in enumerate(depths)]
        dpr = calculate_drop_path_rates(drop_path_rate, num_blocks, stagewise=False)
        self.feature_info = []
        stages, in_chs, first, stride = [], in_chans, 0, 1
        for i in range(num_stages):
            stages.append(TwinsStage(
                in_chs, embed_dims[i], depths[i], patches[i], i < num_stages - 1, windows[i], reductions[i],
                heads[i], head_dims[i], pos_kernel_size, dpr[first:first + num_blocks[i]], mlp_ratio=mlp_ratio,
                proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, **dd))
            stride *= patches[i]
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=stride, module=f'stages.{i}'))
            in_chs, first = embed_dims[i], first + num_blocks[i]
        self.stages = nn.Sequential(*stages)
        self.norm = nn.Identity()  # no final norm, as vit-pytorch
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.init_weights()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        # no separate stem: the first stage's patch embedding is one (learns slowest under layer decay)
        return dict(super().group_matcher(coarse), stem=r'^stages\.0\.downsample')


# --- vit-pytorch conversion -------------------------------------------------------------------

def _config_from_vit_pytorch(ref: nn.Module) -> Dict[str, Any]:
    dims, depths, patches, windows, ks, heads, head_dims = [], [], [], [], [], [], []
    for stage in list(ref.layers)[:-3]:  # the last three are pool, rearrange, linear
        embed, first, peg, rest = stage
        local_attn, _, global_attn, _ = first.layers[0]
        dims.append(embed.dim_out)
        depths.append(1 + len(rest.layers))
        patches.append(embed.patch_size)
        windows.append(local_attn.fn.patch_size if isinstance(local_attn, nn.Module) and hasattr(local_attn, 'fn')
                       else 7)
        ks.append(global_attn.fn.to_kv.stride[0])
        heads.append(global_attn.fn.heads)
        head_dims.append(global_attn.fn.to_q.out_channels // global_attn.fn.heads)
    dropout = ref.layers[0][1].layers[0][3].fn.net[3].p
    return dict(
        in_chans=ref.layers[0][0].dim,
        num_classes=ref.layers[-1].out_features,
        embed_dims=tuple(dims),
        depths=tuple(depths),
        num_heads=tuple(heads),
        head_dim=tuple(head_dims),
        patch_sizes=tuple(patches),
        window_size=tuple(windows),
        global_k=tuple(ks),
        pos_kernel_size=ref.layers[0][2].proj.fn.kernel_size[0],
        proj_drop_rate=dropout,
        attn_drop_rate=dropout,
    )


@register_converter('vit_pytorch.twins_svt.TwinsSVT')
@torch.no_grad()
def _from_vit_pytorch(ref: nn.Module) -> TwinsSVT:
    config = _config_from_vit_pytorch(ref)
    model = timm.create_model('twinssvt_tiny', **config)
    for stage, (embed, first, peg, rest) in zip(model.stages, list(ref.layers)[:-3]):
        copy_channel_norm(stage.downsample.norm_in, embed.proj[0])
        copy_conv1x1(stage.downsample.proj, embed.proj[1])
        copy_channel_norm(stage.downsample.norm_out, embed.proj[2])
        stage.pos_block.proj.load_state_dict(peg.proj.fn.state_dict())
        blocks = iter(stage.blocks)
        for local_attn, local_ff, global_attn, global_ff in list(first.layers) + list(rest.layers):
            if hasattr(local_attn, 'fn'):  # stages with a local half
                block = next(blocks)
                ref_attn = local_attn.fn
                copy_channel_norm(block.norm1, ref_attn.norm)
                copy_conv1x1(block.attn.qkv, ref_attn.to_q, ref_attn.to_kv)
                copy_conv1x1(block.attn.proj, ref_attn.to_out[0])
                copy_conv_mlp(block.norm2, block.mlp, local_ff.fn)
            block = next(blocks)
            ref_attn = global_attn.fn
            copy_channel_norm(block.norm1, ref_attn.norm)
            copy_conv1x1(block.attn.q, ref_attn.to_q)
            block.attn.kv.weight.copy_(ref_attn.to_kv.weight)
            copy_conv1x1(block.attn.proj, ref_attn.to_out[0])
            copy_conv_mlp(block.norm2, block.mlp, global_ff.fn)
    model.get_classifier().load_state_dict(ref.layers[-1].state_dict())
    return model


# --- registry ---------------------------------------------------------------------------------

def _adapt_in_chans(state_dict: Dict[str, torch.Tensor], model: TwinsSVT) -> Dict[str, torch.Tensor]:
    """Pretrained weights for another ``in_chans``: the first patch embedding is LayerNorm + Linear over
    pixel-unshuffled (C * p * p) features, which timm's conv-only ``adapt_input_conv`` cannot take, so its
    linear is adapted as the (O, C, p, p) conv it is and its input norm's per-feature affine likewise."""
    embed = model.stages[0].downsample
    weight = state_dict.get('stages.0.downsample.proj.weight')
    if weight is None or weight.shape == embed.proj.weight.shape:
        return state_dict
    p, out_chs = embed.patch_size, weight.shape[0]
    src_chans = weight.shape[1] // (p * p)
    state_dict['stages.0.downsample.proj.weight'] = adapt_input_conv(
        model.in_chans, weight.reshape(out_chs, src_chans, p, p), base_chans=src_chans).reshape(out_chs, -1)
    for name in ('weight', 'bias'):  # per-feature affine, (C * p * p,) viewed as (C, p * p)
        key = f'stages.0.downsample.norm_in.{name}'
        affine = state_dict[key].reshape(src_chans, p * p)
        if model.in_chans == 1:
            affine = affine.mean(0, keepdim=True)
        else:
            affine = affine.repeat(-(-model.in_chans // src_chans), 1)[:model.in_chans]
        state_dict[key] = affine.reshape(-1)
    return state_dict


def _create_twinssvt(variant: str, pretrained: bool = False, **kwargs: Any) -> TwinsSVT:
    return build_variant(
        TwinsSVT, variant, pretrained, pretrained_filter_fn=_adapt_in_chans, num_feature_taps=4, **kwargs)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return base_cfg(
        first_conv='stages.0.downsample.proj', classifier='head.fc', pool_size=(7, 7),
        min_input_size=(3, 32, 32), paper_ids=('arXiv:2104.13840',),
        paper_name='Twins: Revisiting the Design of Spatial Attention in Vision Transformers',
        **kwargs)


# Publishing weights adds a tagged entry, e.g. 'twinssvt_small.in1k': _cfg(hf_hub_id='org/twinssvt_small.in1k').
default_cfgs = generate_default_cfgs({
    'twinssvt_tiny': _cfg(),
    'twinssvt_small': _cfg(),
    'twinssvt_base': _cfg(),
})


@register_variant
def twinssvt_tiny(pretrained: bool = False, **kwargs: Any) -> TwinsSVT:
    model_args = dict(
        embed_dims=(64, 128, 256, 512), depths=(1, 1, 2, 2), num_heads=(2, 4, 8, 16), head_dim=32,
        global_k=(8, 4, 2, 1))
    return _create_twinssvt('twinssvt_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_variant
def twinssvt_small(pretrained: bool = False, **kwargs: Any) -> TwinsSVT:
    model_args = dict(
        embed_dims=(64, 128, 256, 512), depths=(1, 1, 5, 4), num_heads=(2, 4, 8, 16), head_dim=32,
        global_k=(8, 4, 2, 1))
    return _create_twinssvt('twinssvt_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_variant
def twinssvt_base(pretrained: bool = False, **kwargs: Any) -> TwinsSVT:
    model_args = dict(
        embed_dims=(96, 192, 384, 768), depths=(1, 1, 9, 2), num_heads=(3, 6, 12, 24), head_dim=32,
        global_k=(8, 4, 2, 1))
    return _create_twinssvt('twinssvt_base', pretrained=pretrained, **dict(model_args, **kwargs))
