"""MODEL_CARDS.md is generated, never typed: the committed file must be exactly what the generator
makes from the committed results and the current registry."""
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import timm

from benchmarks import model_cards
from test_hub import export, small_model
from timm_vitvariants.info import list_variants, paper_link


def test_committed_model_cards_are_up_to_date():
    expected = model_cards.render()
    assert model_cards.CARDS.read_text() == expected, (
        'MODEL_CARDS.md is stale: run `python -m benchmarks.model_cards` and commit the result')


def test_every_variant_and_family_has_a_card():
    text = model_cards.CARDS.read_text()
    for name in list_variants():
        assert f'| `{name}` |' in text
    for family in model_cards.FAMILIES:
        if any(model_cards.timm.list_models(module=family)):
            assert f'## {model_cards.FAMILIES[family].title}' in text


def test_every_family_has_a_training_recipe():
    _, recipes = model_cards.load_recipes()
    for family in model_cards.timm_vitvariants.MODEL_MODULES:
        assert 'train.py' in recipes.get(family, ''), f'no recipe for {family} in benchmarks/recipes.md'


def test_speed_figures_come_from_the_results(tmp_path):
    """A results file's figures appear in the card, with its device and setting."""
    name = list_variants()[0]
    row = dict(model=name, family='x', kind='ours', compared_to='', params_m=1., gmacs=1., infer_img_s=123.4,
               train_img_s=45.6, gflops=1., peak_fraction=0.5, infer_speedup=None, train_speedup=None,
               step_memory_mb=1000., step_memory_ckpt_mb=400.)
    ref = dict(row, model=f'{name} (ref config)', infer_speedup=1.31, train_speedup=1.22)
    meta = dict(device='test-device', dtype='fp32', batch_size=8, img_size=224, threads=2, channels_last=False,
                compile=False, matmul_peak_gflops=300., torch='t', timm='t', date='d')
    (tmp_path / 'test-device.json').write_text(json.dumps(dict(meta=meta, rows=[row, ref])))
    text = model_cards.render(model_cards.load_results(tmp_path))
    line = next(ln for ln in text.splitlines() if ln.startswith(f'| `{name}` | test-device'))
    assert '| 123.4 | 45.6 | 50% | 1.31x / 1.22x |' in line and '1000 (400)' in line


def test_spread_missing_memory_and_time_budget_render(tmp_path):
    """New-style results: quartiles beside the ratios, a memory probe that failed, the kernel shares."""
    name = list_variants()[0]
    base = dict(family='x', kind='ours', compared_to='', params_m=1., gmacs=1., infer_img_s=10., train_img_s=5.,
                gflops=1., peak_fraction=0.5, infer_speedup=None, train_speedup=None, step_memory_mb=None,
                step_memory_ckpt_mb=400., infer_kernel_share=0.9, train_kernel_share=0.85)
    ours = dict(base, model=name)
    ref_label = f'vit-pytorch X ({name} config)'
    mine = dict(base, model=f'{name} (ref config)', compared_to=ref_label, infer_speedup=1.2, infer_speedup_q1=1.1,
                infer_speedup_q3=1.3, train_speedup=1.05, train_speedup_q1=1.0, train_speedup_q3=1.1)
    theirs = dict(base, model=ref_label, kind='vit-pytorch', infer_kernel_share=0.8, train_kernel_share=0.75)
    meta = dict(device='dev', dtype='fp32', batch_size=8, img_size=224, threads=2, channels_last=False, compile=False,
                matmul_peak_gflops=100., matmul_peak_size=2048, torch='t', timm='t', date='d', commit='abc')
    (tmp_path / 'dev.json').write_text(json.dumps(dict(meta=meta, rows=[ours, mine, theirs])))
    text = model_cards.render(model_cards.load_results(tmp_path))
    line = next(ln for ln in text.splitlines() if ln.startswith(f'| `{name}` | dev'))
    assert '1.20x (1.10-1.30) / 1.05x (1.00-1.10)' in line and 'not measured (400)' in line
    assert f'{ref_label} spends 80% of inference and 75% of a train step' in text
    assert 'at most 1.25x / 1.33x' in text and 'commit abc' in text
    assert '96% / 79% of that bound' in text  # 1.2 * 0.8, 1.05 * 0.75
    assert 'would run at most 1.33x / 1.24x the reference' in text  # 1.2 / 0.9, 1.05 / 0.85: our kernels' bound
    assert f'`{name}` itself runs inference at 50% of the matmul peak' in text and 'would run at 56%' in text  # / 0.9


