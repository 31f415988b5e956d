"""The startup hook: plain ``import timm`` finds our models, lazily, switchably, never fatally."""
import os
import subprocess
import sys
import textwrap

import pytest


# The installed .pth runs `import _timm_vitvariants_autoload`: with this folder first on the path, it is
# this checkout's hook (an editable install's copy in site-packages may be older)
HOOK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'timm_vitvariants', '_autoload')


def run(code, **env):
    full_env = dict(os.environ)
    full_env.pop('TIMM_VITVARIANTS_AUTOLOAD', None)
    full_env['PYTHONPATH'] = os.pathsep.join(p for p in (HOOK_DIR, full_env.get('PYTHONPATH')) if p)
    full_env.update(env)
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], env=full_env, capture_output=True,
                          text=True, cwd='/')


def test_plain_timm_import_registers_models():
    done = run('''
        import sys
        assert 'timm_vitvariants' not in sys.modules and 'torch' not in sys.modules  # nothing at startup
        import timm
        assert 'timm_vitvariants' in sys.modules
        print(timm.is_model('maxvit_reg_tiny'), timm.create_model('maxvit_reg_tiny', device='meta').num_classes)
    ''')
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ['True', '1000']


@pytest.mark.parametrize('first_import', ['from timm.models import create_model', 'import timm.layers',
                                          'import timm_vitvariants',
                                          # transformers' availability probe: a spec, no import yet
                                          'import importlib.util; assert importlib.util.find_spec("timm")'])
def test_any_first_import_works(first_import):
    done = run(f'''
        {first_import}
        import timm
        assert timm.is_model('maxvit_reg_tiny')
    ''')
    assert done.returncode == 0, done.stderr


def test_environment_switch_turns_it_off():
    done = run('''
        import sys, timm
        print('timm_vitvariants' in sys.modules, timm.is_model('maxvit_reg_tiny'))
    ''', TIMM_VITVARIANTS_AUTOLOAD='0')
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ['False', 'False']


def test_broken_plugin_warns_instead_of_crashing(tmp_path):
    fake = tmp_path / 'timm_vitvariants'
    fake.mkdir()
    (fake / '__init__.py').write_text('raise ImportError("simulated breakage")\n')
    done = run('''
        import timm
        print(timm.is_model('resnet18'))
    ''', PYTHONPATH=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == 'True'
    assert 'simulated breakage' in done.stderr and 'TIMM_VITVARIANTS_AUTOLOAD=0' in done.stderr
