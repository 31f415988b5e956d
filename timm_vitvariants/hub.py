"""Weights on the Hugging Face Hub: export a model to a Hub-ready folder, push it, convert vit-pytorch.

A Hub-ready folder holds exactly what ``timm.create_model('hf-hub:org/name', pretrained=True)`` reads:
``model.safetensors`` (never a pickle), ``config.json`` in timm's format (written by timm's own
``save_for_hf``) and a ``README.md`` model card. ``export_folder`` builds it in a temporary folder
beside the target, loads it back through timm and compares outputs before anything reaches the
target, so a folder that exists is a folder that works.

Checkpoints are always read with ``torch.load(weights_only=True)``: no pickled code runs.
"""
import argparse
import fnmatch
import importlib
import json
import pickle
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

import timm
from timm.models import clean_state_dict, save_for_hf

from ._factory import HUB_WEIGHTS_FILE
from ._hub_load import WEIGHTS_ENTRY, HubDownloadError, read_config, verify_file, weights_record
from .convert import from_vit_pytorch, supported_classes
from .info import count_gmacs, paper_link

__all__ = [
    'WEIGHTS_FILE', 'HUB_FILES', 'read_state_dict', 'load_resampled', 'model_from_checkpoint',
    'vit_pytorch_from_checkpoint',
    'convert_checkpoint',
    'convert_ibm_checkpoint', 'add_card_section',
    'export_folder', 'verify_folder', 'write_model_card', 'check_folder', 'push_folder', 'upload_plan',
    'HubDownloadError',
]

WEIGHTS_FILE = HUB_WEIGHTS_FILE
CONFIG_FILE = 'config.json'
CARD_FILE = 'README.md'
HUB_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)
# Files that would let a loader fall back to unpickling: never exported, never pushed.
PICKLE_SUFFIXES = ('.bin', '.pth', '.pt', '.pkl', '.pickle', '.tar', '.ckpt')

PathLike = Union[str, Path]


# --- reading checkpoints ----------------------------------------------------------------------

