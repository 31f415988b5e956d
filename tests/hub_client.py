"""Runs ``timm.create_model`` calls in a fresh process, for the Hub tests.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_OFFLINE`` once, at import, so each
Hub setting needs its own process. Usage: ``python hub_client.py calls.json results_dir``, where
``calls.json`` is a list of ``{"label", "model", "kwargs", "input_shape"}``, each optionally with
``"publish": {"arch.tag": {cfg fields}}``: the tag is first added to the family's ``default_cfgs``, as
the one line a maintainer adds when weights are published. For every call it writes
``results_dir/<label>.pt`` (the outputs on ``torch.manual_seed(0); torch.randn(input_shape)``) or an
error entry in ``results_dir/errors.json`` (exception class and message).
"""
import json
import sys
import warnings
from pathlib import Path

import torch

import timm
import timm_vitvariants  # noqa: F401  registers the models even with the startup hook off
from timm.models import generate_default_cfgs, model_entrypoint
from timm_vitvariants._factory import register_variant


def sample_input(shape) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(*shape)


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


def main(calls_file: str, results_dir: str) -> None:
    results = Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    errors = {}
    for call in json.loads(Path(calls_file).read_text()):
        for tagged_name, cfg_fields in call.get('publish', {}).items():
            publish(tagged_name, cfg_fields)
        try:
            model = timm.create_model(call['model'], pretrained=True, **call.get('kwargs', {})).eval()
            with torch.no_grad():
                torch.save(model(sample_input(call['input_shape'])), results / f'{call["label"]}.pt')
        except Exception as e:  # recorded for the test to judge
            errors[call['label']] = {'type': type(e).__name__, 'message': str(e)}
    (results / 'errors.json').write_text(json.dumps(errors, indent=1))


if __name__ == '__main__':
    main(*sys.argv[1:])
