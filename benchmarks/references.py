"""The reference models each variant is measured against.

``vit_pytorch_reference(name)`` builds the vit-pytorch model of the variant's family at the
variant's configuration, or the nearest one vit-pytorch can express (noted per family); the
benchmark converts it with ``from_vit_pytorch`` so both sides run identical weights.
"""
from typing import Callable, Dict, Optional

from torch import nn

# timm's own model of the same family, compared variant by variant
TIMM_COUNTERPARTS: Dict[str, str] = {
    'maxvit_reg_tiny': 'maxvit_tiny_tf_224',
    'twinssvt_small': 'twins_svt_small',
}


def _maxvit_reg(size: str) -> nn.Module:
    from vit_pytorch.max_vit_with_registers import MaxViT
    dim, depth = {'tiny': (64, (2, 2, 5, 2)), 'small': (96, (2, 2, 5, 2)), 'base': (96, (2, 6, 14, 2))}[size]
    # exactly our variant; dropout 0 as ours (the reference defaults to 0.1)
    return MaxViT(num_classes=1000, dim=dim, depth=depth, dim_head=32, dim_conv_stem=64, window_size=7,
                  mbconv_shrinkage_rate=0.0625, dropout=0., num_register_tokens=4)


_BUILDERS: Dict[str, Callable[[str], nn.Module]] = {
    'maxvit_reg': _maxvit_reg,
}


def vit_pytorch_reference(name: str) -> Optional[nn.Module]:
    family, size = name.rsplit('_', 1)
    builder = _BUILDERS.get(family)
    return builder(size) if builder else None
