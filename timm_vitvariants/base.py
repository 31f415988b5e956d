"""The timm model API, written once: :class:`ModelBase` for every family, :class:`StageModel` for the
hierarchical (stem -> stages -> norm -> head) ones.

A hierarchical family model subclasses :class:`StageModel` and builds ``input_check`` (a
:class:`~timm_vitvariants.layers.ImageCheck`), ``stem``, ``stages`` (an ``nn.Sequential`` of stage
modules that each honour a ``grad_checkpointing`` flag), ``norm``, ``head`` (a timm
``ClassifierHead`` or ``NormMlpClassifierHead``) and ``feature_info``. Everything else --
``forward_features``, ``forward_head``, ``forward_intermediates``, ``prune_intermediate_layers``,
``reset_classifier``, ``group_matcher``, ``no_weight_decay``, ``set_grad_checkpointing`` -- comes
from here and behaves as in timm's own model files.
"""
import numbers
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, TypeVar, Union

import torch
from torch import nn

from timm.layers import get_device_dtype, to_2tuple
from timm.models._input import update_model_input_size
from timm.models._features import feature_take_indices

from .layers import init_model_weights

# Parameters that should not be decayed, matched anywhere in a parameter's name.
NO_WEIGHT_DECAY_KEYS = ('relative_position_bias_table', 'register_tokens', 'cls_token')

T = TypeVar('T')


def per_stage(value: Union[T, Sequence[T]], num_stages: int, name: str) -> Tuple[T, ...]:
    """A value for every stage from one value or a per-stage sequence (vit-pytorch's ``cast_tuple``)."""
    if isinstance(value, (tuple, list)):
        if len(value) != num_stages:
            raise ValueError(f'{name} needs one value or one per stage ({num_stages}), got {value}')
        return tuple(value)
    return (value,) * num_stages


