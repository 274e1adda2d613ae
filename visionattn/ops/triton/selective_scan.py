"""Triton kernels for the selective scan (Mamba's S6, arXiv 2312.00752): forward, backward, custom ops, autograd.

One program owns a block of channels of one batch element (all inside one B/C group) and walks the sequence in
chunks. Inside a chunk the linear recurrence ``h_t = a_t * h_{t-1} + b_t`` is an associative scan over time (Blelloch's
pairs ``(a, b)``); the state carries from chunk to chunk in registers. The forward pass saves the state at each chunk's
start, so the backward pass recomputes the chunk's states instead of storing all of them (as mamba-ssm does), then runs
the adjoint recurrence ``g_t = dy_t C_t + a_{t+1} g_{t+1}`` as a reverse scan. Gradients of B and C, shared by the
channels of a group, are summed across channel blocks with atomic adds in fp32 (one zeroed buffer holds both);
those of A, D and the delta bias per batch element (one buffer, plain stores), then over the batch in PyTorch.

Host path: the tiling of a problem is computed once per shape (``_plan``); a forward without autograd (inference)
skips saving the chunk states; the backward is one zero-fill, one kernel, one reduction over the batch and at most
one cast for B's and C's gradients together. In eager mode the kernels run under a plain ``autograd.Function``;
under ``torch.compile`` through the ``visionattn::selective_scan_*`` custom ops, whose fake implementations let
``fullgraph=True`` trace through.
"""
import functools
from typing import List, NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl

from ._common import LOG2E_C, TileConfig

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
                   SAVE_STATES: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr):
    tl.static_assert(BLOCK_D & (BLOCK_D - 1) == 0, 'BLOCK_D must be a power of two')
    tl.static_assert(BLOCK_N & (BLOCK_N - 1) == 0, 'BLOCK_N must be a power of two')
    tl.static_assert(CHUNK & (CHUNK - 1) == 0, 'CHUNK must be a power of two')
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
    a_log2 = tl.load(A + d[:, None] * n_state + n[None, :], mask=dn_ok, other=0.).to(tl.float32) * LOG2E_C
    if HAS_D:
        skip = tl.load(DSKIP + d, mask=d_ok, other=0.).to(tl.float32)
    is_last = tl.arange(0, CHUNK) == CHUNK - 1
    state = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for c in range(n_chunks):
        t = c * CHUNK + tl.arange(0, CHUNK)
        t_ok = t < seq_len
        m = d_ok[:, None] & t_ok[None, :]
        if SAVE_STATES:  # the backward pass restarts each chunk from here
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
                   DU, DDELTA, DZ, SMALL, DB_ACC, DC_ACC,
                   su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sz_b, sz_d, sz_l, sdo_b, sdo_d, sdo_l,
                   sb_b, sb_g, sb_n, sb_l, sc_b, sc_g, sc_n, sc_l, sg_b, sg_d, sg_l, small_row, d_off, bias_off,
                   seq_len, dim, n_state, dim_per_group, n_groups, n_dblocks, n_chunks,
                   HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr):
    tl.static_assert(BLOCK_D & (BLOCK_D - 1) == 0, 'BLOCK_D must be a power of two')
    tl.static_assert(BLOCK_N & (BLOCK_N - 1) == 0, 'BLOCK_N must be a power of two')
    tl.static_assert(CHUNK & (CHUNK - 1) == 0, 'CHUNK must be a power of two')
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
    a_log2 = a_nat * LOG2E_C
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
            tl.store(DZ + b * sg_b + d[:, None] * sg_d + t[None, :] * sg_l, grad_z.to(DZ.dtype.element_ty), mask=m)
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
        tl.store(DU + b * sg_b + d[:, None] * sg_d + t[None, :] * sg_l, grad_u.to(DU.dtype.element_ty), mask=m)
        if SOFTPLUS:
            grad_step = grad_step * tl.sigmoid(raw)
        grad_step = tl.where(m, grad_step, 0.)
        grad_bias += tl.sum(grad_step, axis=1)
        tl.store(DDELTA + b * sg_b + d[:, None] * sg_d + t[None, :] * sg_l, grad_step.to(DDELTA.dtype.element_ty),
                 mask=m)
        # B and C are shared by the group's channels: partial sums over this channel block, added atomically
        acc_offsets = ((b * n_groups + g) * n_state + n[:, None]) * seq_len + t[None, :]
        tl.atomic_add(DB_ACC + acc_offsets, tl.sum(adjoint * (step * u)[:, None, :], axis=0), mask=nt_ok)
        tl.atomic_add(DC_ACC + acc_offsets, tl.sum(dy[:, None, :] * states, axis=0), mask=nt_ok)
    # this batch element's share of dA [dim, N], dD [dim] and d(delta_bias) [dim], side by side in one row
    small = SMALL + b * small_row
    tl.store(small + d[:, None] * n_state + n[None, :], grad_a, mask=dn_ok)
    if HAS_D:
        tl.store(small + d_off + d, grad_skip, mask=d_ok)
    if HAS_BIAS:
        tl.store(small + bias_off + d, grad_bias, mask=d_ok)


