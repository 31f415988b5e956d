"""Every family trains as timm's train.py trains it (CI has no copy of train.py, so these tests make the
calls it makes): ``create_model`` with train.py's keyword arguments, layer-decay optimizer, scheduler,
Mixup/CutMix collation, EMA, grad checkpointing and channels-last, timm's dataset and loader on a tiny
generated ImageFolder, ``CheckpointSaver`` and resume. Each family runs its small configuration
(tests/family_specs.py)."""
import re
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import pytest
import torch
from PIL import Image

import timm
import timm_vitvariants
from timm.data import FastCollateMixup, create_dataset, create_loader, resolve_data_config
from timm.loss import SoftTargetCrossEntropy
from timm.models import load_checkpoint, resume_checkpoint
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import CheckpointSaver, ModelEmaV3

from family_specs import SPECS

FAMILIES = list(timm_vitvariants.MODEL_MODULES)
NUM_CLASSES = 2
IMAGES_PER_CLASS = 8
BATCH = 8
EPOCHS = 8


def make_image_folder(root: Path, size: Tuple[int, int]) -> Path:
    """Two classes told apart by colour: dark-red vs light-blue noisy images, a little larger than the
    model's input so the random-resized crop has something to crop."""
    rng = np.random.default_rng(0)
    height, width = size[0] + 8, size[1] + 8
    for label, colour in enumerate(((160, 40, 40), (60, 120, 220))):
        folder = root / 'train' / f'class{label}'
        folder.mkdir(parents=True)
        for i in range(IMAGES_PER_CLASS):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f'{i}.png')
    return root


def train_py_model(family: str, **overrides: Any) -> torch.nn.Module:
    """``create_model`` exactly as train.py calls it (its defaults for the options not given)."""
    kwargs: Dict[str, Any] = dict(
        pretrained=False, in_chans=3, num_classes=NUM_CLASSES, drop_rate=0.1, drop_path_rate=0.1,
        drop_block_rate=None, global_pool=None, bn_momentum=None, bn_eps=None, scriptable=False,
        checkpoint_path='',
    )
    kwargs.update(SPECS[family]['small'])  # train.py's --model-kwargs
    kwargs.update(overrides)
    return timm.create_model(f'{family}_tiny', **kwargs)


def train_py_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return create_optimizer_v2(model, opt='adamw', lr=2e-3, weight_decay=0.05, layer_decay=0.75)


def mean_eval_loss(model: torch.nn.Module, loader) -> float:
    model.eval()
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(model(x), y).item() for x, y in loader]
    model.train()
    return sum(losses) / len(losses)


def test_every_family_has_a_small_configuration():
    assert set(FAMILIES) <= set(SPECS)


@pytest.mark.parametrize('family', FAMILIES)
def test_layer_decay_walks_stem_then_blocks_in_order_then_head(family):
    """--layer-decay: the stem learns slowest, every block faster than the one before, the head at full rate."""
    small = SPECS[family]['small']
    # at least two blocks per stage, so that the order inside a stage shows too
    deeper = dict(depths=tuple(max(d, 2) for d in small['depths'])) if 'depths' in small else {}
    model = train_py_model(family, **deeper)
    optimizer = train_py_optimizer(model)
    scale_of = {id(p): group['lr_scale'] for group in optimizer.param_groups for p in group['params']}
    scales = {name: scale_of[id(p)] for name, p in model.named_parameters()}
    cfg = model.pretrained_cfg
    stems = [cfg['first_conv']] if isinstance(cfg['first_conv'], str) else cfg['first_conv']
    stem = {s for n, s in scales.items() if any(n.startswith(f'{c}.') for c in stems)}
    head = {s for n, s in scales.items() if n.startswith(f'{cfg["classifier"]}.')}
    # blocks ('blocks.N' or 'stages.S.blocks.N'), in registration order, which is the forward order
    blocks: Dict[str, set] = {}
    for name, scale in scales.items():
        match = re.match(r'(.*?blocks\.\d+)\.', name)
        if match:
            blocks.setdefault(match.group(1), set()).add(scale)
    assert len(stem) == 1 and head == {1.0} and len(blocks) >= 2, (stem, head, list(blocks))
    assert all(len(s) == 1 for s in blocks.values()), 'a block split over several depths'
    in_order = [stem.pop()] + [s.pop() for s in blocks.values()] + [1.0]
    assert in_order == sorted(in_order) and len(set(in_order)) == len(in_order), in_order
    assert min(scales.values()) == in_order[0]


