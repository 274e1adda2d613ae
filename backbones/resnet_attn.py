"""ResNets with channel and local attention: ECA-ResNet and ELA-ResNet, built on timm's ResNet.

ECA-Net: Wang et al., "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks", CVPR 2020,
arXiv:1910.03151. Official code and weights: github.com/BangguWu/ECANet (MIT).
ELA: Xu & Wan, "ELA: Efficient Local Attention for Deep Convolutional Neural Networks", arXiv:2403.01123.
Official code: github.com/Xuwei86/ELA_Code (task code only; no ImageNet ResNet code and no weights).

Both attention layers sit where the official ECA code puts its ``eca`` module: after the block's last
BatchNorm, before the residual add; timm's ResNet places its ``attn_layer`` (``se``) exactly there. ELA's
authors published no ImageNet ResNet code (their DeepLab backbone adds ELA with an extra skip after the 3×3
conv); ELA here takes the same standard attention slot. timm's ``ecaresnet*`` models are other networks
(deep/tiered stems, adaptive kernel rule); these are the papers' own.
"""
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import EcaModule
from timm.models import generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from visionattn._timm_compat import FeatureGetterNet, resolve_take_indices
from visionattn.hub import build_model, unwrap_state_dict
from visionattn.layers import EfficientLocalAttention
from visionattn.zoo import PaperFacts, register_paper_facts

from ._api import FeatureGetter, check_classifier_pool

__all__ = ['AttnResNet']  # models are reached through timm.create_model


class _EcaModule(EcaModule):
    """timm's ``EcaModule``, which reshapes with ``view(B, 1, -1)`` and so fails on an empty batch; here the channel
    count is named instead, and a batch of no image gives an empty output like the rest of the network."""

    def forward(self, x):
        batch, channels = x.shape[0], x.shape[1]
        y = x.mean((2, 3)).view(batch, 1, channels)  # view for 1d conv
        y = self.conv(y)
        if self.conv2 is not None:
            y = self.act(y)
            y = self.conv2(y)
        y = self.gate(y).view(batch, channels, 1, 1)
        return x * y.expand_as(x)


def _eca_by_channels(by_channels: Dict[int, int], channels: int, **dd) -> nn.Module:
    return _EcaModule(kernel_size=by_channels[channels], **dd)


def _eca_per_stage(kernel_sizes: Sequence[int], expansion: int):
    """An ``attn_layer`` giving each stage its own fixed ECA kernel, as the official ``--ksize 3557`` does.

    timm hands the attention layer only the block's output channels; they are 64·2^i·expansion in stage i, a
    one-to-one key for the stage. ``EcaModule(channels=None)`` keeps the given kernel instead of timm's
    adaptive rule, which picks 5 where the official ResNet-50 uses 3. A partial of a module-level function, so that
    the model (whose ``_build_args`` keep it) pickles: ``torch.save(model)`` failed on a local closure.
    """
    return partial(_eca_by_channels, {64 * 2 ** i * expansion: k for i, k in enumerate(kernel_sizes)})


class AttnResNet(ResNet):
    """timm's ResNet (same modules, parameter names and forward), with the zoo's checks on timm's model API.

    timm's ResNet resolves ``indices`` with asserts and then returns its levels in network order, once each:
    ``forward_intermediates(x, indices=[2, 1])`` gave levels 1 and 2, ``[0, 0]`` one map instead of two, and
    ``stop_early=True`` without ``intermediates_only`` returned a truncated map as the "final features". A classifier
    on an unpooled map (``num_classes > 0``, ``global_pool=''``) failed only at the first forward, in a matmul. These
    are refused here with a ValueError naming the argument, as in the other zoo families.
    """

    def __init__(self, *args, num_classes: int = 1000, global_pool: str = 'avg', **kwargs):
        check_classifier_pool(num_classes, global_pool, 'ResNet')
        super().__init__(*args, num_classes=num_classes, global_pool=global_pool, **kwargs)

    @torch.jit.ignore
    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        check_classifier_pool(num_classes, self.global_pool.pool_type if global_pool is None else global_pool,
                              'ResNet')
        super().reset_classifier(num_classes, global_pool)

    @torch.jit.ignore
    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's ``ResNet.forward_intermediates`` (levels: the stride-2 stem, layer1..4), its arguments checked."""
        if output_fmt != 'NCHW':
            raise ValueError(f"ResNet returns NCHW features; output_fmt={output_fmt!r} is not supported")
        _, max_index = resolve_take_indices(5, indices)
        if stop_early and max_index < 4 and not intermediates_only:
            raise ValueError(f'forward_intermediates(stop_early=True) stops after level {max_index} of 4, so there '
                             'are no final features to return: pass intermediates_only=True, or stop_early=False')
        return super().forward_intermediates(
            x, indices=indices, norm=norm, stop_early=stop_early, output_fmt=output_fmt,
            intermediates_only=intermediates_only)

    @torch.jit.ignore
    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        resolve_take_indices(5, indices)
        return super().prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
    """Official ECANet checkpoint -> timm ResNet layout.

    main.py saves ``{'epoch', 'arch', 'state_dict', 'best_prec1', 'optimizer'}`` from a DataParallel model, so
    keys carry ``module.``; the rest of the names are torchvision's ResNet names, which timm's ResNet shares,
    except the attention module: ``layerX.Y.eca.conv.weight`` is timm's ``layerX.Y.se.conv.weight``.
    """
    state_dict = unwrap_state_dict(state_dict)
    return {k.replace('.eca.', '.se.'): v for k, v in state_dict.items()}


