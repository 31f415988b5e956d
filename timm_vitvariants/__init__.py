"""timm_vitvariants: vit-pytorch's RegionViT, ScalableViT, RvT, MaxViT-with-registers and
Twins-SVT as first-class timm models.

``import timm_vitvariants`` registers every variant with timm, so ``timm.create_model`` finds them.
"""
from .version import __version__
from .convert import from_vit_pytorch
from . import maxvit_reg  # noqa: F401  (registers the models)
from . import scalablevit  # noqa: F401
from . import twinssvt  # noqa: F401
from . import rvt  # noqa: F401
from . import regionvit  # noqa: F401
from ._hub_load import install as _install_hub_readers

__all__ = ['__version__', 'from_vit_pytorch', 'load_resampled', 'MODEL_MODULES']

# The family modules, as timm's registry names them (timm.list_models(module=...)).
MODEL_MODULES = ('maxvit_reg', 'regionvit', 'rvt', 'scalablevit', 'twinssvt')

from .hub import load_resampled  # noqa: E402  (hub imports MODEL_MODULES)

_install_hub_readers()  # config.json from the Hub or a folder: checked, with errors that say where
