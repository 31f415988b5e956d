"""RegionViT: parity with vit-pytorch, sizes, variants, what the reference got wrong."""
import pytest
import torch

import timm
import timm_vitvariants
from timm_vitvariants.info import variant_info
from timm_vitvariants.layers import window_partition
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
    # sizes where vit-pytorch's windows shrink to local map / regional map: one region (28 px) ...
    (dict(dim=(16, 16, 32, 32), depth=(1, 2, 1, 1), tokenize_local_3_conv=True, use_peg=True), (28, 56)),
    # ... or several, smaller than the window: 560 px has 18 local rows for 3 regions at stage 4 (6 each)
    (dict(dim=(16, 16, 32, 32), depth=(1, 1, 1, 2)), (560, 224)),
    (dict(dim=(16, 16, 32, 32), depth=(1, 1, 2, 1), window_size=4), (48, 96)),
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


def ceil_div(size, stride):
    return -(-size // stride)


def padded_model(**kwargs) -> RegionViT:
    """The default window (7, region patch 28) with narrow stages: 225x250 pads in every stage."""
    return tiny(window_size=7, depths=(1, 1, 2, 1), **kwargs).eval()


def real_in_windows(size, stride: int, batch_size: int = 2) -> torch.Tensor:
    """(B * rh * rw, 1 + 49) bools, the blocks' layout at the default window 7: True where a local token is
    real (not padding), False for the padding and for each window's regional token in front."""
    real = tuple(ceil_div(s, stride) for s in size)
    regions = tuple(ceil_div(s, 7 * stride) for s in size)
    mask = torch.zeros(batch_size, 7 * regions[0], 7 * regions[1], 1, dtype=torch.bool)
    mask[:, :real[0], :real[1]] = True  # the stage pads at the bottom rows and right columns
    return torch.nn.functional.pad(window_partition(mask, (7, 7))[..., 0], (1, 0))


def test_stages_run_on_the_real_size_padded_to_whole_windows_only():
    model, size = padded_model(), (225, 250)
    seen = {}
    for i, stage in enumerate(model.stages):
        stage.blocks[0].register_forward_pre_hook(lambda m, args, i=i: seen.update({(i, 'blocks'): args}))
        stage.register_forward_hook(lambda m, args, out, i=i: seen.update({(i, 'out'): out[0].shape[1:3]}))
    model(torch.randn(2, 3, *size))
    for i in range(4):
        # the stage returns ceil(size / stride) local tokens; its blocks see them padded to whole windows,
        # each window with its regional token in front: (B * rh * rw, 1 + 7 * 7, C)
        assert seen[i, 'out'] == tuple(ceil_div(s, 4 << i) for s in size)
        tokens, batch_size, bias = seen[i, 'blocks']
        regions = tuple(ceil_div(s, 28 << i) for s in size)
        assert batch_size == 2 and tokens.shape[:2] == (2 * regions[0] * regions[1], 1 + 49)
        assert bias.shape[0] == 2 * regions[0] * regions[1]  # padded keys are masked per window
    # (padding to a multiple of 224 gave 112x112 local tokens, 16 x 16 windows, at stage 1)
    assert seen[0, 'blocks'][0].shape[0] == 2 * 9 * 9


def test_no_mask_where_the_windows_are_full():
    model = padded_model()
    biases = []
    for stage in model.stages:
        stage.blocks[0].register_forward_pre_hook(lambda m, args: biases.append(args[2]))
    model(torch.randn(2, 3, 224, 448))
    assert [b.shape[0] for b in biases] == [1, 1, 1, 1]  # the relative-position bias alone: fused fast path


def test_padded_local_tokens_are_masked():
    """Noise written into every block's padded local tokens changes no output: not the logits, not the features."""
    model, size = padded_model(), (225, 250)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        logits, features = model(x), model.forward_intermediates(x, intermediates_only=True)

    def fill(i, real_only):
        real = real_in_windows(size, 4 << i)
        # the padding, or the real local tokens: never the regional tokens
        target = (real if real_only else ~real)
        target[:, 0] = False

        def hook(module, args):
            tokens = args[0]
            noise = 100 * torch.randn_like(tokens)
            return (torch.where(target[..., None], noise, tokens),) + args[1:]
        return hook

    handles = [block.register_forward_pre_hook(fill(i, real_only=False))
               for i, stage in enumerate(model.stages) for block in stage.blocks]
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits)
        for a, b in zip(model.forward_intermediates(x, intermediates_only=True), features):
            torch.testing.assert_close(a, b)
    for handle in handles:
        handle.remove()
    # the same noise on the real tokens of the last stage does change the result: the hook reaches them
    model.stages[3].blocks[0].register_forward_pre_hook(fill(3, real_only=True))
    with torch.no_grad():
        assert not torch.allclose(model(x), logits)


