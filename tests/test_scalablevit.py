"""ScalableViT: parity with vit-pytorch, sizes, variants, options, what the reference got wrong."""
import pytest
import torch

import timm
import timm_vitvariants
from timm_vitvariants.layers import PosConv
from timm_vitvariants.scalablevit import ScalableViT

from parity import assert_parity, max_rel_error, randomize_

from vit_pytorch.scalable_vit import ScalableViT as RefScalableViT


def tiny(**kwargs) -> ScalableViT:
    args = dict(
        embed_dim=16, depths=(1, 2), num_heads=(1, 2), ssa_key_dim=8, ssa_value_dim=8, iwsa_key_dim=8,
        iwsa_value_dim=8, reduction_factor=(4, 2), window_size=4, num_classes=10)
    torch.manual_seed(0)
    return timm.create_model('scalablevit_tiny', **dict(args, **kwargs))


PARITY_CASES = [
    # two stages, windows that divide the maps
    (dict(dim=32, depth=(1, 1), heads=(1, 2), reduction_factor=(2, 1), window_size=4), (32, 32)),
    # windowed and global stages mixed, non-default key/value widths per stage, 1 channel, non-square,
    # an MLP ratio of 2, dropout (inactive in eval), two pairs in a stage (one PEG only)
    (dict(dim=16, depth=(2, 1, 1), heads=(2, 2, 4), reduction_factor=(4, 2, 1), window_size=(4, None, 2),
          ssa_dim_key=(8, 12, 16), ssa_dim_value=(16, 8, 4), iwsa_dim_key=(4, 8, 12), iwsa_dim_value=(12, 8, 16),
          ff_expansion_factor=2, channels=1, dropout=0.1), (64, 32)),
    # maps that the key/value reduction conv floors (9x11 at reduction 4), global attention everywhere
    (dict(dim=16, depth=(1, 1), heads=2, reduction_factor=4, window_size=None, ssa_dim_key=8, ssa_dim_value=12),
     (36, 44)),
    # the small variant's stage configuration at 224
    (dict(dim=64, depth=(1, 1, 1, 1), heads=(2, 4, 8, 16), ssa_dim_key=(40, 40, 40, 32),
          reduction_factor=(8, 4, 2, 1), window_size=7), (224, 224)),
]


@pytest.mark.parametrize('config, size', PARITY_CASES)
def test_parity_with_vit_pytorch(config, size):
    torch.manual_seed(0)
    ref = randomize_(RefScalableViT(num_classes=7, **config))
    ours = timm_vitvariants.from_vit_pytorch(ref)
    assert isinstance(ours, ScalableViT)
    x = torch.randn(2, config.get('channels', 3), *size)
    assert_parity(ref, ours, x)


def test_parity_of_features_and_conversion_keeps_mode_and_config():
    torch.manual_seed(0)
    ref = randomize_(RefScalableViT(num_classes=5, dim=16, depth=(1, 1), heads=(1, 2), reduction_factor=(2, 1),
                                    window_size=(4, None), channels=2, iwsa_dim_value=24))
    ours = timm_vitvariants.from_vit_pytorch(ref.train())
    assert ours.training
    args = ours.model_args
    assert args['window_size'] == (4, None) and args['iwsa_value_dim'] == (24, 24) and args['in_chans'] == 2
    assert args['block_order'] == 'vit_pytorch' and args['local_conv'] == 'full' and not args['qkv_bias']
    # the first stage's output is vit-pytorch's first Transformer output (stride 4)
    x = torch.randn(1, 2, 32, 48)
    ref.eval()
    with torch.no_grad():
        expected = ref.layers[0][0](ref.to_patches(x))
        feature = ours.eval().forward_intermediates(x, indices=[0], intermediates_only=True)[0]
    assert max_rel_error(feature, expected) < 1e-4


def test_unconvertible_vit_pytorch_model():
    ref = RefScalableViT(num_classes=3, dim=16, depth=(1, 0), heads=1, reduction_factor=1)
    with pytest.raises(ValueError, match='at least one block pair in every stage'):
        timm_vitvariants.from_vit_pytorch(ref)


@pytest.mark.parametrize('name, params_m, gmacs, paper', [
    ('scalablevit_tiny', 16.21, 2.20, None),
    ('scalablevit_small', 30.61, 4.48, (32.4, 4.2)),
    ('scalablevit_base', 83.33, 9.21, (81.9, 8.6)),
])
def test_variant_size(name, params_m, gmacs, paper):
    from timm_vitvariants.info import variant_info
    info = variant_info(name)
    assert info.params_m == pytest.approx(params_m, rel=0.01)
    assert info.gmacs == pytest.approx(gmacs, rel=0.02)
    assert info.feature_strides == (4, 8, 16, 32)
    if paper is not None:  # the bound: within 15% of the paper's figures
        assert info.params_m == pytest.approx(paper[0], rel=0.15)
        assert info.gmacs == pytest.approx(paper[1], rel=0.15)


def test_named_variants_use_the_papers_options():
    model = timm.create_model('scalablevit_small', device='meta')
    ssa, iwsa = model.stages[2].blocks[0].attn, model.stages[2].blocks[1].attn  # a pair: SSA block, IWSA block
    assert not model.stages[2].blocks[1].mlp_first  # alternating: IWSA, then its MLP
    lim = iwsa.local_conv
    assert lim.groups == lim.in_channels == lim.out_channels == 8 * 32  # depthwise
    assert iwsa.qkv.bias is not None and ssa.q.bias is not None and ssa.kv.bias is not None
    assert [s.blocks[0].attn.num_heads for s in model.stages] == [2, 4, 8, 16]  # heads per stage
    assert [s.blocks[0].attn.key_width for s in model.stages] == [80, 160, 320, 512]
    assert [len(s.blocks) for s in model.stages] == [2, 2, 20, 2]  # two blocks per pair
    # the reference's full 3x3 LIM would cost 8.45M more parameters in this size
    full = timm.create_model('scalablevit_small', device='meta', local_conv='full', qkv_bias=False)
    extra = sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in model.parameters())
    assert 8.3e6 < extra < 8.45e6


