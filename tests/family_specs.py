"""What each family documents about itself, for the tests that run over every family.

``small``: constructor kwargs that make the family's ``_tiny`` variant tiny but structurally complete,
with ``small_size`` an input it takes. ``valid``: input sizes the family documents as supported
for its named variants (non-square included); ``invalid``: sizes it refuses with a ValueError;
``too_small``: a size below its minimum. ``strides``: the feature strides.
"""
from typing import Any, Dict

# what a backbone meets: segmentation crops, a detection batch, a photo, a large image (issue #16)
BACKBONE_SIZES = [(256, 256), (320, 480), (375, 500), (1024, 768)]

SPECS: Dict[str, Dict[str, Any]] = {
    'maxvit_reg': dict(
        small=dict(embed_dim=32, depths=(1, 1), head_dim=16, window_size=4),
        small_size=(32, 32),
        # any size from one token at stride 32; windows and grid groups pad and mask what they lack
        valid=[(224, 224), (224, 448), (448, 224), (221, 223), (32, 32)] + BACKBONE_SIZES,
        invalid=[(31, 224), (224, 16)],
        too_small=(3, 3),
        strides=(2, 4, 8, 16, 32),
    ),
    'scalablevit': dict(
        small=dict(embed_dim=16, depths=(1, 1), num_heads=(1, 2), ssa_key_dim=8, ssa_value_dim=8, iwsa_key_dim=8,
                   iwsa_value_dim=8, reduction_factor=(4, 2), window_size=4),
        small_size=(32, 32),
        # any size from the minimum (every stage's map holds one key/value reduction cell); windows pad
        valid=[(224, 224), (224, 448), (448, 224), (221, 223), (29, 29), (96, 130)] + BACKBONE_SIZES,
        invalid=[(28, 224), (224, 20)],
        too_small=(3, 3),
        strides=(4, 8, 16, 32),
    ),
    'twinssvt': dict(
        small=dict(embed_dims=(16, 32, 32, 64), depths=(1, 1, 2, 1), num_heads=2, head_dim=8, window_size=2,
                   global_k=(4, 2, 1, 1)),
        small_size=(32, 32),
        valid=[(224, 224), (224, 320), (320, 224), (221, 223)] + BACKBONE_SIZES,
        invalid=[(16, 224)],
        too_small=(16, 16),
        strides=(4, 8, 16, 32),
    ),
    'rvt': dict(
        small=dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, head_dim=16, mlp_hidden_dim=48),
        small_size=(32, 32),
        valid=[(224, 224), (224, 448), (448, 224), (160, 96)],
        invalid=[(200, 200), (224, 300)],
        too_small=(8, 8),
        strides=(16,) * 12,
    ),
    'regionvit': dict(
        small=dict(embed_dim=(16, 32, 32, 64), depths=(1, 1, 1, 1), num_heads=2, head_dim=8, window_size=2,
                   stem_chs=(8, 16)),
        small_size=(64, 64),
        valid=[(224, 224), (224, 448), (448, 224), (221, 223), (225, 250), (28, 28), (560, 224)] + BACKBONE_SIZES,
        invalid=[],
        too_small=(27, 27),
        strides=(4, 8, 16, 32),
    ),
}
