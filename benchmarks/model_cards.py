"""``python -m benchmarks.model_cards``: writes MODEL_CARDS.md from the registry and the benchmark results.

Nothing in MODEL_CARDS.md is typed by hand: sizes, costs, input sizes and feature strides come from
the registered variants (built on the meta device), speed and memory from the committed
``benchmarks/results/*.json``, each family's differences from vit-pytorch and from its paper from
the family module's docstring, the papers' own figures from the tables below, and the training
recipes from ``benchmarks/recipes.md``. ``--check`` exits non-zero when the committed file differs
from what would be generated.
"""
import argparse
import difflib
import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import timm
import timm_vitvariants
from timm_vitvariants.info import VariantInfo, list_variants, paper_link, variant_info

ROOT = Path(__file__).resolve().parent.parent
CARDS = ROOT / 'MODEL_CARDS.md'
RESULTS_DIR = Path(__file__).resolve().parent / 'results'
RECIPES = Path(__file__).resolve().parent / 'recipes.md'


@dataclass(frozen=True)
class PaperFigure:
    model: str  # the paper's name for the model
    params_m: float
    gmacs: float
    top1: Optional[float] = None  # ImageNet-1k top-1 at 224, as published


@dataclass(frozen=True)
class Family:
    title: str
    paper: str
    sizes: str  # which input sizes work, in words
    resolution: str = ('`img_size` is recorded only: nothing in the model depends on the input size, so weights '
                       'load unchanged at any resolution')  # the window rule, for fine-tuning at another size


FAMILIES: Dict[str, Family] = {
    'regionvit': Family(
        title='RegionViT',
        paper='Chen et al., RegionViT: Regional-to-Local Attention for Vision Transformers, '
              + paper_link('arXiv:2106.02689'),
        sizes='any height and width from the minimum up, non-square included: the image is padded to the '
              'next multiple of the regional patch (28 px at the defaults), as the official implementation does, '
              'and local windows left short by the downsampling are padded and the padded keys masked',
        resolution='`img_size` sets the window to the shorter side / 32 (224 -> 7, 384 -> 12, 512 -> 16; the '
                   'regions are 4 x window px) unless `window_size` is given; 224 weights load at another window '
                   'through `checkpoint_filter_fn` (relative-position tables by timm\'s `resize_rel_pos_bias_table`, '
                   'the region kernel by `resample_patch_embed`), as does `set_input_size`',
    ),
    'scalablevit': Family(
        title='ScalableViT',
        paper='Yang et al., ScalableViT: Rethinking the Context-oriented Generalization of Vision Transformer, '
              + paper_link('arXiv:2203.10790'),
        sizes='any height and width from the minimum up, non-square included: feature maps that do not divide '
              'into windows are padded and the padded keys masked',
    ),
    'rvt': Family(
        title='RvT (vit-pytorch\'s rotary vision transformer)',
        paper='no paper: vit-pytorch\'s "Rotary Vision Transformer" (2-D axial rotary embeddings, '
              'depthwise-separable conv queries, GEGLU). It is **not** the Robust Vision Transformer of '
              + paper_link('arXiv:2105.07926') + ', which shares the acronym: those weights do '
              'not load here',
        sizes='any height and width that are multiples of the patch size (16), non-square included; with '
              '`dynamic_img_pad=True` (as timm\'s ViT) any size from one patch up, zero-padded to whole patches; '
              'there is no position table to resize',
    ),
    'maxvit_reg': Family(
        title='MaxViT with register tokens',
        paper='Tu et al., MaxViT: Multi-Axis Vision Transformer, '
              + paper_link('arXiv:2204.01697') + '; Darcet et al., Vision Transformers Need '
              'Registers, ' + paper_link('arXiv:2309.16588'),
        sizes='any height and width from 32 px (one token at stride 32) up, non-square included (256, 320x480, '
              '375x500, 1024x768, ...): the stem, the MBConvs and the stride-2 entries run on the real map '
              '(features at ceil(size / stride)); block and grid attention pad the map at the bottom/right to '
              'the window multiple, mask the padded tokens as keys (for the register tokens too) and crop them '
              'after the block. Sizes whose every stage divides into windows (multiples of 32 x window: 224, '
              '448, ... at window 7) need no padding and run the unpadded code',
        resolution='`img_size` sets the windows to img_size / 32 per side (224 -> 7, 384 -> 12, 512 -> 16), as '
                   'timm\'s maxxvit, unless `window_size` is given; 224 weights load at another window through '
                   '`checkpoint_filter_fn` (relative-position tables by timm\'s `resize_rel_pos_bias_table`, the '
                   'register slot carried over), as does `set_input_size`',
    ),
    'twinssvt': Family(
        title='Twins-SVT (vit-pytorch design)',
        paper='Chu et al., Twins: Revisiting the Design of Spatial Attention in Vision Transformers, '
              + paper_link('arXiv:2104.13840') + '. timm\'s own `twins_svt_*` is the official '
              'design; `twinssvt_*` is vit-pytorch\'s',
        sizes='any height and width from the minimum up, non-square included: local windows and the global '
              'reduction are padded',
    ),
}

