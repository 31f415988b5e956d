"""Loading from the Hub so that nothing goes wrong silently: verified weights, consistent configs, errors
that name the endpoint, repo, revision and file.

- ``config.json`` is read through ``read_config`` for every ``hf-hub:`` and ``local-dir:`` model once the
  plugin is imported (``install`` puts ``load_config_from_hub``/``load_config_from_dir`` in place of timm's
  two readers): a download failure, a file that is not JSON or names no architecture becomes one error
  that says where. The architecture is unknown until the file is parsed, so this part holds for every repo.
  For our architectures the class and channel counts must also agree across the file.
- ``model.safetensors`` of our architectures is fetched by ``fetch_weights`` before timm reads a tensor:
  its sha256 is compared with the one ``export`` records in config.json (``weights``) and with the blob's
  name in huggingface_hub's cache (the file's ETag: its sha256 for LFS files, as the Hub stores weights).
  A mismatch removes the blob and its snapshot link, so the next load downloads again. timm then loads
  the verified file from the snapshot of the same commit, without another request.
"""
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ._factory import HUB_WEIGHTS_FILE, RemoteEntryNotFoundError

CONFIG_FILE = 'config.json'
WEIGHTS_ENTRY = 'weights'  # config.json's top-level record of the weights file: {file, sha256, size}
SHA256_LENGTH = 64


class HubDownloadError(OSError):
    """A file could not be fetched from the Hub (network, timeout, HTTP error, not in the offline cache);
    the message names the endpoint, repo, revision and file, and the original error is chained."""


@dataclass(frozen=True)
class HubFile:
    """One file of one repo revision, as error messages name it."""
    repo_id: str
    revision: Optional[str]
    filename: str

    def __str__(self) -> str:
        from huggingface_hub import constants
        return f'{self.filename} of {self.repo_id} (revision {self.revision or "main"}) on {constants.ENDPOINT}'