def _create_resnet_attn(variant: str, pretrained: bool = False, **kwargs) -> ResNet:
    block = kwargs['block']
    if 'attn_layer' in (kwargs.get('block_args') or {}):
        # it was silently replaced by the family's own attention
        raise ValueError(f"{variant}: block_args['attn_layer'] cannot replace the model's own attention; use timm's "
                         "resnet* models for a ResNet with another attention layer")
    if 'eca_kernel_sizes' in kwargs:
        if variant.startswith('ela_'):  # it silently turned the ELA-ResNet into an ECA-ResNet
            raise ValueError(f'{variant}: eca_kernel_sizes is an ECA-ResNet argument; ELA-ResNets take ela_version')
        kernel_sizes = tuple(kwargs.pop('eca_kernel_sizes'))
        if len(kernel_sizes) != len(kwargs['layers']):  # a missing stage failed in the first block ("KeyError: 512")
            raise ValueError(f'{variant}: eca_kernel_sizes={kernel_sizes} needs one ECA kernel per stage, '
                             f"{len(kwargs['layers'])} stages")
        attn_layer = _eca_per_stage(kernel_sizes, block.expansion)
    else:
        attn_layer = partial(EfficientLocalAttention, version=kwargs.pop('ela_version', 'B'))
    kwargs['block_args'] = dict(kwargs.get('block_args') or {}, attn_layer=attn_layer)
    # The official code initialises every BatchNorm weight to 1 (torchvision's init), not the last one to 0.
    kwargs.setdefault('zero_init_last', False)
    output_stride = kwargs.get('output_stride', 32)
    if output_stride not in (8, 16, 32):  # timm's ResNet asserts it with no message
        raise ValueError(f'{variant}: output_stride={output_stride!r} must be 8, 16 or 32 (the later stages dilate '
                         'instead of striding below 32)')
    if kwargs.get('features_only') and 'out_indices' in kwargs:
        # timm's ResNet has five feature levels (the stem, then 4 stages); checked here so that an empty, unsorted
        # or out-of-range out_indices is named instead of failing in max() or an IndexError (issue 21).
        resolve_take_indices(5, kwargs['out_indices'])
    feature_cls = kwargs.get('feature_cls')
    if feature_cls is FeatureGetterNet or (isinstance(feature_cls, str) and feature_cls.lower() == 'getter'):
        # timm's ResNet defaults to its module-list extractor; the getter asked for by name is the zoo's, which has
        # set_grad_checkpointing (timm's FeatureGetterNet has none)
        kwargs['feature_cls'] = FeatureGetter
    return build_model(AttnResNet, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    # Official evaluation: Resize(256) + CenterCrop(224), bilinear, ImageNet mean/std (ECANet main.py).
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1', 'classifier': 'fc',
        **kwargs,
    }


def _eca_cfg(drive_id: str, file_name: str) -> Dict[str, Any]:
    # The ECANet README links each checkpoint on Google Drive; this is the direct-download form of that link.
    url = f'https://drive.usercontent.google.com/download?id={drive_id}&export=download&confirm=t#name={file_name}'
    return _cfg(
        url, license='mit', origin_url='https://github.com/BangguWu/ECANet', paper_ids='arXiv:1910.03151',
        paper_name='ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks')


def _ela_cfg() -> Dict[str, Any]:
    return _cfg(
        license='apache-2.0', origin_url='https://github.com/Xuwei86/ELA_Code', paper_ids='arXiv:2403.01123',
        paper_name='ELA: Efficient Local Attention for Deep Convolutional Neural Networks')


default_cfgs = generate_default_cfgs({
    'eca_resnet18.in1k': _eca_cfg('1LMRFRTyzVifGBi2MUpTuYEWW44S8mwyl', 'eca_resnet18_k3577.pth.tar'),
    'eca_resnet34.in1k': _eca_cfg('15LV5Jkea3GPzvLP5__H7Gg88oNQUxBDE', 'eca_resnet34_k3357.pth.tar'),
    'eca_resnet50.in1k': _eca_cfg('1670rce333c_lyMWFzBlNZoVUvtxbCF_U', 'eca_resnet50_k3557.pth.tar'),
    'eca_resnet101.in1k': _eca_cfg('1b5FQ8yDFnZ_UhvWT9txmjI_LjbKkgnvC', 'eca_resnet101_k3357.pth.tar'),
    'eca_resnet152.in1k': _eca_cfg('1_bYnaOg9ptsILC_iC7uQ5Izv-u2rjYG5', 'eca_resnet152_k3357.pth.tar'),
    'ela_resnet18': _ela_cfg(),
    'ela_resnet34': _ela_cfg(),
    'ela_resnet50': _ela_cfg(),
    'ela_resnet101': _ela_cfg(),
})

