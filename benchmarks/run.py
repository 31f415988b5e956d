"""``python -m benchmarks.run``: speed, cost and memory of every variant, against references.

One process, one run, so that ratios are fair on a noisy machine: every timed comparison runs
its contenders interleaved (A, B, A, B, ...) and reports medians. Measures, per variant:
  * params, GMACs at the default size (torch.utils.flop_counter, as the variant table);
  * inference images/s and train-step images/s at a fixed batch and size;
  * achieved GFLOP/s in inference as a fraction of the machine's fp32 matrix-multiply peak,
    which the script measures itself at the start and the end of the run;
  * peak training-step memory with and without grad checkpointing (each in a fresh process:
    peak RSS during one forward/backward minus the RSS before it);
and compares, at identical configuration and weights (``from_vit_pytorch``), with the vit-pytorch
model of the family, and with timm's own ``maxvit_tiny_tf_224`` and ``twins_svt_small``.
On a GPU it uses bf16 autocast and channels-last, and ``--compile`` adds torch.compile.

Results go to ``benchmarks/results/<device>.json`` and ``.csv``; a table with the ratios is printed.
``--quick`` runs the small variants (and their references) with fewer repeats.
"""
import argparse
import csv
import ctypes
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

import timm
import timm_vitvariants
from timm_vitvariants.info import count_gmacs, list_variants

from .references import TIMM_COUNTERPARTS, vit_pytorch_reference

RESULTS_DIR = Path(__file__).resolve().parent / 'results'


# --- machine ----------------------------------------------------------------------------------

def tune_malloc() -> bool:
    """Keeps freed memory in glibc's heap instead of returning it to the OS after every large tensor.

    Without it every activation above 128 KiB is a fresh mmap whose pages fault in on first touch;
    on small VMs that makes large element-wise ops several times slower than their arithmetic
    (the same reason Intel recommends jemalloc/tcmalloc for PyTorch on CPU). It applies equally to
    every contender; ``--no-malloc-tuning`` turns it off. Returns whether it was applied.
    """
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    return all([
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 30), libc.mallopt(M_TRIM_THRESHOLD, 1 << 30),
        libc.mallopt(M_TOP_PAD, 256 << 20)])


def device_name(device: torch.device) -> str:
    """A file-name-safe description of the device, e.g. 'cpu-intel-xeon-processor-2t'."""
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open('/proc/cpuinfo') as f:
                name = next(line.split(':', 1)[1] for line in f if line.startswith('model name'))
        except (OSError, StopIteration):
            pass
        name = f'cpu {name} {torch.get_num_threads()}t'
    name = name.lower().replace('(r)', '').replace('(tm)', '')
    return '-'.join(''.join(c if c.isalnum() else ' ' for c in name).split())


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """Best median GFLOP/s of square matrix multiplies (the achievable peak for this dtype)."""
    best = 0.
    for n in (1024, 2048, 4096) + ((8192,) if device.type == 'cuda' else ()):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        times = []
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            a @ b
            synchronize(device)
            times.append(time.perf_counter() - start)
        best = max(best, 2 * n ** 3 / statistics.median(times) / 1e9)
    return best


# --- timing -----------------------------------------------------------------------------------

@dataclass
class Contender:
    """A model under test with its step functions."""
    label: str
    model: nn.Module
    infer: Callable[[], None] = None
    train: Callable[[], None] = None
    times: Dict[str, List[float]] = field(default_factory=lambda: {'infer': [], 'train': []})


