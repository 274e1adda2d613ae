"""Triton kernels of routed block-sparse attention and of BiFormer's bi-level routing attention (BRA).

Each attention program owns a tile of one query block and streams the key/value tokens of that block's routed KV
blocks, read in place through the index (never gathered into a copy): the routed blocks form a "virtual" key
sequence of ``count * kv_block_size`` tokens, tiled by BLOCK_N rows whose addresses come from the index. Small
regions (BiFormer's 4x4 and 2x2) thus pack several KV blocks into one tile and sizes that are not powers of two
(7x7 = 49) only pad the last tile. Forward keeps an online softmax and saves the log-sum-exp (base 2).

Token addresses. A block is a rectangle of tokens on a grid of blocks: token ``t`` of block ``i`` lives at
``(i // GRID_W) * s_gy + (i % GRID_W) * s_gx + (t // BLK_W) * s_ty + (t % BLK_W) * s_tx`` (plus batch and head
strides). A plain token sequence is a one-wide grid of one-row blocks; BiFormer's regions are read straight from
the NHWC output of the qkv projection (region ``i`` of an ``n_win`` x ``n_win`` grid, token ``t`` of its ``rh`` x
``rw`` pixels), so neither the region partition nor the q/k/v split is ever copied.

BRA adds, for NHWC maps:
- one routing kernel per image: region means of q and k, region affinities, top-k, and the inverted routing
  (for each key region, the query regions routed to it) that the dK/dV kernel reads;
- the local context enhancement (LCE / ``lepe``, a depthwise conv of v) folded into the attention kernels: the
  forward adds ``conv(v) + bias`` in its epilogue, the dK/dV kernel adds the conv's input gradient to dV, and one
  small kernel reduces the conv's weight and bias gradients.

Backward: dQ by the forward's loop; dK/dV per KV block over the query blocks routed to it, from the inverted
index. No atomics: results are deterministic run to run.

Host path: everything that depends only on shapes (strides, grids, tile sizes, specialisations) lives in a
per-shape plan; after a plan's first call its kernels are launched through their compiled handles, skipping the
JIT's argument binding. In eager mode the ops run through plain ``torch.autograd.Function``s (cheaper than the
dispatcher); while ``torch.compile`` traces they go through ``torch.library`` custom ops with fake impls.
"""
from typing import Dict, List, Optional, Tuple

import torch
import triton
import triton.language as tl

from ..checks import _interpreting, first_order_only
from ._common import LOG2E, TileConfig, cached_plan, check_head_dims, flat_grid, pow2_clamp, unit_last
from .launch import Kernel
from .launch import aligned as _aligned

__all__ = ['block_sparse_attention_triton', 'bra_map_triton', 'bra_regions_triton', 'inverted_block_index',
           'MAX_FUSED_ROUTING_REGIONS']

# The routing kernel keeps a [regions, regions] affinity tile in registers: up to 64 regions (n_win <= 8). Beyond
# it the routing runs as PyTorch ops (same results) and the attention kernels are unchanged.
MAX_FUSED_ROUTING_REGIONS = 64


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    # IEEE: 1 = exact float32 products (float32 inputs), 2 = upcast bfloat16 operands first (Triton's CPU
    # interpreter computes bfloat16 dots wrongly; bfloat16 products are exact in float32, so nothing changes)
    if IEEE == 1:
        return tl.dot(a, b, input_precision='ieee')
    if IEEE == 2:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision='ieee')
    return tl.dot(a, b)


