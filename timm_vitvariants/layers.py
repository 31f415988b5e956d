"""Building blocks shared by every family: written once, used everywhere.

Tensor layouts are named in the signatures: NCHW for conv-style maps, NHWC for token maps kept
spatial, (B, N, C) for token sequences and (B, heads, N, head_dim) for attention operands.
Everything takes ``device``/``dtype`` so a model can be built on the meta device.
"""
import os
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import DropPath, drop_path, resize_rel_pos_bias_table, trunc_normal_, use_fused_attn
from timm.layers import GluMlp as TimmGluMlp, Mlp as TimmMlp
from timm.models import named_apply, register_notrace_function, register_notrace_module

__all__ = [
    'scaled_dot_attention', 'split_heads', 'merge_heads', 'HeadsAttention', 'WindowAttention', 'ReducedKVAttention',
    'RelPosBias', 'resample_rel_pos_tables',
    'PosConv',
    'window_partition', 'window_reverse', 'grid_partition', 'grid_reverse', 'pad_to_multiple', 'pad_image_to_multiple',
    'window_padding_mask', 'WindowDropPath', 'PreNormBlock',
    'compiling', 'onednn_fusable', 'onednn_gemm', 'set_onednn_gemm', 'linear', 'patch_linear', 'Linear', 'gelu', 'GELU',
    'conv_gelu', 'Mlp', 'GluMlp',
    'ImageCheck', 'nearest_multiples', 'init_weights', 'init_model_weights',
]


# --- attention core ---------------------------------------------------------------------------