def read_state_dict(path: PathLike, use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """The weights in a safetensors file, a plain ``torch.save``d state dict, or a timm train.py
    checkpoint (``state_dict``, or with ``use_ema`` its ``state_dict_ema``). ``module.`` prefixes
    left by DataParallel/DDP are removed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint not found: {path}')
    if path.suffix == '.safetensors':
        if use_ema:
            raise ValueError(f'{path} is a safetensors file: it holds one set of weights, there is no EMA to pick')
        import safetensors.torch
        try:
            return safetensors.torch.load_file(str(path), device='cpu')
        except Exception as e:  # safetensors' own error types for damaged files
            raise ValueError(f'{path} is not a readable safetensors file: {e}') from e
    # train.py saves its argparse.Namespace under 'args': plain data, safe to allow.
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:  # torch raises UnpicklingError/RuntimeError for files it will not read safely
            raise ValueError(
                f'{path} is not a checkpoint that can be read safely (torch.load(weights_only=True) refused it: '
                f'{str(e).splitlines()[0]})') from e
    if not isinstance(checkpoint, dict):
        raise ValueError(f'{path} holds a {type(checkpoint).__name__}, expected a state dict or a train.py checkpoint')
    key = 'state_dict_ema' if use_ema else 'state_dict'
    if use_ema and key not in checkpoint:
        raise ValueError(f'{path} has no EMA weights (no "state_dict_ema" entry); drop --ema to export the plain ones')
    state_dict = checkpoint.get(key, checkpoint)
    if not isinstance(state_dict, dict):
        state_dict = {}
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f'{path} holds no tensors under {key!r} or at the top level: not a model checkpoint')
    return clean_state_dict(tensors)


def load_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str) -> nn.Module:
    """Strict load with an error that names what did not line up and what to check."""
    hint = f'the weights in {source} do not fit this model configuration (check the model name and its arguments, ' \
        f'e.g. num_classes)'
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches
        mismatches = [line.strip() for line in str(e).splitlines() if 'size mismatch' in line]
        raise ValueError(f'{hint}: {"; ".join(mismatches[:4]) or e}') from e
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f'{hint}: missing {result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}')
    return model


def load_resampled(model: nn.Module, checkpoint: PathLike, use_ema: bool = False) -> nn.Module:
    """Loads a checkpoint of another input resolution (a train.py ``last.pth.tar``/``model_best.pth.tar``,
    a state dict or safetensors file) into ``model``, resampling what depends on the window as the
    pretrained path does (the family's ``checkpoint_filter_fn``); every weight must fit after that."""
    state_dict = read_state_dict(checkpoint, use_ema=use_ema)
    family = sys.modules.get(type(model).__module__)
    filter_fn = getattr(family, 'checkpoint_filter_fn', None)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    return load_weights(model, state_dict, str(checkpoint))


def model_from_checkpoint(
        model_name: str,
        checkpoint: PathLike,
        model_args: Optional[Dict[str, Any]] = None,
        use_ema: bool = False,
) -> nn.Module:
    """``timm.create_model(model_name, **model_args)`` carrying the checkpoint's weights, in eval mode."""
    if model_name not in timm.list_models():
        raise ValueError(f'unknown model {model_name!r}; `python -m timm_vitvariants list` shows ours')
    state_dict = read_state_dict(checkpoint, use_ema=use_ema)
    try:
        model = timm.create_model(model_name, **(model_args or {}))
    except TypeError as e:
        raise ValueError(f'{model_name} does not take these arguments {model_args}: {e}') from e
    return load_weights(model, state_dict, str(checkpoint)).eval()


def vit_pytorch_from_checkpoint(class_path: str, checkpoint: PathLike, constructor_args: Dict[str, Any]) -> nn.Module:
    """Builds vit-pytorch's ``class_path(**constructor_args)`` and loads a ``torch.save``d state dict."""
    if class_path not in supported_classes():
        raise ValueError(f'no converter for {class_path!r}; supported: {", ".join(supported_classes())}')
    module_name, class_name = class_path.rsplit('.', 1)
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except ImportError as e:
        raise ValueError(f'converting {class_path} needs vit-pytorch installed (pip install vit-pytorch): {e}') from e
    # JSON has no tuples; vit-pytorch wants them for per-stage arguments (e.g. MaxViT's depth)
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in constructor_args.items()}
    try:
        reference = cls(**args)
    except (TypeError, ValueError, AssertionError) as e:  # vit-pytorch checks its arguments with assert
        raise ValueError(f'{class_path} does not take these arguments {constructor_args}: {e}') from e
    return load_weights(reference, read_state_dict(checkpoint), str(checkpoint)).eval()


@torch.no_grad()
def convert_checkpoint(
        class_path: str,
        checkpoint: PathLike,
        constructor_args: Dict[str, Any],
        input_size: Optional[Sequence[int]] = None,
        tolerance: float = 1e-4,
) -> nn.Module:
    """A vit-pytorch checkpoint as the equivalent timm model (eval mode), after checking on one image
    (``input_size`` = (H, W), by default the model's) that both give the same outputs."""
    reference = vit_pytorch_from_checkpoint(class_path, checkpoint, constructor_args)
    model = from_vit_pytorch(reference).eval()
    size = tuple(input_size or model.pretrained_cfg['input_size'][1:])
    x = torch.randn(1, model.in_chans, *size, generator=torch.Generator().manual_seed(0))
    error = max_relative_error(model(x), reference(x))
    if error > tolerance:
        raise RuntimeError(f'the converted model differs from the vit-pytorch one: max relative error {error:.2e}')
    return model


def convert_ibm_checkpoint(
        model_name: str,
        checkpoint: PathLike,
        model_args: Optional[Dict[str, Any]] = None,
) -> nn.Module:
    """An official IBM RegionViT checkpoint (a release file such as ``RegionViT-S.pth``, or any
    checkpoint IBM/RegionViT's ``main.py`` saves) as ``model_name`` (a ``regionvit_ibm_*`` variant), in
    eval mode, loaded exactly as its ``.in1k`` tag loads the download: ``torch.load(weights_only=True)``
    allowing ``argparse.Namespace`` only, then the family's key mapping."""
    if not model_name.startswith('regionvit_ibm_') or model_name not in timm.list_models():
        raise ValueError(f'IBM checkpoints convert to a regionvit_ibm_* variant '
                         f'({", ".join(timm.list_models("regionvit_ibm_*"))}), got {model_name!r}')
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint not found: {path}')
    overlay = dict(file=str(path), custom_load=True)  # custom_load: also for the variants without a tag
    try:
        model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **(model_args or {}))
    except (RuntimeError, KeyError, pickle.UnpicklingError) as e:  # refused unpickling, keys that do not fit
        raise ValueError(f'{path} is not an IBM RegionViT checkpoint for {model_name} '
                         f'({str(e).splitlines()[0] if str(e) else type(e).__name__})') from e
    return model.eval()


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest absolute difference, relative to the largest magnitude expected."""
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


# --- export -----------------------------------------------------------------------------------

def _sample_input(model: nn.Module, seed: int = 0) -> torch.Tensor:
    """One deterministic image at the model's configured input size."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, *model.pretrained_cfg['input_size'], generator=generator)