def windows_for_size(img_size: Optional[Tuple[int, int]], window_size: Optional[Union[int, Tuple[int, int]]],
                     ratio: int = 32, default: int = 7) -> Tuple[int, int]:
    """timm maxxvit's rule: an explicit ``window_size`` wins, else img_size / ``ratio`` per side
    (224 -> 7, 384 -> 12, 512 -> 16), else ``default``."""
    if window_size is not None:
        window = to_2tuple(window_size)
    elif img_size is not None:
        window = tuple(max(1, s // ratio) for s in img_size)
    else:
        window = (default, default)
    if len(window) != 2 or not all(isinstance(s, numbers.Integral) and s >= 1 for s in window):
        raise ValueError(f'window_size must be >= 1: an int or a (height, width) pair of ints, got {window_size!r}')
    return int(window[0]), int(window[1])


def stage_widths(embed_dim: Union[int, Sequence[int]], num_stages: int) -> List[int]:
    """One width per stage: the first stage's, doubled per stage (vit-pytorch's ``dim``), or all of them."""
    if isinstance(embed_dim, int):
        return [embed_dim * 2 ** i for i in range(num_stages)]
    if len(embed_dim) != num_stages:
        raise ValueError(f'embed_dim needs one width per stage ({num_stages}), got {embed_dim}')
    return list(embed_dim)


def check_common_args(
        num_classes: int,
        in_chans: int,
        global_pool: str,
        pools: Sequence[str],
        **drop_rates: float,
) -> None:
    """The constructor arguments every family shares, checked before anything is built: ``num_classes``
    >= 0, ``in_chans`` >= 1, ``global_pool`` one of ``pools``, every drop rate in [0, 1)."""
    if num_classes < 0:
        raise ValueError(f'num_classes must be >= 0 (0 for no classifier), got {num_classes}')
    if in_chans < 1:
        raise ValueError(f'in_chans must be >= 1, got {in_chans}')
    if global_pool not in pools:
        names = [repr(p) for p in pools]
        raise ValueError(f"global_pool must be {', '.join(names[:-1])} or {names[-1]} (none), got {global_pool!r}")
    for name, rate in drop_rates.items():
        if not 0. <= rate < 1.:
            raise ValueError(f'{name} must be in [0, 1), got {rate}')


def check_positive(**values: Union[int, Sequence[int]]) -> None:
    """Each value (a number or one per stage) must be >= 1: widths, depths, heads, windows."""
    for name, value in values.items():
        if any(v < 1 for v in (value if isinstance(value, (tuple, list)) else (value,))):
            raise ValueError(f'{name} must be >= 1, got {value}')


def check_output_fmt(output_fmt: str) -> None:
    """forward_intermediates' formats: 'NCHW' or 'NHWC'."""
    if output_fmt not in ('NCHW', 'NHWC'):
        raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")


def to_format(x: torch.Tensor, output_fmt: str) -> torch.Tensor:
    """NCHW -> NCHW or NHWC"""
    return x.permute(0, 2, 3, 1) if output_fmt == 'NHWC' else x


class ModelBase(nn.Module):
    """What every family's model shares: weight init, weight-decay exclusions, the checkpointing flag
    and ``forward`` = ``forward_head(forward_features(x))``."""

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False

    @torch.jit.ignore
    def init_weights(self) -> None:
        """Re-initializes every parameter and buffer, e.g. after ``create_model(..., device='meta')``
        and ``to_empty(device=...)``."""
        init_model_weights(self)

    @torch.jit.ignore
    @torch.no_grad()
    def init_non_persistent_buffers(self) -> None:
        """Rebuilds the buffers state dicts do not carry (relative-position indices), as timm models do:
        after ``to_empty`` these hold garbage, and ``load_state_dict`` does not restore them."""
        for module in self.modules():
            if module is not self and hasattr(module, 'init_non_persistent_buffers'):
                module.init_non_persistent_buffers()

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {n for n, _ in self.named_parameters() if any(k in n for k in NO_WEIGHT_DECAY_KEYS)}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def set_input_size(
            self,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            window_size: Optional[Union[int, Tuple[int, int]]] = None,
    ) -> None:
        """timm's ``set_input_size``: the windows for ``img_size`` (or ``window_size``) set in place by
        :meth:`_set_windows`, and the size recorded for data configs and exports."""
        if img_size is None and window_size is None:
            return
        size = to_2tuple(img_size) if img_size is not None else None
        window = self._set_windows(size, window_size)
        self._record_input_size(size or self.img_size, **({} if window is None else {'window_size': window}))

    @torch.jit.ignore
    def _set_windows(self, img_size: Optional[Tuple[int, int]], window_size: Any) -> Any:
        """Families whose modules depend on the window resize them here and return the window they set;
        here nothing depends on the input size, so there is only a size to record."""
        if window_size is not None:
            raise ValueError(
                f'{type(self).__name__} has no window that depends on the input size: pass img_size only')
        return None

    @torch.jit.ignore
    def _record_input_size(self, img_size: Optional[Union[int, Tuple[int, int]]], **model_args: Any) -> None:
        """Where timm and its data configs read the input size: the model's traits and reconstruction
        arguments (timm's ``update_model_input_size``) and ``pretrained_cfg['input_size']``."""
        if img_size is None:
            return
        self.img_size = to_2tuple(img_size)
        update_model_input_size(self, self.img_size, **model_args)
        cfg = getattr(self, 'pretrained_cfg', None)
        if cfg is not None:
            self.pretrained_cfg = self.default_cfg = {**cfg, 'input_size': (cfg['input_size'][0], *self.img_size)}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


class StageModel(ModelBase):
    """Base class: the shared model API over ``stem``, ``stages``, ``norm`` and ``head``."""
    # Whether the stem output is feature tap 0 (MaxViT: stride 2) or the stages alone are taps.
    stem_is_feature: bool = False

    # --- timm API ---

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^stem',
            blocks=[(r'^stages\.(\d+)', None), (r'^norm', (99999,))] if coarse else [
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^stages\.(\d+)\.norm', (99999,)),  # a stage's closing norm joins its last block
                (r'^stages\.(\d+)', (0,)),  # downsample / position encoding join the first block
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(
            self,
            num_classes: int,
            global_pool: Optional[str] = None,
            reset_other: bool = False,
    ) -> None:
        self.num_classes = num_classes
        self.head.reset(
            num_classes, global_pool, reset_other=reset_other, in_features=self.num_features,
            **get_device_dtype(self))
        self.head_hidden_size = self.head.num_features
        if global_pool is not None:
            self.global_pool = global_pool

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that returns intermediates.

        Args:
            x: Input image tensor (B, C, H, W).
            indices: Take last n taps if int, all if None, select matching indices if sequence.
            norm: Apply the final norm to the last tap.
            stop_early: Stop iterating over stages when the last wanted tap is reached.
            output_fmt: 'NCHW' or 'NHWC'.
            intermediates_only: Only return the intermediates.
        """
        check_output_fmt(output_fmt)
        x = self.input_check(x)
        offset = 1 if self.stem_is_feature else 0
        take_indices, max_index = feature_take_indices(len(self.stages) + offset, indices)
        last_idx = len(self.stages) - 1 + offset
        intermediates: List[torch.Tensor] = []

        x = self.stem(x)
        feat_idx = 0
        if offset and feat_idx in take_indices:
            intermediates.append(to_format(x, output_fmt))

        if torch.jit.is_scripting() or not stop_early:  # can't slice stages in torchscript
            stages = self.stages
        else:
            stages = self.stages[:max_index + 1 - offset]
        for i, stage in enumerate(stages):
            feat_idx = i + offset
            x = stage(x)
            if feat_idx in take_indices:
                x_inter = self.norm(x) if norm and feat_idx == last_idx else x
                intermediates.append(to_format(x_inter, output_fmt))

        if intermediates_only:
            return intermediates
        if feat_idx == last_idx:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Prune stages (and norm / head) not needed for the given taps."""
        offset = 1 if self.stem_is_feature else 0
        take_indices, max_index = feature_take_indices(len(self.stages) + offset, indices)
        prune_end = max_index < len(self.stages) - 1 + offset
        self.stages = self.stages[:max_index + 1 - offset]
        if prune_norm or prune_end:
            self.norm = nn.Identity()  # the final norm belongs to the last stage
        if prune_end:
            # features now end at the last kept tap: the head is sized for them
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '', reset_other=True)
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_check(x)
        x = self.stem(x)
        x = self.stages(x)
        x = self.norm(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)
