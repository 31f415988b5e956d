"""RegionViT: parity with vit-pytorch, sizes, variants, what the reference got wrong."""
import pytest
import torch

import timm
import timm_vitvariants
from timm_vitvariants.info import variant_info
from timm_vitvariants.regionvit import RegionViT

from parity import assert_parity, randomize_

from vit_pytorch.regionvit import RegionViT as RefRegionViT


def tiny(**kwargs) -> RegionViT:
    args = dict(embed_dim=(16, 32, 32, 64), depths=(1, 1, 1, 1), num_heads=2, head_dim=8, window_size=2,
                num_classes=10)
    return timm.create_model('regionvit_tiny', **dict(args, **kwargs))


@pytest.mark.parametrize('config, size', [
    (dict(), (224, 224)),
    (dict(dim=(32, 64, 64, 96), depth=(1, 2, 1, 1), tokenize_local_3_conv=True, use_peg=True, window_size=4),
     (128, 256)),
    (dict(dim=32, depth=(1, 1, 1, 1), window_size=2, use_peg=True, attn_dropout=0.1, ff_dropout=0.1), (64, 128)),
    (dict(dim=(64, 96, 128, 160), depth=(2, 1, 3, 1), tokenize_local_3_conv=True), (448, 224)),
])
def test_parity_with_vit_pytorch(config, size):
    torch.manual_seed(0)
    ref = randomize_(RefRegionViT(num_classes=7, **config))
    ours = timm_vitvariants.from_vit_pytorch(ref)
    assert isinstance(ours, RegionViT)
    assert_parity(ref, ours, torch.randn(2, 3, *size))


def test_conversion_keeps_mode_and_config():
    ref = RefRegionViT(num_classes=5, dim=32, depth=(1, 1, 1, 1), window_size=2, use_peg=True)
    ours = timm_vitvariants.from_vit_pytorch(ref.train())
    assert ours.training
    assert ours.model_args['embed_dim'] == (32, 32, 32, 32) and ours.model_args['use_peg']
    assert ours.model_args['num_heads'] == (4, 4, 4, 4) and ours.model_args['head_dim'] == (32, 32, 32, 32)
    assert ours.num_classes == 5


@pytest.mark.parametrize('size', [(64, 64), (64, 128), (50, 70), (8, 8), (9, 100)])
def test_any_size_at_least_one_region(size):
    model = tiny().eval()
    out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 10) and torch.isfinite(out).all()


def test_padding_equals_explicit_zero_padding():
    model = tiny().eval()
    x = torch.randn(1, 3, 50, 70)
    padded = torch.nn.functional.pad(x, (0, 128 - 70, 0, 64 - 50))
    torch.testing.assert_close(model(x), model(padded))


@pytest.mark.parametrize('size', [(7, 64), (64, 3)])
def test_too_small_raises_with_minimum(size):
    with pytest.raises(ValueError, match='8x8'):
        tiny()(torch.randn(1, 3, *size))


def test_in_chans_honoured():
    model = tiny(in_chans=5).eval()
    assert model.stem.local[0].weight.shape[1] == 5 and model.stem.region.weight.shape[1] == 5
    assert model(torch.randn(1, 5, 64, 64)).shape == (1, 10)
    with pytest.raises(ValueError, match='5 input channels'):
        model(torch.randn(1, 3, 64, 64))


def test_heads_per_stage():
    model = tiny(num_heads=(1, 2, 4, 8), head_dim=(16, 16, 8, 8))
    for stage, heads, width in zip(model.stages, (1, 2, 4, 8), (16, 32, 32, 64)):
        assert stage.blocks[0].attn.num_heads == heads
        assert stage.blocks[0].attn.qkv.out_features == 3 * width
        assert stage.rel_pos.relative_position_bias_table.shape[1] == heads


def test_drop_path_active_in_train_only():
    model = tiny(drop_path_rate=0.5)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_features_local_maps():
    model = timm.create_model('regionvit_tiny', features_only=True, embed_dim=(16, 32, 32, 64),
                              depths=(1, 1, 1, 1), num_heads=2, head_dim=8)
    feats = model(torch.randn(1, 3, 224, 224))
    assert [f.shape[1:] for f in feats] == [(16, 56, 56), (32, 28, 28), (32, 14, 14), (64, 7, 7)]
    assert model.feature_info.reduction() == [4, 8, 16, 32]


@pytest.mark.parametrize('kwargs, match', [
    (dict(local_patch_size=8), 'local_patch_size'),
    (dict(num_heads=(1, 2)), 'num_heads'),
    (dict(global_pool='max'), 'global_pool'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


@pytest.mark.parametrize('name, params, gmacs', [
    ('regionvit_tiny', 13.8, 2.4), ('regionvit_small', 30.6, 5.3), ('regionvit_base', 72.7, 13.0),
])
def test_variant_size_near_paper(name, params, gmacs):
    info = variant_info(name)
    assert abs(info.params_m / params - 1) < 0.15, info
    assert abs(info.gmacs / gmacs - 1) < 0.15, info