_ECA = 'ECA-ResNet'
_ECA_SOURCE = 'ECANet models/eca_resnet.py: torchvision ResNet + one Conv1d(1, 1, k) per block'
_ECA_COUNTING = 'thop, printed in binary units: M = 1024², G = 1024³ (ECANet paras_flops.py)'
_ELA = 'ELA-ResNet'
_ELA_SOURCE = 'no official ImageNet code: timm ResNet + ELA-B per block (Conv1d 7·C + GroupNorm 2·C)'
register_paper_facts({
    # ECANet README table; the k of each checkpoint is in its file name.
    'eca_resnet18': PaperFacts(_ECA, 11.15, 1.70, 70.92, 11_689_556, _ECA_SOURCE, _ECA_COUNTING),
    'eca_resnet34': PaperFacts(_ECA, 20.79, 3.43, 74.21, 21_797_744, _ECA_SOURCE, _ECA_COUNTING),
    'eca_resnet50': PaperFacts(_ECA, 24.37, 3.86, 77.42, 25_557_112, _ECA_SOURCE, _ECA_COUNTING),
    'eca_resnet101': PaperFacts(_ECA, 42.49, 7.35, 78.65, 44_549_317, _ECA_SOURCE, _ECA_COUNTING),
    'eca_resnet152': PaperFacts(_ECA, 57.41, 10.83, 78.92, 60_193_042, _ECA_SOURCE, _ECA_COUNTING),
    'ela_resnet18': PaperFacts(_ELA, reference_params=11_706_792, reference_source=_ELA_SOURCE),
    'ela_resnet34': PaperFacts(_ELA, reference_params=21_831_656, reference_source=_ELA_SOURCE),
    'ela_resnet50': PaperFacts(_ELA, reference_params=25_692_968, reference_source=_ELA_SOURCE),
    'ela_resnet101': PaperFacts(_ELA, reference_params=44_841_768, reference_source=_ELA_SOURCE),
})


@register_model
def eca_resnet18(pretrained: bool = False, **kwargs) -> ResNet:
    """ECA-ResNet-18, ECA kernels 3,5,7,7 (official ``eca_resnet18_k3577``)."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2), eca_kernel_sizes=(3, 5, 7, 7))
    return _create_resnet_attn('eca_resnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def eca_resnet34(pretrained: bool = False, **kwargs) -> ResNet:
    """ECA-ResNet-34, ECA kernels 3,3,5,7 (official ``eca_resnet34_k3357``)."""
    model_args = dict(block=BasicBlock, layers=(3, 4, 6, 3), eca_kernel_sizes=(3, 3, 5, 7))
    return _create_resnet_attn('eca_resnet34', pretrained, **dict(model_args, **kwargs))


@register_model
def eca_resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """ECA-ResNet-50, ECA kernels 3,5,5,7 (official ``eca_resnet50_k3557``)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), eca_kernel_sizes=(3, 5, 5, 7))
    return _create_resnet_attn('eca_resnet50', pretrained, **dict(model_args, **kwargs))


@register_model
def eca_resnet101(pretrained: bool = False, **kwargs) -> ResNet:
    """ECA-ResNet-101, ECA kernels 3,3,5,7 (official ``eca_resnet101_k3357``)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 23, 3), eca_kernel_sizes=(3, 3, 5, 7))
    return _create_resnet_attn('eca_resnet101', pretrained, **dict(model_args, **kwargs))


@register_model
def eca_resnet152(pretrained: bool = False, **kwargs) -> ResNet:
    """ECA-ResNet-152, ECA kernels 3,3,5,7 (official ``eca_resnet152_k3357``)."""
    model_args = dict(block=Bottleneck, layers=(3, 8, 36, 3), eca_kernel_sizes=(3, 3, 5, 7))
    return _create_resnet_attn('eca_resnet152', pretrained, **dict(model_args, **kwargs))


@register_model
def ela_resnet18(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-18 with ELA (``ela_version`` 'T', 'B' (default), 'S' or 'L')."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return _create_resnet_attn('ela_resnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def ela_resnet34(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-34 with ELA (``ela_version`` 'T', 'B' (default), 'S' or 'L')."""
    model_args = dict(block=BasicBlock, layers=(3, 4, 6, 3))
    return _create_resnet_attn('ela_resnet34', pretrained, **dict(model_args, **kwargs))


@register_model
def ela_resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-50 with ELA (``ela_version`` 'T', 'B' (default), 'S' or 'L')."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3))
    return _create_resnet_attn('ela_resnet50', pretrained, **dict(model_args, **kwargs))


@register_model
def ela_resnet101(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-101 with ELA (``ela_version`` 'T', 'B' (default), 'S' or 'L')."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 23, 3))
    return _create_resnet_attn('ela_resnet101', pretrained, **dict(model_args, **kwargs))
