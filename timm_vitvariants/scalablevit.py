"""ScalableViT: ``scalablevit_{tiny,small,base}``

ScalableViT: Rethinking the Context-oriented Generalization of Vision Transformer -- Yang et al.,
https://arxiv.org/abs/2203.10790
Behaviour reference: vit-pytorch's ``scalable_vit.ScalableViT`` (``from_vit_pytorch`` converts any of
its instances to this model with the same outputs).

A 7x7 stride-4 conv stem, then four stages of block pairs: scalable self-attention (SSA: global
attention whose keys and values come from a kernel = stride = ``reduction_factor`` conv) + MLP,
a position-encoding generator after the first pair's SSA, then interactive windowed
self-attention (IWSA: window attention plus a local interactive module, a 3x3 conv over the values
added to the output) + MLP. Every stage but the last ends in a LayerNorm; a 3x3 stride-2 conv
opens each later stage and doubles the width; the head is mean-pool -> LayerNorm -> linear.

Differences from vit-pytorch:
  * ``window_size=None`` is global attention as there, but maps that do not divide into windows
    are zero-padded (padded keys masked) instead of rejected, so every size from the reference's
    minimum (each stage's map holds one key/value reduction cell: 29x29 for the named variants)
    works; sizes the reference accepts give its outputs.
  * vit-pytorch unpacks each pair's modules in a different order from the one it builds them in,
    so it really runs SSA, MLP, (PEG), MLP, IWSA. ``block_order='vit_pytorch'`` (the class default,
    used by the converter) keeps that; ``'alternating'`` runs SSA, MLP, (PEG), IWSA, MLP as intended.
  * options the reference lacks, off by default: ``local_conv='depthwise'`` (the paper's local
    interactive module; the reference's full 3x3 conv costs 8.45M parameters in the small size) and
    ``qkv_bias``. The named variants use the alternating order, depthwise LIM and qkv bias.
  * ``in_chans``, real stochastic depth (``drop_path_rate``, one rate per attention sub-block),
    separate ``attn_drop_rate``/``proj_drop_rate`` (the reference's single ``dropout``), ``drop_rate``
    before the classifier; bad inputs raise ``ValueError``/``TypeError`` naming the valid sizes.
  * everything runs channels-last (NHWC tokens, linears for the 1x1 convs, ``nn.LayerNorm``
    for the channel LayerNorm; the converter reshapes the weights).
Differences from the paper (and its official code): SSA draws keys and values from one full
kernel = stride = r conv (the official one: a depthwise r x r conv, a 1x1 conv, LayerNorm + GELU,
then linear keys and values), no LayerNorm after the stem and downsampling convs, each pair starts
with SSA (the official code starts with IWSA) and the PEG follows the first SSA + MLP, a
mean-pool -> LayerNorm -> linear head (the official one has a 4096-wide hidden layer), LayerNorm
eps 1e-5 (official: 1e-6).
Size against the paper (S: 32.4M / 4.2 GMACs, B: 81.9M / 8.6): small 30.6M / 4.48, base 83.3M / 9.21.
The full SSA key/value conv adds 4.3M / 0.21 GMACs (small) and 7.9M / 0.39 (base); the plain head
has 5.7M / 6.5M fewer parameters than the official 4096-wide one. Both together leave 32.0M / 4.27
and 81.9M / 8.82. 0.01 / 0.02 GMACs are zero channels padding the 32-wide SSA value heads to the
key width for the fused CPU attention kernel; the last 0.06 / 0.19 are untraced (likely counting
conventions). vit-pytorch's full LIM without bias would give 39.0M / 5.97 and 108.9M / 12.30.
"""
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

import timm
from timm.layers import LayerNorm2d, NormMlpClassifierHead, calculate_drop_path_rates, to_2tuple
from timm.models import checkpoint, generate_default_cfgs

from ._factory import base_cfg, build_variant, register_variant
from .base import StageModel, check_common_args, check_positive, per_stage, stage_widths
from .convert import copy_channel_norm, copy_conv1x1, copy_conv_mlp, copy_norm_linear_head, register_converter
from .layers import ImageCheck, PosConv, PreNormBlock, ReducedKVAttention, WindowAttention

