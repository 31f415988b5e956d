"""Weights on the Hub: pretrained configs, export, convert, push, and the whole loop against a
loopback Hub (tests/hub_server.py) with the real huggingface_hub and timm code."""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

import timm
import timm_vitvariants
from timm.models import get_arch_pretrained_cfgs
from timm_vitvariants.__main__ import main
from timm_vitvariants.hub import HubDownloadError, check_folder, export_folder, push_folder, read_state_dict, upload_plan
from timm_vitvariants.info import list_variants, published_weights

from family_specs import SPECS
from hub_client import sample_input
from hub_server import LoopbackHub

TESTS = Path(__file__).parent
REPO_ROOT = TESTS.parent
FAMILIES = list(timm_vitvariants.MODEL_MODULES)
HUB_FAMILY = FAMILIES[0]  # the end-to-end Hub loop runs on one family; export runs on all
CLASSES = 10


def small_model(family: str = HUB_FAMILY, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    args = {**SPECS[family]['small'], 'num_classes': CLASSES, **kwargs}
    return timm.create_model(f'{family}_tiny', **args).eval()


def input_shape(family: str = HUB_FAMILY, batch: int = 2) -> list:
    return [batch, 3, *SPECS[family]['small_size']]


@torch.no_grad()
def outputs(model: torch.nn.Module, family: str = HUB_FAMILY) -> torch.Tensor:
    return model.eval()(sample_input(input_shape(family)))


def export(model: torch.nn.Module, folder: Path, family: str = HUB_FAMILY, **kwargs) -> Path:
    size = SPECS[family]['small_size']
    return export_folder(model, folder, data_config={'input_size': (3, *size)}, **kwargs)


def cli(*argv: str) -> int:
    """Runs the CLI in this process; argparse's and our errors exit through SystemExit."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


# --- pretrained configs -----------------------------------------------------------------------

@pytest.mark.parametrize('name', list_variants())
def test_pretrained_cfg_carries_full_metadata(name):
    for tag, cfg in get_arch_pretrained_cfgs(name).items():
        for key in ('input_size', 'crop_pct', 'interpolation', 'mean', 'std', 'first_conv', 'classifier',
                    'license', 'paper_ids', 'num_classes'):
            assert getattr(cfg, key), f'{name}.{tag} lacks {key}'
        model = timm.create_model(name, device='meta')
        first_convs = [cfg.first_conv] if isinstance(cfg.first_conv, str) else cfg.first_conv  # timm takes either
        for conv in first_convs:  # a conv, or a linear over unshuffled pixels (twinssvt): takes the 3 channels
            weight = model.get_submodule(conv).weight
            assert weight.shape[1] % 3 == 0 and weight.shape[1] < 3 * 17 * 17
        if cfg.has_weights and cfg.custom_load:  # the authors' release file, read by the family's weights_only loader
            assert cfg.url.startswith('https://') and cfg.origin_url and cfg.notes
        elif cfg.has_weights:  # published weights: a full org/name.tag Hub id
            assert cfg.hf_hub_id and cfg.hf_hub_id.count('/') == 1 and cfg.hf_hub_id.endswith(f'.{tag}')


UNPUBLISHED = [name for name in list_variants() if not published_weights(name)]


@pytest.mark.parametrize('name', UNPUBLISHED)
def test_pretrained_without_published_weights_is_a_clear_error(name):
    with pytest.raises(RuntimeError, match='No pretrained weights are published.*hf-hub:ORG/REPO'):
        timm.create_model(name, pretrained=True)


def test_the_error_s_advice_works(tmp_path):
    """The error suggests pretrained_cfg_overlay=dict(file=...): that loads a local safetensors file."""
    model = small_model()
    safetensors.torch.save_file(model.state_dict(), tmp_path / 'model.safetensors')
    loaded = timm.create_model(f'{HUB_FAMILY}_tiny', pretrained=True, **SPECS[HUB_FAMILY]['small'], num_classes=CLASSES,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / 'model.safetensors'),
                                                           num_classes=CLASSES))
    assert torch.equal(outputs(loaded), outputs(model))


# --- reading checkpoints ----------------------------------------------------------------------

def test_read_state_dict_from_train_py_checkpoint(tmp_path):
    model = small_model()
    plain = {f'module.{k}': v for k, v in model.state_dict().items()}  # as saved from DDP
    ema = {k: v + 1 for k, v in model.state_dict().items() if v.is_floating_point()}
    checkpoint = {'epoch': 3, 'arch': 'maxvit_reg_tiny', 'args': argparse.Namespace(lr=0.1, model='x'),
                  'state_dict': plain, 'state_dict_ema': ema, 'metric': 0.5}
    torch.save(checkpoint, tmp_path / 'last.pth.tar')
    loaded = read_state_dict(tmp_path / 'last.pth.tar')
    assert loaded.keys() == model.state_dict().keys()
    loaded_ema = read_state_dict(tmp_path / 'last.pth.tar', use_ema=True)
    assert all(torch.equal(loaded_ema[k], ema[k]) for k in ema)


def test_read_state_dict_refuses_what_it_cannot_read_safely(tmp_path):
    torch.save({'weight': torch.ones(2), 'hook': argparse.ArgumentParser}, tmp_path / 'code.pth')
    with pytest.raises(ValueError, match='weights_only=True'):
        read_state_dict(tmp_path / 'code.pth')
    torch.save({'weight': torch.ones(2)}, tmp_path / 'plain.pth')
    with pytest.raises(ValueError, match='no EMA weights'):
        read_state_dict(tmp_path / 'plain.pth', use_ema=True)
    torch.save([1, 2], tmp_path / 'list.pth')
    with pytest.raises(ValueError, match='expected a state dict'):
        read_state_dict(tmp_path / 'list.pth')
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        read_state_dict(tmp_path / 'missing.pth')


# --- export -----------------------------------------------------------------------------------

@pytest.mark.parametrize('family', FAMILIES)
def test_export_writes_a_hub_folder_that_loads_back(family, tmp_path):
    model = small_model(family)
    labels = [f'class_{i}' for i in range(CLASSES)]
    folder = export(model, tmp_path / 'out', family, label_names=labels, training_data='CIFAR-10, 90 epochs',
                    license='mit', repo_id='org/demo')
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert not [p for p in tmp_path.iterdir() if p.name != 'out'], 'the staging folder was left behind'

    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == f'{family}_tiny'
    assert config['num_classes'] == CLASSES and config['num_features'] == model.num_features
    assert config['global_pool'] == model.global_pool and config['label_names'] == labels
    assert 'num_classes' not in config['model_args']  # transformers' TimmWrapper passes it beside model_args
    weights = folder / 'model.safetensors'
    assert config['weights'] == {'file': 'model.safetensors', 'size': weights.stat().st_size,
                                 'sha256': hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert config['pretrained_cfg']['license'] == 'mit'
    assert config['pretrained_cfg']['input_size'] == [3, *SPECS[family]['small_size']]
    assert safetensors.torch.load_file(folder / 'model.safetensors').keys() == model.state_dict().keys()

    card = (folder / 'README.md').read_text()
    assert card.startswith('---\nlibrary_name: timm\nlicense: mit\n')
    for text in ('import timm_vitvariants', "create_model('hf-hub:org/demo', pretrained=True)", 'CIFAR-10, 90 epochs',
                 'GMACs', 'parameters: 0.'):
        assert text in card

    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert torch.equal(outputs(loaded, family), outputs(model, family))
    assert loaded.pretrained_cfg['label_names'] == labels


def test_export_never_overwrites_without_asking(tmp_path):
    folder = tmp_path / 'out'
    folder.mkdir()
    (folder / 'notes.txt').write_text('mine')
    with pytest.raises(ValueError, match='not empty.*--overwrite'):
        export(small_model(), folder)
    assert [p.name for p in folder.iterdir()] == ['notes.txt']
    export(small_model(), folder, overwrite=True)
    assert (folder / 'notes.txt').read_text() == 'mine'  # replaced our files only
    assert (folder / 'model.safetensors').is_file()


def test_export_rejects_wrong_label_count_and_non_timm_models(tmp_path):
    with pytest.raises(ValueError, match='3 label names for a model with 10 classes'):
        export(small_model(), tmp_path / 'a', label_names=['a', 'b', 'c'])
    with pytest.raises(TypeError, match='needs a timm model'):
        export_folder(torch.nn.Linear(2, 2), tmp_path / 'b')
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()


def test_export_cli_from_train_py_checkpoint_with_ema(tmp_path, capsys):
    model = small_model()
    ema = small_model()
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.01)
    torch.save({'epoch': 1, 'args': argparse.Namespace(model='maxvit_reg_tiny'), 'state_dict': model.state_dict(),
                'state_dict_ema': ema.state_dict()}, tmp_path / 'model_best.pth.tar')
    (tmp_path / 'args.json').write_text(json.dumps(SPECS[HUB_FAMILY]['small']))
    (tmp_path / 'labels.txt').write_text('\n'.join(f'l{i}' for i in range(CLASSES)))
    size = SPECS[HUB_FAMILY]['small_size']
    rc = cli('export', '--model', f'{HUB_FAMILY}_tiny', '--checkpoint', tmp_path / 'model_best.pth.tar', '--ema',
             '--model-args', tmp_path / 'args.json', '--arg', f'num_classes={CLASSES}', '--labels',
             tmp_path / 'labels.txt', '--input-size', *size, '--output', tmp_path / 'out')
    assert rc == 0, capsys.readouterr().err
    assert 'identical outputs' in capsys.readouterr().out
    loaded = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True)
    assert torch.equal(outputs(loaded), outputs(ema))
    assert not torch.equal(outputs(loaded), outputs(model))


def test_export_cli_errors_are_one_line(tmp_path, capsys):
    model = small_model()
    safetensors.torch.save_file(model.state_dict(), tmp_path / 'w.safetensors')
    cases = [
        (['--model', 'no_such_model', '--checkpoint', tmp_path / 'w.safetensors'], 'unknown model'),
        (['--model', f'{HUB_FAMILY}_tiny', '--checkpoint', tmp_path / 'nope.pth'], 'checkpoint not found'),
        (['--model', f'{HUB_FAMILY}_tiny', '--checkpoint', tmp_path / 'w.safetensors'], 'do not fit'),
        (['--model', f'{HUB_FAMILY}_tiny', '--checkpoint', tmp_path / 'w.safetensors', '--arg', 'oops'],
         'expects key=value'),
    ]
    for argv, message in cases:
        assert cli('export', *argv, '--output', tmp_path / 'out') == 2
        err = capsys.readouterr().err
        assert message in err and 'Traceback' not in err
    assert not (tmp_path / 'out').exists()


# --- convert ----------------------------------------------------------------------------------

def test_convert_cli_from_a_vit_pytorch_checkpoint(tmp_path, capsys):
    from vit_pytorch.max_vit_with_registers import MaxViT
    from parity import randomize_
    config = dict(num_classes=CLASSES, dim=32, depth=(1, 1), dim_head=16, window_size=4)
    torch.manual_seed(0)
    reference = randomize_(MaxViT(**config)).eval()
    torch.save(reference.state_dict(), tmp_path / 'vit.pt')
    (tmp_path / 'config.json').write_text(json.dumps({k: v for k, v in config.items() if k != 'window_size'}))
    rc = cli('convert', '--vit-pytorch-class', 'vit_pytorch.max_vit_with_registers.MaxViT', '--checkpoint',
             tmp_path / 'vit.pt', '--config', tmp_path / 'config.json', '--arg', 'window_size=4',
             '--input-size', 32, 32, '--output', tmp_path / 'out')
    assert rc == 0, capsys.readouterr().err
    loaded = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True).eval()
    x = sample_input([2, 3, 32, 32])
    with torch.no_grad():
        expected, actual = reference(x), loaded(x)
    assert ((actual - expected).abs().max() / expected.abs().max()).item() < 1e-4


def test_convert_cli_errors(tmp_path, capsys):
    from vit_pytorch.max_vit_with_registers import MaxViT
    torch.save(MaxViT(num_classes=3, dim=32, depth=(1, 1), dim_head=16, window_size=4).state_dict(), tmp_path / 'v.pt')
    base = ['convert', '--checkpoint', tmp_path / 'v.pt', '--output', tmp_path / 'out']
    assert cli(*base, '--vit-pytorch-class', 'vit_pytorch.vit.ViT') == 2
    assert 'invalid choice' in capsys.readouterr().err
    klass = ['--vit-pytorch-class', 'vit_pytorch.max_vit_with_registers.MaxViT']
    assert cli(*base, *klass, '--arg', 'num_classes=3', '--arg', 'dim=32', '--arg', 'depth=[1,1]',
               '--arg', 'dim_head=16', '--arg', 'window_size=4', '--arg', 'colour=1') == 2
    assert "does not take these arguments" in capsys.readouterr().err
    assert cli(*base, *klass, '--arg', 'num_classes=5', '--arg', 'dim=32', '--arg', 'depth=[1,1]',
               '--arg', 'dim_head=16', '--arg', 'window_size=4') == 2
    assert 'do not fit' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


# --- push, offline parts ----------------------------------------------------------------------

def test_push_dry_run_and_refusals(tmp_path, capsys):
    folder = export(small_model(), tmp_path / 'out')
    (folder / 'notes.txt').write_text('mine')
    assert cli('push', folder, '--repo', 'org/demo', '--dry-run') == 0
    printed = capsys.readouterr().out
    assert 'would upload to org/demo' in printed and 'model.safetensors' in printed and 'MB' in printed
    assert 'not uploaded' in printed and 'notes.txt' in printed.split('not uploaded')[1]
    assert 'check: maxvit_reg_tiny loads, sha256' in printed and 'finite outputs' in printed
    assert [p.name for p in upload_plan(folder, include=['*.txt'])[0]] == [
        'README.md', 'config.json', 'model.safetensors', 'notes.txt']
    assert cli('push', folder, '--repo', 'no-org', '--dry-run') == 2
    assert 'org/name' in capsys.readouterr().err
    torch.save({}, folder / 'pytorch_model.bin')
    with pytest.raises(ValueError, match='pickle files'):
        upload_plan(folder)
    assert cli('push', tmp_path / 'missing', '--repo', 'org/demo') == 2
    assert 'not a folder' in capsys.readouterr().err
    (folder / 'pytorch_model.bin').unlink()
    (folder / 'config.json').unlink()
    with pytest.raises(ValueError, match='lacks config.json'):
        push_folder(folder, 'org/demo', dry_run=True)


def broken_folders(folder: Path) -> dict:
    """Copies of an exported folder, each broken in one way, with the reason push must give."""
    config = json.loads((folder / 'config.json').read_text())
    weights = (folder / 'model.safetensors').read_bytes()
    nan_weights = {k: torch.full_like(v, float('nan')) if v.is_floating_point() else v
                   for k, v in safetensors.torch.load_file(folder / 'model.safetensors').items()}
    unrecorded = {k: v for k, v in config.items() if k != 'weights'}
    cases = {
        'garbage_weights': ({}, b'not a safetensors file at all', r'model.safetensors has 29 bytes, config.json records'),
        'unrecorded_garbage': (unrecorded, b'\x10' + weights[1:], r'model.safetensors is not a readable safetensors'),
        'not_json': ('{"architecture": "maxvit_reg_tiny",', None, r'config.json is not valid JSON'),
        'no_architecture': ({'num_classes': CLASSES}, None, r'config.json names no architecture'),
        'unknown_architecture': (dict(config, architecture='no_such_net'), None, r"architecture 'no_such_net'"),
        'classes_disagree': (dict(config, model_args=dict(config['model_args'], num_classes=3)), None,
                             r'config.json states different num_classes: top level 10, model_args 3'),
        'nan_outputs': (dict(unrecorded), 'nan', r'non-finite outputs'),
    }
    made = {}
    for name, (new_config, new_weights, reason) in cases.items():
        target = folder.parent / name
        shutil.copytree(folder, target)
        if isinstance(new_config, str):
            (target / 'config.json').write_text(new_config)
        elif new_config:
            (target / 'config.json').write_text(json.dumps(new_config))
        if new_weights == 'nan':
            safetensors.torch.save_file(nan_weights, target / 'model.safetensors')
        elif new_weights is not None:
            (target / 'model.safetensors').write_bytes(new_weights)
        made[name] = (target, reason)
    return made


def test_push_refuses_folders_that_do_not_load(tmp_path, capsys):
    folder = export(small_model(), tmp_path / 'out')
    for name, (broken, reason) in broken_folders(folder).items():
        with pytest.raises((ValueError, RuntimeError), match=reason):
            check_folder(broken)
        assert cli('push', broken, '--repo', 'org/demo', '--dry-run') == 2, name
        err = capsys.readouterr().err
        assert 'error:' in err and 'Traceback' not in err, name


# --- the whole loop against the loopback Hub --------------------------------------------------

class HubSession:
    """A loopback Hub plus the environment a fresh process needs to use it."""

    def __init__(self, hub: LoopbackHub, home: Path, work: Path):
        self.hub, self.work = hub, work
        self.env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_TOKEN='hf_loopback',
                        HF_HUB_DISABLE_TELEMETRY='1', HF_HUB_DISABLE_XET='1', HF_HUB_ETAG_TIMEOUT='5',
                        HF_HUB_DOWNLOAD_TIMEOUT='5', TIMM_VITVARIANTS_AUTOLOAD='0',
                        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get('PYTHONPATH', '')]))
        self.runs = 0

    def run(self, *argv: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *argv], env=dict(self.env, **env), cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)

    def load(self, calls: list, threads: int = 1, **env: str) -> tuple:
        """Runs ``calls`` in a fresh process (``threads`` at a time): (outputs by label, errors by label)."""
        self.runs += 1
        calls_file, results = self.work / f'calls{self.runs}.json', self.work / f'results{self.runs}'
        calls_file.write_text(json.dumps(calls))
        done = self.run(str(TESTS / 'hub_client.py'), str(calls_file), str(results), str(threads), **env)
        assert done.returncode == 0, done.stderr
        found = {p.stem: torch.load(p) for p in results.glob('*.pt')}
        return found, json.loads((results / 'errors.json').read_text())

    def downloads(self, filename: str) -> int:
        return sum(1 for method, path in self.hub.requests if method == 'GET' and path.endswith('/' + filename))


@pytest.fixture
def hub_session(tmp_path):
    with LoopbackHub(tmp_path / 'server', lifetime_s=240) as hub:
        yield HubSession(hub, tmp_path / 'hf_home', tmp_path)


def cached_blobs(home: Path) -> list:
    return [p for p in (home / 'hub').rglob('*') if p.is_file() and 'blobs' in p.parts]


@pytest.mark.slow
def test_export_push_and_load_from_the_hub(hub_session, tmp_path):
    model = small_model()
    folder = export(model, tmp_path / 'out', repo_id='org/tiny')
    (folder / 'notes.txt').write_text('a stray file')
    pushed = hub_session.run('-m', 'timm_vitvariants', 'push', str(folder), '--repo', 'org/tiny')
    assert pushed.returncode == 0, pushed.stderr
    assert sorted(p.name for p in (tmp_path / 'server' / 'org' / 'tiny').iterdir()) == [
        'README.md', 'config.json', 'model.safetensors']  # the stray file is listed, not uploaded
    assert 'notes.txt' in pushed.stdout.split('not uploaded')[1]
    assert hub_session.hub.authorizations['/api/models/org/tiny/commit/main'] == 'Bearer hf_loopback'  # HF_TOKEN
    # an older export repeats num_classes in model_args: the repo gets a config.json transformers reads
    edit_config(folder, lambda c: c['model_args'].update(num_classes=CLASSES))
    pushed_again = hub_session.run('-m', 'timm_vitvariants', 'push', str(folder), '--repo', 'org/tiny',
                                   '--include', '*.txt')
    assert pushed_again.returncode == 0, pushed_again.stderr  # an existing repo is reused
    assert (tmp_path / 'server' / 'org' / 'tiny' / 'notes.txt').read_text() == 'a stray file'
    assert 'without model_args.num_classes' in pushed_again.stdout
    served_config = json.loads((tmp_path / 'server' / 'org' / 'tiny' / 'config.json').read_text())
    assert 'num_classes' not in served_config['model_args'] and served_config['num_classes'] == CLASSES
    (tmp_path / 'server' / 'org' / 'tiny' / 'notes.txt').unlink()

    # repos for the failure cases, served by the same Hub
    pickle_only = tmp_path / 'server' / 'org' / 'pickled'
    pickle_only.mkdir(parents=True)
    (pickle_only / 'config.json').write_text((folder / 'config.json').read_text())
    torch.save(model.state_dict(), pickle_only / 'pytorch_model.bin')
    no_config = tmp_path / 'server' / 'org' / 'noconfig'
    no_config.mkdir()
    (no_config / 'model.safetensors').write_bytes((folder / 'model.safetensors').read_bytes())

    small = dict(SPECS[HUB_FAMILY]['small'])
    shape = input_shape()
    found, errors = hub_session.load([
        dict(label='first', model='hf-hub:org/tiny', input_shape=shape),
        dict(label='second', model='hf-hub:org/tiny', input_shape=shape),
        dict(label='by_name', model=f'{HUB_FAMILY}_tiny', input_shape=shape,
             # the overlay states the classes the weights have, or timm resets the classifier
             kwargs=dict(small, num_classes=CLASSES,
                         pretrained_cfg_overlay=dict(hf_hub_id='org/tiny', num_classes=CLASSES))),
        dict(label='by_tag', model=f'{HUB_FAMILY}_tiny.loopback', input_shape=shape,
             kwargs=dict(small, num_classes=CLASSES),
             publish={f'{HUB_FAMILY}_tiny.loopback': dict(hf_hub_id='org/tiny', num_classes=CLASSES)}),
        dict(label='new_head', model='hf-hub:org/tiny', input_shape=shape, kwargs=dict(num_classes=3)),
        dict(label='features', model='hf-hub:org/tiny', input_shape=shape, kwargs=dict(num_classes=0)),
        dict(label='gray', model='hf-hub:org/tiny', input_shape=[2, 1, *shape[2:]], kwargs=dict(in_chans=1)),
        dict(label='backbone', model='hf-hub:org/tiny', input_shape=shape, kwargs=dict(features_only=True, out_indices=2)),
        # the overlay leaves the default 1000 classes: refused, not a silently random head
        dict(label='by_name_classes', model=f'{HUB_FAMILY}_tiny', input_shape=shape,
             kwargs=dict(small, num_classes=CLASSES, pretrained_cfg_overlay=dict(hf_hub_id='org/tiny'))),
        dict(label='missing_repo', model='hf-hub:org/nothing', input_shape=shape),
        dict(label='missing_file', model='hf-hub:org/noconfig', input_shape=shape),
        dict(label='pickle_only', model='hf-hub:org/pickled', input_shape=shape),
    ])
    expected = outputs(model)
    assert {'first', 'second', 'by_name', 'by_tag', 'new_head', 'features', 'gray', 'backbone'} <= found.keys(), errors
    for label in ('first', 'second', 'by_name', 'by_tag'):
        assert torch.equal(found[label], expected), label
    # loaded from a pinned commit, recorded as asked for
    for label in ('first', 'by_tag', 'backbone'):
        assert (tmp_path / f'results{hub_session.runs}' / f'{label}.hf_hub_id').read_text() == 'org/tiny', label
    assert "states num_classes 1000, but the weights' classifier 'head.fc' has 10" in errors['by_name_classes']['message']
    assert found['new_head'].shape == (2, 3)  # classifier re-initialised, as timm does
    # in_chans=1: timm sums the first conv over the colour channels, so a gray image gives what the
    # source model gives for the same image repeated in R, G and B
    with torch.no_grad():
        gray_as_rgb = model(sample_input([2, 1, *shape[2:]]).expand(-1, 3, -1, -1))
    assert torch.allclose(found['gray'], gray_as_rgb, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(found['features'], model.forward_head(model.forward_features(sample_input(shape)),
                                                                 pre_logits=True))
    # nine loads of org/tiny, one download: the rest came from the cache
    assert hub_session.downloads('model.safetensors') == 1

    assert errors['missing_repo']['type'] == 'HubDownloadError'
    assert 'config.json of org/nothing (revision main)' in errors['missing_repo']['message']
    assert 'RepositoryNotFoundError' in errors['missing_repo']['message']
    assert errors['missing_file']['type'] == 'HubDownloadError'
    assert 'config.json of org/noconfig (revision main)' in errors['missing_file']['message']
    assert errors['pickle_only']['type'] == 'RuntimeError'
    assert "'org/pickled' has no model.safetensors" in errors['pickle_only']['message']
    assert hub_session.downloads('pytorch_model.bin') == 0, 'the pickle was downloaded'
    assert not any(p.name.endswith('.bin') for p in (tmp_path / 'hf_home').rglob('*'))

    # offline: no request reaches the server, the cache answers
    served = len(hub_session.hub.requests)
    found, errors = hub_session.load([dict(label='offline', model='hf-hub:org/tiny', input_shape=shape)],
                                     HF_HUB_OFFLINE='1')
    assert not errors and torch.equal(found['offline'], expected)
    assert len(hub_session.hub.requests) == served


def edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / 'config.json').read_text())
    edit(config)
    (folder / 'config.json').write_text(json.dumps(config))


# repo -> (fault injected in model.safetensors, or None; how config.json is edited, or None)
TRANSFER_FAULTS = {
    'data': ('corrupt-data', None),
    'header': ('corrupt-header', None),
    'short': ('truncate', None),
    'cut': ('cut', None),
    'stall': ('stall', None),
    'e500': ('error500', None),
    # an export from before the sha256 was recorded: the ETag (the file's sha256 on the Hub) still catches it
    'legacy': ('corrupt-data', lambda c: c.pop('weights')),
}
CONFIG_FAULTS = {
    'args_classes': (lambda c: c['model_args'].update(num_classes=3), 'num_classes: top level 10, model_args 3'),
    'cfg_classes': (lambda c: c['pretrained_cfg'].update(num_classes=3), 'num_classes: top level 10, pretrained_cfg 3'),
    'head_classes': (lambda c: (c.update(num_classes=3), c['pretrained_cfg'].update(num_classes=3)),
                     "states num_classes 3, but the weights' classifier 'head.fc' has 10 classes"),
    'channels': (lambda c: c['model_args'].update(in_chans=1), 'in_chans: model_args 1, pretrained_cfg.input_size[0] 3'),
    'not_json': (None, 'config.json of org/not_json (revision main) on http://127.0.0.1'),
    'no_arch': (lambda c: c.pop('architecture'), 'names no architecture'),
    'other_file': (lambda c: c['pretrained_cfg'].update(hf_hub_filename='ema.safetensors'),
                   "'org/other_file' has no ema.safetensors"),
}


def blobs_are_whole(home: Path) -> bool:
    """Every blob in huggingface_hub's cache is named by the sha256 of its contents (the loopback Hub's ETag)."""
    blobs = cached_blobs(home)
    return bool(blobs) and all(hashlib.sha256(p.read_bytes()).hexdigest() == p.name for p in blobs)


@pytest.mark.slow
def test_faults_are_refused_cleaned_from_the_cache_and_recovered(hub_session, tmp_path):
    """Every fault ends in an error naming repo and file; nothing damaged stays cached; after the fix
    the same loads give the right weights; offline, a damaged cached file is refused too."""
    model = small_model()
    exported = export(model, tmp_path / 'exported')
    weights_size = (exported / 'model.safetensors').stat().st_size
    server, home, hub = tmp_path / 'server' / 'org', tmp_path / 'hf_home', hub_session.hub
    for repo, (fault, edit) in TRANSFER_FAULTS.items():
        shutil.copytree(exported, server / repo)
        hub.faults[f'org/{repo}/model.safetensors'] = fault
        if edit:
            edit_config(server / repo, edit)
    for repo, (edit, _) in CONFIG_FAULTS.items():
        shutil.copytree(exported, server / repo)
        if edit:
            edit_config(server / repo, edit)
    (server / 'not_json' / 'config.json').write_text('{"architecture": "maxvit_reg_tiny", "num_classes": 10')
    hub.stall_s = 3.0  # past HF_HUB_DOWNLOAD_TIMEOUT below

    def load_all(repos, **env):
        calls = [dict(label=repo, model=f'hf-hub:org/{repo}', input_shape=input_shape()) for repo in repos]
        return hub_session.load(calls, threads=len(calls), HF_HUB_DOWNLOAD_TIMEOUT='1', **env)

    found, errors = load_all([*TRANSFER_FAULTS, *CONFIG_FAULTS])
    assert not found, f'loaded despite a fault: {sorted(found)}'
    for repo in TRANSFER_FAULTS:
        assert f'model.safetensors of org/{repo} (revision main) on {hub.url}' in errors[repo]['message'], repo
    for repo in ('data', 'header', 'legacy'):
        assert errors[repo]['type'] == 'ValueError' and 'is damaged: sha256' in errors[repo]['message'], repo
        assert 'removed from the cache' in errors[repo]['message']
    assert 'from the Hub\'s ETag' in errors['legacy']['message']
    assert f'config.json records {weights_size}' in errors['short']['message']
    assert f'expected {weights_size}' in errors['cut']['message'] and 'RemoteProtocolError' in errors['cut']['message']
    assert 'Timeout' in errors['stall']['message']
    assert '500' in errors['e500']['message']
    for repo in ('cut', 'stall', 'e500'):
        assert errors[repo]['type'] == 'HubDownloadError', repo
    for repo, (_, reason) in CONFIG_FAULTS.items():
        assert reason in errors[repo]['message'], (repo, errors[repo])
        assert f'org/{repo}' in errors[repo]['message'] and ('config.json' in errors[repo]['message'] or
                                                             repo in ('head_classes', 'other_file')), repo
    assert "model.safetensors of org/head_classes" in errors['head_classes']['message']
    assert blobs_are_whole(home)
    snapshots = {p.parts[-4] for p in (home / 'hub').glob('models--org--*/snapshots/*/model.safetensors')}
    assert snapshots == {'models--org--head_classes'}, 'a damaged file sits in a snapshot'  # sound weights stay

    hub.faults.clear()  # the Hub is fixed: the same loads now download again and give the source's outputs
    found, errors = load_all(TRANSFER_FAULTS)
    assert not errors, errors
    expected = outputs(model)
    for repo in TRANSFER_FAULTS:
        assert torch.equal(found[repo], expected), repo

    # offline, a cached file damaged on disk is refused and removed, nothing loaded
    snapshot = next((home / 'hub').glob('models--org--data/snapshots/*/model.safetensors'))
    blob = snapshot.resolve()
    blob.write_bytes(blob.read_bytes()[:-1] + b'\0')
    found, errors = hub_session.load([dict(label='data', model='hf-hub:org/data', input_shape=input_shape())],
                                     HF_HUB_OFFLINE='1')
    assert not found and errors['data']['type'] == 'ValueError', errors
    assert 'model.safetensors of org/data (revision main)' in errors['data']['message']
    assert 'is damaged' in errors['data']['message'] and not blob.exists() and not snapshot.exists()


@pytest.mark.parametrize('command', ['export', 'convert', 'push', 'list'])
def test_every_command_has_help(command, capsys):
    assert cli(command, '--help') == 0
    assert f'usage: python -m timm_vitvariants {command}' in capsys.readouterr().out


def test_push_to_an_unreachable_hub_is_a_one_line_error(tmp_path):
    folder = export(small_model(), tmp_path / 'out')
    with LoopbackHub(tmp_path / 'server') as hub:
        session = HubSession(hub, tmp_path / 'hf_home', tmp_path)
    # the server has stopped: its port refuses connections
    pushed = session.run('-m', 'timm_vitvariants', 'push', str(folder), '--repo', 'org/tiny')
    assert pushed.returncode == 2
    assert f'to org/tiny (revision main) on {hub.url} failed' in pushed.stderr
    assert 'Traceback' not in pushed.stderr