@pytest.mark.parametrize('family', FAMILIES)
def test_train_py_pipeline_trains_saves_and_resumes(family, tmp_path):
    size = tuple(SPECS[family]['small_size'])
    root = make_image_folder(tmp_path / 'data', size)
    torch.manual_seed(0)
    model = train_py_model(family)
    model.set_grad_checkpointing(True)
    model.to(memory_format=torch.channels_last)

    # data as train.py sets it up: dataset, prefetching loader, Mixup/CutMix in the collate
    data_config = resolve_data_config(dict(input_size=(3, *size)), model=model)
    assert data_config['input_size'] == (3, *size)
    dataset = create_dataset('', root=str(root), split='train', is_training=True)
    mixup = FastCollateMixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1,
                             num_classes=NUM_CLASSES)
    loader_kwargs = dict(input_size=data_config['input_size'], batch_size=BATCH, mean=data_config['mean'],
                         std=data_config['std'], num_workers=0, device=torch.device('cpu'), use_prefetcher=True)
    train_loader = create_loader(dataset, is_training=True, collate_fn=mixup, **loader_kwargs)
    plain_dataset = create_dataset('', root=str(root), split='train', is_training=False)
    eval_loader = create_loader(plain_dataset, is_training=False, crop_pct=1.0, **loader_kwargs)

    optimizer = train_py_optimizer(model)
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched='cosine', num_epochs=EPOCHS, warmup_epochs=1, warmup_lr=1e-4, min_lr=1e-5,
        updates_per_epoch=len(train_loader))
    assert num_epochs == EPOCHS
    ema = ModelEmaV3(model, decay=0.9)
    loss_fn = SoftTargetCrossEntropy()

    before = mean_eval_loss(model, eval_loader)
    step = 0
    for epoch in range(EPOCHS):
        for x, target in train_loader:
            assert x.shape == (BATCH, 3, *size) and target.shape == (BATCH, NUM_CLASSES)  # soft mixed targets
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast('cpu', dtype=torch.bfloat16):  # --amp --amp-dtype bfloat16
                loss = loss_fn(model(x), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            ema.update(model, step=step)
            scheduler.step_update(num_updates=step)
        scheduler.step(epoch + 1)
    after = mean_eval_loss(model, eval_loader)
    assert after < before, f'loss did not decrease: {before:.4f} -> {after:.4f}'
    assert any(not torch.equal(a, b) for a, b in zip(ema.module.state_dict().values(), model.state_dict().values()))

    # checkpoint as train.py saves it, then resume into fresh objects
    saver = CheckpointSaver(model=model, optimizer=optimizer, model_ema=ema, checkpoint_dir=str(tmp_path),
                            recovery_dir=str(tmp_path), decreasing=True, max_history=1)
    saver.save_checkpoint(epoch=EPOCHS - 1, metric=after)
    last = tmp_path / 'last.pth.tar'
    assert last.is_file() and (tmp_path / f'checkpoint-{EPOCHS - 1}.pth.tar').is_file()

    torch.manual_seed(123)  # different initial weights: the resume must overwrite all of them
    resumed = train_py_model(family)
    resumed.set_grad_checkpointing(True)
    resumed.to(memory_format=torch.channels_last)
    resumed_optimizer = train_py_optimizer(resumed)
    resume_epoch = resume_checkpoint(resumed, str(last), optimizer=resumed_optimizer, log_info=False)
    assert resume_epoch == EPOCHS  # train.py continues with the next epoch
    resumed_ema = ModelEmaV3(resumed, decay=0.9)
    load_checkpoint(resumed_ema.module, str(last), use_ema=True)

    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(ema.module.state_dict().items(), resumed_ema.module.state_dict().values()):
        assert torch.equal(a, b), f'ema {name}'
    # the optimizer state came back too: one more identical step keeps both models identical
    x, target = next(iter(train_loader))
    for m, opt in ((model, optimizer), (resumed, resumed_optimizer)):
        torch.manual_seed(5)  # the same drop-path draws
        opt.zero_grad()
        loss_fn(m(x), target).backward()
        opt.step()
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f'after one more step: {name}'


@pytest.mark.parametrize('family', FAMILIES)
def test_train_py_checkpoint_options(family, tmp_path):
    """--initial-checkpoint loads every weight; --pretrained --pretrained-path with another class count
    loads the body and gives a fresh head of the new size; --in-chans builds a model for that input."""
    torch.manual_seed(0)
    source = train_py_model(family)
    path = tmp_path / 'weights.pth'
    torch.save(source.state_dict(), path)
    body = {k: v for k, v in source.state_dict().items() if not k.startswith('head.')}

    torch.manual_seed(1)
    initial = train_py_model(family, checkpoint_path=str(path))
    for (name, a), b in zip(source.state_dict().items(), initial.state_dict().values()):
        assert torch.equal(a, b), name

    torch.manual_seed(1)
    adapted = train_py_model(family, pretrained=True, num_classes=5,
                             pretrained_cfg_overlay=dict(file=str(path), num_classes=-1))
    assert adapted.get_classifier().out_features == 5
    adapted_state = adapted.state_dict()
    for name, value in body.items():
        assert torch.equal(adapted_state[name], value), name

    grey = train_py_model(family, in_chans=1).eval()
    with torch.no_grad():
        assert grey(torch.randn(2, 1, *SPECS[family]['small_size'])).shape == (2, NUM_CLASSES)