__all__ = ['ScalableViT']

BLOCK_ORDERS = ('vit_pytorch', 'alternating')
LOCAL_CONVS = ('full', 'depthwise')


def _pair(
        dim: int,
        num_heads: int,
        ssa_key_dim: int = 32,
        ssa_value_dim: int = 32,
        reduction_factor: int = 1,
        iwsa_key_dim: int = 32,
        iwsa_value_dim: int = 32,
        window_size: Optional[int] = 7,
        mlp_ratio: float = 4.,
        qkv_bias: bool = False,
        local_conv: str = 'full',
        alternating: bool = False,
        proj_drop: float = 0.,
        attn_drop: float = 0.,
        drop_path: Tuple[float, float] = (0., 0.),
        device=None,
        dtype=None,
) -> List[nn.Module]:
    """One pair as two blocks: SSA + MLP, then IWSA + MLP (MLP + IWSA in vit-pytorch's order)."""
    dd = {'device': device, 'dtype': dtype}
    ssa = ReducedKVAttention(
        dim, num_heads, ssa_key_dim, reduction_factor, ssa_value_dim, qkv_bias, attn_drop, proj_drop, **dd)
    value_width = num_heads * iwsa_value_dim
    lim = nn.Conv2d(  # the local interactive module over the values
        value_width, value_width, 3, padding=1, groups=value_width if local_conv == 'depthwise' else 1, **dd)
    iwsa = WindowAttention(
        dim, num_heads, iwsa_key_dim, window_size, iwsa_value_dim, qkv_bias, attn_drop, proj_drop,
        local_conv=lim, **dd)
    block = partial(PreNormBlock, dim, mlp_ratio=mlp_ratio, proj_drop=proj_drop, **dd)
    return [block(ssa, drop_path=drop_path[0]), block(iwsa, drop_path=drop_path[1], mlp_first=not alternating)]


