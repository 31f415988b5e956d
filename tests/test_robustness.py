"""Robustness over every registered variant: bad input, mixed precision, batch consistency,
construction, checkpoints and supported sizes. Full variants run on the meta device where only
shapes matter; numerics run on each family's small configuration (tests/family_specs.py).

The numerics tests run on the CPU; ``TIMM_VITVARIANTS_TEST_DEVICE=cuda`` runs them on a GPU."""
import ast
import copy
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import timm
import timm_vitvariants
from timm_vitvariants.info import list_variants

from family_specs import SPECS
from parity import max_rel_error

VARIANTS = list_variants()
FAMILIES = list(timm_vitvariants.MODEL_MODULES)
DEVICE = torch.device(os.environ.get('TIMM_VITVARIANTS_TEST_DEVICE', 'cpu'))


def family_of(name: str) -> str:
    return timm.models._registry._model_to_module[name]


def small_model(family: str, **kwargs) -> torch.nn.Module:
    spec = SPECS[family]
    torch.manual_seed(0)
    return timm.create_model(f'{family}_tiny', **dict(spec['small'], **kwargs)).to(DEVICE)


def small_input(family: str, batch: int = 2, scale: float = 1.) -> torch.Tensor:
    torch.manual_seed(1)
    return scale * torch.randn(batch, 3, *SPECS[family]['small_size']).to(DEVICE)


def test_every_family_has_a_spec():
    assert set(FAMILIES) <= set(SPECS), f'families without a test spec: {set(FAMILIES) - set(SPECS)}'


# --- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize('name', VARIANTS)
def test_bad_input(name):
    spec = SPECS[family_of(name)]
    model = timm.create_model(name, device='meta').eval()
    c, h, w = model.pretrained_cfg['input_size']
    meta = dict(device='meta')
    cases = [
        (torch.empty(c, h, w, **meta), ValueError, r'4-D image batch \(B, 3, H, W\)'),
        (torch.empty(1, 1, c, h, w, **meta), ValueError, '4-D image batch'),
        (torch.empty(1, c + 2, h, w, **meta), ValueError, 'built for 3 input channels, got 5'),
        (torch.empty(1, c, h, w, dtype=torch.int64, **meta), TypeError, 'floating point'),
        (torch.empty(1, c, h, w, dtype=torch.uint8, **meta), TypeError, 'floating point'),
        (torch.empty(1, c, h, w, dtype=torch.bool, **meta), TypeError, 'floating point'),
        (torch.empty(0, c, h, w, **meta), ValueError, 'empty batch'),
        (torch.empty(1, c, h, w, dtype=torch.complex64, **meta), TypeError, 'floating point.*complex64'),
        (torch.empty(1, c, h, 0, **meta), ValueError, rf'empty image \({h}x0\)'),
        (torch.empty(1, c, 0, w, **meta), ValueError, rf'empty image \(0x{w}\)'),
        (np.zeros((1, c, h, w), dtype=np.float32), TypeError, 'torch.Tensor image batch.*numpy.ndarray'),
        ([[0.5] * w] * h, TypeError, 'torch.Tensor image batch.*list'),
        (torch.empty(1, c, *spec['too_small'], **meta), ValueError, 'x'.join(map(str, spec['too_small']))),
    ] + [(torch.empty(1, c, *size, **meta), ValueError, 'x'.join(map(str, size))) for size in spec['invalid']]
    for x, error, message in cases:
        for entry in (model, lambda t: model.forward_intermediates(t, intermediates_only=True)):
            with pytest.raises(error, match=message):
                entry(x)


# --- bad constructor arguments ---------------------------------------------------------------

