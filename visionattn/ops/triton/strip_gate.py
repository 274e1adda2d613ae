"""Triton kernels of the strip gate (ELA, arXiv:2403.01123): the two strip means of a map in one pass, and the gated
product in one pass; in the backward pass, the two gate gradients in one pass and the input gradient in one pass.

A map ``x`` [B, C, H, W] (any strides: NCHW and channels-last alike) is gated as ``x * g_h[b, c, h] * g_w[b, c, w]``.
Written as PyTorch ops, autocast and autograd make this five to eight passes over the map, with a full-size product
saved for the backward. Here:

- ``strip_sums`` reads the map once and writes both strips: a program owns a block of channels of one image and walks
  its rows, writing each row's scaled sum and keeping the column sums in registers (no atomics: deterministic). With
  ``dy`` and the gates it gives the gate gradients instead: the sums of ``dy * x * g_w`` over a row and of
  ``dy * x * g_h`` over a column.
- ``strip_apply`` writes ``a * g_h * g_w (+ add_h * scale_h + add_w * scale_w)``: the forward's product (``a = x``)
  or the input gradient (``a = dy``, adding the strips' gradients spread over the axis each mean pooled).

Sums and products are in float32; outputs in the dtype of the tensor they are written to.
"""
from typing import Dict, Optional

import torch
import triton
import triton.language as tl

from ._common import TileConfig, cached_plan, check_int32_span, flat_grid, pow2_clamp
from .launch import Kernel, signature

__all__ = ['strip_sums', 'strip_apply', 'MAX_TRITON_WIDTH']

# A program holds a [BLOCK_W, BLOCK_C] tile of one row: the whole width, and as many channels as TILE_ELEMENTS leave.
TILE_ELEMENTS = 4096
MAX_TRITON_WIDTH = 2048  # at least two channels per tile; wider maps take the reference
MAX_BLOCK_C = 64
# Rows one strip_apply program writes with one load of its g_w tile.
APPLY_ROWS = 8


