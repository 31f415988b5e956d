"""A repo exported by ``python -m timm_vitvariants export`` opens in transformers too: through
``AutoModelForImageClassification`` (TimmWrapper) with timm's outputs, and in
``pipeline('image-classification')`` with the exported class names. The real transformers, served by
the loopback Hub (tests/hub_server.py); one fresh process loads every family."""
import json
import os
import subprocess
import sys

import pytest
import safetensors.torch
import transformers  # noqa: F401  in the test extra; imported here so a missing one fails, not skips

from hub_server import LoopbackHub
from test_autoload import HOOK_DIR
from test_hub import FAMILIES, REPO_ROOT, TESTS, cli, small_model
from family_specs import SPECS

LABELS = ['cat', 'dog', 'owl']


@pytest.fixture(scope='module')
def loaded(tmp_path_factory):
    """What the transformers process reported: {'plugin': its path, 'repos': {repo: result}}."""
    tmp = tmp_path_factory.mktemp('transformers')
    (tmp / 'labels.txt').write_text('\n'.join(LABELS))
    for family in FAMILIES:
        safetensors.torch.save_file(small_model(family, num_classes=len(LABELS)).state_dict(), tmp / f'{family}.safetensors')
        (tmp / f'{family}.json').write_text(json.dumps(SPECS[family]['small']))
        rc = cli('export', '--model', f'{family}_tiny', '--checkpoint', tmp / f'{family}.safetensors', '--model-args',
                 tmp / f'{family}.json', '--arg', f'num_classes={len(LABELS)}', '--labels', tmp / 'labels.txt',
                 '--input-size', *SPECS[family]['small_size'], '--output', tmp / 'server' / 'org' / family)
        assert rc == 0, family
    with LoopbackHub(tmp / 'server', lifetime_s=240) as hub:
        env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HOME=str(tmp / 'hf_home'), HF_HUB_DISABLE_TELEMETRY='1',
                   HF_HUB_DISABLE_XET='1', HF_HUB_DISABLE_PROGRESS_BARS='1', HF_HUB_ETAG_TIMEOUT='5',
                   HF_HUB_DOWNLOAD_TIMEOUT='5', PYTHONPATH=os.pathsep.join([HOOK_DIR, str(REPO_ROOT), os.environ.get('PYTHONPATH', '')]))
        env.pop('TIMM_VITVARIANTS_AUTOLOAD', None)  # the startup hook must import the plugin
        done = subprocess.run([sys.executable, str(TESTS / 'transformers_client.py'), str(tmp / 'results.json'),
                               *(f'org/{family}' for family in FAMILIES)],
                              env=env, cwd=tmp, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert any(path.endswith('/model.safetensors') for _, path in hub.requests)
    return json.loads((tmp / 'results.json').read_text())


def test_the_startup_hook_imports_the_plugin_for_transformers(loaded):
    assert loaded['plugin'] is not None, 'transformers imported timm, but timm_vitvariants was not imported'
    assert os.path.dirname(os.path.dirname(loaded['plugin'])) == str(REPO_ROOT)


@pytest.mark.parametrize('family', FAMILIES)
def test_transformers_loads_an_exported_repo(family, loaded):
    result = loaded['repos'][f'org/{family}']
    assert 'error' not in result, result.get('error')
    assert result['difference'] < 1e-5  # the same model and weights: TimmWrapper builds on meta, then loads
    assert sorted(result['labels']) == sorted(LABELS)  # the pipeline names the exported classes
