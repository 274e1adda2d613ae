"""PATNet: partial convolution with partial visual attention.

Huang et al., "Partial Convolution Meets Visual Attention", arXiv:2503.03148. PATNet has no repository of its own;
its blocks (PAT_ch, PAT_sp, PAT_sf) are implemented in the same authors' PartialNet code,
github.com/haiduo/PartialNet @679cfc0 (MIT), models/partialnet.py, with one YAML per variant in cfg/. The authors
released no ImageNet weights (README: "coming soon"), so every variant here is randomly initialised.

A FasterNet-shaped network: a 4×4 patch embedding, four stages joined by 2×2 patch merging, each block a
channel mixer followed by a 1×1-conv MLP. Stages 0-2 use PAT_ch (partial conv + Gaussian channel attention on the
untouched channels, ``x + MLP(mix(x))``), the last stage PAT_sf (partial conv + self-attention with a
relative-position bias, ``x + mix(x)`` then ``x + MLP(x)``); PAT_sp appends a partial spatial attention to the
MLP where a variant enables it. The head is pool → 1×1 conv to 1280 → activation → linear, as in FasterNet.

Variant settings: the paper's per-variant table could not be read from any stored copy of the paper, so dims, depths,
activations and the PAT_sp switch follow the authors' cfg/PartialNet_*.yaml (github.com/haiduo/PartialNet), which is
also what the code trains. Where the code and its YAMLs disagree the YAML wins (see the note above the variants).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, SelectAdaptivePool2d, get_act_layer, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from torch import nn

from visionattn._timm_compat import resolve_take_indices
from visionattn.hub import build_model, unwrap_state_dict
from visionattn.layers.inputs import check_images
from visionattn.layers.partial import PartialChannelAttention, PartialSelfAttention, PartialSpatialAttention
from visionattn.layers.stages import forward_intermediates_downsample_first, stage_group_matcher
from visionattn.zoo import PaperFacts, register_paper_facts

from ._api import check_classifier_pool, feature_cfg_for

__all__ = ['PATNet']

MIN_INPUT_SIZE = 32  # stride 32 to the last stage; the stage-2 channel attention needs >= 2 positions (2×2 here)


@torch.fx.wrap
def _check_input(x: torch.Tensor, in_chans: int, min_size: int = MIN_INPUT_SIZE) -> torch.Tensor:
    check_images(x, in_chans, 'PATNet')
    if x.shape[-2] < min_size or x.shape[-1] < min_size:
        raise ValueError(
            f'PATNet needs images of at least {min_size}x{min_size} (total stride 32, and the channel '
            f'attention of stage 2 pools a std over >= 2 positions); got {x.shape[-2]}x{x.shape[-1]}')
    return x


class PatnetBlock(nn.Module):
    """One PATNet block: PAT_ch (``mixer='channel'``) or PAT_sf (``mixer='self'``), with PAT_sp when asked.

    Args:
        dim: Channels.
        mixer: 'channel' (stages 0-2) or 'self' (last stage).
        n_div: The partial conv covers ``dim // n_div`` channels.
        mlp_ratio: Hidden width of the MLP relative to ``dim``.
        spatial_attn: Append PAT_sp's partial spatial attention to the MLP.
        num_heads: Attention heads of PAT_sf.
        drop_path: Stochastic-depth rate of the MLP branch.
        act_layer: MLP activation.
        device: Device for the parameters.
        dtype: Data type for the parameters.
    """

    def __init__(
            self,
            dim: int,
            mixer: str = 'channel',
            n_div: int = 4,
            mlp_ratio: float = 2.,
            spatial_attn: bool = False,
            num_heads: int = 4,
            drop_path: float = 0.,
            act_layer: type = nn.ReLU,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if mixer == 'channel':
            self.spatial_mixing = PartialChannelAttention(dim, n_div, **dd)
        elif mixer == 'self':
            self.spatial_mixing = PartialSelfAttention(dim, n_div, num_heads=num_heads, **dd)
        else:
            raise ValueError(f"unknown PATNet mixer {mixer!r}; choose 'channel' or 'self'")
        # PAT_sf adds its mixer as a residual of its own; PAT_ch feeds the mixed map to the MLP only
        # (PartialNet MLPBlock.forward, split_shortcut).
        self.mixer_residual = mixer == 'self'
        hidden = int(dim * mlp_ratio)
        layers = [
            nn.Conv2d(dim, hidden, 1, bias=False, **dd),
            nn.BatchNorm2d(hidden, **dd),
            act_layer(),
            nn.Conv2d(hidden, dim, 1, bias=False, **dd),
        ]
        if spatial_attn:
            layers.append(PartialSpatialAttention(dim, **dd))
        self.mlp = nn.Sequential(*layers)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mixer_residual:
            x = x + self.spatial_mixing(x)
            return x + self.drop_path(self.mlp(x))
        return x + self.drop_path(self.mlp(self.spatial_mixing(x)))


class PatchMerging(nn.Module):
    """2×2 stride-2 conv doubling the channels, then BatchNorm."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, 2, stride=2, bias=False, device=device, dtype=dtype)
        self.norm = nn.BatchNorm2d(2 * dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x))


