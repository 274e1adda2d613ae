"""Zoo backbones for OpenMMLab toolboxes (mmdetection, mmsegmentation), where they are installed.

Both toolboxes need a full mmcv build with its compiled ops (``mmcv._ext``); mmcv-lite is not enough, and mmcv 2.1
only builds from source on the project's machines (about 15 minutes; shared/reference/deps.md), so CI does not build
it: the tests exercise the registration where the toolbox imports and otherwise the error that says why it cannot.
"""
import importlib
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .segmentation.decoders import FeatureBackbone

__all__ = ['ZooBackbone', 'register_zoo_backbone', 'TOOLBOXES']

# toolbox package -> the module holding its MODELS registry
TOOLBOXES = {'mmdet': 'mmdet.registry', 'mmseg': 'mmseg.registry'}


class ZooBackbone(nn.Module):
    """A zoo/timm model as an OpenMMLab backbone: returns the tuple of NCHW feature maps the necks and heads take.

    Args:
        model_name: timm or visionattn model name, e.g. 'biformer_s'.
        out_indices: Feature levels; default the last four of stride >= 4.
        pretrained: Load the model's pretrained (ImageNet) weights.
        init_cfg: Accepted for the toolboxes' config conventions; the weights come from ``pretrained``.
        **kwargs: Extra keyword arguments of ``timm.create_model`` (drop_path_rate, n_win, ...).
    """

    def __init__(self, model_name: str, out_indices: Optional[Sequence[int]] = None, pretrained: bool = False,
                 init_cfg: Optional[Dict] = None, **kwargs):
        super().__init__()
        self.features = FeatureBackbone(model_name, out_indices, pretrained, backbone_kwargs=kwargs)
        self.channels = self.features.channels
        self.strides = self.features.strides

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(self.features(x))


def register_zoo_backbone(toolbox: str, force: bool = False) -> None:
    """Register :class:`ZooBackbone` in a toolbox's MODELS registry, so that its configs can say
    ``backbone=dict(type='ZooBackbone', model_name='biformer_s', pretrained=True)`` (the neck's in_channels:
    ``ZooBackbone(...).channels``).

    Args:
        toolbox: 'mmdet' or 'mmseg'.
        force: Replace an earlier registration.

    Raises:
        ImportError: When the toolbox (and the full mmcv it needs) is not importable.
    """
    if toolbox not in TOOLBOXES:
        raise ValueError(f'unknown toolbox {toolbox!r}; choose from {sorted(TOOLBOXES)}')
    try:
        registry = importlib.import_module(TOOLBOXES[toolbox]).MODELS
        importlib.import_module(f'{toolbox}.models')  # the part that needs mmcv's compiled ops
    except ImportError as error:
        raise ImportError(f'registering the zoo backbones with {toolbox} needs {toolbox}, which needs a full mmcv '
                          'build with its compiled ops (mmcv-lite lacks mmcv._ext); install mmcv from source, or use '
                          f'visionattn\'s own heads and tools, which need neither ({error})') from error
    registry.register_module(name='ZooBackbone', module=ZooBackbone, force=force)
