"""Triton kernels for SS2D's four-order scan with one state per channel, the four orders merged on chip (issue 27).

VMamba's SS2D (arXiv 2401.10166) with d_state 1 (VMamba v2, LaMamba) scans a map along four orders and sums the
four outputs at each position. Run order by order (``selective_scan.py``'s kernels), every order writes its own
float32 output and a reduction sums them: four outputs written and read again, each the size of the map in float32.
Here the orders meet inside one program, in two passes:

1. **Boundary states** (one program per batch element, order and channel block, walking the order's steps): the
   linear recurrence ``h_t = a_t h_{t-1} + b_t`` is scanned along the whole order, but only the state at the end of
   every *segment* is written: a segment is a run of a row (row-wise orders) or a column (column-wise orders) one tile
   long. Both order kinds visit whole rows or columns, each in one direction, so a row of W steps is W / tile
   segments and every segment is a contiguous run of steps.
2. **Tiles** (one program per batch element, map tile and channel block): the tile's map, step sizes and B, C are
   read once; for each order, every segment of the tile is scanned along its row or column from the state its
   predecessor ended in (pass 1), in the order's direction; the four outputs are summed in registers and the sum is
   written once.

Pass 2 reads the map once and writes the output once; pass 1 reads the map once per order, but writes only one state
per segment. With ``delta_proj`` (SS2D's low-rank step projection, ``dt_proj``) both passes compute the step sizes
from the rank-R projections instead of reading the [B, L, K, dim] step sizes: R values per position and order instead
of dim.

Used for inference (no autograd) when the state size is 1 and each side of the map has a divisor that makes a
reasonable tile; otherwise the order-by-order kernels run.
"""
import functools
from typing import Dict, NamedTuple, Optional

import torch
import triton
import triton.language as tl

from ._common import LOG2E_C, cached_plan, check_int32_span, flat_grid
from .launch import Kernel
from .launch import aligned as _aligned

# order kinds (the ``kind`` of visionattn.ops.scan_orders)
CROSS, CONTINUOUS = 0, 1
# Elements of one [rows, cols, channels] register tile of pass 2 and of one [channels, steps] tile of pass 1.
TILE_ELEMENTS = 2048
BOUNDARY_CHUNK = 32
# The longest segment (a side of a tile); a side with no divisor from MIN_SEGMENT to this runs order by order.
MAX_SEGMENT = 16
MIN_SEGMENT = 4
# sweep overrides (tools/bench_suites/selective_scan.py): tile_elements, boundary_chunk, boundary_channels,
# num_warps, boundary_warps, segment_h, segment_w
TILE_OVERRIDES: dict = {}


@triton.jit
def _combine(decay_first, drive_first, decay_second, drive_second):
    # h -> a1 h + b1, then h -> a2 h + b2
    return decay_first * decay_second, decay_second * drive_first + drive_second


@triton.jit
def _step_sizes(DELTA, PROJ, DBIAS, delta_offsets, proj_offsets, mask, low_mask, ch, d_ok, proj_rank, s_rank, sp_r,
                HAS_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, CH_AXIS: tl.constexpr):
    """delta (+ bias, softplus) in fp32, 0 where ``mask`` is off (the state passes unchanged). ``delta_offsets``
    address the step sizes, or with ``HAS_PROJ`` the rank-R projections of each position and order (``s_rank`` apart,
    valid where ``low_mask``), whose dot with ``PROJ[ch, :]`` is the step size. ``ch`` (A's row) runs along axis
    ``CH_AXIS`` of the tile: 0 in the boundary pass ([channels, steps]), 2 in the tile pass ([rows, cols, channels])."""
    if HAS_PROJ:
        raw = tl.zeros(mask.shape, dtype=tl.float32)
        for r in range(proj_rank):
            weight = tl.load(PROJ + proj_offsets + r * sp_r, mask=d_ok, other=0.).to(tl.float32)
            low = tl.load(DELTA + delta_offsets + r * s_rank, mask=low_mask, other=0.).to(tl.float32)
            if CH_AXIS == 0:
                raw += weight[:, None] * low
            else:
                raw += low * weight
    else:
        raw = tl.load(DELTA + delta_offsets, mask=mask, other=0.).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(DBIAS + ch, mask=d_ok, other=0.).to(tl.float32)
        if CH_AXIS == 0:
            raw += bias[:, None]
        else:
            raw += bias
    step = raw
    if SOFTPLUS:  # torch's softplus, threshold 20
        step = tl.where(raw <= 20., tl.log(1. + tl.exp(raw)), raw)
    return tl.where(mask, step, 0.)


