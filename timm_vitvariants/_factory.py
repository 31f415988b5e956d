"""Registration, pretrained configs and model building shared by the family files."""
import inspect
import sys
from typing import Any, Callable, Dict, Type, TypeVar

import torch
try:
    from huggingface_hub.errors import RemoteEntryNotFoundError  # huggingface_hub >= 1.0
except ImportError:  # older: one class for remote and local misses
    from huggingface_hub.utils import EntryNotFoundError as RemoteEntryNotFoundError

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, register_model
from timm.models._builder import _resolve_pretrained_source, resolve_pretrained_cfg
from timm.models._features import FeatureGetterNet
from timm.models._registry import _model_to_module

ModelT = TypeVar('ModelT')

PACKAGE = __name__.rsplit('.', 1)[0]
VIT_PYTORCH_URL = 'https://github.com/lucidrains/vit-pytorch'
HUB_WEIGHTS_FILE = 'model.safetensors'  # the only weights file read from the Hub


def register_variant(fn: Callable[..., Any]) -> Callable[..., Any]:
    """timm's ``register_model``, refusing names timm already has (timm would silently replace its
    own model with ours)."""
    owner = _model_to_module.get(fn.__name__)
    if owner is not None and sys.modules.get(fn.__module__) is not None:
        ours = {m.rsplit('.', 1)[-1] for m in sys.modules if m.startswith(PACKAGE + '.')}
        if owner not in ours:
            raise RuntimeError(
                f'{fn.__name__!r} is already a timm model (module {owner!r}); '
                f'{PACKAGE} must not replace it, choose another name')
    return register_model(fn)


class FeatureGetter(FeatureGetterNet):
    """timm's ``features_only`` wrapper over ``forward_intermediates``, plus the
    ``set_grad_checkpointing`` detection and segmentation trainers call on a backbone."""

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)


def base_cfg(**kwargs: Any) -> Dict[str, Any]:
    """Pretrained-cfg defaults for every variant: ImageNet-1k classification at 224."""
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.95, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'license': 'apache-2.0', 'origin_url': VIT_PYTORCH_URL,
        **kwargs,
    }


def build_variant(
        model_cls: Type[ModelT],
        variant: str,
        pretrained: bool = False,
        pretrained_filter_fn: Callable = None,
        num_feature_taps: int = 4,
        **kwargs: Any,
) -> ModelT:
    """``build_model_with_cfg`` with features through ``forward_intermediates`` (timm's 'getter'),
    a clear error, instead of random weights, when no weights are published, and Hub weights read
    only from a safetensors file (a repo with only a pickle checkpoint is refused, never unpickled)."""
    load_from, location, verified = None, None, None
    if kwargs.get('img_size') is not None:
        # the configured input size follows img_size, so timm's data configs give the matching transform
        height, width = to_2tuple(kwargs['img_size'])
        kwargs['pretrained_cfg_overlay'] = {
            **(kwargs.get('pretrained_cfg_overlay') or {}), 'input_size': (kwargs.get('in_chans', 3), height, width)}
    if pretrained:
        cfg = resolve_pretrained_cfg(
            variant,
            pretrained_cfg=kwargs.get('pretrained_cfg'),
            pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'),
        )
        load_from, location = _resolve_pretrained_source(cfg.to_dict())
        if not load_from:
            raise RuntimeError(
                f'No pretrained weights are published for {variant!r}. Create it with pretrained=False, '
                f'or load your own: timm.create_model({variant!r}, pretrained=True, '
                f'pretrained_cfg_overlay=dict(file="model.safetensors")), '
                f'timm.create_model("hf-hub:ORG/REPO", pretrained=True), or convert a vit-pytorch model '
                f'with timm_vitvariants.from_vit_pytorch(model).')
        # From the Hub only safetensors: timm would otherwise fall back to unpickling pytorch_model.bin.
        filename = cfg.hf_hub_filename if (cfg.hf_hub_filename or '').endswith('.safetensors') else HUB_WEIGHTS_FILE
        if load_from in ('hf-hub', 'local-dir'):
            # verified before timm reads a tensor; timm then loads exactly that file (a pinned commit)
            from ._hub_load import fetch_weights
            verified = fetch_weights(cfg.to_dict(), load_from, location, filename, kwargs.get('cache_dir'))
            if verified is not None:
                kwargs['pretrained_cfg_overlay'] = {**(kwargs.get('pretrained_cfg_overlay') or {}),
                                                    **verified.overlay}
    model = build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_filter_fn=pretrained_filter_fn,
        # features_only goes through forward_intermediates; by default all taps (an int = last n)
        feature_cfg=dict(feature_cls=FeatureGetter, out_indices=num_feature_taps),
        **kwargs,
    )
    if verified is not None:
        verified.restore(model)
    if isinstance(model, model_cls):
        # every constructor argument that makes this model, the variant's own included, for the model cards and
        # the converters' records (config.json's ``model_args`` comes from timm's ``_model_args``: what the
        # caller passed to create_model)
        accepted = inspect.signature(model_cls.__init__).parameters
        model.model_args = {k: v for k, v in kwargs.items() if k in accepted and k not in ('device', 'dtype')}
    return model
