"""What the Triton kernel files share: constants, size helpers, the tile-config type (``TileConfig``), the inputs'
layout rule and the grid policy.

- Softmax kernels work in base 2 (``exp2``): scores are scaled by ``LOG2E`` (host side, folded into the softmax
  scale) and so is anything added to them in a kernel (``LOG2E_C``, a constexpr).
- Inputs may be any strided view whose last axis is unit-stride (``unit_last``); kernels take strides, so qkv
  projections' slices and channels-last maps need no copy.
- Grids are one flat axis where the programs could outgrow CUDA's 65535 limit of the second and third axes
  (``flat_grid``), and the plan keys hold every integer, dtype and pointer alignment the JIT specialises on
  (``launch.Kernel``).
"""
from typing import NamedTuple, Optional, Tuple, Union

import torch
import triton
import triton.language as tl

__all__ = ['LOG2E', 'LOG2E_C', 'TileConfig', 'unit_last', 'pow2_clamp', 'contiguous_strides', 'flat_grid',
           'cached_plan', 'check_head_dims', 'check_int32_span']

LOG2E = 1.4426950408889634
LOG2E_C = tl.constexpr(LOG2E)

# CUDA's launch limits: 2^31 - 1 programs on the first grid axis, 65535 on the second and third.
MAX_GRID_X = 2 ** 31 - 1

_Block = Union[int, Tuple[int, int, int]]


class TileConfig(NamedTuple):
    """The tile of one kernel launch, as chosen by a file's heuristic or given as an override.

    - block_m: the tile's rows: queries (attention kernels) or the channels a program owns; for neighborhood
      attention a 3-D spatial tile (its dK/dV kernel: the query tile of the inner loop).
    - block_n: the tile's columns: keys, or the inner axis (head dim, states); a 3-D tile for neighborhood
      attention (its dK/dV kernel: the key tile each program owns).
    - num_warps, num_stages: Triton's launch parameters.

    ``None`` in an override leaves the field to the file's heuristic (neighborhood's ``TILE_OVERRIDE`` entries give
    every field); in a chosen tile, only num_stages may be None: left to Triton (deformable, selective_scan).
    """
    block_m: Optional[_Block] = None
    block_n: Optional[_Block] = None
    num_warps: Optional[int] = None
    num_stages: Optional[int] = None


def unit_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last axis is unit-stride (what every kernel assumes), else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def pow2_clamp(n: int, low: int, high: int) -> int:
    """The power of two at or above ``n``, clamped to ``[low, high]`` (plain Python: cheap on the host)."""
    return max(low, min(high, 1 << (max(int(n), 1) - 1).bit_length()))


def contiguous_strides(shape: tuple) -> tuple:
    """Strides of a contiguous tensor of ``shape`` (for outputs a plan allocates, before they exist)."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def flat_grid(programs: int, op: str) -> tuple:
    """A three-axis grid with every program on the first axis; names the op when even that overflows."""
    if programs > MAX_GRID_X:
        raise ValueError(f'{op}: {programs} programs exceed the CUDA grid; split the batch')
    return (programs, 1, 1)


def check_int32_span(op: str, name: str, t: torch.Tensor, leading_axes: int = 1, unit: str = 'sample',
                     hint: str = '') -> None:
    """Refuse ``t`` when one ``unit`` of it (the axes after the first ``leading_axes``, which the kernels offset with
    int64) spans 2^31 elements or more: inside it the kernels address elements with int32 offsets, which would wrap
    silently."""
    span = 1 + sum((size - 1) * abs(st) for size, st in zip(t.shape[leading_axes:], t.stride()[leading_axes:]))
    if span >= 2 ** 31:
        raise ValueError(f'{op}: one {unit} of {name} spans {span} elements (shape {tuple(t.shape)}, strides '
                         f'{t.stride()}); the Triton kernels take at most 2^31 - 1 per {unit}{hint}')


def cached_plan(plans: dict, key: tuple, build, limit: int = 512):
    """``plans[key]``, built by ``build()`` on a miss; the cache is emptied when it holds ``limit`` plans (a model
    has a few dozen shapes; a stream of new shapes must not grow it without bound)."""
    plan = plans.get(key)
    if plan is None:
        if len(plans) >= limit:
            plans.clear()
        plan = plans[key] = build()
    return plan



@triton.jit
def check_head_dims(D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr):
    """What the attention kernels assume of their constexprs: the padded head dims are powers of two that hold the
    real ones. (Tiles may be below tl.dot's 16 rows under the interpreter, where tests shrink them: nothing is
    asserted about their size.)"""
    tl.static_assert(BLOCK_DQK >= D_QK, 'the padded q/k head dim is below the real one')
    tl.static_assert(BLOCK_DV >= D_V, 'the padded value head dim is below the real one')
    tl.static_assert(BLOCK_DQK & (BLOCK_DQK - 1) == 0, 'the padded q/k head dim must be a power of two')
    tl.static_assert(BLOCK_DV & (BLOCK_DV - 1) == 0, 'the padded value head dim must be a power of two')
