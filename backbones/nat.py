"""Neighborhood Attention Transformer (NAT) and Dilated Neighborhood Attention Transformer (DiNAT).

Hassani, Walton, Li, Li & Shi, "Neighborhood Attention Transformer", CVPR 2023, arXiv:2204.07143.
Hassani & Shi, "Dilated Neighborhood Attention Transformer", arXiv:2209.15001.
Official code and weights: github.com/SHI-Labs/Neighborhood-Attention-Transformer (MIT), classification/nat.py and
dinat.py for the classifiers, detection/ and segmentation/nat.py for the dense-prediction backbones.

A fresh implementation whose parameter names equal the official ones (``patch_embed``, ``levels.i.blocks.j``,
``attn.qkv``/``attn.rpb``/``attn.proj``, ``gamma1``/``gamma2``, ``levels.i.downsample``, ``norm``, ``head``), so the
official checkpoints load as they are. DiNAT is NAT with a per-block dilation schedule; the dilations depend on the
training resolution (the largest dilation keeps ``kernel * dilation`` within the feature map), hence the separate
``dinat_large_384`` architecture. Not registered: the 11x11-kernel DiNAT-L release (dinat_large_in22k_in1k_384_11x11)
and the ImageNet-22k pre-training checkpoints (their head size is not stated in the official repository).

Input sizes: any. Attention maps smaller than ``kernel * dilation`` are padded, as NATTEN 0.14's module did under
the official detection/segmentation code (see :mod:`visionattn.layers.neighborhood_attention`); dilations are never
changed. ``features_only`` gives what the official dense-prediction backbones feed their necks: each level's output
*before* its downsampler, through a per-level LayerNorm (``norm0..3`` there, ``feature_norms`` here), NCHW.
"""
import re
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from torch import nn

from visionattn.hub import build_model, unwrap_state_dict
from visionattn.layers import LayerNorm, NeighborhoodAttention2d
from visionattn.layers.inputs import check_images
from visionattn.layers.stages import (
    check_global_pool,
    forward_intermediates_downsample_last,
    init_trunc_normal_,
    keyword_no_weight_decay,
    prune_stages_downsample_last,
    reset_linear_classifier,
    resolve_intermediates,
    stage_group_matcher,
)
from visionattn.zoo import PaperFacts, register_paper_facts

from ._api import check_classifier_pool, feature_cfg_for

__all__ = ['NAT']  # models are reached through timm.create_model


torch.fx.wrap('check_images')  # one FX node; TorchScript calls back into Python




