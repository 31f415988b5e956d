"""RegionViT as IBM's official code (IBM/RegionViT): parity from a fixture, sizes, checkpoints, the converter.

tests/fixtures/regionvit_ibm_{3conv,1conv}.safetensors hold numbers only, made by running IBM's
``regionvit/regionvit.py`` (commit 77000c2, its own timm-0.4 imports served by today's timm) on random
weights: its state dict (``state_dict.*``, with IBM's keys), an input, the logits and the local-token map
of every stage (IBM's ``forward_features(x, detection=True)``); the 1-conv one has IBM's PEG (``peg=True``).
The configuration is in the metadata:
``ibm_args`` (IBM's constructor) and ``timm_args`` (ours). Weights and input are fp16 values, stored as
fp16 to keep the files small; IBM's code ran them in fp32.
"""
import argparse
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm_vitvariants.info import count_gmacs, published_weights
from timm_vitvariants.regionvit import IBM_RELEASE, _remap_ibm_state_dict, checkpoint_filter_fn

from parity import max_rel_error

FIXTURES = Path(__file__).parent / 'fixtures'
KINDS = ('3conv', '1conv')


def fixture(kind: str):
    """(IBM state dict, our create_model arguments, tensors) of one fixture."""
    path = FIXTURES / f'regionvit_ibm_{kind}.safetensors'
    with safe_open(str(path), 'pt') as f:
        timm_args = json.loads(f.metadata()['timm_args'])
    tensors = {k: v.float() for k, v in load_file(str(path)).items()}
    state_dict = {k[len('state_dict.'):]: v for k, v in tensors.items() if k.startswith('state_dict.')}
    return state_dict, timm_args, tensors