# The papers' own figures at 224 (params in millions, GMACs, ImageNet-1k top-1).
PAPER: Dict[str, PaperFigure] = {
    'regionvit_tiny': PaperFigure('RegionViT-Ti', 13.8, 2.4, 80.4),
    'regionvit_small': PaperFigure('RegionViT-S', 30.6, 5.3, 82.6),
    'regionvit_base': PaperFigure('RegionViT-B', 72.7, 13.0, 83.2),
    'regionvit_ibm_tiny': PaperFigure('RegionViT-Ti', 13.8, 2.4, 80.4),
    'regionvit_ibm_small': PaperFigure('RegionViT-S', 30.6, 5.3, 82.6),
    'regionvit_ibm_medium': PaperFigure('RegionViT-M', 41.2, 7.4, 83.1),
    'regionvit_ibm_base': PaperFigure('RegionViT-B', 72.7, 13.0, 83.2),
    'scalablevit_small': PaperFigure('ScalableViT-S', 32.4, 4.2, 83.1),
    'scalablevit_base': PaperFigure('ScalableViT-B', 81.9, 8.6, 84.1),
    'maxvit_reg_tiny': PaperFigure('MaxViT-T (no registers)', 31.0, 5.6, 83.6),
    'maxvit_reg_small': PaperFigure('MaxViT-S (no registers)', 69.0, 11.7, 84.4),
    'maxvit_reg_base': PaperFigure('MaxViT-B (no registers)', 119.0, 24.2, 84.9),
    'twinssvt_small': PaperFigure('Twins-SVT-S', 24.1, 2.9, 81.7),
    'twinssvt_base': PaperFigure('Twins-SVT-B', 56.1, 8.6, 83.2),
}


def load_recipes(path: Path = RECIPES) -> Tuple[str, Dict[str, str]]:
    """(the shared introduction, {family: its recipe}) from recipes.md's "### <family>: title" sections."""
    text = path.read_text()
    intro, *sections = text.split('\n### ')
    intro = intro.split('-->', 1)[-1].strip()  # drop the leading comment for editors
    recipes = {}
    for section in sections:
        heading, body = section.split('\n', 1)
        recipes[heading.split(':', 1)[0].strip()] = body.strip()
    return intro, recipes


# --- results ----------------------------------------------------------------------------------

def load_results(results_dir: Path = RESULTS_DIR) -> List[dict]:
    """Every committed results file, sorted by device name so the output is stable."""
    return [json.loads(p.read_text()) for p in sorted(results_dir.glob('*.json'))]


def _rows_for(result: dict, name: str) -> Tuple[Optional[dict], Optional[dict]]:
    """(our row at the default config, our row at the vit-pytorch config) for one variant."""
    ours = next((r for r in result['rows'] if r['model'] == name), None)
    ref = next((r for r in result['rows'] if r['model'] == f'{name} (ref config)'), None)
    return ours, ref


def _fmt(value: Optional[float], spec: str, suffix: str = '') -> str:
    return '' if value is None else format(value, spec) + suffix


def _setting(meta: dict) -> str:
    parts = [meta['dtype'], f'batch {meta["batch_size"]}', f'{meta["img_size"]}px', f'{meta["threads"]} threads']
    if meta.get('channels_last'):
        parts.append('channels-last')
    if meta.get('compile'):
        parts.append('torch.compile')
    if meta.get('quick'):
        parts.append('quick run')
    return ', '.join(parts)


# --- rendering --------------------------------------------------------------------------------

def _differences(family: str) -> str:
    """The family module's docstring, first line (the title) dropped."""
    doc = importlib.import_module(f'timm_vitvariants.{family}').__doc__ or ''
    return '\n'.join(doc.strip().splitlines()[1:]).strip()