DROP_RATES = ('drop_rate', 'proj_drop_rate', 'attn_drop_rate', 'drop_path_rate')
COMMON_BAD_ARGS = [
    (dict(num_classes=-1), r'num_classes must be >= 0 \(0 for no classifier\), got -1'),
    (dict(in_chans=0), 'in_chans must be >= 1, got 0'),
    (dict(global_pool='max'), "global_pool must be .*'avg'.*, got 'max'"),
] + [(dict(**{name: rate}), rf'{name} must be in \[0, 1\), got {rate}') for name in DROP_RATES for rate in (1., -0.1)]
# widths, depths, heads and windows out of range; every variant has four stages
FAMILY_BAD_ARGS = {
    'maxvit_reg': [
        (dict(embed_dim=0), 'embed_dim must be >= 1'),
        (dict(depths=(2, 2, 0, 2)), r'depths must be >= 1, got \(2, 2, 0, 2\)'),
        (dict(depths=()), 'num_stages must be >= 1'),
        (dict(head_dim=0), 'head_dim must be >= 1'),
        (dict(head_dim=40), 'every stage width must be a multiple of head_dim=40'),
        (dict(window_size=0), 'window_size must be >= 1'),
        (dict(window_size=7.5), r'window_size must be >= 1: an int or a \(height, width\) pair of ints, got 7.5'),
        (dict(window_size=(7, 7, 7)), r'a \(height, width\) pair of ints, got \(7, 7, 7\)'),
        (dict(stem_width=0), 'stem_width must be >= 1'),
        (dict(num_registers=0), 'num_registers must be at least 1'),
    ],
    'regionvit': [
        (dict(embed_dim=(64, 0, 256, 512)), 'embed_dim must be >= 1'),
        (dict(depths=(2, 0, 8, 2)), 'every depth must be >= 1'),
        (dict(num_heads=0), 'num_heads must be >= 1'),
        (dict(head_dim=0), 'head_dim must be >= 1'),
        (dict(window_size=0), 'window_size.* must be >= 1'),
        (dict(window_size=7.5), 'window_size must be >= 1: an int or a .* pair of ints, got 7.5'),
        (dict(window_size=(7, 14)), r'RegionViT windows are square: window_size must be one int, got \(7, 14\)'),
    ],
    'rvt': [
        (dict(**{name: 0}), f'{name} must be >= 1, got 0')
        for name in ('patch_size', 'embed_dim', 'depth', 'num_heads', 'head_dim', 'mlp_hidden_dim')
    ] + [(dict(query_kernel_size=4), 'query_kernel_size must be a positive odd integer')],
    'scalablevit': [
        (dict(embed_dim=0), 'embed_dim must be >= 1'),
        (dict(depths=(1, -1, 1, 1)), 'non-negative number of block pairs'),
        (dict(num_heads=0), 'num_heads must be positive integers'),
        (dict(window_size=0), 'window_size must be positive integers or None'),
        (dict(reduction_factor=0), 'reduction_factor must be positive integers'),
    ],
    'twinssvt': [
        (dict(embed_dims=(64, 0, 256, 512)), 'embed_dims must be >= 1'),
        (dict(depths=(1, 0, 1, 1)), r'at least one unit \(depths >= 1\)'),
    ] + [(dict(**{name: 0}), f'{name} must be >= 1') for name in
         ('num_heads', 'head_dim', 'patch_sizes', 'window_size', 'global_k')],
}


def test_every_family_has_bad_argument_cases():
    assert set(FAMILIES) == set(FAMILY_BAD_ARGS)


@pytest.mark.parametrize('name', VARIANTS)
def test_bad_constructor_arguments(name):
    for kwargs, message in COMMON_BAD_ARGS + FAMILY_BAD_ARGS[family_of(name)]:
        with pytest.raises(ValueError, match=message):
            timm.create_model(name, device='meta', **kwargs)


