"""Facts about the registered variants: size, cost, input size, feature strides, weights."""
import copy
from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

import timm
from timm.models import get_arch_pretrained_cfgs

from . import MODEL_MODULES


@dataclass
class VariantInfo:
    name: str
    family: str
    params_m: float
    gmacs: float
    input_size: Tuple[int, int, int]
    feature_strides: Tuple[int, ...]
    feature_channels: Tuple[int, ...]
    weights: Tuple[str, ...]  # published 'name.tag' entries with weights


SIZES = ('tiny', 'small', 'medium', 'base')


def list_variants() -> List[str]:
    """Every registered variant, family by family, smallest first; a family's further designs
    (``regionvit_ibm_*``, then ``regionvit_ibm_*_w14``: one more name part each) after its own."""
    def size_rank(name: str) -> int:
        size = next((part for part in reversed(name.split('_')) if part in SIZES), None)
        return SIZES.index(size) if size else len(SIZES)
    names: List[str] = []
    for module in MODEL_MODULES:
        names += sorted(timm.list_models(module=module), key=lambda n: (n.count('_'), size_rank(n), n))
    return names


def published_weights(name: str) -> Tuple[str, ...]:
    # timm keys the cfgs by 'name.tag' already
    return tuple(tagged for tagged, cfg in get_arch_pretrained_cfgs(name).items() if cfg.has_weights)


def count_gmacs(model: torch.nn.Module, input_size: Tuple[int, int, int]) -> float:
    """Multiply-accumulates of one forward pass (matmuls, convs, attention), in billions.

    Counted on a meta-device copy: no memory or time spent, and attention is always counted
    (on the CPU, SDPA's flash kernel is invisible to the flop counter; on meta it decomposes).
    """
    if next(model.parameters()).device.type != 'meta':
        model = copy.deepcopy(model).to('meta')
    x = torch.empty(1, *input_size, device='meta')
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops() / 2e9


def variant_info(name: str) -> VariantInfo:
    """Builds the variant on the meta device (no memory, no init) and measures it."""
    model = timm.create_model(name, device='meta').eval()
    input_size = tuple(model.pretrained_cfg['input_size'])
    return VariantInfo(
        name=name,
        family=type(model).__module__.rsplit('.', 1)[-1],
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        gmacs=count_gmacs(model, input_size),
        input_size=input_size,
        feature_strides=tuple(f['reduction'] for f in model.feature_info),
        feature_channels=tuple(f['num_chs'] for f in model.feature_info),
        weights=published_weights(name),
    )


def paper_link(paper_id: str) -> str:
    """A Markdown link for one of a cfg's ``paper_ids``, by kind: ``arXiv:2204.01697`` (or a bare
    arXiv number) -> arxiv.org/abs, a URL -> itself."""
    if paper_id.startswith(('https://', 'http://')):
        return f'[{paper_id}]({paper_id})'
    number = paper_id[len('arXiv:'):] if paper_id.lower().startswith('arxiv:') else paper_id
    return f'[arXiv:{number}](https://arxiv.org/abs/{number})'
