"""Parts of timm's model API that the hierarchical (stage-by-stage) backbones share.

Each backbone keeps its own ``group_matcher``, ``reset_classifier``, ``forward_intermediates`` and
``prune_intermediate_layers`` methods, so its file still lists the timm API it has; the methods call these functions
and pass what differs between the families: the name of the stage list, the stem and head names in the parameter
groups, and the family named in error messages.

Two layouts of stage occur in visionattn:

- *downsample first* (BiFormer, PATNet): stage ``i`` opens with its downsampler (none in stage 0) and its output is
  the intermediate;
- *downsample last* (NAT, LaMamba): stage ``i`` runs its ``blocks`` (``forward_blocks``), the intermediate is taken
  there, channels-last, and then the stage's ``downsample`` (none in the last stage) prepares the next stage's input.
"""
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
from timm.layers import trunc_normal_
from torch import nn

from visionattn._timm_compat import resolve_take_indices

__all__ = [
    'init_trunc_normal_', 'keyword_no_weight_decay', 'stage_group_matcher', 'check_global_pool',
    'reset_linear_classifier', 'resolve_intermediates', 'forward_intermediates_downsample_first',
    'forward_intermediates_downsample_last', 'prune_stages_downsample_last',
]


def init_trunc_normal_(module: nn.Module) -> None:
    """Weight init for ``model.apply``: truncated-normal (std 0.02) Linear weights with zero biases, LayerNorms at
    weight 1 and bias 0; every other module (convs included) keeps PyTorch's init.

    Modules with parameters on the meta device are left alone: they hold no values (``visionattn.profile.measure``
    builds models there).
    """
    if any(p.is_meta for p in module.parameters(recurse=False)):
        return
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def keyword_no_weight_decay(model: nn.Module) -> Set[str]:
    """timm's ``no_weight_decay``: the full names of the parameters that ``model.no_weight_decay_keywords()`` names.

    The official Swin-style training code skips weight decay for every parameter whose name contains one of those
    keywords (``set_weight_decay(model, skip, skip_keywords)``), but timm's optimizer factory
    (``create_optimizer_v2``, ``param_groups_weight_decay``/``_layer_decay``) reads only ``no_weight_decay()``: without
    it, timm's train.py silently decayed NAT's ``rpb`` and LaMamba's ``relative_position_bias_table`` and ``A_logs``.
    """
    keywords = model.no_weight_decay_keywords()
    return {name for name, _ in model.named_parameters() if any(k in name for k in keywords)}


def stage_group_matcher(coarse: bool, stem: str, stages: str, head: str, downsample_first: bool) -> Dict[str, Any]:
    """timm's ``group_matcher`` for a model of ``{stages}.i.downsample`` and ``{stages}.i.blocks.j``.

    Args:
        coarse: One group per stage instead of one per block.
        stem: Attribute name of the stem (the first group).
        stages: Attribute name of the stage list.
        head: Attribute name of the module after the last stage that joins the last group (a final norm or conv).
        downsample_first: The downsampler opens each stage (else it closes it); it orders the fine rules.
    """
    if coarse:
        return dict(stem=f'^{stem}', blocks=rf'^{stages}\.(\d+)')
    blocks = (rf'^{stages}\.(\d+)\.blocks\.(\d+)', None)
    # a downsampler that closes stage i joins its last block's group (it runs after every block of the stage: timm's
    # layer decay would otherwise give it a smaller learning rate than the blocks before it), one that opens it the
    # first block's
    downsample = (rf'^{stages}\.(\d+)\.downsample', (0,) if downsample_first else (99999,))
    rules = [downsample, blocks] if downsample_first else [blocks, downsample]
    return dict(stem=f'^{stem}', blocks=rules + [(f'^{head}', (99999,))])


def check_global_pool(global_pool: str, family: str) -> None:
    """Raise ValueError unless ``global_pool`` is 'avg' or '' (the pooling of a mean-pool + linear head)."""
    if global_pool not in ('avg', ''):
        raise ValueError(f"{family}: global_pool must be 'avg' or '', got {global_pool!r}")


def reset_linear_classifier(model: nn.Module, num_classes: int, global_pool: Optional[str], family: str) -> None:
    """timm's ``reset_classifier`` for a model whose head is ``model.head``, a Linear on ``model.num_features``
    (an Identity for no classes), after ``model.global_pool`` ('avg' or '')."""
    if global_pool is not None:
        check_global_pool(global_pool, family)
        model.global_pool = global_pool
    model.num_classes = num_classes
    model.head = nn.Linear(model.num_features, num_classes) if num_classes > 0 else nn.Identity()


def resolve_intermediates(
        num_stages: int,
        indices: Optional[Union[int, Sequence[int]]],
        output_fmt: str,
) -> Tuple[List[int], int]:
    """Check ``output_fmt`` ('NCHW' or 'NHWC') and resolve ``indices`` as ``resolve_take_indices`` does."""
    if output_fmt not in ('NCHW', 'NHWC'):
        raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
    return resolve_take_indices(num_stages, indices)