def sha256_of(path: os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def weights_record(path: os.PathLike) -> Dict[str, Any]:
    """What ``export`` writes under config.json's ``weights``: the file's name, sha256 and size."""
    return {'file': Path(path).name, 'sha256': sha256_of(path), 'size': os.path.getsize(path)}


def download(where: HubFile, cache_dir: Optional[os.PathLike] = None) -> str:
    """``hf_hub_download`` into huggingface_hub's cache; every failure but a bad argument becomes a
    ``HubDownloadError`` (a missing file keeps huggingface_hub's class as its cause)."""
    import timm
    from huggingface_hub import hf_hub_download
    try:
        return hf_hub_download(where.repo_id, where.filename, revision=where.revision, cache_dir=cache_dir,
                               library_name='timm', library_version=timm.__version__)
    except Exception as e:  # httpx/huggingface_hub errors for refused connections, cuts, timeouts, HTTP status
        if isinstance(e, ValueError) and not isinstance(e, OSError):
            raise  # an invalid repo id or revision: the user's argument, already named
        raise HubDownloadError(f'downloading {where} failed: {_reason(e)}') from e


def _reason(error: BaseException) -> str:
    """The first cause in the chain, which says what happened (huggingface_hub's last word for a failed
    request is often only "check your connection"), then the class huggingface_hub reported it as."""
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    text = f'{type(root).__name__}: {root}'
    return text if root is error else f'{text} (reported as {type(error).__name__})'


# --- config.json ------------------------------------------------------------------------------

def _ours(architecture: str) -> bool:
    from timm.models import is_model
    from timm.models._registry import _model_to_module
    from . import MODEL_MODULES
    return is_model(architecture) and _model_to_module.get(architecture) in MODEL_MODULES


def read_config(path: os.PathLike, where: Any) -> Dict[str, Any]:
    """config.json as a dict, refused with a ValueError that names ``where`` when it is not JSON, names no
    architecture or, for our architectures, states class or channel counts that disagree."""
    try:
        config = json.loads(Path(path).read_text(encoding='utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f'{where} is not valid JSON ({e}); expected timm\'s config.json') from e
    if not isinstance(config, dict) or not isinstance(config.get('architecture'), str):
        raise ValueError(f'{where} names no architecture: expected a JSON object with an "architecture" string '
                         f'(timm\'s config.json, written by `python -m timm_vitvariants export`)')
    for key in ('pretrained_cfg', 'model_args', WEIGHTS_ENTRY):
        if key in config and not isinstance(config[key], dict):
            raise ValueError(f'{where}: "{key}" must be a JSON object, got {type(config[key]).__name__}')
    if _ours(config['architecture']):
        check_config(config, where)
    return config


def check_config(config: Dict[str, Any], where: Any) -> None:
    """num_classes and in_chans must be the same wherever config.json states them: timm builds the model
    from one place and adapts the weights from another, so a disagreement would silently give a random head."""
    pretrained_cfg = config.get('pretrained_cfg', {})
    model_args = config.get('model_args', {})
    input_size = pretrained_cfg.get('input_size')
    stated = {
        'num_classes': {'top level': config.get('num_classes'), 'model_args': model_args.get('num_classes'),
                        'pretrained_cfg': pretrained_cfg.get('num_classes')},
        'in_chans': {'top level': config.get('in_chans'), 'model_args': model_args.get('in_chans'),
                     'pretrained_cfg.input_size[0]': input_size[0] if isinstance(input_size, list) else None},
    }
    for name, places in stated.items():
        given = {place: value for place, value in places.items() if value is not None}
        bad = {place: value for place, value in given.items() if not isinstance(value, int) or value < 0}
        if bad:
            raise ValueError(f'{where}: {name} must be a non-negative integer, got {bad}')
        if len(set(given.values())) > 1:
            listed = ', '.join(f'{place} {value}' for place, value in given.items())
            raise ValueError(f'{where} states different {name}: {listed}; expected one value everywhere '
                             f'(re-export the model, or fix config.json)')


def _architecture_known(config: Dict[str, Any], where: Any) -> None:
    from timm.models import is_model
    if not is_model(config['architecture']):
        # "Unknown model" as timm words it: callers (transformers) look for it
        raise RuntimeError(f'Unknown model ({config["architecture"]}) named by {where}: install the package that '
                           f'registers it (for our architectures: pip install timm_vitvariants)')


def load_config_from_hub(model_id: str, cache_dir: Optional[os.PathLike] = None) -> Tuple[dict, str, dict]:
    """timm's ``load_model_config_from_hf``, with errors that say where."""
    from timm.models._hub import _parse_model_cfg, hf_split
    repo_id, revision = hf_split(model_id)
    where = HubFile(repo_id, revision, CONFIG_FILE)
    config = read_config(download(where, cache_dir), where)
    _architecture_known(config, where)
    return _parse_model_cfg(config, {'hf_hub_id': model_id, 'source': 'hf-hub'})


def load_config_from_dir(model_path: os.PathLike) -> Tuple[dict, str, dict]:
    """timm's ``load_model_config_from_path``, with the same checks as the Hub path."""
    from timm.models._hub import _parse_model_cfg
    path = Path(model_path) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f'Config file not found: {path}')
    config = read_config(path, path)
    _architecture_known(config, path)
    return _parse_model_cfg(config, {'file': str(model_path), 'source': 'local-dir'})


def install() -> None:
    """Puts the two readers above in place of timm's, for ``create_model('hf-hub:...')`` and ``'local-dir:...'``."""
    from timm.models import _factory
    _factory.load_model_config_from_hf = load_config_from_hub
    _factory.load_model_config_from_path = load_config_from_dir


# --- weights ----------------------------------------------------------------------------------

def _remove_cached(pointer: str) -> None:
    """The blob a snapshot entry points to, and the entry: the next load downloads the file again."""
    blob = os.path.realpath(pointer)
    for path in {pointer, blob}:
        if os.path.lexists(path):
            os.remove(path)


def verify_file(path: os.PathLike, where: Any, record: Optional[Dict[str, Any]], etag: Optional[str] = None) -> None:
    """Refuses a file whose size or sha256 differs from config.json's record or from its sha256 ETag."""
    expected = []
    if record and record.get('file') == Path(path).name:
        if 'size' in record and os.path.getsize(path) != record['size']:
            raise ValueError(f'{where} has {os.path.getsize(path)} bytes, config.json records {record["size"]} '
                             f'(sha256 {record.get("sha256")}): the file is damaged or not the one exported')
        if record.get('sha256'):
            expected.append(('config.json', record['sha256']))
    if etag and len(etag) == SHA256_LENGTH and all(c in '0123456789abcdef' for c in etag):
        expected.append(('the Hub\'s ETag', etag))
    if not expected:
        return
    found = sha256_of(path)
    for source, value in expected:
        if found != value:
            raise ValueError(f'{where} is damaged: sha256 {found}, expected {value} (from {source})')


def classifier_rows(path: os.PathLike, cfg: Dict[str, Any], where: Any) -> int:
    """Rows of the classifier weight (0: no classifier), read from the safetensors header only."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework='pt') as f:
            key = f'{cfg.get("classifier")}.weight'
            return f.get_slice(key).get_shape()[0] if key in f.keys() else 0
    except Exception as e:  # safetensors' errors for a damaged header of a file without a recorded hash
        raise ValueError(f'{where} is not a readable safetensors file: {e}') from e


def check_fit(rows: int, cfg: Dict[str, Any], where: Any) -> None:
    """The classes the pretrained cfg states must be the rows of the weights' classifier."""
    stated = cfg.get('num_classes')
    if rows != stated:
        raise ValueError(f'{where}: its pretrained config (config.json, or pretrained_cfg_overlay) states '
                         f'num_classes {stated}, but the weights\' classifier {cfg.get("classifier")!r} has '
                         f'{rows} classes; expected the same number (num_classes= passed to create_model '
                         f'then gives a new head)')


@dataclass
class VerifiedWeights:
    """A weights file checked before loading, and the cfg overlay that makes timm load exactly it."""
    path: str
    overlay: Dict[str, Any]
    hub_id: Optional[str] = None

    def restore(self, model: Any) -> None:
        """The model records the Hub id it was asked for, not the pinned commit it was loaded from."""
        if self.hub_id is None:
            return
        for built in (model, getattr(model, 'model', None)):  # a features_only wrapper and the model inside
            cfg = getattr(built, 'pretrained_cfg', None)
            if isinstance(cfg, dict) and cfg.get('hf_hub_id') == self.overlay['hf_hub_id']:
                cfg['hf_hub_id'] = self.hub_id


def fetch_weights(cfg: Dict[str, Any], load_from: str, location: Any, filename: str,
                  cache_dir: Optional[os.PathLike] = None) -> Optional[VerifiedWeights]:
    """The weights file of a Hub repo (``filename``) or a local folder, verified (see the module docstring);
    None for a folder without model.safetensors (timm then looks for other names and says what it found)."""
    from timm.models._hub import hf_split
    if load_from == 'local-dir':
        folder = Path(location)
        path = folder / HUB_WEIGHTS_FILE  # what timm reads first in a folder, whatever hf_hub_filename says
        if not path.is_file():
            return None
        config_path = folder / CONFIG_FILE
        record = read_config(config_path, config_path).get(WEIGHTS_ENTRY) if config_path.is_file() else None
        verify_file(path, path, record)
        check_fit(classifier_rows(path, cfg, path), cfg, path)
        return VerifiedWeights(str(path), {})
    hub_id = location[0] if isinstance(location, (tuple, list)) else location
    repo_id, revision = hf_split(hub_id)
    where = HubFile(repo_id, revision, filename)
    try:
        path = download(where, cache_dir)
    except HubDownloadError as e:
        if isinstance(e.__cause__, RemoteEntryNotFoundError) and not isinstance(e.__cause__, FileNotFoundError):
            raise RuntimeError(
                f'The Hub repo {repo_id!r} has no {filename} (the weights file its config names; {where}). '
                f'timm_vitvariants loads only safetensors weights from the Hub and never unpickles a checkpoint '
                f'(pytorch_model.bin, *.pth); publish the weights with `python -m timm_vitvariants export` '
                f'and `push`.') from e
        raise
    # .../snapshots/<commit>/<filename>: the commit the file belongs to, and its config.json beside it
    snapshot = Path(path).parents[len(Path(filename).parts) - 1]
    commit = snapshot.name
    blob = os.path.realpath(path)
    etag = Path(blob).name if os.path.islink(path) else None
    config_path = snapshot / CONFIG_FILE
    record = None
    if config_path.is_file():
        record = read_config(config_path, HubFile(repo_id, commit, CONFIG_FILE)).get(WEIGHTS_ENTRY)
    try:
        verify_file(path, where, record, etag)
        rows = classifier_rows(path, cfg, where)
    except ValueError as e:  # a damaged file: out of the cache
        _remove_cached(path)
        raise ValueError(f'{e}. The file was removed from the cache ({os.path.dirname(os.path.dirname(blob))}); '
                         f'the next load downloads it again') from e
    check_fit(rows, cfg, where)  # a config that does not match sound weights: the file stays cached
    return VerifiedWeights(path, {'hf_hub_id': f'{repo_id}@{commit}', 'hf_hub_filename': filename}, hub_id)


__all__: List[str] = ['HubDownloadError', 'HubFile', 'read_config', 'check_config', 'fetch_weights', 'install',
                      'weights_record', 'sha256_of', 'verify_file']
