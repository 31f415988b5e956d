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


def _regionvit(size: str) -> nn.Module:
    from vit_pytorch.regionvit import RegionViT
    dim, depth, three_convs = {
        'tiny': ((64, 128, 256, 512), (2, 2, 8, 2), True),
        'small': ((96, 192, 384, 768), (2, 2, 8, 2), True),
        'base': ((128, 256, 512, 1024), (2, 2, 14, 2), False),
    }[size]
    # nearest: vit-pytorch fixes 4 heads x 32 (ours: dim / 32 heads) and a full-width 3-conv tokenizer
    return RegionViT(dim=dim, depth=depth, window_size=7, num_classes=1000, tokenize_local_3_conv=three_convs)


def _scalablevit(size: str) -> nn.Module:
    from vit_pytorch.scalable_vit import ScalableViT
    dim, depth, heads, ssa_key = {
        'tiny': (64, (1, 1, 3, 1), (2, 4, 8, 16), (40, 40, 40, 32)),
        'small': (64, (1, 1, 10, 1), (2, 4, 8, 16), (40, 40, 40, 32)),
        'base': (96, (1, 1, 7, 3), (3, 6, 12, 24), (64, 40, 40, 32)),
    }[size]
    # nearest: vit-pytorch's full 3x3 local interactive conv and no qkv bias (ours: depthwise, bias)
    return ScalableViT(num_classes=1000, dim=dim, depth=depth, heads=heads, reduction_factor=(8, 4, 2, 1),
                       window_size=7, ssa_dim_key=ssa_key)


def _rvt(size: str) -> nn.Module:
    from vit_pytorch.rvt import RvT
    dim, heads, dim_head, mlp_dim = {'tiny': (192, 6, 32, 512), 'small': (384, 6, 64, 1024),
                                     'base': (768, 12, 64, 2048)}[size]
    # exactly our variant
    return RvT(image_size=224, patch_size=16, num_classes=1000, dim=dim, depth=12, heads=heads, mlp_dim=mlp_dim,
               dim_head=dim_head)


def _twinssvt(size: str) -> nn.Module:
    from vit_pytorch.twins_svt import TwinsSVT
    dims, depths = {'tiny': ((64, 128, 256, 512), (1, 1, 2, 2)), 'small': ((64, 128, 256, 512), (1, 1, 5, 4)),
                    'base': ((96, 192, 384, 768), (1, 1, 9, 2))}[size]
    # nearest: vit-pytorch fixes 8 heads x 64 (ours: dim / 32 heads x 32); its s*_depth counts units after the first
    kwargs = {}
    for i, (dim, depth, k) in enumerate(zip(dims, depths, (8, 4, 2, 1)), start=1):
        kwargs.update({f's{i}_emb_dim': dim, f's{i}_depth': depth - 1, f's{i}_global_k': k})
    return TwinsSVT(num_classes=1000, **kwargs)


# Families whose reference is exactly the named variant (same modules, same computation): the benchmark times
# one model for both rows, and tests/test_benchmarks.py checks the claim.
EXACT_FAMILIES = ('maxvit_reg', 'rvt')

_BUILDERS: Dict[str, Callable[[str], nn.Module]] = {
    'maxvit_reg': _maxvit_reg,
    'regionvit': _regionvit,
    'rvt': _rvt,
    'scalablevit': _scalablevit,
    'twinssvt': _twinssvt,
}


def vit_pytorch_reference(name: str) -> Optional[nn.Module]:
    family, size = name.rsplit('_', 1)
    builder = _BUILDERS.get(family)
    return builder(size) if builder else None


def is_exact_reference(name: str) -> bool:
    return name.rsplit('_', 1)[0] in EXACT_FAMILIES
