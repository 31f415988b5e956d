"""Loads repos from the Hub with transformers only, for tests/test_transformers.py; runs in a fresh process.

Usage: ``python transformers_client.py results.json org/name...``. Nothing here imports timm_vitvariants:
the startup hook must do it when transformers imports timm. For every repo it records the largest
difference between ``AutoModelForImageClassification`` and ``timm.create_model('hf-hub:...')`` logits on
one input, and the labels ``pipeline('image-classification')`` returns for one PIL image.
"""
import json
import sys

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline


def main(results_file: str, *repos: str) -> None:
    import timm
    plugin = sys.modules.get('timm_vitvariants')
    results = {'plugin': getattr(plugin, '__file__', None), 'repos': {}}
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    for repo in repos:
        try:
            wrapped = AutoModelForImageClassification.from_pretrained(repo).eval()
            native = timm.create_model(f'hf-hub:{repo}', pretrained=True).eval()
            x = torch.randn(2, *native.pretrained_cfg['input_size'], generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                difference = (wrapped(pixel_values=x).logits - native(x)).abs().max().item()
            predictions = pipeline('image-classification', model=repo, top_k=None)(image)
            results['repos'][repo] = {'difference': difference, 'labels': [p['label'] for p in predictions]}
        except Exception as e:  # recorded for the test to judge
            results['repos'][repo] = {'error': f'{type(e).__name__}: {e}'}
    with open(results_file, 'w') as f:
        json.dump(results, f, indent=1)


if __name__ == '__main__':
    main(*sys.argv[1:])
