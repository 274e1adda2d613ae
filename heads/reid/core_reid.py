"""CORE-ReID (Nguyen et al., MDPI Software 3(2), 2024; code TrinhQuocNguyen/CORE-ReID, reid/models/resnet.py) on any
zoo or timm backbone: the multi-view head (global, upper and lower halves), the Efficient Channel Attention Block
(ECAB), the Ensemble Fusion features used for clustering, Bidirectional Mean Feature Normalization (BMFN) and the
source-domain baseline network.

Plain ``nn.Module`` s: the mmengine task models that train them live in ``visionattn.heads.reid.task``. Every width
is taken from the backbone (the official code hard-codes ResNet-50's 2048 channels).
"""
import numbers
from typing import Callable, Dict, List, Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['ReIDBackbone', 'ECAB', 'EnsembleFusion', 'CoreReIDHead', 'CoreReID', 'SourceReIDNet',
           'bmfn', 'set_last_stride_one']


def _check_num_classes(num_classes, owner: str) -> int:
    """A positive whole number (2.5 or True would fail deep in ``nn.Linear``, or build a one-class classifier)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f'{owner}: num_classes must be a positive whole number, got {num_classes!r}')
    return int(num_classes)


def _frozen_bias_bn(channels: int) -> nn.BatchNorm1d:
    """The BNNeck of the official code: weight 1, bias 0 and never trained (``bias.requires_grad_(False)``)."""
    bn = nn.BatchNorm1d(channels)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    bn.bias.requires_grad_(False)
    return bn


def set_last_stride_one(model: nn.Module, stage_name: str) -> None:
    """Give a ResNet-style last stage stride 1, as the official ``layer4[0].conv2.stride = (1, 1)`` and
    ``layer4[0].downsample[0].stride = (1, 1)``: the first block's strided conv and its shortcut conv lose the
    stride. No dilation is added (timm's ``output_stride=16`` would dilate the later convs instead).

    Args:
        model: The backbone (a timm features_only wrapper or a plain model) holding the stage.
        stage_name: Dotted name of the last stage, e.g. 'layer4' (timm's feature_info module name).

    Raises:
        ValueError: When the stage is not a sequence of residual blocks with a strided first block (not a ResNet
            family backbone), or uses anti-aliased / average-pool downsampling that a stride change cannot remove.
    """
    stage = None
    for name in (stage_name, f'model.{stage_name}'):  # timm's feature getter keeps the model under .model
        try:
            stage = model.get_submodule(name)
            break
        except AttributeError:
            continue
    if stage is None:
        raise ValueError(f'last_stride=1: the backbone has no module {stage_name!r}')
    first = stage[0] if isinstance(stage, nn.Sequential) and len(stage) else None
    if first is None or not hasattr(first, 'downsample') or first.downsample is None:
        raise ValueError(f'last_stride=1 is defined for ResNet-family backbones (a last stage of residual blocks '
                         f'whose first block has a strided shortcut); {stage_name!r} is a {type(stage).__name__}. '
                         'Use last_stride=2 (the backbone unchanged) for this backbone.')
    if not isinstance(getattr(first, 'aa', nn.Identity()), nn.Identity):
        raise ValueError('last_stride=1 does not support anti-aliased (blur-pool) ResNets: their stride is in the '
                         'aa layer, not in a conv')
    changed = 0
    for name, module in first.named_modules():
        if isinstance(module, nn.Conv2d) and tuple(module.stride) == (2, 2):
            module.stride = (1, 1)
            changed += 1
        elif isinstance(module, nn.AvgPool2d) and name.startswith('downsample') and module.stride in (2, (2, 2)):
            raise ValueError('last_stride=1 does not support average-pool shortcuts (ResNet-D): set last_stride=2')
    if changed != 2:  # one conv in the residual branch, one in the shortcut
        raise ValueError(f'last_stride=1 expects two stride-2 convs in the first block of {stage_name!r} '
                         f'(the residual branch and the shortcut), found {changed}')


class ReIDBackbone(nn.Module):
    """Any timm or zoo backbone by name, returning its last feature map (``features_only``, last level), NCHW even
    where the timm extractor returns NHWC (MambaOut, Swin).

    Args:
        name: timm / zoo model name ('resnet50', 'eca_resnet50', 'ela_resnet50', ...).
        pretrained: Load the model's pretrained weights.
        last_stride: 1 (the official setting: the last ResNet stage keeps the resolution, 256x128 -> 16x8) or 2
            (the backbone unchanged). last_stride=1 is only defined for ResNet-family backbones and raises a
            ValueError for others.
        **kwargs: Extra keyword arguments of ``timm.create_model``.
    """

    def __init__(self, name: str = 'resnet50', pretrained: bool = False, last_stride: int = 1, **kwargs):
        super().__init__()
        if isinstance(last_stride, bool) or last_stride not in (1, 2):
            raise ValueError(f'last_stride must be 1 or 2, got {last_stride!r}')
        if not timm.is_model(name.split('.')[0]):
            import visionattn  # noqa: F401  (registers the zoo)
            if not timm.is_model(name.split('.')[0]):
                raise ValueError(f'backbone {name!r} is not a registered timm or visionattn model')
        self.body = timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=(-1,), **kwargs)
        info = self.body.feature_info
        self.num_features = int(info.channels()[-1])
        self.reduction = int(info.reduction()[-1])
        if last_stride == 1:
            set_last_stride_one(self.body, info.module_name()[-1])
            self.reduction //= 2
        self.last_stride = last_stride
        # timm's features_only MambaOut / Swin return NHWC maps: the head pools and splits NCHW ones
        fmt = getattr(self.body, 'output_fmt', 'NCHW')
        self.nhwc = getattr(fmt, 'value', fmt) == 'NHWC'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f'expected images [B, C, H, W], got shape {tuple(x.shape)}')
        feature_map = self.body(x)[-1]
        if self.nhwc:
            feature_map = feature_map.permute(0, 3, 1, 2)
        if feature_map.dim() != 4 or feature_map.shape[1] != self.num_features:
            raise RuntimeError(f'the backbone returned a map of shape {tuple(feature_map.shape)}, its feature_info '
                               f'says {self.num_features} channels (NCHW expected)')
        return feature_map


def _max_plus_avg(x: torch.Tensor) -> torch.Tensor:
    """Global max-pool + global avg-pool, flattened to [B, C] (the official ``maxpool(x) + avgpool(x)``)."""
    return x.amax(dim=(2, 3)) + x.mean(dim=(2, 3))


class ECAB(nn.Module):
    """Efficient Channel Attention Block: CBAM-style channel attention whose shared MLP is a 1x1-conv hourglass
    C -> C/r -> C/r^2 -> C/r^3 -> C/r^2 -> C/r -> C (ReLU between, no biases), applied to the max- and avg-pooled
    descriptors, summed, then a sigmoid. With C=2048, r=4 this is the official 2048-512-128-32-128-512-2048.

    Args:
        channels: Input channels C (from the backbone).
        reduction: r; C must be divisible by r^3.
    """

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        if isinstance(reduction, bool) or not isinstance(reduction, numbers.Integral) or reduction < 1:
            raise ValueError(f'ECAB: reduction must be a whole number >= 1, got {reduction!r}')
        if channels % reduction ** 3:
            fits = [r for r in range(1, reduction) if channels % r ** 3 == 0][-1]
            raise ValueError(f'ECAB needs channels divisible by reduction**3 = {reduction ** 3}, got {channels} '
                             f'(reduction={fits} fits this backbone)')
        widths = [channels, channels // reduction, channels // reduction ** 2, channels // reduction ** 3,
                  channels // reduction ** 2, channels // reduction, channels]
        layers: List[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            if i:
                layers.append(nn.ReLU())
            layers.append(nn.Conv2d(cin, cout, 1, bias=False))
        self.mlp = nn.Sequential(*layers)
        self.widths = widths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> channel weights [B, C, 1, 1] in (0, 1)."""
        max_desc = x.amax(dim=(2, 3), keepdim=True)
        avg_desc = x.mean(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.mlp(max_desc) + self.mlp(avg_desc))


class EnsembleFusion(nn.Module):
    """Ensemble Fusion (the official ``Fuse``): the teacher's feature map, and the same map weighted by the student's
    ECAB-weighted upper and lower descriptors, each max+avg pooled and batch-normalised (BN bias frozen).

    The three outputs are the clustering features only (no loss reaches them in the official trainer).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bn_global = _frozen_bias_bn(channels)
        self.bn_upper = _frozen_bias_bn(channels)
        self.bn_lower = _frozen_bias_bn(channels)

    def forward(self, teacher_map: torch.Tensor, upper_descriptor: torch.Tensor,
                lower_descriptor: torch.Tensor) -> List[torch.Tensor]:
        if upper_descriptor.shape != lower_descriptor.shape or upper_descriptor.shape[:2] != teacher_map.shape[:2]:
            raise ValueError(f'descriptors {tuple(upper_descriptor.shape)}/{tuple(lower_descriptor.shape)} do not '
                             f'fit the teacher map {tuple(teacher_map.shape)}')
        upper = upper_descriptor.reshape(*upper_descriptor.shape[:2], 1, 1)
        lower = lower_descriptor.reshape(*lower_descriptor.shape[:2], 1, 1)
        return [self.bn_global(_max_plus_avg(teacher_map)), self.bn_upper(_max_plus_avg(teacher_map * upper)),
                self.bn_lower(_max_plus_avg(teacher_map * lower))]


class CoreReIDHead(nn.Module):
    """The multi-view head of the official target model (``reid/models/resnet.py``), sized from the backbone.

    * global: max-pool + avg-pool of the whole map -> BN (bias frozen): the feature of the CE and triplet losses and
      the classifier's input;
    * upper / lower (the map's top and bottom halves of ``H // 2`` rows each; an odd last row is dropped as in the
      official slicing): concat(avg, max) (2C) -> Linear to C -> BN (bias frozen): the part features of the part
      triplet losses;
    * ECAB on each half: its weights times the half's max+avg descriptor form the ECAB-weighted descriptors that the
      Ensemble Fusion uses (only for clustering);
    * classifier: Linear(C, num_classes), no bias, initialised from the cluster centroids during adaptation.

    Args:
        channels: The backbone's output channels C.
        num_classes: Classifier outputs (the number of clusters K).
        reduction: ECAB reduction r.
    """

    def __init__(self, channels: int, num_classes: int, reduction: int = 4):
        super().__init__()
        num_classes = _check_num_classes(num_classes, type(self).__name__)
        self.channels, self.num_classes = channels, num_classes
        self.bn_global = _frozen_bias_bn(channels)
        self.bn_upper = _frozen_bias_bn(channels)
        self.bn_lower = _frozen_bias_bn(channels)
        self.fc_upper = nn.Linear(2 * channels, channels)
        self.fc_lower = nn.Linear(2 * channels, channels)
        for fc in (self.fc_upper, self.fc_lower):
            nn.init.kaiming_normal_(fc.weight, mode='fan_out')
            nn.init.zeros_(fc.bias)
        self.ecab_upper = ECAB(channels, reduction)
        self.ecab_lower = ECAB(channels, reduction)
        self.classifier = nn.Linear(channels, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def _half(self, half: torch.Tensor, fc: nn.Linear, bn: nn.BatchNorm1d, ecab: ECAB):
        avg, mx = half.mean(dim=(2, 3)), half.amax(dim=(2, 3))
        feature = bn(fc(torch.cat([avg, mx], dim=1)))
        descriptor = (avg + mx) * ecab(half).flatten(1)
        return feature, descriptor

    def forward(self, feature_map: torch.Tensor) -> Dict[str, torch.Tensor]:
        if feature_map.dim() != 4 or feature_map.shape[1] != self.channels:
            raise ValueError(f'expected a feature map [B, {self.channels}, H, W], got {tuple(feature_map.shape)}')
        height = feature_map.shape[2]
        if height < 2:
            raise ValueError(f'the feature map is {height} row(s) high: the upper/lower split needs at least 2 '
                             '(use larger inputs or last_stride=1)')
        half = height // 2
        global_feature = self.bn_global(_max_plus_avg(feature_map))
        upper, upper_desc = self._half(feature_map[:, :, :half], self.fc_upper, self.bn_upper, self.ecab_upper)
        lower, lower_desc = self._half(feature_map[:, :, half:2 * half], self.fc_lower, self.bn_lower,
                                       self.ecab_lower)
        return {'global': global_feature, 'upper': upper, 'lower': lower,
                'logits': self.classifier(global_feature),
                'upper_descriptor': upper_desc, 'lower_descriptor': lower_desc}


class CoreReID(nn.Module):
    """Backbone + :class:`CoreReIDHead` (one of the student / teacher networks of CORE-ReID).

    Args:
        backbone: Backbone name (see :class:`ReIDBackbone`).
        num_classes: Number of clusters K (classifier outputs).
        pretrained: Load the backbone's pretrained weights.
        last_stride: See :class:`ReIDBackbone`.
        reduction: ECAB reduction.
        backbone_kwargs: Extra ``timm.create_model`` arguments.
    """

    def __init__(self, backbone: str = 'resnet50', num_classes: int = 700, pretrained: bool = False,
                 last_stride: int = 1, reduction: int = 4, backbone_kwargs: Dict = None):
        super().__init__()
        self.backbone = ReIDBackbone(backbone, pretrained=pretrained, last_stride=last_stride,
                                     **(backbone_kwargs or {}))
        self.num_features = self.backbone.num_features
        self.head = CoreReIDHead(self.num_features, num_classes, reduction)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Returns the head's views ('global', 'upper', 'lower', 'logits', descriptors) and the map ('map')."""
        feature_map = self.backbone(x)
        return {**self.head(feature_map), 'map': feature_map}

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        """The retrieval feature: L2-normalised concat[global, upper, lower] (3C), as the official Encoder's
        ``F.normalize(torch.cat(x1_ema))`` (BMFN is applied on top, see :func:`bmfn`)."""
        views = self.forward(x)
        return F.normalize(torch.cat([views['global'], views['upper'], views['lower']], dim=1), dim=1)


class SourceReIDNet(nn.Module):
    """The source pre-training network (the official ``reid/models/resnet_source.py``): the backbone's map,
    global average pool (the triplet feature), a BN neck with frozen bias, and a bias-free classifier over the
    source identities; retrieval uses the L2-normalised BN-neck feature.

    Args:
        backbone, pretrained, last_stride, backbone_kwargs: See :class:`ReIDBackbone`.
        num_classes: Source-domain identities.
    """

    def __init__(self, backbone: str = 'resnet50', num_classes: int = 751, pretrained: bool = False,
                 last_stride: int = 1, backbone_kwargs: Dict = None):
        super().__init__()
        num_classes = _check_num_classes(num_classes, type(self).__name__)
        self.backbone = ReIDBackbone(backbone, pretrained=pretrained, last_stride=last_stride,
                                     **(backbone_kwargs or {}))
        self.num_features = self.backbone.num_features
        self.bn_neck = _frozen_bias_bn(self.num_features)
        self.classifier = nn.Linear(self.num_features, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        pooled = self.backbone(x).mean(dim=(2, 3))
        neck = self.bn_neck(pooled)
        return {'global': pooled, 'neck': neck, 'logits': self.classifier(neck)}

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.forward(x)['neck'], dim=1)


def bmfn(extract: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """Bidirectional Mean Feature Normalization: the features of the images and of their horizontal flips are
    averaged, then L2-normalised (official ``reid/evaluators.py``).

    Args:
        extract: Maps images [B, C, H, W] to features [B, D] (or a list of such, normalised each).
        images: The (normalised) images.
    """
    plain, flipped = extract(images), extract(images.flip(-1))
    if isinstance(plain, Sequence) and not torch.is_tensor(plain):
        return [F.normalize((a + b) / 2, dim=1) for a, b in zip(plain, flipped)]
    return F.normalize((plain + flipped) / 2, dim=1)
