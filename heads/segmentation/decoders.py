"""UPerNet and Semantic FPN fed by any zoo or timm backbone through ``features_only``.

- UPerNet: Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018 (arXiv 1807.10221).
- Semantic FPN: Kirillov et al., "Panoptic Feature Pyramid Networks", CVPR 2019 (arXiv 1901.02446).

The structure, channel widths, normalisation and initialisation follow mmsegmentation's ``UPerHead``,
``FCNHead`` (the auxiliary head of its UPerNet configs), ``FPN`` neck and ``FPNHead``
(open-mmlab/mmsegmentation, Apache-2.0), which the BiFormer and NAT ADE20K results were trained with.
Written here in plain PyTorch: no mmcv. Channel counts always come from the backbone's ``feature_info``.
"""
import difflib
import math
from typing import Dict, List, Optional, Sequence, Union

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['FeatureBackbone', 'ConvBNReLU', 'PyramidPoolingModule', 'UPerHead', 'FCNHead', 'FPNNeck', 'FPNHead',
           'UPerNet', 'SemanticFPN']


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    # align_corners=False everywhere, as mmseg's ADE20K configs (and the CSAIL UPerNet code) use.
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False)


def _check_backbone_name(name: str) -> None:
    if not timm.is_model(name.split('.')[0]):
        import visionattn  # noqa: F401  (registers the zoo, in case it was not imported yet)
        if not timm.is_model(name.split('.')[0]):
            close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
            hint = f'; did you mean {", ".join(close)}?' if close else ''
            raise ValueError(f'backbone={name!r} is not a registered timm or visionattn model{hint}')


def _feature_dicts(module: nn.Module) -> List[Dict]:
    info = getattr(module, 'feature_info', None)
    if info is None:
        raise TypeError(f'backbone module {type(module).__name__} has no feature_info: pass a timm model created with '
                        'features_only=True (or any module returning a list of maps with a matching feature_info)')
    return info.get_dicts() if hasattr(info, 'get_dicts') else [dict(d) for d in info]


class FeatureBackbone(nn.Module):
    """A multi-level feature extractor: a zoo/timm model by name (``features_only=True``) or a module.

    The levels handed to the decoder are the last ``num_levels`` of stride >= ``min_reduction`` (for a ResNet:
    strides 4-32, leaving out the stride-2 stem), unless ``out_indices`` picks them. Maps come back NCHW even when
    the extractor returns NHWC (timm's MambaOut ``features_only`` without ``feature_cls='getter'``).

    Args:
        backbone: timm model name, e.g. 'biformer_s', or an ``nn.Module`` with ``feature_info`` whose forward
            returns the list of maps that ``feature_info`` describes.
        out_indices: Feature levels to create (passed to timm); all of them are then used.
        pretrained: Load the backbone's pretrained weights (only for a name).
        num_levels: How many levels to use when ``out_indices`` is None.
        min_reduction: Smallest stride used when ``out_indices`` is None.
        backbone_kwargs: Extra keyword arguments of ``timm.create_model`` (drop_path_rate, n_win, ...).
        min_levels: Fewest levels the consumer takes (2 for the segmentation decoders; 1 for mmdet's single-level
            DETR heads through :class:`~visionattn.heads.mm_compat.ZooBackbone`).
    """

    def __init__(self, backbone: Union[str, nn.Module], out_indices: Optional[Sequence[int]] = None,
                 pretrained: bool = False, num_levels: int = 4, min_reduction: int = 4,
                 backbone_kwargs: Optional[Dict] = None, min_levels: int = 2):
        super().__init__()
        if isinstance(backbone, str):
            _check_backbone_name(backbone)
            kwargs = dict(backbone_kwargs or {})
            if out_indices is not None:
                kwargs['out_indices'] = tuple(out_indices)
            model = timm.create_model(backbone, features_only=True, pretrained=pretrained, **kwargs)
        elif isinstance(backbone, nn.Module):
            if pretrained or backbone_kwargs:
                raise ValueError('pretrained and backbone_kwargs apply to a backbone given by name, not to a module')
            model = backbone
        else:
            raise TypeError(f'backbone must be a model name or an nn.Module, got {type(backbone).__name__}')
        dicts = _feature_dicts(model)
        fmt = getattr(model, 'output_fmt', 'NCHW')
        self.nhwc = getattr(fmt, 'value', fmt) == 'NHWC'
        if out_indices is None:
            levels = [i for i, d in enumerate(dicts) if d['reduction'] >= min_reduction][-num_levels:]
        else:
            levels = list(range(len(dicts)))
        if len(levels) < min_levels:
            raise ValueError(f'the decoders need at least {min_levels} feature levels, the backbone gives strides '
                             f'{[d["reduction"] for d in dicts]} (using those >= {min_reduction})')
        self.model = model
        self.levels = levels
        self.channels = [int(dicts[i]['num_chs']) for i in levels]
        self.strides = [int(dicts[i]['reduction']) for i in levels]
        self.pretrained_cfg = dict(getattr(model, 'pretrained_cfg', None) or {})

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        feats = self.model(x)
        if isinstance(feats, dict):
            feats = list(feats.values())
        feats = [feats[i] for i in self.levels]
        if self.nhwc:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        for f, c, s in zip(feats, self.channels, self.strides):
            if f.ndim != 4 or f.shape[1] != c:
                raise RuntimeError(f'the stride-{s} feature map has shape {tuple(f.shape)}, feature_info says {c} '
                                   'channels (NCHW expected: is the extractor returning NHWC maps?)')
        return feats


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU, mmcv's ConvModule with BN as mmseg builds its heads (kaiming init)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode='fan_out', nonlinearity='relu')


