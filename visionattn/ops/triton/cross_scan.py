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

The backward pass has the same two passes against each order: the adjoint g_t = dy_t C_t + a_{t+1} g_{t+1}
leaves one carry per segment boundary, and one program per tile recomputes each order's states and adjoint, sums du
over the orders in registers (dx written once), adds dB, dC and the projections' gradients atomically over channel
blocks and writes the tile's partial sums of dA, dD, d(bias) and d(dt_proj).

Taken by ``cross_selective_scan`` (when ``ENABLED``) when the state size is 1 and each side of the map has a divisor
that makes a reasonable tile (otherwise the orders run one by one), in eager mode through an ``autograd.Function``
and under ``torch.compile`` through the ``visionattn::merged_cross_scan_*`` custom ops.
"""
import functools
import os
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl

from ..checks import first_order_only
from ._common import LOG2E_C, cached_plan, check_int32_span, flat_grid
from .launch import Kernel, signature
from .launch import or_placeholder as _or

# Whether cross_selective_scan takes these kernels where they apply (else the orders run one by one, on
# selective_scan.py's kernels). Opt-in (VISIONATTN_MERGED_SCAN=1): correct on an H100, but 1.4-1.7x slower forward than
# the order-by-order kernels at LaMamba-T's stages (docs/benchmarks/issue27_h100_s9.md; the scan is not
# bandwidth-bound there, and the tile pass's register scans cost more than the reads they save).
ENABLED = os.environ.get('VISIONATTN_MERGED_SCAN', '0') == '1'
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
    """delta (+ bias, softplus) in fp32, 0 where ``mask`` is off (the state passes unchanged), and the value before
    the softplus (its sigmoid is the softplus' derivative). ``delta_offsets`` address the step sizes, or with
    ``HAS_PROJ`` the rank-R projections of each position and order (``s_rank`` apart, valid where ``low_mask``), whose
    dot with ``PROJ[ch, :]`` is the step size. ``ch`` (A's row) runs along axis ``CH_AXIS`` of the tile: 0 in the
    boundary passes ([channels, steps]), 2 in the tile passes ([rows, cols, channels])."""
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
    return tl.where(mask, step, 0.), raw


# ---------------------------------------------------------------------------------------------------------------
# the orders: SPECS packs four bits per order k (bits 4k..4k+3): bit 0 the order walks rows (else columns), bit 1
# its lines are counted from the far side (the last row or column first), bits 2-3 the direction of its lines
# (0 all forward, 1 all backward, 2 forward on even lines, 3 forward on odd lines; forward = left to right or top to
# bottom). See order_specs for the two kinds.


@triton.jit
def _boundary_kernel(X, DELTA, PROJ, A, BM, DBIAS, ORDER, BSTATE,
                     sx_b, sx_l, sx_d, sdt_b, sdt_l, sdt_k, sdt_d, sb_b, sb_l, sb_k, sp_k, sp_d, sp_r,
                     seq_len, dim, n_dblocks, n_chunks, seg_h, seg_w, n_seg, proj_rank,
                     SPECS: tl.constexpr, HAS_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     ADJOINT: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr):
    """Walks order k of one batch element's channel block and writes one state per segment boundary.

    Forward (``BM`` is B): h_t = a_t h_{t-1} + b_t from the first step; the state after every whole segment is where
    the next segment starts. Adjoint (``ADJOINT``, ``X`` is dy and ``BM`` is C): G_t = a_t (dy_t C_t + G_{t+1})
    from the last step back, a linear recurrence too; G at a segment's first step is what the segment before it
    receives at its end (the adjoint g_t = dy_t C_t + a_{t+1} g_{t+1} needs a_{t+1} g_{t+1} = G_{t+1}). Segment j's
    entry is at index j - 1 (forward) or j (adjoint) of its order's row of ``BSTATE``."""
    pid = tl.program_id(0)
    d_block = pid % n_dblocks
    k = (pid // n_dblocks) % 4
    b = (pid // (n_dblocks * 4)).to(tl.int64)
    d = d_block * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < dim
    ch = k * dim + d
    a_log2 = tl.load(A + ch, mask=d_ok, other=0.).to(tl.float32) * LOG2E_C
    seg = tl.where(((SPECS >> (4 * k)) & 1) == 1, seg_w, seg_h)
    x_row = X + b * sx_b + d[:, None] * sx_d
    dt_row = b * sdt_b + k * sdt_k
    if not HAS_PROJ:
        dt_row += d[:, None] * sdt_d
    b_row = BM + b * sb_b + k * sb_k
    state_row = BSTATE + ((b * 4 + k) * n_seg) * dim + d[:, None]
    local = tl.arange(0, CHUNK)
    state = tl.zeros([BLOCK_D], dtype=tl.float32)
    for i in range(n_chunks):
        if ADJOINT:
            t = (n_chunks - 1 - i) * CHUNK + local
        else:
            t = i * CHUNK + local
        t_ok = t < seq_len
        pos = tl.load(ORDER + k * seq_len + t, mask=t_ok, other=0).to(tl.int32)[None, :]
        m = d_ok[:, None] & t_ok[None, :]
        per_channel = tl.load(x_row + pos * sx_l, mask=m, other=0.).to(tl.float32)
        step, _ = _step_sizes(DELTA, PROJ, DBIAS, dt_row + pos * sdt_l, k * sp_k + d * sp_d, m, t_ok[None, :], ch,
                              d_ok, proj_rank, sdt_d, sp_r, HAS_PROJ, HAS_BIAS, SOFTPLUS, 0)
        per_step = tl.load(b_row + pos * sb_l, mask=t_ok[None, :], other=0.).to(tl.float32)
        decay = tl.exp2(step * a_log2[:, None])
        if ADJOINT:
            decay_acc, drive_acc = tl.associative_scan((decay, decay * per_channel * per_step), 1, _combine,
                                                       reverse=True)
            states = decay_acc * state[:, None] + drive_acc
            bounds = (t % seg == 0) & (t > 0) & t_ok
            index = t // seg - 1
            edge = local == 0
        else:
            decay_acc, drive_acc = tl.associative_scan((decay, step * per_channel * per_step), 1, _combine)
            states = decay_acc * state[:, None] + drive_acc
            bounds = ((t + 1) % seg == 0) & (t + 1 < seq_len)
            index = (t + 1) // seg - 1
            edge = local == CHUNK - 1
        tl.store(state_row + index[None, :] * dim, states, mask=d_ok[:, None] & bounds[None, :])
        state = tl.sum(tl.where(edge[None, :], states, 0.), axis=1)


@triton.jit
def _line_scan(decay, drive, start, forward, AXIS: tl.constexpr, MODE: tl.constexpr):
    """h = a h' + b along AXIS of a tile from each line's ``start`` (expanded along AXIS), h' the previous element
    in the scan's direction: every line forward (MODE 0), backward (1), or as ``forward`` says (2, 3: both scans,
    each line takes its own)."""
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
def _lines(rows, cols, r_ok, c_ok, height, width, ti, tj, n_th, n_tw, SPEC: tl.constexpr):
    """A tile's lines for one order (its rows or its columns): each line's direction (forward: left to right or top
    to bottom), the index of its segment in the order's sequence of segments (from the line's index among the
    order's lines and the line's direction), the order's segment count and which lines are inside the tile."""
    if SPEC & 1:
        line, n_lines, seg_in_line, n_seg_line, line_ok = rows, height, tj, n_tw, r_ok
    else:
        line, n_lines, seg_in_line, n_seg_line, line_ok = cols, width, ti, n_th, c_ok
    if (SPEC >> 1) & 1:
        line_index = n_lines - 1 - line
    else:
        line_index = line
    if (SPEC >> 2) == 0:
        forward = line_index >= 0
    elif (SPEC >> 2) == 1:
        forward = line_index < 0
    elif (SPEC >> 2) == 2:
        forward = line_index % 2 == 0
    else:
        forward = line_index % 2 == 1
    segment = line_index * n_seg_line + tl.where(forward, seg_in_line, n_seg_line - 1 - seg_in_line)
    return forward, segment, n_lines * n_seg_line, line_ok


@triton.jit
def _along(v, SPEC: tl.constexpr):
    """A per-line tensor ([lines] or [lines, channels]) expanded to broadcast over the tile's [rows, cols, ...]."""
    if SPEC & 1:
        expanded = tl.expand_dims(v, 1)
    else:
        expanded = tl.expand_dims(v, 0)
    return expanded


@triton.jit
def _order_inputs(u, pos, p_ok, m, b, d, d_ok, dim, k, DELTA, PROJ, DBIAS, A, BM, CM,
                  sdt_b, sdt_l, sdt_k, sdt_d, sp_k, sp_d, sp_r, sb_b, sb_l, sb_k, sc_b, sc_l, sc_k, proj_rank,
                  HAS_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Order k over a tile: step sizes (and their pre-softplus values), decays, drives, B and C."""
    ch = k * dim + d
    a_nat = tl.load(A + ch, mask=d_ok, other=0.).to(tl.float32)
    dt_offsets = b * sdt_b + pos[:, :, None] * sdt_l + k * sdt_k
    if not HAS_PROJ:
        dt_offsets += d[None, None, :] * sdt_d
    step, raw = _step_sizes(DELTA, PROJ, DBIAS, dt_offsets, k * sp_k + d * sp_d, m, p_ok[:, :, None], ch, d_ok,
                            proj_rank, sdt_d, sp_r, HAS_PROJ, HAS_BIAS, SOFTPLUS, 2)
    drive_in = tl.load(BM + b * sb_b + pos * sb_l + k * sb_k, mask=p_ok, other=0.).to(tl.float32)
    read_out = tl.load(CM + b * sc_b + pos * sc_l + k * sc_k, mask=p_ok, other=0.).to(tl.float32)
    decay = tl.exp2(step * (a_nat * LOG2E_C)[None, None, :])
    return step, raw, a_nat, decay, step * u * drive_in[:, :, None], drive_in, read_out


@triton.jit
def _order_states(decay, drive, forward, segment, line_ok, BSTATE, base, d, d_ok, dim, SPEC: tl.constexpr):
    """One order's states over a tile: each line's segment scanned in its direction from the state its predecessor
    ended in (the forward boundary pass's entry segment - 1; zero for the first segment)."""
    start = tl.load(BSTATE + base + (segment - 1)[:, None] * dim + d[None, :],
                    mask=(line_ok & (segment > 0))[:, None] & d_ok[None, :], other=0.)
    return _line_scan(decay, drive, _along(start, SPEC), tl.expand_dims(_along(forward, SPEC), 2), SPEC & 1,
                      SPEC >> 2)


@triton.jit
def _order_forward(u, pos, p_ok, m, rows, cols, r_ok, c_ok, height, width, ti, tj, n_th, n_tw, b, d, d_ok, dim, k,
                   DELTA, PROJ, DBIAS, A, BM, CM, BSTATE, sdt_b, sdt_l, sdt_k, sdt_d, sp_k, sp_d, sp_r,
                   sb_b, sb_l, sb_k, sc_b, sc_l, sc_k, n_seg, proj_rank,
                   HAS_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, SPEC: tl.constexpr):
    """Order k's output C_k h_k over a tile."""
    step, _, _, decay, drive, _, read_out = _order_inputs(
        u, pos, p_ok, m, b, d, d_ok, dim, k, DELTA, PROJ, DBIAS, A, BM, CM, sdt_b, sdt_l, sdt_k, sdt_d, sp_k, sp_d,
        sp_r, sb_b, sb_l, sb_k, sc_b, sc_l, sc_k, proj_rank, HAS_PROJ, HAS_BIAS, SOFTPLUS)
    forward, segment, _, line_ok = _lines(rows, cols, r_ok, c_ok, height, width, ti, tj, n_th, n_tw, SPEC)
    states = _order_states(decay, drive, forward, segment, line_ok, BSTATE, ((b * 4 + k) * n_seg) * dim, d, d_ok,
                           dim, SPEC)
    return states * read_out[:, :, None]


@triton.jit
def _tile_of(n_dblocks, n_th, n_tw, seg_h, seg_w, width, dim, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
             BLOCK_D: tl.constexpr):
    """This program's tile: batch element, tile row and column, the tile's rows, columns and channels with their
    masks, positions [TILE_H, TILE_W] and the [TILE_H, TILE_W, BLOCK_D] mask (channel blocks vary fastest)."""
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
    pos = rows[:, None] * width + cols[None, :]
    p_ok = r_ok[:, None] & c_ok[None, :]
    return b, ti, tj, rows, cols, r_ok, c_ok, d, d_ok, pos, p_ok, p_ok[:, :, None] & d_ok[None, None, :]


@triton.jit
def _tile_kernel(X, DELTA, PROJ, A, BM, CM, DSKIP, DBIAS, BSTATE, OUT,
                 sx_b, sx_l, sx_d, sdt_b, sdt_l, sdt_k, sdt_d, sb_b, sb_l, sb_k, sc_b, sc_l, sc_k,
                 sp_k, sp_d, sp_r, so_b, so_l, so_d,
                 height, width, dim, n_dblocks, seg_h, seg_w, n_th, n_tw, n_seg, proj_rank,
                 SPECS: tl.constexpr, HAS_PROJ: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                 SOFTPLUS: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_D: tl.constexpr):
    b, ti, tj, rows, cols, r_ok, c_ok, d, d_ok, pos, p_ok, m = _tile_of(n_dblocks, n_th, n_tw, seg_h, seg_w, width,
                                                                       dim, TILE_H, TILE_W, BLOCK_D)
    pos3 = pos[:, :, None]
    u = tl.load(X + b * sx_b + pos3 * sx_l + d[None, None, :] * sx_d, mask=m, other=0.).to(tl.float32)
    total = tl.zeros([TILE_H, TILE_W, BLOCK_D], dtype=tl.float32)
    skip = tl.zeros([BLOCK_D], dtype=tl.float32)
    for k in tl.static_range(4):
        total += _order_forward(u, pos, p_ok, m, rows, cols, r_ok, c_ok, height, width, ti, tj, n_th, n_tw, b, d,
                                d_ok, dim, k, DELTA, PROJ, DBIAS, A, BM, CM, BSTATE, sdt_b, sdt_l, sdt_k, sdt_d,
                                sp_k, sp_d, sp_r, sb_b, sb_l, sb_k, sc_b, sc_l, sc_k, n_seg, proj_rank,
                                HAS_PROJ, HAS_BIAS, SOFTPLUS, (SPECS >> (4 * k)) & 15)
        if HAS_D:
            skip += tl.load(DSKIP + k * dim + d, mask=d_ok, other=0.).to(tl.float32)
    if HAS_D:
        total += u * skip[None, None, :]
    tl.store(OUT + b * so_b + pos3 * so_l + d[None, None, :] * so_d, total.to(OUT.dtype.element_ty), mask=m)


# ---------------------------------------------------------------------------------------------------------------
# backward: the adjoint g_t = dy_t C_t + a_{t+1} g_{t+1} runs against each order. Its boundary pass (_boundary_kernel
# with ADJOINT) writes G = a g at the first step after every segment but the last; the tile pass scans each segment
# back from there, with a_{t+1} from the next position along the line (1 at the segment's last step, which takes G).


@triton.jit
def _order_backward(u, dy, pos, p_ok, m, rows, cols, r_ok, c_ok, height, width, ti, tj, n_th, n_tw, seg_h, seg_w,
                    b, d, d_ok, dim, k, seq_len, row,
                    DELTA, PROJ, DBIAS, A, BM, CM, BSTATE, ASTATE, DDELTA, DBC, DLOW, SMALL,
                    sdt_b, sdt_l, sdt_k, sdt_d, sdd_b, sdd_l, sdd_k, sdd_d, sp_k, sp_d, sp_r, sb_b, sb_l, sb_k,
                    sc_b, sc_l, sc_k, n_seg, proj_rank, dc_off, small_row, bias_off, proj_off,
                    HAS_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, SPEC: tl.constexpr):
    """Order k's share of a tile's gradients: recomputes its states and its adjoint, writes its dB, dC and step-size
    gradients (atomic adds over channel blocks for the per-position ones; this tile's partial sums for the
    per-channel ones, a row of SMALL) and returns its du."""
    step, raw, a_nat, decay, drive, drive_in, read_out = _order_inputs(
        u, pos, p_ok, m, b, d, d_ok, dim, k, DELTA, PROJ, DBIAS, A, BM, CM, sdt_b, sdt_l, sdt_k, sdt_d, sp_k, sp_d,
        sp_r, sb_b, sb_l, sb_k, sc_b, sc_l, sc_k, proj_rank, HAS_PROJ, HAS_BIAS, SOFTPLUS)
    forward, segment, n_segments, line_ok = _lines(rows, cols, r_ok, c_ok, height, width, ti, tj, n_th, n_tw, SPEC)
    base = ((b * 4 + k) * n_seg) * dim
    states = _order_states(decay, drive, forward, segment, line_ok, BSTATE, base, d, d_ok, dim, SPEC)
    # a_{t+1}: the next position along each line, inside the segment
    fwd2 = _along(forward, SPEC)
    if SPEC & 1:
        local = (cols - tj * seg_w)[None, :]
        last = tl.where(fwd2, local == seg_w - 1, local == 0)
        pos_next = pos + tl.where(fwd2, 1, -1)
    else:
        local = (rows - ti * seg_h)[:, None]
        last = tl.where(fwd2, local == seg_h - 1, local == 0)
        pos_next = pos + tl.where(fwd2, width, -width)
    next_ok = p_ok & (last == 0)
    step_next, _, _, decay_next, _, _, _ = _order_inputs(
        u, pos_next, next_ok, next_ok[:, :, None] & d_ok[None, None, :], b, d, d_ok, dim, k, DELTA, PROJ, DBIAS, A,
        BM, CM, sdt_b, sdt_l, sdt_k, sdt_d, sp_k, sp_d, sp_r, sb_b, sb_l, sb_k, sc_b, sc_l, sc_k, proj_rank,
        HAS_PROJ, HAS_BIAS, SOFTPLUS)
    after = tl.load(ASTATE + base + segment[:, None] * dim + d[None, :],
                    mask=(line_ok & (segment + 1 < n_segments))[:, None] & d_ok[None, :], other=0.)
    # the adjoint runs against the order: lines scanned the other way (modes 0 <-> 1; snake lines by their flag)
    adjoint = _line_scan(decay_next, dy * read_out[:, :, None], _along(after, SPEC), tl.expand_dims(fwd2 == 0, 2),
                         SPEC & 1, (SPEC >> 2) ^ (1 - (SPEC >> 3)))
    decayed_prev = states - drive  # a_t h_{t-1}
    grad_step = adjoint * (a_nat[None, None, :] * decayed_prev + u * drive_in[:, :, None])
    if SOFTPLUS:
        grad_step = grad_step * tl.sigmoid(raw)
    grad_step = tl.where(m, grad_step, 0.)
    # per position, summed over this program's channels: dB, dC (fp32 [2, batch, L, 4]) and the projections' grads
    bc_offsets = (b * seq_len + pos) * 4 + k
    tl.atomic_add(DBC + bc_offsets, tl.sum(adjoint * step * u, axis=2), mask=p_ok)
    tl.atomic_add(DBC + dc_off + bc_offsets, tl.sum(dy * states, axis=2), mask=p_ok)
    # per channel, summed over the tile: dA, d(bias), (dt_proj)
    small = SMALL + row * small_row
    ch = k * dim + d
    tl.store(small + ch, tl.sum(tl.sum(adjoint * decayed_prev * step, axis=0), axis=0), mask=d_ok)
    if HAS_BIAS:
        tl.store(small + bias_off + ch, tl.sum(tl.sum(grad_step, axis=0), axis=0), mask=d_ok)
    if HAS_PROJ:
        for r in range(proj_rank):
            weight = tl.load(PROJ + k * sp_k + d * sp_d + r * sp_r, mask=d_ok, other=0.).to(tl.float32)
            low = tl.load(DELTA + b * sdt_b + pos * sdt_l + k * sdt_k + r * sdt_d, mask=p_ok, other=0.).to(
                tl.float32)
            tl.atomic_add(DLOW + bc_offsets * proj_rank + r, tl.sum(grad_step * weight[None, None, :], axis=2),
                          mask=p_ok)
            tl.store(small + proj_off + ch * proj_rank + r,
                     tl.sum(tl.sum(grad_step * low[:, :, None], axis=0), axis=0), mask=d_ok)
    else:
        tl.store(DDELTA + b * sdd_b + pos[:, :, None] * sdd_l + k * sdd_k + d[None, None, :] * sdd_d,
                 grad_step.to(DDELTA.dtype.element_ty), mask=m)
    return adjoint * step * drive_in[:, :, None]


@triton.jit
def _tile_bwd_kernel(X, DY, DELTA, PROJ, A, BM, CM, DSKIP, DBIAS, BSTATE, ASTATE, DX, DDELTA, DBC, DLOW, SMALL,
                     sx_b, sx_l, sx_d, sy_b, sy_l, sy_d, sg_b, sg_l, sg_d, sdt_b, sdt_l, sdt_k, sdt_d,
                     sdd_b, sdd_l, sdd_k, sdd_d, sb_b, sb_l, sb_k, sc_b, sc_l, sc_k, sp_k, sp_d, sp_r,
                     height, width, dim, n_dblocks, seg_h, seg_w, n_th, n_tw, n_seg, proj_rank, dc_off, small_row,
                     bias_off, skip_off, proj_off,
                     SPECS: tl.constexpr, HAS_PROJ: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                     SOFTPLUS: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_D: tl.constexpr):
    b, ti, tj, rows, cols, r_ok, c_ok, d, d_ok, pos, p_ok, m = _tile_of(n_dblocks, n_th, n_tw, seg_h, seg_w, width,
                                                                       dim, TILE_H, TILE_W, BLOCK_D)
    pos3 = pos[:, :, None]
    row = b * n_th * n_tw + ti * n_tw + tj  # this tile's row of the partial sums
    u = tl.load(X + b * sx_b + pos3 * sx_l + d[None, None, :] * sx_d, mask=m, other=0.).to(tl.float32)
    dy = tl.load(DY + b * sy_b + pos3 * sy_l + d[None, None, :] * sy_d, mask=m, other=0.).to(tl.float32)
    grad_u = tl.zeros([TILE_H, TILE_W, BLOCK_D], dtype=tl.float32)
    skip = tl.zeros([BLOCK_D], dtype=tl.float32)
    for k in tl.static_range(4):
        grad_u += _order_backward(
            u, dy, pos, p_ok, m, rows, cols, r_ok, c_ok, height, width, ti, tj, n_th, n_tw, seg_h, seg_w, b, d, d_ok,
            dim, k, height * width, row, DELTA, PROJ, DBIAS, A, BM, CM, BSTATE, ASTATE, DDELTA, DBC, DLOW, SMALL,
            sdt_b, sdt_l, sdt_k, sdt_d, sdd_b, sdd_l, sdd_k, sdd_d, sp_k, sp_d, sp_r, sb_b, sb_l, sb_k,
            sc_b, sc_l, sc_k, n_seg, proj_rank, dc_off, small_row, bias_off, proj_off,
            HAS_PROJ, HAS_BIAS, SOFTPLUS, (SPECS >> (4 * k)) & 15)
        if HAS_D:
            skip += tl.load(DSKIP + k * dim + d, mask=d_ok, other=0.).to(tl.float32)
    if HAS_D:  # y = sum_k (C_k h_k + D_k u): du gains dy sum_k D_k, and dD_k = sum dy u (the same for every k)
        grad_u += dy * skip[None, None, :]
        tl.store(SMALL + row * small_row + skip_off + d, tl.sum(tl.sum(dy * u, axis=0), axis=0), mask=d_ok)
    tl.store(DX + b * sg_b + pos3 * sg_l + d[None, None, :] * sg_d, grad_u.to(DX.dtype.element_ty), mask=m)


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
    if torch.compiler.is_compiling() or not all(type(v) is int for v in (height, width, dim)):  # traced: uncached
        return _cached_tiling.__wrapped__(height, width, dim, tuple(sorted(TILE_OVERRIDES.items())))
    return _cached_tiling(height, width, dim, tuple(sorted(TILE_OVERRIDES.items())))


def _spec(row_wise: bool, far_side: bool, mode: int) -> int:
    return int(row_wise) | int(far_side) << 1 | mode << 2


# scan_orders' two kinds, order by order: cross = row-major, column-major, both reversed; continuous = snake rows
# from the top and from the bottom (even lines left to right), snake columns from the left and from the right (even
# lines bottom to top)
ORDER_SPECS = {
    'cross': sum(spec << 4 * k for k, spec in enumerate(
        (_spec(True, False, 0), _spec(False, False, 0), _spec(True, True, 1), _spec(False, True, 1)))),
    'continuous': sum(spec << 4 * k for k, spec in enumerate(
        (_spec(True, False, 2), _spec(True, True, 2), _spec(False, False, 3), _spec(False, True, 3)))),
}


class _Plan:
    """Grids and launch slots of one call signature (forward: boundary and tile passes; backward: their adjoints)."""

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
_TILE_BWD = Kernel(_tile_bwd_kernel)


class _Problem(NamedTuple):
    """A call's tensors as the kernels read them: the map and per-position tensors as [batch, L, ...]."""
    u: torch.Tensor  # [batch, L, dim]
    delta: torch.Tensor  # [batch, L, 4, dim] or the projections [batch, L, 4, R]
    proj: Optional[torch.Tensor]  # [4, dim, R]
    A: torch.Tensor  # [4 dim]
    B: torch.Tensor  # [batch, L, 4]
    C: torch.Tensor
    D: Optional[torch.Tensor]
    bias: Optional[torch.Tensor]

    @staticmethod
    def of(x, delta, A, B, C, D, delta_bias, delta_proj) -> '_Problem':
        batch, height, width, dim = x.shape
        seq_len = height * width
        return _Problem(x.reshape(batch, seq_len, dim), delta, delta_proj, A.reshape(-1),
                        B.reshape(batch, seq_len, 4), C.reshape(batch, seq_len, 4), D, delta_bias)

    def common_args(self) -> tuple:
        """Strides of delta, B, C and the projection as the kernels take them."""
        proj_strides = self.proj.stride() if self.proj is not None else (0, 0, 0)
        return (*self.delta.stride(), *self.B.stride(), *self.C.stride(), *proj_strides)

    def flags(self, kind: str, softplus: bool) -> dict:
        return dict(SPECS=ORDER_SPECS[kind], HAS_PROJ=self.proj is not None, HAS_BIAS=self.bias is not None,
                    SOFTPLUS=softplus)

    @property
    def rank(self) -> int:
        return self.proj.shape[2] if self.proj is not None else 1


def _boundaries(plan: _Plan, slot: list, p: _Problem, per_channel: torch.Tensor, per_step: torch.Tensor,
                order: torch.Tensor, flags: dict, adjoint: bool) -> torch.Tensor:
    """The boundary pass: [batch, 4, n_seg, dim] fp32, the states at segment boundaries (forward: ``per_channel``
    is the map, ``per_step`` B) or the adjoint's carries (``per_channel`` dy, ``per_step`` C)."""
    batch, seq_len, dim = per_channel.shape
    tiles = plan.tiles
    out = torch.empty((batch, 4, plan.n_seg, dim), device=per_channel.device, dtype=torch.float32)
    _BOUNDARY.launch(slot, plan.boundary_grid, (
        per_channel, p.delta, _or(p.proj, p.A), p.A, per_step, _or(p.bias, p.A), order, out,
        *per_channel.stride(), *p.delta.stride(), *per_step.stride(), *(p.common_args()[-3:]),
        seq_len, dim, triton.cdiv(dim, tiles.boundary_d), triton.cdiv(seq_len, tiles.boundary_chunk),
        tiles.seg_h, tiles.seg_w, plan.n_seg, p.rank),
        dict(flags, ADJOINT=adjoint, BLOCK_D=tiles.boundary_d, CHUNK=tiles.boundary_chunk), tiles.boundary_warps,
        None)
    return out


def merged_forward(x, delta, A, B, C, D, delta_bias, softplus: bool, order: torch.Tensor, kind: str,
                   out_dtype: torch.dtype, delta_proj, tiles: _Tiling):
    """The merged output [batch, H, W, dim] and the boundary states (kept for the backward pass)."""
    batch, height, width, dim = x.shape
    p = _Problem.of(x, delta, A, B, C, D, delta_bias, delta_proj)
    out = torch.empty((batch, height, width, dim), device=x.device, dtype=out_dtype)
    out_flat = out.view(batch, height * width, dim)
    key = ('fwd', signature((*p, out_flat)), kind, softplus, x.device, tiles)
    plan = cached_plan(_PLANS, key, lambda: _Plan(x, [('x', p.u), ('delta', p.delta), ('B', p.B), ('C', p.C),
                                                      ('the output', out_flat)], tiles))
    if batch == 0:
        return out, torch.empty((0, 4, plan.n_seg, dim), device=x.device, dtype=torch.float32)
    flags = p.flags(kind, softplus)
    bstate = _boundaries(plan, plan.slots[0], p, p.u, p.B, order, flags, False)
    _TILE.launch(plan.slots[1], plan.tile_grid, (
        p.u, p.delta, _or(p.proj, p.A), p.A, p.B, p.C, _or(p.D, p.A), _or(p.bias, p.A), bstate, out_flat,
        *p.u.stride(), *p.common_args(), *out_flat.stride(),
        height, width, dim, triton.cdiv(dim, tiles.block_d), tiles.seg_h, tiles.seg_w, plan.n_th, plan.n_tw,
        plan.n_seg, p.rank),
        dict(flags, HAS_D=D is not None, TILE_H=tiles.tile_h, TILE_W=tiles.tile_w, BLOCK_D=tiles.block_d),
        tiles.num_warps, None)
    return out, bstate


def _small_layout(dim: int, has_bias: bool, has_d: bool, rank: int, has_proj: bool):
    """Row length and offsets of the per-channel partial sums: dA [4 dim], d(bias) [4 dim], dD [dim] (one for the
    four orders), d(dt_proj) [4 dim R]."""
    bias_off = 4 * dim
    skip_off = bias_off + (4 * dim if has_bias else 0)
    proj_off = skip_off + (dim if has_d else 0)
    return proj_off + (4 * dim * rank if has_proj else 0), bias_off, skip_off, proj_off


def merged_backward(dy, x, delta, A, B, C, D, delta_bias, softplus: bool, order, kind: str, delta_proj, bstate,
                    tiles: _Tiling):
    """Gradients of the merged scan as the kernels leave them: dx, d(delta) (or of the projections) in its input's
    dtype, dB and dC together (fp32 [2, batch, L, 4]) and the per-channel sums (fp32, see ``_small_layout``);
    ``split_grads`` makes the rest into the inputs' gradients."""
    batch, height, width, dim = x.shape
    seq_len = height * width
    p = _Problem.of(x, delta, A, B, C, D, delta_bias, delta_proj)
    dy_flat = dy.reshape(batch, seq_len, dim)
    dx = torch.empty((batch, height, width, dim), device=x.device, dtype=x.dtype)
    dx_flat = dx.view(batch, seq_len, dim)
    # dB and dC (fp32 [2, batch, L, 4]) and the projections' gradient are sums over channel blocks: atomic adds
    dbc = torch.zeros((2, batch, seq_len, 4), device=x.device, dtype=torch.float32)
    if delta_proj is not None:
        ddelta = dlow = torch.zeros((batch, seq_len, 4, p.rank), device=x.device, dtype=torch.float32)
    else:
        ddelta = dlow = torch.empty((batch, seq_len, 4, dim), device=x.device, dtype=delta.dtype)
    small_row, bias_off, skip_off, proj_off = _small_layout(dim, delta_bias is not None, D is not None, p.rank,
                                                            delta_proj is not None)
    key = ('bwd', signature((*p, dy_flat, ddelta)), kind, softplus, x.device, tiles)
    plan = cached_plan(_PLANS, key, lambda: _Plan(x, [('x', p.u), ('delta', p.delta), ('dy', dy_flat)], tiles))
    small = torch.empty((batch * plan.n_th * plan.n_tw, small_row), device=x.device, dtype=torch.float32)
    if batch:
        flags = p.flags(kind, softplus)
        carries = _boundaries(plan, plan.slots[0], p, dy_flat, p.C, order, flags, True)
        _TILE_BWD.launch(plan.slots[1], plan.tile_grid, (
            p.u, dy_flat, p.delta, _or(p.proj, p.A), p.A, p.B, p.C, _or(p.D, p.A), _or(p.bias, p.A), bstate, carries,
            dx_flat, ddelta, dbc, dlow, small,
            *p.u.stride(), *dy_flat.stride(), *dx_flat.stride(), *p.delta.stride(), *ddelta.stride(),
            *p.B.stride(), *p.C.stride(), *(p.common_args()[-3:]),
            height, width, dim, triton.cdiv(dim, tiles.block_d), tiles.seg_h, tiles.seg_w, plan.n_th, plan.n_tw,
            plan.n_seg, p.rank, batch * seq_len * 4, small_row, bias_off, skip_off, proj_off),
            dict(flags, HAS_D=D is not None, TILE_H=tiles.tile_h, TILE_W=tiles.tile_w, BLOCK_D=tiles.block_d),
            tiles.num_warps, None)
    return dx, ddelta.to(delta.dtype), dbc, small.sum(0)


def split_grads(dbc, sums, A, B, C, D, delta_bias, delta_proj):
    """dA, dB, dC, dD, d(bias), d(dt_proj) in their inputs' dtypes and shapes (None for absent inputs)."""
    dim = A.shape[0] // 4
    _, bias_off, skip_off, proj_off = _small_layout(dim, delta_bias is not None, D is not None,
                                                    delta_proj.shape[2] if delta_proj is not None else 1,
                                                    delta_proj is not None)
    dA = sums[:4 * dim].view(A.shape).to(A.dtype)
    dbias = sums[bias_off:bias_off + 4 * dim].to(delta_bias.dtype) if delta_bias is not None else None
    dD = sums[skip_off:skip_off + dim].repeat(4).to(D.dtype) if D is not None else None
    dproj = sums[proj_off:].view(delta_proj.shape).to(delta_proj.dtype) if delta_proj is not None else None
    return dA, dbc[0].view(B.shape).to(B.dtype), dbc[1].view(C.shape).to(C.dtype), dD, dbias, dproj


# custom ops: the merged kernels inside torch.compile graphs (fake implementations give the shapes)


@torch.library.custom_op('visionattn::merged_cross_scan_fwd', mutates_args=())
def _merged_fwd_op(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], delta_proj: Optional[torch.Tensor],
                   order: torch.Tensor, kind: str, softplus: bool, out_dtype: torch.dtype
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    return merged_forward(x, delta, A, B, C, D, delta_bias, softplus, order, kind, out_dtype, delta_proj,
                          tiling(*x.shape[1:]))


@_merged_fwd_op.register_fake
def _(x, delta, A, B, C, D, delta_bias, delta_proj, order, kind, softplus, out_dtype):
    batch, height, width, dim = x.shape
    tiles = tiling(height, width, dim)
    n_seg = height * width // min(tiles.seg_h, tiles.seg_w)
    return x.new_empty(x.shape, dtype=out_dtype), x.new_empty((batch, 4, n_seg, dim), dtype=torch.float32)


@torch.library.custom_op('visionattn::merged_cross_scan_bwd', mutates_args=())
def _merged_bwd_op(dy: torch.Tensor, x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                   delta_proj: Optional[torch.Tensor], order: torch.Tensor, kind: str, softplus: bool,
                   bstate: torch.Tensor) -> List[torch.Tensor]:
    dx, ddelta, dbc, sums = merged_backward(dy, x, delta, A, B, C, D, delta_bias, softplus, order, kind, delta_proj,
                                            bstate, tiling(*x.shape[1:]))
    return [dx, ddelta, dbc, sums]


@_merged_bwd_op.register_fake
def _(dy, x, delta, A, B, C, D, delta_bias, delta_proj, order, kind, softplus, bstate):
    batch, height, width, dim = x.shape
    rank = delta_proj.shape[2] if delta_proj is not None else 1
    small_row, _, _, _ = _small_layout(dim, delta_bias is not None, D is not None, rank, delta_proj is not None)
    f32 = dict(dtype=torch.float32)
    return [x.new_empty(x.shape), delta.new_empty(delta.shape), x.new_empty((2, batch, height * width, 4), **f32),
            x.new_empty((small_row,), **f32)]


def _setup_context(ctx, inputs, output):
    x, delta, A, B, C, D, delta_bias, delta_proj, order, kind, softplus, _ = inputs
    ctx.save_for_backward(x, delta, A, B, C, D, delta_bias, delta_proj, order, output[1])
    ctx.kind, ctx.softplus = kind, softplus
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, dy, _):
    x, delta, A, B, C, D, delta_bias, delta_proj, order, bstate = ctx.saved_tensors
    dx, ddelta, dbc, sums = _merged_bwd_op(dy, x, delta, A, B, C, D, delta_bias, delta_proj, order, ctx.kind,
                                           ctx.softplus, bstate)
    dA, dB, dC, dD, dbias, dproj = split_grads(dbc, sums, A, B, C, D, delta_bias, delta_proj)
    return dx, ddelta, dA, dB, dC, dD, dbias, dproj, None, None, None, None


_merged_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class _MergedCrossScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, delta, A, B, C, D, delta_bias, delta_proj, order, kind, softplus, out_dtype, tiles):
        out, bstate = merged_forward(x, delta, A, B, C, D, delta_bias, softplus, order, kind, out_dtype, delta_proj,
                                     tiles)
        ctx.save_for_backward(x, delta, A, B, C, D, delta_bias, delta_proj, order, bstate)
        ctx.kind, ctx.softplus, ctx.tiles = kind, softplus, tiles
        return out

    @staticmethod
    @first_order_only('cross_selective_scan')
    def backward(ctx, dy):
        x, delta, A, B, C, D, delta_bias, delta_proj, order, bstate = ctx.saved_tensors
        dx, ddelta, dbc, sums = merged_backward(dy, x, delta, A, B, C, D, delta_bias, ctx.softplus, order, ctx.kind,
                                                delta_proj, bstate, ctx.tiles)
        dA, dB, dC, dD, dbias, dproj = split_grads(dbc, sums, A, B, C, D, delta_bias, delta_proj)
        return dx, ddelta, dA, dB, dC, dD, dbias, dproj, None, None, None, None, None


def merged_cross_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                      D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], softplus: bool,
                      order: torch.Tensor, kind: str, out_dtype: torch.dtype,
                      delta_proj: Optional[torch.Tensor] = None, needs_grad: bool = False) -> Optional[torch.Tensor]:
    """SS2D's scan with state size 1, the orders merged on chip, forward and (``needs_grad``) backward; None when
    the map's sides have no suitable tiling (the caller then runs the orders one by one). Shapes as in
    :func:`visionattn.ops.cross_selective_scan`; with ``delta_proj`` [K, dim, R], ``delta`` holds the rank-R
    projections [batch, L, K, R]."""
    batch, height, width, dim = x.shape
    tiles = tiling(height, width, dim)
    if tiles is None:
        return None
    if torch.compiler.is_compiling():  # through the custom ops (eager: a plain autograd.Function, less host time)
        return _merged_fwd_op(x, delta, A, B, C, D, delta_bias, delta_proj, order, kind, softplus, out_dtype)[0]
    if needs_grad:
        return _MergedCrossScan.apply(x, delta, A, B, C, D, delta_bias, delta_proj, order, kind, softplus, out_dtype,
                                      tiles)
    return merged_forward(x, delta, A, B, C, D, delta_bias, softplus, order, kind, out_dtype, delta_proj, tiles)[0]
