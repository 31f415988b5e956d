"""``python -m timm_vitvariants.run SCRIPT.py [ARGS...]``: run one of timm's scripts with our models.

timm's ``train.py``, ``validate.py``, ``benchmark.py`` and ``inference.py`` live in timm's repository,
not in its wheel. This launcher imports ``timm_vitvariants`` (so every variant is registered even with
the startup hook switched off) and then runs the script as ``__main__`` with ``ARGS`` as its command
line, exactly as ``python SCRIPT.py ARGS...`` would. It works under ``torchrun``::

    torchrun --nproc_per_node=2 -m timm_vitvariants.run train.py DATA --model maxvit_reg_tiny --device cpu

CPU (gloo) distributed training: timm's ``train.py`` wraps the model with
``DistributedDataParallel(model, device_ids=[device])``, which PyTorch refuses for a module whose
parameters live on the CPU (``device_ids`` is for single-GPU modules only). The launcher calls
:func:`enable_cpu_ddp` first, which drops ``device_ids``/``output_device`` for such modules; a module
on a GPU (or any other accelerator) is wrapped exactly as before.
"""
import argparse
import functools
import os
import runpy
import sys
from typing import Any, List, Optional, Tuple

from torch import nn

PROG = 'python -m timm_vitvariants.run'


def parameters_on_cpu(module: nn.Module) -> bool:
    """True when every parameter and buffer of ``module`` is on the CPU (and there is at least one)."""
    devices = {t.device.type for t in module.parameters()} | {t.device.type for t in module.buffers()}
    return devices == {'cpu'}


def cpu_safe_device_args(module: nn.Module, device_ids: Optional[List[Any]], output_device: Any) -> Tuple[Any, Any]:
    """``DistributedDataParallel``'s ``device_ids``/``output_device`` for ``module``: dropped (None) for a
    module entirely on the CPU, which is the only form PyTorch accepts there; unchanged otherwise."""
    if (device_ids is not None or output_device is not None) and parameters_on_cpu(module):
        return None, None
    return device_ids, output_device


def enable_cpu_ddp() -> None:
    """Makes ``DistributedDataParallel(cpu_module, device_ids=[...])`` work by dropping ``device_ids``
    and ``output_device`` when the module is entirely on the CPU, which is what PyTorch expects for
    CPU modules. GPU modules keep their arguments untouched. Idempotent.

    The constructor is wrapped in place, so every way of naming the class
    (``torch.nn.parallel.DistributedDataParallel``, ``from torch.nn.parallel.distributed import ...``,
    references taken before this call) gets the fix, and ``isinstance`` checks are unaffected.
    """
    from torch.nn.parallel import DistributedDataParallel

    original_init = DistributedDataParallel.__init__
    if getattr(original_init, 'drops_cpu_device_ids', False):
        return

    @functools.wraps(original_init)
    def init(self, module: nn.Module, device_ids: Optional[List[Any]] = None, output_device: Any = None,
             *args: Any, **kwargs: Any) -> None:
        device_ids, output_device = cpu_safe_device_args(module, device_ids, output_device)
        original_init(self, module, device_ids, output_device, *args, **kwargs)

    init.drops_cpu_device_ids = True
    DistributedDataParallel.__init__ = init


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run one of timm's scripts (train.py, validate.py, benchmark.py, inference.py) with the "
                    "timm_vitvariants models registered and CPU distributed training (gloo) enabled. "
                    "Works under torchrun: torchrun --nproc_per_node=N -m timm_vitvariants.run train.py ...",
        usage=f'{PROG} SCRIPT.py [ARGS ...]',
    )
    parser.add_argument('script', metavar='SCRIPT.py', help="path of the script, e.g. timm's train.py")
    parser.add_argument('script_args', metavar='ARGS', nargs=argparse.REMAINDER,
                        help="the script's own command line, passed on unchanged")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    script = os.path.abspath(args.script)
    if not os.path.isfile(script):
        parser.error(f'no such script: {args.script!r} (expected the path of a Python file, e.g. '
                     f"train.py from a checkout of timm's repository)")

    import timm_vitvariants  # noqa: F401  registers the models even with TIMM_VITVARIANTS_AUTOLOAD=0

    enable_cpu_ddp()
    # What `python SCRIPT.py ARGS` would see: its own argv, and its folder first on the import path
    # (train.py and friends import nothing beside them today, but scripts that do must keep working).
    sys.argv = [script, *args.script_args]
    sys.path[0] = os.path.dirname(script)
    runpy.run_path(script, run_name='__main__')
    return 0


if __name__ == '__main__':
    sys.exit(main())