@triton.jit
def _token_offsets(blk, tok, s_gy, s_gx, s_ty, s_tx, GRID_W: tl.constexpr, BLK_W: tl.constexpr):
    # element offset of token `tok` of block `blk` (see the module docstring)
    return (blk // GRID_W) * s_gy + (blk % GRID_W) * s_gx + (tok // BLK_W) * s_ty + (tok % BLK_W) * s_tx


@triton.jit
def _dwconv_tile(base, w_base, y, x, row_ok, offs_c, c_ok, map_h, map_w, s_y, s_x,
                 KS: tl.constexpr, TRANSPOSED: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Depthwise KS x KS conv (zero padding KS // 2) of the map at ``base`` for the pixels (y, x) of a tile.

    TRANSPOSED gives the conv's input gradient (the map is the output gradient): the taps mirror."""
    tl.static_assert(KS % 2 == 1, 'the LCE conv size must be odd')
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    for dy in tl.static_range(KS):
        if TRANSPOSED:
            yy = y + (KS // 2 - dy)
        else:
            yy = y + (dy - KS // 2)
        y_ok = row_ok & (yy >= 0) & (yy < map_h)
        for dx in tl.static_range(KS):
            if TRANSPOSED:
                xx = x + (KS // 2 - dx)
            else:
                xx = x + (dx - KS // 2)
            ok = y_ok & (xx >= 0) & (xx < map_w)
            w = tl.load(w_base + offs_c * (KS * KS) + (dy * KS + dx), mask=c_ok, other=0.0).to(tl.float32)
            val = tl.load(base + yy[:, None] * s_y + xx[:, None] * s_x + offs_c[None, :],
                          mask=ok[:, None] & c_ok[None, :], other=0.0)
            acc += val.to(tl.float32) * w[None, :]
    return acc


@triton.jit
def _bsa_fwd_kernel(Q, K, V, ATT, OUT, LSE, IDX, CNT, LW, LB,
                    q_off, k_off, v_off,
                    sq_b, sq_h, sq_gy, sq_gx, sq_ty, sq_tx,
                    sk_b, sk_h, sk_gy, sk_gx, sk_ty, sk_tx,
                    sv_b, sv_h, sv_gy, sv_gx, sv_ty, sv_tx,
                    so_b, so_h, so_gy, so_gx, so_ty, so_tx,
                    sidx_b, sidx_h, sidx_q, scnt_b, scnt_h,
                    n_heads, n_q_tokens, max_kv, map_h, map_w, qk_scale,
                    Q_BLOCK: tl.constexpr, KV_BLOCK: tl.constexpr, Q_TILES: tl.constexpr,
                    Q_GRID_W: tl.constexpr, Q_BLK_W: tl.constexpr, KV_GRID_W: tl.constexpr, KV_BLK_W: tl.constexpr,
                    D_QK: tl.constexpr, D_V: tl.constexpr, HAS_COUNT: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
                    IEEE: tl.constexpr, CAUSAL: tl.constexpr, LEPE_K: tl.constexpr, STORE_O: tl.constexpr):
    check_head_dims(D_QK, D_V, BLOCK_DQK, BLOCK_DV)
    tl.static_assert(Q_TILES * BLOCK_M >= Q_BLOCK, 'the query tiles must cover a block')
    tl.static_assert(Q_BLOCK % Q_BLK_W == 0, 'a query block must be whole rows')
    tl.static_assert(KV_BLOCK % KV_BLK_W == 0, 'a KV block must be whole rows')
    # one flat grid axis, query tiles fastest (batch * heads can outgrow CUDA's 65535 on the second axis)
    m_programs = (n_q_tokens // Q_BLOCK) * Q_TILES
    pid_m = tl.program_id(0) % m_programs
    pid_bh = tl.program_id(0) // m_programs
    b = (pid_bh // n_heads).to(tl.int64)
    h = pid_bh % n_heads
    q_blk = pid_m // Q_TILES
    offs_m = (pid_m % Q_TILES) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < Q_BLOCK
    q_tok = q_blk * Q_BLOCK + offs_m
    offs_d = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = offs_d < D_QK
    dv_ok = offs_dv < D_V

    q_rows = _token_offsets(q_blk, offs_m, sq_gy, sq_gx, sq_ty, sq_tx, Q_GRID_W, Q_BLK_W)
    q = tl.load(Q + q_off + b * sq_b + h * sq_h + q_rows[:, None] + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    idx_row = IDX + b * sidx_b + h * sidx_h + q_blk * sidx_q
    if HAS_COUNT:
        n_blocks = tl.load(CNT + b * scnt_b + h * scnt_h + q_blk)
    else:
        n_blocks = max_kv
    length = n_blocks * KV_BLOCK
    k_base = K + k_off + b * sk_b + h * sk_h
    v_base = V + v_off + b * sv_b + h * sv_h

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)  # finite: fully masked tiles give exp2(-inf) = 0, not NaN
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for start in range(0, length, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < length
        blk = tl.load(idx_row + offs_n // KV_BLOCK, mask=n_ok, other=0)
        tok = offs_n % KV_BLOCK
        k = tl.load(k_base + _token_offsets(blk, tok, sk_gy, sk_gx, sk_ty, sk_tx, KV_GRID_W, KV_BLK_W)[:, None]
                    + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        s = _dot(q, tl.trans(k), IEEE) * qk_scale
        keep = n_ok[None, :]
        if CAUSAL:  # MoBA: no key after the query
            keep = keep & ((blk * KV_BLOCK + tok)[None, :] <= q_tok[:, None])
        s = tl.where(keep, s, float('-inf'))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + _token_offsets(blk, tok, sv_gy, sv_gx, sv_ty, sv_tx, KV_GRID_W, KV_BLK_W)[:, None]
                    + offs_dv[None, :], mask=n_ok[:, None] & dv_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new
    has_keys = l_i > 0.0
    safe_l = tl.where(has_keys, l_i, 1.0)
    out = acc / safe_l[:, None]
    o_rows = _token_offsets(q_blk, offs_m, so_gy, so_gx, so_ty, so_tx, Q_GRID_W, Q_BLK_W)
    o_ptrs = b * so_b + h * so_h + o_rows[:, None] + offs_dv[None, :]
    o_mask = row_ok[:, None] & dv_ok[None, :]
    if STORE_O:  # the attention alone, for the backward (OUT also holds the LCE)
        tl.store(ATT + o_ptrs, out.to(ATT.dtype.element_ty), mask=o_mask)
    if LEPE_K > 0:  # BRA's LCE: + depthwise conv of v + its bias, in float32, rounded once with the attention
        y = (q_blk // Q_GRID_W) * (Q_BLOCK // Q_BLK_W) + offs_m // Q_BLK_W
        x = (q_blk % Q_GRID_W) * Q_BLK_W + offs_m % Q_BLK_W
        out += _dwconv_tile(v_base, LW + h * D_V * (LEPE_K * LEPE_K), y, x, row_ok, offs_dv, dv_ok, map_h, map_w,
                            sv_ty, sv_tx, LEPE_K, False, BLOCK_M, BLOCK_DV)
        out += tl.load(LB + h * D_V + offs_dv, mask=dv_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(OUT + o_ptrs, out.to(OUT.dtype.element_ty), mask=o_mask)
    lse = tl.where(has_keys, m_i + tl.log2(safe_l), float('inf'))  # +inf: an empty row's p is 0 in backward
    tl.store(LSE + pid_bh * n_q_tokens + q_tok, lse, mask=row_ok)


@triton.jit
def _bsa_bwd_dq_kernel(Q, K, V, ATT, DO, LSE, DQ, IDX, CNT,
                       q_off, k_off, v_off, dq_off, delta_off,
                       sq_b, sq_h, sq_gy, sq_gx, sq_ty, sq_tx,
                       sk_b, sk_h, sk_gy, sk_gx, sk_ty, sk_tx,
                       sv_b, sv_h, sv_gy, sv_gx, sv_ty, sv_tx,
                       so_b, so_h, so_gy, so_gx, so_ty, so_tx,
                       sdo_b, sdo_h, sdo_gy, sdo_gx, sdo_ty, sdo_tx,
                       sdq_b, sdq_h, sdq_gy, sdq_gx, sdq_ty, sdq_tx,
                       sidx_b, sidx_h, sidx_q, scnt_b, scnt_h,
                       n_heads, n_q_tokens, max_kv, qk_scale, scale,
                       Q_BLOCK: tl.constexpr, KV_BLOCK: tl.constexpr, Q_TILES: tl.constexpr,
                       Q_GRID_W: tl.constexpr, Q_BLK_W: tl.constexpr, KV_GRID_W: tl.constexpr,
                       KV_BLK_W: tl.constexpr, D_QK: tl.constexpr, D_V: tl.constexpr, HAS_COUNT: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr,
                       BLOCK_DV: tl.constexpr, IEEE: tl.constexpr, CAUSAL: tl.constexpr):
    check_head_dims(D_QK, D_V, BLOCK_DQK, BLOCK_DV)
    tl.static_assert(Q_TILES * BLOCK_M >= Q_BLOCK, 'the query tiles must cover a block')
    tl.static_assert(Q_BLOCK % Q_BLK_W == 0, 'a query block must be whole rows')
    tl.static_assert(KV_BLOCK % KV_BLK_W == 0, 'a KV block must be whole rows')
    # one flat grid axis, query tiles fastest (batch * heads can outgrow CUDA's 65535 on the second axis)
    m_programs = (n_q_tokens // Q_BLOCK) * Q_TILES
    pid_m = tl.program_id(0) % m_programs
    pid_bh = tl.program_id(0) // m_programs
    b = (pid_bh // n_heads).to(tl.int64)
    h = pid_bh % n_heads
    q_blk = pid_m // Q_TILES
    offs_m = (pid_m % Q_TILES) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < Q_BLOCK
    q_tok = q_blk * Q_BLOCK + offs_m
    offs_d = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = offs_d < D_QK
    dv_ok = offs_dv < D_V

    q = tl.load(Q + q_off + b * sq_b + h * sq_h
                + _token_offsets(q_blk, offs_m, sq_gy, sq_gx, sq_ty, sq_tx, Q_GRID_W, Q_BLK_W)[:, None]
                + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    do = tl.load(DO + b * sdo_b + h * sdo_h
                 + _token_offsets(q_blk, offs_m, sdo_gy, sdo_gx, sdo_ty, sdo_tx, Q_GRID_W, Q_BLK_W)[:, None]
                 + offs_dv[None, :], mask=row_ok[:, None] & dv_ok[None, :], other=0.0)
    out = tl.load(ATT + b * so_b + h * so_h
                  + _token_offsets(q_blk, offs_m, so_gy, so_gx, so_ty, so_tx, Q_GRID_W, Q_BLK_W)[:, None]
                  + offs_dv[None, :], mask=row_ok[:, None] & dv_ok[None, :], other=0.0)
    lse = tl.load(LSE + pid_bh * n_q_tokens + q_tok, mask=row_ok, other=float('inf'))
    delta = tl.sum(do.to(tl.float32) * out.to(tl.float32), 1)  # softmax backward's rowsum(dO * O)
    tl.store(LSE + delta_off + pid_bh * n_q_tokens + q_tok, delta, mask=row_ok)  # for the dK/dV kernel
    idx_row = IDX + b * sidx_b + h * sidx_h + q_blk * sidx_q
    if HAS_COUNT:
        n_blocks = tl.load(CNT + b * scnt_b + h * scnt_h + q_blk)
    else:
        n_blocks = max_kv
    length = n_blocks * KV_BLOCK
    k_base = K + k_off + b * sk_b + h * sk_h
    v_base = V + v_off + b * sv_b + h * sv_h

    dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=tl.float32)
    for start in range(0, length, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < length
        blk = tl.load(idx_row + offs_n // KV_BLOCK, mask=n_ok, other=0)
        tok = offs_n % KV_BLOCK
        k = tl.load(k_base + _token_offsets(blk, tok, sk_gy, sk_gx, sk_ty, sk_tx, KV_GRID_W, KV_BLK_W)[:, None]
                    + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        v = tl.load(v_base + _token_offsets(blk, tok, sv_gy, sv_gx, sv_ty, sv_tx, KV_GRID_W, KV_BLK_W)[:, None]
                    + offs_dv[None, :], mask=n_ok[:, None] & dv_ok[None, :], other=0.0)
        s = _dot(q, tl.trans(k), IEEE) * qk_scale
        keep = n_ok[None, :]
        if CAUSAL:
            keep = keep & ((blk * KV_BLOCK + tok)[None, :] <= q_tok[:, None])
        p = tl.where(keep, tl.exp2(s - lse[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), IEEE)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, IEEE)
    dq = dq * scale
    tl.store(DQ + dq_off + b * sdq_b + h * sdq_h
             + _token_offsets(q_blk, offs_m, sdq_gy, sdq_gx, sdq_ty, sdq_tx, Q_GRID_W, Q_BLK_W)[:, None]
             + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _bsa_bwd_dkv_kernel(Q, K, V, DO, LSE, DK, DV, QLIST, OFFS, LW,
                        q_off, k_off, v_off, dk_off, dv_off, delta_off, qlist_off, offs_off,
                        sq_b, sq_h, sq_gy, sq_gx, sq_ty, sq_tx,
                        sk_b, sk_h, sk_gy, sk_gx, sk_ty, sk_tx,
                        sv_b, sv_h, sv_gy, sv_gx, sv_ty, sv_tx,
                        sdo_b, sdo_h, sdo_gy, sdo_gx, sdo_ty, sdo_tx,
                        sdk_b, sdk_h, sdk_gy, sdk_gx, sdk_ty, sdk_tx,
                        sdv_b, sdv_h, sdv_gy, sdv_gx, sdv_ty, sdv_tx,
                        n_heads, list_heads, n_q_tokens, n_kv_blocks, map_h, map_w, qk_scale, scale,
                        Q_BLOCK: tl.constexpr, KV_BLOCK: tl.constexpr, KV_TILES: tl.constexpr,
                        Q_GRID_W: tl.constexpr, Q_BLK_W: tl.constexpr, KV_GRID_W: tl.constexpr,
                        KV_BLK_W: tl.constexpr, ENTRY_DIV: tl.constexpr, D_QK: tl.constexpr, D_V: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr,
                        BLOCK_DV: tl.constexpr, IEEE: tl.constexpr, CAUSAL: tl.constexpr, LEPE_K: tl.constexpr):
    check_head_dims(D_QK, D_V, BLOCK_DQK, BLOCK_DV)
    tl.static_assert(KV_TILES * BLOCK_N >= KV_BLOCK, 'the key tiles must cover a block')
    tl.static_assert(Q_BLOCK % Q_BLK_W == 0, 'a query block must be whole rows')
    tl.static_assert(KV_BLOCK % KV_BLK_W == 0, 'a KV block must be whole rows')
    n_programs = n_kv_blocks * KV_TILES  # one flat grid axis, as the forward's
    pid_n = tl.program_id(0) % n_programs
    pid_bh = tl.program_id(0) // n_programs
    b = (pid_bh // n_heads).to(tl.int64)
    h = pid_bh % n_heads
    kv_blk = pid_n // KV_TILES
    offs_n = (pid_n % KV_TILES) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < KV_BLOCK
    k_tok = kv_blk * KV_BLOCK + offs_n
    offs_d = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = offs_d < D_QK
    dv_ok = offs_dv < D_V

    k = tl.load(K + k_off + b * sk_b + h * sk_h
                + _token_offsets(kv_blk, offs_n, sk_gy, sk_gx, sk_ty, sk_tx, KV_GRID_W, KV_BLK_W)[:, None]
                + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    v = tl.load(V + v_off + b * sv_b + h * sv_h
                + _token_offsets(kv_blk, offs_n, sv_gy, sv_gx, sv_ty, sv_tx, KV_GRID_W, KV_BLK_W)[:, None]
                + offs_dv[None, :], mask=n_ok[:, None] & dv_ok[None, :], other=0.0)
    group = (b * list_heads + h % list_heads) * (n_kv_blocks + 1) + kv_blk  # see inverted_block_index
    first = tl.load(OFFS + offs_off + group)
    length = (tl.load(OFFS + offs_off + group + 1) - first) * Q_BLOCK
    q_base = Q + q_off + b * sq_b + h * sq_h
    do_base = DO + b * sdo_b + h * sdo_h

    dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    for start in range(0, length, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        m_ok = offs_m < length
        q_blk = tl.load(QLIST + qlist_off + first + offs_m // Q_BLOCK, mask=m_ok, other=0) // ENTRY_DIV
        tok = offs_m % Q_BLOCK
        q_tok = q_blk * Q_BLOCK + tok
        q = tl.load(q_base + _token_offsets(q_blk, tok, sq_gy, sq_gx, sq_ty, sq_tx, Q_GRID_W, Q_BLK_W)[:, None]
                    + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        do = tl.load(do_base + _token_offsets(q_blk, tok, sdo_gy, sdo_gx, sdo_ty, sdo_tx, Q_GRID_W, Q_BLK_W)[:, None]
                     + offs_dv[None, :], mask=m_ok[:, None] & dv_ok[None, :], other=0.0)
        lse = tl.load(LSE + pid_bh * n_q_tokens + q_tok, mask=m_ok, other=float('inf'))
        delta = tl.load(LSE + delta_off + pid_bh * n_q_tokens + q_tok, mask=m_ok, other=0.0)
        s_t = _dot(k, tl.trans(q), IEEE) * qk_scale  # [BLOCK_N, BLOCK_M]
        keep = m_ok[None, :]
        if CAUSAL:
            keep = keep & (k_tok[:, None] <= q_tok[None, :])
        p_t = tl.where(keep, tl.exp2(s_t - lse[None, :]), 0.0)
        dv += _dot(p_t.to(do.dtype), do, IEEE)
        dp_t = _dot(v, tl.trans(do), IEEE)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _dot(ds_t.to(q.dtype), q, IEEE)
    dk = dk * scale
    if LEPE_K > 0:  # the LCE conv's input gradient: transposed depthwise conv of the output gradient
        y = (kv_blk // KV_GRID_W) * (KV_BLOCK // KV_BLK_W) + offs_n // KV_BLK_W
        x = (kv_blk % KV_GRID_W) * KV_BLK_W + offs_n % KV_BLK_W
        dv += _dwconv_tile(do_base, LW + h * D_V * (LEPE_K * LEPE_K), y, x, n_ok, offs_dv, dv_ok, map_h, map_w,
                           sdo_ty, sdo_tx, LEPE_K, True, BLOCK_N, BLOCK_DV)
    tl.store(DK + dk_off + b * sdk_b + h * sdk_h
             + _token_offsets(kv_blk, offs_n, sdk_gy, sdk_gx, sdk_ty, sdk_tx, KV_GRID_W, KV_BLK_W)[:, None]
             + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=n_ok[:, None] & d_ok[None, :])
    tl.store(DV + dv_off + b * sdv_b + h * sdv_h
             + _token_offsets(kv_blk, offs_n, sdv_gy, sdv_gx, sdv_ty, sdv_tx, KV_GRID_W, KV_BLK_W)[:, None]
             + offs_dv[None, :], dv.to(DV.dtype.element_ty), mask=n_ok[:, None] & dv_ok[None, :])


@triton.jit
def _lepe_grad_kernel(DO, V, PART, v_off,
                      sdo_b, sdo_y, sdo_x, sv_b, sv_y, sv_x,
                      n_tiles, tiles_per_chunk, map_h, map_w, channels,
                      KS: tl.constexpr, TAPS: tl.constexpr, ROWS: tl.constexpr, BLOCK_X: tl.constexpr,
                      BLOCK_C: tl.constexpr):
    """Partial sums of the LCE conv's weight and bias gradients over one chunk of pixel tiles (all images).

    PART [chunks, channels * (KS * KS + 1)]: the weight gradient [channels, KS * KS] flat, then the bias gradient.
    A tile is ROWS x BLOCK_X pixels of one image (whole rows of maps up to 128 wide) and BLOCK_C channels. Its
    output gradient stays in registers while the KS * KS taps, unrolled, each load the tile of v shifted by the tap
    (a plain [pixels, channels] tile; the shifted tiles overlap, so most loads hit the cache) and reduce their
    product over the pixels.
    """
    tl.static_assert(KS % 2 == 1, 'the LCE conv size must be odd')
    tl.static_assert(TAPS >= KS * KS, 'the taps must hold the conv')
    chunk = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < channels
    taps = tl.arange(0, TAPS)
    pix = tl.arange(0, ROWS * BLOCK_X)
    row_tiles = tl.cdiv(map_h, ROWS)
    col_tiles = tl.cdiv(map_w, BLOCK_X)
    acc = tl.zeros([TAPS, BLOCK_C], dtype=tl.float32)
    bias = tl.zeros([BLOCK_C], dtype=tl.float32)
    first = chunk * tiles_per_chunk
    for tile in range(first, tl.minimum(first + tiles_per_chunk, n_tiles)):
        img = (tile // (row_tiles * col_tiles)).to(tl.int64)
        y = (tile // col_tiles) % row_tiles * ROWS + pix // BLOCK_X
        x = tile % col_tiles * BLOCK_X + pix % BLOCK_X
        p_ok = (y < map_h) & (x < map_w)
        g = tl.load(DO + img * sdo_b + y[:, None] * sdo_y + x[:, None] * sdo_x + offs_c[None, :],
                    mask=p_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
        bias += tl.sum(g, 0)
        v_rows = V + v_off + img * sv_b + y * sv_y + x * sv_x
        for tap in tl.static_range(KS * KS):
            dy = tap // KS - KS // 2
            dx = tap % KS - KS // 2
            ok = p_ok & (y + dy >= 0) & (y + dy < map_h) & (x + dx >= 0) & (x + dx < map_w)
            val = tl.load((v_rows + (dy * sv_y + dx * sv_x))[:, None] + offs_c[None, :],
                          mask=ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
            acc += tl.where(taps[:, None] == tap, tl.sum(val * g, 0)[None, :], 0.0)
    row = PART + chunk * (channels * (KS * KS + 1))
    tl.store(row + offs_c[None, :] * (KS * KS) + taps[:, None], acc, mask=(taps < KS * KS)[:, None] & c_ok[None, :])
    tl.store(row + channels * (KS * KS) + offs_c, bias, mask=c_ok)


@triton.jit
def _bra_route_kernel(Q, K, IBUF, q_off, k_off,
                      sq_b, sq_gy, sq_gx, sq_ty, sq_tx, sk_b, sk_gy, sk_gx, sk_ty, sk_tx,
                      scale, qlist_off, offs_off,
                      R: tl.constexpr, T: tl.constexpr, TOPK: tl.constexpr, GRID_W: tl.constexpr,
                      BLK_W: tl.constexpr, C_QK: tl.constexpr, R_PAD: tl.constexpr, T_STEP: tl.constexpr,
                      BLOCK_C: tl.constexpr, IEEE: tl.constexpr):
    """BRA's routing of one image, and its inversion for the dK/dV kernel.

    As the official code computes it, in the inputs' dtype: region means of q and k (float32 sums, rounded),
    ``(q_mean * scale)`` rounded, affinities ``@ k_mean^T`` accumulated in float32 and rounded, then the top-k key
    regions of every query region (best first; ties to the lower index). Writes into IBUF (int32):
    ``[0, B*R*TOPK)`` the routing [B, R, TOPK]; from ``qlist_off`` the query regions routed to each key region,
    grouped by key region (ascending within a group), ``R * TOPK`` per image; from ``offs_off`` the groups' starts
    [B, R + 1] (positions in that list).
    """
    tl.static_assert(R <= R_PAD, 'the padded regions must hold the regions')
    tl.static_assert(TOPK <= R, 'top-k is at most the regions')
    b = tl.program_id(0)
    offs_r = tl.arange(0, R_PAD)
    r_ok = offs_r < R
    q_base = Q + q_off + b * sq_b + (offs_r // GRID_W) * sq_gy + (offs_r % GRID_W) * sq_gx
    k_base = K + k_off + b * sk_b + (offs_r // GRID_W) * sk_gy + (offs_r % GRID_W) * sk_gx
    dtype = Q.dtype.element_ty
    logits = tl.zeros([R_PAD, R_PAD], dtype=tl.float32)
    for c0 in tl.static_range(0, C_QK, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < C_QK
        sum_q = tl.zeros([R_PAD, BLOCK_C], dtype=tl.float32)
        sum_k = tl.zeros([R_PAD, BLOCK_C], dtype=tl.float32)
        for t0 in range(0, T, T_STEP):  # T_STEP tokens of every region at once: [R_PAD, T_STEP, BLOCK_C] loads
            t = t0 + tl.arange(0, T_STEP)
            mask = r_ok[:, None, None] & (t < T)[None, :, None] & c_ok[None, None, :]
            q_tok = ((t // BLK_W) * sq_ty + (t % BLK_W) * sq_tx)[None, :, None] + offs_c[None, None, :]
            k_tok = ((t // BLK_W) * sk_ty + (t % BLK_W) * sk_tx)[None, :, None] + offs_c[None, None, :]
            sum_q += tl.sum(tl.load(q_base[:, None, None] + q_tok, mask=mask, other=0.0).to(tl.float32), 1)
            sum_k += tl.sum(tl.load(k_base[:, None, None] + k_tok, mask=mask, other=0.0).to(tl.float32), 1)
        q_mean = ((sum_q / T).to(dtype).to(tl.float32) * scale).to(dtype)
        k_mean = (sum_k / T).to(dtype)
        logits += _dot(q_mean, tl.trans(k_mean), IEEE)
    cols = tl.arange(0, R_PAD)[None, :]
    work = tl.where(cols < R, logits.to(dtype).to(tl.float32), float('-inf'))
    chosen = tl.zeros([R_PAD, R_PAD], dtype=tl.int32)
    route = IBUF + (b * R + offs_r) * TOPK
    for i in range(TOPK):
        best = tl.argmax(work, axis=1)
        tl.store(route + i, best, mask=r_ok)
        hit = cols == best[:, None]
        chosen = tl.where(hit & r_ok[:, None], 1, chosen)
        work = tl.where(hit, float('-inf'), work)
    # inversion: for key region j, the query regions i with chosen[i, j], ascending, at starts[j] + rank
    per_key = tl.sum(chosen, 0)
    starts = b * (R * TOPK) + tl.cumsum(per_key, 0) - per_key
    rank = tl.cumsum(chosen, 0) - 1
    rows = offs_r[:, None] + 0 * cols
    tl.store(IBUF + qlist_off + starts[None, :] + rank, rows, mask=chosen > 0)
    tl.store(IBUF + offs_off + b * (R + 1) + offs_r, starts, mask=r_ok)
    tl.store(IBUF + offs_off + b * (R + 1) + R, (b + 1) * (R * TOPK))


# ---------------------------------------------------------------------------------------------------------------
# launching: per-shape plans, compiled handles




_FWD = Kernel(_bsa_fwd_kernel)
_BWD_DQ = Kernel(_bsa_bwd_dq_kernel)
_BWD_DKV = Kernel(_bsa_bwd_dkv_kernel)
_LEPE_GRAD = Kernel(_lepe_grad_kernel)
_ROUTE = Kernel(_bra_route_kernel)


def _dot_mode(dtype: torch.dtype) -> int:
    if dtype == torch.float32:
        return 1
    return 2 if dtype == torch.bfloat16 and _interpreting() else 0


class _Tiles:
    """Tile sizes and grids of the attention kernels for one problem shape; ``fwd``, ``dq`` and ``dkv`` override
    the heuristics below field by field (``None`` fields are chosen by them)."""

    def __init__(self, q_block: int, kv_block: int, max_kv: int, n_q_blocks: int, n_kv_blocks: int, d_qk: int,
                 d_v: int, dtype: torch.dtype, fwd: Optional[TileConfig] = None, dq: Optional[TileConfig] = None,
                 dkv: Optional[TileConfig] = None):
        d_max = max(d_qk, d_v)
        self.fwd = self._q_side(q_block, kv_block, max_kv, d_max, fwd)
        self.dq = self._q_side(q_block, kv_block, max_kv, d_max, dq)
        dkv = dkv or TileConfig()
        block_n = dkv.block_n or pow2_clamp(kv_block, 16, 64)
        routed_rows = max(1, n_q_blocks * max_kv * q_block // n_kv_blocks)  # mean query rows per KV block
        block_m = dkv.block_m or pow2_clamp(routed_rows, 16, 64 if d_max > 64 else 128)
        self.dkv = TileConfig(block_m, block_n, dkv.num_warps or (4 if block_m * block_n >= 64 * 64 else 2),
                              dkv.num_stages or 2)
        self.q_tiles = [triton.cdiv(q_block, cfg[0]) for cfg in (self.fwd, self.dq)]
        self.kv_tiles = triton.cdiv(kv_block, block_n)
        self.block_dqk, self.block_dv = pow2_clamp(d_qk, 16, 256), pow2_clamp(d_v, 16, 256)
        self.ieee = _dot_mode(dtype)

    @staticmethod
    def _q_side(q_block, kv_block, max_kv, d_max, config):
        config = config or TileConfig()
        block_m = config.block_m or pow2_clamp(q_block, 16, 64)
        block_n = config.block_n or pow2_clamp(max_kv * kv_block, 16, 64 if d_max > 64 else 128)
        num_warps = config.num_warps or (4 if block_m * block_n >= 64 * 64 else 2)
        return TileConfig(block_m, block_n, num_warps, config.num_stages or 2)


def _seq_strides(x: torch.Tensor, block: int) -> tuple:
    """[B, H, N, D] (any strides) as a one-wide grid of one-row blocks of ``block`` tokens."""
    s_b, s_h, s_n, _ = x.stride()
    return s_b, s_h, block * s_n, 0, 0, s_n


def _bshd_strides(batch: int, n: int, heads: int, d: int, block: int) -> tuple:
    """A dense [B, N, H, D] tensor read as [B, H, N, D]."""
    return n * heads * d, d, block * heads * d, 0, 0, heads * d


# ---------------------------------------------------------------------------------------------------------------
# routed block-sparse attention on [B, H, N, D] sequences (MoBA, VMoBA, the generic op)


class _SeqPlan:
    """Everything about a block-sparse call that depends only on shapes, strides and dtypes."""

    def __init__(self, q, k, v, index, count, q_block: int, kv_block: int, causal: bool,
                 configs: Tuple[Optional[TileConfig], ...] = (None, None, None)):
        batch, heads, n_q, d_qk = q.shape
        n_k, d_v = k.shape[2], v.shape[-1]
        max_kv = index.shape[-1]
        self.batch, self.heads, self.n_q, self.d_qk, self.d_v = batch, heads, n_q, d_qk, d_v
        self.q_block, self.kv_block, self.max_kv, self.causal = q_block, kv_block, max_kv, causal
        self.n_kv_blocks = n_k // kv_block
        self.tiles = tiles = _Tiles(q_block, kv_block, max_kv, n_q // q_block, self.n_kv_blocks, d_qk, d_v, q.dtype,
                                    *configs)
        self.q_str, self.k_str, self.v_str = _seq_strides(q, q_block), _seq_strides(k, kv_block), \
            _seq_strides(v, kv_block)
        self.o_str = _bshd_strides(batch, n_q, heads, d_v, q_block)
        self.dq_str = _seq_strides(torch.empty_like(q, device='meta'), q_block)
        self.dk_str = _seq_strides(torch.empty_like(k, device='meta'), kv_block)
        self.dv_str = _seq_strides(torch.empty_like(v, device='meta'), kv_block)
        head_stride = lambda t: 0 if t.shape[1] == 1 else t.stride(1)  # noqa: E731
        self.idx_str = (index.stride(0), head_stride(index), index.stride(2))
        self.cnt_str = (0, 0) if count is None else (count.stride(0), head_stride(count))
        self.has_count = count is not None
        common = dict(Q_BLOCK=q_block, KV_BLOCK=kv_block, Q_GRID_W=1, Q_BLK_W=q_block, KV_GRID_W=1,
                      KV_BLK_W=kv_block, D_QK=d_qk, D_V=d_v, BLOCK_DQK=tiles.block_dqk, BLOCK_DV=tiles.block_dv,
                      IEEE=tiles.ieee, CAUSAL=causal)
        bm, bn, _, _ = tiles.fwd
        self.fwd_consts = dict(common, Q_TILES=tiles.q_tiles[0], HAS_COUNT=self.has_count, BLOCK_M=bm, BLOCK_N=bn,
                               LEPE_K=0, STORE_O=False)
        self.fwd_grid = flat_grid(n_q // q_block * tiles.q_tiles[0] * batch * heads, 'block_sparse_attention')
        bm, bn, _, _ = tiles.dq
        self.dq_consts = dict(common, Q_TILES=tiles.q_tiles[1], HAS_COUNT=self.has_count, BLOCK_M=bm, BLOCK_N=bn)
        self.dq_grid = flat_grid(n_q // q_block * tiles.q_tiles[1] * batch * heads, 'block_sparse_attention')
        bm, bn, _, _ = tiles.dkv
        self.dkv_consts = dict(common, KV_TILES=tiles.kv_tiles, ENTRY_DIV=max_kv, BLOCK_M=bm, BLOCK_N=bn, LEPE_K=0)
        self.dkv_grid = flat_grid(self.n_kv_blocks * tiles.kv_tiles * batch * heads, 'block_sparse_attention')
        self.slots = {name: [None, None] for name in ('fwd', 'dq', 'dkv')}
        self.bwd_slots: Dict[tuple, Dict[str, list]] = {}


_PLANS: Dict[tuple, object] = {}


def _cached(key: tuple, build):
    return cached_plan(_PLANS, key, build)


def _seq_plan(q, k, v, index, count, q_block, kv_block, causal, configs=(None, None, None)) -> _SeqPlan:
    key = ('seq', q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype, q.device, index.shape,
           index.stride(), index.dtype, None if count is None else (count.shape, count.stride(), count.dtype),
           q_block, kv_block, causal, _aligned(q), _aligned(k), _aligned(v), _aligned(index),
           count is None or _aligned(count), tuple(None if c is None else tuple(c) for c in configs))
    return _cached(key, lambda: _SeqPlan(q, k, v, index, count, q_block, kv_block, causal, configs))


def _fwd(q, k, v, index, count, q_block: int, kv_block: int, scale: float,
         config: Optional[TileConfig] = None, causal: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Forward kernel: ([B, Nq, H, Dv] output, [2, B, H, Nq] float32 log-sum-exp and room for the backward)."""
    q, k, v = unit_last(q), unit_last(k), unit_last(v)
    plan = _seq_plan(q, k, v, index, count, q_block, kv_block, causal, (config, None, None))
    out = q.new_empty((plan.batch, plan.n_q, plan.heads, plan.d_v))  # [B, N, H, D]: BRA's layout is a view of it
    lse = torch.empty((2, plan.batch, plan.heads, plan.n_q), device=q.device, dtype=torch.float32)
    count_arg = index if count is None else count
    args = (q, k, v, out, out, lse, index, count_arg, q, q, 0, 0, 0, *plan.q_str, *plan.k_str, *plan.v_str,
            *plan.o_str, *plan.idx_str, *plan.cnt_str, plan.heads, plan.n_q, plan.max_kv, 0, 0, scale * LOG2E)
    _FWD.launch(plan.slots['fwd'], plan.fwd_grid, args, plan.fwd_consts, *plan.tiles.fwd[2:])
    return out, lse


def inverted_block_index(index: torch.Tensor, count: Optional[torch.Tensor], n_kv_blocks: int
                         ) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """For each KV block, the query blocks routed to it, on the device (stable sort + searchsorted, no sync).

    Args:
        index: [B, Hi, nQ, max_kv] duplicate-free routing lists.
        count: [B, Hc, nQ] valid entries per row (Hc in {1, Hi} or Hi == 1), or None for all.
        n_kv_blocks: KV blocks per sequence.

    Returns:
        ``(entries, offsets, list_heads)``. Each (batch, list head) row of the routing is sorted on its own (a
        segmented sort: many small sorts in parallel rather than one long one), by key
        ``row * (n_kv_blocks + 1) + kv_block``, with ignored entries on the key ``row * (n_kv_blocks + 1) +
        n_kv_blocks``, so the flattened keys are sorted as a whole. ``entries`` [rows, nQ * max_kv] holds each sorted
        entry's position within its row (its query block is ``entry // max_kv``; query blocks ascend within a
        group); int32 ``offsets`` [rows * (n_kv_blocks + 1)] gives where group ``row * (n_kv_blocks + 1) + kv_block``
        starts in the flattened entries (it ends where the next key starts); ``list_heads`` is the rows' head count.
    """
    batch, _, n_q_blocks, max_kv = index.shape
    if count is not None and count.shape[1] != index.shape[1]:
        heads = max(count.shape[1], index.shape[1])
        index, count = index.expand(batch, heads, -1, -1), count.expand(batch, heads, -1)
    list_heads = index.shape[1]
    rows, width = batch * list_heads, n_kv_blocks + 1
    # few ops on purpose: this runs at every backward, and at BiFormer's sizes each op costs more on the host
    base = torch.arange(0, rows * width, width, device=index.device).view(batch, list_heads, 1, 1)
    key = index + base
    if count is not None:
        key = torch.where(torch.arange(max_kv, device=index.device) < count[..., None], key, base + n_kv_blocks)
    sorted_key, entries = torch.sort(key.reshape(rows, n_q_blocks * max_kv), dim=-1, stable=True)
    offsets = torch.searchsorted(sorted_key.flatten(), torch.arange(rows * width, device=index.device,
                                                                    dtype=sorted_key.dtype), out_int32=True)
    return entries, offsets, list_heads


def _bwd(dout, q, k, v, out, lse, index, count, q_block: int, kv_block: int, scale: float,
         dq_config: Optional[TileConfig] = None, dkv_config: Optional[TileConfig] = None, causal: bool = False):
    """Backward kernels; ``dout`` is the [B, Nq, H, Dv] output's gradient, ``lse`` the forward's."""
    q, k, v, out, dout = map(unit_last, (q, k, v, out, dout))
    plan = _seq_plan(q, k, v, index, count, q_block, kv_block, causal, (None, dq_config, dkv_config))
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    d_b, d_n, d_h, _ = dout.stride()
    do_str = (d_b, d_h, q_block * d_n, 0, 0, d_n)
    o_b, o_n, o_h, _ = out.stride()
    o_str = (o_b, o_h, q_block * o_n, 0, 0, o_n)
    slots = plan.bwd_slots.get((do_str, o_str, _aligned(dout), _aligned(out)))
    if slots is None:
        slots = plan.bwd_slots[(do_str, o_str, _aligned(dout), _aligned(out))] = {'dq': [None, None],
                                                                                  'dkv': [None, None]}
    count_arg = index if count is None else count
    delta_off = lse[0].numel()
    _BWD_DQ.launch(slots['dq'], plan.dq_grid, (
        q, k, v, out, dout, lse, dq, index, count_arg, 0, 0, 0, 0, delta_off,
        *plan.q_str, *plan.k_str, *plan.v_str, *o_str, *do_str, *plan.dq_str, *plan.idx_str, *plan.cnt_str,
        plan.heads, plan.n_q, plan.max_kv, scale * LOG2E, scale), plan.dq_consts, *plan.tiles.dq[2:])
    q_list, offsets, list_heads = inverted_block_index(index, count, plan.n_kv_blocks)
    _BWD_DKV.launch(slots['dkv'], plan.dkv_grid, (
        q, k, v, dout, lse, dk, dv, q_list, offsets, q, 0, 0, 0, 0, 0, delta_off, 0, 0,
        *plan.q_str, *plan.k_str, *plan.v_str, *do_str, *plan.dk_str, *plan.dv_str,
        plan.heads, list_heads, plan.n_q, plan.n_kv_blocks, 0, 0, scale * LOG2E, scale),
        plan.dkv_consts, *plan.tiles.dkv[2:])
    return dq, dk, dv


# custom ops (opaque to FX and torch.compile) and autograd


@torch.library.custom_op('visionattn::block_sparse_attention_fwd', mutates_args=())
def _bsa_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor,
                count: Optional[torch.Tensor], q_block: int, kv_block: int,
                scale: float, causal: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    return _fwd(q, k, v, index, count, q_block, kv_block, scale, causal=causal)


@_bsa_fwd_op.register_fake
def _(q, k, v, index, count, q_block, kv_block, scale, causal=False):
    batch, heads, n_q, _ = q.shape
    return (q.new_empty((batch, n_q, heads, v.shape[-1])),
            q.new_empty((2, batch, heads, n_q), dtype=torch.float32))


@torch.library.custom_op('visionattn::block_sparse_attention_bwd', mutates_args=())
def _bsa_bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                lse: torch.Tensor, index: torch.Tensor, count: Optional[torch.Tensor], q_block: int, kv_block: int,
                scale: float, causal: bool) -> List[torch.Tensor]:
    return list(_bwd(dout, q, k, v, out, lse, index, count, q_block, kv_block, scale, causal=causal))


@_bsa_bwd_op.register_fake
def _(dout, q, k, v, out, lse, index, count, q_block, kv_block, scale, causal):
    return [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)]


def _setup_context(ctx, inputs, output):
    q, k, v, index, count, q_block, kv_block, scale, causal = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, index, count)
    ctx.q_block, ctx.kv_block, ctx.scale, ctx.causal, ctx.opaque = q_block, kv_block, scale, causal, True


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, index, count = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    if ctx.opaque:
        dq, dk, dv = _bsa_bwd_op(dout, q, k, v, out, lse, index, count, ctx.q_block, ctx.kv_block, ctx.scale,
                                 ctx.causal)
    else:
        dq, dk, dv = _bwd(dout, q, k, v, out, lse, index, count, ctx.q_block, ctx.kv_block, ctx.scale,
                          causal=ctx.causal)
    return dq, dk, dv, None, None, None, None, None, None


_bsa_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def block_sparse_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor,
                                  count: Optional[torch.Tensor], q_block: int, kv_block: int,
                                  scale: float, causal: bool = False) -> torch.Tensor:
    """Routed block-sparse attention on the Triton kernels (inputs validated and deduplicated by the caller).

    Args:
        q: [B, H, Nq, Dqk], any strides.
        k: [B, H, Nk, Dqk].
        v: [B, H, Nk, Dv].
        index: Integer [B, H or 1, nQ, max_kv] duplicate-free KV block lists.
        count: Integer [B, H or 1, nQ] valid entries per list, or None for all.
        q_block: Query tokens per block.
        kv_block: Key/value tokens per block.
        scale: Logit multiplier.
        causal: Mask keys whose token index exceeds the query's (q_block == kv_block, checked by the caller).

    Returns:
        [B, Nq, H, Dv] (note the layout: heads after tokens).
    """
    if index.dtype not in (torch.int32, torch.int64):
        index = index.to(torch.int32)
    index = index.contiguous()
    count = None if count is None else count.to(index.dtype).contiguous()
    if torch.compiler.is_compiling():  # opaque to the compiler through the custom op
        return _bsa_fwd_op(q, k, v, index, count, q_block, kv_block, float(scale), bool(causal))[0]
    # eager: the same kernels through a plain autograd.Function, which costs less host time than the custom op
    # dispatch (BRA at 224 is a few tens of microseconds of GPU work per call)
    return _BlockSparseFn.apply(q, k, v, index, count, q_block, kv_block, float(scale), bool(causal))


class _BlockSparseFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, index, count, q_block, kv_block, scale, causal):
        out, lse = _fwd(q, k, v, index, count, q_block, kv_block, scale, causal=causal)
        ctx.save_for_backward(q, k, v, out, lse, index, count)
        ctx.q_block, ctx.kv_block, ctx.scale, ctx.causal, ctx.opaque = q_block, kv_block, scale, causal, False
        return out

    @staticmethod
    @first_order_only('block_sparse_attention')
    def backward(ctx, dout):
        return _backward(ctx, dout, None)


# ---------------------------------------------------------------------------------------------------------------
# bi-level routing attention: routing, attention and the LCE conv, on NHWC maps or region-major tensors


class _BraPlan:
    """Everything about a BRA call that depends only on shapes, strides, dtypes and the module's settings.

    Two layouts: 'map', the qkv projection's output [B, H, W, 2 * Cqk + Cv] on a map of n_win x n_win regions
    (q, k and v are read from it in place; outputs are [B, H, W, Cv]; the gradient is one [B, H, W, C] tensor);
    'regions', region-major q, k [B, R, T, Cqk] and v [B, R, T, Cv] (outputs [B, R, T, Cv]).
    """

    def __init__(self, q, k, v, lepe_weight, lepe_bias, n_win: int, heads: int, topk: int, c_qk: int):
        self.map = k is None
        if self.map:
            batch, map_h, map_w, c_tot = q.shape
            c_v = c_tot - 2 * c_qk
            rh, rw = map_h // n_win, map_w // n_win
            regions, tokens, grid_w, blk_w = n_win * n_win, rh * rw, n_win, rw
            s_b, s_y, s_x, _ = q.stride()
            hd_q, hd_v = c_qk // heads, c_v // heads
            self.q_str = (s_b, hd_q, rh * s_y, rw * s_x, s_y, s_x)
            self.k_str, self.v_str = self.q_str, (s_b, hd_v, rh * s_y, rw * s_x, s_y, s_x)
            self.route_q = self.route_k = (s_b, rh * s_y, rw * s_x, s_y, s_x)
            self.offsets = (0, c_qk, 2 * c_qk)
            self.out_shape = (batch, map_h, map_w, c_v)
            self.o_str = (map_h * map_w * c_v, hd_v, rh * map_w * c_v, rw * c_v, map_w * c_v, c_v)
            self.grad_shape = (batch, map_h, map_w, c_tot)
            d_b, d_y, d_x = map_h * map_w * c_tot, map_w * c_tot, c_tot
            self.dq_str = (d_b, hd_q, rh * d_y, rw * d_x, d_y, d_x)
            self.dk_str, self.dv_str = self.dq_str, (d_b, hd_v, rh * d_y, rw * d_x, d_y, d_x)
            self.grad_offsets = self.offsets
        else:
            batch, regions, tokens, _ = q.shape
            c_v = v.shape[-1]
            map_h = map_w = rh = rw = 0
            grid_w, blk_w = 1, tokens
            hd_q, hd_v = c_qk // heads, c_v // heads
            self.q_str = (q.stride(0), hd_q, q.stride(1), 0, 0, q.stride(2))
            self.k_str = (k.stride(0), hd_q, k.stride(1), 0, 0, k.stride(2))
            self.v_str = (v.stride(0), hd_v, v.stride(1), 0, 0, v.stride(2))
            self.route_q = (q.stride(0), q.stride(1), 0, 0, q.stride(2))
            self.route_k = (k.stride(0), k.stride(1), 0, 0, k.stride(2))
            self.offsets = (0, 0, 0)
            self.out_shape = (batch, regions, tokens, c_v)
            self.o_str = (regions * tokens * c_v, hd_v, tokens * c_v, 0, 0, c_v)
            self.dq_str = (regions * tokens * c_qk, hd_q, tokens * c_qk, 0, 0, c_qk)
            self.dk_str, self.dv_str = self.dq_str, self.o_str
            self.grad_offsets = (0, 0, 0)
        self.batch, self.heads, self.regions, self.tokens, self.topk = batch, heads, regions, tokens, topk
        self.c_qk, self.c_v, self.map_h, self.map_w, self.grid_w, self.blk_w = c_qk, c_v, map_h, map_w, grid_w, blk_w
        self.n_q = regions * tokens
        self.lepe_k = 0 if lepe_weight is None else lepe_weight.shape[-1]
        self.zero_bias, self.bias_dtype = None, None if lepe_bias is None else lepe_bias.dtype
        if self.lepe_k and lepe_bias is None:
            self.zero_bias = torch.zeros(c_v, device=q.device, dtype=torch.float32)
        self.tiles = tiles = _Tiles(tokens, tokens, topk, regions, regions, hd_q, hd_v, q.dtype)
        common = dict(Q_BLOCK=tokens, KV_BLOCK=tokens, Q_GRID_W=grid_w, Q_BLK_W=blk_w, KV_GRID_W=grid_w,
                      KV_BLK_W=blk_w, D_QK=hd_q, D_V=hd_v, BLOCK_DQK=tiles.block_dqk, BLOCK_DV=tiles.block_dv,
                      IEEE=tiles.ieee, CAUSAL=False)
        bm, bn, _, _ = tiles.fwd
        self.fwd_consts = {store: dict(common, Q_TILES=tiles.q_tiles[0], HAS_COUNT=False, BLOCK_M=bm, BLOCK_N=bn,
                                       LEPE_K=self.lepe_k, STORE_O=store) for store in (False, True)}
        self.fwd_grid = flat_grid(regions * tiles.q_tiles[0] * batch * heads, 'bi_level_routing_attention')
        bm, bn, _, _ = tiles.dq
        self.dq_consts = dict(common, Q_TILES=tiles.q_tiles[1], HAS_COUNT=False, BLOCK_M=bm, BLOCK_N=bn)
        self.dq_grid = flat_grid(regions * tiles.q_tiles[1] * batch * heads, 'bi_level_routing_attention')
        bm, bn, _, _ = tiles.dkv
        self.dkv_consts = dict(common, KV_TILES=tiles.kv_tiles, ENTRY_DIV=1, BLOCK_M=bm, BLOCK_N=bn,
                               LEPE_K=self.lepe_k)
        self.dkv_grid = flat_grid(regions * tiles.kv_tiles * batch * heads, 'bi_level_routing_attention')
        # routing: int32 buffer = routing [B, R, topk] | inverted lists [B, R * topk] | their starts [B, R + 1]
        self.qlist_off, self.offs_off = batch * regions * topk, 2 * batch * regions * topk
        self.ibuf_size = self.offs_off + batch * (regions + 1)
        self.lse_size = batch * heads * self.n_q  # log-sum-exp, then room for the backward's rowsum(dO * O)
        self.fused_routing = regions <= MAX_FUSED_ROUTING_REGIONS
        r_pad = max(16, triton.next_power_of_2(regions))
        self.route_consts = dict(R=regions, T=tokens, TOPK=topk, GRID_W=grid_w, BLK_W=blk_w, C_QK=c_qk, R_PAD=r_pad,
                                 T_STEP=min(4, triton.next_power_of_2(tokens)), BLOCK_C=32, IEEE=tiles.ieee)
        self.route_launch = (4 if r_pad <= 32 else 8, 3)
        self.route_grid = (batch, 1, 1)
        if self.lepe_k:  # the conv's weight/bias gradients: about eight programs per SM, partial sums per chunk
            self.lepe_taps = triton.next_power_of_2(self.lepe_k * self.lepe_k)
            self.lepe_block_c = 32
            self.lepe_block_x = min(128, triton.next_power_of_2(map_w))
            self.lepe_rows = min(128 // self.lepe_block_x, triton.next_power_of_2(map_h))  # tiles of ~128 pixels
            c_blocks = triton.cdiv(c_v, self.lepe_block_c)
            self.lepe_tiles = batch * triton.cdiv(map_h, self.lepe_rows) * triton.cdiv(map_w, self.lepe_block_x)
            chunks = max(1, min(self.lepe_tiles, triton.cdiv(1024, c_blocks)))
            self.lepe_tiles_per_chunk = triton.cdiv(self.lepe_tiles, chunks)
            self.lepe_chunks = triton.cdiv(self.lepe_tiles, self.lepe_tiles_per_chunk)
            self.lepe_grid = (self.lepe_chunks, c_blocks, 1)
        self.slots = {name: [None, None] for name in ('route', 'fwd0', 'fwd1')}
        self.bwd_slots: Dict[tuple, Dict[str, list]] = {}


def _bra_plan(q, k, v, lepe_weight, lepe_bias, n_win, heads, topk, c_qk) -> _BraPlan:
    if k is None:
        key = ('bra-map', q.shape, q.stride(), q.dtype, q.device, _aligned(q), n_win, heads, topk, c_qk)
    else:
        key = ('bra-regions', q.shape, q.stride(), k.stride(), v.shape, v.stride(), q.dtype, q.device, _aligned(q),
               _aligned(k), _aligned(v), heads, topk, c_qk)
    if lepe_weight is not None:
        key += (lepe_weight.shape, lepe_weight.dtype, _aligned(lepe_weight),
                None if lepe_bias is None else (lepe_bias.dtype, _aligned(lepe_bias)))
    return _cached(key, lambda: _BraPlan(q, k, v, lepe_weight, lepe_bias, n_win, heads, topk, c_qk))


def _torch_routing(plan: _BraPlan, q, k, scale: float, ibuf: torch.Tensor) -> None:
    """The routing kernel's results by PyTorch ops (maps of more than MAX_FUSED_ROUTING_REGIONS regions)."""
    batch, regions, topk = plan.batch, plan.regions, plan.topk
    if plan.map:
        n_win = plan.grid_w
        qk = q[..., :2 * plan.c_qk].unflatten(1, (n_win, -1)).unflatten(3, (n_win, -1))
        means = qk.mean((2, 4)).reshape(batch, regions, 2 * plan.c_qk)
        q_mean, k_mean = means[..., :plan.c_qk], means[..., plan.c_qk:]
    else:
        q_mean, k_mean = q.mean(2), k.mean(2)
    route = torch.topk((q_mean * scale) @ k_mean.transpose(-2, -1), topk, dim=-1).indices.to(torch.int32)
    entries, offsets, _ = inverted_block_index(route[:, None], None, regions)
    ibuf[:plan.qlist_off] = route.flatten()
    ibuf[plan.qlist_off:plan.offs_off] = (entries // topk).flatten()
    ibuf[plan.offs_off:] = offsets


def _bra_forward(plan: _BraPlan, q, k, v, lepe_weight, lepe_bias, scale: float, store_o: bool):
    """Routing and attention (+ LCE): (output, attention-only output or None, lse buffer, int32 routing buffer)."""
    k_arg = q if k is None else k
    v_arg = q if v is None else v
    ibuf = torch.empty(plan.ibuf_size, device=q.device, dtype=torch.int32)
    q_off, k_off, v_off = plan.offsets
    if plan.fused_routing:
        _ROUTE.launch(plan.slots['route'], plan.route_grid, (
            q, k_arg, ibuf, q_off, k_off, *plan.route_q, *plan.route_k, scale, plan.qlist_off, plan.offs_off),
            plan.route_consts, *plan.route_launch)
    else:
        _torch_routing(plan, q, k_arg, scale, ibuf)
    out = q.new_empty(plan.out_shape)
    store_o = store_o and plan.lepe_k > 0
    o = q.new_empty(plan.out_shape) if store_o else None
    lse = torch.empty(2 * plan.lse_size, device=q.device, dtype=torch.float32)
    lw = q if lepe_weight is None else lepe_weight
    lb = plan.zero_bias if lepe_bias is None else lepe_bias
    lb = q if lb is None else lb
    _FWD.launch(plan.slots['fwd1' if store_o else 'fwd0'], plan.fwd_grid, (
        q, k_arg, v_arg, out if o is None else o, out, lse, ibuf, ibuf, lw, lb, q_off, k_off, v_off,
        *plan.q_str, *plan.k_str, *plan.v_str, *plan.o_str, plan.regions * plan.topk, 0, plan.topk, 0, 0,
        plan.heads, plan.n_q, plan.topk, plan.map_h, plan.map_w, scale * LOG2E),
        plan.fwd_consts[store_o], *plan.tiles.fwd[2:])
    return out, o, lse, ibuf


def _dout_strides(plan: _BraPlan, dout: torch.Tensor) -> tuple:
    hd_v = plan.c_v // plan.heads
    if plan.map:
        s_b, s_y, s_x, _ = dout.stride()
        return s_b, hd_v, (plan.map_h // plan.grid_w) * s_y, plan.blk_w * s_x, s_y, s_x
    return dout.stride(0), hd_v, dout.stride(1), 0, 0, dout.stride(2)


def _bra_backward(plan: _BraPlan, dout, q, k, v, lepe_weight, o, lse, ibuf, scale: float, lepe_grad: bool):
    """Gradients: (dqkv, None, None) or (dq, dk, dv), then the LCE conv's (dweight, dbias) or (None, None)."""
    dout = unit_last(dout)
    do_str = _dout_strides(plan, dout)
    key = (do_str, _aligned(dout))
    slots = plan.bwd_slots.get(key)
    if slots is None:
        slots = plan.bwd_slots[key] = {name: [None, None] for name in ('dq', 'dkv', 'lepe')}
    k_arg = q if k is None else k
    v_arg = q if v is None else v
    if plan.map:
        dq = dk = dv = q.new_empty(plan.grad_shape)
    else:
        dq, dk, dv = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
    q_off, k_off, v_off = plan.offsets
    dq_off, dk_off, dv_off = plan.grad_offsets
    lw = q if lepe_weight is None else lepe_weight
    _BWD_DQ.launch(slots['dq'], plan.dq_grid, (
        q, k_arg, v_arg, o, dout, lse, dq, ibuf, ibuf, q_off, k_off, v_off, dq_off, plan.lse_size,
        *plan.q_str, *plan.k_str, *plan.v_str, *plan.o_str, *do_str, *plan.dq_str,
        plan.regions * plan.topk, 0, plan.topk, 0, 0, plan.heads, plan.n_q, plan.topk, scale * LOG2E, scale),
        plan.dq_consts, *plan.tiles.dq[2:])
    _BWD_DKV.launch(slots['dkv'], plan.dkv_grid, (
        q, k_arg, v_arg, dout, lse, dk, dv, ibuf, ibuf, lw, q_off, k_off, v_off, dk_off, dv_off, plan.lse_size,
        plan.qlist_off, plan.offs_off, *plan.q_str, *plan.k_str, *plan.v_str, *do_str, *plan.dk_str, *plan.dv_str,
        plan.heads, 1, plan.n_q, plan.regions, plan.map_h, plan.map_w, scale * LOG2E, scale),
        plan.dkv_consts, *plan.tiles.dkv[2:])
    grads = (dq, None, None) if plan.map else (dq, dk, dv)
    if not (plan.lepe_k and lepe_grad):
        return grads + (None, None)
    kk = plan.lepe_k * plan.lepe_k
    part = torch.empty((plan.lepe_chunks, plan.c_v * (kk + 1)), device=q.device, dtype=torch.float32)
    _LEPE_GRAD.launch(slots['lepe'], plan.lepe_grid, (
        dout, v_arg, part, v_off, do_str[0], do_str[4], do_str[5], plan.v_str[0], plan.v_str[4], plan.v_str[5],
        plan.lepe_tiles, plan.lepe_tiles_per_chunk, plan.map_h, plan.map_w, plan.c_v),
        dict(KS=plan.lepe_k, TAPS=plan.lepe_taps, ROWS=plan.lepe_rows, BLOCK_X=plan.lepe_block_x,
             BLOCK_C=plan.lepe_block_c), 4, 2)
    total = part.sum(0)
    dweight = total[:plan.c_v * kk].view(lepe_weight.shape)
    dbias = total[plan.c_v * kk:]
    if dweight.dtype != lepe_weight.dtype:
        dweight = dweight.to(lepe_weight.dtype)
    if plan.bias_dtype not in (None, torch.float32):
        dbias = dbias.to(plan.bias_dtype)
    return grads + (dweight, dbias)


@torch.library.custom_op('visionattn::bra_fwd', mutates_args=())
def _bra_fwd_op(q: torch.Tensor, k: Optional[torch.Tensor], v: Optional[torch.Tensor],
                lepe_weight: Optional[torch.Tensor], lepe_bias: Optional[torch.Tensor], n_win: int, heads: int,
                topk: int, c_qk: int, scale: float, store_o: bool
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    plan = _bra_plan(q, k, v, lepe_weight, lepe_bias, n_win, heads, topk, c_qk)
    out, o, lse, ibuf = _bra_forward(plan, q, k, v, lepe_weight, lepe_bias, scale, store_o)
    return out, q.new_empty(0) if o is None else o, lse, ibuf


@_bra_fwd_op.register_fake
def _(q, k, v, lepe_weight, lepe_bias, n_win, heads, topk, c_qk, scale, store_o):
    if k is None:
        batch, map_h, map_w, c_tot = q.shape
        regions, out_shape = n_win * n_win, (batch, map_h, map_w, c_tot - 2 * c_qk)
        n_q = map_h * map_w
    else:
        batch, regions, tokens, _ = q.shape
        out_shape, n_q = (batch, regions, tokens, v.shape[-1]), regions * tokens
    o_shape = out_shape if store_o and lepe_weight is not None else (0,)
    ibuf = 2 * batch * regions * topk + batch * (regions + 1)
    return (q.new_empty(out_shape), q.new_empty(o_shape), q.new_empty(2 * batch * heads * n_q, dtype=torch.float32),
            q.new_empty(ibuf, dtype=torch.int32))


@torch.library.custom_op('visionattn::bra_bwd', mutates_args=())
def _bra_bwd_op(dout: torch.Tensor, q: torch.Tensor, k: Optional[torch.Tensor], v: Optional[torch.Tensor],
                lepe_weight: Optional[torch.Tensor], lepe_bias: Optional[torch.Tensor], o: torch.Tensor,
                lse: torch.Tensor, ibuf: torch.Tensor, n_win: int, heads: int, topk: int, c_qk: int, scale: float,
                lepe_grad: bool) -> List[torch.Tensor]:
    plan = _bra_plan(q, k, v, lepe_weight, lepe_bias, n_win, heads, topk, c_qk)
    dq, dk, dv, dweight, dbias = _bra_backward(plan, dout, q, k, v, lepe_weight, o, lse, ibuf, scale, lepe_grad)
    if dbias is not None and dbias._base is dweight._base:
        dbias = dbias.clone()  # a custom op's outputs must not alias each other (a few hundred floats)
    return [q.new_empty(0) if g is None else g for g in (dq, dk, dv, dweight, dbias)]


@_bra_bwd_op.register_fake
def _(dout, q, k, v, lepe_weight, lepe_bias, o, lse, ibuf, n_win, heads, topk, c_qk, scale, lepe_grad):
    empty = q.new_empty(0)
    grads = [q.new_empty(q.shape)] + ([empty, empty] if k is None else [k.new_empty(k.shape), v.new_empty(v.shape)])
    if lepe_weight is not None and lepe_grad:
        bias_dtype = torch.float32 if lepe_bias is None else lepe_bias.dtype
        grads += [lepe_weight.new_empty(lepe_weight.shape),
                  lepe_weight.new_empty(lepe_weight.shape[0], dtype=bias_dtype)]
    else:
        grads += [empty, empty]
    return grads


def _bra_setup_context(ctx, inputs, output):
    q, k, v, lepe_weight, lepe_bias, n_win, heads, topk, c_qk, scale, store_o = inputs
    out, o, lse, ibuf = output
    ctx.save_for_backward(q, k, v, lepe_weight, lepe_bias, o if o.numel() else out, lse, ibuf)
    ctx.spec = (n_win, heads, topk, c_qk, scale)


def _bra_op_backward(ctx, dout, do, dlse, dibuf):
    q, k, v, lepe_weight, lepe_bias, o, lse, ibuf = ctx.saved_tensors
    lepe_grad = lepe_weight is not None and (ctx.needs_input_grad[3] or ctx.needs_input_grad[4])
    dq, dk, dv, dweight, dbias = _bra_bwd_op(dout, q, k, v, lepe_weight, lepe_bias, o, lse, ibuf, *ctx.spec, lepe_grad)
    if k is None:
        dk = dv = None
    if not lepe_grad:
        dweight = dbias = None
    elif lepe_bias is None:
        dbias = None
    return dq, dk, dv, dweight, dbias, None, None, None, None, None, None


_bra_fwd_op.register_autograd(_bra_op_backward, setup_context=_bra_setup_context)


class _BraFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, lepe_weight, lepe_bias, plan, scale):
        out, o, lse, ibuf = _bra_forward(plan, q, k, v, lepe_weight, lepe_bias, scale, True)
        ctx.save_for_backward(q, k, v, lepe_weight, out if o is None else o, lse, ibuf)
        ctx.plan, ctx.scale = plan, scale
        ctx.mark_non_differentiable(ibuf)
        ctx.set_materialize_grads(False)  # no zero-filled gradient for the routing buffer
        return out, ibuf

    @staticmethod
    @first_order_only('bi_level_routing_attention')
    def backward(ctx, dout, _):
        if dout is None:
            return None, None, None, None, None, None, None
        q, k, v, lepe_weight, o, lse, ibuf = ctx.saved_tensors
        needs = ctx.needs_input_grad
        lepe_grad = lepe_weight is not None and (needs[3] or needs[4])
        dq, dk, dv, dweight, dbias = _bra_backward(ctx.plan, dout, q, k, v, lepe_weight, o, lse, ibuf, ctx.scale,
                                                   lepe_grad)
        return dq, dk, dv, dweight, dbias if needs[4] else None, None, None


def _bra_triton(q, k, v, lepe_weight, lepe_bias, n_win: int, heads: int, topk: int, c_qk: int, scale: float
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                           for t in (q, k, v, lepe_weight, lepe_bias))
    if torch.compiler.is_compiling():  # opaque to the compiler through the custom op
        out, _, _, ibuf = _bra_fwd_op(q, k, v, lepe_weight, lepe_bias, n_win, heads, topk, c_qk, scale, grad)
        return out, ibuf
    plan = _bra_plan(q, k, v, lepe_weight, lepe_bias, n_win, heads, topk, c_qk)
    if grad:
        return _BraFn.apply(q, k, v, lepe_weight, lepe_bias, plan, scale)
    out, _, _, ibuf = _bra_forward(plan, q, k, v, lepe_weight, lepe_bias, scale, False)
    return out, ibuf


def _routing_of(ibuf: torch.Tensor, batch: int, regions: int, topk: int) -> torch.Tensor:
    return ibuf[:batch * regions * topk].view(batch, regions, topk).long()


def bra_map_triton(qkv: torch.Tensor, num_heads: int, n_win: int, topk: int, qk_dim: int, scale: float,
                   lepe_weight: Optional[torch.Tensor] = None, lepe_bias: Optional[torch.Tensor] = None,
                   return_routing: bool = False):
    """BRA (+ LCE) on the qkv projection's NHWC output (validated by the caller); see ``bi_level_routing_attention_2d``.

    Returns:
        [B, H, W, Cv] (and the int64 [B, n_win², topk] routing with ``return_routing``).
    """
    qkv = unit_last(qkv)
    if lepe_weight is not None and not lepe_weight.is_contiguous():
        lepe_weight = lepe_weight.contiguous()
    out, ibuf = _bra_triton(qkv, None, None, lepe_weight, lepe_bias, n_win, num_heads, topk, qk_dim, float(scale))
    if return_routing:
        return out, _routing_of(ibuf, qkv.shape[0], n_win * n_win, topk)
    return out


def bra_regions_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, topk: int, scale: float,
                       return_routing: bool = False):
    """BRA on region-major q, k [B, R, T, Cqk] and v [B, R, T, Cv] (validated by the caller): [B, R, T, Cv]."""
    q, k, v = unit_last(q), unit_last(k), unit_last(v)
    out, ibuf = _bra_triton(q, k, v, None, None, 1, num_heads, topk, q.shape[-1], float(scale))
    if return_routing:
        return out, _routing_of(ibuf, q.shape[0], q.shape[1], topk)
    return out
