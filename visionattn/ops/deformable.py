"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021, arXiv:2010.04159), as used by
Deformable DETR, DINO and Focus-DETR.

``ms_deform_attn`` has the semantics of Deformable DETR's ``MSDeformAttnFunction`` / ``ms_deform_attn_core_pytorch``
(github.com/fundamentalvision/Deformable-DETR, Apache-2.0) and mmcv's ``MultiScaleDeformableAttnFunction``, with
Triton kernels instead of a CUDA build (``triton/deformable.py``) and a ``grid_sample`` reference
(``reference_deformable.py``).
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch

from .checks import choose_backend, explain_backend
from .reference_deformable import ms_deform_attn_ref

__all__ = ['ms_deform_attn', 'explain_ms_deform_attn']

# The kernels hold one [queries, head_dim] tile per program: head dims up to this many channels.
MAX_TRITON_HEAD_DIM = 256


def _as_index_tensor(name: str, x: Union[torch.Tensor, Sequence], device: torch.device) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x, dtype=torch.long, device=device)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f'{name} must be an integer tensor (torch.long), got {x.dtype}')
    return x


def _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights
                  ) -> Tuple[torch.Tensor, torch.Tensor, List[List[int]]]:
    if value.dim() != 4:
        raise ValueError(f'value must be [batch, S, heads, head_dim], got shape {list(value.shape)}')
    batch, total, heads, head_dim = value.shape
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError('sampling_locations must be [batch, queries, heads, levels, points, 2] (normalised x, y), '
                         f'got shape {list(sampling_locations.shape)}')
    _, queries, _, levels, points, _ = sampling_locations.shape
    if sampling_locations.shape[0] != batch or sampling_locations.shape[2] != heads:
        raise ValueError(f'sampling_locations {list(sampling_locations.shape)} does not match value '
                         f'{list(value.shape)}: expected batch={batch} at dim 0 and heads={heads} at dim 2')
    expected_w = (batch, queries, heads, levels, points)
    if attention_weights.shape != expected_w:
        raise ValueError(f'attention_weights must be [batch, queries, heads, levels, points] = {list(expected_w)} '
                         f'(from value and sampling_locations), got shape {list(attention_weights.shape)}')
    spatial_shapes = _as_index_tensor('spatial_shapes', spatial_shapes, value.device)
    level_start_index = _as_index_tensor('level_start_index', level_start_index, value.device)
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(f'spatial_shapes must be [levels, 2] (H, W), got shape {list(spatial_shapes.shape)}')
    if spatial_shapes.shape[0] != levels:
        raise ValueError(f'spatial_shapes has {spatial_shapes.shape[0]} levels but sampling_locations has {levels} '
                         '(dim 3)')
    if level_start_index.shape != (levels,):
        raise ValueError(f'level_start_index must be [levels={levels}], got shape {list(level_start_index.shape)}')
    for name, t in (('value', value), ('sampling_locations', sampling_locations),
                    ('attention_weights', attention_weights)):
        if not t.is_floating_point():
            raise TypeError(f'{name} must be a floating-point tensor, got {t.dtype}')
    tensors = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f'inputs are on several devices: {sorted(map(str, devices))}')
    # one host read of the level table (a sync for CUDA tensors, as Deformable DETR's own assert makes)
    table = torch.cat([spatial_shapes.flatten(), level_start_index.to(spatial_shapes.dtype)]).tolist()
    sizes = [table[2 * i:2 * i + 2] for i in range(levels)]
    starts = table[2 * levels:]
    if any(h <= 0 or w <= 0 for h, w in sizes):
        raise ValueError(f'spatial_shapes must be positive, got {sizes}')
    expected_starts, acc = [], 0
    for h, w in sizes:
        expected_starts.append(acc)
        acc += h * w
    if acc != total:
        raise ValueError(f'value has S={total} positions but spatial_shapes {sizes} give sum(H*W)={acc}')
    if starts != expected_starts:
        raise ValueError(f'level_start_index {starts} is inconsistent with spatial_shapes {sizes}: expected the '
                         f'exclusive cumulative sum of H*W, {expected_starts}')
    return spatial_shapes, level_start_index, sizes


def _triton_checks(value: torch.Tensor, sampling_locations: torch.Tensor) -> List[Tuple[bool, str]]:
    head_dim = value.shape[-1]
    return [(head_dim <= MAX_TRITON_HEAD_DIM, f'head_dim {head_dim} > {MAX_TRITON_HEAD_DIM}'),
            (value.numel() > 0 and sampling_locations.numel() > 0, 'empty input')]


def ms_deform_attn(value: torch.Tensor, spatial_shapes: Union[torch.Tensor, Sequence[Sequence[int]]],
                   level_start_index: Union[torch.Tensor, Sequence[int]], sampling_locations: torch.Tensor,
                   attention_weights: torch.Tensor, backend: Optional[str] = None) -> torch.Tensor:
    """Multi-scale deformable attention: per query and head, the weighted sum of ``P`` bilinear samples on each of
    ``L`` feature levels::

        out[b, q, h] = sum_{l, p} attention_weights[b, q, h, l, p] * bilinear(value_l[b, :, :, h], loc[b, q, h, l, p])

    Bilinear sampling is ``grid_sample(align_corners=False, padding_mode='zeros')``: a normalised location (x, y)
    is the pixel coordinate (x * W_l - 0.5, y * H_l - 0.5), and corners outside the map contribute zero.

    Args:
        value: [B, S, heads, Dh], the L levels flattened row-major (index y * W + x) and concatenated, S = sum H*W.
        spatial_shapes: [L, 2] integer (H_l, W_l) (a tensor, or a list of pairs).
        level_start_index: [L] integer start of each level in S (the exclusive cumulative sum of H*W).
        sampling_locations: [B, Q, heads, L, P, 2] normalised (x, y), usually in [0, 1].
        attention_weights: [B, Q, heads, L, P], already normalised (softmax over L * P).
        backend: None (auto), 'reference' or 'triton'.

    Returns:
        [B, Q, heads * Dh] in value's dtype. Gradients flow to value, sampling_locations and attention_weights.
    """
    spatial_shapes, level_start_index, sizes = _check_inputs(value, spatial_shapes, level_start_index,
                                                             sampling_locations, attention_weights)
    tensors = (value, sampling_locations, attention_weights)
    chosen = choose_backend('ms_deform_attn', backend, tensors, _triton_checks(value, sampling_locations))
    if chosen == 'reference':
        return ms_deform_attn_ref(value, sizes, level_start_index, sampling_locations, attention_weights)
    from .triton.deformable import ms_deform_attn_triton
    return ms_deform_attn_triton(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


def explain_ms_deform_attn(value: torch.Tensor, sampling_locations: torch.Tensor,
                           attention_weights: torch.Tensor) -> str:
    """Which backend the automatic choice would take for these inputs, and why."""
    return explain_backend('ms_deform_attn', (value, sampling_locations, attention_weights),
                           _triton_checks(value, sampling_locations))

