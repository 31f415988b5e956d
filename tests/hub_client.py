"""Runs ``timm.create_model`` calls in a fresh process, for the Hub tests.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_OFFLINE`` once, at import, so each
Hub setting needs its own process. Usage: ``python hub_client.py calls.json results_dir [threads]``, where
``calls.json`` is a list of ``{"label", "model", "kwargs", "input_shape"}``, each optionally with
``"publish": {"arch.tag": {cfg fields}}``: the tag is first added to the family's ``default_cfgs``, as
the one line a maintainer adds when weights are published. For every call it writes
``results_dir/<label>.pt`` (the outputs on ``torch.manual_seed(0); torch.randn(input_shape)``) and
``<label>.hf_hub_id`` (the Hub id the model's pretrained_cfg records), or an
error entry in ``results_dir/errors.json`` (exception class and message). Every tag is published
before the first call; with ``threads`` > 1 the calls run concurrently.
"""
import json
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

import timm
import timm_vitvariants  # noqa: F401  registers the models even with the startup hook off
from timm.models import generate_default_cfgs, model_entrypoint
from timm_vitvariants._factory import register_variant


def sample_input(shape) -> torch.Tensor:
    """The values of ``torch.manual_seed(0); torch.randn(shape)``, from a generator of its own (thread-safe)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def publish(tagged_name: str, cfg_fields: dict) -> None:
    """What ``'arch.tag': _cfg(hf_hub_id=...)`` in the family file's ``default_cfgs`` does."""
    arch, tag = tagged_name.split('.', 1)
    entrypoint = model_entrypoint(arch)
    family = sys.modules[entrypoint.__module__]
    new = generate_default_cfgs({tagged_name: family._cfg(**cfg_fields)})[arch]
    family.default_cfgs[arch].tags.append(tag)
    family.default_cfgs[arch].cfgs[tag] = new.cfgs[tag]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # timm warns that it re-registers the name
        register_variant(entrypoint)


def main(calls_file: str, results_dir: str, threads: str = '1') -> None:
    results = Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    calls = json.loads(Path(calls_file).read_text())
    for call in calls:
        for tagged_name, cfg_fields in call.get('publish', {}).items():
            publish(tagged_name, cfg_fields)

    def run(call: dict) -> tuple:
        try:
            model = timm.create_model(call['model'], pretrained=True, **call.get('kwargs', {})).eval()
            with torch.no_grad():
                torch.save(model(sample_input(call['input_shape'])), results / f'{call["label"]}.pt')
            (results / f'{call["label"]}.hf_hub_id').write_text(str(model.pretrained_cfg.get('hf_hub_id')))
            return call['label'], None
        except Exception as e:  # recorded for the test to judge
            return call['label'], {'type': type(e).__name__, 'message': str(e)}

    # threads > 1: calls that each wait on the network (retries, timeouts) overlap
    with ThreadPoolExecutor(max(1, int(threads))) as pool:
        errors = {label: error for label, error in pool.map(run, calls) if error is not None}
    (results / 'errors.json').write_text(json.dumps(errors, indent=1))


if __name__ == '__main__':
    main(*sys.argv[1:])
