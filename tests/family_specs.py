"""What each family documents about itself, for the tests that run over every family.

``small``: constructor kwargs that make the family's ``_tiny`` variant tiny but structurally complete,
with ``small_size`` an input it takes. ``valid``: input sizes the family documents as supported
for its named variants (non-square included); ``invalid``: sizes it refuses with a ValueError;
``too_small``: a size below its minimum. ``strides``: the feature strides.
"""
from typing import Any, Dict

SPECS: Dict[str, Dict[str, Any]] = {
    'maxvit_reg': dict(
        small=dict(embed_dim=32, depths=(1, 1), head_dim=16, window_size=4),
        small_size=(32, 32),
        valid=[(224, 224), (224, 448), (448, 224), (221, 223)],
        invalid=[(200, 200), (224, 300)],
        too_small=(3, 3),
        strides=(2, 4, 8, 16, 32),
    ),
    'regionvit': dict(
        small=dict(embed_dim=(16, 32, 32, 64), depths=(1, 1, 1, 1), num_heads=2, head_dim=8, window_size=2,
                   stem_chs=(8, 16)),
        small_size=(64, 64),
        valid=[(224, 224), (224, 448), (448, 224), (221, 223)],
        invalid=[],
        too_small=(27, 27),
        strides=(4, 8, 16, 32),
    ),
}
