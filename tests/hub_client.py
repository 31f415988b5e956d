"""Runs ``timm.create_model`` calls in a fresh process, for the Hub tests.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_OFFLINE`` once, at import, so each
Hub setting needs its own process. Usage: ``python hub_client.py calls.json results_dir``, where
``calls.json`` is a list of ``{"label", "model", "kwargs", "input_shape"}``. For every call it writes
``results_dir/<label>.pt`` (the outputs on ``torch.manual_seed(0); torch.randn(input_shape)``) or an
error entry in ``results_dir/errors.json`` (exception class and message).
"""
import json
import sys
from pathlib import Path

import torch

import timm
import timm_vitvariants  # noqa: F401  registers the models even with the startup hook off


def sample_input(shape) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(*shape)


def main(calls_file: str, results_dir: str) -> None:
    results = Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    errors = {}
    for call in json.loads(Path(calls_file).read_text()):
        try:
            model = timm.create_model(call['model'], pretrained=True, **call.get('kwargs', {})).eval()
            with torch.no_grad():
                torch.save(model(sample_input(call['input_shape'])), results / f'{call["label"]}.pt')
        except Exception as e:  # recorded for the test to judge
            errors[call['label']] = {'type': type(e).__name__, 'message': str(e)}
    (results / 'errors.json').write_text(json.dumps(errors, indent=1))


if __name__ == '__main__':
    main(*sys.argv[1:])