def _args(model_args: dict) -> str:
    return ', '.join(f'`{k}={v!r}`' for k, v in model_args.items())


def _vs_paper(ours: float, paper: Optional[float]) -> str:
    return '' if paper is None else f'{paper:g} ({100 * (ours / paper - 1):+.0f}%)'


def _ratio(row: dict, kind: str) -> str:
    """'1.12x', with the quartiles of the per-round ratios where the results have them: '1.12x (1.03-1.20)'."""
    low, high = row.get(f'{kind}_speedup_q1'), row.get(f'{kind}_speedup_q3')
    spread = f' ({low:.2f}-{high:.2f})' if low is not None and high is not None else ''
    return f'{row[f"{kind}_speedup"]:.2f}x{spread}'


def _ratios(row: dict) -> str:
    return f'{_ratio(row, "infer")} / {_ratio(row, "train")}'


def speed_table(names: List[str], results: List[dict]) -> List[str]:
    lines = [
        '| variant | device | setting | infer img/s | train img/s | % of matmul peak | vs vit-pytorch (infer / train) '
        '| vs timm (infer / train) | train memory MB, batch 32 (checkpointed) |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for result in results:
        meta = result['meta']
        for name in names:
            ours, ref = _rows_for(result, name)
            if ours is None:
                continue
            vs_ref = '' if ref is None or ref['infer_speedup'] is None else _ratios(ref)
            vs_timm = '' if ours['infer_speedup'] is None else f'{_ratios(ours)} vs `{ours["compared_to"]}`'
            plain, checkpointed = ours['step_memory_mb'], ours['step_memory_ckpt_mb']
            memory = '' if plain is None and checkpointed is None else (
                f'{_fmt(plain, ".0f") or "not measured"} ({_fmt(checkpointed, ".0f") or "not measured"})')
            lines.append(
                f'| `{name}` | {meta["device"]} | {_setting(meta)} | {_fmt(ours["infer_img_s"], ".1f")} '
                f'| {_fmt(ours["train_img_s"], ".1f")} | {_fmt(100 * ours["peak_fraction"], ".0f", "%")} '
                f'| {vs_ref} | {vs_timm} | {memory} |')
    if len(lines) == 2:
        lines.append('| (no measurements committed yet: run `python -m benchmarks.run`) ||||||||')
    return lines


KINDS = ('infer', 'train')


def _kernel_time_note(mine: dict, share: tuple) -> str:
    """Where our kernels alone take longer than the reference's, the same-kernels bound is not ours: by how much."""
    # both shares as fractions of the reference's step time: ours is our share of our (1/speedup as long) step
    ratios = [mine[f'{kind}_kernel_share'] / mine[f'{kind}_speedup'] / s for kind, s in zip(KINDS, share)]
    if max(ratios) < 1.05:
        return ''
    return (f' Our kernels themselves take {ratios[0]:.2f}x / {ratios[1]:.2f}x the reference\'s kernel time: '
            'they also do work the reference runs outside its kernels (GELUs and products fused into GEMMs, the '
            'softmax inside fused attention), or the same arithmetic runs slower in the kernels (or shapes) we '
            'call here, so that bound is not ours.')


def _own_kernel_bound(mine: dict) -> str:
    """The bound our own kernels set: our speed with everything but them removed (speedup / our share)."""
    bounds = [mine[f'{kind}_speedup'] / mine[f'{kind}_kernel_share'] for kind in KINDS]
    return (f' Our own kernels, with all our other time removed, would run at most {bounds[0]:.2f}x / '
            f'{bounds[1]:.2f}x the reference.')


def _peak_bound(name: str, ours: dict) -> str:
    """The share of the matmul peak the variant's inference reaches, and what its kernels alone would reach."""
    peak, share = ours.get('peak_fraction'), ours.get('infer_kernel_share')
    if not peak or not share:
        return ''
    return (f' `{name}` itself runs inference at {100 * peak:.0f}% of the matmul peak; its kernels alone, with all '
            f'its other time removed, would run at {100 * peak / share:.0f}%.')


def time_budget(names: List[str], results: List[dict]) -> List[str]:
    """Per results file with profiles: how much of the vit-pytorch model's time is kernels both sides run."""
    lines = []
    for result in results:
        for name in names:
            ours, mine = _rows_for(result, name)
            theirs = next((r for r in result['rows'] if mine and r['model'] == mine['compared_to']), None)
            shares = [row.get(f'{kind}_kernel_share') for row in (theirs or {}, mine or {}) for kind in KINDS]
            if not all(shares):  # older results (no profiles), or a profile that recorded nothing
                continue
            share = (theirs['infer_kernel_share'], theirs['train_kernel_share'])
            lines.append(
                f'- {result["meta"]["device"]}: {theirs["model"]} spends {100 * share[0]:.0f}% of inference and '
                f'{100 * share[1]:.0f}% of a train step in matrix-multiply, '
                f'convolution and attention kernels, which an implementation with the same kernels runs as well; '
                f'removing everything else would give at most {1 / share[0]:.2f}x / {1 / share[1]:.2f}x. Ours spends '
                f'{100 * mine["infer_kernel_share"]:.0f}% / {100 * mine["train_kernel_share"]:.0f}% there and runs '
                f'{mine["infer_speedup"]:.2f}x / {mine["train_speedup"]:.2f}x the reference\'s speed: '
                f'{100 * mine["infer_speedup"] * share[0]:.0f}% / {100 * mine["train_speedup"] * share[1]:.0f}% '
                f'of that bound.' + _kernel_time_note(mine, share) + _own_kernel_bound(mine)
                + _peak_bound(name, ours))
    if lines:
        lines = ['**Where the time goes** (torch.profiler, one step of each kind in the same run):', ''] + lines + ['']
    return lines


def padded_sizes(names: List[str], results: List[dict]) -> List[str]:
    """Per results file with padded-size figures: what a size that pads costs against the default size."""
    lines = []
    for result in results:
        for name in names:
            ours, _ = _rows_for(result, name)
            labels = [k[len('pad_cost_'):] for k, v in (ours or {}).items() if k.startswith('pad_cost_') and v]
            if not labels:
                continue
            figures = '; '.join(f'{label}: {ours[f"pad_work_{label}"]:.2f}x the GMACs per real pixel, '
                                f'{ours[f"pad_cost_{label}"]:.2f}x the time per GMAC' for label in labels)
            lines.append(f'- {result["meta"]["device"]}, `{name}`, against {result["meta"]["img_size"]}px: {figures}.')
    if lines:
        lines = ['**Sizes that pad** (inference against the default size in the same run; GMACs '
                 'counted at each size with the padding, so a time per GMAC of 1.00x means the padding costs its '
                 'own work and nothing more):', ''] + lines + ['']
    return lines


def family_section(family: str, infos: List[VariantInfo], results: List[dict], recipe: str = '') -> List[str]:
    spec = FAMILIES[family]
    names = [i.name for i in infos]
    out = [f'## {spec.title}: {", ".join(f"`{n}`" for n in names)}', '', f'**Paper**: {spec.paper}.', '',
           f'**Input sizes**: {spec.sizes}.', '', f'**Other resolutions**: {spec.resolution}.', '', '**Differences from vit-pytorch and from the paper** '
           '(from the family module\'s docstring):', '', '```text', _differences(family), '```', '',
           '| variant | hyper-parameters | params M | GMACs at 224 | paper params M | paper GMACs | paper top-1 '
           '| default input | min input | feature strides | feature channels | weights |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for info in infos:
        model = timm.create_model(info.name, device='meta')
        paper = PAPER.get(info.name)
        min_size = model.pretrained_cfg.get('min_input_size')
        out.append(
            f'| `{info.name}` | {_args(model.model_args)} | {info.params_m:.2f} | {info.gmacs:.2f} '
            f'| {_vs_paper(info.params_m, paper and paper.params_m)} | {_vs_paper(info.gmacs, paper and paper.gmacs)} '
            f'| {"" if paper is None or paper.top1 is None else f"{paper.top1:g}% ({paper.model})"} '
            f'| {"x".join(map(str, info.input_size[1:]))} '
            f'| {"" if not min_size else "x".join(map(str, min_size[1:]))} '
            f'| {", ".join(map(str, info.feature_strides))} | {", ".join(map(str, info.feature_channels))} '
            f'| {", ".join(info.weights) or "none published"} |')
    out += ['', '**Speed** (medians of interleaved rounds; ratios against the vit-pytorch model at the same '
            'configuration and weights, and against timm\'s own model of the family where it has one, with the '
            'quartiles of the per-round ratios in brackets where the results have them):', '']
    out += speed_table(names, results)
    out += [''] + time_budget(names, results) + padded_sizes(names, results)
    out += ['**Usage**:', '', '```python', 'import timm, timm_vitvariants', '',
            f"model = timm.create_model('{names[0]}', num_classes=10)  # pretrained=True once weights are published",
            f"backbone = timm.create_model('{names[0]}', features_only=True, out_indices=(-3, -2, -1))",
            '```', '']
    if recipe:
        out += ['**Training recipe** (ImageNet-1k, timm\'s train.py; the shared choices are explained at the end):',
                '', recipe, '']
    return out


def render(results: Optional[List[dict]] = None) -> str:
    results = load_results() if results is None else results
    infos = [variant_info(name) for name in list_variants()]
    by_family: Dict[str, List[VariantInfo]] = {}
    for info in infos:
        by_family.setdefault(info.family, []).append(info)
    out = [
        '# Model cards',
        '',
        '<!-- Generated by `python -m benchmarks.model_cards` from the model registry and benchmarks/results/*.json;'
        ' edit those, not this file. -->',
        '',
        f'timm_vitvariants {timm_vitvariants.__version__}. Params and GMACs (multiply-accumulates of one 224x224 '
        'forward, `torch.utils.flop_counter`) are measured from the registered variants; the papers\' figures are '
        'given beside them with the relative difference.',
        '',
        '**Weights**: the `regionvit_ibm_*.in1k` tags load IBM\'s official ImageNet-1k release files '
        '(Apache-2.0, https://github.com/IBM/RegionViT, release weights-v0.1; their top-1 is IBM\'s figure, not '
        'measured here, and the download could not be exercised on the build machines); `python -m timm_vitvariants '
        'convert --from ibm` turns such a file into a Hub folder. No other weights are published: '
        '`pretrained=True` raises an error that says so. To publish: train '
        '(see the recipes), `python -m timm_vitvariants export` the checkpoint into a Hub folder, '
        '`python -m timm_vitvariants push FOLDER --repo org/name`, then add the tag to the family\'s '
        '`default_cfgs` (one line) or load it directly with `timm.create_model(\'hf-hub:org/name\', '
        'pretrained=True)`.',
        '',
        '**Measurements**:',
        '',
    ]
    for result in results:
        meta = result['meta']
        peak_dtype = 'bf16' if 'bf16' in meta['dtype'] else 'fp32'
        how = ('the median of a square multiply timed in every round, each round\'s fraction against its own'
               if 'matmul_peak_size' in meta else 'measured in the same run')
        if meta.get('matmul_peak_kernel'):
            how = f'{meta["matmul_peak_kernel"]}, the faster GEMM here; {how}'

        out.append(
            f'- {meta["device"]}: {_setting(meta)}, {peak_dtype} matmul peak {meta["matmul_peak_gflops"]:.0f} GFLOP/s '
            f'({how}); torch {meta["torch"]}, timm {meta["timm"]}, {meta["date"]}'
            + (f', commit {meta["commit"]}.' if meta.get('commit') else '.')
            + (' Figures over 100% of that peak: some kernels here run faster than the probe.'
               if any((r.get('peak_fraction') or 0) > 1 for r in result['rows']) else ''))
    if not results:
        out.append('- none committed yet.')
    out += ['', '| variant | params M | GMACs | default input | feature strides |', '|---|---|---|---|---|']
    out += [f'| `{i.name}` | {i.params_m:.2f} | {i.gmacs:.2f} | {"x".join(map(str, i.input_size[1:]))} '
            f'| {", ".join(map(str, i.feature_strides))} |' for i in infos]
    recipes_intro, recipes = load_recipes()
    out.append('')
    for family in timm_vitvariants.MODEL_MODULES:
        out += family_section(family, by_family[family], results, recipes.get(family, ''))
    out += ['## Training recipes: what they share', '', recipes_intro, '']
    return '\n'.join(out).rstrip() + '\n'


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m benchmarks.model_cards', description=__doc__.split('\n\n')[0])
    parser.add_argument('--check', action='store_true', help='only compare with the committed MODEL_CARDS.md')
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = CARDS.read_text() if CARDS.exists() else ''
        if current != text:
            sys.stdout.writelines(difflib.unified_diff(
                current.splitlines(True), text.splitlines(True), 'MODEL_CARDS.md', 'generated'))
            print('MODEL_CARDS.md is out of date: run python -m benchmarks.model_cards', file=sys.stderr)
            return 1
        return 0
    CARDS.write_text(text)
    print(f'wrote {CARDS}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
