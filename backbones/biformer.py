"""BiFormer: vision transformers with bi-level routing attention (BRA).

Zhu, Wang, Ke, Zhang & Lau, "BiFormer: Vision Transformer with Bi-Level Routing Attention", CVPR 2023,
arXiv:2303.08810. Official code and weights: github.com/rayleizhu/BiFormer (MIT), ``models/biformer.py``.

A fresh implementation of the released BiFormer-T/S/B with the official hyper-parameters and quirks:
- a stem of two 3x3 stride-2 convs with BatchNorm (GELU between) and 3x3 stride-2 conv + BatchNorm downsampling;
- pre-norm blocks: ``x + dwconv3x3(x)`` (a conv positional embedding), then ``x + attn(LN(x))`` and
  ``x + mlp(LN(x))`` with LayerNorm eps 1e-6, MLP ratio 3, no layer scale;
- BRA in stages 1-3 (``n_win=7`` regions per side at 224, top-k 1/4/16, head dim 32, logit scale
  ``qk_dim ** -0.5`` (see ``visionattn.layers.bra``));
- stage 4 ("topk=-2") runs global attention with 8 heads whatever its width (the official block ignores the
  head count it is given), no qkv bias, and a 5x5 depthwise LePE on the block's normed input, not on v;
- a BatchNorm2d on the last map before average pooling and the linear classifier.

Unlike the official classification models, which reject maps not divisible by ``n_win``, BRA here pads such maps
(bottom/right), attends and crops, as the official detection/segmentation backbones do (``auto_pad=True``), so
any input size works; at 224 (and every multiple of 224) nothing is padded. ``features_only=True`` adds a
LayerNorm2d on every stage output (``extra_norms``) and drops the BatchNorm head, as the official
dense-prediction backbones (``semantic_segmentation/models_mm/biformer_mm.py``) do.

The official names ``biformer_tiny/small/base`` resolve to ``biformer_t/s/b`` through timm's model-name
deprecation map (one architecture per model; timm warns that the long name is mapped).
"""
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, LayerNorm2d, Mlp
from timm.models import checkpoint_seq, generate_default_cfgs, register_model, register_model_deprecations
from torch import nn

from visionattn._timm_compat import resolve_take_indices
from visionattn.hub import build_model, unwrap_state_dict
from visionattn.layers import BiLevelRoutingAttention, LayerNorm
from visionattn.layers.inputs import check_images
from visionattn.layers.stages import (
    forward_intermediates_downsample_first,
    init_trunc_normal_,
    resolve_intermediates,
    stage_group_matcher,
)
from visionattn.zoo import PaperFacts, register_paper_facts

from ._api import check_classifier_pool, feature_cfg_for

__all__ = ['BiFormer']  # models are reached through timm.create_model


torch.fx.wrap('check_images')  # one FX node; TorchScript calls back into Python


class GlobalAttentionLePE(nn.Module):
    """Multi-head self-attention over the whole map plus a depthwise-conv LePE of its input (official stage 4).

    Args:
        dim: Channels.
        num_heads: Heads (the official stage-4 block always uses its default, 8).
        qkv_bias: Bias of the qkv projection (official: none).
        side_dwconv: Kernel of the depthwise LePE conv.
        device: Device for the parameters.
        dtype: Data type for the parameters.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, side_dwconv: int = 5,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim % num_heads:
            raise ValueError(f'num_heads={num_heads} must divide dim={dim}')
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, W, C] -> [B, H, W, C]."""
        qkv = self.qkv(x.flatten(1, 2)).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # scale head_dim ** -0.5, as official
        out = out.transpose(1, 2).flatten(2).reshape_as(x)
        # LePE of the block's normed input (the official AttentionLePE convolves x, not v)
        out = out + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj(out)


