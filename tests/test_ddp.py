"""The launcher (``python -m timm_vitvariants.run``) and CPU distributed training through it.

The DDP test runs two processes under ``torchrun`` on the CPU (gloo) with a small script that wraps
the model as timm's train.py does (``DistributedDataParallel(model, device_ids=[device])``), which
PyTorch refuses for CPU modules unless the launcher's fix is in place.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import timm
import timm_vitvariants
from timm_vitvariants.run import cpu_safe_device_args

from family_specs import SPECS

FAMILY = timm_vitvariants.MODEL_MODULES[0]
REPO_ROOT = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict:
    """This checkout first on the path, so subprocesses import the code under test."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get('PYTHONPATH')])])
    env.update(extra)
    return env


def launch(args: list, cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'timm_vitvariants.run', *args], cwd=cwd, env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def free_local_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# --- the launcher ---------------------------------------------------------------------------

def test_launcher_runs_script_as_main_with_its_arguments_and_our_models(tmp_path):
    script = tmp_path / 'show.py'
    script.write_text(textwrap.dedent('''
        import json, sys
        import timm
        if __name__ == '__main__':
            print(json.dumps(dict(argv=sys.argv[1:], path0=sys.path[0], known=timm.is_model('maxvit_reg_tiny'))))
    '''))
    # the startup hook off: the launcher itself must register the models
    done = launch([str(script), '--model', 'maxvit_reg_tiny', '-b', '2'], cwd=tmp_path, TIMM_VITVARIANTS_AUTOLOAD='0')
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen == dict(argv=['--model', 'maxvit_reg_tiny', '-b', '2'], path0=str(tmp_path), known=True)


def test_launcher_passes_the_script_exit_status_on(tmp_path):
    script = tmp_path / 'fail.py'
    script.write_text('import sys\nsys.exit(3)\n')
    assert launch([str(script)], cwd=tmp_path).returncode == 3


@pytest.mark.parametrize('args, message', [
    ([], 'the following arguments are required: SCRIPT.py'),
    (['no_such_train.py', '--model', 'x'], "no such script: 'no_such_train.py'"),
])
def test_launcher_usage_errors(tmp_path, args, message):
    done = launch(args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and 'usage: python -m timm_vitvariants.run SCRIPT.py' in done.stderr
    assert 'Traceback' not in done.stderr


def test_device_args_are_dropped_only_for_cpu_modules():
    cpu_module = torch.nn.Linear(2, 2)
    assert cpu_safe_device_args(cpu_module, [torch.device('cpu')], None) == (None, None)
    assert cpu_safe_device_args(cpu_module, None, None) == (None, None)
    # a module anywhere else (meta stands in for a GPU here) keeps its arguments
    elsewhere = torch.nn.Linear(2, 2, device='meta')
    assert cpu_safe_device_args(elsewhere, [0], 0) == ([0], 0)
    half_moved = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2, device='meta'))
    assert cpu_safe_device_args(half_moved, [0], None) == ([0], None)


