"""Triton kernels for the selective scan (Mamba's S6, arXiv 2312.00752): forward, backward, custom ops, autograd.

One program owns a block of channels of one batch element (all inside one B/C group) and walks the sequence in
chunks. Inside a chunk the linear recurrence ``h_t = a_t * h_{t-1} + b_t`` is an associative scan over time (Blelloch's
pairs ``(a, b)``); the state carries from chunk to chunk in registers. The forward pass saves the state at each chunk's
start, so the backward pass recomputes the chunk's states instead of storing all of them (as mamba-ssm does), then runs
the adjoint recurrence ``g_t = dy_t C_t + a_{t+1} g_{t+1}`` as a reverse scan. Gradients of B and C, shared by the
channels of a group, are summed across channel blocks with atomic adds in fp32 (one zeroed buffer holds both);
those of A, D and the delta bias per batch element (one buffer, plain stores), then over the batch in PyTorch.

The kernels index every per-channel tensor as [batch, group, channel, position] with its own strides, and may take a
table of the position visited at each step of each group. SS2D's scan (``cross_selective_scan``) is that: the four
scan orders of VMamba / LaMamba-Diff are four groups reading one channels-last map (stride 0 over the groups) in their
own orders, and writing their outputs at the map's positions, so neither CrossScan's reordered copies nor
CrossMerge's are made; the four outputs are summed in one reduction (deterministic, unlike atomics).

Host path: the tiling and grid of a call signature are computed once (``_Plan``), and later calls launch the compiled
kernels directly (``launch.Kernel``); a forward without autograd (inference) skips saving the chunk states; the
backward is one zero-fill, one kernel, one reduction over the batch and at most one cast for B's and C's gradients
together. In eager mode the kernels run under a plain ``autograd.Function``; under ``torch.compile`` through the
``visionattn::selective_scan_*`` custom ops, whose fake implementations let ``fullgraph=True`` trace through.
"""
import functools
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl

from ..checks import first_order_only
from ..reference.selective_scan import project_steps
from . import cross_scan
from ._common import LOG2E_C, TileConfig, cached_plan, check_int32_span, flat_grid
from .launch import Kernel, signature
from .launch import or_placeholder as _or

# Elements of one [channels, states, time] register tile: large enough to keep the scan busy, small enough not to spill.
TILE_ELEMENTS = 4096
# d_state 1 (VMamba v2, LaMamba): no padding of the state axis, long chunks, small tiles. The H200 sweep
# (docs/benchmarks/selective_scan_h200.md) gave 0.81 / 4.25 ms forward / forward+backward at VMamba-T's first stage
# against 4.31 / 26.1 ms for the general tiles below (state axis padded to 2).
SINGLE_STATE_TILES = dict(tile_elements=1024, chunk=128, num_warps=2, min_block_n=1)
# d_state 1 with the channels adjacent in memory (SS2D's channels-last map): 32 channels of 32 steps, so that one
# step's load covers 64 bytes of a bf16 map and 128 of an fp32 output. Not yet swept on a GPU.
CHANNELS_INNER_TILES = dict(tile_elements=1024, chunk=32, num_warps=2, min_block_n=1)


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
def _steps(ORDER, g, t, t_ok, seq_len, HAS_ORDER: tl.constexpr):
    """The positions visited at steps t of scan order g (t itself without an order table)."""
    if HAS_ORDER:
        return tl.load(ORDER + g * seq_len + t, mask=t_ok, other=0).to(tl.int32)
    return t


