"""Training-time behaviour seen through the whole model, for every family (its small configuration,
tests/family_specs.py): stochastic depth per image, timm's fused-attention switch, block hooks under
grad checkpointing."""
import re
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

import timm
import timm_vitvariants
from timm.layers import DropPath, set_fused_attn
from timm.layers import config as timm_layer_config

from family_specs import SPECS
from timm_vitvariants.layers import WindowDropPath

FAMILIES = list(timm_vitvariants.MODEL_MODULES)
BATCH = 6


def small_model(family: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(f'{family}_tiny', num_classes=3, **dict(SPECS[family]['small'], **kwargs))


def small_input(family: str) -> torch.Tensor:
    return torch.randn(BATCH, 3, *SPECS[family]['small_size'], generator=torch.Generator().manual_seed(1))


def block_modules(model: torch.nn.Module) -> list:
    """Every block: the modules named '...blocks.N'."""
    return [m for n, m in model.named_modules() if re.fullmatch(r'(.+\.)?blocks\.\d+', n)]


@pytest.mark.parametrize('family', FAMILIES)
def test_stochastic_depth_keeps_or_drops_each_image_whole(family):
    """Every residual branch's drop mask is drawn per image of the batch, also where the branch runs on
    windows or grid groups: each image's branch output is either all zero or all input / keep_prob."""
    small = SPECS[family]['small']
    # two blocks per stage: the first stage's windowed maps then have a drop rate above 0 too
    deeper = dict(depths=tuple(max(d, 2) for d in small['depths'])) if 'depths' in small else {}
    model = small_model(family, drop_path_rate=0.6, **deeper).train()  # some images drop, some keep
    drop_paths = {n: m for n, m in model.named_modules()
                  if isinstance(m, (DropPath, WindowDropPath)) and m.drop_prob > 0}
    assert drop_paths
    seen = []
    for name, module in drop_paths.items():
        module.register_forward_hook(lambda m, args, out, name=name: seen.append((name, m.drop_prob, args[0], out)))
    torch.manual_seed(0)
    model(small_input(family))
    assert {name for name, *_ in seen} == set(drop_paths)  # every one of them ran
    kept_images = dropped_images = 0
    for name, drop_prob, branch, out in seen:
        branch, out = branch.detach().reshape(BATCH, -1), out.detach().reshape(BATCH, -1)
        dropped = (out == 0).all(1)
        kept = torch.isclose(out, branch / (1 - drop_prob), rtol=1e-5, atol=1e-6).all(1)
        assert (kept | dropped).all(), f'{name}: an image kept part of its branch and dropped the rest'
        kept_images += int(kept.sum())
        dropped_images += int((dropped & ~kept).sum())
    assert kept_images and dropped_images  # the draws really varied


@pytest.fixture
def restore_fused_attn():
    saved = timm_layer_config._USE_FUSED_ATTN
    yield
    timm_layer_config._USE_FUSED_ATTN = saved


@pytest.mark.parametrize('family', FAMILIES)
def test_fused_attention_switch(family, monkeypatch, restore_fused_attn):
    """timm.layers.set_fused_attn (TIMM_FUSED_ATTN, exportable=True) decides, for every attention module,
    whether F.scaled_dot_product_attention runs; both paths give the same outputs."""
    sdpa = F.scaled_dot_product_attention
    calls = []
    monkeypatch.setattr(F, 'scaled_dot_product_attention', lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    x = small_input(family)
    outputs = []
    for fused in (True, False):
        set_fused_attn(fused)
        model = small_model(family).eval()
        switches = [m.fused_attn for m in model.modules() if hasattr(m, 'fused_attn')]
        assert switches and all(s == fused for s in switches)
        calls.clear()
        with torch.no_grad():
            outputs.append(model(x))
        assert (len(calls) > 0) == fused, f'fused={fused}: {len(calls)} SDPA calls'
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('family', FAMILIES)
def test_block_hooks_fire_under_grad_checkpointing(family):
    """Checkpointing goes through each block's __call__: forward hooks on every block fire once per forward
    with checkpointing on as off, and the recompute in backward enters every block again (its pre-hook;
    the recompute may stop before the block's end, so the post-hook need not fire there)."""
    model = small_model(family).train()
    blocks = block_modules(model)
    assert blocks
    ends, starts = Counter(), Counter()
    for i, block in enumerate(blocks):
        block.register_forward_hook(lambda *_, i=i: ends.update([i]))
        block.register_forward_pre_hook(lambda *_, i=i: starts.update([i]))
    x = small_input(family)
    once = Counter(range(len(blocks)))
    for checkpointing in (False, True):
        model.set_grad_checkpointing(checkpointing)
        ends.clear()
        starts.clear()
        out = model(x)
        assert ends == starts == once, f'checkpointing={checkpointing}'
        out.float().pow(2).mean().backward()
        assert starts == (once + once if checkpointing else once), f'checkpointing={checkpointing}, in backward'
