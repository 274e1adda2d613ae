"""Triton kernels of routed block-sparse attention: forward, backward, launchers, custom ops and autograd.

Each program owns a tile of one query block and streams the key/value tokens of that block's routed KV blocks,
read in place through the index (never gathered into a copy): the routed blocks form a "virtual" key sequence
of ``count * kv_block_size`` tokens, tiled by BLOCK_N rows whose addresses come from the index. Small regions
(BiFormer's 4x4 and 2x2) thus pack several KV blocks into one tile and sizes that are not powers of two (7x7 = 49)
only pad the last tile. Forward keeps an online softmax and saves the log-sum-exp (base 2).

Backward: dQ by the same loop; dK/dV per KV block over the query blocks routed to it, from an inverted index
built on the device with a stable sort and ``searchsorted`` (no host sync, no Python loop). No atomics: results are
deterministic run to run.
"""
import os
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl

__all__ = ['block_sparse_attention_triton', 'inverted_block_index', 'KernelConfig']

LOG2E = 1.4426950408889634


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
def _bsa_fwd_kernel(Q, K, V, OUT, LSE, IDX, CNT,
                    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
                    stride_ib, stride_ih, stride_iq, stride_cb, stride_ch,
                    n_heads, n_q_tokens, max_kv, qk_scale,
                    Q_BLOCK: tl.constexpr, KV_BLOCK: tl.constexpr, Q_TILES: tl.constexpr,
                    D_QK: tl.constexpr, D_V: tl.constexpr, HAS_COUNT: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
                    IEEE: tl.constexpr, CAUSAL: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    q_blk = pid_m // Q_TILES
    offs_m = (pid_m % Q_TILES) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < Q_BLOCK
    q_tok = q_blk * Q_BLOCK + offs_m
    offs_d = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = offs_d < D_QK
    dv_ok = offs_dv < D_V

    q = tl.load(Q + b * stride_qb + h * stride_qh + q_tok[:, None] * stride_qn + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    idx_row = IDX + b * stride_ib + h * stride_ih + q_blk * stride_iq
    if HAS_COUNT:
        n_blocks = tl.load(CNT + b * stride_cb + h * stride_ch + q_blk)
    else:
        n_blocks = max_kv
    length = n_blocks * KV_BLOCK
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)  # finite: fully masked tiles give exp2(-inf) = 0, not NaN
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for start in range(0, length, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < length
        blk = tl.load(idx_row + offs_n // KV_BLOCK, mask=n_ok, other=0)
        k_tok = blk * KV_BLOCK + offs_n % KV_BLOCK
        k = tl.load(k_base + k_tok[:, None] * stride_kn + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :],
                    other=0.0)
        s = _dot(q, tl.trans(k), IEEE) * qk_scale
        keep = n_ok[None, :]
        if CAUSAL:  # MoBA: no key after the query
            keep = keep & (k_tok[None, :] <= q_tok[:, None])
        s = tl.where(keep, s, float('-inf'))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + k_tok[:, None] * stride_vn + offs_dv[None, :], mask=n_ok[:, None] & dv_ok[None, :],
                    other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new
    has_keys = l_i > 0.0
    safe_l = tl.where(has_keys, l_i, 1.0)
    out = acc / safe_l[:, None]
    tl.store(OUT + b * stride_ob + h * stride_oh + q_tok[:, None] * stride_on + offs_dv[None, :],
             out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & dv_ok[None, :])
    lse = tl.where(has_keys, m_i + tl.log2(safe_l), float('inf'))  # +inf: an empty row's p is 0 in backward
    tl.store(LSE + pid_bh * n_q_tokens + q_tok, lse, mask=row_ok)


@triton.jit
def _bsa_bwd_dq_kernel(Q, K, V, OUT, DO, LSE, DELTA, DQ, IDX, CNT,
                       stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                       stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
                       stride_dob, stride_doh, stride_don,
                       stride_dqb, stride_dqh, stride_dqn,
                       stride_ib, stride_ih, stride_iq, stride_cb, stride_ch,
                       n_heads, n_q_tokens, max_kv, qk_scale, scale,
                       Q_BLOCK: tl.constexpr, KV_BLOCK: tl.constexpr, Q_TILES: tl.constexpr,
                       D_QK: tl.constexpr, D_V: tl.constexpr, HAS_COUNT: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr,
                       BLOCK_DV: tl.constexpr, IEEE: tl.constexpr, CAUSAL: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    q_blk = pid_m // Q_TILES
    offs_m = (pid_m % Q_TILES) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < Q_BLOCK
    q_tok = q_blk * Q_BLOCK + offs_m
    offs_d = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = offs_d < D_QK
    dv_ok = offs_dv < D_V

    q = tl.load(Q + b * stride_qb + h * stride_qh + q_tok[:, None] * stride_qn + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + q_tok[:, None] * stride_don + offs_dv[None, :],
                 mask=row_ok[:, None] & dv_ok[None, :], other=0.0)
    lse = tl.load(LSE + pid_bh * n_q_tokens + q_tok, mask=row_ok, other=float('inf'))
    out = tl.load(OUT + b * stride_ob + h * stride_oh + q_tok[:, None] * stride_on + offs_dv[None, :],
                  mask=row_ok[:, None] & dv_ok[None, :], other=0.0)
    delta = tl.sum(do.to(tl.float32) * out.to(tl.float32), 1)  # softmax backward's rowsum(dO * O)
    tl.store(DELTA + pid_bh * n_q_tokens + q_tok, delta, mask=row_ok)  # for the dK/dV kernel, launched after
    idx_row = IDX + b * stride_ib + h * stride_ih + q_blk * stride_iq
    if HAS_COUNT:
        n_blocks = tl.load(CNT + b * stride_cb + h * stride_ch + q_blk)
    else:
        n_blocks = max_kv
    length = n_blocks * KV_BLOCK
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=tl.float32)
    for start in range(0, length, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < length
        blk = tl.load(idx_row + offs_n // KV_BLOCK, mask=n_ok, other=0)
        k_tok = blk * KV_BLOCK + offs_n % KV_BLOCK
        k = tl.load(k_base + k_tok[:, None] * stride_kn + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :],
                    other=0.0)
        v = tl.load(v_base + k_tok[:, None] * stride_vn + offs_dv[None, :], mask=n_ok[:, None] & dv_ok[None, :],
                    other=0.0)
        s = _dot(q, tl.trans(k), IEEE) * qk_scale
        keep = n_ok[None, :]
        if CAUSAL:
            keep = keep & (k_tok[None, :] <= q_tok[:, None])
        p = tl.where(keep, tl.exp2(s - lse[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), IEEE)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, IEEE)
    dq = dq * scale
    tl.store(DQ + b * stride_dqb + h * stride_dqh + q_tok[:, None] * stride_dqn + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _bsa_bwd_dkv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, QLIST, OFFS,
                        stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                        stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
                        stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                        n_heads, list_heads, n_q_tokens, n_kv_blocks, max_kv, qk_scale, scale,
                        Q_BLOCK: tl.constexpr, KV_BLOCK: tl.constexpr, KV_TILES: tl.constexpr,
                        D_QK: tl.constexpr, D_V: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr,
                        BLOCK_DV: tl.constexpr, IEEE: tl.constexpr, CAUSAL: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    kv_blk = pid_n // KV_TILES
    offs_n = (pid_n % KV_TILES) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < KV_BLOCK
    k_tok = kv_blk * KV_BLOCK + offs_n
    offs_d = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = offs_d < D_QK
    dv_ok = offs_dv < D_V

    k = tl.load(K + b * stride_kb + h * stride_kh + k_tok[:, None] * stride_kn + offs_d[None, :],
                mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    v = tl.load(V + b * stride_vb + h * stride_vh + k_tok[:, None] * stride_vn + offs_dv[None, :],
                mask=n_ok[:, None] & dv_ok[None, :], other=0.0)
    group = (b * list_heads + h % list_heads) * (n_kv_blocks + 1) + kv_blk  # see inverted_block_index
    first = tl.load(OFFS + group)
    length = (tl.load(OFFS + group + 1) - first) * Q_BLOCK
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_dob + h * stride_doh

    dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    for start in range(0, length, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        m_ok = offs_m < length
        entry = tl.load(QLIST + first + offs_m // Q_BLOCK, mask=m_ok, other=0)  # position in its routing row
        q_blk = entry // max_kv
        q_tok = q_blk * Q_BLOCK + offs_m % Q_BLOCK
        q = tl.load(q_base + q_tok[:, None] * stride_qn + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :],
                    other=0.0)
        do = tl.load(do_base + q_tok[:, None] * stride_don + offs_dv[None, :], mask=m_ok[:, None] & dv_ok[None, :],
                     other=0.0)
        lse = tl.load(LSE + pid_bh * n_q_tokens + q_tok, mask=m_ok, other=float('inf'))
        delta = tl.load(DELTA + pid_bh * n_q_tokens + q_tok, mask=m_ok, other=0.0)
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
    tl.store(DK + b * stride_dkb + h * stride_dkh + k_tok[:, None] * stride_dkn + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=n_ok[:, None] & d_ok[None, :])
    tl.store(DV + b * stride_dvb + h * stride_dvh + k_tok[:, None] * stride_dvn + offs_dv[None, :],
             dv.to(DV.dtype.element_ty), mask=n_ok[:, None] & dv_ok[None, :])


# ---------------------------------------------------------------------------------------------------------------
# launchers


class KernelConfig:
    """Tile sizes and launch parameters of one kernel; ``None`` fields are chosen by the heuristics below."""

    def __init__(self, block_m: Optional[int] = None, block_n: Optional[int] = None, num_warps: Optional[int] = None,
                 num_stages: Optional[int] = None):
        self.block_m, self.block_n, self.num_warps, self.num_stages = block_m, block_n, num_warps, num_stages


def _dot_mode(dtype: torch.dtype) -> int:
    if dtype == torch.float32:
        return 1
    return 2 if dtype == torch.bfloat16 and os.environ.get('TRITON_INTERPRET', '0') == '1' else 0


def _pow2_clamp(n: int, low: int, high: int) -> int:
    return max(low, min(high, 1 << (max(int(n), 1) - 1).bit_length()))  # plain Python: cheaper on the host


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _head_stride(x: torch.Tensor) -> int:
    return 0 if x.shape[1] == 1 else x.stride(1)


def _fwd_config(q_block: int, kv_block: int, max_kv: int, d_max: int, config: Optional[KernelConfig]):
    config = config or KernelConfig()
    block_m = config.block_m or _pow2_clamp(q_block, 16, 64)
    block_n = config.block_n or _pow2_clamp(max_kv * kv_block, 16, 64 if d_max > 64 else 128)
    num_warps = config.num_warps or (4 if block_m * block_n >= 64 * 64 else 2)
    return block_m, block_n, num_warps, config.num_stages or 2


def _fwd(q, k, v, index, count, q_block: int, kv_block: int, scale: float,
         config: Optional[KernelConfig] = None, causal: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    q, k, v = map(_last_dim_contiguous, (q, k, v))
    batch, heads, n_q, d_qk = q.shape
    d_v = v.shape[-1]
    max_kv = index.shape[-1]
    out = q.new_empty((batch, n_q, heads, d_v))  # [B, N, H, D]: BRA's region-major layout is a view of it
    lse = torch.empty((batch, heads, n_q), device=q.device, dtype=torch.float32)
    block_m, block_n, num_warps, num_stages = _fwd_config(q_block, kv_block, max_kv, max(d_qk, d_v), config)
    q_tiles = triton.cdiv(q_block, block_m)
    grid = (n_q // q_block * q_tiles, batch * heads)
    count_arg = count if count is not None else index
    _bsa_fwd_kernel[grid](
        q, k, v, out, lse, index, count_arg,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(2), out.stride(1),
        index.stride(0), _head_stride(index), index.stride(2),
        count_arg.stride(0), _head_stride(count_arg) if count is not None else 0,
        heads, n_q, max_kv, scale * LOG2E,
        Q_BLOCK=q_block, KV_BLOCK=kv_block, Q_TILES=q_tiles, D_QK=d_qk, D_V=d_v, HAS_COUNT=count is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_DQK=_pow2_clamp(d_qk, 16, 256), BLOCK_DV=_pow2_clamp(d_v, 16, 256),
        IEEE=_dot_mode(q.dtype), CAUSAL=causal, num_warps=num_warps, num_stages=num_stages)
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
         dq_config: Optional[KernelConfig] = None, dkv_config: Optional[KernelConfig] = None, causal: bool = False):
    q, k, v, out, dout = map(_last_dim_contiguous, (q, k, v, out, dout))
    batch, heads, n_q, d_qk = q.shape
    n_k, d_v = k.shape[2], v.shape[-1]
    max_kv = index.shape[-1]
    n_kv_blocks = n_k // kv_block
    delta = torch.empty_like(lse)  # rowsum(dO * O), [B, H, Nq] like the LSE; written by the dQ kernel
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    ieee = _dot_mode(q.dtype)
    block_dqk, block_dv = _pow2_clamp(d_qk, 16, 256), _pow2_clamp(d_v, 16, 256)
    # dout is [B, N, H, D]: pass its strides in (b, h, n) order
    do_strides = (dout.stride(0), dout.stride(2), dout.stride(1))

    block_m, block_n, num_warps, num_stages = _fwd_config(q_block, kv_block, max_kv, max(d_qk, d_v), dq_config)
    q_tiles = triton.cdiv(q_block, block_m)
    count_arg = count if count is not None else index
    _bsa_bwd_dq_kernel[(n_q // q_block * q_tiles, batch * heads)](
        q, k, v, out, dout, lse, delta, dq, index, count_arg,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(2), out.stride(1),
        *do_strides, dq.stride(0), dq.stride(1), dq.stride(2),
        index.stride(0), _head_stride(index), index.stride(2),
        count_arg.stride(0), _head_stride(count_arg) if count is not None else 0,
        heads, n_q, max_kv, scale * LOG2E, scale,
        Q_BLOCK=q_block, KV_BLOCK=kv_block, Q_TILES=q_tiles, D_QK=d_qk, D_V=d_v, HAS_COUNT=count is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_DQK=block_dqk, BLOCK_DV=block_dv, IEEE=ieee, CAUSAL=causal,
        num_warps=num_warps, num_stages=num_stages)

    q_list, offsets, list_heads = inverted_block_index(index, count, n_kv_blocks)
    dkv_config = dkv_config or KernelConfig()
    block_n = dkv_config.block_n or _pow2_clamp(kv_block, 16, 64)
    routed_rows = max(1, (n_q // q_block) * max_kv * q_block // n_kv_blocks)  # mean query rows per KV block
    block_m = dkv_config.block_m or _pow2_clamp(routed_rows, 16, 64 if max(d_qk, d_v) > 64 else 128)
    num_warps = dkv_config.num_warps or (4 if block_m * block_n >= 64 * 64 else 2)
    kv_tiles = triton.cdiv(kv_block, block_n)
    _bsa_bwd_dkv_kernel[(n_kv_blocks * kv_tiles, batch * heads)](
        q, k, v, dout, lse, delta, dk, dv, q_list, offsets,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), *do_strides,
        dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
        heads, list_heads, n_q, n_kv_blocks, max_kv, scale * LOG2E, scale,
        Q_BLOCK=q_block, KV_BLOCK=kv_block, KV_TILES=kv_tiles, D_QK=d_qk, D_V=d_v,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_DQK=block_dqk, BLOCK_DV=block_dv, IEEE=ieee, CAUSAL=causal,
        num_warps=num_warps, num_stages=dkv_config.num_stages or 2)
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------------------------
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
            q.new_empty((batch, heads, n_q), dtype=torch.float32))


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
    if q.shape[0] * q.shape[1] > 65535:  # batch * heads runs on the second grid axis, which CUDA caps at 65535
        raise ValueError(f'block_sparse_attention (triton): batch * heads = {q.shape[0] * q.shape[1]} exceeds '
                         "CUDA's grid limit of 65535; split the batch or use backend='reference'")
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
    def backward(ctx, dout):
        return _backward(ctx, dout, None)
