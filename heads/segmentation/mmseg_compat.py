"""Zoo backbones for mmsegmentation configs, where mmsegmentation is installed.

mmsegmentation 1.x needs a full mmcv build with its compiled ops (``mmcv._ext``); mmcv-lite is not enough, and mmcv
2.1 only builds from source here (see the deps notes), so this module is not exercised by the test suite beyond
the error it raises without mmsegmentation.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .decoders import FeatureBackbone

__all__ = ['register_mmseg_backbones', 'ZooBackbone']


class ZooBackbone(nn.Module):
    """A zoo/timm model as an mmseg backbone: returns the tuple of NCHW feature maps mmseg's decode heads take.

    Args:
        model_name: timm or visionattn model name, e.g. 'biformer_s'.
        out_indices: Feature levels; default the last four of stride >= 4.
        pretrained: Load the model's pretrained (ImageNet) weights.
        init_cfg: Accepted for mmseg's config conventions; the weights come from ``pretrained``.
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


def register_mmseg_backbones(force: bool = False) -> None:
    """Register :class:`ZooBackbone` in mmsegmentation's MODELS registry, so that an mmseg config can say
    ``backbone=dict(type='ZooBackbone', model_name='biformer_s', pretrained=True)`` (channels for the decode head:
    ``ZooBackbone(...).channels``).

    Raises:
        ImportError: When mmsegmentation (and the full mmcv it needs) is not importable.
    """
    try:
        from mmseg.registry import MODELS as MMSEG_MODELS
    except ImportError as error:
        raise ImportError('register_mmseg_backbones needs mmsegmentation, which needs a full mmcv build with its '
                          'compiled ops (mmcv-lite lacks mmcv._ext); install mmcv from source and mmsegmentation, or '
                          'use visionattn\'s own UPerNet/SemanticFPN (visionattn.heads.segmentation.decoders), '
                          f'which need neither ({error})') from error
    MMSEG_MODELS.register_module(name='ZooBackbone', module=ZooBackbone, force=force)
