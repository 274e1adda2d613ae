"""Triton kernels for the selective scan (Mamba's S6, arXiv 2312.00752): forward, backward, custom ops, autograd.

One program owns a block of channels of one batch element (all inside one B/C group) and walks the sequence in
chunks. Inside a chunk the linear recurrence ``h_t = a_t * h_{t-1} + b_t`` is an associative scan over time (Blelloch's
pairs ``(a, b)``); the state carries from chunk to chunk in registers. The forward pass saves the state at each chunk's
start, so the backward pass recomputes the chunk's states instead of storing all of them (as mamba-ssm does), then runs
the adjoint recurrence ``g_t = dy_t C_t + a_{t+1} g_{t+1}`` as a reverse scan. Gradients of B and C, shared by the
channels of a group, are summed across channel blocks with atomic adds in fp32; those of A, D and the delta bias
per batch element, then over the batch in PyTorch.
"""
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
# Elements of one [channels, states, time] register tile: large enough to keep the scan busy, small enough not to spill.
TILE_ELEMENTS = 4096
# d_state 1 (VMamba v2, LaMamba): no padding of the state axis, long chunks, small tiles. The H200 sweep
# (docs/benchmarks/selective_scan_h200.md) gave 0.81 / 4.25 ms forward / forward+backward at VMamba-T's first stage
# against 4.31 / 26.1 ms for the general tiles below (state axis padded to 2).
SINGLE_STATE_TILES = dict(tile_elements=1024, chunk=128, num_warps=2, min_block_n=1)


@triton.jit
def _linear_combine(decay_first, drive_first, decay_second, drive_second):
    # composition of h -> a1 h + b1 then h -> a2 h + b2
    return decay_first * decay_second, decay_second * drive_first + drive_second