@triton.jit
def _ss_fwd_kernel(U, DELTA, A, BM, CM, DSKIP, Z, DBIAS, ORDER, OUT, HSTART, LAST,
                   su_b, su_g, su_d, su_l, sdt_b, sdt_g, sdt_d, sdt_l, sz_b, sz_g, sz_d, sz_l,
                   so_b, so_g, so_d, so_l, sb_b, sb_g, sb_n, sb_l, sc_b, sc_g, sc_n, sc_l,
                   seq_len, dim, n_state, dim_per_group, n_groups, n_dblocks, n_chunks,
                   HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                   HAS_ORDER: tl.constexpr, SAVE_STATES: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                   CHUNK: tl.constexpr):
    tl.static_assert(BLOCK_D & (BLOCK_D - 1) == 0, 'BLOCK_D must be a power of two')
    tl.static_assert(BLOCK_N & (BLOCK_N - 1) == 0, 'BLOCK_N must be a power of two')
    tl.static_assert(CHUNK & (CHUNK - 1) == 0, 'CHUNK must be a power of two')
    pid = tl.program_id(0)
    d_block = pid % n_dblocks
    g = ((pid // n_dblocks) % n_groups).to(tl.int64)
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
    # this program's channels of this batch element and scan order (per-position tensors are [b, g, d, position])
    u_row = U + b * su_b + g * su_g + d_local[:, None] * su_d
    dt_row = b * sdt_b + g * sdt_g + d_local[:, None] * sdt_d
    z_row = Z + b * sz_b + g * sz_g + d_local[:, None] * sz_d
    out_row = OUT + b * so_b + g * so_g + d_local[:, None] * so_d
    b_row = BM + b * sb_b + g * sb_g + n[:, None] * sb_n
    c_row = CM + b * sc_b + g * sc_g + n[:, None] * sc_n
    is_last = tl.arange(0, CHUNK) == CHUNK - 1
    state = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for c in range(n_chunks):
        t = c * CHUNK + tl.arange(0, CHUNK)
        t_ok = t < seq_len
        pos = _steps(ORDER, g, t, t_ok, seq_len, HAS_ORDER)[None, :]
        m = d_ok[:, None] & t_ok[None, :]
        if SAVE_STATES:  # the backward pass restarts each chunk from here
            tl.store(HSTART + ((b * dim + d[:, None]) * n_chunks + c) * BLOCK_N + n[None, :], state,
                     mask=d_ok[:, None])
        u = tl.load(u_row + pos * su_l, mask=m, other=0.).to(tl.float32)
        step, _ = _load_delta(DELTA, DBIAS, dt_row + pos * sdt_l, m, d, d_ok, HAS_BIAS, SOFTPLUS)
        nt_ok = n_ok[:, None] & t_ok[None, :]
        b_t = tl.load(b_row + pos * sb_l, mask=nt_ok, other=0.).to(tl.float32)
        c_t = tl.load(c_row + pos * sc_l, mask=nt_ok, other=0.).to(tl.float32)
        decay = tl.exp2(step[:, None, :] * a_log2[:, :, None])  # [BLOCK_D, BLOCK_N, CHUNK]
        drive = (step * u)[:, None, :] * b_t[None, :, :]
        decay_acc, drive_acc = tl.associative_scan((decay, drive), 2, _linear_combine)
        states = decay_acc * state[:, :, None] + drive_acc
        y = tl.sum(states * c_t[None, :, :], axis=1)
        if HAS_D:
            y += skip[:, None] * u
        if HAS_Z:
            z = tl.load(z_row + pos * sz_l, mask=m, other=0.).to(tl.float32)
            y = y * z * tl.sigmoid(z)
        tl.store(out_row + pos * so_l, y.to(OUT.dtype.element_ty), mask=m)
        state = tl.sum(tl.where(is_last[None, None, :], states, 0.), axis=2)
    tl.store(LAST + (b * dim + d[:, None]) * n_state + n[None, :], state, mask=dn_ok)


@triton.jit
def _ss_bwd_kernel(U, DELTA, A, BM, CM, DSKIP, Z, DBIAS, ORDER, DOUT, HSTART,
                   DU, DDELTA, DZ, SMALL, DB_ACC, DC_ACC,
                   su_b, su_g, su_d, su_l, sdt_b, sdt_g, sdt_d, sdt_l, sz_b, sz_g, sz_d, sz_l,
                   sdo_b, sdo_g, sdo_d, sdo_l, sb_b, sb_g, sb_n, sb_l, sc_b, sc_g, sc_n, sc_l,
                   sg_b, sg_g, sg_d, sg_l, sa_b, sa_g, sa_n, sa_l, small_row, d_off, bias_off,
                   seq_len, dim, n_state, dim_per_group, n_groups, n_dblocks, n_chunks,
                   HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                   HAS_ORDER: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr):
    tl.static_assert(BLOCK_D & (BLOCK_D - 1) == 0, 'BLOCK_D must be a power of two')
    tl.static_assert(BLOCK_N & (BLOCK_N - 1) == 0, 'BLOCK_N must be a power of two')
    tl.static_assert(CHUNK & (CHUNK - 1) == 0, 'CHUNK must be a power of two')
    pid = tl.program_id(0)
    d_block = pid % n_dblocks
    g = ((pid // n_dblocks) % n_groups).to(tl.int64)
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
    u_row = U + b * su_b + g * su_g + d_local[:, None] * su_d
    dt_row = b * sdt_b + g * sdt_g + d_local[:, None] * sdt_d
    z_row = Z + b * sz_b + g * sz_g + d_local[:, None] * sz_d
    dout_row = DOUT + b * sdo_b + g * sdo_g + d_local[:, None] * sdo_d
    grad_row = b * sg_b + g * sg_g + d_local[:, None] * sg_d  # du, ddelta and dz share one layout
    b_row = BM + b * sb_b + g * sb_g + n[:, None] * sb_n
    c_row = CM + b * sc_b + g * sc_g + n[:, None] * sc_n
    acc_row = b * sa_b + g * sa_g + n[:, None] * sa_n
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
        pos = _steps(ORDER, g, t, t_ok, seq_len, HAS_ORDER)[None, :]
        m = d_ok[:, None] & t_ok[None, :]
        nt_ok = n_ok[:, None] & t_ok[None, :]
        state0 = tl.load(HSTART + ((b * dim + d[:, None]) * n_chunks + c) * BLOCK_N + n[None, :],
                         mask=d_ok[:, None], other=0.)
        u = tl.load(u_row + pos * su_l, mask=m, other=0.).to(tl.float32)
        step, raw = _load_delta(DELTA, DBIAS, dt_row + pos * sdt_l, m, d, d_ok, HAS_BIAS, SOFTPLUS)
        # the next step's decay inside this chunk; the chunk's last step takes the carry instead (decay 1)
        next_ok = (local < CHUNK - 1) & (t + 1 < seq_len)
        pos_next = _steps(ORDER, g, t + 1, next_ok, seq_len, HAS_ORDER)[None, :]
        step_next, _ = _load_delta(DELTA, DBIAS, dt_row + pos_next * sdt_l, m & next_ok[None, :], d, d_ok, HAS_BIAS,
                                   SOFTPLUS)
        b_t = tl.load(b_row + pos * sb_l, mask=nt_ok, other=0.).to(tl.float32)
        c_t = tl.load(c_row + pos * sc_l, mask=nt_ok, other=0.).to(tl.float32)
        # recompute the chunk's states from the saved start state
        decay = tl.exp2(step[:, None, :] * a_log2[:, :, None])
        drive = (step * u)[:, None, :] * b_t[None, :, :]
        decay_acc, drive_acc = tl.associative_scan((decay, drive), 2, _linear_combine)
        states = decay_acc * state0[:, :, None] + drive_acc
        dout = tl.load(dout_row + pos * sdo_l, mask=m, other=0.).to(tl.float32)
        if HAS_Z:
            y = tl.sum(states * c_t[None, :, :], axis=1)
            if HAS_D:
                y += skip[:, None] * u
            z = tl.load(z_row + pos * sz_l, mask=m, other=0.).to(tl.float32)
            sig = tl.sigmoid(z)
            grad_z = dout * y * sig * (1. + z * (1. - sig))
            tl.store(DZ + grad_row + pos * sg_l, grad_z.to(DZ.dtype.element_ty), mask=m)
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
        tl.store(DU + grad_row + pos * sg_l, grad_u.to(DU.dtype.element_ty), mask=m)
        if SOFTPLUS:
            grad_step = grad_step * tl.sigmoid(raw)
        grad_step = tl.where(m, grad_step, 0.)
        grad_bias += tl.sum(grad_step, axis=1)
        tl.store(DDELTA + grad_row + pos * sg_l, grad_step.to(DDELTA.dtype.element_ty), mask=m)
        # B and C are shared by the group's channels: partial sums over this channel block, added atomically
        acc_offsets = acc_row + pos * sa_l
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


def _setting(name: str, n_state: int, channels_inner: bool, default):
    if name in TILE_OVERRIDES:
        return TILE_OVERRIDES[name]
    if n_state == 1:
        return (CHANNELS_INNER_TILES if channels_inner else SINGLE_STATE_TILES)[name]
    return default


class _Tiling(NamedTuple):
    """The tile (block_m channels = BLOCK_D, block_n states = BLOCK_N, num_warps), the time chunk and the counts
    of channel blocks and chunks of a problem: the whole state, a time chunk, and as many channels as fit."""
    tiles: TileConfig  # num_stages is left to Triton
    chunk: int
    n_dblocks: int
    n_chunks: int


@functools.lru_cache(maxsize=512)
def _cached_tiling(dim_per_group: int, seq_len: int, n_state: int, channels_inner: bool,
                   overrides: tuple) -> _Tiling:
    del overrides  # part of the key only: _setting reads TILE_OVERRIDES
    block_n = max(_setting('min_block_n', n_state, channels_inner, 2), triton.next_power_of_2(n_state))
    chunk = min(_setting('chunk', n_state, channels_inner, 64), max(16, triton.next_power_of_2(seq_len)))
    elements = _setting('tile_elements', n_state, channels_inner, TILE_ELEMENTS)
    block_d = max(2, min(elements // (block_n * chunk), triton.next_power_of_2(dim_per_group)))
    warps = _setting('num_warps', n_state, channels_inner, 4 if block_d * block_n * chunk >= 2048 else 2)
    return _Tiling(TileConfig(block_d, block_n, warps), chunk, triton.cdiv(dim_per_group, block_d),
                   triton.cdiv(seq_len, chunk))


def _overrides() -> tuple:
    # part of every cache key: a sweep's overrides must reach the tiling and the plans
    return tuple(sorted(TILE_OVERRIDES.items())) if TILE_OVERRIDES else ()


def _tiling(dim_per_group: int, seq_len: int, n_state: int, channels_inner: bool) -> _Tiling:
    key = (dim_per_group, seq_len, n_state, channels_inner)
    if not all(type(k) is int for k in key[:3]):  # symbolic sizes (a fake tensor under dynamic shapes): not cached
        return _cached_tiling.__wrapped__(*key, ())
    return _cached_tiling(*key, _overrides())


class _Views(NamedTuple):
    """A scan problem as the kernels index it: per-channel tensors [batch, groups, dim_per_group, L] and B, C
    [batch, groups, N, L] (any strides: a stride 0 over groups shares one tensor between them), the optional ones
    None, and the position of each step of each group ([groups, L]; None: step t is position t)."""
    u: torch.Tensor
    delta: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    z: Optional[torch.Tensor]
    order: Optional[torch.Tensor]
    # the channels adjacent in memory (SS2D's channels-last map): tiles take more channels and fewer steps, so that
    # one step's load covers whole sectors. Fixed per entry point, not read from strides, so that the fake
    # implementations (torch.compile) know the chunk count.
    channels_inner: bool

    def tensors(self) -> tuple:
        return self.u, self.delta, self.B, self.C, self.z, self.order


def _check_spans(views: _Views, outputs) -> None:
    # per batch element and group: the kernels offset the batch and the group with int64, rows and steps with int32
    for name, t in (('u', views.u), ('delta', views.delta), ('B', views.B), ('C', views.C), ('z', views.z),
                    *outputs):
        if t is not None:
            check_int32_span('selective_scan', name, t, leading_axes=2, unit='batch element and group')


class _Plan:
    """Tiling, grid and launch slot of one call signature (shapes, strides, dtypes, alignments, flags)."""

    def __init__(self, views: _Views, outputs):
        _check_spans(views, outputs)
        batch, groups, dim_per_group, seq_len = views.u.shape
        self.tiling = _tiling(dim_per_group, seq_len, views.B.shape[2], views.channels_inner)
        self.grid = flat_grid(batch * groups * self.tiling.n_dblocks, 'selective_scan')
        self.slot = [None, None]


_PLANS: Dict[tuple, _Plan] = {}
_FWD = Kernel(_ss_fwd_kernel)
_BWD = Kernel(_ss_bwd_kernel)


def _strides4(t: Optional[torch.Tensor]) -> tuple:
    return (0, 0, 0, 0) if t is None else t.stride()


def _scan_fwd(views: _Views, A, D, delta_bias, out: torch.Tensor, softplus: bool, save_states: bool):
    """Writes y into ``out`` (a [batch, groups, dim_per_group, L] view); returns the last state [batch, dim, N] and
    (``save_states``) each chunk's start state for the backward pass (else an empty tensor)."""
    batch, groups, dim_per_group, seq_len = views.u.shape
    dim, n_state = A.shape
    key = ('fwd', signature((*views.tensors(), A, D, delta_bias, out)), views.channels_inner, softplus,
           save_states, views.u.device, _overrides())
    plan = cached_plan(_PLANS, key, lambda: _Plan(views, [('the output', out)]))
    tiling = plan.tiling
    last = torch.empty((batch, dim, n_state), device=out.device, dtype=torch.float32)
    shape = (batch, dim, tiling.n_chunks, tiling.tiles.block_n) if save_states else (0,)
    hstart = torch.empty(shape, device=out.device, dtype=torch.float32)
    u = views.u
    if not plan.grid[0]:  # an empty batch: nothing to compute, no kernel to compile
        return last, hstart
    _FWD.launch(plan.slot, plan.grid, (
        u, views.delta, A, views.B, views.C, _or(D, A), _or(views.z, u), _or(delta_bias, A), _or(views.order, A),
        out, hstart if save_states else last, last,
        *u.stride(), *views.delta.stride(), *_strides4(views.z), *out.stride(), *views.B.stride(), *views.C.stride(),
        seq_len, dim, n_state, dim_per_group, groups, tiling.n_dblocks, tiling.n_chunks),
        dict(HAS_D=D is not None, HAS_Z=views.z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
             HAS_ORDER=views.order is not None, SAVE_STATES=save_states, BLOCK_D=tiling.tiles.block_m,
             BLOCK_N=tiling.tiles.block_n, CHUNK=tiling.chunk),
        tiling.tiles.num_warps, tiling.tiles.num_stages)
    return last, hstart


def _small_layout(dim: int, n_state: int, has_d: bool, has_bias: bool) -> Tuple[int, int, int]:
    """Row length and offsets of dD and d(delta_bias) in the buffer of the small gradients: dA [dim, N] first."""
    d_off = dim * n_state
    bias_off = d_off + (dim if has_d else 0)
    return bias_off + (dim if has_bias else 0), d_off, bias_off


def _scan_bwd(dout: torch.Tensor, views: _Views, A, D, delta_bias, hstart, softplus: bool, grads, acc):
    """Writes du, ddelta and dz into ``grads`` (three [batch, groups, dim_per_group, L] views of one layout, dz None
    without z) and adds dB, dC into ``acc`` (two zero-filled fp32 [batch, groups, N, L] views); returns the small
    gradients summed over the batch, fp32 [dim * N (+ dim for D) (+ dim for the bias)]."""
    batch, groups, dim_per_group, seq_len = views.u.shape
    dim, n_state = A.shape
    du, ddelta, dz = grads
    key = ('bwd', signature((*views.tensors(), A, D, delta_bias, dout, du, ddelta, dz, *acc)), views.channels_inner,
           softplus, views.u.device, _overrides())
    plan = cached_plan(_PLANS, key, lambda: _Plan(views, [('dy', dout), ('the gradients', du), ('dB', acc[0])]))
    tiling = plan.tiling
    small_row, d_off, bias_off = _small_layout(dim, n_state, D is not None, delta_bias is not None)
    small = torch.empty((batch, small_row), device=du.device, dtype=torch.float32)  # every element stored
    u = views.u
    if not plan.grid[0]:
        return small.sum(0)
    _BWD.launch(plan.slot, plan.grid, (
        u, views.delta, A, views.B, views.C, _or(D, A), _or(views.z, u), _or(delta_bias, A), _or(views.order, A),
        dout, hstart, du, ddelta, _or(dz, du), small, acc[0], acc[1],
        *u.stride(), *views.delta.stride(), *_strides4(views.z), *dout.stride(), *views.B.stride(), *views.C.stride(),
        *du.stride(), *acc[0].stride(), small_row, d_off, bias_off,
        seq_len, dim, n_state, dim_per_group, groups, tiling.n_dblocks, tiling.n_chunks),
        dict(HAS_D=D is not None, HAS_Z=views.z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
             HAS_ORDER=views.order is not None, BLOCK_D=tiling.tiles.block_m, BLOCK_N=tiling.tiles.block_n,
             CHUNK=tiling.chunk),
        tiling.tiles.num_warps, tiling.tiles.num_stages)
    return small.sum(0)


def _plain_views(u, delta, B, C, z) -> _Views:
    groups = B.shape[1]
    return _Views(*(t.unflatten(1, (groups, -1)) for t in (u, delta)), B, C,
                  None if z is None else z.unflatten(1, (groups, -1)), None, False)


def _hstart_shape(batch: int, dim: int, dim_per_group: int, seq_len: int, n_state: int, channels_inner: bool,
                  save_states: bool) -> tuple:
    if not save_states:
        return (0,)
    tiling = _tiling(dim_per_group, seq_len, n_state, channels_inner)
    return (batch, dim, tiling.n_chunks, tiling.tiles.block_n)


def _fwd(u, delta, A, B, C, D, z, delta_bias, softplus: bool, save_states: bool = True):
    """y, the last state and (``save_states``) each chunk's start state for the backward pass (else an empty
    tensor)."""
    out = torch.empty_like(u)
    views = _plain_views(u, delta, B, C, z)
    last, hstart = _scan_fwd(views, A, D, delta_bias, out.unflatten(1, (B.shape[1], -1)), softplus, save_states)
    return out, last, hstart


def _bwd(dout, u, delta, A, B, C, D, z, delta_bias, hstart, softplus: bool):
    """du, ddelta, dz (or None), dBC [2, batch, groups, N, L] (dB and dC; in B's dtype when C has it too, else
    fp32) and the small gradients summed over the batch, fp32 [dim * N (+ dim for D) (+ dim for the bias)]."""
    batch, dim, seq_len = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    # du, ddelta and dz come out contiguous whatever u's strides; the kernel writes every element
    du = torch.empty((batch, dim, seq_len), device=u.device, dtype=u.dtype)
    ddelta = torch.empty((batch, dim, seq_len), device=u.device, dtype=delta.dtype)
    dz = torch.empty((batch, dim, seq_len), device=u.device, dtype=z.dtype) if z is not None else None
    # B and C are shared by a group's channel blocks: summed with atomics, into one zero-filled buffer for both
    dbc = torch.zeros((2, batch, groups, n_state, seq_len), device=u.device, dtype=torch.float32)
    grads = tuple(None if t is None else t.unflatten(1, (groups, -1)) for t in (du, ddelta, dz))
    small = _scan_bwd(dout.unflatten(1, (groups, -1)), _plain_views(u, delta, B, C, z), A, D, delta_bias, hstart,
                      softplus, grads, (dbc[0], dbc[1]))
    if B.dtype == C.dtype and B.dtype != torch.float32:
        dbc = dbc.to(B.dtype)  # one cast for both
    return du, ddelta, dz, dbc, small


def _cross_views(x, delta, B, C, order) -> _Views:
    """SS2D's scan as the kernels index it: x [batch, H, W, dim] shared by the K orders (stride 0 over them),
    delta [batch, L, K, dim] and B, C [batch, L, K, N] at the map's positions, order [K, L]."""
    batch, height, width, dim = x.shape
    n_orders = delta.shape[2]
    u = x.reshape(batch, height * width, dim).transpose(1, 2)[:, None].expand(batch, n_orders, dim, height * width)
    return _Views(u, delta.permute(0, 2, 3, 1), B.permute(0, 2, 3, 1), C.permute(0, 2, 3, 1), None, order, True)


def _cross_fwd(x, delta, A, B, C, D, delta_bias, order, softplus: bool, out_dtype: torch.dtype, save_states: bool):
    """The merged output [batch, H, W, dim] and (``save_states``) the chunk start states."""
    batch, height, width, dim = x.shape
    n_orders = delta.shape[2]
    # each order's output at the map's positions, [batch, L, K, dim]: the merge sums over K, adjacent in memory
    outs = torch.empty((batch, height * width, n_orders, dim), device=x.device, dtype=out_dtype)
    _, hstart = _scan_fwd(_cross_views(x, delta, B, C, order), A, D, delta_bias, outs.permute(0, 2, 3, 1), softplus,
                          save_states)
    return outs.sum(2).view(batch, height, width, dim), hstart


def _cross_bwd(dy, x, delta, A, B, C, D, delta_bias, order, hstart, softplus: bool):
    """dx [batch, H, W, dim] (summed over the orders), ddelta [batch, L, K, dim] (order-major in memory), dBC
    [2, batch, L, K, N] (in B's dtype when C has it too, else fp32) and the small gradients."""
    batch, height, width, dim = x.shape
    n_orders, n_state = delta.shape[2], A.shape[1]
    seq_len = height * width
    # each order's du and ddelta at the map's positions, order-major [K, batch, L, dim]: du is summed over the orders
    # below, and ddelta is in the layout a per-order projection (SS2D's einsum, a batched matmul over the orders)
    # produces delta in, so that its backward reads it without a copy
    dus = torch.empty((n_orders, batch, seq_len, dim), device=x.device, dtype=x.dtype)
    ddelta = torch.empty((n_orders, batch, seq_len, dim), device=x.device, dtype=delta.dtype)
    dbc = torch.zeros((2, batch, seq_len, n_orders, n_state), device=x.device, dtype=torch.float32)
    # the merge's gradient reaches every order unchanged: a stride-0 view, no copies
    dout = dy.reshape(batch, seq_len, dim).transpose(1, 2)[:, None].expand(batch, n_orders, dim, seq_len)
    small = _scan_bwd(dout, _cross_views(x, delta, B, C, order), A, D, delta_bias, hstart, softplus,
                      (dus.permute(1, 0, 3, 2), ddelta.permute(1, 0, 3, 2), None),
                      (dbc[0].permute(0, 2, 3, 1), dbc[1].permute(0, 2, 3, 1)))
    if B.dtype == C.dtype and B.dtype != torch.float32:
        dbc = dbc.to(B.dtype)
    return dus.sum(0).view(batch, height, width, dim), ddelta.permute(1, 2, 0, 3), dbc, small


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
    f32 = dict(dtype=torch.float32)
    shape = _hstart_shape(batch, dim, dim // B.shape[1], seq_len, A.shape[1], False, save_states)
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
    dA, dD, dbias = _small_grads(small, A, D, delta_bias)
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
    @first_order_only('selective_scan')
    def backward(ctx, dout, _):
        return _backward(ctx, dout)[:-1]


def _small_grads(small: torch.Tensor, A, D, delta_bias):
    """dA, dD and d(delta_bias) (None where absent) from the summed buffer of the small gradients."""
    dim, n_state = A.shape
    _, d_off, bias_off = _small_layout(dim, n_state, D is not None, delta_bias is not None)
    dA = small[:d_off].view(dim, n_state).to(A.dtype)
    dD = None if D is None else small[d_off:d_off + dim].to(D.dtype)
    dbias = None if delta_bias is None else small[bias_off:bias_off + dim].to(delta_bias.dtype)
    return dA, dD, dbias


@torch.library.custom_op('visionattn::cross_selective_scan_fwd', mutates_args=())
def _cross_fwd_op(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                  D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], order: torch.Tensor, softplus: bool,
                  out_dtype: torch.dtype, save_states: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    return _cross_fwd(x, delta, A, B, C, D, delta_bias, order, softplus, out_dtype, save_states)


@_cross_fwd_op.register_fake
def _(x, delta, A, B, C, D, delta_bias, order, softplus, out_dtype, save_states):
    batch, height, width, dim = x.shape
    n_orders, n_state = delta.shape[2], A.shape[1]
    shape = _hstart_shape(batch, n_orders * dim, dim, height * width, n_state, True, save_states)
    return x.new_empty(x.shape, dtype=out_dtype), x.new_empty(shape, dtype=torch.float32)


@torch.library.custom_op('visionattn::cross_selective_scan_bwd', mutates_args=())
def _cross_bwd_op(dy: torch.Tensor, x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                  C: torch.Tensor, D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], order: torch.Tensor,
                  hstart: torch.Tensor, softplus: bool) -> List[torch.Tensor]:
    return list(_cross_bwd(dy, x, delta, A, B, C, D, delta_bias, order, hstart, softplus))


@_cross_bwd_op.register_fake
def _(dy, x, delta, A, B, C, D, delta_bias, order, hstart, softplus):
    batch, seq_len, n_orders, dim = delta.shape
    n_state = A.shape[1]
    small_row, _, _ = _small_layout(A.shape[0], n_state, D is not None, delta_bias is not None)
    bc_dtype = B.dtype if B.dtype == C.dtype and B.dtype != torch.float32 else torch.float32
    return [torch.empty_like(x), delta.new_empty((n_orders, batch, seq_len, dim)).permute(1, 2, 0, 3),
            x.new_empty((2, batch, seq_len, n_orders, n_state), dtype=bc_dtype),
            x.new_empty((small_row,), dtype=torch.float32)]


def _cross_setup_context(ctx, inputs, output):
    x, delta, A, B, C, D, delta_bias, order, softplus, _, _ = inputs
    ctx.save_for_backward(x, delta, A, B, C, D, delta_bias, order, output[1])
    ctx.softplus, ctx.opaque = softplus, True
    ctx.mark_non_differentiable(output[1])


def _cross_backward(ctx, dy, *_):
    x, delta, A, B, C, D, delta_bias, order, hstart = ctx.saved_tensors
    backward = _cross_bwd_op if ctx.opaque else _cross_bwd
    dx, ddelta, dbc, small = backward(dy, x, delta, A, B, C, D, delta_bias, order, hstart, ctx.softplus)
    dB, dC = dbc.unbind(0)
    dA, dD, dbias = _small_grads(small, A, D, delta_bias)
    return dx, ddelta, dA, dB.to(B.dtype), dC.to(C.dtype), dD, dbias, None, None, None, None


_cross_fwd_op.register_autograd(_cross_backward, setup_context=_cross_setup_context)


class _CrossScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, delta, A, B, C, D, delta_bias, order, softplus, out_dtype):
        y, hstart = _cross_fwd(x, delta, A, B, C, D, delta_bias, order, softplus, out_dtype, True)
        ctx.save_for_backward(x, delta, A, B, C, D, delta_bias, order, hstart)
        ctx.softplus, ctx.opaque = softplus, False
        return y

    @staticmethod
    @first_order_only('cross_selective_scan')
    def backward(ctx, dy):
        return _cross_backward(ctx, dy)[:-1]


def cross_selective_scan_triton(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                                C: torch.Tensor, D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                                softplus: bool, order: torch.Tensor, out_dtype: torch.dtype, kind: str = 'cross',
                                delta_proj: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SS2D's scan along the K orders of ``order`` [K, L] (of ``kind``, see ``scan_orders``) on the Triton kernels,
    summed at each position (inputs validated by the caller; shapes as in
    :func:`visionattn.ops.cross_selective_scan`)."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, delta, A, B, C, D, delta_bias, delta_proj))
    if A.shape[1] == 1 and cross_scan.ENABLED:  # the orders merged on chip, where the map allows
        y = cross_scan.merged_cross_scan(x, delta, A, B, C, D, delta_bias, softplus, order, kind, out_dtype,
                                         delta_proj, needs_grad)
        if y is not None:
            return y
    if delta_proj is not None:  # the projection as SS2D runs it (an einsum), differentiable
        delta = project_steps(delta, delta_proj)
    if torch.compiler.is_compiling():
        return _cross_fwd_op(x, delta, A, B, C, D, delta_bias, order, softplus, out_dtype, needs_grad)[0]
    if not needs_grad:
        return _cross_fwd(x, delta, A, B, C, D, delta_bias, order, softplus, out_dtype, False)[0]
    return _CrossScanFn.apply(x, delta, A, B, C, D, delta_bias, order, softplus, out_dtype)


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