@register_notrace_function  # FX: one node; it branches on whether the bias needs a gradient
def scaled_dot_attention(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_bias: Optional[torch.Tensor] = None,
        dropout_p: float = 0.,
        fused: bool = True,
        value_pad: int = 0,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v for q (B, h, N, d), k (B, h, M, d), v (B, h, M, dv).

    ``attn_bias`` is an additive 4-D bias broadcastable to (B, h, N, M): relative-position biases
    and padding masks (-inf) both travel as the attention mask of ``F.scaled_dot_product_attention``.
    It must be 4-D (size-1 dims where it broadcasts): the CPU flash kernel only takes a bias with the
    batch dims in place, anything else falls back to the slow math path.
    ``value_pad`` = d - dv, fixed when the module is built (no shape branch, FX-safe): the CPU flash
    kernel also needs d == dv, so the narrower side is zero-padded, which changes no result
    (zero value channels are cropped, zero key channels add nothing to q k^T; the scale stays d's).
    ``fused=False`` is the explicit reference path (timm's ``use_fused_attn`` switch). It is also taken
    for a bias that needs a gradient on the CPU: the CPU kernels cannot return one, and SDPA's own
    fallback for that case runs ~15% slower than this path (safety checks, a copy of q/k/v).
    """
    if fused and not (attn_bias is not None and attn_bias.requires_grad and q.device.type == 'cpu'):
        if value_pad > 0:
            v = F.pad(v, (0, value_pad))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout_p)[..., :-value_pad]
        if value_pad < 0:
            scale = q.shape[-1] ** -0.5
            q, k = F.pad(q, (0, -value_pad)), F.pad(k, (0, -value_pad))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout_p, scale=scale)
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


# --- fused CPU inference ---------------------------------------------------------------------
# oneDNN runs a linear or conv with its bias and an exact (erf) GELU as one op, and a linear times a
# second tensor likewise: the activation is applied while the output tile is still in cache instead
# of in a second pass over memory (fc1 + GELU, 25088 x 64 -> 256: 7.8 -> 3.8 ms on a 2-core Intel Xeon,
# 18.3 -> 14.7 ms on a 2-core AMD EPYC). The ops have
# no autograd formula and tracers, exporters and compilers do not know them, so they run only in eager
# fp32 CPU inference; everywhere else the plain ops run. Same numbers either way (rounding aside).

def _onednn_fusion_available() -> bool:
    try:
        ops = torch.ops.mkldnn
        return bool(torch.backends.mkldnn.is_available() and ops._linear_pointwise and ops._convolution_pointwise)
    except (AttributeError, RuntimeError):  # a build without oneDNN or without these ops
        return False


_ONEDNN_FUSION = _onednn_fusion_available()


def onednn_fusable(x: torch.Tensor) -> bool:
    """Whether ``x`` may go through oneDNN's fused ops: a plain fp32 CPU tensor in eager inference
    (no grad, no autocast, oneDNN enabled), not under TorchScript, tracing, FX, export or compile."""
    if torch.jit.is_scripting():
        return False
    return _eager_fp32_cpu(x) and not torch.is_grad_enabled()


@torch.jit.unused  # TorchScript never asks (the callers check is_scripting first)
def _eager_fp32_cpu(x: torch.Tensor) -> bool:
    return (  # tracers first: dynamo folds compiling() to True and reads no further
        _ONEDNN_FUSION and not compiling() and not torch.jit.is_tracing() and not _functorch()
        and type(x) is torch.Tensor and x.dtype == torch.float32 and x.device.type == 'cpu'
        and torch.backends.mkldnn.enabled and not _cpu_autocast())


@torch.jit.unused
def _functorch() -> bool:
    """Whether a torch.func transform (vmap, grad, ...) is active: the oneDNN ops have no batching rule."""
    active = getattr(torch._C, '_are_functorch_transforms_active', None)
    return bool(active is not None and active())


@torch.jit.unused
def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled('cpu')
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


@torch.jit.unused  # TorchScript never asks: callers check torch.jit.is_scripting() first
def compiling() -> bool:
    """Whether dynamo (torch.compile, torch.export) is tracing."""
    compiler = getattr(torch, 'compiler', None)
    if compiler is not None and hasattr(compiler, 'is_compiling'):
        return compiler.is_compiling()
    return torch._dynamo.is_compiling()  # torch < 2.3


@torch.jit.unused
def _linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """gelu(x W^T + b) in one op."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'gelu', [], 'none')


@torch.jit.unused
def _linear_mul(
        x: torch.Tensor, other: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
) -> torch.Tensor:
    """(x W^T + b) * other in one op."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, other, weight, bias, 'mul')


# --- oneDNN GEMMs where they beat MKL's ---------------------------------------------------------
# aten runs an fp32 nn.Linear on x86 through MKL's sgemm. On a 2-core AVX-512 AMD EPYC that ran at 0.6x
# oneDNN's GEMM (6272 x 384 -> 1536: 135 vs 218 GFLOP/s forward, 177 vs 403 for the input gradient),
# while on a 2-core AVX2 AMD EPYC oneDNN's ran at 0.95x MKL's, and on a 2-core AVX-512 Intel Xeon at
# 0.92x forward, 0.78x input gradient (230 vs 250, 263 vs 337 GFLOP/s). So every linear here takes oneDNN's
# GEMM by default on AMD CPUs with AVX-512.
# In inference the narrow linears take oneDNN's GEMM on every AVX-512 host: on the Intel Xeon it beats MKL's
# where the layer has 96 features or fewer on one side (25600 x 64 -> 192: 344 vs 281 GFLOP/s; 25600 x 256 ->
# 64: 392 vs 321) and ties or loses from 128 up (1600 x 256 -> 1024: 0.93x).
# TIMM_VITVARIANTS_ONEDNN_GEMM=1 / 0 in the environment, or set_onednn_gemm(), overrides both choices.

def _cpu_vendor() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('vendor_id'):
                    return line.split(':', 1)[1].strip()
    except OSError:  # not Linux
        pass
    return ''


NARROW_LINEAR_MAX_FEATURES = 96


def _host_onednn_gemm() -> Tuple[bool, bool]:
    """(every linear on oneDNN, narrow linears on oneDNN in inference): this host's default."""
    setting = os.environ.get('TIMM_VITVARIANTS_ONEDNN_GEMM', '').strip().lower()
    if setting in ('0', '1', 'false', 'true'):
        return (setting in ('1', 'true'),) * 2
    avx512 = getattr(torch.backends.cpu, 'get_cpu_capability', lambda: '')().startswith('AVX512')
    return avx512 and _cpu_vendor() == 'AuthenticAMD', avx512


_ONEDNN_GEMM, _ONEDNN_NARROW = (_ONEDNN_FUSION and on for on in _host_onednn_gemm())


def set_onednn_gemm(enabled: Optional[bool] = None) -> None:
    """Run the linears' GEMMs through oneDNN (``True``), through aten's default (``False``), or as this
    host's default (``None``: every linear on AVX-512 AMD CPUs, the narrow ones in inference on any AVX-512
    CPU). Outputs agree either way to rounding."""
    global _ONEDNN_GEMM, _ONEDNN_NARROW
    choice = _host_onednn_gemm() if enabled is None else (bool(enabled),) * 2
    _ONEDNN_GEMM, _ONEDNN_NARROW = (_ONEDNN_FUSION and on for on in choice)


def onednn_gemm(x: torch.Tensor) -> bool:
    """Whether a linear over ``x`` runs its GEMMs through oneDNN: on a host that prefers it (see
    :func:`set_onednn_gemm`) and under :func:`onednn_fusable`'s conditions, except that gradients are
    allowed (:class:`Linear` has a backward for it)."""
    if torch.jit.is_scripting():
        return False
    return _linear_on_onednn(x, narrow=False)


def _as_nhwc_map(x: torch.Tensor) -> torch.Tensor:
    """(tokens, C) -> a (1, C, tokens, 1) channels-last view: the same memory as a conv's input."""
    x = x.contiguous()
    return x.view(1, x.shape[0], 1, x.shape[1]).permute(0, 3, 1, 2)


_CONV_WEIGHT_GRAD_MIN_TOKENS = 4096


class _OneDnnLinear(torch.autograd.Function):
    """x W^T + b with the forward and input gradient as oneDNN linears. The weight gradient (no linear op of
    oneDNN's returns it) is aten's mm, except where many tokens feed a narrowing layer: there a 1x1 conv's
    weight gradient on oneDNN wins (2-core AVX-512 AMD EPYC, GFLOP/s mm vs conv: 1568 x 1024 -> 256 154 vs 90,
    1576 x 2048 -> 768 176 vs 125, 25088 x 64 -> 256 140 vs 113; 25600 x 256 -> 64 119 vs 167, 6400 x 512
    -> 128 157 vs 178). The conv pays a copy of its (O, I, 1, 1) result that few tokens do not amortise."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'none', [], '')

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        out_features, in_features = weight.shape
        grad_2d = grad.reshape(-1, out_features)  # (tokens, out_features)
        x_2d = x.reshape(-1, in_features)
        create_graph = torch.is_grad_enabled()  # then the plain, differentiable products (exact second order)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ weight if create_graph else torch.ops.mkldnn._linear_pointwise(
                grad, weight.t(), None, 'none', [], '')
        if ctx.needs_input_grad[1]:
            if (not create_graph and grad_2d.shape[0] >= _CONV_WEIGHT_GRAD_MIN_TOKENS
                    and out_features < in_features):
                grad_weight = torch.ops.aten.convolution_backward(
                    _as_nhwc_map(grad_2d), _as_nhwc_map(x_2d), weight[:, :, None, None], None,
                    [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, False])[1].view(out_features, in_features)
            else:
                grad_weight = grad_2d.t() @ x_2d
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_2d.sum(0)
        return grad_x, grad_weight, grad_bias


@torch.jit.unused
def _linear_on_onednn(x: torch.Tensor, narrow: bool) -> bool:
    """Every linear where :func:`onednn_gemm`; a narrow one in inference where the host's narrow GEMMs prefer it."""
    wanted = _ONEDNN_GEMM or (narrow and _ONEDNN_NARROW and not torch.is_grad_enabled())
    return wanted and _eager_fp32_cpu(x) and x.numel() > 0  # an empty batch: oneDNN's conv refuses it


def linear(
        x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, narrow: bool = False,
) -> torch.Tensor:
    """``F.linear`` whose GEMMs go through oneDNN where :func:`onednn_gemm`, and in inference where the layer
    is ``narrow`` and the host's narrow GEMMs are faster on oneDNN (:class:`Linear`'s forward)."""
    if not torch.jit.is_scripting() and _linear_on_onednn(x, narrow):
        return _onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


@torch.jit.unused
def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    if torch.is_grad_enabled() and (
            x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        return _OneDnnLinear.apply(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'none', [], '')


def patch_linear(
        x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, narrow: bool = False,
) -> torch.Tensor:
    """A conv whose stride equals its kernel (1x1 included) as one GEMM over the non-overlapping patches of an
    NHWC map: x (B, H, W, C), weight (O, C, k, k) -> (B, H // k, W // k, O), the cells the conv covers (a
    remainder at the bottom/right is dropped, as the conv drops it). These GEMMs have few rows and long
    ones, where the linear's GEMM beats the conv kernel (2-core Intel Xeon, training step / inference:
    8x14x14x256 -> 512 at k=2 1.35x / 1.2x, 8x7x7x512 -> 1024 at k=1 1.23x / 1.3x). ``narrow``: as :func:`linear`."""
    B, H, W, C = x.shape
    out_features, k = weight.shape[0], weight.shape[-1]
    if k > 1:
        h, w = H // k, W // k
        x = x[:, :h * k, :w * k].reshape(B, h, k, w, k, C).permute(0, 1, 3, 2, 4, 5).reshape(B, h, w, k * k * C)
        weight = weight.permute(0, 2, 3, 1)  # (O, k, k, C): the patches' (p1 p2 c) order
    return linear(x, weight.reshape(out_features, -1), bias, narrow)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and keys) whose GEMMs go through oneDNN where :func:`onednn_gemm`,
    and in inference where the layer is narrow and the host's narrow GEMMs are faster on oneDNN."""
    narrow: torch.jit.Final[bool]

    def __init__(self, in_features: int, out_features: int, *args, **kwargs):
        super().__init__(in_features, out_features, *args, **kwargs)
        self.narrow = min(in_features, out_features) <= NARROW_LINEAR_MAX_FEATURES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.narrow)

    @classmethod
    def wrap(cls, linear: nn.Linear) -> 'Linear':
        """A :class:`Linear` over ``linear``'s own parameters (shared, not copied)."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device='meta')
        new.weight, new.bias = linear.weight, linear.bias
        return new


@register_notrace_function  # FX: one node; it branches on the memory format
def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU. A channels-last 4-D map goes through its (contiguous) NHWC view: PyTorch's CPU
    kernel vectorises only contiguous tensors, and on the channels-last strides it runs a scalar erf
    that is slower (8x256x56x56 forward + backward: 24.4 -> 17.9 ms, 2-core AMD EPYC) and rounds
    differently from the NCHW result; through the view it is bitwise the NCHW one."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return F.gelu(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return F.gelu(x)


class GELU(nn.GELU):
    """``nn.GELU`` whose exact form runs :func:`gelu` (the fast path for channels-last maps)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu(x) if self.approximate == 'none' else F.gelu(x, approximate=self.approximate)


def conv_gelu(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
) -> torch.Tensor:
    """gelu(conv2d(x)): one oneDNN op where :func:`onednn_fusable`, the two plain ops elsewhere."""
    if onednn_fusable(x):
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, [padding, padding], [stride, stride], [1, 1], groups, 'gelu', [], 'none')
    return gelu(F.conv2d(x, weight, bias, stride, padding, 1, groups))


def _exact_gelu(act: nn.Module) -> bool:
    return type(act) is nn.GELU and act.approximate == 'none'


def _wrap_linears(mlp: nn.Module) -> None:
    """fc1 and fc2 as :class:`Linear` (timm's Mlps build ``nn.Linear``; a ``use_conv`` Mlp keeps its convs)."""
    if type(mlp.fc1) is nn.Linear:
        mlp.fc1, mlp.fc2 = Linear.wrap(mlp.fc1), Linear.wrap(mlp.fc2)


# Where aten's GEMM is MKL's (see onednn_gemm), oneDNN's runs behind it on compute-bound shapes (AVX2 AMD
# EPYC, 2 cores: 0.95x at 1576 x 384 -> 1536), so there a lone GELU is fused only into narrow layers, where the
# pass it saves is the larger cost (1.26x at 25088 x 64 -> 256), and a wider fc1 keeps MKL's GEMM and runs its
# GELU in place over the fresh output (no second buffer). 2-core AVX-512 Intel Xeon, fc1 + GELU, fused / MKL's
# then GELU / MKL's then GELU in place, ms: 6272 x 128 -> 512 3.36 / 4.10 / 3.68; 6272 x 192 -> 768 8.02 /
# 9.21 / 8.74; 1568 x 256 -> 1024 3.12 / 3.28 / 3.11; 1600 x 384 -> 1536 7.14 / 7.06 / 6.52.
FUSE_GELU_MAX_IN_FEATURES = 192
FUSE_GLU_MAX_IN_FEATURES = 384


class Mlp(TimmMlp):
    """timm's Mlp (same parameters and state-dict keys). With an exact GELU in eager fp32 CPU inference (see
    :func:`onednn_fusable`), fc1 + GELU run as one oneDNN op where fc1 is narrow or the host's linears run on
    oneDNN anyway (:func:`onednn_gemm`); elsewhere the GELU runs in place over fc1's output."""
    fuse_gelu: torch.jit.Final[bool]
    narrow: torch.jit.Final[bool]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _wrap_linears(self)
        self.fuse_gelu = _exact_gelu(self.act) and isinstance(self.fc1, nn.Linear)
        self.narrow = self.fuse_gelu and self.fc1.in_features <= FUSE_GELU_MAX_IN_FEATURES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fuse_gelu and not self.training and onednn_fusable(x):
            return self._inference_forward(x)
        # timm's forward, spelled out: TorchScript cannot call super()
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))

    @torch.jit.unused
    def _inference_forward(self, x: torch.Tensor) -> torch.Tensor:  # dropout is off in eval
        if self.narrow or onednn_gemm(x):
            return self.fc2(self.norm(_linear_gelu(x, self.fc1.weight, self.fc1.bias)))
        return self.fc2(self.norm(torch.ops.aten.gelu_(self.fc1(x))))  # fc1's output is fresh: nobody else reads it