@triton.jit
def _load_delta(DELTA, DBIAS, offsets, mask, d, d_ok, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """The step size delta (+ bias, softplus) as fp32, 0 where masked (so the state passes through unchanged);
    also the pre-softplus value, whose sigmoid the backward pass needs."""
    raw = tl.load(DELTA + offsets, mask=mask, other=0.).to(tl.float32)
    if HAS_BIAS:
        raw += tl.load(DBIAS + d, mask=d_ok, other=0.).to(tl.float32)[:, None]
    step = raw
    if SOFTPLUS:  # torch's softplus with threshold 20
        step = tl.where(raw <= 20., tl.log(1. + tl.exp(raw)), raw)
    return tl.where(mask, step, 0.), raw


@triton.jit
def _ss_fwd_kernel(U, DELTA, A, BM, CM, DSKIP, Z, DBIAS, OUT, HSTART, LAST,
                   su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sz_b, sz_d, sz_l, so_b, so_d, so_l,
                   sb_b, sb_g, sb_n, sb_l, sc_b, sc_g, sc_n, sc_l,
                   seq_len, dim, n_state, dim_per_group, n_groups, n_dblocks, n_chunks,
                   HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr):
    pid = tl.program_id(0)
    d_block = pid % n_dblocks
    g = (pid // n_dblocks) % n_groups
    b = (pid // (n_dblocks * n_groups)).to(tl.int64)
    d_local = d_block * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d_local < dim_per_group
    d = g * dim_per_group + d_local
    n = tl.arange(0, BLOCK_N)
    n_ok = n < n_state
    dn_ok = d_ok[:, None] & n_ok[None, :]
    a_log2 = tl.load(A + d[:, None] * n_state + n[None, :], mask=dn_ok, other=0.).to(tl.float32) * 1.4426950408889634
    if HAS_D:
        skip = tl.load(DSKIP + d, mask=d_ok, other=0.).to(tl.float32)
    is_last = tl.arange(0, CHUNK) == CHUNK - 1
    state = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for c in range(n_chunks):
        t = c * CHUNK + tl.arange(0, CHUNK)
        t_ok = t < seq_len
        m = d_ok[:, None] & t_ok[None, :]
        tl.store(HSTART + ((b * dim + d[:, None]) * n_chunks + c) * BLOCK_N + n[None, :], state,
                 mask=d_ok[:, None])
        u = tl.load(U + b * su_b + d[:, None] * su_d + t[None, :] * su_l, mask=m, other=0.).to(tl.float32)
        step, _ = _load_delta(DELTA, DBIAS, b * sdt_b + d[:, None] * sdt_d + t[None, :] * sdt_l, m, d, d_ok,
                              HAS_BIAS, SOFTPLUS)
        nt_ok = n_ok[:, None] & t_ok[None, :]
        b_t = tl.load(BM + b * sb_b + g * sb_g + n[:, None] * sb_n + t[None, :] * sb_l, mask=nt_ok,
                      other=0.).to(tl.float32)
        c_t = tl.load(CM + b * sc_b + g * sc_g + n[:, None] * sc_n + t[None, :] * sc_l, mask=nt_ok,
                      other=0.).to(tl.float32)
        decay = tl.exp2(step[:, None, :] * a_log2[:, :, None])  # [BLOCK_D, BLOCK_N, CHUNK]
        drive = (step * u)[:, None, :] * b_t[None, :, :]
        decay_acc, drive_acc = tl.associative_scan((decay, drive), 2, _linear_combine)
        states = decay_acc * state[:, :, None] + drive_acc
        y = tl.sum(states * c_t[None, :, :], axis=1)
        if HAS_D:
            y += skip[:, None] * u
        if HAS_Z:
            z = tl.load(Z + b * sz_b + d[:, None] * sz_d + t[None, :] * sz_l, mask=m, other=0.).to(tl.float32)
            y = y * z * tl.sigmoid(z)
        tl.store(OUT + b * so_b + d[:, None] * so_d + t[None, :] * so_l, y.to(OUT.dtype.element_ty), mask=m)
        state = tl.sum(tl.where(is_last[None, None, :], states, 0.), axis=2)
    tl.store(LAST + (b * dim + d[:, None]) * n_state + n[None, :], state, mask=dn_ok)


@triton.jit
def _ss_bwd_kernel(U, DELTA, A, BM, CM, DSKIP, Z, DBIAS, DOUT, HSTART,
                   DU, DDELTA, DZ, DA_PART, DB_ACC, DC_ACC, DD_PART, DBIAS_PART,
                   su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sz_b, sz_d, sz_l, sdo_b, sdo_d, sdo_l,
                   sb_b, sb_g, sb_n, sb_l, sc_b, sc_g, sc_n, sc_l,
                   seq_len, dim, n_state, dim_per_group, n_groups, n_dblocks, n_chunks,
                   HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr):
    pid = tl.program_id(0)
    d_block = pid % n_dblocks
    g = (pid // n_dblocks) % n_groups
    b = (pid // (n_dblocks * n_groups)).to(tl.int64)
    d_local = d_block * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d_local < dim_per_group
    d = g * dim_per_group + d_local
    n = tl.arange(0, BLOCK_N)
    n_ok = n < n_state
    dn_ok = d_ok[:, None] & n_ok[None, :]
    a_nat = tl.load(A + d[:, None] * n_state + n[None, :], mask=dn_ok, other=0.).to(tl.float32)
    a_log2 = a_nat * 1.4426950408889634
    if HAS_D:
        skip = tl.load(DSKIP + d, mask=d_ok, other=0.).to(tl.float32)
    local = tl.arange(0, CHUNK)
    # a_{t+1} * g_{t+1} at the first step after the current chunk, handed back from the later chunk
    carry = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    grad_a = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    grad_skip = tl.zeros([BLOCK_D], dtype=tl.float32)
    grad_bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        t = c * CHUNK + local
        t_ok = t < seq_len
        m = d_ok[:, None] & t_ok[None, :]
        nt_ok = n_ok[:, None] & t_ok[None, :]
        state0 = tl.load(HSTART + ((b * dim + d[:, None]) * n_chunks + c) * BLOCK_N + n[None, :],
                         mask=d_ok[:, None], other=0.)
        u = tl.load(U + b * su_b + d[:, None] * su_d + t[None, :] * su_l, mask=m, other=0.).to(tl.float32)
        dt_offsets = b * sdt_b + d[:, None] * sdt_d + t[None, :] * sdt_l
        step, raw = _load_delta(DELTA, DBIAS, dt_offsets, m, d, d_ok, HAS_BIAS, SOFTPLUS)
        # the next step's decay inside this chunk; the chunk's last step takes the carry instead (decay 1)
        m_next = m & (local < CHUNK - 1)[None, :] & (t + 1 < seq_len)[None, :]
        step_next, _ = _load_delta(DELTA, DBIAS, dt_offsets + sdt_l, m_next, d, d_ok, HAS_BIAS, SOFTPLUS)
        b_t = tl.load(BM + b * sb_b + g * sb_g + n[:, None] * sb_n + t[None, :] * sb_l, mask=nt_ok,
                      other=0.).to(tl.float32)
        c_t = tl.load(CM + b * sc_b + g * sc_g + n[:, None] * sc_n + t[None, :] * sc_l, mask=nt_ok,
                      other=0.).to(tl.float32)
        # recompute the chunk's states from the saved start state
        decay = tl.exp2(step[:, None, :] * a_log2[:, :, None])
        drive = (step * u)[:, None, :] * b_t[None, :, :]
        decay_acc, drive_acc = tl.associative_scan((decay, drive), 2, _linear_combine)
        states = decay_acc * state0[:, :, None] + drive_acc
        dout = tl.load(DOUT + b * sdo_b + d[:, None] * sdo_d + t[None, :] * sdo_l, mask=m, other=0.).to(tl.float32)
        if HAS_Z:
            y = tl.sum(states * c_t[None, :, :], axis=1)
            if HAS_D:
                y += skip[:, None] * u
            z = tl.load(Z + b * sz_b + d[:, None] * sz_d + t[None, :] * sz_l, mask=m, other=0.).to(tl.float32)
            sig = tl.sigmoid(z)
            grad_z = dout * y * sig * (1. + z * (1. - sig))
            tl.store(DZ + b * su_b + d[:, None] * su_d + t[None, :] * su_l, grad_z.to(DZ.dtype.element_ty), mask=m)
            dy = dout * z * sig
        else:
            dy = dout
        # adjoint recurrence g_t = dy_t C_t + a_{t+1} g_{t+1}, scanned from the chunk's end
        decay_next = tl.exp2(step_next[:, None, :] * a_log2[:, :, None])
        adj_decay, adj_drive = tl.associative_scan((decay_next, dy[:, None, :] * c_t[None, :, :]), 2,
                                                   _linear_combine, reverse=True)
        adjoint = adj_drive + adj_decay * carry[:, :, None]
        carry = tl.sum(tl.where((local == 0)[None, None, :], decay * adjoint, 0.), axis=2)
        # a_t h_{t-1} = h_t - b_t: the decayed previous state, without a division by a_t
        decayed_prev = adjoint * (states - drive)
        grad_a += tl.sum(decayed_prev * step[:, None, :], axis=2)
        grad_step = tl.sum(adjoint * (u[:, None, :] * b_t[None, :, :]) + decayed_prev * a_nat[:, :, None], axis=1)
        grad_u = tl.sum(adjoint * b_t[None, :, :], axis=1) * step
        if HAS_D:
            grad_u += skip[:, None] * dy
            grad_skip += tl.sum(dy * u, axis=1)
        tl.store(DU + b * su_b + d[:, None] * su_d + t[None, :] * su_l, grad_u.to(DU.dtype.element_ty), mask=m)
        if SOFTPLUS:
            grad_step = grad_step * tl.sigmoid(raw)
        grad_step = tl.where(m, grad_step, 0.)
        grad_bias += tl.sum(grad_step, axis=1)
        tl.store(DDELTA + b * su_b + d[:, None] * su_d + t[None, :] * su_l, grad_step.to(DDELTA.dtype.element_ty),
                 mask=m)
        # B and C are shared by the group's channels: partial sums over this channel block, added atomically
        acc_offsets = ((b * n_groups + g) * n_state + n[:, None]) * seq_len + t[None, :]
        tl.atomic_add(DB_ACC + acc_offsets, tl.sum(adjoint * (step * u)[:, None, :], axis=0), mask=nt_ok)
        tl.atomic_add(DC_ACC + acc_offsets, tl.sum(dy[:, None, :] * states, axis=0), mask=nt_ok)
    tl.store(DA_PART + (b * dim + d[:, None]) * n_state + n[None, :], grad_a, mask=dn_ok)
    if HAS_D:
        tl.store(DD_PART + b * dim + d, grad_skip, mask=d_ok)
    if HAS_BIAS:
        tl.store(DBIAS_PART + b * dim + d, grad_bias, mask=d_ok)


# ---------------------------------------------------------------------------------------------------------------
# launchers


# Tile overrides for benchmark sweeps (tools/bench_suites/selective_scan.py --ss-sweep): keys tile_elements, chunk,
# num_warps, min_block_n; empty means the defaults below.
TILE_OVERRIDES: dict = {}


def _setting(name: str, n_state: int, default):
    if name in TILE_OVERRIDES:
        return TILE_OVERRIDES[name]
    return SINGLE_STATE_TILES[name] if n_state == 1 else default


def _tiles(n_state: int, dim_per_group: int, seq_len: int) -> Tuple[int, int, int]:
    """BLOCK_D, BLOCK_N, CHUNK for a problem: the whole state, a time chunk, and as many channels as fit the tile."""
    block_n = max(_setting('min_block_n', n_state, 2), triton.next_power_of_2(n_state))
    chunk = min(_setting('chunk', n_state, 64), max(16, triton.next_power_of_2(seq_len)))
    elements = _setting('tile_elements', n_state, TILE_ELEMENTS)
    block_d = max(2, min(elements // (block_n * chunk), triton.next_power_of_2(dim_per_group)))
    return block_d, block_n, chunk


def _grid_and_tiles(u: torch.Tensor, A: torch.Tensor, groups: int):
    batch, dim, seq_len = u.shape
    dim_per_group = dim // groups
    block_d, block_n, chunk = _tiles(A.shape[1], dim_per_group, seq_len)
    n_dblocks = triton.cdiv(dim_per_group, block_d)
    return (batch * groups * n_dblocks,), n_dblocks, triton.cdiv(seq_len, chunk), (block_d, block_n, chunk)


def _num_warps(block_d: int, block_n: int, chunk: int, n_state: int) -> int:
    return _setting('num_warps', n_state, 4 if block_d * block_n * chunk >= 2048 else 2)


def _fwd(u, delta, A, B, C, D, z, delta_bias, softplus: bool):
    batch, dim, seq_len = u.shape
    groups = B.shape[1]
    grid, n_dblocks, n_chunks, (block_d, block_n, chunk) = _grid_and_tiles(u, A, groups)
    out = torch.empty_like(u)
    hstart = torch.empty((batch, dim, n_chunks, block_n), device=u.device, dtype=torch.float32)
    last = torch.empty((batch, dim, A.shape[1]), device=u.device, dtype=torch.float32)
    z_arg = z if z is not None else u
    _ss_fwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else A, z_arg, delta_bias if delta_bias is not None else A,
        out, hstart, last, *u.stride(), *delta.stride(), *z_arg.stride(), *out.stride(), *B.stride(), *C.stride(),
        seq_len, dim, A.shape[1], dim // groups, groups, n_dblocks, n_chunks,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
        BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=chunk, num_warps=_num_warps(block_d, block_n, chunk, A.shape[1]))
    return out, last, hstart


def _bwd(dout, u, delta, A, B, C, D, z, delta_bias, hstart, softplus: bool):
    batch, dim, seq_len = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    grid, n_dblocks, n_chunks, (block_d, block_n, chunk) = _grid_and_tiles(u, A, groups)
    # du, ddelta and dz share u's (contiguous) strides
    u = u.contiguous()
    du, ddelta = torch.empty_like(u), torch.empty_like(u)
    dz = torch.empty_like(u) if z is not None else None
    f32 = dict(device=u.device, dtype=torch.float32)
    da_part = torch.empty((batch, dim, n_state), **f32)
    db_acc = torch.zeros((batch, groups, n_state, seq_len), **f32)
    dc_acc = torch.zeros((batch, groups, n_state, seq_len), **f32)
    dd_part = torch.empty((batch, dim), **f32) if D is not None else None
    dbias_part = torch.empty((batch, dim), **f32) if delta_bias is not None else None
    z_arg = z if z is not None else u
    _ss_bwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else A, z_arg, delta_bias if delta_bias is not None else A, dout,
        hstart, du, ddelta, dz if dz is not None else du, da_part, db_acc, dc_acc,
        dd_part if dd_part is not None else da_part, dbias_part if dbias_part is not None else da_part,
        *u.stride(), *delta.stride(), *z_arg.stride(), *dout.stride(), *B.stride(), *C.stride(),
        seq_len, dim, n_state, dim // groups, groups, n_dblocks, n_chunks,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
        BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=chunk, num_warps=_num_warps(block_d, block_n, chunk, A.shape[1]))
    return (du, ddelta, da_part.sum(0), db_acc, dc_acc, None if dd_part is None else dd_part.sum(0), dz,
            None if dbias_part is None else dbias_part.sum(0))


# ---------------------------------------------------------------------------------------------------------------
# custom ops (opaque to FX and torch.compile) and autograd


@torch.library.custom_op('visionattn::selective_scan_fwd', mutates_args=())
def _ss_fwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
               D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
               softplus: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _fwd(u, delta, A, B, C, D, z, delta_bias, softplus)


@_ss_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus):
    batch, dim, seq_len = u.shape
    _, _, n_chunks, (_, block_n, _) = _grid_and_tiles(u, A, B.shape[1])
    return (torch.empty_like(u), u.new_empty((batch, dim, A.shape[1]), dtype=torch.float32),
            u.new_empty((batch, dim, n_chunks, block_n), dtype=torch.float32))


@torch.library.custom_op('visionattn::selective_scan_bwd', mutates_args=())
def _ss_bwd_op(dout: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
               C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
               delta_bias: Optional[torch.Tensor], hstart: torch.Tensor, softplus: bool) -> List[torch.Tensor]:
    # a custom op returns tensors only: an absent gradient travels as an empty tensor
    return [g if g is not None else u.new_empty(0) for g in _bwd(dout, u, delta, A, B, C, D, z, delta_bias, hstart,
                                                                  softplus)]


@_ss_bwd_op.register_fake
def _(dout, u, delta, A, B, C, D, z, delta_bias, hstart, softplus):
    batch, dim, seq_len = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    f32 = dict(dtype=torch.float32)
    absent, bc_shape = u.new_empty(0), (batch, groups, n_state, seq_len)
    return [torch.empty_like(u), torch.empty_like(u), A.new_empty(A.shape, **f32),
            u.new_empty(bc_shape, **f32), u.new_empty(bc_shape, **f32),
            absent if D is None else u.new_empty((dim,), **f32), absent if z is None else torch.empty_like(u),
            absent if delta_bias is None else u.new_empty((dim,), **f32)]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, softplus = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])
    ctx.softplus, ctx.opaque = softplus, True
    ctx.mark_non_differentiable(output[1], output[2])


def _backward(ctx, dout, *_):
    u, delta, A, B, C, D, z, delta_bias, hstart = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(u)
    backward = _ss_bwd_op if ctx.opaque else _bwd
    du, ddelta, dA, dB, dC, dD, dz, dbias = backward(dout, u, delta, A, B, C, D, z, delta_bias, hstart, ctx.softplus)
    dD, dz, dbias = (None if source is None else grad for source, grad in ((D, dD), (z, dz), (delta_bias, dbias)))
    dA, dB, dC = dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype)
    dD = None if dD is None else dD.to(D.dtype)
    dbias = None if dbias is None else dbias.to(delta_bias.dtype)
    return du, ddelta, dA, dB, dC, dD, dz, dbias, None


_ss_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus):
        out, last, hstart = _fwd(u, delta, A, B, C, D, z, delta_bias, softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, hstart)
        ctx.softplus, ctx.opaque = softplus, False
        ctx.mark_non_differentiable(last)
        return out, last

    @staticmethod
    def backward(ctx, dout, _):
        return _backward(ctx, dout)


def selective_scan_triton(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                          D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                          softplus: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """The selective scan on the Triton kernels (inputs validated by the caller; B and C as [batch, groups, N, L]).

    Returns:
        y [batch, dim, L] in u's dtype and the last state [batch, dim, N] in fp32 (not differentiable, as in
        mamba-ssm).
    """
    if torch.compiler.is_compiling():  # opaque to the compiler through the custom op
        out, last, _ = _ss_fwd_op(u, delta, A, B, C, D, z, delta_bias, softplus)
        return out, last
    # eager: the same kernels through a plain autograd.Function (less host time than the custom-op dispatch)
    return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, softplus)