def make_steps(contender: Contender, batch: torch.Tensor, amp_dtype: Optional[torch.dtype]) -> None:
    model = contender.model
    device = batch.device
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
    target = torch.randint(0, 1000, (batch.shape[0],), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)

    def infer() -> None:
        model.eval()
        with torch.inference_mode(), autocast():
            model(batch)

    def train() -> None:
        model.train()
        with autocast():
            loss = nn.functional.cross_entropy(model(batch).float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    contender.infer, contender.train = infer, train


def time_interleaved(contenders: List[Contender], kind: str, repeats: int, device: torch.device) -> None:
    """Runs each contender's ``kind`` step in turn, ``repeats`` rounds after two warm-up rounds."""
    for round_index in range(repeats + 2):
        for c in contenders:
            step = getattr(c, kind)
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            if round_index >= 2:
                c.times[kind].append(time.perf_counter() - start)


def speedup(ours: Contender, reference: Contender, kind: str) -> float:
    """Median over rounds of reference time / our time: each ratio compares two runs made back to
    back, so slow drifts of a shared machine cancel out."""
    return statistics.median(r / o for o, r in zip(ours.times[kind], reference.times[kind]))


# --- memory (fresh process per measurement) ---------------------------------------------------

def _rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def memory_probe(name: str, batch_size: int, checkpointing: bool, img_size: int) -> Dict[str, float]:
    """Peak RSS of one training forward/backward beyond the RSS before it (run in a fresh process)."""
    model = timm.create_model(name).train()
    model.set_grad_checkpointing(checkpointing)
    x = torch.randn(batch_size, 3, img_size, img_size)
    model(x[:1]).sum().backward()  # allocate grads and warm up kernels at a small batch
    before = _rss_bytes()
    model(x).sum().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {'step_memory_mb': (peak - before) / 2 ** 20}


def measure_memory(name: str, batch_size: int, checkpointing: bool, img_size: int) -> float:
    cmd = [sys.executable, '-m', 'benchmarks.run', '--memory-probe', name, '--batch-size', str(batch_size),
           '--img-size', str(img_size)] + (['--grad-checkpointing'] if checkpointing else [])
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode:
        raise RuntimeError(f'memory probe for {name} failed:\n{done.stderr[-2000:]}')
    return json.loads(done.stdout.strip().splitlines()[-1])['step_memory_mb']


# --- the run ----------------------------------------------------------------------------------

@dataclass
class Row:
    model: str
    family: str
    kind: str  # 'ours', 'vit-pytorch' or 'timm'
    compared_to: str
    params_m: float
    gmacs: float
    infer_img_s: float
    train_img_s: float
    gflops: float
    peak_fraction: float
    infer_speedup: Optional[float] = None  # ours / reference
    train_speedup: Optional[float] = None
    step_memory_mb: Optional[float] = None
    step_memory_ckpt_mb: Optional[float] = None


def build(name_or_model, device: torch.device, channels_last: bool) -> nn.Module:
    model = timm.create_model(name_or_model) if isinstance(name_or_model, str) else name_or_model
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def summarize(c: Contender, family: str, kind: str, compared_to: str, gmacs: float, batch_size: int,
              peak: float) -> Row:
    infer_s, train_s = statistics.median(c.times['infer']), statistics.median(c.times['train'])
    gflops = 2 * gmacs * batch_size / infer_s
    return Row(
        model=c.label, family=family, kind=kind, compared_to=compared_to,
        params_m=sum(p.numel() for p in c.model.parameters()) / 1e6, gmacs=gmacs,
        infer_img_s=batch_size / infer_s, train_img_s=batch_size / train_s,
        gflops=gflops, peak_fraction=gflops / peak)


def benchmark_family_variant(name: str, args, device, amp_dtype, peak, memory: Dict[str, tuple]) -> List[Row]:
    family = timm.models._registry._model_to_module[name]
    size = args.img_size
    batch = torch.randn(args.batch_size, 3, size, size, device=device)
    if args.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    contenders, rows = [], []

    ours = Contender(name, build(name, device, args.channels_last))
    contenders.append(ours)
    ref_model = vit_pytorch_reference(name)
    pair = None
    if ref_model is not None:
        torch.manual_seed(0)
        converted = timm_vitvariants.from_vit_pytorch(ref_model)
        pair = (Contender(f'{name} (ref config)', build(converted, device, args.channels_last)),
                Contender(f'vit-pytorch {type(ref_model).__name__}', build(ref_model, device, args.channels_last)))
        contenders += list(pair)
    counterpart = TIMM_COUNTERPARTS.get(name)
    timm_c = Contender(counterpart, build(counterpart, device, args.channels_last)) if counterpart else None
    if timm_c:
        contenders.append(timm_c)

    for c in contenders:
        if args.compile:
            c.model = torch.compile(c.model)
        make_steps(c, batch, amp_dtype)
    for kind in ('infer', 'train'):
        time_interleaved(contenders, kind, args.repeats, device)

    gmacs = count_gmacs(timm.create_model(name, device='meta'), (3, size, size))
    rows.append(summarize(ours, family, 'ours', '', gmacs, args.batch_size, peak))
    if pair:
        ref_gmacs = count_gmacs(pair[0].model, (3, size, size))
        mine = summarize(pair[0], family, 'ours', pair[1].label, ref_gmacs, args.batch_size, peak)
        theirs = summarize(pair[1], family, 'vit-pytorch', '', ref_gmacs, args.batch_size, peak)
        mine.infer_speedup, mine.train_speedup = (speedup(pair[0], pair[1], k) for k in ('infer', 'train'))
        rows += [mine, theirs]
    if timm_c:
        timm_gmacs = count_gmacs(timm_c.model, (3, size, size))
        theirs = summarize(timm_c, family, 'timm', '', timm_gmacs, args.batch_size, peak)
        rows[0].compared_to = timm_c.label
        rows[0].infer_speedup, rows[0].train_speedup = (speedup(ours, timm_c, k) for k in ('infer', 'train'))
        rows.append(theirs)
    if name in memory:
        rows[0].step_memory_mb, rows[0].step_memory_ckpt_mb = memory[name]
    return rows


def print_table(rows: List[Row]) -> None:
    def fmt(v, spec):
        return '' if v is None else format(v, spec)
    header = ('model', 'params M', 'GMACs', 'infer img/s', 'train img/s', '% peak', 'vs', 'infer x', 'train x',
              'mem MB', 'ckpt MB')
    table = [header] + [(
        r.model, fmt(r.params_m, '.1f'), fmt(r.gmacs, '.2f'), fmt(r.infer_img_s, '.1f'), fmt(r.train_img_s, '.1f'),
        fmt(100 * r.peak_fraction, '.0f'), r.compared_to, fmt(r.infer_speedup, '.2f'), fmt(r.train_speedup, '.2f'),
        fmt(r.step_memory_mb, '.0f'), fmt(r.step_memory_ckpt_mb, '.0f')) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print('  '.join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m benchmarks.run', description=__doc__.split('\n\n')[0])
    parser.add_argument('models', nargs='*', help='variants to run (default: all, or the small ones with --quick)')
    parser.add_argument('--quick', action='store_true', help='small variants only, fewer repeats, no memory')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--repeats', type=int, default=None, help='timed rounds per contender (default 7, quick 3)')
    parser.add_argument('--memory', action=argparse.BooleanOptionalAction, default=None,
                        help='measure training memory with/without grad checkpointing (CPU; default on unless quick)')
    parser.add_argument('--memory-batch-size', type=int, default=32)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--compile', action='store_true', help='torch.compile every contender')
    parser.add_argument('--out', type=Path, default=None, help='results file stem (default: results/<device>)')
    parser.add_argument('--malloc-tuning', action=argparse.BooleanOptionalAction, default=True,
                        help="keep freed memory in glibc's heap (see tune_malloc); default on")
    # internal: one memory measurement in a fresh process
    parser.add_argument('--memory-probe', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--grad-checkpointing', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.batch_size, args.grad_checkpointing, args.img_size)))
        return 0

    malloc_tuned = args.malloc_tuning and tune_malloc()
    device = torch.device(args.device)
    gpu = device.type == 'cuda'
    amp_dtype = torch.bfloat16 if gpu else None
    args.channels_last = gpu
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.memory = (not args.quick) if args.memory is None else args.memory
    names = args.models or [n for n in list_variants() if not args.quick or n.endswith('_small')]
    unknown = [n for n in names if n not in list_variants()]
    if unknown:
        parser.error(f'unknown variants {unknown}; choose from {list_variants()}')

    torch.manual_seed(0)
    peak_dtype = amp_dtype or torch.float32
    peaks = [matmul_peak(device, peak_dtype)]
    # Memory first, while this process is still small: the probes' peak RSS is only trustworthy while the
    # machine has memory to spare (with this process grown by the timed models, a fresh probe of a
    # checkpointed step measured the un-checkpointed figure: pages reclaimed between 'before' and the peak).
    memory: Dict[str, tuple] = {}
    if args.memory and device.type == 'cpu':
        for name in names:
            print(f'training memory of {name} ...', file=sys.stderr, flush=True)
            memory[name] = tuple(measure_memory(name, args.memory_batch_size, ckpt, args.img_size)
                                 for ckpt in (False, True))
    rows: List[Row] = []
    for name in names:
        print(f'benchmarking {name} ...', file=sys.stderr, flush=True)
        rows += benchmark_family_variant(name, args, device, amp_dtype, peaks[0], memory)
    peaks.append(matmul_peak(device, peak_dtype))
    peak = max(peaks)
    for r in rows:  # report against the best peak seen in the run
        r.peak_fraction = r.gflops / peak

    meta = dict(
        device=device_name(device), torch=torch.__version__, timm=timm.__version__,
        timm_vitvariants=timm_vitvariants.__version__, threads=torch.get_num_threads(),
        dtype='bf16-autocast' if amp_dtype else 'fp32', channels_last=args.channels_last, compile=args.compile,
        batch_size=args.batch_size, img_size=args.img_size, repeats=args.repeats, malloc_tuned=malloc_tuned,
        memory_batch_size=args.memory_batch_size, matmul_peak_gflops=peak, date=time.strftime('%Y-%m-%d'))
    stem = args.out or RESULTS_DIR / meta['device']
    stem.parent.mkdir(parents=True, exist_ok=True)
    with open(stem.with_suffix('.json'), 'w') as f:
        json.dump(dict(meta=meta, rows=[asdict(r) for r in rows]), f, indent=1)
    with open(stem.with_suffix('.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)

    print(f'{meta["device"]}: {peak_dtype} matmul peak {peak:.0f} GFLOP/s, batch {args.batch_size}, '
          f'{args.img_size}px, '
          f'median of {args.repeats} interleaved rounds')
    print_table(rows)
    print(f'wrote {stem.with_suffix(".json")} and .csv')
    return 0


if __name__ == '__main__':
    sys.exit(main())