class ConvTokenizer(nn.Module):
    """Overlapping stem: two 3x3 stride-2 convs (no norm or activation between them), then LayerNorm; NCHW -> NHWC."""

    def __init__(self, in_chans: int, embed_dim: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1, **dd),
            nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1, **dd),
        )
        self.norm = LayerNorm(embed_dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    """3x3 stride-2 conv without bias doubling the channels, then LayerNorm; NHWC -> NHWC."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.reduction = nn.Conv2d(dim, 2 * dim, kernel_size=3, stride=2, padding=1, bias=False, **dd)
        self.norm = LayerNorm(2 * dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class NATBlock(nn.Module):
    """Pre-norm transformer block with neighborhood attention (official ``NATLayer``), channels-last.

    With ``layer_scale`` the two residual branches are scaled by learned per-channel ``gamma1``/``gamma2``
    initialised to that value (NAT-S/B, DiNAT-B).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            kernel_size: int = 7,
            dilation: int = 1,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            layer_scale: Optional[float] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = LayerNorm(dim, **dd)
        self.attn = NeighborhoodAttention2d(
            dim, num_heads, kernel_size=kernel_size, dilation=dilation, qkv_bias=qkv_bias, qk_scale=qk_scale,
            attn_drop=attn_drop, proj_drop=proj_drop, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop, **dd)
        if layer_scale is not None:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale), **dd))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale), **dd))
        else:
            self.register_parameter('gamma1', None)
            self.register_parameter('gamma2', None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.attn(self.norm1(x))
        if self.gamma1 is not None:
            attn = self.gamma1 * attn
        x = x + self.drop_path(attn)
        mlp = self.mlp(self.norm2(x))
        if self.gamma2 is not None:
            mlp = self.gamma2 * mlp
        return x + self.drop_path(mlp)


class NATLevel(nn.Module):
    """One resolution level (official ``NATBlock``): the blocks, then the downsampler of the next level, if any."""

    def __init__(
            self,
            dim: int,
            depth: int,
            num_heads: int,
            kernel_size: int,
            dilations: Optional[Sequence[int]],
            downsample: bool,
            mlp_ratio: float,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: Sequence[float] = (),
            layer_scale: Optional[float] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        dilations = list(dilations) if dilations is not None else [1] * depth
        if len(dilations) != depth:
            raise ValueError(f'NAT level with {depth} blocks got {len(dilations)} dilations: {dilations}')
        self.grad_checkpointing = False
        self.blocks = nn.Sequential(*[
            NATBlock(
                dim, num_heads, kernel_size=kernel_size, dilation=dilations[i], mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias, qk_scale=qk_scale, proj_drop=proj_drop, attn_drop=attn_drop,
                drop_path=drop_path[i], layer_scale=layer_scale, **dd)
            for i in range(depth)])
        self.downsample = ConvDownsampler(dim, **dd) if downsample else nn.Identity()

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The level's output before downsampling (what the dense-prediction backbones take), NHWC."""
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.forward_blocks(x))


class NAT(nn.Module):
    """NAT / DiNAT: conv tokenizer, four levels of neighborhood-attention blocks with conv downsamplers, LN, head.

    Args:
        depths: Blocks per level.
        num_heads: Attention heads per level.
        embed_dim: Channels of the first level (doubled at each level).
        mlp_ratio: MLP hidden width / channels.
        kernel_size: Neighborhood size of every attention layer.
        dilations: Per level, the dilation of each block (DiNAT); None for NAT (all 1).
        layer_scale: Initial value of the per-channel residual scales ``gamma1/2``; None for none.
        in_chans: Input channels.
        num_classes: Classes of the linear head (0 for none).
        global_pool: 'avg' or '' (no pooling: ``forward_head`` returns the NCHW map).
        qkv_bias: Bias in the qkv projections.
        qk_scale: Attention scale; default head_dim ** -0.5.
        drop_rate: Dropout before the classifier.
        proj_drop_rate: Dropout after the stem, the attention projection and in the MLPs (official ``drop_rate``).
        attn_drop_rate: Attention-probability dropout (only 0 is supported, as in every official model).
        drop_path_rate: Stochastic depth, increasing linearly over all blocks to this value. 0 by default, as timm's
            models (its train.py sets ``--drop-path``); each variant's docstring gives the official training value.
        feature_norms: Add a LayerNorm per level applied to the intermediates (the official dense-prediction
            backbones' ``norm0..3``); ``features_only=True`` turns it on.
        device: Device for the parameters.
        dtype: Data type for the parameters.

    ``torch.compile(model, fullgraph=True)`` traces the whole model, attention included (its argument checks and
    backend choice are resolved while tracing). ``torch.jit.script`` (of the model, or of its ``torch.fx`` trace)
    compiles everything but the attention layer's op call, which TorchScript hands back to Python: the scripted
    model runs, but ``torch.jit.save`` cannot export it.
    """

    def __init__(
            self,
            depths: Sequence[int] = (3, 4, 6, 5),
            num_heads: Sequence[int] = (2, 4, 8, 16),
            embed_dim: int = 64,
            mlp_ratio: float = 3.,
            kernel_size: int = 7,
            dilations: Optional[Sequence[Sequence[int]]] = None,
            layer_scale: Optional[float] = None,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            feature_norms: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        num_levels = len(depths)
        if len(num_heads) != num_levels:
            raise ValueError(f'NAT: {num_levels} levels (depths {list(depths)}) but {len(num_heads)} num_heads')
        if dilations is not None and len(dilations) != num_levels:
            raise ValueError(f'NAT: {num_levels} levels but dilations for {len(dilations)}')
        check_global_pool(global_pool, 'NAT')
        check_classifier_pool(num_classes, global_pool, 'NAT')
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dim = embed_dim
        self.kernel_size = kernel_size
        self.num_features = self.head_hidden_size = int(embed_dim * 2 ** (num_levels - 1))
        self.grad_checkpointing = False

        self.in_chans = in_chans
        self.patch_embed = ConvTokenizer(in_chans, embed_dim, **dd)
        self.pos_drop = nn.Dropout(proj_drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()  # works under a meta device
        self.levels = nn.ModuleList()
        self.feature_info = []
        for i in range(num_levels):
            dim = int(embed_dim * 2 ** i)
            self.levels.append(NATLevel(
                dim, depths[i], num_heads[i], kernel_size, None if dilations is None else dilations[i],
                downsample=i < num_levels - 1, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                layer_scale=layer_scale, **dd))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f'levels.{i}'))
        self.feature_norms = nn.ModuleList(
            [LayerNorm(info['num_chs'], **dd) for info in self.feature_info]) if feature_norms else None
        self.norm = LayerNorm(self.num_features, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Official NAT._init_weights: truncated-normal Linear weights, zero biases; convs keep PyTorch's init.
        init_trunc_normal_(module)

    @torch.jit.ignore
    def no_weight_decay_keywords(self):
        return {'rpb'}

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        # full names, the form timm's optimizer factory reads (it ignores no_weight_decay_keywords)
        return keyword_no_weight_decay(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return stage_group_matcher(coarse, stem='patch_embed', stages='levels', head='norm', downsample_first=False)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for level in self.levels:
            level.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        check_classifier_pool(num_classes, self.global_pool if global_pool is None else global_pool, 'NAT')
        reset_linear_classifier(self, num_classes, global_pool, 'NAT')
        param = next(self.parameters())  # the head is built in torch's defaults: follow the model's .to()/.cuda()
        self.head.to(device=param.device, dtype=param.dtype)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, Sequence[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Level outputs before their downsamplers, and (unless ``intermediates_only``) the final features.

        Args:
            x: Input images [B, C, H, W].
            indices: Levels to return: the last n for an int n, or a sequence of level indices (default all).
            norm: Without ``feature_norms``: put the last level's intermediate through the final norm.
            stop_early: Stop after the last level asked for.
            output_fmt: 'NCHW' or 'NHWC', of the intermediates (the final features stay NCHW).
            intermediates_only: Return only the intermediates.

        Intermediates go through the per-level ``feature_norms`` where the model has them (``features_only``).
        """
        take_indices, max_index = resolve_intermediates(len(self.levels), indices, output_fmt)
        x = self.pos_drop(self.patch_embed(check_images(x, self.in_chans, 'NAT')))
        out = forward_intermediates_downsample_last(
            x, self.levels, take_indices, max_index, final_norm=self.norm, norm=norm, stop_early=stop_early,
            output_fmt=output_fmt, intermediates_only=intermediates_only, stage_norms=self.feature_norms)
        if intermediates_only or output_fmt == 'NCHW':
            return out
        # output_fmt is the intermediates' layout; the final features stay NCHW, as forward_features gives them
        # (forward_head takes them; NHWC final features silently pooled the wrong axes there)
        final, intermediates = out
        return final.permute(0, 3, 1, 2), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, Sequence[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the levels (and the downsampler) after the last intermediate asked for; optionally norm and head.

        Dropping the last level also drops the final norm and the classifier, which are sized for it, and makes
        ``num_features`` the kept level's width (as timm's Swin and ConvNeXt do).
        """
        num_levels = len(self.levels)
        take_indices = prune_stages_downsample_last(
            self, 'levels', indices, prune_norm, prune_head, stage_norms='feature_norms')
        if len(self.levels) < num_levels:
            # kept, they failed in the first forward ("Given normalized_shape=[512]...") on the narrower map
            self.norm = nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[len(self.levels) - 1]['num_chs']
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> final normed feature map [B, C', H/32, W/32] (NCHW)."""
        x = self.pos_drop(self.patch_embed(check_images(x, self.in_chans, 'NAT')))
        for level in self.levels:
            x = level(x)
        return self.norm(x).permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean((2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: NAT) -> Dict[str, torch.Tensor]:
    """Official NAT/DiNAT checkpoint -> this model (the names are the same; strict key checks follow in build_model).

    The official classification checkpoints are bare state dicts (``torch.save(model.state_dict())``), keys
    ``patch_embed.proj.{0,1}``, ``patch_embed.norm``, ``levels.i.blocks.j.{norm1,attn.qkv,attn.rpb,attn.proj,norm2,
    mlp.fc1,mlp.fc2,gamma1,gamma2}``, ``levels.i.downsample.{reduction,norm}``, ``norm``, ``head``. The
    dense-prediction backbones' per-level ``norm{i}`` become ``feature_norms.{i}``. A ``features_only`` model built
    from a classification checkpoint gets fresh per-level norms (weight 1, bias 0): the official detection and
    segmentation code starts them the same way (a new ``nn.LayerNorm``, checkpoint loaded with ``strict=False``).
    """
    state_dict = unwrap_state_dict(state_dict)
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r'^norm([0-9]+)\.', r'feature_norms.\1.', key)
        out[key] = value
    for key, value in model.state_dict().items():
        if key.startswith('feature_norms.') and key not in out:
            out[key] = torch.ones_like(value, device='cpu') if key.endswith('weight') else torch.zeros_like(
                value, device='cpu')
    return out


def _create_nat(variant: str, pretrained: bool = False, **kwargs) -> NAT:
    if kwargs.get('features_only'):
        kwargs.setdefault('feature_norms', True)
    feature_cfg = feature_cfg_for(kwargs, 'NAT', kwargs.pop('out_indices', None), hook_refusal=(
        "levels.i ends in the next level's downsampler (channels-last, twice the channels, half the size) and skips "
        'the per-level norms (feature_norms) of forward_intermediates'))
    return build_model(
        NAT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, feature_cfg=feature_cfg, **kwargs)


def _cfg(url: str = '', paper: str = 'nat', **kwargs) -> Dict[str, Any]:
    # The official validate.py reads timm's defaults (the models define no cfg): bicubic, crop 0.875, ImageNet mean/std.
    ids = {'nat': ('arXiv:2204.07143', 'Neighborhood Attention Transformer'),
           'dinat': ('arXiv:2209.15001', 'Dilated Neighborhood Attention Transformer')}[paper]
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj.0', 'classifier': 'head', 'license': 'mit',
        'origin_url': 'https://github.com/SHI-Labs/Neighborhood-Attention-Transformer',
        'paper_ids': ids[0], 'paper_name': ids[1],
        **kwargs,
    }


_NAT_URL = 'https://shi-labs.com/projects/nat/checkpoints/CLS/'
_DINAT_URL = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/'
# 384 fine-tunes: the official config (configs/dinat_large_384.yml) evaluates at crop_pct 1.0.
_CFG_384 = dict(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0)

default_cfgs = generate_default_cfgs({
    'nat_mini.in1k': _cfg(_NAT_URL + 'nat_mini.pth'),
    'nat_tiny.in1k': _cfg(_NAT_URL + 'nat_tiny.pth'),
    'nat_small.in1k': _cfg(_NAT_URL + 'nat_small.pth'),
    'nat_base.in1k': _cfg(_NAT_URL + 'nat_base.pth'),
    'dinat_mini.in1k': _cfg(_DINAT_URL + 'dinat_mini_in1k_224.pth', 'dinat'),
    'dinat_tiny.in1k': _cfg(_DINAT_URL + 'dinat_tiny_in1k_224.pth', 'dinat'),
    'dinat_small.in1k': _cfg(_DINAT_URL + 'dinat_small_in1k_224.pth', 'dinat'),
    'dinat_base.in1k': _cfg(_DINAT_URL + 'dinat_base_in1k_224.pth', 'dinat'),
    'dinat_large.in22k_ft_in1k': _cfg(_DINAT_URL + 'dinat_large_in22k_in1k_224.pth', 'dinat'),
    'dinat_large_384.in22k_ft_in1k': _cfg(_DINAT_URL + 'dinat_large_in22k_in1k_384.pth', 'dinat', **_CFG_384),
})

# reference_params: the official classification models' parameter counts, summed layer by layer from
# classification/nat.py (tests/test_nat.py repeats the sum independently of this module).
_NAT, _DINAT = 'NAT', 'DiNAT'
_SOURCE = 'sum over the layers of SHI-Labs/Neighborhood-Attention-Transformer classification/{}.py @d334f5b'
register_paper_facts({
    # NAT paper Table 1 / classification/NAT.md; DiNAT paper Table 2 / classification/DiNAT.md.
    'nat_mini': PaperFacts(_NAT, 20, 2.7, 81.8, 19_984_174, _SOURCE.format('nat')),
    'nat_tiny': PaperFacts(_NAT, 28, 4.3, 83.2, 27_901_582, _SOURCE.format('nat')),
    'nat_small': PaperFacts(_NAT, 51, 7.8, 83.7, 50_743_297, _SOURCE.format('nat')),
    'nat_base': PaperFacts(_NAT, 90, 13.7, 84.3, 89_769_652, _SOURCE.format('nat')),
    'dinat_mini': PaperFacts(_DINAT, 20, 2.7, 81.8, 19_984_174, _SOURCE.format('dinat')),
    'dinat_tiny': PaperFacts(_DINAT, 28, 4.3, 82.7, 27_901_582, _SOURCE.format('dinat')),
    'dinat_small': PaperFacts(_DINAT, 51, 7.8, 83.8, 50_719_681, _SOURCE.format('dinat')),
    'dinat_base': PaperFacts(_DINAT, 90, 13.7, 84.4, 89_769_652, _SOURCE.format('dinat')),
    'dinat_large': PaperFacts(_DINAT, 200, 30.6, 86.6, 200_943_514, _SOURCE.format('dinat')),
    'dinat_large_384': PaperFacts(_DINAT, 200, 89.7, 87.4, 200_943_514, _SOURCE.format('dinat')),
})

_DEPTHS = (3, 4, 18, 5)
# DiNAT dilation schedules (classification/dinat.py): at 224 the levels are 56, 28, 14, 7 wide, so the dilated
# blocks use 8, 4, 2 (= width // 7); the 384 models (96, 48, 24, 12) use 13, 6, 3.
_DILATIONS_MINI_224 = ((1, 8, 1), (1, 4, 1, 4), (1, 2) * 3, (1,) * 5)
_DILATIONS_224 = ((1, 8, 1), (1, 4, 1, 4), (1, 2) * 9, (1,) * 5)
_DILATIONS_384 = ((1, 13, 1), (1, 6, 1, 6), (1, 3) * 9, (1,) * 5)


@register_model
def nat_mini(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Mini: depths 3-4-6-5, dim 64, mlp ratio 3; drop path 0.2."""
    model_args = dict(depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3)
    return _create_nat('nat_mini', pretrained, **dict(model_args, **kwargs))


@register_model
def nat_tiny(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Tiny: depths 3-4-18-5, dim 64, mlp ratio 3; drop path 0.2."""
    model_args = dict(depths=_DEPTHS, num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3)
    return _create_nat('nat_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def nat_small(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Small: depths 3-4-18-5, dim 96, mlp ratio 2, layer scale 1e-5; drop path 0.3."""
    model_args = dict(
        depths=_DEPTHS, num_heads=(3, 6, 12, 24), embed_dim=96, mlp_ratio=2, layer_scale=1e-5)
    return _create_nat('nat_small', pretrained, **dict(model_args, **kwargs))


@register_model
def nat_base(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Base: depths 3-4-18-5, dim 128, mlp ratio 2, layer scale 1e-5; drop path 0.5."""
    model_args = dict(
        depths=_DEPTHS, num_heads=(4, 8, 16, 32), embed_dim=128, mlp_ratio=2, layer_scale=1e-5)
    return _create_nat('nat_base', pretrained, **dict(model_args, **kwargs))


@register_model
def dinat_mini(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Mini: NAT-Mini with every other block dilated (224 schedule); drop path 0.2."""
    model_args = dict(
        depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3,
        dilations=_DILATIONS_MINI_224)
    return _create_nat('dinat_mini', pretrained, **dict(model_args, **kwargs))


@register_model
def dinat_tiny(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Tiny: NAT-Tiny with every other block dilated (224 schedule); drop path 0.2."""
    model_args = dict(
        depths=_DEPTHS, num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3,
        dilations=_DILATIONS_224)
    return _create_nat('dinat_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def dinat_small(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Small: dim 96, mlp ratio 2, no layer scale (unlike NAT-Small; official dinat.py); drop path 0.3."""
    model_args = dict(
        depths=_DEPTHS, num_heads=(3, 6, 12, 24), embed_dim=96, mlp_ratio=2,
        dilations=_DILATIONS_224)
    return _create_nat('dinat_small', pretrained, **dict(model_args, **kwargs))


@register_model
def dinat_base(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Base: dim 128, mlp ratio 2, layer scale 1e-5; drop path 0.5."""
    model_args = dict(
        depths=_DEPTHS, num_heads=(4, 8, 16, 32), embed_dim=128, mlp_ratio=2, layer_scale=1e-5,
        dilations=_DILATIONS_224)
    return _create_nat('dinat_base', pretrained, **dict(model_args, **kwargs))


@register_model
def dinat_large(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large at 224: dim 192, mlp ratio 2 (ImageNet-22k pre-training, 1k fine-tune with drop path 0.35)."""
    model_args = dict(
        depths=_DEPTHS, num_heads=(6, 12, 24, 48), embed_dim=192, mlp_ratio=2,
        dilations=_DILATIONS_224)
    return _create_nat('dinat_large', pretrained, **dict(model_args, **kwargs))


@register_model
def dinat_large_384(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large at 384: the 384 dilation schedule (13, 6, 3), parameters as ``dinat_large``; drop path 0.35."""
    model_args = dict(
        depths=_DEPTHS, num_heads=(6, 12, 24, 48), embed_dim=192, mlp_ratio=2,
        dilations=_DILATIONS_384)
    return _create_nat('dinat_large_384', pretrained, **dict(model_args, **kwargs))
