"""Twins-SVT (vit-pytorch design): parity with vit-pytorch, sizes, variants, the family's fixes."""
import pytest
import torch
import timm
from vit_pytorch.twins_svt import TwinsSVT as RefTwinsSVT

from timm_vitvariants import from_vit_pytorch
from timm_vitvariants.info import variant_info
from tests.parity import assert_parity, max_rel_error, randomize_

SMALL = dict(embed_dims=(16, 32, 32, 64), depths=(1, 2, 2, 1), num_heads=2, head_dim=8, window_size=2,
             global_k=(4, 2, 1, 1))

PARITY_CONFIGS = [
    (dict(), (224, 224)),  # the reference's defaults: 8 heads x 64, global_k 7 everywhere
    (dict(s1_emb_dim=32, s2_emb_dim=48, s3_emb_dim=64, s4_emb_dim=96, s1_depth=0, s2_depth=2, s3_depth=1,
          s4_depth=0, s3_global_k=2, s4_global_k=1, s1_patch_size=2, s2_local_patch_size=4, peg_kernel_size=5),
     (112, 224)),
    (dict(s1_emb_dim=24, s2_emb_dim=40, s3_emb_dim=56, s4_emb_dim=72, s1_depth=1, s2_depth=0, s3_depth=0,
          s4_depth=2, s1_global_k=8, s2_global_k=4, s3_global_k=3, s4_global_k=2, s3_patch_size=1,
          s3_local_patch_size=14, s4_patch_size=4, peg_kernel_size=1), (224, 224)),
]


@pytest.mark.parametrize('kwargs,size', PARITY_CONFIGS)
def test_parity_with_vit_pytorch(kwargs, size):
    torch.manual_seed(0)
    ref = randomize_(RefTwinsSVT(num_classes=11, **kwargs).eval())
    model = from_vit_pytorch(ref)
    assert model.model_args['num_classes'] == 11
    assert_parity(ref, model, torch.randn(2, 3, *size))


def test_converted_model_takes_sizes_the_reference_refuses():
    ref = randomize_(RefTwinsSVT(num_classes=5, s3_depth=0, s4_depth=0).eval())
    model = from_vit_pytorch(ref).eval()
    assert model(torch.randn(1, 3, 200, 150)).shape == (1, 5)


@pytest.mark.parametrize('size', [(96, 160), (100, 77), (32, 32), (33, 250)])
def test_non_square_and_padded_sizes(size):
    model = timm.create_model('twinssvt_tiny', num_classes=3, **SMALL).eval()
    x = torch.randn(2, 3, *size)
    assert model(x).shape == (2, 3)
    feats = model.forward_intermediates(x, intermediates_only=True)
    assert [f.shape[-2:] for f in feats] == [
        (-(-size[0] // s), -(-size[1] // s)) for s in (4, 8, 16, 32)]


@pytest.mark.parametrize('size', [(16, 224), (31, 64)])
def test_too_small_input_is_refused(size):
    model = timm.create_model('twinssvt_tiny', **SMALL)
    with pytest.raises(ValueError, match='at least 32x32'):
        model(torch.randn(1, 3, *size))


def test_bad_inputs():
    model = timm.create_model('twinssvt_tiny', **SMALL)
    with pytest.raises(ValueError, match='3 input channels'):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(TypeError, match='floating point'):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match='4-D'):
        model(torch.randn(3, 64, 64))


@pytest.mark.parametrize('bad,match', [
    (dict(num_heads=(2, 2)), 'num_heads needs one value or one per stage'),
    (dict(global_k=0), 'global_k must be >= 1'),
    (dict(pos_kernel_size=2), 'pos_kernel_size'),
    (dict(depths=(1, 0, 1, 1)), 'at least one unit'),
    (dict(global_pool='max'), 'global_pool'),
])
def test_bad_constructor_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('twinssvt_tiny', **dict(SMALL, **bad))


def test_in_chans_honoured():
    model = timm.create_model('twinssvt_tiny', in_chans=1, num_classes=4, **SMALL).eval()
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 4)
    assert model.stages[0].downsample.proj.in_features == 1 * 4 * 4


@pytest.mark.parametrize('in_chans', [1, 4])
def test_pretrained_weights_adapt_to_in_chans(tmp_path, in_chans):
    """timm adapts only conv stems; the pixel-unshuffle + LayerNorm + Linear embedding is adapted as the
    (O, C, p, p) conv it is: summed over channels for 1, repeated and rescaled by 3 / C otherwise."""
    from safetensors.torch import save_file
    kwargs = dict(embed_dims=(16, 32, 32, 64), depths=(1, 1, 2, 1), num_heads=2, head_dim=8, global_k=(4, 2, 1, 1))
    source = timm.create_model('twinssvt_tiny', **kwargs)
    save_file(source.state_dict(), tmp_path / 'w.safetensors')
    model = timm.create_model('twinssvt_tiny', pretrained=True, in_chans=in_chans, **kwargs,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'w.safetensors')))
    src, dst = source.stages[0].downsample, model.stages[0].downsample
    w = src.proj.weight.reshape(16, 3, 16)  # (out, C, p * p), p = 4
    expected = w.sum(1, keepdim=True) if in_chans == 1 else torch.cat([w, w[:, :1]], 1) * 3 / 4
    torch.testing.assert_close(dst.proj.weight, expected.reshape(16, -1))
    norm = src.norm_in.weight.reshape(3, 16)
    expected_norm = norm.mean(0, keepdim=True) if in_chans == 1 else torch.cat([norm, norm[:1]])
    torch.testing.assert_close(dst.norm_in.weight, expected_norm.reshape(-1))
    assert torch.isfinite(model(torch.randn(1, in_chans, 64, 64))).all()


def test_heads_and_head_dim_per_stage():
    model = timm.create_model('twinssvt_small')
    for stage, heads in zip(model.stages, (2, 4, 8, 16)):
        for block in stage.blocks:
            assert block.attn.num_heads == heads
            assert block.attn.key_width == heads * 32
    ks = [stage.blocks[-1].attn.reduction for stage in model.stages]
    assert ks == [8, 4, 2, 1]


def test_block_structure_matches_units():
    model = timm.create_model('twinssvt_small')
    assert [len(s.blocks) for s in model.stages] == [2, 2, 10, 4]  # s_depth (0, 0, 4, 3) + 1 units


def test_drop_path_active_in_train_only():
    model = timm.create_model('twinssvt_tiny', num_classes=3, drop_path_rate=0.5, **SMALL)
    x = torch.randn(4, 3, 64, 64)
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.allclose(a, b)
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize('name,params_m,gmacs', [
    ('twinssvt_small', 24.1, 2.9),  # official Twins-SVT-S
    ('twinssvt_base', 56.1, 8.6),  # official Twins-SVT-B
])
def test_variant_size_near_paper(name, params_m, gmacs):
    info = variant_info(name)
    assert abs(info.params_m / params_m - 1) < 0.15
    assert abs(info.gmacs / gmacs - 1) < 0.15
    assert info.feature_strides == (4, 8, 16, 32)


def test_tiny_is_smallest():
    assert variant_info('twinssvt_tiny').params_m < variant_info('twinssvt_small').params_m


def test_grad_checkpointing_matches():
    model = timm.create_model('twinssvt_tiny', num_classes=3, **SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = model(x)
    model.set_grad_checkpointing(True)
    assert max_rel_error(model(x), expected) < 1e-6