@triton.jit
def _strip_sums_kernel(X, DY, GH, GW, ROWS, COLS,
                       sx_b, sx_c, sx_h, sx_w, sdy_b, sdy_c, sdy_h, sdy_w,
                       sgh_b, sgh_c, sgh_l, sgw_b, sgw_c, sgw_l, sr_b, sr_c, sr_l, sc_b, sc_c, sc_l,
                       channels, height, width, n_cblocks, row_scale, col_scale,
                       WITH_GRAD: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr):
    tl.static_assert(BLOCK_C * BLOCK_W <= 8192, 'a row tile must stay in registers')
    tl.static_assert(BLOCK_C & (BLOCK_C - 1) == 0, 'BLOCK_C must be a power of two')
    tl.static_assert(BLOCK_W & (BLOCK_W - 1) == 0, 'BLOCK_W must be a power of two')
    pid = tl.program_id(0)
    b = (pid // n_cblocks).to(tl.int64)
    c = (pid % n_cblocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    w = tl.arange(0, BLOCK_W)
    c_ok = c < channels
    mask = (w < width)[:, None] & c_ok[None, :]
    # int32 offsets inside an image (the plan checks its span), the image's own in int64
    x_tile = X + b * sx_b + w[:, None] * sx_w + c[None, :] * sx_c
    if WITH_GRAD:
        dy_tile = DY + b * sdy_b + w[:, None] * sdy_w + c[None, :] * sdy_c
        gate_w = tl.load(GW + b * sgw_b + w[:, None] * sgw_l + c[None, :] * sgw_c, mask=mask, other=0.)
        gate_w = gate_w.to(tl.float32)
        gh_row = GH + b * sgh_b + c * sgh_c
    row_out = ROWS + b * sr_b + c * sr_c
    col_sums = tl.zeros([BLOCK_W, BLOCK_C], dtype=tl.float32)
    for h in range(height):
        term = tl.load(x_tile + h * sx_h, mask=mask, other=0.).to(tl.float32)
        if WITH_GRAD:
            term *= tl.load(dy_tile + h * sdy_h, mask=mask, other=0.).to(tl.float32)
            row = tl.sum(term * gate_w, 0)
            col_sums += term * tl.load(gh_row + h * sgh_l, mask=c_ok, other=0.).to(tl.float32)[None, :]
        else:
            row = tl.sum(term, 0)
            col_sums += term
        tl.store(row_out + h * sr_l, (row * row_scale).to(ROWS.dtype.element_ty), mask=c_ok)
    tl.store(COLS + b * sc_b + w[:, None] * sc_l + c[None, :] * sc_c,
             (col_sums * col_scale).to(COLS.dtype.element_ty), mask=mask)


@triton.jit
def _strip_apply_kernel(A, GH, GW, ADD_H, ADD_W, OUT,
                        sa_b, sa_c, sa_h, sa_w, sgh_b, sgh_c, sgh_l, sgw_b, sgw_c, sgw_l,
                        sah_b, sah_c, sah_l, saw_b, saw_c, saw_l, so_b, so_c, so_h, so_w,
                        channels, height, width, n_cblocks, n_hblocks, scale_h, scale_w,
                        WITH_ADD: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr, ROWS: tl.constexpr):
    tl.static_assert(BLOCK_C * BLOCK_W <= 8192, 'a row tile must stay in registers')
    tl.static_assert(BLOCK_C & (BLOCK_C - 1) == 0, 'BLOCK_C must be a power of two')
    tl.static_assert(BLOCK_W & (BLOCK_W - 1) == 0, 'BLOCK_W must be a power of two')
    pid = tl.program_id(0)
    h_block = pid % n_hblocks
    c_block = (pid // n_hblocks) % n_cblocks
    b = (pid // (n_hblocks * n_cblocks)).to(tl.int64)
    c = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    w = tl.arange(0, BLOCK_W)
    c_ok = c < channels
    mask = (w < width)[:, None] & c_ok[None, :]
    gate_w = tl.load(GW + b * sgw_b + w[:, None] * sgw_l + c[None, :] * sgw_c, mask=mask, other=0.).to(tl.float32)
    if WITH_ADD:
        add_w = tl.load(ADD_W + b * saw_b + w[:, None] * saw_l + c[None, :] * saw_c, mask=mask, other=0.)
        add_w = add_w.to(tl.float32) * scale_w
    a_tile = A + b * sa_b + w[:, None] * sa_w + c[None, :] * sa_c
    out_tile = OUT + b * so_b + w[:, None] * so_w + c[None, :] * so_c
    for i in range(ROWS):
        h = h_block * ROWS + i
        row_mask = mask & (h < height)
        c_mask = c_ok & (h < height)
        gate_h = tl.load(GH + b * sgh_b + c * sgh_c + h * sgh_l, mask=c_mask, other=0.).to(tl.float32)
        value = tl.load(a_tile + h * sa_h, mask=row_mask, other=0.).to(tl.float32) * gate_h[None, :] * gate_w
        if WITH_ADD:
            add_h = tl.load(ADD_H + b * sah_b + c * sah_c + h * sah_l, mask=c_mask, other=0.).to(tl.float32)
            value += add_h[None, :] * scale_h + add_w
        tl.store(out_tile + h * so_h, value.to(OUT.dtype.element_ty), mask=row_mask)


_SUMS = Kernel(_strip_sums_kernel)
_APPLY = Kernel(_strip_apply_kernel)


class _Plan:
    """Tiles (block_m: channels, block_n: the width), grid and launch slot of one call signature (shapes, strides,
    dtypes, alignments)."""

    def __init__(self, op: str, batch: int, channels: int, height: int, width: int, tensors, apply: bool):
        for name, t in tensors:
            check_int32_span(op, name, t, unit='image')
        block_w = pow2_clamp(width, 1, MAX_TRITON_WIDTH)
        block_c = pow2_clamp(min(TILE_ELEMENTS // block_w, channels), 1, MAX_BLOCK_C)
        self.tiles = TileConfig(block_m=block_c, block_n=block_w, num_warps=4, num_stages=2)
        self.n_cblocks = triton.cdiv(channels, block_c)
        self.n_hblocks = triton.cdiv(height, APPLY_ROWS) if apply else 1
        self.grid = flat_grid(batch * self.n_cblocks * self.n_hblocks, op)
        self.slot = [None, None]


_PLANS: Dict[tuple, _Plan] = {}


def strip_sums(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, dy: Optional[torch.Tensor] = None,
               gate_h: Optional[torch.Tensor] = None, gate_w: Optional[torch.Tensor] = None) -> None:
    """Writes the strips of ``x`` [B, C, H, W] into ``rows`` [B, C, H] and ``cols`` [B, C, W] (any strides).

    Without ``dy``: the means over W (rows) and over H (cols). With ``dy`` (x's shape) and the gates ``gate_h``
    [B, C, H], ``gate_w`` [B, C, W]: the sums of ``dy * x * gate_w`` over W and of ``dy * x * gate_h`` over H.
    """
    batch, channels, height, width = x.shape
    grad = dy is not None
    tensors = (x, rows, cols) + ((dy, gate_h, gate_w) if grad else ())
    key = ('sums', signature(tensors), x.device)
    plan = cached_plan(_PLANS, key, lambda: _Plan('strip_sums', batch, channels, height, width,
                                                  [('x', x), ('dy', dy)] if grad else [('x', x)], False))
    if grad:
        grad_args, scales = (dy, gate_h, gate_w), (1.0, 1.0)
        grad_strides = (*dy.stride(), *gate_h.stride(), *gate_w.stride())
    else:  # placeholders the kernel does not read
        grad_args, scales, grad_strides = (x, rows, cols), (1.0 / width, 1.0 / height), (0,) * 10
    _SUMS.launch(plan.slot, plan.grid, (
        x, *grad_args, rows, cols, *x.stride(), *grad_strides, *rows.stride(), *cols.stride(),
        channels, height, width, plan.n_cblocks, *scales),
        dict(WITH_GRAD=grad, BLOCK_C=plan.tiles.block_m, BLOCK_W=plan.tiles.block_n), plan.tiles.num_warps,
        plan.tiles.num_stages)


def strip_apply(a: torch.Tensor, gate_h: torch.Tensor, gate_w: torch.Tensor, out: torch.Tensor,
                add_h: Optional[torch.Tensor] = None, add_w: Optional[torch.Tensor] = None,
                scale_h: float = 1.0, scale_w: float = 1.0) -> None:
    """Writes ``a * gate_h[..., None] * gate_w[..., None, :]`` into ``out`` (a's shape [B, C, H, W]); with ``add_h``
    [B, C, H] and ``add_w`` [B, C, W] also ``+ add_h[..., None] * scale_h + add_w[..., None, :] * scale_w``."""
    batch, channels, height, width = a.shape
    with_add = add_h is not None
    tensors = (a, gate_h, gate_w, out) + ((add_h, add_w) if with_add else ())
    key = ('apply', signature(tensors), a.device)
    plan = cached_plan(_PLANS, key, lambda: _Plan('strip_apply', batch, channels, height, width,
                                                  [('the input', a), ('the output', out)], True))
    if with_add:
        adds, add_strides = (add_h, add_w), (*add_h.stride(), *add_w.stride())
    else:  # placeholders the kernel does not read
        adds, add_strides = (gate_h, gate_w), (0,) * 6
    _APPLY.launch(plan.slot, plan.grid, (
        a, gate_h, gate_w, *adds, out, *a.stride(), *gate_h.stride(), *gate_w.stride(), *add_strides, *out.stride(),
        channels, height, width, plan.n_cblocks, plan.n_hblocks, float(scale_h), float(scale_w)),
        dict(WITH_ADD=with_add, BLOCK_C=plan.tiles.block_m, BLOCK_W=plan.tiles.block_n, ROWS=APPLY_ROWS),
        plan.tiles.num_warps, plan.tiles.num_stages)
