"""torch.compile(fullgraph=True) and torch.export on every family's small configuration.

``fullgraph=True`` turns any graph break into an error, so these tests prove that TorchDynamo captures
each family whole, forward and backward (AOTAutograd traces the joint graph), also with train.py's
``--drop-path`` and ``--grad-checkpointing``. They use the ``aot_eager`` backend: graph capture and
autograd tracing are the same as with inductor, without minutes of C++ compilation per family on a
CPU-only CI. One test runs the default inductor backend end to end on the first family.
"""
import pytest
import torch
from torch.export import Dim

import timm
import timm_vitvariants
from timm_vitvariants.layers import set_onednn_gemm

from family_specs import SPECS
from parity import max_rel_error

FAMILIES = list(timm_vitvariants.MODEL_MODULES)


def small_model(family: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(f'{family}_tiny', num_classes=10, **dict(SPECS[family]['small'], **kwargs))


def small_input(family: str, batch: int = 2, size=None) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, 3, *(size or SPECS[family]['small_size']))


# a size where every family's small configuration pads (windows, regions; RvT's patches with dynamic_img_pad)
PADDED_SIZE = (36, 44)
PADDED_KWARGS = dict(rvt=dict(dynamic_img_pad=True))


def forward_backward(model: torch.nn.Module, x: torch.Tensor, run=None):
    """Output and parameter gradients of ``run`` (default: the model itself; or its compiled form)."""
    model.zero_grad(set_to_none=True)
    out = (model if run is None else run)(x)
    out.square().mean().backward()
    return out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def compile_and_check(model: torch.nn.Module, x: torch.Tensor, backend: str, tolerance: float) -> None:
    """The compiled model gives eager's outputs and gradients for every parameter. Eager runs aten's GEMMs
    here, as the compiled graph does: only the tracing differs (oneDNN's GEMMs are checked in test_layers)."""
    set_onednn_gemm(False)
    try:
        expected, expected_grads = forward_backward(model, x)
    finally:
        set_onednn_gemm(None)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    out, grads = forward_backward(model, x, compiled)
    assert max_rel_error(out, expected) < tolerance
    assert grads.keys() == expected_grads.keys() == {n for n, p in model.named_parameters() if p.requires_grad}
    # gradients that are zero in exact arithmetic (a bias right before a train-mode BatchNorm) come out as
    # rounding noise; they are measured against the largest gradient instead of their own size
    floor = 1e-3 * max(g.abs().max().item() for g in expected_grads.values())
    for name, grad in grads.items():
        expected_grad = expected_grads[name]
        error = (grad - expected_grad).abs().max().item() / max(expected_grad.abs().max().item(), floor)
        assert error < tolerance, (name, error)


@pytest.mark.parametrize('family', FAMILIES)
def test_fullgraph_compile_forward_backward_matches_eager(family):
    model = small_model(family).train()  # train mode: batch statistics, dropout paths in the graph
    compile_and_check(model, small_input(family), backend='aot_eager', tolerance=1e-4)


@pytest.mark.parametrize('family', FAMILIES)
def test_fullgraph_compile_with_drop_path_and_grad_checkpointing(family):
    """train.py --drop-path 0.1 --grad-checkpointing --torchcompile: still one graph, gradients flow."""
    model = small_model(family, drop_rate=0.1, drop_path_rate=0.1).train()
    model.set_grad_checkpointing(True)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    out, grads = forward_backward(model, small_input(family), compiled)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert len(grads) == sum(1 for p in model.parameters() if p.requires_grad)
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize('family', FAMILIES)
def test_export_of_the_eval_model_with_a_dynamic_batch(family):
    model = small_model(family).eval()
    x = small_input(family, batch=3)
    exported = torch.export.export(model, (x,), dynamic_shapes={'x': {0: Dim('batch', min=1, max=1024)}})
    module = exported.module()
    with torch.no_grad():
        for batch in (3, 1, 5):
            xb = small_input(family, batch=batch)
            assert max_rel_error(module(xb), model(xb)) < 1e-5, batch


@pytest.mark.parametrize('family', FAMILIES)
def test_compile_and_export_at_a_size_that_pads(family):
    """Padding and masking branch on concrete sizes: dynamo and export specialize on them, one graph."""
    model = small_model(family, **PADDED_KWARGS.get(family, {})).train()
    x = small_input(family, size=PADDED_SIZE)
    compile_and_check(model, x, backend='aot_eager', tolerance=1e-4)
    model.eval()
    module = torch.export.export(model, (x,)).module()
    with torch.no_grad():
        assert max_rel_error(module(x), model(x)) < 1e-5


@pytest.mark.slow
def test_inductor_compiles_forward_backward():
    """The default backend, C++ code generation included, on the first family: 50-80 s on 2 CPU cores, and
    like train.py's --torchcompile on a CPU it needs a C++ compiler."""
    family = FAMILIES[0]
    compile_and_check(small_model(family).train(), small_input(family), backend='inductor', tolerance=1e-3)