def test_enable_cpu_ddp_makes_train_py_wrapping_work_on_cpu(tmp_path):
    """In a fresh process: PyTorch refuses device_ids for a CPU module; after enable_cpu_ddp() the same
    call gives a working DistributedDataParallel."""
    code = textwrap.dedent(f'''
        import torch, torch.distributed as dist
        from torch import nn
        from torch.nn.parallel import DistributedDataParallel as DDP
        from timm_vitvariants.run import enable_cpu_ddp
        dist.init_process_group('gloo', store=dist.FileStore({str(tmp_path / 'store')!r}, 1), rank=0, world_size=1)
        try:
            DDP(nn.Linear(2, 2), device_ids=[torch.device('cpu')])
            raise SystemExit('PyTorch accepted device_ids for a CPU module: the fix is no longer needed')
        except ValueError as e:
            assert 'device_ids' in str(e), e
        enable_cpu_ddp()
        enable_cpu_ddp()  # idempotent
        wrapped = torch.nn.parallel.DistributedDataParallel(nn.Linear(2, 2), device_ids=[torch.device('cpu')])
        assert isinstance(wrapped, DDP) and wrapped.device_ids is None
        assert wrapped(torch.ones(1, 2)).shape == (1, 2)
        dist.destroy_process_group()
        print('ok')
    ''')
    done = subprocess.run([sys.executable, '-c', code], env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == 'ok'


# --- two processes under torchrun -----------------------------------------------------------

DDP_SCRIPT = '''
"""Two ranks step a small model wrapped as timm's train.py wraps it; each rank reports what it saw."""
import argparse
import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as NativeDDP

from timm import utils
from timm.models import create_model
from timm.optim import create_optimizer_v2

STEPS = 3


def flat_grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def main():
    config = json.loads(sys.argv[1])
    out = config['out']
    args = argparse.Namespace(device='cpu', dist_backend=None, dist_url=None)
    device = utils.init_distributed_device(args)  # torchrun env -> gloo process group
    torch.manual_seed(0)
    model = create_model(config['model'], num_classes=3, drop_path_rate=0.1, **config['kwargs']).to(device)
    model = NativeDDP(model, device_ids=[device])  # what train.py does
    optimizer = create_optimizer_v2(model, 'sgd', lr=0.05, layer_decay=0.75)
    data = torch.Generator().manual_seed(100 + args.rank)  # each rank its own data
    report = dict(rank=args.rank, world_size=args.world_size, steps=0, sync_error=[], mean_error=[], local_spread=[])
    for _ in range(STEPS):
        x = torch.randn(2, 3, *config['size'], generator=data)
        y = torch.randint(0, 3, (2,), generator=data)
        # the rank's own gradient first, without DDP's all-reduce
        torch.manual_seed(7 + report['steps'])  # the same drop-path draws in both passes
        with model.no_sync():
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
        local = flat_grads(model)
        torch.manual_seed(7 + report['steps'])
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        synced = flat_grads(model)
        gathered_local = [torch.empty_like(local) for _ in range(args.world_size)]
        gathered_synced = [torch.empty_like(synced) for _ in range(args.world_size)]
        dist.all_gather(gathered_local, local)
        dist.all_gather(gathered_synced, synced)
        mean_local = torch.stack(gathered_local).mean(0)
        report['sync_error'].append(max((g - synced).abs().max().item() for g in gathered_synced))
        report['mean_error'].append(((synced - mean_local).norm() / mean_local.norm()).item())
        report['local_spread'].append((gathered_local[0] - gathered_local[1]).abs().max().item())
        optimizer.step()
        report['steps'] += 1
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(params) for _ in range(args.world_size)]
    dist.all_gather(gathered, params)
    report['param_spread'] = (gathered[0] - gathered[1]).abs().max().item()
    if utils.is_primary(args):
        saver = utils.CheckpointSaver(model=model, optimizer=optimizer, checkpoint_dir=out, recovery_dir=out,
                                      max_history=1)
        saver.save_checkpoint(epoch=0, metric=loss.item())
    dist.barrier()
    with open(f"{out}/rank{args.rank}.json", 'w') as f:
        json.dump(report, f)
    dist.destroy_process_group()


if __name__ == '__main__':
    main()
'''


def test_two_process_cpu_ddp_through_torchrun_and_the_launcher(tmp_path):
    script = tmp_path / 'ddp_train.py'
    script.write_text(DDP_SCRIPT)
    out = tmp_path / 'output'
    out.mkdir()
    spec = SPECS[FAMILY]
    config = dict(out=str(out), model=f'{FAMILY}_tiny', kwargs=spec['small'], size=list(spec['small_size']))
    env = subprocess_env(OMP_NUM_THREADS='1')
    if sys.platform.startswith('linux'):
        env.setdefault('GLOO_SOCKET_IFNAME', 'lo')  # gloo on the loopback device only
    command = [
        sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--nnodes=1',
        '--master_addr=127.0.0.1', f'--master_port={free_local_port()}',
        '-m', 'timm_vitvariants.run', str(script), json.dumps(config),
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]

    reports = [json.loads((out / f'rank{rank}.json').read_text()) for rank in (0, 1)]
    for rank, report in enumerate(reports):
        assert report['rank'] == rank and report['world_size'] == 2 and report['steps'] == 3
        assert max(report['sync_error']) == 0  # both ranks hold the very same gradient ...
        assert max(report['mean_error']) < 1e-5  # ... the mean of the ranks' own gradients
        assert min(report['local_spread']) > 0  # which differed (each rank saw its own data)
        assert report['param_spread'] == 0  # so the replicas stay identical
    checkpoints = sorted(p.name for p in out.glob('*.pth.tar'))
    assert checkpoints == ['checkpoint-0.pth.tar', 'last.pth.tar', 'model_best.pth.tar']  # once, by rank 0
    state = torch.load(out / 'last.pth.tar', map_location='cpu', weights_only=True)['state_dict']
    model = timm.create_model(f'{FAMILY}_tiny', num_classes=3, **spec['small'])
    model.load_state_dict(state)  # DDP's 'module.' prefix is stripped by the saver
