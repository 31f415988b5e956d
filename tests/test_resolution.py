"""Fine-tuning at another resolution, as timm does it: ``img_size`` (windows follow it where they depend on
it), ``set_input_size``, and 224 weights loading into a model built for 384 (or 512) through timm's
pretrained path, the family's ``checkpoint_filter_fn`` resampling what depends on the window."""
from pathlib import Path

import pytest
import safetensors.torch
import torch

import timm
import timm_vitvariants
from timm.data import resolve_model_data_config
from timm.layers import resample_patch_embed, resize_rel_pos_bias_table
from timm_vitvariants.layers import RelPosBias

from family_specs import SPECS

FAMILIES = list(timm_vitvariants.MODEL_MODULES)
WINDOWED = ('maxvit_reg', 'regionvit')  # the families whose weights depend on the window


def small_kwargs(family: str) -> dict:
    """The family's small configuration, with the window left to img_size."""
    return {k: v for k, v in SPECS[family]['small'].items() if not (family in WINDOWED and k == 'window_size')}


def small_model(family: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(f'{family}_tiny', num_classes=4, **dict(small_kwargs(family), **kwargs))


def save_weights(model: torch.nn.Module, folder: Path) -> Path:
    path = folder / 'model.safetensors'
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def tables(model: torch.nn.Module) -> dict:
    return {n: m for n, m in model.named_modules() if isinstance(m, RelPosBias)}


@pytest.mark.parametrize('family', FAMILIES)
def test_224_weights_fine_tune_at_384(family, tmp_path):
    """create_model(..., img_size=384, pretrained=True) with 224 weights: tables and region kernels resampled
    exactly as timm's own functions do, then a training step and an eval pass at 384."""
    source = small_model(family)
    path = save_weights(source, tmp_path)
    model = small_model(family, img_size=384, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=4))
    assert resolve_model_data_config(model)['input_size'] == (3, 384, 384)
    state, source_state = model.state_dict(), source.state_dict()
    if family in WINDOWED:
        assert tables(model) and all(m.window_size == (12, 12) for m in tables(model).values())
    for name, module in tables(model).items():
        key = f'{name}.relative_position_bias_table'
        expected = resize_rel_pos_bias_table(source_state[key], module.window_size, tuple(state[key].shape))
        torch.testing.assert_close(state[key], expected, rtol=0, atol=0)
    if family == 'regionvit':
        assert state['stem.region.weight'].shape[-2:] == (48, 48)  # region patch = 4 x window
        torch.testing.assert_close(
            state['stem.region.weight'], resample_patch_embed(source_state['stem.region.weight'], [48, 48]))
    resampled = {k for k in state if state[k].shape != source_state[k].shape}
    for key in set(state) - resampled:  # everything else is carried over bit-exactly
        assert torch.equal(state[key], source_state[key]), key

    x = torch.randn(2, 3, 384, 384)
    model.train()
    model(x).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_maxvit_reg_at_512_from_224():
    source = small_model('maxvit_reg')
    model = small_model('maxvit_reg', img_size=512)
    model.load_state_dict(timm_vitvariants.maxvit_reg.checkpoint_filter_fn(source.state_dict(), model))
    assert {m.window_size for m in tables(model).values()} == {(16, 16)}
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 512, 512)).shape == (1, 4)


@pytest.mark.parametrize('family', FAMILIES)
def test_set_input_size_equals_building_at_that_size(family, tmp_path):
    """set_input_size(img_size=384) on a 224 model gives the model that building for 384 and loading the 224
    weights through the filter gives: the same tensors, the same outputs, the same recorded size."""
    source = small_model(family)
    path = save_weights(source, tmp_path)
    built = small_model(family, img_size=384, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=4)).eval()
    source.set_input_size(img_size=384)
    source.eval()
    assert source.state_dict().keys() == built.state_dict().keys()
    for (name, a), b in zip(source.state_dict().items(), built.state_dict().values()):
        assert torch.equal(a, b), name
    assert resolve_model_data_config(source)['input_size'] == (3, 384, 384)
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        torch.testing.assert_close(source(x), built(x), rtol=0, atol=0)
    if family not in WINDOWED:
        with pytest.raises(ValueError, match='img_size only'):
            source.set_input_size(window_size=12)