def ibm_training_checkpoint(state_dict: dict) -> dict:
    """What IBM/RegionViT's main.py saves (its release files are such checkpoints, or their 'model' entry)."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    return {'model': state_dict, 'optimizer': optimizer.state_dict(),
            'lr_scheduler': {'t_initial': 300, 'base_values': [1e-3], 'warmup_steps': [1e-4], 'noise_range_t': None},
            'epoch': 299, 'args': argparse.Namespace(model='regionvit_tiny_224', lr=1e-3, input_size=224),
            'scaler': {'scale': 65536.0, '_growth_tracker': 10}, 'max_accuracy': 80.4}


@pytest.mark.parametrize('kind', KINDS)
def test_outputs_equal_ibm_official_code(kind):
    state_dict, timm_args, expected = fixture(kind)
    model = timm.create_model('regionvit_ibm_tiny', **timm_args).eval()
    model.load_state_dict(checkpoint_filter_fn(state_dict, model))
    x = expected['input']
    assert x.shape[-1] != x.shape[-2]
    with torch.no_grad():
        logits = model(x)
        local_maps = model.forward_intermediates(x, intermediates_only=True)
    assert max_rel_error(logits, expected['logits']) < 1e-5
    for i, local_map in enumerate(local_maps):
        assert max_rel_error(local_map, expected[f'local.{i}']) < 1e-5, f'stage {i}'


def test_remap_leaves_other_state_dicts_alone():
    ours = timm.create_model('regionvit_ibm_tiny', device='meta').state_dict()
    assert _remap_ibm_state_dict(ours) is ours


def test_rel_pos_tables_are_ours_permuted():
    """IBM indexes its table by (key - query + window // 2) mod span, ours by query - key + window - 1:
    with a table that encodes each offset, ours must read the offset back as query - key."""
    window = 3
    span = 2 * window - 1
    dy, dx = torch.meshgrid(torch.arange(span), torch.arange(span), indexing='ij')
    # IBM's slot (r, c) holds offset ((r - window // 2 + window - 1) mod span) - (window - 1) as key - query
    key_minus_query_y = (dy - window // 2 + window - 1) % span - (window - 1)
    key_minus_query_x = (dx - window // 2 + window - 1) % span - (window - 1)
    table = torch.stack([key_minus_query_y, key_minus_query_x]).reshape(2, -1).float()  # (heads=2, span ** 2)
    remapped = _remap_ibm_state_dict({'cls_token.proj.weight': torch.zeros(1), 'layers.0.block.1.attn.rel_pos': table})
    ours = remapped['stages.0.blocks.0.rel_pos.relative_position_bias_table']  # (span ** 2, heads)
    offsets = torch.stack(torch.meshgrid(torch.arange(span), torch.arange(span), indexing='ij')).reshape(2, -1)
    query_minus_key = offsets.t() - (window - 1)
    assert torch.equal(ours, -query_minus_key.float())


OFFICIAL = {  # measured on IBM's code (torch.utils.flop_counter, 224x224): params, GMACs
    'regionvit_ibm_tiny': (13_842_676, 2.4149),
    'regionvit_ibm_small': (30_586_618, 5.3390),
    'regionvit_ibm_medium': (41_215_906, 7.4098),
    'regionvit_ibm_base': (72_747_232, 13.0465),
    'regionvit_ibm_small_w14': (31_354_714, 7.8873),
    'regionvit_ibm_base_w14': (73_825_120, 17.4326),
    'regionvit_ibm_small_w14_peg': (31_367_674, 7.8924),
    'regionvit_ibm_base_w14_peg': (73_842_400, 17.4394),
}


@pytest.mark.parametrize('name', OFFICIAL)
def test_variants_have_the_official_size_and_cost(name):
    model = timm.create_model(name, device='meta')
    params, gmacs = OFFICIAL[name]
    assert sum(p.numel() for p in model.parameters()) == params
    assert count_gmacs(model, (3, 224, 224)) == pytest.approx(gmacs, abs=1e-4)


@pytest.mark.parametrize('name, file', [
    ('regionvit_ibm_tiny', 'RegionViT-Ti.pth'), ('regionvit_ibm_small', 'RegionViT-S.pth'),
    ('regionvit_ibm_medium', 'RegionViT-M.pth'), ('regionvit_ibm_base', 'RegionViT-B.pth'),
])
def test_in1k_tags_name_ibm_release_and_preprocessing(name, file):
    cfg = timm.create_model(name, device='meta').pretrained_cfg
    assert cfg['tag'] == 'in1k' and cfg['url'] == IBM_RELEASE + file and cfg['custom_load']
    assert cfg['crop_pct'] == 0.875 and cfg['interpolation'] == 'bicubic' and cfg['input_size'] == (3, 224, 224)
    assert tuple(cfg['mean']) == IMAGENET_DEFAULT_MEAN and tuple(cfg['std']) == IMAGENET_DEFAULT_STD
    assert cfg['license'] == 'apache-2.0' and 'not measured here' in cfg['notes'][0]
    assert published_weights(name) == (f'{name}.in1k',)  # the table and the model cards list it


@pytest.mark.parametrize('source', ['url', 'file'])
def test_pretrained_loads_ibm_training_checkpoint(source, tmp_path, monkeypatch):
    """A file like IBM's release files through the .in1k tags' own loader (a file:// url in place of
    GitHub's: the same download and RegionViT.load_pretrained, which takes 'model', never an EMA copy), and as
    a local file through timm's loader: both weights_only with argparse.Namespace allowed."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))  # the download cache
    state_dict, timm_args, expected = fixture('3conv')
    checkpoint = ibm_training_checkpoint(state_dict)
    if source == 'url':  # IBM evaluates 'model'; timm's loader of local files prefers an EMA copy
        checkpoint['model_ema'] = {k: v + 1 for k, v in state_dict.items()}
    path = tmp_path / 'RegionViT-Ti.pth'
    torch.save(checkpoint, path)
    location = dict(url=path.as_uri(), custom_load=True) if source == 'url' else dict(file=str(path))
    overlay = dict(location, num_classes=timm_args['num_classes'])
    model = timm.create_model('regionvit_ibm_tiny', pretrained=True, pretrained_cfg_overlay=overlay, **timm_args)
    with torch.no_grad():
        assert max_rel_error(model.eval()(expected['input']), expected['logits']) < 1e-5
    # another head or input channels: a fresh classifier, the first convs summed over colours
    args = dict(timm_args, num_classes=3, in_chans=1)
    adapted = timm.create_model('regionvit_ibm_tiny', pretrained=True, pretrained_cfg_overlay=overlay, **args).eval()
    assert torch.equal(adapted.stages[0].blocks[0].attn.qkv.weight, model.stages[0].blocks[0].attn.qkv.weight)
    gray = expected['input'][:, :1]
    with torch.no_grad():
        assert adapted(gray).shape == (2, 3)
        assert max_rel_error(adapted.forward_features(gray), model.forward_features(gray.expand(-1, 3, -1, -1))) < 1e-5


@pytest.mark.parametrize('source', ['url', 'file'])
def test_pretrained_refuses_pickled_code(source, tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    state_dict, timm_args, _ = fixture('1conv')
    checkpoint = ibm_training_checkpoint(state_dict)
    checkpoint['args'].output_dir = Path('/out')  # a class the file does not need: refused, never run
    path = tmp_path / 'ckpt.pth'
    torch.save(checkpoint, path)
    location = dict(url=path.as_uri(), custom_load=True) if source == 'url' else dict(file=str(path))
    with pytest.raises((RuntimeError, pickle.UnpicklingError), match='(?i)weights.only.*PosixPath'):
        timm.create_model('regionvit_ibm_tiny', pretrained=True, pretrained_cfg_overlay=location, **timm_args)


def test_convert_cli_writes_a_hub_folder(tmp_path):
    state_dict, timm_args, expected = fixture('1conv')
    torch.save(ibm_training_checkpoint(state_dict), tmp_path / 'RegionViT-Ti.pth')
    (tmp_path / 'args.json').write_text(json.dumps(timm_args))
    from timm_vitvariants.__main__ import main
    main(['convert', '--from', 'ibm', '--model', 'regionvit_ibm_tiny', '-c', str(tmp_path / 'RegionViT-Ti.pth'),
          '--config', str(tmp_path / 'args.json'), '--input-size', '16', '32', '-o', str(tmp_path / 'out')])
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    card = (tmp_path / 'out' / 'README.md').read_text()
    assert 'license: apache-2.0' in card and '80.4% as reported by IBM, not measured here' in card
    loaded = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True).eval()
    with torch.no_grad():
        assert max_rel_error(loaded(expected['input']), expected['logits']) < 1e-5


def test_convert_cli_errors(tmp_path, capsys):
    from timm_vitvariants.__main__ import main
    torch.save({'weight': torch.ones(1)}, tmp_path / 'other.pth')
    for argv, message in [
        (['--model', 'regionvit_ibm_tiny', '-c', str(tmp_path / 'missing.pth')], 'not found'),
        (['-c', str(tmp_path / 'other.pth')], 'needs --model'),
        (['--model', 'regionvit_tiny', '-c', str(tmp_path / 'other.pth')], 'regionvit_ibm_'),
        (['--model', 'regionvit_ibm_tiny', '-c', str(tmp_path / 'other.pth')], 'not an IBM RegionViT checkpoint'),
    ]:
        with pytest.raises(SystemExit) as e:
            main(['convert', '--from', 'ibm', *argv, '-o', str(tmp_path / 'out')])
        assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_converted_folder_loads_from_the_hub(tmp_path):
    """IBM's file -> convert -> the folder served by the loopback Hub -> timm.create_model('hf-hub:...')."""
    from hub_server import LoopbackHub
    from test_hub import HubSession
    state_dict, timm_args, expected = fixture('1conv')
    torch.save(ibm_training_checkpoint(state_dict), tmp_path / 'RegionViT-Ti.pth')
    (tmp_path / 'args.json').write_text(json.dumps(timm_args))
    from timm_vitvariants.__main__ import main
    main(['convert', '--from', 'ibm', '--model', 'regionvit_ibm_tiny', '-c', str(tmp_path / 'RegionViT-Ti.pth'),
          '--config', str(tmp_path / 'args.json'), '--input-size', '16', '32',
          '-o', str(tmp_path / 'server' / 'org' / 'regionvit_ibm_tiny.in1k')])  # published in place
    input_shape = list(expected['input'].shape)
    with LoopbackHub(tmp_path / 'server', lifetime_s=120) as hub:
        session = HubSession(hub, tmp_path / 'hf_home', tmp_path)
        found, errors = session.load([dict(label='hub', model='hf-hub:org/regionvit_ibm_tiny.in1k',
                                           input_shape=input_shape)])
    assert not errors, errors
    from hub_client import sample_input
    model = timm.create_model(f'local-dir:{tmp_path / "server" / "org" / "regionvit_ibm_tiny.in1k"}',
                              pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(found['hub'], model(sample_input(input_shape)))
        assert max_rel_error(model(expected['input']), expected['logits']) < 1e-5


@pytest.mark.parametrize('kwargs, match', [
    (dict(downsample='dwconv'), "downsample must be one of \\('conv', 'norm_act_dwconv'\\)"),
    (dict(downsample='norm_act_dwconv', embed_dim=(64, 96, 128, 256)), 'multiple of the previous'),
])
def test_bad_design_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('regionvit_tiny', **kwargs)


def test_ibm_options_leave_the_vit_pytorch_layout_alone():
    keys = set(timm.create_model('regionvit_tiny', device='meta').state_dict())
    official = set(timm.create_model('regionvit_ibm_tiny', device='meta').state_dict())
    assert 'stages.0.rel_pos.relative_position_bias_table' in keys and not any('local_norm' in k for k in keys)
    assert 'stages.0.blocks.1.rel_pos.relative_position_bias_table' in official
    assert 'stages.0.blocks.1.attn.local_norm.weight' in official and 'norm.weight' in official


def test_convert_takes_a_bare_ibm_state_dict(tmp_path):
    """The release file may hold only the weights (IBM's 'model' entry): the same conversion."""
    from timm_vitvariants.hub import convert_ibm_checkpoint
    state_dict, timm_args, expected = fixture('3conv')
    torch.save(state_dict, tmp_path / 'weights.pth')
    model = convert_ibm_checkpoint('regionvit_ibm_tiny', tmp_path / 'weights.pth', timm_args)
    with torch.no_grad():
        assert max_rel_error(model(expected['input']), expected['logits']) < 1e-5


def test_ibm_weights_into_another_window():
    """IBM's checkpoint remapped first, then resampled to the model's window (tables and region kernel)."""
    state_dict, timm_args, expected = fixture('3conv')
    model = timm.create_model('regionvit_ibm_tiny', **dict(timm_args, window_size=5)).eval()
    model.load_state_dict(checkpoint_filter_fn(state_dict, model))
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 40, 80))).all()