def test_block_order():
    """'vit_pytorch' runs SSA, MLP, PEG, MLP, IWSA (what the reference executes); 'alternating' SSA, MLP,
    PEG, IWSA, MLP."""
    for order, expected in (('vit_pytorch', ['ssa', 'mlp1', 'pos_conv', 'mlp2', 'iwsa']),
                            ('alternating', ['ssa', 'mlp1', 'pos_conv', 'iwsa', 'mlp2'])):
        model = tiny(block_order=order).eval()
        calls = []
        stage = model.stages[0]
        modules = dict(ssa=stage.blocks[0].attn, mlp1=stage.blocks[0].mlp, pos_conv=stage.pos_conv,
                       iwsa=stage.blocks[1].attn, mlp2=stage.blocks[1].mlp)
        for name, module in modules.items():
            module.register_forward_hook(lambda *_, name=name: calls.append(name))
        model(torch.randn(1, 3, 32, 32))
        assert calls == expected
    deeper = tiny(depths=(2, 1))
    pegs = [m for n, m in deeper.named_modules() if isinstance(m, PosConv)]
    assert len(pegs) == 2  # a PEG in the first pair of every stage only
    a, b = tiny(block_order='vit_pytorch').eval(), tiny(block_order='alternating').eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 32, 32)
    assert not torch.allclose(a(x), b(x))


@pytest.mark.parametrize('size', [(32, 32), (96, 130), (29, 61), (224, 160)])
def test_any_size_from_the_minimum_gives_features_at_strides(size):
    model = timm.create_model('scalablevit_tiny', depths=(1, 1, 1, 1), num_classes=3).eval()
    with torch.no_grad():
        features = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    for f, stride in zip(features, (4, 8, 16, 32)):
        assert f.shape[-2:] == (-(-size[0] // stride), -(-size[1] // stride))


def test_padded_windows_match_unpadded_attention():
    """Windows larger than the map are padded with masked keys: the same as global attention."""
    windowed = tiny(window_size=16).eval()
    global_ = tiny(window_size=(None, None)).eval()  # create_model drops arguments that are None
    assert global_.stages[0].blocks[1].attn.window_size is None
    global_.load_state_dict(windowed.state_dict())
    x = torch.randn(2, 3, 40, 52)  # maps 10x13 and 5x7
    with torch.no_grad():
        assert max_rel_error(windowed(x), global_(x)) < 1e-5


def test_sizes_the_reference_rejects_work():
    torch.manual_seed(0)
    ref = RefScalableViT(num_classes=4, dim=16, depth=(1, 1), heads=(1, 2), reduction_factor=(2, 1), window_size=4)
    x = torch.randn(1, 3, 40, 40)  # 10x10 and 5x5 maps: no whole 4x4 windows
    with pytest.raises(AssertionError):
        ref.eval()(x)
    ours = timm_vitvariants.from_vit_pytorch(ref).eval()
    assert torch.isfinite(ours(x)).all()


@pytest.mark.parametrize('size', [(28, 224), (224, 20), (3, 3)])
def test_too_small_names_the_minimum(size):
    model = timm.create_model('scalablevit_tiny', depths=(1, 1, 1, 1)).eval()
    with pytest.raises(ValueError, match=f'at least 29x29, got {size[0]}x{size[1]}'):
        model(torch.randn(1, 3, *size))
    # the minimum follows the reduction factors: every stage's map holds one key/value cell
    assert tiny(reduction_factor=(2, 4)).input_check.min_size == 25


def test_in_chans_and_num_classes():
    model = tiny(in_chans=5, num_classes=3).eval()
    assert model.stem.conv.in_channels == 5
    assert model(torch.randn(2, 5, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match='built for 5 input channels, got 3'):
        model(torch.randn(2, 3, 32, 32))


def test_no_dropout_by_default_and_real_drop_path():
    x = torch.randn(4, 3, 32, 32)
    model = tiny().train()
    torch.testing.assert_close(model(x), model(x))  # deterministic in train mode: no hidden dropout
    model = tiny(drop_path_rate=0.5).train()
    rates = [getattr(b.drop_path, 'drop_prob', 0.) for s in model.stages for b in s.blocks]
    assert rates == sorted(rates) and rates[-1] == pytest.approx(0.5)
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model(x), model(x))


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_heads=(1, 2, 3)), 'num_heads needs one value or one per stage'),
    (dict(embed_dim=(16, 32, 64)), 'embed_dim needs one width per stage'),
    (dict(window_size=0), 'window_size must be positive integers or None'),
    (dict(reduction_factor=(None, 1)), 'reduction_factor must be positive integers'),
    (dict(local_conv='separable'), "local_conv must be one of \\('full', 'depthwise'\\)"),
    (dict(block_order='swin'), "block_order must be one of"),
    (dict(global_pool='max'), "global_pool must be 'avg'"),
    (dict(depths=(1, -1)), 'non-negative number of block pairs'),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


def test_unsupported_vit_pytorch_class():
    from vit_pytorch.vit import ViT
    ref = ViT(image_size=32, patch_size=8, num_classes=3, dim=16, depth=1, heads=1, mlp_dim=16)
    with pytest.raises(TypeError, match='scalable_vit.ScalableViT'):
        timm_vitvariants.from_vit_pytorch(ref)
