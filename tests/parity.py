"""Helpers for parity tests against the real vit-pytorch package."""
import torch
from torch import nn


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gives norm affine parameters, BatchNorm statistics and biases non-default values, so that a
    weight mapped to the wrong place, or not at all, shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.ndim == 1 and name in ('weight', 'g'):  # norm scales
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1 or name == 'b':  # biases and norm shifts
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(0.2 * torch.randn(module.running_mean.shape, generator=g))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
    return model


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|"""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@torch.no_grad()
def assert_parity(ref: nn.Module, ours: nn.Module, x: torch.Tensor, tol: float = 1e-4) -> None:
    ref.eval()
    ours.eval()
    expected, actual = ref(x), ours(x)
    assert actual.shape == expected.shape
    err = max_rel_error(actual, expected)
    assert err < tol, f'max relative error {err:.2e} >= {tol:.0e}'