def forward_intermediates_downsample_last(
        x: torch.Tensor,
        stages: nn.ModuleList,
        take_indices: List[int],
        max_index: int,
        final_norm: nn.Module,
        norm: bool,
        stop_early: bool,
        output_fmt: str,
        intermediates_only: bool,
        stage_norms: Optional[nn.ModuleList] = None,
) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
    """The body of ``forward_intermediates`` over *downsample last* stages, channels-last.

    Args:
        x: The stem's output [B, H, W, C].
        stages: The stages, each with ``forward_blocks`` and ``downsample``.
        take_indices: Stages whose output (before the downsampler) to return, from ``resolve_intermediates``.
        max_index: The last of them.
        final_norm: The model's norm after the last stage.
        norm: Without ``stage_norms``: put the last stage's intermediate through ``final_norm``.
        stop_early: Stop after stage ``max_index``.
        output_fmt: 'NCHW' or 'NHWC', of the intermediates and of the final features.
        intermediates_only: Return only the intermediates.
        stage_norms: Per-stage norms that every intermediate goes through, if the model has them.
    """
    last = len(stages) - 1
    if stop_early and max_index < last and not intermediates_only:
        # the final features need every stage: timm's Swin and ConvNeXt fail here inside the final norm instead
        raise ValueError(f'forward_intermediates(stop_early=True) stops after stage {max_index} of {last}, so there '
                         'are no final features to return: pass intermediates_only=True, or stop_early=False')
    stages = stages[:max_index + 1] if stop_early else stages
    intermediates = []
    for i, stage in enumerate(stages):
        x = stage.forward_blocks(x)
        if i in take_indices:
            if stage_norms is not None:
                y = stage_norms[i](x)
            elif norm and i == last:
                y = final_norm(x)
            else:
                y = x
            intermediates.append(y.permute(0, 3, 1, 2) if output_fmt == 'NCHW' else y)
        x = stage.downsample(x)
    if intermediates_only:
        return intermediates
    x = final_norm(x)
    return (x.permute(0, 3, 1, 2) if output_fmt == 'NCHW' else x), intermediates


def prune_stages_downsample_last(
        model: nn.Module,
        stages: str,
        indices: Union[int, Sequence[int]],
        prune_norm: bool,
        prune_head: bool,
        stage_norms: Optional[str] = None,
) -> List[int]:
    """The body of ``prune_intermediate_layers`` for *downsample last* stages.

    Drops the stages after the last one ``indices`` asks for and that stage's downsampler (its intermediate is taken
    before it), the per-stage norms of the dropped stages, ``model.norm`` if ``prune_norm``, and the classifier (via
    ``model.reset_classifier(0, '')``) if ``prune_head``.

    Args:
        model: The model.
        stages: Attribute name of its stage list.
        indices: As in ``forward_intermediates``.
        prune_norm: Replace the final norm by an Identity.
        prune_head: Remove the classifier.
        stage_norms: Attribute name of its per-stage norms (a ModuleList or None), if it has that attribute.
    """
    take_indices, max_index = resolve_take_indices(len(getattr(model, stages)), indices)
    setattr(model, stages, getattr(model, stages)[:max_index + 1])
    getattr(model, stages)[-1].downsample = nn.Identity()
    if stage_norms is not None and getattr(model, stage_norms) is not None:
        setattr(model, stage_norms, getattr(model, stage_norms)[:max_index + 1])
    if prune_norm:
        model.norm = nn.Identity()
    if prune_head:
        model.reset_classifier(0, '')
    return take_indices


def forward_intermediates_downsample_first(
        x: torch.Tensor,
        stages: nn.Sequential,
        take_indices: List[int],
        max_index: int,
        stop_early: bool,
        output_fmt: str,
        intermediates_only: bool,
        final_norm: Optional[nn.Module] = None,
        norm: bool = False,
        stage_norms: Optional[nn.ModuleList] = None,
) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
    """The body of ``forward_intermediates`` over *downsample first* stages, NCHW.

    Args:
        x: The stem's output [B, C, H, W].
        stages: The stages; each stage's output is its intermediate.
        take_indices: Stages whose output to return, from ``resolve_intermediates``.
        max_index: The last of them.
        stop_early: Stop after stage ``max_index``.
        output_fmt: 'NCHW' or 'NHWC', of the intermediates (the final features stay NCHW).
        intermediates_only: Return only the intermediates.
        final_norm: The model's norm after the last stage, if any; applied to the final features only when every
            stage ran.
        norm: Without ``stage_norms``: put the last stage's intermediate through ``final_norm``.
        stage_norms: Per-stage norms that every intermediate goes through, if the model has them.
    """
    last = len(stages) - 1
    if stop_early and max_index < last and not intermediates_only:
        # the final features need every stage: timm's Swin and ConvNeXt fail here inside the final norm instead
        raise ValueError(f'forward_intermediates(stop_early=True) stops after stage {max_index} of {last}, so there '
                         'are no final features to return: pass intermediates_only=True, or stop_early=False')
    stages = stages[:max_index + 1] if stop_early else stages
    intermediates = []
    for i, stage in enumerate(stages):
        x = stage(x)
        if i in take_indices:
            if stage_norms is not None:
                y = stage_norms[i](x)
            elif norm and i == last and final_norm is not None:
                y = final_norm(x)
            else:
                y = x
            intermediates.append(y.permute(0, 2, 3, 1) if output_fmt == 'NHWC' else y)
    if intermediates_only:
        return intermediates
    if final_norm is not None and len(stages) == last + 1:
        x = final_norm(x)
    return x, intermediates
