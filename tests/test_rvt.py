"""RvT (vit-pytorch's rotary ViT): parity with vit-pytorch, non-square sizes, variants, fixes."""
import math

import pytest
import torch
import torch.nn.functional as F

import timm
import timm_vitvariants
from timm_vitvariants.info import variant_info
from timm_vitvariants.rvt import RvT

from parity import assert_parity, randomize_

from vit_pytorch.rvt import RvT as RefRvT


def tiny(**kwargs) -> RvT:
    args = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, head_dim=16, mlp_hidden_dim=48, num_classes=10)
    return timm.create_model('rvt_tiny', **dict(args, **kwargs))


BASE = dict(image_size=64, patch_size=8, dim=32, depth=2, heads=2, dim_head=16, mlp_dim=48)


@pytest.mark.parametrize('changes', [
    dict(),
    dict(use_rotary=False),
    dict(use_ds_conv=False),
    dict(use_glu=False),
    dict(use_rotary=False, use_ds_conv=False, use_glu=False),
    dict(dim=40, heads=3, dim_head=24, channels=1, image_size=32, dropout=0.1),  # cls_proj, partial rotary
    dict(dim=32, heads=2, dim_head=16, patch_size=16, image_size=96),  # inner == dim: identity cls projection
])
def test_parity_with_vit_pytorch(changes):
    torch.manual_seed(0)
    config = dict(BASE, **changes)
    ref = randomize_(RefRvT(num_classes=7, **config))
    ours = timm_vitvariants.from_vit_pytorch(ref)
    assert isinstance(ours, RvT)
    x = torch.randn(2, config.get('channels', 3), config['image_size'], config['image_size'])
    assert_parity(ref, ours, x)


def test_conversion_reads_the_configuration():
    ref = RefRvT(num_classes=5, **dict(BASE, image_size=96, use_glu=False))
    ours = timm_vitvariants.from_vit_pytorch(ref.train())
    assert ours.training
    args = ours.model_args
    assert args['rotary_max_freq'] == 96 and args['use_glu'] is False and args['head_dim'] == 16
    assert ours.num_classes == 5 and ours.in_chans == 3


def _reference_rotary(height: int, width: int, head_dim: int, max_freq: float):
    """Direct computation: row angle in the first half, column angle in the second, each twice."""
    quarter = head_dim // 4
    scales = [1 + (max_freq / 2 - 1) * i / (quarter - 1) for i in range(quarter)]
    pos = lambda n, i: -1 + 2 * i / (n - 1)  # noqa: E731
    rows = [[pos(height, i) * s * math.pi for s in scales] for i in range(height)]
    cols = [[pos(width, j) * s * math.pi for s in scales] for j in range(width)]
    angles = torch.tensor([rows[i] + cols[j] for i in range(height) for j in range(width)], dtype=torch.float64)
    angles = angles.repeat_interleave(2, dim=-1)
    return angles.sin(), angles.cos()