@torch.no_grad()
def verify_folder(folder: PathLike, reference: nn.Module, tolerance: float = 1e-5) -> float:
    """Loads ``folder`` as timm does for ``hf-hub:`` (its config.json, then model.safetensors) and
    compares outputs with ``reference`` on one image; returns the max relative difference."""
    loaded = timm.create_model(f'local-dir:{Path(folder).resolve()}', pretrained=True).eval()
    x = _sample_input(loaded)  # at the exported input size
    expected, actual = reference(x), loaded(x)
    if actual.shape != expected.shape:
        raise RuntimeError(f'the exported folder gives outputs of shape {tuple(actual.shape)}, '
                           f'the source model {tuple(expected.shape)}')
    error = max_relative_error(actual, expected)
    if error > tolerance:
        raise RuntimeError(f'the exported folder does not reproduce the source model: max relative error {error:.2e}')
    return error


def write_model_card(
        model: nn.Module,
        folder: PathLike,
        repo_id: Optional[str] = None,
        training_data: Optional[str] = None,
        license: Optional[str] = None,
) -> None:
    """README.md beside the folder's config.json, describing what that config records: the metadata
    block the Hub reads, usage with the import line, size, cost at the input size, licence, data."""
    folder = Path(folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    cfg = {**model.pretrained_cfg, **config['pretrained_cfg']}
    name = config['architecture']
    license = license or cfg.get('license') or 'apache-2.0'
    input_size = tuple(cfg['input_size'])
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    gmacs = count_gmacs(model, input_size)
    paper_ids = cfg.get('paper_ids') or ()
    papers = ', '.join(paper_link(p) for p in ([paper_ids] if isinstance(paper_ids, str) else paper_ids))
    about = f' ({cfg["paper_name"]}; {papers})' if papers and cfg.get('paper_name') else ''
    lines = [
        '---',
        'library_name: timm',
        f'license: {license}',
        'tags: [image-classification, timm, timm_vitvariants]',
        '---',
        f'# {name}',
        '',
        f'A `{name}` image classifier for [timm](https://github.com/huggingface/pytorch-image-models), '
        f'through the timm_vitvariants plugin{about}.',
        '',
        '## Usage',
        '',
        '```python',
        '# pip install timm_vitvariants',
        'import timm',
        'import timm_vitvariants  # registers the architecture with timm',
        '',
        f"model = timm.create_model('hf-hub:{repo_id or 'ORG/REPO'}', pretrained=True).eval()",
        'data_config = timm.data.resolve_model_data_config(model)',
        'transform = timm.data.create_transform(**data_config, is_training=False)',
        '```',
        '',
        '## Model details',
        '',
        f'- architecture: `{name}` with arguments `{json.dumps(config.get("model_args", {}))}`',
        f'- parameters: {params_m:.2f} M',
        f'- GMACs: {gmacs:.3f} at {input_size[1]}x{input_size[2]}',
        f'- input size: {"x".join(str(s) for s in input_size)}, '
        f'interpolation {cfg.get("interpolation")}, crop_pct {cfg.get("crop_pct")}, '
        f'mean {tuple(cfg.get("mean", ()))}, std {tuple(cfg.get("std", ()))}',
        f'- classes: {config["num_classes"]}' + (' (label names in config.json)' if config.get('label_names') else ''),
        f'- training data: {training_data or "not stated"}',
        f'- licence: {license}',
        '',
    ]
    (folder / CARD_FILE).write_text('\n'.join(lines))


def add_card_section(folder: PathLike, heading: str, lines: Sequence[str]) -> None:
    """Appends a ``## heading`` section to the folder's model card."""
    card = Path(folder) / CARD_FILE
    card.write_text(card.read_text().rstrip('\n') + '\n\n' + '\n'.join([f'## {heading}', '', *lines, '']))


def drop_repeated_classes(config: Dict[str, Any]) -> bool:
    """Removes ``num_classes`` from config.json's ``model_args`` (timm takes it from the top level; transformers'
    TimmWrapper passes its own beside ``model_args`` and would get it twice); True if it was there."""
    return config.get('model_args', {}).pop('num_classes', None) is not None


def finish_config(folder: Path) -> None:
    """config.json as timm and transformers both read it (``drop_repeated_classes``), with the weights'
    sha256 and size, which every load checks before reading a tensor."""
    path = folder / CONFIG_FILE
    config = json.loads(path.read_text())
    drop_repeated_classes(config)
    config[WEIGHTS_ENTRY] = weights_record(folder / WEIGHTS_FILE)
    path.write_text(json.dumps(config, indent=2))


def _check_target(folder: Path, overwrite: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise ValueError(f'{folder} exists and is not a folder')
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise ValueError(f'{folder} is not empty; choose an empty folder, or pass --overwrite to replace '
                         f'{", ".join(HUB_FILES)} in it (other files are left alone)')


def export_folder(
        model: nn.Module,
        folder: PathLike,
        label_names: Optional[Sequence[str]] = None,
        training_data: Optional[str] = None,
        license: Optional[str] = None,
        repo_id: Optional[str] = None,
        data_config: Optional[Dict[str, Any]] = None,
        overwrite: bool = False,
) -> Path:
    """Writes ``model`` as a Hub-ready folder (model.safetensors, config.json, README.md), after
    checking in a temporary folder that it loads back with the same outputs.

    An existing non-empty ``folder`` is refused unless ``overwrite``; even then only the three Hub
    files are replaced. ``data_config`` (e.g. ``{'input_size': (3, 160, 160)}``) is the preprocessing
    recorded in the config; ``label_names`` one name per class.
    """
    folder = Path(folder)
    _check_target(folder, overwrite)
    if not hasattr(model, 'pretrained_cfg') or not hasattr(model, 'num_classes'):
        raise TypeError(f'export needs a timm model (from timm.create_model), got {type(model).__name__}')
    if label_names is not None and len(label_names) != model.num_classes:
        raise ValueError(f'{len(label_names)} label names for a model with {model.num_classes} classes')
    model_config: Dict[str, Any] = {'label_names': list(label_names)} if label_names else {}
    if license:
        model_config['pretrained_cfg'] = {'license': license}
    model.eval()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='.export-', dir=folder.parent) as staging:
        save_for_hf(model, staging, model_config=model_config, safe_serialization=True, data_config=data_config)
        finish_config(Path(staging))
        write_model_card(model, staging, repo_id, training_data, license)
        verify_folder(staging, model)
        folder.mkdir(exist_ok=True)
        for name in HUB_FILES:
            shutil.move(str(Path(staging) / name), str(folder / name))
    return folder


# --- push -------------------------------------------------------------------------------------

def upload_plan(folder: PathLike, include: Sequence[str] = ()) -> Tuple[List[Path], List[Path]]:
    """(the files ``push_folder`` uploads, the files it leaves out): the Hub files, plus those matching
    an ``include`` pattern (``fnmatch``, on the path inside the folder). Refuses folders that are not
    Hub-ready or hold pickles."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f'{folder} is not a folder; create one with `python -m timm_vitvariants export`')
    files = sorted(p for p in folder.rglob('*') if p.is_file() and not p.relative_to(folder).parts[0].startswith('.'))
    names = {p.relative_to(folder).as_posix() for p in files}
    missing = [n for n in (WEIGHTS_FILE, CONFIG_FILE) if n not in names]
    if missing:
        raise ValueError(f'{folder} lacks {", ".join(missing)}: not an exported folder')
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ValueError(f'{folder} holds pickle files {pickles}; only safetensors weights are published. '
                         f'Remove them or export into an empty folder')

    def wanted(path: Path) -> bool:
        name = path.relative_to(folder).as_posix()
        return name in HUB_FILES or any(fnmatch.fnmatchcase(name, pattern) for pattern in include)
    return [p for p in files if wanted(p)], [p for p in files if not wanted(p)]


def check_repo_id(repo_id: str) -> None:
    if repo_id.count('/') != 1 or not all(repo_id.split('/')):
        raise ValueError(f'--repo must be "org/name", got {repo_id!r}')


@torch.no_grad()
def check_folder(folder: PathLike) -> str:
    """Loads ``folder`` as a user loads the pushed repo (config.json parsed and consistent, architecture
    registered, weights verified against config.json's sha256, ``create_model(..., pretrained=True)``, a
    forward pass with finite outputs); refuses with the reason, or returns what was checked."""
    folder = Path(folder)
    config = read_config(folder / CONFIG_FILE, folder / CONFIG_FILE)
    if not timm.is_model(config['architecture']):
        raise ValueError(f'{folder / CONFIG_FILE} names architecture {config["architecture"]!r}, which timm does '
                         f'not know here; expected a registered model (`python -m timm_vitvariants list`)')
    record = config.get(WEIGHTS_ENTRY)
    verify_file(folder / WEIGHTS_FILE, folder / WEIGHTS_FILE, record)
    try:
        model = timm.create_model(f'local-dir:{folder.resolve()}', pretrained=True).eval()
        outputs = model(_sample_input(model))
    except Exception as e:  # whatever stops the load is the reason to refuse
        raise ValueError(f'{folder} does not load with timm.create_model: {type(e).__name__}: {e}') from e
    if not torch.isfinite(outputs).all():
        raise ValueError(f'{folder} loads, but gives non-finite outputs (NaN or inf) on a random image')
    verified = f'sha256 {record["sha256"][:12]}... verified' if record else 'no sha256 recorded (re-export to add one)'
    summary = f'{config["architecture"]} loads, {verified}, finite outputs of shape {tuple(outputs.shape)}'
    if drop_repeated_classes(config):
        summary += '; config.json is uploaded without model_args.num_classes (transformers reads the top level)'
    return summary


def push_folder(
        folder: PathLike,
        repo_id: str,
        private: bool = False,
        revision: Optional[str] = None,
        commit_message: str = 'Upload timm_vitvariants model',
        dry_run: bool = False,
        include: Sequence[str] = (),
        check: bool = True,
) -> List[str]:
    """Checks that the folder loads (``check_folder``), creates ``repo_id`` if needed and uploads the
    folder's Hub files (and those matching ``include``) in one commit; returns the uploaded paths. The
    config.json of an older export is uploaded without ``model_args.num_classes`` (``drop_repeated_classes``).
    ``check=False`` skips the load check, for a caller that has just run ``check_folder`` itself.

    huggingface_hub reads ``HF_ENDPOINT`` and ``HF_TOKEN`` from the environment and shows progress
    bars for large files (unless ``HF_HUB_DISABLE_PROGRESS_BARS`` is set).
    """
    check_repo_id(repo_id)
    folder = Path(folder)
    names = [p.relative_to(folder).as_posix() for p in upload_plan(folder, include)[0]]
    if check:
        check_folder(folder)
    if dry_run:
        return names
    from huggingface_hub import CommitOperationAdd, HfApi
    uploads = {name: str(folder / name) for name in names}
    config = json.loads((folder / CONFIG_FILE).read_text())
    if drop_repeated_classes(config):  # an older export: the repo gets a config.json transformers reads
        uploads[CONFIG_FILE] = json.dumps(config, indent=2).encode()
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.create_commit(repo_id, [CommitOperationAdd(name, content) for name, content in uploads.items()],
                          commit_message=commit_message, revision=revision)
    except Exception as e:  # HTTP errors, refused connections, timeouts: one message naming where
        raise RuntimeError(f'uploading {", ".join(names)} to {repo_id} (revision {revision or "main"}) on '
                           f'{api.endpoint} failed: {type(e).__name__}: {e}') from e
    return names
