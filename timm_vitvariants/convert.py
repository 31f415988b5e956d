"""``from_vit_pytorch``: vit-pytorch model instances -> the equivalent timm models, same outputs.

Each family file registers a converter for the vit-pytorch class it mirrors. A converter reads the
configuration from the instance (vit-pytorch keeps no config object), builds our model through
``timm.create_model`` and copies the weights tensor by tensor into their new places (every tensor
of our model is written; the parity tests check the outputs). vit-pytorch itself is never imported
here: only instances the caller already has are inspected. The copy helpers that several converters
need are below.
"""
from typing import Callable, Dict

import torch
from torch import nn

__all__ = ['from_vit_pytorch', 'register_converter', 'supported_classes', 'copy_channel_norm', 'copy_conv1x1',
           'copy_conv_mlp', 'copy_linear_mlp', 'copy_norm_linear_head']

_CONVERTERS: Dict[str, Callable[[nn.Module], nn.Module]] = {}


def _class_key(cls: type) -> str:
    return f'{cls.__module__}.{cls.__qualname__}'


def register_converter(class_path: str) -> Callable:
    """Registers ``fn(vit_pytorch_model) -> timm model`` for e.g. 'vit_pytorch.rvt.RvT'."""
    def decorator(fn: Callable[[nn.Module], nn.Module]) -> Callable[[nn.Module], nn.Module]:
        _CONVERTERS[class_path] = fn
        return fn
    return decorator


def supported_classes() -> list:
    return sorted(_CONVERTERS)


def from_vit_pytorch(model: nn.Module) -> nn.Module:
    """Returns the timm model equivalent to a vit-pytorch ``model``, carrying its weights.

    The result is in the same train/eval mode; in eval mode its outputs equal vit-pytorch's.
    Raises ``TypeError`` for classes without a converter and ``ValueError`` for configurations
    this package cannot represent.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'from_vit_pytorch expects a vit-pytorch nn.Module, got {type(model).__name__}')
    key = _class_key(type(model))
    if key not in _CONVERTERS:
        raise TypeError(
            f'no converter for {key}; supported vit-pytorch classes: {", ".join(supported_classes())}')
    converted = _CONVERTERS[key](model)
    return converted.train(model.training)


# --- copy helpers: vit-pytorch's channels-first layers into our channels-last ones -----------

def copy_channel_norm(norm: nn.LayerNorm, ref_norm: nn.Module) -> None:
    """vit-pytorch's channel LayerNorm (``g``, ``b`` of shape (1, C, 1, 1)) into an ``nn.LayerNorm(C)``."""
    norm.weight.copy_(ref_norm.g.flatten())
    norm.bias.copy_(ref_norm.b.flatten())


def copy_conv1x1(linear: nn.Linear, *convs: nn.Conv2d) -> None:
    """1x1 convs (out, in, 1, 1), concatenated along out, into one Linear (sum of outs, in)."""
    linear.weight.copy_(torch.cat([conv.weight.flatten(1) for conv in convs]))
    if linear.bias is not None:
        linear.bias.copy_(torch.cat([conv.bias for conv in convs]))


def copy_conv_mlp(norm: nn.LayerNorm, mlp: nn.Module, ref_ff: nn.Module) -> None:
    """vit-pytorch's conv feed-forward (``net``: channel norm, 1x1 conv, GELU, dropout, 1x1 conv, ...)
    into a pre-norm and a timm ``Mlp``."""
    copy_channel_norm(norm, ref_ff.net[0])
    copy_conv1x1(mlp.fc1, ref_ff.net[1])
    copy_conv1x1(mlp.fc2, ref_ff.net[4])


def copy_linear_mlp(norm: nn.Module, mlp: nn.Module, ref_ff: nn.Sequential) -> None:
    """vit-pytorch's feed-forward ``Sequential(LayerNorm, Linear, act, Dropout, Linear, ...)`` into a pre-norm
    and a timm ``Mlp`` (or ``GluMlp``: the same two Linears)."""
    norm.load_state_dict(ref_ff[0].state_dict())
    mlp.fc1.load_state_dict(ref_ff[1].state_dict())
    mlp.fc2.load_state_dict(ref_ff[4].state_dict())


def copy_norm_linear_head(model: nn.Module, ref_norm: nn.Module, ref_fc: nn.Linear) -> None:
    """vit-pytorch's pool -> LayerNorm -> Linear head into timm's ``NormMlpClassifierHead``."""
    model.head.norm.load_state_dict(ref_norm.state_dict())
    model.get_classifier().load_state_dict(ref_fc.state_dict())
