"""Fetches timm's own tests/test_models.py and prepares it to run on this package's models.

The file comes from the timm sdist on PyPI whose version matches the installed timm (``pip
download``, cached under ``.cache/`` at the repository root or ``$TIMM_VITVARIANTS_CACHE``).
Two edits adapt it, both the ones timm makes for its own families:
  * this package's model modules join ``FEAT_INTER_FILTERS`` (families with forward_intermediates);
  * ViT-style families whose ``forward_features`` returns tokens join ``NON_STD_FILTERS``.
``GITHUB_ACTIONS`` is set while the module is built: timm's switch that leaves out the tests
which download pretrained weights.
"""
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Dict, List

import timm

import timm_vitvariants

# Our ViT-style (token output) families, treated like timm's 'vit_*'.
NON_STD_MODELS: List[str] = ['rvt_*']

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    return Path(os.environ.get('TIMM_VITVARIANTS_CACHE', REPO_ROOT / '.cache'))


def fetch_test_models(version: str = timm.__version__) -> Path:
    """Path of tests/test_models.py from the timm ``version`` sdist, downloading it once."""
    target = cache_dir() / f'timm-{version}-tests' / 'test_models.py'
    if target.exists():
        return target
    sdist_dir = cache_dir() / 'sdist'
    sdist_dir.mkdir(parents=True, exist_ok=True)
    sdist = sdist_dir / f'timm-{version}.tar.gz'
    if not sdist.exists():
        cmd = [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--no-binary', ':all:',
               f'timm=={version}', '-d', str(sdist_dir)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode or not sdist.exists():
            raise RuntimeError(
                f'could not download the timm {version} sdist from PyPI to run timm\'s own model tests:\n'
                f'{" ".join(cmd)}\n{done.stdout}{done.stderr}')
    with tarfile.open(sdist) as tar:
        member = tar.getmember(f'timm-{version}/tests/test_models.py')
        data = tar.extractfile(member).read()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix('.tmp')
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def _append_to_list(source: str, name: str, values: List[str]) -> str:
    """Adds ``name += values`` right after the module-level ``name = [...]`` definition."""
    match = re.search(rf'^{name} = \[.*?^\]\n', source, flags=re.M | re.S)
    if match is None:
        raise RuntimeError(f'timm\'s test_models.py has no {name} list any more; update tests/timm_suite.py')
    return source[:match.end()] + f'{name} += {values!r}  # timm_vitvariants\n' + source[match.end():]


def our_models() -> List[str]:
    return timm.list_models(module=list(timm_vitvariants.MODEL_MODULES))


def build_namespace(module_name: str) -> Dict[str, object]:
    """Executes the adapted timm test module; returns its namespace (tests, fixtures, constants)."""
    path = fetch_test_models()
    source = path.read_text()
    source = _append_to_list(source, 'FEAT_INTER_FILTERS', list(timm_vitvariants.MODEL_MODULES))
    source = _append_to_list(source, 'NON_STD_FILTERS', NON_STD_MODELS)

    ours = set(our_models())
    list_models = timm.list_models

    def list_our_models(*args, **kwargs):
        # Same query, answered for this package's models only: parametrization stays small.
        return [m for m in list_models(*args, **kwargs) if m.split('.')[0] in ours]

    namespace: Dict[str, object] = {'__name__': module_name, '__file__': str(path)}
    had_flag = 'GITHUB_ACTIONS' in os.environ
    os.environ['GITHUB_ACTIONS'] = os.environ.get('GITHUB_ACTIONS', 'true')
    timm.list_models = list_our_models
    try:
        exec(compile(source, str(path), 'exec'), namespace)
    finally:
        timm.list_models = list_models
        if not had_flag:
            del os.environ['GITHUB_ACTIONS']
    return namespace