class ScalableViTStage(nn.Module):
    """Optional 3x3 stride-2 downsampling conv -> block pairs, the PEG after the first pair's SSA block ->
    optional LayerNorm. Takes and returns NCHW views of channels-last memory; the blocks see free NHWC views.

    A pair is two blocks of ``blocks`` (SSA, IWSA), checkpointed one at a time: that halves the activations
    a recompute holds at once (scalablevit_tiny, batch 32: -53% peak training memory instead of -37%).
    """

    def __init__(
            self,
            in_chs: int,
            dim: int,
            depth: int,
            downsample: bool,
            final_norm: bool,
            drop_path: Sequence[float],
            device=None,
            dtype=None,
            **pair_kwargs: Any,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.grad_checkpointing = False
        self.downsample = nn.Conv2d(in_chs, dim, 3, stride=2, padding=1, **dd) if downsample else nn.Identity()
        blocks: List[nn.Module] = []
        for i in range(depth):
            blocks += _pair(dim, drop_path=(drop_path[2 * i], drop_path[2 * i + 1]), **dd, **pair_kwargs)
        self.blocks = nn.Sequential(*blocks)
        self.pos_conv = PosConv(dim, **dd) if depth else None
        self.norm = nn.LayerNorm(dim, eps=1e-5, **dd) if final_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        for i, block in enumerate(self.blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x)
            else:
                x = block(x)
            if i == 0 and self.pos_conv is not None:
                x = self.pos_conv(x)
        x = self.norm(x)
        return x.permute(0, 3, 1, 2)  # (B, C, H, W)


class Stem(nn.Module):
    """7x7 stride-4 conv (vit-pytorch's ``to_patches``)."""

    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 7, stride=4, padding=3, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last from here on: the NHWC token views the blocks need are then free
        return self.conv(x.contiguous(memory_format=torch.channels_last))


class ScalableViT(StageModel):
    """ScalableViT. Per-stage arguments take one value or one per stage.

    Args:
        in_chans: Number of input image channels (vit-pytorch ``channels``).
        img_size: Nominal input size, recorded for data configs (every size from the minimum runs).
        num_classes: Number of classes, 0 for no classifier.
        global_pool: 'avg' or '' (no pooling).
        embed_dim: Width of the first stage, doubled per stage (vit-pytorch ``dim``), or one width per stage.
        depths: Block pairs (SSA + IWSA) per stage (vit-pytorch ``depth``).
        num_heads: Attention heads per stage (vit-pytorch ``heads``).
        ssa_key_dim, ssa_value_dim: Key (and query) / value width per head of the SSA.
        reduction_factor: Kernel and stride of the SSA's key/value conv, per stage.
        iwsa_key_dim, iwsa_value_dim: Key (and query) / value width per head of the IWSA.
        window_size: IWSA window side per stage, None for global attention (``timm.create_model`` drops
            arguments that are None: pass one None per stage there, e.g. ``(None,) * 4``).
        mlp_ratio: MLP hidden width over block width (vit-pytorch ``ff_expansion_factor``).
        qkv_bias: Bias in the query/key/value projections (the paper's; vit-pytorch has none).
        local_conv: 'full' 3x3 conv (vit-pytorch) or 'depthwise' 3x3 conv (the paper) as the IWSA's
            local interactive module.
        block_order: 'vit_pytorch' (SSA, MLP, MLP, IWSA: what the reference runs) or 'alternating'
            (SSA, MLP, IWSA, MLP: what it means to run).
        drop_rate: Dropout before the classifier.
        proj_drop_rate: Dropout after the attention projections and in the MLPs.
        attn_drop_rate: Dropout on the attention weights.
        drop_path_rate: Stochastic depth, linear over the attention sub-blocks (two per pair).
    """

    def __init__(
            self,
            in_chans: int = 3,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: Union[int, Tuple[int, ...]] = 64,
            depths: Tuple[int, ...] = (1, 1, 3, 1),
            num_heads: Union[int, Tuple[int, ...]] = (2, 4, 8, 16),
            ssa_key_dim: Union[int, Tuple[int, ...]] = 32,
            ssa_value_dim: Union[int, Tuple[int, ...]] = 32,
            reduction_factor: Union[int, Tuple[int, ...]] = (8, 4, 2, 1),
            iwsa_key_dim: Union[int, Tuple[int, ...]] = 32,
            iwsa_value_dim: Union[int, Tuple[int, ...]] = 32,
            window_size: Union[Optional[int], Tuple[Optional[int], ...]] = 7,
            mlp_ratio: float = 4.,
            qkv_bias: bool = False,
            local_conv: str = 'full',
            block_order: str = 'vit_pytorch',
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
        if num_stages < 1 or any(d < 0 for d in depths):
            raise ValueError(f'depths needs a non-negative number of block pairs per stage, got {depths}')
        dims = stage_widths(embed_dim, num_stages)
        check_positive(embed_dim=dims)
        stage = partial(per_stage, num_stages=num_stages)
        heads = stage(num_heads, name='num_heads')
        reductions = stage(reduction_factor, name='reduction_factor')
        windows = stage(window_size, name='window_size')
        stage_args = dict(
            num_heads=heads, ssa_key_dim=stage(ssa_key_dim, name='ssa_key_dim'),
            ssa_value_dim=stage(ssa_value_dim, name='ssa_value_dim'), reduction_factor=reductions,
            iwsa_key_dim=stage(iwsa_key_dim, name='iwsa_key_dim'),
            iwsa_value_dim=stage(iwsa_value_dim, name='iwsa_value_dim'), window_size=windows)
        for name, values in stage_args.items():
            if any(v is not None and v < 1 for v in values) or (name != 'window_size' and None in values):
                allowed = 'positive integers or None' if name == 'window_size' else 'positive integers'
                raise ValueError(f'{name} must be {allowed}, got {values}')
        if local_conv not in LOCAL_CONVS:
            raise ValueError(f'local_conv must be one of {LOCAL_CONVS}, got {local_conv!r}')
        if block_order not in BLOCK_ORDERS:
            raise ValueError(f'block_order must be one of {BLOCK_ORDERS}, got {block_order!r}')
        self.in_chans = in_chans
        self.img_size = to_2tuple(img_size or 224)  # nominal only: nothing here depends on the input size
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = dims[-1]

        # every stage's map (ceil(size / stride)) must hold one key/value reduction cell, as in vit-pytorch
        min_size = max((r - 1) * (4 << i) + 1 for i, r in enumerate(reductions))
        self.input_check = ImageCheck(type(self).__name__, in_chans, min_size=min_size)
        self.stem = Stem(in_chans, dims[0], **dd)
        dpr = calculate_drop_path_rates(drop_path_rate, 2 * sum(depths))  # two attention sub-blocks per pair
        stages, in_chs, first = [], dims[0], 0
        self.feature_info = []
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            stages.append(ScalableViTStage(
                in_chs, dim, depth, downsample=i > 0, final_norm=i < num_stages - 1,
                drop_path=dpr[first:first + 2 * depth], mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                local_conv=local_conv, alternating=block_order == 'alternating', proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate, **{k: v[i] for k, v in stage_args.items()}, **dd))
            self.feature_info.append(dict(num_chs=dim, reduction=4 << i, module=f'stages.{i}'))
            in_chs, first = dim, first + 2 * depth
        self.stages = nn.Sequential(*stages)
        self.norm = nn.Identity()  # the head normalizes after pooling, as vit-pytorch
        self.head = NormMlpClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate,
            norm_layer=partial(LayerNorm2d, eps=1e-5), **dd)
        self.init_weights()


# --- vit-pytorch conversion -------------------------------------------------------------------

def _config_from_vit_pytorch(ref: nn.Module) -> Dict[str, Any]:
    stages = [transformer for transformer, _ in ref.layers]
    if not all(len(transformer.layers) for transformer in stages):
        raise ValueError('from_vit_pytorch needs at least one block pair in every stage of the ScalableViT')
    pairs = [transformer.layers[0] for transformer in stages]  # (ssa, ff, peg, ff, iwsa)
    heads = tuple(ssa.heads for ssa, *_ in pairs)

    def per_head(width_of) -> Tuple[int, ...]:
        return tuple(width_of(pair) // h for pair, h in zip(pairs, heads))

    return dict(
        in_chans=ref.to_patches.in_channels,
        num_classes=ref.mlp_head[-1].out_features,
        embed_dim=tuple(ssa.norm.g.shape[1] for ssa, *_ in pairs),
        depths=tuple(len(transformer.layers) for transformer in stages),
        num_heads=heads,
        ssa_key_dim=per_head(lambda p: p[0].to_q.out_channels),
        ssa_value_dim=per_head(lambda p: p[0].to_v.out_channels),
        reduction_factor=tuple(p[0].to_k.stride[0] for p in pairs),
        iwsa_key_dim=per_head(lambda p: p[4].to_q.out_channels),
        iwsa_value_dim=per_head(lambda p: p[4].to_v.out_channels),
        window_size=tuple(p[4].window_size for p in pairs),
        mlp_ratio=pairs[0][1].net[1].out_channels / pairs[0][1].net[1].in_channels,
        qkv_bias=False,
        local_conv='full',
        block_order='vit_pytorch',
        proj_drop_rate=pairs[0][0].dropout.p,
        attn_drop_rate=pairs[0][0].dropout.p,
    )


@register_converter('vit_pytorch.scalable_vit.ScalableViT')
@torch.no_grad()
def _from_vit_pytorch(ref: nn.Module) -> ScalableViT:
    config = _config_from_vit_pytorch(ref)
    model = timm.create_model('scalablevit_tiny', **config)
    model.stem.conv.load_state_dict(ref.to_patches.state_dict())
    for i, (stage, (transformer, _)) in enumerate(zip(model.stages, ref.layers)):
        if i > 0:
            stage.downsample.load_state_dict(ref.layers[i - 1][1].conv.state_dict())
        if isinstance(stage.norm, nn.LayerNorm):
            copy_channel_norm(stage.norm, transformer.norm)
        for i, (ssa, ff1, peg, ff2, iwsa) in enumerate(transformer.layers):
            ssa_block, iwsa_block = stage.blocks[2 * i], stage.blocks[2 * i + 1]
            copy_channel_norm(ssa_block.norm1, ssa.norm)
            copy_conv1x1(ssa_block.attn.q, ssa.to_q)
            ssa_block.attn.kv.weight.copy_(torch.cat([ssa.to_k.weight, ssa.to_v.weight]))
            copy_conv1x1(ssa_block.attn.proj, ssa.to_out[0])
            copy_conv_mlp(ssa_block.norm2, ssa_block.mlp, ff1)
            if peg is not None:
                stage.pos_conv.proj.load_state_dict(peg.proj.state_dict())
            copy_conv_mlp(iwsa_block.norm2, iwsa_block.mlp, ff2)
            copy_channel_norm(iwsa_block.norm1, iwsa.norm)
            copy_conv1x1(iwsa_block.attn.qkv, iwsa.to_q, iwsa.to_k, iwsa.to_v)
            iwsa_block.attn.local_conv.load_state_dict(iwsa.local_interactive_module.state_dict())
            copy_conv1x1(iwsa_block.attn.proj, iwsa.to_out[0])
    copy_norm_linear_head(model, ref.mlp_head[1], ref.mlp_head[2])
    return model


# --- registry ---------------------------------------------------------------------------------

def _create_scalablevit(variant: str, pretrained: bool = False, **kwargs: Any) -> ScalableViT:
    return build_variant(ScalableViT, variant, pretrained, num_feature_taps=4, **kwargs)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return base_cfg(
        first_conv='stem.conv', classifier='head.fc', pool_size=(7, 7), min_input_size=(3, 29, 29),
        paper_ids=('arXiv:2203.10790',),
        paper_name='ScalableViT: Rethinking the Context-oriented Generalization of Vision Transformer',
        **kwargs)


# Publishing weights adds a tagged entry, e.g. 'scalablevit_small.in1k': _cfg(hf_hub_id='org/scalablevit_small.in1k').
default_cfgs = generate_default_cfgs({
    'scalablevit_tiny': _cfg(),
    'scalablevit_small': _cfg(),
    'scalablevit_base': _cfg(),
})

# The named variants: the paper's depthwise LIM and qkv bias, the block order vit-pytorch means to run.
_VARIANT_OPTIONS = dict(qkv_bias=True, local_conv='depthwise', block_order='alternating')


@register_variant
def scalablevit_tiny(pretrained: bool = False, **kwargs: Any) -> ScalableViT:
    model_args = dict(
        embed_dim=64, depths=(1, 1, 3, 1), num_heads=(2, 4, 8, 16), ssa_key_dim=(40, 40, 40, 32),
        reduction_factor=(8, 4, 2, 1), window_size=7, **_VARIANT_OPTIONS)
    return _create_scalablevit('scalablevit_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_variant
def scalablevit_small(pretrained: bool = False, **kwargs: Any) -> ScalableViT:
    model_args = dict(
        embed_dim=64, depths=(1, 1, 10, 1), num_heads=(2, 4, 8, 16), ssa_key_dim=(40, 40, 40, 32),
        reduction_factor=(8, 4, 2, 1), window_size=7, **_VARIANT_OPTIONS)
    return _create_scalablevit('scalablevit_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_variant
def scalablevit_base(pretrained: bool = False, **kwargs: Any) -> ScalableViT:
    model_args = dict(
        embed_dim=96, depths=(1, 1, 7, 3), num_heads=(3, 6, 12, 24), ssa_key_dim=(64, 40, 40, 32),
        reduction_factor=(8, 4, 2, 1), window_size=7, **_VARIANT_OPTIONS)
    return _create_scalablevit('scalablevit_base', pretrained=pretrained, **dict(model_args, **kwargs))
