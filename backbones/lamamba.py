"""LaMamba: a hierarchical backbone of LaMamba blocks (selective scan + shifted-window local attention + MLP).

The block is LaMamba-Diff's (Fu et al., arXiv:2408.02615; github.com/yunxiangfu2001/LaMamba-Diff @27b3c1d, MIT,
model/lamamba.py ``LaMambaBlock_conditioned``) without its diffusion conditioning: three pre-norm residuals,
VMamba's SS2D (``norm`` / ``op``), Swin's (shifted-)window attention with relative position bias (``norm_swin`` /
``attn``, shift window/2 on odd blocks) and an MLP (``norm2`` / ``mlp``).

**There is no LaMamba classifier in the paper and no published ImageNet weight**: these models are for training
from scratch and for feeding visionattn's classification, detection and segmentation heads (``features_only``).
The sizes follow VMamba's released T/S/B (Liu et al., arXiv:2401.10166, github.com/MzeroMiko/VMamba, MIT, its
``vmambav2`` configs): a 4x4 patch embedding, four stages at strides 4-32 joined by Swin patch merging, d_state 1,
ssm_ratio 1, depthwise conv 3 without bias, MLP ratio 4, SS2D ``forward_type='v2'`` with VMamba's raster scan
orders; tiny = dims 96, depths 2-2-5-2; small = 96, 2-2-15-2; base = 128, 2-2-15-2. To these LaMamba adds the
window attention: Swin's heads (dim / 32) and window 7 for 224-px inputs (LaMamba-Diff uses 8 on its 32x32
latents). (LaMamba-Diff's ssm_ratio 2 would push the tiny model past 50M parameters.) Parameter counts and FLOPs are
therefore our own, not a paper's.

Input sizes: any of at least 4x4 (the patch embedding; smaller ones are refused by name). Feature maps are padded to
whole windows; an axis no longer than the window is one unshifted window.
``features_only`` returns each stage's output before its patch merging, NCHW.
"""
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from torch import nn

from visionattn.hub import build_model, unwrap_state_dict
from visionattn.layers.inputs import check_images
from visionattn.layers.norm import LayerNorm
from visionattn.layers.ss2d import SS2D, ShiftedWindowAttention
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

__all__ = ['LaMamba', 'LaMambaBlock', 'PatchEmbed', 'PatchMerging']


torch.fx.wrap('check_images')  # one FX node; TorchScript calls back into Python


class PatchEmbed(nn.Module):
    """Conv p x p (stride p) then LayerNorm; channels-last output [B, H/p, W/p, C]."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, device=device, dtype=dtype)
        self.norm = LayerNorm(embed_dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_patch_size(check_images(x, self.proj.in_channels, 'LaMamba'), self.proj.kernel_size[0])
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


def _check_patch_size(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    # Smaller images failed inside the stem conv, in a message that named neither the model nor the rule.
    if x.shape[-2] < patch_size or x.shape[-1] < patch_size:
        raise ValueError(f'LaMamba needs images of at least {patch_size}x{patch_size} (its {patch_size}x{patch_size} '
                         f'patch embedding, stride {patch_size}); got {x.shape[-2]}x{x.shape[-1]}')
    return x


torch.fx.wrap('_check_patch_size')


class PatchMerging(nn.Module):
    """Swin's 2x2 patch merging on [B, H, W, C] (odd sides zero-padded): LayerNorm(4C), Linear(4C, out, no bias)."""

    def __init__(self, dim: int, out_dim: int, device=None, dtype=None):
        super().__init__()
        self.norm = LayerNorm(4 * dim, device=device, dtype=dtype)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_to_even(x)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


def _pad_to_even(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] % 2 or x.shape[2] % 2:
        x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
    return x


torch.fx.wrap('_pad_to_even')


