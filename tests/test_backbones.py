"""The models inside the libraries that consume timm backbones, at sizes that need padding: segmentation
(segmentation_models_pytorch's ``tu-`` encoders), detection (torchvision's Faster R-CNN over an FPN on
``features_only=True`` taps) and ONNX Runtime (``torch.onnx.export(dynamo=True)``). Tiny four-stage
configurations, small inputs."""
from collections import OrderedDict
from typing import Dict, List

import pytest
import torch
from torch import nn

import timm
import timm_vitvariants

from family_specs import SPECS
from parity import max_rel_error

HIERARCHICAL = ['maxvit_reg', 'regionvit', 'scalablevit', 'twinssvt']
FAMILIES = list(timm_vitvariants.MODEL_MODULES)
# four stages (strides 4 to 32, MaxViT's stem at 2 too), as narrow as each family allows
BACKBONE = dict(
    maxvit_reg=dict(embed_dim=16, depths=(1, 1, 1, 1), head_dim=8, stem_width=16),
    regionvit=dict(embed_dim=(16, 16, 32, 32), depths=(1, 1, 1, 1), num_heads=2, head_dim=8, stem_chs=(8, 16)),
    scalablevit=dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), ssa_key_dim=8, ssa_value_dim=8,
                     iwsa_key_dim=8, iwsa_value_dim=8),
    twinssvt=dict(embed_dims=(16, 16, 32, 32), depths=(1, 1, 1, 1), num_heads=2, head_dim=8),
)


def train_and_eval(model: nn.Module, x: torch.Tensor, expected_shape) -> None:
    """One training step with gradients on every encoder parameter, then an eval pass."""
    model.train()
    out = model(x)
    assert out.shape == expected_shape
    out.square().mean().backward()
    encoder = [p for n, p in model.named_parameters() if n.startswith('encoder.')]
    assert encoder and all(p.grad is not None and torch.isfinite(p.grad).all() for p in encoder)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == expected_shape and torch.isfinite(out).all()


# --- segmentation_models_pytorch ---------------------------------------------------------------

@pytest.mark.parametrize('family', HIERARCHICAL)
@pytest.mark.parametrize('architecture, size', [('Unet', (256, 256)), ('Unet', (320, 480)), ('FPN', (256, 256)),
                                                ('UPerNet', (320, 480))])
def test_segmentation_models_pytorch_encoder(family, architecture, size):
    """smp builds the encoder with timm.create_model('<name>', features_only=True, out_indices=...); 256 and
    320x480 are multiples of 32 but not of any window, so every stage pads."""
    import segmentation_models_pytorch as smp
    decoder = dict(
        Unet=dict(decoder_channels=(32, 16, 16, 8, 8)),
        FPN=dict(decoder_pyramid_channels=32, decoder_segmentation_channels=32),  # GroupNorm(32)
        UPerNet=dict(decoder_channels=32),
    )[architecture]
    torch.manual_seed(0)
    model = getattr(smp, architecture)(
        f'tu-{family}_tiny', encoder_weights=None, classes=3, **decoder, **BACKBONE[family])
    train_and_eval(model, torch.randn(2, 3, *size), (2, 3, *size))


# --- torchvision detection -----------------------------------------------------------------------

class TimmFPNBackbone(nn.Module):
    """The last three ``features_only`` taps of a timm model under torchvision's FeaturePyramidNetwork:
    what torchvision's ``resnet_fpn_backbone`` builds, with one of our models as the body."""

    def __init__(self, model_name: str, out_channels: int = 32, **kwargs):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
        self.body = timm.create_model(model_name, features_only=True, out_indices=(-3, -2, -1), **kwargs)
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), out_channels, LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


@pytest.mark.parametrize('family', HIERARCHICAL)
def test_torchvision_faster_rcnn_over_an_fpn(family):
    """Two images of different sizes: torchvision resizes them (shorter side 320) and pads the batch to a
    multiple of 32 (here 320x416), a size no window divides. A training step with targets, then eval."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign
    torch.manual_seed(0)
    backbone = TimmFPNBackbone(f'{family}_tiny', **BACKBONE[family])
    detector = FasterRCNN(
        backbone, num_classes=3, min_size=320, max_size=480,
        rpn_anchor_generator=AnchorGenerator(((32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 4),
        box_roi_pool=MultiScaleRoIAlign(['0', '1', '2'], output_size=7, sampling_ratio=2),
        representation_size=64, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
        rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, box_batch_size_per_image=64)
    images = [torch.rand(3, 300, 380), torch.rand(3, 260, 330)]
    targets = [dict(boxes=torch.tensor([[20., 30., 150., 200.]]), labels=torch.tensor([1])),
               dict(boxes=torch.tensor([[50., 40., 120., 90.], [10., 10., 300., 250.]]), labels=torch.tensor([2, 1]))]
    detector.train()
    losses = detector(images, targets)
    assert set(losses) == {'loss_classifier', 'loss_box_reg', 'loss_objectness', 'loss_rpn_box_reg'}
    sum(losses.values()).backward()
    body = list(backbone.body.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in body)
    detector.eval()
    with torch.no_grad():
        detections = detector(images)
    assert len(detections) == 2 and all(set(d) == {'boxes', 'labels', 'scores'} for d in detections)
    for d, image in zip(detections, images):
        assert (d['boxes'][:, 2:] <= torch.tensor(image.shape[:0:-1]) + 1e-3).all()  # in the image's own frame


# --- ONNX Runtime ----------------------------------------------------------------------------------

ONNX_SIZE = (36, 44)  # every family's small configuration pads here (RvT with dynamic_img_pad)


@pytest.mark.parametrize('family', FAMILIES)
def test_onnx_export_runs_in_onnxruntime(family, tmp_path):
    import onnxruntime
    kwargs = dict(SPECS[family]['small'], **(dict(dynamic_img_pad=True) if family == 'rvt' else {}))
    torch.manual_seed(0)
    model = timm.create_model(f'{family}_tiny', num_classes=5, **kwargs).eval()
    x = torch.randn(2, 3, *ONNX_SIZE)
    path = tmp_path / f'{family}.onnx'
    torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=['image'], output_names=['logits'])
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (actual,) = session.run(None, {'image': x.numpy()})
    with torch.no_grad():
        expected = model(x)
    assert max_rel_error(torch.from_numpy(actual), expected) < 1e-4


def readme_section_code(title: str) -> List[str]:
    """The ```python blocks of one README section."""
    from pathlib import Path
    text = (Path(__file__).parent.parent / 'README.md').read_text()
    section = text.split(f'\n## {title}\n', 1)[1].split('\n## ', 1)[0]
    return [block.split('\n```', 1)[0] for block in section.split('```python\n')[1:]]


def test_readme_backbone_snippets_run_as_written():
    blocks = readme_section_code('As a backbone')
    assert len(blocks) == 2
    scope: dict = {}
    exec(compile(blocks[0], 'README.md (segmentation)', 'exec'), scope)
    assert scope['masks'].shape == (1, 21, 320, 480)
    scope = {}
    exec(compile(blocks[1], 'README.md (detection)', 'exec'), scope)
    assert len(scope['detections']) == 2 and all('boxes' in d for d in scope['detections'])
