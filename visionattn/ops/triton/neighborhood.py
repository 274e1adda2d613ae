"""Fused neighborhood attention in Triton: forward, backward and the rpb gradient, for 1-D, 2-D and 3-D.

Every problem is lifted to 3-D (missing leading axes get length 1 and kernel 1). A dilation group is a strided
sub-grid, so each program works on one (batch, head, dilation group) in undilated group coordinates. Per-axis windows
``[start, end)`` come from small host tables (``ops.reference.neighborhood.axis_windows``), so the kernels know
nothing of borders, stride leaders or causality beyond "key inside the query's window on every axis".

- Forward: a spatial tile of queries (``T0 x T1 x T2``, flattened to BLOCK_M rows) loops over key tiles covering the
  union of its windows (windows are monotone in the query coordinate, so the union is a box), masks pairs outside
  each query's window, adds rpb and runs an online softmax; it saves the log-sum-exp (base 2).
- rpb (RPB_MODE 2): a gather of rpb by relative offset for every [BLOCK_M, BLOCK_N] pair costs more than the tile's
  matmuls at NAT's head dim 32 (and the registers to index it). Tiles whose windows have the same shape (all interior
  tiles) see the same offsets in every inner iteration, so the host keeps, per class of tiles, the flat rpb index of
  each pair (static), and each call gathers them once into blocks of rpb * log2(e), -inf outside the windows; the
  kernels add a block with one contiguous load, mask included. Problems whose blocks outgrow BIAS_TABLE_LIMIT (big
  3-D windows) gather rpb in the kernels (RPB_MODE 1).
- Backward: a dQ pass like the forward, which also computes delta = rowsum(dO * O), then a dK/dV pass over key tiles
  whose loop covers the box of queries that can see the tile (host table). With an rpb that needs a gradient the dQ
  pass adds dS into fp32 bins [heads, N, (2k-1)^d] by relative offset with atomics (small enough for L2; 3-D
  problems, whose offset table is much larger than a window, bin by window slot), summed over queries afterwards.
  Gradients are written in the inputs' layout.

Host side: a plan per call signature (shapes, strides, alignment) holds every integer argument and, after the first
launch, the compiled kernels' handles (``launch.Kernel``). Eager calls go through an ``autograd.Function``; under
torch.compile the op is ``torch.ops.visionattn.na_fwd`` / ``na_bwd`` (torch.library custom ops with fake
implementations), so FX and Dynamo treat it as opaque.
"""
import functools
import math
from typing import List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ..checks import first_order_only
from ..reference.neighborhood import axis_windows, neighbor_table
from ._common import (
    LOG2E,
    LOG2E_C,
    TileConfig,
    check_head_dims,
    check_int32_span,
    contiguous_strides,
    flat_grid,
    pow2_clamp,
    unit_last,
)
from .launch import Kernel, aligned

__all__ = ['neighborhood_attention_triton', 'na_configs']



@triton.jit
def _window_rows(st_ptr, en_ptr, g, width, p, valid):
    start = tl.load(st_ptr + g * width + p, mask=valid, other=0)
    end = tl.load(en_ptr + g * width + p, mask=valid, other=0)
    return start, end


@triton.jit
def _windows(ST0, EN0, ST1, EN1, ST2, EN2, g0, g1, g2, W0, W1, W2, p0, p1, p2, valid):
    # [start, end) per axis of each query's window (group coordinates); the empty window for a masked query.
    st0, en0 = _window_rows(ST0, EN0, g0, W0, p0, valid)
    st1, en1 = _window_rows(ST1, EN1, g1, W1, p1, valid)
    st2, en2 = _window_rows(ST2, EN2, g2, W2, p2, valid)
    return st0, en0, st1, en1, st2, en2


@triton.jit
def _tile_rows(a0, a1, a2, S1: tl.constexpr, S2: tl.constexpr, ROWS: tl.constexpr):
    # Row index and per-axis coordinates of the rows of a (., S1, S2) tile at (a0, a1, a2), flattened row-major.
    offs = tl.arange(0, ROWS)
    return offs, a0 + offs // (S1 * S2), a1 + (offs // S2) % S1, a2 + offs % S2


@triton.jit
def _key_box(ST0, EN0, ST1, EN1, ST2, EN2, g0, g1, g2, W0, W1, W2, a0, a1, a2, lg0, lg1, lg2,
             T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr):
    # The box [lo, hi) of keys that any query of the (T0, T1, T2) tile at (a0, a1, a2) can see: windows are
    # monotone in the query coordinate, so it runs from the first query's start to the last query's end.
    lo0 = tl.load(ST0 + g0 * W0 + a0)
    lo1 = tl.load(ST1 + g1 * W1 + a1)
    lo2 = tl.load(ST2 + g2 * W2 + a2)
    hi0 = tl.load(EN0 + g0 * W0 + tl.minimum(a0 + T0, lg0) - 1)
    hi1 = tl.load(EN1 + g1 * W1 + tl.minimum(a1 + T1, lg1) - 1)
    hi2 = tl.load(EN2 + g2 * W2 + tl.minimum(a2 + T2, lg2) - 1)
    return lo0, lo1, lo2, hi0, hi1, hi2


@triton.jit
def _offsets(b, h, c0, c1, c2, s_b, s_0, s_1, s_2, s_h):
    # Element offset of token (c0, c1, c2) (image coordinates) of batch b and head h in a [B, *spatial, H, D] layout;
    # the spatial part is summed in int32 before the int64 batch offset joins it (fewer 64-bit ops per row).
    return b * s_b + h * s_h + (c0 * s_0 + c1 * s_1 + c2 * s_2)


@triton.jit
def _inside(kc0, kc1, kc2, st0, en0, st1, en1, st2, en2, N_DIM: tl.constexpr):
    # [M, N] pairs whose key lies in the query's window on every real axis (lifted axes are skipped). No key bound is
    # needed: every window ends at or before its group's length, and a masked-out query has the empty window [0, 0).
    inside = (kc2[None, :] >= st2[:, None]) & (kc2[None, :] < en2[:, None])
    if N_DIM >= 2:
        inside = inside & (kc1[None, :] >= st1[:, None]) & (kc1[None, :] < en1[:, None])
    if N_DIM >= 3:
        inside = inside & (kc0[None, :] >= st0[:, None]) & (kc0[None, :] < en0[:, None])
    return inside


