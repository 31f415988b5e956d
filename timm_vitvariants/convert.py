"""``from_vit_pytorch``: vit-pytorch model instances -> the equivalent timm models, same outputs.

Each family file registers a converter for the vit-pytorch class it mirrors. A converter reads the
configuration from the instance (vit-pytorch keeps no config object), builds our model through
``timm.create_model`` and loads the re-mapped weights strictly. vit-pytorch itself is never
imported here: only instances the caller already has are inspected.
"""
from typing import Callable, Dict

import torch
from torch import nn

__all__ = ['from_vit_pytorch', 'register_converter', 'supported_classes', 'load_converted']

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


def load_converted(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str) -> nn.Module:
    """Strictly loads a re-mapped state dict, naming the keys that did not line up."""
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f'converting {source} failed, the weights do not line up: missing {result.missing_keys}, '
            f'unexpected {result.unexpected_keys}')
    return model
