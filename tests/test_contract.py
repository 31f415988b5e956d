"""The contract every registered variant keeps, whatever its family."""
import json
import os
import subprocess
import sys

import pytest
import torch

import timm
from timm.models import group_parameters

from timm_vitvariants.info import list_variants, published_weights

VARIANTS = list_variants()
TINY = [n for n in VARIANTS if n.endswith('_tiny')]
OFFICIAL_DESIGNS = ('regionvit_ibm_',)  # variants of the paper authors' own design, beside vit-pytorch's


def input_size(model):
    return model.pretrained_cfg['input_size']


def test_every_family_registers_three_variants():
    import timm_vitvariants
    for module in timm_vitvariants.MODEL_MODULES:
        names = [n for n in timm.list_models(module=module) if not n.startswith(OFFICIAL_DESIGNS)]
        assert len(names) == 3 and all(n.rsplit('_', 1)[-1] in ('tiny', 'small', 'base') for n in names)


def test_no_name_shadows_a_timm_model():
    code = 'import json, timm; print(json.dumps(timm.list_models()))'
    env = dict(os.environ, TIMM_VITVARIANTS_AUTOLOAD='0')
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True)
    timm_own = set(json.loads(out.stdout))
    assert VARIANTS and not set(VARIANTS) & timm_own


@pytest.mark.parametrize('name', [n for n in VARIANTS if not published_weights(n)])
def test_pretrained_without_published_weights_is_an_error(name):
    with pytest.raises(RuntimeError, match=f'No pretrained weights are published for {name!r}.*hf-hub:'):
        timm.create_model(name, pretrained=True)


@pytest.mark.parametrize('name', VARIANTS)
def test_meta_build_and_api_shape(name):
    model = timm.create_model(name, device='meta')
    assert model.pretrained_cfg['architecture'] == name
    assert model.default_cfg['license'] and model.default_cfg['paper_ids']
    strides = [f['reduction'] for f in model.feature_info]
    assert strides == sorted(strides) and strides[-1] in (16, 32)
    groups = group_parameters(model, model.group_matcher(), reverse=True)
    first_param = next(iter(model.state_dict()))
    head = [n for n in groups if n.startswith('head')]
    assert groups[first_param] == 0 and all(groups[n] == max(groups.values()) for n in head)
    assert model.no_weight_decay() <= {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize('name', TINY)
def test_in_chans_and_num_classes(name):
    model = timm.create_model(name, in_chans=1, num_classes=5).eval()
    x = torch.randn(2, 1, *input_size(model)[1:])
    with torch.no_grad():
        assert model(x).shape == (2, 5)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)


@pytest.mark.parametrize('name', TINY)
def test_grad_checkpointing_recomputes_and_matches(name):
    """Checkpointing really re-runs every block's layers in backward, and gives the same gradients."""
    torch.manual_seed(0)
    model = timm.create_model(name, features_only=True).train()
    x = torch.randn(2, *input_size(model))
    calls = []
    blocks = [m for n, m in model.named_modules() if n.count('blocks.') == 1 and n.split('.')[-1].isdigit()]
    assert blocks
    # every Linear saves its input for backward, so a recompute (which may stop early) must reach each one,
    # also where a block is checkpointed in segments (ScalableViT's two halves)
    linears = [m for block in blocks for m in block.modules() if isinstance(m, torch.nn.Linear)]
    assert linears
    for linear in linears:
        linear.register_forward_pre_hook(lambda *_: calls.append(1))
    grads, counts = [], []
    for checkpointing in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(checkpointing)
        calls.clear()
        sum(f.float().pow(2).mean() for f in model(x)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        counts.append(len(calls))
    plain, checkpointed = counts
    assert plain >= len(linears)
    assert checkpointed == 2 * plain
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('name', TINY)
@pytest.mark.parametrize('output_fmt', ['NCHW', 'NHWC'])
def test_intermediates_formats(name, output_fmt):
    model = timm.create_model(name).eval()
    x = torch.randn(1, *input_size(model))
    with torch.no_grad():
        features = model.forward_intermediates(x, output_fmt=output_fmt, intermediates_only=True)
    for f, info in zip(features, model.feature_info):
        channels = f.shape[-1] if output_fmt == 'NHWC' else f.shape[1]
        assert channels == info['num_chs']
    with pytest.raises(ValueError, match='NCHW'):
        model.forward_intermediates(x, output_fmt='NLC')


@pytest.mark.parametrize('name', TINY)
def test_bad_inputs_get_clear_errors(name):
    model = timm.create_model(name).eval()
    c, h, w = input_size(model)
    cases = [
        (torch.randn(c, h, w), ValueError, '4-D image batch'),
        (torch.randn(1, c + 1, h, w), ValueError, f'built for {c} input channels'),
        (torch.randint(0, 255, (1, c, h, w)), TypeError, 'floating point'),
        (torch.ones(1, c, h, w, dtype=torch.bool), TypeError, 'floating point'),
        (torch.randn(0, c, h, w), ValueError, 'empty batch'),
        (torch.randn(1, c, 3, 3), ValueError, '3x3'),
    ]
    for x, error, message in cases:
        with pytest.raises(error, match=message):
            model(x)
