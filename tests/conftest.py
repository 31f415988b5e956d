import os
import sys


sys.path.insert(0, os.path.dirname(__file__))  # the shared helpers beside the tests
sys.path.insert(1, os.path.dirname(os.path.dirname(__file__)))  # the repository root: benchmarks/

import timm_vitvariants  # noqa: E402,F401  registers the models even with the startup hook off

TIMM_SUITE = 'test_timm_models.py'
TIMM_MARKERS = ('base', 'cfg', 'cfg_nonstd', 'forward', 'backward', 'torchscript', 'features', 'fxforward',
                'fxbackward')


def pytest_configure(config):
    for marker in TIMM_MARKERS:
        config.addinivalue_line('markers', f'{marker}: timm test_models.py group')


def pytest_collection_modifyitems(config, items):
    """In timm's suite keep only the tests parametrized with one of our models."""
    from timm_suite import our_models
    ours = set(our_models())
    keep, drop = [], []
    for item in items:
        if item.fspath.basename == TIMM_SUITE:
            params = getattr(getattr(item, 'callspec', None), 'params', {})
            if params.get('model_name') not in ours:
                drop.append(item)
                continue
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