def test_kernel_time_note_only_where_our_kernels_take_longer():
    """Our kernel time against the reference's, both as fractions of the reference's step: noted from 1.05x up."""
    mine = dict(infer_kernel_share=0.9, train_kernel_share=0.85, infer_speedup=1.2, train_speedup=1.05)
    assert model_cards._kernel_time_note(mine, (0.8, 0.85)) == ''  # 0.9 / 1.2 / 0.8 = 0.94, 0.85 / 1.05 / 0.85 = 0.95
    assert 'take 0.94x / 1.08x the reference' in model_cards._kernel_time_note(mine, (0.8, 0.75))


def test_padded_size_figures_render(tmp_path):
    name = list_variants()[0]
    row = dict(model=name, family='x', kind='ours', compared_to='', params_m=1., gmacs=1., infer_img_s=10.,
               train_img_s=5., gflops=1., peak_fraction=0.5, infer_speedup=None, train_speedup=None,
               step_memory_mb=None, step_memory_ckpt_mb=None, pad_work_256=1.25, pad_cost_256=0.97,
               pad_work_320x480=1.5, pad_cost_320x480=1.04)
    meta = dict(device='dev', dtype='fp32', batch_size=8, img_size=224, threads=2, channels_last=False, compile=False,
                matmul_peak_gflops=100., torch='t', timm='t', date='d')
    (tmp_path / 'dev.json').write_text(json.dumps(dict(meta=meta, rows=[row])))
    text = model_cards.render(model_cards.load_results(tmp_path))
    assert (f'- dev, `{name}`, against 224px: 256: 1.25x the GMACs per real pixel, 0.97x the time per GMAC; '
            f'320x480: 1.50x the GMACs per real pixel, 1.04x the time per GMAC.') in text


LINK = re.compile(r'\[([^\]]*)\]\(([^)]*)\)')
ARXIV_ID = re.compile(r'\d{4}\.\d{4,5}(v\d+)?')


def heading_anchors(markdown: str) -> set:
    """GitHub's anchors for the headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = (line.lstrip('#').strip() for line in markdown.splitlines() if line.startswith('#'))
    return {re.sub(r'[^\w\- ]', '', h.lower()).replace(' ', '-') for h in headings}


def link_problems(markdown: str, folder: Path) -> list:
    """Every Markdown link that is not well formed: an http(s) URL with a host (arXiv ones /abs/<id>,
    matching an arXiv:<id> text), or a file beside the card, with an anchor its headings have."""
    problems = []
    for text, target in LINK.findall(markdown):
        url = urlsplit(target)
        if url.scheme:
            if url.scheme not in ('https', 'http') or not url.netloc or ' ' in target or '//' in url.path:
                problems.append((text, target))
            elif url.netloc == 'arxiv.org':
                number = url.path[len('/abs/'):]
                if not url.path.startswith('/abs/') or not ARXIV_ID.fullmatch(number) or (
                        text.startswith('arXiv:') and text != f'arXiv:{number}'):
                    problems.append((text, target))
            continue
        path, _, anchor = target.partition('#')
        linked = folder / path if path else None
        if linked is not None and not linked.is_file():
            problems.append((text, target))
        elif anchor and anchor not in heading_anchors(linked.read_text() if linked else markdown):
            problems.append((text, target))
    return problems


def test_link_checker_catches_the_broken_kinds(tmp_path):
    broken = ['[https://github.com/x](https://arxiv.org/abs///github.com/x)', '[arXiv:1](https://arxiv.org/abs/1)',
              '[a](no_such_file.md)', '[b](#no-such-heading)', '[arXiv:2204.01697](https://arxiv.org/abs/2104.13840)']
    assert len(link_problems('\n'.join(broken), tmp_path)) == len(broken)
    assert not link_problems('# A heading\n[x](#a-heading) [arXiv:2204.01697](https://arxiv.org/abs/2204.01697) '
                             '[https://github.com/a/b#rvt](https://github.com/a/b#rvt)', tmp_path)


def test_every_link_in_the_cards_is_well_formed(tmp_path):
    """MODEL_CARDS.md, and the README.md export writes for every family (paper ids of both kinds)."""
    text = model_cards.CARDS.read_text()
    assert LINK.search(text) and not link_problems(text, model_cards.CARDS.parent)
    for family in model_cards.timm_vitvariants.MODEL_MODULES:
        folder = export(small_model(family), tmp_path / family, family, repo_id='org/demo')
        card = (folder / 'README.md').read_text()
        paper_ids = timm.create_model(f'{family}_tiny', device='meta').pretrained_cfg['paper_ids']
        for paper_id in [paper_ids] if isinstance(paper_ids, str) else paper_ids:
            assert paper_link(paper_id) in card, (family, paper_id)
        assert not link_problems(card, folder), family