@pytest.mark.parametrize('family', FAMILIES)
def test_unchanged_size_loads_bit_exactly(family, tmp_path):
    source = small_model(family)
    path = save_weights(source, tmp_path)
    again = small_model(family, img_size=224, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=4))
    for (name, a), b in zip(source.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize('family', WINDOWED)
def test_window_rule_and_explicit_window_wins(family):
    for img_size, window in ((224, 7), (384, 12), (512, 16)):
        model = timm.create_model(f'{family}_tiny', img_size=img_size, device='meta')
        assert {m.window_size for m in tables(model).values()} == {(window, window)}
    model = timm.create_model(f'{family}_tiny', img_size=384, window_size=8, device='meta')
    assert {m.window_size for m in tables(model).values()} == {(8, 8)}
    assert model.pretrained_cfg['input_size'] == (3, 384, 384)



@pytest.mark.parametrize('family', WINDOWED)
def test_set_input_size_refuses_a_bad_window_and_changes_nothing(family):
    """A window that is not one or two positive ints (RegionViT: not square) is refused before any
    table is resampled, instead of being cut or rounded silently."""
    model = timm.create_model(f'{family}_tiny')
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = [7.5, (7, 7, 7)] + ([(7, 14)] if family == 'regionvit' else [])
    for window in bad:
        with pytest.raises(ValueError, match='window_size must be'):
            model.set_input_size(img_size=384, window_size=window)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert {m.window_size for m in tables(model).values()} == {(7, 7)}
    assert model.pretrained_cfg['input_size'] == (3, 224, 224)

def test_load_resampled_takes_a_train_py_checkpoint(tmp_path):
    """The --initial-checkpoint case: a train.py checkpoint of the 224 model into one built for 384."""
    source = small_model('regionvit')
    torch.save({'epoch': 3, 'state_dict': source.state_dict(), 'state_dict_ema': source.state_dict()},
               tmp_path / 'last.pth.tar')
    model = small_model('regionvit', img_size=384)
    timm_vitvariants.load_resampled(model, tmp_path / 'last.pth.tar', use_ema=True)
    expected = small_model('regionvit')
    expected.set_input_size(img_size=384)
    for (name, a), b in zip(model.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(a, b), name


def test_hub_repo_loads_at_384(tmp_path):
    """An exported folder on the loopback Hub, loaded with img_size=384 through hf-hub: (a fresh process)."""
    from test_hub import HubSession, export
    from hub_client import sample_input
    from hub_server import LoopbackHub
    with LoopbackHub(tmp_path / 'server', lifetime_s=240) as hub:
        session = HubSession(hub, tmp_path / 'hf_home', tmp_path)
        calls, expected = [], {}
        for family in WINDOWED:
            model = small_model(family).eval()
            repo = f'org/{family}-224'
            folder = export(model, tmp_path / family, family=family, repo_id=repo)
            pushed = session.run('-m', 'timm_vitvariants', 'push', str(folder), '--repo', repo)
            assert pushed.returncode == 0, pushed.stderr
            calls.append(dict(label=family, model=f'hf-hub:{repo}', kwargs=dict(img_size=384),
                              input_shape=[1, 3, 384, 384]))
            model.set_input_size(img_size=384)
            with torch.no_grad():
                expected[family] = model(sample_input([1, 3, 384, 384]))
        outputs, errors = session.load(calls)
    assert not errors
    for family in WINDOWED:
        torch.testing.assert_close(outputs[family], expected[family], rtol=1e-5, atol=1e-6)
