"""Startup hook: register timm_vitvariants' models as soon as timm itself is imported.

Installed at the root of site-packages together with ``timm_vitvariants_autoload.pth``, which
calls :func:`install` when the interpreter starts. That only appends a small finder to
``sys.meta_path``: nothing is imported until some code imports ``timm``, so processes that never
use timm pay nothing. When ``timm`` has finished importing, the finder imports
``timm_vitvariants`` so that ``timm.create_model('maxvit_reg_tiny')`` works in unmodified
scripts (timm's train.py, validate.py, benchmark.py, ``hf-hub:`` loading).

Set ``TIMM_VITVARIANTS_AUTOLOAD=0`` to switch the hook off. If the plugin fails to import, a
warning is issued and timm keeps working without it.
"""
import os
import sys

ENV_VAR = 'TIMM_VITVARIANTS_AUTOLOAD'
PLUGIN = 'timm_vitvariants'


def enabled() -> bool:
    return os.environ.get(ENV_VAR, '1').strip().lower() not in ('0', 'false', 'no', 'off')


class _LoaderWithPlugin:
    """Wraps timm's own loader; after ``timm/__init__.py`` has run, imports the plugin."""

    def __init__(self, loader, watcher):
        self._loader = loader
        self._watcher = watcher

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        # Done: leave sys.meta_path, and give timm its own loader back, so nothing downstream sees the wrapper.
        if self._watcher in sys.meta_path:
            sys.meta_path.remove(self._watcher)
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        try:
            __import__(PLUGIN)
        except Exception as e:  # never break timm because of the plugin
            import warnings
            warnings.warn(
                f'{PLUGIN} could not be imported by its startup hook ({type(e).__name__}: {e}); '
                f'timm works without its models. Set {ENV_VAR}=0 to silence this.',
                RuntimeWarning,
                stacklevel=2,
            )

    def __getattr__(self, name):
        return getattr(self._loader, name)


class TimmImportWatcher:
    """A ``sys.meta_path`` finder that only reacts to the top-level ``timm`` package.

    It stays in place until timm is actually executed: libraries that only ask whether timm is
    installed (``importlib.util.find_spec('timm')``, as transformers does) get a spec and no import."""

    def __init__(self):
        self._finding = False  # while the other finders are asked, this one answers nothing

    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'timm' or self._finding:
            return None
        import importlib.util

        self._finding = True
        try:
            spec = importlib.util.find_spec('timm')
        finally:
            self._finding = False
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _LoaderWithPlugin(spec.loader, self)
        return spec


def install() -> None:
    if not enabled() or 'timm' in sys.modules:
        return
    if not any(isinstance(f, TimmImportWatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, TimmImportWatcher())