class LaMambaBlock(nn.Module):
    """SS2D, (shifted-)window attention and MLP, each a pre-norm residual with stochastic depth.

    Args:
        dim: Channels.
        num_heads: Window-attention heads.
        window_size: Window side.
        shift_size: Window shift (window_size // 2 on odd blocks).
        mlp_ratio: MLP hidden width / dim.
        drop_path: Stochastic depth.
        proj_drop: Dropout after the attention projection and in the MLP.
        ssm_kwargs: Keyword arguments of :class:`visionattn.layers.ss2d.SS2D`.
        device: Device for the parameters.
        dtype: Data type for the parameters.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift_size: int = 0, mlp_ratio: float = 4.,
                 drop_path: float = 0., proj_drop: float = 0., device=None, dtype=None, **ssm_kwargs):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm = LayerNorm(dim, **dd)
        self.op = SS2D(dim, **ssm_kwargs, **dd)
        self.norm_swin = LayerNorm(dim, **dd)
        self.attn = ShiftedWindowAttention(dim, num_heads, window_size, shift_size, proj_drop=proj_drop, **dd)
        self.norm2 = LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, C] -> [B, H, W, C]."""
        x = x + self.drop_path(self.op(self.norm(x)))
        x = x + self.drop_path(self.attn(self.norm_swin(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class LaMambaStage(nn.Module):
    """Blocks, then (except in the last stage) a patch merging."""

    def __init__(self, dim: int, out_dim: Optional[int], depth: int, num_heads: int, window_size: int,
                 drop_path: Sequence[float], device=None, dtype=None, **block_kwargs):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.grad_checkpointing = False
        self.blocks = nn.Sequential(*[
            LaMambaBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                         drop_path=drop_path[i], **block_kwargs, **dd) for i in range(depth)])
        self.downsample = PatchMerging(dim, out_dim, **dd) if out_dim else nn.Identity()

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.forward_blocks(x))


class LaMamba(nn.Module):
    """Hierarchical LaMamba: 4x4 patch embedding, four stages of LaMamba blocks with patch merging, LN, head.

    Args:
        depths: Blocks per stage.
        dims: Channels per stage.
        num_heads: Window-attention heads per stage.
        window_size: Attention window side.
        mlp_ratio: MLP hidden width / channels.
        d_state: State size of the selective scans.
        ssm_ratio: SS2D inner width / channels.
        ssm_conv: SS2D depthwise conv size.
        ssm_conv_bias: Bias in that conv.
        in_chans: Input channels.
        num_classes: Classes of the linear head (0 for none).
        global_pool: 'avg' or '' (no pooling: ``forward_head`` returns the NCHW map).
        drop_rate: Dropout before the classifier.
        proj_drop_rate: Dropout after the attention projection and in the MLPs.
        drop_path_rate: Stochastic depth, increasing linearly over all blocks to this value.
        device: Device for the parameters.
        dtype: Data type for the parameters.
    """
    torchscript_unsupported = (
        'the selective scan runs through visionattn.ops.cross_selective_scan, a Python op that chooses its backend '
        '(Triton or the PyTorch reference) at run time; use torch.fx or torch.compile instead')

    def __prepare_scriptable__(self):
        # torch.jit.script calls this first: the reason, instead of TorchScript's error deep inside the op
        raise RuntimeError(f'{type(self).__name__} cannot be scripted with torch.jit.script: '
                           f'{self.torchscript_unsupported}')

    def __init__(
            self,
            depths: Sequence[int] = (2, 2, 9, 2),
            dims: Sequence[int] = (96, 192, 384, 768),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            window_size: int = 7,
            mlp_ratio: float = 4.,
            d_state: int = 1,
            ssm_ratio: float = 1.,
            ssm_conv: int = 3,
            ssm_conv_bias: bool = False,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        num_stages = len(depths)
        if len(dims) != num_stages or len(num_heads) != num_stages:
            raise ValueError(f'LaMamba: depths {list(depths)}, dims {list(dims)} and num_heads {list(num_heads)} '
                             'must have one entry per stage')
        check_global_pool(global_pool, 'LaMamba')
        check_classifier_pool(num_classes, global_pool, 'LaMamba')
        for dim, heads in zip(dims, num_heads):
            if dim % heads:
                raise ValueError(f'LaMamba: {heads} heads do not divide {dim} channels')
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False
        ssm = dict(d_state=d_state, ssm_ratio=ssm_ratio, d_conv=ssm_conv, conv_bias=ssm_conv_bias)

        self.patch_embed = PatchEmbed(4, in_chans, dims[0], **dd)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()  # works under a meta device
        self.layers = nn.ModuleList()
        self.feature_info = []
        for i in range(num_stages):
            self.layers.append(LaMambaStage(
                dims[i], dims[i + 1] if i < num_stages - 1 else None, depths[i], num_heads[i], window_size,
                dpr[sum(depths[:i]):sum(depths[:i + 1])], mlp_ratio=mlp_ratio, proj_drop=proj_drop_rate, **ssm, **dd))
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f'layers.{i}'))
        self.norm = LayerNorm(self.num_features, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # VMamba's _init_weights: truncated-normal Linear weights, zero biases, unit LayerNorms; SS2D's own
        # parameters (x_proj, dt_proj, A, D) keep their S4D / Mamba initialisation.
        init_trunc_normal_(module)

    @torch.jit.ignore
    def no_weight_decay_keywords(self):
        return {'relative_position_bias_table', 'A_logs', 'Ds'}

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        # full names, the form timm's optimizer factory reads (it ignores no_weight_decay_keywords)
        return keyword_no_weight_decay(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return stage_group_matcher(coarse, stem='patch_embed', stages='layers', head='norm', downsample_first=False)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.layers:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        check_classifier_pool(num_classes, self.global_pool if global_pool is None else global_pool, 'LaMamba')
        reset_linear_classifier(self, num_classes, global_pool, 'LaMamba')
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
        """Stage outputs before their patch merging, and (unless ``intermediates_only``) the final features.

        Args:
            x: Input images [B, C, H, W].
            indices: Stages to return: the last n for an int n, or a sequence of stage indices (default all).
            norm: Put the last stage's intermediate through the final norm.
            stop_early: Stop after the last stage asked for.
            output_fmt: 'NCHW' or 'NHWC', of the intermediates (the final features stay NCHW).
            intermediates_only: Return only the intermediates.
        """
        take_indices, max_index = resolve_intermediates(len(self.layers), indices, output_fmt)
        x = self.patch_embed(x)
        out = forward_intermediates_downsample_last(
            x, self.layers, take_indices, max_index, final_norm=self.norm, norm=norm, stop_early=stop_early,
            output_fmt=output_fmt, intermediates_only=intermediates_only)
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
        """Drop the stages (and the patch merging) after the last intermediate asked for; optionally norm and head.

        Dropping the last stage also drops the final norm and the classifier, which are sized for it, and makes
        ``num_features`` the kept stage's width (as timm's Swin and ConvNeXt do).
        """
        num_stages = len(self.layers)
        take_indices = prune_stages_downsample_last(self, 'layers', indices, prune_norm, prune_head)
        if len(self.layers) < num_stages:
            # kept, they failed in the first forward ("Given normalized_shape=[768]...") on the narrower map
            self.norm = nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[len(self.layers) - 1]['num_chs']
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> final normed feature map [B, C', H/32, W/32] (NCHW)."""
        x = self.patch_embed(x)
        for stage in self.layers:
            x = stage(x)
        return self.norm(x).permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean((2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: LaMamba) -> Dict[str, torch.Tensor]:
    """Unwrap a checkpoint ('model' / 'state_dict' / 'module.') and drop the Swin buffers that official-style code
    saves (``relative_position_index``, ``attn_mask``; recomputed here). No official LaMamba classifier exists, so
    this serves checkpoints trained with this code or with the official block definitions."""
    state_dict = unwrap_state_dict(state_dict)
    return {k: v for k, v in state_dict.items()
            if not k.endswith(('relative_position_index', 'attn_mask'))}


def _create_lamamba(variant: str, pretrained: bool = False, **kwargs) -> LaMamba:
    feature_cfg = feature_cfg_for(kwargs, 'LaMamba', kwargs.pop('out_indices', None), hook_refusal=(
        "layers.i ends in the next stage's patch merging (channels-last, twice the channels, half the size)"))
    return build_model(
        LaMamba, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, feature_cfg=feature_cfg, **kwargs)


def _cfg(**kwargs) -> Dict[str, Any]:
    # No published weights (url ''): the entry records the preprocessing a from-scratch ImageNet run would use
    # (VMamba's: bicubic, crop 0.875, ImageNet mean/std).
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head', 'license': 'mit',
        'origin_url': 'https://github.com/yunxiangfu2001/LaMamba-Diff',
        'paper_ids': 'arXiv:2408.02615', 'paper_name': 'LaMamba-Diff (block); VMamba (hierarchy)',
        'notes': ('no published ImageNet weights: the paper has no classifier',),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'lamamba_tiny': _cfg(),
    'lamamba_small': _cfg(),
    'lamamba_base': _cfg(),
})

# No paper figures: LaMamba has no classifier in its paper and no ImageNet weights; the family name is what the zoo
# table shows (its weights column reads "none", from the empty url).
register_paper_facts({name: PaperFacts('LaMamba') for name in ('lamamba_tiny', 'lamamba_small', 'lamamba_base')})


@register_model
def lamamba_tiny(pretrained: bool = False, **kwargs) -> LaMamba:
    """LaMamba-Tiny (ours, no weights): VMamba-T's hierarchy, dims 96-768, depths 2-2-5-2, heads 3-24, window 7."""
    model_args = dict(depths=(2, 2, 5, 2), dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24))
    return _create_lamamba('lamamba_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def lamamba_small(pretrained: bool = False, **kwargs) -> LaMamba:
    """LaMamba-Small (ours, no weights): VMamba-S's hierarchy, dims 96-768, depths 2-2-15-2, heads 3-24."""
    model_args = dict(depths=(2, 2, 15, 2), dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24))
    return _create_lamamba('lamamba_small', pretrained, **dict(model_args, **kwargs))


@register_model
def lamamba_base(pretrained: bool = False, **kwargs) -> LaMamba:
    """LaMamba-Base (ours, no weights): VMamba-B's hierarchy, dims 128-1024, depths 2-2-15-2, heads 4-32."""
    model_args = dict(depths=(2, 2, 15, 2), dims=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32))
    return _create_lamamba('lamamba_base', pretrained, **dict(model_args, **kwargs))