# ---------------------------------------------------------------------------------------------------------------
# launchers


# Tile overrides for benchmark sweeps (tools/bench_suites/selective_scan.py --ss-sweep); empty means the defaults
# below. num_warps is a TileConfig field; tile_elements, chunk and min_block_n are not: they steer how the tile's
# block_m / block_n and the time chunk are derived.
TILE_OVERRIDES: dict = {}


def _setting(name: str, n_state: int, default):
    if name in TILE_OVERRIDES:
        return TILE_OVERRIDES[name]
    return SINGLE_STATE_TILES[name] if n_state == 1 else default


def _tiles(n_state: int, dim_per_group: int, seq_len: int) -> Tuple[TileConfig, int]:
    """The tile (block_m channels = BLOCK_D, block_n states = BLOCK_N, num_warps) and CHUNK for a problem: the whole
    state, a time chunk, and as many channels as fit the tile."""
    block_n = max(_setting('min_block_n', n_state, 2), triton.next_power_of_2(n_state))
    chunk = min(_setting('chunk', n_state, 64), max(16, triton.next_power_of_2(seq_len)))
    elements = _setting('tile_elements', n_state, TILE_ELEMENTS)
    block_d = max(2, min(elements // (block_n * chunk), triton.next_power_of_2(dim_per_group)))
    return TileConfig(block_d, block_n, _num_warps(block_d, block_n, chunk, n_state)), chunk


def _num_warps(block_d: int, block_n: int, chunk: int, n_state: int) -> int:
    return _setting('num_warps', n_state, 4 if block_d * block_n * chunk >= 2048 else 2)


class _Plan(NamedTuple):
    """What a launch needs that depends only on the problem's shape."""
    grid: Tuple[int]
    n_dblocks: int
    n_chunks: int
    tiles: TileConfig  # num_stages is left to Triton
    chunk: int


@functools.lru_cache(maxsize=512)
def _cached_plan(batch: int, dim: int, seq_len: int, n_state: int, groups: int, overrides: tuple) -> _Plan:
    del overrides  # part of the key only: _tiles reads TILE_OVERRIDES
    dim_per_group = dim // groups
    tiles, chunk = _tiles(n_state, dim_per_group, seq_len)
    n_dblocks = triton.cdiv(dim_per_group, tiles.block_m)
    return _Plan((batch * groups * n_dblocks,), n_dblocks, triton.cdiv(seq_len, chunk), tiles, chunk)


def _plan(u: torch.Tensor, A: torch.Tensor, groups: int) -> _Plan:
    batch, dim, seq_len = u.shape
    key = (batch, dim, seq_len, A.shape[1], groups)
    if not all(type(k) is int for k in key):  # symbolic sizes (a fake tensor under dynamic shapes): not cached
        return _cached_plan.__wrapped__(*key, ())
    return _cached_plan(*key, tuple(sorted(TILE_OVERRIDES.items())) if TILE_OVERRIDES else ())


def _fwd(u, delta, A, B, C, D, z, delta_bias, softplus: bool, save_states: bool = True):
    """y, the last state and (``save_states``) each chunk's start state for the backward pass (else an empty
    tensor)."""
    batch, dim, seq_len = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    plan = _plan(u, A, groups)
    out = torch.empty_like(u)
    last = torch.empty((batch, dim, n_state), device=u.device, dtype=torch.float32)
    shape = (batch, dim, plan.n_chunks, plan.tiles.block_n) if save_states else (0,)
    hstart = torch.empty(shape, device=u.device, dtype=torch.float32)
    z_arg = z if z is not None else u
    _ss_fwd_kernel[plan.grid](
        u, delta, A, B, C, D if D is not None else A, z_arg, delta_bias if delta_bias is not None else A,
        out, hstart if save_states else last, last,
        *u.stride(), *delta.stride(), *z_arg.stride(), *out.stride(), *B.stride(), *C.stride(),
        seq_len, dim, n_state, dim // groups, groups, plan.n_dblocks, plan.n_chunks,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
        SAVE_STATES=save_states, BLOCK_D=plan.tiles.block_m, BLOCK_N=plan.tiles.block_n, CHUNK=plan.chunk,
        num_warps=plan.tiles.num_warps)
    return out, last, hstart


def _small_layout(dim: int, n_state: int, has_d: bool, has_bias: bool) -> Tuple[int, int, int]:
    """Row length and offsets of dD and d(delta_bias) in the buffer of the small gradients: dA [dim, N] first."""
    d_off = dim * n_state
    bias_off = d_off + (dim if has_d else 0)
    return bias_off + (dim if has_bias else 0), d_off, bias_off


def _bwd(dout, u, delta, A, B, C, D, z, delta_bias, hstart, softplus: bool):
    """du, ddelta, dz (or None), dBC [2, batch, groups, N, L] (dB and dC; in B's dtype when C has it too, else
    fp32) and the small gradients summed over the batch, fp32 [dim * N (+ dim for D) (+ dim for the bias)]."""
    batch, dim, seq_len = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    plan = _plan(u, A, groups)
    # du, ddelta and dz come out contiguous whatever u's strides; the kernel writes every element
    du = torch.empty((batch, dim, seq_len), device=u.device, dtype=u.dtype)
    ddelta = torch.empty((batch, dim, seq_len), device=u.device, dtype=delta.dtype)
    dz = torch.empty((batch, dim, seq_len), device=u.device, dtype=z.dtype) if z is not None else None
    f32 = dict(device=u.device, dtype=torch.float32)
    # B and C are shared by a group's channel blocks: summed with atomics, into one zero-filled buffer for both
    dbc = torch.zeros((2, batch, groups, n_state, seq_len), **f32)
    small_row, d_off, bias_off = _small_layout(dim, n_state, D is not None, delta_bias is not None)
    small = torch.empty((batch, small_row), **f32)  # every element stored by the kernel
    z_arg = z if z is not None else u
    _ss_bwd_kernel[plan.grid](
        u, delta, A, B, C, D if D is not None else A, z_arg, delta_bias if delta_bias is not None else A, dout,
        hstart, du, ddelta, dz if dz is not None else du, small, dbc[0], dbc[1],
        *u.stride(), *delta.stride(), *z_arg.stride(), *dout.stride(), *B.stride(), *C.stride(), *du.stride(),
        small_row, d_off, bias_off, seq_len, dim, n_state, dim // groups, groups, plan.n_dblocks, plan.n_chunks,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
        BLOCK_D=plan.tiles.block_m, BLOCK_N=plan.tiles.block_n, CHUNK=plan.chunk, num_warps=plan.tiles.num_warps)
    if B.dtype == C.dtype and B.dtype != torch.float32:
        dbc = dbc.to(B.dtype)  # one cast for both
    return du, ddelta, dz, dbc, small.sum(0)


# ---------------------------------------------------------------------------------------------------------------
# custom ops (opaque to FX and torch.compile) and autograd


@torch.library.custom_op('visionattn::selective_scan_fwd', mutates_args=())
def _ss_fwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
               D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
               softplus: bool, save_states: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _fwd(u, delta, A, B, C, D, z, delta_bias, softplus, save_states)


@_ss_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus, save_states):
    batch, dim, seq_len = u.shape
    plan = _plan(u, A, B.shape[1])
    f32 = dict(dtype=torch.float32)
    shape = (batch, dim, plan.n_chunks, plan.tiles.block_n) if save_states else (0,)
    return torch.empty_like(u), u.new_empty((batch, dim, A.shape[1]), **f32), u.new_empty(shape, **f32)


@torch.library.custom_op('visionattn::selective_scan_bwd', mutates_args=())
def _ss_bwd_op(dout: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
               C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
               delta_bias: Optional[torch.Tensor], hstart: torch.Tensor, softplus: bool) -> List[torch.Tensor]:
    du, ddelta, dz, dbc, small = _bwd(dout, u, delta, A, B, C, D, z, delta_bias, hstart, softplus)
    # a custom op returns tensors only: an absent dz travels as an empty tensor
    return [du, ddelta, dz if dz is not None else u.new_empty(0), dbc, small]


@_ss_bwd_op.register_fake
def _(dout, u, delta, A, B, C, D, z, delta_bias, hstart, softplus):
    batch, dim, seq_len = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    small_row, _, _ = _small_layout(dim, n_state, D is not None, delta_bias is not None)
    bc_dtype = B.dtype if B.dtype == C.dtype else torch.float32
    shape = (batch, dim, seq_len)
    return [u.new_empty(shape), delta.new_empty(shape), z.new_empty(shape) if z is not None else u.new_empty(0),
            u.new_empty((2, batch, groups, n_state, seq_len), dtype=bc_dtype),
            u.new_empty((small_row,), dtype=torch.float32)]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, softplus, _ = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])
    ctx.softplus, ctx.opaque = softplus, True
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the state outputs