class GluMlp(TimmGluMlp):
    """timm's GluMlp (same parameters and keys). With an exact GELU gate in eager fp32 CPU inference, the
    gate half of fc1 runs with its GELU as one op and the value half with the product as another,
    instead of one GEMM, a split, a GELU pass and a multiply pass. Where fc1 is wider than
    ``FUSE_GLU_MAX_IN_FEATURES`` and aten's GEMM is MKL's, the halves run as two of MKL's GEMMs with the GELU
    and the product in place over their outputs: rvt_base (768 -> 2 x 2048) infers x1.014 that way, rvt_small
    (384 -> 2 x 1024) x1.001 (interleaved, 2-core Intel Xeon)."""
    fuse_gelu: torch.jit.Final[bool]
    narrow: torch.jit.Final[bool]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _wrap_linears(self)
        self.fuse_gelu = _exact_gelu(self.act) and isinstance(self.fc1, nn.Linear)
        self.narrow = self.fuse_gelu and self.fc1.in_features <= FUSE_GLU_MAX_IN_FEATURES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fuse_gelu and not self.training and onednn_fusable(x):
            return self._inference_forward(x)
        x1, x2 = self.fc1(x).chunk(2, dim=self.chunk_dim)  # timm's forward (TorchScript cannot call super())
        x = x1 * self.act(x2) if self.gate_last else self.act(x1) * x2
        return self.drop2(self.fc2(self.norm(self.drop1(x))))

    @torch.jit.unused
    def _inference_forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.fc1.out_features // 2
        gate, value = (slice(half, None), slice(0, half)) if self.gate_last else (slice(0, half), slice(half, None))
        weight, bias = self.fc1.weight, self.fc1.bias
        b_gate, b_value = (None, None) if bias is None else (bias[gate], bias[value])
        if self.narrow or onednn_gemm(x):
            x = _linear_mul(x, _linear_gelu(x, weight[gate], b_gate), weight[value], b_value)
        else:  # MKL's GEMMs, the GELU and the product in place over their fresh outputs
            x = linear(x, weight[value], b_value).mul_(torch.ops.aten.gelu_(linear(x, weight[gate], b_gate)))
        return self.fc2(self.norm(x))  # dropout is off in eval


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
        self.register_buffer('relative_position_index', self._make_index(device), persistent=False)

    def _make_index(self, device: Optional[torch.device]) -> torch.Tensor:
        """(N, N) table index, N = prefix tokens + wh * ww."""
        wh, ww = self.window_size
        coords = torch.stack(torch.meshgrid(
            torch.arange(wh, device=device), torch.arange(ww, device=device), indexing='ij')).flatten(1)
        rel = coords[:, :, None] - coords[:, None, :]  # (2, wh * ww, wh * ww)
        index = (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)
        if self.num_prefix_tokens and self.prefix_bias:
            p = self.num_prefix_tokens
            index = F.pad(index, (p, 0, p, 0), value=(2 * wh - 1) * (2 * ww - 1))
        return index

    def init_non_persistent_buffers(self) -> None:
        """Rebuilds the index, which state dicts do not carry (timm's convention: after a meta build and
        ``to_empty``, transformers' TimmWrapper calls this before loading weights)."""
        self.relative_position_index.copy_(self._make_index(self.relative_position_index.device))

    def init_weights(self) -> None:
        trunc_normal_(self.relative_position_bias_table, std=.02)
        self.init_non_persistent_buffers()

    @torch.no_grad()
    def set_window_size(self, window_size: Tuple[int, int]) -> None:
        """A new window: the table resampled by timm's ``resize_rel_pos_bias_table`` (the prefix slot carried
        over unchanged), the index rebuilt."""
        window_size = tuple(window_size)
        if window_size == self.window_size:
            return
        table = self.relative_position_bias_table
        old_window = self.window_size
        self.window_size = window_size
        new_shape = ((2 * window_size[0] - 1) * (2 * window_size[1] - 1) + int(self.prefix_bias), self.num_heads)
        self.relative_position_bias_table = nn.Parameter(
            resize_rel_pos_bias_table(table, window_size, new_shape, old_window_size=old_window),
            requires_grad=table.requires_grad)
        self.register_buffer(
            'relative_position_index', self._make_index(self.relative_position_index.device), persistent=False)

    def forward(self) -> torch.Tensor:
        """Returns the bias as (1, heads, N, N), N counting the prefix tokens."""
        bias = self.relative_position_bias_table[self.relative_position_index]  # (N, N, heads)
        bias = bias.permute(2, 0, 1).unsqueeze(0)
        if self.num_prefix_tokens and not self.prefix_bias:
            p = self.num_prefix_tokens
            bias = F.pad(bias, (p, 0, p, 0))
        return bias


