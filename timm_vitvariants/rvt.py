"""RvT: vit-pytorch's Rotary Vision Transformer, as timm models.

A plain ViT (linear patch embedding, class token, pre-norm blocks, head on the class token) whose
attention rotates the queries and keys of the patch tokens with 2-D axial rotary embeddings, takes
its queries from a depthwise-separable conv over the token grid and uses a GEGLU feed-forward.
This is vit-pytorch's own design (github.com/lucidrains/vit-pytorch, ``vit_pytorch.rvt``); it is
NOT the "Robust Vision Transformer" paper (Mao et al., arXiv:2105.07926) that shares the acronym,
and that paper's weights do not load here. Rotary embeddings: Su et al., RoFormer, arXiv:2104.09864.

Differences from vit-pytorch:
  * the real grid height and width are used for the rotary tables and the conv queries, so any
    size that is a multiple of the patch works, rectangles included (vit-pytorch takes the square
    root of the token count and fails on rectangles), and with ``dynamic_img_pad=True`` (as timm's
    ViT) any size, zero-padded to whole patches; ``rotary_max_freq`` replaces ``image_size``
    (the only thing it set) and defaults to 224;
  * rotary angles and the rotation are computed in at least float32 (also under autocast), as one
    complex multiply over all tokens (the class token's rotation is 1);
  * the patch embedding is a stride-p conv (same weights as vit-pytorch's rearrange + Linear), the
    1x1 pointwise query conv is a Linear over tokens, q/k/v are one Linear without the conv queries;
  * stochastic depth (``drop_path_rate``), ``drop_rate`` before the classifier, attention dropout;
    vit-pytorch's ignored ``emb_dropout`` is not accepted;
  * ``global_pool`` 'token' (vit-pytorch's) or 'avg'; the final LayerNorm (vit-pytorch's head norm)
    is applied to every token in ``forward_features``, as timm's ViT does;
  * bad inputs raise ValueError/TypeError, weights get timm's transformer init.
"""
import math
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

import timm
from timm.layers import DropPath, calculate_drop_path_rates, to_2tuple, trunc_normal_
from timm.models import generate_default_cfgs, register_notrace_function
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint

from ._factory import base_cfg, build_variant, register_variant
from .base import ModelBase, check_common_args, check_output_fmt, check_positive
from .convert import copy_linear_mlp, register_converter
from .layers import GluMlp, HeadsAttention, ImageCheck, Linear, Mlp, compiling, pad_image_to_multiple, split_heads

__all__ = ['RvT']


