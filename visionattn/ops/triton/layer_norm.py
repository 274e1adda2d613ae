"""Triton kernel of LayerNorm over the last axis (the forward), for the token-major (NHWC) maps of the backbones.

PyTorch's CUDA LayerNorm forward gives a row to each thread block: at the narrow rows of these models it runs far
below the memory bandwidth (H100, 64 x 56 x 56 x 64 float32: 300 us where the bytes take about 35 us;
docs/benchmarks/speed_h100.md). Here a program normalises a [BLOCK_M, BLOCK_N] tile of rows: statistics in float32
(biased variance, as ``torch.nn.functional.layer_norm``), the output in the caller's dtype, and the mean and 1/std
kept for the backward when a gradient is needed. The backward is PyTorch's own kernel fed with those statistics
(``ops/layer_norm.py``): a Triton backward that reduced the weight and bias gradients per program was measured
slower than PyTorch's from 128 features up, so it was not kept.
"""
from typing import Dict, Optional, Tuple

import torch
import triton
import triton.language as tl

from ._common import cached_plan
from .launch import Kernel
from .launch import aligned as _aligned

__all__ = ['layer_norm_fwd', 'MAX_TRITON_FEATURES']

# The widest row a program holds in registers (BLOCK_N = next power of two); wider rows take the reference.
MAX_TRITON_FEATURES = 4096
# Elements of one tile: rows per program = TILE_ELEMENTS // BLOCK_N (at least one row).
TILE_ELEMENTS = 4096


@triton.jit
def _ln_fwd_kernel(X, W, B, Y, MEAN, RSTD, n_rows, n_cols, sx_row, sy_row, eps,
                   HAS_W: tl.constexpr, HAS_B: tl.constexpr, STORE_STATS: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    tl.static_assert(BLOCK_M & (BLOCK_M - 1) == 0, 'BLOCK_M must be a power of two')
    tl.static_assert(BLOCK_N & (BLOCK_N - 1) == 0, 'BLOCK_N must be a power of two')
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    col_ok = cols < n_cols
    mask = row_ok[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)
    x = tl.load(X + rows64[:, None] * sx_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, 1) / n_cols
    centred = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, 1) / n_cols + eps)
    y = centred * rstd[:, None]
    if HAS_W:
        y = y * tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows64[:, None] * sy_row + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    if STORE_STATS:
        tl.store(MEAN + rows, mean, mask=row_ok)
        tl.store(RSTD + rows, rstd, mask=row_ok)


_FWD = Kernel(_ln_fwd_kernel)


class _Plan:
    """Tile sizes, grid and launch slot of one problem shape (rows, features, dtypes, strides, alignment)."""

    def __init__(self, n_rows: int, n_cols: int):
        self.block_n = max(16, triton.next_power_of_2(n_cols))
        self.block_m = max(1, min(TILE_ELEMENTS // self.block_n, triton.next_power_of_2(max(n_rows, 1))))
        self.num_warps = 8 if self.block_m * self.block_n >= 4096 else 4
        self.grid = (max(triton.cdiv(n_rows, self.block_m), 1), 1, 1)
        self.slot = [None, None]


_PLANS: Dict[tuple, _Plan] = {}


def layer_norm_fwd(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float,
                   out_dtype: torch.dtype, keep_stats: bool
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """LayerNorm of ``x`` [rows, N] (unit stride along N, validated by the caller): (y, mean, rstd)."""
    n_rows, n_cols = x.shape
    key = (n_rows, n_cols, x.stride(0), x.dtype, out_dtype, x.device, _aligned(x),
           None if weight is None else (weight.dtype, _aligned(weight)),
           None if bias is None else (bias.dtype, _aligned(bias)), keep_stats)
    plan = cached_plan(_PLANS, key, lambda: _Plan(n_rows, n_cols))
    y = torch.empty((n_rows, n_cols), device=x.device, dtype=out_dtype)
    if keep_stats:
        mean = torch.empty(n_rows, device=x.device, dtype=torch.float32)
        rstd = torch.empty(n_rows, device=x.device, dtype=torch.float32)
    else:
        mean = rstd = None
    if n_rows == 0:
        return y, mean, rstd
    _FWD.launch(plan.slot, plan.grid, (
        x, x if weight is None else weight, x if bias is None else bias, y, y if mean is None else mean,
        y if rstd is None else rstd, n_rows, n_cols, x.stride(0), n_cols, float(eps)),
        dict(HAS_W=weight is not None, HAS_B=bias is not None, STORE_STATS=keep_stats, BLOCK_M=plan.block_m,
             BLOCK_N=plan.block_n), plan.num_warps, 1)
    return y, mean, rstd