@triton.jit
def _boundary_kernel(X, DELTA, PROJ, A, BM, DBIAS, ORDER, BSTATE,
                     sx_b, sx_l, sx_d, sdt_b, sdt_l, sdt_k, sdt_d, sb_b, sb_l, sb_k, sp_k, sp_d, sp_r,
                     seq_len, dim, n_dblocks, n_chunks, seg_h, seg_w, n_seg, proj_rank,
                     KIND: tl.constexpr, HAS_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     BLOCK_D: tl.constexpr, CHUNK: tl.constexpr):
    pid = tl.program_id(0)
    d_block = pid % n_dblocks
    k = (pid // n_dblocks) % 4
    b = (pid // (n_dblocks * 4)).to(tl.int64)
    d = d_block * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < dim
    ch = k * dim + d
    a_log2 = tl.load(A + ch, mask=d_ok, other=0.).to(tl.float32) * LOG2E_C
    if KIND == 0:  # cross: orders 0, 2 walk rows, 1, 3 columns
        row_wise = k % 2 == 0
    else:  # continuous: 0, 1 rows, 2, 3 columns
        row_wise = k < 2
    seg = tl.where(row_wise, seg_w, seg_h)
    x_row = X + b * sx_b + d[:, None] * sx_d
    dt_row = b * sdt_b + k * sdt_k
    if not HAS_PROJ:
        dt_row += d[:, None] * sdt_d
    b_row = BM + b * sb_b + k * sb_k
    state_row = BSTATE + ((b * 4 + k) * n_seg) * dim + d[:, None]
    is_last = tl.arange(0, CHUNK) == CHUNK - 1
    state = tl.zeros([BLOCK_D], dtype=tl.float32)
    for c in range(n_chunks):
        t = c * CHUNK + tl.arange(0, CHUNK)
        t_ok = t < seq_len
        pos = tl.load(ORDER + k * seq_len + t, mask=t_ok, other=0).to(tl.int32)[None, :]
        m = d_ok[:, None] & t_ok[None, :]
        u = tl.load(x_row + pos * sx_l, mask=m, other=0.).to(tl.float32)
        step = _step_sizes(DELTA, PROJ, DBIAS, dt_row + pos * sdt_l, k * sp_k + d * sp_d, m, t_ok[None, :], ch,
                           d_ok, proj_rank, sdt_d, sp_r, HAS_PROJ, HAS_BIAS, SOFTPLUS, 0)
        drive_in = tl.load(b_row + pos * sb_l, mask=t_ok[None, :], other=0.).to(tl.float32)
        decay = tl.exp2(step * a_log2[:, None])
        decay_acc, drive_acc = tl.associative_scan((decay, step * u * drive_in), 1, _combine)
        states = decay_acc * state[:, None] + drive_acc
        # the state after every whole segment: where the next segment (index j + 1) starts in the tile pass
        done = t + 1
        ends = (done % seg == 0) & (done < seq_len)
        tl.store(state_row + (done // seg - 1)[None, :] * dim, states, mask=d_ok[:, None] & ends[None, :])
        state = tl.sum(tl.where(is_last[None, :], states, 0.), axis=1)


@triton.jit
def _line_scan(decay, drive, start, forward, AXIS: tl.constexpr, MODE: tl.constexpr):
    """The states of a tile's segments along AXIS from their start states (``start``, expanded along AXIS): all
    forward (MODE 0), all backward (1), or per line as ``forward`` says (snake orders: both scans, each line takes
    its own)."""
    if MODE == 0:
        decay_acc, drive_acc = tl.associative_scan((decay, drive), AXIS, _combine)
        return decay_acc * start + drive_acc
    elif MODE == 1:
        decay_acc, drive_acc = tl.associative_scan((decay, drive), AXIS, _combine, reverse=True)
        return decay_acc * start + drive_acc
    else:
        decay_fwd, drive_fwd = tl.associative_scan((decay, drive), AXIS, _combine)
        decay_bwd, drive_bwd = tl.associative_scan((decay, drive), AXIS, _combine, reverse=True)
        return tl.where(forward, decay_fwd * start + drive_fwd, decay_bwd * start + drive_bwd)


@triton.jit
def _order_states(decay, drive, BSTATE, state_base, line, line_ok, n_lines, seg_in_line, n_seg_line, d, d_ok, dim,
                  ROW_WISE: tl.constexpr, FAR_SIDE: tl.constexpr, MODE: tl.constexpr):
    """One order's states over a tile: each line (row or column) of the tile is a segment of the order; its index
    in the order's sequence of segments follows from the line's index among the order's lines (counted from the far
    side with FAR_SIDE) and the line's direction (MODE: 0 forward, 1 backward, 2 forward on even lines, 3 on odd)."""
    if FAR_SIDE:
        line_index = n_lines - 1 - line
    else:
        line_index = line
    if MODE == 0:
        forward = line_index >= 0
    elif MODE == 1:
        forward = line_index < 0
    elif MODE == 2:
        forward = line_index % 2 == 0
    else:
        forward = line_index % 2 == 1
    segment = line_index * n_seg_line + tl.where(forward, seg_in_line, n_seg_line - 1 - seg_in_line)
    start = tl.load(BSTATE + state_base + (segment - 1)[:, None] * dim + d[None, :],
                    mask=(line_ok & (segment > 0))[:, None] & d_ok[None, :], other=0.)
    if ROW_WISE:
        return _line_scan(decay, drive, start[:, None, :], forward[:, None, None], 1, MODE)
    return _line_scan(decay, drive, start[None, :, :], forward[None, :, None], 0, MODE)


@triton.jit
def _tile_kernel(X, DELTA, PROJ, A, BM, CM, DSKIP, DBIAS, BSTATE, OUT,
                 sx_b, sx_l, sx_d, sdt_b, sdt_l, sdt_k, sdt_d, sb_b, sb_l, sb_k, sc_b, sc_l, sc_k,
                 sp_k, sp_d, sp_r, so_b, so_l, so_d,
                 height, width, dim, n_dblocks, seg_h, seg_w, n_th, n_tw, n_seg, proj_rank,
                 KIND: tl.constexpr, HAS_PROJ: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                 SOFTPLUS: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    d_block = pid % n_dblocks
    tile = pid // n_dblocks
    tj = tile % n_tw
    ti = (tile // n_tw) % n_th
    b = (tile // (n_tw * n_th)).to(tl.int64)
    rows = ti * seg_h + tl.arange(0, TILE_H)
    cols = tj * seg_w + tl.arange(0, TILE_W)
    r_ok = tl.arange(0, TILE_H) < seg_h
    c_ok = tl.arange(0, TILE_W) < seg_w
    d = d_block * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < dim
    pos = rows[:, None] * width + cols[None, :]  # [TILE_H, TILE_W]
    p_ok = r_ok[:, None] & c_ok[None, :]
    pos3 = pos[:, :, None]
    m = p_ok[:, :, None] & d_ok[None, None, :]
    u = tl.load(X + b * sx_b + pos3 * sx_l + d[None, None, :] * sx_d, mask=m, other=0.).to(tl.float32)
    total = tl.zeros([TILE_H, TILE_W, BLOCK_D], dtype=tl.float32)
    skip = tl.zeros([BLOCK_D], dtype=tl.float32)
    for k in tl.static_range(4):
        ch = k * dim + d
        a_log2 = tl.load(A + ch, mask=d_ok, other=0.).to(tl.float32) * LOG2E_C
        if HAS_D:
            skip += tl.load(DSKIP + ch, mask=d_ok, other=0.).to(tl.float32)
        dt_offsets = b * sdt_b + pos3 * sdt_l + k * sdt_k
        if not HAS_PROJ:
            dt_offsets += d[None, None, :] * sdt_d
        step = _step_sizes(DELTA, PROJ, DBIAS, dt_offsets, k * sp_k + d * sp_d, m, p_ok[:, :, None], ch, d_ok,
                           proj_rank, sdt_d, sp_r, HAS_PROJ, HAS_BIAS, SOFTPLUS, 2)
        drive_in = tl.load(BM + b * sb_b + pos * sb_l + k * sb_k, mask=p_ok, other=0.).to(tl.float32)
        read_out = tl.load(CM + b * sc_b + pos * sc_l + k * sc_k, mask=p_ok, other=0.).to(tl.float32)
        decay = tl.exp2(step * a_log2[None, None, :])
        drive = step * u * drive_in[:, :, None]
        base = ((b * 4 + k) * n_seg) * dim
        # the orders of scan_orders: cross = row-major, column-major, both reversed; continuous = snake rows from the
        # top and from the bottom (even lines left to right), snake columns from the left and from the right (even
        # lines bottom to top)
        if KIND == 0:
            if k == 0:
                states = _order_states(decay, drive, BSTATE, base, rows, r_ok, height, tj, n_tw, d, d_ok, dim,
                                       True, False, 0)
            elif k == 1:
                states = _order_states(decay, drive, BSTATE, base, cols, c_ok, width, ti, n_th, d, d_ok, dim,
                                       False, False, 0)
            elif k == 2:
                states = _order_states(decay, drive, BSTATE, base, rows, r_ok, height, tj, n_tw, d, d_ok, dim,
                                       True, True, 1)
            else:
                states = _order_states(decay, drive, BSTATE, base, cols, c_ok, width, ti, n_th, d, d_ok, dim,
                                       False, True, 1)
        else:
            if k == 0:
                states = _order_states(decay, drive, BSTATE, base, rows, r_ok, height, tj, n_tw, d, d_ok, dim,
                                       True, False, 2)
            elif k == 1:
                states = _order_states(decay, drive, BSTATE, base, rows, r_ok, height, tj, n_tw, d, d_ok, dim,
                                       True, True, 2)
            elif k == 2:
                states = _order_states(decay, drive, BSTATE, base, cols, c_ok, width, ti, n_th, d, d_ok, dim,
                                       False, False, 3)
            else:
                states = _order_states(decay, drive, BSTATE, base, cols, c_ok, width, ti, n_th, d, d_ok, dim,
                                       False, True, 3)
        total += states * read_out[:, :, None]
    if HAS_D:
        total += u * skip[None, None, :]
    tl.store(OUT + b * so_b + pos3 * so_l + d[None, None, :] * so_d, total.to(OUT.dtype.element_ty), mask=m)


# ---------------------------------------------------------------------------------------------------------------
# launcher


def _segment(side: int) -> int:
    """The segment length along one side: the divisor of ``side`` (at most MAX_SEGMENT) that wastes the least of its
    power-of-two tile, longer on a tie (fewer boundary states); 0 when none is at least MIN_SEGMENT (or the side)."""
    best, score = 0, 0.
    for s in range(1, min(side, MAX_SEGMENT) + 1):
        if side % s == 0 and s * s / triton.next_power_of_2(s) >= score:
            best, score = s, s * s / triton.next_power_of_2(s)
    return best if best >= min(side, MIN_SEGMENT) else 0


class _Tiling(NamedTuple):
    seg_h: int
    seg_w: int
    tile_h: int
    tile_w: int
    block_d: int
    num_warps: int
    boundary_d: int
    boundary_chunk: int
    boundary_warps: int


@functools.lru_cache(maxsize=256)
def _cached_tiling(height: int, width: int, dim: int, overrides: tuple) -> Optional[_Tiling]:
    settings = dict(overrides)
    seg_h = settings.get('segment_h') or _segment(height)
    seg_w = settings.get('segment_w') or _segment(width)
    if not seg_h or not seg_w:
        return None
    tile_h, tile_w = triton.next_power_of_2(seg_h), triton.next_power_of_2(seg_w)
    elements = settings.get('tile_elements', TILE_ELEMENTS)
    block_d = max(1, min(elements // (tile_h * tile_w), triton.next_power_of_2(dim)))
    chunk = settings.get('boundary_chunk', BOUNDARY_CHUNK)
    boundary_d = settings.get('boundary_channels', max(1, min(TILE_ELEMENTS // 2 // chunk,
                                                              triton.next_power_of_2(dim))))
    return _Tiling(seg_h, seg_w, tile_h, tile_w, block_d, settings.get('num_warps', 4), boundary_d, chunk,
                   settings.get('boundary_warps', 2))


def tiling(height: int, width: int, dim: int) -> Optional[_Tiling]:
    """The segments and tiles of a map, or None when a side has no suitable segment length."""
    return _cached_tiling(height, width, dim, tuple(sorted(TILE_OVERRIDES.items())))


class _Plan:
    def __init__(self, x, tensors, tiles: _Tiling):
        for name, t in tensors:
            if t is not None:
                check_int32_span('cross_selective_scan', name, t, leading_axes=1, unit='batch element')
        batch, height, width, dim = x.shape
        self.tiles = tiles
        self.n_th, self.n_tw = height // tiles.seg_h, width // tiles.seg_w
        self.n_seg = height * width // min(tiles.seg_h, tiles.seg_w)
        self.boundary_grid = flat_grid(batch * 4 * triton.cdiv(dim, tiles.boundary_d), 'cross_selective_scan')
        self.tile_grid = flat_grid(batch * self.n_th * self.n_tw * triton.cdiv(dim, tiles.block_d),
                                   'cross_selective_scan')
        self.slots = ([None, None], [None, None])


_PLANS: Dict[tuple, _Plan] = {}
_BOUNDARY = Kernel(_boundary_kernel)
_TILE = Kernel(_tile_kernel)


def merged_cross_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                      D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], softplus: bool,
                      order: torch.Tensor, kind: str, out_dtype: torch.dtype,
                      delta_proj: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """SS2D's scan with state size 1, the orders merged on chip; None when the map's sides have no suitable tiling
    (the caller then runs the orders one by one). Shapes as in :func:`visionattn.ops.cross_selective_scan`; with
    ``delta_proj`` [K, dim, R], ``delta`` holds the rank-R projections [batch, L, K, R]. No autograd."""
    batch, height, width, dim = x.shape
    tiles = tiling(height, width, dim)
    if tiles is None:
        return None
    seq_len = height * width
    u = x.reshape(batch, seq_len, dim)
    out = torch.empty((batch, height, width, dim), device=x.device, dtype=out_dtype)
    out_flat = out.view(batch, seq_len, dim)
    b_flat, c_flat = B.reshape(batch, seq_len, 4), C.reshape(batch, seq_len, 4)
    proj = delta_proj if delta_proj is not None else A
    key = (tuple((t.shape, t.stride(), t.dtype, _aligned(t)) if t is not None else None
                 for t in (u, delta, delta_proj, A, b_flat, c_flat, D, delta_bias, out_flat)),
           kind, softplus, x.device, tiles)
    plan = cached_plan(_PLANS, key, lambda: _Plan(x, [('x', u), ('delta', delta), ('B', b_flat), ('C', c_flat),
                                                      ('the output', out_flat)], tiles))
    if batch == 0:
        return out
    n_seg = plan.n_seg
    bstate = torch.empty((batch, 4, n_seg, dim), device=x.device, dtype=torch.float32)
    a_flat = A.reshape(-1)
    rank = delta_proj.shape[2] if delta_proj is not None else 1
    dt_strides = delta.stride()
    proj_strides = delta_proj.stride() if delta_proj is not None else (0, 0, 0)
    flags = dict(KIND=CROSS if kind == 'cross' else CONTINUOUS, HAS_PROJ=delta_proj is not None,
                 HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus)
    bias = delta_bias if delta_bias is not None else a_flat
    _BOUNDARY.launch(plan.slots[0], plan.boundary_grid, (
        u, delta, proj, a_flat, b_flat, bias, order, bstate,
        *u.stride(), *dt_strides, *b_flat.stride(), *proj_strides,
        seq_len, dim, triton.cdiv(dim, tiles.boundary_d), triton.cdiv(seq_len, tiles.boundary_chunk),
        tiles.seg_h, tiles.seg_w, n_seg, rank),
        dict(flags, BLOCK_D=tiles.boundary_d, CHUNK=tiles.boundary_chunk), tiles.boundary_warps, None)
    _TILE.launch(plan.slots[1], plan.tile_grid, (
        u, delta, proj, a_flat, b_flat, c_flat, D if D is not None else a_flat, bias, bstate, out_flat,
        *u.stride(), *dt_strides, *b_flat.stride(), *c_flat.stride(), *proj_strides, *out_flat.stride(),
        height, width, dim, triton.cdiv(dim, tiles.block_d), tiles.seg_h, tiles.seg_w, plan.n_th, plan.n_tw, n_seg,
        rank),
        dict(flags, HAS_D=D is not None, TILE_H=tiles.tile_h, TILE_W=tiles.tile_w, BLOCK_D=tiles.block_d),
        tiles.num_warps, None)
    return out