@register_notrace_function  # FX: the table size comes from concrete grid sizes
def axial_rotary_table(
        reference: torch.Tensor, grid_size: Tuple[int, int], head_dim: int, max_freq: float,
) -> torch.Tensor:
    """Complex rotations (1 + H * W, head_dim // 2), at least float32 (complex64) whatever the autocast.

    Entry (n, i) turns channel pair (2i, 2i + 1) of token n: the first quarter of the head's channels
    turns with the row position, the second with the column (positions spread over [-1, 1]); the
    class token (n = 0) and any pair beyond 4 * (head_dim // 4) channels do not turn (rotation 1).
    """
    height, width = grid_size
    device = reference.device
    dtype = torch.promote_types(reference.dtype, torch.float32)
    quarter = head_dim // 4
    scales = torch.linspace(1., max_freq / 2, quarter, device=device, dtype=dtype) * math.pi
    rows = torch.linspace(-1., 1., height, device=device, dtype=dtype)[:, None] * scales  # (H, d / 4)
    cols = torch.linspace(-1., 1., width, device=device, dtype=dtype)[:, None] * scales  # (W, d / 4)
    angles = torch.cat([
        rows[:, None, :].expand(height, width, quarter),
        cols[None, :, :].expand(height, width, quarter),
    ], dim=-1).reshape(height * width, 2 * quarter)
    angles = F.pad(angles, (0, head_dim // 2 - 2 * quarter, 1, 0))  # (1 + H * W, d / 2): class token first
    return torch.polar(torch.ones_like(angles), angles)


@register_notrace_function  # FX: one node; it branches on the head width
def apply_rotary(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Turns x (B, h, N, d) by ``rotation`` (N, d // 2): channels (2i, 2i + 1) as the complex number
    x[2i] + j x[2i + 1] times rotation[:, i], i.e. vit-pytorch's x * cos + rotate_every_two(x) * sin in
    one pass (an odd last channel passes through)."""
    if x.shape[-1] % 2:
        return torch.cat([_turn_pairs(x[..., :-1].contiguous(), rotation), x[..., -1:]], dim=-1)
    return _turn_pairs(x, rotation)


def _turn_pairs(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    B, h, N, d = x.shape
    real_dtype = torch.float64 if rotation.dtype == torch.complex128 else torch.float32
    pairs = x.to(real_dtype).reshape(B, h, N, d // 2, 2)
    if not torch.jit.is_scripting() and compiling():  # inductor makes no code for complex ops: real arithmetic
        re, im = pairs.unbind(-1)
        cos, sin = rotation.real, rotation.imag
        turned = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1)
    else:  # one kernel instead of four multiplies, two adds and a stack
        turned = torch.view_as_real(torch.view_as_complex(pairs) * rotation)
    return turned.reshape(B, h, N, d).to(x.dtype)


class ConvQuery(nn.Module):
    """Queries from a depthwise-separable conv over the patch grid; the class token, which has no
    grid position, gets a Linear (identity when the widths match, as vit-pytorch)."""

    def __init__(self, dim: int, inner_dim: int, kernel_size: int = 5, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.depthwise = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=False, **dd)
        self.pointwise = Linear(dim, inner_dim, bias=False, **dd)  # the 1x1 conv, on tokens
        self.cls_proj = Linear(dim, inner_dim, **dd) if dim != inner_dim else nn.Identity()

    def forward(self, x: torch.Tensor, grid_size: Tuple[int, int]) -> torch.Tensor:
        cls_token, patches = x.split([1, x.shape[1] - 1], dim=1)  # its gradient: one concatenation
        B, N, C = patches.shape
        grid = patches.transpose(1, 2).reshape(B, C, grid_size[0], grid_size[1])  # (B, C, H, W)
        patches = self.depthwise(grid).flatten(2).transpose(1, 2)  # (B, H * W, C)
        return torch.cat([self.cls_proj(cls_token), self.pointwise(patches)], dim=1)


class RotaryAttention(HeadsAttention):
    def __init__(
            self, dim: int, num_heads: int, head_dim: int, use_rotary: bool = True, use_ds_conv: bool = True,
            query_kernel_size: int = 5, attn_drop: float = 0., proj_drop: float = 0., device=None, dtype=None,
    ):
        dd = dict(device=device, dtype=dtype)
        super().__init__(dim, num_heads, head_dim, attn_drop=attn_drop, proj_drop=proj_drop, **dd)
        inner_dim = num_heads * head_dim
        self.use_rotary = use_rotary
        self.query = ConvQuery(dim, inner_dim, query_kernel_size, **dd) if use_ds_conv else None
        # keys and values (plus the queries when they are not from the conv) in one matmul
        self.qkv = Linear(dim, inner_dim * (2 if use_ds_conv else 3), bias=False, **dd)

    def forward(self, x: torch.Tensor, rotation: torch.Tensor, grid_size: Tuple[int, int]) -> torch.Tensor:
        projected = self.qkv(x)
        if self.query is not None:
            k, v = projected.chunk(2, dim=-1)
            q = self.query(x, grid_size)
        else:
            q, k, v = projected.chunk(3, dim=-1)
        q, k, v = split_heads(q, self.num_heads), split_heads(k, self.num_heads), split_heads(v, self.num_heads)
        if self.use_rotary:  # the class token has no position: its rotation is 1
            q, k = apply_rotary(q, rotation), apply_rotary(k, rotation)
        return self.proj_drop(self.proj(self.attend_heads(q, k, v)))  # (B, N, C)


class RvTBlock(nn.Module):
    def __init__(
            self, dim: int, num_heads: int, head_dim: int, mlp_hidden_dim: int, use_rotary: bool = True,
            use_ds_conv: bool = True, use_glu: bool = True, query_kernel_size: int = 5, proj_drop: float = 0.,
            attn_drop: float = 0., drop_path: float = 0., device=None, dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.attn = RotaryAttention(
            dim, num_heads, head_dim, use_rotary, use_ds_conv, query_kernel_size, attn_drop, proj_drop, **dd)
        self.norm2 = nn.LayerNorm(dim, **dd)
        if use_glu:  # GEGLU: value half first, GELU gate half second, as vit-pytorch
            self.mlp = GluMlp(dim, 2 * mlp_hidden_dim, act_layer=nn.GELU, drop=proj_drop, gate_last=True, **dd)
        else:
            self.mlp = Mlp(dim, mlp_hidden_dim, act_layer=nn.GELU, drop=proj_drop, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, rotation: torch.Tensor, grid_size: Tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), rotation, grid_size))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class RvT(ModelBase):
    """Rotary Vision Transformer. Input: (B, in_chans, H, W) with H, W multiples of ``patch_size``; with
    ``dynamic_img_pad=True`` (timm ViT's option) any H, W >= ``patch_size``, zero-padded at the bottom/right
    to whole patches."""

    def __init__(
            self,
            patch_size: int = 16,
            in_chans: int = 3,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 192,
            depth: int = 12,
            num_heads: int = 6,
            head_dim: int = 32,
            mlp_hidden_dim: int = 512,
            use_rotary: bool = True,
            use_ds_conv: bool = True,
            use_glu: bool = True,
            query_kernel_size: int = 5,
            rotary_max_freq: float = 224.,
            dynamic_img_pad: bool = False,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        check_common_args(
            num_classes, in_chans, global_pool, ('token', 'avg', ''), drop_rate=drop_rate,
            proj_drop_rate=proj_drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)
        check_positive(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                       head_dim=head_dim, mlp_hidden_dim=mlp_hidden_dim)
        if query_kernel_size < 1 or query_kernel_size % 2 == 0:
            raise ValueError(f'query_kernel_size must be a positive odd integer, got {query_kernel_size}')
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.patch_size = patch_size
        self.head_dim = head_dim
        self.rotary_max_freq = float(rotary_max_freq)
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.in_chans = in_chans
        self.img_size = to_2tuple(img_size or 224)  # nominal only: nothing here depends on the input size

        self.dynamic_img_pad = dynamic_img_pad
        self.image_check = ImageCheck(
            'rvt', in_chans, min_size=patch_size, multiple=1 if dynamic_img_pad else patch_size)
        # == vit-pytorch's 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)' + Linear, as one strided conv
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, **dd)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd))
        drop_rates = calculate_drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList([
            RvTBlock(embed_dim, num_heads, head_dim, mlp_hidden_dim, use_rotary, use_ds_conv, use_glu,
                     query_kernel_size, proj_drop_rate, attn_drop_rate, drop_rates[i], **dd)
            for i in range(depth)])
        self.feature_info = [
            dict(num_chs=embed_dim, reduction=patch_size, module=f'blocks.{i}') for i in range(depth)]
        self.norm = nn.LayerNorm(embed_dim, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @torch.jit.ignore
    @torch.no_grad()
    def init_weights(self) -> None:
        super().init_weights()
        trunc_normal_(self.cls_token, std=.02)

    # --- timm model API (init, no_weight_decay, set_grad_checkpointing, forward: ModelBase) -------

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^cls_token|^patch_embed', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            if global_pool not in ('token', 'avg', ''):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        dd = dict(device=self.cls_token.device, dtype=self.cls_token.dtype)
        self.head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)  # a fresh head follows the model's mode

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.image_check(x)
        if self.dynamic_img_pad:
            x = pad_image_to_multiple(x, self.patch_size)
        x = self.patch_embed(x)  # (B, C, ceil(H / p), ceil(W / p))
        grid_size = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (B, H * W, C)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1), grid_size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, grid_size = self._embed(x)
        rotation = axial_rotary_table(x, grid_size, self.head_dim, self.rotary_max_freq)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, rotation, grid_size)
            else:
                x = block(x, rotation, grid_size)
        return self.norm(x)  # (B, 1 + H * W, C)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        elif self.global_pool == 'token':
            x = x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Per-block patch-token maps (stride ``patch_size``), the class token optionally alongside."""
        check_output_fmt(output_fmt)
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x, grid_size = self._embed(x)
        B = x.shape[0]
        rotation = axial_rotary_table(x, grid_size, self.head_dim, self.rotary_max_freq)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[:max_index + 1]
        intermediates = []
        for i, block in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, rotation, grid_size)
            else:
                x = block(x, rotation, grid_size)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        prefix_tokens = [y[:, :1] for y in intermediates]
        maps = [y[:, 1:].reshape(B, grid_size[0], grid_size[1], -1) for y in intermediates]  # (B, H, W, C)
        if output_fmt == 'NCHW':
            maps = [y.permute(0, 3, 1, 2).contiguous() for y in maps]  # (B, C, H, W)
        if return_prefix_tokens:
            maps = list(zip(maps, prefix_tokens))
        if intermediates_only:
            return maps
        return self.norm(x), maps

    def prune_intermediate_layers(
            self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True,
    ) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices


# --- vit-pytorch conversion -------------------------------------------------------------------

def _config_from_vit_pytorch(ref: nn.Module) -> Dict[str, Any]:
    embed = ref.to_patch_embedding[1]
    attn, ff = ref.transformer.layers[0]
    inner_dim = attn.to_kv.out_features // 2
    scales = ref.transformer.pos_emb.scales
    config = dict(
        patch_size=ref.patch_size,
        in_chans=embed.in_features // ref.patch_size ** 2,
        num_classes=ref.mlp_head[1].out_features,
        embed_dim=embed.out_features,
        depth=len(ref.transformer.layers),
        num_heads=attn.heads,
        head_dim=inner_dim // attn.heads,
        mlp_hidden_dim=ff.net[4].in_features,
        use_rotary=attn.use_rotary,
        use_ds_conv=attn.use_ds_conv,
        use_glu=type(ff.net[2]).__name__ == 'GEGLU',
        proj_drop_rate=attn.to_out[1].p,
        attn_drop_rate=attn.dropout.p,
    )
    if attn.use_ds_conv:
        config['query_kernel_size'] = attn.to_q.conv.net[0].kernel_size[0]
    if scales.numel() > 0:  # linspace(1, max_freq / 2, n) ends at max_freq / 2
        config['rotary_max_freq'] = 2 * float(scales[-1])
    return config


@register_converter('vit_pytorch.rvt.RvT')
@torch.no_grad()
def _from_vit_pytorch(ref: nn.Module) -> RvT:
    config = _config_from_vit_pytorch(ref)
    model = timm.create_model('rvt_tiny', **config)
    p, dim = config['patch_size'], config['embed_dim']
    embed = ref.to_patch_embedding[1]
    # Linear over (p1 p2 c) -> conv weight (dim, c, p1, p2)
    model.patch_embed.weight.copy_(embed.weight.reshape(dim, p, p, config['in_chans']).permute(0, 3, 1, 2))
    model.patch_embed.bias.copy_(embed.bias)
    model.cls_token.copy_(ref.cls_token)
    for block, (ref_attn, ref_ff) in zip(model.blocks, ref.transformer.layers):
        block.norm1.load_state_dict(ref_attn.norm.state_dict())
        if block.attn.query is not None:
            block.attn.qkv.weight.copy_(ref_attn.to_kv.weight)
            conv = ref_attn.to_q.conv.net
            block.attn.query.depthwise.weight.copy_(conv[0].weight)
            block.attn.query.pointwise.weight.copy_(conv[1].weight[:, :, 0, 0])
            block.attn.query.cls_proj.load_state_dict(ref_attn.to_q.cls_proj.state_dict())
        else:
            block.attn.qkv.weight.copy_(torch.cat([ref_attn.to_q.weight, ref_attn.to_kv.weight], dim=0))
        block.attn.proj.load_state_dict(ref_attn.to_out[0].state_dict())
        copy_linear_mlp(block.norm2, block.mlp, ref_ff.net)
    model.norm.load_state_dict(ref.mlp_head[0].state_dict())
    model.head.load_state_dict(ref.mlp_head[1].state_dict())
    return model


# --- registry ---------------------------------------------------------------------------------

def _create_rvt(variant: str, pretrained: bool = False, **kwargs: Any) -> RvT:
    return build_variant(RvT, variant, pretrained, num_feature_taps=3, **kwargs)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return base_cfg(
        first_conv='patch_embed', classifier='head', pool_size=(14, 14), min_input_size=(3, 16, 16),
        paper_ids=('https://github.com/lucidrains/vit-pytorch#rvt', 'arXiv:2104.09864'),
        paper_name='RvT: Rotary Vision Transformer (vit-pytorch; not arXiv:2105.07926)',
        **kwargs)


# Publishing weights adds a tagged entry, e.g. 'rvt_tiny.in1k': _cfg(hf_hub_id='org/rvt_tiny.in1k').
default_cfgs = generate_default_cfgs({
    'rvt_tiny': _cfg(),
    'rvt_small': _cfg(),
    'rvt_base': _cfg(),
})


@register_variant
def rvt_tiny(pretrained: bool = False, **kwargs: Any) -> RvT:
    model_args = dict(embed_dim=192, depth=12, num_heads=6, head_dim=32, mlp_hidden_dim=512)
    return _create_rvt('rvt_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_variant
def rvt_small(pretrained: bool = False, **kwargs: Any) -> RvT:
    model_args = dict(embed_dim=384, depth=12, num_heads=6, head_dim=64, mlp_hidden_dim=1024)
    return _create_rvt('rvt_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_variant
def rvt_base(pretrained: bool = False, **kwargs: Any) -> RvT:
    model_args = dict(embed_dim=768, depth=12, num_heads=12, head_dim=64, mlp_hidden_dim=2048)
    return _create_rvt('rvt_base', pretrained=pretrained, **dict(model_args, **kwargs))
