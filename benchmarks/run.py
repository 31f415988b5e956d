"""``python -m benchmarks.run``: speed, cost and memory of every variant, against references.

One process, one run, so that ratios are fair on a noisy machine: every timed comparison runs
its contenders interleaved (A, B, A, B, ...) and reports medians. Measures, per variant:
  * params, GMACs at the default size (torch.utils.flop_counter, as the variant table);
  * inference images/s and train-step images/s at a fixed batch and size;
  * achieved GFLOP/s in inference as a fraction of the machine's fp32 matrix-multiply peak, which
    the script measures itself: a sweep of square sizes and GEMM kernels (torch.mm, and oneDNN's on a
    CPU) picks the fastest, then that multiply runs once in every timed round, so each round's fraction
    divides by the peak of the same moment;
  * where the time goes: one profiled inference step and one profiled train step per contender
    (torch.profiler), split into matrix-multiply/convolution/attention kernels and everything else;
    a model whose kernels all stay gives at most 1 / (its kernel share) to a rewrite that removes
    everything else, which bounds the speedup any implementation with the same kernels can reach;
  * at padded sizes (``PADDED_SIZES``: 256, 320x480), inference time per GMAC against the default size,
    GMACs counted at each size, padding included: 1 means padding costs its own work and nothing more;
  * peak training-step memory with and without grad checkpointing (each in a fresh process:
    peak RSS during one forward/backward minus the RSS before it);
and compares, at identical configuration and weights (``from_vit_pytorch``), with the vit-pytorch
model of the family, and with timm's own ``maxvit_tiny_tf_224`` and ``twins_svt_small``.
On a GPU it uses bf16 autocast and channels-last, and ``--compile`` adds torch.compile.

Results go to ``benchmarks/results/<device>.json`` and ``.csv`` (an existing file is replaced only with
``--overwrite``); a table with the ratios is printed.
``--quick`` runs one variant per family, the ones the targets name (``maxvit_reg_tiny`` and the
other families' small variants), with 2 timed rounds after 1 warm-up, no memory probes or padded
sizes, and only the vit-pytorch references profiled (their kernel shares are the bounds), and writes to
``results/quick/`` (ignored by git and by the model cards).
Stderr shows a progress line per variant and per timed or profiled group of contenders, and none of the
profiler's own C++ chatter (``USDT: ...``, ``gpuGetDeviceCount failed``: see ``PROFILER_NOISE``).
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
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

import timm
import timm_vitvariants
from timm_vitvariants import layers
from timm_vitvariants.info import count_gmacs, list_variants

from .references import TIMM_COUNTERPARTS, is_exact_reference, vit_pytorch_reference

RESULTS_DIR = Path(__file__).resolve().parent / 'results'  # what the model cards are made from
QUICK_DIR = RESULTS_DIR / 'quick'  # --quick results: a look, not for the cards (git ignores the folder)
# --quick: one variant per family, the ones the speed targets name
QUICK = ('maxvit_reg_tiny', 'regionvit_small', 'rvt_small', 'scalablevit_small', 'twinssvt_small')


# --- machine ----------------------------------------------------------------------------------

def tune_malloc() -> bool:
    """Keeps freed memory in glibc's heap instead of returning it to the OS after every large tensor.

    Without it every activation above 128 KiB is a fresh mmap whose pages fault in on first touch;
    on small VMs that makes large element-wise ops several times slower than their arithmetic
    (the same reason Intel recommends jemalloc/tcmalloc for PyTorch on CPU). One arena for every thread:
    a worker thread's own arena maps and unmaps its large blocks whatever the thresholds (vit-pytorch's
    MaxViT small took 37.6k page faults per train step that way, 3.30 s a step against 3.06 s with one
    arena; ours 3.6k). It applies equally to every contender, called before any worker thread allocates;
    ``--no-malloc-tuning`` turns it off. Returns whether it was applied.
    """
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -2, -3, -8
    return all([
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 30), libc.mallopt(M_TRIM_THRESHOLD, 1 << 30),
        libc.mallopt(M_TOP_PAD, 256 << 20), libc.mallopt(M_ARENA_MAX, 1)])


def warm_heap(gib: float) -> float:
    """Touches ``gib`` GiB of glibc's heap once and frees it, for good (heap trimming off): the pages stay
    mapped, so a step that grows the heap into them takes no page faults. Without it the heap kept
    growing into fresh pages for many steps (a freed block is often a few bytes too small for the next
    aligned request of the same size), and on this kind of VM a first touch costs ~6 us a page: a
    maxvit_reg_small train step (batch 8) took 0-110k faults, up to +0.3 s of 2.8 s, landing on whatever op
    touched the new memory (a profiled step's GELU backward at 287 ms instead of 50). With 6 GiB warmed: 0
    faults a step from the second on, ours 2.77 s and vit-pytorch's 3.01 s within 1% round to round.
    Call it after ``tune_malloc`` (its 1 GiB mmap threshold keeps every tensor on the heap) and after the
    memory probes (which measure RSS growth). Returns the GiB warmed."""
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return 0.
    M_TRIM_THRESHOLD = -1
    libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
    if gib <= 0 or not libc.mallopt(M_TRIM_THRESHOLD, -1):  # -1: the largest threshold, never trim
        return 0.
    chunk = 256 << 20  # below the mmap threshold: heap memory, which stays mapped once freed
    blocks = [libc.malloc(chunk) for _ in range(int(gib * (1 << 30)) // chunk)]
    for block in blocks:
        if block:
            ctypes.memset(block, 0, chunk)
    for block in blocks:
        libc.free(block)
    return sum(1 for b in blocks if b) * chunk / (1 << 30)


def default_heap_gib() -> float:
    """Half the memory available now, at most 8 GiB (a base variant's train step at batch 8 fits)."""
    try:
        with open('/proc/meminfo') as f:
            available = next(int(line.split()[1]) for line in f if line.startswith('MemAvailable')) / (1 << 20)
    except (OSError, StopIteration):
        return 0.
    return min(8., available / 2)


def source_commit() -> Optional[str]:
    """The git commit measured (with '+changes' when the work tree differs), or None outside a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ('+changes' if dirty else '')


def device_name(device: torch.device) -> str:
    """A file-name-safe description of the device, e.g. 'cpu-amd-epyc-avx512-2t'. A CPU's vector ISA is part
    of it: hosts under one model name differ there, and with it the balance of MKL's and oneDNN's kernels."""
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open('/proc/cpuinfo') as f:
                name = next(line.split(':', 1)[1] for line in f if line.startswith('model name'))
        except (OSError, StopIteration):
            pass
        name = f'cpu {name} {torch.backends.cpu.get_cpu_capability()} {torch.get_num_threads()}t'
    name = name.lower().replace('(r)', '').replace('(tm)', '')
    return '-'.join(''.join(c if c.isalnum() else ' ' for c in name).split())


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _onednn_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(a, b, None, 'none', [], '')  # a @ b^T: the same FLOPs


def gemm_kernels(device: torch.device, dtype: torch.dtype) -> Dict[str, Callable]:
    """The GEMMs the peak is the best of: torch.mm, and on a CPU oneDNN's (what the models' linears and
    convs may run on: MKL's sgemm, behind torch.mm there, can be the slower of the two, see layers.onednn_gemm)."""
    kernels = {'torch.mm': torch.mm}
    if device.type == 'cpu' and dtype == torch.float32 and layers._ONEDNN_FUSION:
        kernels['oneDNN'] = _onednn_mm
    return kernels


def matmul_peak(
        device: torch.device, dtype: torch.dtype, repeats: int = 5, sizes: Optional[Tuple[int, ...]] = None,
) -> Tuple[float, int, str]:
    """(best median GFLOP/s, its size, its kernel) over square matrix multiplies of ``sizes`` (default 1024
    to 4096, and 8192 on a GPU) and the :func:`gemm_kernels`: the achievable peak for this dtype."""
    best, best_n, best_kernel = 0., 0, ''
    for n in sizes or (1024, 2048, 3072, 4096) + ((8192,) if device.type == 'cuda' else ()):
        for kernel in gemm_kernels(device, dtype):
            probe = PeakProbe(n, device, dtype, kernel=kernel)
            probe()  # warm-up
            gflops = probe.flops / statistics.median(timed(probe, device) for _ in range(repeats)) / 1e9
            if gflops > best:
                best, best_n, best_kernel = gflops, n, kernel
    return best, best_n, best_kernel


class PeakProbe:
    """``multiplies`` n x n x n matrix multiplies by ``kernel`` (see :func:`gemm_kernels`), re-timed in every
    round next to the models."""

    def __init__(self, n: int, device: torch.device, dtype: torch.dtype, multiplies: int = 1,
                 kernel: str = 'torch.mm'):
        self.a = torch.randn(n, n, device=device, dtype=dtype)
        self.b = torch.randn(n, n, device=device, dtype=dtype)
        self.n, self.multiplies, self.kernel = n, multiplies, kernel
        self.multiply = gemm_kernels(torch.device(device), dtype)[kernel]
        self.flops = 2 * n ** 3 * multiplies
        self.gflops: List[float] = []  # one figure per timed round, over the whole run

    def __call__(self) -> None:
        for _ in range(self.multiplies):
            self.multiply(self.a, self.b)

    @classmethod
    def lasting(cls, seconds: float, n: int, gflops: float, device: torch.device, dtype: torch.dtype,
                kernel: str = 'torch.mm') -> 'PeakProbe':
        """A probe of at least one multiply and about ``seconds`` at ``gflops``: long enough that one
        hiccup does not decide a round (the peak size itself may take longer)."""
        return cls(n, device, dtype, multiplies=max(1, round(seconds * gflops * 1e9 / (2 * n ** 3))), kernel=kernel)


def timed(step: Callable[[], None], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


# --- timing -----------------------------------------------------------------------------------

@dataclass
class Contender:
    """A model under test with its step functions."""
    label: str
    model: nn.Module
    infer: Callable[[], None] = None
    train: Callable[[], None] = None
    times: Dict[str, List[float]] = field(default_factory=lambda: {'infer': [], 'train': []})
    kernel_share: Dict[str, float] = field(default_factory=dict)


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


def time_interleaved(
        contenders: List[Contender], kind: str, repeats: int, device: torch.device, probe: PeakProbe,
        warmup: int = 2,
) -> List[float]:
    """Runs each contender's ``kind`` step in turn, ``repeats`` rounds after ``warmup`` rounds, and the
    peak probe once per round. Returns the probe's GFLOP/s per timed round.

    Each round starts one contender further along, so every contender runs in every position (first after
    the probe, after each other contender) equally often: with a fixed order, the same model timed twice on a
    2-core AMD EPYC VM ran up to 7% slower in the first place than in the second, and two versions of one
    model measured -4.5% in one order and +3.5% alternating."""
    peaks = []
    for round_index in range(repeats + warmup):
        start = round_index % len(contenders) if contenders else 0
        for c in contenders[start:] + contenders[:start]:
            elapsed = timed(getattr(c, kind), device)
            if round_index >= warmup:
                c.times[kind].append(elapsed)
        if round_index >= warmup:  # a warm-up round's peak would be thrown away
            peaks.append(probe.flops / timed(probe, device) / 1e9)
    probe.gflops += peaks
    return peaks


def speedup(ours: Contender, reference: Contender, kind: str) -> Tuple[float, float, float]:
    """(first quartile, median, third quartile) over rounds of reference time / our time: each ratio
    compares two runs made back to back, so slow drifts of a shared machine cancel; the spread shows
    what does not."""
    ratios = [r / o for o, r in zip(ours.times[kind], reference.times[kind])]
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    low, median, high = statistics.quantiles(ratios, n=4, method='inclusive')
    return low, statistics.median(ratios), high


# --- where the time goes ----------------------------------------------------------------------

# The ops both implementations spend on arithmetic proper: matrix multiplies, convolutions (forward and
# backward), fused attention. Everything else (norms, activations, copies, reshapes, adds) is overhead a
# rewrite can remove; the kernels stay as long as the configuration does.
KERNEL_OPS = (
    'aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm', 'aten::mkldnn_convolution',
    'aten::convolution_backward', 'aten::_scaled_dot_product_flash_attention_for_cpu',
    'aten::_scaled_dot_product_flash_attention_for_cpu_backward', 'aten::_scaled_dot_product_flash_attention',
    'aten::_scaled_dot_product_flash_attention_backward', 'aten::_scaled_dot_product_efficient_attention',
    'aten::_scaled_dot_product_efficient_attention_backward', 'aten::_scaled_dot_product_cudnn_attention',
    'aten::_scaled_dot_product_cudnn_attention_backward', 'aten::_flash_attention_forward',
    'aten::_flash_attention_backward', 'aten::_efficient_attention_forward', 'aten::_efficient_attention_backward',
    'aten::cudnn_convolution', 'aten::cudnn_convolution_transpose', 'aten::_convolution',
    # oneDNN's linear / conv with the bias and a pointwise op (GELU, a product) fused in (layers.onednn_fusable)
    'mkldnn::_linear_pointwise', 'mkldnn::_convolution_pointwise',
)

# What the profiler's C++ side prints to the process's stderr on every CPU run (kineto's trace markers, its
# failed look for a GPU): noise that reads like failures, so it is kept off the terminal.
PROFILER_NOISE = ('USDT:', 'gpuGetDeviceCount failed')


@contextmanager
def profiler_noise_filtered() -> Iterator[None]:
    """Catches what is written to file descriptor 2 (C++ writes bypass ``sys.stderr``) and passes on every
    line but ``PROFILER_NOISE``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().decode(errors='replace').splitlines(keepends=True)
                    if not any(noise in line for noise in PROFILER_NOISE)]
            sys.stderr.write(''.join(kept))
            sys.stderr.flush()


def kernel_share(step: Callable[[], None], device: torch.device) -> Optional[float]:
    """The fraction of one step's op time spent in ``KERNEL_OPS``: CPU self time on the CPU; on a GPU the
    device time of the kernels each op launched (op events only: the kernels' own events would count
    twice). None when nothing was recorded."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == 'cuda'
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profiler_noise_filtered(), profile(activities=activities) as prof:
        step()
        synchronize(device)
    attr = 'self_device_time_total' if cuda else 'self_cpu_time_total'
    totals = {e.key: getattr(e, attr, 0.) for e in prof.key_averages() if e.device_type == DeviceType.CPU}
    total = sum(totals.values())
    return sum(t for k, t in totals.items() if k in KERNEL_OPS) / total if total > 0 else None


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


def measure_memory(name: str, batch_size: int, checkpointing: bool, img_size: int) -> Optional[float]:
    """The probe's figure, or None (with a warning) when it could not finish, e.g. killed for memory."""
    cmd = [sys.executable, '-m', 'benchmarks.run', '--memory-probe', name, '--batch-size', str(batch_size),
           '--img-size', str(img_size)] + (['--grad-checkpointing'] if checkpointing else [])
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode:
        print(f'warning: memory probe for {name} (grad checkpointing {checkpointing}) failed with exit status '
              f'{done.returncode}, recorded as missing: {done.stderr.strip()[-300:]}', file=sys.stderr)
        return None
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
    infer_speedup: Optional[float] = None  # reference time / ours: the median over rounds
    train_speedup: Optional[float] = None
    infer_speedup_q1: Optional[float] = None  # quartiles of the per-round ratios
    infer_speedup_q3: Optional[float] = None
    train_speedup_q1: Optional[float] = None
    train_speedup_q3: Optional[float] = None
    step_memory_mb: Optional[float] = None
    step_memory_ckpt_mb: Optional[float] = None
    infer_kernel_share: Optional[float] = None  # fraction of op time in matmul/conv/attention kernels
    train_kernel_share: Optional[float] = None
    # at the PADDED_SIZES, against img_size: GMACs per real pixel (> 1: the padding's own work) and inference
    # time per GMAC (1: the padding costs its own work and nothing else; the target is <= 1)
    pad_work_256: Optional[float] = None
    pad_cost_256: Optional[float] = None
    pad_work_320x480: Optional[float] = None
    pad_cost_320x480: Optional[float] = None


# Sizes that need padding in most families (windows of 7 do not divide a 256 px map at any stage), one of
# them not square; Row's pad_* fields are named after them.
PADDED_SIZES = ((256, 256), (320, 480))


def size_label(size: Tuple[int, int]) -> str:
    return str(size[0]) if size[0] == size[1] else f'{size[0]}x{size[1]}'


def padded_costs(
        ours: Contender, name: str, base_gmacs: float, args, device: torch.device, amp_dtype: Optional[torch.dtype],
        probe: PeakProbe,
) -> Dict[str, float]:
    """Row's pad_* fields: inference at img_size (``base_gmacs`` there, the row's own count) and at every
    PADDED_SIZES size, interleaved; per round, time per GMAC at the size over time per GMAC at img_size
    (GMACs counted at each size, padding included)."""
    base = (args.img_size, args.img_size)
    meta = timm.create_model(name, device='meta')
    sizes = [base, *PADDED_SIZES]
    runs = []
    for h, w in sizes:
        c = Contender(f'{name} {h}x{w}', ours.model)
        batch = torch.randn(args.batch_size, 3, h, w, device=device)
        make_steps(c, batch.contiguous(memory_format=torch.channels_last) if args.channels_last else batch, amp_dtype)
        runs.append(c)
    time_interleaved(runs, 'infer', args.repeats, device, probe, args.warmup)
    gmacs = [base_gmacs] + [count_gmacs(meta, (3, h, w)) for h, w in PADDED_SIZES]
    out = {}
    for (h, w), c, g in zip(sizes[1:], runs[1:], gmacs[1:]):
        label = size_label((h, w))
        out[f'pad_work_{label}'] = (g / (h * w)) / (gmacs[0] / (base[0] * base[1]))
        out[f'pad_cost_{label}'] = statistics.median(
            (t / g) / (t0 / gmacs[0]) for t, t0 in zip(c.times['infer'], runs[0].times['infer']))
    return out


def build(name_or_model, device: torch.device, channels_last: bool) -> nn.Module:
    model = timm.create_model(name_or_model) if isinstance(name_or_model, str) else name_or_model
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def summarize(c: Contender, family: str, kind: str, compared_to: str, gmacs: float, batch_size: int,
              peaks: List[float]) -> Row:
    infer_s, train_s = statistics.median(c.times['infer']), statistics.median(c.times['train'])
    round_gflops = [2 * gmacs * batch_size / t for t in c.times['infer']]
    return Row(
        model=c.label, family=family, kind=kind, compared_to=compared_to,
        params_m=sum(p.numel() for p in c.model.parameters()) / 1e6, gmacs=gmacs,
        infer_img_s=batch_size / infer_s, train_img_s=batch_size / train_s,
        gflops=2 * gmacs * batch_size / infer_s,
        # each round against the peak probe of the same round: slow drifts of the machine cancel
        peak_fraction=statistics.median(g / p for g, p in zip(round_gflops, peaks)),
        infer_kernel_share=c.kernel_share.get('infer'), train_kernel_share=c.kernel_share.get('train'))


def benchmark_family_variant(
        name: str, args, device, amp_dtype, probe: PeakProbe, memory: Dict[str, tuple],
) -> List[Row]:
    family = timm.models._registry._model_to_module[name]
    size = args.img_size
    batch = torch.randn(args.batch_size, 3, size, size, device=device)
    if args.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)

    ref_model = vit_pytorch_reference(name)
    mine = theirs = None
    if ref_model is not None:
        torch.manual_seed(0)
        converted = timm_vitvariants.from_vit_pytorch(ref_model)
        mine = Contender(f'{name} (ref config)', build(converted, device, args.channels_last))
        theirs = Contender(f'vit-pytorch {type(ref_model).__name__} ({name} config)',
                           build(ref_model, device, args.channels_last))
    # where the reference is exactly the variant, the converted model is the variant: time it once
    exact = mine is not None and is_exact_reference(name)
    ours = Contender(name, mine.model) if exact else Contender(name, build(name, device, args.channels_last))
    counterpart = TIMM_COUNTERPARTS.get(name)
    timm_c = Contender(counterpart, build(counterpart, device, args.channels_last)) if counterpart else None
    contenders = [c for c in (ours, None if exact else mine, theirs, timm_c) if c is not None]

    for c in contenders:
        if args.compile:
            c.model = torch.compile(c.model)
        make_steps(c, batch, amp_dtype)
    peaks = {}
    for kind in ('infer', 'train'):
        print(f'  {kind}: {", ".join(c.label for c in contenders)}, {args.repeats} rounds', file=sys.stderr, flush=True)
        peaks[kind] = time_interleaved(contenders, kind, args.repeats, device, probe, args.warmup)
    if args.profile:
        # --quick profiles only the vit-pytorch reference, whose kernel shares make the bounds: a profiled
        # train step costs as much as a timed round
        profiled = [c for c in (theirs,) if c is not None] if args.quick else contenders
        for c in profiled:
            print(f'  profiling {c.label}', file=sys.stderr, flush=True)
            c.kernel_share = {kind: kernel_share(getattr(c, kind), device) for kind in ('infer', 'train')}
    if exact:
        mine.times, mine.kernel_share = ours.times, ours.kernel_share

    counted: Dict[int, float] = {}  # GMACs by model: a model in two rows is counted once (~1 s a count)

    def row(c: Contender, kind: str, model: nn.Module, against: Optional[Contender] = None) -> Row:
        model = getattr(model, '_orig_mod', model)  # counted uncompiled under --compile
        if id(model) not in counted:
            counted[id(model)] = count_gmacs(model, (3, size, size))
        summary = summarize(c, family, kind, against.label if against else '', counted[id(model)],
                            args.batch_size, peaks['infer'])
        if against is not None:
            summary.infer_speedup_q1, summary.infer_speedup, summary.infer_speedup_q3 = speedup(c, against, 'infer')
            summary.train_speedup_q1, summary.train_speedup, summary.train_speedup_q3 = speedup(c, against, 'train')
        return summary

    rows = [row(ours, 'ours', ours.model, timm_c)]
    if args.padded:
        print(f'  {name} at {", ".join(size_label(s) for s in PADDED_SIZES)} ...', file=sys.stderr, flush=True)
        for key, value in padded_costs(ours, name, rows[0].gmacs, args, device, amp_dtype, probe).items():
            setattr(rows[0], key, value)
    if mine is not None:
        rows += [row(mine, 'ours', converted, theirs), row(theirs, 'vit-pytorch', converted)]
    if timm_c:
        rows.append(row(timm_c, 'timm', timm_c.model))
    if name in memory:
        rows[0].step_memory_mb, rows[0].step_memory_ckpt_mb = memory[name]
    return rows


def print_table(rows: List[Row]) -> None:
    def fmt(v, spec, scale=1.):
        return '' if v is None else format(scale * v, spec)
    header = ('model', 'params M', 'GMACs', 'infer img/s', 'train img/s', '% peak', 'vs', 'infer x', 'train x',
              'kernels % infer', 'kernels % train', 'mem MB', 'ckpt MB',
              *[f'{size_label(s)} work/cost' for s in PADDED_SIZES])
    table = [header] + [(
        r.model, fmt(r.params_m, '.1f'), fmt(r.gmacs, '.2f'), fmt(r.infer_img_s, '.1f'), fmt(r.train_img_s, '.1f'),
        fmt(r.peak_fraction, '.0f', 100), r.compared_to, fmt(r.infer_speedup, '.2f'), fmt(r.train_speedup, '.2f'),
        fmt(r.infer_kernel_share, '.0f', 100), fmt(r.train_kernel_share, '.0f', 100),
        fmt(r.step_memory_mb, '.0f'), fmt(r.step_memory_ckpt_mb, '.0f'),
        *[_work_cost(r, size_label(s)) for s in PADDED_SIZES]) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print('  '.join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())


def _work_cost(row: Row, label: str) -> str:
    work, cost = getattr(row, f'pad_work_{label}'), getattr(row, f'pad_cost_{label}')
    return '' if work is None else f'{work:.2f}/{cost:.2f}'


def speedup_bound(kernel_share: Optional[float]) -> Optional[float]:
    """The most a rewrite that keeps a model's matmul/conv/attention kernels can gain: everything else gone."""
    return 1 / kernel_share if kernel_share else None


def time_budget_lines(rows: List[Row]) -> List[str]:
    """Where the references' time goes, and what that leaves for a faster implementation."""
    lines = []
    for r in rows:
        bounds = (speedup_bound(r.infer_kernel_share), speedup_bound(r.train_kernel_share))
        if r.kind == 'vit-pytorch' and None not in bounds:
            lines.append(
                f'{r.model}: {100 * r.infer_kernel_share:.0f}% of inference and {100 * r.train_kernel_share:.0f}% of '
                f'a train step in matmul/conv/attention kernels; with those kernels unchanged no implementation '
                f'gets past {bounds[0]:.2f}x / {bounds[1]:.2f}x')
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m benchmarks.run', description=__doc__.split('\n\n')[0])
    parser.add_argument('models', nargs='*', help='variants to run (default: all, or the small ones with --quick)')
    parser.add_argument('--quick', action='store_true',
                        help=f'only {", ".join(QUICK)}; fewer rounds, no memory probes or padded sizes')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--repeats', type=int, default=None, help='timed rounds per contender (default 9, quick 2)')
    parser.add_argument('--warmup', type=int, default=None, help='untimed rounds first (default 2, quick 1)')
    parser.add_argument('--profile', action=argparse.BooleanOptionalAction, default=True,
                        help='one profiled step per contender and kind: the matmul/conv kernel share (default on; '
                             'quick: the vit-pytorch references only)')
    parser.add_argument('--memory', action=argparse.BooleanOptionalAction, default=None,
                        help='measure training memory with/without grad checkpointing (CPU; default on unless quick)')
    parser.add_argument('--memory-batch-size', type=int, default=32)
    parser.add_argument('--padded', action=argparse.BooleanOptionalAction, default=None,
                        help=f'inference cost per GMAC at {", ".join(size_label(s) for s in PADDED_SIZES)} '
                             f'against --img-size (default on unless quick)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--compile', action='store_true', help='torch.compile every contender')
    parser.add_argument('--out', type=Path, default=None,
                        help='results file stem (default: results/<device>, results/quick/<device> with --quick)')
    parser.add_argument('--overwrite', action='store_true', help='replace existing results files')
    parser.add_argument('--malloc-tuning', action=argparse.BooleanOptionalAction, default=True,
                        help="keep freed memory in glibc's heap (see tune_malloc); default on")
    parser.add_argument('--warm-heap', type=float, default=None, metavar='GIB',
                        help='with malloc tuning, GiB of heap to fault in before timing (see warm_heap; '
                             'default: half the available memory, at most 8)')
    # internal: one memory measurement in a fresh process
    parser.add_argument('--memory-probe', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--grad-checkpointing', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.batch_size, args.grad_checkpointing, args.img_size)))
        return 0

    device = torch.device(args.device)
    gpu = device.type == 'cuda'
    amp_dtype = torch.bfloat16 if gpu else None
    args.channels_last = gpu
    args.repeats = args.repeats or (2 if args.quick else 9)
    args.warmup = (1 if args.quick else 2) if args.warmup is None else args.warmup
    args.memory = (not args.quick) if args.memory is None else args.memory
    args.padded = (not args.quick) if args.padded is None else args.padded
    names = args.models or (list(QUICK) if args.quick else list_variants())
    unknown = [n for n in names if n not in list_variants()]
    if unknown:
        parser.error(f'unknown variants {unknown}; choose from {list_variants()}')

    stem = args.out or (QUICK_DIR if args.quick else RESULTS_DIR) / device_name(device)
    existing = [str(p) for p in (stem.with_suffix('.json'), stem.with_suffix('.csv')) if p.exists()]
    if existing and not args.overwrite:  # checked before minutes of measuring, not after
        parser.error(f'{" and ".join(existing)} already exist: pass --overwrite to replace them, '
                     f'or --out to write elsewhere')
    malloc_tuned = args.malloc_tuning and tune_malloc()

    commit = source_commit()  # now: the code measured, whatever is committed during the run
    torch.manual_seed(0)
    peak_dtype = amp_dtype or torch.float32
    # --quick: one size instead of the sweep (~15 s on 2 cores); the per-round probe gives the figure either way
    sweep = dict(repeats=3, sizes=(2048,)) if args.quick else {}
    sweep_peak, peak_size, peak_kernel = matmul_peak(device, peak_dtype, **sweep)
    probe = PeakProbe.lasting(0.2, peak_size, sweep_peak, device, peak_dtype, peak_kernel)
    # Memory first, while this process is still small: the probes' peak RSS is only trustworthy while the
    # machine has memory to spare (with this process grown by the timed models, a fresh probe of a
    # checkpointed step measured the un-checkpointed figure: pages reclaimed between 'before' and the peak).
    memory: Dict[str, tuple] = {}
    if args.memory and device.type == 'cpu':
        for name in names:
            print(f'training memory of {name} ...', file=sys.stderr, flush=True)
            memory[name] = tuple(measure_memory(name, args.memory_batch_size, ckpt, args.img_size)
                                 for ckpt in (False, True))
    heap_gib = default_heap_gib() if args.warm_heap is None else args.warm_heap
    warmed_gib = warm_heap(heap_gib) if malloc_tuned else 0.
    rows: List[Row] = []
    for name in names:
        print(f'benchmarking {name} ...', file=sys.stderr, flush=True)
        rows += benchmark_family_variant(name, args, device, amp_dtype, probe, memory)
    peak = statistics.median(probe.gflops)

    meta = dict(
        device=device_name(device), torch=torch.__version__, timm=timm.__version__,
        timm_vitvariants=timm_vitvariants.__version__, commit=commit, threads=torch.get_num_threads(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        dtype='bf16-autocast' if amp_dtype else 'fp32', channels_last=args.channels_last, compile=args.compile,
        batch_size=args.batch_size, img_size=args.img_size, repeats=args.repeats, malloc_tuned=malloc_tuned,
        warm_heap_gib=round(warmed_gib, 2),
        memory_batch_size=args.memory_batch_size, matmul_peak_gflops=peak, matmul_peak_size=peak_size,
        matmul_peak_kernel=peak_kernel, matmul_peak_sweep_gflops=sweep_peak, warmup=args.warmup, quick=args.quick,
        date=time.strftime('%Y-%m-%d'))
    stem.parent.mkdir(parents=True, exist_ok=True)
    with open(stem.with_suffix('.json'), 'w') as f:
        json.dump(dict(meta=meta, rows=[asdict(r) for r in rows]), f, indent=1)
    with open(stem.with_suffix('.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)

    print(f'{meta["device"]}: {peak_dtype} matmul peak {peak:.0f} GFLOP/s ({peak_kernel}, {peak_size}^3, '
          f'median of its rounds), batch {args.batch_size}, {args.img_size}px, '
          f'median of {args.repeats} interleaved rounds')
    print_table(rows)
    for line in time_budget_lines(rows):
        print(line)
    print(f'wrote {stem.with_suffix(".json")} and .csv')
    return 0


if __name__ == '__main__':
    sys.exit(main())