@pytest.mark.parametrize('name', VARIANTS)
def test_edge_arguments_and_train_py_kwargs_build(name):
    """The ends of the valid ranges build, and so do train.py's create_model kwargs (None ones dropped)."""
    edges = dict(num_classes=0, in_chans=1, **{rate: 0.9 for rate in DROP_RATES})
    model = timm.create_model(name, device='meta', **edges).eval()
    assert model.num_classes == 0 and model(torch.empty(1, 1, *model.pretrained_cfg['input_size'][1:],
                                                        device='meta')).shape[-1] == model.num_features
    train_py = dict(pretrained=False, in_chans=3, num_classes=10, drop_rate=0., drop_path_rate=None,
                    drop_block_rate=None, global_pool=None, bn_momentum=None, bn_eps=None, scriptable=False,
                    checkpoint_path='')
    assert timm.create_model(name, device='meta', **train_py).num_classes == 10


def test_scalablevit_keeps_stages_without_block_pairs():
    """Its documented depth rule is >= 0 (a stage of downsampling only)."""
    model = timm.create_model('scalablevit_tiny', device='meta', depths=(1, 0, 1, 1))
    assert len(model.stages[1].blocks) == 0


# --- supported sizes --------------------------------------------------------------------------

@pytest.mark.parametrize('name', VARIANTS)
def test_documented_sizes_give_features_at_documented_strides(name):
    spec = SPECS[family_of(name)]
    model = timm.create_model(name, device='meta').eval()
    assert [f['reduction'] for f in model.feature_info] == list(spec['strides'])
    # the family's sizes from the variant's own size check's minimum up (window-14 RegionViTs start at 56)
    low = getattr(getattr(model, 'input_check', None), 'min_size', 0)
    for size in [s for s in spec['valid'] if min(s) >= low]:
        x = torch.empty(1, 3, *size, device='meta')
        features = model.forward_intermediates(x, intermediates_only=True)
        for f, info in zip(features, model.feature_info):
            stride = info['reduction']
            assert f.shape[1] == info['num_chs']
            assert f.shape[-2:] == (-(-size[0] // stride), -(-size[1] // stride)), (size, stride)
        assert model(x).shape == (1, model.num_classes)


# --- numerics on small configurations ---------------------------------------------------------

@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_mixed_precision_stays_finite(family, dtype):
    model = small_model(family).eval()
    x = small_input(family, scale=5.)  # inputs out to many standard deviations
    with torch.no_grad():
        reference = model(x)
        with torch.autocast(DEVICE.type, dtype=dtype):
            out = model(x)
            features = model.forward_intermediates(x, intermediates_only=True)
    assert torch.isfinite(out).all() and all(torch.isfinite(f).all() for f in features)
    assert max_rel_error(out.float(), reference) < 0.1


@pytest.mark.parametrize('family', FAMILIES)
def test_batch_consistency_and_determinism(family, monkeypatch):
    # in true fp32: CUDA convs default to TF32, whose kernel choice varies with the batch size
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    model = small_model(family).eval()
    x = small_input(family, batch=4)
    with torch.no_grad():
        batched = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(4)])
        assert max_rel_error(alone, batched) < 1e-5
        assert torch.equal(model(x), batched)


@pytest.mark.parametrize('family', FAMILIES)
def test_meta_build_then_to_empty_and_init(family):
    model = timm.create_model(f'{family}_tiny', device='meta', **SPECS[family]['small'])
    model = model.to_empty(device=DEVICE).eval()
    with torch.no_grad():  # poison everything: init must reset every parameter and buffer
        for t in list(model.parameters()) + list(model.buffers()):
            t.fill_(float('nan') if t.is_floating_point() else 7)
    model.init_weights()
    fresh = small_model(family)
    for (name, t), (_, expected) in zip(model.named_buffers(), fresh.named_buffers()):
        if not t.is_floating_point():
            assert torch.equal(t, expected), name
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        assert torch.isfinite(t.float()).all(), name
    with torch.no_grad():
        assert torch.isfinite(model(small_input(family))).all()


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('build', ['context', 'create_model'])
def test_meta_build_then_load_state_dict_with_assign(family, build):
    """transformers' loading path: build on meta, ``to_empty``, rebuild the non-persistent buffers,
    ``load_state_dict(..., assign=True)``; the result computes exactly what the original does."""
    original = small_model(family).eval()
    if build == 'context':
        with torch.device('meta'):
            model = timm.create_model(f'{family}_tiny', **SPECS[family]['small'])
    else:
        model = timm.create_model(f'{family}_tiny', device='meta', **SPECS[family]['small'])
    model = model.to_empty(device=DEVICE).eval()
    if build == 'context':
        model.init_non_persistent_buffers()
    else:
        timm.models._manipulate.reinit_non_persistent_buffers(model)
    model.load_state_dict(original.state_dict(), assign=True)
    for (name, t), (_, expected) in zip(model.named_buffers(), original.named_buffers()):
        assert torch.equal(t, expected), name
    x = small_input(family)
    with torch.no_grad():
        assert torch.equal(model(x), original(x))