@triton.jit
def _program(NT, H, L0, L1, L2, D0, D1, D2):
    # The program's tile index, batch, head, dilation group and the group's lengths. One flattened grid axis, tiles
    # fastest (CUDA caps the second axis at 65535 < batch * heads * groups).
    pid_t = tl.program_id(0) % NT
    pid_bhg = tl.program_id(0) // NT
    n_groups = D0 * D1 * D2
    g = pid_bhg % n_groups
    bh = pid_bhg // n_groups
    h = bh % H
    b = (bh // H).to(tl.int64)
    g2 = g % D2
    g1 = (g // D2) % D1
    g0 = g // (D1 * D2)
    lg0 = (L0 - g0 + D0 - 1) // D0
    lg1 = (L1 - g1 + D1 - 1) // D1
    lg2 = (L2 - g2 + D2 - 1) // D2
    return pid_t, b, h, g, g0, g1, g2, lg0, lg1, lg2


@triton.jit
def _bias_blocks(TAB, CLS, tab_off, tab_head, tab_cls, g, n_tiles, pid_t, h, offs_m, offs_n, BLOCK_N: tl.constexpr):
    # Pointers to this program's [BLOCK_M, BLOCK_N] bias blocks, one per inner-loop tile (RPB_MODE 2): the host
    # gathers rpb * log2(e) for every (query, key) pair inside a window and -inf elsewhere, once per call, for each
    # class of tiles that share their windows' shape (all interior tiles are one class).
    cls = tl.load(CLS + g * n_tiles + pid_t)
    return TAB + tab_off + h * tab_head + cls * tab_cls + offs_m[:, None] * BLOCK_N + offs_n[None, :]


@triton.jit
def _rel_index(c0, c1, c2, KS1, KS2):
    # Flat rpb index of (key - query + k - 1) per axis = rel(key) - rel(query) + centre (the centre is added once).
    return (c0 * (2 * KS1 - 1) + c1) * (2 * KS2 - 1) + c2


@triton.jit
def _rpb_index(kc0, kc1, kc2, p0, p1, p2, KS0, KS1, KS2):
    # [M, N] flat offset of (key - query) in the rpb table, from its centre; and the table's size per head.
    r_idx = _rel_index(kc0, kc1, kc2, KS1, KS2)[None, :] - _rel_index(p0, p1, p2, KS1, KS2)[:, None]
    return r_idx, (2 * KS0 - 1) * (2 * KS1 - 1) * (2 * KS2 - 1)


@triton.jit
def _add_rpb(s, RPB, h, r_idx, n_rel, inside):
    # Scores (base 2) plus rpb[h, key - query] * log2(e): a gather from the fp32 table, scaled in an FMA with the add.
    return s + tl.load(RPB + h * n_rel + r_idx + (n_rel - 1) // 2, mask=inside, other=0.0) * LOG2E_C


@triton.jit
def _na_fwd_kernel(
        Q, K, V, Out, LSE, RPB, TAB, CLS,
        ST0, EN0, ST1, EN1, ST2, EN2,
        sq_b, sq_0, sq_1, sq_2, sq_h, sk_b, sk_0, sk_1, sk_2, sk_h, sv_b, sv_0, sv_1, sv_2, sv_h,
        so_b, so_0, so_1, so_2, so_h,
        H, L0, L1, L2, D0, D1, D2, W0, W1, W2, NT, NT1, NT2, KS0, KS1, KS2, tab_off, tab_head, tab_cls, qk_scale,
        HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr, U0: tl.constexpr, U1: tl.constexpr,
        U2: tl.constexpr, RPB_MODE: tl.constexpr, N_DIM: tl.constexpr, PRECISION: tl.constexpr):
    BLOCK_M: tl.constexpr = T0 * T1 * T2
    BLOCK_N: tl.constexpr = U0 * U1 * U2
    check_head_dims(HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV)
    tl.static_assert(BLOCK_M & (BLOCK_M - 1) == 0, 'the query tile must be a power of two')
    tl.static_assert(BLOCK_N & (BLOCK_N - 1) == 0, 'the key tile must be a power of two')
    pid_t, b, h, g, g0, g1, g2, lg0, lg1, lg2 = _program(NT, H, L0, L1, L2, D0, D1, D2)
    a2 = (pid_t % NT2) * T2
    a1 = ((pid_t // NT2) % NT1) * T1
    a0 = (pid_t // (NT1 * NT2)) * T0
    if (a0 >= lg0) | (a1 >= lg1) | (a2 >= lg2):
        return

    offs_m, p0, p1, p2 = _tile_rows(a0, a1, a2, T1, T2, BLOCK_M)
    m_ok = (p0 < lg0) & (p1 < lg1) & (p2 < lg2)
    st0, en0, st1, en1, st2, en2 = _windows(ST0, EN0, ST1, EN1, ST2, EN2, g0, g1, g2, W0, W1, W2, p0, p1, p2, m_ok)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = offs_d < HEAD_DIM
    dv_ok = offs_dv < HEAD_DIM_V
    q_rows = _offsets(b, h, g0 + p0 * D0, g1 + p1 * D1, g2 + p2 * D2, sq_b, sq_0, sq_1, sq_2, sq_h)
    q = tl.load(Q + q_rows[:, None] + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    lo0, lo1, lo2, hi0, hi1, hi2 = _key_box(ST0, EN0, ST1, EN1, ST2, EN2, g0, g1, g2, W0, W1, W2, a0, a1, a2,
                                            lg0, lg1, lg2, T0, T1, T2)
    offs_n, n0, n1, n2 = _tile_rows(0, 0, 0, U1, U2, BLOCK_N)
    m_i = tl.full([BLOCK_M], float('-inf'), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    if RPB_MODE == 2:
        bias = _bias_blocks(TAB, CLS, tab_off, tab_head, tab_cls, g, NT, pid_t, h, offs_m, offs_n, BLOCK_N)
    nb1 = (hi1 - lo1 + U1 - 1) // U1
    nb2 = (hi2 - lo2 + U2 - 1) // U2
    n_iter = ((hi0 - lo0 + U0 - 1) // U0) * nb1 * nb2
    # One flat loop over the box's key tiles (pipelines better than three nested dynamic loops).
    for it in range(0, n_iter):
        k0 = lo0 + (it // (nb1 * nb2)) * U0
        k1 = lo1 + ((it // nb2) % nb1) * U1
        k2 = lo2 + (it % nb2) * U2
        kc0 = k0 + n0
        kc1 = k1 + n1
        kc2 = k2 + n2
        n_ok = (kc0 < hi0) & (kc1 < hi1) & (kc2 < hi2)
        k_rows = _offsets(b, h, g0 + kc0 * D0, g1 + kc1 * D1, g2 + kc2 * D2, sk_b, sk_0, sk_1, sk_2, sk_h)
        kt = tl.load(K + k_rows[None, :] + offs_d[:, None], mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        v_rows = _offsets(b, h, g0 + kc0 * D0, g1 + kc1 * D1, g2 + kc2 * D2, sv_b, sv_0, sv_1, sv_2, sv_h)
        vv = tl.load(V + v_rows[:, None] + offs_dv[None, :], mask=n_ok[:, None] & dv_ok[None, :], other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        if RPB_MODE == 2:
            s = s + tl.load(bias + it * (BLOCK_M * BLOCK_N))
        else:
            inside = _inside(kc0, kc1, kc2, st0, en0, st1, en1, st2, en2, N_DIM)
            if RPB_MODE == 1:
                r_idx, n_rel = _rpb_index(kc0, kc1, kc2, p0, p1, p2, KS0, KS1, KS2)
                s = _add_rpb(s, RPB, h, r_idx, n_rel, inside)
            s = tl.where(inside, s, float('-inf'))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float('-inf'), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(vv.dtype), vv, input_precision=PRECISION)
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    o_rows = _offsets(b, h, g0 + p0 * D0, g1 + p1 * D1, g2 + p2 * D2, so_b, so_0, so_1, so_2, so_h)
    tl.store(Out + o_rows[:, None] + offs_dv[None, :], out.to(Out.dtype.element_ty),
             mask=m_ok[:, None] & dv_ok[None, :])
    tok = ((g0 + p0 * D0) * L1 + (g1 + p1 * D1)) * L2 + (g2 + p2 * D2)
    tl.store(LSE + (b * H + h) * (L0 * L1 * L2) + tok, m_i + tl.math.log2(l_safe), mask=m_ok)


@triton.jit
def _na_bwd_dkdv_kernel(
        Q, K, V, DO, LSE, DELTA, DK, DV, RPB, TAB, CLS,
        ST0, EN0, ST1, EN1, ST2, EN2, QLO0, QHI0, QLO1, QHI1, QLO2, QHI2,
        sq_b, sq_0, sq_1, sq_2, sq_h, sk_b, sk_0, sk_1, sk_2, sk_h, sv_b, sv_0, sv_1, sv_2, sv_h,
        sdo_b, sdo_0, sdo_1, sdo_2, sdo_h, sdk_b, sdk_0, sdk_1, sdk_2, sdk_h, sdv_b, sdv_0, sdv_1, sdv_2, sdv_h,
        H, L0, L1, L2, D0, D1, D2, W0, W1, W2, NT0, NT1, NT2, KS0, KS1, KS2, tab_off, tab_head, tab_cls, qk_scale,
        scale, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr, U0: tl.constexpr, U1: tl.constexpr,
        U2: tl.constexpr, RPB_MODE: tl.constexpr, N_DIM: tl.constexpr, PRECISION: tl.constexpr):
    # Programs own key tiles of shape U; the inner loop walks query tiles of shape T.
    BLOCK_M: tl.constexpr = T0 * T1 * T2
    BLOCK_N: tl.constexpr = U0 * U1 * U2
    check_head_dims(HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV)
    tl.static_assert(BLOCK_M & (BLOCK_M - 1) == 0, 'the query tile must be a power of two')
    tl.static_assert(BLOCK_N & (BLOCK_N - 1) == 0, 'the key tile must be a power of two')
    pid_t, b, h, g, g0, g1, g2, lg0, lg1, lg2 = _program(NT0 * NT1 * NT2, H, L0, L1, L2, D0, D1, D2)
    t2 = pid_t % NT2
    t1 = (pid_t // NT2) % NT1
    t0 = pid_t // (NT1 * NT2)
    a0 = t0 * U0
    a1 = t1 * U1
    a2 = t2 * U2
    if (a0 >= lg0) | (a1 >= lg1) | (a2 >= lg2):
        return

    offs_n = tl.arange(0, BLOCK_N)
    kc0 = a0 + offs_n // (U1 * U2)
    kc1 = a1 + (offs_n // U2) % U1
    kc2 = a2 + offs_n % U2
    n_ok = (kc0 < lg0) & (kc1 < lg1) & (kc2 < lg2)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = offs_d < HEAD_DIM
    dv_ok = offs_dv < HEAD_DIM_V
    k_rows = b * sk_b + (g0 + kc0 * D0) * sk_0 + (g1 + kc1 * D1) * sk_1 + (g2 + kc2 * D2) * sk_2 + h * sk_h
    v_rows = b * sv_b + (g0 + kc0 * D0) * sv_0 + (g1 + kc1 * D1) * sv_1 + (g2 + kc2 * D2) * sv_2 + h * sv_h
    kk = tl.load(K + k_rows[:, None] + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    vv = tl.load(V + v_rows[:, None] + offs_dv[None, :], mask=n_ok[:, None] & dv_ok[None, :], other=0.0)

    lo0 = tl.load(QLO0 + g0 * NT0 + t0)
    lo1 = tl.load(QLO1 + g1 * NT1 + t1)
    lo2 = tl.load(QLO2 + g2 * NT2 + t2)
    hi0 = tl.load(QHI0 + g0 * NT0 + t0)
    hi1 = tl.load(QHI1 + g1 * NT1 + t1)
    hi2 = tl.load(QHI2 + g2 * NT2 + t2)

    offs_m = tl.arange(0, BLOCK_M)
    m0 = offs_m // (T1 * T2)
    m1 = (offs_m // T2) % T1
    m2 = offs_m % T2
    n_tok = L0 * L1 * L2
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    # (Row offsets and tile coordinates are written out in this kernel: with the shared helpers its rpb-blocks
    # variant measured 0.205 against 0.182 ms at 56^2 on an H100, in two calls on different machines.)
    if RPB_MODE == 2:
        bias = _bias_blocks(TAB, CLS, tab_off, tab_head, tab_cls, g, NT0 * NT1 * NT2, pid_t, h, offs_m, offs_n,
                            BLOCK_N)
    nb1 = (hi1 - lo1 + T1 - 1) // T1
    nb2 = (hi2 - lo2 + T2 - 1) // T2
    n_iter = ((hi0 - lo0 + T0 - 1) // T0) * nb1 * nb2
    for it in range(0, n_iter):
        q0 = lo0 + (it // (nb1 * nb2)) * T0
        q1 = lo1 + ((it // nb2) % nb1) * T1
        q2 = lo2 + (it % nb2) * T2
        p0 = q0 + m0
        p1 = q1 + m1
        p2 = q2 + m2
        m_ok = (p0 < hi0) & (p1 < hi1) & (p2 < hi2)
        c0 = g0 + p0 * D0
        c1 = g1 + p1 * D1
        c2 = g2 + p2 * D2
        q_rows = b * sq_b + c0 * sq_0 + c1 * sq_1 + c2 * sq_2 + h * sq_h
        q = tl.load(Q + q_rows[:, None] + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        tok = (b * H + h) * n_tok + (c0 * L1 + c1) * L2 + c2
        do_rows = b * sdo_b + c0 * sdo_0 + c1 * sdo_1 + c2 * sdo_2 + h * sdo_h
        do = tl.load(DO + do_rows[:, None] + offs_dv[None, :], mask=m_ok[:, None] & dv_ok[None, :], other=0.0)
        lse = tl.load(LSE + tok, mask=m_ok, other=0.0)
        delta = tl.load(DELTA + tok, mask=m_ok, other=0.0)
        s = tl.dot(q, tl.trans(kk), input_precision=PRECISION) * qk_scale
        if RPB_MODE == 2:
            # -inf outside the windows (and for rows past the query box) makes p exactly 0 there
            p = tl.math.exp2(s + tl.load(bias + it * (BLOCK_M * BLOCK_N)) - lse[:, None])
        else:
            st0, en0, st1, en1, st2, en2 = _windows(ST0, EN0, ST1, EN1, ST2, EN2, g0, g1, g2, W0, W1, W2, p0, p1, p2,
                                                    m_ok)
            inside = _inside(kc0, kc1, kc2, st0, en0, st1, en1, st2, en2, N_DIM)
            if RPB_MODE == 1:
                r_idx, n_rel = _rpb_index(kc0, kc1, kc2, p0, p1, p2, KS0, KS1, KS2)
                s = _add_rpb(s, RPB, h, r_idx, n_rel, inside)
            p = tl.where(inside, tl.math.exp2(s - lse[:, None]), 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(vv), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    dk = dk * scale
    dk_rows = b * sdk_b + (g0 + kc0 * D0) * sdk_0 + (g1 + kc1 * D1) * sdk_1 + (g2 + kc2 * D2) * sdk_2 + h * sdk_h
    dv_rows = b * sdv_b + (g0 + kc0 * D0) * sdv_0 + (g1 + kc1 * D1) * sdv_1 + (g2 + kc2 * D2) * sdv_2 + h * sdv_h
    tl.store(DK + dk_rows[:, None] + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=n_ok[:, None] & d_ok[None, :])
    tl.store(DV + dv_rows[:, None] + offs_dv[None, :], dv.to(DV.dtype.element_ty),
             mask=n_ok[:, None] & dv_ok[None, :])


@triton.jit
def _na_bwd_dq_kernel(
        Q, K, V, Out, DO, LSE, DELTA, DQ, RPB, TAB, CLS, DSN,
        ST0, EN0, ST1, EN1, ST2, EN2,
        sq_b, sq_0, sq_1, sq_2, sq_h, sk_b, sk_0, sk_1, sk_2, sk_h, sv_b, sv_0, sv_1, sv_2, sv_h,
        so_b, so_0, so_1, so_2, so_h, sdo_b, sdo_0, sdo_1, sdo_2, sdo_h, sdq_b, sdq_0, sdq_1, sdq_2, sdq_h,
        H, L0, L1, L2, D0, D1, D2, W0, W1, W2, NT, NT1, NT2, KS0, KS1, KS2, tab_off, tab_head, tab_cls, qk_scale,
        scale, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr, U0: tl.constexpr, U1: tl.constexpr,
        U2: tl.constexpr, RPB_MODE: tl.constexpr, BIAS_GRAD: tl.constexpr, N_DIM: tl.constexpr,
        PRECISION: tl.constexpr):
    # BIAS_GRAD: 0 none; 1 accumulate dS into DSN[head, query, rpb offset]; 2 into DSN[head, query, window slot]
    # (for rpbs much larger than a window, 3-D). Both sum over the batch with atomics: DSN stays small enough for L2.
    BLOCK_M: tl.constexpr = T0 * T1 * T2
    BLOCK_N: tl.constexpr = U0 * U1 * U2
    check_head_dims(HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV)
    tl.static_assert(BLOCK_M & (BLOCK_M - 1) == 0, 'the query tile must be a power of two')
    tl.static_assert(BLOCK_N & (BLOCK_N - 1) == 0, 'the key tile must be a power of two')
    pid_t, b, h, g, g0, g1, g2, lg0, lg1, lg2 = _program(NT, H, L0, L1, L2, D0, D1, D2)
    a2 = (pid_t % NT2) * T2
    a1 = ((pid_t // NT2) % NT1) * T1
    a0 = (pid_t // (NT1 * NT2)) * T0
    if (a0 >= lg0) | (a1 >= lg1) | (a2 >= lg2):
        return

    offs_m, p0, p1, p2 = _tile_rows(a0, a1, a2, T1, T2, BLOCK_M)
    m_ok = (p0 < lg0) & (p1 < lg1) & (p2 < lg2)
    st0, en0, st1, en1, st2, en2 = _windows(ST0, EN0, ST1, EN1, ST2, EN2, g0, g1, g2, W0, W1, W2, p0, p1, p2, m_ok)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = offs_d < HEAD_DIM
    dv_ok = offs_dv < HEAD_DIM_V
    c0 = g0 + p0 * D0
    c1 = g1 + p1 * D1
    c2 = g2 + p2 * D2
    q_rows = _offsets(b, h, c0, c1, c2, sq_b, sq_0, sq_1, sq_2, sq_h)
    q = tl.load(Q + q_rows[:, None] + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    n_tok = L0 * L1 * L2
    img_tok = (c0 * L1 + c1) * L2 + c2
    tok = (b * H + h) * n_tok + img_tok
    do_rows = _offsets(b, h, c0, c1, c2, sdo_b, sdo_0, sdo_1, sdo_2, sdo_h)
    do = tl.load(DO + do_rows[:, None] + offs_dv[None, :], mask=m_ok[:, None] & dv_ok[None, :], other=0.0)
    o_rows = _offsets(b, h, c0, c1, c2, so_b, so_0, so_1, so_2, so_h)
    o = tl.load(Out + o_rows[:, None] + offs_dv[None, :], mask=m_ok[:, None] & dv_ok[None, :], other=0.0)
    lse = tl.load(LSE + tok, mask=m_ok, other=0.0)
    # delta = rowsum(dO * O), here once per query; the dK/dV pass (launched after this one) reads it back.
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    tl.store(DELTA + tok, delta, mask=m_ok)

    lo0, lo1, lo2, hi0, hi1, hi2 = _key_box(ST0, EN0, ST1, EN1, ST2, EN2, g0, g1, g2, W0, W1, W2, a0, a1, a2,
                                            lg0, lg1, lg2, T0, T1, T2)
    offs_n, n0, n1, n2 = _tile_rows(0, 0, 0, U1, U2, BLOCK_N)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if RPB_MODE == 2:
        bias = _bias_blocks(TAB, CLS, tab_off, tab_head, tab_cls, g, NT, pid_t, h, offs_m, offs_n, BLOCK_N)
    nb1 = (hi1 - lo1 + U1 - 1) // U1
    nb2 = (hi2 - lo2 + U2 - 1) // U2
    n_iter = ((hi0 - lo0 + U0 - 1) // U0) * nb1 * nb2
    # One flat loop over the box's key tiles (pipelines better than three nested dynamic loops).
    for it in range(0, n_iter):
        k0 = lo0 + (it // (nb1 * nb2)) * U0
        k1 = lo1 + ((it // nb2) % nb1) * U1
        k2 = lo2 + (it % nb2) * U2
        kc0 = k0 + n0
        kc1 = k1 + n1
        kc2 = k2 + n2
        n_ok = (kc0 < hi0) & (kc1 < hi1) & (kc2 < hi2)
        k_rows = _offsets(b, h, g0 + kc0 * D0, g1 + kc1 * D1, g2 + kc2 * D2, sk_b, sk_0, sk_1, sk_2, sk_h)
        kk = tl.load(K + k_rows[:, None] + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        v_rows = _offsets(b, h, g0 + kc0 * D0, g1 + kc1 * D1, g2 + kc2 * D2, sv_b, sv_0, sv_1, sv_2, sv_h)
        vt = tl.load(V + v_rows[None, :] + offs_dv[:, None], mask=n_ok[None, :] & dv_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(kk), input_precision=PRECISION) * qk_scale
        if RPB_MODE == 1 or BIAS_GRAD == 1:
            r_idx, n_rel = _rpb_index(kc0, kc1, kc2, p0, p1, p2, KS0, KS1, KS2)
        if RPB_MODE == 2:
            block = tl.load(bias + it * (BLOCK_M * BLOCK_N))
            p = tl.math.exp2(s + block - lse[:, None])
            if BIAS_GRAD != 0:
                inside = block > float('-inf')
        else:
            inside = _inside(kc0, kc1, kc2, st0, en0, st1, en1, st2, en2, N_DIM)
            if RPB_MODE == 1:
                s = _add_rpb(s, RPB, h, r_idx, n_rel, inside)
            p = tl.where(inside, tl.math.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, vt, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kk.dtype), kk, input_precision=PRECISION)
        if BIAS_GRAD == 1:
            # The rpb gradient: dS of each (query, neighbour) pair, binned by its relative offset (r_idx).
            dsn_rows = (h * n_tok + img_tok).to(tl.int64) * n_rel + (n_rel - 1) // 2
            tl.atomic_add(DSN + dsn_rows[:, None] + r_idx, ds, mask=inside, sem='relaxed')
        if BIAS_GRAD == 2:
            slot = ((kc0[None, :] - st0[:, None]) * KS1 + (kc1[None, :] - st1[:, None])) * KS2 \
                + (kc2[None, :] - st2[:, None])
            dsn_rows = (h * n_tok + img_tok).to(tl.int64) * (KS0 * KS1 * KS2)
            tl.atomic_add(DSN + dsn_rows[:, None] + slot, ds, mask=inside, sem='relaxed')
    dq = dq * scale
    dq_rows = _offsets(b, h, c0, c1, c2, sdq_b, sdq_0, sdq_1, sdq_2, sdq_h)
    tl.store(DQ + dq_rows[:, None] + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])


# ----------------------------------------------------------------------------------------------------------------
# Host side: tiling, window tables, launchers.

# A kernel config is a TileConfig: query tile, key tile (3-D shapes, flattened to BLOCK_M / BLOCK_N rows), num_warps,
# num_stages. Tests and benchmarks may force configs: {n_dim: {'fwd': cfg, 'dkdv': cfg, 'dq': cfg}}, each a TileConfig
# or a plain 4-tuple with every field given. For 'dkdv' the first shape is the query tile of the inner loop and the
# second the key tile each program owns.
TILE_OVERRIDE = {}


# 2-D configs by the width of a dilation group's map, from a per-kernel sweep on an H100 (bf16, d32, k7, batch 64;
# tools/na_diagnose.py --sweep, docs/benchmarks/na_h100.md). Smaller key tiles win with rpb: the bias gather and
# the rpb-gradient atomics add live [M, N] tensors, and 64 x 64 tiles spill there.
_NA2D_CONFIGS = tuple((case, *(TileConfig(*cfg) for cfg in cfgs)) for case, *cfgs in (
    # (widest map, rpb): fwd, dq, dkdv
    ((9, False), ((1, 8, 8), (1, 8, 8), 4, 2), ((1, 8, 8), (1, 8, 8), 4, 2), ((1, 8, 8), (1, 8, 8), 4, 2)),
    ((9, True), ((1, 8, 8), (1, 8, 8), 4, 2), ((1, 8, 8), (1, 1, 16), 4, 2), ((1, 4, 8), (1, 8, 8), 4, 2)),
    ((20, False), ((1, 4, 16), (1, 4, 16), 4, 2), ((1, 4, 16), (1, 4, 16), 4, 2), ((1, 4, 16), (1, 4, 16), 4, 2)),
    ((20, True), ((1, 4, 16), (1, 4, 16), 4, 2), ((1, 8, 8), (1, 1, 16), 4, 2), ((1, 8, 8), (1, 2, 16), 4, 2)),
    ((40, False), ((1, 8, 8), (1, 8, 8), 4, 2), ((1, 8, 8), (1, 8, 8), 4, 2), ((1, 8, 8), (1, 4, 16), 4, 2)),
    ((40, True), ((1, 8, 8), (1, 2, 16), 4, 2), ((1, 8, 8), (1, 1, 16), 4, 2), ((1, 4, 8), (1, 8, 8), 4, 2)),
    ((None, False), ((1, 8, 8), (1, 4, 16), 4, 2), ((1, 8, 8), (1, 4, 16), 4, 2), ((1, 8, 8), (1, 8, 8), 4, 3)),
    ((None, True), ((1, 8, 8), (1, 2, 16), 4, 2), ((1, 8, 8), (1, 1, 16), 4, 2), ((1, 4, 8), (1, 8, 8), 4, 2)),
))


def na_configs(n_dim: int, spatial: Sequence[int], kernel: Sequence[int], head_dim: int, has_rpb: bool,
               dilation: Sequence[int] = ()) -> dict:
    """Kernel configs for a problem with ``n_dim`` real axes (``TILE_OVERRIDE`` first).

    Returns ``{'fwd': TileConfig, 'dq': TileConfig, 'dkdv': TileConfig}``; for 'dkdv' the first tile is the query
    tile of the inner loop and the second the key tile each program owns.
    """
    if n_dim in TILE_OVERRIDE:
        return {name: TileConfig(*cfg) for name, cfg in TILE_OVERRIDE[n_dim].items()}
    if n_dim == 1:
        tile = TileConfig((1, 1, 64), (1, 1, 64), 4, 2)
        return {'fwd': tile, 'dkdv': tile, 'dq': tile}
    if n_dim == 2:
        dil = tuple(dilation) or (1, 1)
        width = max(-(-length // d) for length, d in zip(spatial, dil))
        for (limit, rpb), fwd, dq, dkdv in _NA2D_CONFIGS:
            if rpb == has_rpb and (limit is None or width <= limit):
                return {'fwd': fwd, 'dq': dq, 'dkdv': dkdv}
    tile = TileConfig((4, 4, 4), (4, 4, 4), 4, 2)
    return {'fwd': tile, 'dkdv': tile, 'dq': tile}


@functools.lru_cache(maxsize=256)
def _axis_tables(length: int, kernel: int, dilation: int, stride: int, causal: bool, key_tile: int):
    """Per-axis int32 tables on the CPU: window start/end [d, W] and the query box [d, tiles] of each key tile."""
    start, end = axis_windows(length, kernel, dilation, stride, causal)
    width = start.shape[1]
    tiles = triton.cdiv(width, key_tile)
    q_lo = torch.zeros(dilation, tiles, dtype=torch.long)
    q_hi = torch.zeros(dilation, tiles, dtype=torch.long)
    for g in range(dilation):
        lg = (length - g + dilation - 1) // dilation
        s, e = start[g, :lg].contiguous(), end[g, :lg].contiguous()
        first = torch.arange(tiles) * key_tile
        last = torch.clamp(first + key_tile, max=lg)
        # Queries whose window [s, e) meets the key tile [first, last): e > first and s < last (both monotone).
        q_lo[g] = torch.searchsorted(e, first, right=True)
        q_hi[g] = torch.searchsorted(s, last, right=False)
    return tuple(t.to(torch.int32).contiguous() for t in (start, end, q_lo, q_hi))


@triton.jit
def _na_bias_table_kernel(RPB, IDX, TAB, start, n, row, n_rel, BLOCK: tl.constexpr):
    # TAB[head, i] = rpb[head, IDX[i]] * log2(e), or -inf where IDX[i] == n_rel (a pair outside the windows), for i in
    # [start, start + n) of rows of ``row`` entries.
    offs = start + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    h = tl.program_id(1)
    ok = offs < start + n
    idx = tl.load(IDX + offs, mask=ok, other=0)
    inside = idx < n_rel
    val = tl.load(RPB + h * n_rel + idx, mask=ok & inside, other=0.0)
    tl.store(TAB + h * row + offs, tl.where(inside, val * LOG2E_C, float('-inf')), mask=ok)


@functools.lru_cache(maxsize=256)
def _axis_bias_classes(length: int, kernel: int, dilation: int, stride: int, causal: bool, outer: int, inner: int,
                       key_outer: bool):
    """One axis's share of the bias blocks (RPB_MODE 2): for each (group, outer tile), the class of its pattern.

    A program owns an outer tile (queries, or keys when ``key_outer``) and walks inner tiles over its box, exactly as
    the kernels do. The pattern is ``rel[j, m, n]``: ``key - query + kernel - 1`` on this axis for query m and key n of
    the j-th inner tile, or -1 where the pair is outside the query's window (or either is past its range). Equal
    patterns (every interior tile) share a class. Returns (classes [dilation, tiles] long, list of patterns).
    """
    if key_outer:  # the query box of each key tile, as the dK/dV kernel reads it
        start, end, q_lo, q_hi = _axis_tables(length, kernel, dilation, stride, causal, outer)
    else:
        start, end = axis_windows(length, kernel, dilation, stride, causal)
    width = start.shape[1]
    n_tiles = triton.cdiv(width, outer)
    classes = torch.zeros(dilation, n_tiles, dtype=torch.long)
    patterns, seen = [], {}
    for g in range(dilation):
        lg = (length - g + dilation - 1) // dilation
        st, en = start[g, :lg].long(), end[g, :lg].long()
        for t in range(n_tiles):
            a = t * outer
            if a >= lg:
                continue  # the program returns before its loop
            if key_outer:
                keys = a + torch.arange(outer)
                lo, hi = int(q_lo[g, t]), int(q_hi[g, t])
                queries = lo + torch.arange(max(0, -(-(hi - lo) // inner)))[:, None] * inner + torch.arange(inner)
                q_ok = queries < hi
                qc = queries.clamp(max=lg - 1)
                rel = keys[None, None, :] - queries[:, :, None] + kernel - 1  # [j, m (query), n (key)]
                ok = (q_ok[:, :, None] & (keys < lg)[None, None, :]
                      & (keys[None, None, :] >= st[qc][:, :, None]) & (keys[None, None, :] < en[qc][:, :, None]))
            else:
                queries = a + torch.arange(outer)
                lo, hi = int(st[a]), int(en[min(a + outer, lg) - 1])
                keys = lo + torch.arange(-(-(hi - lo) // inner))[:, None] * inner + torch.arange(inner)[None, :]
                qc = queries.clamp(max=lg - 1)
                rel = keys[:, None, :] - queries[None, :, None] + kernel - 1  # [j, m (query), n (key)]
                ok = ((queries < lg)[None, :, None] & (keys[:, None, :] >= st[qc][None, :, None])
                      & (keys[:, None, :] < en[qc][None, :, None]))
            rel = torch.where(ok, rel, -1)
            key = (rel.shape, rel.numpy().tobytes())
            if key not in seen:
                seen[key] = len(patterns)
                patterns.append(rel)
            classes[g, t] = seen[key]
    return classes, patterns


def _bias_layout(plan, name: str, limit: int):
    """(class of each program [groups * tiles] int32, index blocks [classes, iterations, BLOCK_M, BLOCK_N] int32)
    for kernel ``name``: the flat rpb index of each pair of each inner-loop tile, ``n_rel`` outside the windows; None
    when the blocks would hold more than ``limit`` entries."""
    inner_tile, outer_tile = (plan.configs[name][0], plan.configs[name][1]) if name == 'dkdv' else \
        (plan.configs[name][1], plan.configs[name][0])
    key_outer = name == 'dkdv'
    axes = [_axis_bias_classes(length, kernel, dil, stride, causal, outer, inner, key_outer) for
            length, kernel, dil, stride, causal, outer, inner in zip(
                plan.spatial3, plan.kernel3, plan.dil3, plan.stride3, plan.causal3, outer_tile, inner_tile)]
    # Class of each (group, tile) program: the combination of its three axes' classes, renumbered densely.
    combo = torch.zeros((), dtype=torch.long)
    for classes, patterns in axes:
        combo = combo[..., None, None] * len(patterns) + classes  # -> [g0, t0, g1, t1, g2, t2]
    combo = combo.permute(0, 2, 4, 1, 3, 5).reshape(-1)  # [(g0, g1, g2), (t0, t1, t2)]: the kernels' order
    used, program_class = torch.unique(combo, return_inverse=True)
    n_iter = max(math.prod(axes[i][1][c].shape[0] for i, c in enumerate(_digits(code, axes))) for code in used.tolist())
    m, n = math.prod(inner_tile if key_outer else outer_tile), math.prod(outer_tile if key_outer else inner_tile)
    if len(used) * n_iter * m * n > limit:
        return None
    blocks = []
    for code in used.tolist():
        r0, r1, r2 = (axes[i][1][c] for i, c in enumerate(_digits(code, axes)))  # [j, m, n] per axis
        n_it = (r0.shape[0], r1.shape[0], r2.shape[0])
        flat = ((r0[:, None, None, :, None, None, :, None, None] * (2 * plan.kernel3[1] - 1)
                 + r1[None, :, None, None, :, None, None, :, None]) * (2 * plan.kernel3[2] - 1)
                + r2[None, None, :, None, None, :, None, None, :])
        ok = ((r0 >= 0)[:, None, None, :, None, None, :, None, None]
              & (r1 >= 0)[None, :, None, None, :, None, None, :, None]
              & (r2 >= 0)[None, None, :, None, None, :, None, None, :])
        blocks.append(torch.where(ok, flat, plan.n_rel).reshape(math.prod(n_it), m, n))
    index = torch.full((len(blocks), n_iter, m, n), plan.n_rel, dtype=torch.int32)
    for i, b in enumerate(blocks):
        index[i, :b.shape[0]] = b
    return program_class.to(torch.int32), index


def _digits(code: int, axes) -> tuple:
    # The per-axis classes of a combined class code (axis 0 most significant).
    digits = []
    for _, patterns in reversed(axes):
        digits.append(code % len(patterns))
        code //= len(patterns)
    return tuple(reversed(digits))


# Bias blocks (RPB_MODE 2) are used while a call's table, over every head, stays below this many entries; larger
# problems (big 3-D windows) gather rpb inside the kernels (RPB_MODE 1).
BIAS_TABLE_LIMIT = 1 << 23
# The blocks' dtype (fp32 keeps rpb exact; tools/na_diagnose.py --rpb-modes also times bfloat16).
BIAS_TABLE_DTYPE = torch.float32


# The rpb gradient is binned by relative offset (BIAS_GRAD 1: a plain sum over queries afterwards) unless the rpb is
# much larger than a window (3-D), where it is binned by window slot (BIAS_GRAD 2) and scattered to offsets after.
_BINS_PER_SLOT_LIMIT = 4


# Triton 3.6 pipelines the dK/dV loop wrongly at head dim 128 (bf16, H100): dK came out wrong (64 x 64, k9, rpb,
# with the gather and with the bias blocks; the interpreter and num_stages=1 give it right, head dim 64 is right),
# so larger head dims run that loop unpipelined.
_DKDV_PIPELINE_MAX_HEAD_DIM = 64


class _Plan:
    """Everything about a call that depends only on the problem and the inputs' layout, built once per signature.

    The key (``_plan``) holds the shapes, strides, dtype, device, flags and the 16-byte alignment of the tensors the
    caller passes, i.e. all the JIT specialises on: so every integer argument is computed here, and after a kernel's
    first launch its compiled handle (kept in ``slots``) is launched with the arguments as they are.
    """

    def __init__(self, q, k, v, kernel, dilation, stride, causal, has_rpb):
        q_shape, dtype, device, dim_v = tuple(q.shape), q.dtype, q.device, v.shape[-1]
        for name, t in (('q', q), ('k', k), ('v', v)):
            check_int32_span('neighborhood_attention', name, t, hint=_SPAN_HINT)
        n_dim = len(q_shape) - 3
        pad = 3 - n_dim
        self.n_dim = n_dim
        self.device = device
        self.batch, self.heads, self.dim, self.dim_v = q_shape[0], q_shape[-2], q_shape[-1], dim_v
        self.spatial3 = (1,) * pad + tuple(q_shape[1:1 + n_dim])
        self.kernel3 = (1,) * pad + tuple(kernel)
        self.dil3 = (1,) * pad + tuple(dilation)
        self.stride3 = (1,) * pad + tuple(stride)
        self.causal3 = (False,) * pad + tuple(bool(c) for c in causal)
        self.problem_args = (tuple(q_shape[1:1 + n_dim]), tuple(kernel), tuple(dilation), tuple(stride),
                             tuple(bool(c) for c in causal))
        self.n_tok = math.prod(self.spatial3)
        configs = na_configs(n_dim, q_shape[1:1 + n_dim], kernel, self.dim, has_rpb, dilation)
        self.configs = configs
        key_tiles = configs['dkdv'][1]
        tables = [[t.to(device) for t in _axis_tables(*args)] for args in zip(
            self.spatial3, self.kernel3, self.dil3, self.stride3, self.causal3, key_tiles)]
        self.windows = tuple(t for axis in tables for t in axis[:2])
        self.query_boxes = tuple(t for axis in tables for t in axis[2:])
        self.widths = tuple(axis[0].shape[1] for axis in tables)
        groups = math.prod(self.dil3)
        self.bhg = self.batch * self.heads * groups
        self.tiles = {name: tuple(triton.cdiv(w, t) for w, t in zip(self.widths, cfg[1 if name == 'dkdv' else 0]))
                      for name, cfg in configs.items()}
        self.problem = (*self.spatial3[:3], *self.dil3, *self.widths)
        self.n_slots = math.prod(self.kernel3)
        self.n_rel = math.prod(2 * k - 1 for k in self.kernel3)
        self.bias_tables = self._bias_tables() if has_rpb else None
        self.rpb_mode = 0 if not has_rpb else (2 if self.bias_tables else 1)
        self.consts = dict(HEAD_DIM=self.dim, HEAD_DIM_V=dim_v, BLOCK_D=pow2_clamp(self.dim, 16, 256),
                           BLOCK_DV=pow2_clamp(dim_v, 16, 256),
                           RPB_MODE=self.rpb_mode, N_DIM=n_dim, PRECISION='ieee' if dtype == torch.float32 else 'tf32')
        self.bias_grad = 1 if self.n_rel <= _BINS_PER_SLOT_LIMIT * self.n_slots else 2
        self._bias_index = None
        # Outputs and gradients are allocated contiguous: [B, *spatial, H, D] like the inputs, lse/delta [B, H, N].
        self.out_shape = (*q_shape[:-1], dim_v)
        self.lse_shape = (self.batch, self.heads, self.n_tok)
        self.qkv_strides = (*_strides(q.stride(), n_dim), *_strides(k.stride(), n_dim), *_strides(v.stride(), n_dim))
        self.out_strides = _strides(contiguous_strides(self.out_shape), n_dim)
        self.grad_strides = (*_strides(contiguous_strides(q_shape), n_dim),
                             *_strides(contiguous_strides(tuple(k.shape)), n_dim), *self.out_strides)
        self.fwd_ints = (*self.qkv_strides, *self.out_strides, self.heads, *self.problem,
                         math.prod(self.tiles['fwd']), *self.tiles['fwd'][1:], *self.kernel3, *self.table_ints('fwd'))
        self.launch = {name: self._launch_args(name) for name in configs}
        self.grids = {name: self._grid(name) for name in configs}
        self.slots = {'fwd': [None, None]}
        self.bwd = {}  # grad_out strides and alignment -> (dq ints, dkdv ints, slots)

    def _launch_args(self, name):
        query_tile, key_tile, warps, stages = self.configs[name]
        if name == 'dkdv' and max(self.dim, self.dim_v) > _DKDV_PIPELINE_MAX_HEAD_DIM:
            stages = 1
        return dict(T0=query_tile[0], T1=query_tile[1], T2=query_tile[2], U0=key_tile[0], U1=key_tile[1],
                    U2=key_tile[2], **self.consts), warps, stages

    def _grid(self, name):
        return flat_grid(math.prod(self.tiles[name]) * self.bhg, 'neighborhood_attention')

    def grid(self, name):
        return self.grids[name]

    def backward_args(self, grad_out: torch.Tensor):
        """(dq ints, dkdv ints, kernel slots) for a ``grad_out`` of this layout (built on first use)."""
        key = (grad_out.stride(), aligned(grad_out))
        entry = self.bwd.get(key)
        if entry is None:
            check_int32_span('neighborhood_attention', 'the output gradient', grad_out, hint=_SPAN_HINT)
            do_strides = _strides(grad_out.stride(), self.n_dim)
            dq_strides, dk_strides, dv_strides = (self.grad_strides[i:i + 5] for i in (0, 5, 10))
            dq = (*self.qkv_strides, *self.out_strides, *do_strides, *dq_strides, self.heads, *self.problem,
                  math.prod(self.tiles['dq']), *self.tiles['dq'][1:], *self.kernel3, *self.table_ints('dq'))
            dkdv = (*self.qkv_strides, *do_strides, *dk_strides, *dv_strides, self.heads, *self.problem,
                    *self.tiles['dkdv'], *self.kernel3, *self.table_ints('dkdv'))
            entry = self.bwd[key] = (dq, dkdv, {'dq': {}, 'dkdv': [None, None]})
        return entry

    def _bias_tables(self):
        """RPB_MODE 2's static half, or None past BIAS_TABLE_LIMIT: ``{'index': the int32 index blocks of the fwd,
        dq and dkdv kernels, flat, 'classes': {kernel: program classes}, 'ints': {kernel: (offset into a table row,
        entries per row (head), entries per class)}, 'ranges': {pass: (start, entries)}}``. A call's table has one row
        per head; the forward fills the 'fwd' range ('all' when a backward will follow), a backward without the
        forward's table the 'bwd' range (dq and dkdv)."""
        layouts, left = {}, BIAS_TABLE_LIMIT // self.heads
        for name in ('fwd', 'dq', 'dkdv'):
            layouts[name] = _bias_layout(self, name, left)
            if layouts[name] is None:
                return None
            left -= layouts[name][1].numel()
        total = sum(index.numel() for _, index in layouts.values())
        tables = {'classes': {}, 'ints': {}}
        offset = 0
        for name, (classes, index) in layouts.items():
            tables['classes'][name] = classes.to(self.device)
            tables['ints'][name] = (offset, total, index[0].numel())
            offset += index.numel()
        n_fwd = layouts['fwd'][1].numel()
        tables['ranges'] = {'fwd': (0, n_fwd), 'all': (0, total), 'bwd': (n_fwd, total - n_fwd)}
        tables['index'] = torch.cat([index.reshape(-1) for _, index in layouts.values()]).to(self.device)
        return tables

    def table_ints(self, name: str) -> tuple:
        """(offset, per-head stride, per-class stride) of kernel ``name``'s blocks in a call's table."""
        return self.bias_tables['ints'][name] if self.rpb_mode == 2 else (0, 0, 0)

    def bias_table(self, rpb: torch.Tensor, pass_name: str) -> torch.Tensor:
        """A call's bias blocks ([heads, entries] fp32, see ``_na_bias_table_kernel``), the pass's range filled."""
        index = self.bias_tables['index']
        start, count = self.bias_tables['ranges'][pass_name]
        table = torch.empty(self.heads, index.numel(), device=index.device, dtype=BIAS_TABLE_DTYPE)
        slot = self.slots.setdefault('table_' + pass_name, [None, None])
        grid = (triton.cdiv(count, _TABLE_BLOCK), self.heads, 1)
        _BIAS_TABLE.launch(slot, grid, (rpb, index, table, start, count, index.numel(), self.n_rel),
                           dict(BLOCK=_TABLE_BLOCK), 4, 1)
        return table

    def bias_index(self):
        """[heads, N * window] rpb offset of each (query, window slot), for BIAS_GRAD 2 (built on first use)."""
        if self._bias_index is None:
            with torch.inference_mode(False):
                table = neighbor_table(*self.problem_args)
                self._bias_index = table.bias_index.to(self.device).reshape(1, -1).expand(self.heads, -1)
        return self._bias_index


# what to do when one sample is too large for the kernels' int32 offsets
_SPAN_HINT = ": split the spatial axes or the heads, or use backend='reference'"


def _strides(st: tuple, n_dim: int) -> tuple:
    """(batch, x0, x1, x2, heads) strides of a [B, *spatial, H, D] layout, lifted to 3 spatial axes."""
    return (st[0], *(0,) * (3 - n_dim), *st[1:1 + n_dim], st[-2])


_PLANS = {}
_MAX_PLANS = 512
_FWD, _BWD_DQ, _BWD_DKDV = Kernel(_na_fwd_kernel), Kernel(_na_bwd_dq_kernel), Kernel(_na_bwd_dkdv_kernel)
_BIAS_TABLE = Kernel(_na_bias_table_kernel)
_TABLE_BLOCK = 1024


def _plan(q, k, v, kernel, dilation, stride, causal, has_rpb) -> _Plan:
    key = (q.shape, q.stride(), k.stride(), v.shape, v.stride(), q.dtype, q.device, tuple(kernel), tuple(dilation),
           tuple(stride), tuple(causal), has_rpb, aligned(q), aligned(k), aligned(v))
    if TILE_OVERRIDE:
        key += (repr(TILE_OVERRIDE.get(q.dim() - 3)),)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        with torch.inference_mode(False):  # cached tables must not be inference tensors (see neighbor_table)
            plan = _PLANS[key] = _Plan(q, k, v, kernel, dilation, stride, causal, has_rpb)
    return plan


def _rpb_arg(rpb: torch.Tensor) -> torch.Tensor:
    # The kernels gather an fp32 table (a half-precision gather spills) and scale it by log2(e) themselves: an fp32
    # parameter (also under autocast) goes in as it is, with no conversion kernel.
    return rpb if rpb.dtype == torch.float32 and rpb.is_contiguous() else rpb.float().contiguous()


def _launch(kernel: Kernel, slot: list, plan: _Plan, name: str, args: tuple, consts: Optional[dict] = None):
    launch_consts, warps, stages = plan.launch[name]
    kernel.launch(slot, plan.grids[name], args, launch_consts if consts is None else consts, warps, stages)


def _fwd(q, k, v, rpb, kernel, dilation, stride, causal, scale, for_backward=False):
    """Output, log-sum-exp (base 2) and the call's bias blocks (RPB_MODE 2, else None), built for the backward too
    when ``for_backward``."""
    q, k, v = unit_last(q), unit_last(k), unit_last(v)
    plan = _plan(q, k, v, kernel, dilation, stride, causal, rpb is not None)
    out = torch.empty(plan.out_shape, device=q.device, dtype=q.dtype)
    lse = torch.empty(plan.lse_shape, device=q.device, dtype=torch.float32)
    rpb_arg = _rpb_arg(rpb) if rpb is not None else lse
    table = plan.bias_table(rpb_arg, 'all' if for_backward else 'fwd') if plan.rpb_mode == 2 else None
    classes = plan.bias_tables['classes']['fwd'] if plan.rpb_mode == 2 else lse
    _launch(_FWD, plan.slots['fwd'], plan, 'fwd', (q, k, v, out, lse, rpb_arg, lse if table is None else table,
                                                   classes, *plan.windows, *plan.fwd_ints, scale * LOG2E))
    return out, lse, table


def _bwd(grad_out, q, k, v, out, lse, rpb, kernel, dilation, stride, causal, scale, rpb_grad, table=None):
    q, k, v, grad_out = unit_last(q), unit_last(k), unit_last(v), unit_last(grad_out)
    plan = _plan(q, k, v, kernel, dilation, stride, causal, rpb is not None)
    dq_ints, dkdv_ints, slots = plan.backward_args(grad_out)
    heads, n_tok = plan.heads, plan.n_tok
    # Gradients come out in the inputs' [B, *spatial, H, D] layout; delta = rowsum(dO * O) is [B, H, N] like lse.
    dq = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    dk = torch.empty(k.shape, device=q.device, dtype=q.dtype)
    dv = torch.empty(v.shape, device=q.device, dtype=q.dtype)
    delta = torch.empty(plan.lse_shape, device=q.device, dtype=torch.float32)
    bias_grad = plan.bias_grad if (rpb is not None and rpb_grad) else 0
    if bias_grad:
        bins = plan.n_rel if bias_grad == 1 else plan.n_slots
        dsn = torch.zeros(heads, n_tok, bins, device=q.device, dtype=torch.float32)
    else:
        dsn = lse
    rpb_arg = _rpb_arg(rpb) if rpb is not None else lse
    if plan.rpb_mode == 2:
        table = plan.bias_table(rpb_arg, 'bwd') if table is None else table
        dq_classes, dkdv_classes = plan.bias_tables['classes']['dq'], plan.bias_tables['classes']['dkdv']
    else:
        table = dq_classes = dkdv_classes = lse
    scales = (scale * LOG2E, scale)
    # The dQ pass first: it also writes delta, which the dK/dV pass reads.
    dq_slot = slots['dq'].get(bias_grad)
    if dq_slot is None:
        dq_slot = slots['dq'][bias_grad] = [None, None]
    dq_consts = dict(plan.launch['dq'][0], BIAS_GRAD=bias_grad)
    _launch(_BWD_DQ, dq_slot, plan, 'dq', (q, k, v, out, grad_out, lse, delta, dq, rpb_arg, table, dq_classes, dsn,
                                           *plan.windows, *dq_ints, *scales), dq_consts)
    _launch(_BWD_DKDV, slots['dkdv'], plan, 'dkdv', (q, k, v, grad_out, lse, delta, dk, dv, rpb_arg, table,
                                                     dkdv_classes, *plan.windows, *plan.query_boxes, *dkdv_ints,
                                                     *scales))
    if bias_grad == 1:
        drpb = dsn.sum(1).reshape(rpb.shape).to(rpb.dtype)
    elif bias_grad == 2:
        drpb = torch.zeros(heads, plan.n_rel, device=q.device, dtype=torch.float32)
        drpb.scatter_add_(1, plan.bias_index(), dsn.reshape(heads, -1))
        drpb = drpb.reshape(rpb.shape).to(rpb.dtype)
    else:
        drpb = q.new_empty(0)
    return dq, dk, dv, drpb


# ----------------------------------------------------------------------------------------------------------------
# Dispatch. Eager calls go through a plain autograd.Function (the cheapest host path); under torch.compile the same
# work is a torch.library custom op with fake implementations, so Dynamo and FX see one opaque node.

class _NeighborhoodAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rpb, kernel, dilation, stride, causal, scale):
        out, lse, ctx.table = _fwd(q, k, v, rpb, kernel, dilation, stride, causal, scale, for_backward=True)
        ctx.save_for_backward(q, k, v, rpb, out, lse)
        ctx.args = (kernel, dilation, stride, causal, scale)
        ctx.has_rpb = rpb is not None
        return out

    @staticmethod
    @first_order_only('neighborhood_attention')
    def backward(ctx, grad_out):
        q, k, v, rpb, out, lse = ctx.saved_tensors
        rpb_grad = ctx.has_rpb and ctx.needs_input_grad[3]
        dq, dk, dv, drpb = _bwd(grad_out, q, k, v, out, lse, rpb, *ctx.args, rpb_grad, ctx.table)
        ctx.table = None
        return dq, dk, dv, (drpb if rpb_grad else None), None, None, None, None, None


@torch.library.custom_op('visionattn::na_fwd', mutates_args=())
def _na_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: Optional[torch.Tensor], kernel: List[int],
               dilation: List[int], stride: List[int], causal: List[bool], scale: float
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    return _fwd(q, k, v, rpb, kernel, dilation, stride, causal, scale)[:2]


@_na_fwd_op.register_fake
def _na_fwd_fake(q, k, v, rpb, kernel, dilation, stride, causal, scale):
    n_tok = math.prod(q.shape[1:-2])
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    return out, q.new_empty(q.shape[0], q.shape[-2], n_tok, dtype=torch.float32)


@torch.library.custom_op('visionattn::na_bwd', mutates_args=())
def _na_bwd_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
               lse: torch.Tensor, rpb: Optional[torch.Tensor], kernel: List[int], dilation: List[int],
               stride: List[int], causal: List[bool], scale: float, rpb_grad: bool
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd(grad_out, q, k, v, out, lse, rpb, kernel, dilation, stride, causal, scale, rpb_grad)


@_na_bwd_op.register_fake
def _na_bwd_fake(grad_out, q, k, v, out, lse, rpb, kernel, dilation, stride, causal, scale, rpb_grad):
    drpb = rpb.new_empty(rpb.shape) if (rpb is not None and rpb_grad) else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), drpb


def _setup_context(ctx, inputs, output):
    q, k, v, rpb, kernel, dilation, stride, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, rpb, out, lse)
    ctx.args = (kernel, dilation, stride, causal, scale)
    ctx.has_rpb = rpb is not None


def _op_backward(ctx, grad_out, grad_lse):
    q, k, v, rpb, out, lse = ctx.saved_tensors
    rpb_grad = ctx.has_rpb and ctx.needs_input_grad[3]
    dq, dk, dv, drpb = _na_bwd_op(grad_out.contiguous(), q, k, v, out, lse, rpb, *ctx.args, rpb_grad)
    return dq, dk, dv, (drpb if rpb_grad else None), None, None, None, None, None


_na_fwd_op.register_autograd(_op_backward, setup_context=_setup_context)


def neighborhood_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: Sequence[int],
                                  dilation: Sequence[int], stride: Sequence[int], causal: Sequence[bool], scale: float,
                                  rpb: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The Triton path of :func:`visionattn.ops.neighborhood_attention` (arguments already validated: per-axis
    tuples, a float scale)."""
    if torch.compiler.is_compiling():
        out, _ = torch.ops.visionattn.na_fwd(q, k, v, rpb, list(kernel), list(dilation), list(stride),
                                             [bool(c) for c in causal], float(scale))
        return out
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                    or (rpb is not None and rpb.requires_grad)):
        return _NeighborhoodAttention.apply(q, k, v, rpb, kernel, dilation, stride, causal, scale)
    return _fwd(q, k, v, rpb, kernel, dilation, stride, causal, scale)[0]