class _ClassifierMixin:
    def _make_classifier(self, channels: int, num_classes: int, dropout: float) -> None:
        if num_classes < 1:
            raise ValueError(f'num_classes must be positive, got {num_classes}')
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)  # mmseg's BaseDecodeHead init
        nn.init.zeros_(self.conv_seg.bias)

    def _classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


class PyramidPoolingModule(nn.Module):
    """PSPNet's pyramid pooling: average-pool to each scale, 1x1 ConvBNReLU, upsample back, concatenated with the
    input and fused by a 3x3 ConvBNReLU (mmseg's UPerHead ``psp_modules`` + ``bottleneck``)."""

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNReLU(in_channels, channels, 1))
                                    for s in pool_scales)
        self.bottleneck = ConvBNReLU(in_channels + len(pool_scales) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [_resize(stage(x), x.shape[2:]) for stage in self.stages]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UPerHead(_ClassifierMixin, nn.Module):
    """UPerNet's decoder: PPM on the coarsest level, FPN laterals with a top-down path, 3x3 convs per level, all
    levels upsampled to the finest and fused by a 3x3 conv, then dropout and a 1x1 classifier.

    Args:
        in_channels: Channels of each level, finest first.
        num_classes: Output classes.
        channels: Width of every layer of the head (512 in mmseg's UPerNet configs).
        pool_scales: PPM output sizes.
        dropout: Dropout2d probability before the classifier.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1):
        super().__init__()
        self.ppm = PyramidPoolingModule(in_channels[-1], channels, pool_scales)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3)
        self._make_classifier(channels, num_classes, dropout)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)] + [self.ppm(feats[-1])]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0]] + [_resize(o, size) for o in outs[1:]], dim=1))
        return self._classify(fused)


class FCNHead(_ClassifierMixin, nn.Module):
    """A plain FCN head: ``num_convs`` 3x3 ConvBNReLU, dropout, 1x1 classifier (mmseg's FCNHead with
    ``concat_input=False``; UPerNet's auxiliary head on the stride-16 level)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, num_convs: int = 1,
                 dropout: float = 0.1):
        super().__init__()
        self.convs = nn.Sequential(*[ConvBNReLU(in_channels if i == 0 else channels, channels, 3)
                                     for i in range(num_convs)])
        self._make_classifier(channels if num_convs else in_channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._classify(self.convs(x))


class FPNNeck(nn.Module):
    """The FPN of Lin et al. as mmseg's ``FPN`` neck with ``num_outs`` = number of inputs: 1x1 laterals and 3x3
    output convs with bias and no norm, nearest-neighbour top-down path, Xavier-uniform init."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256):
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:],
                                                              mode='nearest')
        return [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]


class FPNHead(_ClassifierMixin, nn.Module):
    """Panoptic FPN's semantic branch: each level goes through log2(stride / finest stride) blocks of 3x3
    ConvBNReLU + 2x bilinear upsampling (one conv and no upsampling for the finest), the levels are summed at the
    finest resolution, then dropout and a 1x1 classifier (mmseg's FPNHead).

    Args:
        in_channels: Channels of each level, finest first.
        strides: Stride of each level (the finest first).
        num_classes: Output classes.
        channels: Width of the semantic branch (128, as the paper and mmseg).
        dropout: Dropout2d probability before the classifier.
    """

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int], num_classes: int, channels: int = 128,
                 dropout: float = 0.1):
        super().__init__()
        if len(strides) != len(in_channels) or min(strides) != strides[0]:
            raise ValueError(f'FPNHead needs one stride per level with the finest first, got strides {strides} '
                             f'for {len(in_channels)} levels')
        self.scale_heads = nn.ModuleList()
        for c, s in zip(in_channels, strides):
            steps = max(1, int(math.log2(s) - math.log2(strides[0])))
            layers = []
            for k in range(steps):
                layers.append(ConvBNReLU(c if k == 0 else channels, channels, 3))
                if s != strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode='bilinear', align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self._make_classifier(channels, num_classes, dropout)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        out = self.scale_heads[0](feats[0])
        for head, f in zip(self.scale_heads[1:], feats[1:]):
            out = out + _resize(head(f), out.shape[2:])
        return self._classify(out)


class UPerNet(nn.Module):
    """UPerNet on any zoo/timm backbone, with mmseg's FCN auxiliary head on the stride-16 level.

    Returns logits at the finest used stride (1/4 for four-level backbones); while training with the auxiliary
    head, a dict ``{'out': logits, 'aux': aux_logits}`` (the Segmentor weighs the auxiliary loss 0.4).

    Args:
        backbone: timm model name or feature module (see :class:`FeatureBackbone`).
        num_classes: Output classes.
        channels: Width of the UPerHead (512).
        pool_scales: PPM output sizes ((1, 2, 3, 6)).
        dropout: Dropout2d before both classifiers (0.1).
        aux_head: Add the FCN auxiliary head.
        aux_channels: Width of the auxiliary head (256).
        aux_level: Which used level feeds the auxiliary head; default the second coarsest (mmseg's in_index=2
            of four, the stride-16 map).
        pretrained: Load the backbone's pretrained weights.
        out_indices: Backbone feature levels to create; default the last four of stride >= 4.
        backbone_kwargs: Extra keyword arguments of ``timm.create_model``.
    """

    def __init__(self, backbone: Union[str, nn.Module], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1, aux_head: bool = True,
                 aux_channels: int = 256, aux_level: Optional[int] = None, pretrained: bool = False,
                 out_indices: Optional[Sequence[int]] = None, backbone_kwargs: Optional[Dict] = None):
        super().__init__()
        self.backbone = FeatureBackbone(backbone, out_indices, pretrained, backbone_kwargs=backbone_kwargs)
        self.num_classes = num_classes
        self.pretrained_cfg = self.backbone.pretrained_cfg
        self.decode_head = UPerHead(self.backbone.channels, num_classes, channels, pool_scales, dropout)
        self.aux_level = len(self.backbone.channels) - 2 if aux_level is None else aux_level
        if not -len(self.backbone.channels) <= self.aux_level < len(self.backbone.channels):
            raise ValueError(f'aux_level={aux_level} is out of range for {len(self.backbone.channels)} levels')
        self.auxiliary_head = FCNHead(self.backbone.channels[self.aux_level], num_classes, aux_channels,
                                      dropout=dropout) if aux_head else None

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        feats = self.backbone(x)
        out = self.decode_head(feats)
        if self.auxiliary_head is not None and self.training:
            return {'out': out, 'aux': self.auxiliary_head(feats[self.aux_level])}
        return out


class SemanticFPN(nn.Module):
    """Semantic FPN (panoptic FPN's semantic branch) on any zoo/timm backbone: an FPN neck of ``neck_channels``
    then :class:`FPNHead`. Returns logits at the finest used stride (1/4 for four-level backbones).

    Args:
        backbone: timm model name or feature module (see :class:`FeatureBackbone`).
        num_classes: Output classes.
        neck_channels: FPN width (256).
        channels: Semantic branch width (128).
        dropout: Dropout2d before the classifier (0.1).
        pretrained: Load the backbone's pretrained weights.
        out_indices: Backbone feature levels to create; default the last four of stride >= 4.
        backbone_kwargs: Extra keyword arguments of ``timm.create_model``.
    """

    def __init__(self, backbone: Union[str, nn.Module], num_classes: int, neck_channels: int = 256,
                 channels: int = 128, dropout: float = 0.1, pretrained: bool = False,
                 out_indices: Optional[Sequence[int]] = None, backbone_kwargs: Optional[Dict] = None):
        super().__init__()
        self.backbone = FeatureBackbone(backbone, out_indices, pretrained, backbone_kwargs=backbone_kwargs)
        self.num_classes = num_classes
        self.pretrained_cfg = self.backbone.pretrained_cfg
        self.neck = FPNNeck(self.backbone.channels, neck_channels)
        self.decode_head = FPNHead([neck_channels] * len(self.backbone.channels), self.backbone.strides,
                                   num_classes, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.neck(self.backbone(x)))