class BiFormerBlock(nn.Module):
    """Conv positional embedding, then pre-norm attention and MLP residual branches; NCHW in and out.

    Args:
        dim: Channels.
        num_heads: BRA heads.
        topk: Routed regions per region; -2 selects the global attention of the last stage.
        n_win: BRA regions per side.
        mlp_ratio: MLP hidden width over ``dim``.
        drop_path: Stochastic depth rate.
        side_dwconv: Kernel of the attention's depthwise LCE/LePE conv.
        global_attn_heads: Heads of the global attention (``topk=-2``).
        auto_pad: Let BRA pad maps not divisible by ``n_win``.
        attn_backend: Backend of the BRA op (None: automatic).
        device: Device for the parameters.
        dtype: Data type for the parameters.
    """

    def __init__(self, dim: int, num_heads: int, topk: int, n_win: int = 7, mlp_ratio: float = 3.,
                 drop_path: float = 0., side_dwconv: int = 5, global_attn_heads: int = 8, auto_pad: bool = True,
                 attn_backend: Optional[str] = None, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        self.norm1 = LayerNorm(dim, eps=1e-6, **dd)
        if topk > 0:
            self.attn = BiLevelRoutingAttention(
                dim, num_heads=num_heads, n_win=n_win, topk=topk, side_dwconv=side_dwconv, auto_pad=auto_pad,
                backend=attn_backend, **dd)
        elif topk == -2:
            self.attn = GlobalAttentionLePE(dim, num_heads=global_attn_heads, side_dwconv=side_dwconv, **dd)
        else:  # the official -1 (plain attention) and 0 (conv) modes belong to no released model
            raise ValueError(f'topk must be positive (routing) or -2 (global attention with LePE), got {topk}')
        self.norm2 = LayerNorm(dim, eps=1e-6, **dd)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        # NHWC for the token branches: a view of a channels-last map, copied once from an NCHW one (the block's
        # output is channels-last, so within a stage only the first block of an NCHW model copies)
        x = x.permute(0, 2, 3, 1).contiguous()
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x.permute(0, 3, 1, 2)


class BiFormerStage(nn.Module):
    """A stride-2 3x3 conv + BatchNorm downsampling (none in the first stage, after the stem), then blocks."""

    def __init__(self, in_dim: int, dim: int, depth: int, downsample: bool, drop_path: Sequence[float],
                 device=None, dtype=None, **block_kwargs):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.grad_checkpointing = False
        if downsample:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_dim, dim, 3, stride=2, padding=1, **dd), nn.BatchNorm2d(dim, **dd))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[BiFormerBlock(dim, drop_path=drop_path[i], **dd, **block_kwargs)
                                      for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class BiFormer(nn.Module):
    """BiFormer: a four-stage hierarchical vision transformer with bi-level routing attention.

    Args:
        depths: Blocks per stage.
        embed_dims: Channels per stage.
        mlp_ratios: MLP hidden width over the channels, per stage.
        topks: Routed regions per region, per stage; -2 = global attention with LePE (the last stage).
        n_win: BRA regions per side (7 for 224 classification; the official dense-prediction configs use 8 or 16).
        head_dim: Channels per BRA head (heads = channels / head_dim).
        side_dwconv: Kernel of the depthwise LCE/LePE convs.
        global_attn_heads: Heads of the global attention stage (official: always 8).
        auto_pad: Pad maps not divisible by ``n_win`` inside BRA (then crop); False raises on them.
        extra_norms: Add a LayerNorm2d to every stage output in ``forward_intermediates``, as the official
            dense-prediction backbones do (``features_only=True`` turns it on).
        in_chans: Input channels.
        num_classes: Classes; 0 for no classifier.
        global_pool: Pooling before the classifier ('avg', as official; '' keeps the map).
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth, rising linearly over the blocks to this value.
        attn_backend: Backend of the BRA op: None (automatic), 'reference' or 'triton'.
        device: Device for the parameters.
        dtype: Data type for the parameters.
    """

    def __init__(
            self,
            depths: Sequence[int] = (2, 2, 8, 2),
            embed_dims: Sequence[int] = (64, 128, 256, 512),
            mlp_ratios: Sequence[float] = (3, 3, 3, 3),
            topks: Sequence[int] = (1, 4, 16, -2),
            n_win: int = 7,
            head_dim: int = 32,
            side_dwconv: int = 5,
            global_attn_heads: int = 8,
            auto_pad: bool = True,
            extra_norms: bool = False,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            attn_backend: Optional[str] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        num_stages = len(depths)
        if not (len(embed_dims) == len(mlp_ratios) == len(topks) == num_stages):
            raise ValueError('depths, embed_dims, mlp_ratios and topks need one entry per stage, got '
                             f'{len(depths)}, {len(embed_dims)}, {len(mlp_ratios)} and {len(topks)}')
        check_classifier_pool(num_classes, global_pool, 'BiFormer')
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.grad_checkpointing = False

        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, embed_dims[0] // 2, 3, stride=2, padding=1, **dd),
            nn.BatchNorm2d(embed_dims[0] // 2, **dd),
            nn.GELU(),
            nn.Conv2d(embed_dims[0] // 2, embed_dims[0], 3, stride=2, padding=1, **dd),
            nn.BatchNorm2d(embed_dims[0], **dd),
        )
        rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()  # works under a meta device
        stages, self.feature_info, first = [], [], 0
        for i in range(num_stages):
            stages.append(BiFormerStage(
                embed_dims[max(i - 1, 0)], embed_dims[i], depths[i], downsample=i > 0,
                drop_path=rates[first:first + depths[i]], num_heads=embed_dims[i] // head_dim, topk=topks[i],
                n_win=n_win, mlp_ratio=mlp_ratios[i], side_dwconv=side_dwconv, global_attn_heads=global_attn_heads,
                auto_pad=auto_pad, attn_backend=attn_backend, **dd))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=4 * 2 ** i, module=f'stages.{i}'))
            first += depths[i]
        self.stages = nn.Sequential(*stages)
        self.extra_norms = nn.ModuleList([LayerNorm2d(d, **dd) for d in embed_dims]) if extra_norms else None
        self.norm = nn.BatchNorm2d(embed_dims[-1], **dd)
        self.head = ClassifierHead(embed_dims[-1], num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.head_hidden_size = self._pooled_width()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # The official init: truncated-normal linear weights (std 0.02) with zero bias; convs keep torch's default.
        init_trunc_normal_(module)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return stage_group_matcher(coarse, stem='stem', stages='stages', head='norm', downsample_first=True)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        check_classifier_pool(num_classes, self.head.global_pool.pool_type if global_pool is None else global_pool,
                              'BiFormer')
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)
        self.head_hidden_size = self._pooled_width()
        # timm's head builds the new fc like its old one, in torch's defaults once that is gone (num_classes was 0)
        param = next(self.parameters())
        self.head.to(device=param.device, dtype=param.dtype)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs along the forward pass (timm's feature API).

        Args:
            x: Images [B, C, H, W].
            indices: Stages to return: None = all, n = the last n, or a list of indices.
            norm: Pass the last stage's output through the BatchNorm head norm (the one norm that fits it).
                Models built with ``extra_norms`` (``features_only``) normalise every output with its LayerNorm2d
                instead, as the official dense-prediction backbones do.
            stop_early: Stop after the last requested stage.
            output_fmt: 'NCHW' or 'NHWC'.
            intermediates_only: Return only the intermediates.

        Returns:
            The intermediates, or (final features as ``forward_features`` gives them, intermediates).
        """
        take_indices, max_index = resolve_intermediates(len(self.stages), indices, output_fmt)
        x = self.stem(check_images(x, self.stem[0].in_channels, 'BiFormer'))
        return forward_intermediates_downsample_first(
            x, self.stages, take_indices, max_index, stop_early=stop_early, output_fmt=output_fmt,
            intermediates_only=intermediates_only, final_norm=self.norm, norm=norm, stage_norms=self.extra_norms)

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last one ``indices`` needs, and the head norm/classifier as asked."""
        take_indices, max_index = resolve_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if self.extra_norms is not None:
            self.extra_norms = self.extra_norms[:max_index + 1]
        if prune_norm or prune_end:  # the BatchNorm head norm only fits the last stage
            self.norm = nn.Identity()
        if prune_end:
            param = next(self.parameters())
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            self.head = ClassifierHead(self.num_features, 0, pool_type='', device=param.device, dtype=param.dtype)
            self.num_classes = 0
        elif prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def _pooled_width(self) -> int:
        # what forward_head(pre_logits=True) returns, as timm's ResNet reports it: 'catavgmax' doubles the channels
        return self.num_features * self.head.global_pool.feat_mult()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(check_images(x, self.stem[0].in_channels, 'BiFormer'))
        x = self.stages(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


BiFormer.torchscript_unsupported = (
    'bi-level routing attention validates its inputs and picks its backend (Triton or the PyTorch reference) '
    'in Python at run time; use torch.fx or torch.compile instead')


def _refuse_scripting(self):
    # torch.jit.script calls this first: the reason, instead of TorchScript's error deep inside the op
    raise RuntimeError(f'{type(self).__name__} cannot be scripted with torch.jit.script: '
                       f'{self.torchscript_unsupported}')


BiFormer.__prepare_scriptable__ = _refuse_scripting


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: BiFormer) -> Dict[str, torch.Tensor]:
    """Official BiFormer checkpoint -> this layout.

    The official files hold ``{'model': state_dict, ...}`` (models/biformer.py loads ``checkpoint['model']``).
    Renames: ``downsample_layers.0`` -> ``stem``, ``downsample_layers.i`` -> ``stages.i.downsample``,
    ``stages.i.j`` -> ``stages.i.blocks.j``, the MLP's ``mlp.0``/``mlp.3`` -> ``mlp.fc1``/``mlp.fc2``, the classifier
    ``head`` -> ``head.fc``; everything else (``pos_embed``, ``norm1/2``, ``attn.*``, the BatchNorm ``norm``) keeps
    its name. A model with ``extra_norms`` (features_only) gets fresh LayerNorm2d weights for them, as the
    official dense-prediction backbones start from the ImageNet checkpoint.
    """
    state_dict = unwrap_state_dict(state_dict)
    if 'stem.0.weight' in state_dict:  # already in this layout (a checkpoint of this code, e.g. tools/publish.py's)
        return _with_extra_norms(dict(state_dict), model)
    renames = (
        (r'^downsample_layers\.0\.', 'stem.'),
        (r'^downsample_layers\.(\d+)\.', r'stages.\1.downsample.'),
        (r'^stages\.(\d+)\.(\d+)\.', r'stages.\1.blocks.\2.'),
        (r'\.mlp\.0\.', '.mlp.fc1.'),
        (r'\.mlp\.3\.', '.mlp.fc2.'),
        (r'^head\.', 'head.fc.'),
    )
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return _with_extra_norms(out, model)


def _with_extra_norms(state_dict: Dict[str, torch.Tensor], model: BiFormer) -> Dict[str, torch.Tensor]:
    # A features_only model's extra_norms start fresh when the checkpoint is a classifier's (official or this code's);
    # without them a classifier checkpoint in this layout failed to load into features_only=True (missing keys).
    if model.extra_norms is not None:
        for key, value in model.extra_norms.state_dict().items():
            state_dict.setdefault(f'extra_norms.{key}', value)
    return state_dict


def _create_biformer(variant: str, pretrained: bool = False, **kwargs) -> BiFormer:
    # features_only gets the official dense-prediction LayerNorm2d on every stage output
    kwargs.setdefault('extra_norms', bool(kwargs.get('features_only', False)))
    feature_cfg = feature_cfg_for(kwargs, 'BiFormer', hook_refusal=(
        'those skip the LayerNorm2d (extra_norms) that features_only puts on every stage output in '
        'forward_intermediates (pass extra_norms=False for the bare stage outputs)') if kwargs['extra_norms'] else None)
    return build_model(
        BiFormer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, feature_cfg=feature_cfg, **kwargs)


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    # Evaluation as the official datasets.py does it: resize by 256/224 (bicubic), centre crop, ImageNet mean/std.
    # (The official models attach timm-ViT's _cfg(), whose Inception mean/std are not what they were trained with.)
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.0', 'classifier': 'head.fc', 'license': 'mit',
        'origin_url': 'https://github.com/rayleizhu/BiFormer', 'paper_ids': 'arXiv:2303.08810',
        'paper_name': 'BiFormer: Vision Transformer with Bi-Level Routing Attention',
        **kwargs,
    }


def _onedrive(share_id: str, file_name: str) -> str:
    # The official models/biformer.py downloads these OneDrive share links and caches them under this file name.
    return f'https://api.onedrive.com/v1.0/shares/{share_id}/root/content#name={file_name}'


default_cfgs = generate_default_cfgs({
    'biformer_t.in1k': _cfg(_onedrive('s!AkBbczdRlZvChHEOoGkgwgQzEDlM', 'biformer_tiny_in1k.pth')),
    'biformer_s.in1k': _cfg(_onedrive('s!AkBbczdRlZvChHDyM-x9KWRBZ832', 'biformer_small_in1k.pth')),
    'biformer_b.in1k': _cfg(_onedrive('s!AkBbczdRlZvChHI_XPhoadjaNxtO', 'biformer_base_in1k.pth')),
})

_FAMILY = 'BiFormer'
_SOURCE = ('rayleizhu/BiFormer models/biformer.py @1697bbb: sum of parameters() of the official model (also '
           'rebuilt module for module in tests/test_biformer.py)')
register_paper_facts({
    # Official README table (params, FLOPs, ImageNet-1k top-1 at 224). The authors counted FLOPs with fvcore
    # (main.py), one per multiply-add as here; fvcore also adds the norm layers' element-wise work (under 1%).
    'biformer_t': PaperFacts(_FAMILY, 13.1, 2.2, 81.4, 13_142_760, _SOURCE),
    'biformer_s': PaperFacts(_FAMILY, 25.5, 4.5, 83.8, 25_536_232, _SOURCE),
    'biformer_b': PaperFacts(_FAMILY, 56.8, 9.8, 84.3, 56_804_968, _SOURCE),
})


@register_model
def biformer_t(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-T (official ``biformer_tiny``): depths 2-2-8-2, widths 64-512."""
    model_args = dict(depths=(2, 2, 8, 2), embed_dims=(64, 128, 256, 512))
    return _create_biformer('biformer_t', pretrained, **dict(model_args, **kwargs))


@register_model
def biformer_s(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-S (official ``biformer_small``): depths 4-4-18-4, widths 64-512."""
    model_args = dict(depths=(4, 4, 18, 4), embed_dims=(64, 128, 256, 512))
    return _create_biformer('biformer_s', pretrained, **dict(model_args, **kwargs))


@register_model
def biformer_b(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-B (official ``biformer_base``): depths 4-4-18-4, widths 96-768."""
    model_args = dict(depths=(4, 4, 18, 4), embed_dims=(96, 192, 384, 768))
    return _create_biformer('biformer_b', pretrained, **dict(model_args, **kwargs))


# The official names resolve to the same architectures (timm lists only the short names and warns on the long).
register_model_deprecations(__name__, {
    'biformer_tiny': 'biformer_t',
    'biformer_small': 'biformer_s',
    'biformer_base': 'biformer_b',
})