def _backward(ctx, dout, *_):
    u, delta, A, B, C, D, z, delta_bias, hstart = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(u)
    backward = _ss_bwd_op if ctx.opaque else _bwd
    du, ddelta, dz, dbc, small = backward(dout, u, delta, A, B, C, D, z, delta_bias, hstart, ctx.softplus)
    dB, dC = dbc.unbind(0)
    dB, dC = dB.to(B.dtype), dC.to(C.dtype)  # no-ops unless B and C differ in dtype
    dim, n_state = A.shape
    _, d_off, bias_off = _small_layout(dim, n_state, D is not None, delta_bias is not None)
    dA = small[:d_off].view(dim, n_state).to(A.dtype)
    dD = None if D is None else small[d_off:d_off + dim].to(D.dtype)
    dbias = None if delta_bias is None else small[bias_off:bias_off + dim].to(delta_bias.dtype)
    return du, ddelta, dA, dB, dC, dD, dz if z is not None else None, dbias, None, None


_ss_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus):
        out, last, hstart = _fwd(u, delta, A, B, C, D, z, delta_bias, softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, hstart)
        ctx.softplus, ctx.opaque = softplus, False
        ctx.mark_non_differentiable(last)
        ctx.set_materialize_grads(False)  # no zero-filled gradient for the last state
        return out, last

    @staticmethod
    def backward(ctx, dout, _):
        return _backward(ctx, dout)[:-1]


def selective_scan_triton(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                          D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                          softplus: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """The selective scan on the Triton kernels (inputs validated by the caller; B and C as [batch, groups, N, L]).

    Returns:
        y [batch, dim, L] in u's dtype and the last state [batch, dim, N] in fp32 (not differentiable, as in
        mamba-ssm).
    """
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    if torch.compiler.is_compiling():  # opaque to the compiler through the custom op
        out, last, _ = _ss_fwd_op(u, delta, A, B, C, D, z, delta_bias, softplus, needs_grad)
        return out, last
    if not needs_grad:  # inference: no autograd node, no chunk states saved
        out, last, _ = _fwd(u, delta, A, B, C, D, z, delta_bias, softplus, save_states=False)
        return out, last
    # eager training: the same kernels through a plain autograd.Function (less host time than the custom op)
    return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, softplus)