class PatchEmbed(nn.Module):
    """4×4 stride-4 conv, then BatchNorm."""

    def __init__(self, in_chans: int, dim: int, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, 4, stride=4, bias=False, device=device, dtype=dtype)
        self.norm = nn.BatchNorm2d(dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class PatnetStage(nn.Module):
    """Optional patch merging, then ``depth`` PATNet blocks."""

    def __init__(
            self,
            dim: int,
            depth: int,
            mixer: str,
            downsample: bool,
            drop_path: Sequence[float],
            device=None,
            dtype=None,
            **block_kwargs,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.grad_checkpointing = False
        self.downsample = PatchMerging(dim // 2, **dd) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            PatnetBlock(dim, mixer, drop_path=drop_path[i], **block_kwargs, **dd) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class PATNet(nn.Module):
    """PATNet backbone and classifier (timm API).

    The head is timm's FasterNet head: pool → 1×1 ``conv_head`` to ``feature_dim`` → activation → classifier.
    ``num_features`` is the last stage's width (what :meth:`forward_features` returns) and ``head_hidden_size`` the
    pre-logits width (``feature_dim``): ``num_classes=0`` (at creation or through :meth:`reset_classifier`) and
    ``forward_head(x, pre_logits=True)`` both return the ``head_hidden_size``-wide output of the conv head.
    :meth:`prune_intermediate_layers` drops the conv head too, after which both are ``num_features`` wide.

    Args:
        in_chans: Input channels.
        num_classes: Classifier outputs; 0 for none.
        global_pool: Pooling before the head ('avg', 'max', ... or '' for none).
        embed_dim: Channels of stage 0; they double at every stage.
        depths: Blocks per stage.
        mlp_ratio: MLP hidden width relative to the stage width.
        n_div: Partial convs cover ``dim // n_div`` channels.
        spatial_attn: PAT_sp in every block.
        num_heads: Attention heads of the last stage's PAT_sf.
        feature_dim: Width of the pre-logits 1×1 conv.
        act_layer: Activation of the MLPs and the head: a module class or a timm activation name ('gelu').
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth, rising linearly over all blocks.
        device: Device for the parameters.
        dtype: Data type for the parameters.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 64,
            depths: Sequence[int] = (2, 2, 6, 4),
            mlp_ratio: float = 2.,
            n_div: int = 4,
            spatial_attn: bool = False,
            num_heads: int = 4,
            feature_dim: int = 1280,
            act_layer: Union[str, type] = nn.ReLU,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        # a name ('gelu', as timm's models take it) failed with "'str' object is not callable" deep in the first block
        act_layer = get_act_layer(act_layer)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.num_stages = len(depths)
        self.patch_embed = PatchEmbed(in_chans, embed_dim, **dd)
        # PartialNet: torch.linspace(0, rate, sum(depths)) over every block (timm's FasterNet steps per stage)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()  # works under a meta device
        stages, self.feature_info = [], []
        for i, depth in enumerate(depths):
            dim = embed_dim * 2 ** i
            mixer = 'self' if i == self.num_stages - 1 else 'channel'
            stages.append(PatnetStage(
                dim, depth, mixer, downsample=i > 0, drop_path=rates[sum(depths[:i]):sum(depths[:i + 1])],
                n_div=n_div, mlp_ratio=mlp_ratio, spatial_attn=spatial_attn, num_heads=num_heads,
                act_layer=act_layer, **dd))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.num_features = embed_dim * 2 ** (self.num_stages - 1)
        self.feature_dim = self.head_hidden_size = feature_dim
        self.conv_head = nn.Conv2d(self.num_features, feature_dim, 1, bias=False, **dd)
        self.act = act_layer()
        self._set_classifier(num_classes, global_pool, **dd)
        self.apply(self._init_weights)

    def _set_classifier(self, num_classes: int, global_pool: str, device=None, dtype=None) -> None:
        check_classifier_pool(num_classes, global_pool, 'PATNet')
        self.num_classes = num_classes
        pool = SelectAdaptivePool2d(pool_type=global_pool)
        if pool.feat_mult() != 1 and isinstance(self.conv_head, nn.Conv2d):
            raise ValueError(f'PATNet: the conv head reads {self.num_features} channels; global_pool={global_pool!r} '
                             f'changes the pooled width')
        if not isinstance(self.conv_head, nn.Conv2d):
            # pruned (no conv head): the pooled trunk is the pre-logits, as wide as the pooling makes it ('catavgmax'
            # doubles it; the classifier kept the trunk's width and failed in a matmul at the first forward)
            self.head_hidden_size = self.num_features * pool.feat_mult()
        self.global_pool = pool
        self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.classifier = (
            nn.Linear(self.head_hidden_size, num_classes, device=device, dtype=dtype) if num_classes > 0
            else nn.Identity())

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # PartialNet cls_init_weights: truncated normal (std .02) for linear and conv weights, zero biases.
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            trunc_normal_(module.weight, std=.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return stage_group_matcher(
            coarse, stem='patch_embed', stages='stages', head='conv_head', downsample_first=True)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {n for n, _ in self.named_parameters() if n.endswith('rpe_table')}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, device=None, dtype=None) -> None:
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        weight = self.patch_embed.proj.weight  # still there after the head is pruned
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        self._set_classifier(num_classes, global_pool, device=device, dtype=dtype)
        for module in (self.global_pool, self.flatten, self.classifier):
            module.train(self.training)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (NCHW) for dense heads.

        Args:
            x: Images.
            indices: Last ``n`` stages for an int, all for None, or a list of stage indices.
            norm: Unused (PATNet has no final norm); kept for the timm API.
            stop_early: Stop after the last stage asked for.
            output_fmt: Only 'NCHW'.
            intermediates_only: Return only the intermediates.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"PATNet returns NCHW features; output_fmt={output_fmt!r} is not supported")
        take, last = resolve_take_indices(len(self.stages), indices)
        x = self.patch_embed(_check_input(x, self.in_chans))
        return forward_intermediates_downsample_first(
            x, self.stages, take, last, stop_early=stop_early, output_fmt=output_fmt,
            intermediates_only=intermediates_only)

    def prune_intermediate_layers(
            self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last one ``indices`` needs (and the head)."""
        take, last = resolve_take_indices(len(self.stages), indices)
        self.stages = self.stages[:last + 1]
        if last < self.num_stages - 1:
            self.num_features = self.feature_info[last]['num_chs']
        if prune_head or last < self.num_stages - 1:
            # the pre-logits conv belongs to the head and is sized for the last stage, so it goes too (timm FasterNet)
            self.conv_head = nn.Identity()
            self.act = nn.Identity()
            self.head_hidden_size = self.num_features
            self.reset_classifier(0, '')
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(_check_input(x, self.in_chans))
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        x = self.act(self.conv_head(x))
        x = self.flatten(x)
        if self.drop_rate > 0.:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# Official PartialNet names -> these (applied in order to each key).
_OFFICIAL_RENAMES = (
    ('.spatial_mixing.partial_conv3.', '.spatial_mixing.conv.'),
    ('.spatial_mixing.attn.cfc1.', '.spatial_mixing.attn.fc.'),
    ('.spatial_mixing.attn.rpe_k.lookup_table_bias', '.spatial_mixing.attn.rpe_table'),
    ('.mlp.4.conv_attn.', '.mlp.4.gate_conv.'),
    ('.mlp.4.norm2.', '.mlp.4.conv_norm.'),
    ('.mlp.4.norm.', '.mlp.4.gated_norm.'),
)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
    """A PartialNet checkpoint (haiduo/PartialNet train_test.py) -> this layout.

    PartialNet trains inside a Lightning module, so weights sit under ``state_dict`` with a ``model.`` prefix.
    Its ``stages`` interleave blocks and merges (``stages.0, 2, 4, 6`` are blocks, ``1, 3, 5`` merges); here
    stage ``i`` owns its merge as ``stages.i.downsample``. The head ``avgpool_pre_head.1`` / ``head`` is
    ``conv_head`` / ``classifier``. A state dict already in this layout passes through.
    """
    state_dict = unwrap_state_dict(state_dict, prefixes=('model.', 'module.'))
    if 'conv_head.weight' in state_dict or any('.downsample.' in k for k in state_dict):
        return state_dict
    out = {}
    for key, value in state_dict.items():
        if key.startswith('stages.'):
            _, index, rest = key.split('.', 2)
            index = int(index)
            key = f'stages.{index // 2}.{rest}' if index % 2 == 0 else f'stages.{(index + 1) // 2}.downsample.{rest}'
            for old, new in _OFFICIAL_RENAMES:
                key = key.replace(old, new)
        elif key.startswith('avgpool_pre_head.1.'):
            key = 'conv_head.' + key[len('avgpool_pre_head.1.'):]
        elif key.startswith('head.'):
            key = 'classifier.' + key[len('head.'):]
        out[key] = value
    return out


def _create_patnet(variant: str, pretrained: bool = False, **kwargs) -> PATNet:
    # stages.i outputs are the features: timm's hook/fx/list extractors may take them
    return build_model(
        PATNet, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg_for(kwargs, 'PATNet'), **kwargs)


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    # PartialNet evaluation (data/custom_imagenet_data.py): Resize(224 / 0.9, bicubic) + CenterCrop(224),
    # ImageNet mean/std.
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.9, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'classifier',
        'license': 'mit', 'origin_url': 'https://github.com/haiduo/PartialNet', 'paper_ids': 'arXiv:2503.03148',
        'paper_name': 'Partial Convolution Meets Visual Attention',
        **kwargs,
    }


# No released weights: every url is empty (PartialNet README, "Pre-trained Models: coming soon").
default_cfgs = generate_default_cfgs({
    'patnet_t0': _cfg(),
    'patnet_t1': _cfg(),
    'patnet_t2': _cfg(),
    'patnet_s': _cfg(),
    'patnet_m': _cfg(),
    'patnet_l': _cfg(),
})

_PATNET = 'PATNet'
_SOURCE = 'haiduo/PartialNet @679cfc0 models/partialnet.py built with cfg/PartialNet_{}.yaml'
# The paper's per-variant params/FLOPs/top-1 could not be read (only the abstract's "PATNet-T2: +1.3% top-1 over
# FasterNet-T2, 25% more GPU throughput, 24% less CPU latency"); the exact count of the official code is known.
register_paper_facts({
    'patnet_t0': PaperFacts(_PATNET, reference_params=3_486_160, reference_source=_SOURCE.format('t0')),
    'patnet_t1': PaperFacts(_PATNET, reference_params=6_144_552, reference_source=_SOURCE.format('t1')),
    'patnet_t2': PaperFacts(_PATNET, reference_params=12_269_816, reference_source=_SOURCE.format('t2')),
    'patnet_s': PaperFacts(_PATNET, reference_params=28_013_304, reference_source=_SOURCE.format('s')),
    'patnet_m': PaperFacts(_PATNET, reference_params=59_179_000, reference_source=_SOURCE.format('m')),
    'patnet_l': PaperFacts(_PATNET, reference_params=100_641_336, reference_source=_SOURCE.format('l')),
})

# Variant settings from cfg/PartialNet_*.yaml. Where the code and the YAMLs disagree, the YAMLs (what was trained)
# win: the PartialNet class defaults to use_spatial_attn=True, the YAMLs enable PAT_sp for T1 only; every YAML
# sets ``patnet_t0: True``, which gives PAT_sf 4 heads (6 otherwise) in all variants; drop_path_rate is the YAMLs'
# (T0's YAML says ``model_name: convnext_tiny``, a slip: its other keys are PartialNet's).


@register_model
def patnet_t0(pretrained: bool = False, **kwargs) -> PATNet:
    """PATNet-T0: width 32, depths 1-2-8-2, GELU."""
    model_args = dict(embed_dim=32, depths=(1, 2, 8, 2), act_layer=nn.GELU, drop_path_rate=0.)
    return _create_patnet('patnet_t0', pretrained, **dict(model_args, **kwargs))


@register_model
def patnet_t1(pretrained: bool = False, **kwargs) -> PATNet:
    """PATNet-T1: width 48, depths 1-2-8-2, GELU, PAT_sp in every block."""
    model_args = dict(embed_dim=48, depths=(1, 2, 8, 2), act_layer=nn.GELU, spatial_attn=True, drop_path_rate=.02)
    return _create_patnet('patnet_t1', pretrained, **dict(model_args, **kwargs))


@register_model
def patnet_t2(pretrained: bool = False, **kwargs) -> PATNet:
    """PATNet-T2: width 64, depths 2-2-6-4, ReLU."""
    model_args = dict(embed_dim=64, depths=(2, 2, 6, 4), act_layer=nn.ReLU, drop_path_rate=.05)
    return _create_patnet('patnet_t2', pretrained, **dict(model_args, **kwargs))


@register_model
def patnet_s(pretrained: bool = False, **kwargs) -> PATNet:
    """PATNet-S: width 96, depths 2-2-9-4, ReLU."""
    model_args = dict(embed_dim=96, depths=(2, 2, 9, 4), act_layer=nn.ReLU, drop_path_rate=.1)
    return _create_patnet('patnet_s', pretrained, **dict(model_args, **kwargs))


@register_model
def patnet_m(pretrained: bool = False, **kwargs) -> PATNet:
    """PATNet-M: width 128, depths 2-3-16-4, ReLU."""
    model_args = dict(embed_dim=128, depths=(2, 3, 16, 4), act_layer=nn.ReLU, drop_path_rate=.2)
    return _create_patnet('patnet_m', pretrained, **dict(model_args, **kwargs))


@register_model
def patnet_l(pretrained: bool = False, **kwargs) -> PATNet:
    """PATNet-L: width 160, depths 2-3-20-4, ReLU."""
    model_args = dict(embed_dim=160, depths=(2, 3, 20, 4), act_layer=nn.ReLU, drop_path_rate=.3)
    return _create_patnet('patnet_l', pretrained, **dict(model_args, **kwargs))