def resample_rel_pos_tables(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Checkpoint filter: every :class:`RelPosBias` table of ``state_dict`` whose shape differs from
    ``model``'s (weights of another window size) resampled to the model's window with timm's
    ``resize_rel_pos_bias_table``; tables that fit are passed through untouched."""
    suffix = '.relative_position_bias_table'
    tables = {name + suffix: m for name, m in model.named_modules() if isinstance(m, RelPosBias)}
    out = dict(state_dict)
    for key, module in tables.items():
        value = state_dict.get(key)
        target = module.relative_position_bias_table
        if value is not None and value.shape != target.shape:
            if value.ndim != 2 or value.shape[1] != target.shape[1]:
                raise ValueError(
                    f'{key}: a relative-position table of shape {tuple(value.shape)} cannot be resampled to '
                    f'{tuple(target.shape)} (window {module.window_size}, {module.num_heads} heads)')
            out[key] = resize_rel_pos_bias_table(value, module.window_size, tuple(target.shape))
    return out


# --- position-encoding generator --------------------------------------------------------------

class PosConv(nn.Module):
    """Position-encoding generator (PEG, Chu et al. 2102.10882): x + depthwise_conv(x) on an NHWC map."""

    def __init__(self, dim: int, kernel_size: int = 3, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Conv2d(
            dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


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
    B, H, W, C = x.shape
    pad_h = (multiple[0] - H % multiple[0]) % multiple[0]
    pad_w = (multiple[1] - W % multiple[1]) % multiple[1]
    if not (pad_h or pad_w):
        return x
    if torch.jit.is_scripting() or (torch.is_grad_enabled() and x.requires_grad):
        return F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # its gradient is a slice
    # F.pad zero-fills the whole output before copying the map in: only the margins need the zeros
    # (8x64x64x192 -> 70x70: 1.98 -> 1.87 ms, 8x80x120x192 -> 84x126: 7.23 -> 4.96 ms, 2-core Intel Xeon)
    out = x.new_empty(B, H + pad_h, W + pad_w, C)
    out[:, :H, :W] = x
    out[:, H:].zero_()
    out[:, :H, W:].zero_()
    return out


@register_notrace_function  # FX: branches on concrete sizes
def pad_image_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pads an NCHW batch at the bottom and right up to multiples of ``multiple``."""
    pad_h = (multiple - x.shape[2] % multiple) % multiple
    pad_w = (multiple - x.shape[3] % multiple) % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x


@register_notrace_function  # FX: branches on concrete sizes
def window_padding_mask(
        size: Tuple[int, int],
        window_size: Tuple[int, int],
        device: Optional[torch.device] = None,
        dtype: torch.dtype = torch.float32,
        grid: bool = False,
        num_prefix_tokens: int = 0,
) -> Optional[torch.Tensor]:
    """Additive key mask for the windows (or, with ``grid``, the grid groups) of a (H, W) map zero-padded
    at the bottom/right to multiples of ``window_size``.

    Returns (num_windows, 1, num_prefix_tokens + wh * ww): -inf on padded keys, 0 on real ones and on the
    ``num_prefix_tokens`` tokens (registers, a regional token) in front of each window, in the order of
    :func:`window_partition` (:func:`grid_partition`); None when no padding is needed. The padding is
    shorter than a window, so every window and every grid group keeps at least one real key (a grid
    group's first row and column are within the first ceil(H / gh) rows and columns).
    """
    H, W = size
    wh, ww = window_size
    pad_h, pad_w = (wh - H % wh) % wh, (ww - W % ww) % ww
    if not pad_h and not pad_w:
        return None
    padded = F.pad(torch.zeros(1, H, W, 1, device=device, dtype=dtype), (0, 0, 0, pad_w, 0, pad_h), value=1.)
    # an if, not a function value: TorchScript cannot call a function held in a variable
    padded = grid_partition(padded, window_size) if grid else window_partition(padded, window_size)
    padded = padded.transpose(1, 2)  # (num_windows, 1, wh * ww)
    padded = F.pad(padded, (num_prefix_tokens, 0))
    return padded.masked_fill(padded > 0, float('-inf'))


# --- stochastic depth and the pre-norm residual block ---------------------------------------

class WindowDropPath(nn.Module):
    """Stochastic depth for window- or grid-partitioned tokens (B * groups, N, C): one keep/drop draw per
    image, the same as DropPath on the merged (B, H, W, C) map (timm's maxxvit and swin), not per window.

    The groups of one image must be consecutive, as :func:`window_partition` and :func:`grid_partition`
    lay them out.
    """

    def __init__(self, drop_prob: float = 0., scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        if self.drop_prob == 0. or not self.training:
            return x
        per_image = x.reshape(batch_size, -1, x.shape[-1])  # (B, groups * N, C)
        return drop_path(per_image, self.drop_prob, True, self.scale_by_keep).reshape(x.shape)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob:0.3f}'


class PreNormBlock(nn.Module):
    """x + attn(norm1(x)), then x + mlp(norm2(x)), on NHWC maps: the transformer block of Twins-SVT and
    ScalableViT, around an attention module built by the family. ``mlp_first`` runs the MLP half first
    (the order vit-pytorch's ScalableViT really runs its IWSA half in)."""

    def __init__(
            self,
            dim: int,
            attn: nn.Module,
            mlp_ratio: float = 4.,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            mlp_first: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.mlp_first = mlp_first
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mlp_first:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
            return x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


# --- attention modules over NHWC maps ---------------------------------------------------------

class HeadsAttention(nn.Module):
    """What every attention module here shares: head widths, timm's fused-attention switch
    (``use_fused_attn``), attention dropout and the output projection. Subclasses build their query,
    key and value projections and call :meth:`attend` (or :meth:`attend_heads` on split heads)."""
    fused_attn: torch.jit.Final[bool]

    def __init__(
            self,
            dim: int,
            num_heads: int,
            head_dim: int,
            value_dim: Optional[int] = None,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            proj_bias: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        value_dim = value_dim or head_dim
        self.num_heads = num_heads
        self.key_width = num_heads * head_dim
        self.value_width = num_heads * value_dim
        self.value_pad = head_dim - value_dim
        self.fused_attn = use_fused_attn()
        self.attn_drop = attn_drop
        self.proj = Linear(self.value_width, dim, bias=proj_bias, device=device, dtype=dtype)
        self.proj_drop = nn.Dropout(proj_drop)

    def attend_heads(
            self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_bias: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """q (B, heads, N, head_dim), k (B, heads, M, head_dim), v (B, heads, M, value_dim) -> (B, N, value_width)."""
        out = scaled_dot_attention(
            q, k, v, attn_bias, dropout_p=self.attn_drop if self.training else 0., fused=self.fused_attn,
            value_pad=self.value_pad)
        return merge_heads(out)

    def attend(
            self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_bias: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """q (B, N, key_width), k (B, M, key_width), v (B, M, value_width) -> (B, N, value_width)."""
        h = self.num_heads
        return self.attend_heads(split_heads(q, h), split_heads(k, h), split_heads(v, h), attn_bias)


@register_notrace_module  # FX leaf: pads by concrete sizes
class WindowAttention(HeadsAttention):
    """Multi-head self-attention within non-overlapping windows of an NHWC map.

    Maps that do not divide into windows are zero-padded at the bottom and right and the padded
    keys are masked, so outputs on the real map do not depend on the padding. ``window_size=None``
    is one window over the whole map (global attention). ``value_dim`` may differ from the key
    width (``head_dim``). An optional ``local_conv`` (a conv) maps the (B, heads * value_dim, H, W) values
    to a term added to the attention output before the projection (ScalableViT's local interactive
    module, CSWin's LePE).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            head_dim: int,
            window_size: Optional[int] = 7,
            value_dim: Optional[int] = None,
            qkv_bias: bool = False,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            local_conv: Optional[nn.Conv2d] = None,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__(dim, num_heads, head_dim, value_dim, attn_drop, proj_drop, **dd)
        self.window_size = window_size
        self.qkv = Linear(dim, 2 * self.key_width + self.value_width, bias=qkv_bias, **dd)
        self.local_conv = local_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        window = (H, W) if self.window_size is None else (self.window_size, self.window_size)
        qkv = self.qkv(x)  # (B, H, W, 2 * key_width + value_width)
        local = None
        if self.local_conv is not None:
            values = qkv[..., 2 * self.key_width:].permute(0, 3, 1, 2)  # (B, value_width, H, W), channels-last
            weight = self.local_conv.weight
            if weight.is_contiguous() and weight.numel() > values.numel():
                # a conv whose map and weight differ in memory format reorders the weight on every call,
                # forward and backward: where the weight is the bigger (a full 3x3 conv on a 7x7 map),
                # reorder the map instead
                values = values.contiguous()
            local = self.local_conv(values).permute(0, 2, 3, 1)
        qkv = pad_to_multiple(qkv, window)  # padded queries are cropped, padded keys masked
        Hp, Wp = qkv.shape[1], qkv.shape[2]
        windows = window_partition(qkv, window)  # (B * nW, N, 2 * key_width + value_width)
        q, k, v = windows.split([self.key_width, self.key_width, self.value_width], dim=-1)
        mask = window_padding_mask((H, W), window, x.device, x.dtype)  # (nW, 1, N) or None
        if mask is not None:
            mask = mask.repeat(B, 1, 1).unsqueeze(1)  # (B * nW, 1, 1, N)
        out = window_reverse(self.attend(q, k, v, mask), window, Hp, Wp)[:, :H, :W]  # (B, H, W, value_width)
        if local is not None:
            out = out + local
        return self.proj_drop(self.proj(out))


@register_notrace_module  # FX leaf: pads by concrete sizes
class ReducedKVAttention(HeadsAttention):
    """Global multi-head attention whose keys and values come from a kernel = stride = ``reduction``
    conv over the NHWC map (spatial-reduction attention: PVT, Twins' GSA, ScalableViT's SSA).

    Like those implementations the conv covers floor(H / r) x floor(W / r) cells; maps smaller
    than one cell are zero-padded to one, so every size >= 1 works.
    """
    kv_narrow: torch.jit.Final[bool]

    def __init__(
            self,
            dim: int,
            num_heads: int,
            head_dim: int,
            reduction: int = 1,
            value_dim: Optional[int] = None,
            qkv_bias: bool = False,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__(dim, num_heads, head_dim, value_dim, attn_drop, proj_drop, **dd)
        self.reduction = reduction
        self.q = Linear(dim, self.key_width, bias=qkv_bias, **dd)
        self.kv = nn.Conv2d(
            dim, self.key_width + self.value_width, reduction, stride=reduction, bias=qkv_bias, **dd)
        self.kv_narrow = min(dim * reduction ** 2, self.key_width + self.value_width) <= NARROW_LINEAR_MAX_FEATURES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        r = self.reduction
        q = self.q(x).reshape(B, H * W, self.key_width)
        if H < r or W < r:
            x = F.pad(x, (0, 0, 0, max(r - W, 0), 0, max(r - H, 0)))
        kv = patch_linear(x, self.kv.weight, self.kv.bias, self.kv_narrow)  # self.kv as a GEMM: (B, H/r, W/r, kv)
        kv = kv.flatten(1, 2)  # (B, H/r * W/r, key_width + value_width)
        k, v = kv.split([self.key_width, self.value_width], dim=-1)
        out = self.attend(q, k, v).reshape(B, H, W, self.value_width)
        return self.proj_drop(self.proj(out))


# --- input validation -------------------------------------------------------------------------

@register_notrace_module  # FX leaf: it branches on concrete shapes
class ImageCheck(nn.Module):
    """Validates the image batch a model receives and returns it unchanged.

    A non-empty floating-point (not complex) (B, in_chans, H, W) tensor with H, W >= ``min_size`` and, if
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
        # TorchScript resolves this statically (x is a Tensor there) and compiles no raise
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f'{name} expects a torch.Tensor image batch (B, {chans}, H, W), got {type(x).__module__}.'
                f'{type(x).__qualname__}; convert it with torch.as_tensor (numpy: torch.from_numpy) first')
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
        if x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(f'{name} got an empty image ({x.shape[2]}x{x.shape[3]}), height and width must be >= 1')
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


@torch.no_grad()
def init_model_weights(model: nn.Module) -> None:
    """(Re-)initializes every parameter and buffer of ``model``: PyTorch's own reset for each layer
    (BatchNorm statistics included), then :func:`init_weights`. Works after ``to_empty``."""
    for module in model.modules():
        if module is not model and hasattr(module, 'reset_parameters'):
            module.reset_parameters()
    named_apply(init_weights, model)
