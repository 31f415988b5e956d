"""``python -m benchmarks.compare --rev REV``: this working tree against the package at git revision REV,
and both against the references, interleaved in one process (the figures a change's note needs).

The package at REV is read with ``git archive`` into a temporary folder and imported under another name,
so both versions live in one process; each variant is built from both with the same weights (the state
dict of today's model, loaded by name into REV's where the layout is unchanged). Per variant and size: inference and train-step
images/s, medians over interleaved rounds, with ratios today / REV, today / vit-pytorch (same config
and weights) and, for ``maxvit_reg_tiny``, today / timm's ``maxvit_tiny_tf_224`` (at 224). ``--ref-config``
builds every side at the vit-pytorch reference's configuration instead (the targets' rows of
``benchmarks.run``). Sizes that
need padding are reported per real pixel against the first size. Nothing is written; the table is the
result.
"""
import argparse
import importlib
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import torch

import timm
import timm_vitvariants

from .references import TIMM_COUNTERPARTS, vit_pytorch_reference
from .run import Contender, PeakProbe, default_heap_gib, make_steps, matmul_peak, time_interleaved
from .run import tune_malloc, warm_heap

REPO = Path(__file__).resolve().parent.parent


def import_revision(rev: str, folder: Path):
    """The package as it was at ``rev``, importable as ``timm_vitvariants_<rev>`` (it registers nothing new:
    timm's registry keeps today's entry points first, REV's models are built from their classes)."""
    name = f'timm_vitvariants_{rev}'.replace('-', '_').replace('.', '_')
    archive = subprocess.run(['git', 'archive', rev, 'timm_vitvariants'], cwd=REPO, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter='data')
    (folder / 'timm_vitvariants').rename(folder / name)
    sys.path.insert(0, str(folder))
    saved = dict(timm.models._registry._model_entrypoints)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # timm warns that REV re-registers today's names
        module = importlib.import_module(name)
    timm.models._registry._model_entrypoints.update(saved)  # today's models keep their names
    return module


def revision_model(package, name: str, today: torch.nn.Module) -> torch.nn.Module:
    """The same variant in the package at REV (its class, today's recorded arguments), with today's weights
    where the layouts agree (timing does not depend on the values; a changed layout keeps REV's init)."""
    family = importlib.import_module(f'{package.__name__}.{type(today).__module__.rsplit(".", 1)[-1]}')
    cls = getattr(family, type(today).__name__)
    model = cls(**{k: v for k, v in today.model_args.items() if k != 'img_size'})
    try:
        model.load_state_dict(today.state_dict())
    except RuntimeError:
        print(f'  {name}: the state-dict layout changed since REV, REV keeps its own initial weights')
    return model


def takes(model: torch.nn.Module, batch: torch.Tensor) -> bool:
    """Whether ``model`` runs at this size (REV or vit-pytorch may refuse sizes today's code takes)."""
    try:
        with torch.no_grad():
            model.eval()(batch[:1])
        return True
    except (ValueError, AssertionError, RuntimeError) as e:
        print(f'  {type(model).__module__}.{type(model).__name__} skipped at {tuple(batch.shape[-2:])}: '
              f'{str(e).splitlines()[0][:100]}')
        return False


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rev', required=True, help='git revision to compare with (e.g. the last landed commit)')
    parser.add_argument('--variants', nargs='+', default=['maxvit_reg_tiny'])
    parser.add_argument('--sizes', nargs='+', type=int, default=[224, 256], help='square input sides')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--no-train', action='store_true', help='inference only')
    parser.add_argument('--ref-config', action='store_true',
                        help="each variant at its vit-pytorch reference's configuration (from_vit_pytorch, NCHW, as "
                             "benchmarks.run times it on a CPU) instead of the registered one")
    args = parser.parse_args(argv)
    if tune_malloc():
        warm_heap(default_heap_gib())
    torch.manual_seed(0)
    device = torch.device('cpu')
    peak, peak_n, peak_kernel = matmul_peak(device, torch.float32)
    probe = PeakProbe.lasting(0.2, peak_n, peak, device, torch.float32, peak_kernel)
    kinds = ['infer'] if args.no_train else ['infer', 'train']
    print(f'fp32 matmul peak {peak:.0f} GFLOP/s; batch {args.batch_size}, {args.rounds} rounds, '
          f'{torch.get_num_threads()} threads; today vs {args.rev}')
    with tempfile.TemporaryDirectory() as tmp:
        package = import_revision(args.rev, Path(tmp))
        for name in args.variants:
            reference = vit_pytorch_reference(name)
            if args.ref_config:
                if reference is None:
                    raise SystemExit(f'{name} has no vit-pytorch reference')
                # REV's own class with the converted model's arguments and weights (REV's from_vit_pytorch
                # would build today's classes: the converters resolve families by today's module names)
                today = timm_vitvariants.from_vit_pytorch(reference)
                contenders = {'today': today, args.rev: revision_model(package, name, today)}
            else:
                today = timm.create_model(name).to(memory_format=torch.channels_last)
                contenders = {
                    'today': today,
                    args.rev: revision_model(package, name, today).to(memory_format=torch.channels_last),
                }
            if reference is not None:
                contenders['vit-pytorch'] = reference
            per_pixel: Dict[str, float] = {}
            for size in args.sizes:
                batch = torch.randn(args.batch_size, 3, size, size)
                if not args.ref_config:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                runners = dict(contenders)
                counterpart = TIMM_COUNTERPARTS.get(name)
                if counterpart and size == 224 and not args.ref_config:
                    runners[counterpart] = timm.create_model(counterpart).to(memory_format=torch.channels_last)
                timed = [Contender(label, model) for label, model in runners.items() if takes(model, batch)]
                for c in timed:
                    make_steps(c, batch, None)
                for kind in kinds:
                    print(f'  {name} {size}px {kind}: timing {", ".join(c.label for c in timed)}', flush=True)
                    time_interleaved(timed, kind, args.rounds, device, probe)
                ours = timed[0]
                for kind in kinds:
                    rate = args.batch_size / statistics.median(ours.times[kind])
                    line = f'{name} {size}px {kind}: today {rate:.2f} img/s'
                    for other in timed[1:]:
                        ratios = [o / t for t, o in zip(ours.times[kind], other.times[kind])]
                        line += f', x{statistics.median(ratios):.3f} vs {other.label}'
                    if kind == 'infer':
                        per_pixel[size] = rate * size * size
                        line += f', {per_pixel[size] / per_pixel[args.sizes[0]]:.3f} x the per-pixel rate at {args.sizes[0]}'
                    print(line, flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
