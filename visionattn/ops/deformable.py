"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021, arXiv:2010.04159), as used by
Deformable DETR, DINO and Focus-DETR.

``ms_deform_attn`` has the semantics of Deformable DETR's ``MSDeformAttnFunction`` / ``ms_deform_attn_core_pytorch``
(github.com/fundamentalvision/Deformable-DETR, Apache-2.0) and mmcv's ``MultiScaleDeformableAttnFunction``, with
Triton kernels instead of a CUDA build (``triton/deformable.py``) and a ``grid_sample`` reference
(``reference/deformable.py``).
"""
import weakref
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from .checks import choose_backend, explain_backend
from .reference.deformable import ms_deform_attn_ref

__all__ = ['ms_deform_attn', 'explain_ms_deform_attn']

# The kernels hold one [queries, head_dim] tile per program: head dims up to this many channels.
MAX_TRITON_HEAD_DIM = 256

# The level table's content is checked against value once per table, not per call: a table given as tensors is
# read to the host (a device sync on CUDA) the first time it is seen and remembered by identity and version
# counter, so the layers of a detector that share one spatial_shapes tensor per forward pass pay one read between
# them; a table given as Python sequences is checked on the host and its device tensors are made once per device.
_SEEN_TABLES: Dict[Tuple[int, int], tuple] = {}  # (id(shapes), id(starts)) -> (weakrefs, (versions, S), sizes)
_DEVICE_TABLES: Dict[tuple, Tuple[torch.Tensor, torch.Tensor]] = {}  # (sizes, starts, S, device) -> the tensors
_CACHE_LIMIT = 256

Table = Tuple[torch.Tensor, torch.Tensor, Optional[List[List[int]]]]


def _index_tensor(name: str, x: torch.Tensor) -> torch.Tensor:
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f'{name} must be an integer tensor (torch.long), got {x.dtype}')
    return x


def _check_table_shapes(shapes: Sequence[int], starts: Sequence[int], levels: int) -> None:
    if len(shapes) != 2 or shapes[1] != 2:
        raise ValueError(f'spatial_shapes must be [levels, 2] (H, W), got shape {list(shapes)}')
    if shapes[0] != levels:
        raise ValueError(f'spatial_shapes has {shapes[0]} levels but sampling_locations has {levels} (dim 3)')
    if tuple(starts) != (levels,):
        raise ValueError(f'level_start_index must be [levels={levels}], got shape {list(starts)}')


def _check_table(sizes: List[List[int]], starts: List[int], total: int) -> None:
    """The table's content against value's S: positive sizes, sum of H*W = S, starts = exclusive cumulative sum."""
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


def _version(t: torch.Tensor) -> Optional[int]:
    return None if t.is_inference() else t._version  # inference tensors have no version counter


def _tensor_table(shapes: torch.Tensor, starts: torch.Tensor, levels: int, total: int) -> Table:
    _index_tensor('spatial_shapes', shapes)
    _index_tensor('level_start_index', starts)
    _check_table_shapes(shapes.shape, starts.shape, levels)
    if torch.compiler.is_compiling():
        return shapes, starts, None  # no content at trace time: the eager call checks it
    key = (id(shapes), id(starts))
    state = (_version(shapes), _version(starts), total)  # checked against this S, unchanged since
    seen = _SEEN_TABLES.get(key)
    if seen is not None and seen[0]() is shapes and seen[1]() is starts and seen[2] == state:
        if state[0] is not None and state[1] is not None:
            return shapes, starts, seen[3]
        # An inference tensor has no version counter: an in-place change (a table reused under inference_mode) is
        # invisible, and the remembered sizes would silently split value into the old levels. On the CPU the table is
        # read again (no device sync); elsewhere the kernels read it on the device and the reference reads it itself.
        if shapes.device.type != 'cpu':
            return shapes, starts, None
    # one host read of the whole table (a sync for CUDA tensors, as Deformable DETR's own assert makes)
    flat = torch.cat([shapes.flatten(), starts.to(shapes.dtype)]).tolist()
    sizes = [flat[2 * i:2 * i + 2] for i in range(levels)]
    _check_table(sizes, flat[2 * levels:], total)
    if len(_SEEN_TABLES) >= _CACHE_LIMIT:
        _SEEN_TABLES.clear()
    _SEEN_TABLES[key] = (weakref.ref(shapes), weakref.ref(starts), state, sizes)
    return shapes, starts, sizes


def _whole(name: str, table, n) -> int:
    """An entry of a table given as a sequence, as an int: a whole number (int, NumPy integer, integral float), never
    a fraction that int() would truncate into another table."""
    try:
        whole = int(n)
        exact = whole == n
    except (TypeError, ValueError, OverflowError):
        exact = False
    if not exact or isinstance(n, bool):
        raise ValueError(f'{name} must hold whole numbers, got {table!r}')
    return whole


def _sequence_table(shapes, starts, levels: int, total: int, device: torch.device) -> Table:
    """A table of which at least one part is a Python sequence: checked on the host, device tensors made once."""
    if isinstance(shapes, torch.Tensor):
        shapes = _index_tensor('spatial_shapes', shapes).tolist()
    if isinstance(starts, torch.Tensor):
        starts = _index_tensor('level_start_index', starts).tolist()
    try:
        pairs = [(h, w) for h, w in shapes]
    except (TypeError, ValueError):
        raise ValueError(f'spatial_shapes must be [levels, 2] (H, W), got {shapes!r}') from None
    sizes = tuple((_whole('spatial_shapes', shapes, h), _whole('spatial_shapes', shapes, w)) for h, w in pairs)
    starts = tuple(_whole('level_start_index', starts, s) for s in starts)
    key = (sizes, starts, total, device)
    tables = None if torch.compiler.is_compiling() else _DEVICE_TABLES.get(key)
    if tables is None:
        _check_table_shapes((len(sizes), 2), (len(starts),), levels)
        size_lists = [list(p) for p in sizes]
        _check_table(size_lists, list(starts), total)
        with torch.inference_mode(False):  # cached: must serve autograd calls after inference ones
            tables = (torch.tensor(sizes, dtype=torch.long, device=device),
                      torch.tensor(starts, dtype=torch.long, device=device))
        if not torch.compiler.is_compiling():
            if len(_DEVICE_TABLES) >= _CACHE_LIMIT:
                _DEVICE_TABLES.clear()
            _DEVICE_TABLES[key] = tables
    return tables[0], tables[1], [list(p) for p in sizes]


def _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> Table:
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
    for name, t in (('value', value), ('sampling_locations', sampling_locations),
                    ('attention_weights', attention_weights)):
        if not t.is_floating_point():
            raise TypeError(f'{name} must be a floating-point tensor, got {t.dtype}')
    tensors = [value, sampling_locations, attention_weights]
    for t in (spatial_shapes, level_start_index):
        if isinstance(t, torch.Tensor):
            tensors.append(t)
    device = value.device
    if any(t.device != device for t in tensors):
        raise ValueError(f'inputs are on several devices: {sorted({str(t.device) for t in tensors})}')
    if isinstance(spatial_shapes, torch.Tensor) and isinstance(level_start_index, torch.Tensor):
        return _tensor_table(spatial_shapes, level_start_index, levels, total)
    return _sequence_table(spatial_shapes, level_start_index, levels, total, device)


def _triton_checks(value: torch.Tensor, sampling_locations: torch.Tensor) -> List[Tuple[bool, str]]:
    """The op's own reasons against Triton (only those that apply: no message is formatted on the fast path)."""
    checks = []
    head_dim = value.shape[-1]
    if head_dim > MAX_TRITON_HEAD_DIM:
        checks.append((False, f'head_dim {head_dim} > {MAX_TRITON_HEAD_DIM}'))
    if value.numel() == 0 or sampling_locations.numel() == 0:
        checks.append((False, 'empty input'))
    return checks


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
    if value.numel() == 0 or sampling_locations.numel() == 0:  # no image, query, head, channel, level or point
        return ms_deform_attn_ref(value, spatial_shapes if sizes is None else sizes, level_start_index,
                                  sampling_locations, attention_weights)
    chosen = choose_backend('ms_deform_attn', backend, tensors, _triton_checks(value, sampling_locations))
    if chosen == 'reference':
        return ms_deform_attn_ref(value, spatial_shapes if sizes is None else sizes, level_start_index,
                                  sampling_locations, attention_weights)
    from .triton.deformable import ms_deform_attn_triton
    return ms_deform_attn_triton(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


def explain_ms_deform_attn(value: torch.Tensor, sampling_locations: torch.Tensor,
                           attention_weights: torch.Tensor) -> str:
    """Which backend the automatic choice would take for these inputs, and why."""
    return explain_backend('ms_deform_attn', (value, sampling_locations, attention_weights),
                           _triton_checks(value, sampling_locations))

