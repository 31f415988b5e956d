"""timm's own model test suite (tests/test_models.py of the installed timm's sdist), run on every
variant this package registers. See timm_suite.py for how the file is fetched and adapted;
tests of that file that name timm's own models are deselected in conftest.py."""
from timm_suite import build_namespace

globals().update({k: v for k, v in build_namespace(__name__).items() if k not in ('__name__', '__file__')})