def test_non_square_matches_a_direct_computation():
    """A 24x40 image (3x5 grid) through one block, against attention written out by hand."""
    torch.manual_seed(0)
    model = tiny(depth=1, use_ds_conv=False, use_glu=False).eval().double()
    x = torch.randn(2, 3, 24, 40, dtype=torch.float64)
    tokens = model.patch_embed(x).flatten(2).transpose(1, 2)
    tokens = torch.cat([model.cls_token.expand(2, -1, -1), tokens], dim=1)
    block = model.blocks[0]
    h = block.norm1(tokens)
    q, k, v = block.attn.qkv(h).chunk(3, dim=-1)
    q, k, v = (t.reshape(2, 16, 2, 16).transpose(1, 2) for t in (q, k, v))
    sin, cos = _reference_rotary(3, 5, 16, 224.)

    def rotate(t):
        pairs = t[..., 1:, :].reshape(2, 2, 15, 8, 2)
        turned = torch.stack([-pairs[..., 1], pairs[..., 0]], -1).reshape(2, 2, 15, 16)
        return torch.cat([t[..., :1, :], t[..., 1:, :] * cos + turned * sin], dim=2)

    attn = (rotate(q) @ rotate(k).transpose(-1, -2) / 4).softmax(-1) @ v
    tokens = tokens + block.attn.proj(attn.transpose(1, 2).reshape(2, 16, 32))
    tokens = tokens + block.mlp(block.norm2(tokens))
    expected = model.head(model.norm(tokens)[:, 0])
    with torch.no_grad():
        # rotary angles are float32 by design: tolerance of a float32 table, not of a wrong layout
        torch.testing.assert_close(model(x), expected.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('size', [(32, 64), (64, 32), (8, 8), (24, 40)])
def test_sizes_multiple_of_the_patch_work(size):
    model = tiny().eval()
    with torch.no_grad():
        features = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    assert features[-1].shape == (1, 32, size[0] // 8, size[1] // 8)


@pytest.mark.parametrize('size', [(30, 32), (32, 33), (4, 4)])
def test_invalid_sizes_are_refused(size):
    with pytest.raises(ValueError, match='multiples of 8|at least 8x8'):
        tiny().eval()(torch.randn(1, 3, *size))


def test_wrong_channels_and_bad_arguments():
    with pytest.raises(ValueError, match='3 input channels'):
        tiny()(torch.randn(1, 1, 32, 32))
    assert tiny(in_chans=1).eval()(torch.randn(1, 1, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match="'token', 'avg'"):
        tiny(global_pool='max')
    with pytest.raises(ValueError, match='odd'):
        tiny(query_kernel_size=4)
    with pytest.raises(TypeError):
        tiny(emb_dropout=0.1)


@pytest.mark.parametrize('name, params_m, gmacs', [
    ('rvt_tiny', 5.7, 1.3), ('rvt_small', 22.1, 4.6), ('rvt_base', 86.6, 17.6)])
def test_variant_size(name, params_m, gmacs):
    info = variant_info(name)
    assert info.params_m == pytest.approx(params_m, rel=0.02)
    assert info.gmacs == pytest.approx(gmacs, rel=0.05)
    assert info.feature_strides == (16,) * 12


def test_global_pool_switch():
    model = tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.forward_features(x)
        assert torch.equal(model.forward_head(tokens, pre_logits=True), tokens[:, 0])
        model.reset_classifier(3, 'avg')
        assert torch.allclose(model.forward_head(tokens, pre_logits=True), tokens[:, 1:].mean(1))
        assert model(x).shape == (2, 3)


def test_prefix_tokens_and_norm_in_intermediates():
    model = tiny().eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        final, features = model.forward_intermediates(x, return_prefix_tokens=True, norm=True)
        assert torch.allclose(features[-1][1][:, 0], final[:, 0])
        assert features[-1][0].shape == (1, 32, 4, 6)


def test_drop_path_active_in_train_only():
    model = tiny(drop_path_rate=0.5)
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    a = model.train()(x)
    b = model(x)
    assert not torch.allclose(a, b)
    model.eval()
    assert torch.equal(model(x), model(x))


def test_rotary_angles_float32_under_autocast():
    model = tiny().eval()
    with torch.autocast('cpu', dtype=torch.bfloat16), torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert torch.isfinite(out).all()
    from timm_vitvariants.rvt import axial_rotary_table
    with torch.autocast('cpu', dtype=torch.bfloat16):
        rotation = axial_rotary_table(torch.zeros(1, dtype=torch.bfloat16), (3, 5), 16, 224.)
    assert rotation.dtype == torch.complex64 and rotation.shape == (16, 8)
    sin = rotation.imag[1:].repeat_interleave(2, dim=-1)  # the class token (row 0) does not turn
    assert torch.equal(rotation[0], torch.ones(8, dtype=torch.complex64))
    assert F.mse_loss(sin.double(), _reference_rotary(3, 5, 16, 224.)[0]) < 1e-10


@pytest.mark.parametrize('head_dim', [16, 18, 19])
def test_rotary_turns_pairs_as_vit_pytorch(head_dim):
    """The complex-number rotation equals vit-pytorch's x * cos + rotate_every_two(x) * sin on the patch
    tokens, leaves the class token and the channels past 4 * (head_dim // 4) unchanged."""
    from timm_vitvariants.rvt import apply_rotary, axial_rotary_table
    torch.manual_seed(0)
    x = torch.randn(2, 3, 1 + 12, head_dim, dtype=torch.float64)
    rotation = axial_rotary_table(x, (3, 4), head_dim, 64.)
    rot_dim = head_dim // 4 * 4
    sin, cos = _reference_rotary(3, 4, rot_dim, 64.)
    patches = x[:, :, 1:, :rot_dim]
    pairs = patches.reshape(2, 3, 12, rot_dim // 2, 2)
    turned = torch.stack([-pairs[..., 1], pairs[..., 0]], -1).reshape(patches.shape)
    expected = x.clone()
    expected[:, :, 1:, :rot_dim] = patches * cos + turned * sin
    torch.testing.assert_close(apply_rotary(x, rotation), expected)


def test_dynamic_img_pad_takes_any_size():
    """Opt-in as timm's ViT: sizes that are not multiples of the patch are zero-padded at the bottom/right
    (the same as padding the image by hand); the default stays strict."""
    torch.manual_seed(0)
    strict = timm.create_model('rvt_tiny', depth=2, num_classes=4).eval()
    padding = timm.create_model('rvt_tiny', depth=2, num_classes=4, dynamic_img_pad=True).eval()
    padding.load_state_dict(strict.state_dict())
    x = torch.randn(2, 3, 75, 100)
    with torch.no_grad():
        by_hand = strict(torch.nn.functional.pad(x, (0, 12, 0, 5)))  # to 80x112
        torch.testing.assert_close(padding(x), by_hand)
        maps = padding.forward_intermediates(x, intermediates_only=True)
    assert maps[0].shape[-2:] == (5, 7)
    with pytest.raises(ValueError, match='multiples of 16'):
        strict(x)
