"""The benchmark's own logic: references, ratios, the peak probe, kernel shares, refusing to overwrite."""
import json
import os
import subprocess
import sys
from argparse import Namespace

import pytest
import torch
from torch import nn

import timm
import timm_vitvariants
from benchmarks import run
from benchmarks.references import EXACT_FAMILIES, is_exact_reference, vit_pytorch_reference
from timm_vitvariants.info import count_gmacs


EXACT_VARIANTS = [n for n in timm.list_models(module=list(EXACT_FAMILIES))]


def settings(model: nn.Module) -> list:
    """Every module's plain attributes (flags, sizes, rates): what repr may not show."""
    plain = (bool, int, float, str, tuple)
    return [(name, {k: v for k, v in vars(m).items() if not k.startswith('_') and isinstance(v, plain)})
            for name, m in model.named_modules()]


@pytest.mark.parametrize('name', EXACT_VARIANTS)
def test_exact_references_are_the_variant(name):
    """Where the benchmark times one model for both rows, the converted reference must be the variant:
    the same modules and hyper-parameters, a state dict that loads strictly, and (tiny / small, to keep
    the suite short) the same outputs."""
    assert is_exact_reference(name)
    torch.manual_seed(0)
    converted = timm_vitvariants.from_vit_pytorch(vit_pytorch_reference(name)).eval()
    named = timm.create_model(name).eval()
    assert repr(named) == repr(converted) and settings(named) == settings(converted)
    named.load_state_dict(converted.state_dict(), strict=True)
    if not name.endswith('_base'):
        x = torch.randn(1, 3, 224, 224)
        with torch.no_grad():
            torch.testing.assert_close(named(x), converted(x))


def test_other_families_are_not_claimed_exact():
    for name in ('regionvit_small', 'scalablevit_small', 'twinssvt_small'):
        assert not is_exact_reference(name)


def test_speedup_is_the_median_of_per_round_ratios():
    ours, ref = run.Contender('a', nn.Identity()), run.Contender('b', nn.Identity())
    ours.times['infer'] = [1., 2., 1., 1., 4.]
    ref.times['infer'] = [2., 2., 1.5, 3., 4.]  # ratios 2, 1, 1.5, 3, 1
    low, median, high = run.speedup(ours, ref, 'infer')
    assert (low, median, high) == (1., 1.5, 2.)  # inclusive quartiles of 1, 1, 1.5, 2, 3


def test_peak_probe_lasts_about_as_asked():
    probe = run.PeakProbe.lasting(0.2, 64, gflops=1., device=torch.device('cpu'), dtype=torch.float32)
    assert probe.multiplies == round(0.2e9 / (2 * 64 ** 3)) and probe.flops == 2 * 64 ** 3 * probe.multiplies
    peaks = run.time_interleaved([], 'infer', 3, torch.device('cpu'), run.PeakProbe(32, 'cpu', torch.float32), 1)
    assert len(peaks) == 3 and all(p > 0 for p in peaks)


def test_matmul_peak_sweeps_the_sizes_asked_and_warm_up_rounds_skip_the_probe():
    gflops, size, kernel = run.matmul_peak(torch.device('cpu'), torch.float32, repeats=1, sizes=(32, 64))
    assert size in (32, 64) and gflops > 0 and kernel in run.gemm_kernels(torch.device('cpu'), torch.float32)
    calls = []

    class CountingProbe(run.PeakProbe):
        def __call__(self) -> None:
            calls.append(1)

    run.time_interleaved([], 'infer', 2, torch.device('cpu'), CountingProbe(32, 'cpu', torch.float32), warmup=3)
    assert len(calls) == 2  # timed rounds only


def test_interleaved_rounds_rotate_the_order_and_keep_each_contender_s_times():
    """Every contender runs first equally often (position effects cancel); each keeps its own times."""
    order = []
    contenders = [run.Contender(label, None) for label in 'abc']
    for c in contenders:
        c.infer = lambda label=c.label: order.append(label)
    run.time_interleaved(contenders, 'infer', 3, torch.device('cpu'), run.PeakProbe(8, 'cpu', torch.float32), 3)
    rounds = [''.join(order[i:i + 3]) for i in range(0, len(order), 3)]
    assert rounds == ['abc', 'bca', 'cab', 'abc', 'bca', 'cab']
    assert all(len(c.times['infer']) == 3 for c in contenders)