@pytest.mark.parametrize('family', FAMILIES)
def test_copy_pickle_and_state_dict_round_trip(family):
    model = small_model(family).eval()
    x = small_input(family)
    with torch.no_grad():
        expected = model(x)
        for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert torch.equal(clone.eval()(x), expected)
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        buffer.seek(0)
        other = small_model(family, drop_path_rate=0.).eval()
        other.load_state_dict(torch.load(buffer, weights_only=True))
        assert torch.equal(other(x), expected)


@pytest.mark.parametrize('family', FAMILIES)
def test_dtype_change_after_forward(family):
    model = small_model(family).eval()
    x = small_input(family)
    with torch.no_grad():
        model(x)
        model.to(torch.bfloat16)
        assert model(x.bfloat16()).dtype == torch.bfloat16
        model.to(torch.float64)
        assert model(x.double()).dtype == torch.float64


# --- checkpoints ------------------------------------------------------------------------------

def test_checkpoint_of_another_variant_or_family_is_refused_with_the_keys():
    names = [n for n in VARIANTS if n.endswith('_tiny')]
    model = timm.create_model(names[0], device='meta')
    bigger = timm.create_model(names[0].replace('_tiny', '_small'), device='meta').state_dict()
    with pytest.raises(RuntimeError, match='size mismatch for'):
        model.load_state_dict(bigger, assign=True)
    for other in names[1:]:
        with pytest.raises(RuntimeError, match='Missing key|Unexpected key'):
            model.load_state_dict(timm.create_model(other, device='meta').state_dict(), assign=True)


def test_partial_checkpoint_needs_non_strict(tmp_path):
    family = FAMILIES[0]
    model = small_model(family)
    state = model.state_dict()
    dropped = sorted(state)[:3]
    partial = {k: v for k, v in state.items() if k not in dropped}
    with pytest.raises(RuntimeError, match=dropped[0].replace('.', r'\.')):
        model.load_state_dict(partial)
    path = tmp_path / 'partial.pth'
    torch.save(partial, path)
    with pytest.raises(RuntimeError, match='Missing key'):
        timm.models.load_checkpoint(model, str(path))
    result = timm.models.load_checkpoint(model, str(path), strict=False)
    assert sorted(result.missing_keys) == dropped


def test_pickled_code_is_never_executed(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ('pickled code ran',))
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': Payload()}, path)
    with pytest.raises(Exception, match='weights_only'):
        timm.models.load_checkpoint(small_model(FAMILIES[0]), str(path))


def test_package_loads_checkpoints_only_with_weights_only():
    """Static guarantee: every torch.load in the package passes weights_only=True; no pickle loads."""
    package = Path(timm_vitvariants.__file__).parent
    offenders = []
    for path in package.rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name in ('pickle.load', 'pickle.loads', 'pickle.Unpickler'):
                offenders.append(f'{path.name}: {name}')
            if name == 'torch.load':
                safe = [k for k in node.keywords if k.arg == 'weights_only' and ast.unparse(k.value) == 'True']
                if not safe:
                    offenders.append(f'{path.name}:{node.lineno}: torch.load without weights_only=True')
    assert not offenders, offenders