@pytest.mark.parametrize('three_convs', [True, False])
def test_tokenizers_run_channels_last_and_hand_out_nhwc_tokens_without_a_copy(three_convs):
    """The stem convs run on a channels-last image, so the NHWC tokens are the convs' own memory."""
    stem = tiny(tokenize_local_3_conv=three_convs).stem.eval()
    image = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        local_tokens, region_tokens = stem(image)
        assert local_tokens.is_contiguous() and region_tokens.is_contiguous()
        torch.testing.assert_close(region_tokens, stem.region(image).permute(0, 2, 3, 1))
        torch.testing.assert_close(local_tokens, stem.local(image).permute(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


def test_explicit_zero_padding_is_not_the_same():
    """Zeros padded by the caller are image content; the model's own padding stays masked."""
    model = padded_model()
    x = torch.randn(1, 3, 225, 250)
    padded = torch.nn.functional.pad(x, (0, 252 - 250, 0, 252 - 225))
    assert not torch.allclose(model(x), model(padded), atol=1e-4)


def test_non_square_padded_input_independent_per_image():
    model = padded_model()
    x = torch.randn(3, 3, 100, 37)
    out = model(x)
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    torch.testing.assert_close(model(x[1:2]), out[1:2], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('size', [(7, 64), (64, 3)])
def test_too_small_raises_with_minimum(size):
    with pytest.raises(ValueError, match='8x8'):
        tiny()(torch.randn(1, 3, *size))


def test_minimum_is_one_region_at_the_defaults():
    model = timm.create_model('regionvit_tiny', embed_dim=(16, 32, 32, 64), depths=(1, 1, 1, 1), num_heads=2,
                              head_dim=8, num_classes=10).eval()
    assert model.pretrained_cfg['min_input_size'] == (3, 28, 28)
    assert model(torch.randn(1, 3, 28, 28)).shape == (1, 10)
    with pytest.raises(ValueError, match='at least one region, 28x28'):
        model(torch.randn(1, 3, 27, 300))


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


@pytest.mark.parametrize('indices', [1, 2, 4])
def test_pruned_intermediates_end_where_forward_features_ends(indices):
    """After prune_intermediate_layers, forward_intermediates' final output is forward_features' output (the
    last kept stage's local map, or the regional map when nothing is pruned) and the taps are unchanged."""
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        full = model.forward_intermediates(x, intermediates_only=True)
        model.prune_intermediate_layers(list(range(indices)))
        final, taps = model.forward_intermediates(x, indices=list(range(indices)))
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        for tap, expected in zip(taps, full):
            torch.testing.assert_close(tap, expected, rtol=0, atol=0)
    assert final.shape[1] == model.num_features


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


def test_set_input_size_keeps_frozen_parameters_frozen():
    model = timm.create_model('regionvit_tiny', device='meta').requires_grad_(False)
    model.set_input_size(img_size=448)  # window 7 -> 14: tables and the regional kernel rebuilt
    assert model.window_size == 14 and not any(p.requires_grad for p in model.parameters())
    model.set_input_size(window_size=14)  # unchanged: nothing rebuilt
    assert not any(p.requires_grad for p in model.parameters())