def test_warm_heap_leaves_its_pages_mapped_for_the_steps_after_it():
    """In a fresh process (it turns heap trimming off for good): after warm_heap, a block as large as the
    warmed heap is allocated and written with no page faults, and without it the same block faults."""
    probe = (
        'import ctypes, resource, sys\n'
        'from benchmarks.run import tune_malloc, warm_heap\n'
        'assert tune_malloc()\n'
        'gib = float(sys.argv[1]); warmed = warm_heap(gib)\n'
        'faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n'
        'import torch\n'
        'x = torch.empty(48 << 20, dtype=torch.uint8)\n'  # 48 MiB: on the heap (below the mmap threshold)
        'before = faults(); x.fill_(1); print(warmed, faults() - before)\n')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    outputs = {}
    for gib in ('0.25', '0'):
        done = subprocess.run([sys.executable, '-c', probe, gib], cwd=root, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        outputs[gib] = [float(v) for v in done.stdout.split()]
    assert outputs['0.25'][0] == 0.25 and outputs['0.25'][1] < 100  # a few pages of bookkeeping at most
    assert outputs['0'][0] == 0. and outputs['0'][1] > 10000  # 48 MiB of fresh pages: 12288 faults


def test_kernel_share_separates_matmuls_from_the_rest():
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    matmul_only = run.kernel_share(lambda: a @ b, torch.device('cpu'))
    elementwise_only = run.kernel_share(lambda: [torch.exp(a) for _ in range(3)], torch.device('cpu'))
    assert matmul_only > 0.9 and elementwise_only == 0.
    assert run.speedup_bound(0.8) == pytest.approx(1.25) and run.speedup_bound(None) is None


def test_results_are_not_overwritten_without_asking(tmp_path, capsys):
    stem = tmp_path / 'mine'
    stem.with_suffix('.json').write_text(json.dumps({'keep': 1}))
    with pytest.raises(SystemExit):
        run.main(['rvt_tiny', '--out', str(stem), '--no-memory'])
    assert '--overwrite' in capsys.readouterr().err
    assert json.loads(stem.with_suffix('.json').read_text()) == {'keep': 1}


def test_quick_runs_one_variant_per_family_with_the_targets():
    families = {name.rsplit('_', 1)[0] for name in run.QUICK}
    assert families == set(timm_vitvariants.MODEL_MODULES)
    assert 'maxvit_reg_tiny' in run.QUICK and 'twinssvt_small' in run.QUICK  # the timm comparisons
    assert set(run.TIMM_COUNTERPARTS) <= set(run.QUICK)


def test_profiler_noise_is_kept_off_the_terminal(capfd):
    """The profiler's C++ trace markers and its failed GPU look are dropped from stderr; other lines pass."""
    with run.profiler_noise_filtered():
        os.write(2, b'USDT:2026-12-02 13:13:45 1:1 SyncActivityProfilerHandler.cpp:39] profiler_start\n'
                    b'a real warning\n'
                    b'ERROR:2026-12-02 13:13:45 1:1 DeviceProperties.cpp:56] gpuGetDeviceCount failed with code 35\n')
    assert capfd.readouterr().err == 'a real warning\n'
    run.kernel_share(lambda: torch.randn(64, 64) @ torch.randn(64, 64), torch.device('cpu'))
    err = capfd.readouterr().err
    assert 'USDT' not in err and 'gpuGetDeviceCount' not in err


def test_padded_costs_fill_the_row_s_fields():
    """Per PADDED_SIZES size: GMACs per real pixel and time per GMAC, both against the default size."""
    torch.manual_seed(0)
    args = Namespace(img_size=64, batch_size=1, repeats=1, warmup=0, channels_last=False)
    ours = run.Contender('rvt_tiny', timm.create_model('rvt_tiny'))
    base_gmacs = count_gmacs(ours.model, (3, 64, 64))
    costs = run.padded_costs(ours, 'rvt_tiny', base_gmacs, args, torch.device('cpu'), None,
                             run.PeakProbe(32, 'cpu', torch.float32))
    labels = [run.size_label(s) for s in run.PADDED_SIZES]
    assert labels == ['256', '320x480']
    assert set(costs) == {f'pad_{k}_{label}' for k in ('work', 'cost') for label in labels}
    assert set(costs) <= set(run.Row.__dataclass_fields__) and all(v > 0 for v in costs.values())
    assert costs['pad_work_320x480'] > costs['pad_work_256'] > 1  # global attention: more work per pixel
